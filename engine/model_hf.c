/* model_hf.c — Hugging Face model folders: config.json + model.safetensors, or a sharded
 * model.safetensors.index.json. Llama, Mistral and Qwen2 causal LMs. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/hash.h"
#include "ragkv/json.h"
#include "ragkv/safetensors.h"

#define MAX_CONFIG (16u << 20)

/* Read a whole (small) file into a NUL-terminated buffer (caller frees). */
static rk_status read_small_file(const char *path, size_t limit, char **out, size_t *len)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return rk_error_set(RK_ERR_NOT_FOUND, "cannot open %s", path);
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || (size_t)sb.st_size > limit) {
        fclose(f);
        return rk_error_set(RK_ERR_LIMIT, "%s is larger than %zu bytes", path, limit);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = rk_malloc(n + 1);
    if (!buf) {
        fclose(f);
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    }
    if (n && fread(buf, 1, n, f) != n) {
        fclose(f);
        rk_free(buf);
        return rk_error_set(RK_ERR_IO, "cannot read %s", path);
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    *len = n;
    return RK_OK;
}

static rk_status get_pos_int(const rk_json *cfg, const char *key, int *out, bool required)
{
    const rk_json *v = rk_json_get(cfg, key);
    if (!v || v->type == RK_JSON_NULL) {
        if (required)
            return rk_error_set(RK_ERR_FORMAT, "config.json: missing \"%s\"", key);
        return RK_OK;
    }
    if (v->type != RK_JSON_NUMBER || !v->is_int || v->i <= 0 || v->i > INT32_MAX)
        return rk_error_set(RK_ERR_FORMAT, "config.json: \"%s\" must be a positive integer", key);
    *out = (int)v->i;
    return RK_OK;
}

static rk_status get_float(const rk_json *cfg, const char *key, float *out)
{
    const rk_json *v = rk_json_get(cfg, key);
    if (!v || v->type == RK_JSON_NULL)
        return RK_OK;
    if (v->type != RK_JSON_NUMBER)
        return rk_error_set(RK_ERR_FORMAT, "config.json: \"%s\" must be a number", key);
    *out = (float)v->num;
    return RK_OK;
}

rk_status eng_hf_config_parse(const char *text, size_t len, eng_model_info *mi)
{
    rk_json *cfg = NULL;
    rk_status st = rk_json_parse(text, len, &cfg);
    if (st != RK_OK)
        return eng_error_wrap(st, "config.json");
    if (cfg->type != RK_JSON_OBJECT) {
        st = rk_error_set(RK_ERR_FORMAT, "config.json: not a JSON object");
        goto out;
    }
    /* architecture: architectures[0], else model_type */
    const char *arch = NULL;
    const rk_json *archs = rk_json_get(cfg, "architectures");
    if (archs && archs->type == RK_JSON_ARRAY && archs->len > 0 && archs->items[0].type == RK_JSON_STRING) {
        const char *a = archs->items[0].str;
        if (!strcmp(a, "LlamaForCausalLM"))
            arch = "llama";
        else if (!strcmp(a, "MistralForCausalLM"))
            arch = "mistral";
        else if (!strcmp(a, "Qwen2ForCausalLM"))
            arch = "qwen2";
        else {
            st = rk_error_set(RK_ERR_UNSUPPORTED, "config.json: architecture %.64s is not supported "
                              "(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM are)", a);
            goto out;
        }
    } else {
        const char *mt = rk_json_get_str(cfg, "model_type");
        if (mt && (!strcmp(mt, "llama") || !strcmp(mt, "mistral") || !strcmp(mt, "qwen2")))
            arch = mt;
        else {
            st = rk_error_set(RK_ERR_UNSUPPORTED, "config.json: no supported \"architectures\" or \"model_type\"");
            goto out;
        }
    }
    snprintf(mi->arch, sizeof(mi->arch), "%s", arch);
    bool qwen = !strcmp(arch, "qwen2");
    const char *act = rk_json_get_str(cfg, "hidden_act");
    if (act && strcmp(act, "silu")) {
        st = rk_error_set(RK_ERR_UNSUPPORTED, "config.json: hidden_act %.32s (only silu)", act);
        goto out;
    }
    bool attn_bias = false, mlp_bias = false;
    if (rk_json_get_bool(cfg, "attention_bias", &attn_bias) && attn_bias) {
        st = rk_error_set(RK_ERR_UNSUPPORTED, "config.json: attention_bias (o_proj bias) is not supported");
        goto out;
    }
    if (rk_json_get_bool(cfg, "mlp_bias", &mlp_bias) && mlp_bias) {
        st = rk_error_set(RK_ERR_UNSUPPORTED, "config.json: mlp_bias is not supported");
        goto out;
    }
    mi->qkv_bias = qwen;
    if ((st = get_pos_int(cfg, "hidden_size", &mi->dim, true)) ||
        (st = get_pos_int(cfg, "intermediate_size", &mi->hidden, true)) ||
        (st = get_pos_int(cfg, "num_hidden_layers", &mi->n_layers, true)) ||
        (st = get_pos_int(cfg, "num_attention_heads", &mi->n_heads, true)) ||
        (st = get_pos_int(cfg, "vocab_size", &mi->vocab, true)) ||
        (st = get_pos_int(cfg, "max_position_embeddings", &mi->max_seq, true)))
        goto out;
    mi->n_kv_heads = mi->n_heads;
    mi->head_dim = mi->dim / mi->n_heads;
    if ((st = get_pos_int(cfg, "num_key_value_heads", &mi->n_kv_heads, false)) ||
        (st = get_pos_int(cfg, "head_dim", &mi->head_dim, false)))
        goto out;
    mi->rope_theta = 10000.0f;
    mi->norm_eps = 1e-6f;
    if ((st = get_float(cfg, "rope_theta", &mi->rope_theta)) || (st = get_float(cfg, "rms_norm_eps", &mi->norm_eps)))
        goto out;
    mi->rope = ENG_ROPE_HALF;
    mi->tied_embeddings = false;
    rk_json_get_bool(cfg, "tie_word_embeddings", &mi->tied_embeddings);
    /* Mistral's sliding window: ragkv attends over the whole cache, which equals the windowed
     * model only up to the window; cap the context there rather than compute something else */
    int64_t sw;
    bool use_sw = !qwen;
    rk_json_get_bool(cfg, "use_sliding_window", &use_sw);
    if (use_sw && rk_json_get_int(cfg, "sliding_window", &sw) && sw > 0 && sw < mi->max_seq)
        mi->max_seq = (int)sw;
    const rk_json *rs = rk_json_get(cfg, "rope_scaling");
    if (rs && rs->type != RK_JSON_NULL) {
        const char *type = rk_json_get_str(rs, "rope_type");
        if (!type)
            type = rk_json_get_str(rs, "type");
        if (rs->type != RK_JSON_OBJECT || !type || strcmp(type, "llama3")) {
            st = rk_error_set(RK_ERR_UNSUPPORTED, "config.json: rope_scaling of type %.32s is not supported (llama3 is)",
                              type ? type : "?");
            goto out;
        }
        double factor = 0, lo = 1, hi = 4;
        int64_t orig = 8192;
        if (!rk_json_get_num(rs, "factor", &factor) || !(factor > 0)) {
            st = rk_error_set(RK_ERR_FORMAT, "config.json: rope_scaling.factor missing or not positive");
            goto out;
        }
        rk_json_get_num(rs, "low_freq_factor", &lo);
        rk_json_get_num(rs, "high_freq_factor", &hi);
        rk_json_get_int(rs, "original_max_position_embeddings", &orig);
        if (!(lo > 0) || !(hi > lo) || orig <= 0 || orig > INT32_MAX) {
            st = rk_error_set(RK_ERR_FORMAT, "config.json: rope_scaling needs 0 < low_freq_factor < high_freq_factor "
                              "and a positive original_max_position_embeddings");
            goto out;
        }
        mi->rope_llama3 = true;
        mi->rope_factor = (float)factor;
        mi->rope_low_freq = (float)lo;
        mi->rope_high_freq = (float)hi;
        mi->rope_orig_max = (int)orig;
    }
    int64_t v;
    mi->bos = rk_json_get_int(cfg, "bos_token_id", &v) && v >= 0 && v < INT32_MAX ? (int)v : 1;
    mi->eos = 2;
    mi->n_stop = 0;
    const rk_json *eos = rk_json_get(cfg, "eos_token_id");
    if (eos && eos->type == RK_JSON_NUMBER && eos->is_int && eos->i >= 0 && eos->i < INT32_MAX) {
        mi->eos = (int)eos->i;
        mi->stop[mi->n_stop++] = mi->eos;
    } else if (eos && eos->type == RK_JSON_ARRAY) {
        for (size_t i = 0; i < eos->len; i++) {
            const rk_json *e = &eos->items[i];
            if (e->type != RK_JSON_NUMBER || !e->is_int || e->i < 0 || e->i >= INT32_MAX) {
                st = rk_error_set(RK_ERR_FORMAT, "config.json: eos_token_id entries must be token ids");
                goto out;
            }
            if (mi->n_stop < ENG_MAX_STOP)
                mi->stop[mi->n_stop++] = (int)e->i;
        }
        if (mi->n_stop)
            mi->eos = mi->stop[0];
    } else if (eos && eos->type != RK_JSON_NULL) {
        st = rk_error_set(RK_ERR_FORMAT, "config.json: eos_token_id must be an id or a list of ids");
        goto out;
    }
    for (int i = 0; i < mi->n_stop; i++)
        if (mi->stop[i] >= mi->vocab) {
            st = rk_error_set(RK_ERR_FORMAT, "config.json: eos_token_id %d outside the vocabulary", mi->stop[i]);
            goto out;
        }
    st = RK_OK;
out:
    rk_json_free(cfg);
    return st;
}

/* One mapped shard and its parsed header. */
typedef struct shard {
    char file[256];      /* file name inside the folder */
    const uint8_t *base; /* its read-only mapping (owned by the model) */
    size_t len;          /* bytes mapped */
    eng_st_header *hdr;  /* parsed header, owned here until the load ends */
} shard;

static rk_status map_shard(eng_model *m, const char *dir, shard *sh)
{
    char path[1400];
    snprintf(path, sizeof(path), "%s/%s", dir, sh->file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rk_error_set(RK_ERR_NOT_FOUND, "cannot open %s", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return rk_error_set(RK_ERR_IO, "cannot stat %s", path);
    }
    size_t len = (size_t)sb.st_size;
    if (len == 0) {
        close(fd);
        return rk_error_set(RK_ERR_TRUNCATED, "%s is empty", path);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return rk_error_set(RK_ERR_IO, "cannot map %s", path);
    if (!eng_model_own_map(m, map, len)) {
        munmap(map, len);
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    }
    sh->base = map;
    sh->len = len;
    rk_status st = eng_st_parse(map, len, &sh->hdr);
    if (st != RK_OK)
        return eng_error_wrap(st, path);
    return RK_OK;
}

/* Find a tensor in the shards and bind it to *t, checking dtype and element count. */
static rk_status bind(eng_model *m, shard *sh, size_t n_sh, const char *name, eng_tensor *t, size_t rows,
                      size_t cols, bool optional)
{
    for (size_t i = 0; i < n_sh; i++) {
        const eng_st_tensor *x = eng_st_find(sh[i].hdr, name);
        if (!x)
            continue;
        if (!strcmp(x->dtype, "F32"))
            t->dtype = ENG_DTYPE_F32;
        else if (!strcmp(x->dtype, "F16"))
            t->dtype = ENG_DTYPE_F16;
        else if (!strcmp(x->dtype, "BF16"))
            t->dtype = ENG_DTYPE_BF16;
        else
            return rk_error_set(RK_ERR_UNSUPPORTED, "tensor %s has dtype %s (F32, F16, BF16 supported)", name, x->dtype);
        bool shape_ok = rows == 1 ? (x->ndim == 1 && x->shape[0] == cols)
                                  : (x->ndim == 2 && x->shape[0] == rows && x->shape[1] == cols);
        if (!shape_ok) {
            char got[96] = "";
            size_t o = 0;
            for (int d = 0; d < x->ndim && o < sizeof(got) - 24; d++)
                o += (size_t)snprintf(got + o, sizeof(got) - o, "%s%llu", d ? ", " : "", (unsigned long long)x->shape[d]);
            if (rows == 1)
                return rk_error_set(RK_ERR_FORMAT, "tensor %s has shape [%s], config.json implies [%zu]", name, got, cols);
            return rk_error_set(RK_ERR_FORMAT, "tensor %s has shape [%s], config.json implies [%zu, %zu]", name, got,
                                rows, cols);
        }
        const uint8_t *data = sh[i].base + sh[i].hdr->data_off + x->begin;
        size_t es = t->dtype == ENG_DTYPE_F32 ? 4 : 2;
        if ((uintptr_t)data % es) {
            /* misaligned for its type (the format does not promise alignment): copy */
            void *copy = rk_aligned_alloc(RK_ALIGN, (size_t)(x->end - x->begin));
            if (!copy || !eng_model_own(m, copy)) {
                rk_aligned_free(copy);
                return rk_error_set(RK_ERR_NOMEM, "out of memory");
            }
            memcpy(copy, data, (size_t)(x->end - x->begin));
            data = copy;
        }
        t->data = data;
        t->rows = rows;
        t->cols = cols;
        return RK_OK;
    }
    if (optional)
        return RK_OK;
    return rk_error_set(RK_ERR_FORMAT, "tensor %s is missing from the safetensors file(s)", name);
}

static rk_status load_index(const char *dir, shard **out, size_t *n_out)
{
    char path[1400];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    char *text = NULL;
    size_t len;
    rk_json *idx = NULL;
    shard *sh = NULL;
    size_t n = 0;
    rk_status st = read_small_file(path, MAX_CONFIG, &text, &len);
    if (st != RK_OK)
        return st;
    if ((st = rk_json_parse(text, len, &idx)) != RK_OK) {
        st = eng_error_wrap(st, path);
        goto fail;
    }
    const rk_json *wm = rk_json_get(idx, "weight_map");
    if (!wm || wm->type != RK_JSON_OBJECT) {
        st = rk_error_set(RK_ERR_FORMAT, "%s: no \"weight_map\" object", path);
        goto fail;
    }
    sh = rk_calloc(wm->len ? wm->len : 1, sizeof(shard));
    if (!sh) {
        st = rk_error_set(RK_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < wm->len; i++) {
        const rk_json *f = &wm->items[i];
        if (f->type != RK_JSON_STRING || f->len == 0 || f->len >= sizeof(sh[0].file) || strchr(f->str, '/') ||
            !strcmp(f->str, "..") || strlen(f->str) != f->len) {
            st = rk_error_set(RK_ERR_FORMAT, "%s: bad shard file name for %s", path, wm->keys[i]);
            goto fail;
        }
        size_t j;
        for (j = 0; j < n; j++)
            if (!strcmp(sh[j].file, f->str))
                break;
        if (j == n)
            snprintf(sh[n++].file, sizeof(sh[0].file), "%s", f->str);
    }
    if (n == 0) {
        st = rk_error_set(RK_ERR_FORMAT, "%s: empty weight_map", path);
        goto fail;
    }
    rk_json_free(idx);
    rk_free(text);
    *out = sh;
    *n_out = n;
    return RK_OK;
fail:
    rk_json_free(idx);
    rk_free(text);
    rk_free(sh);
    return st;
}

rk_status eng_load_hf(eng_model *m, const char *dir)
{
    char path[1400];
    char *cfg_text = NULL;
    size_t cfg_len;
    shard *sh = NULL;
    size_t n_sh = 0;
    rk_status st;
    eng_model_info *mi = &m->info;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if ((st = read_small_file(path, MAX_CONFIG, &cfg_text, &cfg_len)) != RK_OK)
        goto fail;
    if ((st = eng_hf_config_parse(cfg_text, cfg_len, mi)) != RK_OK)
        goto fail;
    mi->format = ENG_FORMAT_HF;
    if ((st = eng_model_finish(m)) != RK_OK)
        goto fail;
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    if (access(path, F_OK) == 0) {
        if ((st = load_index(dir, &sh, &n_sh)) != RK_OK)
            goto fail;
    } else {
        sh = rk_calloc(1, sizeof(shard));
        if (!sh) {
            st = rk_error_set(RK_ERR_NOMEM, "out of memory");
            goto fail;
        }
        snprintf(sh[0].file, sizeof(sh[0].file), "model.safetensors");
        n_sh = 1;
    }
    for (size_t i = 0; i < n_sh; i++)
        if ((st = map_shard(m, dir, &sh[i])) != RK_OK)
            goto fail;
    m->layers = rk_calloc((size_t)mi->n_layers, sizeof(eng_layer_weights));
    if (!m->layers) {
        st = rk_error_set(RK_ERR_NOMEM, "out of memory");
        goto fail;
    }
    size_t d = (size_t)mi->dim, q = (size_t)mi->n_heads * (size_t)mi->head_dim,
           kv = (size_t)mi->n_kv_heads * (size_t)mi->head_dim, f = (size_t)mi->hidden, v = (size_t)mi->vocab;
    if ((st = bind(m, sh, n_sh, "model.embed_tokens.weight", &m->tok_emb, v, d, false)) ||
        (st = bind(m, sh, n_sh, "model.norm.weight", &m->final_norm, 1, d, false)))
        goto fail;
    if (mi->tied_embeddings) {
        m->wcls = m->tok_emb;
    } else if ((st = bind(m, sh, n_sh, "lm_head.weight", &m->wcls, v, d, false))) {
        goto fail;
    }
    for (int l = 0; l < mi->n_layers; l++) {
        eng_layer_weights *w = &m->layers[l];
        char nm[128];
#define B(field, suffix, r, c)                                                  \
    snprintf(nm, sizeof(nm), "model.layers.%d.%s", l, suffix);                  \
    if ((st = bind(m, sh, n_sh, nm, &w->field, r, c, false)) != RK_OK)          \
        goto fail;
        B(attn_norm, "input_layernorm.weight", 1, d)
        B(wq, "self_attn.q_proj.weight", q, d)
        B(wk, "self_attn.k_proj.weight", kv, d)
        B(wv, "self_attn.v_proj.weight", kv, d)
        B(wo, "self_attn.o_proj.weight", d, q)
        B(ffn_norm, "post_attention_layernorm.weight", 1, d)
        B(w1, "mlp.gate_proj.weight", f, d)
        B(w2, "mlp.down_proj.weight", d, f)
        B(w3, "mlp.up_proj.weight", f, d)
        if (mi->qkv_bias) {
            B(bq, "self_attn.q_proj.bias", 1, q)
            B(bk, "self_attn.k_proj.bias", 1, kv)
            B(bv, "self_attn.v_proj.bias", 1, kv)
        }
#undef B
    }
    mi->dtype = m->layers[0].wq.dtype;
    /* identity: folder name + config + every shard's header */
    rk_blake2b_state hs;
    rk_blake2b_init(&hs, 32);
    rk_blake2b_update(&hs, cfg_text, cfg_len);
    for (size_t i = 0; i < n_sh; i++)
        rk_blake2b_update(&hs, sh[i].base, (size_t)sh[i].hdr->data_off);
    uint8_t digest[32];
    rk_blake2b_final(&hs, digest, 32);
    char trimmed[1024];
    snprintf(trimmed, sizeof(trimmed), "%s", dir);
    size_t tl = strlen(trimmed);
    while (tl > 1 && trimmed[tl - 1] == '/')
        trimmed[--tl] = 0;
    eng_model_make_id(m, trimmed, digest, sizeof(digest));
    st = eng_model_check_tensors(m);
fail:
    for (size_t i = 0; i < n_sh; i++)
        eng_st_free(sh[i].hdr);
    rk_free(sh);
    rk_free(cfg_text);
    if (st != RK_OK && strncmp(rk_error_msg(), dir, strlen(dir)) != 0)
        eng_error_wrap(st, dir);
    return st;
}
