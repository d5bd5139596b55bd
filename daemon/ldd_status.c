/* ldd_status: counters, rates, energy statistics and the status reply
 * (see ldd_status.h). */
#include "ldd_status.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ldd_mem.h"

typedef struct {
    char source[LD_NAME_MAX], target[LD_NAME_MAX];
    uint64_t count;
    double mean, m2, min, max;
} energy_stat_t;

typedef struct {
    double m1, m5, m15;
    uint64_t last;    /* counter value at the last tick */
} rate_t;

struct ldd_status_s {
    uint64_t produced, sent, batches, chains_failed, protocol_errors;
    rate_t produced_rate, sent_rate;
    energy_stat_t *energies;
    int n_energies, cap_energies;
};

ldd_status_t *ldd_status_new(void)
{
    return ldd_xcalloc(1, sizeof(ldd_status_t));
}

void ldd_status_destroy(ldd_status_t **self_p)
{
    if (!*self_p)
        return;
    free((*self_p)->energies);
    free(*self_p);
    *self_p = NULL;
}

static energy_stat_t *find_stat(ldd_status_t *self, const char *source, const char *target)
{
    for (int i = 0; i < self->n_energies; i++)
        if (!strcmp(self->energies[i].source, source) && !strcmp(self->energies[i].target, target))
            return &self->energies[i];
    if (self->n_energies == self->cap_energies) {
        self->cap_energies = self->cap_energies ? 2 * self->cap_energies : 16;
        self->energies = ldd_xrealloc(self->energies, (size_t)self->cap_energies * sizeof *self->energies);
    }
    energy_stat_t *st = &self->energies[self->n_energies++];
    memset(st, 0, sizeof *st);
    snprintf(st->source, sizeof st->source, "%s", source);
    snprintf(st->target, sizeof st->target, "%s", target);
    return st;
}

void ldd_status_produced(ldd_status_t *self, const char *source, const char *target, float energy)
{
    self->produced++;
    energy_stat_t *st = find_stat(self, source, target);
    double e = energy;
    st->count++;
    if (st->count == 1 || e < st->min)
        st->min = e;
    if (st->count == 1 || e > st->max)
        st->max = e;
    double delta = e - st->mean;
    st->mean += delta / (double)st->count;
    st->m2 += delta * (e - st->mean);
}

void ldd_status_sent(ldd_status_t *self, uint64_t samples)
{
    self->sent += samples;
    self->batches++;
}

void ldd_status_chain_failed(ldd_status_t *self)
{
    self->chains_failed++;
}

void ldd_status_protocol_error(ldd_status_t *self)
{
    self->protocol_errors++;
}

uint64_t ldd_status_samples_sent(const ldd_status_t *self)
{
    return self->sent;
}

static void advance(rate_t *r, uint64_t counter, double dt)
{
    double rate = (double)(counter - r->last) / dt;
    r->last = counter;
    double a1 = exp(-dt / 60.0), a5 = exp(-dt / 300.0), a15 = exp(-dt / 900.0);
    r->m1 = r->m1 * a1 + rate * (1 - a1);
    r->m5 = r->m5 * a5 + rate * (1 - a5);
    r->m15 = r->m15 * a15 + rate * (1 - a15);
}

void ldd_status_tick(ldd_status_t *self, double dt)
{
    if (dt <= 0)
        return;
    advance(&self->produced_rate, self->produced, dt);
    advance(&self->sent_rate, self->sent, dt);
}

uint64_t ldd_resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, resident = 0;
    if (!f)
        return 0;
    int ok = fscanf(f, "%llu %llu", &size, &resident) == 2;
    fclose(f);
    return ok ? resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

/* The wire enums Keep and ColourSpace carry ld_colour's values as they are
 * (here, in HelloReply and in PullRequest). */
_Static_assert((int)LANGDAUG__V1__KEEP__KEEP_NONE == LD_KEEP_NONE &&
                   (int)LANGDAUG__V1__KEEP__KEEP_LUMINANCE == LD_KEEP_LUMINANCE,
               "wire Keep = ld_keep_t");
_Static_assert((int)LANGDAUG__V1__COLOUR_SPACE__COLOUR_SPACE_RGB == LD_COLOUR_RGB &&
                   (int)LANGDAUG__V1__COLOUR_SPACE__COLOUR_SPACE_LAB == LD_COLOUR_LAB,
               "wire ColourSpace = ld_colour_space_t");

static void model_info(ldd_model_infos_t *mi, const ldd_engine_t *e, int i, Langdaug__V1__Pair *pairs,
                       Langdaug__V1__Pair **pair_ptr)
{
    const ldd_model_t *m = &e->models[i];
    const ld_ebm_arch_t *a = ld_ebm_arch(m->ebm);
    Langdaug__V1__ModelInfo *info = &mi->models[i];
    char **domains = mi->domains[i];
    uint32_t *widths = mi->widths[i];
    langdaug__v1__model_info__init(info);
    info->hash = (char *)e->models[i].hash;
    info->path = (char *)e->models[i].path;
    for (int d = 0; d < a->n_domains; d++)
        domains[d] = (char *)a->domains[d];
    info->n_domains = (size_t)a->n_domains;
    info->domains = domains;
    int channels, side;
    ldd_model_image(m, &channels, &side);
    info->has_image_channels = info->has_mask_classes = info->has_size = 1;
    info->image_channels = (uint32_t)channels;
    info->mask_classes = (uint32_t)a->mask_classes;
    info->size = (uint32_t)side;
    if (m->ae) {
        info->autoencoder_hash = (char *)m->ae_hash;
        info->has_latent_channels = info->has_latent_size = 1;
        info->latent_channels = (uint32_t)a->image_channels;
        info->latent_size = (uint32_t)a->size;
    }
    for (int w = 0; w <= a->n_blocks; w++)
        widths[w] = (uint32_t)a->widths[w];
    info->n_widths = (size_t)a->n_blocks + 1;
    info->widths = widths;
    info->has_colour_space = 1;
    info->colour_space = (Langdaug__V1__ColourSpace)a->colour_space;
    for (int k = 0; k < m->n_served; k++) {
        langdaug__v1__pair__init(&pairs[k]);
        pairs[k].source = (char *)ld_dataset_domain(e->dataset, m->served[k].source);
        pairs[k].target = (char *)a->domains[m->served[k].target];
        pair_ptr[k] = &pairs[k];
    }
    info->n_pairs = (size_t)m->n_served;
    info->pairs = pair_ptr;
    mi->ptr[i] = info;
}

void ldd_model_infos_fill(ldd_model_infos_t *mi, const ldd_engine_t *e)
{
    size_t n = 0;
    for (int i = 0; i < e->n_models; i++)
        n += (size_t)e->models[i].n_served;
    mi->pairs = ldd_xcalloc(n ? n : 1, sizeof *mi->pairs);
    mi->pair_ptr = ldd_xcalloc(n ? n : 1, sizeof *mi->pair_ptr);
    n = 0;
    for (int i = 0; i < e->n_models; i++) {
        model_info(mi, e, i, mi->pairs + n, mi->pair_ptr + n);
        n += (size_t)e->models[i].n_served;
    }
}

void ldd_model_infos_free(ldd_model_infos_t *mi)
{
    free(mi->pairs);
    free(mi->pair_ptr);
    mi->pairs = NULL;
    mi->pair_ptr = NULL;
}

static Langdaug__V1__Rates rates_of(const rate_t *r)
{
    Langdaug__V1__Rates out = LANGDAUG__V1__RATES__INIT;
    out.has_m1 = out.has_m5 = out.has_m15 = 1;
    out.m1 = r->m1;
    out.m5 = r->m5;
    out.m15 = r->m15;
    return out;
}

/* Everything the packed reply points to, freed after packing. */
typedef struct {
    ldd_model_infos_t models;
    Langdaug__V1__ConfigEntry *config;
    Langdaug__V1__ConfigEntry **config_ptr;
    char **config_text;
    int n_config, cap_config;
    Langdaug__V1__ClientStatus *clients, **client_ptr;
    char (*client_id)[2 * LDD_MAX_ID + 1];
    Langdaug__V1__Pair *pairs, **pair_ptr;
    uint32_t *steps;
    Langdaug__V1__EnergyStats *energies, **energy_ptr;
    Langdaug__V1__DomainCount *domains_count, **domain_ptr;
} reply_mem_t;

static void add_config(const char *key, const char *value, void *user)
{
    reply_mem_t *m = user;
    if (m->n_config == m->cap_config) {
        m->cap_config = m->cap_config ? 2 * m->cap_config : 64;
        m->config = ldd_xrealloc(m->config, (size_t)m->cap_config * sizeof *m->config);
        m->config_ptr = ldd_xrealloc(m->config_ptr, (size_t)m->cap_config * sizeof *m->config_ptr);
        m->config_text = ldd_xrealloc(m->config_text, (size_t)m->cap_config * 2 * sizeof(char *));
    }
    int i = m->n_config++;
    langdaug__v1__config_entry__init(&m->config[i]);
    m->config_text[2 * i] = ldd_xstrdup(key);
    m->config_text[2 * i + 1] = ldd_xstrdup(value);
    m->config[i].key = m->config_text[2 * i];
    m->config[i].value = m->config_text[2 * i + 1];
}

/* Client i's pairs and steps into the reply's arrays. */
static void fill_request(reply_mem_t *m, int i, const ldd_session_view_t *sv, const ldd_engine_t *e,
                         Langdaug__V1__ClientStatus *c)
{
    const ldd_request_t *req = sv->req;
    c->has_batch_size = c->has_encoding = c->has_epoch = c->has_keep = 1;
    c->batch_size = req->batch_size;
    c->encoding = req->encoding;
    c->epoch = req->epoch;
    c->keep = (Langdaug__V1__Keep)(req->keep >= 0 ? req->keep : (int)e->keep);
    for (int p = 0; p < req->n_pairs; p++) {
        Langdaug__V1__Pair *pp = &m->pairs[i * LDD_MAX_PAIRS + p];
        langdaug__v1__pair__init(pp);
        pp->source = (char *)req->pairs[p].source;
        pp->target = (char *)req->pairs[p].target;
        pp->has_weight = 1;
        pp->weight = req->pairs[p].weight;
        m->pair_ptr[i * LDD_MAX_PAIRS + p] = pp;
    }
    c->n_pairs = (size_t)req->n_pairs;
    c->pairs = &m->pair_ptr[i * LDD_MAX_PAIRS];
    for (int k = 0; k < sv->params->n_snapshots; k++)
        m->steps[i * LD_LANGEVIN_MAX_SNAPSHOTS + k] = (uint32_t)sv->params->snapshots[k];
    c->n_steps = (size_t)sv->params->n_snapshots;
    c->steps = &m->steps[i * LD_LANGEVIN_MAX_SNAPSHOTS];
}

static void fill_clients(reply_mem_t *m, const ldd_status_view_t *v, Langdaug__V1__StatusReply *r)
{
    int n = ldd_sessions_count(v->sessions);
    m->clients = ldd_xcalloc((size_t)n, sizeof *m->clients);
    m->client_ptr = ldd_xcalloc((size_t)n, sizeof *m->client_ptr);
    m->client_id = ldd_xcalloc((size_t)n, sizeof *m->client_id);
    m->pairs = ldd_xcalloc((size_t)n * LDD_MAX_PAIRS, sizeof *m->pairs);
    m->pair_ptr = ldd_xcalloc((size_t)n * LDD_MAX_PAIRS, sizeof *m->pair_ptr);
    m->steps = ldd_xcalloc((size_t)n * LD_LANGEVIN_MAX_SNAPSHOTS, sizeof *m->steps);
    for (int i = 0; i < n; i++) {
        ldd_session_view_t sv = ldd_session_view(ldd_sessions_at(v->sessions, i));
        Langdaug__V1__ClientStatus *c = &m->clients[i];
        langdaug__v1__client_status__init(c);
        for (size_t b = 0; b < sv.id_len; b++)
            sprintf(m->client_id[i] + 2 * b, "%02x", sv.id[b]);
        c->id = m->client_id[i];
        c->name = (char *)sv.name;
        c->has_credits = c->has_samples_sent = c->has_batches_sent = c->has_idle_s = c->has_errors = 1;
        c->credits = sv.credits;
        c->samples_sent = sv.samples_sent;
        c->batches_sent = sv.batches_sent;
        c->idle_s = v->now - sv.last_seen;
        c->errors = sv.errors;
        if (sv.req)
            fill_request(m, i, &sv, v->engine, c);
        m->client_ptr[i] = c;
    }
    r->n_clients = (size_t)n;
    r->clients = m->client_ptr;
}

static void fill_energies(reply_mem_t *m, const ldd_status_t *self, Langdaug__V1__StatusReply *r)
{
    int n = self->n_energies;
    m->energies = ldd_xcalloc((size_t)n, sizeof *m->energies);
    m->energy_ptr = ldd_xcalloc((size_t)n, sizeof *m->energy_ptr);
    for (int i = 0; i < n; i++) {
        const energy_stat_t *st = &self->energies[i];
        Langdaug__V1__EnergyStats *e = &m->energies[i];
        langdaug__v1__energy_stats__init(e);
        e->source = (char *)st->source;
        e->target = (char *)st->target;
        e->has_count = e->has_mean = e->has_stddev = e->has_min = e->has_max = 1;
        e->count = st->count;
        e->mean = st->mean;
        e->stddev = st->count > 1 ? sqrt(st->m2 / (double)(st->count - 1)) : 0;
        e->min = st->min;
        e->max = st->max;
        m->energy_ptr[i] = e;
    }
    r->n_energies = (size_t)n;
    r->energies = m->energy_ptr;
}

static void fill_engine(reply_mem_t *m, const ldd_engine_t *e, Langdaug__V1__StatusReply *r)
{
    ldd_model_infos_fill(&m->models, e);
    r->n_models = (size_t)e->n_models;
    r->models = m->models.ptr;
    int nd = ld_dataset_n_domains(e->dataset);
    m->domains_count = ldd_xcalloc((size_t)nd, sizeof *m->domains_count);
    m->domain_ptr = ldd_xcalloc((size_t)nd, sizeof *m->domain_ptr);
    for (int d = 0; d < nd; d++) {
        langdaug__v1__domain_count__init(&m->domains_count[d]);
        m->domains_count[d].domain = (char *)ld_dataset_domain(e->dataset, d);
        m->domains_count[d].has_items = 1;
        m->domains_count[d].items = (uint32_t)ld_dataset_n_items(e->dataset, d);
        m->domain_ptr[d] = &m->domains_count[d];
    }
    r->n_dataset = (size_t)nd;
    r->dataset = m->domain_ptr;
    r->has_dataset_skipped = 1;
    r->dataset_skipped = (uint32_t)ld_dataset_n_skipped(e->dataset);
}

/* allowed_keys and refused_handshakes only mean something with CURVE, so
 * they are left out without it rather than shown as zeros. */
static void fill_security(const ldd_status_view_t *v, Langdaug__V1__StatusReply *r)
{
    r->has_data_curve = r->has_status_curve = 1;
    r->data_curve = v->data_curve;
    r->status_curve = v->status_curve;
    if (v->data_curve || v->status_curve) {
        r->has_allowed_keys = r->has_refused_handshakes = 1;
        r->allowed_keys = (uint32_t)v->allowed_keys;
        r->refused_handshakes = v->refused;
    }
}

static void fill_queue_memory(const ldd_status_view_t *v, Langdaug__V1__StatusReply *r)
{
    r->has_queue_bytes = r->has_max_queue_bytes = 1;
    int64_t held = ldd_sessions_queue_bytes(v->sessions);
    r->queue_bytes = held > 0 ? (uint64_t)held : 0;
    r->max_queue_bytes = (uint64_t)ldd_sessions_budget(v->sessions);
}

static void free_mem(reply_mem_t *m)
{
    for (int i = 0; i < 2 * m->n_config; i++)
        free(m->config_text[i]);
    free(m->config);
    free(m->config_ptr);
    free(m->config_text);
    free(m->clients);
    free(m->client_ptr);
    free(m->client_id);
    free(m->pairs);
    free(m->pair_ptr);
    free(m->steps);
    free(m->energies);
    free(m->energy_ptr);
    free(m->domains_count);
    free(m->domain_ptr);
    ldd_model_infos_free(&m->models);
    free(m);
}

static void *pack(const Langdaug__V1__StatusReply *r, size_t *len)
{
    *len = langdaug__v1__status_reply__get_packed_size(r);
    void *buf = ldd_xmalloc(*len);
    langdaug__v1__status_reply__pack(r, buf);
    return buf;
}

void *ldd_status_reply(const ldd_status_t *self, const ldd_status_view_t *v, size_t *len)
{
    reply_mem_t *m = ldd_xcalloc(1, sizeof *m);
    Langdaug__V1__StatusReply r = LANGDAUG__V1__STATUS_REPLY__INIT;
    r.has_version = 1;
    r.version = LANGDAUG__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    r.server_version = LD_VERSION;
    r.has_uptime_s = 1;
    r.uptime_s = v->now - v->started;
    if (v->engine)
        fill_engine(m, v->engine, &r);
    ldd_config_visit(v->cfg, add_config, m);
    r.n_config = (size_t)m->n_config;
    for (int i = 0; i < m->n_config; i++)
        m->config_ptr[i] = &m->config[i];
    r.config = m->config_ptr;
    r.has_workers = r.has_queue_depth = r.has_queue_capacity = 1;
    r.workers = (uint32_t)v->workers;
    r.queue_depth = (uint32_t)v->queue_depth;
    r.queue_capacity = (uint32_t)v->queue_capacity;
    r.has_samples_produced = r.has_samples_sent = r.has_batches_sent = 1;
    r.samples_produced = self->produced;
    r.samples_sent = self->sent;
    r.batches_sent = self->batches;
    Langdaug__V1__Rates pr = rates_of(&self->produced_rate), sr = rates_of(&self->sent_rate);
    r.produced_rate = &pr;
    r.sent_rate = &sr;
    fill_clients(m, v, &r);
    fill_energies(m, self, &r);
    r.has_resident_bytes = 1;
    r.resident_bytes = ldd_resident_bytes();
    r.last_reload = (char *)(v->last_reload ? v->last_reload : "");
    if (v->last_reload_time > 0) {
        r.has_last_reload_age_s = 1;
        r.last_reload_age_s = v->now - v->last_reload_time;
    }
    r.has_draining = r.has_chains_failed = r.has_protocol_errors = 1;
    r.draining = v->draining;
    r.chains_failed = self->chains_failed;
    r.protocol_errors = self->protocol_errors;
    fill_security(v, &r);
    fill_queue_memory(v, &r);
    void *buf = pack(&r, len);
    free_mem(m);
    return buf;
}

void *ldd_status_error_reply(int code, const char *text, size_t *len)
{
    Langdaug__V1__Error err = LANGDAUG__V1__ERROR__INIT;
    err.has_code = 1;
    err.code = code;
    err.text = (char *)text;
    Langdaug__V1__StatusReply r = LANGDAUG__V1__STATUS_REPLY__INIT;
    r.has_version = 1;
    r.version = LANGDAUG__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    r.error = &err;
    return pack(&r, len);
}
