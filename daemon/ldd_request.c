/* ldd_request: decoding and validation of client messages (see ldd_request.h).
 *
 * Every refusal goes through refuse(): the wire ErrorCode into *code, the
 * text for the client into text, the same text as the thread's error
 * detail, and the LD_E* code of that ErrorCode as the return value. */
#include "ldd_request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ld_colour.h"
#include "ld_error.h"

/* The LD_E* code that stands for a refusal with the wire ErrorCode `wire`. */
static int ld_code(int wire)
{
    switch (wire) {
    case LANGDAUG__V1__ERROR_CODE__ERROR_TOO_LARGE:
    case LANGDAUG__V1__ERROR_CODE__ERROR_LIMIT: return LD_ERANGE;
    case LANGDAUG__V1__ERROR_CODE__ERROR_MALFORMED: return LD_EFORMAT;
    case LANGDAUG__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION: return LD_ENOTSUP;
    case LANGDAUG__V1__ERROR_CODE__ERROR_UNKNOWN_DOMAIN: return LD_ENOENT;
    default: return LD_EINVAL;
    }
}

static int refuse(int wire, int *code, char *text, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* *code = wire; the message into text[cap] and the error detail; returns
 * the LD_E* code of wire. */
static int refuse(int wire, int *code, char *text, size_t cap, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    *code = wire;
    snprintf(text, cap, "%s", msg);
    return ld_seterr(ld_code(wire), "%s", msg);
}

int64_t ldd_sample_bytes(const ldd_engine_t *e)
{
    int64_t ss = (int64_t)e->size * e->size;
    return ss * e->channels * (int64_t)sizeof(float) + ss + (int64_t)sizeof(float);
}

Langdaug__V1__ClientMessage *ldd_request_decode(const uint8_t *data, size_t len, int parts, size_t total,
                                                int max_message_size, int *code, char *text, size_t cap)
{
    const int malformed = LANGDAUG__V1__ERROR_CODE__ERROR_MALFORMED;
    *code = malformed;
    if (total > (size_t)max_message_size) {
        refuse(LANGDAUG__V1__ERROR_CODE__ERROR_TOO_LARGE, code, text, cap,
               "message of %zu bytes is beyond max_message_size = %d", total, max_message_size);
        return NULL;
    }
    if (parts != 1) {
        refuse(malformed, code, text, cap, "expected one frame holding a ClientMessage, got %d frames", parts);
        return NULL;
    }
    Langdaug__V1__ClientMessage *m = len ? langdaug__v1__client_message__unpack(NULL, len, data) : NULL;
    if (!m) {
        refuse(malformed, code, text, cap, "%zu bytes that do not decode as a ClientMessage", len);
        return NULL;
    }
    if (!m->has_version || m->version != LANGDAUG__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT) {
        refuse(LANGDAUG__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION, code, text, cap,
               "protocol version %u is not supported; this daemon speaks 1", m->has_version ? m->version : 0);
    } else if (m->body_case == LANGDAUG__V1__CLIENT_MESSAGE__BODY__NOT_SET) {
        refuse(malformed, code, text, cap, "message has no body");
    } else {
        return m;
    }
    langdaug__v1__client_message__free_unpacked(m, NULL);
    return NULL;
}

int ldd_request_check_hello(const Langdaug__V1__Hello *h, int *code, char *text, size_t cap)
{
    uint32_t lo = h->has_min_version ? h->min_version : 1, hi = h->has_max_version ? h->max_version : lo;
    if (lo > 1 || hi < 1)
        return refuse(LANGDAUG__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION, code, text, cap,
                      "client speaks protocol versions %u..%u; this daemon speaks 1", lo, hi);
    return 0;
}

static int name_ok(const char *s)
{
    return s && strlen(s) < LD_NAME_MAX;
}

/* A request without targets or pairs: every (source, target) pair the
 * models serve, uniformly (one any-source pair per target, weighted by the
 * number of sources it is served from), as the engine routes them now. */
static int every_served_pair(const ldd_engine_t *e, ldd_request_t *req, int *code, char *text, size_t cap)
{
    for (int t = 0; t < e->n_targets; t++) {
        if (e->targets[t].n_sources == 0)
            continue;
        if (req->n_pairs == LDD_MAX_PAIRS)
            return refuse(*code, code, text, cap, "the models serve more than %d targets: give targets or pairs",
                          LDD_MAX_PAIRS);
        ldd_pair_t *pair = &req->pairs[req->n_pairs++];
        snprintf(pair->target, sizeof pair->target, "%s", e->targets[t].name);
        pair->weight = e->targets[t].n_sources;
        req->total_weight += pair->weight;
    }
    return req->n_pairs ? 0 : refuse(*code, code, text, cap, "no loaded model serves any pair");
}

/* The request's targets and pairs into req->pairs (not yet resolved). */
static int parse_pairs(const ldd_engine_t *e, const Langdaug__V1__PullRequest *p, ldd_request_t *req, int *code,
                       char *text, size_t cap)
{
    size_t n = p->n_targets + p->n_pairs;
    if (n == 0)
        return every_served_pair(e, req, code, text, cap);
    if (n > LDD_MAX_PAIRS)
        return refuse(*code, code, text, cap, "%zu targets and pairs, more than %d", n, LDD_MAX_PAIRS);
    for (size_t i = 0; i < n; i++) {
        ldd_pair_t *pair = &req->pairs[req->n_pairs++];
        const char *src = "", *tgt;
        double w = 1;
        if (i < p->n_targets) {
            tgt = p->targets[i];
        } else {
            const Langdaug__V1__Pair *pp = p->pairs[i - p->n_targets];
            src = pp->source ? pp->source : "";
            tgt = pp->target;
            if (pp->has_weight)
                w = pp->weight;
        }
        if (!tgt || !*tgt || !name_ok(tgt) || !name_ok(src))
            return refuse(*code, code, text, cap, "pair %zu: missing or overlong domain name", i);
        if (!(w > 0) || !isfinite(w))
            return refuse(*code, code, text, cap, "pair %zu: weight %g must be > 0", i, w);
        snprintf(pair->source, sizeof pair->source, "%s", src);
        snprintf(pair->target, sizeof pair->target, "%s", tgt);
        pair->weight = w;
        req->total_weight += w;
    }
    return 0;
}

int ldd_request_parse(const ldd_config_t *cfg, const ldd_engine_t *e, const Langdaug__V1__PullRequest *p,
                      ldd_request_t *req, int *code, char *text, size_t cap)
{
    memset(req, 0, sizeof *req);
    const int invalid = LANGDAUG__V1__ERROR_CODE__ERROR_INVALID_REQUEST, limit = LANGDAUG__V1__ERROR_CODE__ERROR_LIMIT;
    *code = invalid;
    if (!p->has_batch_size || p->batch_size == 0)
        return refuse(invalid, code, text, cap, "batch_size: missing or 0");
    if (p->batch_size > (uint32_t)cfg->max_batch)
        return refuse(limit, code, text, cap, "batch_size: %u is beyond max_batch = %d", p->batch_size,
                      cfg->max_batch);
    req->batch_size = p->batch_size;
    int64_t batch_bytes = (int64_t)p->batch_size * ldd_sample_bytes(e);
    if (batch_bytes > (int64_t)cfg->max_queue_memory << 20)
        return refuse(limit, code, text, cap,
                      "batch_size: a batch of %u samples needs %.1f MiB, beyond max_queue_memory = %d MiB",
                      p->batch_size, (double)batch_bytes / (1 << 20), cfg->max_queue_memory);
    int rc = parse_pairs(e, p, req, code, text, cap);
    if (rc)
        return rc;
    if ((rc = ldd_request_resolve(e, req, code, text, cap)))
        return rc;
    if (p->n_steps > LD_LANGEVIN_MAX_SNAPSHOTS)
        return refuse(invalid, code, text, cap, "steps: %zu snapshots, more than %d", p->n_steps,
                      LD_LANGEVIN_MAX_SNAPSHOTS);
    for (size_t i = 0; i < p->n_steps; i++) {
        if (i > 0 && p->steps[i] <= p->steps[i - 1])
            return refuse(invalid, code, text, cap, "steps: not strictly ascending at %u", p->steps[i]);
        if (p->steps[i] > (uint32_t)cfg->max_steps)
            return refuse(limit, code, text, cap, "steps: %u is beyond max_steps = %d", p->steps[i], cfg->max_steps);
        req->steps[req->n_steps++] = (int)p->steps[i];
    }
    req->encoding = p->has_encoding ? (int)p->encoding : LANGDAUG__V1__ENCODING__ENCODING_FLOAT32;
    if (req->encoding < 0 || req->encoding > LANGDAUG__V1__ENCODING__ENCODING_UINT8)
        return refuse(invalid, code, text, cap, "encoding: unknown value %d", req->encoding);
    req->has_seed = p->has_seed;
    req->seed = p->seed;
    req->epoch = p->has_epoch && p->epoch;
    req->keep = p->has_keep ? (int)p->keep : -1;
    if (p->has_keep && !ld_keep_name(req->keep))
        return refuse(invalid, code, text, cap, "keep: unknown value %d (KEEP_NONE = 0, KEEP_LUMINANCE = 1)",
                      req->keep);
    if (req->keep == LD_KEEP_LUMINANCE && e->channels != 3)
        return refuse(invalid, code, text, cap, "keep: luminance needs 3-channel images; the models have %d channel(s)",
                      e->channels);
    return 0;
}

/* The dataset domains target t is served from, "A, B" (or "none"). */
static void served_from(const ldd_engine_t *e, const ldd_target_t *t, char *buf, size_t cap)
{
    size_t used = 0;
    snprintf(buf, cap, "none");
    for (int s = 0; s < ld_dataset_n_domains(e->dataset) && used < cap; s++)
        if (t->from[s].model >= 0)
            used += (size_t)snprintf(buf + used, cap - used, "%s%s", used ? ", " : "",
                                     ld_dataset_domain(e->dataset, s));
}

int ldd_request_resolve(const ldd_engine_t *e, ldd_request_t *req, int *code, char *text, size_t cap)
{
    const int unknown = LANGDAUG__V1__ERROR_CODE__ERROR_UNKNOWN_DOMAIN;
    for (int i = 0; i < req->n_pairs; i++) {
        ldd_pair_t *p = &req->pairs[i];
        const char *src = *p->source ? p->source : "*";
        p->source_domain = -1;
        if (*p->source && !ldd_engine_find_source(e, p->source, &p->source_domain))
            return refuse(unknown, code, text, cap, "pair '%s:%s': source domain '%s' is not in the dataset", src,
                          p->target, p->source);
        if (!ldd_engine_find_target(e, p->target, &p->route))
            return refuse(unknown, code, text, cap, "pair '%s:%s': no loaded model has the target domain '%s'", src,
                          p->target, p->target);
        const ldd_target_t *t = &e->targets[p->route];
        if (p->source_domain >= 0 ? t->from[p->source_domain].model >= 0 : t->n_sources > 0)
            continue;
        char from[LD_EBM_MAX_DOMAINS * (LD_NAME_MAX + 2)];
        served_from(e, t, from, sizeof from);
        return refuse(unknown, code, text, cap, "pair '%s:%s' is served by no loaded model (%s is served from: %s)",
                      src, p->target, p->target, from);
    }
    return 0;
}

int ldd_request_only_credits(const Langdaug__V1__PullRequest *p)
{
    return !p->has_batch_size && !p->n_targets && !p->n_pairs && !p->n_steps && !p->has_encoding && !p->has_seed &&
           !p->has_epoch && !p->has_keep;
}
