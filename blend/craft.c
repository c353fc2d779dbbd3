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

/* A capture in progress (bl_capture_start .. bl_capture_free). */
struct bl_capture {
    eng_backend *be;
    bl_segment *segs;        /* (nseg) a copy of the caller's array (tokens borrowed) */
    size_t nseg, last;       /* last: one past the last segment captured (the prefill stops there) */
    size_t L, rows, G;       /* layers, rows prefilled (BOS + segments through last), groups */
    float *const *kv_out;    /* borrowed, (nseg) */
    bl_craft_meta *metas;    /* borrowed, (nseg) */
    eng_seq *s;
    eng_hidden *h;
    int32_t *pos;            /* (rows) positions = slots */
    size_t *bounds;          /* (nseg + 2) group boundaries: BOS, then each segment */
    float *mass;             /* (rows, G) the layer's attention mass per group */
    double *tsum;            /* (rows) per row: its mass on the segments before its own */
    size_t next;             /* the next layer to run; L: done */
    rk_status err;           /* a failed step's status, returned by every later step */
};

void bl_capture_free(bl_capture *c)
{
    if (!c)
        return;
    eng_hidden_free(c->h);
    eng_seq_free(c->s);
    rk_free(c->segs);
    rk_free(c->pos);
    rk_free(c->bounds);
    rk_free(c->mass);
    rk_free(c->tsum);
    rk_free(c);
}

/* A step's failure: every metadata cleared, the status kept for later steps. */
static rk_status capture_fail(bl_capture *c, rk_status st)
{
    for (size_t i = 0; i < c->nseg; i++)
        bl_craft_meta_clear(&c->metas[i]);
    c->err = st;
    return st;
}

rk_status bl_capture_start(eng_model *m, eng_backend *be, const bl_segment *segs, size_t nseg, const uint64_t *ids,
                           float *const *kv_out, bl_craft_meta *metas, bl_capture **out)
{
    if (!out)
        return rk_error_set(RK_ERR_INVALID, "bl_capture_start: bad arguments");
    *out = NULL;
    if (!m || !be || !segs || nseg == 0 || !kv_out || !metas || (nseg > 1 && !ids))
        return rk_error_set(RK_ERR_INVALID, "bl_capture_start: bad arguments");
    for (size_t i = 0; i < nseg; i++)
        memset(&metas[i], 0, sizeof(metas[i]));
    const eng_model_info *mi = eng_model_get_info(m);
    const size_t L = (size_t)mi->n_layers;
    size_t n = 1, last = 0;
    for (size_t i = 0; i < nseg; i++) {
        if (!segs[i].tokens || segs[i].n == 0)
            return rk_error_set(RK_ERR_INVALID, "bl_capture_start: segment %zu is empty", i);
        if (segs[i].n > CRAFT_MAX_TOKENS)
            return rk_error_set(RK_ERR_LIMIT, "bl_capture_start: segment %zu too large for metadata", i);
        n += segs[i].n;
        if (kv_out[i])
            last = i + 1;
    }
    if (last == 0)
        return RK_OK; /* nothing asked */
    if (n > (size_t)mi->max_seq)
        return rk_error_set(RK_ERR_RANGE, "bl_capture_start: %zu tokens exceed the context of %d", n, mi->max_seq);
    if (nseg - 1 > CRAFT_MAX_PREV || L > CRAFT_MAX_LAYERS)
        return rk_error_set(RK_ERR_LIMIT, "bl_capture_start: context or model too large for metadata");
    bl_capture *c = rk_calloc(1, sizeof(*c));
    if (!c)
        return RK_ERR_NOMEM;
    c->be = be;
    c->nseg = nseg;
    c->last = last;
    c->L = L;
    c->G = last + 1; /* attention groups: BOS, then segments 0..last-1 */
    c->kv_out = kv_out;
    c->metas = metas;
    c->segs = rk_malloc(nseg * sizeof(bl_segment));
    c->bounds = rk_malloc((nseg + 2) * sizeof(size_t));
    rk_status st = c->segs && c->bounds ? RK_OK : RK_ERR_NOMEM;
    size_t prev_tokens = 0;
    for (size_t i = 0; i < nseg && st == RK_OK; i++) {
        c->segs[i] = segs[i];
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
    int32_t *tok = NULL;
    if (st == RK_OK) {
        c->bounds[0] = 0;
        c->bounds[1] = 1;
        for (size_t i = 0, r = 1; i < nseg; i++) {
            r += segs[i].n;
            c->bounds[i + 2] = r;
        }
        /* rows past the last segment captured change nothing before them (causal): not computed */
        c->rows = c->bounds[last + 1];
        tok = rk_malloc(c->rows * sizeof(int32_t));
        c->pos = rk_malloc(c->rows * sizeof(int32_t));
        c->mass = rk_malloc(c->rows * c->G * sizeof(float));
        c->tsum = rk_calloc(c->rows, sizeof(double));
        if (!tok || !c->pos || !c->mass || !c->tsum)
            st = RK_ERR_NOMEM;
    }
    if (st == RK_OK) {
        tok[0] = mi->bos;
        for (size_t i = 0, r = 1; i < last; i++) {
            memcpy(tok + r, segs[i].tokens, segs[i].n * sizeof(int32_t));
            r += segs[i].n;
        }
        for (size_t i = 0; i < c->rows; i++)
            c->pos[i] = (int32_t)i;
        if ((st = eng_seq_new(be, c->rows, &c->s)) == RK_OK && (st = eng_hidden_new(be, c->rows, &c->h)) == RK_OK)
            st = eng_embed(be, c->h, 0, tok, c->rows);
    }
    rk_free(tok);
    if (st != RK_OK) {
        capture_fail(c, st);
        bl_capture_free(c);
        return st;
    }
    *out = c;
    return RK_OK;
}

rk_status bl_capture_step(bl_capture *c, bool *done)
{
    if (!c || !done)
        return rk_error_set(RK_ERR_INVALID, "bl_capture_step: bad arguments");
    *done = c->next >= c->L;
    if (c->err != RK_OK || *done)
        return c->err;
    const size_t l = c->next, G = c->G;
    eng_attn_groups ag = {.n_groups = G, .bounds = c->bounds, .mass = c->mass};
    rk_status st = eng_layer_forward_ex(c->s, (int)l, c->h, c->rows, c->pos, c->pos, NULL, NULL, &ag);
    if (st != RK_OK)
        return capture_fail(c, st);
    for (size_t j = 0; j < c->last; j++) {
        if (!c->kv_out[j])
            continue;
        /* the same sums, in the same order, as bl_variant_capture's for this segment:
         * groups 1..j are the segments before it, group j + 1 the segment itself */
        double inter = 0, intra = 0;
        for (size_t t = 0; t < c->segs[j].n; t++) {
            const size_t r = c->bounds[j + 1] + t;
            const float *row = c->mass + r * G;
            double e = 0;
            for (size_t g = 1; g <= j; g++)
                e += row[g];
            inter += e;
            intra += row[j + 1];
            c->tsum[r] += e;
        }
        c->metas[j].inter[l] = (float)inter;
        c->metas[j].intra[l] = (float)intra;
    }
    if (++c->next < c->L)
        return RK_OK;
    /* the last layer: the variants' KV and their tokens' mean inter-chunk attention */
    for (size_t j = 0; j < c->last; j++) {
        if (!c->kv_out[j])
            continue;
        for (size_t t = 0; t < c->segs[j].n; t++)
            c->metas[j].token_inter[t] = (float)(c->tsum[c->bounds[j + 1] + t] / (double)c->L);
        if ((st = eng_kv_export(c->s, c->bounds[j + 1], c->segs[j].n, c->kv_out[j])) != RK_OK)
            return capture_fail(c, st);
    }
    *done = true;
    return RK_OK;
}

rk_status bl_variant_capture_all(eng_model *m, eng_backend *be, const bl_segment *segs, size_t nseg,
                                 const uint64_t *ids, float *const *kv_out, bl_craft_meta *metas)
{
    bl_capture *c = NULL;
    rk_status st = bl_capture_start(m, be, segs, nseg, ids, kv_out, metas, &c);
    for (bool done = c == NULL; st == RK_OK && !done;)
        st = bl_capture_step(c, &done);
    bl_capture_free(c);
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
