/*
 * model_write.c — writing models as Hugging Face folders (`ragkv model convert`) and seeded
 * synthetic models of real shapes (`ragkv model synth`, eng_model_synth).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/fp16.h"
#include "ragkv/safetensors.h"
#include "ragkv/thread.h"
#include "ragkv/tokenizer.h"

/* ---- synthetic shapes ------------------------------------------------------------------ */

typedef struct synth_shape {
    const char *name;  /* --shape name */
    const char *arch;  /* llama, mistral, qwen2 */
    int dim, hidden, n_layers, n_heads, n_kv_heads, head_dim, vocab, max_seq; /* as eng_model_info */
    float theta, eps;  /* rope_theta, rms_norm_eps */
    bool bias;         /* q/k/v biases (Qwen2) */
    bool tied;         /* classifier shares the embedding */
    bool llama3;       /* llama3 RoPE scaling (factor 8, low 1, high 4) */
    eng_dtype dtype;   /* storage type of every tensor */
} synth_shape;

static const synth_shape shapes[] = {
    /* tiny shapes for tests and the demo */
    {"demo", "llama", 64, 172, 2, 8, 4, 8, 512, 512, 10000.0f, 1e-5f, false, true, false, ENG_DTYPE_F32},
    {"test-llama", "llama", 48, 96, 2, 4, 2, 12, 96, 128, 10000.0f, 1e-5f, false, false, false, ENG_DTYPE_F32},
    {"test-llama3", "llama", 64, 128, 2, 4, 1, 16, 96, 256, 500000.0f, 1e-5f, false, true, true, ENG_DTYPE_BF16},
    {"test-qwen2", "qwen2", 56, 112, 2, 7, 1, 8, 96, 128, 1000000.0f, 1e-6f, true, false, false, ENG_DTYPE_F16},
    {"test-mistral", "mistral", 64, 160, 3, 8, 2, 8, 96, 128, 1000000.0f, 1e-5f, false, false, false, ENG_DTYPE_BF16},
    /* head dims the CUDA backend's fused attention tiles (64, 128), long enough for many tiles */
    {"test-hd64", "llama", 256, 384, 2, 4, 2, 64, 96, 1024, 500000.0f, 1e-5f, false, false, false, ENG_DTYPE_BF16},
    {"test-hd128", "llama", 256, 384, 2, 2, 1, 128, 96, 1024, 10000.0f, 1e-5f, false, true, false, ENG_DTYPE_BF16},
    /* grouped-query shapes for the flash kernel that packs a KV head's query heads in a block */
    {"test-hd128-g4", "llama", 512, 384, 2, 4, 1, 128, 96, 1024, 10000.0f, 1e-5f, false, false, false, ENG_DTYPE_BF16},
    {"test-hd64-g8", "llama", 512, 384, 2, 8, 1, 64, 96, 1024, 500000.0f, 1e-5f, false, false, false, ENG_DTYPE_BF16},
    /* real shapes (random weights) for benchmarks */
    {"llama2-7b", "llama", 4096, 11008, 32, 32, 32, 128, 32000, 4096, 10000.0f, 1e-5f, false, false, false, ENG_DTYPE_BF16},
    {"llama3-8b", "llama", 4096, 14336, 32, 32, 8, 128, 128256, 8192, 500000.0f, 1e-5f, false, false, false, ENG_DTYPE_BF16},
    {"llama3.1-8b", "llama", 4096, 14336, 32, 32, 8, 128, 128256, 131072, 500000.0f, 1e-5f, false, false, true, ENG_DTYPE_BF16},
    {"mistral-7b", "mistral", 4096, 14336, 32, 32, 8, 128, 32000, 32768, 1000000.0f, 1e-5f, false, false, false, ENG_DTYPE_BF16},
    {"qwen2-7b", "qwen2", 3584, 18944, 28, 28, 4, 128, 152064, 32768, 1000000.0f, 1e-6f, true, false, false, ENG_DTYPE_BF16},
    {"qwen2-0.5b", "qwen2", 896, 4864, 24, 14, 2, 64, 151936, 32768, 1000000.0f, 1e-6f, true, true, false, ENG_DTYPE_BF16},
};
#define N_SHAPES (sizeof(shapes) / sizeof(shapes[0]))

const char *const *eng_synth_shape_names(void)
{
    static const char *names[N_SHAPES + 1];
    for (size_t i = 0; i < N_SHAPES; i++)
        names[i] = shapes[i].name;
    names[N_SHAPES] = NULL;
    return names;
}

static const synth_shape *find_shape(const char *name)
{
    for (size_t i = 0; i < N_SHAPES; i++)
        if (name && !strcmp(shapes[i].name, name))
            return &shapes[i];
    return NULL;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

typedef struct fill_job {
    void *dst;     /* the tensor's elements */
    eng_dtype dt;  /* their type */
    uint64_t key;  /* seed mixed with the tensor's index */
    float center;  /* values are center + scale * u, u uniform in [-1, 1) */
    float scale;
} fill_job;

/* Element i depends only on (seed, tensor, i): any thread count gives the same weights. */
static void fill_range(void *arg, size_t b, size_t e)
{
    const fill_job *j = arg;
    for (size_t i = b; i < e; i++) {
        uint64_t r = splitmix64(j->key ^ (i * 0xd1342543de82ef95ull));
        float u = (float)(r >> 40) / 8388608.0f - 1.0f;
        float v = j->center + j->scale * u;
        if (j->dt == ENG_DTYPE_F32)
            ((float *)j->dst)[i] = v;
        else if (j->dt == ENG_DTYPE_F16)
            ((uint16_t *)j->dst)[i] = rk_f32_to_f16(v);
        else
            ((uint16_t *)j->dst)[i] = rk_f32_to_bf16(v);
    }
}

static rk_status synth_tensor(eng_model *m, rk_pool *pool, eng_tensor *t, size_t rows, size_t cols, uint64_t seed,
                              uint64_t index, float center, float scale)
{
    size_t es = m->info.dtype == ENG_DTYPE_F32 ? 4 : 2, n;
    if (!rk_mul_size(rows, cols, &n) || !rk_mul_size(n, es, &n))
        return rk_error_set(RK_ERR_LIMIT, "synth: tensor too large");
    void *p = rk_aligned_alloc(RK_ALIGN, n);
    if (!p || !eng_model_own(m, p)) {
        rk_aligned_free(p);
        return rk_error_set(RK_ERR_NOMEM, "synth: out of memory (%zu bytes)", n);
    }
    fill_job j = {p, m->info.dtype, splitmix64(seed) ^ splitmix64(index + 1), center, scale};
    rk_pool_for(pool, rows * cols, 1u << 16, fill_range, &j);
    *t = (eng_tensor){m->info.dtype, p, rows, cols};
    return RK_OK;
}

rk_status eng_model_synth(const char *shape, uint64_t seed, eng_model **out)
{
    *out = NULL;
    const synth_shape *sh = find_shape(shape);
    if (!sh)
        return rk_error_set(RK_ERR_NOT_FOUND, "synth: unknown shape '%s'", shape ? shape : "(null)");
    rk_pool *pool = NULL;
    rk_status st;
    eng_model *m = rk_calloc(1, sizeof(*m));
    if (!m)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    eng_model_info *mi = &m->info;
    mi->format = ENG_FORMAT_SYNTH;
    snprintf(mi->arch, sizeof(mi->arch), "%s", sh->arch);
    mi->dim = sh->dim;
    mi->hidden = sh->hidden;
    mi->n_layers = sh->n_layers;
    mi->n_heads = sh->n_heads;
    mi->n_kv_heads = sh->n_kv_heads;
    mi->head_dim = sh->head_dim;
    mi->vocab = sh->vocab;
    mi->max_seq = sh->max_seq;
    mi->rope_theta = sh->theta;
    mi->rope = ENG_ROPE_HALF;
    mi->norm_eps = sh->eps;
    mi->qkv_bias = sh->bias;
    mi->tied_embeddings = sh->tied;
    mi->dtype = sh->dtype;
    mi->bos = 1;
    mi->eos = 2;
    if (sh->llama3) {
        mi->rope_llama3 = true;
        mi->rope_factor = 8.0f;
        mi->rope_low_freq = 1.0f;
        mi->rope_high_freq = 4.0f;
        mi->rope_orig_max = sh->max_seq > 8192 ? 8192 : sh->max_seq / 4;
    }
    snprintf(mi->id, sizeof(mi->id), "synth-%s-s%llu", sh->name, (unsigned long long)seed);
    if ((st = eng_model_finish(m)) != RK_OK || (st = rk_pool_create(0, &pool)) != RK_OK)
        goto fail;
    m->layers = rk_calloc((size_t)mi->n_layers, sizeof(eng_layer_weights));
    if (!m->layers) {
        st = rk_error_set(RK_ERR_NOMEM, "out of memory");
        goto fail;
    }
    size_t d = (size_t)mi->dim, q = (size_t)mi->n_heads * (size_t)mi->head_dim,
           kv = (size_t)mi->n_kv_heads * (size_t)mi->head_dim, f = (size_t)mi->hidden, v = (size_t)mi->vocab;
    float sd = 1.0f / sqrtf((float)d), sq = 1.0f / sqrtf((float)q), sf = 1.0f / sqrtf((float)f);
    float res = 1.0f / sqrtf(2.0f * (float)mi->n_layers); /* keeps the residual stream bounded */
    uint64_t idx = 0;
    if ((st = synth_tensor(m, pool, &m->tok_emb, v, d, seed, idx++, 0.0f, 1.0f)) ||
        (st = synth_tensor(m, pool, &m->final_norm, 1, d, seed, idx++, 1.0f, 0.1f)))
        goto fail;
    if (mi->tied_embeddings)
        m->wcls = m->tok_emb;
    else if ((st = synth_tensor(m, pool, &m->wcls, v, d, seed, idx++, 0.0f, sd)))
        goto fail;
    for (int l = 0; l < mi->n_layers; l++) {
        eng_layer_weights *w = &m->layers[l];
        if ((st = synth_tensor(m, pool, &w->attn_norm, 1, d, seed, idx++, 1.0f, 0.1f)) ||
            (st = synth_tensor(m, pool, &w->wq, q, d, seed, idx++, 0.0f, 2.0f * sd)) ||
            (st = synth_tensor(m, pool, &w->wk, kv, d, seed, idx++, 0.0f, 2.0f * sd)) ||
            (st = synth_tensor(m, pool, &w->wv, kv, d, seed, idx++, 0.0f, sd)) ||
            (st = synth_tensor(m, pool, &w->wo, d, q, seed, idx++, 0.0f, sq * res)) ||
            (st = synth_tensor(m, pool, &w->ffn_norm, 1, d, seed, idx++, 1.0f, 0.1f)) ||
            (st = synth_tensor(m, pool, &w->w1, f, d, seed, idx++, 0.0f, sd)) ||
            (st = synth_tensor(m, pool, &w->w2, d, f, seed, idx++, 0.0f, sf * res)) ||
            (st = synth_tensor(m, pool, &w->w3, f, d, seed, idx++, 0.0f, sd)))
            goto fail;
        if (mi->qkv_bias && ((st = synth_tensor(m, pool, &w->bq, 1, q, seed, idx++, 0.0f, 0.1f)) ||
                             (st = synth_tensor(m, pool, &w->bk, 1, kv, seed, idx++, 0.0f, 0.1f)) ||
                             (st = synth_tensor(m, pool, &w->bv, 1, kv, seed, idx++, 0.0f, 0.1f))))
            goto fail;
    }
    rk_pool_free(pool);
    *out = m;
    return RK_OK;
fail:
    rk_pool_free(pool);
    eng_model_close(m);
    return st;
}

/* ---- Hugging Face folder writer ---------------------------------------------------------- */

static rk_status make_dir(const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return rk_error_set(RK_ERR_IO, "cannot create folder %s", dir);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return rk_error_set(RK_ERR_IO, "%s is not a folder", dir);
    return RK_OK;
}

/* Shortest decimal that reads back as the same float. */
static void fmt_float(char *buf, size_t n, float v)
{
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, n, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    /* keep it a JSON number that reads as a float, e.g. 10000 -> 10000.0 */
    if (!strpbrk(buf, ".eEn"))
        strncat(buf, ".0", n - strlen(buf) - 1);
}

static rk_status write_config(const eng_model *m, const char *dir)
{
    const eng_model_info *mi = &m->info;
    char path[1400], theta[32], eps[32];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    fmt_float(theta, sizeof(theta), mi->rope_theta);
    fmt_float(eps, sizeof(eps), mi->norm_eps);
    const char *archname = !strcmp(mi->arch, "qwen2")     ? "Qwen2ForCausalLM"
                           : !strcmp(mi->arch, "mistral") ? "MistralForCausalLM"
                                                          : "LlamaForCausalLM";
    FILE *f = fopen(path, "w");
    if (!f)
        return rk_error_set(RK_ERR_IO, "cannot create %s", path);
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n", archname, mi->arch);
    fprintf(f, "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n", mi->dim,
            mi->hidden, mi->n_layers);
    fprintf(f, "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n", mi->n_heads,
            mi->n_kv_heads, mi->head_dim);
    fprintf(f, "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n", mi->vocab, mi->max_seq);
    fprintf(f, "  \"rope_theta\": %s,\n  \"rms_norm_eps\": %s,\n  \"hidden_act\": \"silu\",\n", theta, eps);
    fprintf(f, "  \"tie_word_embeddings\": %s,\n", mi->tied_embeddings ? "true" : "false");
    if (!strcmp(mi->arch, "mistral"))
        fprintf(f, "  \"sliding_window\": null,\n");
    if (mi->rope_llama3) {
        char fa[32], lo[32], hi[32];
        fmt_float(fa, sizeof(fa), mi->rope_factor);
        fmt_float(lo, sizeof(lo), mi->rope_low_freq);
        fmt_float(hi, sizeof(hi), mi->rope_high_freq);
        fprintf(f, "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %s, \"low_freq_factor\": %s, "
                   "\"high_freq_factor\": %s, \"original_max_position_embeddings\": %d},\n", fa, lo, hi,
                mi->rope_orig_max);
    }
    /* eos list: the primary EOS, then every other id that ends generation (llama2.c models
     * end a story with BOS, so a converted one lists [2, 1] to stop where llama2.c stops) */
    fprintf(f, "  \"bos_token_id\": %d,\n  \"eos_token_id\": [%d", mi->bos, mi->eos);
    for (int i = 0; i < mi->n_stop; i++)
        if (mi->stop[i] != mi->eos)
            fprintf(f, ", %d", mi->stop[i]);
    fprintf(f, "],\n  \"torch_dtype\": \"%s\"\n}\n",
            mi->dtype == ENG_DTYPE_F32 ? "float32" : mi->dtype == ENG_DTYPE_F16 ? "float16" : "bfloat16");
    bool ok = !ferror(f);
    ok = fclose(f) == 0 && ok;
    return ok ? RK_OK : rk_error_set(RK_ERR_IO, "cannot write %s", path);
}

/* One tensor to write. */
typedef struct out_tensor {
    char name[96];
    const eng_tensor *t;
    int ndim;     /* 1 or 2 */
    int permute;  /* rows are heads of head_dim in interleaved pair order: reorder to halves */
} out_tensor;

static const char *st_dtype(eng_dtype d)
{
    return d == ENG_DTYPE_F32 ? "F32" : d == ENG_DTYPE_F16 ? "F16" : "BF16";
}

/* Row r of the rotate-half layout holds interleaved row: r < hd/2 -> 2r, else 2(r-hd/2)+1
 * (within each head), so each rotated pair (i, i+hd/2) is the old pair (2i, 2i+1). */
static size_t src_row(size_t r, size_t hd)
{
    size_t h = r / hd, i = r % hd, half = hd / 2;
    return h * hd + (i < half ? 2 * i : 2 * (i - half) + 1);
}

rk_status eng_model_write_hf(const eng_model *m, const char *dir)
{
    const eng_model_info *mi = &m->info;
    rk_status st;
    eng_st_writer w;
    out_tensor *list = NULL;
    uint8_t *rowbuf = NULL;
    if ((st = make_dir(dir)) != RK_OK || (st = write_config(m, dir)) != RK_OK)
        return st;
    size_t per_layer = mi->qkv_bias ? 12 : 9, n = 0;
    list = rk_calloc(3 + (size_t)mi->n_layers * per_layer, sizeof(out_tensor));
    if (!list)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    int perm = mi->rope == ENG_ROPE_INTERLEAVED;
#define ADD(tensor, nd, pm, ...)                                                 \
    do {                                                                         \
        snprintf(list[n].name, sizeof(list[n].name), __VA_ARGS__);               \
        list[n].t = (tensor);                                                    \
        list[n].ndim = (nd);                                                     \
        list[n].permute = (pm);                                                  \
        n++;                                                                     \
    } while (0)
    ADD(&m->tok_emb, 2, 0, "model.embed_tokens.weight");
    for (int l = 0; l < mi->n_layers; l++) {
        const eng_layer_weights *lw = &m->layers[l];
        ADD(&lw->attn_norm, 1, 0, "model.layers.%d.input_layernorm.weight", l);
        ADD(&lw->wq, 2, perm, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(&lw->wk, 2, perm, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(&lw->wv, 2, 0, "model.layers.%d.self_attn.v_proj.weight", l);
        if (mi->qkv_bias) {
            ADD(&lw->bq, 1, perm, "model.layers.%d.self_attn.q_proj.bias", l);
            ADD(&lw->bk, 1, perm, "model.layers.%d.self_attn.k_proj.bias", l);
            ADD(&lw->bv, 1, 0, "model.layers.%d.self_attn.v_proj.bias", l);
        }
        ADD(&lw->wo, 2, 0, "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(&lw->ffn_norm, 1, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(&lw->w1, 2, 0, "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(&lw->w2, 2, 0, "model.layers.%d.mlp.down_proj.weight", l);
        ADD(&lw->w3, 2, 0, "model.layers.%d.mlp.up_proj.weight", l);
    }
    ADD(&m->final_norm, 1, 0, "model.norm.weight");
    if (!mi->tied_embeddings)
        ADD(&m->wcls, 2, 0, "lm_head.weight");
#undef ADD
    char path[1400];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if ((st = eng_st_writer_open(&w, path)) != RK_OK)
        goto out_list;
    for (size_t i = 0; i < n && st == RK_OK; i++) {
        uint64_t shape[2] = {list[i].t->rows, list[i].t->cols};
        if (list[i].ndim == 1)
            shape[0] = list[i].t->cols;
        st = eng_st_writer_add(&w, list[i].name, st_dtype(list[i].t->dtype), list[i].ndim, shape);
    }
    if (st == RK_OK)
        st = eng_st_writer_begin_data(&w, "format", "pt");
    size_t hd = (size_t)mi->head_dim;
    for (size_t i = 0; i < n && st == RK_OK; i++) {
        const eng_tensor *t = list[i].t;
        size_t es = t->dtype == ENG_DTYPE_F32 ? 4 : 2;
        if (!list[i].permute) {
            st = eng_st_writer_data(&w, t->data, t->rows * t->cols * es);
            continue;
        }
        /* a bias is one row of heads: permute its elements; a matrix: permute its rows */
        size_t nrows = list[i].ndim == 1 ? t->cols : t->rows, rowlen = (list[i].ndim == 1 ? 1 : t->cols) * es;
        rk_free(rowbuf);
        rowbuf = rk_malloc(nrows * rowlen);
        if (!rowbuf) {
            st = rk_error_set(RK_ERR_NOMEM, "out of memory");
            break;
        }
        for (size_t r = 0; r < nrows; r++)
            memcpy(rowbuf + r * rowlen, (const uint8_t *)t->data + src_row(r, hd) * rowlen, rowlen);
        st = eng_st_writer_data(&w, rowbuf, nrows * rowlen);
    }
    if (st == RK_OK)
        st = eng_st_writer_close(&w);
    else
        eng_st_writer_abort(&w);
out_list:
    rk_free(rowbuf);
    rk_free(list);
    return st;
}

/* ---- synthetic folders ------------------------------------------------------------------- */

/* A byte-level vocabulary: <unk>, BOS, EOS, 256 byte pieces, " ", then lower-case strings in
 * bijective base 26 ("a".."z", "aa"...) so every merge has its parts in the vocabulary. */
static rk_status write_synth_tokenizer(const char *dir, int vocab)
{
    char path[1400];
    snprintf(path, sizeof(path), "%s/tokenizer.bin", dir);
    char **pieces = rk_calloc((size_t)vocab, sizeof(char *));
    size_t *lens = rk_calloc((size_t)vocab, sizeof(size_t));
    float *scores = rk_calloc((size_t)vocab, sizeof(float));
    rk_status st = RK_OK;
    if (!pieces || !lens || !scores) {
        st = rk_error_set(RK_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < vocab && st == RK_OK; i++) {
        char buf[24];
        if (i == 0)
            snprintf(buf, sizeof(buf), "<unk>");
        else if (i == 1)
            snprintf(buf, sizeof(buf), "\n<s>\n");
        else if (i == 2)
            snprintf(buf, sizeof(buf), "\n</s>\n");
        else if (i < 259)
            snprintf(buf, sizeof(buf), "<0x%02X>", i - 3);
        else if (i == 259)
            snprintf(buf, sizeof(buf), " ");
        else {
            uint64_t k = (uint64_t)(i - 260) + 1;
            char rev[16];
            int n = 0;
            while (k > 0 && n < 15) {
                k--;
                rev[n++] = (char)('a' + k % 26);
                k /= 26;
            }
            for (int j = 0; j < n; j++)
                buf[j] = rev[n - 1 - j];
            buf[n] = 0;
        }
        pieces[i] = rk_strdup(buf);
        if (!pieces[i])
            st = rk_error_set(RK_ERR_NOMEM, "out of memory");
        lens[i] = strlen(buf);
        scores[i] = i < 260 ? 0.0f : -(float)(i - 260);
    }
    if (st == RK_OK)
        st = eng_tokenizer_write(path, (const char *const *)pieces, lens, scores, vocab);
out:
    if (pieces)
        for (int i = 0; i < vocab; i++)
            rk_free(pieces[i]);
    rk_free(pieces);
    rk_free(lens);
    rk_free(scores);
    return st;
}

rk_status eng_model_synth_write(const char *shape, uint64_t seed, const char *dir)
{
    eng_model *m;
    rk_status st = eng_model_synth(shape, seed, &m);
    if (st != RK_OK)
        return st;
    if ((st = eng_model_write_hf(m, dir)) == RK_OK)
        st = write_synth_tokenizer(dir, m->info.vocab);
    eng_model_close(m);
    return st;
}
