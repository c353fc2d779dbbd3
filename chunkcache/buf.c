/* buf.c — refcounted read-only buffers (see ragkv/blobstore.h). */
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/blobstore.h"
#include "ragkv/gpu.h"

/* A buffer (refs = 1) over n bytes at data, released by destroy with owner; NULL when out of
 * memory (nothing is released then). */
static cc_buf *buf_new(const void *data, size_t n, void (*destroy)(cc_buf *), void *owner)
{
    cc_buf *b = rk_malloc(sizeof(*b));
    if (!b)
        return NULL;
    b->data = data;
    b->len = n;
    atomic_init(&b->refs, 1);
    b->destroy = destroy;
    b->owner = owner;
    return b;
}

static void destroy_owned(cc_buf *b)
{
    rk_free(b->owner);
    rk_free(b);
}

cc_buf *cc_buf_wrap(void *data, size_t n)
{
    return buf_new(data, n, destroy_owned, data);
}

cc_buf *cc_buf_copy(const void *data, size_t n)
{
    void *p = rk_malloc(n ? n : 1);
    if (!p)
        return NULL;
    if (n)
        memcpy(p, data, n);
    cc_buf *b = cc_buf_wrap(p, n);
    if (!b)
        rk_free(p);
    return b;
}

static void destroy_locked(cc_buf *b)
{
    rk_gpu_host_free(b->owner);
    rk_free(b);
}

cc_buf *cc_buf_copy_locked(const void *data, size_t n)
{
    void *p = rk_gpu_host_alloc(n);
    if (!p)
        return NULL;
    if (n)
        memcpy(p, data, n);
    cc_buf *b = buf_new(p, n, destroy_locked, p);
    if (!b)
        rk_gpu_host_free(p);
    return b;
}

static void destroy_slice(cc_buf *b)
{
    cc_buf_release(b->owner);
    rk_free(b);
}

cc_buf *cc_buf_slice(cc_buf *parent, size_t off, size_t n)
{
    if (off > parent->len || n > parent->len - off)
        return NULL;
    cc_buf *b = buf_new(parent->data + off, n, destroy_slice, parent);
    if (b)
        cc_buf_ref(parent);
    return b;
}

cc_buf *cc_buf_ref(cc_buf *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}

void cc_buf_release(cc_buf *b)
{
    if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        b->destroy(b);
}
