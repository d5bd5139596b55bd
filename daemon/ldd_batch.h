/* ldd_batch: cuts a batch out of a session's finished jobs and encodes it
 * into the three frames of a Batch message (see proto/langdaug.proto).
 *
 * Samples are taken in the order the session module hands them out (job
 * order, and inside a job chain by chain, each chain's snapshots in step
 * order); this module only encodes them. The frames are fresh heap buffers whose
 * ownership passes to ZeroMQ (zmq_msg_init_data with free()), so the pixels
 * are copied once, from the workers' float buffers into the wire encoding. */
#ifndef LDD_BATCH_H
#define LDD_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "ldd_session.h"

typedef struct {
    void *header;   /* packed ServerMessage{batch} */
    size_t header_len;
    void *images;
    size_t images_len;
    void *masks;
    size_t masks_len;
    uint32_t n;
} ldd_batch_t;

/* Takes a batch of the request's batch_size samples from s in job order
 * (ldd_session_take_sample), frees the jobs used up, fills out;
 * credits_left goes in the header. Returns 0, or (out untouched, with a
 * detail) LD_ESTATE when s has no request, LD_EAGAIN when it has not a
 * batch of samples ready. OOM is fatal. */
int ldd_batch_cut(ldd_session_t *s, uint32_t credits_left, ldd_batch_t *out);
void ldd_batch_free(ldd_batch_t *b);

/* Encodes n float values in [-1,1] to the wire encoding (exposed for tests). */
void ldd_encode_pixels(int encoding, const float *src, size_t n, void *dst);
size_t ldd_encoding_size(int encoding);

#endif
