/* ldt_sample: `langdaug sample` runs offline Langevin chains from dataset
 * crops of a source domain towards a target domain and writes the
 * snapshots.
 *
 *   load model -> load the source domain (channels must equal the model's,
 *   mask classes must fit its K) -> N crops (chain j starts from crop j) ->
 *   energies of the starts -> ld_langevin_run -> files:
 *     OUT/image/cCCC_sSSSS.png   snapshot image of chain CCC at step SSSS
 *     OUT/mask/cCCC_sSSSS.png    its mask (the chain's source mask)
 *     OUT/samples.csv            one row per snapshot
 *     OUT/grid.png               rows = chains, columns = mask, start,
 *                                then each snapshot
 * Masks are written with mask values, not class ids: each class as the
 * value ld_maskmap_value() gives for the mask map used (e.g. 255 for vessel
 * under "0:0,*:1"), so OUT loads back as a dataset folder with the same
 * --maskmap. Chain j uses chain id j for its noise, so a run is reproducible
 * from (model, data, crops, seed). Every file is written atomically.
 *
 * --step-size and --noise, when not given, are what the model was trained
 * with (its train.step-size / train.noise metadata), as in the daemon's
 * `auto`: chains with other dynamics than training's drift elsewhere. A
 * model without them (init-model, PyTorch export) gets the fixed defaults.
 *
 * The chains run in the model's colour space and every output is RGB
 * (ld_langevin_sample): the start crop, the PNGs and the grid; energies
 * are those of the chain states. --keep luminance gives each snapshot but
 * step 0 the start crop's L* (ld_colour.h). */
#include "ldt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ld_afile.h"
#include "ld_text.h"
#include "ld_colour.h"
#include "ld_dataset.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_image.h"
#include "ld_langevin.h"
#include "ld_latent.h"
#include "ld_model.h"
#include "ld_png.h"

#define MAX_BATCH 4096
#define MAX_THREADS 256
#define GRID_GAP 2
#define GRID_MIN_TILE 128 /* tiles are enlarged (nearest neighbour, whole factors) to at least this side */
#define CROP_STREAM 0x63726f70u /* "crop": the RNG stream that picks crops */

/* --step-size / --noise: range, the training setting (metadata
 * "train.<trained>") used when the option is not given, and the default for
 * a model without it. */
typedef struct {
    const char *option, *trained;
    double min, max, fallback;
} langevin_opt_t;

static const langevin_opt_t step_opt = { "--step-size", "step-size", 1e-12, 1e6, LD_LANGEVIN_FALLBACK_STEP_SIZE };
static const langevin_opt_t noise_opt = { "--noise", "noise", 0, 1e3, LD_LANGEVIN_FALLBACK_NOISE };

static const char usage[] =
    "Usage: langdaug sample --model M --data ROOT --source A --target B --out DIR [options]\n"
    "Runs Langevin chains from crops of source domain A towards target domain B and\n"
    "writes every snapshot as an image/mask PNG pair, samples.csv and grid.png (rows =\n"
    "chains; columns = mask, start crop, snapshots).\n"
    "\n"
    "Data:\n"
    "  --model FILE        model file (langdaug safetensors)\n"
    "  --autoencoder FILE  a latent model's autoencoder (default: the file its metadata\n"
    "                      names, next to the model; its SHA-256 must match)\n"
    "  --data ROOT         dataset folders layout: ROOT/<domain>/[SUBDIR/]{image,mask[,fov]}\n"
    "  --manifest CSV      or a CSV manifest (domain,image,mask[,fov]) instead of --data\n"
    "  --subdir X          folder inside each domain, e.g. train/ROIs\n"
    "  --maskmap SPEC      mask value -> class rules (default: the model's, else \"0:0,*:1\")\n"
    "  --scale X           resize every image by X (default 1)\n"
    "  --resize N          or resize so the shorter side is N pixels\n"
    "  --whole             whole images: each cut to its FOV's box and resized so the\n"
    "                      longer side is the model's size, centred and padded\n"
    "  --source A          dataset domain the chains start from\n"
    "  --target B          model domain the chains move towards\n"
    "  --crop MODE         random (default; centre inside the FOV) or center\n"
    "Sampling:\n"
    "  --batch N           number of chains (default 8)\n"
    "  --steps K           Langevin steps (default 40)\n"
    "  --snapshots LIST    steps to save, ascending, 0 = start (default: K)\n"
    "  --step-size ETA     eta in x - (eta/2) dE/dx + sqrt(eta) sigma noise (default:\n"
    "                      the model's train.step-size, as trained; else " LD_LANGEVIN_STR(LD_LANGEVIN_FALLBACK_STEP_SIZE) ")\n"
    "  --noise SIGMA       sigma (default: the model's train.noise; else " LD_LANGEVIN_STR(LD_LANGEVIN_FALLBACK_NOISE) ")\n"
    "  --seed S            noise and crop seed (default 1)\n"
    "  --keep WHAT         none (default), or luminance: every snapshot gets the start\n"
    "                      crop's CIE L*, only its colour (a*, b*) changes (RGB images)\n"
    "  --threads T         worker threads (default 1)\n"
    "Output:\n"
    "  --out DIR           output folder (created if needed; its parent must exist)\n"
    "  -h, --help          this help\n";

typedef struct {
    const char *model, *autoencoder, *data, *manifest, *subdir, *maskmap, *source, *target, *out;
    double scale;
    int resize, batch, threads, center, whole;
    const char *snapshots;
    ld_langevin_params_t lp;
    ld_keep_t keep;
    int step_given, noise_given;
    const char *step_from, *noise_from; /* where lp's step size and noise came from */
} sample_opts_t;

typedef struct {
    ld_ebm_t *ebm;
    ld_meta_t *meta;
    char hash[65];
    ld_dataset_t *ds;
    ld_ebm_ws_t *ws;
    ld_ae_t *ae;        /* a latent model's autoencoder, else NULL */
    ld_ae_ws_t *ae_ws;
    int n, c, s, target; /* c, s: the images' channels and side (the autoencoder's for a latent model) */
    ld_crop_t *crops;
    float *start, *snaps, *start_energy, *snap_energy;
    uint8_t *masks;
    int32_t *targets;
    uint64_t *chain_ids;
    double seconds;
} sample_run_t;

static void run_free(sample_run_t *r)
{
    ld_ebm_destroy(&r->ebm);
    ld_meta_destroy(&r->meta);
    ld_dataset_destroy(&r->ds);
    ld_ebm_ws_destroy(&r->ws);
    ld_ae_destroy(&r->ae);
    ld_ae_ws_destroy(&r->ae_ws);
    free(r->crops);
    free(r->start);
    free(r->snaps);
    free(r->start_energy);
    free(r->snap_energy);
    free(r->masks);
    free(r->targets);
    free(r->chain_ids);
}

/* ---- options ---- */

static int parse_langevin(const langevin_opt_t *opt, const char *text, float *out, int *given)
{
    *given = 1;
    return ld_text_parse_float(opt->option, text, opt->min, opt->max, out);
}

/* An option not given takes the model's training value, else its fallback
 * (already in *value); *from says which, for the summary. */
static int trained_langevin(const langevin_opt_t *opt, int given, const char *path, const ld_meta_t *meta,
                            float *value, const char **from)
{
    if (given) {
        *from = "given";
        return 0;
    }
    double v;
    int rc = ld_model_train_number(path, meta, opt->trained, opt->min, opt->max, &v);
    if (rc == LD_ENOENT) {
        *from = "default: not in the model";
        return 0;
    }
    if (rc)
        return ld_seterr(rc, "%s (give %s to use another value)", ld_errdetail(), opt->option);
    *value = (float)v;
    *from = "as trained";
    return 0;
}

static int parse_opts(int argc, char **argv, sample_opts_t *o)
{
    static const char cmd[] = "sample";
    enum { O_MODEL = 256, O_DATA, O_MANIFEST, O_SUBDIR, O_MASKMAP, O_SCALE, O_RESIZE, O_SOURCE, O_TARGET,
           O_CROP, O_BATCH, O_STEPS, O_SNAPS, O_ETA, O_NOISE, O_SEED, O_THREADS, O_OUT, O_KEEP, O_AE, O_WHOLE };
    static const struct option longopts[] = {
        { "model", required_argument, NULL, O_MODEL },       { "data", required_argument, NULL, O_DATA },
        { "manifest", required_argument, NULL, O_MANIFEST }, { "subdir", required_argument, NULL, O_SUBDIR },
        { "maskmap", required_argument, NULL, O_MASKMAP },   { "scale", required_argument, NULL, O_SCALE },
        { "resize", required_argument, NULL, O_RESIZE },     { "source", required_argument, NULL, O_SOURCE },
        { "target", required_argument, NULL, O_TARGET },     { "crop", required_argument, NULL, O_CROP },
        { "batch", required_argument, NULL, O_BATCH },       { "steps", required_argument, NULL, O_STEPS },
        { "snapshots", required_argument, NULL, O_SNAPS },   { "step-size", required_argument, NULL, O_ETA },
        { "noise", required_argument, NULL, O_NOISE },       { "seed", required_argument, NULL, O_SEED },
        { "threads", required_argument, NULL, O_THREADS },   { "out", required_argument, NULL, O_OUT },
        { "keep", required_argument, NULL, O_KEEP },         { "autoencoder", required_argument, NULL, O_AE },
        { "whole", no_argument, NULL, O_WHOLE },
        { "help", no_argument, NULL, 'h' },                  { NULL, 0, NULL, 0 },
    };
    *o = (sample_opts_t){ .batch = 8, .threads = 1, .scale = 0 };
    o->lp = (ld_langevin_params_t){ .step_size = (float)step_opt.fallback, .noise = (float)noise_opt.fallback,
                                    .steps = 40, .seed = 1 };
    int c, rc = 0;
    while ((c = ldt_getopt(cmd, argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case O_MODEL: o->model = optarg; break;
        case O_AE: o->autoencoder = optarg; break;
        case O_WHOLE: o->whole = 1; break;
        case O_DATA: o->data = optarg; break;
        case O_MANIFEST: o->manifest = optarg; break;
        case O_SUBDIR: o->subdir = optarg; break;
        case O_MASKMAP: o->maskmap = optarg; break;
        case O_SCALE: rc = ld_text_parse_double("--scale", optarg, 1e-3, 64, &o->scale); break;
        case O_RESIZE: rc = ld_text_parse_int("--resize", optarg, 1, 16384, &o->resize); break;
        case O_SOURCE: o->source = optarg; break;
        case O_TARGET: o->target = optarg; break;
        case O_CROP:
            if (strcmp(optarg, "random") && strcmp(optarg, "center") && strcmp(optarg, "centre"))
                return ldt_usage_error(cmd, "--crop: '%s' is not random or center", optarg);
            o->center = strcmp(optarg, "random") != 0;
            break;
        case O_BATCH: rc = ld_text_parse_int("--batch", optarg, 1, MAX_BATCH, &o->batch); break;
        case O_STEPS: rc = ld_text_parse_int("--steps", optarg, 1, 1000000, &o->lp.steps); break;
        case O_SNAPS: o->snapshots = optarg; break;
        case O_ETA: rc = parse_langevin(&step_opt, optarg, &o->lp.step_size, &o->step_given); break;
        case O_NOISE: rc = parse_langevin(&noise_opt, optarg, &o->lp.noise, &o->noise_given); break;
        case O_SEED: rc = ld_text_parse_u64("--seed", optarg, &o->lp.seed); break;
        case O_THREADS: rc = ld_text_parse_int("--threads", optarg, 1, MAX_THREADS, &o->threads); break;
        case O_OUT: o->out = optarg; break;
        case O_KEEP: rc = ld_keep_parse("--keep", optarg, &o->keep); break;
        case 'h': fputs(usage, stdout); return -1;
        default: return 2;
        }
        if (rc)
            return ldt_usage_error(cmd, "%s", ld_errdetail());
    }
    if (ldt_no_operands(cmd, argc, argv))
        return 2;
    if (!o->model || !o->source || !o->target || !o->out || (!o->data == !o->manifest))
        return ldt_usage_error(cmd, "--model, --source, --target, --out and one of --data / --manifest are required");
    if ((o->scale > 0) + (o->resize > 0) + o->whole > 1)
        return ldt_usage_error(cmd, "--scale, --resize and --whole exclude each other");
    if (o->snapshots) {
        if (ld_langevin_set_snapshots(&o->lp, o->snapshots))
            return ldt_usage_error(cmd, "--snapshots: %s", ld_errdetail());
    } else {
        o->lp.n_snapshots = 1;
        o->lp.snapshots[0] = o->lp.steps;
    }
    if (ld_langevin_validate(&o->lp))
        return ldt_usage_error(cmd, "%s", ld_errdetail());
    return 0;
}

/* ---- model + data ---- */

/* A latent model's autoencoder (r->c, r->s become its image geometry); a
 * pixel model takes no --autoencoder. */
static int open_autoencoder(const sample_opts_t *o, sample_run_t *r)
{
    const ld_ebm_arch_t *a = ld_ebm_arch(r->ebm);
    r->c = a->image_channels;
    r->s = a->size;
    if (!ld_latent_is_latent(r->meta)) {
        if (o->autoencoder)
            return ld_seterr(LD_EINVAL, "--autoencoder: %s is a pixel model, not a latent one", o->model);
        return LD_OK;
    }
    int rc = ld_latent_load_ae(o->model, r->meta, a, o->autoencoder, &r->ae, NULL);
    if (rc)
        return rc;
    r->c = ld_ae_arch(r->ae)->image_channels;
    r->s = ld_ae_arch(r->ae)->size;
    return LD_OK;
}

static int open_model_and_data(const sample_opts_t *o, sample_run_t *r)
{
    int rc = ld_model_load(o->model, &r->ebm, &r->meta, r->hash);
    if (rc)
        return rc;
    const ld_ebm_arch_t *a = ld_ebm_arch(r->ebm);
    if (!ld_ebm_arch_domain(a, o->target, &r->target)) {
        char list[LD_EBM_MAX_DOMAINS * (LD_NAME_MAX + 1)] = "";
        for (int d = 0; d < a->n_domains; d++) {
            strcat(list, d ? "," : "");
            strcat(list, a->domains[d]);
        }
        return ld_seterr(LD_ENOENT, "target domain '%s' is not one of the model's domains (%s)", o->target, list);
    }
    if ((rc = open_autoencoder(o, r)))
        return rc;
    const char *maskmap = o->maskmap ? o->maskmap : ld_meta_get(r->meta, "maskmap");
    ld_dataset_opts_t dopts = { .root = o->data, .manifest = o->manifest, .subdir = o->subdir,
                                .domains = o->source, .maskmap = maskmap, .scale = o->scale,
                                .resize = o->resize, .fit = o->whole ? r->s : 0 };
    if ((rc = ld_dataset_open(&dopts, &r->ds)))
        return rc;
    if (ld_dataset_channels(r->ds) != r->c)
        return ld_seterr(LD_EINVAL, "domain '%s' has %d-channel images but the model expects %d", o->source,
                         ld_dataset_channels(r->ds), r->c);
    if (ld_dataset_n_classes(r->ds) > a->mask_classes)
        return ld_seterr(LD_EINVAL, "mask map \"%s\" gives %d classes but the model has %d",
                         maskmap ? maskmap : "0:0,*:1", ld_dataset_n_classes(r->ds), a->mask_classes);
    return LD_OK;
}

/* Options not given take the model's training values. */
static int resolve_langevin(sample_opts_t *o, const sample_run_t *r)
{
    int rc = trained_langevin(&step_opt, o->step_given, o->model, r->meta, &o->lp.step_size, &o->step_from);
    if (!rc)
        rc = trained_langevin(&noise_opt, o->noise_given, o->model, r->meta, &o->lp.noise, &o->noise_from);
    return rc;
}

static int alloc_run(const sample_opts_t *o, sample_run_t *r)
{
    size_t n = (size_t)o->batch, px = (size_t)r->c * (size_t)r->s * (size_t)r->s, k = (size_t)o->lp.n_snapshots;
    r->n = o->batch;
    r->crops = calloc(n, sizeof *r->crops);
    r->start = malloc(sizeof(float) * n * px);
    r->snaps = malloc(sizeof(float) * n * px * (k ? k : 1));
    r->start_energy = malloc(sizeof(float) * n);
    r->snap_energy = malloc(sizeof(float) * n * (k ? k : 1));
    r->masks = malloc(n * (size_t)r->s * (size_t)r->s);
    r->targets = malloc(sizeof(int32_t) * n);
    r->chain_ids = malloc(sizeof(uint64_t) * n);
    if (!r->crops || !r->start || !r->snaps || !r->start_energy || !r->snap_energy || !r->masks || !r->targets
        || !r->chain_ids)
        return ld_seterr(LD_ENOMEM, "out of memory for %d chains of %dx%d", o->batch, r->s, r->s);
    int rc = ld_ebm_ws_new(ld_ebm_arch(r->ebm), o->batch, o->threads, &r->ws);
    if (!rc && r->ae)
        rc = ld_ae_ws_new(ld_ae_arch(r->ae), o->batch, o->threads, &r->ae_ws);
    return rc;
}

/* Chain j starts from crop j: random crops draw from one RNG stream of the
 * seed; centre crops cycle through the domain's items. */
static int cut_crops(const sample_opts_t *o, sample_run_t *r)
{
    ld_rng_t rng;
    ld_rng_init(&rng, o->lp.seed, CROP_STREAM);
    int n_items = ld_dataset_n_items(r->ds, 0);
    size_t px = (size_t)r->c * (size_t)r->s * (size_t)r->s, ms = (size_t)r->s * (size_t)r->s;
    for (int j = 0; j < r->n; j++) {
        int rc = o->center ? ld_dataset_center_crop(r->ds, 0, j % n_items, r->s, &r->crops[j])
                           : ld_dataset_random_crop(r->ds, 0, -1, r->s, &rng, &r->crops[j]);
        if (!rc)
            rc = ld_dataset_extract(r->ds, &r->crops[j], r->start + (size_t)j * px, r->masks + (size_t)j * ms);
        if (rc)
            return rc;
        r->targets[j] = r->target;
        r->chain_ids[j] = (uint64_t)j;
    }
    return LD_OK;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int run_chains(const sample_opts_t *o, sample_run_t *r)
{
    double t0 = now_s();
    int rc = r->ae ? ld_langevin_sample_latent(r->ebm, r->ws, r->ae, r->ae_ws, &o->lp, o->keep, r->n, r->start,
                                               r->masks, r->targets, r->chain_ids, r->snaps, r->snap_energy,
                                               r->start_energy, NULL)
                   : ld_langevin_sample(r->ebm, r->ws, &o->lp, o->keep, r->n, r->start, r->masks, r->targets,
                                        r->chain_ids, r->snaps, r->snap_energy, r->start_energy, NULL);
    r->seconds = now_s() - t0;
    return rc;
}

/* ---- output ---- */

static void sample_name(char *buf, size_t n, int chain, int step)
{
    snprintf(buf, n, "c%03d_s%04d", chain, step);
}

/* One snapshot's image and mask PNGs. */
static int write_pair(const char *out, const sample_run_t *r, const uint8_t *value_of, const float *img, int j,
                      int step)
{
    char name[64], *path = NULL;
    ld_image_t pic = { 0 }, mask = { 0 };
    size_t ms = (size_t)r->s * (size_t)r->s;
    sample_name(name, sizeof name, j, step);
    int rc = ld_image_alloc(&pic, r->s, r->s, r->c);
    if (!rc)
        rc = ld_image_alloc(&mask, r->s, r->s, 1);
    if (!rc) {
        ld_image_put_float(&pic, 0, 0, img, r->c, r->s);
        for (size_t p = 0; p < ms; p++)
            mask.data[p] = value_of[r->masks[(size_t)j * ms + p]];
        if (!(rc = ld_text_format(&path, "%s/image/%s.png", out, name)))
            rc = ld_png_write(path, &pic);
        free(path);
        path = NULL;
    }
    if (!rc && !(rc = ld_text_format(&path, "%s/mask/%s.png", out, name)))
        rc = ld_png_write(path, &mask);
    free(path);
    ld_image_free(&pic);
    ld_image_free(&mask);
    return rc;
}

static int write_csv(const sample_opts_t *o, const sample_run_t *r)
{
    char *path = NULL;
    ld_afile_t *af = NULL;
    int rc = ld_text_format(&path, "%s/samples.csv", o->out);
    if (rc)
        return rc;
    rc = ld_afile_open(path, &af);
    free(path);
    if (rc)
        return rc;
    FILE *f = ld_afile_fp(af);
    fprintf(f, "file,source,target,step,energy,chain,seed,source_file,crop_x,crop_y\n");
    for (int k = 0; k < o->lp.n_snapshots; k++)
        for (int j = 0; j < r->n; j++) {
            char name[64];
            const ld_crop_t *cr = &r->crops[j];
            sample_name(name, sizeof name, j, o->lp.snapshots[k]);
            fprintf(f, "image/%s.png,", name);
            ld_text_csv_field(f, o->source);
            fputc(',', f);
            ld_text_csv_field(f, o->target);
            double energy = r->snap_energy[(size_t)k * (size_t)r->n + (size_t)j];
            fprintf(f, ",%d,%.9g,%d,%llu,", o->lp.snapshots[k], energy, j, (unsigned long long)o->lp.seed);
            ld_text_csv_field(f, ld_dataset_item_name(r->ds, cr->domain, cr->item));
            fprintf(f, ",%d,%d\n", cr->x, cr->y);
        }
    if (ferror(f)) {
        ld_afile_abort(&af);
        return ld_seterr(LD_EIO, "%s/samples.csv: write failed", o->out);
    }
    return ld_afile_commit(&af);
}

/* Pastes src at (x0, y0) of grid enlarged to side x side (nearest neighbour). */
static int paste_scaled(ld_image_t *grid, int x0, int y0, const ld_image_t *src, int side)
{
    ld_image_t big;
    int rc = ld_image_resize(src, side, side, LD_RESIZE_NEAREST, &big);
    if (rc)
        return rc;
    ld_image_paste(grid, x0, y0, &big);
    ld_image_free(&big);
    return 0;
}

/* The grid: one row per chain; columns = the mask (class ids as grey
 * levels), the start crop, then each snapshot; tiles of side S enlarged by
 * the smallest whole factor that makes them GRID_MIN_TILE px or more, so a
 * grid of small crops can be looked at. */
static int write_grid(const sample_opts_t *o, const sample_run_t *r)
{
    static const uint8_t background[3] = { 32, 32, 32 };
    int side = r->s * ((GRID_MIN_TILE + r->s - 1) / r->s);
    int cols = 2 + o->lp.n_snapshots, step = side + GRID_GAP, k_max = ld_dataset_n_classes(r->ds) - 1;
    size_t px = (size_t)r->c * (size_t)r->s * (size_t)r->s, ms = (size_t)r->s * (size_t)r->s;
    ld_image_t grid, tile, mask;
    int rc = ld_image_alloc(&grid, cols * step + GRID_GAP, r->n * step + GRID_GAP, 3);
    if (rc)
        return rc;
    ld_image_fill_rect(&grid, 0, 0, grid.width, grid.height, background);
    rc = ld_image_alloc(&tile, r->s, r->s, r->c);
    if (!rc)
        rc = ld_image_alloc(&mask, r->s, r->s, 1);
    for (int j = 0; j < r->n && !rc; j++) {
        int y0 = GRID_GAP + j * step;
        for (size_t p = 0; p < ms; p++)
            mask.data[p] = (uint8_t)(r->masks[(size_t)j * ms + p] * 255 / (k_max > 0 ? k_max : 1));
        rc = paste_scaled(&grid, GRID_GAP, y0, &mask, side);
        for (int k = 1; k < cols && !rc; k++) {
            const float *img = k == 1 ? r->start + (size_t)j * px
                                      : r->snaps + ((size_t)(k - 2) * (size_t)r->n + (size_t)j) * px;
            ld_image_put_float(&tile, 0, 0, img, r->c, r->s);
            rc = paste_scaled(&grid, GRID_GAP + k * step, y0, &tile, side);
        }
    }
    char *path = NULL;
    if (!rc && !(rc = ld_text_format(&path, "%s/grid.png", o->out)))
        rc = ld_png_write(path, &grid);
    free(path);
    ld_image_free(&tile);
    ld_image_free(&mask);
    ld_image_free(&grid);
    return rc;
}

/* Mask value written for each class id: the mask map's representative
 * value when every class has one, else the raw class id. */
static void mask_values(const ld_dataset_t *ds, uint8_t value_of[256])
{
    const ld_maskmap_t *map = ld_dataset_maskmap(ds);
    int all = 1;
    for (int c = 0; c < 256; c++) {
        bool found = c < map->n_classes && ld_maskmap_value(map, c, &value_of[c]);
        all &= c >= map->n_classes || found;
        if (!found)
            value_of[c] = (uint8_t)c;
    }
    if (!all)
        for (int c = 0; c < 256; c++)
            value_of[c] = (uint8_t)c;
}

static int write_outputs(const sample_opts_t *o, const sample_run_t *r)
{
    char *img_dir = NULL, *mask_dir = NULL;
    int rc = ld_afile_mkdir(o->out);
    if (!rc)
        rc = ld_text_format(&img_dir, "%s/image", o->out);
    if (!rc)
        rc = ld_text_format(&mask_dir, "%s/mask", o->out);
    if (!rc)
        rc = ld_afile_mkdir(img_dir);
    if (!rc)
        rc = ld_afile_mkdir(mask_dir);
    free(img_dir);
    free(mask_dir);
    uint8_t value_of[256];
    mask_values(r->ds, value_of);
    size_t px = (size_t)r->c * (size_t)r->s * (size_t)r->s;
    for (int k = 0; k < o->lp.n_snapshots && !rc; k++)
        for (int j = 0; j < r->n && !rc; j++)
            rc = write_pair(o->out, r, value_of, r->snaps + ((size_t)k * (size_t)r->n + (size_t)j) * px, j,
                            o->lp.snapshots[k]);
    if (!rc)
        rc = write_csv(o, r);
    if (!rc)
        rc = write_grid(o, r);
    return rc;
}

int ldt_sample_main(int argc, char **argv)
{
    sample_opts_t o;
    int rc = parse_opts(argc, argv, &o);
    if (rc)
        return rc < 0 ? 0 : rc;
    sample_run_t r = { 0 };
    rc = open_model_and_data(&o, &r);
    if (!rc)
        rc = resolve_langevin(&o, &r);
    if (!rc)
        rc = alloc_run(&o, &r);
    if (!rc)
        rc = cut_crops(&o, &r);
    if (!rc)
        rc = run_chains(&o, &r);
    if (!rc)
        rc = write_outputs(&o, &r);
    if (!rc) {
        double isps = r.seconds > 0 ? (double)r.n * o.lp.steps / r.seconds : 0;
        double e0 = 0, e1 = 0;
        for (int j = 0; j < r.n; j++) {
            e0 += r.start_energy[j] / r.n;
            e1 += r.snap_energy[(size_t)(o.lp.n_snapshots - 1) * (size_t)r.n + (size_t)j] / r.n;
        }
        printf("sample: %d chains %s -> %s, %d steps in %.3f s: %.1f image-steps/s with %d thread(s)\n"
               "sample: step size %g (%s), noise %g (%s); chains in %s, keep %s\n"
               "sample: mean energy %.6g at the start, %.6g at step %d; model %.12s\n"
               "sample: wrote %d snapshots, samples.csv and grid.png to %s\n",
               r.n, o.source, o.target, o.lp.steps, r.seconds, isps, o.threads, (double)o.lp.step_size, o.step_from,
               (double)o.lp.noise, o.noise_from, ld_colour_space_name(ld_ebm_arch(r.ebm)->colour_space),
               ld_keep_name(o.keep), e0, e1, o.lp.snapshots[o.lp.n_snapshots - 1], r.hash, r.n * o.lp.n_snapshots,
               o.out);
    }
    run_free(&r);
    return rc ? ldt_fail("sample", rc) : 0;
}
