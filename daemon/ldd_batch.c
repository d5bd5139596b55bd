/* ldd_batch: batch assembly and pixel encodings (see ldd_batch.h). */
#include "ldd_batch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "langdaug.pb-c.h"
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

static void fill_meta(const ldd_session_t *s, const ldd_job_t *job, int chain, int snap,
                      Langdaug__V1__SampleMeta *m)
{
    const ldd_engine_t *e = job->engine;
    const ldd_chain_t *c = &job->chains[chain];
    langdaug__v1__sample_meta__init(m);
    m->source_domain = (char *)ld_dataset_domain(e->dataset, c->crop.domain);
    m->target_domain = (char *)s->req.pairs[c->target_name].target;
    m->has_step = 1;
    m->step = (uint32_t)job->params.snapshots[snap];
    m->has_energy = 1;
    m->energy = job->energy[(size_t)snap * job->n + chain];
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

void ldd_batch_cut(ldd_session_t *s, uint32_t credits_left, ldd_batch_t *out)
{
    const ldd_engine_t *e = s->ready->engine;
    uint32_t n = s->req.batch_size;
    size_t css = (size_t)e->channels * e->size * e->size, ss = (size_t)e->size * e->size;
    size_t esize = ldd_encoding_size(s->req.encoding);
    memset(out, 0, sizeof *out);
    out->n = n;
    out->images_len = n * css * esize;
    out->masks_len = n * ss;
    out->images = ldd_xmalloc(out->images_len);
    out->masks = ldd_xmalloc(out->masks_len);
    Langdaug__V1__SampleMeta *metas = ldd_xmalloc(n * sizeof *metas);
    Langdaug__V1__SampleMeta **mptr = ldd_xmalloc(n * sizeof *mptr);
    /* Jobs used up are unlinked but freed only after packing: the metadata
     * strings point into their engine. */
    ldd_job_t *used = NULL;
    for (uint32_t k = 0; k < n;) {
        ldd_job_t *job = s->ready;
        int total = ldd_job_samples(job), ns = job->params.n_snapshots;
        for (; job->consumed < total && k < n; job->consumed++, k++) {
            int chain = job->consumed / ns, snap = job->consumed % ns;
            const float *img = job->images + ((size_t)snap * job->n + chain) * css;
            ldd_encode_pixels(s->req.encoding, img, css, (uint8_t *)out->images + k * css * esize);
            memcpy((uint8_t *)out->masks + k * ss, job->masks + (size_t)chain * ss, ss);
            fill_meta(s, job, chain, snap, &metas[k]);
            mptr[k] = &metas[k];
        }
        if (job->consumed == total) {
            s->ready = job->next;
            s->next_ready_seq = job->seq + 1;
            job->next = used;
            used = job;
        }
    }
    /* Jobs at the head that failed (nothing to consume) are skipped too. */
    while (s->ready && s->ready->seq == s->next_ready_seq && s->ready->consumed == ldd_job_samples(s->ready)) {
        ldd_job_t *job = s->ready;
        s->ready = job->next;
        s->next_ready_seq = job->seq + 1;
        job->next = used;
        used = job;
    }
    Langdaug__V1__Batch batch = LANGDAUG__V1__BATCH__INIT;
    batch.has_sequence = batch.has_n = batch.has_channels = batch.has_size = 1;
    batch.sequence = s->batch_seq++;
    batch.n = n;
    batch.channels = (uint32_t)e->channels;
    batch.size = (uint32_t)e->size;
    batch.has_encoding = 1;
    batch.encoding = s->req.encoding;
    batch.has_images_bytes = batch.has_masks_bytes = 1;
    batch.images_bytes = out->images_len;
    batch.masks_bytes = out->masks_len;
    batch.n_samples = n;
    batch.samples = mptr;
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
    free(metas);
    free(mptr);
    while (used) {
        ldd_job_t *next = used->next;
        ldd_job_free(&used);
        used = next;
    }
}

void ldd_batch_free(ldd_batch_t *b)
{
    free(b->header);
    free(b->images);
    free(b->masks);
    memset(b, 0, sizeof *b);
}
