/* ldd_session: session table and per-session request state (see ldd_session.h).
 *
 * The table is a plain array of pointers searched linearly: it holds at most
 * max_clients entries (a few thousand), and a lookup per message is far
 * cheaper than the chains behind it. Invariant: ready jobs are sorted by seq
 * and every seq in [next_ready_seq, next_job_seq) is either running or in
 * the ready list. */
#include "ldd_session.h"

#include <stdlib.h>
#include <string.h>

#include "ldd_mem.h"

struct ldd_sessions_s {
    ldd_session_t **items;
    int n, max;
    uint64_t next_key;
};

ldd_sessions_t *ldd_sessions_new(int max_sessions)
{
    ldd_sessions_t *self = ldd_xcalloc(1, sizeof *self);
    self->max = max_sessions;
    self->items = ldd_xcalloc((size_t)max_sessions, sizeof *self->items);
    self->next_key = 1;
    return self;
}

void ldd_sessions_set_max(ldd_sessions_t *self, int max_sessions)
{
    if (max_sessions > self->max) {
        self->items = ldd_xrealloc(self->items, (size_t)max_sessions * sizeof *self->items);
    }
    self->max = max_sessions; /* a smaller limit applies to new clients only */
}

static void free_session(ldd_session_t *s)
{
    ldd_session_drop_jobs(s);
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

ldd_session_t *ldd_sessions_find_key(ldd_sessions_t *self, uint64_t key)
{
    for (int i = 0; i < self->n; i++)
        if (self->items[i]->key == key)
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
    s->pending_pair = -1;
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

void ldd_session_drop_jobs(ldd_session_t *s)
{
    while (s->ready) {
        ldd_job_t *job = s->ready;
        s->ready = job->next;
        ldd_job_free(&job);
    }
    for (int d = 0; d < LD_EBM_MAX_DOMAINS; d++) {
        free(s->perm[d]);
        s->perm[d] = NULL;
        s->perm_pos[d] = 0;
        s->epoch[d] = 0;
    }
    s->generation++;
    s->reserved = 0;
    s->inflight_samples = 0;   /* running jobs of the old generation are dropped on arrival */
    s->next_ready_seq = s->next_job_seq;
    s->pending_pair = -1;
}

void ldd_session_set_request(ldd_session_t *s, const ldd_request_t *req, const ld_langevin_params_t *defaults,
                             uint64_t default_seed)
{
    ldd_session_drop_jobs(s);
    s->req = *req;
    s->has_request = 1;
    s->params = *defaults;
    if (req->n_steps > 0) {
        s->params.n_snapshots = req->n_steps;
        memcpy(s->params.snapshots, req->steps, (size_t)req->n_steps * sizeof(int));
    }
    int last = s->params.snapshots[s->params.n_snapshots - 1];
    s->params.steps = last > 0 ? last : 1;
    s->params.seed = req->has_seed ? req->seed : ld_splitmix64(default_seed ^ ld_splitmix64(s->key));
    ld_rng_init(&s->rng, s->params.seed, 0x5e55);
    s->next_chain = 0;
}

int64_t ldd_session_ready_samples(const ldd_session_t *s)
{
    int64_t n = 0;
    uint64_t expect = s->next_ready_seq;
    for (const ldd_job_t *j = s->ready; j && j->seq == expect; j = j->next, expect++)
        n += ldd_job_samples(j) - j->consumed;
    return n;
}

int64_t ldd_session_held_samples(const ldd_session_t *s)
{
    int64_t n = 0;
    for (const ldd_job_t *j = s->ready; j; j = j->next)
        n += ldd_job_samples(j) - j->consumed;
    return n;
}

int64_t ldd_session_wanted(const ldd_session_t *s)
{
    if (!s->has_request || s->reserved == 0)
        return 0;
    return (int64_t)s->reserved * s->req.batch_size - s->inflight_samples - ldd_session_held_samples(s);
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
}
