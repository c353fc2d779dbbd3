/* test_redis_cluster.c — ragkvd nodes in cluster mode over the harness's private Redis (a key
 * prefix per test): membership, placement, a joining node taking its share by read repair, a
 * graceful leave, and the peer credential's boundaries. The failure test with Sentinel and
 * SIGKILLs is test_local_cluster.py. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "testutil.h"

#define NCHUNKS 12

struct node {
    char dir[320];
    rk_test_proc p;
    int port, hport;
};

static char g_redis[160], g_prefix[64], g_secret_file[300], g_model[1024];

static void setup_env(const char *tmp)
{
    char host[128];
    int rport;
    if (!rk_test_redis(host, sizeof(host), &rport))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through `make test`)");
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    snprintf(g_model, sizeof(g_model), "%s", model);
    snprintf(g_redis, sizeof(g_redis), "%s:%d", host, rport);
    snprintf(g_prefix, sizeof(g_prefix), "rkc%d_%ld:", (int)getpid(), (long)(rk_now_ns() % 100000));
    snprintf(g_secret_file, sizeof(g_secret_file), "%s/cluster.secret", tmp);
    FILE *f = fopen(g_secret_file, "w");
    cr_assert_not_null(f);
    fputs("test-cluster-secret-0123456789\n", f);
    fclose(f);
}

static void node_start(struct node *n, const char *tmp, const char *name)
{
    snprintf(n->dir, sizeof(n->dir), "%s/%s", tmp, name);
    const char *extra[] = {"--model", g_model, "--redis", g_redis, "--redis-prefix", g_prefix,
                           "--cluster-secret-file", g_secret_file, "--node-id", name, "--cluster-replicas", "1",
                           "--cluster-heartbeat-ms", "100", "--cluster-node-ttl-ms", "800", "--compute-threads", "1",
                           NULL};
    cr_assert(rk_test_daemon_start(n->dir, extra, &n->p, &n->port, &n->hport), "node %s did not start", name);
}

/* Give node n the credentials of node `from` and reload them (the ready line of the reload is
 * the event waited for). */
static void node_copy_tenants(struct node *n, const struct node *from)
{
    char src[400], dst[400], tmp[420], line[256], buf[65536];
    snprintf(src, sizeof(src), "%s/var/auth/tenants", from->dir);
    snprintf(dst, sizeof(dst), "%s/var/auth/tenants", n->dir);
    snprintf(tmp, sizeof(tmp), "%s.new", dst);
    FILE *in = fopen(src, "rb"), *out = fopen(tmp, "wb");
    cr_assert(in && out, "copy %s", src);
    size_t len = fread(buf, 1, sizeof(buf), in);
    cr_assert(len > 0 && len < sizeof(buf) && fwrite(buf, 1, len, out) == len);
    fclose(in);
    cr_assert_eq(fclose(out), 0);
    cr_assert_eq(rename(tmp, dst), 0); /* replaced atomically, like ragkvd does */
    kill(n->p.pid, SIGHUP);
    bool reloaded = false;
    while (!reloaded && rk_test_read_line(&n->p, line, sizeof(line), 10000))
        reloaded = strstr(line, "ragkvd reloaded") != NULL;
    cr_assert(reloaded, "no reload line");
}

static ragkv_conn *connect_as(const struct node *n, const char *token)
{
    ragkv_conn *c;
    cr_assert_eq(ragkv_connect("127.0.0.1", n->port, 20000, &c), RK_OK);
    cr_assert_eq(ragkv_auth(c, token, NULL, 0), RK_OK, "%s", rk_error_msg());
    return c;
}

/* Poll CLUSTER_NODES on n until it lists want nodes (deadline 10 s). */
static void wait_nodes(const struct node *n, const char *token, size_t want)
{
    ragkv_conn *c = connect_as(n, token);
    uint64_t until = rk_now_ns() + 10000000000ull;
    size_t got = 0;
    while (rk_now_ns() < until) {
        uint32_t rep;
        ragkv_node *v;
        cr_assert_eq(ragkv_cluster_nodes(c, &rep, &v, &got), RK_OK);
        rk_free(v);
        if (got == want)
            break;
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL); /* polling a condition with a deadline */
    }
    ragkv_close(c);
    cr_assert_eq(got, want, "membership has %zu nodes, expected %zu", got, want);
}

static long metric(const struct node *n, const char *name)
{
    int code;
    char *body;
    cr_assert_eq(ragkv_http_get("127.0.0.1", n->hport, "/metrics", 5000, &code, &body), RK_OK);
    char pat[128];
    snprintf(pat, sizeof(pat), "\nragkv_%s ", name);
    const char *p = strstr(body, pat);
    long v = p ? atol(p + strlen(pat)) : -1;
    rk_free(body);
    return v;
}

Test(cluster, placement_join_and_leave, .timeout = 120)
{
    char tmp[256], adm[256], tok[256];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    setup_env(tmp);
    struct node a, b, c;
    node_start(&a, tmp, "a");
    node_start(&b, tmp, "b");
    cr_assert(rk_test_admin_token(a.dir, adm, sizeof(adm)));
    ragkv_conn *ac = connect_as(&a, adm);
    cr_assert_eq(ragkv_admin_tenant_create(ac, "acme", 0, 0, 0, tok, sizeof(tok)), RK_OK, "%s", rk_error_msg());
    ragkv_close(ac);
    node_copy_tenants(&b, &a);
    wait_nodes(&a, tok, 2);

    /* puts through a land on their owners: a's remote puts are exactly the chunks b owns */
    ragkv_conn *t = connect_as(&a, tok);
    uint8_t keys[NCHUNKS][32];
    ragkv_node ab[2] = {{"a", ""}, {"b", ""}};
    long owned_by_b = 0;
    for (int i = 0; i < NCHUNKS; i++) {
        int32_t ch[16];
        for (int j = 0; j < 16; j++)
            ch[j] = 1 + (i * 37 + j * 11) % 500;
        cr_assert_eq(ragkv_put_chunk(t, ch, 16, keys[i], NULL, NULL), RK_OK, "%s", rk_error_msg());
        ragkv_rank_nodes(ab, 2, keys[i]);
        owned_by_b += strcmp(ab[0].id, "b") == 0;
    }
    ragkv_close(t);
    cr_assert(owned_by_b > 0 && owned_by_b < NCHUNKS, "a fair split expected, b owns %ld", owned_by_b);
    cr_expect_eq(metric(&a, "cluster_remote_puts_total"), owned_by_b);

    /* a joining node: serves every chunk at once (fetched from the old owners) and keeps a
     * copy of those it now owns, so a second pass fetches only the others */
    node_start(&c, tmp, "c");
    node_copy_tenants(&c, &a);
    wait_nodes(&a, tok, 3);
    wait_nodes(&c, tok, 3);
    ragkv_node abc[3] = {{"a", ""}, {"b", ""}, {"c", ""}};
    long owned_by_c = 0;
    for (int i = 0; i < NCHUNKS; i++) {
        ragkv_rank_nodes(abc, 3, keys[i]);
        owned_by_c += strcmp(abc[0].id, "c") == 0;
    }
    cr_assert(owned_by_c > 0, "c should own some of the %d chunks", NCHUNKS);
    t = connect_as(&c, tok);
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < NCHUNKS; i++) {
            uint8_t *cont;
            uint32_t len;
            cr_assert_eq(ragkv_get_kv(t, keys[i], NULL, 0, &cont, &len), RK_OK, "pass %d chunk %d: %s", pass, i,
                         rk_error_msg());
            rk_free(cont);
        }
    ragkv_close(t);
    cr_expect_eq(metric(&c, "cluster_remote_gets_total"), 2 * NCHUNKS - owned_by_c,
                 "the second pass reads c's share locally");

    /* a graceful leave deregisters at once; everything stays readable */
    cr_assert_eq(rk_test_stop(&c.p, SIGTERM, 20000), 0);
    wait_nodes(&a, tok, 2);
    t = connect_as(&b, tok);
    for (int i = 0; i < NCHUNKS; i++) {
        uint8_t *cont;
        uint32_t len;
        cr_assert_eq(ragkv_get_kv(t, keys[i], NULL, 0, &cont, &len), RK_OK, "after the leave, chunk %d: %s", i,
                     rk_error_msg());
        rk_free(cont);
    }
    ragkv_close(t);
    cr_expect_eq(rk_test_stop(&a.p, SIGTERM, 20000), 0);
    cr_expect_eq(rk_test_stop(&b.p, SIGTERM, 20000), 0);
    rk_test_rmrf(tmp);
}

/* Send one raw request and return the response status. */
static int32_t raw_status(ragkv_conn *c, uint16_t op, const rk_buf *req)
{
    cr_assert_eq(ragkv_send_frame(c, op, 77, req ? req->data : NULL, req ? (uint32_t)req->len : 0), RK_OK);
    rk_proto_hdr h;
    uint8_t *pl = NULL;
    do {
        rk_free(pl);
        pl = NULL;
        cr_assert_eq(ragkv_recv_frame(c, &h, &pl), RK_OK);
    } while (h.type != RK_PT_RESPONSE);
    rk_free(pl);
    return h.status;
}

static void single_node_and_bad_configuration(void);

Test(cluster, peer_credential_boundaries_and_configuration, .timeout = 90)
{
    char tmp[256], adm[256], tok[256];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    setup_env(tmp);
    struct node a;
    node_start(&a, tmp, "solo");
    cr_assert(rk_test_admin_token(a.dir, adm, sizeof(adm)));
    ragkv_conn *ac = connect_as(&a, adm);
    cr_assert_eq(ragkv_admin_tenant_create(ac, "acme", 0, 0, 0, tok, sizeof(tok)), RK_OK, "%s", rk_error_msg());
    rk_buf get = RK_BUF_INIT;
    rk_buf_put_str(&get, "acme");
    uint8_t zero[32] = {0};
    rk_buf_append(&get, zero, 32);
    cr_expect_eq(raw_status(ac, RK_OP_PEER_GET, &get), RK_ERR_DENIED, "the admin credential is no peer");
    ragkv_close(ac);
    ragkv_conn *t = connect_as(&a, tok);
    cr_expect_eq(raw_status(t, RK_OP_PEER_GET, &get), RK_ERR_DENIED, "a tenant is no peer");
    ragkv_close(t);
    ragkv_conn *p = connect_as(&a, "test-cluster-secret-0123456789");
    cr_expect_eq(raw_status(p, RK_OP_STATS, NULL), RK_ERR_DENIED, "a peer runs peer operations only");
    cr_expect_eq(raw_status(p, RK_OP_TENANT_LIST, NULL), RK_ERR_DENIED);
    cr_expect_eq(raw_status(p, RK_OP_PEER_GET, &get), RK_ERR_NOT_FOUND);
    rk_buf bad = RK_BUF_INIT;
    rk_buf_put_str(&bad, "acme");
    rk_buf_append(&bad, zero, 32);
    rk_buf_put_u16(&bad, 4);
    rk_buf_put_u16(&bad, 1);
    rk_buf_put_f32(&bad, 1.0f);
    rk_buf_put_u32(&bad, 8);
    rk_buf_append(&bad, "RKC1\x01\x00\x00\x00", 8);
    cr_expect_lt(raw_status(p, RK_OP_PEER_PUT, &bad), 0, "a malformed blob is refused");
    cr_expect_eq(raw_status(p, RK_OP_PING, NULL), RK_OK, "and the connection lives on");
    rk_buf_free(&bad);
    ragkv_close(p);
    ragkv_conn *w;
    cr_assert_eq(ragkv_connect("127.0.0.1", a.port, 20000, &w), RK_OK);
    cr_expect_eq(ragkv_auth(w, "test-cluster-secret-0123456780", NULL, 0), RK_ERR_AUTH, "a wrong secret");
    ragkv_close(w);
    rk_buf_free(&get);
    cr_expect_eq(rk_test_stop(&a.p, SIGTERM, 20000), 0);
    rk_test_rmrf(tmp);
    single_node_and_bad_configuration();
}

/* Not in a cluster, CLUSTER_NODES says so; bad cluster configurations refuse to start. (Part
 * of the test above: a third test in this file trips a leak in Criterion's parallel runner.) */
static void single_node_and_bad_configuration(void)
{
    char tmp[256], dir[300];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    setup_env(tmp);
    /* not in a cluster: CLUSTER_NODES says so */
    struct node a;
    snprintf(a.dir, sizeof(a.dir), "%s/plain", tmp);
    const char *plain[] = {"--model", g_model, NULL};
    cr_assert(rk_test_daemon_start(a.dir, plain, &a.p, &a.port, &a.hport));
    char adm[256], tok[256];
    cr_assert(rk_test_admin_token(a.dir, adm, sizeof(adm)));
    ragkv_conn *ac = connect_as(&a, adm);
    cr_assert_eq(ragkv_admin_tenant_create(ac, "acme", 0, 0, 0, tok, sizeof(tok)), RK_OK);
    ragkv_close(ac);
    ragkv_conn *t = connect_as(&a, tok);
    uint32_t rep = 9;
    ragkv_node *v = NULL;
    size_t n = 9;
    cr_assert_eq(ragkv_cluster_nodes(t, &rep, &v, &n), RK_OK);
    cr_expect_eq(rep, 0);
    cr_expect_eq(n, 0);
    rk_free(v);
    ragkv_close(t);
    cr_expect_eq(rk_test_stop(&a.p, SIGTERM, 20000), 0);
    /* cluster mode without Redis, or with a short secret, refuses to start */
    rk_test_proc p;
    int port, hport;
    snprintf(dir, sizeof(dir), "%s/bad1", tmp);
    const char *no_redis[] = {"--cluster-secret-file", g_secret_file, NULL};
    cr_expect_not(rk_test_daemon_start(dir, no_redis, &p, &port, &hport));
    char short_secret[320];
    snprintf(short_secret, sizeof(short_secret), "%s/short.secret", tmp);
    FILE *f = fopen(short_secret, "w");
    fputs("tooshort\n", f);
    fclose(f);
    snprintf(dir, sizeof(dir), "%s/bad2", tmp);
    const char *weak[] = {"--redis", g_redis, "--redis-prefix", g_prefix, "--cluster-secret-file", short_secret, NULL};
    cr_expect_not(rk_test_daemon_start(dir, weak, &p, &port, &hport));
    rk_test_rmrf(tmp);
}
