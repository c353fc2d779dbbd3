/* The client's HTTP GET fails cleanly when nothing listens. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ragkv/client.h"

Test(http_get, refused_port_is_unavailable)
{
    /* bind a port, close it: nothing listens there now */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    getsockname(s, (struct sockaddr *)&a, &l);
    close(s);
    int code;
    char *body;
    cr_expect_eq(ragkv_http_get("127.0.0.1", ntohs(a.sin_port), "/healthz", 2000, &code, &body),
                 RK_ERR_UNAVAILABLE);
    cr_expect_eq(ragkv_http_get("no.such.host.invalid", 80, "/", 2000, &code, &body), RK_ERR_INVALID);
}
