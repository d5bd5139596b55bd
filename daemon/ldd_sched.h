/* ldd_sched: decides which chains run next.
 *
 * Demand comes only from credits, and memory is reserved one batch at a
 * time: a session with more credits than reserved batches reserves the
 * next batch's memory (batch_bytes) when the total held for all sessions
 * (their reserved batches, plus the batch frames ZeroMQ has not written
 * out yet, wire_bytes) stays within max_queue_memory; it then wants
 * reserved * batch_size samples minus those running or finished for it.
 * A reserved batch only needs CPU to complete, so memory never deadlocks
 * between half-made batches. Sessions are served one job at a time in
 * round-robin order, so a client asking for large batches cannot starve
 * one asking for small ones. At most queue_capacity jobs are queued or
 * running. Memory held for clients is therefore at most max_queue_memory
 * plus, per session, one chain's snapshots beyond its reserved batches.
 *
 * Inside a session, choices are drawn from the session's own random stream
 * in scheduling order: pair by weight, source domain (when the pair names
 * none, uniform over the dataset domains some model serves its target from:
 * with models trained for every pair, the other dataset domains), crop
 * (uniform random, or in epoch mode the next tile of a per-epoch shuffle of
 * all tiles of the domain). The (source, target) drawn decides the model
 * (the engine's routes); a job's chains share one model, so a chain drawn
 * for another model waits, with its draws, for the session's next job. With
 * a client seed the stream of batches is therefore reproducible whatever
 * the worker count or the other clients. */
#ifndef LDD_SCHED_H
#define LDD_SCHED_H

#include "ldd_engine.h"
#include "ldd_session.h"
#include "ldd_workers.h"

typedef struct {
    ldd_workers_t *workers;
    int capacity;       /* queue_capacity */
    int chain_batch;
    int outstanding;    /* jobs submitted and not yet back from the workers */
    int64_t budget;     /* max_queue_memory in bytes */
    int64_t wire_bytes; /* batch frames held by ZeroMQ (set by the caller before each run) */
    int rr;             /* round-robin position */
} ldd_sched_t;

/* Submits jobs while there is demand and capacity. */
void ldd_sched_run(ldd_sched_t *self, ldd_sessions_t *sessions, ldd_engine_t *engine);
/* Gives back n jobs of capacity (jobs back from the workers). */
void ldd_sched_release(ldd_sched_t *self, int n);

#endif
