/* hbm_read.h: the read bandwidth of device memory, the denominator of the
 * GPU benchmarks' roofline (weight bytes per token / this bandwidth).
 *
 * One kernel reads a buffer of `bytes` (>= 4 GiB in the benchmarks, many
 * times the L2) with 16-byte loads in a grid-stride loop and folds them into
 * one word per block, so it writes almost nothing: a read-only stream, as a
 * decode step's weight reads are. Timed with CUDA events, best of `reps`
 * after a warm-up. Built only with CUDA (bench/gpu/CMakeLists.txt); it
 * allocates with plain cudaMalloc and frees before returning.
 *
 * Thread: any host thread; it uses `device` and leaves it current.
 */
#ifndef CASCADE_BENCH_HBM_READ_H
#define CASCADE_BENCH_HBM_READ_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes per second, best of reps; also the median through *median when not
 * NULL. 0 with the reason in err on a CUDA error. */
double hbm_read_bandwidth(int device, size_t bytes, int reps, double *median, char *err,
                          size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
