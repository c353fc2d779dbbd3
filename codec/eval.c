/* eval.c — `ragkv codec eval` (compression and error per codec, level and cachegen variant)
 * and `ragkv bench codec` (encode/decode throughput, CPU per core and CUDA). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ragkv/codec_eval.h"
#include "codec_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/clock.h"

/* ---- KV sources -------------------------------------------------------------------------- */

static float *synth_train_chunk(codec_kv_source *src, int i)
{
    float *kv = rk_malloc(codec_shape_values(&src->shape) * sizeof(float));
    if (kv)
        codec_synth_kv(&src->shape, (src->model_seed << 32) | (uint64_t)(1000 + i), kv);
    return kv;
}

rk_status codec_kv_source_synthetic(const codec_shape *s, uint64_t seed, codec_kv_source *out)
{
    memset(out, 0, sizeof *out);
    size_t n = codec_shape_values(s);
    if (!n)
        return rk_error_set(RK_ERR_INVALID, "synthetic: bad shape");
    out->name = "synthetic";
    out->shape = *s;
    out->model_seed = seed;
    out->kv = rk_malloc(n * sizeof(float));
    if (!out->kv)
        return rk_error_set(RK_ERR_NOMEM, "synthetic: %zu values", n);
    codec_synth_kv(s, seed << 32 | 1, out->kv);
    out->train_chunk = synth_train_chunk;
    return RK_OK;
}

rk_status codec_kv_source_file(const char *path, const codec_shape *s, codec_kv_source *out)
{
    memset(out, 0, sizeof *out);
    out->name = path;
    out->shape = *s;
    return codec_f32_file_read(path, s, &out->kv);
}

void codec_kv_source_free(codec_kv_source *src)
{
    rk_free(src->kv);
    src->kv = NULL;
    if (src->free_ctx)
        src->free_ctx(src->ctx);
    src->ctx = NULL;
}

/* ---- evaluation -------------------------------------------------------------------------- */

struct config {
    const char *label;
    codec_params p;
    int codebook; /* train a codebook on other chunks first */
};

struct result {
    size_t bytes, tables;
    double bits, rel_l2, k_mean, v_mean, k_max, v_max;
    double enc_s, dec_s;
    double *k_layer, *v_layer; /* [L] */
    codec_fidelity fid;
    int has_fid;
};

/* Relative L2 error of b against a, per layer for K and V, and overall, into r. */
static void rel_l2_layers(const float *a, const float *b, const codec_shape *s,
                          struct result *r)
{
    size_t plane = (size_t)s->n_tokens * s->n_kv_heads * s->head_dim;
    double te = 0, tx = 0;
    r->k_mean = r->v_mean = r->k_max = r->v_max = 0;
    for (uint32_t l = 0; l < s->n_layers; l++)
        for (int kv = 0; kv < 2; kv++) {
            const float *x = a + ((size_t)l * 2 + kv) * plane, *y = b + ((size_t)l * 2 + kv) * plane;
            double e = 0, n = 0;
            for (size_t i = 0; i < plane; i++) {
                double d = (double)y[i] - x[i];
                e += d * d;
                n += (double)x[i] * x[i];
            }
            te += e;
            tx += n;
            double rl = n > 0 ? sqrt(e / n) : sqrt(e);
            if (kv == 0) {
                r->k_layer[l] = rl;
                r->k_mean += rl / s->n_layers;
                r->k_max = rl > r->k_max ? rl : r->k_max;
            } else {
                r->v_layer[l] = rl;
                r->v_mean += rl / s->n_layers;
                r->v_max = rl > r->v_max ? rl : r->v_max;
            }
        }
    r->rel_l2 = tx > 0 ? sqrt(te / tx) : sqrt(te);
}

/* Encode (training a codebook first when asked), decode and score one configuration. */
static rk_status run_config(codec_kv_source *src, const struct config *c, rk_pool *pool,
                            float *dec, struct result *r)
{
    codec_codebook *cb = NULL;
    rk_buf b = RK_BUF_INIT;
    rk_status st = RK_OK;
    codec_params p = c->p;
    p.pool = pool;
    if (c->codebook) {
        float *tr[4] = {0};
        codec_shape sh[4];
        for (int i = 0; i < 4; i++) {
            sh[i] = src->shape;
            tr[i] = src->train_chunk ? src->train_chunk(src, i) : NULL;
        }
        if (!tr[0]) /* no other chunks: train on the evaluated one (optimistic, said so) */
            st = codec_codebook_train((const float *const *)&src->kv, sh, 1, &p, &cb);
        else
            st = codec_codebook_train((const float *const *)tr, sh, 4, &p, &cb);
        for (int i = 0; i < 4; i++)
            rk_free(tr[i]);
        if (st != RK_OK)
            return st;
        p.codebook = cb;
    }
    uint64_t t0 = rk_now_ns();
    if ((st = codec_encode(src->kv, &src->shape, &p, &b)) != RK_OK)
        goto done;
    uint64_t t1 = rk_now_ns();
    codec_decode_opts o = {.pool = pool, .codebook = cb};
    size_t n = codec_shape_values(&src->shape);
    if ((st = codec_decode(b.data, b.len, &o, CODEC_F32, dec, n * 4)) != RK_OK)
        goto done;
    uint64_t t2 = rk_now_ns();
    codec_info info;
    codec_inspect(b.data, b.len, &info);
    r->bytes = b.len;
    r->tables = info.table_bytes;
    r->bits = 8.0 * (double)b.len / (double)n;
    r->enc_s = (double)(t1 - t0) * 1e-9;
    r->dec_s = (double)(t2 - t1) * 1e-9;
    rel_l2_layers(src->kv, dec, &src->shape, r);
    if (src->fidelity && src->fidelity(src->ctx, dec, &r->fid) == RK_OK)
        r->has_fid = 1;
done:
    rk_buf_free(&b);
    codec_codebook_free(cb);
    return st;
}

/* Encoder parameters for a codec, level, K scale mode and anchor interval. */
static codec_params cfg(codec_id id, int level, int kmode, int anchor)
{
    codec_params p = codec_params_default(id);
    p.level = level;
    p.k_scale_mode = kmode;
    p.anchor_interval = anchor;
    return p;
}

rk_status codec_eval_run(codec_kv_source *src, const codec_eval_opts *eo, FILE *out)
{
    static char labels[64][64];
    const float *weights = eo->weights;
    const char *json_path = eo->json_path;
    int threads = eo->threads;
    char scaled[16] = "";
    if (eo->step_scale > 0)
        snprintf(scaled, sizeof scaled, " x%.2f", (double)eo->step_scale);
    struct config cf[64];
    int nc = 0;
    cf[nc++] = (struct config){"raw", cfg(CODEC_RAW, 0, -1, -1), 0};
    cf[nc++] = (struct config){"lz4", cfg(CODEC_LZ4, 0, -1, -1), 0};
    cf[nc++] = (struct config){"lz4 hc", cfg(CODEC_LZ4, 1, -1, -1), 0};
    cf[nc++] = (struct config){"q8", cfg(CODEC_Q8, 0, -1, -1), 0};
    for (int lv = 0; lv <= 4; lv++)
        for (int cbk = 0; cbk < 2; cbk++) {
            snprintf(labels[nc], sizeof labels[nc], "cachegen L%d %s", lv, cbk ? "codebook" : "chunk-tables");
            cf[nc] = (struct config){labels[nc], cfg(CODEC_CACHEGEN, lv, -1, -1), cbk};
            nc++;
        }
    /* The measured design questions, at the default level with a codebook. */
    for (int v = 0; v < 4; v++) {
        int kmode = v & 1 ? CODEC_SCALE_TOKEN : CODEC_SCALE_CHANNEL, anchor = v & 2 ? 10 : 0;
        snprintf(labels[nc], sizeof labels[nc], "cachegen L1 cb K-%s delta-%s",
                 kmode == CODEC_SCALE_TOKEN ? "token" : "channel", anchor ? "10" : "off");
        cf[nc] = (struct config){labels[nc], cfg(CODEC_CACHEGEN, 1, kmode, anchor), 1};
        nc++;
    }
    snprintf(labels[nc], sizeof labels[nc], "cachegen L1 cb V-token");
    cf[nc] = (struct config){labels[nc], cfg(CODEC_CACHEGEN, 1, -1, 0), 1};
    cf[nc].p.v_scale_mode = CODEC_SCALE_TOKEN;
    nc++;
    for (int lv = 0; weights && lv <= 4; lv++) { /* the weighted rate allocation */
        snprintf(labels[nc], sizeof labels[nc], "cachegen L%d codebook weighted%s", lv, scaled);
        cf[nc] = (struct config){labels[nc], cfg(CODEC_CACHEGEN, lv, -1, -1), 1};
        cf[nc].p.weights = weights;
        cf[nc].p.step_scale = eo->step_scale;
        nc++;
    }
    for (int lv = 0; weights && lv <= 3; lv++) { /* transform coding */
        snprintf(labels[nc], sizeof labels[nc], "cachegen L%d codebook wtd transform%s", lv, scaled);
        cf[nc] = (struct config){labels[nc], cfg(CODEC_CACHEGEN, lv, -1, -1), 1};
        cf[nc].p.weights = weights;
        cf[nc].p.step_scale = eo->step_scale;
        cf[nc].p.transform_block = eo->transform_block > 0 ? eo->transform_block : codec_transform_block_default(&src->shape);
        nc++;
    }
    for (int lv = 0; weights && lv <= 3; lv++) { /* and K predicted from V */
        snprintf(labels[nc], sizeof labels[nc], "cachegen L%d codebook wtd transform K|V%s", lv, scaled);
        cf[nc] = cf[nc - 4];
        cf[nc].label = labels[nc];
        cf[nc].p.predict_k = 1;
        nc++;
    }
    if (eo->rows) { /* keep the asked rows, and q8 for the ratios */
        int kept = 0;
        for (int i = 0; i < nc; i++)
            if (cf[i].p.codec == CODEC_Q8 || strstr(cf[i].label, eo->rows))
                cf[kept++] = cf[i];
        nc = kept;
    }
    size_t n = codec_shape_values(&src->shape);
    uint32_t L = src->shape.n_layers;
    float *dec = rk_malloc(n * sizeof(float));
    struct result *res = rk_calloc((size_t)nc, sizeof *res);
    double *layers = rk_calloc((size_t)nc * 2 * L, sizeof(double));
    rk_pool *pool = NULL;
    rk_status st = RK_OK;
    FILE *jf = NULL;
    if (!dec || !res || !layers) {
        st = rk_error_set(RK_ERR_NOMEM, "eval");
        goto done;
    }
    if (threads != 1 && (st = rk_pool_create(threads, &pool)) != RK_OK)
        goto done;
    fprintf(out, "KV: %s, shape L=%u T=%u H=%u D=%u (%zu values, %.1f MiB fp16)\n", src->name,
            L, src->shape.n_tokens, src->shape.n_kv_heads, src->shape.head_dim, n,
            (double)n * 2 / 1048576.0);
    fprintf(out, "%-36s %10s %8s %7s %7s %8s %8s %8s %8s\n", "codec", "bytes", "bits/val",
            "x fp16", "x q8", "relL2", "K mean", "V mean", "K max");
    size_t q8_bytes = 0;
    for (int i = 0; i < nc; i++) {
        res[i].k_layer = layers + (size_t)i * 2 * L;
        res[i].v_layer = res[i].k_layer + L;
        if ((st = run_config(src, &cf[i], pool, dec, &res[i])) != RK_OK)
            goto done;
        if (cf[i].p.codec == CODEC_Q8)
            q8_bytes = res[i].bytes;
        fprintf(out, "%-36s %10zu %8.3f %7.2f %7.2f %8.4f %8.4f %8.4f %8.4f", cf[i].label,
                res[i].bytes, res[i].bits, 2.0 * (double)n / (double)res[i].bytes,
                q8_bytes ? (double)q8_bytes / (double)res[i].bytes : 0.0, res[i].rel_l2,
                res[i].k_mean, res[i].v_mean, res[i].k_max);
        if (res[i].has_fid)
            fprintf(out, "  KL %.5f top1 %.4f greedy %.1f", res[i].fid.kl, res[i].fid.top1,
                    res[i].fid.greedy_match);
        fprintf(out, "\n");
        fflush(out);
        if (eo->rows_out && i < eo->max_rows) {
            codec_eval_row *row = &eo->rows_out[i];
            memset(row, 0, sizeof *row);
            snprintf(row->label, sizeof row->label, "%s", cf[i].label);
            row->bytes = res[i].bytes;
            row->bits = res[i].bits;
            row->ratio_q8 = q8_bytes ? (double)q8_bytes / (double)res[i].bytes : 0.0;
            row->rel_l2 = res[i].rel_l2;
            row->has_fid = res[i].has_fid;
            row->fid = res[i].fid;
            if (eo->n_rows)
                *eo->n_rows = i + 1;
        }
    }
    if (!src->fidelity)
        fprintf(out, "(generation fidelity: not measured; this KV source has no model)\n");
    if (json_path) {
        jf = fopen(json_path, "w");
        if (!jf) {
            st = rk_error_set(RK_ERR_IO, "%s: cannot write", json_path);
            goto done;
        }
        fprintf(jf, "{\"source\":\"%s\",\"shape\":[%u,%u,%u,%u],\"results\":[\n", src->name, L,
                src->shape.n_tokens, src->shape.n_kv_heads, src->shape.head_dim);
        for (int i = 0; i < nc; i++) {
            fprintf(jf, "{\"label\":\"%s\",\"codec\":\"%s\",\"level\":%d,\"bytes\":%zu,"
                        "\"table_bytes\":%zu,\"bits_per_value\":%.5f,\"ratio_fp16\":%.4f,"
                        "\"ratio_q8\":%.4f,\"rel_l2\":%.6f,\"k_rel_l2\":[",
                    cf[i].label, codec_id_name(cf[i].p.codec), cf[i].p.level, res[i].bytes,
                    res[i].tables, res[i].bits, 2.0 * (double)n / (double)res[i].bytes,
                    (double)q8_bytes / (double)res[i].bytes, res[i].rel_l2);
            for (uint32_t l = 0; l < L; l++)
                fprintf(jf, "%s%.6f", l ? "," : "", res[i].k_layer[l]);
            fprintf(jf, "],\"v_rel_l2\":[");
            for (uint32_t l = 0; l < L; l++)
                fprintf(jf, "%s%.6f", l ? "," : "", res[i].v_layer[l]);
            fprintf(jf, "]");
            if (res[i].has_fid)
                fprintf(jf, ",\"kl\":%.6f,\"top1\":%.6f,\"greedy_match\":%.3f", res[i].fid.kl,
                        res[i].fid.top1, res[i].fid.greedy_match);
            fprintf(jf, "}%s\n", i + 1 < nc ? "," : "");
        }
        fprintf(jf, "]}\n");
        if (fclose(jf) != 0)
            st = rk_error_set(RK_ERR_IO, "%s: write failed", json_path);
        jf = NULL;
    }
done:
    rk_free(dec);
    rk_free(res);
    rk_free(layers);
    rk_pool_free(pool);
    return st;
}

rk_status codec_weights_combine(const float *const *w, int k, size_t n, float *out)
{
    if (k < 1 || !w)
        return rk_error_set(RK_ERR_INVALID, "weights: %d measurements", k);
    for (int m = 0; m < k; m++)
        for (size_t i = 0; i < n; i++)
            if (!(w[m][i] >= 0.0f) || isinf(w[m][i]))
                return rk_error_set(RK_ERR_INVALID, "weights: measurement %d value %zu is %g", m, i, (double)w[m][i]);
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        int c = 0;
        for (int m = 0; m < k; m++)
            if (w[m][i] > 0.0f) {
                s += log((double)w[m][i]);
                c++;
            }
        out[i] = c ? (float)exp(s / c) : 0.0f;
    }
    return RK_OK;
}

#define EVAL_MAX_ROWS 64

rk_status codec_eval_many(codec_eval_source_fn make, void *ctx, int n, const codec_eval_opts *o, FILE *out)
{
    if (n < 1 || !make)
        return rk_error_set(RK_ERR_INVALID, "eval: %d sources", n);
    codec_eval_row *rows = rk_calloc(EVAL_MAX_ROWS, sizeof *rows), *sum = rk_calloc(EVAL_MAX_ROWS, sizeof *sum);
    double *worst = rk_calloc(EVAL_MAX_ROWS, sizeof *worst);
    int nr = 0, nfid = 0;
    double q8_bits = 0;
    rk_status st = RK_OK;
    char src_name[256] = "";
    if (!rows || !sum || !worst) {
        st = rk_error_set(RK_ERR_NOMEM, "eval");
        goto done;
    }
    for (int k = 0; k < n && st == RK_OK; k++) {
        codec_kv_source src;
        if ((st = make(ctx, k, &src)) != RK_OK)
            goto done;
        snprintf(src_name, sizeof src_name, "%s", src.name ? src.name : "");
        codec_eval_opts one = *o;
        int got = 0;
        one.json_path = NULL;
        one.rows_out = rows;
        one.max_rows = EVAL_MAX_ROWS;
        one.n_rows = &got;
        fprintf(out, "== source %d of %d\n", k + 1, n);
        st = codec_eval_run(&src, &one, out);
        codec_kv_source_free(&src);
        if (st != RK_OK)
            goto done;
        if (k == 0)
            nr = got;
        if (got != nr) {
            st = rk_error_set(RK_ERR_INTERNAL, "eval: source %d gave %d rows, the first %d", k + 1, got, nr);
            goto done;
        }
        for (int i = 0; i < nr; i++) {
            if (k > 0 && strcmp(rows[i].label, sum[i].label)) {
                st = rk_error_set(RK_ERR_INTERNAL, "eval: source %d row %d is %s, not %s", k + 1, i, rows[i].label,
                                  sum[i].label);
                goto done;
            }
            if (k == 0) {
                memcpy(sum[i].label, rows[i].label, sizeof sum[i].label);
                sum[i].has_fid = rows[i].has_fid;
                worst[i] = rows[i].fid.top1;
            }
            sum[i].bits += rows[i].bits;
            sum[i].rel_l2 += rows[i].rel_l2;
            sum[i].fid.kl += rows[i].fid.kl;
            sum[i].fid.top1 += rows[i].fid.top1;
            sum[i].fid.greedy_match += rows[i].fid.greedy_match;
            sum[i].has_fid &= rows[i].has_fid;
            if (rows[i].fid.top1 < worst[i])
                worst[i] = rows[i].fid.top1;
            if (!strcmp(rows[i].label, "q8"))
                q8_bits += rows[i].bits;
        }
    }
    for (int i = 0; i < nr; i++)
        nfid |= sum[i].has_fid;
    fprintf(out, "== means over %d sources\n%-36s %8s %7s %8s", n, "codec", "bits/val", "x q8", "relL2");
    if (nfid)
        fprintf(out, " %9s %7s %7s %7s", "KL", "top1", "worst", "greedy");
    fprintf(out, "\n");
    for (int i = 0; i < nr; i++) {
        double b = sum[i].bits / n;
        fprintf(out, "%-36s %8.3f %7.2f %8.4f", sum[i].label, b, q8_bits > 0 ? q8_bits / n / b : 0.0,
                sum[i].rel_l2 / n);
        if (sum[i].has_fid)
            fprintf(out, " %9.5f %7.4f %7.4f %7.1f", sum[i].fid.kl / n, sum[i].fid.top1 / n, worst[i],
                    sum[i].fid.greedy_match / n);
        fprintf(out, "\n");
    }
    if (o->json_path) {
        FILE *jf = fopen(o->json_path, "w");
        if (!jf) {
            st = rk_error_set(RK_ERR_IO, "%s: cannot write", o->json_path);
            goto done;
        }
        fprintf(jf, "{\"source\":\"%s\",\"sources\":%d,\"means\":[\n", src_name, n);
        for (int i = 0; i < nr; i++) {
            double b = sum[i].bits / n;
            fprintf(jf, "{\"label\":\"%s\",\"bits_per_value\":%.5f,\"ratio_q8\":%.4f,\"rel_l2\":%.6f",
                    sum[i].label, b, q8_bits > 0 ? q8_bits / n / b : 0.0, sum[i].rel_l2 / n);
            if (sum[i].has_fid)
                fprintf(jf, ",\"kl\":%.6f,\"top1\":%.6f,\"top1_worst\":%.6f,\"greedy_match\":%.3f",
                        sum[i].fid.kl / n, sum[i].fid.top1 / n, worst[i], sum[i].fid.greedy_match / n);
            fprintf(jf, "}%s\n", i + 1 < nr ? "," : "");
        }
        fprintf(jf, "]}\n");
        if (fclose(jf) != 0)
            st = rk_error_set(RK_ERR_IO, "%s: write failed", o->json_path);
    }
done:
    rk_free(rows);
    rk_free(sum);
    rk_free(worst);
    return st;
}

/* ---- benchmark --------------------------------------------------------------------------- */

static void bench_usage(FILE *f)
{
    fprintf(f, "usage: ragkv bench codec [--tokens N] [--layers L --heads H --dim D]\n"
               "       [--threads N] [--iters N] [--cuda] [--cuda-tokens N]\n"
               "       [--kv FILE --shape L,T,H,D | --model LLAMA2.bin] [--json FILE]\n"
               "Encode/decode throughput in MB/s of fp16 KV (decode writes fp16), per codec and\n"
               "level, on synthetic Llama-3-8B-shaped KV (32 x 8 x 128) unless --kv is given.\n"
               "--threads 1 (default) measures one core; --cuda also times codec_decode_cuda.\n"
               "open ms: codec_reader_open; layer ms: one layer by codec_reader_decode_layers,\n"
               "the mean over every layer decoded alone.\n");
}

/* The smaller of two times. */
static double best_of(double a, double b) { return a < b ? a : b; }

/* CPU time of the process: on a shared machine a one-thread run's CPU time is its cost on one
 * core, whatever else the machine runs. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static codec_model_source_fn model_source;

void codec_eval_set_model_source(codec_model_source_fn fn)
{
    model_source = fn;
}

rk_status codec_kv_source_model(const char *model_path, uint64_t seed, codec_kv_source *out)
{
    memset(out, 0, sizeof(*out));
    if (!model_source)
        return rk_error_set(RK_ERR_UNSUPPORTED, "no model source registered (use the ragkv tool)");
    return model_source(model_path, seed, out);
}

int codec_bench_main(int argc, char **argv)
{
    int tokens = 256, layers = 32, heads = 8, dim = 128, threads = 1, iters = 3, cuda = 0;
    int cuda_tokens = 0;
    const char *json = NULL, *kvfile = NULL, *model = NULL;
    codec_shape fshape = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *ip = !strcmp(a, "--tokens") ? &tokens : !strcmp(a, "--layers") ? &layers
                : !strcmp(a, "--heads") ? &heads : !strcmp(a, "--dim") ? &dim
                : !strcmp(a, "--threads") ? &threads : !strcmp(a, "--iters") ? &iters
                : !strcmp(a, "--cuda-tokens") ? &cuda_tokens : NULL;
        if (ip && v && atoi(v) >= 0) {
            *ip = atoi(v);
            i++;
        } else if (!strcmp(a, "--cuda"))
            cuda = 1;
        else if (!strcmp(a, "--json") && v)
            json = v, i++;
        else if (!strcmp(a, "--kv") && v)
            kvfile = v, i++;
        else if (!strcmp(a, "--model") && v)
            model = v, i++;
        else if (!strcmp(a, "--shape") && v) {
            unsigned l, t, h, d;
            if (sscanf(v, "%u,%u,%u,%u", &l, &t, &h, &d) != 4) {
                bench_usage(stderr);
                return 2;
            }
            fshape = (codec_shape){l, t, h, d};
            i++;
        } else {
            bench_usage(!strcmp(a, "--help") ? stdout : stderr);
            return strcmp(a, "--help") ? 2 : 0;
        }
    }
    if (iters < 1)
        iters = 1;
    codec_kv_source src;
    rk_status st;
    codec_shape shape = {(uint32_t)layers, (uint32_t)tokens, (uint32_t)heads, (uint32_t)dim};
    if (model)
        st = codec_kv_source_model(model, 1, &src);
    else if (kvfile)
        st = codec_kv_source_file(kvfile, &fshape, &src);
    else
        st = codec_kv_source_synthetic(&shape, 7, &src);
    if (st != RK_OK) {
        fprintf(stderr, "ragkv bench codec: %s (%s)\n", rk_strerror(st), rk_error_msg());
        return 1;
    }
    shape = src.shape;
    size_t n = codec_shape_values(&shape);
    double mb = 2.0 * (double)n / 1e6; /* fp16 MB */
    rk_pool *pool = NULL;
    uint16_t *out = rk_malloc(n * 2);
    codec_codebook *cb = NULL, *cbw = NULL, *cbt = NULL;
    float *ew = NULL; /* equal weights: the weighted allocation's alphabets, for its speed */
    FILE *jf = NULL;
    int rc = 1;
    if (!out)
        goto done;
    if (threads != 1 && rk_pool_create(threads, &pool) != RK_OK)
        goto done;
    {
        codec_params tp = codec_params_default(CODEC_CACHEGEN);
        float *tr = src.train_chunk ? src.train_chunk(&src, 0) : NULL;
        const float *trp = tr ? tr : src.kv;
        tp.pool = pool;
        st = codec_codebook_train(&trp, &shape, 1, &tp, &cb);
        size_t nw = (size_t)shape.n_layers * 2 * shape.n_kv_heads * shape.head_dim;
        if (st == RK_OK && (ew = rk_malloc(nw * sizeof *ew)) != NULL) {
            for (size_t i = 0; i < nw; i++)
                ew[i] = 1.0f;
            tp.weights = ew;
            st = codec_codebook_train(&trp, &shape, 1, &tp, &cbw);
            /* the same with a transform of 16-channel blocks (the head when it is narrower or
               not a multiple of 16): the decoder's inverse transform runs whatever basis the
               training keeps (the identity on synthetic KV), so its cost is measured either way */
            tp.transform_block = shape.head_dim % 16 == 0 ? 16 : (int)shape.head_dim;
            if (st == RK_OK && tp.transform_block <= 64)
                st = codec_codebook_train(&trp, &shape, 1, &tp, &cbt);
        }
        rk_free(tr);
        if (st != RK_OK || !ew)
            goto done;
    }
    if (json && !(jf = fopen(json, "w"))) {
        fprintf(stderr, "ragkv bench codec: cannot write %s\n", json);
        goto done;
    }
    printf("KV %s L=%u T=%u H=%u D=%u: %.1f MB fp16; %s thread(s)\n", src.name, shape.n_layers,
           shape.n_tokens, shape.n_kv_heads, shape.head_dim, mb,
           threads == 1 ? "1" : threads == 0 ? "all" : argv[0] ? "N" : "N");
    printf("%-28s %8s %12s %12s %12s %12s %8s %8s\n", "codec", "bits/val", "encode MB/s",
           "decode MB/s", "enc MB/cpu-s", "dec MB/cpu-s", "open ms", "layer ms");
    if (jf)
        fprintf(jf, "{\"source\":\"%s\",\"shape\":[%u,%u,%u,%u],\"threads\":%d,\"cpu\":[\n",
                src.name, shape.n_layers, shape.n_tokens, shape.n_kv_heads, shape.head_dim,
                pool ? rk_pool_size(pool) : 1);
    struct {
        const char *label;
        codec_id id;
        int level, codebook; /* 0 tables, 1 the codebook, 2 the equal-weights one, 3 that
                                with a transform */
    } cases[] = {{"raw", CODEC_RAW, 0, 0},           {"lz4", CODEC_LZ4, 0, 0},
                 {"q8", CODEC_Q8, 0, 0},             {"cachegen L0 tables", CODEC_CACHEGEN, 0, 0},
                 {"cachegen L1 tables", CODEC_CACHEGEN, 1, 0},
                 {"cachegen L1 codebook", CODEC_CACHEGEN, 1, 1},
                 {"cachegen L1 cb equal-wt", CODEC_CACHEGEN, 1, 2},
                 {"cachegen L1 cb transform", CODEC_CACHEGEN, 1, 3},
                 {"cachegen L2 tables", CODEC_CACHEGEN, 2, 0},
                 {"cachegen L3 tables", CODEC_CACHEGEN, 3, 0},
                 {"cachegen L4 tables", CODEC_CACHEGEN, 4, 0}};
    size_t ncases = sizeof cases / sizeof cases[0];
    for (size_t c = 0; c < ncases; c++) {
        codec_codebook *cbs[4] = {NULL, cb, cbw, cbt};
        if (cases[c].codebook == 3 && !cbt)
            continue; /* a head wider than 64 channels and not a multiple of 16 */
        codec_params p = codec_params_default(cases[c].id);
        p.level = cases[c].level;
        p.pool = pool;
        p.codebook = cbs[cases[c].codebook];
        double te = 1e30, td = 1e30, ce = 1e30, cd = 1e30, to = 1e30, tl = 1e30;
        rk_buf b = RK_BUF_INIT;
        for (int it = 0; it < iters; it++) {
            b.len = 0;
            double c0 = cpu_s();
            uint64_t t0 = rk_now_ns();
            if ((st = codec_encode(src.kv, &shape, &p, &b)) != RK_OK)
                break;
            uint64_t t1 = rk_now_ns();
            double c1 = cpu_s();
            codec_decode_opts o = {.pool = pool, .codebook = p.codebook ? p.codebook : cb};
            if ((st = codec_decode(b.data, b.len, &o, CODEC_F16, out, n * 2)) != RK_OK)
                break;
            uint64_t t2 = rk_now_ns();
            double c2 = cpu_s();
            te = best_of(te, (double)(t1 - t0) * 1e-9);
            td = best_of(td, (double)(t2 - t1) * 1e-9);
            ce = best_of(ce, c1 - c0);
            cd = best_of(cd, c2 - c1);
            /* layer-pipelined loading: open once, then every layer alone */
            codec_reader *r;
            if ((st = codec_reader_open(b.data, b.len, &o, &r)) != RK_OK)
                break;
            uint64_t t3 = rk_now_ns();
            size_t lb = n * 2 / shape.n_layers;
            for (uint32_t l = 0; l < shape.n_layers && st == RK_OK; l++)
                st = codec_reader_decode_layers(r, CODEC_F16, (int)l, 1, (uint8_t *)out + l * lb, lb);
            uint64_t t4 = rk_now_ns();
            codec_reader_close(r);
            if (st != RK_OK)
                break;
            to = best_of(to, (double)(t3 - t2) * 1e-9);
            tl = best_of(tl, (double)(t4 - t3) * 1e-9 / shape.n_layers);
        }
        if (st != RK_OK) {
            rk_buf_free(&b);
            fprintf(stderr, "ragkv bench codec: %s: %s (%s)\n", cases[c].label, rk_strerror(st),
                    rk_error_msg());
            goto done;
        }
        double bits = 8.0 * (double)b.len / (double)n;
        printf("%-28s %8.3f %12.1f %12.1f %12.1f %12.1f %8.3f %8.3f\n", cases[c].label, bits,
               mb / te, mb / td, mb / ce, mb / cd, to * 1e3, tl * 1e3);
        if (jf)
            fprintf(jf, "{\"label\":\"%s\",\"bits_per_value\":%.5f,\"encode_mb_s\":%.2f,"
                        "\"decode_mb_s\":%.2f,\"encode_mb_per_cpu_s\":%.2f,"
                        "\"decode_mb_per_cpu_s\":%.2f,\"reader_open_ms\":%.4f,"
                        "\"layer_decode_ms\":%.4f}%s\n",
                    cases[c].label, bits, mb / te, mb / td, mb / ce, mb / cd, to * 1e3,
                    tl * 1e3, c + 1 < ncases ? "," : "");
        rk_buf_free(&b);
    }
    if (jf)
        fprintf(jf, "]");
    if (cuda) {
        int ok = codec_bench_cuda(&src, cb, cbt, pool, cuda_tokens, iters, jf);
        if (!ok)
            goto done;
    }
    if (jf)
        fprintf(jf, "}\n");
    rc = 0;
done:
    if (jf && fclose(jf) != 0)
        rc = 1;
    rk_free(out);
    rk_free(ew);
    codec_codebook_free(cb);
    codec_codebook_free(cbw);
    codec_codebook_free(cbt);
    rk_pool_free(pool);
    codec_kv_source_free(&src);
    return rc;
}
