/* workpool.h: a few threads for work too long to do on an event loop.
 *
 * Every worker of the gateway runs one event loop, and a loop that computes
 * stalls every request on it (DESIGN.md: nothing on the request path
 * blocks). Some work grows with what a client sends: tokenizing a 10 MB
 * prompt takes seconds. Such work comes here:
 *
 *     workpool_submit(pool, base, work, done, arg);
 *
 * runs work(arg) on one of the pool's threads and then done(arg) on base's
 * own thread, handed back with event_active(), so libevent must have its
 * pthreads support on (evthread_use_pthreads() before base was made).
 *
 * Ownership: arg is the caller's throughout; the pool only passes it on.
 * From submit until done runs, work() may use what arg points to, so the
 * loop thread must neither free it nor change what work() reads: a caller
 * whose request goes away meanwhile marks it and lets done() free it.
 *
 * Order and bounds: jobs start in submission order, as many at once as the
 * pool has threads. The queue itself has no bound; the callers' own limits
 * bound it (connections per worker, body bytes, one job per request).
 *
 * Threads: workpool_new() and workpool_free() on one thread (the main
 * one); workpool_submit() from any thread. The pool's threads block every
 * signal, so a process that sigwait()s keeps its signals to itself.
 */
#ifndef CASCADE_WORKPOOL_H
#define CASCADE_WORKPOOL_H

#include <stddef.h>

struct event_base;
struct workpool;

typedef void (*workpool_fn)(void *arg);

/* A pool of n threads (0: one per CPU, at most 4). NULL with err set. */
struct workpool *workpool_new(unsigned n, char *err, size_t errlen);

/* Stop the threads once the queue is empty and join them. Jobs whose work
 * finished but whose base never ran again do not get their done call:
 * free a pool after its callers have finished (the gateway drains first). */
void workpool_free(struct workpool *p);

/* Queue one job. 0, or -1 when it cannot be queued (then neither work nor
 * done will run, and the caller should do the work itself). */
int workpool_submit(struct workpool *p, struct event_base *base, workpool_fn work, workpool_fn done, void *arg);

/* Jobs queued or running now (any thread; for metrics and tests). */
size_t workpool_pending(const struct workpool *p);

#endif
