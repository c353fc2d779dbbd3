/* http_get.c — a tiny blocking HTTP/1.0 GET for the admin CLI and tests. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/clock.h"
#include "ragkv/client.h"
#include "net.h"

#define HTTP_MAX (16u << 20)

rk_status ragkv_http_get(const char *host, int port, const char *path, int timeout_ms,
                         int *status, char **body)
{
    uint64_t deadline = rk_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int fd = -1;
    rk_status st = rk_net_connect(host, port, deadline, &fd);
    if (st != RK_OK)
        return st;
    char req[1024];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
    if (n < 0 || (size_t)n >= sizeof(req)) {
        close(fd);
        return rk_error_set(RK_ERR_INVALID, "path too long");
    }
    for (int off = 0; off < n;) {
        if ((st = rk_net_wait(fd, POLLOUT, deadline)) != RK_OK)
            goto out;
        ssize_t w = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            st = rk_error_set(RK_ERR_IO, "send: %s", strerror(errno));
            goto out;
        }
        if (w > 0)
            off += (int)w;
    }
    rk_buf b = RK_BUF_INIT;
    for (;;) {
        if ((st = rk_net_wait(fd, POLLIN, deadline)) != RK_OK)
            break;
        if (!rk_buf_reserve(&b, 4096)) {
            st = RK_ERR_NOMEM;
            break;
        }
        ssize_t r = recv(fd, b.data + b.len, 4096, 0);
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            st = rk_error_set(RK_ERR_IO, "recv: %s", strerror(errno));
            break;
        }
        b.len += (size_t)r;
        if (b.len > HTTP_MAX) {
            st = rk_error_set(RK_ERR_LIMIT, "reply larger than %u bytes", HTTP_MAX);
            break;
        }
    }
    rk_buf_put_u8(&b, 0);
    if (st == RK_OK && b.failed)
        st = RK_ERR_NOMEM;
    if (st == RK_OK) {
        char *text = (char *)b.data;
        char *sep = strstr(text, "\r\n\r\n");
        int code;
        if (strncmp(text, "HTTP/1.", 7) != 0 || !sep || sscanf(text + 9, "%3d", &code) != 1) {
            st = rk_error_set(RK_ERR_PROTOCOL, "reply is not HTTP");
        } else {
            *status = code;
            *body = rk_strdup(sep + 4);
            if (!*body)
                st = RK_ERR_NOMEM;
        }
    }
    rk_buf_free(&b);
out:
    close(fd);
    return st;
}
