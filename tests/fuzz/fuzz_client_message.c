/* fuzz_client_message: a data-socket message as the daemon handles it,
 * without sockets: ldd_request_decode (size, frame count, protobuf,
 * version, body), then per body ldd_request_check_hello or
 * ldd_request_parse against a real engine (a small random model and a
 * synthetic two-domain dataset made once in a temporary folder), and for
 * an accepted request the session set-up.
 * Invariants checked beyond "no crash, no leak": an accepted request
 * respects every configured limit and resolves to served domains, and a
 * session installs it wanting exactly one batch per reserved credit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ld_error.h"
#include "ld_log.h"
#include "fuzz_util.h"
#include "ldd_config.h"
#include "ldd_engine.h"
#include "ldd_request.h"
#include "ldd_session.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);

static ldd_config_t cfg;
static ldd_engine_t *engine;
static ldd_sessions_t *sessions;

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_client_message setup: %s: %s\n", what, ld_errdetail());
    exit(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    fuzz_engine_files_t files;
    fuzz_engine_files("client-message", &files);
    const char *model = files.model, *data = files.data;
    if (ldd_config_defaults(&cfg) < 0 || ldd_config_set(&cfg, "model", model, "fuzz") < 0 ||
        ldd_config_set(&cfg, "data", data, "fuzz") < 0 || ldd_config_set(&cfg, "max_batch", "64", "fuzz") < 0 ||
        ldd_config_set(&cfg, "max_steps", "50", "fuzz") < 0)
        fail("config");
    if (ldd_engine_load(&cfg, &engine) < 0)
        fail("engine");
    sessions = ldd_sessions_new(cfg.max_clients, (int64_t)cfg.max_queue_memory << 20);
    fuzz_remove_dir(files.dir); /* everything is in memory now */
    return 0;
}

static void check_accepted(const ldd_request_t *req)
{
    if (req->batch_size < 1 || req->batch_size > (uint32_t)cfg.max_batch || req->n_pairs < 1 ||
        req->n_pairs > LDD_MAX_PAIRS || !(req->total_weight > 0) || req->n_steps > LD_LANGEVIN_MAX_SNAPSHOTS)
        abort();
    for (int i = 0; i < req->n_pairs; i++) {
        const ldd_pair_t *p = &req->pairs[i];
        if (p->route < 0 || p->route >= engine->n_targets || strcmp(engine->targets[p->route].name, p->target) != 0)
            abort();
        const ldd_target_t *t = &engine->targets[p->route];
        if (p->source_domain >= 0 ? t->from[p->source_domain].model < 0 : t->n_sources < 1)
            abort();
    }
    for (int i = 0; i < req->n_steps; i++)
        if (req->steps[i] < 0 || req->steps[i] > cfg.max_steps || (i && req->steps[i] <= req->steps[i - 1]))
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    int code;
    char text[512];
    Langdaug__V1__ClientMessage *m = ldd_request_decode(data, len, 1, len, cfg.max_message_size, &code, text,
                                                        sizeof text);
    if (!m) {
        if (code <= 0 || !text[0])
            abort();
        return 0;
    }
    if (m->body_case == LANGDAUG__V1__CLIENT_MESSAGE__BODY_HELLO) {
        ldd_request_check_hello(m->hello, &code, text, sizeof text);
    } else if (m->body_case == LANGDAUG__V1__CLIENT_MESSAGE__BODY_PULL && !ldd_request_only_credits(m->pull)) {
        ldd_request_t req;
        if (ldd_request_parse(&cfg, engine, m->pull, &req, &code, text, sizeof text) == 0) {
            check_accepted(&req);
            ldd_session_t *s = ldd_sessions_add(sessions, "id", 2, 0);
            ldd_session_set_request(s, &req, engine, 7);
            ldd_session_grant(s, 1);
            if (!ldd_sessions_reserve(sessions, s))
                abort();
            if (ldd_session_wanted(s) != req.batch_size)
                abort();
            ldd_sessions_remove(sessions, s);
        } else if (code <= 0 || !text[0]) {
            abort();
        }
    }
    langdaug__v1__client_message__free_unpacked(m, NULL);
    return 0;
}
