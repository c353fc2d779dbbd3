/* bench.c — `ragkv bench store` (cc_bench_main): put/get throughput and p50/p99 latency of
 * 256 KiB / 1 MiB / 4 MiB blobs through the chunk store (RAM tier; RocksDB tier with the
 * page cache warm), side by side with SET/GET of the same blobs on a private redis-server
 * started by the benchmark on a free loopback port (what LMCache's Redis backend does). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "ragkv/alloc.h"
#include "ragkv/chunkcache.h"
#include "ragkv/clock.h"
#include "ragkv/log.h"

typedef struct row {
    size_t size;        /* blob bytes */
    const char *op;     /* "put" / "get" */
    const char *where;  /* "store:ram", "store:rocksdb", "redis" */
    size_t n;           /* operations timed */
    double ops_s;       /* operations per second (one client thread) */
    double mib_s;       /* MiB per second */
    double p50_us;      /* median latency */
    double p99_us;      /* 99th percentile latency */
} row;

typedef struct bench {
    row rows[64]; /* results in measurement order */
    size_t nrows; /* rows used */
} bench;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void add_row(bench *B, size_t size, const char *op, const char *where, uint64_t *lat, size_t n,
                    uint64_t total_ns)
{
    if (B->nrows == 64 || !n)
        return;
    qsort(lat, n, sizeof(*lat), cmp_u64);
    row *r = &B->rows[B->nrows++];
    r->size = size;
    r->op = op;
    r->where = where;
    r->n = n;
    r->ops_s = n / (total_ns / 1e9);
    r->mib_s = r->ops_s * (double)size / (1 << 20);
    r->p50_us = lat[n / 2] / 1e3;
    size_t i99 = (n * 99 + 99) / 100;
    r->p99_us = lat[i99 >= n ? n - 1 : i99] / 1e3;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof(a);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* Start redis-server (no persistence) and wait until it answers PING (bounded, 10 s). */
static pid_t start_redis(const char *bin, int port, const char *dir)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        char p[16];
        snprintf(p, sizeof(p), "%d", port);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 1);
        execlp(bin, bin, "--bind", "127.0.0.1", "--port", p, "--save", "", "--appendonly", "no", "--dir", dir,
               "--daemonize", "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 1000; i++) {
        redisContext *c = redisConnect("127.0.0.1", port);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS;
            if (r)
                freeReplyObject(r);
            redisFree(c);
            if (ok)
                return pid;
        } else if (c) {
            redisFree(c);
        }
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return -1;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
}

static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (*end == 'K' || *end == 'k')
        v *= 1024;
    else if (*end == 'M' || *end == 'm')
        v *= 1024 * 1024;
    return v > 0 ? (size_t)v : 0;
}

static cc_store *open_store(const char *dir, int port, bool redis_meta, uint64_t ram)
{
    cc_config cfg = cc_config_default();
    cfg.data_dir = dir;
    if (redis_meta) {
        cfg.redis_host = "127.0.0.1";
        cfg.redis_port = port;
        cfg.redis_prefix = "bench:";
    }
    cfg.ram_budget_bytes = ram;
    cfg.rocks.blob_cache_bytes = 0;
    cc_store *s = NULL;
    if (cc_store_open(&cfg, &s) != RK_OK) {
        fprintf(stderr, "bench: open store: %s\n", rk_error_msg());
        return NULL;
    }
    return s;
}

static int run_size(bench *B, size_t size, size_t count, int rounds, const char *dir, int port, bool redis_meta)
{
    int rc = 1;
    uint8_t **blobs = rk_calloc(count, sizeof(*blobs));
    cc_key *keys = rk_calloc(count, sizeof(*keys));
    uint64_t *lat = rk_calloc(count * (size_t)rounds, sizeof(*lat));
    cc_store *s = NULL;
    redisContext *rc_ = NULL;
    char sub[1200];
    snprintf(sub, sizeof(sub), "%s/store-%zu", dir, size);
    if (!blobs || !keys || !lat)
        goto out;
    for (size_t i = 0; i < count; i++) {
        if (!(blobs[i] = rk_malloc(size)))
            goto out;
        fill(blobs[i], size, size * 1000 + i);
    }
    /* chunk store: put */
    if (!(s = open_store(sub, port, redis_meta, (uint64_t)size * count * 2)))
        goto out;
    cc_quota q = {0, 0, CC_QUOTA_REJECT};
    cc_store_tenant_create(s, "bench", &q);
    uint64_t t0 = rk_now_ns();
    for (size_t i = 0; i < count; i++) {
        int32_t toks[4] = {(int32_t)size, (int32_t)i, 7, 9};
        cc_put_args a = {.model = "bench", .tokens = toks, .ntokens = 4, .blob = blobs[i], .blob_len = size, .cost = 1};
        uint64_t a0 = rk_now_ns();
        if (cc_store_put(s, "bench", &a, &keys[i]) != RK_OK) {
            fprintf(stderr, "bench: put: %s\n", rk_error_msg());
            goto out;
        }
        lat[i] = rk_now_ns() - a0;
    }
    add_row(B, size, "put", "store", lat, count, rk_now_ns() - t0);
    /* get from the RAM tier (admitted at put) */
    t0 = rk_now_ns();
    size_t n = 0;
    for (int r = 0; r < rounds; r++)
        for (size_t i = 0; i < count; i++) {
            cc_buf *b;
            uint64_t a0 = rk_now_ns();
            if (cc_store_get(s, "bench", &keys[i], &b, NULL) != RK_OK) {
                fprintf(stderr, "bench: get: %s\n", rk_error_msg());
                goto out;
            }
            cc_buf_release(b);
            lat[n++] = rk_now_ns() - a0;
        }
    add_row(B, size, "get", "store:ram", lat, n, rk_now_ns() - t0);
    /* get from RocksDB: reopen with no RAM tier; one warm-up pass fills the page cache */
    cc_store_close(s);
    if (!(s = open_store(sub, port, redis_meta, 0)))
        goto out;
    for (int r = -1; r < rounds; r++) {
        if (r == 0) {
            n = 0;
            t0 = rk_now_ns();
        }
        for (size_t i = 0; i < count; i++) {
            cc_buf *b;
            uint64_t a0 = rk_now_ns();
            if (cc_store_get(s, "bench", &keys[i], &b, NULL) != RK_OK) {
                fprintf(stderr, "bench: get (rocksdb): %s\n", rk_error_msg());
                goto out;
            }
            cc_buf_release(b);
            if (r >= 0)
                lat[n++] = rk_now_ns() - a0;
        }
    }
    add_row(B, size, "get", "store:rocksdb", lat, n, rk_now_ns() - t0);
    cc_store_close(s);
    s = NULL;

    /* redis-server SET/GET of the same blobs */
    rc_ = redisConnect("127.0.0.1", port);
    if (!rc_ || rc_->err)
        goto out;
    t0 = rk_now_ns();
    for (size_t i = 0; i < count; i++) {
        uint64_t a0 = rk_now_ns();
        char key[64];
        snprintf(key, sizeof(key), "blob:%zu:%zu", size, i);
        redisReply *r = redisCommand(rc_, "SET %s %b", key, blobs[i], size);
        if (!r || r->type == REDIS_REPLY_ERROR)
            goto out;
        freeReplyObject(r);
        lat[i] = rk_now_ns() - a0;
    }
    add_row(B, size, "put", "redis", lat, count, rk_now_ns() - t0);
    t0 = rk_now_ns();
    n = 0;
    for (int r = 0; r < rounds; r++)
        for (size_t i = 0; i < count; i++) {
            uint64_t a0 = rk_now_ns();
            char key[64];
            snprintf(key, sizeof(key), "blob:%zu:%zu", size, i);
            redisReply *rep = redisCommand(rc_, "GET %s", key);
            if (!rep || rep->type != REDIS_REPLY_STRING || rep->len != size)
                goto out;
            freeReplyObject(rep);
            lat[n++] = rk_now_ns() - a0;
        }
    add_row(B, size, "get", "redis", lat, n, rk_now_ns() - t0);
    redisReply *fl = redisCommand(rc_, "FLUSHALL");
    if (fl)
        freeReplyObject(fl);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "bench: size %zu failed\n", size);
    if (rc_)
        redisFree(rc_);
    cc_store_close(s);
    for (size_t i = 0; blobs && i < count; i++)
        rk_free(blobs[i]);
    rk_free(blobs);
    rk_free(keys);
    rk_free(lat);
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: ragkv bench store [--sizes 256K,1M,4M] [--mib N] [--rounds N] [--meta redis|embedded]\n"
                    "                         [--dir DIR] [--redis-server PATH] [--json FILE]\n");
}

static void rmrf(const char *dir)
{
    char cmd[1400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: could not remove %s\n", dir);
}

int cc_bench_main(int argc, char **argv)
{
    const char *sizes = "256K,1M,4M", *json = NULL, *dir_arg = NULL, *redis_bin = "redis-server";
    size_t mib = 64;
    int rounds = 3;
    bool redis_meta = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--sizes") && v)
            sizes = argv[++i];
        else if (!strcmp(a, "--mib") && v)
            mib = (size_t)atol(argv[++i]);
        else if (!strcmp(a, "--rounds") && v)
            rounds = atoi(argv[++i]);
        else if (!strcmp(a, "--meta") && v)
            redis_meta = strcmp(argv[++i], "embedded") != 0;
        else if (!strcmp(a, "--dir") && v)
            dir_arg = argv[++i];
        else if (!strcmp(a, "--redis-server") && v)
            redis_bin = argv[++i];
        else if (!strcmp(a, "--json") && v)
            json = argv[++i];
        else {
            usage();
            return 2;
        }
    }
    if (!mib || rounds < 1) {
        usage();
        return 2;
    }
    rk_log_set_level(RK_LOG_WARN);
    char dir[1024];
    if (dir_arg)
        snprintf(dir, sizeof(dir), "%s", dir_arg);
    else {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof(dir), "%s/ragkv-bench-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dir)) {
            perror("bench: mkdtemp");
            return 1;
        }
    }
    int port = free_port();
    pid_t rpid = start_redis(redis_bin, port, dir);
    if (rpid < 0) {
        fprintf(stderr, "bench: could not start %s\n", redis_bin);
        if (!dir_arg)
            rmrf(dir);
        return 1;
    }
    bench B = {0};
    int rc = 0;
    char list[256];
    snprintf(list, sizeof(list), "%s", sizes);
    for (char *save, *tok = strtok_r(list, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        size_t size = parse_size(tok);
        if (!size) {
            usage();
            rc = 2;
            break;
        }
        size_t count = (mib << 20) / size;
        if (count < 8)
            count = 8;
        rc = run_size(&B, size, count, rounds, dir, port, redis_meta);
    }
    kill(rpid, SIGTERM);
    waitpid(rpid, NULL, 0);
    if (!dir_arg)
        rmrf(dir);
    if (rc == 2)
        return rc;
    printf("chunk store vs redis-server, one client thread, metadata: %s\n", redis_meta ? "redis" : "embedded");
    printf("%-9s %-4s %-14s %7s %10s %9s %10s %10s\n", "size", "op", "backend", "n", "ops/s", "MiB/s", "p50 us",
           "p99 us");
    for (size_t i = 0; i < B.nrows; i++) {
        row *r = &B.rows[i];
        printf("%-9zu %-4s %-14s %7zu %10.0f %9.0f %10.1f %10.1f\n", r->size, r->op, r->where, r->n, r->ops_s,
               r->mib_s, r->p50_us, r->p99_us);
    }
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            perror(json);
            return 1;
        }
        fprintf(f, "{\"bench\":\"store\",\"metadata\":\"%s\",\"rows\":[", redis_meta ? "redis" : "embedded");
        for (size_t i = 0; i < B.nrows; i++) {
            row *r = &B.rows[i];
            fprintf(f, "%s\n{\"size\":%zu,\"op\":\"%s\",\"backend\":\"%s\",\"n\":%zu,\"ops_s\":%.1f,\"mib_s\":%.1f,"
                       "\"p50_us\":%.1f,\"p99_us\":%.1f}",
                    i ? "," : "", r->size, r->op, r->where, r->n, r->ops_s, r->mib_s, r->p50_us, r->p99_us);
        }
        fprintf(f, "\n]}\n");
        fclose(f);
    }
    return rc;
}
