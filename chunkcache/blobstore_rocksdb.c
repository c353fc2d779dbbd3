/* blobstore_rocksdb.c — the RocksDB blob store backend.
 *
 * One column family per cc_space. The chunks family stores large values in RocksDB's
 * integrated blob files (BlobDB: values >= min_blob_size live in blob files, the LSM tree
 * holds only references, so compaction does not rewrite megabytes of KV cache). The WAL is
 * always on; opts.sync adds an fsync per write. Reads use rocksdb_get_pinned: the value
 * stays pinned in RocksDB's memory and is handed up as a cc_buf without a copy. */
#include <stdlib.h>
#include <string.h>

#include <rocksdb/c.h>

#include "ragkv/alloc.h"
#include "ragkv/blobstore.h"

static const char *const cf_names[CC_SPACE_COUNT + 1] = {"chunks", "config", "meta", "default"};
#define NCF (CC_SPACE_COUNT + 1)

typedef struct rocks_bs {
    rocksdb_t *db;                          /* the database (thread-safe) */
    rocksdb_column_family_handle_t *cf[NCF]; /* handles, indexed like cf_names */
    rocksdb_options_t *opts[NCF];           /* per-family options (kept alive with the db) */
    rocksdb_block_based_table_options_t *bbt; /* table options, shared block cache */
    rocksdb_cache_t *block_cache;           /* LRU block cache */
    rocksdb_cache_t *blob_cache;            /* LRU blob cache, NULL when disabled */
    rocksdb_writeoptions_t *wo;             /* WAL on; sync per cc_blobstore_opts */
    rocksdb_readoptions_t *ro;              /* default reads (checksums verified) */
} rocks_bs;

/* Defaults documented in ragkv/blobstore.h. */
cc_blobstore_opts cc_blobstore_opts_default(void)
{
    cc_blobstore_opts o = {
        .sync = false,
        .block_cache_bytes = 64ull << 20,
        .blob_cache_bytes = 0,
        .min_blob_size = 4096,
        .blob_file_size = 256ull << 20,
        .write_buffer_bytes = 64ull << 20,
    };
    return o;
}

/* Translate RocksDB's error string (freed here) into RK_ERR_STORE. */
static rk_status rocks_err(char *err, const char *what)
{
    rk_status s = rk_error_set(RK_ERR_STORE, "rocksdb %s: %s", what, err ? err : "?");
    free(err);
    return s;
}

/* RK_ERR_INVALID for a space outside CC_SPACE_*. */
static rk_status check_space(cc_space sp)
{
    return (unsigned)sp < CC_SPACE_COUNT ? RK_OK : rk_error_set(RK_ERR_INVALID, "blobstore: bad space %d", (int)sp);
}

/* cc_blobstore_i.put (contract in ragkv/blobstore.h). */
static rk_status r_put(void *ctx, cc_space sp, const void *key, size_t klen, const cc_iov *parts, size_t n)
{
    rocks_bs *r = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    if (n > 16)
        return rk_error_set(RK_ERR_INVALID, "blobstore rocksdb: more than 16 parts");
    const char *pl[16];
    size_t ps[16];
    for (size_t i = 0; i < n; i++) {
        pl[i] = parts[i].base;
        ps[i] = parts[i].len;
    }
    const char *kl[1] = {key};
    size_t ks[1] = {klen};
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    rocksdb_writebatch_putv_cf(wb, r->cf[sp], 1, kl, ks, (int)n, pl, ps);
    char *err = NULL;
    rocksdb_write(r->db, r->wo, wb, &err);
    rocksdb_writebatch_destroy(wb);
    return err ? rocks_err(err, "put") : RK_OK;
}

/* cc_buf destructor of a pinned read: unpin the RocksDB slice. */
static void destroy_pinned(cc_buf *b)
{
    rocksdb_pinnableslice_destroy(b->owner);
    rk_free(b);
}

/* cc_blobstore_i.get (contract in ragkv/blobstore.h). */
static rk_status r_get(void *ctx, cc_space sp, const void *key, size_t klen, cc_buf **out)
{
    rocks_bs *r = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    char *err = NULL;
    rocksdb_pinnableslice_t *ps = rocksdb_get_pinned_cf(r->db, r->ro, r->cf[sp], key, klen, &err);
    if (err)
        return rocks_err(err, "get");
    if (!ps)
        return RK_ERR_NOT_FOUND;
    cc_buf *b = rk_malloc(sizeof(*b));
    if (!b) {
        rocksdb_pinnableslice_destroy(ps);
        return rk_error_set(RK_ERR_NOMEM, "blobstore rocksdb: buffer");
    }
    size_t vlen;
    b->data = (const uint8_t *)rocksdb_pinnableslice_value(ps, &vlen);
    b->len = vlen;
    atomic_init(&b->refs, 1);
    b->destroy = destroy_pinned;
    b->owner = ps;
    *out = b;
    return RK_OK;
}

/* cc_blobstore_i.del (contract in ragkv/blobstore.h). */
static rk_status r_del(void *ctx, cc_space sp, const void *key, size_t klen)
{
    rocks_bs *r = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    char *err = NULL;
    rocksdb_delete_cf(r->db, r->wo, r->cf[sp], key, klen, &err);
    return err ? rocks_err(err, "delete") : RK_OK;
}

/* cc_blobstore_i.write_batch (contract in ragkv/blobstore.h). */
static rk_status r_write_batch(void *ctx, cc_space sp, size_t n, const cc_iov *keys, const cc_iov *vals)
{
    rocks_bs *r = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    for (size_t i = 0; i < n; i++) {
        if (vals[i].base)
            rocksdb_writebatch_put_cf(wb, r->cf[sp], keys[i].base, keys[i].len, vals[i].base, vals[i].len);
        else
            rocksdb_writebatch_delete_cf(wb, r->cf[sp], keys[i].base, keys[i].len);
    }
    char *err = NULL;
    rocksdb_write(r->db, r->wo, wb, &err);
    rocksdb_writebatch_destroy(wb);
    return err ? rocks_err(err, "write batch") : RK_OK;
}

/* cc_blobstore_i.scan (contract in ragkv/blobstore.h). */
static rk_status r_scan(void *ctx, cc_space sp, cc_scan_fn fn, void *arg)
{
    rocks_bs *r = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    const rocksdb_snapshot_t *snap = rocksdb_create_snapshot(r->db);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(ro, snap);
    rocksdb_readoptions_set_fill_cache(ro, 0); /* a full scan must not flush the block cache */
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(r->db, ro, r->cf[sp]);
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        const char *v = rocksdb_iter_value(it, &vl);
        if (fn(arg, (const uint8_t *)k, kl, (const uint8_t *)v, vl))
            break;
    }
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    rocksdb_release_snapshot(r->db, snap);
    return err ? rocks_err(err, "scan") : RK_OK;
}

/* cc_blobstore_i.usage (contract in ragkv/blobstore.h). */
static rk_status r_usage(void *ctx, cc_space sp, uint64_t *bytes)
{
    rocks_bs *r = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    uint64_t sst = 0, blob = 0, mem = 0;
    rocksdb_property_int_cf(r->db, r->cf[sp], "rocksdb.total-sst-files-size", &sst);
    rocksdb_property_int_cf(r->db, r->cf[sp], "rocksdb.total-blob-file-size", &blob);
    rocksdb_property_int_cf(r->db, r->cf[sp], "rocksdb.cur-size-all-mem-tables", &mem);
    *bytes = sst + blob + mem;
    return RK_OK;
}

/* cc_blobstore_i.close (contract in ragkv/blobstore.h). */
static void r_close(void *ctx)
{
    rocks_bs *r = ctx;
    if (!r)
        return;
    for (int i = 0; i < NCF; i++)
        if (r->cf[i])
            rocksdb_column_family_handle_destroy(r->cf[i]);
    if (r->db)
        rocksdb_close(r->db);
    for (int i = 0; i < NCF; i++)
        if (r->opts[i])
            rocksdb_options_destroy(r->opts[i]);
    if (r->bbt)
        rocksdb_block_based_options_destroy(r->bbt);
    if (r->block_cache)
        rocksdb_cache_destroy(r->block_cache);
    if (r->blob_cache)
        rocksdb_cache_destroy(r->blob_cache);
    if (r->wo)
        rocksdb_writeoptions_destroy(r->wo);
    if (r->ro)
        rocksdb_readoptions_destroy(r->ro);
    rk_free(r);
}

static const struct cc_blobstore_i rocks_iface = {
    .name = "rocksdb",
    .put = r_put,
    .get = r_get,
    .del = r_del,
    .write_batch = r_write_batch,
    .scan = r_scan,
    .usage = r_usage,
    .close = r_close,
};

/* See ragkv/blobstore.h. */
rk_status cc_blobstore_rocksdb_open(const char *dir, const cc_blobstore_opts *opts, cc_blobstore *out)
{
    if (!dir || !*dir || !out)
        return rk_error_set(RK_ERR_INVALID, "blobstore rocksdb: no directory");
    cc_blobstore_opts o = opts ? *opts : cc_blobstore_opts_default();
    rocks_bs *r = rk_calloc(1, sizeof(*r));
    if (!r)
        return rk_error_set(RK_ERR_NOMEM, "blobstore rocksdb: open");
    rk_status s = RK_OK;
    r->block_cache = rocksdb_cache_create_lru(o.block_cache_bytes ? o.block_cache_bytes : 8u << 20);
    if (o.blob_cache_bytes)
        r->blob_cache = rocksdb_cache_create_lru(o.blob_cache_bytes);
    r->bbt = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(r->bbt, r->block_cache);
    rocksdb_block_based_options_set_block_size(r->bbt, 16 * 1024);
    rocksdb_block_based_options_set_cache_index_and_filter_blocks(r->bbt, 1);
    rocksdb_block_based_options_set_filter_policy(r->bbt, rocksdb_filterpolicy_create_bloom(10));
    for (int i = 0; i < NCF; i++) {
        rocksdb_options_t *op = r->opts[i] = rocksdb_options_create();
        rocksdb_options_set_create_if_missing(op, 1);
        rocksdb_options_set_create_missing_column_families(op, 1);
        rocksdb_options_set_block_based_table_factory(op, r->bbt);
        rocksdb_options_set_max_background_jobs(op, 2);
        if (i == CC_SPACE_CHUNKS) {
            /* integrated BlobDB: large values in blob files; the blob is already compressed
             * by the codec, so no second compression */
            rocksdb_options_set_enable_blob_files(op, 1);
            rocksdb_options_set_min_blob_size(op, o.min_blob_size);
            rocksdb_options_set_blob_file_size(op, o.blob_file_size);
            rocksdb_options_set_enable_blob_gc(op, 1);
            rocksdb_options_set_blob_compression_type(op, rocksdb_no_compression);
            rocksdb_options_set_compression(op, rocksdb_no_compression);
            rocksdb_options_set_write_buffer_size(op, o.write_buffer_bytes);
            if (r->blob_cache)
                rocksdb_options_set_blob_cache(op, r->blob_cache);
        } else {
            rocksdb_options_set_compression(op, rocksdb_lz4_compression);
            rocksdb_options_set_write_buffer_size(op, 8u << 20);
        }
    }
    const char *names[NCF];
    const rocksdb_options_t *cfo[NCF];
    for (int i = 0; i < NCF; i++) {
        names[i] = cf_names[i];
        cfo[i] = r->opts[i];
    }
    char *err = NULL;
    r->db = rocksdb_open_column_families(r->opts[NCF - 1], dir, NCF, names, cfo, r->cf, &err);
    if (err) {
        s = rocks_err(err, "open");
        goto fail;
    }
    r->wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(r->wo, o.sync);
    rocksdb_writeoptions_disable_WAL(r->wo, 0);
    r->ro = rocksdb_readoptions_create();
    /* RocksDB's own CRC32c of a multi-megabyte blob record was the single largest cost of a
     * read (the Debian build's portable CRC). Every chunk value carries its own checksums
     * (record header xxh3, blob xxh3) that chunkcache verifies on every read, so the
     * second check is dropped for reads; compaction and recovery still verify. */
    rocksdb_readoptions_set_verify_checksums(r->ro, 0);
    out->iface = &rocks_iface;
    out->ctx = r;
    return RK_OK;
fail:
    memset(r->cf, 0, sizeof(r->cf));
    r_close(r);
    return s;
}
