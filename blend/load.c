/* load.c — layer-pipelined loading of compressed chunk caches (see load.h). */
#include "load.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/clock.h"

struct bl_loader {
    const bl_segment *segs;     /* (nseg) borrowed */
    size_t nseg;
    const size_t *row0;         /* (nseg) borrowed: first slot of each segment */
    const codec_decode_opts *opts;
    const eng_model_info *mi;
    int L;                      /* layers */
    size_t w;                   /* n_kv_heads * head_dim */
    codec_reader **rd;          /* (nseg) open readers of the container segments (loader thread) */
    float *buf[2];              /* per layer parity: every container segment's (2, n_i, w) floats
                                   (GPU mode: buf[0] only, allocated by bl_loader_hold) */
    size_t per;                 /* floats of one such buffer */
    size_t *off;                /* (nseg) offset of segment i's floats in a buffer */
    pthread_t th;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready;                  /* layers [0, ready] are decoded (-1: none) */
    int held;                   /* the engine thread imported layers [0, held]; reads layer held */
    int skipped;                /* layers [0, skipped] were passed over (bl_loader_skip), -1 */
    bool stop;                  /* bl_loader_free: decode nothing more */
    rk_status err;              /* the loader's failure, RK_OK while none */
    char msg[256];              /* its message */
    double wait_ms;             /* the engine thread's waits */
    uint64_t setup_ns, open_ns, enqueue_ns; /* bl_stats.load_*_ms: set-up (engine thread), the
                                               opens and the layers (loader thread, read after
                                               the join) */
    /* GPU mode (a CUDA backend keeping bf16 KV): each container is decoded by a
     * codec_cuda_reader, layer after layer on the reader's stream, straight into a KV block of
     * its own; the engine's stream waits on the device for the layer it imports. */
    bool gpu;
    eng_backend *be;
    eng_kvblock **blk;          /* (nseg) the container segments' blocks (engine thread) */
    eng_kvblock_mem *mem;       /* (nseg) where they live */
    codec_cuda_reader **cr;     /* (nseg) opened by the loader thread */
    size_t *islot;              /* (nseg) a layer's import of every block at once: slots, */
    const int32_t **ipos;       /* positions */
    const eng_kvblock **iblk;   /* and blocks (engine thread) */
    int host_layer;             /* the layer whose floats buf[0] holds (bl_loader_hold), -1 */
};

rk_status bl_container_check(const eng_model_info *mi, const codec_info *ci, size_t n_tokens)
{
    if (ci->shape.n_layers != (uint32_t)mi->n_layers || ci->shape.n_kv_heads != (uint32_t)mi->n_kv_heads ||
        ci->shape.head_dim != (uint32_t)mi->head_dim || ci->shape.n_tokens == 0 ||
        (n_tokens && ci->shape.n_tokens != n_tokens))
        return rk_error_set(RK_ERR_INVALID, "container of %u layers x %u tokens x %u kv heads x %u dims is not the "
                            "model's geometry (%d layers, %d kv heads, %d dims)%s%.0zu%s", ci->shape.n_layers,
                            ci->shape.n_tokens, ci->shape.n_kv_heads, ci->shape.head_dim, mi->n_layers,
                            mi->n_kv_heads, mi->head_dim, n_tokens ? " with " : "", n_tokens,
                            n_tokens ? " tokens" : "");
    return RK_OK;
}

rk_status bl_container_floats(const eng_model_info *mi, const bl_segment *sg, const codec_decode_opts *opts,
                              float **out)
{
    *out = NULL;
    codec_info ci;
    rk_status st = codec_inspect(sg->container, sg->container_len, &ci);
    if (st == RK_OK)
        st = bl_container_check(mi, &ci, sg->n);
    if (st != RK_OK)
        return st;
    size_t bytes = codec_decoded_bytes(&ci, CODEC_F32);
    float *kv = rk_malloc(bytes ? bytes : 1);
    if (!kv)
        return rk_error_set(RK_ERR_NOMEM, "compressed chunk cache: %zu bytes", bytes);
    if ((st = codec_decode(sg->container, sg->container_len, opts, CODEC_F32, kv, bytes)) != RK_OK) {
        rk_free(kv);
        return st;
    }
    *out = kv;
    return RK_OK;
}

/* The loader thread's failure: kept with its message for the engine thread. */
static void loader_fail(bl_loader *ld, rk_status st, size_t seg)
{
    pthread_mutex_lock(&ld->mu);
    if (ld->err == RK_OK) {
        ld->err = st;
        snprintf(ld->msg, sizeof(ld->msg), "segment %zu: %s", seg, rk_error_msg());
    }
    pthread_cond_broadcast(&ld->cv);
    pthread_mutex_unlock(&ld->mu);
}

/* Whether the GPU loader enqueues a container's whole work when it opens it (the default):
 * layer 0's compressed bytes copied up and decoded, then every other layer's in one copy and
 * one kernel, so that a prompt's containers are on the device after a few large copies and
 * two kernels each. RAGKV_BLEND_UPLOAD=layer (read once): a copy and a kernel per layer,
 * enqueued layer after layer over all containers by the loader thread. */
static bool upload_whole(void)
{
    static int on = -1; /* (a benign race: every thread computes the same value) */
    if (on < 0) {
        const char *e = getenv("RAGKV_BLEND_UPLOAD");
        on = !(e && !strcmp(e, "layer"));
    }
    return on;
}

/* Enqueue every layer of container segment i (upload_whole): layer 0 first, alone, so that
 * it does not wait for the others' bytes. */
static rk_status enqueue_whole(bl_loader *ld, size_t i)
{
    size_t lb = 2 * ld->segs[i].n * ld->w * 2; /* one layer's K and V in bf16 */
    unsigned char *dst = ld->mem[i].data;
    rk_status st = codec_cuda_reader_upload(ld->cr[i], 0, 1);
    if (st == RK_OK)
        st = codec_cuda_reader_decode_layers(ld->cr[i], 0, 1, dst, lb);
    if (st == RK_OK && ld->L > 1)
        st = codec_cuda_reader_upload(ld->cr[i], 1, ld->L - 1);
    if (st == RK_OK && ld->L > 1)
        st = codec_cuda_reader_decode_layers(ld->cr[i], 1, ld->L - 1, dst + lb, (size_t)(ld->L - 1) * lb);
    return st;
}

/* rk_pool_for body: open the readers of container segments [b, e) (host checks, uploads of
 * what every layer needs) and, by default, enqueue all their work (enqueue_whole); a failure
 * is recorded (loader_fail) and ends nothing else. */
static void open_readers(void *arg, size_t b, size_t e)
{
    bl_loader *ld = arg;
    int device = eng_backend_cuda_device(ld->be);
    for (size_t i = b; i < e; i++) {
        const bl_segment *sg = &ld->segs[i];
        if (!sg->container)
            continue;
        rk_status st = codec_cuda_reader_open(sg->container, sg->container_len, ld->opts, CODEC_BF16, device, &ld->cr[i]);
        if (st == RK_OK)
            st = bl_container_check(ld->mi, codec_cuda_reader_info(ld->cr[i]), sg->n);
        if (st == RK_OK && upload_whole())
            st = enqueue_whole(ld, i);
        if (st != RK_OK)
            loader_fail(ld, st, i);
    }
}

/* GPU mode: open every reader — one per container segment, spread over the decode options'
 * pool when there is one (each open verifies and prepares a whole container on the host: one
 * after another they kept the first layer waiting) — then enqueue the layers in order as fast
 * as they go; the engine thread waits only for "enqueued". */
static void loader_gpu(bl_loader *ld)
{
    uint64_t t0 = rk_now_ns();
    if (ld->opts && ld->opts->pool)
        rk_pool_for(ld->opts->pool, ld->nseg, 1, open_readers, ld);
    else
        open_readers(ld, 0, ld->nseg);
    uint64_t t1 = rk_now_ns();
    ld->open_ns = t1 - t0;
    pthread_mutex_lock(&ld->mu);
    bool failed = ld->err != RK_OK;
    pthread_mutex_unlock(&ld->mu);
    if (failed)
        return;
    if (upload_whole()) { /* every layer is enqueued */
        pthread_mutex_lock(&ld->mu);
        ld->ready = ld->L - 1;
        pthread_cond_broadcast(&ld->cv);
        pthread_mutex_unlock(&ld->mu);
        ld->enqueue_ns = 0;
        return;
    }
    for (int l = 0; l < ld->L; l++) {
        pthread_mutex_lock(&ld->mu);
        bool stop = ld->stop;
        pthread_mutex_unlock(&ld->mu);
        if (stop)
            return;
        for (size_t i = 0; i < ld->nseg; i++) {
            if (!ld->cr[i])
                continue;
            size_t lb = 2 * ld->segs[i].n * ld->w * 2; /* one layer's K and V in bf16 */
            rk_status st = codec_cuda_reader_decode_layers(ld->cr[i], l, 1, (unsigned char *)ld->mem[i].data + (size_t)l * lb, lb);
            if (st != RK_OK) {
                loader_fail(ld, st, i);
                return;
            }
        }
        pthread_mutex_lock(&ld->mu);
        ld->ready = l;
        pthread_cond_broadcast(&ld->cv);
        pthread_mutex_unlock(&ld->mu);
    }
    ld->enqueue_ns = rk_now_ns() - t1;
}

static void *loader_main(void *arg)
{
    bl_loader *ld = arg;
    if (ld->gpu) {
        loader_gpu(ld);
        return NULL;
    }
    uint64_t t0 = rk_now_ns();
    for (size_t i = 0; i < ld->nseg; i++) {
        const bl_segment *sg = &ld->segs[i];
        if (!sg->container)
            continue;
        rk_status st = codec_reader_open(sg->container, sg->container_len, ld->opts, &ld->rd[i]);
        if (st == RK_OK)
            st = bl_container_check(ld->mi, codec_reader_info(ld->rd[i]), sg->n);
        if (st != RK_OK) {
            loader_fail(ld, st, i);
            return NULL;
        }
    }
    uint64_t t1 = rk_now_ns();
    ld->open_ns = t1 - t0;
    for (int l = 0; l < ld->L; l++) {
        pthread_mutex_lock(&ld->mu);
        /* layer l goes where layer l - 2 was: wait until the engine thread moved past it */
        while (!ld->stop && l >= 2 && ld->held < l - 1)
            pthread_cond_wait(&ld->cv, &ld->mu);
        bool stop = ld->stop;
        pthread_mutex_unlock(&ld->mu);
        if (stop)
            return NULL;
        float *buf = ld->buf[l & 1];
        for (size_t i = 0; i < ld->nseg; i++) {
            if (!ld->rd[i])
                continue;
            size_t bytes = 2 * ld->segs[i].n * ld->w * sizeof(float);
            rk_status st = codec_reader_decode_layers(ld->rd[i], CODEC_F32, l, 1, buf + ld->off[i], bytes);
            if (st != RK_OK) {
                loader_fail(ld, st, i);
                return NULL;
            }
        }
        pthread_mutex_lock(&ld->mu);
        ld->ready = l;
        pthread_cond_broadcast(&ld->cv);
        pthread_mutex_unlock(&ld->mu);
    }
    ld->enqueue_ns = rk_now_ns() - t1;
    return NULL;
}

/* GPU mode when the backend keeps bf16 KV blocks in device memory and the codec has a device
 * (RAGKV_BLEND_GPU_LOAD=0: never): a block per container segment, allocated here. false (and
 * nothing allocated) otherwise; an allocation failure is an error. */
static rk_status gpu_blocks(bl_loader *ld, bool *gpu)
{
    *gpu = false;
    const char *env = getenv("RAGKV_BLEND_GPU_LOAD");
    if ((env && !strcmp(env, "0")) || eng_backend_cuda_device(ld->be) < 0 || !codec_cuda_available())
        return RK_OK;
    ld->blk = rk_calloc(ld->nseg, sizeof(*ld->blk));
    ld->mem = rk_calloc(ld->nseg, sizeof(*ld->mem));
    ld->cr = rk_calloc(ld->nseg, sizeof(*ld->cr));
    ld->islot = rk_calloc(ld->nseg, sizeof(*ld->islot));
    ld->ipos = rk_calloc(ld->nseg, sizeof(*ld->ipos));
    ld->iblk = rk_calloc(ld->nseg, sizeof(*ld->iblk));
    if (!ld->blk || !ld->mem || !ld->cr || !ld->islot || !ld->ipos || !ld->iblk)
        return rk_error_set(RK_ERR_NOMEM, "compressed chunk cache: block tables");
    for (size_t i = 0; i < ld->nseg; i++) {
        if (!ld->segs[i].container)
            continue;
        rk_status st = eng_kvblock_alloc(ld->be, ld->segs[i].n, &ld->blk[i], &ld->mem[i]);
        if (st != RK_OK)
            return st;
        if (!ld->mem[i].device || ld->mem[i].elem_bytes != 2) { /* fp32 mode: the CPU loader */
            eng_kvblock_free(ld->blk[i]);
            ld->blk[i] = NULL;
            return RK_OK;
        }
    }
    *gpu = true;
    return RK_OK;
}

rk_status bl_loader_start(eng_backend *be, const eng_model_info *mi, const bl_segment *segs, size_t nseg,
                          const size_t *row0, const codec_decode_opts *opts, bl_loader **out)
{
    *out = NULL;
    size_t w = (size_t)mi->n_kv_heads * (size_t)mi->head_dim, per = 0, ncont = 0;
    for (size_t i = 0; i < nseg; i++)
        if (segs[i].container) {
            per += 2 * segs[i].n * w;
            ncont++;
        }
    if (ncont == 0)
        return RK_OK;
    bl_loader *ld = rk_calloc(1, sizeof(*ld));
    if (!ld)
        return rk_error_set(RK_ERR_NOMEM, "compressed chunk cache: loader");
    ld->segs = segs;
    ld->nseg = nseg;
    ld->row0 = row0;
    ld->opts = opts;
    ld->mi = mi;
    ld->L = mi->n_layers;
    ld->w = w;
    ld->ready = -1;
    ld->held = -1;
    ld->skipped = -1;
    ld->host_layer = -1;
    ld->be = be;
    uint64_t t0 = rk_now_ns();
    rk_status st = gpu_blocks(ld, &ld->gpu);
    if (st != RK_OK) {
        bl_loader_free(ld, NULL);
        return st;
    }
    ld->per = per;
    ld->off = rk_calloc(nseg, sizeof(*ld->off));
    if (!ld->gpu) {
        ld->rd = rk_calloc(nseg, sizeof(*ld->rd));
        ld->buf[0] = rk_malloc(per * sizeof(float));
        ld->buf[1] = rk_malloc(per * sizeof(float));
    }
    if (!ld->off || (!ld->gpu && (!ld->rd || !ld->buf[0] || !ld->buf[1]))) {
        bl_loader_free(ld, NULL);
        return rk_error_set(RK_ERR_NOMEM, "compressed chunk cache: layer buffers");
    }
    for (size_t i = 0, o = 0; i < nseg; i++)
        if (segs[i].container) {
            ld->off[i] = o;
            o += 2 * segs[i].n * w;
        }
    ld->setup_ns = rk_now_ns() - t0;
    pthread_mutex_init(&ld->mu, NULL);
    pthread_cond_init(&ld->cv, NULL);
    if (pthread_create(&ld->th, NULL, loader_main, ld) != 0) {
        pthread_mutex_destroy(&ld->mu);
        pthread_cond_destroy(&ld->cv);
        bl_loader_free(ld, NULL); /* not started: frees the memory only */
        return rk_error_set(RK_ERR_IO, "blend: cannot start the layer loader thread");
    }
    ld->started = true;
    *out = ld;
    return RK_OK;
}

rk_status bl_loader_import(bl_loader *ld, eng_seq *s, int l, const int32_t *pos)
{
    for (int layer = ld->held + 1; layer <= l && layer < ld->L; layer++) {
        uint64_t t0 = rk_now_ns();
        pthread_mutex_lock(&ld->mu);
        while (ld->err == RK_OK && ld->ready < layer)
            pthread_cond_wait(&ld->cv, &ld->mu);
        rk_status err = ld->err;
        pthread_mutex_unlock(&ld->mu);
        ld->wait_ms += (double)(rk_now_ns() - t0) / 1e6;
        if (err != RK_OK)
            return rk_error_set(err, "compressed chunk cache: %s", ld->msg);
        if (ld->gpu) { /* the engine's stream waits for every reader's layer, then one import */
            size_t nb = 0;
            for (size_t i = 0; i < ld->nseg; i++) {
                if (!ld->cr[i])
                    continue;
                rk_status st = codec_cuda_reader_wait(ld->cr[i], layer, 1, eng_backend_cuda_stream(ld->be));
                if (st != RK_OK)
                    return st;
                ld->islot[nb] = ld->row0[i];
                ld->ipos[nb] = pos + ld->row0[i];
                ld->iblk[nb++] = ld->blk[i];
            }
            rk_status st = eng_kv_import_blocks_layers(s, nb, ld->islot, ld->ipos, ld->iblk, layer, 1);
            if (st != RK_OK)
                return st;
        }
        const float *buf = ld->buf[layer & 1];
        for (size_t i = 0; i < ld->nseg; i++) {
            const bl_segment *sg = &ld->segs[i];
            if (!sg->container || ld->gpu)
                continue;
            rk_status st = eng_kv_import_layers(s, layer, 1, ld->row0[i], sg->n, pos + ld->row0[i], buf + ld->off[i]);
            if (st != RK_OK)
                return st;
        }
        pthread_mutex_lock(&ld->mu);
        ld->held = layer; /* the buffer of layer - 1 is the loader's again */
        pthread_cond_broadcast(&ld->cv);
        pthread_mutex_unlock(&ld->mu);
    }
    return RK_OK;
}

void bl_loader_skip(bl_loader *ld, int l)
{
    if (l >= ld->L)
        l = ld->L - 1;
    if (l <= ld->held)
        return;
    pthread_mutex_lock(&ld->mu);
    ld->held = l; /* the CPU loader may reuse the buffers of layers up to l - 1 */
    ld->skipped = l;
    pthread_cond_broadcast(&ld->cv);
    pthread_mutex_unlock(&ld->mu);
}

rk_status bl_loader_hold(bl_loader *ld, int l)
{
    if (l <= ld->skipped)
        return rk_error_set(RK_ERR_INVALID, "bl_loader_hold: layer %d was skipped", l);
    if (!ld->gpu || ld->host_layer == l)
        return RK_OK;
    if (l > ld->held)
        return rk_error_set(RK_ERR_INVALID, "bl_loader_hold: layer %d is not imported yet", l);
    if (!ld->buf[0] && !(ld->buf[0] = rk_malloc(ld->per * sizeof(float))))
        return rk_error_set(RK_ERR_NOMEM, "bl_loader_hold: %zu floats", ld->per);
    ld->host_layer = -1;
    for (size_t i = 0; i < ld->nseg; i++) {
        if (!ld->blk[i])
            continue;
        rk_status st = eng_kvblock_read(ld->blk[i], l, 1, ld->buf[0] + ld->off[i]);
        if (st != RK_OK)
            return st;
    }
    ld->host_layer = l;
    return RK_OK;
}

const float *bl_loader_layer(const bl_loader *ld, size_t i, int l)
{
    if (!ld || i >= ld->nseg || !ld->segs[i].container || l <= ld->skipped)
        return NULL;
    if (ld->gpu)
        return l == ld->host_layer ? ld->buf[0] + ld->off[i] : NULL;
    return l == ld->held ? ld->buf[l & 1] + ld->off[i] : NULL;
}

rk_status bl_loader_finish(bl_loader *ld)
{
    if (!ld || !ld->gpu)
        return RK_OK;
    /* every layer enqueued (or the loader's failure) before the readers are asked: a caller
     * that stopped importing early must not miss a damaged stream of a later layer, nor call
     * a reader's finish while the loader thread still enqueues on its stream */
    pthread_mutex_lock(&ld->mu);
    while (ld->err == RK_OK && ld->ready < ld->L - 1 && !ld->stop)
        pthread_cond_wait(&ld->cv, &ld->mu);
    rk_status err = ld->err;
    pthread_mutex_unlock(&ld->mu);
    if (err != RK_OK)
        return rk_error_set(err, "compressed chunk cache: %s", ld->msg);
    for (size_t i = 0; i < ld->nseg; i++) {
        if (!ld->cr[i])
            continue;
        rk_status st = codec_cuda_reader_finish(ld->cr[i]);
        if (st != RK_OK)
            return rk_error_set(st, "compressed chunk cache: segment %zu: %s", i, rk_error_msg());
    }
    return RK_OK;
}

void bl_loader_free(bl_loader *ld, bl_stats *st)
{
    if (!ld)
        return;
    uint64_t t0 = rk_now_ns();
    if (ld->started) {
        pthread_mutex_lock(&ld->mu);
        ld->stop = true;
        pthread_cond_broadcast(&ld->cv);
        pthread_mutex_unlock(&ld->mu);
        pthread_join(ld->th, NULL);
        pthread_mutex_destroy(&ld->mu);
        pthread_cond_destroy(&ld->cv);
    }
    for (size_t i = 0; ld->rd && i < ld->nseg; i++)
        if (ld->rd[i])
            codec_reader_close(ld->rd[i]);
    for (size_t i = 0; ld->cr && i < ld->nseg; i++)
        codec_cuda_reader_close(ld->cr[i]); /* waits for its work: before the block goes */
    for (size_t i = 0; ld->blk && i < ld->nseg; i++)
        eng_kvblock_free(ld->blk[i]);
    if (st) { /* the loader thread's times: read after the join */
        st->load_wait_ms = ld->wait_ms;
        st->load_setup_ms = (double)ld->setup_ns / 1e6;
        st->load_open_ms = (double)ld->open_ns / 1e6;
        st->load_enqueue_ms = (double)ld->enqueue_ns / 1e6;
        st->load_free_ms = (double)(rk_now_ns() - t0) / 1e6;
    }
    rk_free(ld->cr);
    rk_free(ld->blk);
    rk_free(ld->islot);
    rk_free(ld->ipos);
    rk_free(ld->iblk);
    rk_free(ld->mem);
    rk_free(ld->rd);
    rk_free(ld->off);
    rk_free(ld->buf[0]);
    rk_free(ld->buf[1]);
    rk_free(ld);
}
