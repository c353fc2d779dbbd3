/* The test harness's private Redis (scripts/test.sh) is up and reachable with hiredis. */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>

#include "testutil.h"

Test(redis_env, private_redis_answers_ping)
{
    char host[128];
    int port;
    if (!rk_test_redis(host, sizeof(host), &port))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through `make test`)");
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    cr_assert(c && !c->err, "connect %s:%d: %s", host, port, c ? c->errstr : "oom");
    redisReply *r = redisCommand(c, "PING");
    cr_assert_not_null(r);
    cr_expect_str_eq(r->str, "PONG");
    freeReplyObject(r);
    redisFree(c);
}
