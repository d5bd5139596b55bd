/* ldd_session: one client of the data socket, and the table of them.
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
 * A vanished client therefore holds memory for at most idle_timeout. */
#ifndef LDD_SESSION_H
#define LDD_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "ld_rng.h"
#include "ldd_engine.h"
#include "ldd_workers.h"

#define LDD_MAX_PAIRS 64
#define LDD_MAX_ID 256

typedef struct {
    char source[LD_NAME_MAX];   /* "" = any dataset domain the target is served from */
    char target[LD_NAME_MAX];
    double weight;
    int source_domain;          /* dataset index, -1 = any; resolved against the engine */
    int route;                  /* index in the engine's targets; resolved against the engine */
} ldd_pair_t;

typedef struct {
    uint32_t batch_size;
    int encoding;               /* LANGDAUG__V1__ENCODING__* */
    int n_pairs;
    ldd_pair_t pairs[LDD_MAX_PAIRS];
    double total_weight;
    int n_steps;
    int steps[LD_LANGEVIN_MAX_SNAPSHOTS];
    int has_seed;
    uint64_t seed;
    int epoch;
    int keep;                   /* ld_keep_t, or -1: the engine's (the config's keep) */
} ldd_request_t;

typedef struct ldd_session_s {
    uint8_t id[LDD_MAX_ID];
    size_t id_len;
    uint64_t key;               /* unique over the daemon's life */
    char name[64];
    double created, last_seen, last_sent;  /* loop clock, seconds */
    uint32_t credits;
    uint32_t reserved;          /* batches (<= credits) whose memory the scheduler reserved */
    int64_t batch_bytes;        /* memory of one batch while held (float pixels + masks) */

    int has_request;
    ldd_request_t req;
    uint32_t generation;        /* bumped when the request or the engine changes */
    ld_langevin_params_t params;/* per request: engine defaults + steps + seed */
    ld_rng_t rng;               /* crop and pair choices of this request */
    uint64_t next_chain;
    int pending_pair;           /* pair drawn but not yet used (-1 = none) */
    int pending_source;         /* and its source domain */
    uint32_t *perm[LD_EBM_MAX_DOMAINS];  /* epoch mode: tile order per source domain */
    int perm_pos[LD_EBM_MAX_DOMAINS];
    uint64_t epoch[LD_EBM_MAX_DOMAINS];

    uint64_t next_job_seq;      /* next job number to schedule */
    uint64_t next_ready_seq;    /* next job number to assemble */
    ldd_job_t *ready;           /* finished jobs, sorted by seq */
    int64_t inflight_samples;   /* scheduled, not yet finished */
    uint64_t batch_seq;
    uint64_t batches_sent, samples_sent, errors;
} ldd_session_t;

typedef struct ldd_sessions_s ldd_sessions_t;

ldd_sessions_t *ldd_sessions_new(int max_sessions);
/* Frees every session and the finished jobs they hold. */
void ldd_sessions_destroy(ldd_sessions_t **self_p);

int ldd_sessions_count(const ldd_sessions_t *self);
ldd_session_t *ldd_sessions_at(ldd_sessions_t *self, int i);
ldd_session_t *ldd_sessions_find(ldd_sessions_t *self, const void *id, size_t len);
ldd_session_t *ldd_sessions_find_key(ldd_sessions_t *self, uint64_t key);
/* A new session, or NULL when the table is full. */
ldd_session_t *ldd_sessions_add(ldd_sessions_t *self, const void *id, size_t len, double now);
/* Removes and frees a session with its finished jobs. */
void ldd_sessions_remove(ldd_sessions_t *self, ldd_session_t *s);
void ldd_sessions_set_max(ldd_sessions_t *self, int max_sessions);

/* Installs a validated request: new generation, fresh random stream and
 * epoch state, finished jobs of the old request dropped. */
void ldd_session_set_request(ldd_session_t *s, const ldd_request_t *req, const ld_langevin_params_t *defaults,
                             uint64_t default_seed);
/* Drops the finished jobs and epoch state of the current request and
 * starts a new generation (running jobs are dropped when they return). */
void ldd_session_drop_jobs(ldd_session_t *s);
/* Samples of the reserved batches that are neither finished nor running. */
int64_t ldd_session_wanted(const ldd_session_t *s);
/* Finished samples held, not yet put in a batch (in job order or not). */
int64_t ldd_session_held_samples(const ldd_session_t *s);
/* Finished samples available in job order. */
int64_t ldd_session_ready_samples(const ldd_session_t *s);
/* Takes a finished job (ownership) into the ordered ready list. */
void ldd_session_add_ready(ldd_session_t *s, ldd_job_t *job);

#endif
