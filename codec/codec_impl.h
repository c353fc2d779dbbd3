/*
 * codec_impl.h — private to codec/: the container reader/writer, the codec function table,
 * the rANS coder and the cachegen layout shared by the CPU and CUDA decoders.
 */
#ifndef RAGKV_CODEC_IMPL_H
#define RAGKV_CODEC_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "ragkv/codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- container (container.c) ----------------------------------------------------------- */

#define CODEC_MAGIC 0x43564b52u /* "RKVC" little-endian */
#define CODEC_VERSION 1
#define CODEC_HEADER_BYTES 48
#define CODEC_SECTION_BYTES 32
#define CODEC_MAX_SECTIONS 16

/* Section types (never renumber). */
enum codec_section_type {
    SEC_PARAMS = 1, /* codec parameters */
    SEC_SCALES = 2, /* fp16 quantization scales */
    SEC_TABLES = 3, /* per-chunk probability tables */
    SEC_INDEX = 4,  /* u32 byte length of every independent stream / block */
    SEC_PAYLOAD = 5 /* coded values */
};

/* A section being written: type and its bytes. */
typedef struct codec_wsection {
    uint32_t type;
    rk_buf buf; /* owned */
} codec_wsection;

/* Sections produced by an encoder. */
typedef struct codec_wsections {
    codec_wsection s[CODEC_MAX_SECTIONS]; /* [n] used */
    int n;
} codec_wsections;

/* A new empty section of this type, or NULL when the table is full. */
rk_buf *codec_wsections_add(codec_wsections *w, uint32_t type);
void codec_wsections_free(codec_wsections *w);

/* One section of a parsed container: borrowed bytes. */
typedef struct codec_rsection {
    uint32_t type;
    const uint8_t *data; /* borrowed from the container */
    size_t len;
} codec_rsection;

/* A parsed, checksum-verified container. */
typedef struct codec_view {
    codec_info info;
    codec_rsection sec[CODEC_MAX_SECTIONS]; /* [info.n_sections] */
} codec_view;

/* Parse header + table; with verify also check every section checksum. */
rk_status codec_view_parse(const void *data, size_t len, bool verify, codec_view *v);
/* The section of this type, or NULL. */
const codec_rsection *codec_view_section(const codec_view *v, uint32_t type);
/* Append header, table and sections to out. */
rk_status codec_container_write(const codec_shape *shape, codec_id id, int level,
                                uint64_t codebook_id, const codec_wsections *w, rk_buf *out);

/* ---- codecs ---------------------------------------------------------------------------- */

/* A container opened for decoding (codec.c): the public codec_reader. Decoding is split in two
 * so that a container is checked once and then decoded in layer ranges: the codec's open
 * checks the sections against the geometry and keeps what it derives from them (offsets,
 * scales, models) in ctx; decode_layers only reads the reader, so it needs no lock. */
struct codec_reader {
    codec_view v;                 /* parsed, every checksum verified; sections borrow the
                                     caller's bytes */
    const struct codec_i *iface;  /* the container's codec */
    const codec_codebook *cb;     /* the codebook it names (borrowed), or NULL */
    rk_pool *pool;                /* borrowed from the decode options, or NULL */
    void *ctx;                    /* the codec's per-container state (iface->close frees it),
                                     or NULL */
};

/* A codec: a table of functions so that new ones slot in. */
struct codec_i {
    codec_id id;
    const char *name;
    int default_level;
    int max_level;
    /* Encode kv (checked: finite, in fp16 range) into sections; level already resolved. */
    rk_status (*encode)(const float *kv, const codec_shape *shape, const codec_params *p,
                        int level, codec_wsections *w, uint64_t *codebook_id);
    /* Check r->v's sections against its geometry and set r->ctx to what decode_layers needs
     * (NULL: nothing); r->cb is resolved. On failure r->ctx is left NULL. */
    rk_status (*open)(codec_reader *r);
    /* Decode layers [l0, l0 + nl) (a non-empty range inside the container, checked by the
     * caller) into out: canonical layout from layer l0 on, element type dtype. Faults in the
     * coded values themselves (a malformed stream, an Inf or NaN) surface here. */
    rk_status (*decode_layers)(const codec_reader *r, codec_dtype dtype, uint32_t l0,
                               uint32_t nl, void *out);
    /* Free what open set in ctx (called with NULL too). Optional: NULL when open keeps no
     * state. */
    void (*close)(void *ctx);
};

extern const struct codec_i codec_raw_i;
extern const struct codec_i codec_lz4_i;
extern const struct codec_i codec_q8_i;
extern const struct codec_i codec_cachegen_i;

/* The codec for id, or NULL. */
const struct codec_i *codec_lookup(codec_id id);

/* Values in one layer (K and V) of a container's tensor. */
static inline size_t codec_layer_values(const codec_info *in)
{
    return codec_shape_values(&in->shape) / in->shape.n_layers;
}

/* Store value v (float) at index i of out in dtype. */
static inline void codec_store(void *out, codec_dtype dtype, size_t i, float v);

/* Convert n floats to fp16 (round to nearest even); allow_simd 0 forces the portable path
 * (tests compare the two). */
void codec_f32_to_f16_row(uint16_t *dst, const float *src, size_t n, int allow_simd);
/* Store n floats at element offset `at` of out in dtype. */
void codec_store_row(void *out, codec_dtype dtype, size_t at, const float *v, size_t n);

/* Resolve the codebook a view needs (NULL when none) from opts. */
rk_status codec_resolve_codebook(const codec_view *v, const codec_decode_opts *opts,
                                 const codec_codebook **out);

/* ---- rANS (rans.c): 32-bit state, byte renormalisation, 16-bit probabilities ---------- */

#define RANS_PROB_BITS 16
#define RANS_PROB_SCALE (1u << RANS_PROB_BITS)
#define RANS_L (1u << 23) /* lower bound of the normalised state */
#define CODEC_MAX_SYMBOLS 64

/* Frequencies -> a model: freq[s] >= 1 for every s < nsym, summing to RANS_PROB_SCALE. */
typedef struct rans_model {
    uint32_t cum[CODEC_MAX_SYMBOLS + 1]; /* cum[s] = sum of freq[0..s) ; cum[nsym] = 2^16 */
    uint16_t nsym;                       /* alphabet size, 2..CODEC_MAX_SYMBOLS */
    uint8_t bucket[256];                 /* [slot >> 8]: the symbol holding slot (slot & ~255);
                                            the decoder steps up from there */
} rans_model;

/* The decode-only form of a rans_model for the AVX2 decoder (cachegen_simd.c): 388 bytes
 * instead of 520, and one 32-bit read at cum + s yields both ends of symbol s's interval.
 * Buckets hold 2^RANS_DBUCKET_BITS = 512 slots; a bucket's entry resolves the first symbol
 * boundary inside it with an add and a shift, so only slots past a second boundary in the same
 * bucket (symbols rarer than 1/128) need the decoder's step-up. */
#define RANS_DBUCKET_BITS 9
#define RANS_DBUCKETS (RANS_PROB_SCALE >> RANS_DBUCKET_BITS)
typedef struct rans_dmodel {
    uint16_t bucket[RANS_DBUCKETS];      /* [slot >> 9]: (s << 9) + 512 - split, s the symbol
                                            holding the bucket's first slot, split the offset in
                                            the bucket where s + 1 starts (512: not in it); so
                                            (bucket + slot % 512) >> 9 is the symbol holding
                                            slot or one below it */
    uint16_t cum[CODEC_MAX_SYMBOLS + 2]; /* cum[s] for s < nsym; cum[nsym] = 2^16 and the unused
                                            tail are stored as 0, so an upper end cum[s + 1]
                                            (never 0) reads back as ((c - 1) & 0xffff) + 1 */
} rans_dmodel;

/* Turn counts[nsym] into frequencies summing to 2^16, each >= 1. */
void rans_normalize(const uint64_t *counts, int nsym, uint16_t *freq);
/* Build a model from frequencies; RK_ERR_FORMAT when they do not sum to 2^16 or one is 0. */
rk_status rans_model_build(const uint16_t *freq, int nsym, rans_model *m);

/* The decode-only form of a built model. */
void rans_dmodel_build(const rans_model *m, rans_dmodel *d);

/* Encode n symbols (sym[i] < model(i).nsym) as one stream appended to out. models[i] gives
 * symbol i's model. Returns RK_ERR_NOMEM or RK_OK. */
rk_status rans_encode(const uint8_t *sym, const rans_model *const *models, size_t n,
                      rk_buf *out);

/* ---- cachegen layout (cachegen.c, cuda/) ----------------------------------------------- */

/* Parameters of a cachegen container (its PARAMS section, docs/format.md). */
typedef struct cg_params {
    uint8_t k_scale_mode;     /* codec_scale_mode */
    uint8_t v_scale_mode;     /* codec_scale_mode */
    uint8_t tables;           /* 0: per-chunk tables section, 1: codebook */
    uint16_t anchor_interval; /* 0: no delta coding */
    uint16_t stream_tokens;   /* tokens per stream block, 1..256 */
    uint16_t group;           /* channels per stream */
    uint16_t model_group;     /* channels per probability model */
    uint8_t transform;        /* 1: symbols code the coefficients of the codebook's learned
                                 transform (cg_transform; codebook containers only); 2: and
                                 K rows are residuals of a prediction from V (tf->pred) */
    uint8_t qmax[2 * 1024];   /* [layer][K|V]: symbols are q + qmax, q in [-qmax, qmax] */
} cg_params;

#define CG_MAX_LAYERS 1024
#define CG_PARAMS_FIXED 12

/* Derived sizes of a cachegen container. */
typedef struct cg_layout {
    uint32_t L, T, H, D, C;   /* layers, tokens, heads, head dim, channels (H*D) */
    uint32_t n_tblocks;       /* ceil(T / stream_tokens) */
    uint32_t n_groups;        /* ceil(C / group) */
    size_t n_streams;         /* L * 2 * n_tblocks * n_groups */
    uint32_t n_mgroups;       /* ceil(C / model_group) */
    uint32_t models_per_lkv;  /* n_mgroups * (delta ? 2 : 1) */
    size_t n_models;          /* L * 2 * models_per_lkv */
    size_t scale_block[2];    /* scales per layer for K and V: T*H (token mode) or
                                 C * (delta ? 2 : 1) (channel mode) */
    size_t n_scales;          /* fp16 scales in the SCALES section */
} cg_layout;

rk_status cg_layout_make(const codec_shape *s, const cg_params *p, cg_layout *lay);

/* Where stream si lies (streams run layer, K|V, token block, channel group): its channel group
 * g, token block tb covering tokens [t0, t1), layer l, kv (0 K, 1 V) and lkv = 2l + kv. */
typedef struct cg_stream_pos {
    uint32_t g, tb, l, kv, t0, t1;
    size_t lkv;
} cg_stream_pos;

static inline cg_stream_pos cg_stream_at(const cg_layout *lay, const cg_params *p, size_t si)
{
    cg_stream_pos sp;
    sp.g = (uint32_t)(si % lay->n_groups);
    sp.tb = (uint32_t)(si / lay->n_groups % lay->n_tblocks);
    sp.lkv = si / lay->n_groups / lay->n_tblocks;
    sp.l = (uint32_t)(sp.lkv / 2);
    sp.kv = (uint32_t)(sp.lkv % 2);
    sp.t0 = sp.tb * p->stream_tokens;
    sp.t1 = sp.t0 + p->stream_tokens < lay->T ? sp.t0 + p->stream_tokens : lay->T;
    return sp;
}
/* Index into the scale array for (layer l, kv, token t, channel c, residual r). */
size_t cg_scale_index(const cg_layout *lay, const cg_params *p, uint32_t l, uint32_t kv,
                      uint32_t t, uint32_t c, int residual);
/* Index of the probability model for (layer, kv, channel, residual). */
static inline size_t cg_model_index(const cg_layout *lay, const cg_params *p, uint32_t l,
                                    uint32_t kv, uint32_t c, int residual)
{
    size_t m = ((size_t)l * 2 + kv) * lay->models_per_lkv + (size_t)(c / p->model_group) *
               (p->anchor_interval ? 2 : 1);
    return m + (size_t)(residual ? 1 : 0);
}
/* Whether token t (absolute) is coded as a residual against its block's anchor, and which
 * token is that anchor. */
static inline int cg_is_residual(const cg_params *p, uint32_t t, uint32_t *anchor)
{
    if (!p->anchor_interval)
        return 0;
    uint32_t b0 = t - t % p->stream_tokens;
    uint32_t a = b0 + (t - b0) / p->anchor_interval * p->anchor_interval;
    *anchor = a;
    return a != t;
}
/* Parse / serialise the PARAMS section for n_layers. */
rk_status cg_params_parse(const uint8_t *d, size_t len, uint32_t n_layers, cg_params *p);
void cg_params_write(const cg_params *p, uint32_t n_layers, rk_buf *out);
/* The codebook's parameters, models (n_models of them) and shape; for decoders. */
const cg_params *cg_codebook_params(const codec_codebook *cb);
/* The codebook's channel steps [L][2][C] (a weighted allocation), or NULL: the level's. */
const float *cg_codebook_steps(const codec_codebook *cb);
const rans_model *cg_codebook_models(const codec_codebook *cb, size_t *n_models);
/* The same models in decode-only form, built once with the codebook. */
const rans_dmodel *cg_codebook_dmodels(const codec_codebook *cb);
/* A codebook's learned transform (docs/codec.md, "Transform coding"): per (layer, K|V) plane
 * and block of B consecutive channels of the token (B divides kv_heads x head_dim: a block
 * may span heads) an invertible B x B matrix pair
 * and a mean. The encoder codes y = enc (x - mean); the decoder reconstructs each
 * coefficient as recon[model][symbol] * scale and then, in this fixed order and without
 * fused multiply-adds,
 *     acc = 0; for i in 0..B-1: acc = acc + dec[c][i] * y[i];  x[c] = acc + mean[c].  */
typedef struct cg_transform {
    uint32_t B;     /* channels per block, 1..64, divides kv_heads x head_dim */
    float *mean;    /* [L][2][C] */
    float *enc;     /* [L][2][C/B][B][B] row i: coefficient i from the block's channels */
    float *dec;     /* [L][2][C/B][B][B] row c: channel c from the block's coefficients */
    float *dect;    /* dec with each block transposed ([i][c]), for the CPU's row pass (not
                       serialised) */
    float *recon;   /* [n_models][CODEC_MAX_SYMBOLS] reconstruction point of each symbol, in
                       steps (the level's own quantizer has s - qmax) */
    float *pred;    /* K from V (params.transform 2, codebook version 4), or NULL:
                       [L][C/B][B][B], row j of a block: K channel c0 + j gains
                       sum_i pred[..][j][i] * v[c0 + i], v the same token's decoded V row
                       (cg_predict_row) */
} cg_transform;
/* The codebook's transform, or NULL. */
const cg_transform *cg_codebook_transform(const codec_codebook *cb);
/* One row of channels of plane lkv from its coefficient row y[C] (the order above). */
void cg_transform_row(const cg_transform *tf, uint32_t C, size_t lkv, const float *y, float *x);
/* K from V (tf->pred set): x, a decoded K row of layer l, gains its prediction from v, the
 * same token's decoded V row: per block c0 and row j, in binary32 with every product and sum
 * rounded separately, acc = 0; for i in 0..B-1: acc = acc + pred[l][c0/B][j][i] * v[c0 + i];
 * then x[c0 + j] = x[c0 + j] + acc. */
void cg_predict_row(const cg_transform *tf, uint32_t C, uint32_t l, const float *v, float *x);
/* Codebook geometry check against a shape; RK_ERR_INVALID on mismatch. */
rk_status cg_codebook_check(const codec_codebook *cb, const codec_shape *s);
/* Parse the per-chunk TABLES section or take the codebook's: *models owned by caller
 * (rk_free) when *owned. */
rk_status cg_models_get(const codec_view *v, const cg_params *p, const cg_layout *lay,
                        const codec_codebook *cb, const rans_model **models, bool *owned);

/* The CPU decoder's work: one container's streams into the canonical layout. */
struct cg_dec_job {
    const struct cg_params *p;     /* the container's parameters */
    const struct cg_layout *lay;   /* sizes derived from them */
    const struct rans_model *models; /* [n_models] */
    const struct rans_dmodel *dmodels; /* [n_models] the same, for the AVX2 decoder; NULL
                                          where it is not used */
    const float *scales;           /* [n_scales] */
    const float *recon;            /* [n_models][CODEC_MAX_SYMBOLS] reconstruction points of a
                                      transform codebook, or NULL: s - qmax */
    const struct cg_transform *tf; /* a transform container decoded in one pass (the AVX2
                                      decoder, cg_decode_layers says when): each token row's
                                      coefficients go through the inverse transform while
                                      they are in L1, and out gets channels in dtype; pool
                                      ranges then count batches of 8 streams. NULL: rows are
                                      stored as decoded */
    int tf_tiles;                  /* with tf: the AVX-512 stage (cg_avx512_ok) looks up the
                                      reconstruction points and transforms 16 tokens at a
                                      time; 0: the AVX2 gather and row transform */
    const uint8_t *payload;        /* the PAYLOAD section (borrowed) */
    const uint64_t *offs;          /* [n_streams + 1] stream offsets in payload */
    size_t payload_len;
    codec_dtype dtype;             /* output element type */
    void *out;                     /* canonical layout output, from (layer, K|V) plane lkv0 on */
    size_t lkv0;                   /* 2 * the first layer decoded; pool ranges count streams
                                      from that plane's first */
    int failed;                    /* 1: a stream was malformed; 2: out of memory (one pass
                                      only) */
};

/* Index in j->out of (layer, K|V) plane lkv (absolute), token t, channel c. */
static inline size_t cg_out_index(const struct cg_dec_job *j, size_t lkv, uint32_t t,
                                  uint32_t c)
{
    return ((lkv - j->lkv0) * j->lay->T + t) * j->lay->C + c;
}

/* AVX2 decoder of 8 * chains streams si.. (chains 1, 2, 4 or 8) of one (layer, K|V, token
 * block), each exactly 8 channels wide, per-channel scales, no delta coding: cg_simd8_ok()
 * says whether a job's parameters qualify and this CPU has AVX2 (RAGKV_CODEC_SIMD=0 turns it
 * off). Each chain is 8 streams in the lanes of a vector; chains run interleaved so that their
 * gathers overlap. Same values as the scalar decoder, bit for bit. false: a malformed stream.
 * (cachegen_simd.c) */
#define CG_SIMD_MAX_CHAINS 8
bool cg_simd8_ok(const struct cg_dec_job *j);
/* Whether this CPU has AVX-512 F and VL for the one-pass transform decoder's tiles, and
 * RAGKV_CODEC_SIMD is not "avx2". */
bool cg_avx512_ok(void);
/* 1: decoded; 0: malformed; -1: a stream's initial state is outside [2^23, 2^31), where a
 * step may need more than two bytes: decode these streams with the scalar decoder. */
int cg_decode_avx2(const struct cg_dec_job *j, size_t si, int chains);
/* The inverse transform (cg_transform's order, bit for bit the same as cg_transform_row) of
 * channels [c0, c0 + n) of `rows` rows of plane lkv, AVX2, several rows and columns at once
 * so that the sums' additions overlap: y (ys floats from one row to the next) to x (xs). c0
 * and n are multiples of tf->B, and tf->B of 8; needs AVX2 (cg_simd8_ok). */
void cg_transform_rows_avx2(const struct cg_transform *tf, uint32_t C, size_t lkv, uint32_t c0,
                            uint32_t n, const float *y, size_t ys, float *x, size_t xs,
                            uint32_t rows);

/* Everything the CPU and CUDA decoders share: params, layout, float scales, stream offsets,
 * models. Filled by cg_prepare, released by cg_prepared_free. */
typedef struct cg_prepared {
    cg_params p;
    cg_layout lay;
    float *scales;           /* [n_scales] owned */
    uint64_t *offs;          /* [n_streams + 1] owned */
    const rans_model *models;
    bool models_owned;
    const cg_transform *tf;  /* the codebook's transform when p.transform, else NULL */
    const uint8_t *payload;  /* borrowed from the container */
    size_t payload_len;
} cg_prepared;

rk_status cg_prepare(const codec_view *v, const codec_codebook *cb, cg_prepared *pr);
void cg_prepared_free(cg_prepared *pr);


/* codec_decode_cuda, also reporting the decode kernel's time in ms (0 for lz4, which decodes
 * on the CPU); for the benchmark. */
rk_status codec_decode_cuda_timed(const void *data, size_t len, const codec_decode_opts *opts,
                                  codec_dtype dtype, void *dev_out, size_t out_bytes,
                                  void *stream, float *kernel_ms);

/* ---- shared helpers -------------------------------------------------------------------- */

/* The level's cachegen defaults into p (qmax per layer and the option defaults). */
void cg_params_for_level(int level, uint32_t n_layers, const codec_params *user,
                         uint32_t head_dim, cg_params *p);

#ifdef __cplusplus
}
#endif

#include "ragkv/fp16.h"

static inline void codec_store(void *out, codec_dtype dtype, size_t i, float v)
{
    if (dtype == CODEC_F32)
        ((float *)out)[i] = v;
    else if (dtype == CODEC_F16)
        ((uint16_t *)out)[i] = rk_f32_to_f16(v);
    else
        ((uint16_t *)out)[i] = rk_f32_to_bf16(v);
}

#endif
