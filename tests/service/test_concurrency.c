/* Many concurrent connections, each pipelining requests: every response arrives, in order,
 * and the daemon stays healthy. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/proto.h"
#include "testutil.h"

static int port;

struct cl {
    int id;
    int ok; /* responses matched */
};

static void *client(void *arg)
{
    struct cl *c = arg;
    ragkv_conn *k;
    if (ragkv_connect("127.0.0.1", port, 20000, &k) != RK_OK)
        return NULL;
    enum { N = 50 };
    for (int i = 0; i < N; i++) /* HELLO and PING, alternating, all sent before reading */
        if (i % 2 == 0) {
            uint8_t hello[] = {1, 0, 1, 0, 1, 0, 'x'};
            ragkv_send_frame(k, RK_OP_HELLO, (uint64_t)(c->id * 1000 + i), hello, sizeof(hello));
        } else {
            ragkv_send_frame(k, RK_OP_PING, (uint64_t)(c->id * 1000 + i), NULL, 0);
        }
    for (int i = 0; i < N; i++) {
        rk_proto_hdr h;
        uint8_t *p;
        if (ragkv_recv_frame(k, &h, &p) != RK_OK)
            break;
        if (h.request_id == (uint64_t)(c->id * 1000 + i) && h.status == RK_OK &&
            h.opcode == (i % 2 == 0 ? RK_OP_HELLO : RK_OP_PING))
            c->ok++;
        rk_free(p);
    }
    ragkv_close(k);
    return NULL;
}

Test(concurrency, many_connections_pipelining, .timeout = 60)
{
    char tmp[256];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    rk_test_proc d;
    int hport;
    cr_assert(rk_test_daemon_start(tmp, NULL, &d, &port, &hport));
    enum { C = 48 };
    pthread_t th[C];
    struct cl cs[C];
    for (int i = 0; i < C; i++) {
        cs[i] = (struct cl){.id = i + 1};
        cr_assert_eq(pthread_create(&th[i], NULL, client, &cs[i]), 0);
    }
    for (int i = 0; i < C; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < C; i++)
        cr_expect_eq(cs[i].ok, 50, "client %d got %d of 50 responses in order", i, cs[i].ok);
    int code;
    char *body;
    cr_assert_eq(ragkv_http_get("127.0.0.1", hport, "/healthz", 5000, &code, &body), RK_OK);
    cr_expect_eq(code, 200);
    rk_free(body);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 10000), 0);
    rk_test_rmrf(tmp);
}
