/* cli.c — `ragkv codec encode|decode|inspect|train-codebook|eval`. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/codec_eval.h"
#include "codec_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/cli.h"

/* The subcommands' synopsis. */
static void usage(FILE *f)
{
    fprintf(f,
            "usage: ragkv codec COMMAND ...\n"
            "  encode --codec raw|lz4|q8|cachegen [--level N] [--codebook FILE]\n"
            "         [--weights FILE [--step-scale S]] [--k-scale token|channel] [--v-scale token|channel] [--anchor N]\n"
            "         [--group N] [--threads N] --shape L,T,H,D IN.f32 OUT.rkv\n"
            "  decode [--codebook FILE] [--dtype f32|f16|bf16] [--threads N] IN.rkv OUT\n"
            "  inspect IN.rkv\n"
            "  train-codebook --shape L,T,H,D [--level N] [--k-scale ...] [--anchor N]\n"
            "         [--weights FILE [--transform B [--predict]] [--step-scale S]] OUT.cb IN.f32...\n"
            "  eval (--synthetic [--tokens N] [--seed S] | --shape L,T,H,D IN.f32)\n"
            "         [--layers L --heads H --dim D] [--json FILE] [--model PATH]\n"
            "         [--weights FILE (read; with --model measured and written if absent)]\n"
            "         [--weight-sets K (measure on K held-out prompt sets, geometric mean)]\n"
            "         [--step-scale S] [--transform B] [--rows TEXT (only rows whose label has\n"
            "         TEXT, and q8)] [--seeds N (seeds --seed .. --seed+N-1, then the means;\n"
            "         --json gets the means)]\n"
            "  bench  (see ragkv codec bench --help; same as ragkv bench codec)\n"
            "Raw tensors (.f32) are little-endian float32 [layer][K|V][token][kv_head][head_dim],\n"
            "K before RoPE. A weights file (channel sensitivities for a weighted rate allocation)\n"
            "is such a tensor of one token. --transform B: learn a transform of B-channel blocks\n"
            "(B divides kv_heads x head_dim: blocks may span heads; docs/codec.md, \"Transform\n"
            "coding\"); --predict: K coded as residuals of a prediction from the same token's\n"
            "V (docs/codec.md, \"K predicted from V\"); with eval, the transform rows' B\n"
            "(default: every channel of a token up to 64, else the head up to 64, else 16).\n"
            "--step-scale S (with weights; 1/64..64):\n"
            "multiply the weighted allocation's steps by S, a rate between and beyond the levels\n"
            "(S = 2: about one bit per value fewer).\n");
}

/* Whole file into memory; *out owned by the caller (rk_free). */
static rk_status read_file(const char *path, uint8_t **out, size_t *len)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return rk_error_set(RK_ERR_IO, "%s: %s", path, strerror(errno));
    rk_buf b = RK_BUF_INIT;
    uint8_t tmp[1 << 16];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        rk_buf_append(&b, tmp, n);
    int err = ferror(f);
    fclose(f);
    if (err || b.failed) {
        rk_buf_free(&b);
        return rk_error_set(err ? RK_ERR_IO : RK_ERR_NOMEM, "%s: read failed", path);
    }
    *out = rk_buf_steal(&b, len);
    return RK_OK;
}

/* Write len bytes to path (created or truncated). */
static rk_status write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return rk_error_set(RK_ERR_IO, "%s: %s", path, strerror(errno));
    size_t w = fwrite(data, 1, len, f);
    if (fclose(f) != 0 || w != len)
        return rk_error_set(RK_ERR_IO, "%s: write failed", path);
    return RK_OK;
}

/* "L,T,H,D" with every field >= 1 into *sh; 0 when malformed. */
static int parse_shape(const char *s, codec_shape *sh)
{
    unsigned a, b, c, d;
    char extra;
    if (!s || sscanf(s, "%u,%u,%u,%u%c", &a, &b, &c, &d, &extra) != 4 || !a || !b || !c || !d)
        return 0;
    *sh = (codec_shape){a, b, c, d};
    return 1;
}

/* A decimal integer in [lo, hi] into *out; 0 when malformed or out of range. */
static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    if (!s)
        return 0;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return 0;
    *out = (int)v;
    return 1;
}

/* A float in [lo, hi]; 0 when absent, not a number or out of range. */
static int parse_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    if (!s)
        return 0;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi))
        return 0;
    *out = v;
    return 1;
}

/* "token" or "channel" into a codec_scale_mode; 0 otherwise. */
static int parse_mode(const char *s, int *out)
{
    if (s && !strcmp(s, "token"))
        *out = CODEC_SCALE_TOKEN;
    else if (s && !strcmp(s, "channel"))
        *out = CODEC_SCALE_CHANNEL;
    else
        return 0;
    return 1;
}

/* Print what failed with the status and its detail; returns exit status 1. */
static int fail(const char *what, rk_status st)
{
    fprintf(stderr, "ragkv codec: %s: %s (%s)\n", what, rk_strerror(st), rk_error_msg());
    return 1;
}

/* Options shared by the subcommands; positional arguments collected in pos. */
struct opts {
    codec_params p;
    codec_shape shape;
    int have_shape;
    const char *codebook, *json, *model, *dtype, *weights, *rows;
    int threads, synthetic, tokens, seed, seeds, weight_sets, layers, heads, dim;
    const char *pos[64];
    int npos;
};

/* Parse argv (argv[0] = the subcommand) into o; 0 (after a message) on a bad option. */
static int parse_opts(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->p = codec_params_default(CODEC_CACHEGEN);
    o->threads = 1;
    o->tokens = 256;
    o->seed = 1;
    o->layers = 32, o->heads = 8, o->dim = 128;
    int have_codec = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1, takes = 1;
        if (!strcmp(a, "--codec")) {
            codec_id id;
            ok = v && codec_id_parse(v, &id) == RK_OK;
            if (ok) {
                codec_params keep = o->p;
                o->p = codec_params_default(id);
                o->p.level = keep.level;
                o->p.k_scale_mode = keep.k_scale_mode;
                o->p.v_scale_mode = keep.v_scale_mode;
                o->p.anchor_interval = keep.anchor_interval;
                o->p.group = keep.group;
                o->p.transform_block = keep.transform_block;
                o->p.predict_k = keep.predict_k;
                o->p.step_scale = keep.step_scale;
                have_codec = 1;
            }
        } else if (!strcmp(a, "--level"))
            ok = parse_int(v, 0, 255, &o->p.level);
        else if (!strcmp(a, "--codebook"))
            o->codebook = v, ok = v != NULL;
        else if (!strcmp(a, "--weights"))
            o->weights = v, ok = v != NULL;
        else if (!strcmp(a, "--step-scale"))
            ok = parse_float(v, 1.0f / 64, 64.0f, &o->p.step_scale);
        else if (!strcmp(a, "--rows"))
            o->rows = v, ok = v != NULL;
        else if (!strcmp(a, "--transform"))
            ok = parse_int(v, 1, 64, &o->p.transform_block);
        else if (!strcmp(a, "--k-scale"))
            ok = parse_mode(v, &o->p.k_scale_mode);
        else if (!strcmp(a, "--v-scale"))
            ok = parse_mode(v, &o->p.v_scale_mode);
        else if (!strcmp(a, "--anchor"))
            ok = parse_int(v, 0, 256, &o->p.anchor_interval);
        else if (!strcmp(a, "--group"))
            ok = parse_int(v, 1, 1024, &o->p.group);
        else if (!strcmp(a, "--threads"))
            ok = parse_int(v, 0, 1024, &o->threads);
        else if (!strcmp(a, "--shape"))
            ok = parse_shape(v, &o->shape), o->have_shape = ok;
        else if (!strcmp(a, "--dtype"))
            o->dtype = v, ok = v != NULL;
        else if (!strcmp(a, "--json"))
            o->json = v, ok = v != NULL;
        else if (!strcmp(a, "--model") || !strcmp(a, "--tokenizer"))
            o->model = a[2] == 'm' ? v : o->model, ok = v != NULL;
        else if (!strcmp(a, "--tokens"))
            ok = parse_int(v, 1, 1 << 20, &o->tokens);
        else if (!strcmp(a, "--seed"))
            ok = parse_int(v, 0, 1 << 30, &o->seed);
        else if (!strcmp(a, "--seeds"))
            ok = parse_int(v, 1, 64, &o->seeds);
        else if (!strcmp(a, "--weight-sets"))
            ok = parse_int(v, 1, 64, &o->weight_sets);
        else if (!strcmp(a, "--layers"))
            ok = parse_int(v, 1, CG_MAX_LAYERS, &o->layers);
        else if (!strcmp(a, "--heads"))
            ok = parse_int(v, 1, 1024, &o->heads);
        else if (!strcmp(a, "--dim"))
            ok = parse_int(v, 1, 4096, &o->dim);
        else if (!strcmp(a, "--synthetic"))
            o->synthetic = 1, takes = 0;
        else if (!strcmp(a, "--predict"))
            o->p.predict_k = 1, takes = 0;
        else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "ragkv codec %s: unknown option %s\n", argv[0], a);
            return 0;
        } else {
            takes = 0;
            if (o->npos < 64)
                o->pos[o->npos++] = a;
        }
        if (!ok) {
            fprintf(stderr, "ragkv codec %s: bad or missing value for %s\n", argv[0], a);
            return 0;
        }
        i += takes;
    }
    if (!strcmp(argv[0], "encode") && !have_codec) {
        fprintf(stderr, "ragkv codec encode: --codec is required\n");
        return 0;
    }
    return 1;
}

/* Read and parse a codebook file; *cb owned by the caller. */
static rk_status load_codebook(const char *path, codec_codebook **cb)
{
    uint8_t *d;
    size_t n;
    rk_status st = read_file(path, &d, &n);
    if (st != RK_OK)
        return st;
    st = codec_codebook_parse(d, n, cb);
    rk_free(d);
    return st;
}

/* Read a weights file (a one-token tensor of shape's layers, heads and dim); *w owned by the
 * caller (rk_free). */
static rk_status load_weights(const char *path, const codec_shape *shape, float **w)
{
    codec_shape s1 = {shape->n_layers, 1, shape->n_kv_heads, shape->head_dim};
    return codec_f32_file_read(path, &s1, w);
}

/* `ragkv codec encode`: raw tensor file -> container file. */
static int cmd_encode(struct opts *o)
{
    if (!o->have_shape || o->npos != 2) {
        usage(stderr);
        return 2;
    }
    float *kv = NULL, *w = NULL;
    codec_codebook *cb = NULL;
    rk_pool *pool = NULL;
    rk_buf out = RK_BUF_INIT;
    int rc = 1;
    rk_status st = codec_f32_file_read(o->pos[0], &o->shape, &kv);
    if (st != RK_OK) {
        rc = fail("read input", st);
        goto done;
    }
    if (o->weights && (st = load_weights(o->weights, &o->shape, &w)) != RK_OK) {
        rc = fail(o->weights, st);
        goto done;
    }
    o->p.weights = w;
    if (o->codebook && (st = load_codebook(o->codebook, &cb)) != RK_OK) {
        rc = fail(o->codebook, st);
        goto done;
    }
    if (o->threads != 1 && (st = rk_pool_create(o->threads, &pool)) != RK_OK) {
        rc = fail("threads", st);
        goto done;
    }
    o->p.codebook = cb;
    o->p.pool = pool;
    if ((st = codec_encode(kv, &o->shape, &o->p, &out)) != RK_OK) {
        rc = fail("encode", st);
        goto done;
    }
    if ((st = write_file(o->pos[1], out.data, out.len)) != RK_OK) {
        rc = fail("write", st);
        goto done;
    }
    size_t n = codec_shape_values(&o->shape);
    printf("%s: %zu values -> %zu bytes (%.3f bits per value, %.2fx smaller than fp16)\n",
           o->pos[1], n, out.len, 8.0 * (double)out.len / (double)n,
           2.0 * (double)n / (double)out.len);
    rc = 0;
done:
    rk_buf_free(&out);
    rk_free(kv);
    rk_free(w);
    codec_codebook_free(cb);
    rk_pool_free(pool);
    return rc;
}

/* `ragkv codec decode`: container file -> raw tensor file (f32) or 16-bit little-endian
 * values. */
static int cmd_decode(struct opts *o)
{
    if (o->npos != 2) {
        usage(stderr);
        return 2;
    }
    codec_dtype dt = CODEC_F32;
    if (o->dtype && !strcmp(o->dtype, "f16"))
        dt = CODEC_F16;
    else if (o->dtype && !strcmp(o->dtype, "bf16"))
        dt = CODEC_BF16;
    else if (o->dtype && strcmp(o->dtype, "f32")) {
        fprintf(stderr, "ragkv codec decode: --dtype f32|f16|bf16\n");
        return 2;
    }
    uint8_t *in = NULL;
    void *out = NULL;
    codec_codebook *cb = NULL;
    rk_pool *pool = NULL;
    size_t len;
    int rc = 1;
    codec_info info;
    rk_status st = read_file(o->pos[0], &in, &len);
    if (st != RK_OK || (st = codec_inspect(in, len, &info)) != RK_OK) {
        rc = fail(o->pos[0], st);
        goto done;
    }
    if (o->codebook && (st = load_codebook(o->codebook, &cb)) != RK_OK) {
        rc = fail(o->codebook, st);
        goto done;
    }
    if (o->threads != 1 && (st = rk_pool_create(o->threads, &pool)) != RK_OK) {
        rc = fail("threads", st);
        goto done;
    }
    size_t nb = codec_decoded_bytes(&info, dt);
    out = rk_malloc(nb ? nb : 1);
    if (!out) {
        rc = fail("decode", rk_error_set(RK_ERR_NOMEM, "%zu bytes", nb));
        goto done;
    }
    codec_decode_opts d = {.pool = pool, .codebook = cb};
    if ((st = codec_decode(in, len, &d, dt, out, nb)) != RK_OK) {
        rc = fail(o->pos[0], st);
        goto done;
    }
    if (dt == CODEC_F32)
        st = codec_f32_file_write(o->pos[1], out, nb / 4);
    else { /* 16-bit output: little-endian */
        uint8_t *b = out;
        for (size_t i = 0; i < nb / 2; i++) {
            uint16_t v = ((uint16_t *)out)[i];
            rk_put_le16(b + 2 * i, v);
        }
        st = write_file(o->pos[1], out, nb);
    }
    if (st != RK_OK) {
        rc = fail(o->pos[1], st);
        goto done;
    }
    printf("%s: shape %u,%u,%u,%u (L,T,H,D) -> %s\n", o->pos[0], info.shape.n_layers,
           info.shape.n_tokens, info.shape.n_kv_heads, info.shape.head_dim, o->pos[1]);
    rc = 0;
done:
    rk_free(in);
    rk_free(out);
    codec_codebook_free(cb);
    rk_pool_free(pool);
    return rc;
}

/* `ragkv codec inspect`: print the header and sizes. */
static int cmd_inspect(struct opts *o)
{
    if (o->npos != 1) {
        usage(stderr);
        return 2;
    }
    uint8_t *in;
    size_t len;
    codec_info info;
    rk_status st = read_file(o->pos[0], &in, &len);
    if (st != RK_OK)
        return fail(o->pos[0], st);
    st = codec_inspect(in, len, &info);
    rk_free(in);
    if (st != RK_OK)
        return fail(o->pos[0], st);
    size_t n = codec_shape_values(&info.shape);
    printf("version %u\ncodec %s\nlevel %d\nshape %u,%u,%u,%u\ncodebook %016llx\nsections %u\n"
           "bytes %zu (payload %zu, tables %zu, overhead %zu)\nbits_per_value %.4f\n",
           info.version, codec_id_name(info.codec), info.level, info.shape.n_layers,
           info.shape.n_tokens, info.shape.n_kv_heads, info.shape.head_dim,
           (unsigned long long)info.codebook_id, info.n_sections, info.total_bytes,
           info.payload_bytes, info.table_bytes, info.overhead_bytes,
           8.0 * (double)info.total_bytes / (double)n);
    return 0;
}

/* `ragkv codec train-codebook`: codebook file from sample tensor files. */
static int cmd_train(struct opts *o)
{
    if (!o->have_shape || o->npos < 2) {
        usage(stderr);
        return 2;
    }
    int ns = o->npos - 1, rc = 1;
    float **kv = rk_calloc((size_t)ns, sizeof *kv), *w = NULL;
    codec_shape *shapes = rk_calloc((size_t)ns, sizeof *shapes);
    codec_codebook *cb = NULL;
    rk_buf out = RK_BUF_INIT;
    rk_status st;
    if (!kv || !shapes) {
        rc = fail("train", rk_error_set(RK_ERR_NOMEM, "samples"));
        goto done;
    }
    for (int i = 0; i < ns; i++) {
        shapes[i] = o->shape;
        if ((st = codec_f32_file_read(o->pos[i + 1], &o->shape, &kv[i])) != RK_OK) {
            rc = fail(o->pos[i + 1], st);
            goto done;
        }
    }
    if (o->weights && (st = load_weights(o->weights, &o->shape, &w)) != RK_OK) {
        rc = fail(o->weights, st);
        goto done;
    }
    o->p.weights = w;
    o->p.codec = CODEC_CACHEGEN;
    if ((st = codec_codebook_train((const float *const *)kv, shapes, (size_t)ns, &o->p, &cb)) !=
            RK_OK ||
        (st = codec_codebook_serialize(cb, &out)) != RK_OK ||
        (st = write_file(o->pos[0], out.data, out.len)) != RK_OK) {
        rc = fail("train-codebook", st);
        goto done;
    }
    printf("%s: codebook %016llx, level %d, %zu bytes\n", o->pos[0],
           (unsigned long long)codec_codebook_id(cb), codec_codebook_level(cb), out.len);
    rc = 0;
done:
    for (int i = 0; kv && i < ns; i++)
        rk_free(kv[i]);
    rk_free(kv);
    rk_free(w);
    rk_free(shapes);
    codec_codebook_free(cb);
    rk_buf_free(&out);
    return rc;
}

/* The eval's KV source for seed `seed` (a model's prompts, synthetic KV, or a file). */
static rk_status eval_source(const struct opts *o, uint64_t seed, codec_kv_source *src)
{
    if (o->model) /* llama2.c checkpoints; the engine becomes the source for other formats */
        return codec_kv_source_model(o->model, seed, src);
    if (o->synthetic) {
        codec_shape s = {(uint32_t)o->layers, (uint32_t)o->tokens, (uint32_t)o->heads,
                         (uint32_t)o->dim};
        return codec_kv_source_synthetic(&s, seed, src);
    }
    return codec_kv_source_file(o->pos[0], &o->shape, src);
}

/* --seeds: source i is seed o->seed + i; the first was made already (for the weights). */
struct eval_seeds {
    const struct opts *o;
    codec_kv_source *first; /* handed over as source 0, then NULL */
};

static rk_status eval_seed_source(void *ctx, int i, codec_kv_source *out)
{
    struct eval_seeds *es = ctx;
    if (i == 0 && es->first) {
        *out = *es->first;
        es->first = NULL;
        return RK_OK;
    }
    return eval_source(es->o, (uint64_t)es->o->seed + (uint64_t)i, out);
}

/* Channel sensitivities into w (nw values): src's measurement on its held-out prompts, or
 * with --weight-sets K the geometric mean of K of them (the sources of seeds --seed ..
 * --seed+K-1, each with its own held-out prompts), with progress on stderr. */
static rk_status measure_weights(const struct opts *o, codec_kv_source *src, float *w, size_t nw)
{
    int k = o->weight_sets > 1 ? o->weight_sets : 1;
    float **sets = rk_calloc((size_t)k, sizeof *sets);
    rk_status st = sets ? RK_OK : rk_error_set(RK_ERR_NOMEM, "weights");
    for (int i = 0; i < k && st == RK_OK; i++) {
        fprintf(stderr, "ragkv codec eval: measuring channel sensitivities into %s (set %d of %d)\n", o->weights,
                i + 1, k);
        if (!(sets[i] = rk_malloc(nw * sizeof *sets[i]))) {
            st = rk_error_set(RK_ERR_NOMEM, "weights");
            break;
        }
        if (i == 0) {
            st = src->sensitivity(src, sets[i]);
            continue;
        }
        codec_kv_source other;
        if ((st = eval_source(o, (uint64_t)o->seed + (uint64_t)i, &other)) != RK_OK)
            break;
        st = other.sensitivity ? other.sensitivity(&other, sets[i])
                               : rk_error_set(RK_ERR_UNSUPPORTED, "this source cannot measure sensitivities");
        codec_kv_source_free(&other);
    }
    if (st == RK_OK)
        st = codec_weights_combine((const float *const *)sets, k, nw, w);
    for (int i = 0; sets && i < k; i++)
        rk_free(sets[i]);
    rk_free(sets);
    return st;
}

/* `ragkv codec eval`: the compression/fidelity table over a KV source (or, with --seeds N,
 * over N seeds' sources and their means). */
static int cmd_eval(struct opts *o)
{
    codec_kv_source src;
    rk_status st;
    if (!o->model && !o->synthetic && !(o->have_shape && o->npos == 1)) {
        usage(stderr);
        return 2;
    }
    if (o->seeds > 1 && !o->model && !o->synthetic) {
        fprintf(stderr, "ragkv codec eval: --seeds needs --model or --synthetic (a file has no seed)\n");
        return 2;
    }
    if ((st = eval_source(o, (uint64_t)o->seed, &src)) != RK_OK)
        return fail("eval", st);
    float *w = NULL;
    if (o->weights && load_weights(o->weights, &src.shape, &w) != RK_OK) {
        /* absent or of another shape: measure on held-out prompts when the source can */
        codec_shape s1 = {src.shape.n_layers, 1, src.shape.n_kv_heads, src.shape.head_dim};
        size_t nw = codec_shape_values(&s1);
        if (!src.sensitivity) {
            st = rk_error_set(RK_ERR_UNSUPPORTED, "%s: unreadable, and this source cannot "
                              "measure sensitivities", o->weights);
            goto done;
        }
        if (!(w = rk_malloc(nw * sizeof *w)))
            st = rk_error_set(RK_ERR_NOMEM, "weights");
        else
            st = measure_weights(o, &src, w, nw);
        if (st == RK_OK)
            st = codec_f32_file_write(o->weights, w, nw);
        if (st != RK_OK)
            goto done;
    }
    codec_eval_opts eo = {.threads = o->threads, .weights = w, .step_scale = o->p.step_scale,
                          .transform_block = o->p.transform_block, .rows = o->rows, .json_path = o->json};
    if (eo.step_scale > 0 && !w) {
        st = rk_error_set(RK_ERR_INVALID, "--step-scale scales the weighted rows: give --weights");
        goto done;
    }
    if (o->seeds > 1) {
        struct eval_seeds es = {o, &src};
        st = codec_eval_many(eval_seed_source, &es, o->seeds, &eo, stdout);
        if (!es.first) /* handed over (and freed) */
            memset(&src, 0, sizeof src);
    } else
        st = codec_eval_run(&src, &eo, stdout);
done:
    rk_free(w);
    codec_kv_source_free(&src);
    return st == RK_OK ? 0 : fail("eval", st);
}

int codec_cli_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    struct opts o;
    const char *cmd = argv[1];
    if (!strcmp(cmd, "bench")) /* also `ragkv bench codec` once bench/ dispatches here */
        return codec_bench_main(argc - 1, argv + 1);
    if (!parse_opts(argc - 1, argv + 1, &o))
        return 2;
    if (!strcmp(cmd, "encode"))
        return cmd_encode(&o);
    if (!strcmp(cmd, "decode"))
        return cmd_decode(&o);
    if (!strcmp(cmd, "inspect"))
        return cmd_inspect(&o);
    if (!strcmp(cmd, "train-codebook"))
        return cmd_train(&o);
    if (!strcmp(cmd, "eval"))
        return cmd_eval(&o);
    fprintf(stderr, "ragkv codec: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
