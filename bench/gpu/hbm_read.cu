/* hbm_read.cu: the read-only bandwidth kernel; see hbm_read.h.
 *
 * Math: each thread sums (xor) every 16-byte word i = tid, tid + stride, ...
 * of the buffer; a block folds its threads' words in shared memory and writes
 * one. The fold keeps the loads alive (the compiler cannot drop them) and
 * costs nothing next to the stream. Bandwidth = bytes / kernel time. */
#include "bench/gpu/hbm_read.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdio.h>
#include <vector>

#define HBM_THREADS 512

__global__ void hbm_read_kernel(const uint4 *__restrict__ p, size_t n, unsigned *__restrict__ out)
{
    __shared__ unsigned fold[HBM_THREADS];
    unsigned acc = 0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    /* four loads in flight per thread before their uses */
    for (; i + 3 * stride < n; i += 4 * stride) {
        uint4 a = __ldg(p + i), b = __ldg(p + i + stride), c = __ldg(p + i + 2 * stride),
              d = __ldg(p + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^
               d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        uint4 a = __ldg(p + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    fold[threadIdx.x] = acc;
    __syncthreads();
    for (int s = HBM_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            fold[threadIdx.x] ^= fold[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        out[blockIdx.x] = fold[0];
}

extern "C" double hbm_read_bandwidth(int device, size_t bytes, int reps, double *median,
                                     char *err, size_t errlen)
{
    void *buf = NULL;
    unsigned *out = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double best = 0;
    std::vector<double> bw;
    int sms = 0, blocks;
    const size_t n = bytes / sizeof(uint4);
    cudaError_t rc;
#define CK(call)                                                                 \
    do {                                                                         \
        if ((rc = (call)) != cudaSuccess) {                                      \
            snprintf(err, errlen, "%s: %s", #call, cudaGetErrorString(rc));      \
            best = 0;                                                            \
            goto out;                                                            \
        }                                                                        \
    } while (0)
    CK(cudaSetDevice(device));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    blocks = sms * 4;   /* 2048 threads per SM: enough loads in flight to cover latency */
    CK(cudaMalloc(&buf, n * sizeof(uint4)));
    CK(cudaMalloc((void **)&out, sizeof(unsigned) * (size_t)blocks));
    CK(cudaMemset(buf, 0x5a, n * sizeof(uint4)));
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int r = -1; r < reps; r++) {   /* r = -1: warm-up */
        CK(cudaEventRecord(e0));
        hbm_read_kernel<<<blocks, HBM_THREADS>>>((const uint4 *)buf, n, out);
        CK(cudaGetLastError());
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 0 && ms > 0)
            bw.push_back((double)(n * sizeof(uint4)) / (ms * 1e-3));
    }
    if (bw.empty()) {
        snprintf(err, errlen, "no timed run");
        goto out;
    }
    std::sort(bw.begin(), bw.end());
    best = bw.back();
    if (median)
        *median = bw[bw.size() / 2];
out:
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    cudaFree(out);
    cudaFree(buf);
    return best;
#undef CK
}
