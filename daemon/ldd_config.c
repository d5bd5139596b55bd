/* ldd_config: the table of settings and everything generated from it
 * (file parsing, command-line options, printed configs, help).
 *
 * Invariant: every field of ldd_config_t is written only through
 * ldd_config_set(), which checks the value against its table row, so a
 * config that exists is always within range. Cross-key rules (a snapshot
 * step beyond max_steps, a missing model) are checked once at the end of
 * ldd_config_build(). A T_DOUBLE_AUTO key holds NAN for `auto`: what auto
 * means depends on the model files, so the engine resolves it when it loads
 * them, and the config keeps saying auto (--print-config, status reply). */
#include "ldd_config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <ini.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "ld_text.h"
#include "ld_colour.h"
#include "ld_dataset.h"
#include "ld_error.h"
#include "ld_langevin.h"
#include "ld_log.h"
#include "ldd_err.h"
#include "ldd_mem.h"
#include "ldd_metrics.h"

typedef enum { T_INT, T_DOUBLE, T_DOUBLE_AUTO, T_STRING, T_LIST, T_U64, T_LEVEL, T_STEPS, T_KEEP, T_LISTEN } key_type_t;

enum { F_RESTART = 1 };

typedef struct {
    const char *name;
    key_type_t type;
    const char *def;
    double min, max;
    size_t offset;
    int flags;
    const char *help;
} key_row_t;

#define OFF(f) offsetof(ldd_config_t, f)

static const key_row_t keys[] = {
    { "model", T_LIST, "", 0, 0, OFF(models), 0,
      "Model file (safetensors written by `langdaug train` or `langdaug init-model`). Repeat the key "
      "to load several; each serves the (source, target) pairs of its train.pairs metadata, or without "
      "it every pair toward the domains it declares; a pair served by two models goes to the first. "
      "At least one is required." },
    { "data", T_STRING, "", 0, 0, OFF(data), 0,
      "Dataset root in the folders layout: ROOT/<domain>/[SUBDIR/]{image,mask}/*.png. Sources of "
      "the Langevin chains are crops of these images. Either data or manifest is required." },
    { "manifest", T_STRING, "", 0, 0, OFF(manifest), 0,
      "Dataset as a CSV manifest with header domain,image,mask[,fov] (instead of data)." },
    { "subdir", T_STRING, "", 0, 0, OFF(subdir), 0,
      "Folder inside each domain folder holding image/ and mask/, e.g. train/ROIs (empty = none)." },
    { "domains", T_STRING, "", 0, 0, OFF(domains), 0,
      "Comma-separated dataset domains to load (empty = every domain folder)." },
    { "maskmap", T_STRING, LD_MASKMAP_DEFAULT, 0, 0, OFF(maskmap), 0,
      "Mask pixel value -> class id rules, first match wins: \"V:C\", \"A-B:C\", \"*:C\". "
      "Fundus: 255:0,128:1,0:2; prostate: 0-127:1,*:0." },
    { "scale", T_DOUBLE, "1", 0.01, 16, OFF(scale), 0,
      "Resize factor applied to every dataset image when loading." },
    { "resize", T_INT, "0", 0, 65535, OFF(resize), 0,
      "If > 0, resize every image so that its shorter side is this (overrides scale)." },
    { "min_side", T_INT, "0", 0, 65535, OFF(min_side), 0,
      "Skip images whose shorter side is below this after resizing (0 = keep all)." },
    { "whole_images", T_INT, "0", 0, 1, OFF(whole_images), 0,
      "1: chains start from whole images instead of crops: each image is cut to its FOV's bounding box, "
      "resized so its longer side is the models' size, centred and padded (overrides scale and resize)." },
    { "size", T_INT, "0", 0, 1024, OFF(size), 0,
      "Crop side in pixels; 0 = the models' size. Every model must have this size." },
    { "bind", T_STRING, "tcp://*:5555", 0, 0, OFF(bind), F_RESTART,
      "ZeroMQ endpoint of the data socket (ROUTER). Changing it needs a restart." },
    { "status", T_STRING, "tcp://127.0.0.1:5556", 0, 0, OFF(status), F_RESTART,
      "ZeroMQ endpoint of the status socket (REP). Changing it needs a restart." },
    { "workers", T_INT, "0", 0, 1024, OFF(workers), F_RESTART,
      "Sampler threads, each running chains with one core (0 = one per online core). "
      "Changing it needs a restart." },
    { "chain_batch", T_INT, "4", 1, 256, OFF(chain_batch), 0,
      "Chains a worker advances together in one engine call." },
    { "step_size", T_DOUBLE_AUTO, "auto", 1e-9, 1e6, OFF(step_size), 0,
      "Langevin step size eta in x <- x - (eta/2) dE/dx + sqrt(eta) sigma noise. auto = the step size "
      "the models were trained with, read from their train.step-size metadata (written by `langdaug "
      "train`) at start and on every reload. Models that disagree are refused: set a number then. "
      "If no model has it (files from `langdaug init-model` or exported from PyTorch), auto is "
      LDD_STR(LDD_FALLBACK_STEP_SIZE) ". The log says which value is in force and where it came from." },
    { "noise", T_DOUBLE_AUTO, "auto", 0, 100, OFF(noise), 0,
      "Langevin noise scale sigma. auto = the models' train.noise metadata, as for step_size; "
      LDD_STR(LDD_FALLBACK_NOISE) " if no model has it." },
    { "steps", T_STEPS, "10,20,40", 0, 0, OFF(steps), 0,
      "Default snapshot steps (ascending, 0 = the source crop itself) for requests that name none; "
      "a chain runs to the last one." },
    { "keep", T_KEEP, "none", 0, 0, OFF(keep), 0,
      "What a sample keeps of its source crop: none, or luminance: every snapshot but step 0 gets the "
      "source crop's CIE L* and only its colour (a*, b*) comes from the chain, so a sample differs from "
      "its source in colour alone (3-channel images; for a LAB model the L channel is put back before "
      "the conversion to RGB, for an RGB model in a LAB round trip). A request's keep field wins." },
    { "max_steps", T_INT, "1000", 1, 1000000, OFF(max_steps), 0,
      "Largest snapshot step a client may request." },
    { "max_clients", T_INT, "64", 1, 4096, OFF(max_clients), 0,
      "Sessions held at once; further clients get an error." },
    { "max_credits", T_INT, "16", 1, 4096, OFF(max_credits), 0,
      "Outstanding credits (batches) per client." },
    { "max_batch", T_INT, "256", 1, 65536, OFF(max_batch), 0,
      "Largest batch size a client may request." },
    { "max_message_size", T_INT, "65536", 256, 16777216, OFF(max_message_size), 0,
      "Largest client message in bytes; longer ones get an error." },
    { "queue_capacity", T_INT, "16", 1, 4096, OFF(queue_capacity), 0,
      "Chain jobs queued or running over all clients (each chain_batch chains). Finished samples "
      "wait for their batch, at most credits * batch size per client, so memory is bounded by "
      "max_clients * max_credits * max_batch samples plus this many jobs." },
    { "max_queue_memory", T_INT, "512", 1, 1048576, OFF(max_queue_memory), 0,
      "MiB of samples held for clients at once: finished samples waiting for their batch, running "
      "chains' snapshots and batches handed to ZeroMQ but not yet written to the network. Chains "
      "for a batch start only once its memory is reserved; a batch larger than this is refused. "
      "A client that does not read holds at most its credits' batches of it." },
    { "idle_timeout", T_DOUBLE, "60", 0.1, 86400, OFF(idle_timeout), 0,
      "Seconds without any message after which a client's credits expire and its session is "
      "forgotten. Clients send heartbeats to stay longer." },
    { "heartbeat_interval", T_DOUBLE, "5", 0.05, 3600, OFF(heartbeat_interval), 0,
      "Seconds between the daemon's heartbeats to a client that holds credits but got no batch." },
    { "handshake_timeout", T_DOUBLE, "10", 0.1, 3600, OFF(handshake_timeout), F_RESTART,
      "Seconds a new connection may take to complete the ZeroMQ handshake (ZMQ_HANDSHAKE_IVL); a "
      "peer that connects and sends nothing, or dribbles its greeting, is dropped after it. Changing "
      "it needs a restart." },
    { "max_pending_connections", T_INT, "100", 1, 65535, OFF(max_pending_connections), F_RESTART,
      "Connections the kernel queues before the daemon accepts them (the listen backlog, "
      "ZMQ_BACKLOG); beyond it new connections wait or are refused by the kernel. Changing it needs "
      "a restart." },
    { "drain_timeout", T_DOUBLE, "10", 0, 3600, OFF(drain_timeout), 0,
      "On SIGTERM/SIGINT, seconds allowed to finish running chains and flush sent batches." },
    { "seed", T_U64, "0", 0, 0, OFF(seed), 0,
      "Seed of the streams of clients that send none (0 = a random seed per client)." },
    { "log_level", T_LEVEL, "info", 0, 0, OFF(log_level), 0,
      "error, warning, info or debug." },
    { "curve_secret_key_file", T_STRING, "", 0, 0, OFF(curve_secret_key_file), F_RESTART,
      "CURVE encryption and client authentication of the data and status sockets: the server's "
      "secret key file (Z85 text, as written by `langdaug keygen --out PREFIX` to PREFIX.key; "
      "clients need PREFIX.pub). It must not be accessible to other users. Empty = plain TCP, "
      "which anyone who can reach the sockets may use. Changing it needs a restart." },
    { "curve_allowed_keys_dir", T_STRING, "", 0, 0, OFF(curve_allowed_keys_dir), 0,
      "With curve_secret_key_file: directory of the client public keys allowed in, one *.pub "
      "file per client (the file name is the client's name in the log). Connections with other "
      "keys or without CURVE are refused and logged. Re-read on SIGHUP." },
    { "metrics_listen", T_LISTEN, "", 0, 0, OFF(metrics_listen), F_RESTART,
      "ADDRESS:PORT (IPv4, or [IPv6]) where Prometheus metrics are served over HTTP at /metrics, "
      "e.g. 127.0.0.1:9464; empty = off. The metrics are the status reply's (langdaug status "
      "--prometheus prints the same). They are not authenticated: an address other than loopback "
      "is logged as a warning. Changing it needs a restart." },
};

#define N_KEYS (sizeof keys / sizeof keys[0])

static const key_row_t *find_key(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].name, name))
            return &keys[i];
    return NULL;
}

int ldd_config_log_level(const ldd_config_t *cfg)
{
    int level = LD_LOG_INFO;
    ld_log_level_parse(cfg->log_level, &level);   /* cannot fail: ldd_config_set validated it */
    return level;
}

int ldd_config_range(const char *key, double *min, double *max)
{
    const key_row_t *k = find_key(key);
    if (!k || (k->type != T_DOUBLE && k->type != T_DOUBLE_AUTO))
        return ld_seterr(LD_EINVAL, "'%s' is not a number key", key);
    *min = k->min;
    *max = k->max;
    return 0;
}

static void set_string(char **slot, const char *value)
{
    free(*slot);
    *slot = ldd_xstrdup(value);
}

static int set_list(ldd_config_t *cfg, const char *value, const char *where)
{
    if (!*value)
        return ld_seterr(LD_EINVAL, "%s: model: empty path", where);
    if (cfg->n_models >= LDD_MAX_MODELS)
        return ld_seterr(LD_ERANGE, "%s: model: more than %d models", where, LDD_MAX_MODELS);
    cfg->models[cfg->n_models++] = ldd_xstrdup(value);
    return 0;
}

static void clear_list(ldd_config_t *cfg)
{
    for (int i = 0; i < cfg->n_models; i++)
        free(cfg->models[i]);
    cfg->n_models = 0;
}

static int check_steps(const char *value, const char *what)
{
    ld_langevin_params_t p = { 0 };
    if (ld_langevin_set_snapshots(&p, value) < 0 || p.n_snapshots < 1)
        return ldd_err_wrap(LD_EINVAL, "%s: '%s' is not an ascending list of steps", what, value);
    return 0;
}

/* `auto` (NAN) or a number in the row's range. */
static int set_double_auto(const key_row_t *k, const char *value, const char *what, double *slot)
{
    if (!strcmp(value, "auto")) {
        *slot = NAN;
        return 0;
    }
    int rc = ld_text_parse_double(what, value, k->min, k->max, slot);
    if (rc == LD_EINVAL)
        return ld_seterr(rc, "%s: '%s' is neither auto nor a number", what, value);
    return rc;
}

/* Whether a value survives `key = value` in a config file unchanged, so
 * that --print-config always reads back: inih strips spaces around it,
 * ends a line at a newline and starts a comment at a ';' that begins the
 * value or follows a space. */
static int value_printable(const char *v)
{
    size_t n = strlen(v);
    if (n && (isspace((unsigned char)v[0]) || isspace((unsigned char)v[n - 1]) || v[0] == ';'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (iscntrl((unsigned char)v[i]) || (v[i] == ';' && isspace((unsigned char)v[i - 1])))
            return 0;
    return 1;
}

/* "" (off) or an address ldd_metrics accepts. */
static int listen_value(const char *value, const char *what, char **slot)
{
    struct sockaddr_storage addr;
    socklen_t len;
    if (*value && ldd_metrics_parse_listen(value, &addr, &len) < 0)
        return ldd_err_wrap(LD_EINVAL, "%s", what);
    set_string(slot, value);
    return 0;
}

int ldd_config_set(ldd_config_t *cfg, const char *name, const char *value, const char *where)
{
    const key_row_t *k = find_key(name);
    if (!k)
        return ld_seterr(LD_EINVAL, "%s: unknown key '%s'", where, name);
    char what[512];
    snprintf(what, sizeof what, "%s: %s", where, name);
    if (!value_printable(value))
        return ld_seterr(LD_EINVAL, "%s: value with a control character, surrounding spaces or a ';' that would "
                         "start a comment", what);
    /* "key = value\n" must fit inih's line buffer, or --print-config would
     * write a file that cannot be read back */
    size_t longest = INI_MAX_LINE - 1 - strlen(" = \n") - strlen(name);
    if (strlen(value) > longest)
        return ld_seterr(LD_ERANGE, "%s: value of %zu characters, longer than a config file line allows (%zu)", what,
                         strlen(value), longest);
    void *slot = (char *)cfg + k->offset;
    int rc = 0;
    switch (k->type) {
    case T_INT:
        rc = ld_text_parse_int(what, value, (int)k->min, (int)k->max, slot);
        break;
    case T_DOUBLE:
        rc = ld_text_parse_double(what, value, k->min, k->max, slot);
        break;
    case T_DOUBLE_AUTO:
        rc = set_double_auto(k, value, what, slot);
        break;
    case T_U64:
        rc = ld_text_parse_u64(what, value, slot);
        break;
    case T_STRING:
        set_string(slot, value);
        break;
    case T_LIST:
        rc = set_list(cfg, value, where);
        break;
    case T_LEVEL: {
        int level;
        if (ld_log_level_parse(value, &level) < 0)
            return ld_seterr(LD_EINVAL, "%s: %s", what, ld_errdetail());
        set_string(slot, value);
        break;
    }
    case T_STEPS:
        rc = check_steps(value, what);
        if (rc == 0)
            set_string(slot, value);
        break;
    case T_KEEP:
        rc = ld_keep_parse(what, value, slot);
        break;
    case T_LISTEN:
        rc = listen_value(value, what, slot);
        break;
    }
    return rc;
}

int ldd_config_defaults(ldd_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_KEYS; i++) {
        if (keys[i].type == T_LIST)
            continue;
        int rc = ldd_config_set(cfg, keys[i].name, keys[i].def, "default");
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Key types held as a malloc'ed string in ldd_config_t. */
static int owns_string(key_type_t t)
{
    return t == T_STRING || t == T_LEVEL || t == T_STEPS || t == T_LISTEN;
}

void ldd_config_free(ldd_config_t *cfg)
{
    clear_list(cfg);
    for (size_t i = 0; i < N_KEYS; i++) {
        if (owns_string(keys[i].type)) {
            char **slot = (char **)((char *)cfg + keys[i].offset);
            free(*slot);
            *slot = NULL;
        }
    }
}

int ldd_config_copy(const ldd_config_t *src, ldd_config_t *dst)
{
    *dst = *src;
    for (int i = 0; i < src->n_models; i++)
        dst->models[i] = ldd_xstrdup(src->models[i]);
    for (size_t i = 0; i < N_KEYS; i++) {
        if (owns_string(keys[i].type)) {
            char **slot = (char **)((char *)dst + keys[i].offset);
            *slot = ldd_xstrdup(*slot);
        }
    }
    return 0;
}

/* ---- config file ---- */

typedef struct {
    ldd_config_t *cfg;
    const char *path;
    FILE *fp;
    int line;             /* line the reader handed out last */
    int err, err_line;    /* first handler error */
    int seen[N_KEYS];     /* lines where scalar keys were set (duplicates are errors) */
    int model_reset;      /* the file's first `model` replaces the defaults' list */
    char *buf;
    size_t cap;
} file_ctx_t;

/* Feeds inih one line at a time so that the handler knows the line number. */
static char *read_line(char *str, int num, void *stream)
{
    file_ctx_t *ctx = stream;
    ssize_t len = getline(&ctx->buf, &ctx->cap, ctx->fp);
    if (len < 0)
        return NULL;
    ctx->line++;
    if (len >= num) {
        if (!ctx->err) {
            ctx->err = ld_seterr(LD_EFORMAT, "%s:%d: line longer than %d characters", ctx->path,
                                 ctx->line, num - 1);
            ctx->err_line = ctx->line;
        }
        return NULL;
    }
    memcpy(str, ctx->buf, (size_t)len + 1);
    return str;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    file_ctx_t *ctx = user;
    if (ctx->err)
        return 0;
    char where[600];
    snprintf(where, sizeof where, "%s:%d", ctx->path, ctx->line);
    int rc = 0;
    const key_row_t *k = find_key(name);
    if (section && *section) {
        rc = ld_seterr(LD_EINVAL, "%s: key '%s' inside section [%s]; this file has no sections", where,
                       name, section);
    } else if (k && k->type != T_LIST && ctx->seen[k - keys]) {
        rc = ld_seterr(LD_EINVAL, "%s: key '%s' already set on line %d", where, name, ctx->seen[k - keys]);
    } else {
        if (k && k->type == T_LIST && !ctx->model_reset) {
            clear_list(ctx->cfg);
            ctx->model_reset = 1;
        }
        rc = ldd_config_set(ctx->cfg, name, value, where);
        if (rc == 0 && k)
            ctx->seen[k - keys] = ctx->line;
    }
    if (rc < 0) {
        ctx->err = rc;
        ctx->err_line = ctx->line;
        return 0;
    }
    return 1;
}

int ldd_config_load_file(ldd_config_t *cfg, const char *path)
{
    file_ctx_t ctx = { .cfg = cfg, .path = path };
    ctx.fp = fopen(path, "r");
    if (!ctx.fp)
        return ld_seterr(LD_EIO, "%s: cannot open: %s", path, strerror(errno));
    char detail[1024] = "";
    int line = ini_parse_stream(read_line, &ctx, on_key, &ctx);
    if (ctx.err)
        snprintf(detail, sizeof detail, "%s", ld_errdetail());
    fclose(ctx.fp);
    free(ctx.buf);
    if (line > 0 && (!ctx.err || line < ctx.err_line))
        return ld_seterr(LD_EFORMAT, "%s:%d: syntax error (expected 'key = value', a comment or a blank line)",
                         path, line);
    if (line < 0)
        return ld_seterr(LD_EIO, "%s: cannot read", path);
    if (ctx.err)
        return ld_seterr(ctx.err, "%s", detail);
    return 0;
}

/* ---- command line ---- */

enum { OPT_CONFIG = 1000, OPT_PRINT_CONFIG, OPT_PRINT_EXAMPLE, OPT_HELP, OPT_VERSION, OPT_KEY0 };

static void option_name(const char *key, char *out, size_t cap)
{
    snprintf(out, cap, "%s", key);
    for (char *p = out; *p; p++)
        if (*p == '_')
            *p = '-';
}

static void add_override(ldd_options_t *o, const char *key, const char *value)
{
    o->override_keys = ldd_xrealloc(o->override_keys, (size_t)(o->n_overrides + 1) * sizeof(char *));
    o->override_values = ldd_xrealloc(o->override_values, (size_t)(o->n_overrides + 1) * sizeof(char *));
    o->override_keys[o->n_overrides] = ldd_xstrdup(key);
    o->override_values[o->n_overrides] = ldd_xstrdup(value);
    o->n_overrides++;
}

int ldd_options_parse(int argc, char **argv, ldd_options_t *out)
{
    memset(out, 0, sizeof *out);
    static char names[N_KEYS][64];
    struct option longopts[N_KEYS + 6];
    size_t n = 0;
    longopts[n++] = (struct option){ "config", required_argument, NULL, OPT_CONFIG };
    longopts[n++] = (struct option){ "print-config", no_argument, NULL, OPT_PRINT_CONFIG };
    longopts[n++] = (struct option){ "print-example-config", no_argument, NULL, OPT_PRINT_EXAMPLE };
    longopts[n++] = (struct option){ "help", no_argument, NULL, OPT_HELP };
    longopts[n++] = (struct option){ "version", no_argument, NULL, OPT_VERSION };
    for (size_t i = 0; i < N_KEYS; i++) {
        option_name(keys[i].name, names[i], sizeof names[i]);
        longopts[n++] = (struct option){ names[i], required_argument, NULL, OPT_KEY0 + (int)i };
    }
    longopts[n] = (struct option){ 0 };

    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":c:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
        case OPT_CONFIG:
            free(out->config_path);
            out->config_path = ldd_xstrdup(optarg);
            break;
        case OPT_PRINT_CONFIG: out->action = LDD_PRINT_CONFIG; break;
        case OPT_PRINT_EXAMPLE: out->action = LDD_PRINT_EXAMPLE; break;
        case 'h':
        case OPT_HELP: out->action = LDD_HELP; break;
        case 'V':
        case OPT_VERSION: out->action = LDD_VERSION_ACTION; break;
        case ':':
            ldd_options_free(out);
            return ld_seterr(LD_EINVAL, "option '%s' needs a value", argv[optind - 1]);
        case '?':
            ldd_options_free(out);
            return ld_seterr(LD_EINVAL, "unknown option '%s'", argv[optind - 1]);
        default:
            add_override(out, keys[c - OPT_KEY0].name, optarg);
        }
    }
    if (optind < argc) {
        ldd_options_free(out);
        return ld_seterr(LD_EINVAL, "unexpected argument '%s'", argv[optind]);
    }
    return 0;
}

void ldd_options_free(ldd_options_t *o)
{
    for (int i = 0; i < o->n_overrides; i++) {
        free(o->override_keys[i]);
        free(o->override_values[i]);
    }
    free(o->override_keys);
    free(o->override_values);
    free(o->config_path);
    memset(o, 0, sizeof *o);
}

static int check_cross_keys(const ldd_config_t *cfg)
{
    if (cfg->n_models == 0)
        return ld_seterr(LD_EINVAL, "no model: set 'model' in the config file or give --model");
    if (!*cfg->data == !*cfg->manifest)
        return ld_seterr(LD_EINVAL, "set exactly one of 'data' (dataset root) and 'manifest'");
    ld_langevin_params_t p = { 0 };
    ld_langevin_set_snapshots(&p, cfg->steps);
    if (p.snapshots[p.n_snapshots - 1] > cfg->max_steps)
        return ld_seterr(LD_ERANGE, "steps: step %d is beyond max_steps = %d",
                         p.snapshots[p.n_snapshots - 1], cfg->max_steps);
    if (!*cfg->curve_secret_key_file != !*cfg->curve_allowed_keys_dir)
        return ld_seterr(LD_EINVAL, "set both curve_secret_key_file and curve_allowed_keys_dir (CURVE with "
                         "client authentication) or neither (plain TCP)");
    return 0;
}

static int apply_overrides(const ldd_options_t *opts, ldd_config_t *cfg)
{
    int models_reset = 0;
    for (int i = 0; i < opts->n_overrides; i++) {
        const char *key = opts->override_keys[i];
        char where[80];
        snprintf(where, sizeof where, "command line");
        if (!strcmp(key, "model") && !models_reset) {
            clear_list(cfg);
            models_reset = 1;
        }
        int rc = ldd_config_set(cfg, key, opts->override_values[i], where);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int ldd_config_build(const ldd_options_t *opts, ldd_config_t *out)
{
    int rc = ldd_config_defaults(out);
    const char *path = opts->config_path ? opts->config_path : LDD_DEFAULT_CONFIG;
    FILE *probe = NULL;
    if (rc == 0 && !opts->config_path && !(probe = fopen(path, "r")))
        path = NULL; /* the default file is optional; an explicit one is not */
    if (probe)
        fclose(probe);
    if (rc == 0 && path)
        rc = ldd_config_load_file(out, path);
    if (rc == 0)
        rc = apply_overrides(opts, out);
    if (rc == 0)
        rc = check_cross_keys(out);
    if (rc < 0)
        ldd_config_free(out);
    return rc;
}

/* ---- printing ---- */

/* Shortest decimal text that reads back as the same double; whole numbers
 * in plain notation ("60", not "6e+01"), as a person would write them. */
static void format_double(double v, char *out, size_t cap)
{
    if (v == (double)(long long)v && fabs(v) < 1e15) {
        snprintf(out, cap, "%lld", (long long)v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

static void format_value(const ldd_config_t *cfg, const key_row_t *k, char *out, size_t cap)
{
    const void *slot = (const char *)cfg + k->offset;
    switch (k->type) {
    case T_INT: snprintf(out, cap, "%d", *(const int *)slot); break;
    case T_DOUBLE: format_double(*(const double *)slot, out, cap); break;
    case T_DOUBLE_AUTO:
        if (isnan(*(const double *)slot))
            snprintf(out, cap, "auto");
        else
            format_double(*(const double *)slot, out, cap);
        break;
    case T_U64: snprintf(out, cap, "%llu", (unsigned long long)*(const uint64_t *)slot); break;
    case T_LIST: out[0] = '\0'; break;
    case T_KEEP: snprintf(out, cap, "%s", ld_keep_name(*(const ld_keep_t *)slot)); break;
    default: snprintf(out, cap, "%s", *(char *const *)slot ? *(char *const *)slot : ""); break;
    }
}

void ldd_config_visit(const ldd_config_t *cfg, ldd_config_visit_fn fn, void *user)
{
    char value[4096];
    for (size_t i = 0; i < N_KEYS; i++) {
        if (keys[i].type == T_LIST) {
            for (int m = 0; m < cfg->n_models; m++)
                fn(keys[i].name, cfg->models[m], user);
            continue;
        }
        format_value(cfg, &keys[i], value, sizeof value);
        fn(keys[i].name, value, user);
    }
}

/* The running value goes back through ldd_config_set as printed text,
 * which reads back to the same value (the print/read-back invariant). */
int ldd_config_keep_restart_keys(ldd_config_t *fresh, const ldd_config_t *running)
{
    char was[4096], now[4096];
    int kept = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        if (!(keys[i].flags & F_RESTART))
            continue;
        format_value(running, &keys[i], was, sizeof was);
        format_value(fresh, &keys[i], now, sizeof now);
        if (!strcmp(was, now))
            continue;
        ld_warn("reload: %s = '%s' needs a restart; keeping '%s'", keys[i].name, now, was);
        kept += ldd_config_set(fresh, keys[i].name, was, "reload") == 0;
    }
    return kept;
}

static void print_pair(const char *key, const char *value, void *user)
{
    fprintf(user, "%s =%s%s\n", key, *value ? " " : "", value);
}

void ldd_config_print(const ldd_config_t *cfg, FILE *out)
{
    fprintf(out, "# langdaugd configuration in force (langdaugd %s)\n", LD_VERSION);
    ldd_config_visit(cfg, print_pair, out);
}

/* Writes text as "# "-prefixed lines of at most ~76 columns. */
static void print_wrapped(FILE *out, const char *text)
{
    const char *p = text;
    while (*p) {
        size_t len = strlen(p), cut = len;
        if (len > 74) {
            cut = 74;
            while (cut > 0 && p[cut] != ' ')
                cut--;
            if (cut == 0)
                cut = len;
        }
        fprintf(out, "# %.*s\n", (int)cut, p);
        p += cut;
        while (*p == ' ')
            p++;
    }
}

static void print_range(FILE *out, const key_row_t *k)
{
    char lo[64], hi[64];
    if (k->type == T_INT) {
        fprintf(out, "# Integer, %d..%d.\n", (int)k->min, (int)k->max);
    } else if (k->type == T_DOUBLE || k->type == T_DOUBLE_AUTO) {
        format_double(k->min, lo, sizeof lo);
        format_double(k->max, hi, sizeof hi);
        fprintf(out, "# Number, %s..%s%s.\n", lo, hi, k->type == T_DOUBLE_AUTO ? ", or auto" : "");
    } else if (k->type == T_U64) {
        fprintf(out, "# Integer, 0..18446744073709551615.\n");
    }
}

void ldd_config_print_example(FILE *out)
{
    fprintf(out,
            "# langdaugd example configuration (generated by `langdaugd --print-example-config`).\n"
            "# Format: one `key = value` per line; `#` or `;` at the start of a line begins a\n"
            "# comment. Unknown keys and out-of-range values are errors naming file and line.\n"
            "# Every key below is commented out and shows its default; every key is also a\n"
            "# command-line option (--max-clients for max_clients), which overrides this file.\n"
            "# Send SIGHUP to reload this file and the models.\n");
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_row_t *k = &keys[i];
        fprintf(out, "\n");
        print_wrapped(out, k->help);
        print_range(out, k);
        if (k->type == T_LIST)
            fprintf(out, "#%s = /var/lib/langdaug/model.safetensors\n", k->name);
        else
            fprintf(out, "#%s =%s%s\n", k->name, *k->def ? " " : "", k->def);
    }
}

void ldd_config_print_usage(FILE *out)
{
    fprintf(out,
            "Usage: langdaugd [--config FILE] [--KEY VALUE]... [--print-config] [--print-example-config]\n"
            "The langdaug sampler daemon: streams Langevin intermediate-domain samples over ZeroMQ.\n\n"
            "  -c, --config FILE         config file (default " LDD_DEFAULT_CONFIG ", optional)\n"
            "      --print-config        print the configuration in force and exit\n"
            "      --print-example-config  print a commented example config and exit\n"
            "  -h, --help                this help\n"
            "  -V, --version             print the version\n\n"
            "Every config key is an option too (underscores become dashes):\n");
    char name[64];
    for (size_t i = 0; i < N_KEYS; i++) {
        option_name(keys[i].name, name, sizeof name);
        fprintf(out, "  --%-20s (default: %s)\n", name, *keys[i].def ? keys[i].def : "none");
    }
}
