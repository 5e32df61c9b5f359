/* threadpool.h: a small fork-join pool for the CPU kernels.
 *
 * The forward pass issues a few dozen short parallel regions per step (one per
 * matmul, one per attention). Each region is a parallel-for over n_tasks
 * indices; tasks are handed out dynamically so uneven work (attention over
 * sequences of different lengths) still balances. The caller's thread takes
 * part, so a pool of N threads starts N-1 workers.
 *
 * Between regions workers spin for a short while (regions follow each other
 * within microseconds while a batch runs), then sleep on a condition variable,
 * so an idle engine costs no CPU.
 *
 * Threads: threadpool_run() is called by one thread at a time (the engine's
 * scheduler thread); it returns when every task has finished. fn runs on any
 * pool thread; `thread` (0..threads-1) lets it pick per-thread scratch.
 */
#ifndef CASCADE_THREADPOOL_H
#define CASCADE_THREADPOOL_H

typedef void (*threadpool_fn)(void *arg, int task, int thread);

struct threadpool;

/* A pool of `threads` threads in all (the caller counts as one); threads <= 0
 * means one per online CPU. NULL if a thread could not be started. */
struct threadpool *threadpool_new(int threads);
void threadpool_free(struct threadpool *p);
int threadpool_threads(const struct threadpool *p);

/* Run fn(arg, task, thread) for task = 0..n_tasks-1 and wait for all of them.
 * With one thread, or one task, it runs inline with no synchronisation. */
void threadpool_run(struct threadpool *p, threadpool_fn fn, void *arg, int n_tasks);

/* One per online CPU, at least 1. */
int threadpool_cpu_count(void);

#endif
