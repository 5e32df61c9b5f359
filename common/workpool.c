/* workpool.c: see workpool.h for the contract.
 *
 * One mutex guards a FIFO of jobs; idle threads wait on a condition
 * variable. A job carries its own libevent event, made on the caller's base
 * at submit time, so handing the result back is one event_active() from the
 * pool thread: libevent's locking (evthread) makes that safe, and the base's
 * thread then runs the done callback at its next turn.
 */
#include "common/workpool.h"

#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/mem.h"

#define MAX_THREADS 16

struct job {
    workpool_fn work, done;
    void *arg;
    struct event *ev;               /* on the caller's base: runs done */
    struct job *next;
};

struct workpool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *head, *tail;
    int stop;
    atomic_size_t pending;          /* queued or running */
    pthread_t threads[MAX_THREADS];
    unsigned n_threads;
};

/* On the base's thread: the job is over, give the caller its result. */
static void job_done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct job *j = arg;
    workpool_fn done = j->done;
    void *a = j->arg;
    event_free(j->ev);
    free(j);
    done(a);
}

static void *worker_main(void *arg)
{
    struct workpool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stop)
            pthread_cond_wait(&p->cv, &p->mu);
        struct job *j = p->head;
        if (!j)
            break; /* stopping, and nothing left to run */
        p->head = j->next;
        if (!p->head)
            p->tail = NULL;
        pthread_mutex_unlock(&p->mu);
        j->work(j->arg);
        atomic_fetch_sub(&p->pending, 1);
        /* After this the job belongs to its base's thread. */
        event_active(j->ev, EV_TIMEOUT, 1);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Tell every started thread to stop and wait for them. */
static void stop_threads(struct workpool *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
}

struct workpool *workpool_new(unsigned n, char *err, size_t errlen)
{
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus < 1 ? 1 : cpus > 4 ? 4 : (unsigned)cpus;
    }
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    struct workpool *p = xcalloc(1, sizeof *p);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        snprintf(err, errlen, "workpool: cannot create a mutex");
        goto fail_free;
    }
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        snprintf(err, errlen, "workpool: cannot create a condition variable");
        goto fail_mutex;
    }
    /* The threads inherit this mask: no signal is ever delivered to them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (; p->n_threads < n; p->n_threads++) {
        if (pthread_create(&p->threads[p->n_threads], NULL, worker_main, p) != 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            snprintf(err, errlen, "workpool: cannot start thread %u of %u", p->n_threads + 1, n);
            goto fail_threads;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return p;

fail_threads:
    stop_threads(p);
    pthread_cond_destroy(&p->cv);
fail_mutex:
    pthread_mutex_destroy(&p->mu);
fail_free:
    free(p);
    return NULL;
}

void workpool_free(struct workpool *p)
{
    if (!p)
        return;
    stop_threads(p);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int workpool_submit(struct workpool *p, struct event_base *base, workpool_fn work, workpool_fn done, void *arg)
{
    struct job *j = xcalloc(1, sizeof *j);
    j->work = work;
    j->done = done;
    j->arg = arg;
    j->ev = event_new(base, -1, 0, job_done_cb, j);
    if (!j->ev) {
        free(j);
        return -1;
    }
    pthread_mutex_lock(&p->mu);
    if (p->stop) {
        pthread_mutex_unlock(&p->mu);
        event_free(j->ev);
        free(j);
        return -1;
    }
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    atomic_fetch_add(&p->pending, 1);
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

size_t workpool_pending(const struct workpool *p)
{
    return atomic_load(&p->pending);
}
