/* ldt_request: sampler-request options of pull and bench (see ldt_request.h).
 * Lists are split in place in owned copies; every item is checked (no empty
 * item, numbers whole and in range) and a bad one named in the message. */
#include "ldt_request.h"

#include <stdlib.h>
#include <string.h>

#include "ld_colour.h" /* ld_keep_parse() */
#include "ld_text.h"
#include "ld_curvekey.h"
#include "ld_error.h"
#include "ldt.h"

void ldt_request_init(ldt_request_t *req, ld_encoding_t encoding)
{
    memset(req, 0, sizeof *req);
    ld_client_opts_init(&req->opts);
    req->opts.batch_size = 16;
    req->opts.timeout_ms = 60000;
    req->opts.encoding = encoding;
    req->opts.endpoints = req->endpoint_v;
    req->opts.targets = req->target_v;
    req->opts.pairs = req->pair_v;
    req->opts.steps = req->step_v;
}

/* Splits a comma list in place into v[]; returns the count or -1 (empty
 * item or too many, message printed). */
static int split_list(const char *cmd, const char *what, char *s, const char **v)
{
    size_t len = strlen(s);
    if (len == 0 || strstr(s, ",,") || s[0] == ',' || s[len - 1] == ',') {
        ldt_usage_error(cmd, "%s: empty item in the list", what);
        return -1;
    }
    int n = 0;
    for (char *save = NULL, *tok = s;; tok = NULL) {
        char *item = strtok_r(tok, ",", &save);
        if (!item)
            break;
        if (n == LDC_REQUEST_MAX_ITEMS) {
            ldt_usage_error(cmd, "%s: more than %d items", what, LDC_REQUEST_MAX_ITEMS);
            return -1;
        }
        v[n++] = item;
    }
    return n;
}

/* Replaces *copy with an owned copy of arg and splits it into v[]; *n_out
 * gets the count. Returns 0, or the exit status (message printed). */
static int set_list(const char *cmd, const char *what, const char *arg, char **copy, const char **v, int *n_out)
{
    free(*copy);
    *copy = strdup(arg);
    if (!*copy)
        return ldt_fail(cmd, ld_seterr(LD_ENOMEM, "%s: out of memory", what));
    int n = split_list(cmd, what, *copy, v);
    if (n < 0)
        return 2;
    *n_out = n;
    return 0;
}

/* "A:B" or "A:B:W" items (the source may be empty). */
static int parse_pairs(ldt_request_t *req, const char *cmd, const char *arg)
{
    const char *items[LDC_REQUEST_MAX_ITEMS];
    int n, rc = set_list(cmd, "--pairs", arg, &req->pairs, items, &n);
    if (rc)
        return rc;
    for (int i = 0; i < n; i++) {
        char *item = (char *)items[i], *c1 = strchr(item, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c1 || c1[1] == '\0' || c1[1] == ':')
            return ldt_usage_error(cmd, "--pairs: '%s' is not SOURCE:TARGET[:WEIGHT]", item);
        double w = 1.0;
        if (c2) {
            *c2 = '\0';
            if (ld_text_parse_double("--pairs weight", c2 + 1, 1e-12, 1e12, &w))
                return ldt_usage_error(cmd, "%s", ld_errdetail());
        }
        *c1 = '\0';
        req->pair_v[i] = (ld_pair_t){ .source = item, .target = c1 + 1, .weight = w };
    }
    req->opts.n_pairs = n;
    return 0;
}

static int parse_steps(ldt_request_t *req, const char *cmd, const char *arg)
{
    int steps[LDC_REQUEST_MAX_ITEMS], n;
    if (ld_text_parse_int_list("--steps", arg, 0, 1000000, steps, LDC_REQUEST_MAX_ITEMS, &n))
        return ldt_usage_error(cmd, "%s", ld_errdetail());
    for (int i = 0; i < n; i++) {
        if (i > 0 && steps[i] <= steps[i - 1])
            return ldt_usage_error(cmd, "--steps: must be strictly ascending (%d after %d)", steps[i], steps[i - 1]);
        req->step_v[i] = (uint32_t)steps[i];
    }
    req->opts.n_steps = n;
    return 0;
}

int ldt_request_option(ldt_request_t *req, const char *cmd, int opt, const char *arg)
{
    int v;
    double d;
    switch (opt) {
    case LDC_OPT_FROM:
        return set_list(cmd, "--from", arg, &req->from, req->endpoint_v, &req->opts.n_endpoints);
    case LDC_OPT_TARGETS:
        return set_list(cmd, "--targets", arg, &req->targets, req->target_v, &req->opts.n_targets);
    case LDC_OPT_PAIRS:
        return parse_pairs(req, cmd, arg);
    case LDC_OPT_STEPS:
        return parse_steps(req, cmd, arg);
    case LDC_OPT_BATCH:
        if (ld_text_parse_int("--batch", arg, 1, 65536, &v))
            return ldt_usage_error(cmd, "%s", ld_errdetail());
        req->opts.batch_size = (uint32_t)v;
        return 0;
    case LDC_OPT_CREDITS:
        if (ld_text_parse_int("--credits", arg, 1, 4096, &v))
            return ldt_usage_error(cmd, "%s", ld_errdetail());
        req->opts.credits = (uint32_t)v;
        return 0;
    case LDC_OPT_ENCODING:
        if (ld_encoding_parse(arg, &req->opts.encoding))
            return ldt_usage_error(cmd, "--encoding: %s", ld_errdetail());
        req->encoding_set = 1;
        return 0;
    case LDC_OPT_SEED:
        if (ld_text_parse_u64("--seed", arg, &req->opts.seed))
            return ldt_usage_error(cmd, "%s", ld_errdetail());
        req->opts.has_seed = 1;
        return 0;
    case LDC_OPT_EPOCH:
        req->opts.epoch = 1;
        return 0;
    case LDC_OPT_KEEP:
        if (ld_keep_parse("--keep", arg, &req->opts.keep))
            return ldt_usage_error(cmd, "%s", ld_errdetail());
        req->opts.has_keep = 1;
        return 0;
    case LDC_OPT_TIMEOUT:
        if (ld_text_parse_double("--timeout", arg, 0.001, 86400, &d))
            return ldt_usage_error(cmd, "%s", ld_errdetail());
        req->opts.timeout_ms = (int)(d * 1000);
        return 0;
    default:
        return ldt_curve_option(&req->curve, cmd, opt, arg);
    }
}

int ldt_curve_option(ldt_curve_t *keys, const char *cmd, int opt, const char *arg)
{
    int rc;
    if (opt == LDC_OPT_CURVE_SERVER_KEY)
        rc = ld_curvekey_read_key(arg, keys->server, NULL);
    else if (opt == LDC_OPT_CURVE_SECRET_KEY)
        rc = ld_curvekey_read_secret_key(arg, keys->secret);
    else
        return -1;
    return rc ? ldt_fail(cmd, rc) : 0;
}

int ldt_curve_finish(const ldt_curve_t *keys, const char *cmd)
{
    if (!keys->server[0] != !keys->secret[0])
        return ldt_usage_error(cmd, "CURVE needs both --curve-server-key and --curve-secret-key");
    return 0;
}

int ldt_request_finish(ldt_request_t *req, const char *cmd)
{
    if (req->opts.n_endpoints < 1)
        return ldt_usage_error(cmd, "--from ENDPOINTS is required");
    if (ldt_curve_finish(&req->curve, cmd))
        return 2;
    if (req->curve.server[0]) {
        req->opts.curve_server_key = req->curve.server;
        req->opts.curve_secret_key = req->curve.secret;
    }
    return 0;
}

void ldt_request_free(ldt_request_t *req)
{
    free(req->from);
    free(req->targets);
    free(req->pairs);
    req->from = req->targets = req->pairs = NULL;
}
