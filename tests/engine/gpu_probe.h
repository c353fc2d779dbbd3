/* gpu_probe.h — for the CUDA test files: whether a CUDA backend can be made here, and a
 * Criterion main that skips the whole file at once when it cannot (rk_test_main_unless runs
 * the probe in a child process, exit 77 = ctest's SKIP_RETURN_CODE). */
#ifndef RAGKV_TESTS_GPU_PROBE_H
#define RAGKV_TESTS_GPU_PROBE_H

#include <stdbool.h>

#include "ragkv/engine.h"
#include "testutil.h"

static inline bool rk_test_cuda_here(void)
{
    eng_model *m;
    eng_backend *be = NULL; /* (the child exits right after: nothing to free) */
    return eng_model_synth("test-llama", 1, &m) == RK_OK && eng_backend_cuda_new(m, 0, &be) == RK_OK;
}

#define RK_TEST_MAIN_NEEDS_CUDA(name)                                                                   \
    int main(int argc, char *argv[])                                                                  \
    {                                                                                                 \
        return rk_test_main_unless(argc, argv, rk_test_cuda_here, name, "no CUDA device or backend here"); \
    }

#endif
