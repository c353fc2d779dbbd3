/*
 * serve.c — `ragkv bench serve`: a load generator against a running ragkvd.
 *
 * It creates tenants through the admin credential, loads a corpus of chunks for each (or one
 * shared corpus granted to all), then many client threads send GENERATE requests whose
 * prompts are k chunks drawn by Zipf popularity in random order plus a random query, and it
 * reports throughput, time to first token (client side, to the first streamed token),
 * end-to-end latency, cache hit rate and the server's recompute fraction.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "ragkv/bench.h"

#define MAX_PHASES 16

struct serve_opts {
    const char *host, *token_file, *mode, *json, *json_dir;
    int port, http_port, tenants, conns, corpus, chunk_len, query_len, k, requests, max_tokens, shared;
    double zipf, ratio;
    int nmodes, nrates;
    int modes[6];              /* --mode list, wire numbers */
    double rates[MAX_PHASES];  /* --rate list (0: closed loop) */
    uint64_t seed;
};

struct bench {
    const struct serve_opts *o;
    int vocab;
    char (*tokens)[256];       /* (tenants) tenant tokens */
    char (*names)[64];         /* (tenants) tenant names */
    char corpus_ns[64];        /* shared corpus namespace, "" when per tenant */
    uint8_t *keys;             /* (tenants or 1, corpus, 32) chunk keys */
    double *cdf;               /* (corpus) Zipf CDF over popularity ranks */
    atomic_int next;           /* next request number */
    double *ttft, *e2e;        /* (requests) ms, client side (open loop: from the arrival time) */
    double *arrive;            /* (requests) open loop: arrival offsets in ns from t_start */
    bool open_loop;            /* this phase: requests arrive at arrive[], else back to back */
    uint64_t t_start;          /* rk_now_ns() when the requests start */
    double *server_ttft;       /* (requests) ms, as the server measured */
    atomic_llong hits, misses, prompt_tokens, recomputed, generated;
    atomic_int errors;
    uint8_t blend;             /* this phase's mode */
    uint64_t seed;             /* this phase's seed (queries, picks, arrivals) */
};

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double unif(uint64_t *s) { return (double)(xorshift(s) >> 11) / 9007199254740992.0; }

static int zipf_pick(const struct bench *b, uint64_t *rng)
{
    double u = unif(rng);
    int lo = 0, hi = b->o->corpus - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (b->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct worker_ctx {
    struct bench *b;
    int id;
    double first_ns; /* set by the callback */
    uint64_t start_ns;
};

static int first_token(void *ctx, const int32_t *t, uint32_t n)
{
    (void)t;
    (void)n;
    struct worker_ctx *w = ctx;
    if (w->first_ns == 0)
        w->first_ns = (double)rk_now_ns();
    return 0;
}

static void *worker(void *arg)
{
    struct worker_ctx *w = arg;
    struct bench *b = w->b;
    const struct serve_opts *o = b->o;
    int tenant = w->id % o->tenants;
    uint64_t rng = b->seed * 0x9e3779b97f4a7c15ull + (uint64_t)w->id * 7919 + 1;
    ragkv_conn *c;
    if (ragkv_connect(o->host, o->port, 120000, &c) != RK_OK || ragkv_auth(c, b->tokens[tenant], NULL, 0) != RK_OK) {
        fprintf(stderr, "bench serve: worker %d: %s\n", w->id, rk_error_msg());
        atomic_fetch_add(&b->errors, 1);
        return NULL;
    }
    const uint8_t *keys = b->keys + (size_t)(o->shared ? 0 : tenant) * o->corpus * 32;
    ragkv_segment *segs = rk_calloc((size_t)o->k, sizeof(ragkv_segment));
    int32_t *query = rk_malloc(sizeof(int32_t) * (size_t)(o->query_len ? o->query_len : 1));
    int *pick = rk_malloc(sizeof(int) * (size_t)o->k);
    for (;;) {
        int r = atomic_fetch_add(&b->next, 1);
        if (r >= o->requests)
            break;
        for (int i = 0; i < o->k; i++) { /* k distinct chunks by popularity, in drawn order */
            int p, dup;
            do {
                p = zipf_pick(b, &rng);
                dup = 0;
                for (int j = 0; j < i; j++)
                    dup |= pick[j] == p;
            } while (dup);
            pick[i] = p;
            segs[i] = (ragkv_segment){.key = keys + (size_t)p * 32};
        }
        for (int i = 0; i < o->query_len; i++)
            query[i] = 3 + (int32_t)(xorshift(&rng) % (uint64_t)(b->vocab - 3));
        ragkv_gen_params gp = {.ns = b->corpus_ns, .segs = segs, .nsegs = (uint32_t)o->k, .query = query,
                               .nquery = (uint32_t)o->query_len, .blend = b->blend, .recompute = (float)o->ratio,
                               .max_tokens = (uint32_t)o->max_tokens, .seed = (uint64_t)r};
        ragkv_gen_stats st;
        w->first_ns = 0;
        uint64_t t0 = rk_now_ns();
        if (b->open_loop) { /* open loop: the request arrives at its time; waiting for a free
                            connection counts in its latency */
            uint64_t due = b->t_start + (uint64_t)b->arrive[r];
            if (due > t0) {
                struct timespec ts = {.tv_sec = (time_t)((due - t0) / 1000000000ull),
                                      .tv_nsec = (long)((due - t0) % 1000000000ull)};
                while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                    ;
            }
            t0 = due;
        }
        rk_status s = ragkv_generate(c, &gp, first_token, w, &st);
        uint64_t t1 = rk_now_ns();
        if (s != RK_OK) {
            if (atomic_fetch_add(&b->errors, 1) == 0)
                fprintf(stderr, "bench serve: request %d: %s (%s)\n", r, rk_strerror(s), rk_error_msg());
            b->ttft[r] = b->e2e[r] = b->server_ttft[r] = NAN;
            continue;
        }
        b->ttft[r] = ((w->first_ns ? w->first_ns : (double)t1) - (double)t0) / 1e6;
        b->e2e[r] = (double)(t1 - t0) / 1e6;
        b->server_ttft[r] = st.ttft_ms;
        atomic_fetch_add(&b->hits, st.chunk_hits);
        atomic_fetch_add(&b->misses, st.chunk_misses);
        atomic_fetch_add(&b->prompt_tokens, st.prompt_tokens);
        atomic_fetch_add(&b->recomputed, st.recomputed);
        atomic_fetch_add(&b->generated, st.generated);
    }
    rk_free(segs);
    rk_free(query);
    rk_free(pick);
    ragkv_close(c);
    return NULL;
}

/* The q-quantile of the finite values of v[n] (sorted in place). */
static double quantile(double *v, int n, double q)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(v[i]))
            v[m++] = v[i];
    if (m == 0)
        return NAN;
    bench_sort(v, (size_t)m);
    int i = (int)ceil(q * m) - 1;
    return v[i < 0 ? 0 : i];
}

/* --mode a,b,...: wire numbers into o->modes. Non-zero on an unknown or repeated name. */
static int parse_modes(const char *list, const char *const names[6], struct serve_opts *o)
{
    o->nmodes = 0;
    const char *p = list;
    while (*p) {
        size_t len = strcspn(p, ",");
        int m = -1;
        for (int i = 0; i < 6; i++)
            if (strlen(names[i]) == len && !strncmp(p, names[i], len))
                m = i;
        for (int i = 0; i < o->nmodes; i++)
            if (o->modes[i] == m)
                m = -1;
        if (m < 0 || o->nmodes == 6) {
            fprintf(stderr, "ragkv bench serve: --mode: unknown or repeated mode in '%s'\n", list);
            return 1;
        }
        o->modes[o->nmodes++] = m;
        p += len;
        if (*p == ',')
            p++;
    }
    return o->nmodes ? 0 : 1;
}

/* --rate R,R,...: requests per second, 0 for a closed loop. Non-zero on a bad value. */
static int parse_rates(const char *list, struct serve_opts *o)
{
    o->nrates = 0;
    const char *p = list;
    while (*p) {
        char *end;
        double r = strtod(p, &end);
        if (end == p || (*end && *end != ',') || !(r >= 0 && r <= 1e6) || o->nrates == MAX_PHASES) {
            fprintf(stderr, "ragkv bench serve: --rate: bad list '%s' (at most %d rates >= 0)\n", list, MAX_PHASES);
            return 1;
        }
        o->rates[o->nrates++] = r;
        p = *end ? end + 1 : end;
    }
    return o->nrates ? 0 : 1;
}

/* The daemon's executor busy time so far (ragkv_executor_busy_us_total on its /metrics), in ms;
 * -1 without --http-port or when it cannot be read. */
static double busy_ms(const struct serve_opts *o)
{
    if (o->http_port <= 0)
        return -1;
    int code = 0;
    char *body = NULL;
    double v = -1;
    if (ragkv_http_get(o->host, o->http_port, "/metrics", 5000, &code, &body) == RK_OK && code == 200 && body) {
        const char *key = "\nragkv_executor_busy_us_total ";
        const char *p = strstr(body, key);
        if (p)
            v = strtod(p + strlen(key), NULL) / 1000.0;
    }
    rk_free(body);
    return v;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ragkv bench serve [--host H] [--port N] [--token-file F] [--tenants N] [--conns N]\n"
            "                         [--corpus N] [--chunk-len T] [--query-len Q] [--k K] [--requests N]\n"
            "                         [--zipf S] [--mode full|prefix|naive|cacheblend|cachecraft|ape]\n"
            "                         [--ratio R] [--rate R] [--max-tokens N] [--shared] [--seed S]\n"
            "                         [--http-port N] [--json FILE | --json-dir DIR]\n\n"
            "Load a running ragkvd (its admin credential: --token-file, default ./var/admin.token):\n"
            "create tenants, cache a corpus of chunks for each (or one --shared corpus granted to\n"
            "all), then send --requests GENERATE requests from --conns connections, each prompt K\n"
            "chunks drawn by Zipf(S) popularity in random order plus a Q-token query.\n"
            "--rate R: open loop, requests arrive as a Poisson process of R per second (seeded) and\n"
            "latencies count from the arrival (queueing included); 0 (default): closed loop, each\n"
            "connection sends its next request when the previous one is answered.\n"
            "--mode and --rate take comma-separated lists: the corpus is cached once and every\n"
            "(mode, rate) pair runs in turn (seed S + its index), one table row each; --json-dir\n"
            "writes DIR/<mode>-<rate>.json per pair (--json FILE: a single pair only).\n"
            "--http-port N: the daemon's HTTP port; each pair then also reports GPU time per request\n"
            "(the daemon's executor busy time over the pair's requests, from its /metrics).\n"
            "Defaults: 2 tenants, 8 conns, corpus 32, chunk-len 96, query-len 16, k 4, 200 requests,\n"
            "zipf 1.0, mode cacheblend, ratio 0.15, max-tokens 16.\n");
}

int bench_serve_main(int argc, char **argv)
{
    const char *rate_list = "0";
    struct serve_opts o = {.host = "127.0.0.1", .port = 7470, .token_file = "./var/admin.token", .mode = "cacheblend",
                           .tenants = 2, .conns = 8, .corpus = 32, .chunk_len = 96, .query_len = 16, .k = 4,
                           .requests = 200, .max_tokens = 16, .zipf = 1.0, .ratio = 0.15, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--shared")) {
            o.shared = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ragkv bench serve: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int *ip = !strcmp(a, "--port") ? &o.port : !strcmp(a, "--http-port") ? &o.http_port : !strcmp(a, "--tenants") ? &o.tenants : !strcmp(a, "--conns") ? &o.conns
                : !strcmp(a, "--corpus") ? &o.corpus : !strcmp(a, "--chunk-len") ? &o.chunk_len
                : !strcmp(a, "--query-len") ? &o.query_len : !strcmp(a, "--k") ? &o.k
                : !strcmp(a, "--requests") ? &o.requests : !strcmp(a, "--max-tokens") ? &o.max_tokens : NULL;
        if (ip) {
            char *end;
            long x = strtol(v, &end, 10);
            if (*end || x < 0 || x > 10000000) {
                fprintf(stderr, "ragkv bench serve: %s: bad number '%s'\n", a, v);
                return 2;
            }
            *ip = (int)x;
        } else if (!strcmp(a, "--host"))
            o.host = v;
        else if (!strcmp(a, "--token-file"))
            o.token_file = v;
        else if (!strcmp(a, "--mode"))
            o.mode = v;
        else if (!strcmp(a, "--json"))
            o.json = v;
        else if (!strcmp(a, "--json-dir"))
            o.json_dir = v;
        else if (!strcmp(a, "--zipf"))
            o.zipf = atof(v);
        else if (!strcmp(a, "--ratio"))
            o.ratio = atof(v);
        else if (!strcmp(a, "--rate"))
            rate_list = v;
        else if (!strcmp(a, "--seed"))
            o.seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "ragkv bench serve: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    static const char *modes[] = {"full", "prefix", "naive", "cacheblend", "cachecraft", "ape"}; /* wire order */
    if (parse_modes(o.mode, modes, &o) || parse_rates(rate_list, &o)) {
        usage(stderr);
        return 2;
    }
    if (o.tenants < 1 || o.conns < 1 || o.corpus < 1 || o.chunk_len < 1 || o.k < 1 || o.k > o.corpus ||
        o.requests < 1) {
        usage(stderr);
        return 2;
    }
    if (o.json && o.nmodes * o.nrates > 1) {
        fprintf(stderr, "ragkv bench serve: --json takes one mode and one rate; use --json-dir for lists\n");
        return 2;
    }
    struct bench b = {.o = &o};
    char adm[256] = "";
    FILE *f = fopen(o.token_file, "r");
    if (!f || !fgets(adm, sizeof(adm), f)) {
        fprintf(stderr, "ragkv bench serve: cannot read the admin credential %s: %s\n", o.token_file, strerror(errno));
        if (f)
            fclose(f);
        return 1;
    }
    fclose(f);
    adm[strcspn(adm, "\n")] = '\0';
    ragkv_conn *a;
    ragkv_server_info info;
    rk_status st = ragkv_connect(o.host, o.port, 120000, &a);
    if (st == RK_OK)
        st = ragkv_hello(a, &info);
    if (st == RK_OK)
        st = ragkv_auth(a, adm, NULL, 0);
    if (st != RK_OK || info.vocab < 4) {
        fprintf(stderr, "ragkv bench serve: %s:%d: %s\n", o.host, o.port,
                st != RK_OK ? rk_error_msg() : "the daemon serves no model");
        return 1;
    }
    b.vocab = (int)info.vocab;
    long need = 1 + (long)o.k * o.chunk_len + o.query_len + o.max_tokens;
    if (info.max_context && need > (long)info.max_context) {
        fprintf(stderr, "ragkv bench serve: prompts of 1 + %d x %d + %d tokens plus %d generated exceed the model's "
                        "context of %u; lower --k, --chunk-len or --query-len\n",
                o.k, o.chunk_len, o.query_len, o.max_tokens, info.max_context);
        ragkv_close(a);
        return 2;
    }
    int nload = o.shared ? 1 : o.tenants; /* corpora to load */
    b.tokens = rk_calloc((size_t)o.tenants + 1, sizeof(*b.tokens));
    b.names = rk_calloc((size_t)o.tenants + 1, sizeof(*b.names));
    b.keys = rk_malloc((size_t)nload * o.corpus * 32);
    b.cdf = rk_malloc(sizeof(double) * (size_t)o.corpus);
    b.ttft = rk_malloc(sizeof(double) * (size_t)o.requests);
    b.e2e = rk_malloc(sizeof(double) * (size_t)o.requests);
    b.server_ttft = rk_malloc(sizeof(double) * (size_t)o.requests);
    int32_t *chunk = rk_malloc(sizeof(int32_t) * (size_t)o.chunk_len);
    /* tenants (and the corpus tenant, last), recreated fresh */
    for (int t = 0; t <= o.tenants && st == RK_OK; t++) {
        if (t == o.tenants && !o.shared)
            break;
        if (t == o.tenants)
            snprintf(b.names[t], sizeof(b.names[t]), "bench-corpus-%llu", (unsigned long long)o.seed);
        else
            snprintf(b.names[t], sizeof(b.names[t]), "bench-%llu-%d", (unsigned long long)o.seed, t);
        ragkv_admin_tenant_delete(a, b.names[t]);
        st = ragkv_admin_tenant_create(a, b.names[t], 0, 0, 0, b.tokens[t], sizeof(b.tokens[t]));
    }
    for (int t = 0; o.shared && st == RK_OK && t < o.tenants; t++) {
        rk_buf g = RK_BUF_INIT;
        rk_buf_put_str(&g, b.names[o.tenants]);
        rk_buf_put_str(&g, b.names[t]);
        st = ragkv_call(a, RK_OP_NS_GRANT, g.data, (uint32_t)g.len, NULL, NULL);
        rk_buf_free(&g);
    }
    if (o.shared)
        snprintf(b.corpus_ns, sizeof(b.corpus_ns), "%s", b.names[o.tenants]);
    /* the corpora */
    uint64_t t0 = rk_now_ns();
    for (int c = 0; c < nload && st == RK_OK; c++) {
        ragkv_conn *lc;
        int owner = o.shared ? o.tenants : c;
        if ((st = ragkv_connect(o.host, o.port, 120000, &lc)) != RK_OK)
            break;
        if ((st = ragkv_auth(lc, b.tokens[owner], NULL, 0)) == RK_OK) {
            uint64_t rng = o.seed * 1000003ull + (uint64_t)c * 101 + 7;
            for (int i = 0; i < o.corpus && st == RK_OK; i++) {
                for (int j = 0; j < o.chunk_len; j++)
                    chunk[j] = 3 + (int32_t)(xorshift(&rng) % (uint64_t)(b.vocab - 3));
                st = ragkv_put_chunk(lc, chunk, (uint32_t)o.chunk_len, b.keys + ((size_t)c * o.corpus + i) * 32, NULL, NULL);
            }
        }
        ragkv_close(lc);
    }
    double load_s = (double)(rk_now_ns() - t0) / 1e9;
    ragkv_close(a);
    if (st != RK_OK) {
        fprintf(stderr, "ragkv bench serve: setup: %s (%s)\n", rk_strerror(st), rk_error_msg());
        return 1;
    }
    fprintf(stderr, "bench serve: %s on %s; %d corpus chunk(s) x %d tokens cached in %.2f s\n", info.model, info.server,
            nload * o.corpus, o.chunk_len, load_s);
    double z = 0;
    for (int i = 0; i < o.corpus; i++)
        z += 1.0 / pow(i + 1.0, o.zipf);
    double acc = 0;
    for (int i = 0; i < o.corpus; i++) {
        acc += 1.0 / pow(i + 1.0, o.zipf) / z;
        b.cdf[i] = acc;
    }
    b.cdf[o.corpus - 1] = 1.0;
    pthread_t *th = rk_calloc((size_t)o.conns, sizeof(pthread_t));
    struct worker_ctx *wc = rk_calloc((size_t)o.conns, sizeof(*wc));
    b.arrive = rk_malloc(sizeof(double) * (size_t)o.requests);
    int rc = 0;
    printf("%-10s %5s %5s %7s %8s %9s %9s %9s %9s %9s %9s %8s %9s %10s\n", "mode", "conns", "k", "rate", "req/s",
           "tok/s", "ttft p50", "ttft p99", "e2e p50", "e2e p99", "srv ttft", "hit rate", "recompute", "gpu ms/req");
    for (int ph = 0; ph < o.nmodes * o.nrates; ph++) {
        const char *mode = modes[o.modes[ph / o.nrates]];
        double rate = o.rates[ph % o.nrates];
        b.blend = (uint8_t)o.modes[ph / o.nrates];
        b.seed = o.seed + (uint64_t)ph;
        atomic_store(&b.next, 0);
        atomic_store(&b.hits, 0);
        atomic_store(&b.misses, 0);
        atomic_store(&b.prompt_tokens, 0);
        atomic_store(&b.recomputed, 0);
        atomic_store(&b.generated, 0);
        atomic_store(&b.errors, 0);
        b.open_loop = rate > 0;
        if (b.open_loop) { /* Poisson arrivals: exponential gaps of mean 1/rate, seeded */
            uint64_t rng = b.seed * 0x2545f4914f6cdd1dull + 17;
            double at = 0;
            for (int i = 0; i < o.requests; i++) {
                at += -log(1.0 - unif(&rng)) / rate * 1e9;
                b.arrive[i] = at;
            }
        }
        double busy0 = busy_ms(&o);
        t0 = rk_now_ns();
        b.t_start = t0;
        for (int i = 0; i < o.conns; i++) {
            wc[i] = (struct worker_ctx){.b = &b, .id = i};
            pthread_create(&th[i], NULL, worker, &wc[i]);
        }
        for (int i = 0; i < o.conns; i++)
            pthread_join(th[i], NULL);
        double wall = (double)(rk_now_ns() - t0) / 1e9;
        double busy1 = busy_ms(&o);
        int errors = atomic_load(&b.errors), done = o.requests - errors;
        double segs = (double)(atomic_load(&b.hits) + atomic_load(&b.misses));
        double hit_rate = segs > 0 ? (double)atomic_load(&b.hits) / segs : 0;
        double recompute = atomic_load(&b.prompt_tokens)
                               ? (double)atomic_load(&b.recomputed) / (double)atomic_load(&b.prompt_tokens)
                               : 0;
        double ttft50 = quantile(b.ttft, o.requests, 0.5), ttft99 = quantile(b.ttft, o.requests, 0.99);
        double e2e50 = quantile(b.e2e, o.requests, 0.5), e2e99 = quantile(b.e2e, o.requests, 0.99);
        double sttft50 = quantile(b.server_ttft, o.requests, 0.5);
        double gen_s = (double)atomic_load(&b.generated) / wall;
        /* the executor also ran other clients' work meanwhile, if any: a bench owns its daemon */
        double gpu_ms = busy0 >= 0 && busy1 >= busy0 && done > 0 ? (busy1 - busy0) / done : -1;
        printf("%-10s %5d %5d %7.2f %8.2f %9.1f %9.2f %9.2f %9.2f %9.2f %9.2f %8.3f %9.3f %10.2f\n", mode, o.conns, o.k,
               rate, done / wall, gen_s, ttft50, ttft99, e2e50, e2e99, sttft50, hit_rate, recompute, gpu_ms);
        if (errors) {
            printf("# %d request(s) failed\n", errors);
            rc = 1;
        }
        fflush(stdout);
        char path[4096];
        const char *jp = o.json;
        if (o.json_dir) {
            snprintf(path, sizeof(path), "%s/%s-%g.json", o.json_dir, mode, rate);
            jp = path;
        }
        if (jp) {
            FILE *jf = fopen(jp, "w");
            if (!jf) {
                fprintf(stderr, "ragkv bench serve: %s: %s\n", jp, strerror(errno));
                rc = 1;
            } else {
                fprintf(jf, "{\"model\": \"%s\", \"mode\": \"%s\", \"ratio\": %.3f, \"rate\": %.4f, \"tenants\": %d, "
                            "\"conns\": %d, \"corpus\": %d, \"chunk_len\": %d, \"query_len\": %d, \"k\": %d, "
                            "\"requests\": %d, \"zipf\": %.3f, \"shared\": %d, \"max_tokens\": %d, \"errors\": %d, "
                            "\"wall_s\": %.4f, \"req_per_s\": %.4f, \"tok_per_s\": %.3f, \"ttft_ms_p50\": %.4f, "
                            "\"ttft_ms_p99\": %.4f, \"e2e_ms_p50\": %.4f, \"e2e_ms_p99\": %.4f, "
                            "\"server_ttft_ms_p50\": %.4f, \"hit_rate\": %.5f, \"recompute_fraction\": %.5f, "
                            "\"corpus_load_s\": %.4f, \"last_arrival_s\": %.4f, \"seed\": %llu, "
                            "\"gpu_ms_per_request\": %.4f}\n",
                        info.model, mode, o.ratio, rate, o.tenants, o.conns, o.corpus, o.chunk_len, o.query_len, o.k,
                        o.requests, o.zipf, o.shared, o.max_tokens, errors, wall, done / wall, gen_s, ttft50, ttft99,
                        e2e50, e2e99, sttft50, hit_rate, recompute, load_s,
                        b.open_loop ? b.arrive[o.requests - 1] / 1e9 : 0.0, (unsigned long long)b.seed, gpu_ms);
                fclose(jf);
            }
        }
    }
    rk_free(th);
    rk_free(wc);
    rk_free(b.tokens);
    rk_free(b.names);
    rk_free(b.keys);
    rk_free(b.cdf);
    rk_free(b.ttft);
    rk_free(b.e2e);
    rk_free(b.server_ttft);
    rk_free(b.arrive);
    rk_free(chunk);
    return rc;
}
