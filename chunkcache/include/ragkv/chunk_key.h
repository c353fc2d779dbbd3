/*
 * ragkv/chunk_key.h — content-addressed chunk identity.
 *
 * A chunk's key is BLAKE2b-256 over (model id, namespace, token ids), framed so that no two
 * different inputs share a byte string: a domain tag, then each string with its length, then
 * the token count and the tokens as little-endian int32. The namespace is the tenant id for
 * private chunks, or a shared corpus name an admin granted. The same input gives the same key
 * on every process and machine.
 *
 *     cc_key k;
 *     cc_key_compute("stories260K", "tenant-a", toks, ntoks, &k);
 *     char hex[CC_KEY_HEX_LEN + 1];
 *     puts(cc_key_to_hex(&k, hex));
 */
#ifndef RAGKV_CHUNK_KEY_H
#define RAGKV_CHUNK_KEY_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CC_KEY_BYTES 32
#define CC_KEY_HEX_LEN (2 * CC_KEY_BYTES)

typedef struct cc_key {
    uint8_t b[CC_KEY_BYTES];
} cc_key;

/* Compute the key. model_id and ns are NUL-terminated, non-empty, at most 255 bytes;
 * tokens may be NULL only when ntokens == 0. RK_ERR_INVALID on bad arguments. */
rk_status cc_key_compute(const char *model_id, const char *ns, const int32_t *tokens,
                         size_t ntokens, cc_key *out);

/* Lower-case hex into out (CC_KEY_HEX_LEN + 1 bytes). Returns out. */
char *cc_key_to_hex(const cc_key *k, char *out);

/* Parse CC_KEY_HEX_LEN hex digits. RK_ERR_FORMAT on anything else. */
rk_status cc_key_from_hex(const char *hex, cc_key *out);

/* 1 when equal, in time independent of where they differ. */
int cc_key_equal(const cc_key *a, const cc_key *b);

#ifdef __cplusplus
}
#endif
#endif
