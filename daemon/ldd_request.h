/* ldd_request: checking what a client sends on the data socket, apart
 * from any socket or session state (so that it can be fuzzed alone).
 *
 *   frames, size, bytes  --ldd_request_decode-->  ClientMessage with a body
 *   PullRequest          --ldd_request_parse-->   ldd_request_t resolved
 *                                                 against an engine
 *   Hello                --ldd_request_check_hello--> version agreed
 * Each refusal gives the ErrorCode to answer with and a text naming the
 * field and the limit (also recorded as the thread's error detail, see
 * ld_error.h); nothing here changes any state. A refusing function returns
 * the LD_E* code of its ErrorCode: LD_ERANGE (TOO_LARGE, LIMIT), LD_EFORMAT
 * (MALFORMED), LD_ENOTSUP (UNSUPPORTED_VERSION), LD_ENOENT (UNKNOWN_DOMAIN),
 * LD_EINVAL (INVALID_REQUEST). */
#ifndef LDD_REQUEST_H
#define LDD_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "langdaug.pb-c.h"
#include "ldd_config.h"
#include "ldd_engine.h"

#define LDD_MAX_PAIRS 64

typedef struct {
    char source[LD_NAME_MAX];   /* "" = any dataset domain the target is served from */
    char target[LD_NAME_MAX];
    double weight;
    int source_domain;          /* dataset index, -1 = any (a field value, not an error); resolved against the engine */
    int route;                  /* index in the engine's targets; resolved against the engine */
} ldd_pair_t;

/* A validated request: what a session samples until its next one. */
typedef struct {
    uint32_t batch_size;
    int encoding;               /* LANGDAUG__V1__ENCODING__* */
    int n_pairs;
    ldd_pair_t pairs[LDD_MAX_PAIRS];
    double total_weight;
    int n_steps;
    int steps[LD_LANGEVIN_MAX_SNAPSHOTS];
    int has_seed;
    uint64_t seed;
    int epoch;
    int keep;                   /* ld_keep_t, or -1: the engine's (the config's keep) */
} ldd_request_t;

/* Memory of one sample while the daemon holds it: float32 pixels of the
 * snapshot, its mask and energy (an upper bound for the wire encodings). */
int64_t ldd_sample_bytes(const ldd_engine_t *e);

/* Decodes the frame a client sent (`parts` frames, `total` bytes over all
 * of them, the first one is data[len]). Returns the message (free with
 * langdaug__v1__client_message__free_unpacked), or NULL with *code
 * (TOO_LARGE, MALFORMED, UNSUPPORTED_VERSION), text and the detail set. A returned
 * message has the current version and a body. */
Langdaug__V1__ClientMessage *ldd_request_decode(const uint8_t *data, size_t len, int parts, size_t total,
                                                int max_message_size, int *code, char *text, size_t cap);

/* Fills req from a PullRequest that says what to sample, checked against
 * cfg's limits and resolved against e. Returns 0, or a negative LD_E* code
 * with *code, text and the detail. */
int ldd_request_parse(const ldd_config_t *cfg, const ldd_engine_t *e, const Langdaug__V1__PullRequest *p,
                      ldd_request_t *req, int *code, char *text, size_t cap);

/* Resolves req's pairs against e: source domain index and route; a pair
 * with an empty source needs some dataset domain its target is served from,
 * one with a source a model that serves exactly it. Returns 0, or LD_ENOENT
 * with *code = UNKNOWN_DOMAIN and a text (and detail) naming the pair ("A:B",
 * "*:B" for any source). Used for new requests and again after a reload. */
int ldd_request_resolve(const ldd_engine_t *e, ldd_request_t *req, int *code, char *text, size_t cap);

/* Whether a PullRequest only grants credits (keeps the current request). */
int ldd_request_only_credits(const Langdaug__V1__PullRequest *p);

/* Version negotiation of a Hello. Returns 0, or LD_ENOTSUP with *code
 * (UNSUPPORTED_VERSION), text and the detail. */
int ldd_request_check_hello(const Langdaug__V1__Hello *h, int *code, char *text, size_t cap);

#endif
