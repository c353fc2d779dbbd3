/*
 * ragkv/codec.h — the KV container format and its codecs (raw fp16, lz4, q8, cachegen).
 *
 * A chunk's KV cache travels and rests as one self-describing container (docs/format.md):
 * a header with the geometry, the codec and its level, a section table with an XXH3-64
 * checksum per section, then the sections. Decoding checks every checksum first, so damaged
 * bytes give RK_ERR_CORRUPT and never wrong numbers.
 *
 * The tensor every function takes or returns is the canonical KV layout, K before RoPE:
 *
 *     float kv[layer][2 (K, V)][token][kv_head][head_dim]      (codec_shape gives the sizes)
 *
 * Encode a chunk, decode it again:
 *
 *     codec_shape shape = {.n_layers = 32, .n_tokens = 256, .n_kv_heads = 8, .head_dim = 128};
 *     codec_params p = codec_params_default(CODEC_CACHEGEN);
 *     rk_buf rkv = RK_BUF_INIT;
 *     if (codec_encode(kv, &shape, &p, &rkv) != RK_OK) ... rk_error_msg() ...;
 *
 *     codec_info info;
 *     codec_inspect(rkv.data, rkv.len, &info);                 // header only, no decoding
 *     size_t n = codec_decoded_bytes(&info, CODEC_F16);
 *     uint16_t *out = rk_malloc(n);
 *     codec_decode(rkv.data, rkv.len, NULL, CODEC_F16, out, n);  // NULL: defaults, no pool
 *     rk_buf_free(&rkv);
 *
 * Codebooks (cachegen only) hold the probability tables per model and level, trained once on
 * sample KV, so that chunks need not carry them. A container names its codebook by id; the
 * decoder asks the caller's resolver for it (codec_decode_opts.resolve).
 *
 * Input values must be finite and |x| <= 65504 (the fp16 range): encoders reject NaN, Inf
 * and larger values with RK_ERR_RANGE, since no codec could return them faithfully.
 *
 * A codec_reader (below) verifies a container once and then decodes it in layer ranges, for
 * loading that overlaps the layers' computation.
 *
 * Thread safety: all functions are reentrant; a codec_codebook is immutable after training
 * or parsing and may be shared by any number of threads; a codec_reader takes one call at a
 * time.
 */
#ifndef RAGKV_CODEC_H
#define RAGKV_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/bytes.h"
#include "ragkv/status.h"
#include "ragkv/thread.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Codec identifiers, as stored in the container header (never renumber). */
typedef enum codec_id {
    CODEC_RAW = 1,      /* fp16 values, no compression */
    CODEC_LZ4 = 2,      /* fp16, byte planes split per (layer, K|V), then LZ4 (level 1: LZ4HC) */
    CODEC_Q8 = 3,       /* symmetric int8, fp16 scale per (layer, K|V, token, kv head) */
    CODEC_CACHEGEN = 4, /* layer-banded quantization + rANS entropy coding (docs/codec.md) */
} codec_id;

/* Element types of decoded output and of the source recorded in the header. */
typedef enum codec_dtype {
    CODEC_F32 = 0,
    CODEC_F16 = 1,  /* IEEE binary16 */
    CODEC_BF16 = 2, /* bfloat16 */
} codec_dtype;

/* Scale granularity of cachegen's quantizer. */
typedef enum codec_scale_mode {
    CODEC_SCALE_TOKEN = 0,   /* one scale per (layer, K|V, token, kv head) */
    CODEC_SCALE_CHANNEL = 1, /* one scale per (layer, K|V, channel) over the chunk's tokens */
} codec_scale_mode;

/* Geometry of one KV tensor. Every field >= 1. */
typedef struct codec_shape {
    uint32_t n_layers;   /* transformer layers */
    uint32_t n_tokens;   /* tokens in the chunk */
    uint32_t n_kv_heads; /* key/value heads (GQA) */
    uint32_t head_dim;   /* channels per head */
} codec_shape;

/* Values in a tensor of this shape (2 * layers * tokens * heads * dim); 0 on overflow. */
size_t codec_shape_values(const codec_shape *s);

typedef struct codec_codebook codec_codebook;

/* Encoder settings. Start from codec_params_default() and change what you need; fields
 * set to -1 take the level's default (docs/codec.md lists them). */
typedef struct codec_params {
    codec_id codec;   /* which codec */
    int level;        /* quality level, 0 = best (cachegen 0..4, default 1; lz4 0..1); -1:
                         the codec's default level */
    /* cachegen only: */
    const codec_codebook *codebook; /* borrowed; NULL: per-chunk probability tables. When set
                                       it fixes level and every option below. */
    int k_scale_mode;    /* codec_scale_mode for K; -1: default (channel) */
    int v_scale_mode;    /* codec_scale_mode for V; -1: default (channel) */
    int anchor_interval; /* delta coding against an anchor token every n tokens; 0 off;
                            -1: default (off) */
    int group;           /* channels per independent stream (1..1024; the CUDA kernel takes
                            up to 64, wider groups decode on the CPU there); -1: default 8 */
    int model_group;     /* channels sharing one probability model in per-chunk tables;
                            -1: default (head_dim) */
    const float *weights; /* borrowed, optional: sensitivity of every channel, [layer][K|V]
                            [kv_head * head_dim + dim], finite and >= 0 (next-token KL per unit
                            of squared error, or anything proportional). Steps then follow
                            1/sqrt(weight) at the level's rate instead of each channel's
                            range (docs/codec.md, "Rate allocation"); needs channel scales
                            for K and V and no delta coding. Training a codebook stores the
                            steps in it; NULL: the level's steps. */
    int transform_block; /* codebook training with weights only: 0 (default) off; B > 0
                            learns an orthogonal transform of the sensitivity-weighted
                            channels per (layer, K|V) and block of B consecutive channels of
                            the token's kv_heads x head_dim (B divides that, at most 64; a
                            block may span heads: codec_transform_block_default is the
                            measured choice) and codes its coefficients with
                            one step in the weighted domain and learned reconstruction points
                            (docs/codec.md, "Transform coding"). The codebook (format version
                            3) then holds the transform; its containers need it to decode. */
    float step_scale;    /* with weights only (per-chunk or codebook training): multiplies
                            every step of the weighted allocation, a continuous rate knob
                            between and beyond the levels (2: about one bit per value fewer;
                            alphabets still capped at 63 symbols). 0 (default): the level's
                            rate; else within [1/64, 64]. No format change: the steps are
                            what a codebook or container already stores. */
    int predict_k;       /* codebook training with a transform only: 0 (default) off; 1 codes
                            each K row as the residual of a linear prediction from the same
                            token's decoded V row, one B x B matrix per (layer, transform
                            block) fitted on the samples (docs/codec.md, "K predicted from
                            V"). The codebook (format version 4) holds the matrices; its
                            containers (params.transform 2) need it to decode; the CUDA
                            reader has them decoded on the CPU and copied up for now. */
    rk_pool *pool;       /* borrowed, optional: parallel encode */
} codec_params;

/* Defaults for a codec (level -1, every option -1, no codebook, no pool). */
codec_params codec_params_default(codec_id codec);

/* The transform block to train with for a shape (codec_params.transform_block): every
 * channel of a token, kv_heads x head_dim, when that is at most 64 (blocks across heads:
 * measured 2026-12-08 on the real models, 25% fewer bits than per-head blocks on
 * babyllama105 at equal next-token KL, 8-13% on stories260K; docs/codec.md), else the head
 * when head_dim is at most 64, else 16 (the Llama-3-8B shape's measured choice). */
int codec_transform_block_default(const codec_shape *s);

/* Codec by name ("raw", "lz4", "q8", "cachegen"); RK_ERR_NOT_FOUND otherwise. */
rk_status codec_id_parse(const char *name, codec_id *out);
/* Name of a codec id, or "unknown". Static storage. */
const char *codec_id_name(codec_id id);
/* Default and highest level of a codec; RK_ERR_NOT_FOUND for an unknown id. */
rk_status codec_levels(codec_id id, int *default_level, int *max_level);

/* Encode kv (float32, canonical layout, codec_shape_values(shape) values) and append the
 * container to *out (caller-owned rk_buf; on failure out->len is restored). */
rk_status codec_encode(const float *kv, const codec_shape *shape, const codec_params *p,
                       rk_buf *out);

/* What a container holds, read from its header and section table. */
typedef struct codec_info {
    codec_shape shape;       /* geometry of the tensor */
    codec_dtype src_dtype;   /* the dtype the values had before encoding */
    codec_id codec;          /* how the values are coded */
    int level;               /* the codec's quality level */
    uint64_t codebook_id;    /* 0: none needed */
    uint32_t version;        /* container format version */
    uint32_t n_sections;     /* entries in the section table */
    size_t total_bytes;      /* whole container */
    size_t table_bytes;      /* per-chunk probability tables (cachegen), 0 otherwise */
    size_t overhead_bytes;   /* header, section table, parameters, scales, stream index */
    size_t payload_bytes;    /* coded values */
} codec_info;

/* Validate the header and section table (magic, version, sizes, table checksum) without
 * decoding or checking section checksums. RK_ERR_FORMAT / _TRUNCATED / _CORRUPT /
 * _UNSUPPORTED on bad input. */
rk_status codec_inspect(const void *data, size_t len, codec_info *out);

/* Bytes of decoded output in dtype for this container; 0 on overflow. */
size_t codec_decoded_bytes(const codec_info *info, codec_dtype dtype);

/* Finds a codebook by id for the decoder: set *out (borrowed, must stay valid during the
 * decode call, or until the reader it was opened for is closed) or return RK_ERR_NOT_FOUND. */
typedef rk_status (*codec_codebook_fn)(void *ctx, uint64_t id, const codec_codebook **out);

/* Decoder options; NULL means all defaults. */
typedef struct codec_decode_opts {
    rk_pool *pool;              /* borrowed, optional: decode streams in parallel */
    codec_codebook_fn resolve;  /* optional: needed for containers that name a codebook */
    void *resolve_ctx;          /* passed to resolve */
    const codec_codebook *codebook; /* optional: used when its id matches (before resolve) */
    size_t max_values;          /* refuse containers claiming more values (RK_ERR_LIMIT);
                                   0: 1 << 32 */
} codec_decode_opts;

/* Decode a container into out (caller-owned, out_bytes >= codec_decoded_bytes(), canonical
 * layout, element type dtype). Every section checksum is verified first; malformed,
 * truncated or corrupted input returns an error and leaves out unspecified. The same as
 * opening a reader, decoding all its layers and closing it. */
rk_status codec_decode(const void *data, size_t len, const codec_decode_opts *opts,
                       codec_dtype dtype, void *out, size_t out_bytes);

/* ---- decoding by layer ranges ---------------------------------------------------------- */

/* A container parsed and checksum-verified once, for decoding its layers in pieces (layer
 * l + 1 while the engine computes layer l). What each codec derives from the container
 * (cachegen's stream offsets, scales and models, lz4's block offsets) is built once, by
 * codec_reader_open; a layer range decodes only that range's coded bytes.
 *
 *     codec_reader *r;
 *     if (codec_reader_open(rkv.data, rkv.len, &opts, &r) != RK_OK) ... rk_error_msg() ...;
 *     const codec_info *in = codec_reader_info(r);
 *     size_t layer_bytes = codec_decoded_bytes(in, CODEC_F16) / in->shape.n_layers;
 *     for (int l = 0; l < (int)in->shape.n_layers; l++)
 *         codec_reader_decode_layers(r, CODEC_F16, l, 1, buf[l % 2], layer_bytes);
 *     codec_reader_close(r);
 */
typedef struct codec_reader codec_reader;

/* Parse and verify data (every section checksum, as codec_decode does) and check its
 * sections against the geometry. data and opts, and what opts points to (pool, codebook,
 * resolve_ctx), are borrowed and must outlive the reader; the codebook is resolved here, once.
 * Damaged input gives codec_decode's status (RK_ERR_CORRUPT, _FORMAT, _TRUNCATED,
 * _UNSUPPORTED, _LIMIT, _NOT_FOUND for a missing codebook) and leaves *out NULL. *out is
 * owned by the caller (codec_reader_close). */
rk_status codec_reader_open(const void *data, size_t len, const codec_decode_opts *opts,
                            codec_reader **out);

/* The container's description (shape, codec, level, sizes); owned by the reader, valid until
 * it is closed. */
const codec_info *codec_reader_info(const codec_reader *r);

/* Decode layers [layer0, layer0 + n_layers) into out (caller-owned): those layers only, in
 * the canonical layout ([layer - layer0][K|V][token][kv_head][head_dim]) of element type
 * dtype; out_bytes at least n_layers / shape.n_layers of codec_decoded_bytes(), and nothing
 * past that is written. Bit-identical to the same layers of codec_decode(). RK_ERR_INVALID
 * for an empty or out-of-range layer range, a bad dtype or a short buffer. Faults that only
 * decoding finds (a malformed entropy-coded stream: RK_ERR_CORRUPT; an Inf or NaN stored in
 * raw or lz4, a bad q8 scale: RK_ERR_FORMAT) are reported for the layers they are in, and
 * leave out unspecified. May be called any number of times, in any order; one call at a
 * time per reader (calls on different readers may run in parallel). */
rk_status codec_reader_decode_layers(codec_reader *r, codec_dtype dtype, int layer0,
                                     int n_layers, void *out, size_t out_bytes);

void codec_reader_close(codec_reader *r); /* NULL is a no-op */

/* Decode straight into device memory on the CUDA device that is current for the calling
 * thread: dev_out (canonical layout, dtype CODEC_F16 or CODEC_BF16) must hold
 * codec_decoded_bytes(). stream is a cudaStream_t (NULL: the default stream); the call
 * returns when the output is complete. Output is bit-identical to codec_decode(). Builds
 * without CUDA return RK_ERR_UNSUPPORTED; no device gives RK_ERR_UNAVAILABLE. lz4 containers
 * and cachegen containers with stream groups wider than 64 channels are decoded on the CPU and
 * copied up. Device buffers for the compressed data are allocated and freed inside the call. */
rk_status codec_decode_cuda(const void *data, size_t len, const codec_decode_opts *opts,
                            codec_dtype dtype, void *dev_out, size_t out_bytes, void *stream);

/* true when this build has CUDA and a device is present. */
int codec_cuda_available(void);

/* A container decoded into device memory by layer ranges, asynchronously: layer l + 1 is
 * copied up and decoded on a stream of the reader's own while the engine computes layer l on
 * its stream, which waits (on the device, not the host) for exactly the layers it needs.
 *
 *     codec_cuda_reader *r;
 *     codec_cuda_reader_open(rkv.data, rkv.len, &opts, CODEC_BF16, -1, &r);  // verified here
 *     for (int l = 0; l < L; l++)
 *         codec_cuda_reader_decode_layers(r, l, 1, dev + l * layer_bytes, layer_bytes);
 *     ...
 *     codec_cuda_reader_wait(r, l, 1, engine_stream);   // before the engine reads layer l
 *     ...
 *     st = codec_cuda_reader_finish(r);                 // RK_ERR_CORRUPT: a malformed stream
 *     codec_cuda_reader_close(r);
 *
 * The stream is non-blocking (cudaStreamNonBlocking): it neither waits for nor holds up the
 * legacy default stream. device: the CUDA device to use, made current for the calling thread
 * (-1: the one already current); every later call must run with that device current. Output
 * is bit-identical to codec_decode(). A reader has no lock: calls on one reader may come from
 * different threads (blend's loader enqueues, its engine thread waits and finishes) only when
 * the caller orders them. Containers of more than 1024 layers (more than any encoder writes)
 * are refused with RK_ERR_LIMIT. */
typedef struct codec_cuda_reader codec_cuda_reader;

/* Parse and verify data as codec_reader_open does (every checksum; raw's and q8's values;
 * cachegen's streams, scales and models built and uploaded); dtype CODEC_F16 or CODEC_BF16.
 * data and opts (and what they point to) are borrowed until close. Errors: codec_reader_open's,
 * RK_ERR_UNAVAILABLE without a device, RK_ERR_UNSUPPORTED in builds without CUDA. lz4 and
 * cachegen with stream groups wider than 64 channels decode their ranges on the CPU (inside
 * codec_cuda_reader_decode_layers) and copy them up. *out owned by the caller. */
rk_status codec_cuda_reader_open(const void *data, size_t len, const codec_decode_opts *opts,
                                 codec_dtype dtype, int device, codec_cuda_reader **out);

/* The container's description; owned by the reader. */
const codec_info *codec_cuda_reader_info(const codec_cuda_reader *r);

/* Enqueue the decoding of layers [layer0, layer0 + n_layers) into dev_out (device memory of
 * at least n_layers / shape.n_layers of codec_decoded_bytes(): the canonical layout of those
 * layers) on the reader's stream, and return: the range's compressed bytes may still be on
 * their way up (lz4 is decoded on the CPU inside the call). dev_out must stay allocated until
 * finish. A malformed entropy-coded stream is only known at codec_cuda_reader_finish. */
rk_status codec_cuda_reader_decode_layers(codec_cuda_reader *r, int layer0, int n_layers,
                                          void *dev_out, size_t out_bytes);

/* Enqueue now, on the reader's stream, the copy up of the compressed bytes of layers [layer0,
 * layer0 + n_layers), so that codec_cuda_reader_decode_layers of those layers enqueues only
 * kernels: one large copy instead of a copy per layer (from pageable memory each copy also
 * holds the calling thread while the driver stages it). Layers already copied are skipped;
 * paths that decode on the CPU or copy their output as it is (lz4, raw into f16) copy
 * nothing here. RK_ERR_INVALID for a range outside the container. */
rk_status codec_cuda_reader_upload(codec_cuda_reader *r, int layer0, int n_layers);

/* Make stream (a cudaStream_t; NULL: the legacy default stream) wait, on the device, until
 * layers [layer0, layer0 + n_layers) are decoded; the host does not wait. RK_ERR_INVALID for a
 * layer not enqueued yet. */
rk_status codec_cuda_reader_wait(codec_cuda_reader *r, int layer0, int n_layers, void *stream);

/* Wait on the host for everything enqueued; RK_ERR_CORRUPT when a stream decoded so far was
 * malformed (its layers' output is then unspecified), RK_ERR_DEVICE for a CUDA failure. */
rk_status codec_cuda_reader_finish(codec_cuda_reader *r);

/* Wait for the reader's work and free it (NULL: no-op). */
void codec_cuda_reader_close(codec_cuda_reader *r);

/* ---- codebooks (cachegen) -------------------------------------------------------------- */

/* Train a codebook for (geometry without tokens, level, options in p) from n sample tensors
 * (samples[i] has shapes[i], all with equal layers/heads/dim). p->codec must be
 * CODEC_CACHEGEN and p->codebook NULL. *out is owned by the caller (codec_codebook_free). */
rk_status codec_codebook_train(const float *const *samples, const codec_shape *shapes,
                               size_t n, const codec_params *p, codec_codebook **out);

/* Append the serialised codebook (docs/format.md) to *out (caller-owned). */
rk_status codec_codebook_serialize(const codec_codebook *cb, rk_buf *out);

/* Parse a serialised codebook (checksummed); *out owned by the caller. */
rk_status codec_codebook_parse(const void *data, size_t len, codec_codebook **out);

/* The codebook's id: XXH3-64 of its serialised body, never 0. */
uint64_t codec_codebook_id(const codec_codebook *cb);

/* Level the codebook was trained for. */
int codec_codebook_level(const codec_codebook *cb);

void codec_codebook_free(codec_codebook *cb); /* NULL is a no-op */

/* ---- raw tensor files and tools -------------------------------------------------------- */

/* Read a raw tensor file (little-endian float32, canonical layout) of exactly
 * codec_shape_values(shape) values. *out owned by the caller (rk_free). */
rk_status codec_f32_file_read(const char *path, const codec_shape *shape, float **out);
/* Write n float32 values little-endian to path. */
rk_status codec_f32_file_write(const char *path, const float *v, size_t n);

/* Synthetic KV with realistic statistics, deterministic in seed: K pre-RoPE with a few
 * outlier channels per head (10-50x), per-channel means, AR(1) token locality; V milder.
 * out holds codec_shape_values(shape) floats (canonical layout). Channel statistics depend
 * on seed >> 32 only: seeds sharing their upper 32 bits are chunks of one "model". */
void codec_synth_kv(const codec_shape *shape, uint64_t seed, float *out);

/* `ragkv bench codec`: encode/decode throughput and compression table; prints a table and,
 * with --json FILE, writes the results. Returns the process exit status. */
int codec_bench_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
