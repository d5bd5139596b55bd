/* ldd_fixture: what the daemon's Check suites (tests/test_ldd_*.c) sample
 * with: a synthetic dataset of three domains (cam0, cam1, cam2; two 40x40
 * images each) and a random 16x16 model over the three, written to a
 * private temporary folder and loaded through the daemon's own config and
 * engine code, as langdaugd would. The fixture owns the folder, the config
 * and the engine reference; ldd_fixture_close() releases all three. */
#ifndef LDD_FIXTURE_H
#define LDD_FIXTURE_H

#include <stdint.h>

#include "langdaug.pb-c.h"
#include "ldd_config.h"
#include "ldd_engine.h"
#include "ldd_request.h"
#include "ldd_workers.h"

#define LDD_FIXTURE_SIZE 16
#define LDD_FIXTURE_CHANNELS 3
#define LDD_FIXTURE_DOMAINS 3

typedef struct {
    char *dir;
    ldd_config_t cfg;
    ldd_engine_t *engine;
} ldd_fixture_t;

/* Writes and loads the fixture; overrides are NULL-terminated key, value
 * pairs set on the config after the fixture's own (NULL = none). Fails the
 * test on any error. */
void ldd_fixture_open(ldd_fixture_t *f, const char *const *overrides);
void ldd_fixture_close(ldd_fixture_t *f);

/* A PullRequest for batch_size samples toward target from source (NULL:
 * any source), with the given credits and snapshot steps (n_steps = 0: the
 * engine's default steps). The strings and steps must outlive the use;
 * the pair is static storage, so one such request at a time. */
Langdaug__V1__PullRequest ldd_fixture_pull(uint32_t credits, uint32_t batch_size, const char *source,
                                           const char *target, const uint32_t *steps, size_t n_steps);

/* p parsed and resolved against f's engine, failing the test if refused. */
ldd_request_t ldd_fixture_request(const ldd_fixture_t *f, const Langdaug__V1__PullRequest *p);

/* A tag naming a sample of a job: (seq, chain, snapshot), increasing in
 * the order samples must leave a session. */
float ldd_fixture_tag(uint64_t seq, int chain, int snap);
/* Fills a job's outputs as a worker would (status 0), every pixel and the
 * energy of each sample set to its tag, masks to the chain index. */
void ldd_fixture_finish(ldd_job_t *job);

#endif
