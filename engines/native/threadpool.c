/* threadpool.c: fork-join pool; see threadpool.h for the contract.
 *
 * A region is published by bumping `gen`. Workers that saw the old generation
 * spin on it for a while and then sleep on `cv`; the publisher wakes sleepers
 * under the mutex, so a worker can never miss a generation between its check
 * and its wait. Tasks are claimed with a fetch-add on `next`; the publisher
 * waits for `pending` (workers still inside the region) to drop to zero.
 */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

/* About 50-100 microseconds of spinning before a worker sleeps: long enough
 * to bridge the gaps between the regions of one forward step, short enough
 * that an idle engine goes quiet at once. */
#define SPIN_ROUNDS 4096

struct worker {
    struct threadpool *pool;
    int index;
    pthread_t thread;
};

struct threadpool {
    int threads;
    struct worker *workers;     /* threads - 1 of them */
    int started;

    /* The current region. Written by the publisher before `gen` is bumped. */
    threadpool_fn fn;
    void *arg;
    int n_tasks;
    atomic_int next;
    atomic_int pending;
    atomic_uint gen;

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

/* Claim and run tasks of the current region until none are left. */
static void run_tasks(struct threadpool *p, int thread)
{
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->n_tasks)
            break;
        p->fn(p->arg, t, thread);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct threadpool *p = w->pool;
    unsigned seen = 0;

    for (;;) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        for (int i = 0; g == seen && i < SPIN_ROUNDS; i++) {
            cpu_relax();
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen && !p->stop)
                pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            int stop = p->stop;
            pthread_mutex_unlock(&p->mu);
            if (stop)
                return NULL;
        }
        seen = g;
        run_tasks(p, w->index);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

struct threadpool *threadpool_new(int threads)
{
    struct threadpool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->threads = threads > 0 ? threads : threadpool_cpu_count();
    atomic_init(&p->next, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->gen, 0);
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
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, p->threads - 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);

    pthread_mutex_lock(&p->mu);
    if (p->sleepers)
        pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    run_tasks(p, 0);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0)
        cpu_relax();
}
