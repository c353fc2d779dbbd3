/*
 * greedy.h — greedy generation on a given backend, as `ragkv generate` does it: the prompt in
 * one prefill, then one decode per token, stopping at a stop id or when the sequence holds
 * `steps` positions. Shared by the tests that compare generated tokens (test_models.c against
 * the golden text and a scalar reference, test_gpu_conformance.c CUDA against the CPU).
 */
#ifndef RAGKV_TEST_ENGINE_GREEDY_H
#define RAGKV_TEST_ENGINE_GREEDY_H

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/engine.h"

/* Returns the token count (prompt included) written to out, which has room for steps + 1. */
static inline size_t test_greedy(eng_backend *be, const int32_t *prompt, size_t np, size_t steps, int32_t *out)
{
    const eng_model_info *mi = eng_model_get_info(eng_backend_model(be));
    eng_seq *s;
    cr_assert_eq(eng_seq_new(be, steps, &s), RK_OK, "%s", rk_error_msg());
    float *lg = malloc((size_t)mi->vocab * sizeof(float));
    cr_assert_not_null(lg);
    memcpy(out, prompt, np * sizeof(int32_t));
    cr_assert_eq(eng_prefill(s, prompt, np, NULL, ENG_LOGITS_LAST, lg), RK_OK, "%s", rk_error_msg());
    size_t n = np;
    for (;;) {
        int32_t next = eng_argmax(lg, mi->vocab);
        bool stop = false;
        for (int i = 0; i < mi->n_stop; i++)
            stop |= next == mi->stop[i];
        if (stop)
            break;
        out[n++] = next;
        if (eng_seq_len(s) >= steps)
            break;
        cr_assert_eq(eng_decode(be, &s, &next, 1, lg), RK_OK, "%s", rk_error_msg());
    }
    free(lg);
    eng_seq_free(s);
    return n;
}

#endif
