/* ldd_workers: sampler threads that run chain jobs.
 *
 * A job is up to chain_batch Langevin chains that share a model, Langevin
 * parameters (snapshot steps, seed) and keep setting; each chain has its own
 * source crop, target and chain id. The loop thread fills in the inputs and
 * submits; a worker extracts the crops from the dataset, runs the chains
 * (ld_langevin_sample: in the model's colour space, snapshots back in RGB)
 * and records every snapshot and its energy, then puts the job on the done
 * list and wakes the loop through a uv_async_t. The loop collects done jobs
 * with ldd_workers_take_done() and owns them again from then on.
 *
 * Each worker owns its engine workspaces (ld_ebm_ws_t, threads = 1, one per
 * model architecture it has met), so N workers use N cores and no more.
 * The number of jobs in flight is bounded by the scheduler (queue_capacity),
 * which bounds the memory of both lists.
 *
 * Job life: loop (ldd_job_new) -> todo list -> worker -> done list -> loop
 * (assembled into batches) -> ldd_job_free. */
#ifndef LDD_WORKERS_H
#define LDD_WORKERS_H

#include <stdint.h>
#include <uv.h>

#include "ld_dataset.h"
#include "ld_langevin.h"
#include "ldd_engine.h"

typedef struct {
    ld_crop_t crop;
    int32_t target;           /* index in the model's domains */
    int16_t target_name;      /* index into the session's target names */
    uint64_t chain_id;
    uint64_t epoch;
} ldd_chain_t;

typedef struct ldd_job_s {
    struct ldd_job_s *next;
    /* inputs (set by the scheduler) */
    ldd_engine_t *engine;     /* a reference, dropped by ldd_job_free */
    int model;
    ld_langevin_params_t params;
    ld_keep_t keep;           /* what the samples keep of their source */
    int n;                    /* chains */
    ldd_chain_t *chains;      /* [n] */
    uint64_t session;         /* key of the session that asked (may have vanished since) */
    uint32_t generation;      /* the session's request generation at scheduling */
    uint64_t seq;             /* per-session job number, for in-order assembly */
    /* outputs (set by the worker) */
    float *images;            /* [n_snapshots][n][C*S*S], RGB whatever the model's colour space */
    float *energy;            /* [n_snapshots][n] of the chain states */
    uint8_t *masks;           /* [n][S*S] */
    int status;               /* 0 or negative LD_E* */
    char error[256];
    /* assembly cursor (loop) */
    int consumed;             /* samples already put in batches */
} ldd_job_t;

/* A job for n chains with its input arrays allocated; takes a reference to
 * the engine. OOM is fatal. */
ldd_job_t *ldd_job_new(ldd_engine_t *engine, int model, int n);
void ldd_job_free(ldd_job_t **job_p);
/* Samples in a job (chains x snapshots) and the pixels of one. */
int ldd_job_samples(const ldd_job_t *job);

typedef struct ldd_workers_s ldd_workers_t;

/* Starts n threads; wake is uv_async_send()'ed whenever a job is done. */
int ldd_workers_new(int n, uv_async_t *wake, ldd_workers_t **out);
/* Cancels running chains, joins the threads and frees every job still held. */
void ldd_workers_destroy(ldd_workers_t **self_p);
int ldd_workers_count(const ldd_workers_t *self);

/* Queues a job (ownership passes to the workers until it comes back). */
void ldd_workers_submit(ldd_workers_t *self, ldd_job_t *job);
/* Takes every done job, in completion order (a list through ->next). */
ldd_job_t *ldd_workers_take_done(ldd_workers_t *self);
/* Drops queued jobs that have not started and, if `running` is set, asks
 * running chains to stop; they come back through the done list with
 * LD_ECANCELED. */
void ldd_workers_cancel(ldd_workers_t *self, int running);
/* Jobs queued or running. */
int ldd_workers_busy(ldd_workers_t *self);

#endif
