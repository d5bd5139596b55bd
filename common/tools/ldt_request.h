/* ldt_request: the sampler-request options shared by `langdaug pull` and
 * `langdaug bench` (--from, --batch, --targets, --pairs, --steps, --encoding,
 * --seed, --epoch, --keep, --credits, --timeout, CURVE keys), parsed into
 * ld_client_opts_t.
 *
 * Ownership: an ldt_request_t owns the copies of the option texts that its
 * opts point into; ldt_request_free() releases them. */
#ifndef LDC_REQUEST_H
#define LDC_REQUEST_H

#include <getopt.h>

#include "ld_client.h"

#define LDC_REQUEST_MAX_ITEMS 256

enum {
    LDC_OPT_FROM = 0x200, LDC_OPT_BATCH, LDC_OPT_TARGETS, LDC_OPT_PAIRS, LDC_OPT_STEPS, LDC_OPT_ENCODING,
    LDC_OPT_SEED, LDC_OPT_EPOCH, LDC_OPT_KEEP, LDC_OPT_CREDITS, LDC_OPT_TIMEOUT, LDC_OPT_CURVE_SERVER_KEY,
    LDC_OPT_CURVE_SECRET_KEY
};

/* CURVE key files (common/ld_curvekey.h), for the commands that talk to a
 * sampler: --curve-server-key (the sampler's .pub) and --curve-secret-key
 * (our .key from `langdaug keygen`; its public key is derived). */
#define LDC_CURVE_LONGOPTS                                                                \
    { "curve-server-key", required_argument, 0, LDC_OPT_CURVE_SERVER_KEY },               \
    { "curve-secret-key", required_argument, 0, LDC_OPT_CURVE_SECRET_KEY }

#define LDC_CURVE_HELP                                                                           \
    "  --curve-server-key F  the sampler's CURVE public key file (.pub); with\n"                 \
    "  --curve-secret-key F  our CURVE secret key file (.key, langdaug keygen)\n"

typedef struct {
    char server[41], secret[41]; /* Z85 keys, "" = not given */
} ldt_curve_t;

/* As ldt_request_option, for the two CURVE options (the file is read here:
 * exit status 1 when it cannot be). */
int ldt_curve_option(ldt_curve_t *keys, const char *cmd, int opt, const char *arg);

/* Both keys or neither: 0, or 2 after a usage error. */
int ldt_curve_finish(const ldt_curve_t *keys, const char *cmd);

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
    { "keep", required_argument, 0, LDC_OPT_KEEP },                                       \
    { "credits", required_argument, 0, LDC_OPT_CREDITS },                                 \
    { "timeout", required_argument, 0, LDC_OPT_TIMEOUT },                                 \
    LDC_CURVE_LONGOPTS

/* The --help lines of those options. */
#define LDC_REQUEST_HELP                                                                         \
    "  --from ENDPOINTS      sampler data sockets, comma-separated (tcp://host:5555,...)\n"      \
    "  --batch B             samples per batch (default 16)\n"                                   \
    "  --targets T1,T2       target domains (from any other source domain); without\n"       \
    "                        --targets and --pairs, every pair the sampler serves\n"         \
    "  --pairs A:B[:W],...   source:target pairs with weights (empty source = any)\n"            \
    "  --steps S1,S2         Langevin snapshot steps, ascending (default: the daemon's)\n"       \
    "  --encoding E          float32, float16 or uint8 on the wire\n"                            \
    "  --seed N              reproducible streams (default: random)\n"                           \
    "  --epoch               each source crop once per epoch before repeats\n"                   \
    "  --keep WHAT           none, or luminance: the source crop's L*, only colour changes\n"    \
    "                        (default: the daemon's keep setting)\n"                             \
    "  --credits C           batches kept requested from each sampler (default 4)\n"             \
    "  --timeout SECONDS     give up when no batch comes for this long (default 60)\n"     \
    LDC_CURVE_HELP

typedef struct {
    ld_client_opts_t opts;
    char *from, *targets, *pairs;          /* owned copies, split in place */
    const char *endpoint_v[LDC_REQUEST_MAX_ITEMS];
    const char *target_v[LDC_REQUEST_MAX_ITEMS];
    ld_pair_t pair_v[LDC_REQUEST_MAX_ITEMS];
    uint32_t step_v[LDC_REQUEST_MAX_ITEMS];
    int encoding_set;
    ldt_curve_t curve;
} ldt_request_t;

/* Defaults (batch 16, timeout 60 s, encoding `encoding`). */
void ldt_request_init(ldt_request_t *req, ld_encoding_t encoding);

/* Handles option `opt` with value `arg` if it is one of LDC_REQUEST_LONGOPTS:
 * returns 0 (taken), -1 (not one of ours), or the exit status after printing
 * the error (2 usage error, 1 out of memory). */
int ldt_request_option(ldt_request_t *req, const char *cmd, int opt, const char *arg);

/* After option parsing: checks that --from and a target or pair were given;
 * 0 or 2 after printing a usage error. */
int ldt_request_finish(ldt_request_t *req, const char *cmd);

void ldt_request_free(ldt_request_t *req);

#endif
