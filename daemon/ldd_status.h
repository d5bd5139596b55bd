/* ldd_status: the daemon's counters and the status socket's reply.
 *
 * Counters (samples produced and sent, batches, failures), rates as
 * exponentially weighted moving averages over 1, 5 and 15 minutes (updated
 * every LDD_RATE_TICK seconds, like the load average) and running energy
 * statistics per (source, target) pair (Welford). Everything is touched by
 * the loop thread only. What other modules own (sessions, the sockets'
 * security and refusal count in ldd_curve, the queue memory in
 * ldd_session) is handed in through ldd_status_view_t. */
#ifndef LDD_STATUS_H
#define LDD_STATUS_H

#include <stddef.h>
#include <stdint.h>

#include "langdaug.pb-c.h"
#include "ldd_config.h"
#include "ldd_engine.h"
#include "ldd_session.h"

#define LDD_RATE_TICK 5.0

typedef struct ldd_status_s ldd_status_t;

ldd_status_t *ldd_status_new(void);
void ldd_status_destroy(ldd_status_t **self_p);

void ldd_status_produced(ldd_status_t *self, const char *source, const char *target, float energy);
void ldd_status_sent(ldd_status_t *self, uint64_t samples);
void ldd_status_chain_failed(ldd_status_t *self);
void ldd_status_protocol_error(ldd_status_t *self);
/* Advances the rates by dt seconds (call every LDD_RATE_TICK). */
void ldd_status_tick(ldd_status_t *self, double dt);
uint64_t ldd_status_samples_sent(const ldd_status_t *self);

/* What the reply shows besides the counters. */
typedef struct {
    const ldd_config_t *cfg;
    const ldd_engine_t *engine;
    ldd_sessions_t *sessions;
    int workers, queue_depth, queue_capacity, draining;
    double now, started, last_reload_time;
    const char *last_reload;
    int data_curve, status_curve;     /* CURVE on each socket */
    int allowed_keys;                 /* with CURVE: client keys loaded */
    uint64_t refused;                 /* with CURVE: handshakes refused since start */
} ldd_status_view_t;

/* Packs a StatusReply into a malloc'ed buffer (caller frees). */
void *ldd_status_reply(const ldd_status_t *self, const ldd_status_view_t *view, size_t *len);
/* Packs a StatusReply carrying only an error. */
void *ldd_status_error_reply(int code, const char *text, size_t *len);
/* A ModelInfo for every model of an engine (HelloReply, StatusReply) and
 * the memory it points to; strings point into the engine. */
typedef struct {
    Langdaug__V1__ModelInfo models[LDD_MAX_MODELS], *ptr[LDD_MAX_MODELS];
    char *domains[LDD_MAX_MODELS][LD_EBM_MAX_DOMAINS];
    uint32_t widths[LDD_MAX_MODELS][LD_EBM_MAX_BLOCKS + 1];
    Langdaug__V1__Pair *pairs, **pair_ptr;   /* every model's served pairs, model after model */
} ldd_model_infos_t;
/* Fills mi (caller's memory; free with ldd_model_infos_free) from e. */
void ldd_model_infos_fill(ldd_model_infos_t *mi, const ldd_engine_t *e);
void ldd_model_infos_free(ldd_model_infos_t *mi);
/* Resident set size of this process in bytes (0 if unknown). */
uint64_t ldd_resident_bytes(void);

#endif
