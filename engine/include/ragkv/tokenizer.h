/*
 * ragkv/tokenizer.h — the llama2.c tokenizer (tokenizer.bin): SentencePiece-style BPE by
 * piece scores, with byte fallback (<0xXX> pieces at ids 3..258) where the vocabulary has it.
 *
 * File format: int32 max_token_length, then for each of vocab pieces: float32 score,
 * int32 length, length bytes (little-endian).
 *
 *     eng_tokenizer *tk;
 *     eng_tokenizer_open("tok512.bin", 512, &tk);
 *     int32_t ids[256];  size_t n;
 *     eng_tokenizer_encode(tk, "Once upon a time", true, ids, 256, &n);   // BOS first
 *     size_t len;  const char *piece = eng_tokenizer_decode(tk, ids[0], ids[1], &len);
 *     eng_tokenizer_free(tk);
 */
#ifndef RAGKV_TOKENIZER_H
#define RAGKV_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eng_tokenizer eng_tokenizer;

/* Load a tokenizer.bin with `vocab` pieces (the model's vocabulary size; <= 0: every piece
 * in the file). *out owned by the caller (eng_tokenizer_free). RK_ERR_TRUNCATED or
 * RK_ERR_FORMAT on a bad file (fewer than the 3 special pieces <unk>, <s>, </s> included). */
rk_status eng_tokenizer_open(const char *path, int vocab, eng_tokenizer **out);

/* Build one from memory (same format); used for synthetic models. */
rk_status eng_tokenizer_from_bytes(const uint8_t *data, size_t len, int vocab, eng_tokenizer **out);

void eng_tokenizer_free(eng_tokenizer *t); /* NULL is a no-op */
int eng_tokenizer_vocab(const eng_tokenizer *t);

/* Encode UTF-8 text as llama2.c does: optional BOS (id 1), a dummy-prefix space piece when
 * the text is not empty, one piece per UTF-8 character (bytes 3+b where a character has no
 * piece), then greedy merges by best score. Writes at most cap ids to out and their number to
 * *n. RK_ERR_LIMIT when cap is too small, RK_ERR_RANGE when a character has neither a piece
 * nor a byte piece. */
rk_status eng_tokenizer_encode(const eng_tokenizer *t, const char *text, bool bos, int32_t *out, size_t cap,
                               size_t *n);

/* The bytes that token `tok` stands for after token `prev` (a leading space is dropped after
 * BOS; <0xXX> pieces give the raw byte). Borrowed from t; *len gets the byte count (the bytes
 * may include NUL). NULL for an id outside the vocabulary. */
const char *eng_tokenizer_decode(const eng_tokenizer *t, int32_t prev, int32_t tok, size_t *len);

/* Write a tokenizer.bin of n pieces (scores and byte strings) to path. */
rk_status eng_tokenizer_write(const char *path, const char *const *pieces, const size_t *lens,
                              const float *scores, int n);

#ifdef __cplusplus
}
#endif
#endif
