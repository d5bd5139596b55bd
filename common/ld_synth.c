/* ld_synth: procedural fundus-like images for tests and the demo.
 *
 * Per image: geometry (FOV circle, optic disc, macula, vessel tree) comes
 * from an RNG stream keyed by (seed, domain, image) through a process that
 * is the same for every domain, then a domain's "camera" turns the shared
 * scene (luminance, disc, vessels) into RGB:
 *   colour gains -> contrast about the nominal mean -> vignetting -> gamma
 *   -> FOV (soft edge) -> box blur -> Gaussian noise -> 8 bits.
 * Vessels are stamped as anti-aliased discs along random walks that branch
 * (depth <= 3); the mask is the coverage >= 0.5 region, so it matches what
 * the image shows. */
#include "ld_synth.h"
#include "ld_afile.h"
#include "ld_error.h"
#include "ld_png.h"
#include "ld_rng.h"
#include "ld_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PI 3.14159265358979323846
#define MAX_DEPTH 3

typedef struct {
    const char *name;
    float gain[3];  /* colour cast */
    float contrast; /* about the nominal mean */
    float gamma;
    int blur;       /* box radius, applied twice */
    float noise;    /* sigma in [0,1] units */
    float vignette; /* darkening at the FOV edge */
} camera_t;

static const camera_t cameras[LD_SYNTH_MAX_DOMAINS] = {
    { "cam0", { 1.00f, 0.52f, 0.28f }, 1.00f, 1.00f, 0, 0.015f, 0.25f }, /* reference: warm */
    { "cam1", { 0.80f, 0.68f, 0.62f }, 0.55f, 0.75f, 1, 0.010f, 0.10f }, /* pale, washed out, bluish */
    { "cam2", { 0.70f, 0.62f, 0.22f }, 1.50f, 1.45f, 0, 0.040f, 0.55f }, /* dark, contrasty, strong vignette */
    { "cam3", { 1.00f, 0.36f, 0.14f }, 0.90f, 1.10f, 1, 0.070f, 0.35f }, /* deep red, blurred, noisy */
    { "cam4", { 0.90f, 0.80f, 0.40f }, 1.20f, 0.90f, 1, 0.025f, 0.20f },
    { "cam5", { 0.60f, 0.45f, 0.45f }, 0.70f, 1.20f, 0, 0.050f, 0.45f },
    { "cam6", { 1.00f, 0.60f, 0.10f }, 1.30f, 1.00f, 2, 0.015f, 0.05f },
    { "cam7", { 0.75f, 0.40f, 0.30f }, 1.00f, 1.60f, 1, 0.030f, 0.60f },
};

void ld_synth_defaults(ld_synth_opts_t *opts)
{
    *opts = (ld_synth_opts_t){ .n_domains = 4, .per_domain = 12, .size = 96, .seed = 1, .disc = 0 };
}

int ld_synth_validate(const ld_synth_opts_t *o)
{
    if (o->n_domains < 1 || o->n_domains > LD_SYNTH_MAX_DOMAINS)
        return ld_seterr(LD_ERANGE, "synth: domains %d outside 1..%d", o->n_domains, LD_SYNTH_MAX_DOMAINS);
    if (o->per_domain < 1 || o->per_domain > LD_SYNTH_MAX_PER_DOMAIN)
        return ld_seterr(LD_ERANGE, "synth: per-domain %d outside 1..%d", o->per_domain, LD_SYNTH_MAX_PER_DOMAIN);
    if (o->size < LD_SYNTH_MIN_SIZE || o->size > LD_SYNTH_MAX_SIZE)
        return ld_seterr(LD_ERANGE, "synth: size %d outside %d..%d", o->size, LD_SYNTH_MIN_SIZE, LD_SYNTH_MAX_SIZE);
    return LD_OK;
}

const char *ld_synth_domain_name(int d)
{
    return d >= 0 && d < LD_SYNTH_MAX_DOMAINS ? cameras[d].name : NULL;
}

const char *ld_synth_maskmap(const ld_synth_opts_t *opts)
{
    return opts->disc ? "0:0,255:1,128:2" : "0:0,*:1";
}

/* ---- the shared scene ---- */

typedef struct {
    int s;
    float cx, cy, radius;     /* FOV */
    float dx, dy, dr;         /* optic disc */
    float mx, my;             /* macula */
    float wave[3][4];         /* background texture: kx, ky, phase, amplitude */
    float *vessel;            /* coverage in [0,1] */
    ld_rng_t *rng;
} scene_t;

static void stamp(scene_t *sc, float x, float y, float r)
{
    int x0 = (int)floorf(x - r - 1), x1 = (int)ceilf(x + r + 1);
    int y0 = (int)floorf(y - r - 1), y1 = (int)ceilf(y + r + 1);
    for (int py = y0 < 0 ? 0 : y0; py <= y1 && py < sc->s; py++)
        for (int px = x0 < 0 ? 0 : x0; px <= x1 && px < sc->s; px++) {
            float d = hypotf(px + 0.5f - x, py + 0.5f - y);
            float cov = r + 0.5f - d;
            cov = cov < 0 ? 0 : cov > 1 ? 1 : cov;
            float *v = &sc->vessel[(size_t)py * (size_t)sc->s + (size_t)px];
            if (cov > *v)
                *v = cov;
        }
}

/* One vessel: a random walk from (x, y) in direction a, narrowing, that
 * stops at the FOV edge and sprouts thinner branches. */
static void grow(scene_t *sc, float x, float y, float a, float w, int depth)
{
    int max_steps = (int)(1.6f * sc->radius);
    for (int k = 0; k < max_steps && w >= 1.0f; k++) {
        a += 0.12f * (float)ld_rng_normal(sc->rng);
        x += cosf(a);
        y += sinf(a);
        if (hypotf(x - sc->cx, y - sc->cy) > sc->radius - 1)
            break;
        stamp(sc, x, y, 0.5f * w);
        w *= 0.995f;
        if (depth < MAX_DEPTH && ld_rng_uniform(sc->rng) < 0.025) {
            float turn = (float)(0.4 + 0.6 * ld_rng_uniform(sc->rng));
            grow(sc, x, y, a + (ld_rng_u32(sc->rng) & 1 ? turn : -turn), 0.72f * w, depth + 1);
            w *= 0.92f;
        }
    }
}

static float uniform_in(ld_rng_t *rng, float lo, float hi)
{
    return lo + (hi - lo) * (float)ld_rng_uniform(rng);
}

static void build_scene(scene_t *sc, int s, ld_rng_t *rng)
{
    sc->s = s;
    sc->rng = rng;
    sc->cx = s * uniform_in(rng, 0.48f, 0.52f);
    sc->cy = s * uniform_in(rng, 0.48f, 0.52f);
    sc->radius = s * uniform_in(rng, 0.42f, 0.47f);
    float side = ld_rng_u32(rng) & 1 ? 1.0f : -1.0f; /* left or right eye */
    sc->dr = s * uniform_in(rng, 0.075f, 0.095f);
    sc->dx = sc->cx + side * sc->radius * uniform_in(rng, 0.30f, 0.45f);
    sc->dy = sc->cy + sc->radius * uniform_in(rng, -0.1f, 0.1f);
    sc->mx = sc->dx - side * 2.6f * sc->dr * 1.8f;
    sc->my = sc->dy + sc->radius * 0.05f;
    for (int k = 0; k < 3; k++) {
        float ang = uniform_in(rng, 0, (float)(2 * PI)), freq = uniform_in(rng, 1.5f, 4.0f) * (float)(2 * PI) / s;
        sc->wave[k][0] = freq * cosf(ang);
        sc->wave[k][1] = freq * sinf(ang);
        sc->wave[k][2] = uniform_in(rng, 0, (float)(2 * PI));
        sc->wave[k][3] = uniform_in(rng, 0.3f, 1.0f);
    }
    /* Main vessels leave the disc towards the far side in upper and lower
     * arcades, plus a short one towards the near side. */
    float away = side > 0 ? (float)PI : 0.0f;
    static const float spread[] = { -1.2f, -0.45f, 0.45f, 1.2f, (float)PI };
    int n_main = 4 + (int)ld_rng_below(rng, 2);
    for (int v = 0; v < n_main; v++) {
        float a = away + spread[v] + 0.25f * (float)ld_rng_normal(rng);
        float w = s * 0.028f * uniform_in(rng, 0.8f, 1.2f);
        grow(sc, sc->dx + 0.5f * sc->dr * cosf(a), sc->dy + 0.5f * sc->dr * sinf(a), a, w, 0);
    }
}

static float smooth_edge(float inside_distance)
{
    float t = inside_distance + 0.5f;
    return t < 0 ? 0 : t > 1 ? 1 : t;
}

/* Box blur of radius r on one plane, edge-clamped, in place. */
static int box_blur(float *p, int s, int r)
{
    float *tmp = malloc(sizeof(float) * (size_t)s * (size_t)s);
    if (!tmp)
        return ld_seterr(LD_ENOMEM, "synth: out of memory");
    for (int pass = 0; pass < 2; pass++) {
        for (int y = 0; y < s; y++)
            for (int x = 0; x < s; x++) {
                float acc = 0;
                for (int k = -r; k <= r; k++) {
                    int xx = x + k < 0 ? 0 : x + k >= s ? s - 1 : x + k;
                    acc += p[(size_t)y * (size_t)s + (size_t)xx];
                }
                tmp[(size_t)y * (size_t)s + (size_t)x] = acc / (float)(2 * r + 1);
            }
        for (int y = 0; y < s; y++)
            for (int x = 0; x < s; x++) {
                float acc = 0;
                for (int k = -r; k <= r; k++) {
                    int yy = y + k < 0 ? 0 : y + k >= s ? s - 1 : y + k;
                    acc += tmp[(size_t)yy * (size_t)s + (size_t)x];
                }
                p[(size_t)y * (size_t)s + (size_t)x] = acc / (float)(2 * r + 1);
            }
    }
    free(tmp);
    return LD_OK;
}

/* Shared-scene luminance and disc weight at a pixel. */
static void scene_at(const scene_t *sc, int x, int y, float *lum, float *disc)
{
    float fx = x + 0.5f, fy = y + 0.5f;
    float tex = 0;
    for (int k = 0; k < 3; k++)
        tex += sc->wave[k][3] * sinf(sc->wave[k][0] * fx + sc->wave[k][1] * fy + sc->wave[k][2]);
    float md = hypotf(fx - sc->mx, fy - sc->my) / (1.5f * sc->dr);
    float l = (0.62f + 0.05f * tex) * (1 - 0.25f * expf(-0.5f * md * md));
    *disc = smooth_edge(sc->dr - hypotf(fx - sc->dx, fy - sc->dy));
    l += (1 - l) * 0.7f * *disc;
    *lum = l * (1 - 0.6f * sc->vessel[(size_t)y * (size_t)sc->s + (size_t)x]);
}

static int paint(const scene_t *sc, const camera_t *cam, ld_rng_t *noise_rng, ld_image_t *image)
{
    int s = sc->s, rc = LD_OK;
    size_t n = (size_t)s * (size_t)s;
    float *plane = malloc(sizeof(float) * n * 3);
    if (!plane)
        return ld_seterr(LD_ENOMEM, "synth: out of memory");
    for (int y = 0; y < s; y++)
        for (int x = 0; x < s; x++) {
            float lum, disc, r = hypotf(x + 0.5f - sc->cx, y + 0.5f - sc->cy);
            scene_at(sc, x, y, &lum, &disc);
            float fov = smooth_edge(sc->radius - r), vig = 1 - cam->vignette * (r / sc->radius) * (r / sc->radius);
            for (int c = 0; c < 3; c++) {
                float v = cam->gain[c] * (lum + 0.15f * disc * (c == 1));
                float mean = cam->gain[c] * 0.6f;
                v = mean + cam->contrast * (v - mean);
                v *= vig;
                v = powf(v > 0 ? v : 0, cam->gamma);
                plane[(size_t)c * n + (size_t)y * (size_t)s + (size_t)x] = v * fov;
            }
        }
    for (int c = 0; c < 3 && !rc && cam->blur > 0; c++)
        rc = box_blur(plane + (size_t)c * n, s, cam->blur);
    for (size_t i = 0; i < n && !rc; i++)
        for (int c = 0; c < 3; c++) {
            float v = plane[(size_t)c * n + i] + cam->noise * (float)ld_rng_normal(noise_rng);
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            image->data[i * 3 + (size_t)c] = (uint8_t)lrintf(v * 255.0f);
        }
    free(plane);
    return rc;
}

int ld_synth_render(const ld_synth_opts_t *opts, int d, int i, ld_image_t *image, ld_image_t *mask,
                    ld_image_t *fov)
{
    memset(image, 0, sizeof *image);
    memset(mask, 0, sizeof *mask);
    memset(fov, 0, sizeof *fov);
    int rc = ld_synth_validate(opts);
    if (rc)
        return rc;
    if (d < 0 || d >= opts->n_domains || i < 0 || i >= opts->per_domain)
        return ld_seterr(LD_ERANGE, "synth: no image %d of domain %d", i, d);
    int s = opts->size;
    scene_t sc = { 0 };
    ld_rng_t geo, noise;
    ld_rng_init(&geo, opts->seed, ((uint64_t)d << 32) | (uint64_t)i);
    ld_rng_init(&noise, opts->seed, ((uint64_t)d << 32) | (uint64_t)i | (1ull << 63));
    sc.vessel = calloc((size_t)s * (size_t)s, sizeof(float));
    if (!sc.vessel)
        return ld_seterr(LD_ENOMEM, "synth: out of memory");
    build_scene(&sc, s, &geo);
    rc = ld_image_alloc(image, s, s, 3);
    if (!rc)
        rc = ld_image_alloc(mask, s, s, 1);
    if (!rc)
        rc = ld_image_alloc(fov, s, s, 1);
    if (!rc)
        rc = paint(&sc, &cameras[d], &noise, image);
    for (int y = 0; !rc && y < s; y++)
        for (int x = 0; x < s; x++) {
            size_t p = (size_t)y * (size_t)s + (size_t)x;
            float fx = x + 0.5f, fy = y + 0.5f;
            int inside = hypotf(fx - sc.cx, fy - sc.cy) <= sc.radius;
            int in_disc = hypotf(fx - sc.dx, fy - sc.dy) <= sc.dr;
            fov->data[p] = inside ? 255 : 0;
            mask->data[p] = sc.vessel[p] >= 0.5f ? 255 : (opts->disc && in_disc) ? 128 : 0;
        }
    free(sc.vessel);
    if (rc) {
        ld_image_free(image);
        ld_image_free(mask);
        ld_image_free(fov);
    }
    return rc;
}

/* ---- writing ---- */

/* Creates the folder dir/sub (dir must exist). */
static int make_dir(const char *dir, const char *sub)
{
    char *path;
    int rc = ld_text_format(&path, "%s/%s", dir, sub);
    if (!rc)
        rc = ld_afile_mkdir(path);
    free(path);
    return rc;
}

static int write_readme(const char *root, const ld_synth_opts_t *o)
{
    char text[2048], *path;
    int rc = ld_text_format(&path, "%s/README.txt", root);
    if (rc)
        return rc;
    int n = snprintf(text, sizeof text,
                     "Synthetic fundus-like multi-domain data written by langdaug (ld_synth).\n"
                     "domains=%d per_domain=%d size=%d seed=%llu disc=%d\n"
                     "layout: <domain>/{image,mask,fov}/NNN.png; image RGB, fov 255 = inside,\n"
                     "mask 255 = vessel%s, 0 = background; mask map \"%s\".\n"
                     "Domains share the scene process (vessels, disc, FOV) and differ in colour cast,\n"
                     "contrast, gamma, blur, noise and vignetting.\n",
                     o->n_domains, o->per_domain, o->size, (unsigned long long)o->seed, o->disc,
                     o->disc ? ", 128 = optic disc" : "", ld_synth_maskmap(o));
    rc = ld_afile_write_all(path, text, (size_t)n);
    free(path);
    return rc;
}

static int write_one(const char *dom_dir, const ld_synth_opts_t *o, int d, int i)
{
    ld_image_t img, mask, fov;
    int rc = ld_synth_render(o, d, i, &img, &mask, &fov);
    const char *sub[3] = { "image", "mask", "fov" };
    const ld_image_t *pic[3] = { &img, &mask, &fov };
    for (int k = 0; k < 3 && !rc; k++) {
        char *path;
        if (!(rc = ld_text_format(&path, "%s/%s/%03d.png", dom_dir, sub[k], i)))
            rc = ld_png_write(path, pic[k]);
        free(path);
    }
    ld_image_free(&img);
    ld_image_free(&mask);
    ld_image_free(&fov);
    return rc;
}

int ld_synth_write(const char *root, const ld_synth_opts_t *opts)
{
    int rc = ld_synth_validate(opts);
    if (!rc && (!root || !*root))
        rc = ld_seterr(LD_EINVAL, "synth: empty output folder");
    if (!rc)
        rc = ld_afile_mkdir(root);
    for (int d = 0; d < opts->n_domains && !rc; d++) {
        char *dir;
        static const char *subs[3] = { "image", "mask", "fov" };
        if (!(rc = ld_text_format(&dir, "%s/%s", root, cameras[d].name)))
            rc = ld_afile_mkdir(dir);
        for (int k = 0; k < 3 && !rc; k++)
            rc = make_dir(dir, subs[k]);
        for (int i = 0; i < opts->per_domain && !rc; i++)
            rc = write_one(dir, opts, d, i);
        free(dir);
    }
    if (!rc)
        rc = write_readme(root, opts);
    return rc;
}
