/* Crash consistency of the write path: a writer process is SIGKILLed in the middle of a run
 * of puts; afterwards every acknowledged chunk is served intact, usage equals the chunks on
 * disk, and gc removes whatever orphan blob the kill left behind. Embedded (RocksDB) and
 * Redis metadata. */
#include <poll.h>
#include <sys/wait.h>

#include "cc_testlib.h"

enum { SIZE = 3000, ACKS_BEFORE_KILL = 25 };

static cc_config crash_cfg(const char *dir, cct_env *e)
{
    cc_config cfg = cc_config_default();
    cfg.data_dir = dir;
    if (e->mk == CCT_REDIS) {
        cfg.redis_host = e->host;
        cfg.redis_port = e->port;
        cfg.redis_prefix = e->prefix;
    }
    cfg.gc_grace_ms = 0;
    return cfg;
}

/* The child: put chunks forever, writing "<seed>\n" to fd after each acknowledged put. */
static void writer_child(cc_config cfg, int fd)
{
    cc_store *s;
    if (cc_store_open(&cfg, &s) != RK_OK)
        _exit(2);
    cc_quota q = {0, 0, CC_QUOTA_REJECT};
    rk_status st = cc_store_tenant_create(s, "t", &q);
    if (st != RK_OK && st != RK_ERR_EXISTS)
        _exit(3);
    for (uint64_t i = 0;; i++) {
        if (cct_put(s, "t", i, SIZE, 1, NULL) != RK_OK)
            _exit(4);
        char line[32];
        int n = snprintf(line, sizeof(line), "%llu\n", (unsigned long long)i);
        if (write(fd, line, (size_t)n) != n)
            _exit(5);
    }
}

static int count_cb(void *arg, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl)
{
    ++*(int *)arg;
    return 0;
}

static void t_crash(cct_ms_kind mk)
{
    cct_skip_if_unavailable(mk);
    cct_env e;
    cct_env_init(&e, CCT_BS_ROCKS, mk);
    cc_config cfg = crash_cfg(e.dir, &e);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        writer_child(cfg, p[1]);
    }
    close(p[1]);
    /* read acknowledgements until enough, then kill without warning */
    FILE *in = fdopen(p[0], "r");
    char line[64];
    uint64_t acked[4096];
    int nacked = 0;
    while (nacked < ACKS_BEFORE_KILL && fgets(line, sizeof(line), in))
        acked[nacked++] = strtoull(line, NULL, 10);
    cr_assert_eq(nacked, ACKS_BEFORE_KILL, "writer died early");
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    while (nacked < 4096 && fgets(line, sizeof(line), in)) /* acks written before the kill */
        acked[nacked++] = strtoull(line, NULL, 10);
    fclose(in);

    cc_store *s;
    cr_assert_eq(cc_store_open(&cfg, &s), RK_OK, "reopen after the crash: %s", rk_error_msg());
    for (int i = 0; i < nacked; i++) {
        cc_key k;
        int32_t toks[8];
        for (int j = 0; j < 8; j++)
            toks[j] = (int32_t)(acked[i] * 8 + (uint64_t)j);
        cc_key_compute("m", "t", toks, 8, &k);
        cct_expect_blob(s, "t", &k, acked[i], SIZE);
    }
    uint64_t removed = 0;
    cr_assert_eq(cc_store_gc(s, &removed), RK_OK);
    cr_expect(removed <= 1, "at most the put in flight left an orphan (%llu)", (unsigned long long)removed);
    int blobs = 0;
    cr_assert_eq(cc_blobstore_scan(cc_store_blobstore(s), CC_SPACE_CHUNKS, count_cb, &blobs), RK_OK);
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(s, "t", &ti), RK_OK);
    cr_expect(ti.chunks >= (uint64_t)nacked, "acknowledged chunks are all accounted");
    cr_expect(ti.chunks <= (uint64_t)nacked + 1, "at most the put in flight was also committed");
    cr_expect_eq(ti.chunks, (uint64_t)blobs, "usage equals the blobs on disk");
    cr_expect_eq(ti.bytes, ti.chunks * SIZE);
    cc_store_close(s);
    cct_env_fini(&e);
}

Test(crash, writer_killed_mid_put_embedded) { t_crash(CCT_EMB_ROCKS); }
Test(crash, writer_killed_mid_put_redis) { t_crash(CCT_REDIS); }
