/* The work pool runs work off the loop and hands every result back on the
 * loop's own thread, once, while the loop stays free to serve others. */
#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "common/workpool.h"
#include "tests/unit/test.h"

#define N_JOBS 64

struct job {
    pthread_t work_thread;          /* the thread that ran work() */
    pthread_t done_thread;          /* the thread that ran done() */
    int worked, done;
    unsigned spin;                  /* how long work() runs, in ms */
};

static struct event_base *g_base;
static int g_left;
static int g_ticks;                 /* the loop's timer ran while jobs were out */

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void work(void *arg)
{
    struct job *j = arg;
    j->work_thread = pthread_self();
    sleep_ms(j->spin);
    j->worked++;
}

static void done(void *arg)
{
    struct job *j = arg;
    j->done_thread = pthread_self();
    j->done++;
    if (--g_left == 0)
        event_base_loopexit(g_base, NULL);
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    g_ticks++;
}

int main(void)
{
    CHECK(evthread_use_pthreads() == 0);
    g_base = event_base_new();
    char err[128];
    struct workpool *p = workpool_new(2, err, sizeof err);
    CHECK(p != NULL);
    if (!p || !g_base)
        TEST_MAIN_END();

    /* Many jobs, a few of them slow: each runs once, off the loop, and its
     * result comes back on the loop's thread. */
    static struct job jobs[N_JOBS];
    g_left = N_JOBS;
    for (int i = 0; i < N_JOBS; i++) {
        jobs[i].spin = i % 16 == 0 ? 40 : 0;
        CHECK(workpool_submit(p, g_base, work, done, &jobs[i]) == 0);
    }
    CHECK(workpool_pending(p) > 0);
    /* The loop keeps serving while the slow jobs run: a 5 ms timer ticks. */
    struct timeval five = {0, 5000};
    struct event *t = event_new(g_base, -1, EV_PERSIST, tick, NULL);
    event_add(t, &five);
    pthread_t me = pthread_self();
    event_base_dispatch(g_base);
    event_free(t);
    int once = 1, off_loop = 1, on_loop = 1;
    for (int i = 0; i < N_JOBS; i++) {
        once &= jobs[i].worked == 1 && jobs[i].done == 1;
        off_loop &= !pthread_equal(jobs[i].work_thread, me);
        on_loop &= pthread_equal(jobs[i].done_thread, me);
    }
    CHECK(once);
    CHECK(off_loop);
    CHECK(on_loop);
    CHECK(g_ticks >= 2); /* 4 slow jobs of 40 ms on 2 threads: >= 80 ms of a 5 ms timer */
    CHECK(workpool_pending(p) == 0);

    /* Freeing waits for nothing when idle; freeing NULL is a no-op. */
    workpool_free(p);
    workpool_free(NULL);
    /* 0 threads means one per CPU. */
    p = workpool_new(0, err, sizeof err);
    CHECK(p != NULL);
    workpool_free(p);
    event_base_free(g_base);
    TEST_MAIN_END();
}
