/* test_dtype: the F8_E4M3 (e4m3fn) conversions of backend/dtype.h over all
 * 256 codes, against the format's definition computed here independently
 * (sign, exponent, mantissa by arithmetic, not bit tricks), plus rounding
 * ties, saturation and NaN. The FP8 kernels and the checkpoint writer both
 * rely on these two functions, so they are checked exhaustively. */
#include "engines/native/backend/dtype.h"

#include "tests/unit/test.h"

#include <math.h>

/* The value of code b from the OCP FP8 E4M3 definition: NaN for S.1111.111,
 * (-1)^s * 2^-6 * m/8 for exponent 0, else (-1)^s * 2^(e-7) * (1 + m/8). */
static double e4m3_formula(int b)
{
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7)
        return NAN;
    double v = e == 0 ? pow(2.0, -6) * m / 8.0 : pow(2.0, e - 7) * (1.0 + m / 8.0);
    return s ? -v : v;
}

static int same_bits_or_both_nan(float a, double b)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    return (double)a == b && !signbit(a) == !signbit(b);
}

int main(void)
{
    /* Decoding: every code equals the formula, signed zeros included. */
    int bad_decode = 0, nan_codes = 0;
    for (int b = 0; b < 256; b++) {
        if (!same_bits_or_both_nan(dtype_e4m3_to_f32((uint8_t)b), e4m3_formula(b)))
            bad_decode++;
        if (isnan(dtype_e4m3_to_f32((uint8_t)b)))
            nan_codes++;
    }
    CHECK(bad_decode == 0);
    CHECK(nan_codes == 2);  /* 0x7f and 0xff only */
    CHECK(dtype_e4m3_to_f32(0x7e) == 448.0f);
    CHECK(dtype_e4m3_to_f32(0xfe) == -448.0f);
    CHECK(dtype_e4m3_to_f32(0x01) == ldexpf(1.0f, -9));  /* smallest subnormal */
    CHECK(dtype_e4m3_to_f32(0x08) == ldexpf(1.0f, -6));  /* smallest normal */
    CHECK(dtype_e4m3_to_f32(0x38) == 1.0f);

    /* Encoding round-trips every finite code exactly. */
    int bad_round_trip = 0;
    for (int b = 0; b < 256; b++) {
        float v = dtype_e4m3_to_f32((uint8_t)b);
        if (!isnan(v) && dtype_f32_to_e4m3(v) != b)
            bad_round_trip++;
    }
    CHECK(bad_round_trip == 0);

    /* Between two adjacent positive codes: just below the midpoint goes to
     * the lower one, just above to the upper one, and the midpoint itself to
     * the code with the even mantissa (an even code). Both signs. */
    int bad_tie = 0, bad_near = 0;
    for (int b = 0; b < 0x7e; b++) {
        double lo = e4m3_formula(b), hi = e4m3_formula(b + 1);
        float mid = (float)((lo + hi) / 2);  /* exact: a few bits only */
        int even = (b & 1) ? b + 1 : b;
        for (int s = 0; s < 2; s++) {
            float sg = s ? -1.0f : 1.0f;
            uint8_t sb = s ? 0x80 : 0;
            if (dtype_f32_to_e4m3(sg * mid) != (sb | even))
                bad_tie++;
            if (dtype_f32_to_e4m3(sg * nextafterf(mid, 0.0f)) != (sb | b) ||
                dtype_f32_to_e4m3(sg * nextafterf(mid, 1e9f)) != (sb | (b + 1)))
                bad_near++;
        }
    }
    CHECK(bad_tie == 0);
    CHECK(bad_near == 0);

    /* Brute force: for a sweep of values, the encoding is the nearest code
     * (ties to even), found by scanning all finite codes. */
    int bad_nearest = 0;
    for (int i = -4000; i <= 4000; i++) {
        float x = (float)(i * 0.113);
        x = x * x * x / 1000.0f;  /* dense near 0, reaching past 448 */
        if (fabsf(x) > 448.0f)
            continue;
        int best = -1;
        double bd = INFINITY;
        for (int b = 0; b < 256; b++) {
            double v = e4m3_formula(b);
            if (isnan(v) || !signbit(v) != !signbit(x))
                continue;
            double d = fabs(v - x);
            if (d < bd || (d == bd && !(b & 1)))
                bd = d, best = b;
        }
        if (dtype_f32_to_e4m3(x) != best)
            bad_nearest++;
    }
    CHECK(bad_nearest == 0);

    /* Tiny values: half the smallest subnormal is a tie with zero (even). */
    CHECK(dtype_f32_to_e4m3(ldexpf(1.0f, -10)) == 0x00);
    CHECK(dtype_f32_to_e4m3(nextafterf(ldexpf(1.0f, -10), 1.0f)) == 0x01);
    CHECK(dtype_f32_to_e4m3(ldexpf(3.0f, -10)) == 0x02);  /* 1.5 ulp: tie to even 2 */
    CHECK(dtype_f32_to_e4m3(1e-30f) == 0x00);
    CHECK(dtype_f32_to_e4m3(-1e-30f) == 0x80);
    CHECK(dtype_f32_to_e4m3(0.0f) == 0x00);
    CHECK(dtype_f32_to_e4m3(-0.0f) == 0x80);

    /* Saturation and NaN, as dtype.h documents them. */
    CHECK(dtype_f32_to_e4m3(448.0f) == 0x7e);
    CHECK(dtype_f32_to_e4m3(449.0f) == 0x7e);
    CHECK(dtype_f32_to_e4m3(1e6f) == 0x7e);
    CHECK(dtype_f32_to_e4m3(-1e6f) == 0xfe);
    CHECK(dtype_f32_to_e4m3(INFINITY) == 0x7e);
    CHECK(dtype_f32_to_e4m3(-INFINITY) == 0xfe);
    CHECK(dtype_f32_to_e4m3(NAN) == 0x7f);
    CHECK(dtype_f32_to_e4m3(-NAN) == 0xff);

    /* The 16-bit conversions this file also holds: a few fixed points. */
    CHECK(dtype_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(dtype_bf16_to_f32(0xc000) == -2.0f);
    CHECK(dtype_f32_to_bf16(1.0f + ldexpf(1.0f, -8)) == 0x3f80);  /* tie to even */
    CHECK(dtype_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(dtype_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    TEST_MAIN_END();
}
