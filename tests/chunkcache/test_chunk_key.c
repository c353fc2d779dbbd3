/* Tests of chunk identity (decision 2 of the design: deterministic, content-addressed). */
#include <criterion/criterion.h>
#include <string.h>

#include "ragkv/chunk_key.h"

static const int32_t toks[] = {1, 400, 23, 9, 77};

Test(chunk_key, deterministic_and_sensitive_to_every_field)
{
    cc_key a, b;
    cr_assert_eq(cc_key_compute("m", "tenant-a", toks, 5, &a), RK_OK);
    cr_assert_eq(cc_key_compute("m", "tenant-a", toks, 5, &b), RK_OK);
    cr_expect(cc_key_equal(&a, &b));
    cr_assert_eq(cc_key_compute("m", "tenant-b", toks, 5, &b), RK_OK);
    cr_expect(!cc_key_equal(&a, &b), "namespace is part of the key");
    cr_assert_eq(cc_key_compute("m2", "tenant-a", toks, 5, &b), RK_OK);
    cr_expect(!cc_key_equal(&a, &b), "model is part of the key");
    cr_assert_eq(cc_key_compute("m", "tenant-a", toks, 4, &b), RK_OK);
    cr_expect(!cc_key_equal(&a, &b), "token count is part of the key");
    int32_t t2[5];
    memcpy(t2, toks, sizeof(t2));
    t2[4] ^= 1 << 20;
    cr_assert_eq(cc_key_compute("m", "tenant-a", t2, 5, &b), RK_OK);
    cr_expect(!cc_key_equal(&a, &b), "high bits of a token count");
}

Test(chunk_key, framing_is_unambiguous)
{
    cc_key a, b;
    cc_key_compute("ab", "c", toks, 2, &a);
    cc_key_compute("a", "bc", toks, 2, &b);
    cr_expect(!cc_key_equal(&a, &b));
}

Test(chunk_key, hex_round_trip_and_bad_input)
{
    cc_key a, b;
    char hex[CC_KEY_HEX_LEN + 1];
    cc_key_compute("m", "ns", toks, 5, &a);
    cc_key_to_hex(&a, hex);
    cr_expect_eq(strlen(hex), 64);
    cr_assert_eq(cc_key_from_hex(hex, &b), RK_OK);
    cr_expect(cc_key_equal(&a, &b));
    cr_expect_eq(cc_key_from_hex("00", &b), RK_ERR_FORMAT);
    cr_expect_eq(cc_key_compute("", "ns", toks, 5, &a), RK_ERR_INVALID);
    cr_expect_eq(cc_key_compute("m", NULL, toks, 5, &a), RK_ERR_INVALID);
    cr_expect_eq(cc_key_compute("m", "ns", NULL, 5, &a), RK_ERR_INVALID);
    cr_expect_eq(cc_key_compute("m", "ns", NULL, 0, &a), RK_OK, "empty chunk is allowed");
}
