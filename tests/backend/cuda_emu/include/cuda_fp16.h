/* emulation: __half as bits, exact conversion to float */
#pragma once
#include <stdint.h>
#include <string.h>
struct __half { unsigned short x; };
static inline __half __ushort_as_half(unsigned short v) { __half h; h.x = v; return h; }
static inline float __half2float(__half h)
{
    uint32_t s = (uint32_t)(h.x & 0x8000) << 16, e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff, f;
    if (e == 0) {
        float v = (float)m * (1.0f / 16777216.0f);   /* m * 2^-24 */
        return s ? -v : v;
    }
    if (e == 31)
        f = s | 0x7f800000u | (m << 13);
    else
        f = s | ((e + 112) << 23) | (m << 13);
    float r;
    memcpy(&r, &f, 4);
    return r;
}
