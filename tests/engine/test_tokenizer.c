/* The llama2.c tokenizer on the real tok512 / tok105 files: encode, decode, byte fallback. */
#include <criterion/criterion.h>
#include <string.h>

#include "ragkv/tokenizer.h"
#include "testutil.h"

static eng_tokenizer *open_tok(const char *file, int vocab)
{
    const char *p = rk_test_model_path(file);
    if (!p)
        cr_skip_test("skipped: no real model (%s)", file);
    eng_tokenizer *t;
    cr_assert_eq(eng_tokenizer_open(p, vocab, &t), RK_OK, "%s", rk_error_msg());
    return t;
}

static void roundtrip(eng_tokenizer *t, const char *text)
{
    int32_t ids[512];
    size_t n;
    cr_assert_eq(eng_tokenizer_encode(t, text, true, ids, 512, &n), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ids[0], 1);
    char out[2048];
    size_t len = 0;
    for (size_t i = 1; i < n; i++) {
        size_t l;
        const char *p = eng_tokenizer_decode(t, ids[i - 1], ids[i], &l);
        cr_assert_not_null(p);
        memcpy(out + len, p, l);
        len += l;
    }
    out[len] = 0;
    cr_expect_str_eq(out, text, "decode(encode(x)) != x");
}

Test(tokenizer, tok512_roundtrip_and_merges)
{
    eng_tokenizer *t = open_tok("tok512.bin", 512);
    cr_expect_eq(eng_tokenizer_vocab(t), 512);
    roundtrip(t, "Once upon a time");
    roundtrip(t, "Lily's mom said, \"Let's go!\"\nThe end.");
    roundtrip(t, "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80"); /* no pieces: byte fallback */
    int32_t ids[64];
    size_t n;
    cr_assert_eq(eng_tokenizer_encode(t, "Once upon a time", true, ids, 64, &n), RK_OK);
    cr_expect_lt(n, 17, "merges happened: %zu ids for 16 characters", n);
    /* decoding: the dummy-prefix space is dropped after BOS, kept elsewhere */
    size_t l1, l2;
    const char *a = eng_tokenizer_decode(t, 1, ids[1], &l1);
    const char *b = eng_tokenizer_decode(t, 5, ids[1], &l2);
    cr_expect_eq(l2, l1 + 1);
    cr_expect_eq(b[0], ' ');
    cr_expect(memcmp(a, b + 1, l1) == 0);
    /* byte pieces decode to the raw byte */
    size_t l;
    const char *p = eng_tokenizer_decode(t, 5, 3 + 0xe9, &l);
    cr_expect_eq(l, 1);
    cr_expect_eq((unsigned char)p[0], 0xe9);
    cr_expect_null(eng_tokenizer_decode(t, 1, 512, &l));
    cr_expect_null(eng_tokenizer_decode(t, 1, -1, &l));
    /* empty text: BOS only; no BOS asked: none */
    cr_assert_eq(eng_tokenizer_encode(t, "", true, ids, 64, &n), RK_OK);
    cr_expect_eq(n, 1);
    cr_assert_eq(eng_tokenizer_encode(t, "a", false, ids, 64, &n), RK_OK);
    cr_expect_neq(ids[0], 1);
    cr_expect_eq(eng_tokenizer_encode(t, "Once upon a time", true, ids, 2, &n), RK_ERR_LIMIT);
    eng_tokenizer_free(t);
}

Test(tokenizer, tok105_character_level)
{
    eng_tokenizer *t = open_tok("tok105.bin", 105);
    roundtrip(t, "once upon a time there was a dog.");
    int32_t ids[64];
    size_t n;
    /* no byte fallback in a 105-piece vocabulary: a character it lacks is an error */
    cr_expect_eq(eng_tokenizer_encode(t, "\xe2\x98\x83", true, ids, 64, &n), RK_ERR_RANGE);
    eng_tokenizer_free(t);
}

/* A file of fewer than the three special pieces is refused at load (fuzz_tokenizer found a
 * one-piece file whose BOS, id 1, the encoder emitted outside the vocabulary). */
Test(tokenizer, fewer_than_three_pieces_is_a_format_error)
{
    uint8_t file[4 + 3 * 9];
    size_t len = 4;
    memset(file, 0, 4);
    file[0] = 1; /* max piece length */
    for (int pieces = 1; pieces <= 3; pieces++) {
        memset(file + len, 0, 8); /* score 0, length 1 */
        file[len + 4] = 1;
        file[len + 8] = (uint8_t)('a' + pieces);
        len += 9;
        eng_tokenizer *t = NULL;
        rk_status st = eng_tokenizer_from_bytes(file, len, 0, &t);
        if (pieces < 3) {
            cr_expect_eq(st, RK_ERR_FORMAT, "%d pieces: %d", pieces, st);
            cr_expect_null(t);
        } else {
            cr_assert_eq(st, RK_OK, "%s", rk_error_msg());
            int32_t ids[4];
            size_t n;
            cr_assert_eq(eng_tokenizer_encode(t, "", true, ids, 4, &n), RK_OK);
            cr_expect(n == 1 && ids[0] == 1 && eng_tokenizer_vocab(t) == 3);
        }
        eng_tokenizer_free(t);
    }
}
