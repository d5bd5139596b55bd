/* ldd_session: sessions and their flow control (see ldd_session.h).
 *
 * The table is a plain array of pointers searched linearly: it holds at most
 * max_clients entries (a few thousand), and a lookup per message is far
 * cheaper than the chains behind it. The memory a reservation checks is
 * summed over the table when it is made (no running total to drift). */
#include "ldd_session.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldd_mem.h"

struct ldd_session_s {
    uint8_t id[LDD_MAX_ID];
    size_t id_len;
    uint64_t key;
    char name[64];
    double created, last_seen, last_sent;
    uint32_t credits;
    uint32_t reserved;          /* batches (<= credits) whose memory is reserved */
    int64_t sample_bytes;       /* memory of one sample while held */
    int64_t batch_bytes;        /* memory of one batch while held */

    int has_request;
    ldd_request_t req;
    uint32_t generation;        /* bumped when the request changes */
    ld_langevin_params_t params;/* per request: engine defaults + steps + seed */
    ldd_draws_t draws;

    uint64_t next_job_seq;      /* next job number to schedule */
    uint64_t next_ready_seq;    /* next job number to take samples from */
    ldd_job_t *ready;           /* finished jobs, sorted by seq */
    int64_t inflight_samples;   /* scheduled, not yet finished */
    uint64_t batch_seq;
    uint64_t batches_sent, samples_sent, errors;
};

struct ldd_sessions_s {
    ldd_session_t **items;
    int n, max;
    uint64_t next_key;
    int64_t budget;
    _Atomic int64_t wire_bytes; /* frames ZeroMQ holds; released from its I/O thread */
};

struct ldd_wire_hold_s {
    ldd_sessions_t *owner;
    int64_t bytes;
};

/* ------------------------------------------------------------ table */

ldd_sessions_t *ldd_sessions_new(int max_sessions, int64_t budget)
{
    ldd_sessions_t *self = ldd_xcalloc(1, sizeof *self);
    self->max = max_sessions;
    self->items = ldd_xcalloc((size_t)max_sessions, sizeof *self->items);
    self->next_key = 1;
    self->budget = budget;
    atomic_init(&self->wire_bytes, 0);
    return self;
}

void ldd_sessions_set_limits(ldd_sessions_t *self, int max_sessions, int64_t budget)
{
    if (max_sessions > self->max)
        self->items = ldd_xrealloc(self->items, (size_t)max_sessions * sizeof *self->items);
    self->max = max_sessions;
    self->budget = budget;
}

static void drop_jobs(ldd_session_t *s)
{
    while (s->ready) {
        ldd_job_t *job = s->ready;
        s->ready = job->next;
        ldd_job_free(&job);
    }
    for (int d = 0; d < LD_EBM_MAX_DOMAINS; d++)
        free(s->draws.perm[d]);
    memset(&s->draws, 0, sizeof s->draws);
    s->draws.pending_pair = -1;
    s->generation++;
    s->reserved = 0;
    s->inflight_samples = 0;   /* running jobs of the old generation are dropped on arrival */
    s->next_ready_seq = s->next_job_seq;
}

static void free_session(ldd_session_t *s)
{
    drop_jobs(s);
    free(s);
}

void ldd_sessions_destroy(ldd_sessions_t **self_p)
{
    ldd_sessions_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < self->n; i++)
        free_session(self->items[i]);
    free(self->items);
    free(self);
    *self_p = NULL;
}

int ldd_sessions_count(const ldd_sessions_t *self)
{
    return self->n;
}

ldd_session_t *ldd_sessions_at(ldd_sessions_t *self, int i)
{
    return i >= 0 && i < self->n ? self->items[i] : NULL;
}

ldd_session_t *ldd_sessions_find(ldd_sessions_t *self, const void *id, size_t len)
{
    for (int i = 0; i < self->n; i++)
        if (self->items[i]->id_len == len && !memcmp(self->items[i]->id, id, len))
            return self->items[i];
    return NULL;
}

ldd_session_t *ldd_sessions_add(ldd_sessions_t *self, const void *id, size_t len, double now)
{
    if (self->n >= self->max || len > LDD_MAX_ID)
        return NULL;
    ldd_session_t *s = ldd_xcalloc(1, sizeof *s);
    memcpy(s->id, id, len);
    s->id_len = len;
    s->key = self->next_key++;
    s->created = s->last_seen = s->last_sent = now;
    s->draws.pending_pair = -1;
    self->items[self->n++] = s;
    return s;
}

void ldd_sessions_remove(ldd_sessions_t *self, ldd_session_t *s)
{
    for (int i = 0; i < self->n; i++) {
        if (self->items[i] == s) {
            self->items[i] = self->items[--self->n];
            free_session(s);
            return;
        }
    }
}

/* ------------------------------------------------------------ memory */

int64_t ldd_sessions_budget(const ldd_sessions_t *self)
{
    return self->budget;
}

int64_t ldd_sessions_queue_bytes(const ldd_sessions_t *self)
{
    int64_t sum = atomic_load(&self->wire_bytes);
    for (int i = 0; i < self->n; i++)
        sum += ldd_session_held_samples(self->items[i]) * self->items[i]->sample_bytes;
    return sum;
}

static int64_t reserved_bytes(const ldd_sessions_t *self)
{
    int64_t sum = 0;
    for (int i = 0; i < self->n; i++)
        sum += (int64_t)self->items[i]->reserved * self->items[i]->batch_bytes;
    return sum;
}

int ldd_sessions_reserve(ldd_sessions_t *self, ldd_session_t *s)
{
    if (!s->has_request || s->reserved >= s->credits)
        return 0;
    if (atomic_load(&self->wire_bytes) + reserved_bytes(self) + s->batch_bytes > self->budget)
        return 0;
    s->reserved++;
    return 1;
}

int ldd_sessions_batch_fits(const ldd_sessions_t *self, const ldd_session_t *s)
{
    return s->batch_bytes <= self->budget;
}

ldd_wire_hold_t *ldd_sessions_wire_hold(ldd_sessions_t *self, size_t bytes)
{
    ldd_wire_hold_t *hold = ldd_xmalloc(sizeof *hold);
    hold->owner = self;
    hold->bytes = (int64_t)bytes;
    atomic_fetch_add(&self->wire_bytes, hold->bytes);
    return hold;
}

void ldd_wire_release(ldd_wire_hold_t *hold)
{
    atomic_fetch_sub(&hold->owner->wire_bytes, hold->bytes);
    free(hold);
}

/* ------------------------------------------------------------ session */

ldd_session_view_t ldd_session_view(const ldd_session_t *s)
{
    return (ldd_session_view_t){
        .id = s->id, .id_len = s->id_len, .key = s->key, .name = s->name,
        .created = s->created, .last_seen = s->last_seen, .last_sent = s->last_sent,
        .credits = s->credits, .reserved = s->reserved,
        .batches_sent = s->batches_sent, .samples_sent = s->samples_sent, .errors = s->errors,
        .req = s->has_request ? &s->req : NULL, .params = &s->params,
    };
}

void ldd_session_touch(ldd_session_t *s, double now)
{
    s->last_seen = now;
}

void ldd_session_set_name(ldd_session_t *s, const char *name)
{
    snprintf(s->name, sizeof s->name, "%s", name);
}

void ldd_session_count_error(ldd_session_t *s)
{
    s->errors++;
}

void ldd_session_heartbeat_sent(ldd_session_t *s, double now)
{
    s->last_sent = now;
}

void ldd_session_set_request(ldd_session_t *s, const ldd_request_t *req, const ldd_engine_t *e,
                             uint64_t default_seed)
{
    drop_jobs(s);
    s->req = *req;
    s->has_request = 1;
    s->sample_bytes = ldd_sample_bytes(e);
    s->batch_bytes = (int64_t)req->batch_size * s->sample_bytes;
    s->params = e->defaults;
    if (req->n_steps > 0) {
        s->params.n_snapshots = req->n_steps;
        memcpy(s->params.snapshots, req->steps, (size_t)req->n_steps * sizeof(int));
    }
    int last = s->params.snapshots[s->params.n_snapshots - 1];
    s->params.steps = last > 0 ? last : 1;
    s->params.seed = req->has_seed ? req->seed : ld_splitmix64(default_seed ^ ld_splitmix64(s->key));
    ld_rng_init(&s->draws.rng, s->params.seed, 0x5e55);
}

void ldd_session_cancel_request(ldd_session_t *s)
{
    drop_jobs(s);
    s->has_request = 0;
    s->credits = 0;
}

const ldd_request_t *ldd_session_request(const ldd_session_t *s)
{
    return s->has_request ? &s->req : NULL;
}

ldd_draws_t *ldd_session_draws(ldd_session_t *s)
{
    return &s->draws;
}

/* ------------------------------------------------------------ credits */

uint32_t ldd_session_credit_room(const ldd_session_t *s, uint32_t max_credits)
{
    uint32_t held = s ? s->credits : 0;
    return held < max_credits ? max_credits - held : 0;
}

void ldd_session_grant(ldd_session_t *s, uint32_t n)
{
    s->credits += n;
}

/* ------------------------------------------------------------ jobs */

int64_t ldd_session_held_samples(const ldd_session_t *s)
{
    int64_t n = 0;
    for (const ldd_job_t *j = s->ready; j; j = j->next)
        n += ldd_job_samples(j) - j->consumed;
    return n;
}

int64_t ldd_session_ready_samples(const ldd_session_t *s)
{
    int64_t n = 0;
    uint64_t expect = s->next_ready_seq;
    for (const ldd_job_t *j = s->ready; j && j->seq == expect; j = j->next, expect++)
        n += ldd_job_samples(j) - j->consumed;
    return n;
}

int64_t ldd_session_wanted(const ldd_session_t *s)
{
    if (!s->has_request || s->reserved == 0)
        return 0;
    return (int64_t)s->reserved * s->req.batch_size - s->inflight_samples - ldd_session_held_samples(s);
}

int ldd_session_batch_ready(const ldd_session_t *s)
{
    return s->has_request && s->credits > 0 && ldd_session_ready_samples(s) >= s->req.batch_size;
}

void ldd_session_submit(ldd_session_t *s, ldd_job_t *job)
{
    job->session = s->key;
    job->generation = s->generation;
    job->seq = s->next_job_seq++;
    s->inflight_samples += ldd_job_samples(job);
}

ldd_session_t *ldd_sessions_job_owner(ldd_sessions_t *self, const ldd_job_t *job)
{
    for (int i = 0; i < self->n; i++)
        if (self->items[i]->key == job->session)
            return job->generation == self->items[i]->generation ? self->items[i] : NULL;
    return NULL;
}

void ldd_session_add_ready(ldd_session_t *s, ldd_job_t *job)
{
    ldd_job_t **p = &s->ready;
    while (*p && (*p)->seq < job->seq)
        p = &(*p)->next;
    job->next = *p;
    *p = job;
    s->inflight_samples -= ldd_job_samples(job);
    if (s->inflight_samples < 0)
        s->inflight_samples = 0;
    if (job->status < 0)
        job->consumed = ldd_job_samples(job);
}

/* Moves the jobs at the head that are next in order and used up (failed
 * ones have nothing to take) onto *used. */
static void pop_used(ldd_session_t *s, ldd_job_t **used)
{
    while (s->ready && s->ready->seq == s->next_ready_seq && s->ready->consumed == ldd_job_samples(s->ready)) {
        ldd_job_t *job = s->ready;
        s->ready = job->next;
        s->next_ready_seq = job->seq + 1;
        job->next = *used;
        *used = job;
    }
}

void ldd_session_take_sample(ldd_session_t *s, ldd_sample_t *out, ldd_job_t **used)
{
    pop_used(s, used);
    ldd_job_t *job = s->ready;
    int ns = job->params.n_snapshots;
    *out = (ldd_sample_t){ .job = job, .chain = job->consumed / ns, .snap = job->consumed % ns };
    job->consumed++;
    pop_used(s, used);
}

uint64_t ldd_session_next_batch_seq(ldd_session_t *s)
{
    return s->batch_seq++;
}

void ldd_session_batch_out(ldd_session_t *s, int sent, uint32_t n, double now)
{
    if (s->reserved > 0)
        s->reserved--;
    if (!sent || s->credits == 0)
        return;
    s->credits--;
    s->batches_sent++;
    s->samples_sent += n;
    s->last_sent = now;
}
