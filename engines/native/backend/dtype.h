/* dtype.h: scalar conversions between float32 and the 16-bit weight types.
 *
 * BF16 is the top half of an IEEE float32; F16 is IEEE binary16. Loaders use
 * these for small tensors they keep as float (norm weights), the converter
 * and the model generator use them to write weights, and the portable kernels
 * use them where no F16C/AVX2 instruction does it. Pure functions, any thread.
 */
#ifndef CASCADE_NATIVE_DTYPE_H
#define CASCADE_NATIVE_DTYPE_H

#include <stdint.h>
#include <string.h>

static inline float dtype_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Round to nearest even; NaN stays NaN. */
uint16_t dtype_f32_to_bf16(float f);
float dtype_f16_to_f32(uint16_t h);
/* Round to nearest even; overflow goes to infinity, tiny values to subnormals or 0. */
uint16_t dtype_f32_to_f16(float f);

#endif
