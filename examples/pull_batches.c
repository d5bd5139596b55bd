/* pull_batches: a minimal trainer-side consumer written with liblangdaug.
 *
 *   pull_batches ENDPOINTS TARGETS [BATCHES]
 *   e.g. pull_batches tcp://127.0.0.1:5555,tcp://127.0.0.1:5565 cam1,cam2 20
 *
 * Pulls BATCHES batches (default 10) of 8 samples from one or more samplers,
 * and "consumes" them the way a training step would: converts each image to
 * float and accumulates, per (source -> target) pair, the mean pixel value
 * and the share of foreground mask pixels. A real trainer would hand the
 * same buffers to its network instead. Prints one line per pair, then the
 * per-sampler counters. Build: `make` (-> build/examples/pull_batches), or
 * on an installed system: cc pull_batches.c $(pkg-config --cflags --libs langdaug). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ld_client.h"
#include "ld_error.h"

#define MAX_LIST 16
#define MAX_PAIRS 64

typedef struct {
    char key[2 * 64 + 3];  /* "source>target" */
    unsigned long samples;
    double pixel_sum, pixel_count;
    double foreground, mask_pixels;
} pair_stats_t;

/* Splits a comma-separated list in place; returns the count. */
static int split(char *csv, const char **out)
{
    int n = 0;
    for (char *tok = strtok(csv, ","); tok && n < MAX_LIST; tok = strtok(NULL, ","))
        out[n++] = tok;
    return n;
}

static pair_stats_t *find_pair(pair_stats_t *pairs, int *n_pairs, const ld_sample_meta_t *m)
{
    char key[sizeof pairs->key];
    snprintf(key, sizeof key, "%s>%s", m->source_domain, m->target_domain);
    for (int i = 0; i < *n_pairs; i++)
        if (!strcmp(pairs[i].key, key))
            return &pairs[i];
    if (*n_pairs == MAX_PAIRS)
        return NULL;
    pair_stats_t *p = &pairs[(*n_pairs)++];
    memset(p, 0, sizeof *p);
    memcpy(p->key, key, sizeof key);
    return p;
}

/* What a training step would do with the batch, reduced to statistics. */
static int consume(const ld_batch_t *b, float *pixels, pair_stats_t *pairs, int *n_pairs)
{
    size_t image_len = (size_t)b->channels * b->size * b->size;
    size_t mask_len = (size_t)b->size * b->size;
    for (uint32_t i = 0; i < b->n; i++) {
        pair_stats_t *p = find_pair(pairs, n_pairs, &b->meta[i]);
        if (!p)
            return -1;
        ld_batch_image_float(b, i, pixels);
        for (size_t k = 0; k < image_len; k++)
            p->pixel_sum += pixels[k];
        p->pixel_count += (double)image_len;
        const uint8_t *mask = b->masks + i * mask_len;
        for (size_t k = 0; k < mask_len; k++)
            p->foreground += mask[k] != 0;
        p->mask_pixels += (double)mask_len;
        p->samples++;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s ENDPOINTS TARGETS [BATCHES]\n", argv[0]);
        return 2;
    }
    const char *endpoints[MAX_LIST], *targets[MAX_LIST];
    ld_client_opts_t opts;
    ld_client_opts_init(&opts);
    opts.endpoints = endpoints;
    opts.n_endpoints = split(argv[1], endpoints);
    opts.targets = targets;
    opts.n_targets = split(argv[2], targets);
    opts.batch_size = 8;
    opts.timeout_ms = 60000;
    long batches = argc == 4 ? strtol(argv[3], NULL, 10) : 10;
    if (batches < 1) {
        fprintf(stderr, "%s: BATCHES must be a positive number\n", argv[0]);
        return 2;
    }

    ld_client_t *client;
    int rc = ld_client_new(&opts, &client);
    if (rc) {
        fprintf(stderr, "%s: %s: %s\n", argv[0], ld_strerror(rc), ld_errdetail());
        return 1;
    }
    pair_stats_t pairs[MAX_PAIRS];
    int n_pairs = 0;
    float *pixels = NULL;
    for (long got = 0; got < batches;) {
        ld_batch_t *b;
        rc = ld_client_next(client, &b);
        if (rc == LD_EPROTO)
            continue; /* a malformed message was dropped; the client goes on */
        if (rc)
            break;
        if (!pixels)
            pixels = malloc(sizeof *pixels * b->channels * b->size * b->size);
        if (!pixels || consume(b, pixels, pairs, &n_pairs)) {
            ld_batch_destroy(&b);
            rc = LD_ENOMEM;
            break;
        }
        ld_batch_destroy(&b);
        got++;
    }
    if (rc)
        fprintf(stderr, "%s: %s: %s\n", argv[0], ld_strerror(rc), ld_errdetail());
    for (int i = 0; i < n_pairs; i++)
        printf("pair %-24s samples %5lu  mean pixel %+.4f  foreground %.4f\n", pairs[i].key, pairs[i].samples,
               pairs[i].pixel_sum / pairs[i].pixel_count, pairs[i].foreground / pairs[i].mask_pixels);
    for (int e = 0; e < ld_client_endpoints(client); e++) {
        ld_endpoint_stats_t st;
        if (ld_client_stats(client, e, &st) == 0)
            printf("sampler %s: %s, %llu batches, %llu samples\n", st.endpoint, st.state,
                   (unsigned long long)st.batches, (unsigned long long)st.samples);
    }
    free(pixels);
    ld_client_destroy(&client);
    return rc ? 1 : 0;
}
