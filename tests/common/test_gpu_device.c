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
