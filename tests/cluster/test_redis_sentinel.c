/* test_redis_sentinel.c — finding the metadata primary through Redis Sentinel
 * (ragkv/redis_sentinel.h): a real Sentinel (redis-server --sentinel) watching the harness's
 * private Redis names it; non-Sentinels and dead addresses are refused. */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "ragkv/redis_sentinel.h"
#include "testutil.h"

Test(sentinel, parse_addr)
{
    char host[64];
    int port;
    cr_assert_eq(cc_redis_parse_addr("10.0.0.1:26379", 14, host, sizeof(host), &port), RK_OK);
    cr_expect_str_eq(host, "10.0.0.1");
    cr_expect_eq(port, 26379);
    cr_assert_eq(cc_redis_parse_addr("h:1,x:2", 3, host, sizeof(host), &port), RK_OK, "a list's first entry");
    cr_expect_str_eq(host, "h");
    const char *bad[] = {"nohost", ":1", "h:", "h:0", "h:65536", "h:12x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(cc_redis_parse_addr(bad[i], strlen(bad[i]), host, sizeof(host), &port), RK_ERR_INVALID, "%s",
                     bad[i]);
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    bind(s, (struct sockaddr *)&a, sizeof(a));
    getsockname(s, (struct sockaddr *)&a, &l);
    close(s);
    return ntohs(a.sin_port);
}

Test(sentinel, resolves_through_a_real_sentinel, .timeout = 60)
{
    char host[128];
    int rport;
    if (!rk_test_redis(host, sizeof(host), &rport))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through `make test`)");
    char list[300], h[128];
    int p;
    /* a plain Redis is not a Sentinel; a closed port answers nothing */
    snprintf(list, sizeof(list), "%s:%d", host, rport);
    cr_expect_eq(cc_sentinel_resolve(list, "ragkv", 500, h, sizeof(h), &p), RK_ERR_UNAVAILABLE);
    int sp = free_port();
    snprintf(list, sizeof(list), "127.0.0.1:%d", free_port());
    cr_expect_eq(cc_sentinel_resolve(list, "ragkv", 500, h, sizeof(h), &p), RK_ERR_UNAVAILABLE);
    cr_expect_eq(cc_sentinel_resolve("", "ragkv", 500, h, sizeof(h), &p), RK_ERR_INVALID);

    char tmp[256], conf[300];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    snprintf(conf, sizeof(conf), "%s/sentinel.conf", tmp);
    FILE *f = fopen(conf, "w");
    cr_assert_not_null(f);
    fprintf(f, "bind 127.0.0.1\nport %d\ndir %s\nsentinel monitor ragkvt %s %d 1\n", sp, tmp, host, rport);
    fclose(f);
    char *argv[] = {"/usr/bin/redis-server", conf, "--sentinel", NULL};
    if (access(argv[0], X_OK) != 0)
        cr_skip_test("skipped: no /usr/bin/redis-server");
    rk_test_proc s;
    cr_assert(rk_test_spawn(argv, &s));
    /* ready when it answers: poll with a deadline */
    snprintf(list, sizeof(list), "127.0.0.1:%d,127.0.0.1:%d", free_port(), sp); /* first entry dead */
    rk_status st = RK_ERR_UNAVAILABLE;
    for (int i = 0; i < 200 && st != RK_OK; i++) {
        st = cc_sentinel_resolve(list, "ragkvt", 500, h, sizeof(h), &p);
        if (st != RK_OK)
            usleep(20000);
    }
    cr_expect_eq(st, RK_OK, "%s", rk_error_msg());
    cr_expect_eq(p, rport);
    cr_expect_eq(cc_sentinel_resolve(list, "nosuch", 500, h, sizeof(h), &p), RK_ERR_UNAVAILABLE);
    /* and a connection to the primary it names passes the ROLE check */
    struct redisContext *rc = NULL;
    char ph[128] = "";
    int pp = 0;
    cr_expect_eq(cc_redis_connect_primary(list, "ragkvt", ph, sizeof(ph), &pp, 1000, &rc), RK_OK, "%s",
                 rk_error_msg());
    if (rc)
        redisFree(rc);
    rk_test_stop(&s, SIGTERM, 10000);
    rk_test_rmrf(tmp);
}
