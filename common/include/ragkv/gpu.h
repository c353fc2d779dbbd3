/*
 * ragkv/gpu.h — what every module needs to know about the accelerator, without including
 * CUDA headers: is there a device, what is it, does the toolchain's code run on it.
 *
 *     rk_gpu_info info;
 *     if (rk_gpu_query(&info) == RK_OK && info.count > 0)
 *         printf("%s, %d SMs, %.1f GiB\n", info.name, info.sm_count, info.mem_bytes / 1073741824.0);
 *
 * In a build without CUDA every function returns RK_ERR_UNSUPPORTED. CUDA errors never
 * abort: they come back as RK_ERR_DEVICE with the CUDA error string in rk_error_msg().
 */
#ifndef RAGKV_GPU_H
#define RAGKV_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rk_gpu_info {
    int count;            /* CUDA devices visible; 0 when none (not an error) */
    char name[256];       /* device 0's name, "" when none */
    int cc_major;         /* compute capability of device 0 */
    int cc_minor;
    int sm_count;         /* streaming multiprocessors on device 0 */
    uint64_t mem_bytes;   /* global memory on device 0 */
    int driver_version;   /* e.g. 13000 for CUDA 13.0 */
    int runtime_version;
} rk_gpu_info;

/* Fill *info. RK_OK with count == 0 when the driver reports no device;
 * RK_ERR_UNSUPPORTED in a build without CUDA. */
rk_status rk_gpu_query(rk_gpu_info *info);

/* Run a small kernel on device 0 (y = a*x + y over n floats) and compare it with the CPU:
 * proves the build's machine code or PTX runs on this device. RK_ERR_DEVICE on any CUDA
 * error, RK_ERR_INTERNAL on a wrong result. */
rk_status rk_gpu_selftest(size_t n);

/* n bytes of page-locked ("pinned") host memory, visible to every device: copies between it
 * and a device run as DMA, asynchronously to the host thread and at the bus's full rate,
 * where copies from ordinary (pageable) memory go through the driver's staging buffers with
 * the host thread waiting. Allocating it is slow (the pages are locked one by one) and it
 * cannot be swapped: hold long-lived buffers in it (the chunk store's RAM tier), not scratch.
 * NULL, with the reason in rk_error_msg(), when there is no device, the build has no CUDA or
 * the driver refuses; free with rk_gpu_host_free. */
void *rk_gpu_host_alloc(size_t n);

/* Free what rk_gpu_host_alloc returned; NULL is a no-op. */
void rk_gpu_host_free(void *p);

/* Whether p points into page-locked host memory that CUDA knows (rk_gpu_host_alloc's, or
 * registered); false without a device or CUDA. For checks and diagnostics. */
bool rk_gpu_host_locked(const void *p);

#ifdef __cplusplus
}
#endif
#endif
