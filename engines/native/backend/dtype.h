/* dtype.h: scalar conversions between float32 and the 16- and 8-bit weight types.
 *
 * BF16 is the top half of an IEEE float32; F16 is IEEE binary16; F8_E4M3 is
 * the "e4m3fn" byte of DeepSeek-V3's FP8 weights (below). Loaders use
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

/* F8_E4M3 (e4m3fn, torch.float8_e4m3fn, the OCP FP8 E4M3 format): bit 7 the
 * sign, bits 6..3 the exponent with bias 7, bits 2..0 the mantissa.
 *   exponent 1..15: (-1)^s * 2^(e-7) * (1 + m/8)
 *   exponent 0:     (-1)^s * 2^-6 * (m/8)            (subnormals, and +-0)
 *   S.1111.111 (0x7f, 0xff) is NaN; there are no infinities, so S.1111.110
 *   (0x7e, 0xfe) = +-448 is the largest finite value.
 * Decoding is exact (every code is a float32). */
float dtype_e4m3_to_f32(uint8_t b);
/* Round to nearest, ties to even. Out of range saturates: a finite value
 * beyond 448 and +-infinity give +-448 (0x7e/0xfe), the OCP "saturating"
 * conversion a weight quantizer wants (torch's cast gives NaN instead; block
 * scaling keeps weights within +-448, so the two never differ there). NaN
 * gives 0x7f with the sign kept. Values below half the smallest subnormal
 * (2^-10) give a signed zero. */
uint8_t dtype_f32_to_e4m3(float f);

#endif
