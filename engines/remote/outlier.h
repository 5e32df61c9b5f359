/* outlier.h: outlier detection for one upstream replica (ejection and return).
 *
 * A replica that fails `after` attempts in a row (connection error, 5xx,
 * timeout, a broken answer) is ejected: the remote engine stops picking it
 * while another replica of the tier is live. An ejection lasts `ms`, twice
 * that for the next one without a success in between, and so on up to ten
 * times `ms`. When the time is up the replica is on probation, and comes
 * back on the first of:
 *   - the health prober sees it answer (outlier_probe_up), or
 *   - a trial request succeeds: one request at a time may go to a replica on
 *     probation (outlier_take_trial); its failure ejects the replica again.
 * A 429 says the replica is busy, not broken, and counts neither way; any
 * other answer (2xx, or a 4xx that refuses the request) shows it works and
 * resets the count.
 *
 * Functions that change the state return what changed (OUTLIER_EJECTED,
 * OUTLIER_RETURNED) exactly once per transition, even when several workers
 * report at the same moment, so the caller logs and counts each transition
 * once.
 *
 * Threads: the state is atomic; any worker thread and the prober thread may
 * call any function at any time. Zeroed memory is a valid, healthy state.
 */
#ifndef CASCADE_OUTLIER_H
#define CASCADE_OUTLIER_H

#include <stdatomic.h>
#include <stdint.h>

struct outlier {
    atomic_uint fails;              /* consecutive failed attempts */
    atomic_uint ejections;          /* ejections since the last success: the next one's length */
    atomic_int ejected;             /* 1 from ejection until it returns */
    _Atomic uint64_t until_us;      /* monotonic end of the current ejection */
    atomic_int trial;               /* a trial request is in flight */
};

struct outlier_policy {
    unsigned after;                 /* consecutive failures that eject; 0: never eject */
    unsigned ms;                    /* the first ejection's length */
};

enum outlier_state {
    OUTLIER_LIVE,                   /* pick it as usual */
    OUTLIER_OUT,                    /* ejected: pick it only if no live replica exists */
    OUTLIER_PROBATION,              /* ejection over: one trial request at a time */
};

enum outlier_change { OUTLIER_SAME, OUTLIER_EJECTED, OUTLIER_RETURNED };

enum outlier_state outlier_state(struct outlier *o, uint64_t now_us);

/* Probation: claim the one trial slot. 1 when this caller holds it (it must
 * then call outlier_end_trial once its attempt ends), 0 when another does. */
int outlier_take_trial(struct outlier *o);
void outlier_end_trial(struct outlier *o);

/* An attempt's verdict. *ms gets the new ejection's length on EJECTED. */
enum outlier_change outlier_success(struct outlier *o);
enum outlier_change outlier_failure(struct outlier *o, const struct outlier_policy *p, uint64_t now_us,
                                    unsigned *ms);

/* The prober saw the replica answer: an ejection that is over ends. */
enum outlier_change outlier_probe_up(struct outlier *o, uint64_t now_us);

#endif
