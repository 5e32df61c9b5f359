/* shim.h: what ops_cuda.cu's kernels use beyond emu.h (H5's CUDA execution
 * model on the CPU, tests/backend/cuda_emu/), over host memory: the
 * cuda_internal.h device helpers, __ldcs, make_uint4, __half2. */
#pragma once
#include "emu.h"
#include "engines/native/backend/ops.h"
extern "C" {
#include "engines/native/backend/dtype.h"
}
#include <algorithm>
using std::min;
using std::max;
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
template <typename T> static inline T __ldcs(const T *p) { return *p; }
struct __half2 { uint16_t x, y; };
struct float2 { float x, y; };
static inline float2 __half22float2(__half2 h) { return float2{dtype_f16_to_f32(h.x), dtype_f16_to_f32(h.y)}; }
static inline float cuda_load_w(const void *w, enum native_dtype dt, int64_t i)
{
    if (dt == NATIVE_F32) return ((const float *)w)[i];
    if (dt == NATIVE_BF16) return dtype_bf16_to_f32(((const uint16_t *)w)[i]);
    return dtype_f16_to_f32(((const uint16_t *)w)[i]);
}
static inline float cuda_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
#define CUDA_KV_BLOCK_SIZE 16
