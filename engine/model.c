/* model.c — model objects: open (format detection), close, derived fields, llama2.c loader. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/hash.h"

const char *eng_dtype_name(eng_dtype t)
{
    switch (t) {
    case ENG_DTYPE_F32: return "f32";
    case ENG_DTYPE_F16: return "f16";
    case ENG_DTYPE_BF16: return "bf16";
    }
    return "?";
}

bool eng_model_own(eng_model *m, void *p)
{
    void **o = rk_realloc(m->owned, (m->n_owned + 1) * sizeof(void *));
    if (!o)
        return false;
    m->owned = o;
    m->owned[m->n_owned++] = p;
    return true;
}

bool eng_model_own_map(eng_model *m, void *addr, size_t len)
{
    eng_mapping *o = rk_realloc(m->maps, (m->n_maps + 1) * sizeof(eng_mapping));
    if (!o)
        return false;
    m->maps = o;
    m->maps[m->n_maps].addr = addr;
    m->maps[m->n_maps].len = len;
    m->n_maps++;
    return true;
}

void eng_model_close(eng_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_maps; i++)
        munmap(m->maps[i].addr, m->maps[i].len);
    for (size_t i = 0; i < m->n_owned; i++)
        rk_aligned_free(m->owned[i]);
    rk_free(m->maps);
    rk_free(m->owned);
    rk_free(m->layers);
    rk_free(m->inv_freq);
    rk_free(m);
}

const eng_model_info *eng_model_get_info(const eng_model *m) { return &m->info; }
const char *eng_model_path(const eng_model *m) { return m->path; }

rk_status eng_model_finish(eng_model *m)
{
    eng_model_info *mi = &m->info;
    if (mi->dim <= 0 || mi->hidden <= 0 || mi->n_layers <= 0 || mi->n_heads <= 0 || mi->n_kv_heads <= 0 ||
        mi->vocab <= 0 || mi->max_seq <= 0 || mi->head_dim <= 0)
        return rk_error_set(RK_ERR_FORMAT, "model: non-positive size (dim %d hidden %d layers %d heads %d "
                            "kv_heads %d head_dim %d vocab %d seq %d)", mi->dim, mi->hidden, mi->n_layers,
                            mi->n_heads, mi->n_kv_heads, mi->head_dim, mi->vocab, mi->max_seq);
    if (mi->dim > (1 << 16) || mi->hidden > (1 << 18) || mi->n_layers > 1024 || mi->n_heads > 1024 ||
        mi->vocab > (1 << 22) || mi->head_dim > 1024)
        return rk_error_set(RK_ERR_UNSUPPORTED, "model: sizes beyond what ragkv supports");
    if (mi->n_heads % mi->n_kv_heads)
        return rk_error_set(RK_ERR_FORMAT, "model: %d heads not a multiple of %d kv heads", mi->n_heads,
                            mi->n_kv_heads);
    if (mi->head_dim % 2)
        return rk_error_set(RK_ERR_FORMAT, "model: head_dim %d is odd (RoPE needs pairs)", mi->head_dim);
    if (!(mi->norm_eps > 0.0f) || !(mi->rope_theta > 0.0f) || !isfinite(mi->rope_theta))
        return rk_error_set(RK_ERR_FORMAT, "model: bad rms_norm_eps or rope_theta");
    if (mi->bos < 0 || mi->bos >= mi->vocab)
        mi->bos = mi->vocab > 1 ? 1 : 0;
    if (mi->n_stop == 0) {
        mi->stop[0] = mi->eos;
        mi->n_stop = 1;
    }
    int half = mi->head_dim / 2;
    m->inv_freq = rk_malloc((size_t)half * sizeof(float));
    if (!m->inv_freq)
        return rk_error_set(RK_ERR_NOMEM, "model: out of memory");
    for (int i = 0; i < half; i++) {
        /* the same float expression as llama2.c's run.c, so its checkpoints match it exactly */
        float freq = 1.0f / powf(mi->rope_theta, (float)(2 * i) / (float)mi->head_dim);
        if (mi->rope_llama3) {
            /* Llama 3.1 frequency scaling: long wavelengths slowed by `factor`, short ones
             * kept, a smooth blend between the two wavelength thresholds */
            double lo_wl = (double)mi->rope_orig_max / mi->rope_low_freq;
            double hi_wl = (double)mi->rope_orig_max / mi->rope_high_freq;
            double wl = 2.0 * M_PI / freq;
            if (wl > lo_wl) {
                freq = (float)(freq / mi->rope_factor);
            } else if (wl >= hi_wl) {
                double smooth = ((double)mi->rope_orig_max / wl - mi->rope_low_freq) /
                                (mi->rope_high_freq - mi->rope_low_freq);
                freq = (float)((1.0 - smooth) * freq / mi->rope_factor + smooth * freq);
            }
        }
        m->inv_freq[i] = freq;
    }
    uint64_t d = (uint64_t)mi->dim, q = (uint64_t)mi->n_heads * mi->head_dim,
             kv = (uint64_t)mi->n_kv_heads * mi->head_dim, f = (uint64_t)mi->hidden;
    uint64_t per_layer = 2 * d + q * d + 2 * kv * d + d * q + 3 * f * d + (mi->qkv_bias ? q + 2 * kv : 0);
    mi->n_params = (uint64_t)mi->vocab * d * (mi->tied_embeddings ? 1 : 2) + d + per_layer * (uint64_t)mi->n_layers;
    return RK_OK;
}

static rk_status check_one(const char *what, int layer, const eng_tensor *t, size_t rows, size_t cols)
{
    if (!t->data)
        return rk_error_set(RK_ERR_FORMAT, "model: tensor %s (layer %d) is missing", what, layer);
    if (t->rows != rows || t->cols != cols)
        return rk_error_set(RK_ERR_FORMAT, "model: tensor %s (layer %d) has shape (%zu, %zu), expected (%zu, %zu)",
                            what, layer, t->rows, t->cols, rows, cols);
    return RK_OK;
}

rk_status eng_model_check_tensors(const eng_model *m)
{
    const eng_model_info *mi = &m->info;
    size_t d = (size_t)mi->dim, q = (size_t)mi->n_heads * (size_t)mi->head_dim,
           kv = (size_t)mi->n_kv_heads * (size_t)mi->head_dim, f = (size_t)mi->hidden, v = (size_t)mi->vocab;
    rk_status st;
    if ((st = check_one("token embedding", -1, &m->tok_emb, v, d)) || (st = check_one("final norm", -1, &m->final_norm, 1, d)) ||
        (st = check_one("classifier", -1, &m->wcls, v, d)))
        return st;
    for (int l = 0; l < mi->n_layers; l++) {
        const eng_layer_weights *w = &m->layers[l];
        if ((st = check_one("attn_norm", l, &w->attn_norm, 1, d)) || (st = check_one("wq", l, &w->wq, q, d)) ||
            (st = check_one("wk", l, &w->wk, kv, d)) || (st = check_one("wv", l, &w->wv, kv, d)) ||
            (st = check_one("wo", l, &w->wo, d, q)) || (st = check_one("ffn_norm", l, &w->ffn_norm, 1, d)) ||
            (st = check_one("w1", l, &w->w1, f, d)) || (st = check_one("w2", l, &w->w2, d, f)) ||
            (st = check_one("w3", l, &w->w3, f, d)))
            return st;
        if (mi->qkv_bias && ((st = check_one("bq", l, &w->bq, 1, q)) || (st = check_one("bk", l, &w->bk, 1, kv)) ||
                             (st = check_one("bv", l, &w->bv, 1, kv))))
            return st;
    }
    return RK_OK;
}

/* "<basename without extension>-<16 hex of BLAKE2b(data)>" */
static void make_id(char *out, size_t outlen, const char *path, const void *data, size_t n)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char name[48];
    snprintf(name, sizeof(name), "%s", base);
    char *dot = strrchr(name, '.');
    if (dot && dot != name)
        *dot = 0;
    uint8_t h[16];
    rk_blake2b(h, 16, data, n);
    char hex[33];
    rk_hex(hex, h, 8);
    /* name is at most 47 bytes and hex 16: fits the 80-byte id */
    size_t nl = strlen(name);
    if (nl + 18 > outlen)
        nl = outlen > 18 ? outlen - 18 : 0;
    memcpy(out, name, nl);
    out[nl] = '-';
    memcpy(out + nl + 1, hex, 17);
}

void eng_model_make_id(eng_model *m, const char *path, const void *data, size_t n)
{
    make_id(m->info.id, sizeof(m->info.id), path, data, n);
}

/* ---- llama2.c checkpoints ------------------------------------------------------------ */

static eng_tensor f32_tensor(const float **p, size_t rows, size_t cols)
{
    eng_tensor t = {ENG_DTYPE_F32, *p, rows, cols};
    *p += rows * cols;
    return t;
}

rk_status eng_load_llama2c(eng_model *m, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rk_error_set(RK_ERR_IO, "cannot open %s", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return rk_error_set(RK_ERR_IO, "cannot stat %s", path);
    }
    size_t file_len = (size_t)sb.st_size;
    if (file_len < 28) {
        close(fd);
        return rk_error_set(RK_ERR_TRUNCATED, "%s: %zu bytes, shorter than the 28-byte llama2.c header",
                            path, file_len);
    }
    void *map = mmap(NULL, file_len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return rk_error_set(RK_ERR_IO, "cannot map %s", path);
    if (!eng_model_own_map(m, map, file_len)) {
        munmap(map, file_len);
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    }
    const uint8_t *b = map;
    int32_t hdr[7];
    for (int i = 0; i < 7; i++)
        hdr[i] = (int32_t)rk_get_le32(b + 4 * i);
    eng_model_info *mi = &m->info;
    mi->format = ENG_FORMAT_LLAMA2C;
    snprintf(mi->arch, sizeof(mi->arch), "llama");
    mi->dim = hdr[0];
    mi->hidden = hdr[1];
    mi->n_layers = hdr[2];
    mi->n_heads = hdr[3];
    mi->n_kv_heads = hdr[4];
    mi->tied_embeddings = hdr[5] > 0;
    mi->vocab = hdr[5] == INT32_MIN ? 0 : (hdr[5] < 0 ? -hdr[5] : hdr[5]);
    mi->max_seq = hdr[6];
    mi->head_dim = mi->n_heads > 0 ? mi->dim / mi->n_heads : 0;
    mi->rope_theta = 10000.0f;
    mi->rope = ENG_ROPE_INTERLEAVED;
    mi->norm_eps = 1e-5f;
    mi->dtype = ENG_DTYPE_F32;
    mi->bos = 1;
    mi->eos = 2;
    mi->stop[0] = 1; /* llama2.c: a story ends where the model starts the next with BOS */
    mi->n_stop = 1;
    rk_status st;
    if (mi->n_heads > 0 && mi->dim % mi->n_heads)
        return rk_error_set(RK_ERR_FORMAT, "%s: dim %d not a multiple of %d heads", path, mi->dim, mi->n_heads);
    if ((st = eng_model_finish(m)) != RK_OK)
        return eng_error_wrap(st, path);
    /* expected size, overflow-checked (sizes were bounded by eng_model_finish) */
    uint64_t d = (uint64_t)mi->dim, kv = (uint64_t)mi->n_kv_heads * mi->head_dim, f = (uint64_t)mi->hidden,
             L = (uint64_t)mi->n_layers, V = (uint64_t)mi->vocab, hs = (uint64_t)mi->head_dim;
    uint64_t floats = V * d + L * d + L * d * d + 2 * L * d * kv + L * d * d + L * d + 3 * L * f * d + d +
                      (uint64_t)mi->max_seq * hs + (mi->tied_embeddings ? 0 : V * d);
    uint64_t need = 28 + floats * 4;
    if (file_len < need)
        return rk_error_set(RK_ERR_TRUNCATED, "%s: %zu bytes, but its header (dim %d, %d layers, vocab %d, "
                            "seq %d) needs %llu", path, file_len, mi->dim, mi->n_layers, mi->vocab, mi->max_seq,
                            (unsigned long long)need);
    if (file_len > need)
        return rk_error_set(RK_ERR_FORMAT, "%s: %zu bytes, %llu more than its header implies (not a version-0 "
                            "llama2.c checkpoint?)", path, file_len, (unsigned long long)(file_len - need));
    m->layers = rk_calloc((size_t)mi->n_layers, sizeof(eng_layer_weights));
    if (!m->layers)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    const float *p = (const float *)(b + 28); /* 4-aligned: mmap is page aligned */
    size_t D = (size_t)d, KV = (size_t)kv, F = (size_t)f, Q = (size_t)d;
    m->tok_emb = f32_tensor(&p, (size_t)V, D);
    for (int l = 0; l < mi->n_layers; l++)
        m->layers[l].attn_norm = f32_tensor(&p, 1, D);
    for (int l = 0; l < mi->n_layers; l++)
        m->layers[l].wq = f32_tensor(&p, Q, D);
    for (int l = 0; l < mi->n_layers; l++)
        m->layers[l].wk = f32_tensor(&p, KV, D);
    for (int l = 0; l < mi->n_layers; l++)
        m->layers[l].wv = f32_tensor(&p, KV, D);
    for (int l = 0; l < mi->n_layers; l++)
        m->layers[l].wo = f32_tensor(&p, D, Q);
    for (int l = 0; l < mi->n_layers; l++)
        m->layers[l].ffn_norm = f32_tensor(&p, 1, D);
    for (int l = 0; l < mi->n_layers; l++)
        m->layers[l].w1 = f32_tensor(&p, F, D);
    for (int l = 0; l < mi->n_layers; l++)
        m->layers[l].w2 = f32_tensor(&p, D, F);
    for (int l = 0; l < mi->n_layers; l++)
        m->layers[l].w3 = f32_tensor(&p, F, D);
    m->final_norm = f32_tensor(&p, 1, D);
    p += (size_t)mi->max_seq * (size_t)hs; /* legacy freq_cis_real and _imag: seq_len*hs/2 each */
    m->wcls = mi->tied_embeddings ? m->tok_emb : f32_tensor(&p, (size_t)V, D);
    /* identity: file name + header + size (the weights themselves are too big to hash at open) */
    uint8_t idsrc[36];
    memcpy(idsrc, b, 28);
    rk_put_le64(idsrc + 28, file_len);
    eng_model_make_id(m, path, idsrc, sizeof(idsrc));
    return eng_model_check_tensors(m);
}

rk_status eng_model_open(const char *path, eng_model **out)
{
    *out = NULL;
    if (!path)
        return rk_error_set(RK_ERR_INVALID, "model path is NULL");
    if (!strncmp(path, "synth:", 6)) { /* synth:SHAPE[:SEED]: seeded synthetic weights */
        char shape[64];
        const char *colon = strchr(path + 6, ':');
        size_t sl = colon ? (size_t)(colon - (path + 6)) : strlen(path + 6);
        if (sl == 0 || sl >= sizeof(shape))
            return rk_error_set(RK_ERR_INVALID, "model %s: expected synth:SHAPE[:SEED]", path);
        memcpy(shape, path + 6, sl);
        shape[sl] = 0;
        uint64_t seed = 1;
        if (colon) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(colon + 1, &end, 10);
            if (errno || end == colon + 1 || *end)
                return rk_error_set(RK_ERR_INVALID, "model %s: the seed must be a decimal number", path);
            seed = v;
        }
        return eng_model_synth(shape, seed, out);
    }
    struct stat sb;
    if (stat(path, &sb) != 0)
        return rk_error_set(RK_ERR_NOT_FOUND, "no such model file or folder: %s", path);
    eng_model *m = rk_calloc(1, sizeof(*m));
    if (!m)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    snprintf(m->path, sizeof(m->path), "%s", path);
    /* a file of a Hugging Face folder (config.json, *.safetensors, the index) names its folder */
    bool hf = S_ISDIR(sb.st_mode);
    size_t pl = strlen(m->path);
    const char *sfx[] = {"/config.json", ".safetensors", ".safetensors.index.json"};
    for (size_t i = 0; !hf && i < sizeof(sfx) / sizeof(sfx[0]); i++) {
        size_t sl = strlen(sfx[i]);
        if (pl > sl && !strcmp(m->path + pl - sl, sfx[i])) {
            char *slash = strrchr(m->path, '/');
            if (slash && slash != m->path)
                *slash = 0;
            else
                snprintf(m->path, sizeof(m->path), ".");
            hf = true;
        }
    }
    rk_status st = hf ? eng_load_hf(m, m->path) : eng_load_llama2c(m, path);
    if (st != RK_OK) {
        eng_model_close(m);
        return st;
    }
    *out = m;
    return RK_OK;
}
