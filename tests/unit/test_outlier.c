/* Outlier detection (engines/remote/outlier.h): when a replica is ejected,
 * for how long, how it comes back, and that every transition is reported
 * once, also when threads race to report it. */
#include <pthread.h>
#include <string.h>

#include "engines/remote/outlier.h"
#include "tests/unit/test.h"

#define MS 1000ull /* microseconds per millisecond */

static void test_eject_after_n(void)
{
    struct outlier o;
    memset(&o, 0, sizeof o);
    struct outlier_policy p = {3, 100};
    unsigned ms = 0;
    uint64_t t = 1000 * MS;
    CHECK(outlier_state(&o, t) == OUTLIER_LIVE);
    CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_SAME);
    CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_SAME);
    /* a success in between starts the count again */
    CHECK(outlier_success(&o) == OUTLIER_SAME);
    CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_SAME);
    CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_SAME);
    CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_EJECTED);
    CHECK(ms == 100);
    CHECK(outlier_state(&o, t) == OUTLIER_OUT);
    CHECK(outlier_state(&o, t + 99 * MS) == OUTLIER_OUT);
    /* failures while out (used as the last resort) change nothing */
    CHECK(outlier_failure(&o, &p, t + 50 * MS, &ms) == OUTLIER_SAME);
    CHECK(outlier_state(&o, t + 100 * MS) == OUTLIER_PROBATION);
}

static void test_trial_and_doubling(void)
{
    struct outlier o;
    memset(&o, 0, sizeof o);
    struct outlier_policy p = {1, 100};
    unsigned ms = 0;
    uint64_t t = 5000 * MS;
    CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_EJECTED && ms == 100);
    t += 100 * MS;
    CHECK(outlier_state(&o, t) == OUTLIER_PROBATION);
    CHECK(outlier_take_trial(&o) == 1);
    CHECK(outlier_take_trial(&o) == 0); /* one trial at a time */
    CHECK(outlier_state(&o, t) == OUTLIER_OUT);
    /* the trial fails: out again, twice as long, then 4x, 8x, and 10x at most */
    CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_EJECTED && ms == 200);
    outlier_end_trial(&o);
    CHECK(outlier_state(&o, t + 199 * MS) == OUTLIER_OUT);
    unsigned want[] = {400, 800, 1000, 1000};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        t += (uint64_t)ms * MS;
        CHECK(outlier_state(&o, t) == OUTLIER_PROBATION);
        CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_EJECTED);
        CHECK(ms == want[i]);
    }
    /* a successful trial brings it back, and the next ejection is short again */
    t += (uint64_t)ms * MS;
    CHECK(outlier_take_trial(&o) == 1);
    CHECK(outlier_success(&o) == OUTLIER_RETURNED);
    outlier_end_trial(&o);
    CHECK(outlier_state(&o, t) == OUTLIER_LIVE);
    CHECK(outlier_success(&o) == OUTLIER_SAME);
    CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_EJECTED && ms == 100);
}

static void test_probe_up(void)
{
    struct outlier o;
    memset(&o, 0, sizeof o);
    struct outlier_policy p = {2, 100};
    unsigned ms = 0;
    uint64_t t = 7000 * MS;
    CHECK(outlier_probe_up(&o, t) == OUTLIER_SAME); /* not ejected: nothing to do */
    outlier_failure(&o, &p, t, &ms);
    CHECK(outlier_failure(&o, &p, t, &ms) == OUTLIER_EJECTED);
    CHECK(outlier_probe_up(&o, t + 50 * MS) == OUTLIER_SAME); /* not before its time */
    CHECK(outlier_probe_up(&o, t + 100 * MS) == OUTLIER_RETURNED);
    CHECK(outlier_probe_up(&o, t + 100 * MS) == OUTLIER_SAME);
    CHECK(outlier_state(&o, t + 100 * MS) == OUTLIER_LIVE);
    /* back by the prober, not by a success: the doubling goes on */
    outlier_failure(&o, &p, t + 200 * MS, &ms);
    CHECK(outlier_failure(&o, &p, t + 200 * MS, &ms) == OUTLIER_EJECTED && ms == 200);
}

static void test_never(void)
{
    struct outlier o;
    memset(&o, 0, sizeof o);
    struct outlier_policy p = {0, 100};
    unsigned ms = 0;
    for (int i = 0; i < 100; i++)
        CHECK(outlier_failure(&o, &p, 1, &ms) == OUTLIER_SAME);
    CHECK(outlier_state(&o, 1) == OUTLIER_LIVE);
}

/* Four threads report a failure of one replica at the same moment (a
 * barrier starts each round), over many rounds: in every round exactly one
 * of them sees the ejection; then all report a success: one sees the
 * return. */
#define RACERS 4
#define ROUNDS 3000
static struct outlier shared;
static const struct outlier_policy shared_p = {1, 100};
static pthread_barrier_t start_b, end_b;
static int seen[RACERS][2];

static void *racer(void *arg)
{
    int id = (int)(size_t)arg;
    unsigned ms;
    for (int r = 0; r < ROUNDS; r++) {
        pthread_barrier_wait(&start_b);
        seen[id][0] += outlier_failure(&shared, &shared_p, 1000 * MS, &ms) == OUTLIER_EJECTED;
        pthread_barrier_wait(&end_b);
        pthread_barrier_wait(&start_b);
        seen[id][1] += outlier_success(&shared) == OUTLIER_RETURNED;
        pthread_barrier_wait(&end_b);
    }
    return NULL;
}

static void test_once_across_threads(void)
{
    pthread_t th[RACERS];
    pthread_barrier_init(&start_b, NULL, RACERS + 1);
    pthread_barrier_init(&end_b, NULL, RACERS + 1);
    memset(&shared, 0, sizeof shared);
    for (size_t i = 0; i < RACERS; i++)
        pthread_create(&th[i], NULL, racer, (void *)i);
    int bad = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (int phase = 0; phase < 2; phase++) {
            int before = 0, after = 0;
            for (int i = 0; i < RACERS; i++)
                before += seen[i][phase];
            pthread_barrier_wait(&start_b);
            pthread_barrier_wait(&end_b);
            for (int i = 0; i < RACERS; i++)
                after += seen[i][phase];
            bad += after - before != 1;
        }
    }
    for (size_t i = 0; i < RACERS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start_b);
    pthread_barrier_destroy(&end_b);
    CHECK(bad == 0);
}

int main(void)
{
    test_eject_after_n();
    test_trial_and_doubling();
    test_probe_up();
    test_never();
    test_once_across_threads();
    TEST_MAIN_END();
}
