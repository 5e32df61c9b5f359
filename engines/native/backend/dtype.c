/* dtype.c: float32 <-> BF16 / F16 / F8_E4M3 bit conversions; see dtype.h. */
#include "engines/native/backend/dtype.h"

#include <math.h>

uint16_t dtype_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);   /* quiet NaN */
    /* Add half an ulp of the result, plus one when the kept lsb is odd: ties go to even. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float dtype_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;

    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);          /* inf or NaN */
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);  /* normal: rebias 15 -> 127 */
    } else if (man == 0) {
        u = sign;                                       /* signed zero */
    } else {
        /* Subnormal: shift the mantissa up until its leading 1 is implicit. */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

uint16_t dtype_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;

    if (abs > 0x7f800000u)
        return sign | 0x7e00u;                          /* NaN */
    if (abs >= 0x477ff000u)
        return sign | 0x7c00u;                          /* rounds past 65504: inf */
    if (abs >= 0x38800000u) {
        /* Normal half: rebias and round the 13 dropped bits to nearest even. */
        uint32_t r = abs - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return sign | (uint16_t)(r >> 13);
    }
    if (abs < 0x33000000u)
        return sign;                                    /* below half the smallest subnormal */
    /* Subnormal half: value = man * 2^-24; shift the full mantissa down. */
    uint32_t e = abs >> 23;
    uint32_t man = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;                           /* 14..24 */
    uint32_t half = 1u << (shift - 1);
    uint32_t q = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return sign | (uint16_t)q;
}

float dtype_e4m3_to_f32(uint8_t b)
{
    const int e = (b >> 3) & 0xf, m = b & 7;
    float v;
    if (e == 0xf && m == 7)
        v = NAN;
    else if (e == 0)
        v = ldexpf((float)m, -9);               /* m/8 * 2^-6 */
    else
        v = ldexpf((float)(8 + m), e - 10);     /* (1 + m/8) * 2^(e-7) */
    return (b & 0x80) ? -v : v;
}

uint8_t dtype_f32_to_e4m3(float f)
{
    const uint8_t sign = signbit(f) ? 0x80 : 0;
    const float a = fabsf(f);
    if (isnan(a))
        return sign | 0x7f;
    if (a >= 448.0f)
        return sign | 0x7e;                     /* saturate (see dtype.h) */
    int e;
    frexpf(a, &e);                              /* a = fr * 2^e, fr in [0.5, 1) */
    /* The unit in the last place: 2^(E-3) for a normal value of exponent
     * E = e-1, and 2^-9 for every subnormal (E < -6). a/ulp is exact (a power
     * of two), so nearbyintf rounds once, to nearest even in the default
     * mode. A mantissa that rounds up to 16 carries into the exponent, and a
     * subnormal that rounds up to 8 is the smallest normal, both by the
     * addition below. */
    const int E = a == 0.0f || e - 1 < -6 ? -6 : e - 1;
    const int q = (int)nearbyintf(ldexpf(a, 3 - E));
    if (q < 8)
        return sign | (uint8_t)q;               /* subnormal (E == -6) or zero */
    return sign | (uint8_t)(((E + 7) << 3) + (q - 8));
}
