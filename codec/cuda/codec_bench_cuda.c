/* codec_bench_cuda.c — the `--cuda` part of `ragkv bench codec`: codec_decode_cuda timed
 * against the CPU decoder's output, bit for bit. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/codec_eval.h"
#include "codec_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/clock.h"

int codec_bench_cuda(codec_kv_source *src, const codec_codebook *cb, const codec_codebook *cbt,
                     rk_pool *pool, int tokens, int iters, FILE *jf)
{
    if (!codec_cuda_available()) {
        fprintf(stderr, "ragkv bench codec --cuda: no CUDA device\n");
        return 0;
    }
    codec_shape shape = src->shape;
    float *kv = src->kv, *own = NULL;
    if (tokens > 0 && src->train_chunk) { /* synthetic: a longer context of the same model */
        shape.n_tokens = (uint32_t)tokens;
        own = rk_malloc(codec_shape_values(&shape) * sizeof(float));
        if (!own)
            return 0;
        codec_synth_kv(&shape, src->model_seed << 32 | 2, own);
        kv = own;
    }
    size_t n = codec_shape_values(&shape);
    double gb = 2.0 * (double)n / 1e9;
    uint16_t *cpu = rk_malloc(n * 2), *gpu = rk_malloc(n * 2);
    void *dev = NULL;
    int ok = 0;
    if (!cpu || !gpu || cudaMalloc(&dev, n * 2) != cudaSuccess)
        goto done;
    printf("CUDA decode, L=%u T=%u H=%u D=%u (%.3f GB fp16 out)\n", shape.n_layers,
           shape.n_tokens, shape.n_kv_heads, shape.head_dim, gb);
    printf("%-28s %14s %14s %10s\n", "codec", "kernel GB/s", "end-end GB/s", "identical");
    if (jf)
        fprintf(jf, ",\"cuda_tokens\":%u,\"cuda\":[\n", shape.n_tokens);
    struct {
        const char *label;
        codec_id id;
        int level, codebook;
    } cases[] = {{"raw", CODEC_RAW, 0, 0},
                 {"q8", CODEC_Q8, 0, 0},
                 {"cachegen L0 tables", CODEC_CACHEGEN, 0, 0},
                 {"cachegen L1 tables", CODEC_CACHEGEN, 1, 0},
                 {"cachegen L1 codebook", CODEC_CACHEGEN, 1, 1},
                 {"cachegen L1 cb transform", CODEC_CACHEGEN, 1, 2},
                 {"cachegen L3 tables", CODEC_CACHEGEN, 3, 0}};
    size_t nc = sizeof cases / sizeof cases[0];
    for (size_t c = 0; c < nc; c++) {
        const codec_codebook *cbs[3] = {NULL, cb, cbt};
        if (cases[c].codebook == 2 && !cbt)
            continue;
        codec_params p = codec_params_default(cases[c].id);
        p.level = cases[c].level;
        p.pool = pool;
        p.codebook = cbs[cases[c].codebook];
        rk_buf b = RK_BUF_INIT;
        codec_decode_opts o = {.pool = pool, .codebook = p.codebook};
        rk_status st = codec_encode(kv, &shape, &p, &b);
        if (st == RK_OK)
            st = codec_decode(b.data, b.len, &o, CODEC_F16, cpu, n * 2);
        double kbest = 1e30, ebest = 1e30;
        for (int it = 0; st == RK_OK && it < iters; it++) {
            float kms = 0;
            uint64_t t0 = rk_now_ns();
            st = codec_decode_cuda_timed(b.data, b.len, &o, CODEC_F16, dev, n * 2, NULL, &kms);
            uint64_t t1 = rk_now_ns();
            if (kms > 0 && kms * 1e-3 < kbest)
                kbest = kms * 1e-3;
            if ((double)(t1 - t0) * 1e-9 < ebest)
                ebest = (double)(t1 - t0) * 1e-9;
        }
        rk_buf_free(&b);
        if (st != RK_OK || cudaMemcpy(gpu, dev, n * 2, cudaMemcpyDeviceToHost) != cudaSuccess) {
            fprintf(stderr, "ragkv bench codec --cuda: %s: %s (%s)\n", cases[c].label,
                    rk_strerror(st), rk_error_msg());
            goto done;
        }
        int same = memcmp(cpu, gpu, n * 2) == 0;
        printf("%-28s %14.1f %14.1f %10s\n", cases[c].label, gb / kbest, gb / ebest,
               same ? "yes" : "NO");
        if (jf)
            fprintf(jf, "{\"label\":\"%s\",\"kernel_gb_s\":%.2f,\"end_to_end_gb_s\":%.2f,"
                        "\"identical\":%s}%s\n",
                    cases[c].label, gb / kbest, gb / ebest, same ? "true" : "false",
                    c + 1 < nc ? "," : "");
    }
    if (jf)
        fprintf(jf, "]");
    ok = 1;
done:
    if (dev)
        cudaFree(dev);
    rk_free(cpu);
    rk_free(gpu);
    rk_free(own);
    return ok;
}
