/* ld_pool: a small persistent thread pool for the energy engine.
 *
 * A pool of T threads is the calling thread (index 0) plus T-1 helper
 * pthreads it owns. ld_pool_run() hands one job to all T threads at once:
 * each runs fn(ctx, tid) with its own tid in 0..T-1, and the call returns
 * when all have finished. Inside a job the threads can meet at
 * ld_pool_barrier(). Waiting spins briefly (evaluations come in quick
 * succession during Langevin runs) and then sleeps on a futex, so an idle
 * pool costs nothing.
 *
 * A pool is driven by one thread at a time (its owner); jobs do not nest.
 * The pool decides nothing about how work is cut: callers give each thread
 * pieces whose arithmetic does not depend on which thread runs them. */
#ifndef LD_POOL_H
#define LD_POOL_H

typedef struct ld_pool_s ld_pool_t;
typedef void (*ld_pool_fn)(void *ctx, int tid);

/* threads >= 1. Caller owns *out. LD_ENOMEM / LD_EIO if a thread cannot start. */
int ld_pool_new(int threads, ld_pool_t **out);
/* Stops and joins the helpers. Safe on NULL. */
void ld_pool_destroy(ld_pool_t **self_p);
int ld_pool_threads(const ld_pool_t *self);
/* Runs fn(ctx, tid) on every thread of the pool and waits for all. */
void ld_pool_run(ld_pool_t *self, ld_pool_fn fn, void *ctx);
/* All threads of the running job wait here for each other. */
void ld_pool_barrier(ld_pool_t *self);

#endif
