/*
 * ragkv/safetensors.h — the safetensors container: a strict header parser (fuzzed:
 * tests/fuzz/fuzz_safetensors.c) and a streaming writer.
 *
 * File layout: u64 little-endian N, then N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [r, c], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"k": "v", ...}}
 * then the data area; offsets are relative to the data area's start (8 + N).
 *
 * The parser checks everything a reader relies on: N within the file, valid JSON, every
 * entry well-typed, known dtype, end - begin == product(shape) * dtype size (without
 * overflow), ranges inside the data area and not overlapping, no duplicate names.
 *
 *     eng_st_header *h;
 *     if (eng_st_parse(bytes, file_len, &h) != RK_OK) ... rk_error_msg() ...;
 *     const eng_st_tensor *t = eng_st_find(h, "model.norm.weight");
 *     const void *data = bytes + h->data_off + t->begin;
 *     eng_st_free(h);
 */
#ifndef RAGKV_SAFETENSORS_H
#define RAGKV_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ENG_ST_MAX_DIMS 8
#define ENG_ST_MAX_HEADER (256u << 20) /* header JSON larger than this is rejected */

typedef struct eng_st_tensor {
    char *name;                      /* owned by the header */
    char dtype[12];                  /* "F32", "F16", "BF16", "I64", ... as in the file */
    size_t elem_size;                /* bytes per element of dtype */
    int ndim;                        /* 0..ENG_ST_MAX_DIMS */
    uint64_t shape[ENG_ST_MAX_DIMS]; /* (ndim) sizes */
    uint64_t n_elems;                /* product of shape (1 for ndim 0) */
    uint64_t begin;                  /* byte range in the data area: [begin, end) */
    uint64_t end;
} eng_st_tensor;

typedef struct eng_st_header {
    uint64_t header_len; /* N */
    uint64_t data_off;   /* 8 + N: where the data area starts in the file */
    uint64_t data_len;   /* bytes of data area in the file */
    size_t n;            /* tensors */
    eng_st_tensor *t;    /* (n) in header order, owned */
} eng_st_header;

/* Parse the header of a safetensors file whose first file_len bytes are at buf (typically a
 * mapping of the whole file; only the header is read, the data is bounds-checked against
 * file_len). *out owned by the caller (eng_st_free). RK_ERR_TRUNCATED when the file is
 * shorter than the header or a tensor says; RK_ERR_FORMAT on anything malformed. */
rk_status eng_st_parse(const uint8_t *buf, size_t file_len, eng_st_header **out);
void eng_st_free(eng_st_header *h); /* NULL is a no-op */
/* Tensor by name, NULL when absent (borrowed from h). */
const eng_st_tensor *eng_st_find(const eng_st_header *h, const char *name);

/* ---- writer ---------------------------------------------------------------------------- */

/* Declare all tensors, then write their bytes in declaration order. */
typedef struct eng_st_writer {
    FILE *f;           /* open output, owned */
    char *header;      /* JSON being built, owned */
    size_t header_len; /* bytes used in header */
    size_t header_cap; /* bytes allocated */
    uint64_t next_off; /* data offset of the next declared tensor */
    uint64_t written;  /* data bytes written so far */
    int failed;        /* an allocation failed while declaring */
} eng_st_writer;

/* Open path for writing (truncates). */
rk_status eng_st_writer_open(eng_st_writer *w, const char *path);
/* Declare a tensor (dtype "F32", "F16" or "BF16"; shape of ndim dims). */
rk_status eng_st_writer_add(eng_st_writer *w, const char *name, const char *dtype, int ndim,
                            const uint64_t *shape);
/* Write the header (after the last add); metadata key/value pair may be NULL. */
rk_status eng_st_writer_begin_data(eng_st_writer *w, const char *meta_key, const char *meta_val);
/* Append n bytes of tensor data. */
rk_status eng_st_writer_data(eng_st_writer *w, const void *data, size_t n);
/* Check every declared byte was written, flush and close. Always releases w. */
rk_status eng_st_writer_close(eng_st_writer *w);
/* Abandon a writer (on an error path). */
void eng_st_writer_abort(eng_st_writer *w);

#ifdef __cplusplus
}
#endif
#endif
