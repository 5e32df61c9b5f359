/* outlier.c: see outlier.h.
 *
 * The state is a handful of atomics rather than one word under a lock: the
 * hot path (outlier_state on every pick, outlier_success on every answer)
 * is then a few loads. Each transition is won by exactly one compare-and-
 * swap, which is what makes "reported once" hold across threads.
 */
#include "engines/remote/outlier.h"

#define MAX_FACTOR 10u  /* an ejection lasts at most this many times policy.ms */

enum outlier_state outlier_state(struct outlier *o, uint64_t now_us)
{
    if (!atomic_load(&o->ejected))
        return OUTLIER_LIVE;
    if (now_us < atomic_load(&o->until_us))
        return OUTLIER_OUT;
    /* Over: one trial at a time; while one runs, the others stay away. */
    return atomic_load(&o->trial) ? OUTLIER_OUT : OUTLIER_PROBATION;
}

int outlier_take_trial(struct outlier *o)
{
    int free_slot = 0;
    return atomic_compare_exchange_strong(&o->trial, &free_slot, 1);
}

void outlier_end_trial(struct outlier *o)
{
    atomic_store(&o->trial, 0);
}

/* The length of ejection number e (from 0) since the last success: ms,
 * 2 ms, 4 ms, 8 ms, then 10 ms. */
static unsigned length_for(const struct outlier_policy *p, unsigned e)
{
    uint64_t ms = (uint64_t)p->ms << (e < 4 ? e : 4);
    uint64_t cap = (uint64_t)p->ms * MAX_FACTOR;
    return (unsigned)(ms < cap ? ms : cap);
}

enum outlier_change outlier_success(struct outlier *o)
{
    atomic_store(&o->fails, 0);
    atomic_store(&o->ejections, 0);
    int was = 1;
    return atomic_compare_exchange_strong(&o->ejected, &was, 0) ? OUTLIER_RETURNED : OUTLIER_SAME;
}

enum outlier_change outlier_failure(struct outlier *o, const struct outlier_policy *p, uint64_t now_us,
                                    unsigned *ms)
{
    unsigned fails = atomic_fetch_add(&o->fails, 1) + 1;
    if (p->after == 0)
        return OUTLIER_SAME;
    if (atomic_load(&o->ejected)) {
        uint64_t until = atomic_load(&o->until_us);
        if (now_us < until)
            return OUTLIER_SAME; /* out already: it was used as the last resort */
        /* On probation and failed again (a trial, or a request that raced
         * it): out again, for longer. Only one reporter moves `until`. */
        unsigned len = length_for(p, atomic_load(&o->ejections));
        if (!atomic_compare_exchange_strong(&o->until_us, &until, now_us + (uint64_t)len * 1000))
            return OUTLIER_SAME;
        atomic_fetch_add(&o->ejections, 1);
        *ms = len;
        return OUTLIER_EJECTED;
    }
    if (fails < p->after)
        return OUTLIER_SAME;
    /* `until` before `ejected`: a reader that sees ejected must never see
     * an end already passed and take the replica for one on probation. */
    unsigned len = length_for(p, atomic_load(&o->ejections));
    atomic_store(&o->until_us, now_us + (uint64_t)len * 1000);
    int was = 0;
    if (!atomic_compare_exchange_strong(&o->ejected, &was, 1))
        return OUTLIER_SAME;
    atomic_fetch_add(&o->ejections, 1);
    *ms = len;
    return OUTLIER_EJECTED;
}

enum outlier_change outlier_probe_up(struct outlier *o, uint64_t now_us)
{
    if (!atomic_load(&o->ejected) || now_us < atomic_load(&o->until_us))
        return OUTLIER_SAME;
    int was = 1;
    if (!atomic_compare_exchange_strong(&o->ejected, &was, 0))
        return OUTLIER_SAME;
    atomic_store(&o->fails, 0);
    return OUTLIER_RETURNED;
}
