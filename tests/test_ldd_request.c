/* test_ldd_request: what the daemon accepts from a client on the data
 * socket (ldd_request.h), without sockets or sessions: frame decoding
 * (size limit at its boundary, frame count, garbage, version, body), Hello
 * version negotiation, and PullRequest validation against the config's
 * limits (each at its boundary: the limit passes, one more is refused with
 * the code and a text naming the field) and the fixture engine's routes
 * (unknown domains name the pair; no targets means every served pair). */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldd_fixture.h"
#include "ldd_request.h"

#define LIMIT LANGDAUG__V1__ERROR_CODE__ERROR_LIMIT
#define INVALID LANGDAUG__V1__ERROR_CODE__ERROR_INVALID_REQUEST
#define UNKNOWN LANGDAUG__V1__ERROR_CODE__ERROR_UNKNOWN_DOMAIN
#define MALFORMED LANGDAUG__V1__ERROR_CODE__ERROR_MALFORMED

static ldd_fixture_t fx;

static void setup(void)
{
    static const char *const keys[] = { "max_batch", "8", "max_steps", "100", NULL };
    ldd_fixture_open(&fx, keys);
}

static void teardown(void)
{
    ldd_fixture_close(&fx);
}

/* A packed ClientMessage with a heartbeat body (or none) and version v. */
static uint8_t *packed(int has_version, uint32_t v, int body, size_t *len)
{
    Langdaug__V1__Heartbeat hb = LANGDAUG__V1__HEARTBEAT__INIT;
    Langdaug__V1__ClientMessage m = LANGDAUG__V1__CLIENT_MESSAGE__INIT;
    m.has_version = has_version;
    m.version = v;
    if (body) {
        m.body_case = LANGDAUG__V1__CLIENT_MESSAGE__BODY_HEARTBEAT;
        m.heartbeat = &hb;
    }
    *len = langdaug__v1__client_message__get_packed_size(&m);
    uint8_t *buf = malloc(*len ? *len : 1);
    langdaug__v1__client_message__pack(&m, buf);
    return buf;
}

static void expect_decode_refused(const uint8_t *data, size_t len, int parts, size_t total, int max, int want,
                                  const char *needle)
{
    int code = 0;
    char text[256] = "";
    ld_test_stale_detail();
    ck_assert_ptr_null(ldd_request_decode(data, len, parts, total, max, &code, text, sizeof text));
    ld_expect_fresh_detail("ldd_request_decode");
    ck_assert_str_eq(ld_errdetail(), text);
    ck_assert_int_eq(code, want);
    ck_assert_msg(strstr(text, needle), "'%s' lacks '%s'", text, needle);
}

START_TEST(decode_checks_size_frames_bytes_version_body)
{
    size_t len;
    uint8_t *ok = packed(1, 1, 1, &len);
    int code;
    char text[256];
    /* the size limit is on the total over every frame, and inclusive */
    Langdaug__V1__ClientMessage *m = ldd_request_decode(ok, len, 1, 300, 300, &code, text, sizeof text);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(m->body_case, LANGDAUG__V1__CLIENT_MESSAGE__BODY_HEARTBEAT);
    langdaug__v1__client_message__free_unpacked(m, NULL);
    expect_decode_refused(ok, len, 1, 301, 300, LANGDAUG__V1__ERROR_CODE__ERROR_TOO_LARGE, "max_message_size = 300");
    expect_decode_refused(ok, len, 2, len + 1, 300, MALFORMED, "got 2 frames");
    expect_decode_refused(ok, len, 0, 0, 300, MALFORMED, "got 0 frames");
    expect_decode_refused(ok, 0, 1, 0, 300, MALFORMED, "do not decode");
    static const uint8_t garbage[] = { 0xff, 0xff, 0xff, 0x01 };
    expect_decode_refused(garbage, sizeof garbage, 1, sizeof garbage, 300, MALFORMED, "do not decode");
    free(ok);
    uint8_t *v2 = packed(1, 2, 1, &len);
    expect_decode_refused(v2, len, 1, len, 300, LANGDAUG__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION, "version 2");
    free(v2);
    uint8_t *nov = packed(0, 0, 1, &len);
    expect_decode_refused(nov, len, 1, len, 300, LANGDAUG__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION, "version 0");
    free(nov);
    uint8_t *nobody = packed(1, 1, 0, &len);
    expect_decode_refused(nobody, len, 1, len, 300, MALFORMED, "no body");
    free(nobody);
}
END_TEST

START_TEST(hello_needs_version_one_in_range)
{
    Langdaug__V1__Hello h = LANGDAUG__V1__HELLO__INIT;
    int code = 0;
    char text[256];
    ck_assert_int_eq(ldd_request_check_hello(&h, &code, text, sizeof text), 0); /* no range: 1 */
    h.has_min_version = h.has_max_version = 1;
    h.min_version = 1;
    h.max_version = 3;
    ck_assert_int_eq(ldd_request_check_hello(&h, &code, text, sizeof text), 0);
    h.min_version = 2;
    ld_expect_err(ldd_request_check_hello(&h, &code, text, sizeof text), LD_ENOTSUP);
    ck_assert_int_eq(code, LANGDAUG__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION);
    ck_assert_ptr_nonnull(strstr(text, "2..3"));
    ck_assert_str_eq(ld_errdetail(), text);
    h.min_version = 0;
    h.max_version = 0;
    ld_expect_err(ldd_request_check_hello(&h, &code, text, sizeof text), LD_ENOTSUP);
}
END_TEST

/* The LD_E* code that stands for each wire ErrorCode (ldd_request.h). */
static int ld_code_of(int code)
{
    switch (code) {
    case LIMIT: case LANGDAUG__V1__ERROR_CODE__ERROR_TOO_LARGE: return LD_ERANGE;
    case MALFORMED: return LD_EFORMAT;
    case LANGDAUG__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION: return LD_ENOTSUP;
    case UNKNOWN: return LD_ENOENT;
    case INVALID: return LD_EINVAL;
    default: ck_abort_msg("unexpected ErrorCode %d", code); return 0;
    }
}

/* Parses p; returns the code (0 = accepted) and leaves the text in text. A
 * refusal returns the LD_E* code of its ErrorCode with the text as a fresh
 * error detail. */
static int parse(const Langdaug__V1__PullRequest *p, ldd_request_t *req, char *text)
{
    int code = 0;
    text[0] = '\0';
    ld_test_stale_detail();
    int rc = ldd_request_parse(&fx.cfg, fx.engine, p, req, &code, text, 512);
    if (rc == 0)
        return 0;
    ck_assert_int_gt(code, 0);
    ck_assert_int_eq(rc, ld_code_of(code));
    ck_assert_msg(text[0], "a refusal without a text");
    ld_expect_fresh_detail("ldd_request_parse");
    ck_assert_str_eq(ld_errdetail(), text);
    return code;
}

static void expect_refused(const Langdaug__V1__PullRequest *p, int want, const char *needle)
{
    ldd_request_t req;
    char text[512];
    ck_assert_int_eq(parse(p, &req, text), want);
    ck_assert_msg(strstr(text, needle), "'%s' lacks '%s'", text, needle);
}

START_TEST(batch_size_limits)
{
    ldd_request_t req;
    char text[512];
    Langdaug__V1__PullRequest p = ldd_fixture_pull(1, 8, "cam0", "cam1", NULL, 0);
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert_uint_eq(req.batch_size, 8);
    p.batch_size = 9;
    expect_refused(&p, LIMIT, "max_batch = 8");
    p.batch_size = 0;
    expect_refused(&p, INVALID, "batch_size");
    p.has_batch_size = 0;
    p.batch_size = 4;
    expect_refused(&p, INVALID, "batch_size");
}
END_TEST

/* A batch whose memory is beyond max_queue_memory is refused: at 1 MiB,
 * the largest batch that fits is floor(1 MiB / sample bytes). */
START_TEST(batch_beyond_queue_memory_is_refused)
{
    ck_assert_int_eq(ldd_config_set(&fx.cfg, "max_queue_memory", "1", "test"), 0);
    ck_assert_int_eq(ldd_config_set(&fx.cfg, "max_batch", "65536", "test"), 0);
    int64_t fits = (1 << 20) / ldd_sample_bytes(fx.engine);
    ck_assert_int_gt(fits, 8);
    ldd_request_t req;
    char text[512];
    Langdaug__V1__PullRequest p = ldd_fixture_pull(1, (uint32_t)fits, "cam0", "cam1", NULL, 0);
    ck_assert_int_eq(parse(&p, &req, text), 0);
    p.batch_size = (uint32_t)fits + 1;
    expect_refused(&p, LIMIT, "max_queue_memory = 1 MiB");
}
END_TEST

START_TEST(steps_limits)
{
    ldd_request_t req;
    char text[512];
    uint32_t steps[LD_LANGEVIN_MAX_SNAPSHOTS + 1];
    for (int i = 0; i <= LD_LANGEVIN_MAX_SNAPSHOTS; i++)
        steps[i] = (uint32_t)i;
    Langdaug__V1__PullRequest p = ldd_fixture_pull(1, 2, "cam0", "cam1", steps, LD_LANGEVIN_MAX_SNAPSHOTS);
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert_int_eq(req.n_steps, LD_LANGEVIN_MAX_SNAPSHOTS);
    p.n_steps = LD_LANGEVIN_MAX_SNAPSHOTS + 1;
    expect_refused(&p, INVALID, "more than");
    uint32_t at_max[] = { 10, 100 }, beyond[] = { 10, 101 }, flat[] = { 10, 10 }, down[] = { 20, 10 };
    p = ldd_fixture_pull(1, 2, "cam0", "cam1", at_max, 2);
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert_int_eq(req.steps[1], 100);
    p.steps = beyond;
    expect_refused(&p, LIMIT, "max_steps = 100");
    p.steps = flat;
    expect_refused(&p, INVALID, "strictly ascending");
    p.steps = down;
    expect_refused(&p, INVALID, "strictly ascending");
}
END_TEST

START_TEST(encoding_keep_seed_epoch)
{
    ldd_request_t req;
    char text[512];
    Langdaug__V1__PullRequest p = ldd_fixture_pull(1, 2, NULL, "cam1", NULL, 0);
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert_int_eq(req.encoding, LANGDAUG__V1__ENCODING__ENCODING_FLOAT32);
    ck_assert_int_eq(req.keep, -1);
    ck_assert(!req.has_seed && !req.epoch);
    p.has_encoding = p.has_keep = p.has_seed = p.has_epoch = 1;
    p.encoding = LANGDAUG__V1__ENCODING__ENCODING_UINT8;
    p.keep = LANGDAUG__V1__KEEP__KEEP_LUMINANCE;
    p.seed = 42;
    p.epoch = 1;
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert(req.encoding == LANGDAUG__V1__ENCODING__ENCODING_UINT8 && req.keep == LD_KEEP_LUMINANCE);
    ck_assert(req.has_seed && req.seed == 42 && req.epoch);
    p.encoding = (Langdaug__V1__Encoding)(LANGDAUG__V1__ENCODING__ENCODING_UINT8 + 1);
    expect_refused(&p, INVALID, "encoding");
    p.encoding = LANGDAUG__V1__ENCODING__ENCODING_FLOAT16;
    p.keep = (Langdaug__V1__Keep)2;
    expect_refused(&p, INVALID, "keep: unknown value 2");
}
END_TEST

START_TEST(pairs_resolve_or_name_the_pair)
{
    ldd_request_t req;
    char text[512];
    Langdaug__V1__PullRequest p = ldd_fixture_pull(1, 2, "cam2", "cam0", NULL, 0);
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert_int_eq(req.n_pairs, 1);
    int source = -1, route = -1;
    ck_assert(ldd_engine_find_source(fx.engine, "cam2", &source) && ldd_engine_find_target(fx.engine, "cam0", &route));
    ck_assert_int_eq(req.pairs[0].source_domain, source);
    ck_assert_int_eq(req.pairs[0].route, route);
    const int found_source = source, found_route = route;
    ck_assert(!ldd_engine_find_source(fx.engine, "camY", &source));
    ck_assert(!ldd_engine_find_target(fx.engine, "camX", &route));
    ck_assert(source == found_source && route == found_route); /* not found: left as they were */
    ck_assert(req.pairs[0].weight == 1 && req.total_weight == 1);
    p = ldd_fixture_pull(1, 2, NULL, "cam0", NULL, 0);
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert_int_eq(req.pairs[0].source_domain, -1);
    p = ldd_fixture_pull(1, 2, "cam1", "camX", NULL, 0);
    expect_refused(&p, UNKNOWN, "pair 'cam1:camX'");
    p = ldd_fixture_pull(1, 2, "camY", "cam0", NULL, 0);
    expect_refused(&p, UNKNOWN, "source domain 'camY'");
    p = ldd_fixture_pull(1, 2, "cam0", "cam0", NULL, 0); /* a model serves s != t only */
    expect_refused(&p, UNKNOWN, "pair 'cam0:cam0' is served by no loaded model (cam0 is served from: cam1, cam2)");
    p = ldd_fixture_pull(1, 2, "cam0", "", NULL, 0);
    expect_refused(&p, INVALID, "missing or overlong");
    p.pairs[0]->target = "cam1";
    p.pairs[0]->has_weight = 1;
    p.pairs[0]->weight = 0;
    expect_refused(&p, INVALID, "weight");
    p.pairs[0]->weight = NAN;
    expect_refused(&p, INVALID, "weight");
    p.pairs[0]->weight = 2.5;
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert(req.total_weight == 2.5);
}
END_TEST

/* No targets and no pairs: one any-source pair per served target, weighted
 * by the number of sources it is served from. More than LDD_MAX_PAIRS
 * targets and pairs are refused; exactly LDD_MAX_PAIRS pass. */
START_TEST(targets_default_and_count_limit)
{
    ldd_request_t req;
    char text[512];
    Langdaug__V1__PullRequest p = ldd_fixture_pull(1, 2, NULL, "cam0", NULL, 0);
    p.n_pairs = 0;
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert_int_eq(req.n_pairs, LDD_FIXTURE_DOMAINS);
    for (int i = 0; i < req.n_pairs; i++)
        ck_assert(req.pairs[i].source_domain == -1 && req.pairs[i].weight == LDD_FIXTURE_DOMAINS - 1);
    ck_assert(req.total_weight == LDD_FIXTURE_DOMAINS * (LDD_FIXTURE_DOMAINS - 1));
    char *targets[LDD_MAX_PAIRS + 1];
    for (int i = 0; i <= LDD_MAX_PAIRS; i++)
        targets[i] = "cam1";
    p.targets = targets;
    p.n_targets = LDD_MAX_PAIRS;
    ck_assert_int_eq(parse(&p, &req, text), 0);
    ck_assert_int_eq(req.n_pairs, LDD_MAX_PAIRS);
    p.n_targets = LDD_MAX_PAIRS + 1;
    expect_refused(&p, INVALID, "more than 64");
}
END_TEST

START_TEST(only_credits_means_no_field_but_credits)
{
    Langdaug__V1__PullRequest p = LANGDAUG__V1__PULL_REQUEST__INIT;
    p.has_credits = 1;
    p.credits = 3;
    ck_assert(ldd_request_only_credits(&p));
    int *flags[] = { &p.has_batch_size, &p.has_encoding, &p.has_seed, &p.has_epoch, &p.has_keep };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        *flags[i] = 1;
        ck_assert_msg(!ldd_request_only_credits(&p), "flag %zu", i);
        *flags[i] = 0;
    }
    uint32_t steps[] = { 1 };
    p.n_steps = 1;
    p.steps = steps;
    ck_assert(!ldd_request_only_credits(&p));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ldd_request");
    TCase *tc = ld_tcase("decode", 30);
    tcase_add_test(tc, decode_checks_size_frames_bytes_version_body);
    tcase_add_test(tc, hello_needs_version_one_in_range);
    tcase_add_test(tc, only_credits_means_no_field_but_credits);
    suite_add_tcase(s, tc);
    tc = ld_tcase("parse", 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, batch_size_limits);
    tcase_add_test(tc, batch_beyond_queue_memory_is_refused);
    tcase_add_test(tc, steps_limits);
    tcase_add_test(tc, encoding_keep_seed_epoch);
    tcase_add_test(tc, pairs_resolve_or_name_the_pair);
    tcase_add_test(tc, targets_default_and_count_limit);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
