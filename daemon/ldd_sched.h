/* ldd_sched: decides which chains run next.
 *
 * Demand comes only from credits: a session wants credits * batch_size
 * samples minus those running or finished for it. Sessions with demand are
 * served one job at a time in round-robin order, so a client asking for
 * large batches cannot starve one asking for small ones. At most
 * queue_capacity jobs are queued or running; finished samples wait for
 * their batch in the session, at most credits * batch_size of them, so the
 * daemon's memory is bounded by max_clients * max_credits * max_batch
 * samples plus queue_capacity jobs.
 *
 * Inside a session, choices are drawn from the session's own random stream
 * in scheduling order: pair by weight, source domain (uniform over the other
 * dataset domains when the pair names none), crop (uniform random, or in
 * epoch mode the next tile of a per-epoch shuffle of all tiles of the
 * domain). With a client seed the stream of batches is therefore
 * reproducible whatever the worker count or the other clients. */
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
    int rr;             /* round-robin position */
} ldd_sched_t;

/* Submits jobs while there is demand and capacity. */
void ldd_sched_run(ldd_sched_t *self, ldd_sessions_t *sessions, ldd_engine_t *engine);
/* Gives back n jobs of capacity (jobs back from the workers). */
void ldd_sched_release(ldd_sched_t *self, int n);

#endif
