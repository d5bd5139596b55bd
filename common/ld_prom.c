/* ld_prom: StatusReply -> Prometheus text exposition (see ld_prom.h).
 *
 * The families table below is the naming rule: name, type and help of every
 * metric. Output is written with open_memstream; each family is printed by
 * one call of its emitter, which prints the header and then all samples. */
#include "ld_prom.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ld_error.h"
#include "ld_text.h"

typedef enum {
    M_INFO, M_MODEL_INFO, M_UPTIME, M_DRAINING, M_WORKERS, M_QUEUE_DEPTH, M_QUEUE_CAPACITY, M_QUEUE_BYTES,
    M_QUEUE_MAX_BYTES, M_RESIDENT, M_PRODUCED, M_SENT, M_BATCHES, M_PRODUCED_RATE, M_SENT_RATE, M_CHAINS_FAILED,
    M_PROTOCOL_ERRORS, M_CURVE, M_ALLOWED_KEYS, M_REFUSED, M_RELOAD_SUCCESS, M_RELOAD_AGE, M_DATASET_ITEMS,
    M_DATASET_SKIPPED, M_CLIENTS, M_CLIENT_CREDITS, M_CLIENT_SAMPLES, M_CLIENT_BATCHES, M_CLIENT_IDLE,
    M_CLIENT_ERRORS, M_ENERGY_SAMPLES, M_ENERGY_MEAN, M_ENERGY_STDDEV, M_ENERGY_MIN, M_ENERGY_MAX, M_COUNT
} metric_t;

static const struct {
    const char *name, *type, *help;
} families[M_COUNT] = {
    [M_INFO] = { "langdaug_info", "gauge", "Always 1; the daemon's version in the label." },
    [M_MODEL_INFO] = { "langdaug_model_info", "gauge", "Always 1 for every loaded model: its content hash and path." },
    [M_UPTIME] = { "langdaug_uptime_seconds", "gauge", "Seconds since the daemon started." },
    [M_DRAINING] = { "langdaug_draining", "gauge", "1 while the daemon drains before shutting down." },
    [M_WORKERS] = { "langdaug_workers", "gauge", "Sampler threads." },
    [M_QUEUE_DEPTH] = { "langdaug_queue_jobs", "gauge", "Chain jobs queued or running." },
    [M_QUEUE_CAPACITY] = { "langdaug_queue_capacity_jobs", "gauge", "Chain jobs allowed at once (queue_capacity)." },
    [M_QUEUE_BYTES] = { "langdaug_queue_bytes", "gauge", "Bytes of finished samples held for clients." },
    [M_QUEUE_MAX_BYTES] = { "langdaug_queue_max_bytes", "gauge", "max_queue_memory in bytes." },
    [M_RESIDENT] = { "langdaug_resident_memory_bytes", "gauge", "Resident set size of the daemon in bytes." },
    [M_PRODUCED] = { "langdaug_samples_produced_total", "counter", "Samples the chains produced." },
    [M_SENT] = { "langdaug_samples_sent_total", "counter", "Samples sent to clients." },
    [M_BATCHES] = { "langdaug_batches_sent_total", "counter", "Batches sent to clients." },
    [M_PRODUCED_RATE] = { "langdaug_samples_produced_per_second", "gauge",
                          "Samples produced per second, moving average over the window." },
    [M_SENT_RATE] = { "langdaug_samples_sent_per_second", "gauge",
                      "Samples sent per second, moving average over the window." },
    [M_CHAINS_FAILED] = { "langdaug_chains_failed_total", "counter", "Chain jobs that failed." },
    [M_PROTOCOL_ERRORS] = { "langdaug_protocol_errors_total", "counter", "Malformed messages received." },
    [M_CURVE] = { "langdaug_curve_enabled", "gauge", "1 if the socket uses CURVE, 0 if plain TCP." },
    [M_ALLOWED_KEYS] = { "langdaug_allowed_client_keys", "gauge", "Client public keys allowed in (CURVE only)." },
    [M_REFUSED] = { "langdaug_refused_handshakes_total", "counter",
                    "Connections refused at the CURVE handshake since start (CURVE only)." },
    [M_RELOAD_SUCCESS] = { "langdaug_last_reload_success", "gauge",
                           "1 if the last reload (SIGHUP) succeeded, 0 if it failed; absent before the first." },
    [M_RELOAD_AGE] = { "langdaug_last_reload_age_seconds", "gauge", "Seconds since the last reload." },
    [M_DATASET_ITEMS] = { "langdaug_dataset_items", "gauge", "Dataset items loaded per domain." },
    [M_DATASET_SKIPPED] = { "langdaug_dataset_skipped_items", "gauge", "Dataset items skipped when loading." },
    [M_CLIENTS] = { "langdaug_clients_connected", "gauge", "Client sessions held." },
    [M_CLIENT_CREDITS] = { "langdaug_client_credits", "gauge", "Batches the client may still be sent." },
    [M_CLIENT_SAMPLES] = { "langdaug_client_samples_sent_total", "counter", "Samples sent to the client." },
    [M_CLIENT_BATCHES] = { "langdaug_client_batches_sent_total", "counter", "Batches sent to the client." },
    [M_CLIENT_IDLE] = { "langdaug_client_idle_seconds", "gauge", "Seconds since the client's last message." },
    [M_CLIENT_ERRORS] = { "langdaug_client_errors_total", "counter", "Error replies sent to the client." },
    [M_ENERGY_SAMPLES] = { "langdaug_energy_samples_total", "counter",
                           "Samples whose energy went into the pair's statistics." },
    [M_ENERGY_MEAN] = { "langdaug_energy_mean", "gauge", "Mean energy of the pair's samples." },
    [M_ENERGY_STDDEV] = { "langdaug_energy_stddev", "gauge", "Standard deviation of the pair's sample energies." },
    [M_ENERGY_MIN] = { "langdaug_energy_min", "gauge", "Lowest energy of the pair's samples." },
    [M_ENERGY_MAX] = { "langdaug_energy_max", "gauge", "Highest energy of the pair's samples." },
};

static void header(FILE *f, metric_t m)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", families[m].name, families[m].help, families[m].name,
            families[m].type);
}

static void label_value(FILE *f, const char *v)
{
    const unsigned char *s = (const unsigned char *)(v ? v : "");
    while (*s) {
        size_t n = ld_text_utf8_len(s);
        if (*s == '\\' || *s == '"')
            fprintf(f, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", f);
        else if (n)
            fwrite(s, 1, n, f);
        else
            fputs("\xEF\xBF\xBD", f);
        s += n ? n : 1;
    }
}

/* name{k1="v1",k2="v2"} with labels as NULL-terminated key, value pairs. */
static void series(FILE *f, metric_t m, const char *const *labels)
{
    fputs(families[m].name, f);
    for (int i = 0; labels && labels[i]; i += 2) {
        fprintf(f, "%s%s=\"", i ? "," : "{", labels[i]);
        label_value(f, labels[i + 1]);
        fputc('"', f);
    }
    if (labels && labels[0])
        fputc('}', f);
}

static void sample_u64(FILE *f, metric_t m, const char *const *labels, uint64_t v)
{
    series(f, m, labels);
    fprintf(f, " %" PRIu64 "\n", v);
}

static void sample_f64(FILE *f, metric_t m, const char *const *labels, double v)
{
    series(f, m, labels);
    if (isnan(v))
        fputs(" NaN\n", f);
    else if (isinf(v))
        fputs(v > 0 ? " +Inf\n" : " -Inf\n", f);
    else
        fprintf(f, " %.17g\n", v);
}

/* A family with one unlabelled sample, when the reply has the field. */
static void scalar_u64(FILE *f, metric_t m, int has, uint64_t v)
{
    if (!has)
        return;
    header(f, m);
    sample_u64(f, m, NULL, v);
}

static void scalar_f64(FILE *f, metric_t m, int has, double v)
{
    if (!has)
        return;
    header(f, m);
    sample_f64(f, m, NULL, v);
}

static void rates(FILE *f, metric_t m, const Langdaug__V1__Rates *r)
{
    if (!r)
        return;
    header(f, m);
    const char *l1[] = { "window", "1m", NULL }, *l5[] = { "window", "5m", NULL }, *l15[] = { "window", "15m", NULL };
    sample_f64(f, m, l1, r->m1);
    sample_f64(f, m, l5, r->m5);
    sample_f64(f, m, l15, r->m15);
}

static void identity(FILE *f, const Langdaug__V1__StatusReply *r)
{
    header(f, M_INFO);
    const char *info[] = { "version", r->server_version, NULL };
    sample_u64(f, M_INFO, info, 1);
    if (r->n_models)
        header(f, M_MODEL_INFO);
    for (size_t i = 0; i < r->n_models; i++) {
        const char *l[] = { "hash", r->models[i]->hash, "path", r->models[i]->path, NULL };
        sample_u64(f, M_MODEL_INFO, l, 1);
    }
    scalar_f64(f, M_UPTIME, r->has_uptime_s, r->uptime_s);
    scalar_u64(f, M_DRAINING, r->has_draining, r->draining);
}

static void capacity(FILE *f, const Langdaug__V1__StatusReply *r)
{
    scalar_u64(f, M_WORKERS, r->has_workers, r->workers);
    scalar_u64(f, M_QUEUE_DEPTH, r->has_queue_depth, r->queue_depth);
    scalar_u64(f, M_QUEUE_CAPACITY, r->has_queue_capacity, r->queue_capacity);
    scalar_u64(f, M_QUEUE_BYTES, r->has_queue_bytes, r->queue_bytes);
    scalar_u64(f, M_QUEUE_MAX_BYTES, r->has_max_queue_bytes, r->max_queue_bytes);
    scalar_u64(f, M_RESIDENT, r->has_resident_bytes, r->resident_bytes);
}

static void throughput(FILE *f, const Langdaug__V1__StatusReply *r)
{
    scalar_u64(f, M_PRODUCED, r->has_samples_produced, r->samples_produced);
    scalar_u64(f, M_SENT, r->has_samples_sent, r->samples_sent);
    scalar_u64(f, M_BATCHES, r->has_batches_sent, r->batches_sent);
    rates(f, M_PRODUCED_RATE, r->produced_rate);
    rates(f, M_SENT_RATE, r->sent_rate);
    scalar_u64(f, M_CHAINS_FAILED, r->has_chains_failed, r->chains_failed);
    scalar_u64(f, M_PROTOCOL_ERRORS, r->has_protocol_errors, r->protocol_errors);
}

static void security(FILE *f, const Langdaug__V1__StatusReply *r)
{
    if (r->has_data_curve || r->has_status_curve)
        header(f, M_CURVE);
    const char *data[] = { "socket", "data", NULL }, *status[] = { "socket", "status", NULL };
    if (r->has_data_curve)
        sample_u64(f, M_CURVE, data, r->data_curve);
    if (r->has_status_curve)
        sample_u64(f, M_CURVE, status, r->status_curve);
    scalar_u64(f, M_ALLOWED_KEYS, r->has_allowed_keys, r->allowed_keys);
    scalar_u64(f, M_REFUSED, r->has_refused_handshakes, r->refused_handshakes);
}

/* last_reload is "ok ..." or "failed: ..." ("" before the first reload). */
static void reload(FILE *f, const Langdaug__V1__StatusReply *r)
{
    int reloaded = r->last_reload && *r->last_reload;
    scalar_u64(f, M_RELOAD_SUCCESS, reloaded, reloaded && !strncmp(r->last_reload, "ok", 2));
    scalar_f64(f, M_RELOAD_AGE, reloaded && r->has_last_reload_age_s, r->last_reload_age_s);
}

static void dataset(FILE *f, const Langdaug__V1__StatusReply *r)
{
    if (r->n_dataset)
        header(f, M_DATASET_ITEMS);
    for (size_t i = 0; i < r->n_dataset; i++) {
        const char *l[] = { "domain", r->dataset[i]->domain, NULL };
        sample_u64(f, M_DATASET_ITEMS, l, r->dataset[i]->items);
    }
    scalar_u64(f, M_DATASET_SKIPPED, r->has_dataset_skipped, r->dataset_skipped);
}

static void clients(FILE *f, const Langdaug__V1__StatusReply *r)
{
    scalar_u64(f, M_CLIENTS, 1, r->n_clients);
    static const metric_t per_client[] = { M_CLIENT_CREDITS, M_CLIENT_SAMPLES, M_CLIENT_BATCHES, M_CLIENT_IDLE,
                                           M_CLIENT_ERRORS };
    for (size_t k = 0; r->n_clients && k < sizeof per_client / sizeof per_client[0]; k++) {
        metric_t m = per_client[k];
        header(f, m);
        for (size_t i = 0; i < r->n_clients; i++) {
            const Langdaug__V1__ClientStatus *c = r->clients[i];
            const char *l[] = { "client", c->id, "name", c->name, NULL };
            if (m == M_CLIENT_IDLE)
                sample_f64(f, m, l, c->idle_s);
            else
                sample_u64(f, m, l,
                           m == M_CLIENT_CREDITS ? c->credits
                           : m == M_CLIENT_SAMPLES ? c->samples_sent
                           : m == M_CLIENT_BATCHES ? c->batches_sent
                                                   : c->errors);
        }
    }
}

static void energies(FILE *f, const Langdaug__V1__StatusReply *r)
{
    for (metric_t m = M_ENERGY_SAMPLES; r->n_energies && m <= M_ENERGY_MAX; m++) {
        header(f, m);
        for (size_t i = 0; i < r->n_energies; i++) {
            const Langdaug__V1__EnergyStats *e = r->energies[i];
            const char *l[] = { "source", e->source, "target", e->target, NULL };
            if (m == M_ENERGY_SAMPLES)
                sample_u64(f, m, l, e->count);
            else
                sample_f64(f, m, l,
                           m == M_ENERGY_MEAN ? e->mean : m == M_ENERGY_STDDEV ? e->stddev
                                                      : m == M_ENERGY_MIN  ? e->min
                                                                           : e->max);
        }
    }
}

int ld_prom_format(const Langdaug__V1__StatusReply *r, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = open_memstream(out, len);
    if (!f)
        return ld_seterr(LD_ENOMEM, "out of memory for the metrics text");
    identity(f, r);
    capacity(f, r);
    throughput(f, r);
    security(f, r);
    reload(f, r);
    dataset(f, r);
    clients(f, r);
    energies(f, r);
    if (ferror(f) | fclose(f)) {
        free(*out);
        *out = NULL;
        return ld_seterr(LD_ENOMEM, "out of memory for the metrics text");
    }
    return 0;
}
