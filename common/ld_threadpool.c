/* ld_threadpool: persistent helper threads, job dispatch and a barrier.
 *
 * Synchronisation is three counters, each waited on by spinning a little,
 * yielding a little, and then sleeping on a futex (see wait_change):
 *   job_gen   bumped by the owner to start a job (helpers wait for a change)
 *   done      helpers count up when they finish; the owner waits for T-1
 *   bar_gen   bumped by the last thread to reach a barrier
 * Sleepers announce themselves in a `sleepers` counter before sleeping, and
 * wakers bump the counter they publish before reading `sleepers`, so with
 * sequentially consistent atomics either the waker sees the sleeper or the
 * sleeper sees the new value (and the futex call returns at once anyway
 * when the value already changed). */
#include "ld_threadpool.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <time.h>
#include <unistd.h>

#include "ld_error.h"

/* Waiting escalates: poll for SPIN_NS, then poll while yielding the CPU
 * until YIELD_NS (if threads outnumber free cores, the thread being waited
 * for gets to run), then sleep on the futex. Waking a sleeping thread takes
 * tens to hundreds of microseconds (more in a VM), longer than most waits
 * inside an evaluation. */
#define SPIN_NS 20000L
#define YIELD_NS 2000000L
#define SPIN_CHECK_EVERY 64

struct ld_threadpool_s {
    int threads;
    pthread_t *helpers;
    int started;               /* helpers successfully created */
    atomic_uint job_gen;
    atomic_uint done;
    atomic_uint bar_gen;
    atomic_uint bar_count;
    atomic_uint sleepers;      /* threads sleeping on any of the counters */
    atomic_int quit;
    ld_threadpool_fn fn;
    void *ctx;
};

typedef struct {
    ld_threadpool_t *pool;
    int tid;
} helper_arg_t;

/* Deliberately not the x86 PAUSE instruction: in virtual machines with
 * pause-loop exiting, a PAUSE loop makes the hypervisor deschedule the
 * waiting vCPU, and waking it costs more than the whole wait (measured: a
 * batch-1 evaluation on 2 threads ran 4x slower). A plain compiler barrier
 * keeps the loop honest. */
static void cpu_relax(void)
{
    __asm__ volatile("" ::: "memory");
}

static void futex_wait(atomic_uint *addr, unsigned expected)
{
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(atomic_uint *addr)
{
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Waits until *addr != value. */
static void wait_change(ld_threadpool_t *p, atomic_uint *addr, unsigned value)
{
    long start = now_ns();
    for (unsigned i = 1;; i++) {
        if (atomic_load(addr) != value)
            return;
        cpu_relax();
        if (i % SPIN_CHECK_EVERY == 0 && now_ns() - start > SPIN_NS)
            break;
    }
    while (now_ns() - start < YIELD_NS) {
        if (atomic_load(addr) != value)
            return;
        sched_yield();
    }
    atomic_fetch_add(&p->sleepers, 1);
    while (atomic_load(addr) == value)
        futex_wait(addr, value);
    atomic_fetch_sub(&p->sleepers, 1);
}

/* Publishes a new value of *addr (already stored) to sleepers. */
static void wake(ld_threadpool_t *p, atomic_uint *addr)
{
    if (atomic_load(&p->sleepers) > 0)
        futex_wake_all(addr);
}

static void *helper_main(void *arg)
{
    helper_arg_t *ha = arg;
    ld_threadpool_t *p = ha->pool;
    int tid = ha->tid;
    free(ha);
    unsigned seen = 0;
    for (;;) {
        wait_change(p, &p->job_gen, seen);
        seen = atomic_load(&p->job_gen);
        if (atomic_load(&p->quit))
            return NULL;
        p->fn(p->ctx, tid);
        atomic_fetch_add(&p->done, 1);
        wake(p, &p->done);
    }
}

int ld_threadpool_new(int threads, ld_threadpool_t **out)
{
    *out = NULL;
    if (threads < 1)
        return ld_seterr(LD_EINVAL, "thread pool: %d threads (need >= 1)", threads);
    ld_threadpool_t *p = calloc(1, sizeof *p);
    if (!p)
        return ld_seterr(LD_ENOMEM, "thread pool: out of memory");
    p->threads = threads;
    if (threads > 1) {
        p->helpers = calloc((size_t)threads - 1, sizeof *p->helpers);
        if (!p->helpers)
            goto fail_nomem;
    }
    for (int t = 1; t < threads; t++) {
        helper_arg_t *ha = malloc(sizeof *ha);
        if (!ha)
            goto fail_nomem;
        ha->pool = p;
        ha->tid = t;
        int rc = pthread_create(&p->helpers[t - 1], NULL, helper_main, ha);
        if (rc != 0) {
            free(ha);
            ld_threadpool_destroy(&p);
            return ld_seterr(LD_EIO, "thread pool: cannot start thread %d of %d: %s", t, threads, strerror(rc));
        }
        p->started++;
    }
    *out = p;
    return 0;
fail_nomem:
    ld_threadpool_destroy(&p);
    return ld_seterr(LD_ENOMEM, "thread pool: out of memory");
}

void ld_threadpool_destroy(ld_threadpool_t **self_p)
{
    ld_threadpool_t *p = self_p ? *self_p : NULL;
    if (!p)
        return;
    atomic_store(&p->quit, 1);
    atomic_fetch_add(&p->job_gen, 1);
    futex_wake_all(&p->job_gen);
    for (int t = 0; t < p->started; t++)
        pthread_join(p->helpers[t], NULL);
    free(p->helpers);
    free(p);
    *self_p = NULL;
}

int ld_threadpool_threads(const ld_threadpool_t *self)
{
    return self->threads;
}

void ld_threadpool_run(ld_threadpool_t *p, ld_threadpool_fn fn, void *ctx)
{
    if (p->threads == 1) {
        fn(ctx, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->done, 0);
    atomic_fetch_add(&p->job_gen, 1);
    wake(p, &p->job_gen);
    fn(ctx, 0);
    unsigned want = (unsigned)p->threads - 1;
    for (;;) {
        unsigned d = atomic_load(&p->done);
        if (d == want)
            break;
        wait_change(p, &p->done, d);
    }
}

void ld_threadpool_barrier(ld_threadpool_t *p)
{
    if (p->threads == 1)
        return;
    unsigned gen = atomic_load(&p->bar_gen);
    if (atomic_fetch_add(&p->bar_count, 1) + 1 == (unsigned)p->threads) {
        atomic_store(&p->bar_count, 0);
        atomic_fetch_add(&p->bar_gen, 1);
        wake(p, &p->bar_gen);
    } else {
        wait_change(p, &p->bar_gen, gen);
    }
}

int ld_threadpool_default_threads(int cap)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return cpus < 1 ? 1 : cpus > cap ? cap : (int)cpus;
}
