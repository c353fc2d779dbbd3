/*
 * engine_bench.c — `ragkv bench engine`: time the engine's full prefill and decode steps on a
 * backend, for a model file or a seeded synthetic shape; a table and JSON. Side by side with
 * bench/python/hf_baseline.py (transformers) when both run on the same card.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bench.h"
#include "ragkv/clock.h"
#include "ragkv/engine.h"

static int parse_list(const char *s, long *out, int max)
{
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", s);
    for (char *t = strtok(buf, ","); t && n < max; t = strtok(NULL, ","))
        out[n++] = strtol(t, NULL, 10);
    return n;
}

int bench_engine_main(int argc, char **argv)
{
    const char *model = NULL, *shape = "llama3-8b", *backend = "cpu", *json = NULL;
    long prefill[8] = {1024}, batches[8] = {1}, ctx = 1024, iters = 3;
    int nprefill = 1, nbatch = 1;
    float s_temp = 0.8f, s_topp = 0.95f; /* --sample: the samplers of the decode+sample timings */
    int s_topk = 40;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help")) {
            printf("usage: ragkv bench engine [--model PATH | --shape NAME] [--backend cpu|cuda]\n"
                   "                          [--prefill N,N...] [--ctx N] [--batch B,B...] [--iters N] [--json FILE]\n"
                   "                          [--sample T,K,P]\n"
                   "Full prefill of N random tokens (time to the last row's logits) and one decode step at\n"
                   "--ctx tokens of context for each batch size; median of --iters runs after a warm-up.\n"
                   "Each decode is timed three ways: the step with its logits to the host (decode), and the\n"
                   "step with every row's next token chosen by eng_decode_sample (temperature T, top-k K,\n"
                   "top-p P; T 0: greedy) on the device where the backend can (sample dev) and on the host\n"
                   "(sample host: RAGKV_DEVICE_SAMPLE=0, logits copied and eng_sample per row).\n"
                   "Defaults: --shape llama3-8b (seeded synthetic weights) --backend cpu --prefill 1024\n"
                   "          --ctx 1024 --batch 1 --iters 3 --sample 0.8,40,0.95\n");
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ragkv bench engine: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--shape"))
            shape = v;
        else if (!strcmp(a, "--backend"))
            backend = v;
        else if (!strcmp(a, "--json"))
            json = v;
        else if (!strcmp(a, "--prefill"))
            nprefill = parse_list(v, prefill, 8);
        else if (!strcmp(a, "--batch"))
            nbatch = parse_list(v, batches, 8);
        else if (!strcmp(a, "--ctx"))
            ctx = strtol(v, NULL, 10);
        else if (!strcmp(a, "--iters"))
            iters = strtol(v, NULL, 10);
        else if (!strcmp(a, "--sample")) {
            if (sscanf(v, "%f,%d,%f", &s_temp, &s_topk, &s_topp) != 3 || s_temp < 0 || s_topk < 0 || !(s_topp > 0)) {
                fprintf(stderr, "ragkv bench engine: --sample T,K,P (T >= 0, K >= 0, P > 0)\n");
                return 2;
            }
        }
        else {
            fprintf(stderr, "ragkv bench engine: unknown option %s\n", a);
            return 2;
        }
    }
    if (iters < 1 || iters > 100 || ctx < 1)
        return 2;
    eng_model *m = NULL;
    eng_backend *be = NULL;
    uint64_t t0 = rk_now_ns();
    rk_status st = model ? eng_model_open(model, &m) : eng_model_synth(shape, 1, &m);
    double load_s = (double)(rk_now_ns() - t0) / 1e9;
    t0 = rk_now_ns();
    if (st == RK_OK)
        st = eng_backend_new(m, backend, 0, &be);
    double up_s = (double)(rk_now_ns() - t0) / 1e9;
    if (st != RK_OK) {
        fprintf(stderr, "ragkv bench engine: %s (%s)\n", rk_strerror(st), rk_error_msg());
        eng_model_close(m);
        return 1;
    }
    const eng_model_info *mi = eng_model_get_info(m);
    fprintf(stderr, "bench engine: %s (%.2f B params, %s) on %s: model %.1f s, backend %.1f s\n", mi->id,
            (double)mi->n_params / 1e9, eng_dtype_name(mi->dtype), eng_backend_name(be), load_s, up_s);
    FILE *jf = json ? fopen(json, "w") : NULL;
    if (json && !jf) {
        fprintf(stderr, "ragkv bench engine: %s: %s\n", json, strerror(errno));
        return 1;
    }
    if (jf)
        fprintf(jf, "{\"model\": \"%s\", \"backend\": \"%s\", \"math\": \"%s\", \"params\": %llu, \"prefill\": [", mi->id,
                backend, eng_backend_cuda_mode(be), (unsigned long long)mi->n_params);
    printf("%-8s %-22s %10s\n", "backend", "operation", "median ms");
    float *logits = rk_malloc((size_t)mi->vocab * 64 * sizeof(float));
    uint64_t rng = 88172645463325252ull;
    for (int k = 0; k < nprefill && st == RK_OK; k++) {
        size_t n = (size_t)prefill[k];
        int32_t *tok = rk_malloc(n * sizeof(int32_t));
        for (size_t i = 0; i < n; i++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            tok[i] = (int32_t)(3 + rng % (uint64_t)(mi->vocab - 3));
        }
        double t[100];
        for (long it = 0; it <= iters && st == RK_OK; it++) {
            eng_seq *s = NULL;
            if (k == 0 && it == 1) /* RAGKV_CUDA_PROFILE=1: the first warm-up (first uses of every
                                    * kernel and product) stays out of the report */
                eng_backend_cuda_profile_reset(be);
            st = eng_seq_new(be, n, &s);
            uint64_t a = rk_now_ns();
            if (st == RK_OK)
                st = eng_prefill(s, tok, n, NULL, ENG_LOGITS_LAST, logits);
            if (it > 0)
                t[it - 1] = (double)(rk_now_ns() - a) / 1e6;
            eng_seq_free(s);
        }
        if (st == RK_OK) {
            double med = bench_median(t, (int)iters);
            printf("%-8s prefill %6zu tokens    %10.2f\n", backend, n, med);
            if (jf)
                fprintf(jf, "%s{\"tokens\": %zu, \"ms_median\": %.3f}", k ? ", " : "", n, med);
        }
        rk_free(tok);
    }
    if (jf)
        fprintf(jf, "], \"decode\": [");
    for (int k = 0; k < nbatch && st == RK_OK; k++) {
        size_t b = (size_t)batches[k];
        eng_seq **seqs = rk_calloc(b, sizeof(eng_seq *));
        int32_t *tok = rk_malloc((size_t)ctx * sizeof(int32_t)), *next = rk_malloc(b * sizeof(int32_t));
        float *lg = rk_malloc(b * (size_t)mi->vocab * sizeof(float));
        eng_sampler *sm = rk_calloc(b, sizeof(eng_sampler));
        eng_sampler **psm = rk_calloc(b, sizeof(eng_sampler *));
        int32_t *chosen = rk_malloc(b * sizeof(int32_t));
        for (size_t i = 0; i < b; i++) {
            eng_sampler_init(&sm[i], s_temp, s_topk, s_topp, 1 + i);
            psm[i] = &sm[i];
        }
        for (long i = 0; i < ctx; i++)
            tok[i] = (int32_t)(3 + (i * 7919) % (mi->vocab - 3));
        for (size_t i = 0; i < b && st == RK_OK; i++) {
            st = eng_seq_new(be, (size_t)ctx + 3 * ((size_t)iters + 1) + 2, &seqs[i]);
            if (st == RK_OK)
                st = eng_prefill(seqs[i], tok, (size_t)ctx, NULL, ENG_LOGITS_NONE, NULL);
            next[i] = 5;
        }
        double t[100];
        for (long it = 0; it <= iters && st == RK_OK; it++) {
            uint64_t a = rk_now_ns();
            st = eng_decode(be, seqs, next, b, lg);
            if (it > 0)
                t[it - 1] = (double)(rk_now_ns() - a) / 1e6;
        }
        /* the same step with the tokens chosen: on the device (where the backend can), then on
         * the host; the chosen tokens are fed back */
        double ts[2][100], med_s[2] = {0, 0};
        for (int way = 0; way < 2 && st == RK_OK; way++) {
            setenv("RAGKV_DEVICE_SAMPLE", way == 0 ? "1" : "0", 1);
            for (long it = 0; it <= iters && st == RK_OK; it++) {
                uint64_t a = rk_now_ns();
                st = eng_decode_sample(be, seqs, next, b, psm, chosen, NULL);
                if (it > 0)
                    ts[way][it - 1] = (double)(rk_now_ns() - a) / 1e6;
                for (size_t i = 0; i < b && st == RK_OK; i++)
                    next[i] = chosen[i] >= 0 ? chosen[i] : 5;
            }
            if (st == RK_OK)
                med_s[way] = bench_median(ts[way], (int)iters);
        }
        unsetenv("RAGKV_DEVICE_SAMPLE");
        if (st == RK_OK) {
            double med = bench_median(t, (int)iters);
            printf("%-8s decode batch %3zu @%5ld %10.2f\n", backend, b, ctx, med);
            printf("%-8s  +sample dev  %3zu @%5ld %10.2f\n", backend, b, ctx, med_s[0]);
            printf("%-8s  +sample host %3zu @%5ld %10.2f\n", backend, b, ctx, med_s[1]);
            if (jf)
                fprintf(jf,
                        "%s{\"batch\": %zu, \"ctx\": %ld, \"ms_median\": %.3f, \"ms_sample_device\": %.3f, "
                        "\"ms_sample_host\": %.3f, \"sample\": [%g, %d, %g]}",
                        k ? ", " : "", b, ctx, med, med_s[0], med_s[1], (double)s_temp, s_topk, (double)s_topp);
        }
        for (size_t i = 0; i < b; i++) {
            eng_seq_free(seqs[i]);
            eng_sampler_free(&sm[i]);
        }
        rk_free(sm);
        rk_free(psm);
        rk_free(chosen);
        rk_free(seqs);
        rk_free(tok);
        rk_free(next);
        rk_free(lg);
    }
    if (jf) {
        fprintf(jf, "]}\n");
        fclose(jf);
    }
    rk_free(logits);
    if (st != RK_OK)
        fprintf(stderr, "ragkv bench engine: %s (%s)\n", rk_strerror(st), rk_error_msg());
    eng_backend_free(be);
    eng_model_close(m);
    return st == RK_OK ? 0 : 1;
}
