/* bench_util.h: what the GPU benchmarks share: a monotonic clock, a double
 * comparator for qsort, and the CPU stand-in for the HBM read kernel (so
 * the programs run, and say so, without a GPU). Header-only; any thread. */
#ifndef CASCADE_BENCH_GPU_UTIL_H
#define CASCADE_BENCH_GPU_UTIL_H

#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* memcpy bandwidth of 2 x 512 MiB, read + write counted, best of 3; 0 when
 * the buffers cannot be had. */
static inline double bench_cpu_copy_bandwidth(void)
{
    const size_t n = (size_t)512 << 20;
    char *src = malloc(n), *dst = malloc(n);
    double best = 0;
    if (src && dst) {
        memset(src, 1, n);
        memset(dst, 2, n);
        for (int r = 0; r < 3; r++) {
            double t0 = bench_now_s();
            memcpy(dst, src, n);
            double bw = 2.0 * (double)n / (bench_now_s() - t0);
            best = bw > best ? bw : best;
        }
    }
    free(src);
    free(dst);
    return best;
}

#endif
