/* blend.c — full, prefix, naive, CacheBlend, Cache-Craft and APE prompt assembly on the
 * engine's layer ops. */
#include "ragkv/blend.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/clock.h"

#include "load.h"

const char *bl_mode_name(bl_mode m)
{
    static const char *names[] = {"full", "prefix", "naive", "cacheblend", "cachecraft", "ape"};
    return (unsigned)m <= BL_APE ? names[m] : "unknown";
}

int bl_mode_parse(const char *name)
{
    for (int i = 0; i <= BL_APE; i++)
        if (name && strcmp(name, bl_mode_name((bl_mode)i)) == 0)
            return i;
    return -1;
}

void bl_params_default(bl_params *p, bl_mode mode)
{
    memset(p, 0, sizeof(*p));
    p->mode = mode;
    p->ratio = 0.15f;
    p->check_layer = 1;
    p->select = BL_SELECT_DEFAULT;
    p->alpha = BL_CRAFT_ALPHA;
    p->ape_t = 0.9f;
    p->ape_s = 0.9f;
}

rk_status bl_chunk_prefill(eng_model *m, eng_backend *be, const int32_t *tokens, size_t n,
                           float *kv_out)
{
    if (n == 0)
        return rk_error_set(RK_ERR_INVALID, "empty chunk");
    const eng_model_info *mi = eng_model_get_info(m);
    eng_seq *s = NULL;
    int32_t *toks = rk_malloc((n + 1) * sizeof(int32_t));
    rk_status st = toks ? eng_seq_new(be, n + 1, &s) : RK_ERR_NOMEM;
    if (st == RK_OK) {
        toks[0] = mi->bos;
        memcpy(toks + 1, tokens, n * sizeof(int32_t));
        st = eng_prefill(s, toks, n + 1, NULL, ENG_LOGITS_NONE, NULL);
    }
    if (st == RK_OK)
        st = eng_kv_export(s, 1, n, kv_out);
    eng_seq_free(s);
    rk_free(toks);
    return st;
}

/* A segment brings its KV, as floats or as a block on the backend. */
const char *bl_phase_name(bl_phase ph)
{
    static const char *const names[BL_PHASES] = {"import", "full", "probe", "select", "partial", "logits"};
    return (unsigned)ph < BL_PHASES ? names[ph] : "?";
}

/* Charge the time since *t to phase ph of st (may be NULL) and restart the clock. */
static void phase_end(bl_stats *st, bl_phase ph, uint64_t *t)
{
    uint64_t now = rk_now_ns();
    if (st)
        st->phase_ms[ph] += (double)(now - *t) / 1e6;
    *t = now;
}

rk_status bl_kvblock_decode(eng_backend *be, const void *container, size_t len, const codec_decode_opts *opts,
                            eng_kvblock **out)
{
    if (!out)
        return rk_error_set(RK_ERR_INVALID, "bl_kvblock_decode: no output");
    *out = NULL;
    if (!be || !container)
        return rk_error_set(RK_ERR_INVALID, "bl_kvblock_decode: bad arguments");
    const eng_model_info *mi = eng_model_get_info(eng_backend_model(be));
    codec_info ci;
    rk_status st = codec_inspect(container, len, &ci);
    if (st == RK_OK)
        st = bl_container_check(mi, &ci, 0);
    if (st != RK_OK)
        return st;
    size_t n = ci.shape.n_tokens;
    eng_kvblock *b = NULL;
    eng_kvblock_mem mem;
    if ((st = eng_kvblock_alloc(be, n, &b, &mem)) != RK_OK)
        return st;
    st = RK_ERR_UNSUPPORTED; /* until a decoder wrote the block in place */
    if (mem.device && mem.elem_bytes == 2 && codec_cuda_available())
        st = codec_decode_cuda(container, len, opts, CODEC_BF16, mem.data, codec_decoded_bytes(&ci, CODEC_BF16), NULL);
    else if (!mem.device && mem.elem_bytes == 4)
        st = codec_decode(container, len, opts, CODEC_F32, mem.data, codec_decoded_bytes(&ci, CODEC_F32));
    if (st == RK_ERR_UNSUPPORTED) { /* no in-place decoder for this memory: floats, then copied in */
        eng_kvblock_free(b);
        b = NULL;
        size_t bytes = codec_decoded_bytes(&ci, CODEC_F32);
        float *kv = bytes ? rk_malloc(bytes) : NULL;
        st = kv ? codec_decode(container, len, opts, CODEC_F32, kv, bytes) : RK_ERR_NOMEM;
        if (st == RK_OK)
            st = eng_kvblock_new(be, n, kv, &b);
        rk_free(kv);
    }
    if (st != RK_OK) {
        eng_kvblock_free(b);
        return st;
    }
    *out = b;
    return RK_OK;
}

static bool seg_cached(const bl_segment *sg)
{
    return sg->kv || sg->block || sg->container;
}

/* Import a cached segment's KV into slots [slot0, slot0 + n) at positions pos (a container
 * decoded whole first). */
static rk_status seg_import(eng_seq *s, size_t slot0, const int32_t *pos, const bl_segment *sg,
                            const codec_decode_opts *opts)
{
    if (sg->container) {
        float *kv = NULL;
        rk_status st = bl_container_floats(eng_model_get_info(eng_backend_model(eng_seq_backend(s))), sg, opts, &kv);
        if (st == RK_OK)
            st = eng_kv_import(s, slot0, sg->n, pos, kv);
        rk_free(kv);
        return st;
    }
    return sg->kv ? eng_kv_import(s, slot0, sg->n, pos, sg->kv) : eng_kv_import_block(s, slot0, pos, sg->block);
}

/* The prompt laid out row by row: row i is the token at position i and lives in slot i. */
struct prompt {
    size_t n;                /* rows */
    int32_t *tokens;         /* (n) */
    int32_t *pos;            /* (n) = slot = row */
    const bl_segment **seg;  /* (n) cached rows: their segment; NULL for uncached rows (and
                                for cached rows chosen for recomputation) */
    size_t *kv_row;          /* (n) the row's token index inside its segment */
    const bl_segment *segs;  /* (nseg) the segments the rows point into */
    size_t nseg;
    float **layer_kv;        /* (nseg) block segments: K|V of layer `layer` read back from the
                                block, (2, n_i, n_kv_heads * head_dim) float32; else NULL */
    int layer;               /* the layer layer_kv holds; -1 before the first read */
    bl_loader *ld;           /* container segments' layers, or NULL (borrowed) */
    eng_seq *seq;            /* the prompt's sequence: the one ld imports into */
};

static void prompt_free(struct prompt *pr)
{
    rk_free(pr->tokens);
    rk_free(pr->pos);
    rk_free(pr->seg);
    rk_free(pr->kv_row);
    for (size_t i = 0; pr->layer_kv && i < pr->nseg; i++)
        rk_free(pr->layer_kv[i]);
    rk_free(pr->layer_kv);
}

static rk_status prompt_build(const eng_model_info *mi, const bl_segment *segs, size_t nseg,
                              const int32_t *query, size_t nq, struct prompt *pr)
{
    memset(pr, 0, sizeof(*pr));
    size_t n = 1 + nq;
    for (size_t i = 0; i < nseg; i++) {
        if (segs[i].n == 0 || !segs[i].tokens)
            return rk_error_set(RK_ERR_INVALID, "segment %zu is empty", i);
        n += segs[i].n;
    }
    if (n > (size_t)mi->max_seq)
        return rk_error_set(RK_ERR_RANGE, "prompt of %zu tokens exceeds the context of %d", n, mi->max_seq);
    pr->n = n;
    pr->segs = segs;
    pr->nseg = nseg;
    pr->layer = -1;
    pr->tokens = rk_malloc(n * sizeof(int32_t));
    pr->pos = rk_malloc(n * sizeof(int32_t));
    pr->seg = rk_calloc(n, sizeof(*pr->seg));
    pr->kv_row = rk_calloc(n, sizeof(size_t));
    pr->layer_kv = rk_calloc(nseg ? nseg : 1, sizeof(float *));
    if (!pr->tokens || !pr->pos || !pr->seg || !pr->kv_row || !pr->layer_kv) {
        prompt_free(pr);
        return RK_ERR_NOMEM;
    }
    size_t r = 0;
    pr->tokens[r++] = mi->bos;
    for (size_t i = 0; i < nseg; i++)
        for (size_t t = 0; t < segs[i].n; t++, r++) {
            pr->tokens[r] = segs[i].tokens[t];
            pr->seg[r] = seg_cached(&segs[i]) ? &segs[i] : NULL;
            pr->kv_row[r] = t;
        }
    if (nq)
        memcpy(pr->tokens + r, query, nq * sizeof(int32_t));
    for (size_t i = 0; i < n; i++)
        pr->pos[i] = (int32_t)i;
    return RK_OK;
}

/* Import every cached segment at its positions; container segments too unless a loader brings
 * them layer by layer (defer). */
static rk_status import_cached(eng_seq *s, const bl_segment *segs, size_t nseg, const int32_t *pos,
                               const codec_decode_opts *opts, bool defer)
{
    /* the segments in KV blocks go in one call (on CUDA one upload of positions and one wait
     * for all of them), the others one by one */
    size_t *slot = rk_malloc((nseg ? nseg : 1) * sizeof(size_t)), nb = 0;
    const int32_t **bp = rk_malloc((nseg ? nseg : 1) * sizeof(int32_t *));
    const eng_kvblock **bb = rk_malloc((nseg ? nseg : 1) * sizeof(eng_kvblock *));
    rk_status st = slot && bp && bb ? RK_OK : RK_ERR_NOMEM;
    size_t row = 1;
    for (size_t i = 0; i < nseg && st == RK_OK; i++) {
        const bl_segment *sg = &segs[i];
        if (seg_cached(sg) && !(defer && sg->container)) {
            if (!sg->container && !sg->kv) {
                slot[nb] = row;
                bp[nb] = pos + row;
                bb[nb++] = sg->block;
            } else {
                st = seg_import(s, row, pos + row, sg, opts);
            }
        }
        row += sg->n;
    }
    if (st == RK_OK && nb)
        st = eng_kv_import_blocks_layers(s, nb, slot, bp, bb, 0,
                                         eng_model_get_info(eng_backend_model(eng_seq_backend(s)))->n_layers);
    rk_free(slot);
    rk_free(bp);
    rk_free(bb);
    return st;
}

/* Make layer l of every block segment readable by cached_row: only that layer is read back
 * (the one whose deviation is measured), once. */
static rk_status prompt_load_layer(const eng_model_info *mi, struct prompt *pr, int l)
{
    if (pr->ld) { /* containers: the loader holds the layer once imported */
        rk_status st = bl_loader_import(pr->ld, pr->seq, l, pr->pos);
        if (st == RK_OK)
            st = bl_loader_hold(pr->ld, l);
        if (st != RK_OK)
            return st;
    }
    if (pr->layer == l)
        return RK_OK;
    size_t w = (size_t)mi->n_kv_heads * (size_t)mi->head_dim;
    for (size_t i = 0; i < pr->nseg; i++) {
        const bl_segment *sg = &pr->segs[i];
        if (sg->kv || !sg->block)
            continue;
        if (!pr->layer_kv[i] && !(pr->layer_kv[i] = rk_malloc(2 * sg->n * w * sizeof(float))))
            return RK_ERR_NOMEM;
        rk_status st = eng_kvblock_read(sg->block, l, 1, pr->layer_kv[i]);
        if (st != RK_OK)
            return st;
    }
    pr->layer = l;
    return RK_OK;
}

/* Cached pre-RoPE K (or V: which = 1) of row r at layer l: (n_kv_heads * head_dim) floats. A
 * row of a block segment needs layer l loaded (prompt_load_layer). */
static const float *cached_row(const eng_model_info *mi, const struct prompt *pr, size_t r, int l, int which)
{
    size_t w = (size_t)mi->n_kv_heads * (size_t)mi->head_dim;
    const bl_segment *sg = pr->seg[r];
    size_t len = sg->n;
    if (sg->kv)
        return sg->kv + (((size_t)l * 2 + (size_t)which) * len + pr->kv_row[r]) * w;
    if (sg->container)
        return bl_loader_layer(pr->ld, (size_t)(sg - pr->segs), l) + ((size_t)which * len + pr->kv_row[r]) * w;
    return pr->layer_kv[sg - pr->segs] + ((size_t)which * len + pr->kv_row[r]) * w;
}

/* Run layers [l0, l1) for the rows idx[0..k) whose hidden states are the first k rows of h;
 * k_fresh/v_fresh (when not NULL) receive the last layer's fresh K/V. */
static rk_status run_layers(eng_seq *s, eng_hidden *h, const size_t *idx, size_t k,
                            const struct prompt *pr, int l0, int l1, int32_t *pos_buf,
                            float *k_fresh, float *v_fresh)
{
    for (size_t i = 0; i < k; i++)
        pos_buf[i] = pr->pos[idx[i]];
    for (int l = l0; l < l1; l++) {
        if (pr->ld && s == pr->seq) { /* the reused rows' KV of layer l must be in place */
            rk_status st = bl_loader_import(pr->ld, s, l, pr->pos);
            if (st != RK_OK)
                return st;
        }
        rk_status st = eng_layer_forward(s, l, h, k, pos_buf, pos_buf, l == l1 - 1 ? k_fresh : NULL,
                                         l == l1 - 1 ? v_fresh : NULL);
        if (st != RK_OK)
            return st;
    }
    return RK_OK;
}

/* Squared deviation of fresh vs cached K (and V) for row r at layer l. */
static float deviation(const eng_model_info *mi, const struct prompt *pr, size_t r, int l,
                       const float *kf, const float *vf, bool use_v)
{
    size_t w = (size_t)mi->n_kv_heads * (size_t)mi->head_dim;
    const float *kc = cached_row(mi, pr, r, l, 0);
    double d = 0;
    for (size_t j = 0; j < w; j++)
        d += (double)(kf[j] - kc[j]) * (double)(kf[j] - kc[j]);
    if (use_v) {
        const float *vc = cached_row(mi, pr, r, l, 1);
        for (size_t j = 0; j < w; j++)
            d += (double)(vf[j] - vc[j]) * (double)(vf[j] - vc[j]);
    }
    return (float)d;
}

/* Keep, of the rows sel[0..*k) (ascending), every uncached row, the last row, and the
 * `want` reused rows with the largest dev[] (dev indexed like sel). Shrinks in place. */
static rk_status select_rows(const struct prompt *pr, size_t *sel, size_t *k, const float *dev,
                             size_t want)
{
    size_t nre = 0;
    for (size_t i = 0; i < *k; i++)
        nre += pr->seg[sel[i]] && sel[i] != pr->n - 1;
    if (want >= nre)
        return RK_OK;
    float *rd = rk_malloc((nre ? nre : 1) * sizeof(float));
    uint32_t *top = rk_malloc((want ? want : 1) * sizeof(uint32_t));
    size_t *remap = rk_malloc((nre ? nre : 1) * sizeof(size_t));
    rk_status st = RK_ERR_NOMEM;
    if (rd && top && remap) {
        size_t j = 0;
        for (size_t i = 0; i < *k; i++)
            if (pr->seg[sel[i]] && sel[i] != pr->n - 1) {
                rd[j] = dev[i];
                remap[j++] = i;
            }
        st = bl_select_top(rd, nre, want, top);
    }
    if (st == RK_OK) {
        unsigned char *keep = rk_calloc(*k, 1);
        if (!keep) {
            st = RK_ERR_NOMEM;
        } else {
            for (size_t i = 0; i < *k; i++)
                keep[i] = !pr->seg[sel[i]] || sel[i] == pr->n - 1;
            for (size_t t = 0; t < want; t++)
                keep[remap[top[t]]] = 1;
            size_t o = 0;
            for (size_t i = 0; i < *k; i++)
                if (keep[i])
                    sel[o++] = sel[i];
            *k = o;
            rk_free(keep);
        }
    }
    rk_free(rd);
    rk_free(top);
    rk_free(remap);
    return st;
}

rk_status bl_select_parse(const char *name, bl_select *out)
{
    if (name && !strcmp(name, "deviation"))
        *out = BL_SELECT_DEVIATION;
    else if (name && !strcmp(name, "attention"))
        *out = BL_SELECT_ATTENTION;
    else if (name && !strcmp(name, "lookahead"))
        *out = BL_SELECT_LOOKAHEAD;
    else
        return rk_error_set(RK_ERR_INVALID, "unknown selection '%s' (deviation, attention, lookahead)",
                            name ? name : "");
    return RK_OK;
}

const char *bl_select_name(bl_select s)
{
    return s == BL_SELECT_DEVIATION   ? "deviation"
           : s == BL_SELECT_ATTENTION ? "attention"
           : s == BL_SELECT_LOOKAHEAD ? "lookahead"
                                      : "unknown";
}

/* The first of the query's rows: the prompt's trailing uncached rows (at most
 * BL_SELECT_QUERY_ROWS), or the last row alone when it is cached. */
static size_t query_row0(const struct prompt *pr)
{
    const size_t n = pr->n;
    size_t q0 = n - 1;
    if (!pr->seg[n - 1])
        while (q0 > 0 && !pr->seg[q0 - 1] && n - q0 < BL_SELECT_QUERY_ROWS)
            q0--;
    return q0;
}

/* att[r] (n floats) = the attention the query's rows (query_row0) pay row r, summed over
 * layers [l0, l1) of seq and over those rows (each row's mean over heads). The rows start from
 * their states entering l0 (rows of h: every row ran the layers before the check layer, so
 * those states are exact) and run each layer on seq, their K/V written into seq at their
 * slots (slot = position = row). With `before`, the uncached rows ahead of the query's run
 * each layer first, only to give their keys; without it, seq must hold those already. *tl:
 * token-layers computed.
 *
 * BL_SELECT_ATTENTION: seq is the probe's scratch sequence, which holds every row's fresh K/V
 * of the check layer c, and [l0, l1) = [c, c + 1): the weights are exactly a full prefill's at
 * layer c (the query's K/V written again are the same values).
 * BL_SELECT_LOOKAHEAD: seq is the prompt's sequence with the cached rows' K/V of every layer
 * imported, [l0, l1) = [c, L) and `before`: a naive pass, as naive reuse computes those
 * layers. The uncached rows' K/V it writes are overwritten when the selected rows (every
 * uncached row and the last row among them) run those layers; the cached rows' are not
 * touched. */
static rk_status query_attention(eng_backend *be, eng_seq *seq, const eng_hidden *h, const struct prompt *pr,
                                 int l0, int l1, bool before, float *att, double *tl)
{
    const size_t n = pr->n;
    const size_t q0 = query_row0(pr), kq = n - q0;
    size_t ku = 0; /* uncached rows before the query's that run too */
    for (size_t i = 0; before && i < q0; i++)
        ku += !pr->seg[i];
    eng_hidden *hu = NULL, *hq = NULL;
    size_t *idx = rk_malloc((ku + kq) * sizeof(size_t)), *bounds = rk_malloc((n + 1) * sizeof(size_t));
    int32_t *pos = rk_malloc((ku + kq) * sizeof(int32_t));
    rk_status st = RK_ERR_NOMEM;
    if (!idx || !bounds || !pos)
        goto out;
    for (size_t i = 0, j = 0; i < n; i++)
        if ((before && i < q0 && !pr->seg[i]) || i >= q0) {
            idx[j] = i;
            pos[j++] = pr->pos[i];
        }
    for (size_t i = 0; i <= n; i++)
        bounds[i] = i;
    if ((st = eng_hidden_new(be, kq, &hq)) != RK_OK || (st = eng_hidden_gather(hq, h, idx + ku, kq)) != RK_OK)
        goto out;
    if (ku && ((st = eng_hidden_new(be, ku, &hu)) != RK_OK || (st = eng_hidden_gather(hu, h, idx, ku)) != RK_OK))
        goto out;
    memset(att, 0, n * sizeof(float));
    for (int l = l0; l < l1; l++) {
        if (ku && (st = eng_layer_forward(seq, l, hu, ku, pos, pos, NULL, NULL)) != RK_OK)
            goto out;
        /* every query row's mass added to att, row by row, by the backend */
        eng_attn_groups ag = {.n_groups = n, .bounds = bounds, .mass = att, .mass_add_rows = true};
        if ((st = eng_layer_forward_ex(seq, l, hq, kq, pos + ku, pos + ku, NULL, NULL, &ag)) != RK_OK)
            goto out;
    }
    *tl = (double)(ku + kq) * (l1 - l0);
out:
    eng_hidden_free(hu);
    eng_hidden_free(hq);
    rk_free(idx);
    rk_free(bounds);
    rk_free(pos);
    return st;
}

static rk_status assemble_cacheblend(eng_model *m, eng_backend *be, eng_seq *s,
                                     struct prompt *pr, const bl_params *p, float *logits,
                                     bl_stats *stats)
{
    const eng_model_info *mi = eng_model_get_info(m);
    const size_t n = pr->n, w = (size_t)mi->n_kv_heads * (size_t)mi->head_dim;
    const int L = mi->n_layers;
    /* Cache-Craft's selection is made before any layer runs: from there on it is naive
     * assembly with the selected rows uncached */
    const bool naive = p->mode == BL_NAIVE || p->mode == BL_CACHECRAFT;
    int c = naive ? 0 : p->check_layer;
    if (c >= L)
        c = L; /* no layer left to check: everything before it ran for all rows */
    bl_schedule sched = p->schedule.first > 0 ? p->schedule : bl_schedule_flat(p->ratio);
    size_t nreused = 0;
    for (size_t i = 0; i < n; i++)
        nreused += pr->seg[i] != NULL;

    eng_hidden *h = NULL, *hs = NULL;
    eng_seq *scratch = NULL;
    size_t *sel = rk_malloc(n * sizeof(size_t));
    int32_t *posb = rk_malloc(n * sizeof(int32_t));
    float *kf = rk_malloc(n * w * sizeof(float)), *vf = rk_malloc(n * w * sizeof(float));
    float *dev = rk_malloc(n * sizeof(float));
    double computed = 0; /* token-layers */
    rk_status st = RK_ERR_NOMEM;
    if (!sel || !posb || !kf || !vf || !dev)
        goto out;
    if ((st = eng_hidden_new(be, n, &h)) != RK_OK)
        goto out;

    uint64_t tp = rk_now_ns();
    size_t k = 0;
    if (naive) { /* only uncached rows, every layer */
        for (size_t i = 0; i < n; i++)
            if (!pr->seg[i])
                sel[k++] = i;
    } else {
        for (size_t i = 0; i < n; i++)
            sel[k++] = i;
    }
    for (size_t i = 0; i < k; i++)
        posb[i] = pr->tokens[sel[i]];
    if ((st = eng_embed(be, h, 0, posb, k)) != RK_OK)
        goto out;
    /* layers before the check layer: every row (their KV is exact there; layer 0's K/V do not
     * depend on context at all), so the containers' KV of those layers would only be
     * overwritten: neither waited for nor imported */
    if (pr->ld && k == n && c > 0)
        bl_loader_skip(pr->ld, c - 1);
    if ((st = run_layers(s, h, sel, k, pr, 0, c, posb, NULL, NULL)) != RK_OK)
        goto out;
    computed += (double)k * c;
    phase_end(stats, BL_PHASE_FULL, &tp);

    if (!naive && c < L) {
        /* fresh K/V of every row at the check layer, written into a scratch sequence so that
         * the real cache keeps its cached K/V for the rows that are not selected: the layer's
         * norm and K/V projection only (eng_layer_kv; the selected rows run the whole layer
         * below), not counted as a computed layer */
        if ((st = eng_seq_new(be, n, &scratch)) != RK_OK)
            goto out;
        for (size_t i = 0; i < k; i++)
            posb[i] = pr->pos[sel[i]];
        if ((st = eng_layer_kv(scratch, c, h, k, posb, posb)) != RK_OK)
            goto out;
        phase_end(stats, BL_PHASE_PROBE, &tp);
        /* deviations where the KV lives: the probe's fresh K/V (scratch, slot = row) against the
         * cached K/V the prompt's sequence holds at the check layer (slot = row; uncached rows'
         * values there are not looked at) */
        if (pr->ld && (st = bl_loader_import(pr->ld, s, c, pr->pos)) != RK_OK)
            goto out;
        if ((st = eng_kv_deviation(scratch, s, c, 0, n, p->deviation_v, kf)) != RK_OK)
            goto out;
        for (size_t i = 0; i < k; i++)
            dev[i] = pr->seg[sel[i]] ? kf[sel[i]] : 0;
        if (p->select != BL_SELECT_DEVIATION) { /* weighted by the query's attention */
            const bool ahead = p->select == BL_SELECT_LOOKAHEAD;
            double tl = 0;
            float *att = rk_malloc(n * sizeof(float));
            st = att ? RK_OK : RK_ERR_NOMEM;
            if (st == RK_OK && ahead && pr->ld) /* the cached rows' K/V of every later layer */
                st = bl_loader_import(pr->ld, s, L - 1, pr->pos);
            if (st == RK_OK)
                st = ahead ? query_attention(be, s, h, pr, c, L, true, att, &tl)
                           : query_attention(be, scratch, h, pr, c, c + 1, false, att, &tl);
            for (size_t i = 0; st == RK_OK && i < k; i++)
                dev[i] *= att[sel[i]];
            rk_free(att);
            if (st != RK_OK)
                goto out;
            computed += tl;
        }
        if ((st = select_rows(pr, sel, &k, dev, bl_select_count(nreused, bl_schedule_ratio(&sched, 0)))) != RK_OK)
            goto out;
        /* the selected rows' hidden states entering layer c */
        if ((st = eng_hidden_new(be, n, &hs)) != RK_OK)
            goto out;
        size_t *idx = rk_malloc((k ? k : 1) * sizeof(size_t));
        if (!idx) {
            st = RK_ERR_NOMEM;
            goto out;
        }
        for (size_t i = 0; i < k; i++)
            idx[i] = sel[i]; /* rows of h are rows of the prompt (k was n) */
        st = eng_hidden_gather(hs, h, idx, k);
        rk_free(idx);
        if (st != RK_OK)
            goto out;
        eng_hidden *t = h;
        h = hs;
        hs = t;
        phase_end(stats, BL_PHASE_SELECT, &tp);
        /* from the check layer on: the selection, shrinking with a gradual schedule */
        for (int l = c; l < L; l++) {
            size_t next_want = bl_select_count(nreused, bl_schedule_ratio(&sched, l - c + 1));
            bool shrink = l + 1 < L && next_want < bl_select_count(nreused, bl_schedule_ratio(&sched, l - c));
            if ((st = run_layers(s, h, sel, k, pr, l, l + 1, posb, shrink ? kf : NULL, shrink ? vf : NULL)) != RK_OK)
                goto out;
            computed += (double)k;
            if (shrink) {
                size_t before = k;
                if ((st = prompt_load_layer(mi, pr, l)) != RK_OK)
                    goto out;
                for (size_t i = 0; i < k; i++)
                    dev[i] = pr->seg[sel[i]] ? deviation(mi, pr, sel[i], l, kf + i * w, vf + i * w, p->deviation_v) : 0;
                size_t *old = rk_malloc(before * sizeof(size_t));
                if (!old) {
                    st = RK_ERR_NOMEM;
                    goto out;
                }
                memcpy(old, sel, before * sizeof(size_t));
                if ((st = select_rows(pr, sel, &k, dev, next_want)) != RK_OK) {
                    rk_free(old);
                    goto out;
                }
                /* compact h to the surviving rows (positions within the old selection) */
                size_t *keep = rk_malloc((k ? k : 1) * sizeof(size_t));
                if (!keep) {
                    rk_free(old);
                    st = RK_ERR_NOMEM;
                    goto out;
                }
                for (size_t i = 0, j = 0; i < before && j < k; i++)
                    if (old[i] == sel[j])
                        keep[j++] = i;
                st = eng_hidden_gather(hs, h, keep, k);
                rk_free(keep);
                rk_free(old);
                if (st != RK_OK)
                    goto out;
                t = h;
                h = hs;
                hs = t;
            }
        }
        phase_end(stats, BL_PHASE_PARTIAL, &tp);
    } else if (naive) {
        if ((st = run_layers(s, h, sel, k, pr, 0, L, posb, NULL, NULL)) != RK_OK)
            goto out;
        computed += (double)k * L;
        phase_end(stats, BL_PHASE_FULL, &tp);
    }
    /* the last row is always selected and always last in sel */
    size_t last = k - 1;
    if ((st = eng_logits(be, h, &last, 1, logits)) != RK_OK)
        goto out;
    phase_end(stats, BL_PHASE_LOGITS, &tp);
    if (stats) {
        stats->reused_tokens = nreused;
        stats->recomputed = k;
        stats->token_layers = computed / ((double)n * L);
    }
out:
    eng_hidden_free(h);
    eng_hidden_free(hs);
    eng_seq_free(scratch);
    rk_free(sel);
    rk_free(posb);
    rk_free(kf);
    rk_free(vf);
    rk_free(dev);
    return st;
}

/* ---- Cache-Craft --------------------------------------------------------------------------- */

/* Per segment, the variant Cache-Craft uses (lowest CFO): eff[i] is segs[i] with kv set to that
 * variant's KV (kv and block NULL for uncached segments; the segment's own kv or block when it
 * has no variants), metas[i] its metadata, cfos[i] its CFO. The three arrays are allocated
 * here (caller frees with rk_free). */
static rk_status craft_choose(const eng_model *m, const bl_segment *segs, const bl_craft_segment *craft,
                              size_t nseg, double alpha,
                              bl_segment **eff_out, const bl_craft_meta ***metas_out, double **cfos_out)
{
    bl_segment *eff = rk_calloc(nseg ? nseg : 1, sizeof(bl_segment));
    const bl_craft_meta **metas = rk_calloc(nseg ? nseg : 1, sizeof(*metas));
    double *cfos = rk_calloc(nseg ? nseg : 1, sizeof(double));
    rk_status st = RK_OK;
    if (!eff || !metas || !cfos) {
        st = RK_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < nseg; i++) {
        eff[i] = segs[i];
        eff[i].kv = NULL;
        eff[i].block = NULL;
        eff[i].container = NULL;
        eff[i].container_len = 0;
        const bl_craft_segment *cs = craft ? &craft[i] : NULL;
        size_t nv = cs ? cs->n_variants : 0;
        if (!seg_cached(&segs[i]) && nv == 0)
            continue; /* uncached: computed from its tokens */
        size_t v = 0;
        if ((st = bl_segment_pick_variant(m, &segs[i], cs, alpha, &v, &cfos[i])) != RK_OK) {
            char why[200]; /* rk_error_msg's buffer is the one rk_error_set writes */
            snprintf(why, sizeof(why), "%s", rk_error_msg());
            rk_error_set(st, "segment %zu: %s", i, why);
            goto fail;
        }
        eff[i].kv = nv ? cs->variants[v].kv : segs[i].kv;
        eff[i].block = nv ? NULL : segs[i].block;
        eff[i].container = nv ? NULL : segs[i].container;
        eff[i].container_len = nv ? 0 : segs[i].container_len;
        metas[i] = nv ? cs->variants[v].meta : NULL;
    }
    *eff_out = eff;
    *metas_out = metas;
    *cfos_out = cfos;
    return RK_OK;
fail:
    rk_free(eff);
    rk_free(metas);
    rk_free(cfos);
    return st;
}

/* Mark for recomputation (seg NULL), in every cached segment, its ceil(CFO * n) tokens
 * with the highest stored inter-chunk attention. Without metadata, or when every score is the
 * same (a standalone variant has none: nothing preceded it), the budget is spread evenly over
 * the chunk instead: token floor((j + 0.5) * n / k) for j < k. */
static rk_status craft_select(struct prompt *pr, const bl_segment *use, const bl_craft_meta *const *metas,
                              const double *cfos, size_t nseg)
{
    size_t row = 1;
    rk_status st = RK_OK;
    for (size_t i = 0; i < nseg && st == RK_OK; row += use[i].n, i++) {
        size_t n = use[i].n, k = seg_cached(&use[i]) ? bl_select_count(n, (float)cfos[i]) : 0;
        if (k == 0)
            continue;
        uint32_t *sel = rk_malloc(k * sizeof(uint32_t));
        if (!sel)
            return RK_ERR_NOMEM;
        const bl_craft_meta *md = metas[i];
        bool flat = true;
        for (size_t t = 1; md && t < n && flat; t++)
            flat = md->token_inter[t] == md->token_inter[0];
        if (flat) {
            for (size_t j = 0; j < k; j++)
                sel[j] = (uint32_t)(((double)j + 0.5) * (double)n / (double)k);
        } else {
            st = bl_select_top(md->token_inter, n, k, sel);
        }
        for (size_t j = 0; j < k && st == RK_OK; j++)
            pr->seg[row + sel[j]] = NULL;
        rk_free(sel);
    }
    return st;
}

/* ---- APE ----------------------------------------------------------------------------------- */

/* The three attention groups of APE rows: BOS (the shared prefix), the chunks (temperature T,
 * weights times S), and everything after them (the query and decoded tokens). */
static void ape_groups(const bl_params *p, size_t ctx_end, size_t end, size_t bounds[4], float temp[3],
                       float lscale[3], eng_attn_groups *ag)
{
    bounds[0] = 0;
    bounds[1] = 1;
    bounds[2] = ctx_end;
    bounds[3] = end;
    temp[0] = temp[2] = 1.0f;
    temp[1] = p->ape_t;
    lscale[0] = lscale[2] = 0.0f;
    lscale[1] = logf(p->ape_s);
    *ag = (eng_attn_groups){.n_groups = 3, .bounds = bounds, .temperature = temp, .log_scale = lscale};
}

/* Run rows (tokens at pos/slots) through every layer with APE's groups; h holds n rows. */
static rk_status ape_rows(eng_backend *be, eng_seq *s, const bl_params *p, size_t ctx_end, const int32_t *tokens,
                          size_t n, const int32_t *pos, const int32_t *slots, float *logits)
{
    const eng_model_info *mi = eng_model_get_info(eng_backend_model(be));
    size_t bounds[4];
    float temp[3], lscale[3];
    eng_attn_groups ag;
    ape_groups(p, ctx_end, (size_t)slots[n - 1] + 1, bounds, temp, lscale, &ag);
    eng_hidden *h = NULL;
    rk_status st = eng_hidden_new(be, n, &h);
    if (st == RK_OK)
        st = eng_embed(be, h, 0, tokens, n);
    for (int l = 0; l < mi->n_layers && st == RK_OK; l++)
        st = eng_layer_forward_ex(s, l, h, n, pos, slots, NULL, NULL, &ag);
    size_t last = n - 1;
    if (st == RK_OK)
        st = eng_logits(be, h, &last, 1, logits);
    eng_hidden_free(h);
    return st;
}

static bool ape_params_ok(const bl_params *p)
{
    return p->ape_t > 0.0f && isfinite(p->ape_t) && p->ape_s > 0.0f && isfinite(p->ape_s);
}

/* BOS at slot 0 / position 0; chunk i in the next n_i slots at positions 1..n_i (uncached
 * segments are prefilled standalone first, as APE encodes every context on its own); the
 * query after the last chunk's slots at positions max n_i + 1, ... */
static rk_status assemble_ape(eng_model *m, eng_backend *be, eng_seq *s, const bl_segment *segs, size_t nseg,
                              const int32_t *query, size_t nq, const bl_params *p, float *logits,
                              bl_stats *stats)
{
    const eng_model_info *mi = eng_model_get_info(m);
    if (nq == 0)
        return rk_error_set(RK_ERR_INVALID, "ape needs a query after the chunks");
    size_t maxn = 0, ctx_end = 1, cached = 0;
    for (size_t i = 0; i < nseg; i++) {
        maxn = segs[i].n > maxn ? segs[i].n : maxn;
        ctx_end += segs[i].n;
        cached += seg_cached(&segs[i]) ? segs[i].n : 0;
    }
    if (maxn + nq + 1 > (size_t)mi->max_seq)
        return rk_error_set(RK_ERR_RANGE, "ape prompt reaches position %zu beyond the context of %d", maxn + nq,
                            mi->max_seq);
    size_t np = (maxn > nq ? maxn : nq);
    int32_t *pos = rk_malloc(np * sizeof(int32_t)), *slots = rk_malloc(np * sizeof(int32_t));
    float *tmp = NULL;
    rk_status st = pos && slots ? RK_OK : RK_ERR_NOMEM;
    int32_t bos = mi->bos, p0 = 0;
    if (st == RK_OK)
        st = eng_prefill(s, &bos, 1, &p0, ENG_LOGITS_NONE, NULL);
    for (size_t i = 0; i < np && st == RK_OK; i++)
        pos[i] = (int32_t)(i + 1);
    for (size_t i = 0, off = 1; i < nseg && st == RK_OK; off += segs[i].n, i++) {
        if (seg_cached(&segs[i])) {
            st = seg_import(s, off, pos, &segs[i], p->decode);
            continue;
        }
        if (!tmp && !(tmp = rk_malloc(eng_kv_floats(m, maxn) * sizeof(float)))) {
            st = RK_ERR_NOMEM;
            break;
        }
        if ((st = bl_chunk_prefill(m, be, segs[i].tokens, segs[i].n, tmp)) == RK_OK)
            st = eng_kv_import(s, off, segs[i].n, pos, tmp);
    }
    for (size_t j = 0; j < nq && st == RK_OK; j++) {
        pos[j] = (int32_t)(maxn + 1 + j);
        slots[j] = (int32_t)(ctx_end + j);
    }
    if (st == RK_OK)
        st = ape_rows(be, s, p, ctx_end, query, nq, pos, slots, logits);
    if (stats) {
        size_t n = ctx_end + nq, computed = n - cached;
        stats->reused_tokens = cached;
        stats->recomputed = computed;
        stats->token_layers = (double)computed / (double)n;
        stats->ape_ctx_end = ctx_end;
    }
    rk_free(pos);
    rk_free(slots);
    rk_free(tmp);
    return st;
}

rk_status bl_ape_decode(eng_backend *be, eng_seq *s, size_t ctx_end, const bl_params *p, int32_t token,
                        float *logits)
{
    if (!be || !s || !p || !logits || eng_seq_backend(s) != be)
        return rk_error_set(RK_ERR_INVALID, "bl_ape_decode: bad arguments");
    size_t slot = eng_seq_len(s);
    if (ctx_end < 1 || ctx_end > slot || !ape_params_ok(p))
        return rk_error_set(RK_ERR_INVALID, "bl_ape_decode: context end %zu (length %zu) or T/S out of range",
                            ctx_end, slot);
    const eng_model_info *mi = eng_model_get_info(eng_backend_model(be));
    int32_t pos = eng_seq_next_pos(s), sl = (int32_t)slot;
    if (slot >= eng_seq_capacity(s) || pos >= mi->max_seq)
        return rk_error_set(RK_ERR_RANGE, "bl_ape_decode: sequence full");
    rk_status st = ape_rows(be, s, p, ctx_end, &token, 1, &pos, &sl, logits);
    if (st != RK_OK)
        eng_seq_truncate(s, slot); /* keep eng_decode's promise: no growth on failure */
    return st;
}

rk_status bl_assemble(eng_model *m, eng_backend *be, eng_seq *s, const bl_segment *segs,
                      size_t nseg, const int32_t *query, size_t nquery, const bl_params *p,
                      float *logits, bl_stats *stats)
{
    uint64_t t0 = rk_now_ns();
    const eng_model_info *mi = eng_model_get_info(m);
    if (eng_seq_len(s) != 0)
        return rk_error_set(RK_ERR_INVALID, "bl_assemble needs an empty sequence");
    if ((unsigned)p->mode > BL_APE)
        return rk_error_set(RK_ERR_INVALID, "unknown blend mode %d", (int)p->mode);
    if (!(p->ratio >= 0.0f && p->ratio <= 1.0f) || p->check_layer < 1)
        return rk_error_set(RK_ERR_INVALID, "ratio %g or check layer %d out of range", (double)p->ratio, p->check_layer);
    if ((unsigned)p->select > BL_SELECT_LOOKAHEAD)
        return rk_error_set(RK_ERR_INVALID, "unknown selection %d", (int)p->select);
    if (p->mode == BL_CACHEBLEND && p->select == BL_SELECT_LOOKAHEAD && p->schedule.first > 0)
        return rk_error_set(RK_ERR_INVALID, "the lookahead selection ranks once, at the check layer: no gradual "
                            "schedule with it");
    if (p->mode == BL_CACHECRAFT && !(p->alpha >= 0.0f && isfinite(p->alpha)))
        return rk_error_set(RK_ERR_INVALID, "cachecraft alpha %g must be finite and >= 0", (double)p->alpha);
    if (p->mode == BL_APE && !ape_params_ok(p))
        return rk_error_set(RK_ERR_INVALID, "ape T %g and S %g must be finite and > 0", (double)p->ape_t,
                            (double)p->ape_s);
    if (nseg == 0 && nquery == 0)
        return rk_error_set(RK_ERR_INVALID, "empty prompt");
    for (size_t i = 0; i < nseg; i++) {
        if (!!segs[i].kv + !!segs[i].block + !!segs[i].container > 1)
            return rk_error_set(RK_ERR_INVALID, "segment %zu has more than one of KV floats, a KV block and a "
                                "container", i);
        if (segs[i].container && segs[i].container_len == 0)
            return rk_error_set(RK_ERR_INVALID, "segment %zu: empty container", i);
        if (segs[i].block && (eng_kvblock_backend(segs[i].block) != be || eng_kvblock_tokens(segs[i].block) != segs[i].n))
            return rk_error_set(RK_ERR_INVALID, "segment %zu: its KV block holds %zu tokens on %s backend, the segment "
                                "%zu tokens on this one", i, eng_kvblock_tokens(segs[i].block),
                                eng_kvblock_backend(segs[i].block) == be ? "this" : "another", segs[i].n);
    }
    bl_loader *ld = NULL;   /* container segments' layers, decoded ahead of the layer computed */
    bl_segment *eff = NULL; /* Cache-Craft: the segments with their chosen variants */
    const bl_craft_meta **metas = NULL;
    double *cfos = NULL;
    rk_status st;
    if (p->mode == BL_CACHECRAFT && (st = craft_choose(m, segs, p->craft, nseg, p->alpha, &eff, &metas, &cfos)) != RK_OK)
        return st;
    const bl_segment *use = eff ? eff : segs;
    struct prompt pr;
    st = prompt_build(mi, use, nseg, query, nquery, &pr);
    if (st != RK_OK)
        goto done;
    if (pr.n > eng_seq_capacity(s)) {
        prompt_free(&pr);
        st = rk_error_set(RK_ERR_RANGE, "prompt of %zu tokens exceeds the sequence's %zu slots", pr.n, eng_seq_capacity(s));
        goto done;
    }
    bl_stats local = {0};
    local.prompt_tokens = pr.n;
    uint64_t tp = rk_now_ns();
    if (p->mode == BL_APE) {
        st = assemble_ape(m, be, s, segs, nseg, query, nquery, p, logits, &local);
        phase_end(&local, BL_PHASE_FULL, &tp);
    } else if (p->mode == BL_FULL || p->mode == BL_PREFIX) {
        size_t done = 0;
        if (p->mode == BL_PREFIX && nseg > 0 && seg_cached(&segs[0])) {
            /* BOS, then the first chunk's cache: exactly the prompt's prefix */
            if ((st = eng_prefill(s, pr.tokens, 1, pr.pos, ENG_LOGITS_NONE, NULL)) == RK_OK)
                st = import_cached(s, segs, 1, pr.pos, p->decode, false);
            done = 1 + segs[0].n;
            local.reused_tokens = segs[0].n;
            phase_end(&local, BL_PHASE_IMPORT, &tp);
        }
        if (st == RK_OK && done == pr.n) /* the whole prompt was the prefix: the last row's logits */
            st = rk_error_set(RK_ERR_INVALID, "prefix mode needs at least one token after the cached prefix");
        if (st == RK_OK)
            st = eng_prefill(s, pr.tokens + done, pr.n - done, pr.pos + done, ENG_LOGITS_LAST, logits);
        phase_end(&local, BL_PHASE_FULL, &tp);
        local.recomputed = pr.n - local.reused_tokens; /* BOS is computed too */
        local.token_layers = (double)local.recomputed / (double)pr.n;
    } else {
        if (pr.seg[pr.n - 1]) /* the last row must be computed: it makes the logits */
            pr.seg[pr.n - 1] = NULL;
        size_t reused = 0;
        for (size_t i = 0; i < pr.n; i++)
            reused += pr.seg[i] != NULL;
        size_t *row0 = rk_malloc((nseg ? nseg : 1) * sizeof(size_t));
        st = row0 ? RK_OK : RK_ERR_NOMEM;
        for (size_t i = 0, r = 1; st == RK_OK && i < nseg; r += use[i].n, i++)
            row0[i] = r;
        if (st == RK_OK)
            st = bl_loader_start(be, mi, use, nseg, row0, p->decode, &ld);
        pr.ld = ld;
        pr.seq = s;
        if (st == RK_OK)
            st = import_cached(s, use, nseg, pr.pos, p->decode, true);
        if (st == RK_OK && eff)
            st = craft_select(&pr, use, metas, cfos, nseg);
        phase_end(&local, BL_PHASE_IMPORT, &tp);
        if (st == RK_OK)
            st = assemble_cacheblend(m, be, s, &pr, p, logits, &local);
        if (st == RK_OK)
            st = bl_loader_finish(ld);
        if (eff)
            local.reused_tokens = reused; /* before repair, as for CacheBlend */
        bl_loader_free(ld, &local);
        rk_free(row0);
    }
    prompt_free(&pr);
    local.ms = (double)(rk_now_ns() - t0) / 1e6;
    if (stats)
        *stats = local;
done:
    rk_free(eff);
    rk_free(metas);
    rk_free(cfos);
    return st;
}
