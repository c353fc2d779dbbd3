/* fuzz_tokenizer.c — the llama2.c tokenizer reader (engine/tokenizer.c) and its encoder and
 * decoder on arbitrary bytes.
 *
 * Input: a u16 length n (little-endian), then n bytes of tokenizer file, then the text to
 * encode (NUL bytes end it early, as in a C string). A tokenizer that parses must encode any
 * text into ids inside its vocabulary (or refuse it with an error), and decode every id, and
 * a few outside it, without reading out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t n = (size_t)data[0] | (size_t)data[1] << 8;
    if (n > size - 2)
        n = size - 2;
    /* private copies of exactly their sizes, so that reads past either end are caught */
    uint8_t *file = malloc(n ? n : 1);
    char *text = malloc(size - 2 - n + 1);
    if (!file || !text)
        abort();
    memcpy(file, data + 2, n);
    memcpy(text, data + 2 + n, size - 2 - n);
    text[size - 2 - n] = 0;
    eng_tokenizer *t = NULL;
    if (eng_tokenizer_from_bytes(file, n, 0, &t) == RK_OK) {
        int vocab = eng_tokenizer_vocab(t);
        size_t cap = strlen(text) + 3, got = 0;
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids)
            abort();
        for (int bos = 0; bos < 2; bos++)
            if (eng_tokenizer_encode(t, text, bos, ids, cap, &got) == RK_OK)
                for (size_t i = 0; i < got; i++) {
                    if (ids[i] < 0 || ids[i] >= vocab)
                        abort(); /* the encoder promised ids of this vocabulary */
                    size_t len;
                    const char *p = eng_tokenizer_decode(t, i ? ids[i - 1] : 1, ids[i], &len);
                    volatile char sink = 0;
                    for (size_t k = 0; p && k < len; k++)
                        sink ^= p[k];
                    (void)sink;
                }
        int32_t odd[] = {-1, vocab, vocab + 7, INT32_MAX};
        for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
            size_t len = 1;
            if (eng_tokenizer_decode(t, 1, odd[i], &len) || len != 0)
                abort(); /* an id outside the vocabulary decodes to nothing */
        }
        free(ids);
        eng_tokenizer_free(t);
    }
    free(file);
    free(text);
    return 0;
}
