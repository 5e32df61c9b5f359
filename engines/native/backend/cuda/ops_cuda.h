/* ops_cuda.h: the CUDA implementation of the op table (ops.h).
 *
 * One backend drives one GPU on one CUDA stream: every op is queued on the
 * stream in call order and returns without waiting; download() and
 * synchronize() wait. Buffers, weights (copied once by map_weights()) and
 * the KV cache live in device memory from plain cudaMalloc; host_visible is
 * 0, so the forward pass downloads the logits. The KV cache has the CPU
 * backend's layout (cpu_internal.h), in device memory, 16 positions a block.
 *
 * Kernels are built for sm_80 and sm_90 (compute_90a for the FP8 tensor-core
 * GEMM). Dense matmuls use a GEMV kernel that streams BF16/F16/F32 weights
 * for batches of up to a few tokens, and cuBLASLt (BF16 in, F32 accumulate
 * and out) above that. Two environment variables, read when a backend is
 * made, trade exactness for speed there:
 *   CASCADE_CUDA_GEMM=split3 (default) | split2 | bf16: the float32
 *     activations go to the BF16 tensor cores as 3, 2 or 1 BF16 parts;
 *     split3 matches the CPU's float32 product to ~1e-7, bf16 is the usual
 *     inference GEMM at a third of the tensor-core work (errors ~1e-3);
 *   CASCADE_CUDA_GEMV_MAX=N (default 8): matmuls of up to N tokens use the
 *     GEMV kernel (its results do not depend on the token count up to N).
 *
 * Thread: one host thread drives a backend at a time; the backend makes its
 * device current on that thread at each call. ops_cuda_device_count() may be
 * called from any thread.
 *
 * This header is plain C: without CUDA (CASCADE_HAVE_CUDA unset) nothing
 * here exists, and callers say why instead (the runtime's "device" option).
 */
#ifndef CASCADE_NATIVE_OPS_CUDA_H
#define CASCADE_NATIVE_OPS_CUDA_H

#include "engines/native/backend/ops.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The number of CUDA devices usable here; 0 with the reason in why (no
 * driver, no device, driver older than the runtime) when there are none. */
int ops_cuda_device_count(char *why, size_t n);

/* A backend on device `device`; NULL with the reason in err (no such
 * device, out of memory, cuBLAS failed to start). */
struct native_backend *ops_cuda_new(int device, char *err, size_t errlen);

/* "cuda:0 (NVIDIA H200, sm_90)": for the start-up line. */
const char *ops_cuda_name(const struct native_backend *b);

/* Device memory free and total, in bytes, for the caller's memory plan;
 * 0 on success. */
int ops_cuda_mem_info(const struct native_backend *b, size_t *free_bytes, size_t *total_bytes);

/* The first CUDA error an op hit, as text, or NULL when none: ops cannot
 * return errors, so a caller checks this after synchronize(). Any thread
 * may ask (the text is complete before it is published). */
const char *ops_cuda_error(const struct native_backend *b);

#ifdef __cplusplus
}
#endif

#endif
