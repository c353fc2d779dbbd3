/* chunk_key.c — BLAKE2b chunk identity. */
#include "ragkv/chunk_key.h"

#include <string.h>

#include "ragkv/bytes.h"
#include "ragkv/hash.h"

/* Changing the framing changes every key: bump the tag's version when doing so. */
static const char key_domain[] = "ragkv-chunk-key-v1";

static rk_status check_name(const char *what, const char *s)
{
    if (!s || !*s)
        return rk_error_set(RK_ERR_INVALID, "chunk key: empty %s", what);
    if (strlen(s) > 255)
        return rk_error_set(RK_ERR_INVALID, "chunk key: %s longer than 255 bytes", what);
    return RK_OK;
}

static void hash_str(rk_blake2b_state *st, const char *s)
{
    uint8_t len[4];
    size_t n = strlen(s);
    rk_put_le32(len, (uint32_t)n);
    rk_blake2b_update(st, len, 4);
    rk_blake2b_update(st, s, n);
}

rk_status cc_key_compute(const char *model_id, const char *ns, const int32_t *tokens,
                         size_t ntokens, cc_key *out)
{
    rk_status s;
    if ((s = check_name("model id", model_id)) != RK_OK || (s = check_name("namespace", ns)) != RK_OK)
        return s;
    if (!tokens && ntokens)
        return rk_error_set(RK_ERR_INVALID, "chunk key: NULL tokens");
    rk_blake2b_state st;
    if ((s = rk_blake2b_init(&st, CC_KEY_BYTES)) != RK_OK)
        return s;
    rk_blake2b_update(&st, key_domain, sizeof(key_domain)); /* tag with its NUL */
    hash_str(&st, model_id);
    hash_str(&st, ns);
    uint8_t tmp[8 * 64];
    rk_put_le64(tmp, (uint64_t)ntokens);
    rk_blake2b_update(&st, tmp, 8);
    /* tokens as little-endian int32, in blocks, so the key does not depend on host order */
    for (size_t i = 0; i < ntokens;) {
        size_t m = 0;
        for (; m < sizeof(tmp) / 4 && i < ntokens; m++, i++)
            rk_put_le32(tmp + 4 * m, (uint32_t)tokens[i]);
        rk_blake2b_update(&st, tmp, 4 * m);
    }
    return rk_blake2b_final(&st, out->b, CC_KEY_BYTES);
}

char *cc_key_to_hex(const cc_key *k, char *out)
{
    return rk_hex(out, k->b, CC_KEY_BYTES);
}

rk_status cc_key_from_hex(const char *hex, cc_key *out)
{
    return rk_unhex(out->b, CC_KEY_BYTES, hex);
}

int cc_key_equal(const cc_key *a, const cc_key *b)
{
    uint8_t d = 0;
    for (int i = 0; i < CC_KEY_BYTES; i++)
        d |= a->b[i] ^ b->b[i];
    return d == 0;
}
