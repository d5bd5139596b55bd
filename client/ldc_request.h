/* ldc_request: the sampler-request options shared by `langdaug pull` and
 * `langdaug bench` (--from, --batch, --targets, --pairs, --steps, --encoding,
 * --seed, --epoch, --credits, --timeout), parsed into ld_client_opts_t.
 *
 * Ownership: an ldc_request_t owns the copies of the option texts that its
 * opts point into; ldc_request_free() releases them. */
#ifndef LDC_REQUEST_H
#define LDC_REQUEST_H

#include <getopt.h>

#include "ld_client.h"

#define LDC_REQUEST_MAX_ITEMS 256

enum {
    LDC_OPT_FROM = 0x200, LDC_OPT_BATCH, LDC_OPT_TARGETS, LDC_OPT_PAIRS, LDC_OPT_STEPS, LDC_OPT_ENCODING,
    LDC_OPT_SEED, LDC_OPT_EPOCH, LDC_OPT_CREDITS, LDC_OPT_TIMEOUT
};

/* Entries for a getopt_long table (no terminator). */
#define LDC_REQUEST_LONGOPTS                                                              \
    { "from", required_argument, 0, LDC_OPT_FROM },                                       \
    { "batch", required_argument, 0, LDC_OPT_BATCH },                                     \
    { "targets", required_argument, 0, LDC_OPT_TARGETS },                                 \
    { "pairs", required_argument, 0, LDC_OPT_PAIRS },                                     \
    { "steps", required_argument, 0, LDC_OPT_STEPS },                                     \
    { "encoding", required_argument, 0, LDC_OPT_ENCODING },                               \
    { "seed", required_argument, 0, LDC_OPT_SEED },                                       \
    { "epoch", no_argument, 0, LDC_OPT_EPOCH },                                           \
    { "credits", required_argument, 0, LDC_OPT_CREDITS },                                 \
    { "timeout", required_argument, 0, LDC_OPT_TIMEOUT }

/* The --help lines of those options. */
#define LDC_REQUEST_HELP                                                                         \
    "  --from ENDPOINTS      sampler data sockets, comma-separated (tcp://host:5555,...)\n"      \
    "  --batch B             samples per batch (default 16)\n"                                   \
    "  --targets T1,T2       target domains (from any other source domain)\n"                    \
    "  --pairs A:B[:W],...   source:target pairs with weights (empty source = any)\n"            \
    "  --steps S1,S2         Langevin snapshot steps, ascending (default: the daemon's)\n"       \
    "  --encoding E          float32, float16 or uint8 on the wire\n"                            \
    "  --seed N              reproducible streams (default: random)\n"                           \
    "  --epoch               each source crop once per epoch before repeats\n"                   \
    "  --credits C           batches kept requested from each sampler (default 4)\n"             \
    "  --timeout SECONDS     give up when no batch comes for this long (default 60)\n"

typedef struct {
    ld_client_opts_t opts;
    char *from, *targets, *pairs;          /* owned copies, split in place */
    const char *endpoint_v[LDC_REQUEST_MAX_ITEMS];
    const char *target_v[LDC_REQUEST_MAX_ITEMS];
    ld_pair_t pair_v[LDC_REQUEST_MAX_ITEMS];
    uint32_t step_v[LDC_REQUEST_MAX_ITEMS];
    int encoding_set;
} ldc_request_t;

/* Defaults (batch 16, timeout 60 s, encoding `encoding`). */
void ldc_request_init(ldc_request_t *req, ld_encoding_t encoding);

/* Handles option `opt` with value `arg` if it is one of LDC_REQUEST_LONGOPTS:
 * returns 0 (taken), -1 (not one of ours), or the exit status after printing
 * the error (2 usage error, 1 out of memory). */
int ldc_request_option(ldc_request_t *req, const char *cmd, int opt, const char *arg);

/* After option parsing: checks that --from and a target or pair were given;
 * 0 or 2 after printing a usage error. */
int ldc_request_finish(ldc_request_t *req, const char *cmd);

void ldc_request_free(ldc_request_t *req);

#endif
