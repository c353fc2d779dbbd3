/* GPU: the build's device code runs on the card (label gpu; skips where no device). */
#include <criterion/criterion.h>

#include "ragkv/gpu.h"

Test(gpu, device_present_and_selftest)
{
    rk_gpu_info info;
    rk_status st = rk_gpu_query(&info);
    if (st == RK_ERR_UNSUPPORTED)
        cr_skip_test("skipped: built without CUDA");
    cr_assert_eq(st, RK_OK, "%s", rk_error_msg());
    if (info.count == 0)
        cr_skip_test("skipped: no CUDA device");
    cr_log_info("device 0: %s, cc %d.%d, %d SMs, %.1f GiB, driver %d runtime %d", info.name,
                info.cc_major, info.cc_minor, info.sm_count, info.mem_bytes / 1073741824.0,
                info.driver_version, info.runtime_version);
    cr_expect_gt(info.sm_count, 0);
    cr_expect_eq(rk_gpu_selftest(1 << 20), RK_OK, "%s", rk_error_msg());
}

/* Page-locked host memory: there with a device, and known to CUDA as such (ordinary memory is
 * not); without a device or CUDA, NULL with a reason. */
Test(gpu, page_locked_host_memory)
{
    rk_gpu_info info;
    bool device = rk_gpu_query(&info) == RK_OK && info.count > 0;
    unsigned char *p = rk_gpu_host_alloc(3 << 20);
    if (!device) {
        cr_expect_null(p);
        cr_expect(rk_error_msg()[0], "a reason is given");
        cr_expect(!rk_gpu_host_locked(&info));
        cr_skip_test("skipped: no CUDA device");
    }
    cr_assert_not_null(p, "%s", rk_error_msg());
    for (size_t i = 0; i < (3u << 20); i++) /* every page is writable and keeps what it holds */
        p[i] = (unsigned char)(i * 7);
    size_t bad = 0;
    for (size_t i = 0; i < (3u << 20); i++)
        bad += p[i] != (unsigned char)(i * 7);
    cr_expect_eq(bad, 0);
    cr_expect(rk_gpu_host_locked(p));
    cr_expect(rk_gpu_host_locked(p + (2 << 20)), "inside the allocation too");
    unsigned char stack[64];
    cr_expect(!rk_gpu_host_locked(stack), "ordinary memory is not page-locked");
    rk_gpu_host_free(p);
    rk_gpu_host_free(NULL);
}
