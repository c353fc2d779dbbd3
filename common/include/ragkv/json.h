/*
 * ragkv/json.h — a small, strict JSON (RFC 8259) parser into a read-only tree.
 *
 * Used for the files ragkv reads but does not own the format of: Hugging Face config.json,
 * safetensors headers, sharded-weight index files. Strict: no comments, no trailing commas,
 * no leading zeros, no control characters in strings, valid UTF-8 only, unpaired surrogates
 * rejected, duplicate object keys rejected, nesting limited to RK_JSON_MAX_DEPTH, nothing
 * but whitespace after the value. Errors give the byte offset.
 *
 *     rk_json *root;
 *     if (rk_json_parse(text, len, &root) != RK_OK)
 *         fprintf(stderr, "config.json: %s\n", rk_error_msg());
 *     int64_t dim;
 *     if (!rk_json_get_int(root, "hidden_size", &dim)) ... missing or not an integer ...;
 *     rk_json_free(root);
 *
 * Every node returned by the accessors belongs to the tree and lives until rk_json_free.
 */
#ifndef RAGKV_JSON_H
#define RAGKV_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RK_JSON_MAX_DEPTH 64

typedef enum rk_json_type {
    RK_JSON_NULL = 0,
    RK_JSON_BOOL,
    RK_JSON_NUMBER,
    RK_JSON_STRING,
    RK_JSON_ARRAY,
    RK_JSON_OBJECT,
} rk_json_type;

typedef struct rk_json rk_json;

/* One value. Read the fields directly or through the accessors below. */
struct rk_json {
    rk_json_type type; /* which of the fields below is meaningful */
    bool boolean;      /* RK_JSON_BOOL */
    bool is_int;       /* RK_JSON_NUMBER written without fraction/exponent and fits int64 */
    int64_t i;         /* RK_JSON_NUMBER when is_int */
    double num;        /* RK_JSON_NUMBER (always set, rounded when is_int and huge) */
    char *str;         /* RK_JSON_STRING: decoded UTF-8, NUL-terminated (may hold NULs: see len) */
    size_t len;        /* RK_JSON_STRING: bytes in str; ARRAY/OBJECT: number of items */
    rk_json *items;    /* ARRAY/OBJECT: (len) values, in document order */
    char **keys;       /* OBJECT: (len) keys, NUL-terminated, parallel to items */
};

/* Parse len bytes of text (need not be NUL-terminated). *out owned by the caller, released
 * with rk_json_free. RK_ERR_FORMAT (with offset and reason in rk_error_msg) on bad input,
 * RK_ERR_NOMEM when out of memory. */
rk_status rk_json_parse(const char *text, size_t len, rk_json **out);

/* Free a tree from rk_json_parse. NULL is a no-op. */
void rk_json_free(rk_json *root);

/* Member `key` of an object; NULL when obj is not an object or has no such key. */
const rk_json *rk_json_get(const rk_json *obj, const char *key);

/* Typed reads of member `key` (obj must be an object). Return false, leaving *out alone,
 * when the member is missing or of another type. get_int accepts only integral numbers;
 * get_num accepts any number. */
bool rk_json_get_int(const rk_json *obj, const char *key, int64_t *out);
bool rk_json_get_num(const rk_json *obj, const char *key, double *out);
bool rk_json_get_bool(const rk_json *obj, const char *key, bool *out);
const char *rk_json_get_str(const rk_json *obj, const char *key); /* NULL if not a string */

#ifdef __cplusplus
}
#endif
#endif
