/*
 * cli.c — `ragkv blend eval`: fidelity and cost of every blend mode against full prefill on a
 * real model, over RAG-like prompts built from the model's own sampled text.
 */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/blend.h"
#include "ragkv/cli.h"
#include "ragkv/clock.h"

#define CONT 32 /* greedy continuation compared with full prefill's */
#define MAX_RUNS 64

struct eval_opts {
    const char *model;
    int cases, chunks, chunk_len, query_len, threads;
    uint64_t seed;
    const char *json;
    int check_layer;   /* CacheBlend check layer */
    int deviation_v;   /* count V's deviation too */
    bl_select select;  /* CacheBlend's ranking at the check layer */
    float g_first, g_step; /* gradual schedule (g_first 0: flat) */
    bl_mode modes[8];
    int nmodes;
    float ratios[16];
    int nratios;
    float alphas[16];      /* Cache-Craft alphas */
    int nalphas;
    float ape_t, ape_s;    /* APE temperature and scale */
};

/* One (mode, ratio) configuration's accumulated results. */
struct run {
    bl_mode mode;
    float ratio;          /* CacheBlend ratio, or Cache-Craft alpha */
    int craft_src;        /* Cache-Craft variants: 0 standalone, 1 captured in another context */
    double kl, agree, agree_tf, matched, recomputed, token_layers, ms;
    double *kv_dev;   /* (n_layers) mean relative L2 of the layer's KV vs full */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ragkv blend eval --model PATH [--cases N] [--chunks K] [--chunk-len T]\n"
            "                        [--query-len Q] [--seed S] [--modes LIST] [--ratios LIST]\n"
            "                        [--check-layer N] [--deviation-v 0|1] [--gradual FIRST,STEP]\n"
            "                        [--select attention|deviation|lookahead]\n"
            "                        [--alpha LIST] [--ape-t T] [--ape-s S]\n"
            "                        [--threads N] [--json FILE]\n\n"
            "Builds N prompts of K chunks (T tokens each, sampled from the model itself) and a\n"
            "query, and compares every mode with full prefill of the same prompt: next-token KL,\n"
            "top-1 agreement over a %d-token greedy continuation (top1: each mode's own\n"
            "continuation against full's, position by position; top1-tf: teacher-forced, fed\n"
            "full's continuation), mean matched continuation length, relative KV deviation\n"
            "per layer, tokens recomputed, time.\n"
            "cachecraft runs twice per alpha: craft-sa with standalone variants, craft-ctx with\n"
            "variants captured in a different random context (a random subset of the prompt's\n"
            "other chunks in random order, plus one unrelated chunk); ratio column = alpha.\n"
            "Defaults: --cases 8 --chunks 4 --chunk-len 48 --query-len 16 --seed 1\n"
            "          --modes naive,cacheblend,prefix --ratios 0.05,0.15,0.3,0.5,1\n"
            "          --alpha 0.25,0.5,1,2 --ape-t 0.9 --ape-s 0.9\n",
            CONT);
}

static int parse_list_modes(const char *s, struct eval_opts *o)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", s);
    o->nmodes = 0;
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        int m = bl_mode_parse(t);
        if (m < 0 || o->nmodes == 8) {
            fprintf(stderr, "ragkv blend eval: unknown mode '%s' (full, prefix, naive, cacheblend, cachecraft, ape)\n", t);
            return -1;
        }
        o->modes[o->nmodes++] = (bl_mode)m;
    }
    return 0;
}

/* A comma-separated list of up to 16 numbers in [0, max] into out[*n]. */
static int parse_list_floats(const char *s, float max, const char *what, float *out, int *n)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", s);
    *n = 0;
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        char *end;
        float r = strtof(t, &end);
        if (*end || !(r >= 0 && r <= max) || *n == 16) {
            fprintf(stderr, "ragkv blend eval: bad %s '%s' (0..%g)\n", what, t, (double)max);
            return -1;
        }
        out[(*n)++] = r;
    }
    return 0;
}

static int parse_list_ratios(const char *s, struct eval_opts *o)
{
    return parse_list_floats(s, 1.0f, "ratio", o->ratios, &o->nratios);
}

/* The label of a run in the table and the JSON. */
static const char *run_label(const struct run *r)
{
    if (r->mode == BL_CACHECRAFT)
        return r->craft_src ? "craft-ctx" : "craft-sa";
    return bl_mode_name(r->mode);
}

/* A small seeded generator for the random capture contexts (splitmix64). */
static uint64_t mix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Sample n tokens of the model's own text after BOS + a seed token. */
static rk_status sample_text(eng_model *m, eng_backend *be, uint64_t seed, int32_t *out, size_t n)
{
    const eng_model_info *mi = eng_model_get_info(m);
    eng_seq *s;
    rk_status st = eng_seq_new(be, n + 2, &s);
    if (st != RK_OK)
        return st;
    float *logits = rk_malloc((size_t)mi->vocab * sizeof(float));
    eng_sampler sm;
    eng_sampler_init(&sm, 1.0f, 0, 0.95f, seed);
    int32_t start[2] = {mi->bos, (int32_t)(3 + seed % (uint64_t)(mi->vocab - 3))};
    st = logits ? eng_prefill(s, start, 2, NULL, ENG_LOGITS_LAST, logits) : RK_ERR_NOMEM;
    for (size_t i = 0; st == RK_OK && i < n; i++) {
        int32_t t = eng_sample(&sm, logits, mi->vocab);
        for (int j = 0; j < mi->n_stop; j++) /* keep the text going past story ends */
            if (t == mi->stop[j])
                t = start[1];
        out[i] = t;
        if (i + 1 < n)
            st = eng_decode(be, &s, &out[i], 1, logits);
    }
    eng_sampler_free(&sm);
    rk_free(logits);
    eng_seq_free(s);
    return st;
}

/* Greedy continuation from a sequence and its last-row logits (which it consumes). */
static rk_status greedy(eng_backend *be, eng_seq *s, float *logits, int vocab, int32_t *out, int n)
{
    for (int i = 0; i < n; i++) {
        out[i] = eng_argmax(logits, vocab);
        rk_status st = eng_decode(be, &s, &out[i], 1, logits);
        if (st != RK_OK)
            return st;
    }
    return RK_OK;
}

/* Teacher-forced top-1 agreement: feeds ref[0..n) (full prefill's greedy continuation) to s
 * from its last-row logits (consumed), counting the steps whose argmax equals ref[i]. Unlike
 * a free-running continuation, one early mismatch does not change what later steps see. */
static rk_status forced_agree(eng_backend *be, eng_seq *s, float *logits, int vocab, const int32_t *ref, int n,
                              int *agree)
{
    *agree = 0;
    for (int i = 0; i < n; i++) {
        *agree += eng_argmax(logits, vocab) == ref[i];
        rk_status st = eng_decode(be, &s, &ref[i], 1, logits);
        if (st != RK_OK)
            return st;
    }
    return RK_OK;
}

static int eval_main(int argc, char **argv)
{
    struct eval_opts o = {.cases = 8, .chunks = 4, .chunk_len = 48, .query_len = 16, .seed = 1,
                          .ape_t = 0.9f, .ape_s = 0.9f, .select = BL_SELECT_DEFAULT};
    parse_list_modes("naive,cacheblend,prefix", &o);
    parse_list_ratios("0.05,0.15,0.3,0.5,1", &o);
    parse_list_floats("0.25,0.5,1,2", 1000.0f, "alpha", o.alphas, &o.nalphas);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ragkv blend eval: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int *ip = !strcmp(a, "--cases") ? &o.cases : !strcmp(a, "--chunks") ? &o.chunks
                : !strcmp(a, "--chunk-len") ? &o.chunk_len : !strcmp(a, "--query-len") ? &o.query_len
                : !strcmp(a, "--threads") ? &o.threads : NULL;
        if (ip) {
            char *end;
            long x = strtol(v, &end, 10);
            if (*end || x < 0 || x > 100000) {
                fprintf(stderr, "ragkv blend eval: %s: bad number '%s'\n", a, v);
                return 2;
            }
            *ip = (int)x;
        } else if (!strcmp(a, "--check-layer")) {
            o.check_layer = atoi(v);
        } else if (!strcmp(a, "--deviation-v")) {
            o.deviation_v = atoi(v);
        } else if (!strcmp(a, "--select")) {
            if (bl_select_parse(v, &o.select) != RK_OK) {
                fprintf(stderr, "ragkv blend eval: --select attention|deviation|lookahead\n");
                return 2;
            }
        } else if (!strcmp(a, "--gradual")) {
            if (sscanf(v, "%f,%f", &o.g_first, &o.g_step) != 2 || !(o.g_first > 0 && o.g_first <= 1) ||
                !(o.g_step > 0 && o.g_step <= 1)) {
                fprintf(stderr, "ragkv blend eval: --gradual FIRST,STEP (each in (0, 1])\n");
                return 2;
            }
        } else if (!strcmp(a, "--model")) {
            o.model = v;
        } else if (!strcmp(a, "--tokenizer")) {
            /* accepted for symmetry with other commands; prompts are token ids */
        } else if (!strcmp(a, "--seed")) {
            o.seed = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--json")) {
            o.json = v;
        } else if (!strcmp(a, "--modes")) {
            if (parse_list_modes(v, &o))
                return 2;
        } else if (!strcmp(a, "--ratios")) {
            if (parse_list_ratios(v, &o))
                return 2;
        } else if (!strcmp(a, "--alpha")) {
            if (parse_list_floats(v, 1000.0f, "alpha", o.alphas, &o.nalphas))
                return 2;
        } else if (!strcmp(a, "--ape-t") || !strcmp(a, "--ape-s")) {
            char *end;
            float x = strtof(v, &end);
            if (*end || !(x > 0 && x <= 100)) {
                fprintf(stderr, "ragkv blend eval: %s: bad value '%s' (> 0)\n", a, v);
                return 2;
            }
            *(!strcmp(a, "--ape-t") ? &o.ape_t : &o.ape_s) = x;
        } else {
            fprintf(stderr, "ragkv blend eval: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!o.model || o.cases < 1 || o.chunks < 1 || o.chunk_len < 1) {
        usage(stderr);
        return 2;
    }
    if (o.select == BL_SELECT_LOOKAHEAD && o.g_first > 0) {
        fprintf(stderr, "ragkv blend eval: --select lookahead ranks once, at the check layer: no --gradual with it\n");
        return 2;
    }
    eng_model *m = NULL;
    eng_backend *be = NULL;
    rk_status st = eng_model_open(o.model, &m);
    if (st == RK_OK)
        st = eng_backend_cpu_new(m, o.threads, &be);
    if (st != RK_OK) {
        fprintf(stderr, "ragkv blend eval: %s: %s (%s)\n", o.model, rk_strerror(st), rk_error_msg());
        eng_model_close(m);
        return 1;
    }
    const eng_model_info *mi = eng_model_get_info(m);
    size_t nprompt = 1 + (size_t)o.chunks * o.chunk_len + o.query_len;
    if (nprompt + CONT + 1 > (size_t)mi->max_seq) {
        fprintf(stderr, "ragkv blend eval: %zu prompt tokens + %d continuation exceed the context of %d\n",
                nprompt, CONT, mi->max_seq);
        eng_backend_free(be);
        eng_model_close(m);
        return 2;
    }
    bool craft_on = false;
    for (int i = 0; i < o.nmodes; i++)
        craft_on |= o.modes[i] == BL_CACHECRAFT;
    if (craft_on && 1 + ((size_t)o.chunks + 1) * o.chunk_len > (size_t)mi->max_seq) {
        fprintf(stderr, "ragkv blend eval: cachecraft's capture contexts (%d chunks + 1 of %d tokens) exceed the "
                "context of %d\n", o.chunks, o.chunk_len, mi->max_seq);
        eng_backend_free(be);
        eng_model_close(m);
        return 2;
    }
    /* the configurations: cacheblend once per ratio, cachecraft twice per alpha (standalone
     * and other-context variants), the others once */
    struct run runs[MAX_RUNS];
    int nruns = 0;
    bool want_craft = false;
    for (int i = 0; i < o.nmodes; i++) {
        bl_mode md = o.modes[i];
        int nr = md == BL_CACHEBLEND ? o.nratios : md == BL_CACHECRAFT ? 2 * o.nalphas : 1;
        want_craft |= md == BL_CACHECRAFT;
        for (int j = 0; j < nr && nruns < MAX_RUNS; j++) {
            float ratio = md == BL_CACHEBLEND ? o.ratios[j] : md == BL_CACHECRAFT ? o.alphas[j / 2] : 0;
            runs[nruns] = (struct run){.mode = md, .ratio = ratio, .craft_src = md == BL_CACHECRAFT ? j % 2 : 0};
            runs[nruns].kv_dev = rk_calloc((size_t)mi->n_layers, sizeof(double));
            nruns++;
        }
    }
    size_t V = (size_t)mi->vocab, L = (size_t)mi->n_layers;
    size_t kvn = eng_kv_floats(m, nprompt);
    size_t per_layer = kvn / L;
    int32_t *chunks = rk_malloc((size_t)o.chunks * o.chunk_len * sizeof(int32_t));
    int32_t *query = rk_malloc(((size_t)o.query_len + 1) * sizeof(int32_t));
    float **ckv = rk_calloc((size_t)o.chunks, sizeof(float *));
    bl_segment *segs = rk_calloc((size_t)o.chunks, sizeof(bl_segment));
    float *lfull = rk_malloc(V * sizeof(float)), *lb = rk_malloc(V * sizeof(float));
    float *kvfull = rk_malloc(kvn * sizeof(float)), *kvb = rk_malloc(kvn * sizeof(float));
    int32_t cfull[CONT], cb[CONT];
    /* Cache-Craft: per chunk a standalone variant and one captured in another context */
    size_t K = (size_t)o.chunks, T = (size_t)o.chunk_len;
    float **vkv = rk_calloc(2 * K, sizeof(float *));           /* [src][chunk] */
    bl_craft_meta *vmeta = rk_calloc(2 * K, sizeof(bl_craft_meta));
    bl_variant *vars = rk_calloc(2 * K, sizeof(bl_variant));
    bl_craft_segment *cseg = rk_calloc(2 * K, sizeof(bl_craft_segment));
    uint64_t *ids = rk_malloc((2 * K + 1) * sizeof(uint64_t)); /* prompt chunks 1..K, distractors */
    int32_t *distract = rk_malloc(T * sizeof(int32_t));
    bl_segment *ctx = rk_calloc(K + 1, sizeof(bl_segment));
    uint64_t *ctx_ids = rk_malloc((K + 1) * sizeof(uint64_t));
    if (!vkv || !vmeta || !vars || !cseg || !ids || !distract || !ctx || !ctx_ids) {
        fprintf(stderr, "ragkv blend eval: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < 2 * K; i++)
        ids[i] = i + 1;
    for (size_t i = 0; i < 2 * K && want_craft; i++)
        if (!(vkv[i] = rk_malloc(eng_kv_floats(m, T) * sizeof(float)))) {
            fprintf(stderr, "ragkv blend eval: out of memory\n");
            return 1;
        }
    if (!chunks || !query || !ckv || !segs || !lfull || !lb || !kvfull || !kvb) {
        fprintf(stderr, "ragkv blend eval: out of memory\n");
        return 1;
    }
    fprintf(stderr, "blend eval: %s, %d cases x %d chunks x %d tokens + %d query tokens (%zu tokens); "
            "cacheblend selects by %s\n", mi->id, o.cases, o.chunks, o.chunk_len, o.query_len, nprompt,
            bl_select_name(o.select));
    for (int c = 0; c < o.cases && st == RK_OK; c++) {
        uint64_t base = o.seed * 1000003ull + (uint64_t)c * 7919ull;
        for (int k = 0; k < o.chunks && st == RK_OK; k++) {
            int32_t *t = chunks + (size_t)k * o.chunk_len;
            st = sample_text(m, be, base + (uint64_t)k, t, (size_t)o.chunk_len);
            if (!ckv[k])
                ckv[k] = rk_malloc(eng_kv_floats(m, (size_t)o.chunk_len) * sizeof(float));
            if (st == RK_OK)
                st = bl_chunk_prefill(m, be, t, (size_t)o.chunk_len, ckv[k]);
            segs[k] = (bl_segment){.tokens = t, .n = (size_t)o.chunk_len, .kv = ckv[k]};
        }
        if (st == RK_OK && o.query_len)
            st = sample_text(m, be, base + 999, query, (size_t)o.query_len);
        /* Cache-Craft variants of every chunk: standalone, and after a random context (a random
         * subset of the other chunks in random order, and one unrelated chunk) */
        uint64_t rng = base ^ 0x5eedc4af7ull;
        for (size_t k = 0; k < K && want_craft && st == RK_OK; k++) {
            bl_craft_meta_clear(&vmeta[k]);
            bl_craft_meta_clear(&vmeta[K + k]);
            st = bl_variant_capture(m, be, &segs[k], 1, NULL, vkv[k], &vmeta[k]);
            size_t nc = 0;
            for (size_t j = 0; j < K; j++)
                if (j != k && (mix64(&rng) & 1)) {
                    ctx[nc] = segs[j];
                    ctx_ids[nc++] = ids[j];
                }
            for (size_t j = nc; j > 1; j--) { /* shuffle */
                size_t r = (size_t)(mix64(&rng) % j);
                bl_segment ts = ctx[j - 1];
                uint64_t ti = ctx_ids[j - 1];
                ctx[j - 1] = ctx[r];
                ctx_ids[j - 1] = ctx_ids[r];
                ctx[r] = ts;
                ctx_ids[r] = ti;
            }
            if (st == RK_OK)
                st = sample_text(m, be, base + 5000 + k, distract, T);
            size_t at = (size_t)(mix64(&rng) % (nc + 1)); /* the unrelated chunk goes here */
            for (size_t j = nc; j > at; j--) {
                ctx[j] = ctx[j - 1];
                ctx_ids[j] = ctx_ids[j - 1];
            }
            ctx[at] = (bl_segment){.tokens = distract, .n = T};
            ctx_ids[at] = ids[K + k];
            nc++;
            ctx[nc] = segs[k];
            if (st == RK_OK)
                st = bl_variant_capture(m, be, ctx, nc + 1, ctx_ids, vkv[K + k], &vmeta[K + k]);
            for (int src = 0; src < 2; src++) {
                vars[src * K + k] = (bl_variant){vkv[src * K + k], &vmeta[src * K + k]};
                cseg[src * K + k] = (bl_craft_segment){.variants = &vars[src * K + k], .n_variants = 1,
                                                       .prev_ids = ids, .n_prev = k};
            }
        }
        /* the reference */
        eng_seq *s = NULL;
        bl_params p;
        bl_params_default(&p, BL_FULL);
        if (st == RK_OK)
            st = eng_seq_new(be, nprompt + CONT + 1, &s);
        if (st == RK_OK)
            st = bl_assemble(m, be, s, segs, (size_t)o.chunks, query, (size_t)o.query_len, &p, lfull, NULL);
        if (st == RK_OK)
            st = eng_kv_export(s, 0, nprompt, kvfull);
        float *lcopy = rk_malloc(V * sizeof(float));
        if (st == RK_OK && lcopy) {
            memcpy(lcopy, lfull, V * sizeof(float));
            st = greedy(be, s, lcopy, (int)V, cfull, CONT);
        }
        rk_free(lcopy);
        eng_seq_free(s);
        for (int r = 0; r < nruns && st == RK_OK; r++) {
            bl_params_default(&p, runs[r].mode);
            if (runs[r].mode == BL_CACHEBLEND)
                p.ratio = runs[r].ratio;
            if (o.check_layer > 0)
                p.check_layer = o.check_layer;
            p.deviation_v = o.deviation_v != 0;
            p.select = o.select;
            p.alpha = runs[r].ratio;
            p.craft = cseg + (runs[r].craft_src ? K : 0);
            p.ape_t = o.ape_t;
            p.ape_s = o.ape_s;
            if (o.g_first > 0 && runs[r].mode == BL_CACHEBLEND) {
                p.schedule.first = o.g_first > runs[r].ratio ? o.g_first : runs[r].ratio;
                p.schedule.step = o.g_step;
                p.schedule.final = runs[r].ratio;
            }
            bl_stats bs;
            s = NULL;
            st = eng_seq_new(be, nprompt + CONT + 1, &s);
            if (st == RK_OK)
                st = bl_assemble(m, be, s, segs, (size_t)o.chunks, query, (size_t)o.query_len, &p, lb, &bs);
            if (st == RK_OK)
                st = eng_kv_export(s, 0, nprompt, kvb);
            if (st == RK_OK) {
                runs[r].kl += bl_kl_divergence(lfull, lb, V);
                runs[r].recomputed += (double)bs.recomputed / (double)bs.prompt_tokens;
                runs[r].token_layers += bs.token_layers;
                runs[r].ms += bs.ms;
                for (size_t l = 0; l < L; l++)
                    runs[r].kv_dev[l] += bl_rel_l2(kvfull + l * per_layer, kvb + l * per_layer, per_layer);
                st = greedy(be, s, lb, (int)V, cb, CONT);
            }
            if (st == RK_OK) {
                int agree = 0;
                for (int i = 0; i < CONT; i++)
                    agree += cb[i] == cfull[i];
                runs[r].agree += (double)agree / CONT;
                runs[r].matched += (double)bl_matched_prefix(cfull, cb, CONT);
            }
            eng_seq_free(s);
            /* the same assembly again (deterministic), fed full's continuation */
            s = NULL;
            if (st == RK_OK)
                st = eng_seq_new(be, nprompt + CONT + 1, &s);
            if (st == RK_OK)
                st = bl_assemble(m, be, s, segs, (size_t)o.chunks, query, (size_t)o.query_len, &p, lb, NULL);
            if (st == RK_OK) {
                int agree = 0;
                st = forced_agree(be, s, lb, (int)V, cfull, CONT, &agree);
                runs[r].agree_tf += (double)agree / CONT;
            }
            eng_seq_free(s);
        }
        fprintf(stderr, "blend eval: case %d/%d done\n", c + 1, o.cases);
    }
    int rc = 0;
    if (st != RK_OK) {
        fprintf(stderr, "ragkv blend eval: %s (%s)\n", rk_strerror(st), rk_error_msg());
        rc = 1;
    } else {
        printf("%-11s %6s %10s %11s %8s %8s %8s %11s %10s %9s\n", "mode", "ratio", "recomputed", "token-layers",
               "KL", "top1", "top1-tf", "matched", "kv-dev-L1", "ms");
        for (int r = 0; r < nruns; r++) {
            double n = o.cases;
            printf("%-11s %6.2f %10.3f %11.3f %8.5f %8.3f %8.3f %11.2f %10.4f %9.2f\n", run_label(&runs[r]),
                   runs[r].ratio, runs[r].recomputed / n, runs[r].token_layers / n, runs[r].kl / n,
                   runs[r].agree / n, runs[r].agree_tf / n, runs[r].matched / n, L > 1 ? runs[r].kv_dev[1] / n : runs[r].kv_dev[0] / n,
                   runs[r].ms / n);
        }
        if (o.json) {
            FILE *f = fopen(o.json, "w");
            if (!f) {
                fprintf(stderr, "ragkv blend eval: %s: %s\n", o.json, strerror(errno));
                rc = 1;
            } else {
                fprintf(f, "{\"model\": \"%s\", \"cases\": %d, \"chunks\": %d, \"chunk_len\": %d, \"query_len\": %d, "
                           "\"prompt_tokens\": %zu, \"continuation\": %d, \"ape_t\": %g, \"ape_s\": %g, "
                           "\"check_layer\": %d, \"deviation_v\": %d, \"select\": \"%s\", \"runs\": [",
                        mi->id, o.cases, o.chunks, o.chunk_len, o.query_len, nprompt, CONT, (double)o.ape_t,
                        (double)o.ape_s, o.check_layer > 0 ? o.check_layer : 1, o.deviation_v != 0, bl_select_name(o.select));
                for (int r = 0; r < nruns; r++) {
                    double n = o.cases;
                    fprintf(f, "%s\n {\"mode\": \"%s\", \"ratio\": %.4f, \"recomputed\": %.5f, \"token_layers\": %.5f, "
                               "\"kl\": %.7f, \"top1\": %.5f, \"top1_forced\": %.5f, \"matched\": %.3f, \"ms\": %.4f, "
                               "\"kv_dev\": [",
                            r ? "," : "", run_label(&runs[r]), runs[r].ratio, runs[r].recomputed / n,
                            runs[r].token_layers / n, runs[r].kl / n, runs[r].agree / n, runs[r].agree_tf / n,
                            runs[r].matched / n,
                            runs[r].ms / n);
                    for (size_t l = 0; l < L; l++)
                        fprintf(f, "%s%.6f", l ? ", " : "", runs[r].kv_dev[l] / n);
                    fprintf(f, "]}");
                }
                fprintf(f, "\n]}\n");
                fclose(f);
            }
        }
    }
    for (int r = 0; r < nruns; r++)
        rk_free(runs[r].kv_dev);
    for (int k = 0; k < o.chunks; k++)
        rk_free(ckv[k]);
    for (size_t i = 0; i < 2 * K; i++) {
        rk_free(vkv[i]);
        bl_craft_meta_clear(&vmeta[i]);
    }
    rk_free(vkv);
    rk_free(vmeta);
    rk_free(vars);
    rk_free(cseg);
    rk_free(ids);
    rk_free(distract);
    rk_free(ctx);
    rk_free(ctx_ids);
    rk_free(ckv);
    rk_free(segs);
    rk_free(chunks);
    rk_free(query);
    rk_free(lfull);
    rk_free(lb);
    rk_free(kvfull);
    rk_free(kvb);
    eng_backend_free(be);
    eng_model_close(m);
    return rc;
}

/* ---- ragkv generate with a blended prompt ------------------------------------------------ */

#define MAX_CHUNKS 64

struct gen_blend {
    int32_t *chunk[MAX_CHUNKS]; /* (nchunk[i]) token ids, no BOS */
    size_t nchunk[MAX_CHUNKS];
    int n;
    int32_t *query;             /* (nquery) */
    size_t nquery;
    bl_params p;
    bl_stats stats;
    int assembled;
};

/* Token ids, decimal, one per line (blank lines and '#' comments skipped). */
static int read_ids(const char *path, int32_t **out, size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "ragkv generate: %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t cap = 256, k = 0;
    int32_t *v = rk_malloc(cap * sizeof(int32_t));
    char line[128];
    int lineno = 0, rc = 0;
    while (v && fgets(line, sizeof(line), f)) {
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\n' || *p == '#' || *p == '\0')
            continue;
        char *end;
        long x = strtol(p, &end, 10);
        while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
            end++;
        if (*end || x < 0 || x > INT32_MAX) {
            fprintf(stderr, "ragkv generate: %s:%d: not a token id\n", path, lineno);
            rc = 2;
            break;
        }
        if (k == cap) {
            int32_t *nv = rk_realloc(v, 2 * cap * sizeof(int32_t));
            if (!nv) {
                rc = 1;
                break;
            }
            v = nv;
            cap *= 2;
        }
        v[k++] = (int32_t)x;
    }
    fclose(f);
    if (rc || !v) {
        rk_free(v);
        return rc ? rc : 1;
    }
    *out = v;
    *n = k;
    return 0;
}

/* eng_prompt_fn: standalone chunk caches (for the modes that reuse), then bl_assemble. */
static rk_status assemble_prompt(void *ctx, eng_model *m, eng_backend *be, eng_seq *s, const int32_t *tokens,
                                 size_t n, float *logits)
{
    (void)tokens;
    (void)n; /* the same tokens as BOS + chunks + query, which the segments describe */
    struct gen_blend *g = ctx;
    bl_segment segs[MAX_CHUNKS];
    float *kv[MAX_CHUNKS] = {0};
    rk_status st = RK_OK;
    for (int i = 0; i < g->n && st == RK_OK; i++) {
        if (g->p.mode != BL_FULL) {
            kv[i] = rk_malloc(eng_kv_floats(m, g->nchunk[i]) * sizeof(float));
            st = kv[i] ? bl_chunk_prefill(m, be, g->chunk[i], g->nchunk[i], kv[i]) : RK_ERR_NOMEM;
        }
        segs[i] = (bl_segment){.tokens = g->chunk[i], .n = g->nchunk[i], .kv = kv[i]};
    }
    if (st == RK_OK)
        st = bl_assemble(m, be, s, segs, (size_t)g->n, g->query, g->nquery, &g->p, logits, &g->stats);
    g->assembled = st == RK_OK;
    for (int i = 0; i < g->n; i++)
        rk_free(kv[i]);
    return st;
}

int bl_cli_generate(int argc, char **argv)
{
    struct gen_blend g;
    memset(&g, 0, sizeof(g));
    bl_params_default(&g.p, BL_FULL);
    const char *query = NULL;
    bl_select sel = BL_SELECT_DEFAULT;
    int blended = 0, rc = 2;
    char **rest = rk_calloc((size_t)argc + 3, sizeof(char *));
    int nrest = 0;
    char tmp[] = "/tmp/ragkv-generate-XXXXXX";
    int tfd = -1;
    if (!rest)
        return 1;
    rest[nrest++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int takes = !strcmp(a, "--chunk") || !strcmp(a, "--query") || !strcmp(a, "--blend") || !strcmp(a, "--recompute") ||
                    !strcmp(a, "--select");
        if (!takes) {
            rest[nrest++] = argv[i];
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ragkv generate: %s needs a value\n", a);
            goto out;
        }
        const char *v = argv[++i];
        blended = 1;
        if (!strcmp(a, "--chunk")) {
            if (g.n == MAX_CHUNKS) {
                fprintf(stderr, "ragkv generate: at most %d chunks\n", MAX_CHUNKS);
                goto out;
            }
            if ((rc = read_ids(v, &g.chunk[g.n], &g.nchunk[g.n])) != 0)
                goto out;
            if (g.nchunk[g.n] == 0) {
                fprintf(stderr, "ragkv generate: %s holds no tokens\n", v);
                rc = 2;
                goto out;
            }
            g.n++;
            rc = 2;
        } else if (!strcmp(a, "--query")) {
            query = v;
        } else if (!strcmp(a, "--blend")) {
            int mode = bl_mode_parse(v);
            if (mode < 0) {
                fprintf(stderr, "ragkv generate: --blend: full, prefix, naive, cacheblend, cachecraft or ape\n");
                goto out;
            }
            float r = g.p.ratio;
            bl_params_default(&g.p, (bl_mode)mode);
            g.p.ratio = r;
        } else if (!strcmp(a, "--select")) {
            if (bl_select_parse(v, &sel) != RK_OK) {
                fprintf(stderr, "ragkv generate: --select attention|deviation|lookahead\n");
                goto out;
            }
        } else {
            char *end;
            float r = strtof(v, &end);
            if (*end || !(r >= 0 && r <= 1)) {
                fprintf(stderr, "ragkv generate: --recompute takes a ratio in [0, 1]\n");
                goto out;
            }
            g.p.ratio = r;
        }
    }
    g.p.select = sel;
    if (!blended) { /* a plain prompt: the engine's tool as it is */
        rk_free(rest);
        rc = eng_cli_generate(argc, argv);
        for (int i = 1; i < argc; i++)
            if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
                printf("Blended prompts (BOS + chunks + query, instead of --prompt/--tokens-in):\n"
                       "  --chunk FILE     a chunk's token ids, one per line, no BOS (repeatable, in order)\n"
                       "  --query FILE     the query's token ids\n"
                       "  --blend MODE     full, prefix, naive, cacheblend, cachecraft or ape (default full)\n"
                       "  --recompute R    CacheBlend's ratio (default 0.15)\n"
                       "  --select S       CacheBlend's ranking: attention (default: the deviations weighted\n"
                       "                   by the query's attention at the check layer), deviation, or\n"
                       "                   lookahead (weighted by the query's attention over every later\n"
                       "                   layer of a naive pass)\n"
                       "  Chunk caches are computed standalone first; a last line reports\n"
                       "  'blend: recomputed=<fraction> ttft_ms=<t>'.\n");
        return rc;
    }
    if (query && (rc = read_ids(query, &g.query, &g.nquery)) != 0)
        goto out;
    rc = 2;
    if (g.n == 0 && g.nquery == 0) {
        fprintf(stderr, "ragkv generate: --blend/--recompute need a prompt of --chunk and/or --query files\n");
        goto out;
    }
    for (int i = 1; i < nrest; i++)
        if (!strcmp(rest[i], "--prompt") || !strcmp(rest[i], "--tokens-in")) {
            fprintf(stderr, "ragkv generate: --chunk/--query make the prompt; drop %s\n", rest[i]);
            goto out;
        }
    /* the engine's tool reads the prompt's tokens (BOS, chunks, query) from a file */
    if ((tfd = mkstemp(tmp)) < 0) {
        fprintf(stderr, "ragkv generate: temporary file: %s\n", strerror(errno));
        rc = 1;
        goto out;
    }
    /* BOS as the model defines it (the assembly itself uses the model's BOS too) */
    int bos = 1;
    for (int i = 1; i + 1 < nrest; i++)
        if (!strcmp(rest[i], "--model")) {
            eng_model *mm;
            if (eng_model_open(rest[i + 1], &mm) == RK_OK) {
                bos = eng_model_get_info(mm)->bos;
                eng_model_close(mm);
            }
        }
    FILE *tf = fdopen(tfd, "w");
    fprintf(tf, "%d\n", bos);
    for (int i = 0; i < g.n; i++)
        for (size_t t = 0; t < g.nchunk[i]; t++)
            fprintf(tf, "%d\n", g.chunk[i][t]);
    for (size_t t = 0; t < g.nquery; t++)
        fprintf(tf, "%d\n", g.query[t]);
    fclose(tf);
    rest[nrest++] = "--tokens-in";
    rest[nrest++] = tmp;
    rest[nrest] = NULL;
    rc = eng_cli_generate_with(nrest, rest, assemble_prompt, &g);
    if (g.assembled)
        printf("blend: recomputed=%.4f ttft_ms=%.3f\n", (double)g.stats.recomputed / (double)g.stats.prompt_tokens,
               g.stats.ms);
    unlink(tmp);
out:
    for (int i = 0; i < g.n; i++)
        rk_free(g.chunk[i]);
    rk_free(g.query);
    rk_free(rest);
    return rc;
}

int bl_cli_main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "eval"))
        return eval_main(argc - 1, argv + 1);
    fprintf(stderr, "usage: ragkv blend eval --model PATH [...]   ('ragkv blend eval --help')\n");
    return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 2;
}
