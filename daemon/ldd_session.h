/* ldd_session: one client of the data socket, the table of them, and their
 * flow control. This module is the only owner of credits, reserved batches,
 * the ready list of finished jobs and the queue-memory budget: the
 * scheduler (ldd_sched), the batch cutter (ldd_batch), the server and the
 * status reply change and read them only through the calls below, and the
 * session struct is opaque outside ldd_session.c.
 *
 * A session is keyed by the client's ZeroMQ routing id. It holds the
 * client's validated request (resolved against the current engine), its
 * outstanding credits, the chain jobs finished for it (in job order) and
 * its counters.
 *
 *   state    | event                              | action                         | next
 *   ---------+------------------------------------+--------------------------------+--------
 *   (none)   | Hello / valid Pull, table not full | create                         | IDLE/ACTIVE
 *   (none)   | anything else                      | Error, nothing kept            | (none)
 *   IDLE     | valid Pull (credits > 0)           | set request, credits += n      | ACTIVE
 *   ACTIVE   | batch complete                     | send it, credits -= 1          | ACTIVE, or IDLE at 0
 *   any      | invalid Pull                       | Error; request/credits kept    | same
 *   any      | any message                        | last_seen = now                | same
 *   any      | idle > idle_timeout, or Bye,       | credits expire, jobs dropped,  | (none)
 *            | or the client is unreachable       | session freed                  |
 *   any      | SIGTERM                            | Pulls get Error UNAVAILABLE    | same
 *
 * IDLE = no credits; ACTIVE = credits > 0 (the scheduler reserves memory for
 * one batch at a time, up to the credits, and runs chains for reserved ones).
 * A vanished client therefore holds memory for at most idle_timeout.
 *
 * Flow-control invariants (tests/test_ldd_session.c checks them under
 * random operation sequences):
 *  - credits <= max_credits: a grant never exceeds ldd_session_credit_room;
 *  - reserved <= credits: a batch is reserved only with credit for it, and
 *    a batch handed out (sent or not) gives its reservation back;
 *  - a reservation is made only when the memory held for every session
 *    (reserved batches at their batch_bytes, plus the batch frames ZeroMQ
 *    holds, the wire bytes) stays within the budget with it;
 *  - the ready list is sorted by job number, every number in
 *    [next_ready_seq, next_job_seq) is running or in it, and samples leave
 *    it in job order only (chain by chain, snapshots in step order);
 *  - wanted = reserved * batch_size - samples running - samples held.
 * Threads: the loop thread does everything but ldd_wire_release, which
 * ZeroMQ's I/O thread calls when it frees a frame; the wire bytes are a
 * C11 atomic. */
#ifndef LDD_SESSION_H
#define LDD_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "ld_rng.h"
#include "ldd_engine.h"
#include "ldd_request.h"
#include "ldd_workers.h"

#define LDD_MAX_ID 256

typedef struct ldd_session_s ldd_session_t;
typedef struct ldd_sessions_s ldd_sessions_t;

/* ---- the table and the memory budget ---- */

/* budget: max_queue_memory in bytes. */
ldd_sessions_t *ldd_sessions_new(int max_sessions, int64_t budget);
/* Frees every session and the finished jobs they hold. Call once ZeroMQ
 * has let go of every frame (after zmq_ctx_term). */
void ldd_sessions_destroy(ldd_sessions_t **self_p);
/* New limits (a reload): a smaller max_sessions applies to new clients
 * only; reservations already made stay. */
void ldd_sessions_set_limits(ldd_sessions_t *self, int max_sessions, int64_t budget);

int ldd_sessions_count(const ldd_sessions_t *self);
ldd_session_t *ldd_sessions_at(ldd_sessions_t *self, int i);
ldd_session_t *ldd_sessions_find(ldd_sessions_t *self, const void *id, size_t len);
/* A new session, or NULL when the table is full. */
ldd_session_t *ldd_sessions_add(ldd_sessions_t *self, const void *id, size_t len, double now);
/* Removes and frees a session with its finished jobs; its credits expire. */
void ldd_sessions_remove(ldd_sessions_t *self, ldd_session_t *s);

int64_t ldd_sessions_budget(const ldd_sessions_t *self);
/* Bytes held for clients now: finished samples waiting in sessions and
 * the batch frames ZeroMQ holds. */
int64_t ldd_sessions_queue_bytes(const ldd_sessions_t *self);
/* Reserves the memory of s's next batch if s has a request, credit for one
 * more reserved batch and the budget allows. Returns 1 if it did, else 0. */
int ldd_sessions_reserve(ldd_sessions_t *self, ldd_session_t *s);
/* Whether one batch of s's request fits the budget at all. */
int ldd_sessions_batch_fits(const ldd_sessions_t *self, const ldd_session_t *s);

/* A frame handed to ZeroMQ counts in the wire bytes from
 * ldd_sessions_wire_hold until its free function calls ldd_wire_release
 * (any thread; frees the hold). */
typedef struct ldd_wire_hold_s ldd_wire_hold_t;
ldd_wire_hold_t *ldd_sessions_wire_hold(ldd_sessions_t *self, size_t bytes);
void ldd_wire_release(ldd_wire_hold_t *hold);

/* ---- one session ---- */

/* What the log and the status reply show of a session (pointers into it,
 * valid until it changes). */
typedef struct {
    const uint8_t *id;
    size_t id_len;
    uint64_t key;                 /* unique over the daemon's life */
    const char *name;
    double created, last_seen, last_sent;  /* loop clock, seconds */
    uint32_t credits, reserved;
    uint64_t batches_sent, samples_sent, errors;
    const ldd_request_t *req;     /* NULL: no request yet */
    const ld_langevin_params_t *params;    /* with req: the request's Langevin parameters */
} ldd_session_view_t;

ldd_session_view_t ldd_session_view(const ldd_session_t *s);
void ldd_session_touch(ldd_session_t *s, double now);
void ldd_session_set_name(ldd_session_t *s, const char *name);
void ldd_session_count_error(ldd_session_t *s);
void ldd_session_heartbeat_sent(ldd_session_t *s, double now);

/* Installs a validated request resolved against e: new generation, fresh
 * random stream and draws, finished jobs and reservations of the old
 * request dropped (running jobs are dropped when they return), batch
 * memory at e's sample size. Credits stay. */
void ldd_session_set_request(ldd_session_t *s, const ldd_request_t *req, const ldd_engine_t *e,
                             uint64_t default_seed);
/* Forgets the request and the credits (a reload made it unservable). */
void ldd_session_cancel_request(ldd_session_t *s);
/* The request in force, or NULL. */
const ldd_request_t *ldd_session_request(const ldd_session_t *s);

/* The scheduler's per-request draws (pair, source, crop order), reset by
 * every new request; ldd_sched reads and advances them. */
typedef struct {
    ld_rng_t rng;                 /* crop and pair choices of this request */
    uint64_t next_chain;
    int pending_pair;             /* pair drawn but not yet used (-1 = none) */
    int pending_source;           /* and its source domain */
    uint32_t *perm[LD_EBM_MAX_DOMAINS];  /* epoch mode: tile order per source domain */
    int perm_pos[LD_EBM_MAX_DOMAINS];
    uint64_t epoch[LD_EBM_MAX_DOMAINS];
} ldd_draws_t;

ldd_draws_t *ldd_session_draws(ldd_session_t *s);

/* ---- credits ---- */

/* Credits s may still be granted under max_credits (s NULL: a client
 * without a session, max_credits). */
uint32_t ldd_session_credit_room(const ldd_session_t *s, uint32_t max_credits);
/* Adds n credits; n must be within ldd_session_credit_room. */
void ldd_session_grant(ldd_session_t *s, uint32_t n);

/* ---- jobs and the ready list ---- */

/* Samples of the reserved batches that are neither finished nor running. */
int64_t ldd_session_wanted(const ldd_session_t *s);
/* Stamps a job built for s (session key, generation, next job number)
 * and counts its samples as running. */
void ldd_session_submit(ldd_session_t *s, ldd_job_t *job);
/* The session a returning job belongs to, or NULL when it is stale (its
 * session is gone or has a new request since). */
ldd_session_t *ldd_sessions_job_owner(ldd_sessions_t *self, const ldd_job_t *job);
/* Takes a returned job of s (ownership) into the ordered ready list; a
 * failed one (status < 0) takes its place in the order with no samples. */
void ldd_session_add_ready(ldd_session_t *s, ldd_job_t *job);
/* Finished samples held, not yet put in a batch (in job order or not). */
int64_t ldd_session_held_samples(const ldd_session_t *s);
/* Finished samples available in job order. */
int64_t ldd_session_ready_samples(const ldd_session_t *s);
/* Whether s has a request, a credit and a full batch ready in job order. */
int ldd_session_batch_ready(const ldd_session_t *s);

/* One finished sample: chain and snapshot of a job. */
typedef struct {
    const ldd_job_t *job;
    int chain, snap;
} ldd_sample_t;

/* Takes the next sample in job order; at least one must be ready
 * (ldd_session_ready_samples). Jobs used up leave the list onto *used
 * (through ->next) for the caller to free once it no longer needs their
 * engine (metadata strings point into it). */
void ldd_session_take_sample(ldd_session_t *s, ldd_sample_t *out, ldd_job_t **used);
/* The sequence number of the next batch cut for s. */
uint64_t ldd_session_next_batch_seq(ldd_session_t *s);
/* A batch of n samples was handed out: its reservation goes back (its
 * memory counts in the wire bytes now) and, if ZeroMQ took it (sent),
 * a credit is used. */
void ldd_session_batch_out(ldd_session_t *s, int sent, uint32_t n, double now);

#endif
