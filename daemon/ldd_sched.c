/* ldd_sched: chain scheduling (see ldd_sched.h). */
#include "ldd_sched.h"

#include <stdlib.h>
#include <string.h>

#include "ld_error.h"
#include "ld_log.h"
#include "ldd_mem.h"

static int draw_pair(ldd_session_t *s)
{
    double u = ld_rng_uniform(&s->rng) * s->req.total_weight;
    for (int i = 0; i < s->req.n_pairs; i++) {
        u -= s->req.pairs[i].weight;
        if (u < 0)
            return i;
    }
    return s->req.n_pairs - 1;
}

/* The pair's source, or for "any" one of the dataset domains its target is
 * served from (request validation made sure there is one), uniformly. */
static int draw_source(ldd_session_t *s, const ldd_engine_t *e, const ldd_pair_t *pair)
{
    if (pair->source_domain >= 0)
        return pair->source_domain;
    const ldd_target_t *t = &e->targets[pair->route];
    int k = (int)ld_rng_below(&s->rng, (uint32_t)t->n_sources), d = 0;
    for (;; d++)
        if (t->from[d].model >= 0 && k-- == 0)
            return d;
}

/* The next chain's pair and source: the one a previous job put aside, or
 * a fresh draw. */
static void draw_chain(ldd_session_t *s, const ldd_engine_t *e, int *pair, int *source)
{
    if (s->pending_pair >= 0) {
        *pair = s->pending_pair;
        *source = s->pending_source;
        s->pending_pair = -1;
        return;
    }
    *pair = draw_pair(s);
    *source = draw_source(s, e, &s->req.pairs[*pair]);
}

static void shuffle_epoch(ldd_session_t *s, const ldd_engine_t *e, int d)
{
    uint32_t n = (uint32_t)e->n_tiles[d];
    if (!s->perm[d]) {
        s->perm[d] = ldd_xmalloc((size_t)n * sizeof(uint32_t));
    }
    for (uint32_t i = 0; i < n; i++)
        s->perm[d][i] = i;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = ld_rng_below(&s->rng, i + 1), t = s->perm[d][i];
        s->perm[d][i] = s->perm[d][j];
        s->perm[d][j] = t;
    }
    s->perm_pos[d] = 0;
    s->epoch[d]++;
}

static int draw_crop(ldd_session_t *s, const ldd_engine_t *e, int d, ldd_chain_t *chain)
{
    if (!s->req.epoch) {
        chain->epoch = 0;
        return ld_dataset_random_crop(e->dataset, d, -1, e->size, &s->rng, &chain->crop);
    }
    if (!s->perm[d] || s->perm_pos[d] >= e->n_tiles[d])
        shuffle_epoch(s, e, d);
    const ldd_tile_t *t = &e->tiles[d][s->perm[d][s->perm_pos[d]++]];
    chain->crop = (ld_crop_t){ .domain = d, .item = t->item, .x = t->x, .y = t->y, .size = e->size };
    chain->epoch = s->epoch[d];
    return 0;
}

/* Builds one job of up to n chains for s; chains of one job share a model,
 * so a chain whose pair and source route to another model is kept for the
 * next job. */
static ldd_job_t *build_job(ldd_session_t *s, ldd_engine_t *e, int n)
{
    int p, d;
    draw_chain(s, e, &p, &d);
    const int model = e->targets[s->req.pairs[p].route].from[d].model;
    ldd_job_t *job = ldd_job_new(e, model, n);
    job->params = s->params;
    job->keep = s->req.keep >= 0 ? (ld_keep_t)s->req.keep : e->keep;
    job->session = s->key;
    job->generation = s->generation;
    int made = 0;
    while (made < n) {
        ldd_chain_t *c = &job->chains[made];
        if (draw_crop(s, e, d, c) < 0) {
            ld_warn("session %llu: no crop of domain %s: %s", (unsigned long long)s->key,
                    ld_dataset_domain(e->dataset, d), ld_errdetail());
            break;
        }
        c->target = e->targets[s->req.pairs[p].route].from[d].index;
        c->target_name = (int16_t)p;
        c->chain_id = s->next_chain++;
        made++;
        if (made == n)
            break;
        draw_chain(s, e, &p, &d);
        if (e->targets[s->req.pairs[p].route].from[d].model != model) {
            s->pending_pair = p;
            s->pending_source = d;
            break;
        }
    }
    job->n = made;
    if (made == 0)
        ldd_job_free(&job);
    return job;
}

static int64_t reserved_bytes(ldd_sessions_t *sessions)
{
    int64_t sum = 0;
    for (int i = 0; i < ldd_sessions_count(sessions); i++) {
        const ldd_session_t *s = ldd_sessions_at(sessions, i);
        sum += (int64_t)s->reserved * s->batch_bytes;
    }
    return sum;
}

/* Reserves the memory of s's next batch if it has credit for one and the
 * budget allows. */
static int reserve_batch(ldd_sched_t *self, ldd_sessions_t *sessions, ldd_session_t *s)
{
    if (!s->has_request || s->reserved >= s->credits)
        return 0;
    if (self->wire_bytes + reserved_bytes(sessions) + s->batch_bytes > self->budget)
        return 0;
    s->reserved++;
    return 1;
}

static int schedule_one(ldd_sched_t *self, ldd_sessions_t *sessions, ldd_session_t *s, ldd_engine_t *e)
{
    int64_t wanted = ldd_session_wanted(s);
    if (wanted <= 0 && reserve_batch(self, sessions, s))
        wanted = ldd_session_wanted(s);
    if (wanted <= 0)
        return 0;
    int64_t chains = (wanted + s->params.n_snapshots - 1) / s->params.n_snapshots;
    ldd_job_t *job = build_job(s, e, chains < self->chain_batch ? (int)chains : self->chain_batch);
    if (!job)
        return 0;
    job->seq = s->next_job_seq++;
    s->inflight_samples += ldd_job_samples(job);
    self->outstanding++;
    ldd_workers_submit(self->workers, job);
    return 1;
}

void ldd_sched_run(ldd_sched_t *self, ldd_sessions_t *sessions, ldd_engine_t *engine)
{
    int idle_rounds = 0;
    while (self->outstanding < self->capacity && ldd_sessions_count(sessions) > 0) {
        int n = ldd_sessions_count(sessions);
        if (self->rr >= n)
            self->rr = 0;
        int did = schedule_one(self, sessions, ldd_sessions_at(sessions, self->rr), engine);
        self->rr++;
        idle_rounds = did ? 0 : idle_rounds + 1;
        if (idle_rounds >= n)
            break;
    }
}

void ldd_sched_release(ldd_sched_t *self, int n)
{
    self->outstanding -= n;
    if (self->outstanding < 0)
        self->outstanding = 0;
}
