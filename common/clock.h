/* clock.h: time sources. Monotonic time for latencies and timeouts, wall time
 * for timestamps the client sees ("created"). Thread-safe, no allocation. */
#ifndef CASCADE_CLOCK_H
#define CASCADE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t clock_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static inline int64_t clock_wall_s(void)
{
    return (int64_t)time(NULL);
}

#endif
