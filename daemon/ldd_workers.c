/* ldd_workers: the sampler thread pool (see ldd_workers.h).
 *
 * Invariants: todo and done lists and the busy count are guarded by one
 * mutex; a job is on exactly one list or held by exactly one worker or by
 * the loop. Cancelled queued jobs move to the done list with LD_ECANCELED so
 * that the loop accounts for every job it submitted. */
#include "ldd_workers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ld_error.h"
#include "ld_log.h"
#include "ldd_mem.h"

typedef struct {
    ld_ebm_arch_t arch_copy;
    int max_batch;
    ld_ebm_ws_t *ws;
} ws_slot_t;

typedef struct { /* the same for the autoencoders of latent models */
    ld_ae_arch_t arch_copy;
    int max_batch;
    ld_ae_ws_t *ws;
} ae_slot_t;

typedef struct {
    struct ldd_workers_s *pool;
    pthread_t thread;
    ws_slot_t slots[LDD_MAX_MODELS];
    int n_slots;
    ae_slot_t ae_slots[LDD_MAX_MODELS];
    int n_ae_slots;
} worker_t;

struct ldd_workers_s {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ldd_job_t *todo_head, *todo_tail;
    ldd_job_t *done_head, *done_tail;
    int busy;          /* queued + running */
    int stopping;
    atomic_int cancel; /* read by workers between Langevin steps */
    uv_async_t *wake;
    int n;
    worker_t *workers;
};

ldd_job_t *ldd_job_new(ldd_engine_t *engine, int model, int n)
{
    ldd_job_t *job = ldd_xcalloc(1, sizeof *job);
    job->engine = ldd_engine_ref(engine);
    job->model = model;
    job->n = n;
    job->chains = ldd_xcalloc((size_t)n, sizeof *job->chains);
    return job;
}

void ldd_job_free(ldd_job_t **job_p)
{
    ldd_job_t *job = *job_p;
    if (!job)
        return;
    ldd_engine_unref(&job->engine);
    free(job->chains);
    free(job->images);
    free(job->energy);
    free(job->masks);
    free(job);
    *job_p = NULL;
}

int ldd_job_samples(const ldd_job_t *job)
{
    return job->n * job->params.n_snapshots;
}

static void push(ldd_job_t **head, ldd_job_t **tail, ldd_job_t *job)
{
    job->next = NULL;
    if (*tail)
        (*tail)->next = job;
    else
        *head = job;
    *tail = job;
}

static ld_ebm_ws_t *workspace_for(worker_t *w, const ld_ebm_arch_t *arch, int n)
{
    ws_slot_t *s = NULL;
    for (int i = 0; i < w->n_slots && !s; i++)
        if (ld_ebm_arch_same_shape(&w->slots[i].arch_copy, arch))
            s = &w->slots[i];
    if (s && s->max_batch >= n)
        return s->ws;
    if (!s)
        s = w->n_slots < LDD_MAX_MODELS ? &w->slots[w->n_slots++] : &w->slots[0];
    ld_ebm_ws_destroy(&s->ws);
    s->arch_copy = *arch;
    s->max_batch = n;
    if (ld_ebm_ws_new(arch, n, 1, &s->ws) < 0) {
        ld_error("worker: cannot allocate an engine workspace: %s", ld_errdetail());
        abort();
    }
    return s->ws;
}

static ld_ae_ws_t *ae_workspace_for(worker_t *w, const ld_ae_arch_t *arch, int n)
{
    ae_slot_t *s = NULL;
    for (int i = 0; i < w->n_ae_slots && !s; i++)
        if (ld_ae_arch_same_shape(&w->ae_slots[i].arch_copy, arch))
            s = &w->ae_slots[i];
    if (s && s->max_batch >= n)
        return s->ws;
    if (!s)
        s = w->n_ae_slots < LDD_MAX_MODELS ? &w->ae_slots[w->n_ae_slots++] : &w->ae_slots[0];
    ld_ae_ws_destroy(&s->ws);
    s->arch_copy = *arch;
    s->max_batch = n;
    if (ld_ae_ws_new(arch, n, 1, &s->ws) < 0) {
        ld_error("worker: cannot allocate an autoencoder workspace: %s", ld_errdetail());
        abort();
    }
    return s->ws;
}

/* The chains of a job on its model: pixel or latent. */
static int sample(worker_t *w, const ldd_model_t *model, ldd_job_t *job, const float *start, const int32_t *target,
                  const uint64_t *ids)
{
    const ld_ebm_t *m = model->ebm;
    ld_ebm_ws_t *ws = workspace_for(w, ld_ebm_arch(m), job->n);
    if (!model->ae)
        return ld_langevin_sample(m, ws, &job->params, job->keep, job->n, start, job->masks, target, ids,
                                  job->images, job->energy, NULL, &w->pool->cancel);
    return ld_langevin_sample_latent(m, ws, model->ae, ae_workspace_for(w, ld_ae_arch(model->ae), job->n),
                                     &job->params, job->keep, job->n, start, job->masks, target, ids, job->images,
                                     job->energy, NULL, &w->pool->cancel);
}

/* Extracts crops, runs the chains, records snapshots. */
static int run_job(worker_t *w, ldd_job_t *job)
{
    ldd_engine_t *e = job->engine;
    const ldd_model_t *model = &e->models[job->model];
    int channels, side;
    ldd_model_image(model, &channels, &side);
    size_t css = (size_t)channels * side * side, ss = (size_t)side * side;
    int n = job->n, ns = job->params.n_snapshots;
    float *start = ldd_xcalloc((size_t)n * css, sizeof(float));
    int32_t *target = ldd_xcalloc((size_t)n, sizeof(int32_t));
    uint64_t *ids = ldd_xcalloc((size_t)n, sizeof(uint64_t));
    job->images = ldd_xcalloc((size_t)ns * n * css, sizeof(float));
    job->energy = ldd_xcalloc((size_t)ns * n, sizeof(float));
    job->masks = ldd_xcalloc((size_t)n * ss, 1);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        rc = ld_dataset_extract(e->dataset, &job->chains[i].crop, start + i * css, job->masks + i * ss);
        target[i] = job->chains[i].target;
        ids[i] = job->chains[i].chain_id;
    }
    if (rc == 0)
        rc = sample(w, model, job, start, target, ids);
    if (rc < 0)
        snprintf(job->error, sizeof job->error, "%s: %s", ld_strerror(rc), ld_errdetail());
    free(start);
    free(target);
    free(ids);
    return rc;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    struct ldd_workers_s *pool = w->pool;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!pool->todo_head && !pool->stopping)
            pthread_cond_wait(&pool->cv, &pool->mu);
        if (pool->stopping)
            break;
        ldd_job_t *job = pool->todo_head;
        pool->todo_head = job->next;
        if (!pool->todo_head)
            pool->todo_tail = NULL;
        pthread_mutex_unlock(&pool->mu);
        job->status = run_job(w, job);
        pthread_mutex_lock(&pool->mu);
        push(&pool->done_head, &pool->done_tail, job);
        pool->busy--;
        uv_async_send(pool->wake);
    }
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < w->n_slots; i++)
        ld_ebm_ws_destroy(&w->slots[i].ws);
    for (int i = 0; i < w->n_ae_slots; i++)
        ld_ae_ws_destroy(&w->ae_slots[i].ws);
    return NULL;
}

int ldd_workers_new(int n, uv_async_t *wake, ldd_workers_t **out)
{
    ldd_workers_t *self = ldd_xcalloc(1, sizeof *self);
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    self->wake = wake;
    self->workers = ldd_xcalloc((size_t)n, sizeof *self->workers);
    for (int i = 0; i < n; i++) {
        self->workers[i].pool = self;
        if (pthread_create(&self->workers[i].thread, NULL, worker_main, &self->workers[i]) != 0) {
            self->n = i;
            ldd_workers_destroy(&self);
            return ld_seterr(LD_ENOMEM, "cannot start worker thread %d", i);
        }
    }
    self->n = n;
    *out = self;
    return 0;
}

static void free_list(ldd_job_t *job)
{
    while (job) {
        ldd_job_t *next = job->next;
        ldd_job_free(&job);
        job = next;
    }
}

void ldd_workers_destroy(ldd_workers_t **self_p)
{
    ldd_workers_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock(&self->mu);
    self->stopping = 1;
    atomic_store(&self->cancel, 1);
    pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
    for (int i = 0; i < self->n; i++)
        pthread_join(self->workers[i].thread, NULL);
    free_list(self->todo_head);
    free_list(self->done_head);
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    free(self->workers);
    free(self);
    *self_p = NULL;
}

int ldd_workers_count(const ldd_workers_t *self)
{
    return self->n;
}

void ldd_workers_submit(ldd_workers_t *self, ldd_job_t *job)
{
    pthread_mutex_lock(&self->mu);
    push(&self->todo_head, &self->todo_tail, job);
    self->busy++;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

ldd_job_t *ldd_workers_take_done(ldd_workers_t *self)
{
    pthread_mutex_lock(&self->mu);
    ldd_job_t *list = self->done_head;
    self->done_head = self->done_tail = NULL;
    pthread_mutex_unlock(&self->mu);
    return list;
}

void ldd_workers_cancel(ldd_workers_t *self, int running)
{
    pthread_mutex_lock(&self->mu);
    if (running)
        atomic_store(&self->cancel, 1);
    while (self->todo_head) {
        ldd_job_t *job = self->todo_head;
        self->todo_head = job->next;
        job->status = LD_ECANCELED;
        snprintf(job->error, sizeof job->error, "canceled before it started");
        push(&self->done_head, &self->done_tail, job);
        self->busy--;
    }
    self->todo_tail = NULL;
    pthread_mutex_unlock(&self->mu);
    uv_async_send(self->wake);
}

int ldd_workers_busy(ldd_workers_t *self)
{
    pthread_mutex_lock(&self->mu);
    int busy = self->busy;
    pthread_mutex_unlock(&self->mu);
    return busy;
}
