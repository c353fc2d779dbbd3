/*
 * engine.c — the engine's front end: argument validation and sequence bookkeeping around
 * the backend interface (engine_impl.h), and the composed operations (prefill, decode
 * fallback) built from the layer-granular ones.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_impl.h"
#include "ragkv/alloc.h"

/* ---- backends --------------------------------------------------------------------------- */

void eng_backend_free(eng_backend *be)
{
    if (!be)
        return;
    be->iface->free(be->ctx);
    rk_free(be);
}

const char *eng_backend_name(const eng_backend *be) { return be->iface->name; }
eng_model *eng_backend_model(const eng_backend *be) { return be->model; }

rk_status eng_backend_new(eng_model *m, const char *name, int nthreads, eng_backend **out)
{
    *out = NULL;
    if (!name || !strcmp(name, "cpu"))
        return eng_backend_cpu_new(m, nthreads, out);
    if (!strcmp(name, "cuda"))
        return eng_backend_cuda_new(m, nthreads < 0 ? 0 : nthreads, out);
    return rk_error_set(RK_ERR_INVALID, "unknown backend '%s' (cpu or cuda)", name);
}

/* ---- sequences -------------------------------------------------------------------------- */

rk_status eng_seq_new(eng_backend *be, size_t capacity, eng_seq **out)
{
    *out = NULL;
    if (!be)
        return rk_error_set(RK_ERR_INVALID, "eng_seq_new: no backend");
    if (capacity == 0)
        capacity = (size_t)be->model->info.max_seq;
    if (capacity > (size_t)INT32_MAX)
        return rk_error_set(RK_ERR_LIMIT, "eng_seq_new: capacity %zu too large", capacity);
    eng_seq *s = rk_calloc(1, sizeof(*s));
    if (!s)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    s->be = be;
    s->capacity = capacity;
    s->pos_dirty = SIZE_MAX; /* backends start their copies as all-empty */
    s->pos = rk_malloc(capacity * sizeof(int32_t));
    if (!s->pos) {
        rk_free(s);
        return rk_error_set(RK_ERR_NOMEM, "out of memory for a sequence of %zu slots", capacity);
    }
    for (size_t i = 0; i < capacity; i++)
        s->pos[i] = ENG_POS_EMPTY;
    rk_status st = be->iface->seq_init(be->ctx, s);
    if (st != RK_OK) {
        rk_free(s->pos);
        rk_free(s);
        return st;
    }
    *out = s;
    return RK_OK;
}

void eng_seq_free(eng_seq *s)
{
    if (!s)
        return;
    s->be->iface->seq_release(s->be->ctx, s);
    rk_free(s->pos);
    rk_free(s);
}

size_t eng_seq_len(const eng_seq *s) { return s->len; }
size_t eng_seq_capacity(const eng_seq *s) { return s->capacity; }
eng_backend *eng_seq_backend(const eng_seq *s) { return s->be; }

int32_t eng_seq_pos(const eng_seq *s, size_t slot)
{
    if (slot >= s->len || s->pos[slot] == ENG_POS_EMPTY)
        return -1;
    return s->pos[slot];
}

int32_t eng_seq_next_pos(const eng_seq *s)
{
    int32_t best = -1;
    for (size_t i = 0; i < s->len; i++)
        if (s->pos[i] != ENG_POS_EMPTY && s->pos[i] > best)
            best = s->pos[i];
    return best + 1;
}

rk_status eng_seq_truncate(eng_seq *s, size_t n)
{
    if (n > s->len)
        return rk_error_set(RK_ERR_RANGE, "eng_seq_truncate: %zu > length %zu", n, s->len);
    for (size_t i = n; i < s->len; i++)
        s->pos[i] = ENG_POS_EMPTY;
    if (n < s->len && n < s->pos_dirty)
        s->pos_dirty = n;
    s->len = n;
    return RK_OK;
}

/* Check positions and slots of a write of n rows into s, then record them. */
static rk_status seq_claim(eng_seq *s, size_t n, const int32_t *pos, const int32_t *slots, const char *who)
{
    const eng_model_info *mi = &s->be->model->info;
    if (!pos || !slots)
        return rk_error_set(RK_ERR_INVALID, "%s: positions and slots are required", who);
    uint8_t *seen = rk_calloc(s->capacity / 8 + 1, 1);
    if (!seen)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (pos[i] < 0 || pos[i] >= mi->max_seq) {
            rk_free(seen);
            return rk_error_set(RK_ERR_RANGE, "%s: position %d outside the model's context 0..%d", who, pos[i],
                                mi->max_seq - 1);
        }
        if (slots[i] < 0 || (size_t)slots[i] >= s->capacity) {
            rk_free(seen);
            return rk_error_set(RK_ERR_RANGE, "%s: slot %d outside the sequence's %zu slots", who, slots[i],
                                s->capacity);
        }
        size_t sl = (size_t)slots[i];
        if (seen[sl / 8] & (1u << (sl % 8))) {
            rk_free(seen);
            return rk_error_set(RK_ERR_INVALID, "%s: slot %d appears twice", who, slots[i]);
        }
        seen[sl / 8] |= (uint8_t)(1u << (sl % 8));
    }
    rk_free(seen);
    for (size_t i = 0; i < n; i++) {
        size_t sl = (size_t)slots[i];
        if (s->pos[sl] != pos[i]) { /* a row written again at its position (CacheBlend's selected
                                       rows, layer after layer) leaves the device copy alone */
            s->pos[sl] = pos[i];
            if (sl < s->pos_dirty)
                s->pos_dirty = sl;
        }
        if (sl + 1 > s->len)
            s->len = sl + 1; /* slots skipped over keep ENG_POS_EMPTY */
    }
    return RK_OK;
}

/* ---- hidden blocks ---------------------------------------------------------------------- */

rk_status eng_hidden_new(eng_backend *be, size_t rows, eng_hidden **out)
{
    *out = NULL;
    if (!be || rows == 0)
        return rk_error_set(RK_ERR_INVALID, "eng_hidden_new: need a backend and rows > 0");
    eng_hidden *h = rk_calloc(1, sizeof(*h));
    if (!h)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    h->be = be;
    h->rows = rows;
    rk_status st = be->iface->hidden_init(be->ctx, h);
    if (st != RK_OK) {
        rk_free(h);
        return st;
    }
    *out = h;
    return RK_OK;
}

void eng_hidden_free(eng_hidden *h)
{
    if (!h)
        return;
    h->be->iface->hidden_release(h->be->ctx, h);
    rk_free(h);
}

size_t eng_hidden_rows(const eng_hidden *h) { return h->rows; }

rk_status eng_hidden_write(eng_hidden *h, size_t row0, size_t n, const float *src)
{
    if (!src || row0 > h->rows || n > h->rows - row0)
        return rk_error_set(RK_ERR_RANGE, "eng_hidden_write: rows [%zu, +%zu) outside %zu", row0, n, h->rows);
    return n ? h->be->iface->hidden_write(h->be->ctx, h, row0, n, src) : RK_OK;
}

rk_status eng_hidden_read(const eng_hidden *h, size_t row0, size_t n, float *dst)
{
    if (!dst || row0 > h->rows || n > h->rows - row0)
        return rk_error_set(RK_ERR_RANGE, "eng_hidden_read: rows [%zu, +%zu) outside %zu", row0, n, h->rows);
    return n ? h->be->iface->hidden_read(h->be->ctx, h, row0, n, dst) : RK_OK;
}

rk_status eng_hidden_gather(eng_hidden *dst, const eng_hidden *src, const size_t *idx, size_t n)
{
    if (!dst || !src || dst == src || dst->be != src->be || n > dst->rows || (n && !idx))
        return rk_error_set(RK_ERR_INVALID, "eng_hidden_gather: bad arguments");
    for (size_t i = 0; i < n; i++)
        if (idx[i] >= src->rows)
            return rk_error_set(RK_ERR_RANGE, "eng_hidden_gather: row %zu outside %zu", idx[i], src->rows);
    return n ? dst->be->iface->hidden_gather(dst->be->ctx, dst, src, idx, n) : RK_OK;
}

/* ---- forward ---------------------------------------------------------------------------- */

static rk_status check_tokens(const eng_model_info *mi, const int32_t *tokens, size_t n, const char *who)
{
    if (n && !tokens)
        return rk_error_set(RK_ERR_INVALID, "%s: no tokens", who);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= mi->vocab)
            return rk_error_set(RK_ERR_RANGE, "%s: token id %d outside the vocabulary (0..%d)", who, tokens[i],
                                mi->vocab - 1);
    return RK_OK;
}

rk_status eng_embed(eng_backend *be, eng_hidden *h, size_t row0, const int32_t *tokens, size_t n)
{
    if (!be || !h || h->be != be)
        return rk_error_set(RK_ERR_INVALID, "eng_embed: hidden block of another backend");
    if (row0 > h->rows || n > h->rows - row0)
        return rk_error_set(RK_ERR_RANGE, "eng_embed: rows [%zu, +%zu) outside %zu", row0, n, h->rows);
    rk_status st = check_tokens(&be->model->info, tokens, n, "eng_embed");
    if (st != RK_OK)
        return st;
    return n ? be->iface->embed(be->ctx, h, row0, tokens, n) : RK_OK;
}

rk_status eng_layer_forward(eng_seq *s, int layer, eng_hidden *h, size_t n, const int32_t *pos,
                            const int32_t *slots, float *k_fresh, float *v_fresh)
{
    return eng_layer_forward_ex(s, layer, h, n, pos, slots, k_fresh, v_fresh, NULL);
}

/* The checks eng_layer_forward and eng_layer_kv share (who: the caller's name for messages). */
static rk_status layer_args(const eng_seq *s, int layer, const eng_hidden *h, size_t n, const char *who)
{
    if (!s || !h || h->be != s->be)
        return rk_error_set(RK_ERR_INVALID, "%s: sequence and hidden block of different backends", who);
    const eng_model_info *mi = &s->be->model->info;
    if (layer < 0 || layer >= mi->n_layers)
        return rk_error_set(RK_ERR_RANGE, "%s: layer %d outside 0..%d", who, layer, mi->n_layers - 1);
    if (n > h->rows)
        return rk_error_set(RK_ERR_RANGE, "%s: %zu rows but the block has %zu", who, n, h->rows);
    return RK_OK;
}

rk_status eng_layer_forward_ex(eng_seq *s, int layer, eng_hidden *h, size_t n, const int32_t *pos,
                               const int32_t *slots, float *k_fresh, float *v_fresh, const eng_attn_groups *ag)
{
    rk_status st = layer_args(s, layer, h, n, "eng_layer_forward");
    if (st != RK_OK || n == 0)
        return st;
    if (ag) {
        if (ag->n_groups == 0 || !ag->bounds)
            return rk_error_set(RK_ERR_INVALID, "eng_layer_forward: attention groups need n_groups > 0 and bounds");
        for (size_t g = 0; g < ag->n_groups; g++) {
            if (ag->bounds[g] > ag->bounds[g + 1] || ag->bounds[g + 1] > s->capacity)
                return rk_error_set(RK_ERR_RANGE, "eng_layer_forward: attention group %zu bounds [%zu, %zu) bad "
                                    "(capacity %zu)", g, ag->bounds[g], ag->bounds[g + 1], s->capacity);
            if (ag->temperature && !(ag->temperature[g] > 0.0f && isfinite(ag->temperature[g])))
                return rk_error_set(RK_ERR_INVALID, "eng_layer_forward: group %zu temperature must be > 0", g);
            if (ag->log_scale && (isnan(ag->log_scale[g]) || ag->log_scale[g] == INFINITY))
                return rk_error_set(RK_ERR_INVALID, "eng_layer_forward: group %zu log_scale must be finite or -inf", g);
        }
    }
    if ((st = seq_claim(s, n, pos, slots, "eng_layer_forward")) != RK_OK)
        return st;
    return s->be->iface->layer_forward(s->be->ctx, s, layer, h, n, pos, slots, k_fresh, v_fresh, ag);
}

rk_status eng_layer_kv(eng_seq *s, int layer, const eng_hidden *h, size_t n, const int32_t *pos,
                       const int32_t *slots)
{
    rk_status st = layer_args(s, layer, h, n, "eng_layer_kv");
    if (st != RK_OK || n == 0 || (st = seq_claim(s, n, pos, slots, "eng_layer_kv")) != RK_OK)
        return st;
    const struct eng_backend_i *i = s->be->iface;
    if (i->layer_kv)
        return i->layer_kv(s->be->ctx, s, layer, h, n, pos, slots);
    /* the reference: the whole layer on a copy of the rows, the copy thrown away */
    eng_hidden *t = NULL;
    size_t *idx = rk_malloc(n * sizeof(size_t));
    if (!idx)
        return rk_error_set(RK_ERR_NOMEM, "eng_layer_kv: out of memory");
    for (size_t r = 0; r < n; r++)
        idx[r] = r;
    if ((st = eng_hidden_new(s->be, n, &t)) == RK_OK && (st = eng_hidden_gather(t, h, idx, n)) == RK_OK)
        st = i->layer_forward(s->be->ctx, s, layer, t, n, pos, slots, NULL, NULL, NULL);
    eng_hidden_free(t);
    rk_free(idx);
    return st;
}

rk_status eng_logits(eng_backend *be, const eng_hidden *h, const size_t *rows, size_t n, float *logits)
{
    if (!be || !h || h->be != be || (n && !logits))
        return rk_error_set(RK_ERR_INVALID, "eng_logits: bad arguments");
    for (size_t i = 0; i < n; i++) {
        size_t r = rows ? rows[i] : i;
        if (r >= h->rows)
            return rk_error_set(RK_ERR_RANGE, "eng_logits: row %zu outside %zu", r, h->rows);
    }
    return n ? be->iface->logits(be->ctx, h, rows, n, logits) : RK_OK;
}

rk_status eng_prefill(eng_seq *s, const int32_t *tokens, size_t n, const int32_t *pos, eng_logits_mode mode,
                      float *logits)
{
    if (!s)
        return rk_error_set(RK_ERR_INVALID, "eng_prefill: no sequence");
    if (n == 0)
        return rk_error_set(RK_ERR_INVALID, "eng_prefill: no tokens");
    if (mode != ENG_LOGITS_NONE && !logits)
        return rk_error_set(RK_ERR_INVALID, "eng_prefill: logits wanted but no buffer");
    eng_backend *be = s->be;
    const eng_model_info *mi = &be->model->info;
    if (n > s->capacity - s->len)
        return rk_error_set(RK_ERR_LIMIT, "eng_prefill: %zu tokens do not fit (%zu of %zu slots used)", n, s->len,
                            s->capacity);
    rk_status st = check_tokens(mi, tokens, n, "eng_prefill");
    if (st != RK_OK)
        return st;
    size_t old_len = s->len;
    int32_t *ps = rk_malloc(n * sizeof(int32_t));
    int32_t *sl = rk_malloc(n * sizeof(int32_t));
    eng_hidden *h = NULL;
    if (!ps || !sl) {
        st = rk_error_set(RK_ERR_NOMEM, "out of memory");
        goto out;
    }
    int32_t next = eng_seq_next_pos(s);
    for (size_t i = 0; i < n; i++) {
        ps[i] = pos ? pos[i] : next + (int32_t)i;
        sl[i] = (int32_t)(s->len + i);
        if (ps[i] < 0 || ps[i] >= mi->max_seq) {
            st = rk_error_set(RK_ERR_RANGE, "eng_prefill: position %d outside the model's context 0..%d", ps[i],
                              mi->max_seq - 1);
            goto out;
        }
    }
    if ((st = eng_hidden_new(be, n, &h)) || (st = eng_embed(be, h, 0, tokens, n)))
        goto out;
    for (int l = 0; l < mi->n_layers; l++)
        if ((st = eng_layer_forward(s, l, h, n, ps, sl, NULL, NULL)) != RK_OK)
            goto out;
    if (mode == ENG_LOGITS_ALL) {
        st = eng_logits(be, h, NULL, n, logits);
    } else if (mode == ENG_LOGITS_LAST) {
        size_t last = n - 1;
        st = eng_logits(be, h, &last, 1, logits);
    }
out:
    if (st != RK_OK && s->len > old_len)
        eng_seq_truncate(s, old_len); /* a failed prefill appends nothing */
    eng_hidden_free(h);
    rk_free(ps);
    rk_free(sl);
    return st;
}

/* Check a decode step's arguments: eng_decode's rules. */
static rk_status decode_check(eng_backend *be, eng_seq *const *seqs, const int32_t *tokens, size_t n, const char *who)
{
    const eng_model_info *mi = &be->model->info;
    rk_status st = check_tokens(mi, tokens, n, who);
    if (st != RK_OK)
        return st;
    for (size_t i = 0; i < n; i++) {
        if (!seqs[i] || seqs[i]->be != be)
            return rk_error_set(RK_ERR_INVALID, "%s: sequence %zu is not on this backend", who, i);
        for (size_t j = 0; j < i; j++)
            if (seqs[j] == seqs[i])
                return rk_error_set(RK_ERR_INVALID, "%s: sequence appears twice in the batch", who);
        if (seqs[i]->len >= seqs[i]->capacity)
            return rk_error_set(RK_ERR_LIMIT, "%s: sequence %zu is full (%zu slots)", who, i, seqs[i]->capacity);
        if (eng_seq_next_pos(seqs[i]) >= mi->max_seq)
            return rk_error_set(RK_ERR_RANGE, "%s: sequence %zu reached the model's context (%d)", who, i,
                                mi->max_seq);
    }
    return RK_OK;
}

/* Give each sequence of a checked step its next slot (len) at its next position: ps, sl (n
 * each) receive them. */
static void decode_claim(eng_seq *const *seqs, size_t n, int32_t *ps, int32_t *sl)
{
    for (size_t i = 0; i < n; i++) {
        ps[i] = eng_seq_next_pos(seqs[i]);
        sl[i] = (int32_t)seqs[i]->len;
        seqs[i]->pos[sl[i]] = ps[i];
        if ((size_t)sl[i] < seqs[i]->pos_dirty)
            seqs[i]->pos_dirty = (size_t)sl[i];
        seqs[i]->len++;
    }
}

/* Undo decode_claim after a failed step: it appends nothing. */
static void decode_unclaim(eng_seq *const *seqs, size_t n, const int32_t *sl)
{
    for (size_t i = 0; i < n; i++)
        eng_seq_truncate(seqs[i], (size_t)sl[i]);
}

/* A checked decode step (n > 0) with its logits to host memory. */
static rk_status decode_run(eng_backend *be, eng_seq *const *seqs, const int32_t *tokens, size_t n, float *logits)
{
    const eng_model_info *mi = &be->model->info;
    rk_status st = RK_OK;
    int32_t *ps = rk_malloc(n * sizeof(int32_t));
    int32_t *sl = rk_malloc(n * sizeof(int32_t));
    if (!ps || !sl) {
        rk_free(ps);
        rk_free(sl);
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    }
    decode_claim(seqs, n, ps, sl);
    if (be->iface->decode) {
        st = be->iface->decode(be->ctx, seqs, tokens, ps, sl, n, logits);
    } else {
        for (size_t i = 0; i < n && st == RK_OK; i++) {
            eng_hidden *h = NULL;
            if ((st = eng_hidden_new(be, 1, &h)) == RK_OK && (st = eng_embed(be, h, 0, &tokens[i], 1)) == RK_OK)
                for (int l = 0; l < mi->n_layers && st == RK_OK; l++)
                    st = be->iface->layer_forward(be->ctx, seqs[i], l, h, 1, &ps[i], &sl[i], NULL, NULL, NULL);
            if (st == RK_OK)
                st = eng_logits(be, h, NULL, 1, logits + i * (size_t)mi->vocab);
            eng_hidden_free(h);
        }
    }
    if (st != RK_OK)
        decode_unclaim(seqs, n, sl);
    rk_free(ps);
    rk_free(sl);
    return st;
}

rk_status eng_decode(eng_backend *be, eng_seq *const *seqs, const int32_t *tokens, size_t n, float *logits)
{
    if (!be || (n && (!seqs || !tokens || !logits)))
        return rk_error_set(RK_ERR_INVALID, "eng_decode: bad arguments");
    if (n == 0)
        return RK_OK;
    rk_status st = decode_check(be, seqs, tokens, n, "eng_decode");
    return st != RK_OK ? st : decode_run(be, seqs, tokens, n, logits);
}

/* Rows from which eng_decode_sample chooses tokens on the device by default. The device kernel
 * gives each row one block, whose passes over the vocabulary take about the same time however
 * many rows run beside it: on the H100 (2026-12-07, Llama-3 vocabulary of 128K, 8K context) it
 * added 2.5 ms to a batch-1 step and 1.5-1.8 ms to a batch of 32, where copying the logits and
 * eng_sample on the host added 0.7-0.9 ms per row (26-32 ms at 32). */
#define DEVICE_SAMPLE_MIN_ROWS 3

/* Whether eng_decode_sample of n rows samples on the device (where the backend can):
 * RAGKV_DEVICE_SAMPLE=0 never, =1 always, otherwise from DEVICE_SAMPLE_MIN_ROWS rows up (read
 * per call: tests and benchmarks compare the ways). */
static bool device_sample_on(size_t n)
{
    const char *e = getenv("RAGKV_DEVICE_SAMPLE");
    if (e && !strcmp(e, "0"))
        return false;
    if (e && !strcmp(e, "1"))
        return true;
    return n >= DEVICE_SAMPLE_MIN_ROWS;
}

static rk_status check_samplers(eng_sampler *const *sm, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const eng_sampler *s = sm[i];
        if (!s)
            return rk_error_set(RK_ERR_INVALID, "eng_decode_sample: no sampler for row %zu", i);
        if (!(s->temperature >= 0.0f && isfinite(s->temperature)))
            return rk_error_set(RK_ERR_INVALID, "eng_decode_sample: sampler %zu: temperature %g (need finite, >= 0)",
                                i, (double)s->temperature);
        if (s->top_k < 0)
            return rk_error_set(RK_ERR_INVALID, "eng_decode_sample: sampler %zu: top_k %d (need >= 0)", i, s->top_k);
        if (!(s->top_p > 0.0f))
            return rk_error_set(RK_ERR_INVALID, "eng_decode_sample: sampler %zu: top_p %g (need > 0)", i,
                                (double)s->top_p);
        for (size_t j = 0; j < i; j++)
            if (sm[j] == s)
                return rk_error_set(RK_ERR_INVALID, "eng_decode_sample: rows %zu and %zu share a sampler", j, i);
    }
    return RK_OK;
}

/* The reference: the step's logits to the host, eng_sample per row. */
static rk_status decode_sample_host(eng_backend *be, eng_seq *const *seqs, const int32_t *tokens, size_t n,
                                    eng_sampler *const *sm, int32_t *out, float *logits)
{
    int V = be->model->info.vocab;
    for (size_t i = 0; i < n; i++) /* no eng_sample below may fail for memory once the step ran */
        if (sm[i]->temperature > 0.0f && !eng_sampler_reserve(sm[i], V))
            return rk_error_set(RK_ERR_NOMEM, "eng_decode_sample: out of memory for sampler scratch");
    float *lg = logits ? logits : rk_malloc(n * (size_t)V * sizeof(float));
    if (!lg)
        return rk_error_set(RK_ERR_NOMEM, "eng_decode_sample: out of memory for %zu rows of logits", n);
    rk_status st = decode_run(be, seqs, tokens, n, lg);
    for (size_t i = 0; st == RK_OK && i < n; i++)
        out[i] = eng_sample(sm[i], lg + i * (size_t)V, V);
    if (lg != logits)
        rk_free(lg);
    return st;
}

rk_status eng_decode_sample(eng_backend *be, eng_seq *const *seqs, const int32_t *tokens, size_t n,
                            eng_sampler *const *samplers, int32_t *out, float *logits)
{
    if (!be || (n && (!seqs || !tokens || !samplers || !out)))
        return rk_error_set(RK_ERR_INVALID, "eng_decode_sample: bad arguments");
    if (n == 0)
        return RK_OK;
    rk_status st = decode_check(be, seqs, tokens, n, "eng_decode_sample");
    if (st != RK_OK || (st = check_samplers(samplers, n)) != RK_OK)
        return st;
    if (!be->iface->decode_sample || !device_sample_on(n))
        return decode_sample_host(be, seqs, tokens, n, samplers, out, logits);
    /* the device path: the uniforms are drawn here, in row order, exactly as eng_sample would
     * draw them; a row that gets no token (all NaN) gives its uniform back */
    int V = be->model->info.vocab;
    eng_sample_row *rows = rk_malloc(n * sizeof(*rows));
    uint64_t *saved = rk_malloc(n * sizeof(uint64_t));
    int32_t *ps = rk_malloc(n * sizeof(int32_t));
    int32_t *sl = rk_malloc(n * sizeof(int32_t));
    if (!rows || !saved || !ps || !sl) {
        st = rk_error_set(RK_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        eng_sampler *s = samplers[i];
        saved[i] = s->state;
        rows[i] = (eng_sample_row){s->temperature, s->top_k, s->top_p, 0.0f};
        if (s->temperature > 0.0f)
            rows[i].r = eng_sampler_uniform(s);
    }
    decode_claim(seqs, n, ps, sl);
    st = be->iface->decode_sample(be->ctx, seqs, tokens, ps, sl, n, rows, out, logits);
    for (size_t i = 0; st == RK_OK && i < n; i++)
        if (out[i] < -1 || out[i] >= V)
            st = rk_error_set(RK_ERR_DEVICE, "eng_decode_sample: the backend chose token %d for row %zu (vocab %d)",
                              out[i], i, V);
    if (st != RK_OK) {
        decode_unclaim(seqs, n, sl);
        for (size_t i = 0; i < n; i++)
            samplers[i]->state = saved[i];
    } else {
        for (size_t i = 0; i < n; i++)
            if (out[i] < 0)
                samplers[i]->state = saved[i];
    }
out:
    rk_free(rows);
    rk_free(saved);
    rk_free(ps);
    rk_free(sl);
    return st;
}

/* ---- KV export / import ---------------------------------------------------------------- */

size_t eng_kv_floats(const eng_model *m, size_t n)
{
    return (size_t)m->info.n_layers * 2 * n * (size_t)m->info.n_kv_heads * (size_t)m->info.head_dim;
}

rk_status eng_kv_export(const eng_seq *s, size_t slot0, size_t n, float *out)
{
    return s ? eng_kv_export_layers(s, 0, s->be->model->info.n_layers, slot0, n, out)
             : rk_error_set(RK_ERR_INVALID, "eng_kv_export: no sequence");
}

rk_status eng_kv_import(eng_seq *s, size_t slot0, size_t n, const int32_t *pos, const float *kv)
{
    return s ? eng_kv_import_layers(s, 0, s->be->model->info.n_layers, slot0, n, pos, kv)
             : rk_error_set(RK_ERR_INVALID, "eng_kv_import: no sequence");
}

static rk_status check_layers(const eng_seq *s, int layer0, int n_layers, const char *who)
{
    int L = s->be->model->info.n_layers;
    if (layer0 < 0 || n_layers < 0 || layer0 > L || n_layers > L - layer0)
        return rk_error_set(RK_ERR_RANGE, "%s: layers [%d, +%d) outside 0..%d", who, layer0, n_layers, L - 1);
    return RK_OK;
}

/* Slots [slot0, slot0+n) lie within s's length and none is empty. */
static rk_status check_filled(const eng_seq *s, size_t slot0, size_t n, const char *who)
{
    if (slot0 > s->len || n > s->len - slot0)
        return rk_error_set(RK_ERR_RANGE, "%s: slots [%zu, +%zu) outside the length %zu", who, slot0, n, s->len);
    for (size_t i = 0; i < n; i++)
        if (s->pos[slot0 + i] == ENG_POS_EMPTY)
            return rk_error_set(RK_ERR_INVALID, "%s: slot %zu is empty", who, slot0 + i);
    return RK_OK;
}

rk_status eng_kv_export_layers(const eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n, float *out)
{
    if (!s || (n && !out))
        return rk_error_set(RK_ERR_INVALID, "eng_kv_export: bad arguments");
    rk_status st = check_layers(s, layer0, n_layers, "eng_kv_export");
    if (st != RK_OK)
        return st;
    if ((st = check_filled(s, slot0, n, "eng_kv_export")) != RK_OK)
        return st;
    return n && n_layers ? s->be->iface->kv_export(s->be->ctx, s, layer0, n_layers, slot0, n, out) : RK_OK;
}

rk_status eng_kv_deviation(const eng_seq *a, const eng_seq *b, int layer, size_t slot0, size_t n, bool with_v,
                           float *out)
{
    if (!a || !b || (n && !out))
        return rk_error_set(RK_ERR_INVALID, "eng_kv_deviation: bad arguments");
    if (a->be != b->be)
        return rk_error_set(RK_ERR_INVALID, "eng_kv_deviation: the sequences are on different backends");
    rk_status st = check_layers(a, layer, 1, "eng_kv_deviation");
    if (st != RK_OK || n == 0)
        return st;
    if ((st = check_filled(a, slot0, n, "eng_kv_deviation")) != RK_OK ||
        (st = check_filled(b, slot0, n, "eng_kv_deviation")) != RK_OK)
        return st;
    if (a->be->iface->kv_deviation)
        return a->be->iface->kv_deviation(a->be->ctx, a, b, layer, slot0, n, with_v, out);
    /* the reference: both layers exported, compared on the host */
    size_t w = (size_t)a->be->model->info.n_kv_heads * (size_t)a->be->model->info.head_dim;
    float *ka = rk_malloc(2 * n * w * sizeof(float)), *kb = rk_malloc(2 * n * w * sizeof(float));
    st = ka && kb ? RK_OK : RK_ERR_NOMEM;
    if (st == RK_OK)
        st = a->be->iface->kv_export(a->be->ctx, a, layer, 1, slot0, n, ka);
    if (st == RK_OK)
        st = b->be->iface->kv_export(b->be->ctx, b, layer, 1, slot0, n, kb);
    for (size_t i = 0; st == RK_OK && i < n; i++) {
        double d = 0;
        for (int kv = 0; kv < (with_v ? 2 : 1); kv++) {
            const float *x = ka + ((size_t)kv * n + i) * w, *y = kb + ((size_t)kv * n + i) * w;
            for (size_t j = 0; j < w; j++)
                d += (double)(x[j] - y[j]) * (double)(x[j] - y[j]);
        }
        out[i] = (float)d;
    }
    rk_free(ka);
    rk_free(kb);
    return st;
}

/* Check that slots [slot0, slot0+n) fit s and claim them at positions pos (as seq_claim). */
static rk_status import_claim(eng_seq *s, size_t slot0, size_t n, const int32_t *pos, const char *who)
{
    if (slot0 > s->capacity || n > s->capacity - slot0)
        return rk_error_set(RK_ERR_RANGE, "%s: slots [%zu, +%zu) outside the capacity %zu", who, slot0, n,
                            s->capacity);
    if (n == 0)
        return RK_OK;
    int32_t *sl = rk_malloc(n * sizeof(int32_t));
    if (!sl)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        sl[i] = (int32_t)(slot0 + i);
    rk_status st = seq_claim(s, n, pos, sl, who);
    rk_free(sl);
    return st;
}

rk_status eng_kv_import_layers(eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n, const int32_t *pos,
                               const float *kv)
{
    if (!s || (n && (!pos || !kv)))
        return rk_error_set(RK_ERR_INVALID, "eng_kv_import: bad arguments");
    rk_status st = check_layers(s, layer0, n_layers, "eng_kv_import");
    if (st != RK_OK || (st = import_claim(s, slot0, n, pos, "eng_kv_import")) != RK_OK)
        return st;
    return n && n_layers ? s->be->iface->kv_import(s->be->ctx, s, layer0, n_layers, slot0, n, pos, kv) : RK_OK;
}

/* ---- KV blocks ---------------------------------------------------------------------------- */

/* Does the backend keep blocks itself? Only with all four entries; otherwise the generic host
 * copy (engine_impl.h). */
static bool kvblock_native(const eng_backend *be)
{
    const struct eng_backend_i *i = be->iface;
    return i->kvblock_init && i->kvblock_release && i->kvblock_import && i->kvblock_read;
}

/* eng_kvblock_new (kv given) and eng_kvblock_alloc (kv NULL: contents left to the caller). */
static rk_status kvblock_make(eng_backend *be, size_t n, const float *kv, eng_kvblock **out)
{
    *out = NULL;
    if (!be || n == 0)
        return rk_error_set(RK_ERR_INVALID, "eng_kvblock_new: need a backend, KV and n > 0");
    if (n > (size_t)be->model->info.max_seq)
        return rk_error_set(RK_ERR_RANGE, "eng_kvblock_new: %zu tokens exceed the model's context of %d", n,
                            be->model->info.max_seq);
    eng_kvblock *b = rk_calloc(1, sizeof(*b));
    if (!b)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    b->be = be;
    b->n = n;
    rk_status st = RK_OK;
    if (kvblock_native(be)) {
        st = be->iface->kvblock_init(be->ctx, b, kv);
    } else {
        b->bytes = eng_kv_floats(be->model, n) * sizeof(float);
        if ((b->host = rk_malloc(b->bytes)) != NULL) {
            if (kv)
                memcpy(b->host, kv, b->bytes);
            b->mem = (eng_kvblock_mem){.data = b->host, .elem_bytes = (int)sizeof(float), .device = false};
        } else {
            st = rk_error_set(RK_ERR_NOMEM, "eng_kvblock_new: out of memory for %zu bytes", b->bytes);
        }
    }
    if (st != RK_OK) {
        rk_free(b);
        return st;
    }
    *out = b;
    return RK_OK;
}

rk_status eng_kvblock_new(eng_backend *be, size_t n, const float *kv, eng_kvblock **out)
{
    if (!out)
        return rk_error_set(RK_ERR_INVALID, "eng_kvblock_new: no output");
    if (!kv) {
        *out = NULL;
        return rk_error_set(RK_ERR_INVALID, "eng_kvblock_new: need a backend, KV and n > 0");
    }
    return kvblock_make(be, n, kv, out);
}

rk_status eng_kvblock_alloc(eng_backend *be, size_t n, eng_kvblock **out, eng_kvblock_mem *mem)
{
    if (!out || !mem)
        return rk_error_set(RK_ERR_INVALID, "eng_kvblock_alloc: no output");
    rk_status st = kvblock_make(be, n, NULL, out);
    *mem = st == RK_OK ? (*out)->mem : (eng_kvblock_mem){0};
    return st;
}

void eng_kvblock_free(eng_kvblock *b)
{
    if (!b)
        return;
    if (b->host)
        rk_free(b->host);
    else
        b->be->iface->kvblock_release(b->be->ctx, b);
    rk_free(b);
}

size_t eng_kvblock_tokens(const eng_kvblock *b) { return b->n; }
size_t eng_kvblock_bytes(const eng_kvblock *b) { return b->bytes; }
eng_backend *eng_kvblock_backend(const eng_kvblock *b) { return b->be; }

rk_status eng_kvblock_read(const eng_kvblock *b, int layer0, int n_layers, float *out)
{
    if (!b || !out)
        return rk_error_set(RK_ERR_INVALID, "eng_kvblock_read: bad arguments");
    int L = b->be->model->info.n_layers;
    if (layer0 < 0 || n_layers < 0 || layer0 > L || n_layers > L - layer0)
        return rk_error_set(RK_ERR_RANGE, "eng_kvblock_read: layers [%d, +%d) outside 0..%d", layer0, n_layers, L - 1);
    if (n_layers == 0)
        return RK_OK;
    if (!b->host)
        return b->be->iface->kvblock_read(b->be->ctx, b, layer0, n_layers, out);
    size_t per = eng_kv_floats(b->be->model, b->n) / (size_t)L; /* one layer's K and V */
    memcpy(out, b->host + (size_t)layer0 * per, (size_t)n_layers * per * sizeof(float));
    return RK_OK;
}

rk_status eng_kv_import_block_layers(eng_seq *s, size_t slot0, const int32_t *pos, const eng_kvblock *b, int layer0,
                                     int n_layers)
{
    if (!s || !b || !pos)
        return rk_error_set(RK_ERR_INVALID, "eng_kv_import_block: bad arguments");
    if (b->be != s->be)
        return rk_error_set(RK_ERR_INVALID, "eng_kv_import_block: the block is on another backend than the sequence");
    int L = s->be->model->info.n_layers;
    if (layer0 < 0 || n_layers <= 0 || layer0 >= L || n_layers > L - layer0)
        return rk_error_set(RK_ERR_RANGE, "eng_kv_import_block: layers [%d, %d) outside the model's %d", layer0,
                            layer0 + n_layers, L);
    rk_status st = import_claim(s, slot0, b->n, pos, "eng_kv_import_block");
    if (st != RK_OK)
        return st;
    if (b->host)
        return s->be->iface->kv_import(s->be->ctx, s, layer0, n_layers, slot0, b->n, pos,
                                       b->host + (size_t)layer0 * (eng_kv_floats(s->be->model, b->n) / (size_t)L));
    return s->be->iface->kvblock_import(s->be->ctx, s, slot0, pos, b, layer0, n_layers);
}

rk_status eng_kv_import_blocks_layers(eng_seq *s, size_t nb, const size_t *slot0, const int32_t *const *pos,
                                      const eng_kvblock *const *b, int layer0, int n_layers)
{
    if (!s || (nb && (!slot0 || !pos || !b)))
        return rk_error_set(RK_ERR_INVALID, "eng_kv_import_blocks: bad arguments");
    int L = s->be->model->info.n_layers;
    if (layer0 < 0 || n_layers <= 0 || layer0 >= L || n_layers > L - layer0)
        return rk_error_set(RK_ERR_RANGE, "eng_kv_import_blocks: layers [%d, %d) outside the model's %d", layer0,
                            layer0 + n_layers, L);
    bool batched = s->be->iface->kvblocks_import != NULL;
    for (size_t i = 0; i < nb; i++) {
        if (!b[i] || !pos[i])
            return rk_error_set(RK_ERR_INVALID, "eng_kv_import_blocks: block %zu: bad arguments", i);
        if (b[i]->be != s->be)
            return rk_error_set(RK_ERR_INVALID, "eng_kv_import_blocks: block %zu is on another backend than the "
                                "sequence", i);
        batched = batched && !b[i]->host;
    }
    if (!batched) { /* the reference: block after block */
        for (size_t i = 0; i < nb; i++) {
            rk_status st = eng_kv_import_block_layers(s, slot0[i], pos[i], b[i], layer0, n_layers);
            if (st != RK_OK)
                return st;
        }
        return RK_OK;
    }
    for (size_t i = 0; i < nb; i++) {
        rk_status st = import_claim(s, slot0[i], b[i]->n, pos[i], "eng_kv_import_blocks");
        if (st != RK_OK)
            return st;
    }
    return nb ? s->be->iface->kvblocks_import(s->be->ctx, s, nb, slot0, pos, b, layer0, n_layers) : RK_OK;
}

rk_status eng_kv_import_block(eng_seq *s, size_t slot0, const int32_t *pos, const eng_kvblock *b)
{
    if (!s)
        return rk_error_set(RK_ERR_INVALID, "eng_kv_import_block: bad arguments");
    return eng_kv_import_block_layers(s, slot0, pos, b, 0, s->be->model->info.n_layers);
}
