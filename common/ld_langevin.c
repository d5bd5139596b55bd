/* ld_langevin: Langevin chains over the image channels (see ld_langevin.h).
 *
 * One run, per step k = 0..K-1:
 *   poll cancel -> E, dE/dx of x_k (ld_ebm; weight transforms reused after
 *   step 0) -> check finite -> snapshot x_k if k is a snapshot step (its
 *   energy is the E just computed) -> x_{k+1} = clamp(x_k - a g + b z, -1, 1)
 * and after the loop a snapshot of x_K if asked for (one extra forward when
 * its energy is wanted). a = eta/2 and b = sqrt(eta) sigma are rounded to
 * float once; the update is computed per element as ((x - a*g) + b*z) in
 * float, then clamped. z for chain c at step k is ld_noise_fill(seed,
 * chain_id[c], k) over its C*S*S image elements, so a chain's trajectory is
 * a function of its own inputs only: the engine's energies and gradients do
 * not depend on the batch or the threads, and neither does the update.
 *
 * The update runs one chain per piece on the workspace's threads. The
 * gradient lives in ld_ebm_ws_scratch(ws); the only allocation of a run is
 * its energy and noise buffers, made once at the start. On an error the
 * image holds the chains' state at the failing step.
 *
 * ld_langevin_sample wraps a run for the samplers: start crops converted
 * into the model's colour space, then every snapshot back to RGB with the
 * keep setting applied, in one place for `langdaug sample`, the daemon's
 * workers and the training previews; ld_langevin_sample_latent is the same
 * with the starts encoded, the latents moved unclamped and the snapshots
 * decoded before the way back to RGB (one body, sample_chains). */
#include "ld_langevin.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ld_colour.h"
#include "ld_error.h"
#include "ld_latent.h"
#include "ld_rng.h"

#define MAX_STEPS 10000000

int ld_langevin_validate(const ld_langevin_params_t *p)
{
    if (!p)
        return ld_seterr(LD_EINVAL, "langevin: NULL parameters");
    if (!(p->step_size > 0.0f) || !isfinite(p->step_size))
        return ld_seterr(LD_ERANGE, "langevin: step_size %g must be finite and > 0", (double)p->step_size);
    if (!(p->noise >= 0.0f) || !isfinite(p->noise))
        return ld_seterr(LD_ERANGE, "langevin: noise %g must be finite and >= 0", (double)p->noise);
    if (p->steps < 1 || p->steps > MAX_STEPS)
        return ld_seterr(LD_ERANGE, "langevin: steps %d outside 1..%d", p->steps, MAX_STEPS);
    if (p->n_snapshots < 0 || p->n_snapshots > LD_LANGEVIN_MAX_SNAPSHOTS)
        return ld_seterr(LD_ERANGE, "langevin: n_snapshots %d outside 0..%d", p->n_snapshots,
                         LD_LANGEVIN_MAX_SNAPSHOTS);
    for (int i = 0; i < p->n_snapshots; i++) {
        if (p->snapshots[i] < 0 || p->snapshots[i] > p->steps)
            return ld_seterr(LD_ERANGE, "langevin: snapshots[%d] = %d outside 0..steps (%d)", i, p->snapshots[i],
                             p->steps);
        if (i > 0 && p->snapshots[i] <= p->snapshots[i - 1])
            return ld_seterr(LD_ERANGE, "langevin: snapshots not strictly ascending at [%d] = %d", i,
                             p->snapshots[i]);
    }
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int ld_langevin_set_snapshots(ld_langevin_params_t *p, const char *csv)
{
    if (!p || !csv)
        return ld_seterr(LD_EINVAL, "snapshots: NULL argument");
    int v[LD_LANGEVIN_MAX_SNAPSHOTS];
    int count = 0;
    for (const char *s = csv; *s;) {
        if (*s < '0' || *s > '9')
            return ld_seterr(LD_EINVAL, "snapshots '%s': expected a step number at position %d", csv, (int)(s - csv));
        char *end;
        long x = strtol(s, &end, 10);
        if (x > MAX_STEPS)
            return ld_seterr(LD_ERANGE, "snapshots '%s': step %ld above %d", csv, x, MAX_STEPS);
        if (count == LD_LANGEVIN_MAX_SNAPSHOTS)
            return ld_seterr(LD_ERANGE, "snapshots '%s': more than %d snapshots", csv, LD_LANGEVIN_MAX_SNAPSHOTS);
        v[count++] = (int)x;
        if (*end == ',' && end[1] != '\0')
            end++;
        else if (*end != '\0')
            return ld_seterr(LD_EINVAL, "snapshots '%s': unexpected '%c' at position %d", csv, *end,
                             (int)(end - csv));
        s = end;
    }
    qsort(v, (size_t)count, sizeof v[0], cmp_int);
    for (int i = 1; i < count; i++)
        if (v[i] == v[i - 1])
            return ld_seterr(LD_EINVAL, "snapshots '%s': step %d listed twice", csv, v[i]);
    p->n_snapshots = count;
    memcpy(p->snapshots, v, (size_t)count * sizeof v[0]);
    return 0;
}

typedef struct {
    float *image;
    const float *grad;
    const uint64_t *chain_id;
    uint64_t seed;
    uint32_t step;
    size_t per;              /* C*S*S */
    float a, b;              /* eta/2, sqrt(eta)*sigma */
    int clamp;               /* clamp states to [-1,1] (images, not latents) */
    float *noise;            /* [threads][per] */
    atomic_int bad;          /* 1 + lowest chain with a non-finite gradient, or 0 */
} update_t;

static int all_finite(const float *x, size_t n)
{
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++)
        acc += x[i] * 0.0f; /* stays 0 unless some x[i] is Inf or NaN */
    return acc == 0.0f;
}

static void note_bad(update_t *u, int chain)
{
    int cur = atomic_load(&u->bad);
    while ((cur == 0 || chain + 1 < cur) && !atomic_compare_exchange_weak(&u->bad, &cur, chain + 1))
        ;
}

static float clamp1(float v)
{
    v = v < -1.0f ? -1.0f : v;
    return v > 1.0f ? 1.0f : v;
}

static void update_chain(void *ctx, int c, int tid)
{
    update_t *u = ctx;
    float *x = u->image + (size_t)c * u->per;
    const float *g = u->grad + (size_t)c * u->per;
    if (!all_finite(g, u->per)) {
        note_bad(u, c);
        return;
    }
    if (u->b == 0.0f) {
        for (size_t i = 0; i < u->per; i++)
            x[i] = x[i] - u->a * g[i];
    } else {
        float *z = u->noise + (size_t)tid * u->per;
        ld_noise_fill(u->seed, u->chain_id[c], u->step, z, u->per);
        for (size_t i = 0; i < u->per; i++)
            x[i] = (x[i] - u->a * g[i]) + u->b * z[i];
    }
    for (size_t i = 0; i < u->per && u->clamp; i++)
        x[i] = clamp1(x[i]);
}

static int check_energies(const float *e, int n, const uint64_t *chain_id, int step)
{
    for (int c = 0; c < n; c++)
        if (!isfinite(e[c]))
            return ld_seterr(LD_ENUMERIC, "langevin: chain %llu (batch index %d): energy %g at step %d",
                             (unsigned long long)chain_id[c], c, (double)e[c], step);
    return 0;
}

static void take_snapshot(int s, int n, size_t per, const float *image, const float *energy, float *snap_images,
                          float *snap_energy)
{
    if (snap_images)
        memcpy(snap_images + (size_t)s * (size_t)n * per, image, (size_t)n * per * sizeof(float));
    if (snap_energy)
        memcpy(snap_energy + (size_t)s * (size_t)n, energy, (size_t)n * sizeof(float));
}

int ld_langevin_run(const ld_ebm_t *m, ld_ebm_ws_t *ws, const ld_langevin_params_t *p, int n, float *image,
                    const uint8_t *mask, const int32_t *target, const uint64_t *chain_id, float *snap_images,
                    float *snap_energy, const atomic_int *cancel)
{
    int rc = ld_langevin_validate(p);
    if (rc)
        return rc;
    if (!m || !ws)
        return ld_seterr(LD_EINVAL, "langevin: NULL model or workspace");
    if (n < 0 || n > ld_ebm_ws_max_batch(ws))
        return ld_seterr(LD_EINVAL, "langevin: %d chains outside 0..max_batch %d", n, ld_ebm_ws_max_batch(ws));
    if (n == 0)
        return 0;
    if (!image || !mask || !target || !chain_id)
        return ld_seterr(LD_EINVAL, "langevin: NULL image, mask, target or chain_id");
    const ld_ebm_arch_t *a = ld_ebm_arch(m);
    size_t per = (size_t)a->image_channels * (size_t)a->size * (size_t)a->size;
    float *grad = ld_ebm_ws_scratch(ws);
    update_t u = { .image = image, .grad = grad, .chain_id = chain_id, .seed = p->seed,
                   .per = per, .a = 0.5f * p->step_size, .b = sqrtf(p->step_size) * p->noise,
                   .clamp = !p->unbounded };
    float *energy = malloc((size_t)n * sizeof *energy);
    u.noise = malloc((size_t)ld_ebm_ws_threads(ws) * per * sizeof(float));
    if (!energy || !u.noise) {
        rc = ld_seterr(LD_ENOMEM, "langevin: out of memory for %d chains", n);
        goto done;
    }
    int snap = 0;
    for (int k = 0; k < p->steps; k++) {
        if (cancel && atomic_load(cancel)) {
            rc = ld_seterr(LD_ECANCELED, "langevin: canceled before step %d of %d", k, p->steps);
            goto done;
        }
        rc = k == 0 ? ld_ebm_energy(m, ws, n, image, mask, target, energy, grad)
                    : ld_ebm_energy_reuse(m, ws, n, image, mask, target, energy, grad);
        if (rc || (rc = check_energies(energy, n, chain_id, k)))
            goto done;
        if (snap < p->n_snapshots && p->snapshots[snap] == k)
            take_snapshot(snap++, n, per, image, energy, snap_images, snap_energy);
        u.step = (uint32_t)k;
        atomic_init(&u.bad, 0);
        ld_ebm_ws_parallel(ws, n, update_chain, &u);
        int bad = atomic_load(&u.bad);
        if (bad) {
            rc = ld_seterr(LD_ENUMERIC, "langevin: chain %llu (batch index %d): non-finite gradient at step %d",
                           (unsigned long long)chain_id[bad - 1], bad - 1, k);
            goto done;
        }
    }
    if (snap < p->n_snapshots) { /* the final state, step K */
        if (snap_energy) {
            rc = ld_ebm_energy_reuse(m, ws, n, image, mask, target, energy, NULL);
            if (rc || (rc = check_energies(energy, n, chain_id, p->steps)))
                goto done;
        }
        take_snapshot(snap, n, per, image, energy, snap_images, snap_energy);
    }
done:
    free(energy);
    free(u.noise);
    return rc;
}

/* Where a sampler's chains run: on the images of the model's colour space
 * (ae NULL), or on the latents of the autoencoder ae of a latent model. */
typedef struct {
    const ld_ae_t *ae;
    ld_ae_ws_t *ws;
} latent_t;

/* The images' geometry: channels, side and colour space of the samples. */
typedef struct {
    int channels;
    size_t hw, per;
    ld_colour_space_t colour;
} geometry_t;

static geometry_t sample_geometry(const ld_ebm_t *m, const latent_t *lat)
{
    int c = lat ? ld_ae_arch(lat->ae)->image_channels : ld_ebm_arch(m)->image_channels;
    int side = lat ? ld_ae_arch(lat->ae)->size : ld_ebm_arch(m)->size;
    geometry_t g = { .channels = c, .hw = (size_t)side * (size_t)side };
    g.per = (size_t)c * g.hw;
    g.colour = ld_ebm_arch(m)->colour_space;
    return g;
}

/* Snapshot j of step `step`, in the model's colour space, becomes the RGB
 * sample (see ld_langevin.h); start_model is the chain's converted start
 * (only read with keep on a LAB model). */
static void snapshot_to_rgb(const geometry_t *g, ld_keep_t keep, int step, const float *start,
                            const float *start_model, float *snap)
{
    if (step == 0) {
        memcpy(snap, start, g->per * sizeof *snap);
    } else if (g->colour == LD_COLOUR_LAB) {
        if (keep == LD_KEEP_LUMINANCE)
            ld_colour_keep_luminance_lab(start_model, snap, g->hw);
        ld_colour_lab_to_rgb(snap, snap, g->hw);
    } else if (keep == LD_KEEP_LUMINANCE) {
        ld_colour_keep_luminance(start, snap, g->hw);
    }
}

static int check_sample_args(const ld_ebm_t *m, const latent_t *lat, const ld_langevin_params_t *p, ld_keep_t keep,
                             int n, const float *start, const float *snap_images)
{
    int rc = ld_langevin_validate(p);
    if (rc)
        return rc;
    if (!m || !start || !snap_images || (lat && (!lat->ae || !lat->ws)))
        return ld_seterr(LD_EINVAL, "langevin: NULL model, autoencoder, start images or snapshot images");
    if (lat && (rc = ld_latent_check(ld_ae_arch(lat->ae), ld_ebm_arch(m))))
        return rc;
    if (lat && n > ld_ae_ws_max_batch(lat->ws))
        return ld_seterr(LD_EINVAL, "langevin: %d chains, the autoencoder workspace holds %d", n,
                         ld_ae_ws_max_batch(lat->ws));
    if (!ld_keep_name(keep))
        return ld_seterr(LD_EINVAL, "langevin: keep %d is not none (0) or luminance (1)", (int)keep);
    int channels = sample_geometry(m, lat).channels;
    if (keep == LD_KEEP_LUMINANCE && channels != 3)
        return ld_seterr(LD_EINVAL, "keep = luminance needs 3-channel images; the model has %d channel(s)",
                         channels);
    if (n < 0)
        return ld_seterr(LD_EINVAL, "langevin: %d chains", n);
    return LD_OK;
}

/* The chains' state: the images in the model's colour space (x; x0 a copy
 * of the converted starts when keep needs them after x moved), and in
 * latent mode the latents z, their masks and snapshots. */
typedef struct {
    float *x, *x0, *z, *z_snaps;
    uint8_t *z_mask;
} chains_t;

static void chains_free(chains_t *c)
{
    free(c->x);
    free(c->x0);
    free(c->z);
    free(c->z_snaps);
    free(c->z_mask);
}

static int chains_alloc(chains_t *c, const ld_ebm_t *m, const latent_t *lat, const ld_langevin_params_t *p,
                        ld_keep_t keep, int n)
{
    const geometry_t g = sample_geometry(m, lat);
    const size_t lat_per = lat ? ld_ae_arch_latent_numel(ld_ae_arch(lat->ae)) : 0;
    const size_t lat_hw = lat ? (size_t)ld_ebm_arch(m)->size * (size_t)ld_ebm_arch(m)->size : 0;
    const size_t nn = (size_t)(n > 0 ? n : 1);
    memset(c, 0, sizeof *c);
    int ok = (c->x = malloc(nn * g.per * sizeof(float))) != NULL;
    if (ok && !lat && g.colour == LD_COLOUR_LAB && keep == LD_KEEP_LUMINANCE)
        ok = (c->x0 = malloc(nn * g.per * sizeof(float))) != NULL;
    if (ok && lat)
        ok = (c->z = malloc(nn * lat_per * sizeof(float))) &&
             (c->z_snaps = malloc((size_t)(p->n_snapshots ? p->n_snapshots : 1) * nn * lat_per * sizeof(float))) &&
             (c->z_mask = malloc(nn * lat_hw));
    if (!ok) {
        chains_free(c);
        return ld_seterr(LD_ENOMEM, "langevin: out of memory for %d chains", n);
    }
    return LD_OK;
}

/* The chains' starts: x = the starts in the model's colour space; in latent
 * mode z = their encodings and z_mask the masks on the latent grid. */
static int chains_start(chains_t *c, const ld_ebm_t *m, const latent_t *lat, int n, const float *start,
                        const uint8_t *mask)
{
    const geometry_t g = sample_geometry(m, lat);
    if (lat) {
        ld_latent_mask(ld_ae_arch(lat->ae), n, mask, c->z_mask);
        return ld_latent_encode_rgb(lat->ae, lat->ws, n, start, c->x, c->z);
    }
    memcpy(c->x, start, (size_t)n * g.per * sizeof(float));
    for (int j = 0; j < n && g.colour == LD_COLOUR_LAB; j++)
        ld_colour_rgb_to_lab(c->x + (size_t)j * g.per, c->x + (size_t)j * g.per, g.hw);
    if (c->x0)
        memcpy(c->x0, c->x, (size_t)n * g.per * sizeof(float));
    return LD_OK;
}

/* Every snapshot as an RGB sample: decoded first in latent mode. */
static int chains_finish(const chains_t *c, const ld_ebm_t *m, const latent_t *lat, const ld_langevin_params_t *p,
                         ld_keep_t keep, int n, const float *start, float *snap_images)
{
    const geometry_t g = sample_geometry(m, lat);
    const size_t lat_per = lat ? ld_ae_arch_latent_numel(ld_ae_arch(lat->ae)) : 0;
    const float *start_model = lat ? c->x : c->x0;
    for (int s = 0; s < p->n_snapshots; s++) {
        float *snap = snap_images + (size_t)s * (size_t)n * g.per;
        int rc = lat && p->snapshots[s] != 0
                     ? ld_latent_decode(lat->ae, lat->ws, n, c->z_snaps + (size_t)s * (size_t)n * lat_per, snap)
                     : LD_OK;
        if (rc)
            return rc;
        for (int j = 0; j < n; j++)
            snapshot_to_rgb(&g, keep, p->snapshots[s], start + (size_t)j * g.per,
                            start_model ? start_model + (size_t)j * g.per : NULL, snap + (size_t)j * g.per);
    }
    return LD_OK;
}

static int sample_chains(const ld_ebm_t *m, ld_ebm_ws_t *ws, const latent_t *lat, const ld_langevin_params_t *p,
                         ld_keep_t keep, int n, const float *start, const uint8_t *mask, const int32_t *target,
                         const uint64_t *chain_id, float *snap_images, float *snap_energy, float *start_energy,
                         const atomic_int *cancel)
{
    int rc = check_sample_args(m, lat, p, keep, n, start, snap_images);
    chains_t c;
    if (rc || (rc = chains_alloc(&c, m, lat, p, keep, n)))
        return rc;
    ld_langevin_params_t run = *p;
    run.unbounded = lat != NULL;
    float *state = lat ? c.z : c.x, *snaps = lat ? c.z_snaps : snap_images;
    const uint8_t *state_mask = lat ? c.z_mask : mask;
    rc = chains_start(&c, m, lat, n, start, mask);
    if (!rc && start_energy && n > 0)
        rc = ld_ebm_energy(m, ws, n, state, state_mask, target, start_energy, NULL);
    if (!rc)
        rc = ld_langevin_run(m, ws, &run, n, state, state_mask, target, chain_id, snaps, snap_energy, cancel);
    if (!rc)
        rc = chains_finish(&c, m, lat, p, keep, n, start, snap_images);
    chains_free(&c);
    return rc;
}

int ld_langevin_sample(const ld_ebm_t *m, ld_ebm_ws_t *ws, const ld_langevin_params_t *p, ld_keep_t keep, int n,
                       const float *start, const uint8_t *mask, const int32_t *target, const uint64_t *chain_id,
                       float *snap_images, float *snap_energy, float *start_energy, const atomic_int *cancel)
{
    return sample_chains(m, ws, NULL, p, keep, n, start, mask, target, chain_id, snap_images, snap_energy,
                         start_energy, cancel);
}

int ld_langevin_sample_latent(const ld_ebm_t *m, ld_ebm_ws_t *ws, const ld_ae_t *ae, ld_ae_ws_t *ae_ws,
                              const ld_langevin_params_t *p, ld_keep_t keep, int n, const float *start,
                              const uint8_t *mask, const int32_t *target, const uint64_t *chain_id,
                              float *snap_images, float *snap_energy, float *start_energy,
                              const atomic_int *cancel)
{
    const latent_t lat = { ae, ae_ws };
    return sample_chains(m, ws, &lat, p, keep, n, start, mask, target, chain_id, snap_images, snap_energy,
                         start_energy, cancel);
}
