/*
 * cli.c — `ragkv blend eval`: fidelity and cost of every blend mode against full prefill on a
 * real model, over RAG-like prompts built from the model's own sampled text.
 */
#include <errno.h>
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
    float g_first, g_step; /* gradual schedule (g_first 0: flat) */
    bl_mode modes[8];
    int nmodes;
    float ratios[16];
    int nratios;
};

/* One (mode, ratio) configuration's accumulated results. */
struct run {
    bl_mode mode;
    float ratio;
    double kl, agree, matched, recomputed, token_layers, ms;
    double *kv_dev;   /* (n_layers) mean relative L2 of the layer's KV vs full */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ragkv blend eval --model PATH [--cases N] [--chunks K] [--chunk-len T]\n"
            "                        [--query-len Q] [--seed S] [--modes LIST] [--ratios LIST]\n"
            "                        [--check-layer N] [--deviation-v 0|1] [--gradual FIRST,STEP]\n"
            "                        [--threads N] [--json FILE]\n\n"
            "Builds N prompts of K chunks (T tokens each, sampled from the model itself) and a\n"
            "query, and compares every mode with full prefill of the same prompt: next-token KL,\n"
            "top-1 agreement over a %d-token greedy continuation, mean matched continuation\n"
            "length, relative KV deviation per layer, tokens recomputed, time.\n"
            "Defaults: --cases 8 --chunks 4 --chunk-len 48 --query-len 16 --seed 1\n"
            "          --modes naive,cacheblend,prefix --ratios 0.05,0.15,0.3,0.5,1\n",
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
            fprintf(stderr, "ragkv blend eval: unknown mode '%s' (full, prefix, naive, cacheblend)\n", t);
            return -1;
        }
        o->modes[o->nmodes++] = (bl_mode)m;
    }
    return 0;
}

static int parse_list_ratios(const char *s, struct eval_opts *o)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", s);
    o->nratios = 0;
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        char *end;
        float r = strtof(t, &end);
        if (*end || !(r >= 0 && r <= 1) || o->nratios == 16) {
            fprintf(stderr, "ragkv blend eval: bad ratio '%s' (0..1)\n", t);
            return -1;
        }
        o->ratios[o->nratios++] = r;
    }
    return 0;
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

static int eval_main(int argc, char **argv)
{
    struct eval_opts o = {.cases = 8, .chunks = 4, .chunk_len = 48, .query_len = 16, .seed = 1};
    parse_list_modes("naive,cacheblend,prefix", &o);
    parse_list_ratios("0.05,0.15,0.3,0.5,1", &o);
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
    /* the configurations: cacheblend once per ratio, the others once */
    struct run runs[MAX_RUNS];
    int nruns = 0;
    for (int i = 0; i < o.nmodes; i++) {
        int nr = o.modes[i] == BL_CACHEBLEND ? o.nratios : 1;
        for (int j = 0; j < nr && nruns < MAX_RUNS; j++) {
            runs[nruns] = (struct run){.mode = o.modes[i], .ratio = o.modes[i] == BL_CACHEBLEND ? o.ratios[j] : 0};
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
    if (!chunks || !query || !ckv || !segs || !lfull || !lb || !kvfull || !kvb) {
        fprintf(stderr, "ragkv blend eval: out of memory\n");
        return 1;
    }
    fprintf(stderr, "blend eval: %s, %d cases x %d chunks x %d tokens + %d query tokens (%zu tokens)\n",
            mi->id, o.cases, o.chunks, o.chunk_len, o.query_len, nprompt);
    for (int c = 0; c < o.cases && st == RK_OK; c++) {
        uint64_t base = o.seed * 1000003ull + (uint64_t)c * 7919ull;
        for (int k = 0; k < o.chunks && st == RK_OK; k++) {
            int32_t *t = chunks + (size_t)k * o.chunk_len;
            st = sample_text(m, be, base + (uint64_t)k, t, (size_t)o.chunk_len);
            if (!ckv[k])
                ckv[k] = rk_malloc(eng_kv_floats(m, (size_t)o.chunk_len) * sizeof(float));
            if (st == RK_OK)
                st = bl_chunk_prefill(m, be, t, (size_t)o.chunk_len, ckv[k]);
            segs[k] = (bl_segment){t, (size_t)o.chunk_len, ckv[k]};
        }
        if (st == RK_OK && o.query_len)
            st = sample_text(m, be, base + 999, query, (size_t)o.query_len);
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
            p.ratio = runs[r].ratio;
            if (o.check_layer > 0)
                p.check_layer = o.check_layer;
            p.deviation_v = o.deviation_v != 0;
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
        }
        fprintf(stderr, "blend eval: case %d/%d done\n", c + 1, o.cases);
    }
    int rc = 0;
    if (st != RK_OK) {
        fprintf(stderr, "ragkv blend eval: %s (%s)\n", rk_strerror(st), rk_error_msg());
        rc = 1;
    } else {
        printf("%-11s %6s %10s %11s %8s %8s %11s %10s %9s\n", "mode", "ratio", "recomputed", "token-layers",
               "KL", "top1", "matched", "kv-dev-L1", "ms");
        for (int r = 0; r < nruns; r++) {
            double n = o.cases;
            printf("%-11s %6.2f %10.3f %11.3f %8.5f %8.3f %11.2f %10.4f %9.2f\n", bl_mode_name(runs[r].mode),
                   runs[r].ratio, runs[r].recomputed / n, runs[r].token_layers / n, runs[r].kl / n,
                   runs[r].agree / n, runs[r].matched / n, L > 1 ? runs[r].kv_dev[1] / n : runs[r].kv_dev[0] / n,
                   runs[r].ms / n);
        }
        if (o.json) {
            FILE *f = fopen(o.json, "w");
            if (!f) {
                fprintf(stderr, "ragkv blend eval: %s: %s\n", o.json, strerror(errno));
                rc = 1;
            } else {
                fprintf(f, "{\"model\": \"%s\", \"cases\": %d, \"chunks\": %d, \"chunk_len\": %d, \"query_len\": %d, "
                           "\"prompt_tokens\": %zu, \"continuation\": %d, \"runs\": [",
                        mi->id, o.cases, o.chunks, o.chunk_len, o.query_len, nprompt, CONT);
                for (int r = 0; r < nruns; r++) {
                    double n = o.cases;
                    fprintf(f, "%s\n {\"mode\": \"%s\", \"ratio\": %.4f, \"recomputed\": %.5f, \"token_layers\": %.5f, "
                               "\"kl\": %.7f, \"top1\": %.5f, \"matched\": %.3f, \"ms\": %.4f, \"kv_dev\": [",
                            r ? "," : "", bl_mode_name(runs[r].mode), runs[r].ratio, runs[r].recomputed / n,
                            runs[r].token_layers / n, runs[r].kl / n, runs[r].agree / n, runs[r].matched / n,
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

int bl_cli_main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "eval"))
        return eval_main(argc - 1, argv + 1);
    fprintf(stderr, "usage: ragkv blend eval --model PATH [...]   ('ragkv blend eval --help')\n");
    return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 2;
}
