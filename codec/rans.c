/* rans.c — the entropy coder of cachegen: range-variant asymmetric numeral systems (rANS)
 * with 16-bit probabilities, a 32-bit state kept in [2^23, 2^31) and byte-wise
 * renormalisation. Decoding needs no division, which matters on CPU and GPU alike; the
 * decoder lives beside each consumer (cachegen.c, cuda/) and is specified in
 * docs/format.md. */
#include <string.h>

#include "codec_impl.h"
#include "ragkv/alloc.h"

void rans_normalize(const uint64_t *counts, int nsym, uint16_t *freq)
{
    uint64_t total = 0;
    for (int s = 0; s < nsym; s++)
        total += counts[s];
    uint32_t spare = RANS_PROB_SCALE - (uint32_t)nsym; /* every symbol keeps at least 1 */
    uint32_t sum = 0;
    int best = 0;
    for (int s = 0; s < nsym; s++) {
        uint64_t f = total ? (unsigned __int128)counts[s] * spare / total : 0;
        freq[s] = (uint16_t)(1 + f);
        sum += freq[s];
        if (counts[s] > counts[best])
            best = s;
    }
    if (!total) { /* no data: spread evenly */
        sum = 0;
        for (int s = 0; s < nsym; s++) {
            freq[s] = (uint16_t)(RANS_PROB_SCALE / (uint32_t)nsym);
            sum += freq[s];
        }
    }
    freq[best] = (uint16_t)(freq[best] + (RANS_PROB_SCALE - sum)); /* the rounding loss */
}

rk_status rans_model_build(const uint16_t *freq, int nsym, rans_model *m)
{
    if (nsym < 2 || nsym > CODEC_MAX_SYMBOLS)
        return rk_error_set(RK_ERR_FORMAT, "probability model with %d symbols", nsym);
    uint32_t c = 0;
    for (int s = 0; s < nsym; s++) {
        if (!freq[s])
            return rk_error_set(RK_ERR_FORMAT, "probability model: symbol %d has frequency 0", s);
        m->cum[s] = c;
        c += freq[s];
    }
    if (c != RANS_PROB_SCALE)
        return rk_error_set(RK_ERR_FORMAT, "probability model sums to %u, not 65536", c);
    m->cum[nsym] = c;
    m->nsym = (uint16_t)nsym;
    uint32_t sym = 0;
    for (uint32_t b = 0; b < 256; b++) {
        while (m->cum[sym + 1] <= (b << 8))
            sym++;
        m->bucket[b] = (uint8_t)sym;
    }
    return RK_OK;
}

/* A bucket entry holds a symbol (< 2^6) above a bucket offset. */
_Static_assert(RANS_DBUCKET_BITS >= 1 && RANS_DBUCKET_BITS <= 10, "bucket entries are 16 bits");

void rans_dmodel_build(const rans_model *m, rans_dmodel *d)
{
    const uint32_t bs = 1u << RANS_DBUCKET_BITS;
    memset(d, 0, sizeof *d);
    for (uint32_t s = 0; s < m->nsym; s++)
        d->cum[s] = (uint16_t)m->cum[s];
    uint32_t s = 0;
    for (uint32_t b = 0; b < RANS_DBUCKETS; b++) {
        uint32_t b0 = b * bs, b1 = b0 + bs;
        while (m->cum[s + 1] <= b0)
            s++;
        /* the pair (s0, s0 + 1) covering most of the bucket's slots: a run of rare symbols
           (a quantizer's unused tail, frequency 1 each) at the bucket's start would otherwise
           send the common symbol after it through as many steps as the run is long; the
           decoder steps down as well as up. A bucket with at most one boundary inside keeps
           its first symbol. */
        uint32_t s0 = s, best = 0;
        for (uint32_t c = s; c < m->nsym && m->cum[c] < b1; c++) {
            uint32_t lo = m->cum[c] > b0 ? m->cum[c] : b0;
            uint32_t hi = c + 2 <= m->nsym ? m->cum[c + 2] : m->cum[c + 1];
            hi = hi < b1 ? hi : b1;
            if (hi - lo > best)
                best = hi - lo, s0 = c;
        }
        uint32_t split = m->cum[s0 + 1] > b0 ? m->cum[s0 + 1] - b0 : 1; /* >= 1: s0 reaches the bucket */
        if (split > bs)
            split = bs;
        d->bucket[b] = (uint16_t)((s0 << RANS_DBUCKET_BITS) + bs - split);
    }
}

rk_status rans_encode(const uint8_t *sym, const rans_model *const *models, size_t n,
                      rk_buf *out)
{
    /* Each symbol emits at most 2 bytes (frequency >= 1 of 2^16), plus the 4-byte state. */
    size_t cap = 2 * n + 8;
    uint8_t *buf = rk_malloc(cap);
    if (!buf)
        return rk_error_set(RK_ERR_NOMEM, "rans: %zu bytes", cap);
    uint8_t *end = buf + cap, *p = end;
    uint32_t x = RANS_L;
    for (size_t i = n; i-- > 0;) { /* rANS is last-in first-out: encode backwards */
        const rans_model *m = models[i];
        uint32_t start = m->cum[sym[i]], freq = m->cum[sym[i] + 1] - start;
        uint32_t x_max = ((RANS_L >> RANS_PROB_BITS) << 8) * freq;
        while (x >= x_max) {
            *--p = (uint8_t)x;
            x >>= 8;
        }
        x = ((x / freq) << RANS_PROB_BITS) + (x % freq) + start;
    }
    p -= 4;
    rk_put_le32(p, x);
    rk_buf_append(out, p, (size_t)(end - p));
    rk_free(buf);
    return out->failed ? rk_error_set(RK_ERR_NOMEM, "rans: output") : RK_OK;
}
