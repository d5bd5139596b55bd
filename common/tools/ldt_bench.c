/* ldt_bench: `langdaug bench`, how fast samplers deliver to one client.
 *
 * Pulls for --seconds after the first batch arrived (the wait for the first
 * one, which includes connecting and the first chains, is reported apart),
 * then prints batches/s, samples/s and MB/s received, per endpoint and in
 * total. Batches are dropped on arrival: this measures the samplers and the
 * transport, not a consumer. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ld_text.h"
#include "ld_client.h"
#include "ld_error.h"
#include "ldt.h"
#include "ldt_request.h"

#define CMD "bench"

enum { OPT_SECONDS = 0x300 };

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: langdaug bench --from ENDPOINTS (--targets T | --pairs P) [options]\n"
            "Measures batches/s and MB/s received from langdaugd samplers.\n"
            "\n"
            "  --seconds S           measure for S seconds after the first batch (default 10)\n" LDC_REQUEST_HELP
            "  -h, --help            this help\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report_line(const char *what, uint64_t batches, uint64_t samples, uint64_t bytes, double secs)
{
    printf("%-32s %8" PRIu64 " batches %10" PRIu64 " samples %10.1f MB   %8.2f batches/s %9.1f samples/s %8.2f MB/s\n",
           what, batches, samples, (double)bytes / 1e6, (double)batches / secs, (double)samples / secs,
           (double)bytes / 1e6 / secs);
}

static int parse_args(int argc, char **argv, ldt_request_t *req, double *seconds)
{
    static const struct option longopts[] = {
        LDC_REQUEST_LONGOPTS,
        { "seconds", required_argument, 0, OPT_SECONDS },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int opt, rc;
    while ((opt = ldt_getopt(CMD, argc, argv, "h", longopts)) != -1) {
        if ((rc = ldt_request_option(req, CMD, opt, optarg)) >= 0) {
            if (rc)
                return rc;
            continue;
        }
        switch (opt) {
        case OPT_SECONDS:
            if (ld_text_parse_double("--seconds", optarg, 0.01, 86400, seconds))
                return ldt_usage_error(CMD, "%s", ld_errdetail());
            break;
        case 'h': usage(stdout); return -1;
        default: return 2;
        }
    }
    if ((rc = ldt_no_operands(CMD, argc, argv)))
        return rc;
    return ldt_request_finish(req, CMD);
}

/* Pulls until `seconds` after the first batch; *first_s = wait for it;
 * base[0 .. *n_base - 1] = the samplers' counters at the first batch. */
static int measure(ld_client_t *client, double seconds, double *first_s, double *secs,
                   ld_endpoint_stats_t *base, int *n_base)
{
    double t0 = now_s(), start = 0;
    for (;;) {
        ld_batch_t *b;
        int rc = ld_client_next(client, &b);
        if (rc)
            return rc;
        ld_batch_destroy(&b);
        double t = now_s();
        if (start == 0) {
            start = t;
            *first_s = t - t0;
            *n_base = ld_client_endpoints(client);
            for (int e = 0; e < *n_base; e++)
                ld_client_stats(client, e, &base[e]);
        } else if (t - start >= seconds) {
            *secs = t - start;
            return 0;
        }
    }
}

/* A sampler's counters at the first batch, by id (a fleet's samplers come
 * and go, so positions may change); zeros for one that joined later. */
static ld_endpoint_stats_t base_of(const ld_endpoint_stats_t *base, int n_base, int id)
{
    for (int e = 0; e < n_base; e++)
        if (base[e].id == id)
            return base[e];
    return (ld_endpoint_stats_t){ .id = id };
}

int ldt_bench_main(int argc, char **argv)
{
    ldt_request_t req;
    double seconds = 10, first = 0, secs = 0;
    ldt_request_init(&req, LD_ENCODING_FLOAT32);
    req.opts.name = "langdaug bench";
    int rc = parse_args(argc, argv, &req, &seconds);
    if (rc) {
        ldt_request_free(&req);
        return rc < 0 ? 0 : rc;
    }
    ld_client_t *client = NULL;
    ld_endpoint_stats_t base[LDC_REQUEST_MAX_ITEMS];
    int n_base = 0;
    rc = ld_client_new(&req.opts, &client);
    rc = rc ? rc : measure(client, seconds, &first, &secs, base, &n_base);
    if (!rc) {
        uint64_t tb = 0, ts = 0, tbytes = 0;
        printf("first batch after %.3f s; then %.2f s measured (batch %u, %s, credits %u per sampler)\n", first, secs,
               req.opts.batch_size, ld_encoding_name(req.opts.encoding), req.opts.credits);
        for (int e = 0; e < ld_client_endpoints(client); e++) {
            ld_endpoint_stats_t s;
            ld_client_stats(client, e, &s);
            ld_endpoint_stats_t b0 = base_of(base, n_base, s.id);
            report_line(s.endpoint, s.batches - b0.batches, s.samples - b0.samples, s.bytes - b0.bytes, secs);
            tb += s.batches - b0.batches;
            ts += s.samples - b0.samples;
            tbytes += s.bytes - b0.bytes;
        }
        report_line("total", tb, ts, tbytes, secs);
    }
    ld_client_destroy(&client);
    ldt_request_free(&req);
    return rc ? ldt_fail(CMD, rc) : 0;
}
