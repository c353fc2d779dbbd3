/* craft.c — Cache-Craft chunk-cache variants: capturing a chunk's in-context KV with its
 * attention metadata, the metadata's byte format, and the per-chunk reuse budget (CFO). */
#include <math.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/blend.h"

#define CRAFT_MAGIC 0x46434b52u /* "RKCF" little-endian */
#define CRAFT_VERSION 1
#define CRAFT_MAX_TOKENS (1u << 20)
#define CRAFT_MAX_LAYERS 1024u
#define CRAFT_MAX_PREV 4096u /* keeps the O(n^2) overlap and order measures cheap */
#define CRAFT_HEADER 24 /* magic, version, flags, n_tokens, n_layers, n_prev, prev_tokens */

void bl_craft_meta_clear(bl_craft_meta *meta)
{
    if (!meta)
        return;
    rk_free(meta->prev_ids);
    rk_free(meta->inter);
    rk_free(meta->intra);
    rk_free(meta->token_inter);
    memset(meta, 0, sizeof(*meta));
}

/* Allocate the arrays of a metadata whose counts are set; zero-filled. */
static rk_status meta_alloc(bl_craft_meta *meta)
{
    meta->prev_ids = rk_calloc(meta->n_prev ? meta->n_prev : 1, sizeof(uint64_t));
    meta->inter = rk_calloc(meta->n_layers ? meta->n_layers : 1, sizeof(float));
    meta->intra = rk_calloc(meta->n_layers ? meta->n_layers : 1, sizeof(float));
    meta->token_inter = rk_calloc(meta->n_tokens ? meta->n_tokens : 1, sizeof(float));
    if (!meta->prev_ids || !meta->inter || !meta->intra || !meta->token_inter) {
        bl_craft_meta_clear(meta);
        return RK_ERR_NOMEM;
    }
    return RK_OK;
}

rk_status bl_variant_capture(eng_model *m, eng_backend *be, const bl_segment *segs, size_t nseg,
                             const uint64_t *prev_ids, float *kv_out, bl_craft_meta *meta)
{
    if (!m || !be || !segs || nseg == 0 || !kv_out || !meta || (nseg > 1 && !prev_ids))
        return rk_error_set(RK_ERR_INVALID, "bl_variant_capture: bad arguments");
    memset(meta, 0, sizeof(*meta));
    /* the one-pass capture asked for the last segment only: the same prefill, the same sums */
    float **outs = rk_calloc(nseg, sizeof(float *));
    bl_craft_meta *metas = rk_calloc(nseg, sizeof(bl_craft_meta));
    rk_status st = RK_ERR_NOMEM;
    if (outs && metas) {
        outs[nseg - 1] = kv_out;
        st = bl_variant_capture_all(m, be, segs, nseg, prev_ids, outs, metas);
        if (st == RK_OK)
            *meta = metas[nseg - 1]; /* its arrays move to the caller */
    }
    rk_free(outs);
    rk_free(metas);
    return st;
}

rk_status bl_variant_capture_all(eng_model *m, eng_backend *be, const bl_segment *segs, size_t nseg,
                                 const uint64_t *ids, float *const *kv_out, bl_craft_meta *metas)
{
    if (!m || !be || !segs || nseg == 0 || !kv_out || !metas || (nseg > 1 && !ids))
        return rk_error_set(RK_ERR_INVALID, "bl_variant_capture_all: bad arguments");
    for (size_t i = 0; i < nseg; i++)
        memset(&metas[i], 0, sizeof(metas[i]));
    const eng_model_info *mi = eng_model_get_info(m);
    const size_t L = (size_t)mi->n_layers;
    size_t n = 1, last = 0; /* last: one past the last segment captured (the prefill stops there) */
    for (size_t i = 0; i < nseg; i++) {
        if (!segs[i].tokens || segs[i].n == 0)
            return rk_error_set(RK_ERR_INVALID, "bl_variant_capture_all: segment %zu is empty", i);
        if (segs[i].n > CRAFT_MAX_TOKENS)
            return rk_error_set(RK_ERR_LIMIT, "bl_variant_capture_all: segment %zu too large for metadata", i);
        n += segs[i].n;
        if (kv_out[i])
            last = i + 1;
    }
    if (last == 0)
        return RK_OK; /* nothing asked */
    if (n > (size_t)mi->max_seq)
        return rk_error_set(RK_ERR_RANGE, "bl_variant_capture_all: %zu tokens exceed the context of %d", n, mi->max_seq);
    if (nseg - 1 > CRAFT_MAX_PREV || L > CRAFT_MAX_LAYERS)
        return rk_error_set(RK_ERR_LIMIT, "bl_variant_capture_all: context or model too large for metadata");
    rk_status st = RK_OK;
    size_t prev_tokens = 0;
    for (size_t i = 0; i < nseg && st == RK_OK; i++) {
        if (kv_out[i]) {
            metas[i].n_tokens = (uint32_t)segs[i].n;
            metas[i].n_layers = (uint32_t)L;
            metas[i].n_prev = (uint32_t)i;
            metas[i].prev_tokens = (uint32_t)prev_tokens;
            if ((st = meta_alloc(&metas[i])) == RK_OK && i)
                memcpy(metas[i].prev_ids, ids, i * sizeof(uint64_t));
        }
        prev_tokens += segs[i].n;
    }

    eng_seq *s = NULL;
    eng_hidden *h = NULL;
    int32_t *tok = rk_malloc(n * sizeof(int32_t)), *pos = rk_malloc(n * sizeof(int32_t));
    size_t *bounds = rk_malloc((nseg + 2) * sizeof(size_t));
    const size_t G = last + 1; /* attention groups: BOS, then segments 0..last-1 */
    float *mass = rk_malloc(n * G * sizeof(float));
    double *tsum = rk_calloc(n, sizeof(double)); /* per row: its mass on the segments before its own */
    if (st == RK_OK && (!tok || !pos || !bounds || !mass || !tsum))
        st = RK_ERR_NOMEM;
    if (st != RK_OK)
        goto fail;
    tok[0] = mi->bos;
    bounds[0] = 0;
    bounds[1] = 1;
    for (size_t i = 0, r = 1; i < nseg; i++) {
        memcpy(tok + r, segs[i].tokens, segs[i].n * sizeof(int32_t));
        r += segs[i].n;
        bounds[i + 2] = r;
    }
    for (size_t i = 0; i < n; i++)
        pos[i] = (int32_t)i;
    /* rows past the last segment captured change nothing before them (causal): not computed */
    const size_t rows = bounds[last + 1];
    if ((st = eng_seq_new(be, rows, &s)) != RK_OK || (st = eng_hidden_new(be, rows, &h)) != RK_OK ||
        (st = eng_embed(be, h, 0, tok, rows)) != RK_OK)
        goto fail;
    eng_attn_groups ag = {.n_groups = G, .bounds = bounds, .mass = mass};
    for (size_t l = 0; l < L; l++) {
        if ((st = eng_layer_forward_ex(s, (int)l, h, rows, pos, pos, NULL, NULL, &ag)) != RK_OK)
            goto fail;
        for (size_t j = 0; j < last; j++) {
            if (!kv_out[j])
                continue;
            /* the same sums, in the same order, as bl_variant_capture's for this segment:
             * groups 1..j are the segments before it, group j + 1 the segment itself */
            double inter = 0, intra = 0;
            for (size_t t = 0; t < segs[j].n; t++) {
                const size_t r = bounds[j + 1] + t;
                const float *row = mass + r * G;
                double e = 0;
                for (size_t g = 1; g <= j; g++)
                    e += row[g];
                inter += e;
                intra += row[j + 1];
                tsum[r] += e;
            }
            metas[j].inter[l] = (float)inter;
            metas[j].intra[l] = (float)intra;
        }
    }
    for (size_t j = 0; j < last && st == RK_OK; j++) {
        if (!kv_out[j])
            continue;
        for (size_t t = 0; t < segs[j].n; t++)
            metas[j].token_inter[t] = (float)(tsum[bounds[j + 1] + t] / (double)L);
        st = eng_kv_export(s, bounds[j + 1], segs[j].n, kv_out[j]);
    }
fail:
    if (st != RK_OK)
        for (size_t i = 0; i < nseg; i++)
            bl_craft_meta_clear(&metas[i]);
    eng_hidden_free(h);
    eng_seq_free(s);
    rk_free(tok);
    rk_free(pos);
    rk_free(bounds);
    rk_free(mass);
    rk_free(tsum);
    return st;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Every value finite and >= 0 (masses are probabilities summed over rows). */
static bool floats_ok(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(isfinite(v[i]) && v[i] >= 0.0f))
            return false;
    return true;
}

rk_status bl_craft_encode(const bl_craft_meta *meta, rk_buf *b)
{
    if (!meta || !b || meta->n_tokens == 0 || meta->n_tokens > CRAFT_MAX_TOKENS || meta->n_layers == 0 ||
        meta->n_layers > CRAFT_MAX_LAYERS || meta->n_prev > CRAFT_MAX_PREV ||
        (meta->n_prev && !meta->prev_ids) || !meta->inter || !meta->intra || !meta->token_inter)
        return rk_error_set(RK_ERR_INVALID, "bl_craft_encode: inconsistent metadata");
    if (!floats_ok(meta->inter, meta->n_layers) || !floats_ok(meta->intra, meta->n_layers) ||
        !floats_ok(meta->token_inter, meta->n_tokens))
        return rk_error_set(RK_ERR_INVALID, "bl_craft_encode: masses must be finite and >= 0");
    rk_buf_put_u32(b, CRAFT_MAGIC);
    rk_buf_put_u16(b, CRAFT_VERSION);
    rk_buf_put_u16(b, 0); /* flags */
    rk_buf_put_u32(b, meta->n_tokens);
    rk_buf_put_u32(b, meta->n_layers);
    rk_buf_put_u32(b, meta->n_prev);
    rk_buf_put_u32(b, meta->prev_tokens);
    for (uint32_t i = 0; i < meta->n_prev; i++)
        rk_buf_put_u64(b, meta->prev_ids[i]);
    for (uint32_t l = 0; l < meta->n_layers; l++)
        rk_buf_put_u32(b, f32_bits(meta->inter[l]));
    for (uint32_t l = 0; l < meta->n_layers; l++)
        rk_buf_put_u32(b, f32_bits(meta->intra[l]));
    for (uint32_t t = 0; t < meta->n_tokens; t++)
        rk_buf_put_u32(b, f32_bits(meta->token_inter[t]));
    return b->failed ? RK_ERR_NOMEM : RK_OK;
}

rk_status bl_craft_decode(const void *data, size_t len, bl_craft_meta *meta)
{
    if (!meta || (!data && len))
        return rk_error_set(RK_ERR_INVALID, "bl_craft_decode: bad arguments");
    memset(meta, 0, sizeof(*meta));
    rk_reader r = rk_reader_make(data, len);
    uint32_t magic = rk_reader_u32(&r);
    uint16_t version = rk_reader_u16(&r), flags = rk_reader_u16(&r);
    uint32_t nt = rk_reader_u32(&r), nl = rk_reader_u32(&r), np = rk_reader_u32(&r), ptok = rk_reader_u32(&r);
    if (r.short_read)
        return rk_error_set(RK_ERR_TRUNCATED, "Cache-Craft metadata: %zu bytes, header needs %d", len, CRAFT_HEADER);
    if (magic != CRAFT_MAGIC)
        return rk_error_set(RK_ERR_FORMAT, "Cache-Craft metadata: bad magic");
    if (version != CRAFT_VERSION)
        return rk_error_set(RK_ERR_UNSUPPORTED, "Cache-Craft metadata: version %u (this build reads %d)",
                            (unsigned)version, CRAFT_VERSION);
    if (flags != 0)
        return rk_error_set(RK_ERR_FORMAT, "Cache-Craft metadata: unknown flags 0x%x", (unsigned)flags);
    if (nt == 0 || nt > CRAFT_MAX_TOKENS || nl == 0 || nl > CRAFT_MAX_LAYERS || np > CRAFT_MAX_PREV ||
        (np == 0) != (ptok == 0) || ptok < np)
        return rk_error_set(RK_ERR_FORMAT, "Cache-Craft metadata: counts out of range (tokens %u, layers %u, "
                            "prev %u / %u tokens)", nt, nl, np, ptok);
    /* the exact length before allocating anything: counts are bounded, no overflow */
    size_t need = CRAFT_HEADER + (size_t)np * 8 + (size_t)nl * 8 + (size_t)nt * 4;
    if (len < need)
        return rk_error_set(RK_ERR_TRUNCATED, "Cache-Craft metadata: %zu bytes, needs %zu", len, need);
    if (len > need)
        return rk_error_set(RK_ERR_FORMAT, "Cache-Craft metadata: %zu trailing bytes", len - need);
    meta->n_tokens = nt;
    meta->n_layers = nl;
    meta->n_prev = np;
    meta->prev_tokens = ptok;
    rk_status st = meta_alloc(meta);
    if (st != RK_OK)
        return st;
    for (uint32_t i = 0; i < np; i++)
        meta->prev_ids[i] = rk_reader_u64(&r);
    for (uint32_t l = 0; l < nl; l++)
        meta->inter[l] = bits_f32(rk_reader_u32(&r));
    for (uint32_t l = 0; l < nl; l++)
        meta->intra[l] = bits_f32(rk_reader_u32(&r));
    for (uint32_t t = 0; t < nt; t++)
        meta->token_inter[t] = bits_f32(rk_reader_u32(&r));
    if (r.short_read || rk_reader_left(&r) != 0) { /* cannot happen after the length check */
        bl_craft_meta_clear(meta);
        return rk_error_set(RK_ERR_INTERNAL, "Cache-Craft metadata: length accounting");
    }
    if (!floats_ok(meta->inter, nl) || !floats_ok(meta->intra, nl) || !floats_ok(meta->token_inter, nt)) {
        bl_craft_meta_clear(meta);
        return rk_error_set(RK_ERR_FORMAT, "Cache-Craft metadata: a mass is negative or not finite");
    }
    return RK_OK;
}

double bl_variant_cfo(const bl_craft_meta *meta, size_t chunk_tokens, const uint64_t *cur_prev,
                      size_t n_cur, double alpha)
{
    static const uint64_t none[1] = {0};
    const uint64_t *stored = meta && meta->n_prev ? meta->prev_ids : none;
    size_t ns = meta ? meta->n_prev : 0;
    if (!cur_prev)
        n_cur = 0;
    double cci = meta ? bl_cci(meta->inter, meta->intra, (int)meta->n_layers, chunk_tokens, meta->prev_tokens)
                      : bl_cci(NULL, NULL, 0, chunk_tokens, 0);
    double beta = bl_prefix_overlap(stored, ns, cur_prev ? cur_prev : none, n_cur);
    double gamma = bl_order_penalty(stored, ns, cur_prev ? cur_prev : none, n_cur);
    return bl_cfo(alpha, cci, beta, gamma);
}

rk_status bl_segment_pick_variant(const eng_model *m, const bl_segment *seg, const bl_craft_segment *cs,
                                  double alpha, size_t *variant, double *cfo)
{
    static const bl_craft_segment none = {0};
    const eng_model_info *mi = eng_model_get_info(m);
    if (!cs)
        cs = &none;
    if (cs->n_variants == 0) {
        if (!seg->kv && !seg->block && !seg->container)
            return rk_error_set(RK_ERR_INVALID, "segment is not cached");
        *variant = 0;
        *cfo = bl_variant_cfo(NULL, seg->n, cs->prev_ids, cs->n_prev, alpha);
        return RK_OK;
    }
    if (!cs->variants)
        return rk_error_set(RK_ERR_INVALID, "segment has n_variants but no variants");
    double best = INFINITY;
    for (size_t v = 0; v < cs->n_variants; v++) {
        const bl_craft_meta *md = cs->variants[v].meta;
        if (!cs->variants[v].kv)
            return rk_error_set(RK_ERR_INVALID, "variant %zu has no KV", v);
        if (md && (md->n_tokens != seg->n || md->n_layers != (uint32_t)mi->n_layers ||
                   !md->inter || !md->intra || !md->token_inter || (md->n_prev && !md->prev_ids)))
            return rk_error_set(RK_ERR_INVALID, "variant %zu: metadata of %u tokens x %u layers for a chunk of "
                                "%zu tokens x %d layers", v, md->n_tokens, md->n_layers, seg->n, mi->n_layers);
        double c = bl_variant_cfo(md, seg->n, cs->prev_ids, cs->n_prev, alpha);
        if (c < best) {
            best = c;
            *variant = v;
        }
    }
    *cfo = best;
    return RK_OK;
}
