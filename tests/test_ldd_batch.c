/* test_ldd_batch: cutting and encoding a Batch (ldd_batch.h): the pixel
 * encodings (float16 rounding to nearest even, subnormals and overflow;
 * uint8 mapping and clamping; float32 as is), and a cut from finished jobs:
 * batch_size samples in job order across jobs, chain by chain, snapshots
 * in step order, with masks, metadata and a header (sequence, credits
 * left, sizes) that match; jobs used up are freed, the rest stays; no cut
 * without a full batch ready. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldd_batch.h"
#include "ldd_fixture.h"

#define F16 LANGDAUG__V1__ENCODING__ENCODING_FLOAT16
#define U8 LANGDAUG__V1__ENCODING__ENCODING_UINT8
#define F32 LANGDAUG__V1__ENCODING__ENCODING_FLOAT32

static uint16_t half(float f)
{
    uint16_t h;
    ldd_encode_pixels(F16, &f, 1, &h);
    return h;
}

static uint8_t byte(float f)
{
    uint8_t b;
    ldd_encode_pixels(U8, &f, 1, &b);
    return b;
}

START_TEST(float16_rounds_to_nearest_even)
{
    ck_assert_uint_eq(half(0.0f), 0x0000);
    ck_assert_uint_eq(half(-0.0f), 0x8000);
    ck_assert_uint_eq(half(1.0f), 0x3c00);
    ck_assert_uint_eq(half(-1.0f), 0xbc00);
    ck_assert_uint_eq(half(0.5f), 0x3800);
    ck_assert_uint_eq(half(65504.0f), 0x7bff);
    ck_assert_uint_eq(half(1e6f), 0x7c00);              /* overflow: infinity */
    /* halfway between 1 and 1 + 2^-10: to the even one, 1; just above: up */
    ck_assert_uint_eq(half(1.0f + 0x1p-11f), 0x3c00);
    ck_assert_uint_eq(half(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    /* halfway between 1 + 2^-10 and 1 + 2^-9: to the even one, up */
    ck_assert_uint_eq(half(1.0f + 0x1p-10f + 0x1p-11f), 0x3c02);
    ck_assert_uint_eq(half(0x1p-24f), 0x0001);          /* smallest subnormal */
    ck_assert_uint_eq(half(0x1p-25f), 0x0000);          /* half of it: to even, 0 */
    ck_assert_uint_eq(half(0x1p-25f * 3), 0x0002);      /* 1.5 of it: to even, 2 */
    ck_assert_uint_eq(half(0x1p-14f), 0x0400);          /* smallest normal */
    ck_assert_uint_eq(half(0x1p-14f - 0x1p-24f), 0x03ff);
    ck_assert_uint_eq(half(0x1p-30f), 0x0000);
}
END_TEST

START_TEST(uint8_maps_and_clamps)
{
    ck_assert_uint_eq(byte(-1.0f), 0);
    ck_assert_uint_eq(byte(1.0f), 255);
    ck_assert_uint_eq(byte(0.0f), 128); /* 127.5 to even */
    ck_assert_uint_eq(byte(-2.0f), 0);
    ck_assert_uint_eq(byte(3.0f), 255);
    ck_assert_uint_eq(byte(-1.0f + 1.0f / 127.5f), 1);
    float src[3] = { 0.25f, -0.5f, 1.0f }, dst[3];
    ldd_encode_pixels(F32, src, 3, dst);
    ck_assert(!memcmp(src, dst, sizeof src));
    ck_assert_uint_eq(ldd_encoding_size(F16), 2);
    ck_assert_uint_eq(ldd_encoding_size(U8), 1);
    ck_assert_uint_eq(ldd_encoding_size(F32), 4);
}
END_TEST

static ldd_fixture_t fx;

static void setup(void)
{
    ldd_fixture_open(&fx, NULL);
}

static void teardown(void)
{
    ldd_fixture_close(&fx);
}

static ldd_session_t *session(ldd_sessions_t *t, uint32_t batch, int encoding)
{
    Langdaug__V1__PullRequest p = ldd_fixture_pull(0, batch, "cam2", "cam1", NULL, 0);
    p.has_encoding = 1;
    p.encoding = (Langdaug__V1__Encoding)encoding;
    ldd_request_t req = ldd_fixture_request(&fx, &p);
    ldd_session_t *s = ldd_sessions_add(t, "a", 1, 0);
    ldd_session_set_request(s, &req, fx.engine, 3);
    ldd_session_grant(s, 4);
    return s;
}

/* A finished job of n chains for s, chains with ids from first_id. */
static void finished_job(ldd_session_t *s, int n, uint64_t first_id)
{
    ldd_job_t *job = ldd_job_new(fx.engine, 0, n);
    job->params = *ldd_session_view(s).params;
    for (int c = 0; c < n; c++) {
        job->chains[c].chain_id = first_id + (uint64_t)c;
        job->chains[c].crop = (ld_crop_t){ .domain = 2, .item = 1, .x = c, .y = 2 * c, .size = LDD_FIXTURE_SIZE };
    }
    ldd_session_submit(s, job);
    ldd_fixture_finish(job);
    ldd_session_add_ready(s, job);
}

/* Checks sample k of batch b against the tag of (seq, chain, snap). */
static void expect_sample(const ldd_batch_t *b, const Langdaug__V1__Batch *h, uint32_t k, uint64_t seq, int chain,
                          int snap)
{
    size_t ss = LDD_FIXTURE_SIZE * LDD_FIXTURE_SIZE, css = ss * LDD_FIXTURE_CHANNELS;
    float tag = ldd_fixture_tag(seq, chain, snap), px;
    memcpy(&px, (const uint8_t *)b->images + (k * css + css - 1) * sizeof(float), sizeof px);
    ck_assert_msg(px == tag, "sample %u: pixel %g, want %g", k, px, tag);
    ck_assert_uint_eq(((const uint8_t *)b->masks)[k * ss + ss - 1], (uint8_t)chain);
    const Langdaug__V1__SampleMeta *m = h->samples[k];
    ck_assert(m->energy == tag);
    ck_assert_uint_eq(m->chain_id, 100 + seq * 10 + (uint64_t)chain);
    ck_assert_uint_eq(m->step, (uint32_t)fx.engine->defaults.snapshots[snap]);
    ck_assert_str_eq(m->source_domain, "cam2");
    ck_assert_str_eq(m->target_domain, "cam1");
    ck_assert(m->crop_x == chain && m->crop_y == 2 * chain && m->source_item == 1);
}

static Langdaug__V1__Batch *header(const ldd_batch_t *b, Langdaug__V1__ServerMessage **msg)
{
    *msg = langdaug__v1__server_message__unpack(NULL, b->header_len, b->header);
    ck_assert_ptr_nonnull(*msg);
    ck_assert_int_eq((*msg)->body_case, LANGDAUG__V1__SERVER_MESSAGE__BODY_BATCH);
    return (*msg)->batch;
}

START_TEST(cut_takes_job_order_and_describes_it)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_session_t *bare = ldd_sessions_add(t, "b", 1, 0), *s = session(t, 3, F32);
    ldd_batch_t b;
    ld_expect_err(ldd_batch_cut(bare, 9, &b), LD_ESTATE); /* no request */
    ld_expect_err(ldd_batch_cut(s, 9, &b), LD_EAGAIN);
    finished_job(s, 2, 100);      /* job 0: chains 100, 101; two snapshots each */
    finished_job(s, 1, 110);      /* job 1: chain 110 */
    ck_assert_int_eq(ldd_batch_cut(s, 9, &b), 0);
    Langdaug__V1__ServerMessage *msg;
    Langdaug__V1__Batch *h = header(&b, &msg);
    ck_assert(h->sequence == 0 && h->n == 3 && h->n_samples == 3 && h->credits_left == 9);
    ck_assert(h->channels == LDD_FIXTURE_CHANNELS && h->size == LDD_FIXTURE_SIZE && h->mask_classes == 2);
    ck_assert_uint_eq(h->images_bytes, b.images_len);
    ck_assert_uint_eq(b.images_len, 3u * LDD_FIXTURE_CHANNELS * LDD_FIXTURE_SIZE * LDD_FIXTURE_SIZE * 4);
    ck_assert_uint_eq(b.masks_len, 3u * LDD_FIXTURE_SIZE * LDD_FIXTURE_SIZE);
    expect_sample(&b, h, 0, 0, 0, 0);
    expect_sample(&b, h, 1, 0, 0, 1);
    expect_sample(&b, h, 2, 0, 1, 0);
    langdaug__v1__server_message__free_unpacked(msg, NULL);
    ldd_batch_free(&b);
    ck_assert_int_eq(ldd_session_held_samples(s), 3);
    ck_assert_int_eq(ldd_batch_cut(s, 8, &b), 0);
    h = header(&b, &msg);
    ck_assert(h->sequence == 1 && h->credits_left == 8);
    expect_sample(&b, h, 0, 0, 1, 1);
    expect_sample(&b, h, 1, 1, 0, 0);
    expect_sample(&b, h, 2, 1, 0, 1);
    langdaug__v1__server_message__free_unpacked(msg, NULL);
    ldd_batch_free(&b);
    ck_assert_int_eq(ldd_session_held_samples(s), 0);
    ld_expect_err(ldd_batch_cut(s, 7, &b), LD_EAGAIN);
    ldd_sessions_destroy(&t);
}
END_TEST

START_TEST(cut_encodes_as_asked)
{
    ldd_sessions_t *t = ldd_sessions_new(4, 1 << 30);
    ldd_session_t *s = session(t, 2, F16);
    finished_job(s, 1, 100);
    ldd_batch_t b;
    ck_assert_int_eq(ldd_batch_cut(s, 0, &b), 0);
    size_t css = LDD_FIXTURE_CHANNELS * LDD_FIXTURE_SIZE * LDD_FIXTURE_SIZE;
    ck_assert_uint_eq(b.images_len, 2 * css * 2);
    uint16_t px;
    memcpy(&px, (const uint8_t *)b.images + css * 2, sizeof px);
    ck_assert_uint_eq(px, half(ldd_fixture_tag(0, 0, 1)));
    ldd_batch_free(&b);
    ldd_sessions_destroy(&t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ldd_batch");
    TCase *tc = ld_tcase("encode", 30);
    tcase_add_test(tc, float16_rounds_to_nearest_even);
    tcase_add_test(tc, uint8_maps_and_clamps);
    suite_add_tcase(s, tc);
    tc = ld_tcase("cut", 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, cut_takes_job_order_and_describes_it);
    tcase_add_test(tc, cut_encodes_as_asked);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
