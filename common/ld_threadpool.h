/* ld_threadpool: a small persistent thread pool for the energy engine.
 *
 * A pool of T threads is the calling thread (index 0) plus T-1 helper
 * pthreads it owns. ld_threadpool_run() hands one job to all T threads at once:
 * each runs fn(ctx, tid) with its own tid in 0..T-1, and the call returns
 * when all have finished. Inside a job the threads can meet at
 * ld_threadpool_barrier(). Waiting spins briefly (evaluations come in quick
 * succession during Langevin runs) and then sleeps on a futex, so an idle
 * pool costs nothing.
 *
 * A pool is driven by one thread at a time (its owner); jobs do not nest.
 * The pool decides nothing about how work is cut: callers give each thread
 * pieces whose arithmetic does not depend on which thread runs them. */
#ifndef LD_THREADPOOL_H
#define LD_THREADPOOL_H

typedef struct ld_threadpool_s ld_threadpool_t;
typedef void (*ld_threadpool_fn)(void *ctx, int tid);

/* threads >= 1. Caller owns *out. LD_ENOMEM / LD_EIO if a thread cannot start. */
int ld_threadpool_new(int threads, ld_threadpool_t **out);
/* Stops and joins the helpers. Safe on NULL. */
void ld_threadpool_destroy(ld_threadpool_t **self_p);
int ld_threadpool_threads(const ld_threadpool_t *self);
/* The default thread count of the tools and trainers: the online CPUs,
 * within 1..cap. */
int ld_threadpool_default_threads(int cap);
/* Runs fn(ctx, tid) on every thread of the pool and waits for all. */
void ld_threadpool_run(ld_threadpool_t *self, ld_threadpool_fn fn, void *ctx);
/* All threads of the running job wait here for each other. */
void ld_threadpool_barrier(ld_threadpool_t *self);

#endif
