/* Chunk record encoding: round trip, and every malformed input is an error, never a crash. */
#define _GNU_SOURCE /* memmem */
#include <criterion/criterion.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/hash.h"
#include "ragkv/record.h"

static void sample(cc_record *r, uint8_t *craft)
{
    cc_record_init(r);
    for (int i = 0; i < CC_KEY_BYTES; i++)
        r->key.b[i] = (uint8_t)(i * 7);
    strcpy(r->ns, "tenant-a");
    strcpy(r->model, "stories260K");
    r->ntokens = 256;
    r->codec = 3;
    r->level = 2;
    r->size = 1 << 20;
    r->csum = 0x1122334455667788ull;
    r->created_ms = 1764000000000ull;
    r->expires_ms = 1764000600000ull;
    r->flags = CC_RECORD_FLAG_PINNED;
    r->cost = 12.5;
    for (int i = 0; i < 10; i++)
        craft[i] = (uint8_t)(100 + i);
    r->craft = craft;
    r->craft_len = 10;
}

Test(record, round_trip)
{
    cc_record r, back;
    uint8_t craft[10];
    sample(&r, craft);
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(cc_record_encode(&r, &b), RK_OK);
    rk_buf_append(&b, "BLOB", 4);
    size_t used = 0;
    cr_assert_eq(cc_record_decode(b.data, b.len, &back, &used), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(used, b.len - 4, "decode stops where the blob starts");
    cr_expect(cc_key_equal(&back.key, &r.key));
    cr_expect_str_eq(back.ns, "tenant-a");
    cr_expect_str_eq(back.model, "stories260K");
    cr_expect_eq(back.ntokens, 256);
    cr_expect_eq(back.codec, 3);
    cr_expect_eq(back.level, 2);
    cr_expect_eq(back.size, 1u << 20);
    cr_expect_eq(back.csum, 0x1122334455667788ull);
    cr_expect_eq(back.created_ms, 1764000000000ull);
    cr_expect_eq(back.expires_ms, 1764000600000ull);
    cr_expect_eq(back.flags, CC_RECORD_FLAG_PINNED);
    cr_expect_eq(back.cost, 12.5);
    cr_assert_eq(back.craft_len, 10);
    cr_expect(memcmp(back.craft, craft, 10) == 0);
    cr_expect_eq(back.variants_len, 0);
    cc_record_clear(&back);
    rk_buf_free(&b);
}

Test(record, every_truncation_and_bit_flip_is_rejected)
{
    cc_record r, back;
    uint8_t craft[10];
    sample(&r, craft);
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(cc_record_encode(&r, &b), RK_OK);
    size_t used;
    for (size_t n = 0; n < b.len; n++) {
        rk_status st = cc_record_decode(b.data, n, &back, &used);
        cr_expect_neq(st, RK_OK, "prefix of %zu bytes accepted", n);
    }
    for (size_t i = 0; i < b.len; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            b.data[i] ^= (uint8_t)(1 << bit);
            rk_status st = cc_record_decode(b.data, b.len, &back, &used);
            cr_expect_neq(st, RK_OK, "flip of byte %zu bit %d accepted", i, bit);
            if (st == RK_OK)
                cc_record_clear(&back);
            b.data[i] ^= (uint8_t)(1 << bit);
        }
    }
    rk_buf_free(&b);
}

/* A name with a NUL byte inside, under a valid checksum (what the fuzzer found): as a C string it
 * would be shorter than its bytes, so it could never re-encode to them; decode must refuse it. */
Test(record, a_nul_byte_inside_a_name_is_rejected)
{
    cc_record r, back;
    uint8_t craft[10];
    sample(&r, craft);
    for (int which = 0; which < 2; which++) {
        const char *name = which ? "stories260K" : "tenant-a";
        rk_buf b = RK_BUF_INIT;
        cr_assert_eq(cc_record_encode(&r, &b), RK_OK);
        uint8_t *at = memmem(b.data, b.len, name, strlen(name));
        cr_assert_not_null(at);
        at[3] = 0;
        uint32_t blen = rk_get_le32(b.data + 4);
        rk_put_le64(b.data + 8 + blen, rk_xxh3_64(b.data + 8, blen));
        size_t used = 0;
        rk_status st = cc_record_decode(b.data, b.len, &back, &used);
        cr_expect_eq(st, RK_ERR_FORMAT, "%s with a NUL inside: status %d", name, st);
        cr_expect_eq(back.ns[0], 0, "a refused record leaves nothing behind");
        if (st == RK_OK)
            cc_record_clear(&back);
        rk_buf_free(&b);
    }
}

Test(record, bad_fields_are_refused_at_encode)
{
    cc_record r;
    uint8_t craft[10];
    sample(&r, craft);
    rk_buf b = RK_BUF_INIT;
    r.ns[0] = 0;
    cr_expect_eq(cc_record_encode(&r, &b), RK_ERR_INVALID);
    sample(&r, craft);
    r.craft = NULL;
    cr_expect_eq(cc_record_encode(&r, &b), RK_ERR_INVALID);
    rk_buf_free(&b);
}

Test(record, gdsf_priority_values_frequency_cost_and_size)
{
    cr_expect_eq(cc_gdsf_priority(0, 1, 100, 10), 10.0);
    cr_expect_eq(cc_gdsf_priority(5, 2, 100, 10), 25.0, "clock + hits*cost/size");
    cr_expect(cc_gdsf_priority(0, 1, 100, 10) > cc_gdsf_priority(0, 1, 100, 1000), "smaller is worth more");
    cr_expect(cc_gdsf_priority(0, 3, 1, 10) > cc_gdsf_priority(0, 1, 1, 10), "more hits are worth more");
    cr_expect_eq(cc_gdsf_priority(1, 1, 5, 0), 6.0, "size 0 counts as 1");
}
