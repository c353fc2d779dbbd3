/*
 * blend_bench.c — `ragkv bench blend`: time to first token of a blended RAG prompt (BOS, C
 * chunks of N tokens, a query) on a backend, per mode, with the chunk caches held in host RAM
 * as compressed containers (the chunk store's RAM tier) or as decoded float32 KV. TTFT counts
 * everything after the request arrives: decoding the containers (on the CPU pool), importing
 * the KV, the blend's recomputation, up to the last row's logits. Issue 5's GPU benchmark runs
 * it on the Llama-3-8B shape (scripts/gpu-bench.d/35-blend.sh), beside transformers' full
 * prefill of the same prompt length.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bench.h"
#include "ragkv/blend.h"
#include "ragkv/clock.h"
#include "ragkv/codec.h"
#include "ragkv/engine.h"
#include "ragkv/gpu.h"
#include "ragkv/thread.h"

#define BB_MAX_LIST 8

typedef struct bb_opts {
    const char *model, *shape, *backend, *json, *codec;
    long chunks[BB_MAX_LIST];
    int nchunks;
    bl_mode modes[BB_MAX_LIST];
    int nmodes;
    long chunk_tokens, query, iters, threads, level;
    float ratio;
    bl_select select; /* CacheBlend's ranking (--select) */
    bool f32;    /* caches as decoded float32 (no codec) */
    bool device; /* caches as KV blocks on the backend (the chunk store's device tier) */
    bool to_block; /* compressed caches decoded into KV blocks (bl_kvblock_decode: on the GPU
                      when the backend keeps bf16 KV) instead of CPU floats + upload */
    bool pipelined; /* compressed caches handed to bl_assemble as containers: decoded a layer
                       at a time while the previous layer computes */
    bool page_locked; /* the containers in page-locked host memory, as ragkvd's RAM tier keeps
                         them with ram-page-locked on */
} bb_opts;

static int usage(FILE *f, int rc)
{
    fprintf(f,
            "usage: ragkv bench blend [--model PATH | --shape NAME] [--backend cpu|cuda] [--chunks C,C...]\n"
            "                         [--chunk-tokens N] [--query N] [--modes full,cacheblend,naive,...]\n"
            "                         [--ratio R] [--select attention|deviation|lookahead] [--codec NAME] [--level N]\n"
            "                         [--f32 | --device | --to-block | --pipelined] [--page-locked]\n"
            "                         [--threads N]\n"
            "                         [--iters N] [--json FILE]\n"
            "Time to first token of BOS + C chunks of N random tokens + a query, per blend mode: the\n"
            "chunk caches (prefilled standalone beforehand) wait in host RAM as compressed containers\n"
            "(--f32: as decoded float32; --device: as KV blocks already on the backend, the chunk\n"
            "store's device tier) and are decoded on --threads CPU threads inside the timed region\n"
            "(--to-block: into KV blocks, by the GPU decoder when the backend keeps bf16 KV;\n"
            "--pipelined: by the assembly itself, layer by layer ahead of the layer it computes: on the\n"
            "GPU into KV blocks on a bf16 CUDA backend, else (or with RAGKV_BLEND_GPU_LOAD=0) on the\n"
            "CPU threads, one layer ahead). --page-locked: the containers wait in page-locked host\n"
            "memory, as ragkvd's RAM tier keeps them with ram-page-locked on (GPU uploads by DMA).\n"
            "Median of --iters runs after a warm-up. `full` reads no cache.\n"
            "Defaults: --shape llama3-8b (seeded synthetic weights) --backend cpu --chunks 4\n"
            "          --chunk-tokens 512 --query 64 --modes full,cacheblend,naive --ratio 0.15\n"
            "          --codec cachegen (default level) --threads 0 (every CPU) --iters 3\n");
    return rc;
}

static int parse_args(int argc, char **argv, bb_opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help"))
            return usage(stdout, 0) - 1; /* -1: stop, exit 0 */
        if (!strcmp(a, "--f32") || !strcmp(a, "--device") || !strcmp(a, "--to-block") || !strcmp(a, "--pipelined")) {
            *(a[2] == 'f' ? &o->f32 : a[2] == 'd' ? &o->device : a[2] == 't' ? &o->to_block : &o->pipelined) = true;
            continue;
        }
        if (!strcmp(a, "--page-locked")) {
            o->page_locked = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ragkv bench blend: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        char *end = NULL;
        if (!strcmp(a, "--model"))
            o->model = v;
        else if (!strcmp(a, "--shape"))
            o->shape = v;
        else if (!strcmp(a, "--backend"))
            o->backend = v;
        else if (!strcmp(a, "--json"))
            o->json = v;
        else if (!strcmp(a, "--codec"))
            o->codec = v;
        else if (!strcmp(a, "--chunks")) {
            char buf[256];
            snprintf(buf, sizeof(buf), "%s", v);
            o->nchunks = 0;
            for (char *t = strtok(buf, ","); t && o->nchunks < BB_MAX_LIST; t = strtok(NULL, ","))
                o->chunks[o->nchunks++] = strtol(t, NULL, 10);
        } else if (!strcmp(a, "--modes")) {
            char buf[256];
            snprintf(buf, sizeof(buf), "%s", v);
            o->nmodes = 0;
            for (char *t = strtok(buf, ","); t && o->nmodes < BB_MAX_LIST; t = strtok(NULL, ",")) {
                int md = bl_mode_parse(t);
                if (md < 0) {
                    fprintf(stderr, "ragkv bench blend: unknown mode %s\n", t);
                    return 2;
                }
                o->modes[o->nmodes++] = (bl_mode)md;
            }
        } else if (!strcmp(a, "--ratio"))
            o->ratio = strtof(v, &end);
        else if (!strcmp(a, "--select")) {
            if (bl_select_parse(v, &o->select) != RK_OK) {
                fprintf(stderr, "ragkv bench blend: --select attention|deviation|lookahead\n");
                return 2;
            }
        }
        else if (!strcmp(a, "--chunk-tokens"))
            o->chunk_tokens = strtol(v, &end, 10);
        else if (!strcmp(a, "--query"))
            o->query = strtol(v, &end, 10);
        else if (!strcmp(a, "--iters"))
            o->iters = strtol(v, &end, 10);
        else if (!strcmp(a, "--threads"))
            o->threads = strtol(v, &end, 10);
        else if (!strcmp(a, "--level"))
            o->level = strtol(v, &end, 10);
        else {
            fprintf(stderr, "ragkv bench blend: unknown option %s\n", a);
            return usage(stderr, 2);
        }
        if (end && *end) {
            fprintf(stderr, "ragkv bench blend: %s: not a number: %s\n", a, v);
            return 2;
        }
    }
    for (int k = 0; k < o->nchunks; k++)
        if (o->chunks[k] < 1 || o->chunks[k] > 256) {
            fprintf(stderr, "ragkv bench blend: --chunks: %ld outside 1..256\n", o->chunks[k]);
            return 2;
        }
    if (o->f32 + o->device + o->to_block + o->pipelined > 1) {
        fprintf(stderr, "ragkv bench blend: --f32, --device, --to-block and --pipelined exclude each other\n");
        return 2;
    }
    if (o->page_locked && (o->f32 || o->device)) {
        fprintf(stderr, "ragkv bench blend: --page-locked is about compressed caches, not --f32 or --device\n");
        return 2;
    }
    if (o->nchunks < 1 || o->nmodes < 1 || o->chunk_tokens < 1 || o->query < 1 || o->iters < 1 ||
        o->iters > 100 || o->threads < 0 || !(o->ratio >= 0 && o->ratio <= 1)) {
        fprintf(stderr, "ragkv bench blend: a count is out of range (see --help)\n");
        return 2;
    }
    return 0;
}

/* The chunk caches of one prompt: tokens, and the KV as a container or as floats. */
typedef struct bb_prompt {
    size_t nseg;
    int32_t **tokens;
    rk_buf *cont;  /* (nseg) compressed containers (unless f32) */
    const uint8_t **cdata; /* (nseg) where the requests read them: cont[i].data, or its copy in
                              page-locked memory (--page-locked) */
    void **locked; /* (nseg) those copies (rk_gpu_host_free) */
    float **kv;    /* (nseg) decoded KV: the caches with --f32, else the decode buffers */
    eng_kvblock **blk; /* (nseg) --device: the caches as KV blocks */
    int32_t *query;
} bb_prompt;

static void prompt_free(bb_prompt *p)
{
    for (size_t i = 0; i < p->nseg; i++) {
        rk_free(p->tokens ? p->tokens[i] : NULL);
        if (p->cont)
            rk_buf_free(&p->cont[i]);
        rk_gpu_host_free(p->locked ? p->locked[i] : NULL);
        rk_free(p->kv ? p->kv[i] : NULL);
        eng_kvblock_free(p->blk ? p->blk[i] : NULL);
    }
    rk_free(p->blk);
    rk_free(p->tokens);
    rk_free(p->cont);
    rk_free(p->cdata);
    rk_free(p->locked);
    rk_free(p->kv);
    rk_free(p->query);
    memset(p, 0, sizeof(*p));
}

static int32_t rand_token(uint64_t *rng, int vocab)
{
    *rng ^= *rng << 13, *rng ^= *rng >> 7, *rng ^= *rng << 17;
    return (int32_t)(3 + *rng % (uint64_t)(vocab - 3));
}

/* Random chunks, each prefilled standalone, kept as the store keeps them. */
static rk_status prompt_build(eng_model *m, eng_backend *be, const bb_opts *o, size_t nseg, codec_id cid,
                              rk_pool *pool, uint64_t *rng, bb_prompt *p, size_t *stored_bytes)
{
    const eng_model_info *mi = eng_model_get_info(m);
    size_t n = (size_t)o->chunk_tokens, kvf = eng_kv_floats(m, n);
    memset(p, 0, sizeof(*p));
    p->nseg = nseg;
    p->tokens = rk_calloc(nseg, sizeof(int32_t *));
    p->cont = rk_calloc(nseg, sizeof(rk_buf));
    p->cdata = rk_calloc(nseg, sizeof(uint8_t *));
    p->locked = rk_calloc(nseg, sizeof(void *));
    p->kv = rk_calloc(nseg, sizeof(float *));
    p->blk = rk_calloc(nseg, sizeof(eng_kvblock *));
    p->query = rk_malloc((size_t)o->query * sizeof(int32_t));
    if (!p->tokens || !p->cont || !p->cdata || !p->locked || !p->kv || !p->blk || !p->query)
        return RK_ERR_NOMEM;
    for (long j = 0; j < o->query; j++)
        p->query[j] = rand_token(rng, mi->vocab);
    *stored_bytes = 0;
    codec_shape shape = {(uint32_t)mi->n_layers, (uint32_t)n, (uint32_t)mi->n_kv_heads, (uint32_t)mi->head_dim};
    codec_params cp = codec_params_default(cid);
    if (o->level >= 0)
        cp.level = (int)o->level;
    cp.pool = pool;
    for (size_t i = 0; i < nseg; i++) {
        p->tokens[i] = rk_malloc(n * sizeof(int32_t));
        p->kv[i] = rk_malloc(kvf * sizeof(float));
        if (!p->tokens[i] || !p->kv[i])
            return RK_ERR_NOMEM;
        for (size_t t = 0; t < n; t++)
            p->tokens[i][t] = rand_token(rng, mi->vocab);
        rk_status st = bl_chunk_prefill(m, be, p->tokens[i], n, p->kv[i]);
        if (st == RK_OK && o->device)
            st = eng_kvblock_new(be, n, p->kv[i], &p->blk[i]);
        else if (st == RK_OK && !o->f32)
            st = codec_encode(p->kv[i], &shape, &cp, &p->cont[i]);
        if (st == RK_OK && o->page_locked) {
            if (!(p->locked[i] = rk_gpu_host_alloc(p->cont[i].len)))
                return rk_error_set(RK_ERR_UNSUPPORTED, "--page-locked: %s", rk_error_msg());
            memcpy(p->locked[i], p->cont[i].data, p->cont[i].len);
        }
        p->cdata[i] = p->locked[i] ? p->locked[i] : p->cont[i].data;
        if (st != RK_OK)
            return st;
        *stored_bytes += o->device ? eng_kvblock_bytes(p->blk[i]) : o->f32 ? kvf * sizeof(float) : p->cont[i].len;
        if (o->device) { /* only the block is read */
            rk_free(p->kv[i]);
            p->kv[i] = NULL;
        } else if (!o->f32) /* the decode target now; poison it so a skipped decode cannot pass */
            memset(p->kv[i], 0xff, kvf * sizeof(float));
    }
    return RK_OK;
}

/* One timed request: decode every cache the mode reads, then assemble. */
static rk_status ttft_once(eng_model *m, eng_backend *be, const bb_opts *o, const bb_prompt *p, bl_mode mode,
                           rk_pool *pool, float *logits, double *decode_ms, double *total_ms, bl_stats *bs)
{
    size_t n = (size_t)o->chunk_tokens, kvf = eng_kv_floats(m, n);
    uint64_t t0 = rk_now_ns();
    rk_status st = RK_OK;
    bool reads = mode != BL_FULL;
    codec_decode_opts dopt = {.pool = pool};
    eng_kvblock **tmp = o->to_block ? rk_calloc(p->nseg, sizeof(eng_kvblock *)) : NULL;
    if (o->to_block && !tmp)
        return RK_ERR_NOMEM;
    for (size_t i = 0; reads && !o->f32 && !o->device && !o->pipelined && st == RK_OK && i < p->nseg; i++)
        st = o->to_block ? bl_kvblock_decode(be, p->cdata[i], p->cont[i].len, &dopt, &tmp[i])
                         : codec_decode(p->cdata[i], p->cont[i].len, &dopt, CODEC_F32, p->kv[i],
                                        kvf * sizeof(float));
    *decode_ms = (double)(rk_now_ns() - t0) / 1e6;
    bl_segment *segs = rk_calloc(p->nseg, sizeof(bl_segment));
    eng_seq *s = NULL;
    if (!segs)
        st = RK_ERR_NOMEM;
    for (size_t i = 0; st == RK_OK && i < p->nseg; i++)
        segs[i] = o->pipelined ? (bl_segment){.tokens = p->tokens[i], .n = n, .container = reads ? p->cdata[i] : NULL,
                                              .container_len = reads ? p->cont[i].len : 0}
                               : (bl_segment){.tokens = p->tokens[i], .n = n, .kv = reads && !tmp ? p->kv[i] : NULL,
                                              .block = !reads ? NULL : tmp ? tmp[i] : p->blk[i]};
    if (st == RK_OK)
        st = eng_seq_new(be, 1 + p->nseg * n + (size_t)o->query, &s);
    bl_params bp;
    bl_params_default(&bp, mode);
    bp.ratio = o->ratio;
    bp.select = o->select;
    bp.decode = &dopt;
    if (st == RK_OK)
        st = bl_assemble(m, be, s, segs, p->nseg, p->query, (size_t)o->query, &bp, logits, bs);
    *total_ms = (double)(rk_now_ns() - t0) / 1e6;
    eng_seq_free(s);
    rk_free(segs);
    for (size_t i = 0; tmp && i < p->nseg; i++)
        eng_kvblock_free(tmp[i]);
    rk_free(tmp);
    return st;
}

int bench_blend_main(int argc, char **argv)
{
    bb_opts o = {.shape = "llama3-8b", .backend = "cpu", .codec = "cachegen", .chunks = {4}, .nchunks = 1,
                 .modes = {BL_FULL, BL_CACHEBLEND, BL_NAIVE}, .nmodes = 3, .chunk_tokens = 512, .query = 64,
                 .iters = 3, .level = -1, .ratio = 0.15f, .select = BL_SELECT_DEFAULT};
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc < 0 ? 0 : rc;
    codec_id cid;
    if (codec_id_parse(o.codec, &cid) != RK_OK) {
        fprintf(stderr, "ragkv bench blend: unknown codec %s\n", o.codec);
        return 2;
    }
    eng_model *m = NULL;
    eng_backend *be = NULL;
    rk_pool *pool = NULL;
    rk_status st = o.model ? eng_model_open(o.model, &m) : eng_model_synth(o.shape, 1, &m);
    if (st == RK_OK)
        st = eng_backend_new(m, o.backend, 0, &be);
    if (st == RK_OK)
        st = rk_pool_create((int)o.threads, &pool);
    if (st != RK_OK) {
        fprintf(stderr, "ragkv bench blend: %s (%s)\n", rk_strerror(st), rk_error_msg());
        eng_backend_free(be);
        eng_model_close(m);
        return 1;
    }
    const eng_model_info *mi = eng_model_get_info(m);
    FILE *jf = o.json ? fopen(o.json, "w") : NULL;
    if (o.json && !jf) {
        fprintf(stderr, "ragkv bench blend: %s: %s\n", o.json, strerror(errno));
        rk_pool_free(pool);
        eng_backend_free(be);
        eng_model_close(m);
        return 1;
    }
    /* the pipelined loader decodes on the GPU on a bf16 CUDA backend unless told not to */
    const char *gl = getenv("RAGKV_BLEND_GPU_LOAD");
    bool cpu_loader = (gl && !strcmp(gl, "0")) || strcmp(eng_backend_cuda_mode(be), "bf16") != 0;
    const char *cache = o.device ? "device" : o.f32 ? "host-f32" : o.to_block ? "host-compressed-to-block"
                        : o.pipelined ? (cpu_loader ? "host-compressed-pipelined-cpu" : "host-compressed-pipelined-gpu")
                                      : "host-compressed";
    char cache_name[64]; /* the JSON's cache form: "-locked" for page-locked containers */
    snprintf(cache_name, sizeof(cache_name), "%s%s", cache, o.page_locked ? "-locked" : "");
    cache = cache_name;
    fprintf(stderr, "bench blend: %s on %s (%s), caches %s (%s), %d threads, cacheblend by %s\n", mi->id,
            eng_backend_name(be), eng_backend_cuda_mode(be), cache, o.f32 || o.device ? "none" : o.codec,
            rk_pool_size(pool), bl_select_name(o.select));
    if (jf)
        fprintf(jf,
                "{\"model\": \"%s\", \"backend\": \"%s\", \"math\": \"%s\", \"cache\": \"%s\", \"codec\": \"%s\", "
                "\"chunk_tokens\": %ld, \"query\": %ld, \"ratio\": %.3f, \"select\": \"%s\", \"runs\": [",
                mi->id, o.backend, eng_backend_cuda_mode(be), cache, o.f32 || o.device ? "none" : o.codec, o.chunk_tokens,
                o.query, o.ratio, bl_select_name(o.select));
    printf("%-6s %-8s %-11s %10s %10s %10s %10s %12s\n", "chunks", "tokens", "mode", "ttft ms", "decode ms",
           "blend ms", "recomp", "cache MiB");
    float *logits = rk_malloc((size_t)mi->vocab * sizeof(float));
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int nrun = 0;
    for (int c = 0; c < o.nchunks && st == RK_OK && logits; c++) {
        bb_prompt p;
        size_t stored = 0, plen = 1 + (size_t)o.chunks[c] * (size_t)o.chunk_tokens + (size_t)o.query;
        if (plen > (size_t)mi->max_seq) {
            fprintf(stderr, "bench blend: %zu tokens exceed the context of %d; skipped\n", plen, mi->max_seq);
            continue;
        }
        uint64_t tb = rk_now_ns();
        st = prompt_build(m, be, &o, (size_t)o.chunks[c], cid, pool, &rng, &p, &stored);
        fprintf(stderr, "bench blend: %ld chunks of %ld tokens cached in %.1f s\n", o.chunks[c], o.chunk_tokens,
                (double)(rk_now_ns() - tb) / 1e9);
        for (int k = 0; k < o.nmodes && st == RK_OK; k++) {
            double tt[100], td[100];
            bl_stats bs = {0};
            for (long it = 0; it <= o.iters && st == RK_OK; it++) {
                double d = 0, t = 0;
                if (it == 1) /* RAGKV_CUDA_PROFILE=1: the set-up and the warm-up stay out of the report */
                    eng_backend_cuda_profile_reset(be);
                st = ttft_once(m, be, &o, &p, o.modes[k], pool, logits, &d, &t, &bs);
                if (it > 0) { /* the first run warms up */
                    td[it - 1] = d;
                    tt[it - 1] = t;
                }
            }
            if (st != RK_OK)
                break;
            double mt = bench_median(tt, (int)o.iters), md = bench_median(td, (int)o.iters);
            char phases[256];
            size_t pl = 0;
            for (int ph = 0; ph < BL_PHASES; ph++) /* of the last run */
                pl += (size_t)snprintf(phases + pl, sizeof(phases) - pl, "%s\"%s\": %.3f", ph ? ", " : "",
                                       bl_phase_name((bl_phase)ph), bs.phase_ms[ph]);
            double frac = (double)bs.recomputed / (double)bs.prompt_tokens;
            printf("%-6ld %-8zu %-11s %10.2f %10.2f %10.2f %10.3f %12.2f\n", o.chunks[c], plen,
                   bl_mode_name(o.modes[k]), mt, md, mt - md, frac, (double)stored / 1048576.0);
            printf("       phases ms (last run): ");
            for (int ph = 0; ph < BL_PHASES; ph++)
                printf("%s %.2f, ", bl_phase_name((bl_phase)ph), bs.phase_ms[ph]);
            printf("waiting for layers %.2f\n", bs.load_wait_ms);
            if (o.pipelined)
                printf("       loader ms (last run): set-up %.2f, opens %.2f, layers %.2f, release %.2f\n",
                       bs.load_setup_ms, bs.load_open_ms, bs.load_enqueue_ms, bs.load_free_ms);
            fflush(stdout);
            if (jf)
                fprintf(jf,
                        "%s{\"chunks\": %ld, \"prompt_tokens\": %zu, \"mode\": \"%s\", \"ttft_ms_median\": %.3f, "
                        "\"decode_ms_median\": %.3f, \"recomputed\": %zu, \"token_layers\": %.4f, "
                        "\"cache_bytes\": %zu, \"load_wait_ms_last\": %.3f, \"loader_ms_last\": {\"setup\": %.3f, "
                        "\"open\": %.3f, \"layers\": %.3f, \"release\": %.3f}, \"phase_ms_last\": {%s}}",
                        nrun++ ? ", " : "", o.chunks[c], plen, bl_mode_name(o.modes[k]), mt, md, bs.recomputed,
                        bs.token_layers, stored, bs.load_wait_ms, bs.load_setup_ms, bs.load_open_ms,
                        bs.load_enqueue_ms, bs.load_free_ms, phases);
        }
        prompt_free(&p);
    }
    if (!logits)
        st = RK_ERR_NOMEM;
    if (jf) {
        fprintf(jf, "]}\n");
        fclose(jf);
    }
    if (st != RK_OK)
        fprintf(stderr, "ragkv bench blend: %s (%s)\n", rk_strerror(st), rk_error_msg());
    rk_free(logits);
    rk_pool_free(pool);
    eng_backend_free(be);
    eng_model_close(m);
    return st == RK_OK ? 0 : 1;
}
