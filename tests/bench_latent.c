/* bench_latent: samples/s of the latent sampler against the pixel sampler at
 * the same image side S and chain length K (issue 12's target: latent >= 10
 * samples/s on 2 cores at S = 256, K = 30, and >= 10x the pixel sampler).
 *
 *   bench_latent [--size 256] [--steps 30] [--batch 8] [--threads 2] [--seconds 4]
 *                [--pixel-widths 32,64,128,128,256] [--ae-widths 32,64,128]
 *                [--latent-channels 8] [--latent-widths 32,64,128]
 *
 * A sample is one chain's snapshot at step K, as a sampler delivers it: the
 * pixel sampler (ld_langevin_sample) runs the reference energy network on
 * S x S RGB images; the latent sampler (ld_langevin_sample_latent) encodes
 * the S x S start, runs K steps of the latent energy network on the Z x S/f
 * x S/f latent and decodes the snapshot, so its time includes the
 * autoencoder. Random weights, images and masks (speed does not depend on
 * them), noise 0.005. After one warm-up call each sampler is timed call by
 * call, at least 2 calls and until --seconds have passed, and the best call
 * counts (other processes only ever slow a call down). The pixel sampler
 * runs at most 2 chains a call: at S = 256 one call of 8 would take minutes;
 * samples/s is per chain either way. The latent sampler's time is then split
 * into the autoencoder's encode and decode of the batch (each timed alone,
 * best of MIN_CALLS) and the chain's K energy steps (the rest of the best
 * call): where the time goes is what the speed work needs to know. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ld_ae.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_langevin.h"
#include "ld_latent.h"
#include "ld_rng.h"

#define MIN_CALLS 2
#define PIXEL_MAX_BATCH 2

typedef struct {
    int size, steps, batch, threads, latent_channels;
    double seconds;
    const char *pixel_widths, *ae_widths, *latent_widths;
} opts_t;

/* What one sampler needs: models, workspaces and chain inputs. */
typedef struct {
    ld_ebm_arch_t arch;
    ld_ebm_t *ebm;
    ld_ebm_ws_t *ws;
    ld_ae_t *ae; /* NULL: the pixel sampler */
    ld_ae_ws_t *ae_ws;
    int n;
    float *start, *snaps;
    uint8_t *mask;
    int32_t *target;
    uint64_t *chain;
} sampler_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int make_autoencoder(sampler_t *s, const opts_t *o)
{
    ld_ae_arch_t a;
    memset(&a, 0, sizeof a);
    a.image_channels = 3;
    a.size = o->size;
    a.latent_channels = o->latent_channels;
    int rc;
    if ((rc = ld_ae_arch_set_widths(&a, o->ae_widths)) || (rc = ld_ae_arch_validate(&a)) ||
        (rc = ld_ae_new(&a, &s->ae)) || (rc = ld_ae_ws_new(&a, s->n, o->threads, &s->ae_ws)))
        return rc;
    ld_ae_init_random(s->ae, 5);
    s->arch.image_channels = a.latent_channels;
    s->arch.size = a.size / a.factor;
    return LD_OK;
}

static int setup(sampler_t *s, const opts_t *o, int latent)
{
    memset(s, 0, sizeof *s);
    s->n = latent ? o->batch : (o->batch < PIXEL_MAX_BATCH ? o->batch : PIXEL_MAX_BATCH);
    s->arch.image_channels = 3;
    s->arch.size = o->size;
    s->arch.mask_classes = 2;
    int rc = latent ? make_autoencoder(s, o) : LD_OK;
    if (rc || (rc = ld_ebm_arch_set_widths(&s->arch, latent ? o->latent_widths : o->pixel_widths)) ||
        (rc = ld_ebm_arch_set_domains(&s->arch, "A,B,C")) || (rc = ld_ebm_arch_validate(&s->arch)) ||
        (rc = ld_ebm_new(&s->arch, &s->ebm)) || (rc = ld_ebm_ws_new(&s->arch, s->n, o->threads, &s->ws)))
        return rc;
    ld_ebm_init_random(s->ebm, 7);
    size_t q = (size_t)o->size * (size_t)o->size, n = (size_t)s->n;
    s->start = malloc(n * 3 * q * sizeof(float));
    s->snaps = malloc(n * 3 * q * sizeof(float));
    s->mask = malloc(n * q);
    s->target = malloc(n * sizeof(int32_t));
    s->chain = malloc(n * sizeof(uint64_t));
    if (!s->start || !s->snaps || !s->mask || !s->target || !s->chain)
        return ld_seterr(LD_ENOMEM, "out of memory");
    ld_rng_t r;
    ld_rng_init(&r, 3, 0);
    for (size_t i = 0; i < n * 3 * q; i++)
        s->start[i] = (float)(2.0 * ld_rng_uniform(&r) - 1.0);
    for (size_t i = 0; i < n * q; i++)
        s->mask[i] = (uint8_t)((i / (size_t)o->size / 8 + i % (size_t)o->size / 8) % 2);
    for (int c = 0; c < s->n; c++) {
        s->target[c] = c % 3;
        s->chain[c] = (uint64_t)c;
    }
    return LD_OK;
}

static void teardown(sampler_t *s)
{
    ld_ebm_ws_destroy(&s->ws);
    ld_ebm_destroy(&s->ebm);
    ld_ae_ws_destroy(&s->ae_ws);
    ld_ae_destroy(&s->ae);
    free(s->start), free(s->snaps), free(s->mask), free(s->target), free(s->chain);
}

static int call(sampler_t *s, const ld_langevin_params_t *p)
{
    if (s->ae)
        return ld_langevin_sample_latent(s->ebm, s->ws, s->ae, s->ae_ws, p, LD_KEEP_NONE, s->n, s->start, s->mask,
                                         s->target, s->chain, s->snaps, NULL, NULL, NULL);
    return ld_langevin_sample(s->ebm, s->ws, p, LD_KEEP_NONE, s->n, s->start, s->mask, s->target, s->chain,
                              s->snaps, NULL, NULL, NULL);
}

/* Best samples/s over the timed calls, or -1 on error. */
static double samples_per_s(sampler_t *s, const opts_t *o)
{
    ld_langevin_params_t p = { .step_size = 0.01f, .noise = 0.005f, .steps = 1, .n_snapshots = 1, .seed = 1 };
    p.snapshots[0] = 1;
    if (call(s, &p)) /* warm-up */
        return -1;
    p.steps = p.snapshots[0] = o->steps;
    double best = 0, start = now_s();
    for (int calls = 0; calls < MIN_CALLS || now_s() - start < o->seconds; calls++) {
        double t0 = now_s();
        if (call(s, &p))
            return -1;
        double rate = s->n / (now_s() - t0);
        best = rate > best ? rate : best;
    }
    return best;
}

/* Best seconds of one call of fn over MIN_CALLS calls, or -1 on error. */
static double best_seconds(int (*fn)(sampler_t *, float *, float *), sampler_t *s, float *a, float *b)
{
    double best = -1;
    for (int calls = 0; calls < MIN_CALLS; calls++) {
        double t0 = now_s();
        if (fn(s, a, b))
            return -1;
        double t = now_s() - t0;
        best = best < 0 || t < best ? t : best;
    }
    return best;
}

static int encode(sampler_t *s, float *tmp, float *z)
{
    return ld_latent_encode_rgb(s->ae, s->ae_ws, s->n, s->start, tmp, z);
}

static int decode(sampler_t *s, float *z, float *img)
{
    return ld_latent_decode(s->ae, s->ae_ws, s->n, z, img);
}

/* The latent sampler's samples/s split into encode, K energy steps, decode. */
static int print_phases(sampler_t *s, double rate)
{
    size_t lat = ld_ae_arch_latent_numel(ld_ae_arch(s->ae)) * (size_t)s->n;
    float *z = calloc(lat, sizeof(float));
    if (!z)
        return ld_seterr(LD_ENOMEM, "out of memory");
    double enc = best_seconds(encode, s, s->snaps, z), dec = enc < 0 ? -1 : best_seconds(decode, s, z, s->snaps);
    free(z);
    if (enc < 0 || dec < 0)
        return LD_EINVAL;
    double per = 1000.0 / rate, e = 1000.0 * enc / s->n, d = 1000.0 * dec / s->n, chain = per - e - d;
    printf("          per sample %.1f ms: encode %.1f ms (%.0f%%), energy steps %.1f ms (%.0f%%), "
           "decode %.1f ms (%.0f%%)\n", per, e, 100 * e / per, chain, 100 * chain / per, d, 100 * d / per);
    return LD_OK;
}

static double measure(const opts_t *o, int latent)
{
    sampler_t s;
    int rc = setup(&s, o, latent);
    double rate = rc ? -1 : samples_per_s(&s, o);
    if (rate >= 0)
        printf("  %-7s %3d chains a call %8.2f samples/s\n", latent ? "latent" : "pixel", s.n, rate);
    if (rate >= 0 && latent && print_phases(&s, rate))
        rate = -1;
    if (rate < 0)
        fprintf(stderr, "bench_latent: %s sampler: %s: %s\n", latent ? "latent" : "pixel",
                ld_strerror(rc ? rc : LD_EINVAL), ld_errdetail());
    teardown(&s);
    return rate;
}

static int parse_opts(int argc, char **argv, opts_t *o)
{
    *o = (opts_t){ .size = 256, .steps = 30, .batch = 8, .threads = 2, .latent_channels = 8, .seconds = 4,
                   .pixel_widths = "32,64,128,128,256", .ae_widths = "32,64,128", .latent_widths = "32,64,128" };
    static const struct option longopts[] = {
        { "size", required_argument, NULL, 's' },          { "steps", required_argument, NULL, 'k' },
        { "batch", required_argument, NULL, 'b' },         { "threads", required_argument, NULL, 't' },
        { "seconds", required_argument, NULL, 'S' },       { "pixel-widths", required_argument, NULL, 'p' },
        { "ae-widths", required_argument, NULL, 'a' },     { "latent-channels", required_argument, NULL, 'z' },
        { "latent-widths", required_argument, NULL, 'l' }, { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 's': o->size = atoi(optarg); break;
        case 'k': o->steps = atoi(optarg); break;
        case 'b': o->batch = atoi(optarg); break;
        case 't': o->threads = atoi(optarg); break;
        case 'S': o->seconds = atof(optarg); break;
        case 'p': o->pixel_widths = optarg; break;
        case 'a': o->ae_widths = optarg; break;
        case 'z': o->latent_channels = atoi(optarg); break;
        case 'l': o->latent_widths = optarg; break;
        default: return 2;
        }
    }
    if (o->size < 8 || o->steps < 1 || o->batch < 1 || o->threads < 1 || o->latent_channels < 1) {
        fprintf(stderr, "bench_latent: --size >= 8, --steps, --batch, --threads, --latent-channels >= 1\n");
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o;
    int rc = parse_opts(argc, argv, &o);
    if (rc)
        return rc;
    printf("Samplers at S=%d, K=%d, %d threads, one snapshot (step K) per chain; best call of >= %d and %g s:\n",
           o.size, o.steps, o.threads, MIN_CALLS, o.seconds);
    printf("  pixel: energy network widths %s on %dx%d RGB\n", o.pixel_widths, o.size, o.size);
    printf("  latent: autoencoder widths %s, %d latent channels; energy network widths %s on the latent\n",
           o.ae_widths, o.latent_channels, o.latent_widths);
    double pixel = measure(&o, 0), latent = measure(&o, 1);
    if (pixel < 0 || latent < 0)
        return 1;
    printf("  latent / pixel: %.1fx\n", latent / pixel);
    return 0;
}
