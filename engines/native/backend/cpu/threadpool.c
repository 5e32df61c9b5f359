/* threadpool.c: fork-join pool; see threadpool.h for the contract.
 *
 * A region is published through one 64-bit ticket: the high half is the
 * region's generation, the low half the next unclaimed task. Threads claim
 * a task with a compare-and-swap on the whole ticket, so a claim can only
 * succeed in the region it was read from; the region's function, argument
 * and size sit in slot[gen & 1], which the publisher does not touch again
 * until the region after next, and that cannot start before every task of
 * this one has finished. The caller waits for its tasks to be *done*, not
 * for workers to check in: a worker the OS has descheduled while idle never
 * holds anything up (on a shared 2-core machine that matters more than
 * anything else here).
 *
 * Between regions workers spin on the ticket for a while, then sleep on
 * `cv`; the publisher wakes sleepers under the mutex, so a worker never misses
 * a region between its check and its wait.
 */
#include "engines/native/backend/cpu/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

/* About 50-100 microseconds of spinning before a worker sleeps: long enough
 * to bridge the gaps between the regions of one forward step, short enough
 * that an idle engine goes quiet at once. */
#define SPIN_ROUNDS 4096
/* An idle worker yields once per this many spins. */
#define YIELD_EVERY 128
/* The publisher spins this many rounds (~8 us) for stragglers, then yields. */
#define YIELD_AFTER 256

struct region {
    threadpool_fn fn;
    void *arg;
    int n_tasks;
};

struct worker {
    struct threadpool *pool;
    int index;
    pthread_t thread;
};

struct threadpool {
    int threads;
    struct worker *workers;     /* threads - 1 of them */
    int started;

    struct region slot[2];
    uint32_t gen;                   /* publisher's copy */
    /* The two hot words on lines of their own: every claim writes the
     * ticket and every finished task the counter, while idle workers poll
     * the ticket and the publisher polls the counter. Sharing a line (with
     * each other or with the fields above) turns each of those into a
     * cache-line transfer between cores. */
    _Alignas(64) atomic_uint_fast64_t ticket;   /* gen << 32 | next task */
    _Alignas(64) atomic_int done;               /* tasks of the current region finished */
    _Alignas(64) char pad_;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers;
    int stop;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

int threadpool_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Claim and run tasks of region `gen` until none are left (or a newer region
 * has replaced it). */
static void run_tasks(struct threadpool *p, uint32_t gen, int thread)
{
    for (;;) {
        uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
        if ((uint32_t)(t >> 32) != gen)
            return;
        const struct region *r = &p->slot[gen & 1];
        uint32_t idx = (uint32_t)t;
        if (idx >= (uint32_t)r->n_tasks)
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        r->fn(r->arg, (int)idx, thread);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct threadpool *p = w->pool;
    uint32_t seen = 0;

    for (;;) {
        uint32_t g = (uint32_t)(atomic_load_explicit(&p->ticket, memory_order_acquire) >> 32);
        for (int i = 0; g == seen && i < SPIN_ROUNDS; i++) {
            /* Now and then let another thread have the core: when the
             * machine is busier than it has cores, the thread this one
             * waits for may be queued behind it. */
            if (i % YIELD_EVERY == YIELD_EVERY - 1)
                sched_yield();
            else
                cpu_relax();
            g = (uint32_t)(atomic_load_explicit(&p->ticket, memory_order_acquire) >> 32);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while ((g = (uint32_t)(atomic_load_explicit(&p->ticket, memory_order_acquire) >> 32)) ==
                       seen &&
                   !p->stop)
                pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            int stop = p->stop;
            pthread_mutex_unlock(&p->mu);
            if (stop)
                return NULL;
        }
        seen = g;
        run_tasks(p, g, w->index);
    }
}

struct threadpool *threadpool_new(int threads)
{
    struct threadpool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->threads = threads > 0 ? threads : threadpool_cpu_count();
    atomic_init(&p->ticket, 0);
    atomic_init(&p->done, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0)
        goto fail_mutex;
    if (pthread_cond_init(&p->cv, NULL) != 0)
        goto fail_cond;
    if (p->threads > 1) {
        p->workers = calloc((size_t)p->threads - 1, sizeof(*p->workers));
        if (!p->workers)
            goto fail_workers;
        for (int i = 0; i < p->threads - 1; i++) {
            p->workers[i].pool = p;
            p->workers[i].index = i + 1;
            if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0)
                goto fail_threads;
            p->started++;
        }
    }
    return p;

fail_threads:
    threadpool_free(p);
    return NULL;
fail_workers:
    pthread_cond_destroy(&p->cv);
fail_cond:
    pthread_mutex_destroy(&p->mu);
fail_mutex:
    free(p);
    return NULL;
}

void threadpool_free(struct threadpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    /* A spinning worker notices `stop` when its spin period ends and it
     * takes the mutex, so the joins below finish within microseconds. */
    for (int i = 0; i < p->started; i++)
        pthread_join(p->workers[i].thread, NULL);
    free(p->workers);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int threadpool_threads(const struct threadpool *p)
{
    return p->threads;
}

void threadpool_run(struct threadpool *p, threadpool_fn fn, void *arg, int n_tasks)
{
    if (n_tasks <= 0)
        return;
    if (p->threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(arg, t, 0);
        return;
    }
    uint32_t gen = ++p->gen;
    if (gen == 0)
        gen = ++p->gen;     /* 0 is "nothing published yet" for a new worker */
    p->slot[gen & 1] = (struct region){fn, arg, n_tasks};
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->ticket, (uint64_t)gen << 32, memory_order_release);

    pthread_mutex_lock(&p->mu);
    if (p->sleepers)
        pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    run_tasks(p, gen, 0);
    /* What is left runs on other threads: spin briefly, then yield, so a
     * worker that shares this core (a loaded machine) gets to finish. */
    for (int i = 0; atomic_load_explicit(&p->done, memory_order_acquire) != n_tasks; i++) {
        if (i >= YIELD_AFTER)
            sched_yield();
        else
            cpu_relax();
    }
}
