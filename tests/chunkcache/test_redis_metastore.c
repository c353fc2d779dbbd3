/* Redis metadata backend specifics: EVALSHA falls back to EVAL after the script cache is
 * flushed, reply sizes are bounded, bad addresses and prefixes are refused. Uses the
 * harness's Redis (scripts/test.sh) with a private key prefix. */
#include "cc_testlib.h"

static void need_redis(char *host, size_t n, int *port)
{
    if (!cct_redis(host, n, port))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through scripts/test.sh)");
}

Test(redis_metastore, script_cache_flush_falls_back_to_eval)
{
    char host[128], prefix[64];
    int port;
    need_redis(host, sizeof(host), &port);
    cct_prefix(prefix, sizeof(prefix));
    cc_metastore ms;
    cr_assert_eq(cc_metastore_redis_open(host, port, prefix, NULL, &ms), RK_OK, "%s", rk_error_msg());
    cc_tenant_cfg t = {.name = "x"};
    cr_assert_eq(cc_metastore_tenant_put(&ms, &t), RK_OK);
    redisContext *c = redisConnect(host, port);
    cr_assert(c && !c->err);
    redisReply *rep = redisCommand(c, "SCRIPT FLUSH");
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    redisFree(c);
    cc_record r = cct_rec("x", 1, 10, 1, false);
    cr_expect_eq(cc_metastore_insert(&ms, &r, 0, NULL), RK_OK, "insert after SCRIPT FLUSH: %s", rk_error_msg());
    cr_expect_eq(cc_metastore_insert(&ms, &r, 0, NULL), RK_ERR_EXISTS, "and EVALSHA works again");
    cc_evlist ev = {0};
    cr_expect_eq(cc_metastore_tenant_del(&ms, "x", &ev), RK_OK);
    cr_expect_eq(ev.n, 1);
    cc_evlist_free(&ev);
    cc_metastore_close(&ms);
}

Test(redis_metastore, oversized_replies_are_refused)
{
    char host[128], prefix[64];
    int port;
    need_redis(host, sizeof(host), &port);
    cct_prefix(prefix, sizeof(prefix));
    cc_redis_opts o = cc_redis_opts_default();
    o.max_reply_elements = 2;
    cc_metastore ms;
    cr_assert_eq(cc_metastore_redis_open(host, port, prefix, &o, &ms), RK_OK);
    const char *names[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        cc_tenant_cfg t = {0};
        strcpy(t.name, names[i]);
        cr_assert_eq(cc_metastore_tenant_put(&ms, &t), RK_OK);
    }
    char **list = NULL;
    size_t n = 0;
    cr_expect_eq(cc_metastore_tenant_list(&ms, &list, &n), RK_ERR_META, "3 names > limit of 2");
    for (int i = 0; i < 3; i++)
        cc_metastore_tenant_del(&ms, names[i], NULL);
    cr_assert_eq(cc_metastore_tenant_list(&ms, &list, &n), RK_OK);
    cr_expect_eq(n, 0);
    cc_names_free(list, n);
    cc_metastore_close(&ms);
}

Test(redis_metastore, bad_arguments)
{
    cc_metastore ms;
    cr_expect_eq(cc_metastore_redis_open("127.0.0.1", 0, "p:", NULL, &ms), RK_ERR_INVALID);
    cr_expect_eq(cc_metastore_redis_open("127.0.0.1", 6379, "bad*prefix", NULL, &ms), RK_ERR_INVALID);
    cr_expect_eq(cc_metastore_redis_open(NULL, 6379, "p:", NULL, &ms), RK_ERR_INVALID);
}
