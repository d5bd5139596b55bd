/* ldd_fixture: the daemon suites' engine (see ldd_fixture.h). */
#include "ldd_fixture.h"

#include <stdlib.h>
#include <string.h>

#include "ld_error.h"
#include "ld_log.h"
#include "ld_model.h"
#include "ld_synth.h"
#include "testutil.h"

static void write_files(const char *data, const char *model)
{
    ld_synth_opts_t so;
    ld_synth_defaults(&so);
    so.n_domains = LDD_FIXTURE_DOMAINS;
    so.per_domain = 2;
    so.size = 40;
    so.seed = 1;
    ck_assert_int_eq(ld_synth_write(data, &so), 0);
    ld_ebm_arch_t arch = { .image_channels = LDD_FIXTURE_CHANNELS, .mask_classes = 2, .size = LDD_FIXTURE_SIZE };
    ck_assert_int_eq(ld_ebm_arch_set_widths(&arch, "4,8"), 0);
    ck_assert_int_eq(ld_ebm_arch_set_domains(&arch, "cam0,cam1,cam2"), 0);
    ld_ebm_t *ebm = NULL;
    ck_assert_int_eq(ld_ebm_new(&arch, &ebm), 0);
    ld_ebm_init_random(ebm, 3);
    ck_assert_int_eq(ld_model_save(model, ebm, NULL, NULL), 0);
    ld_ebm_destroy(&ebm);
}

static void set_key(ldd_config_t *cfg, const char *key, const char *value)
{
    if (ldd_config_set(cfg, key, value, "fixture") < 0)
        ck_abort_msg("fixture config %s = %s: %s", key, value, ld_errdetail());
}

void ldd_fixture_open(ldd_fixture_t *f, const char *const *overrides)
{
    ld_log_level = LD_LOG_ERROR;
    f->dir = ld_test_tmpdir();
    char *data = ld_test_path(f->dir, "data"), *model = ld_test_path(f->dir, "model.safetensors");
    write_files(data, model);
    ck_assert_int_eq(ldd_config_defaults(&f->cfg), 0);
    set_key(&f->cfg, "model", model);
    set_key(&f->cfg, "data", data);
    set_key(&f->cfg, "step_size", "0.01");
    set_key(&f->cfg, "noise", "0.005");
    set_key(&f->cfg, "steps", "0,2");
    for (const char *const *kv = overrides; kv && kv[0]; kv += 2)
        set_key(&f->cfg, kv[0], kv[1]);
    if (ldd_engine_load(&f->cfg, &f->engine) < 0)
        ck_abort_msg("fixture engine: %s", ld_errdetail());
    free(data);
    free(model);
}

void ldd_fixture_close(ldd_fixture_t *f)
{
    ldd_engine_unref(&f->engine);
    ldd_config_free(&f->cfg);
    ld_test_rmtree(f->dir);
    free(f->dir);
    f->dir = NULL;
}

Langdaug__V1__PullRequest ldd_fixture_pull(uint32_t credits, uint32_t batch_size, const char *source,
                                           const char *target, const uint32_t *steps, size_t n_steps)
{
    static Langdaug__V1__Pair pair;
    static Langdaug__V1__Pair *pairs[1] = { &pair };
    langdaug__v1__pair__init(&pair);
    pair.source = (char *)source;
    pair.target = (char *)target;
    Langdaug__V1__PullRequest p = LANGDAUG__V1__PULL_REQUEST__INIT;
    p.has_credits = p.has_batch_size = 1;
    p.credits = credits;
    p.batch_size = batch_size;
    p.n_pairs = 1;
    p.pairs = pairs;
    p.n_steps = n_steps;
    p.steps = (uint32_t *)steps;
    return p;
}

ldd_request_t ldd_fixture_request(const ldd_fixture_t *f, const Langdaug__V1__PullRequest *p)
{
    ldd_request_t req;
    int code;
    char text[512];
    if (ldd_request_parse(&f->cfg, f->engine, p, &req, &code, text, sizeof text) < 0)
        ck_abort_msg("fixture request refused: %s", text);
    return req;
}

float ldd_fixture_tag(uint64_t seq, int chain, int snap)
{
    return (float)((seq * 64 + (uint64_t)chain) * 16 + (uint64_t)snap) / 65536.0f;
}

void ldd_fixture_finish(ldd_job_t *job)
{
    const ldd_engine_t *e = job->engine;
    size_t ss = (size_t)e->size * e->size, css = ss * (size_t)e->channels;
    int ns = job->params.n_snapshots;
    job->images = malloc((size_t)ns * job->n * css * sizeof(float));
    job->energy = malloc((size_t)ns * job->n * sizeof(float));
    job->masks = malloc((size_t)job->n * ss);
    ck_assert(job->images && job->energy && job->masks);
    for (int k = 0; k < ns; k++) {
        for (int c = 0; c < job->n; c++) {
            float tag = ldd_fixture_tag(job->seq, c, k);
            job->energy[(size_t)k * job->n + c] = tag;
            for (size_t i = 0; i < css; i++)
                job->images[((size_t)k * job->n + c) * css + i] = tag;
        }
    }
    for (int c = 0; c < job->n; c++)
        memset(job->masks + (size_t)c * ss, c, ss);
    job->status = 0;
}
