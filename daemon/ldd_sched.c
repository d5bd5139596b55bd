/* ldd_sched: chain scheduling (see ldd_sched.h). */
#include "ldd_sched.h"

#include <stdlib.h>
#include <string.h>

#include "ld_error.h"
#include "ld_log.h"
#include "ldd_mem.h"

static int draw_pair(ldd_draws_t *dr, const ldd_request_t *req)
{
    double u = ld_rng_uniform(&dr->rng) * req->total_weight;
    for (int i = 0; i < req->n_pairs; i++) {
        u -= req->pairs[i].weight;
        if (u < 0)
            return i;
    }
    return req->n_pairs - 1;
}

/* The pair's source, or for "any" one of the dataset domains its target is
 * served from (request validation made sure there is one), uniformly. */
static int draw_source(ldd_draws_t *dr, const ldd_engine_t *e, const ldd_pair_t *pair)
{
    if (pair->source_domain >= 0)
        return pair->source_domain;
    const ldd_target_t *t = &e->targets[pair->route];
    int k = (int)ld_rng_below(&dr->rng, (uint32_t)t->n_sources), d = 0;
    for (;; d++)
        if (t->from[d].model >= 0 && k-- == 0)
            return d;
}

/* The next chain's pair and source: the one a previous job put aside, or
 * a fresh draw. */
static void draw_chain(ldd_draws_t *dr, const ldd_request_t *req, const ldd_engine_t *e, int *pair, int *source)
{
    if (dr->pending_pair >= 0) {
        *pair = dr->pending_pair;
        *source = dr->pending_source;
        dr->pending_pair = -1;
        return;
    }
    *pair = draw_pair(dr, req);
    *source = draw_source(dr, e, &req->pairs[*pair]);
}

static void shuffle_epoch(ldd_draws_t *dr, const ldd_engine_t *e, int d)
{
    uint32_t n = (uint32_t)e->n_tiles[d];
    if (!dr->perm[d])
        dr->perm[d] = ldd_xmalloc((size_t)n * sizeof(uint32_t));
    for (uint32_t i = 0; i < n; i++)
        dr->perm[d][i] = i;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = ld_rng_below(&dr->rng, i + 1), t = dr->perm[d][i];
        dr->perm[d][i] = dr->perm[d][j];
        dr->perm[d][j] = t;
    }
    dr->perm_pos[d] = 0;
    dr->epoch[d]++;
}

static int draw_crop(ldd_draws_t *dr, const ldd_request_t *req, const ldd_engine_t *e, int d, ldd_chain_t *chain)
{
    if (!req->epoch) {
        chain->epoch = 0;
        return ld_dataset_random_crop(e->dataset, d, -1, e->size, &dr->rng, &chain->crop);
    }
    if (!dr->perm[d] || dr->perm_pos[d] >= e->n_tiles[d])
        shuffle_epoch(dr, e, d);
    const ldd_tile_t *t = &e->tiles[d][dr->perm[d][dr->perm_pos[d]++]];
    chain->crop = (ld_crop_t){ .domain = d, .item = t->item, .x = t->x, .y = t->y, .size = e->size };
    chain->epoch = dr->epoch[d];
    return 0;
}

/* The route of pair p from source d. */
static const ldd_route_t *route_of(const ldd_engine_t *e, const ldd_request_t *req, int p, int d)
{
    return &e->targets[req->pairs[p].route].from[d];
}

/* Builds one job of up to n chains for s; chains of one job share a model,
 * so a chain whose pair and source route to another model is kept for the
 * next job. */
static ldd_job_t *build_job(ldd_session_t *s, ldd_engine_t *e, int n)
{
    ldd_session_view_t v = ldd_session_view(s);
    ldd_draws_t *dr = ldd_session_draws(s);
    int p, d;
    draw_chain(dr, v.req, e, &p, &d);
    const int model = route_of(e, v.req, p, d)->model;
    ldd_job_t *job = ldd_job_new(e, model, n);
    job->params = *v.params;
    job->keep = v.req->keep >= 0 ? (ld_keep_t)v.req->keep : e->keep;
    int made = 0;
    while (made < n) {
        ldd_chain_t *c = &job->chains[made];
        if (draw_crop(dr, v.req, e, d, c) < 0) {
            ld_warn("session %llu: no crop of domain %s: %s", (unsigned long long)v.key,
                    ld_dataset_domain(e->dataset, d), ld_errdetail());
            break;
        }
        c->target = route_of(e, v.req, p, d)->index;
        c->target_name = (int16_t)p;
        c->chain_id = dr->next_chain++;
        made++;
        if (made == n)
            break;
        draw_chain(dr, v.req, e, &p, &d);
        if (route_of(e, v.req, p, d)->model != model) {
            dr->pending_pair = p;
            dr->pending_source = d;
            break;
        }
    }
    job->n = made;
    if (made == 0)
        ldd_job_free(&job);
    return job;
}

static int schedule_one(ldd_sched_t *self, ldd_sessions_t *sessions, ldd_session_t *s, ldd_engine_t *e)
{
    int64_t wanted = ldd_session_wanted(s);
    if (wanted <= 0 && ldd_sessions_reserve(sessions, s))
        wanted = ldd_session_wanted(s);
    if (wanted <= 0)
        return 0;
    int64_t per_chain = ldd_session_view(s).params->n_snapshots;
    int64_t chains = (wanted + per_chain - 1) / per_chain;
    ldd_job_t *job = build_job(s, e, chains < self->chain_batch ? (int)chains : self->chain_batch);
    if (!job)
        return 0;
    ldd_session_submit(s, job);
    self->outstanding++;
    self->submit(self->user, job);
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
