/*
 * load.h — private to blend/: layer-pipelined loading of chunk caches that arrive compressed.
 *
 * A prompt's segments may carry their KV as codec containers (bl_segment.container). Rather
 * than decoding every layer of every container before the first layer runs, a loader decodes
 * them one layer at a time on a thread of its own, two layers ahead at most: while the engine
 * computes layer l, layer l + 1 is being decoded. The engine thread asks for layer l
 * (bl_loader_import) before it runs layer l on the prompt's sequence: that waits for the
 * layer, imports it into the sequence at the segments' slots, and lets the loader reuse the
 * buffer of layer l - 1.
 *
 * On a CUDA backend keeping bf16 KV (GPU mode), the loader thread instead enqueues each layer's
 * upload and decoding on a codec_cuda_reader's stream, straight into a KV block per segment;
 * an import makes the engine's stream wait (on the device) for that layer, then imports it
 * from the block. There the layers are not held back: the blocks hold every layer.
 *
 * Ownership: the loader borrows the segments, their containers and the decode options until
 * bl_loader_free. Threads: every call but the loader's own thread is the engine thread's.
 * Lock: mu guards ready, held, stop and the error; the buffers of a layer belong to the loader
 * thread until ready says the layer is done, then to the engine thread until held passes it.
 */
#ifndef RAGKV_BLEND_LOAD_H
#define RAGKV_BLEND_LOAD_H

#include "ragkv/blend.h"

typedef struct bl_loader bl_loader;

/* Start loading the container segments among segs[0..nseg) (segment i's first token in slot
 * and position row0[i]) for model mi. *out NULL (and RK_OK) when no segment has a container.
 * The containers are opened (checksums verified) on the loader's thread; their errors come
 * back from bl_loader_import. */
rk_status bl_loader_start(eng_backend *be, const eng_model_info *mi, const bl_segment *segs, size_t nseg,
                          const size_t *row0, const codec_decode_opts *opts, bl_loader **out);

/* Make layers up to l of every container segment present in s (slots row0[i]..., positions
 * pos[row0[i]]...), waiting for the loader as needed; layers already imported are skipped.
 * From then on layer l's floats are readable (bl_loader_layer) until layer l + 1 is imported.
 * The loader's error (a damaged container, a geometry that is not the model's) once it has
 * one. */
rk_status bl_loader_import(bl_loader *ld, eng_seq *s, int l, const int32_t *pos);

/* Layers up to l will be computed for every row, so their cached KV is not needed: mark them
 * imported without waiting for them or importing them (a later bl_loader_import starts after
 * l). Layers already imported are left as they are. Their floats are not readable. */
void bl_loader_skip(bl_loader *ld, int l);

/* Make layer l (imported already) readable as floats by bl_loader_layer: in GPU mode the
 * layer is read back from the blocks (until another layer is held); else a no-op (the CPU
 * loader's floats of the layer last imported are readable). */
rk_status bl_loader_hold(bl_loader *ld, int l);

/* Segment i's KV of layer l, `[K|V][token][kv_head][head_dim]` float32, while readable (see
 * bl_loader_import and bl_loader_hold); NULL for a segment without a container or a layer not
 * held. */
const float *bl_loader_layer(const bl_loader *ld, size_t i, int l);

/* After the last import: in GPU mode, wait for every reader and report a malformed stream
 * (RK_ERR_CORRUPT: only decoding finds it, and the device decoder reports it at the end);
 * RK_OK otherwise. NULL: RK_OK. */
rk_status bl_loader_finish(bl_loader *ld);

/* Stop the loader (layers not yet decoded are skipped), join its thread and free it; st (when
 * not NULL) gets the time the engine thread spent waiting for layers and the loader's own
 * times (bl_stats.load_*_ms). NULL is a no-op. */
void bl_loader_free(bl_loader *ld, bl_stats *st);

/* Decode a container segment's whole KV to float32 (eng_kv_floats(model, sg->n) floats, owned
 * by the caller): for the paths that import a segment at once (prefix, APE). RK_ERR_INVALID
 * when its geometry is not the model's; the codec's errors for damaged input. */
rk_status bl_container_floats(const eng_model_info *mi, const bl_segment *sg, const codec_decode_opts *opts,
                              float **out);

#endif
