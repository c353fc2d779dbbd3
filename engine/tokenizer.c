/* tokenizer.c — llama2.c tokenizer.bin: load, BPE encode by scores, decode (tokenizer.h). */
#include "ragkv/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"

typedef struct piece_ref {
    const char *str; /* borrowed from the tokenizer's vocab */
    size_t len;
    int32_t id;
} piece_ref;

struct eng_tokenizer {
    int vocab;         /* pieces */
    char **pieces;     /* (vocab) bytes of each piece, NUL-terminated, owned */
    size_t *lens;      /* (vocab) byte length of each piece */
    float *scores;     /* (vocab) merge scores: higher merges first */
    piece_ref *sorted; /* (vocab) pieces sorted bytewise, for lookups */
    size_t max_len;    /* longest piece */
    char bytes[256][2]; /* single-byte strings for <0xXX> decoding */
};

static int cmp_piece(const void *a, const void *b)
{
    const piece_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->str, y->str, n);
    if (c)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static int32_t lookup(const eng_tokenizer *t, const char *s, size_t len)
{
    piece_ref key = {s, len, 0};
    const piece_ref *r = bsearch(&key, t->sorted, (size_t)t->vocab, sizeof(piece_ref), cmp_piece);
    return r ? r->id : -1;
}

void eng_tokenizer_free(eng_tokenizer *t)
{
    if (!t)
        return;
    if (t->pieces)
        for (int i = 0; i < t->vocab; i++)
            rk_free(t->pieces[i]);
    rk_free(t->pieces);
    rk_free(t->lens);
    rk_free(t->scores);
    rk_free(t->sorted);
    rk_free(t);
}

int eng_tokenizer_vocab(const eng_tokenizer *t) { return t->vocab; }

rk_status eng_tokenizer_from_bytes(const uint8_t *data, size_t len, int vocab, eng_tokenizer **out)
{
    *out = NULL;
    rk_reader r = rk_reader_make(data, len);
    rk_status st;
    uint32_t maxlen = rk_reader_u32(&r);
    if (r.short_read)
        return rk_error_set(RK_ERR_TRUNCATED, "tokenizer: %zu bytes, no header", len);
    (void)maxlen; /* informative only: actual lengths are checked below */
    /* count pieces when vocab is not given */
    if (vocab <= 0) {
        rk_reader c = r;
        vocab = 0;
        while (rk_reader_left(&c) > 0) {
            rk_reader_u32(&c);
            uint32_t l = rk_reader_u32(&c);
            if (c.short_read || !rk_reader_take(&c, l))
                return rk_error_set(RK_ERR_TRUNCATED, "tokenizer: piece %d is truncated", vocab);
            if (++vocab > (1 << 22))
                return rk_error_set(RK_ERR_LIMIT, "tokenizer: too many pieces");
        }
        if (vocab == 0)
            return rk_error_set(RK_ERR_FORMAT, "tokenizer: no pieces");
    }
    if (vocab < 3) /* ids 0, 1, 2 are <unk>, <s> (BOS, which encode emits) and </s> */
        return rk_error_set(RK_ERR_FORMAT, "tokenizer: %d pieces, fewer than the 3 special ones",
                            vocab);
    eng_tokenizer *t = rk_calloc(1, sizeof(*t));
    if (!t)
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    t->vocab = vocab;
    t->pieces = rk_calloc((size_t)vocab, sizeof(char *));
    t->lens = rk_calloc((size_t)vocab, sizeof(size_t));
    t->scores = rk_calloc((size_t)vocab, sizeof(float));
    t->sorted = rk_calloc((size_t)vocab, sizeof(piece_ref));
    if (!t->pieces || !t->lens || !t->scores || !t->sorted) {
        st = rk_error_set(RK_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < vocab; i++) {
        uint32_t sbits = rk_reader_u32(&r);
        uint32_t l = rk_reader_u32(&r);
        if (r.short_read) {
            st = rk_error_set(RK_ERR_TRUNCATED, "tokenizer: ends at piece %d of %d", i, vocab);
            goto fail;
        }
        if (l > (1u << 16)) {
            st = rk_error_set(RK_ERR_FORMAT, "tokenizer: piece %d claims %u bytes", i, l);
            goto fail;
        }
        const uint8_t *p = rk_reader_take(&r, l);
        if (!p) {
            st = rk_error_set(RK_ERR_TRUNCATED, "tokenizer: piece %d of %d is truncated", i, vocab);
            goto fail;
        }
        memcpy(&t->scores[i], &sbits, 4);
        t->pieces[i] = rk_malloc(l + 1);
        if (!t->pieces[i]) {
            st = rk_error_set(RK_ERR_NOMEM, "out of memory");
            goto fail;
        }
        memcpy(t->pieces[i], p, l);
        t->pieces[i][l] = 0;
        t->lens[i] = l;
        if (l > t->max_len)
            t->max_len = l;
        t->sorted[i] = (piece_ref){t->pieces[i], l, i};
    }
    qsort(t->sorted, (size_t)vocab, sizeof(piece_ref), cmp_piece);
    for (int b = 0; b < 256; b++) {
        t->bytes[b][0] = (char)b;
        t->bytes[b][1] = 0;
    }
    *out = t;
    return RK_OK;
fail:
    eng_tokenizer_free(t);
    return st;
}

rk_status eng_tokenizer_open(const char *path, int vocab, eng_tokenizer **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return rk_error_set(RK_ERR_NOT_FOUND, "cannot open tokenizer %s", path);
    rk_buf b = RK_BUF_INIT;
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        rk_buf_append(&b, chunk, got);
        if (b.len > (256u << 20))
            break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err || b.failed || b.len > (256u << 20)) {
        rk_buf_free(&b);
        return rk_error_set(err ? RK_ERR_IO : RK_ERR_LIMIT, "cannot read tokenizer %s", path);
    }
    rk_status st = eng_tokenizer_from_bytes(b.data, b.len, vocab, out);
    rk_buf_free(&b);
    if (st != RK_OK) {
        char old[256];
        snprintf(old, sizeof(old), "%s", rk_error_msg());
        rk_error_set(st, "%s: %s", path, old);
    }
    return st;
}

rk_status eng_tokenizer_encode(const eng_tokenizer *t, const char *text, bool bos, int32_t *out, size_t cap,
                               size_t *n)
{
    *n = 0;
    if (!text)
        return rk_error_set(RK_ERR_INVALID, "encode: NULL text");
    size_t tlen = strlen(text);
    /* at most: BOS + prefix + one id per byte */
    int32_t *tok = rk_malloc((tlen + 3) * sizeof(int32_t));
    char *buf = rk_malloc(t->max_len * 2 + 8);
    rk_status st = RK_OK;
    size_t k = 0;
    if (!tok || !buf) {
        st = rk_error_set(RK_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (bos)
        tok[k++] = 1;
    if (tlen > 0) {
        int32_t sp = lookup(t, " ", 1);
        if (sp >= 0)
            tok[k++] = sp;
    }
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < tlen) {
        /* one UTF-8 character: a lead byte and up to 3 continuation bytes */
        size_t clen = 1;
        while (clen < 4 && i + clen < tlen && (s[i + clen] & 0xc0) == 0x80)
            clen++;
        int32_t id = lookup(t, (const char *)s + i, clen);
        if (id >= 0) {
            tok[k++] = id;
        } else {
            for (size_t j = 0; j < clen; j++) {
                int32_t b = (int32_t)s[i + j] + 3;
                if (b >= t->vocab) {
                    st = rk_error_set(RK_ERR_RANGE, "encode: byte 0x%02x at offset %zu has no piece in this "
                                      "%d-piece vocabulary", s[i + j], i + j, t->vocab);
                    goto out;
                }
                tok[k++] = b;
            }
        }
        i += clen;
    }
    /* merge the best-scoring adjacent pair until none merges */
    for (;;) {
        float best = -1e10f;
        int32_t best_id = -1;
        size_t best_at = 0;
        for (size_t j = 0; j + 1 < k; j++) {
            size_t l1 = t->lens[tok[j]], l2 = t->lens[tok[j + 1]];
            if (l1 + l2 > t->max_len)
                continue;
            memcpy(buf, t->pieces[tok[j]], l1);
            memcpy(buf + l1, t->pieces[tok[j + 1]], l2);
            int32_t id = lookup(t, buf, l1 + l2);
            if (id >= 0 && t->scores[id] > best) {
                best = t->scores[id];
                best_id = id;
                best_at = j;
            }
        }
        if (best_id < 0)
            break;
        tok[best_at] = best_id;
        memmove(tok + best_at + 1, tok + best_at + 2, (k - best_at - 2) * sizeof(int32_t));
        k--;
    }
    if (k > cap) {
        st = rk_error_set(RK_ERR_LIMIT, "encode: %zu tokens, room for %zu", k, cap);
        goto out;
    }
    memcpy(out, tok, k * sizeof(int32_t));
    *n = k;
out:
    rk_free(tok);
    rk_free(buf);
    return st;
}

const char *eng_tokenizer_decode(const eng_tokenizer *t, int32_t prev, int32_t tok, size_t *len)
{
    if (tok < 0 || tok >= t->vocab) {
        *len = 0;
        return NULL;
    }
    const char *p = t->pieces[tok];
    size_t l = t->lens[tok];
    if (prev == 1 && l > 0 && p[0] == ' ') {
        p++;
        l--;
    }
    /* <0xXX>: a raw byte */
    if (l == 6 && p[0] == '<' && p[1] == '0' && p[2] == 'x' && p[5] == '>') {
        int v = 0, ok = 1;
        for (int i = 3; i < 5; i++) {
            char c = p[i];
            v <<= 4;
            if (c >= '0' && c <= '9')
                v |= c - '0';
            else if (c >= 'A' && c <= 'F')
                v |= c - 'A' + 10;
            else if (c >= 'a' && c <= 'f')
                v |= c - 'a' + 10;
            else
                ok = 0;
        }
        if (ok) {
            *len = 1;
            return t->bytes[v];
        }
    }
    *len = l;
    return p;
}

rk_status eng_tokenizer_write(const char *path, const char *const *pieces, const size_t *lens, const float *scores,
                              int n)
{
    rk_buf b = RK_BUF_INIT;
    uint32_t maxlen = 0;
    for (int i = 0; i < n; i++)
        if (lens[i] > maxlen)
            maxlen = (uint32_t)lens[i];
    rk_buf_put_u32(&b, maxlen);
    for (int i = 0; i < n; i++) {
        uint32_t sb;
        memcpy(&sb, &scores[i], 4);
        rk_buf_put_u32(&b, sb);
        rk_buf_put_u32(&b, (uint32_t)lens[i]);
        rk_buf_append(&b, pieces[i], lens[i]);
    }
    if (b.failed) {
        rk_buf_free(&b);
        return rk_error_set(RK_ERR_NOMEM, "out of memory");
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        rk_buf_free(&b);
        return rk_error_set(RK_ERR_IO, "cannot create %s", path);
    }
    bool ok = fwrite(b.data, 1, b.len, f) == b.len;
    ok = fclose(f) == 0 && ok;
    rk_buf_free(&b);
    return ok ? RK_OK : rk_error_set(RK_ERR_IO, "cannot write %s", path);
}
