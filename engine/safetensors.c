/* safetensors.c — strict safetensors header parser and streaming writer (ragkv/safetensors.h). */
#include "ragkv/safetensors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/json.h"

static const struct {
    const char *name;
    size_t size;
} st_dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
    {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},  {"BOOL", 1},
    {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

static size_t dtype_size(const char *s)
{
    for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
        if (!strcmp(s, st_dtypes[i].name))
            return st_dtypes[i].size;
    return 0;
}

void eng_st_free(eng_st_header *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n; i++)
        rk_free(h->t[i].name);
    rk_free(h->t);
    rk_free(h);
}

const eng_st_tensor *eng_st_find(const eng_st_header *h, const char *name)
{
    for (size_t i = 0; i < h->n; i++)
        if (!strcmp(h->t[i].name, name))
            return &h->t[i];
    return NULL;
}

static bool get_u64(const rk_json *v, uint64_t *out)
{
    if (!v || v->type != RK_JSON_NUMBER || !v->is_int || v->i < 0)
        return false;
    *out = (uint64_t)v->i;
    return true;
}

static int cmp_begin(const void *a, const void *b)
{
    const eng_st_tensor *x = *(eng_st_tensor *const *)a, *y = *(eng_st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static rk_status parse_entry(const char *name, const rk_json *v, uint64_t data_len, eng_st_tensor *t)
{
    if (v->type != RK_JSON_OBJECT)
        return rk_error_set(RK_ERR_FORMAT, "safetensors: entry '%s' is not an object", name);
    for (size_t i = 0; i < v->len; i++) {
        const char *k = v->keys[i];
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return rk_error_set(RK_ERR_FORMAT, "safetensors: entry '%s' has unknown field '%s'", name, k);
    }
    const char *dt = rk_json_get_str(v, "dtype");
    if (!dt)
        return rk_error_set(RK_ERR_FORMAT, "safetensors: tensor '%s' has no dtype", name);
    t->elem_size = dtype_size(dt);
    if (!t->elem_size)
        return rk_error_set(RK_ERR_FORMAT, "safetensors: tensor '%s' has unknown dtype '%.16s'", name, dt);
    snprintf(t->dtype, sizeof(t->dtype), "%s", dt);
    const rk_json *shape = rk_json_get(v, "shape");
    if (!shape || shape->type != RK_JSON_ARRAY)
        return rk_error_set(RK_ERR_FORMAT, "safetensors: tensor '%s' has no shape array", name);
    if (shape->len > ENG_ST_MAX_DIMS)
        return rk_error_set(RK_ERR_FORMAT, "safetensors: tensor '%s' has %zu dims (max %d)", name,
                            shape->len, ENG_ST_MAX_DIMS);
    t->ndim = (int)shape->len;
    uint64_t n = 1;
    for (size_t i = 0; i < shape->len; i++) {
        if (!get_u64(&shape->items[i], &t->shape[i]))
            return rk_error_set(RK_ERR_FORMAT, "safetensors: tensor '%s' has a bad shape entry", name);
        if (__builtin_mul_overflow(n, t->shape[i], &n))
            return rk_error_set(RK_ERR_FORMAT, "safetensors: tensor '%s' shape overflows", name);
    }
    t->n_elems = n;
    const rk_json *off = rk_json_get(v, "data_offsets");
    if (!off || off->type != RK_JSON_ARRAY || off->len != 2 || !get_u64(&off->items[0], &t->begin) ||
        !get_u64(&off->items[1], &t->end))
        return rk_error_set(RK_ERR_FORMAT, "safetensors: tensor '%s' has bad data_offsets", name);
    uint64_t bytes;
    if (__builtin_mul_overflow(n, (uint64_t)t->elem_size, &bytes))
        return rk_error_set(RK_ERR_FORMAT, "safetensors: tensor '%s' size overflows", name);
    if (t->end < t->begin || t->end - t->begin != bytes)
        return rk_error_set(RK_ERR_FORMAT,
                            "safetensors: tensor '%s': data_offsets [%llu, %llu] do not match shape "
                            "(%llu bytes)", name, (unsigned long long)t->begin,
                            (unsigned long long)t->end, (unsigned long long)bytes);
    if (t->end > data_len)
        return rk_error_set(RK_ERR_TRUNCATED,
                            "safetensors: tensor '%s' ends at data byte %llu but the file has %llu",
                            name, (unsigned long long)t->end, (unsigned long long)data_len);
    return RK_OK;
}

rk_status eng_st_parse(const uint8_t *buf, size_t file_len, eng_st_header **out)
{
    rk_status st;
    rk_json *root = NULL;
    eng_st_tensor **sorted = NULL;
    eng_st_header *h = NULL;
    *out = NULL;
    if (file_len < 8)
        return rk_error_set(RK_ERR_TRUNCATED, "safetensors: file of %zu bytes has no header length", file_len);
    uint64_t n = rk_get_le64(buf);
    if (n > ENG_ST_MAX_HEADER)
        return rk_error_set(RK_ERR_FORMAT, "safetensors: header length %llu exceeds the %u-byte limit",
                            (unsigned long long)n, ENG_ST_MAX_HEADER);
    if (n > file_len - 8)
        return rk_error_set(RK_ERR_TRUNCATED, "safetensors: header of %llu bytes but the file has %zu",
                            (unsigned long long)n, file_len);
    if (n < 2 || buf[8] != '{')
        return rk_error_set(RK_ERR_FORMAT, "safetensors: header is not a JSON object");
    if ((st = rk_json_parse((const char *)buf + 8, (size_t)n, &root)) != RK_OK)
        {
        char old[256];
        snprintf(old, sizeof(old), "%s", rk_error_msg());
        return rk_error_set(st, "safetensors header: %s", old);
    }
    if (root->type != RK_JSON_OBJECT) {
        st = rk_error_set(RK_ERR_FORMAT, "safetensors: header is not a JSON object");
        goto fail;
    }
    h = rk_calloc(1, sizeof(*h));
    if (!h || (root->len && !(h->t = rk_calloc(root->len, sizeof(eng_st_tensor))))) {
        st = rk_error_set(RK_ERR_NOMEM, "safetensors: out of memory");
        goto fail;
    }
    h->header_len = n;
    h->data_off = 8 + n;
    h->data_len = file_len - h->data_off;
    for (size_t i = 0; i < root->len; i++) {
        const char *name = root->keys[i];
        const rk_json *v = &root->items[i];
        if (!strcmp(name, "__metadata__")) {
            if (v->type != RK_JSON_OBJECT) {
                st = rk_error_set(RK_ERR_FORMAT, "safetensors: __metadata__ is not an object");
                goto fail;
            }
            for (size_t j = 0; j < v->len; j++)
                if (v->items[j].type != RK_JSON_STRING) {
                    st = rk_error_set(RK_ERR_FORMAT, "safetensors: __metadata__ value is not a string");
                    goto fail;
                }
            continue;
        }
        eng_st_tensor *t = &h->t[h->n];
        if ((st = parse_entry(name, v, h->data_len, t)) != RK_OK)
            goto fail;
        if (!(t->name = rk_strdup(name))) {
            st = rk_error_set(RK_ERR_NOMEM, "safetensors: out of memory");
            goto fail;
        }
        h->n++;
    }
    /* no overlaps (the JSON parser already rejected duplicate names) */
    if (h->n > 1) {
        if (!(sorted = rk_malloc(h->n * sizeof(*sorted)))) {
            st = rk_error_set(RK_ERR_NOMEM, "safetensors: out of memory");
            goto fail;
        }
        for (size_t i = 0; i < h->n; i++)
            sorted[i] = &h->t[i];
        qsort(sorted, h->n, sizeof(*sorted), cmp_begin);
        for (size_t i = 1; i < h->n; i++)
            if (sorted[i]->begin < sorted[i - 1]->end) {
                st = rk_error_set(RK_ERR_FORMAT, "safetensors: tensors '%s' and '%s' overlap",
                                  sorted[i - 1]->name, sorted[i]->name);
                goto fail;
            }
    }
    rk_free(sorted);
    rk_json_free(root);
    *out = h;
    return RK_OK;
fail:
    rk_free(sorted);
    rk_json_free(root);
    eng_st_free(h);
    return st;
}

/* ---- writer ---------------------------------------------------------------------------- */

static void hdr_appendf(eng_st_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hdr_appendf(eng_st_writer *w, const char *fmt, ...)
{
    if (w->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        w->failed = 1;
        return;
    }
    size_t need = w->header_len + (size_t)n + 1;
    if (need > w->header_cap) {
        size_t cap = w->header_cap ? w->header_cap : 1024;
        while (cap < need)
            cap *= 2;
        char *p = rk_realloc(w->header, cap);
        if (!p) {
            w->failed = 1;
            return;
        }
        w->header = p;
        w->header_cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(w->header + w->header_len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    w->header_len += (size_t)n;
}

rk_status eng_st_writer_open(eng_st_writer *w, const char *path)
{
    memset(w, 0, sizeof(*w));
    w->f = fopen(path, "wb");
    if (!w->f)
        return rk_error_set(RK_ERR_IO, "cannot create %s", path);
    hdr_appendf(w, "{");
    return RK_OK;
}

rk_status eng_st_writer_add(eng_st_writer *w, const char *name, const char *dtype, int ndim,
                            const uint64_t *shape)
{
    size_t es = dtype_size(dtype);
    if (!es || ndim < 0 || ndim > ENG_ST_MAX_DIMS)
        return rk_error_set(RK_ERR_INVALID, "safetensors writer: bad dtype or rank for %s", name);
    uint64_t n = es;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    hdr_appendf(w, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", w->header_len > 1 ? "," : "", name, dtype);
    for (int i = 0; i < ndim; i++)
        hdr_appendf(w, "%s%llu", i ? "," : "", (unsigned long long)shape[i]);
    hdr_appendf(w, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)w->next_off,
                (unsigned long long)(w->next_off + n));
    w->next_off += n;
    return w->failed ? rk_error_set(RK_ERR_NOMEM, "safetensors writer: out of memory") : RK_OK;
}

rk_status eng_st_writer_begin_data(eng_st_writer *w, const char *meta_key, const char *meta_val)
{
    if (meta_key)
        hdr_appendf(w, "%s\"__metadata__\":{\"%s\":\"%s\"}", w->header_len > 1 ? "," : "", meta_key,
                    meta_val);
    hdr_appendf(w, "}");
    /* pad with spaces so that the data area starts 8-byte aligned (float data usable in place) */
    while ((w->header_len + 8) % 8)
        hdr_appendf(w, " ");
    if (w->failed)
        return rk_error_set(RK_ERR_NOMEM, "safetensors writer: out of memory");
    uint8_t len[8];
    rk_put_le64(len, w->header_len);
    if (fwrite(len, 1, 8, w->f) != 8 || fwrite(w->header, 1, w->header_len, w->f) != w->header_len)
        return rk_error_set(RK_ERR_IO, "safetensors writer: write failed");
    return RK_OK;
}

rk_status eng_st_writer_data(eng_st_writer *w, const void *data, size_t n)
{
    if (w->written + n > w->next_off)
        return rk_error_set(RK_ERR_INVALID, "safetensors writer: more data than declared");
    if (n && fwrite(data, 1, n, w->f) != n)
        return rk_error_set(RK_ERR_IO, "safetensors writer: write failed");
    w->written += n;
    return RK_OK;
}

void eng_st_writer_abort(eng_st_writer *w)
{
    if (w->f)
        fclose(w->f);
    rk_free(w->header);
    memset(w, 0, sizeof(*w));
}

rk_status eng_st_writer_close(eng_st_writer *w)
{
    rk_status st = RK_OK;
    if (w->written != w->next_off)
        st = rk_error_set(RK_ERR_INTERNAL, "safetensors writer: %llu of %llu data bytes written",
                          (unsigned long long)w->written, (unsigned long long)w->next_off);
    if (w->f && fclose(w->f) != 0 && st == RK_OK)
        st = rk_error_set(RK_ERR_IO, "safetensors writer: close failed");
    w->f = NULL;
    eng_st_writer_abort(w);
    return st;
}
