/* ldd_batch: batch assembly and pixel encodings (see ldd_batch.h). */
#include "ldd_batch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "langdaug.pb-c.h"
#include "ld_error.h"
#include "ldd_mem.h"

/* IEEE binary16, round to nearest even; the input is finite and in [-1,1]
 * (Langevin clamps), but any finite value converts correctly. */
static uint16_t float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffffu;
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        if (exp < -10)
            return (uint16_t)sign;
        mant |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)exp << 10) | (mant >> 13), rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1)))
        half++; /* a carry into the exponent is the right result */
    return (uint16_t)(sign | half);
}

size_t ldd_encoding_size(int encoding)
{
    switch (encoding) {
    case LANGDAUG__V1__ENCODING__ENCODING_FLOAT16: return 2;
    case LANGDAUG__V1__ENCODING__ENCODING_UINT8: return 1;
    default: return 4;
    }
}

void ldd_encode_pixels(int encoding, const float *src, size_t n, void *dst)
{
    if (encoding == LANGDAUG__V1__ENCODING__ENCODING_FLOAT16) {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++)
            d[i] = float_to_half(src[i]);
    } else if (encoding == LANGDAUG__V1__ENCODING__ENCODING_UINT8) {
        uint8_t *d = dst;
        for (size_t i = 0; i < n; i++) {
            float v = (src[i] + 1.0f) * 127.5f;
            d[i] = (uint8_t)(v <= 0 ? 0 : v >= 255 ? 255 : lrintf(v));
        }
    } else {
        memcpy(dst, src, n * sizeof(float));
    }
}

static void fill_meta(const ldd_request_t *req, const ldd_sample_t *smp, Langdaug__V1__SampleMeta *m)
{
    const ldd_job_t *job = smp->job;
    const ldd_engine_t *e = job->engine;
    const ldd_chain_t *c = &job->chains[smp->chain];
    langdaug__v1__sample_meta__init(m);
    m->source_domain = (char *)ld_dataset_domain(e->dataset, c->crop.domain);
    m->target_domain = (char *)req->pairs[c->target_name].target;
    m->has_step = 1;
    m->step = (uint32_t)job->params.snapshots[smp->snap];
    m->has_energy = 1;
    m->energy = job->energy[(size_t)smp->snap * job->n + smp->chain];
    m->has_chain_id = m->has_seed = 1;
    m->chain_id = c->chain_id;
    m->seed = job->params.seed;
    m->source_file = (char *)ld_dataset_item_name(e->dataset, c->crop.domain, c->crop.item);
    m->has_crop_x = m->has_crop_y = 1;
    m->crop_x = c->crop.x;
    m->crop_y = c->crop.y;
    m->model_hash = (char *)e->models[job->model].hash;
    m->has_source_item = 1;
    m->source_item = (uint32_t)c->crop.item;
    m->has_epoch = 1;
    m->epoch = c->epoch;
}

/* Packs the Batch header of out (n samples of e, metadata metas). */
static void pack_header(const ldd_engine_t *e, const ldd_request_t *req, uint64_t seq, uint32_t credits_left,
                        Langdaug__V1__SampleMeta **metas, ldd_batch_t *out)
{
    Langdaug__V1__Batch batch = LANGDAUG__V1__BATCH__INIT;
    batch.has_sequence = batch.has_n = batch.has_channels = batch.has_size = 1;
    batch.sequence = seq;
    batch.n = out->n;
    batch.channels = (uint32_t)e->channels;
    batch.size = (uint32_t)e->size;
    batch.has_encoding = 1;
    batch.encoding = req->encoding;
    batch.has_images_bytes = batch.has_masks_bytes = 1;
    batch.images_bytes = out->images_len;
    batch.masks_bytes = out->masks_len;
    batch.n_samples = out->n;
    batch.samples = metas;
    batch.has_credits_left = 1;
    batch.credits_left = credits_left;
    batch.has_mask_classes = 1;
    batch.mask_classes = (uint32_t)e->classes;
    Langdaug__V1__ServerMessage msg = LANGDAUG__V1__SERVER_MESSAGE__INIT;
    msg.has_version = 1;
    msg.version = LANGDAUG__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT;
    msg.body_case = LANGDAUG__V1__SERVER_MESSAGE__BODY_BATCH;
    msg.batch = &batch;
    out->header_len = langdaug__v1__server_message__get_packed_size(&msg);
    out->header = ldd_xmalloc(out->header_len);
    langdaug__v1__server_message__pack(&msg, out->header);
}

/* The frames of n samples of e in the request's encoding. */
static void alloc_frames(const ldd_engine_t *e, const ldd_request_t *req, uint32_t n, ldd_batch_t *out)
{
    out->n = n;
    out->images_len = (size_t)n * e->channels * e->size * e->size * ldd_encoding_size(req->encoding);
    out->masks_len = (size_t)n * e->size * e->size;
    out->images = ldd_xmalloc(out->images_len);
    out->masks = ldd_xmalloc(out->masks_len);
}

/* Sample k of the batch: pixels in the wire encoding, mask, metadata. */
static void put_sample(const ldd_request_t *req, const ldd_sample_t *smp, uint32_t k, ldd_batch_t *out,
                       Langdaug__V1__SampleMeta *meta)
{
    const ldd_job_t *job = smp->job;
    const ldd_engine_t *e = job->engine;
    size_t ss = (size_t)e->size * e->size, css = (size_t)e->channels * ss, esize = ldd_encoding_size(req->encoding);
    const float *img = job->images + ((size_t)smp->snap * job->n + smp->chain) * css;
    ldd_encode_pixels(req->encoding, img, css, (uint8_t *)out->images + k * css * esize);
    memcpy((uint8_t *)out->masks + k * ss, job->masks + (size_t)smp->chain * ss, ss);
    fill_meta(req, smp, meta);
}

int ldd_batch_cut(ldd_session_t *s, uint32_t credits_left, ldd_batch_t *out)
{
    const ldd_request_t *req = ldd_session_request(s);
    if (!req)
        return ld_seterr(LD_ESTATE, "batch: the session has no request");
    if (ldd_session_ready_samples(s) < req->batch_size)
        return ld_seterr(LD_EAGAIN, "batch: %lld of %u samples ready", (long long)ldd_session_ready_samples(s),
                         req->batch_size);
    uint32_t n = req->batch_size;
    memset(out, 0, sizeof *out);
    Langdaug__V1__SampleMeta *metas = ldd_xmalloc(n * sizeof *metas);
    Langdaug__V1__SampleMeta **mptr = ldd_xmalloc(n * sizeof *mptr);
    /* Jobs used up are freed only after packing: the metadata strings
     * point into their engine (one engine per request: a reload installs
     * the requests anew). */
    ldd_job_t *used = NULL;
    const ldd_engine_t *e = NULL;
    for (uint32_t k = 0; k < n; k++) {
        ldd_sample_t smp;
        ldd_session_take_sample(s, &smp, &used);
        if (k == 0)
            alloc_frames(e = smp.job->engine, req, n, out);
        put_sample(req, &smp, k, out, &metas[k]);
        mptr[k] = &metas[k];
    }
    pack_header(e, req, ldd_session_next_batch_seq(s), credits_left, mptr, out);
    free(metas);
    free(mptr);
    while (used) {
        ldd_job_t *next = used->next;
        ldd_job_free(&used);
        used = next;
    }
    return 0;
}

void ldd_batch_free(ldd_batch_t *b)
{
    free(b->header);
    free(b->images);
    free(b->masks);
    memset(b, 0, sizeof *b);
}
