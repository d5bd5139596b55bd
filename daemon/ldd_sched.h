/* ldd_sched: decides which chains run next.
 *
 * Demand comes only from credits, and memory is reserved one batch at a
 * time through the session module (ldd_sessions_reserve: a session with
 * more credits than reserved batches reserves the next batch's memory when
 * the total held for all sessions stays within max_queue_memory); a session
 * then wants reserved * batch_size samples minus those running or finished
 * for it (ldd_session_wanted). A reserved batch only needs CPU to complete,
 * so memory never deadlocks between half-made batches. Sessions are served
 * one job at a time in round-robin order, so a client asking for large
 * batches cannot starve one asking for small ones. At most queue_capacity
 * jobs are queued or running. Memory held for clients is therefore at most
 * max_queue_memory plus, per session, one chain's snapshots beyond its
 * reserved batches.
 *
 * Inside a session, choices are drawn from the session's own random stream
 * (ldd_draws_t) in scheduling order: pair by weight, source domain (when the
 * pair names none, uniform over the dataset domains some model serves its
 * target from: with models trained for every pair, the other dataset
 * domains), crop (uniform random, or in epoch mode the next tile of a
 * per-epoch shuffle of all tiles of the domain). The (source, target) drawn
 * decides the model (the engine's routes); a job's chains share one model,
 * so a chain drawn for another model waits, with its draws, for the
 * session's next job. With a client seed the stream of batches is therefore
 * reproducible whatever the worker count or the other clients.
 *
 * The scheduler owns only its capacity count and round-robin position;
 * jobs go to `submit` (the workers, in the daemon). */
#ifndef LDD_SCHED_H
#define LDD_SCHED_H

#include "ldd_engine.h"
#include "ldd_session.h"
#include "ldd_workers.h"

typedef void (*ldd_sched_submit_fn)(void *user, ldd_job_t *job);

typedef struct {
    ldd_sched_submit_fn submit; /* takes ownership of each job */
    void *user;
    int capacity;       /* queue_capacity */
    int chain_batch;
    int outstanding;    /* jobs submitted and not yet released */
    int rr;             /* round-robin position */
} ldd_sched_t;

/* Submits jobs while there is demand and capacity. */
void ldd_sched_run(ldd_sched_t *self, ldd_sessions_t *sessions, ldd_engine_t *engine);
/* Gives back n jobs of capacity (jobs back from the workers). */
void ldd_sched_release(ldd_sched_t *self, int n);

#endif
