/* emu.h: CUDA's execution model on the CPU, for running kernel sources
 * unchanged (launches rewritten by pre.py; see run.sh). One CTA at a time,
 * its threads as cooperative fibers on the calling thread (emu.cc);
 * __syncthreads, __syncwarp and shuffles are barriers that yield. */
#pragma once
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <functional>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint4 { unsigned x, y, z, w; };
struct float4 { float x, y, z, w; };

typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
typedef void *cudaStream_t;
static inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }

extern dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
extern float emu_dyn_smem[];

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

/* Cooperative fibers: every CUDA thread of a block is a ucontext on the
 * calling OS thread; a barrier yields to the block's scheduler until every
 * participant has arrived. */
void emu_yield(void);
struct emu_barrier {
    int n = 0, waiting = 0;
    unsigned gen = 0;
    void wait()
    {
        unsigned g = gen;
        if (++waiting == n) {
            waiting = 0;
            gen++;
            return;
        }
        while (gen == g)
            emu_yield();
    }
};

struct emu_block {
    emu_barrier bar;
    emu_barrier wbar[32];
    uint64_t wbuf[32][32];
};
extern emu_block *emu_cur;
extern dim3 emu_tid;

static inline void __syncthreads(void) { emu_cur->bar.wait(); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_cur->wbar[threadIdx.x >> 5].wait(); }

template <typename T>
static inline T __shfl_xor_sync(unsigned, T v, int o)
{
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    emu_cur->wbuf[w][l] = b;
    emu_cur->wbar[w].wait();
    uint64_t r = emu_cur->wbuf[w][l ^ o];
    emu_cur->wbar[w].wait();
    T out;
    memcpy(&out, &r, sizeof(T));
    return out;
}

template <typename T>
static inline T __ldg(const T *p) { return *p; }
static inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }

static inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }

/* Runs fn once per thread of every block of grid x block, blocks in order. */
void emu_run(dim3 grid, dim3 block, size_t smem, const std::function<void()> &fn);
template <typename F>
static inline void emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, F fn)
{
    emu_run(grid, block, smem, std::function<void()>(fn));
}
