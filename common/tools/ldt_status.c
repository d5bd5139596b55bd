/* ldt_status: `langdaug status ENDPOINT`, the daemon's StatusReply as a
 * readable report, as JSON or as Prometheus metrics (ld_prom, the same text
 * the daemon serves on metrics_listen).
 *
 * Each request uses a fresh REQ socket, so a daemon that does not answer
 * within --timeout costs nothing more than that socket (a REQ socket that
 * never got its reply cannot send again). --json converts the reply
 * generically through the protobuf-c descriptors: every field the daemon
 * sets appears under its .proto name, enums as their names, so fields
 * added to the protocol later show up without a change here. */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "langdaug.pb-c.h"
#include "ld_text.h"
#include "ld_client.h"
#include "ld_colour.h"
#include "ld_curvekey.h"
#include "ld_error.h"
#include "ld_prom.h"
#include "ldt.h"
#include "ldt_request.h"

#define CMD "status"

enum { OPT_WATCH = 0x300, OPT_COUNT, OPT_TIMEOUT, OPT_JSON, OPT_PROMETHEUS };

typedef struct {
    const char *endpoint;
    int json, prometheus, watch, count;
    double interval, timeout;
    ldt_curve_t curve;
} status_args_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: langdaug status ENDPOINT [--json | --prometheus] [--watch [SECONDS]] [--count N] [--timeout SECONDS]\n"
            "Shows the state of a langdaugd daemon, asked on its status socket\n"
            "(e.g. tcp://127.0.0.1:5556).\n"
            "\n"
            "  --json              the whole status reply as JSON (one object per line with --watch)\n"
            "  --prometheus        the status reply as Prometheus metrics (text exposition format 0.0.4)\n"
            "  --watch [SECONDS]   refresh every SECONDS (default 2) until interrupted\n"
            "  --count N           with --watch: stop after N refreshes\n"
            "  --timeout SECONDS   wait this long for each reply (default 5)\n" LDC_CURVE_HELP
            "  -h, --help          this help\n");
}

/* ------------------------------------------------------------ request */

static int set_curve(void *sock, const ldt_curve_t *k)
{
    char public_key[41];
    int rc = ld_curvekey_public_key(k->secret, public_key);
    if (rc)
        return rc;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, k->server, 41) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, public_key, 41) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, k->secret, 41) != 0)
        return ld_seterr(LD_EIO, "setting the CURVE keys: %s", zmq_strerror(zmq_errno()));
    return 0;
}

static int fetch(void *ctx, const status_args_t *a, Langdaug__V1__StatusReply **out)
{
    *out = NULL;
    void *sock = zmq_socket(ctx, ZMQ_REQ);
    if (!sock)
        return ld_seterr(LD_EIO, "cannot create a socket: %s", zmq_strerror(zmq_errno()));
    int linger = 0, rc = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (a->curve.server[0] && (rc = set_curve(sock, &a->curve))) {
        zmq_close(sock);
        return rc;
    }
    Langdaug__V1__StatusRequest req = LANGDAUG__V1__STATUS_REQUEST__INIT;
    req.has_version = 1;
    req.version = LD_CLIENT_PROTOCOL_VERSION;
    uint8_t buf[16];
    size_t len = langdaug__v1__status_request__pack(&req, buf);
    if (zmq_connect(sock, a->endpoint) != 0) {
        rc = ld_seterr(LD_EINVAL, "endpoint '%s': %s", a->endpoint, zmq_strerror(zmq_errno()));
    } else if (zmq_send(sock, buf, len, 0) < 0) {
        rc = ld_seterr(LD_EIO, "%s: send: %s", a->endpoint, zmq_strerror(zmq_errno()));
    } else {
        zmq_pollitem_t item = { .socket = sock, .events = ZMQ_POLLIN };
        int n = zmq_poll(&item, 1, (long)(a->timeout * 1000));
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (n <= 0)
            rc = ld_seterr(LD_ETIMEDOUT, "%s: no status reply within %g s", a->endpoint, a->timeout);
        else if (zmq_msg_recv(&msg, sock, 0) < 0)
            rc = ld_seterr(LD_EIO, "%s: receive: %s", a->endpoint, zmq_strerror(zmq_errno()));
        else if (!(*out = langdaug__v1__status_reply__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg))))
            rc = ld_seterr(LD_EPROTO, "%s: the status reply (%zu bytes) does not decode", a->endpoint,
                           zmq_msg_size(&msg));
        zmq_msg_close(&msg);
    }
    zmq_close(sock);
    if (!rc && (*out)->error) {
        rc = ld_seterr(LD_EPROTO, "%s: daemon answered: %s", a->endpoint,
                       (*out)->error->text ? (*out)->error->text : "error");
        langdaug__v1__status_reply__free_unpacked(*out, NULL);
        *out = NULL;
    }
    return rc;
}

/* ------------------------------------------------------------ JSON */

static json_t *message_json(const ProtobufCMessage *m);

static size_t field_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING: case PROTOBUF_C_TYPE_MESSAGE: return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    default: return 4;
    }
}

static json_t *text_json(const char *s)
{
    json_t *j = json_string(s ? s : "");
    return j ? j : json_string("(invalid UTF-8)");
}

static json_t *value_json(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
        return json_integer(*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t v = *(const uint64_t *)p;
        if (v <= (uint64_t)INT64_MAX)
            return json_integer((json_int_t)v);
        char s[24];
        snprintf(s, sizeof s, "%" PRIu64, v); /* beyond JSON integers: exact as text */
        return json_string(s);
    }
    case PROTOBUF_C_TYPE_FLOAT: return json_real(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE: return json_real(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL: return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)p);
        return v ? json_string(v->name) : json_integer(*(const int *)p);
    }
    case PROTOBUF_C_TYPE_STRING: return text_json(*(char *const *)p);
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        char *hex = malloc(2 * b->len + 1);
        for (size_t i = 0; hex && i < b->len; i++)
            sprintf(hex + 2 * i, "%02x", b->data[i]);
        json_t *j = hex ? (hex[2 * b->len] = '\0', json_string(hex)) : NULL;
        free(hex);
        return j;
    }
    case PROTOBUF_C_TYPE_MESSAGE: return message_json(*(ProtobufCMessage *const *)p);
    }
    return json_null();
}

/* Whether an optional field is set (has_ flag, oneof case, or non-NULL). */
static int field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    const char *base = (const char *)m;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return *(const uint32_t *)(base + f->quantifier_offset) == f->id;
    if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)
        return *(void *const *)(base + f->offset) != NULL;
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset)
        return *(const protobuf_c_boolean *)(base + f->quantifier_offset);
    return 1;
}

static json_t *message_json(const ProtobufCMessage *m)
{
    json_t *obj = json_object();
    if (!m || !obj)
        return obj;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            const char *items = *(char *const *)(base + f->offset);
            json_t *arr = json_array();
            for (size_t k = 0; k < n; k++)
                json_array_append_new(arr, value_json(f, items + k * field_size(f->type)));
            json_object_set_new(obj, f->name, arr);
        } else if (field_present(m, f)) {
            json_object_set_new(obj, f->name, value_json(f, base + f->offset));
        }
    }
    return obj;
}

static int print_prometheus(const Langdaug__V1__StatusReply *r)
{
    char *text;
    size_t len;
    int rc = ld_prom_format(r, &text, &len);
    if (rc)
        return rc;
    fwrite(text, 1, len, stdout);
    free(text);
    return 0;
}

static int print_json(const Langdaug__V1__StatusReply *r, int compact)
{
    json_t *j = message_json(&r->base);
    char *s = j ? json_dumps(j, compact ? JSON_COMPACT : JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (!s)
        return ld_seterr(LD_ENOMEM, "out of memory for the JSON output");
    puts(s);
    free(s);
    return 0;
}

/* ------------------------------------------------------------ table */

static const char *str(const char *s)
{
    return s && *s ? s : "-";
}

static void duration(double s, char *out, size_t cap)
{
    uint64_t t = s > 0 ? (uint64_t)s : 0;
    if (t >= 86400)
        snprintf(out, cap, "%" PRIu64 "d%02" PRIu64 "h%02" PRIu64 "m", t / 86400, t / 3600 % 24, t / 60 % 60);
    else if (t >= 3600)
        snprintf(out, cap, "%" PRIu64 "h%02" PRIu64 "m%02" PRIu64 "s", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(out, cap, "%.1fs", s);
}

static void rates(const char *what, uint64_t count, const Langdaug__V1__Rates *r)
{
    printf("  %-9s %12" PRIu64 " samples", what, count);
    if (r)
        printf("   %.1f/s (1m)  %.1f/s (5m)  %.1f/s (15m)", r->m1, r->m5, r->m15);
    putchar('\n');
}

static void print_pairs(Langdaug__V1__Pair *const *pairs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%s%s>%s", i ? "," : "", pairs[i]->source && *pairs[i]->source ? pairs[i]->source : "*",
               str(pairs[i]->target));
    if (!n)
        putchar('-');
}

/* The name of a Keep / ColourSpace value ("" when not sent, the number
 * when this client does not know it). */
static const char *enum_name(int has, int value, const char *(*name)(int), char buf[16])
{
    if (!has)
        return "";
    if (name(value))
        return name(value);
    snprintf(buf, 16, "%d", value);
    return buf;
}

static void print_clients(const Langdaug__V1__StatusReply *r)
{
    printf("clients (%zu):\n", r->n_clients);
    if (!r->n_clients)
        return;
    printf("  %-12s %-16s %7s %6s %10s %12s %8s %6s %-9s  %s\n", "ID", "NAME", "CREDITS", "BATCH", "BATCHES",
           "SAMPLES", "IDLE", "ERRORS", "KEEP", "PAIRS");
    for (size_t i = 0; i < r->n_clients; i++) {
        const Langdaug__V1__ClientStatus *c = r->clients[i];
        char buf[16];
        printf("  %-12.12s %-16.16s %7u %6u %10" PRIu64 " %12" PRIu64 " %7.1fs %6" PRIu64 " %-9s  ", str(c->id),
               str(c->name), c->credits, c->batch_size, c->batches_sent, c->samples_sent, c->idle_s, c->errors,
               enum_name(c->has_keep, c->keep, ld_keep_name, buf));
        print_pairs(c->pairs, c->n_pairs);
        putchar('\n');
    }
}

static void print_models(const Langdaug__V1__StatusReply *r)
{
    printf("models (%zu):\n", r->n_models);
    for (size_t i = 0; i < r->n_models; i++) {
        const Langdaug__V1__ModelInfo *m = r->models[i];
        char buf[16];
        printf("  %.12s  size %u, %u channels, %u mask classes, colour space %s, domains ", str(m->hash), m->size,
               m->image_channels, m->mask_classes,
               m->has_colour_space ? enum_name(1, m->colour_space, ld_colour_space_name, buf) : "rgb");
        for (size_t k = 0; k < m->n_domains; k++)
            printf("%s%s", k ? "," : "", m->domains[k]);
        printf("  %s\n", str(m->path));
        if (m->autoencoder_hash)
            printf("    latent: %u channels at %ux%u, autoencoder %.12s\n", m->latent_channels, m->latent_size,
                   m->latent_size, m->autoencoder_hash);
        printf("    pairs ");
        print_pairs(m->pairs, m->n_pairs);
        putchar('\n');
    }
}

static void print_energies(const Langdaug__V1__StatusReply *r)
{
    if (!r->n_energies)
        return;
    printf("energies:\n  %-24s %10s %12s %12s %12s %12s\n", "SOURCE>TARGET", "COUNT", "MEAN", "STDDEV", "MIN", "MAX");
    for (size_t i = 0; i < r->n_energies; i++) {
        const Langdaug__V1__EnergyStats *e = r->energies[i];
        char pair[128];
        snprintf(pair, sizeof pair, "%s>%s", str(e->source), str(e->target));
        printf("  %-24s %10" PRIu64 " %12.5g %12.5g %12.5g %12.5g\n", pair, e->count, e->mean, e->stddev, e->min,
               e->max);
    }
}

/* Lines for fields that older daemons do not send are left out. */
static void print_queue_memory(const Langdaug__V1__StatusReply *r)
{
    if (r->has_queue_bytes && r->has_max_queue_bytes)
        printf("queue memory %.1f MiB of %.1f MiB (finished samples held for clients)\n",
               (double)r->queue_bytes / (1024.0 * 1024.0), (double)r->max_queue_bytes / (1024.0 * 1024.0));
}

static void print_security(const Langdaug__V1__StatusReply *r)
{
    if (!r->has_data_curve && !r->has_status_curve)
        return;
    printf("security: data socket %s, status socket %s", r->data_curve ? "CURVE" : "plain TCP",
           r->status_curve ? "CURVE" : "plain TCP");
    if (r->has_allowed_keys)
        printf(", %u allowed client keys", r->allowed_keys);
    if (r->has_refused_handshakes)
        printf(", %" PRIu64 " refused handshakes", r->refused_handshakes);
    putchar('\n');
}

static void print_table(const status_args_t *a, const Langdaug__V1__StatusReply *r)
{
    char up[32], age[32];
    duration(r->uptime_s, up, sizeof up);
    printf("langdaugd %s at %s, up %s%s\n", str(r->server_version), a->endpoint, up,
           r->draining ? ", DRAINING (shutting down)" : "");
    printf("workers %u, queue %u/%u, resident %.1f MiB\n", r->workers, r->queue_depth, r->queue_capacity,
           (double)r->resident_bytes / (1024.0 * 1024.0));
    print_queue_memory(r);
    print_security(r);
    rates("produced", r->samples_produced, r->produced_rate);
    rates("sent", r->samples_sent, r->sent_rate);
    printf("  batches sent %" PRIu64 ", chains failed %" PRIu64 ", protocol errors %" PRIu64 "\n", r->batches_sent,
           r->chains_failed, r->protocol_errors);
    if (r->last_reload && *r->last_reload) {
        duration(r->last_reload_age_s, age, sizeof age);
        printf("last reload: %s (%s ago)\n", r->last_reload, age);
    }
    print_models(r);
    printf("dataset:");
    for (size_t i = 0; i < r->n_dataset; i++)
        printf(" %s (%u)", str(r->dataset[i]->domain), r->dataset[i]->items);
    printf("%s, %u skipped\n", r->n_dataset ? "" : " -", r->dataset_skipped);
    print_clients(r);
    print_energies(r);
    if (r->n_config) {
        printf("config:\n");
        for (size_t i = 0; i < r->n_config; i++)
            printf("  %s = %s\n", str(r->config[i]->key), r->config[i]->value ? r->config[i]->value : "");
    }
}

/* ------------------------------------------------------------ main */

/* `--watch SECONDS` as two words leaves SECONDS among the operands: with
 * exactly two operands, a number is the interval and the other the endpoint. */
static void take_watch_operand(int argc, char **argv, status_args_t *a)
{
    double v;
    for (int k = 0; k < 2; k++)
        if (ld_text_parse_double("--watch", argv[optind + k], 0.01, 86400, &v) == 0) {
            a->interval = v;
            a->endpoint = argv[optind + 1 - k];
            optind = argc;
            return;
        }
}

static int parse_args(int argc, char **argv, status_args_t *a)
{
    static const struct option longopts[] = {
        { "json", no_argument, 0, OPT_JSON },
        { "prometheus", no_argument, 0, OPT_PROMETHEUS },
        { "watch", optional_argument, 0, OPT_WATCH },
        { "count", required_argument, 0, OPT_COUNT },
        { "timeout", required_argument, 0, OPT_TIMEOUT },
        LDC_CURVE_LONGOPTS,
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int opt, rc, watch_bare = 0;
    while ((opt = ldt_getopt(CMD, argc, argv, "h", longopts)) != -1) {
        if ((rc = ldt_curve_option(&a->curve, CMD, opt, optarg)) >= 0) {
            if (rc)
                return rc;
            continue;
        }
        switch (opt) {
        case OPT_JSON: a->json = 1; break;
        case OPT_PROMETHEUS: a->prometheus = 1; break;
        case OPT_WATCH:
            a->watch = 1;
            watch_bare = !optarg;
            if (optarg && ld_text_parse_double("--watch", optarg, 0.01, 86400, &a->interval))
                return ldt_usage_error(CMD, "%s", ld_errdetail());
            break;
        case OPT_COUNT:
            if (ld_text_parse_int("--count", optarg, 1, 1000000000, &a->count))
                return ldt_usage_error(CMD, "%s", ld_errdetail());
            break;
        case OPT_TIMEOUT:
            if (ld_text_parse_double("--timeout", optarg, 0.001, 86400, &a->timeout))
                return ldt_usage_error(CMD, "%s", ld_errdetail());
            break;
        case 'h': usage(stdout); return -1;
        default: return 2;
        }
    }
    if (watch_bare && argc - optind == 2)
        take_watch_operand(argc, argv, a);
    if (!a->endpoint && optind >= argc)
        return ldt_usage_error(CMD, "ENDPOINT (the daemon's status socket) is required");
    if (!a->endpoint)
        a->endpoint = argv[optind++];
    if (a->json && a->prometheus)
        return ldt_usage_error(CMD, "--json and --prometheus are two output formats: give one");
    if (a->count && !a->watch)
        return ldt_usage_error(CMD, "--count needs --watch");
    if (ldt_curve_finish(&a->curve, CMD))
        return 2;
    return ldt_no_operands(CMD, argc, argv);
}

static void sleep_s(double s)
{
    struct timespec ts = { .tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9) };
    nanosleep(&ts, NULL);
}

int ldt_status_main(int argc, char **argv)
{
    status_args_t a = { .interval = 2, .timeout = 5 };
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;
    void *ctx = zmq_ctx_new();
    if (!ctx)
        return ldt_fail(CMD, ld_seterr(LD_EIO, "cannot create a ZeroMQ context"));
    int clear = a.watch && !a.json && !a.prometheus && isatty(STDOUT_FILENO);
    for (int round = 0;; round++) {
        Langdaug__V1__StatusReply *r;
        rc = fetch(ctx, &a, &r);
        if (clear)
            fputs("\033[H\033[2J", stdout);
        if (!rc) {
            rc = a.json ? print_json(r, a.watch) : a.prometheus ? print_prometheus(r) : (print_table(&a, r), 0);
            langdaug__v1__status_reply__free_unpacked(r, NULL);
        }
        if (rc)
            ldt_fail(CMD, rc);
        fflush(stdout);
        if (!a.watch || (a.count && round + 1 >= a.count))
            break;
        sleep_s(a.interval);
    }
    zmq_ctx_term(ctx);
    return rc ? 1 : 0;
}
