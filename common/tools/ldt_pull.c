/* ldt_pull: `langdaug pull`, samples from samplers to files.
 *
 * --format png (default) writes, per sample k (0-based, 8 digits):
 *   DIR/<source>2<target>/image/<k>.png   the image (grey or RGB, 8-bit (v+1)*127.5)
 *   DIR/<source>2<target>/mask/<k>.png    the mask (class ids, or the values given
 *                                         by --mask-values or --maskmap)
 * which is the layout the LangDAug reference trainer reads for intermediate
 * domains. --format npz writes DIR/batch_<b>.npz per received batch with
 * arrays images [n,C,S,S] (wire dtype), masks [n,S,S] uint8, step, energy,
 * chain_id, seed, source_item, crop_x, crop_y. Either way DIR/samples.csv
 * holds one row of metadata per sample, naming its file(s).
 *
 * Every file is written atomically; samples.csv appears once the run is
 * complete, or interrupted by SIGINT/SIGTERM: then it lists the samples
 * written so far and the exit status is 130. Domain names become folder names with any character outside
 * [A-Za-z0-9._-] replaced by '_'. */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ld_afile.h"
#include "ld_text.h"
#include "ld_client.h"
#include "ld_dataset.h"
#include "ld_error.h"
#include "ld_image.h"
#include "ld_png.h"
#include "ldt.h"
#include "ldt_npz.h"
#include "ldt_request.h"

#define CMD "pull"
#define PATH_CAP 4096

enum { OPT_MASK_VALUES = 0x300, OPT_MASKMAP };

#define MAX_PAIRS_SHOWN 64
#define DOMAIN_SHOWN 64 /* characters of a domain name shown */
#define PAIRS_LINE 160 /* characters of pair names on the progress line */

typedef struct {
    const char *out;
    uint64_t total, done;
    int npz, quiet, tty;
    int n_mask_values;
    uint8_t mask_values[256];
    uint64_t npz_files;
    float *pixels;             /* one sample as floats */
    size_t pixels_cap;
    ld_afile_t *csv;
    struct timespec start;
    char pair[MAX_PAIRS_SHOWN][2 * DOMAIN_SHOWN + 2]; /* "A>B" in order of arrival: what is being pulled */
    uint64_t pair_samples[MAX_PAIRS_SHOWN];
    int n_pairs, more_pairs;                         /* more_pairs: pairs beyond the table */
} pull_t;

/* Counts a sample of (source, target) under its pair, adding the pair when new. */
static void note_pair(pull_t *p, const char *source, const char *target)
{
    char name[2 * DOMAIN_SHOWN + 2];
    snprintf(name, sizeof name, "%.*s>%.*s", DOMAIN_SHOWN, source, DOMAIN_SHOWN, target);
    for (int k = 0; k < p->n_pairs; k++)
        if (strcmp(p->pair[k], name) == 0) {
            p->pair_samples[k]++;
            return;
        }
    if (p->n_pairs == MAX_PAIRS_SHOWN) {
        p->more_pairs = 1;
        return;
    }
    memcpy(p->pair[p->n_pairs], name, sizeof name);
    p->pair_samples[p->n_pairs++] = 1;
}

/* The pairs so far, "A>B C>D ..." (samples each when counts), cut to fit cap. */
static void pairs_text(const pull_t *p, int counts, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < p->n_pairs && used + 1 < cap; k++) {
        int w = counts ? snprintf(buf + used, cap - used, "%s%s %" PRIu64, k ? ", " : "", p->pair[k],
                                  p->pair_samples[k])
                       : snprintf(buf + used, cap - used, "%s%s", k ? " " : "", p->pair[k]);
        used += w > 0 ? (size_t)w : 0;
    }
    if (p->more_pairs && used + 1 < cap)
        snprintf(buf + used, cap - used, " and more");
}

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: langdaug pull --from ENDPOINTS -n N --out DIR [options]\n"
            "Pulls N samples from langdaugd samplers and writes them under DIR.\n"
            "\n"
            "  -n, --count N         samples to write (required)\n"
            "  -o, --out DIR         output folder (created if missing)\n"
            "  --format png|npz      PNG image/mask pairs in DIR/<source>2<target>/{image,mask}/\n"
            "                        (default), or one NumPy .npz per batch\n"
            "  --mask-values V0,V1.. PNG mask pixel value of each class id (default: the id),\n"
            "                        e.g. 255,128,0 for the fundus cup/disc convention\n"
            "  --maskmap SPEC        PNG masks as values that read back as the same classes\n"
            "                        under this dataset mask map (e.g. the daemon's 0:0,*:1)\n"
            "  -q, --quiet           no progress bar\n" LDC_REQUEST_HELP
            "  -h, --help            this help\n"
            "Writes DIR/samples.csv with the metadata of every sample. Encoding defaults to\n"
            "uint8 for png and float32 for npz.\n");
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* SIGINT/SIGTERM stop the pull between batches (no SA_RESTART: they wake
 * the client's wait). */
static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static double elapsed_s(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void progress(const pull_t *p, int final)
{
    if (!p->tty || p->quiet)
        return;
    const int width = 30;
    int filled = p->total ? (int)((double)p->done / (double)p->total * width) : width;
    double secs = elapsed_s(&p->start);
    char pairs[PAIRS_LINE];
    pairs_text(p, 0, pairs, sizeof pairs);
    fprintf(stderr, "\r[%.*s%*s] %" PRIu64 "/%" PRIu64 " samples, %.1f/s, %d pair%s: %s", filled,
            "##############################", width - filled, "", p->done, p->total,
            secs > 0 ? (double)p->done / secs : 0.0, p->n_pairs, p->n_pairs == 1 ? "" : "s", pairs);
    if (final)
        fputc('\n', stderr);
    fflush(stderr);
}

/* A domain name as a folder name: safe characters only, never empty or dots. */
static void safe_name(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (; in[n] && n + 1 < cap; n++) {
        char ch = in[n];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                 ch == '_' || ch == '-';
        out[n] = ok ? ch : '_';
    }
    out[n] = '\0';
    if (n == 0 || strspn(out, ".") == n)
        snprintf(out, cap, "_%s", in[0] ? "dots" : "any");
}

static void csv_row(pull_t *p, const ld_batch_t *b, uint32_t i, const char *image, const char *mask, uint32_t row)
{
    FILE *f = ld_afile_fp(p->csv);
    const ld_sample_meta_t *m = &b->meta[i];
    fprintf(f, "%" PRIu64 ",", p->done);
    ld_text_csv_field(f, image);
    fputc(',', f);
    ld_text_csv_field(f, mask);
    fprintf(f, ",%u,", row);
    ld_text_csv_field(f, m->source_domain);
    fputc(',', f);
    ld_text_csv_field(f, m->target_domain);
    fprintf(f, ",%u,%.9g,%" PRIu64 ",%" PRIu64 ",", m->step, (double)m->energy, m->chain_id, m->seed);
    ld_text_csv_field(f, m->source_file);
    fprintf(f, ",%d,%d,", m->crop_x, m->crop_y);
    ld_text_csv_field(f, m->model_hash);
    fprintf(f, ",%u,%" PRIu64 ",%d\n", m->source_item, m->epoch, b->endpoint);
}

static int write_png_sample(pull_t *p, const ld_batch_t *b, uint32_t i)
{
    char pair[2 * 128 + 2], src[128], dst[128], dir[PATH_CAP], image[PATH_CAP], mask[PATH_CAP];
    safe_name(b->meta[i].source_domain, src, sizeof src);
    safe_name(b->meta[i].target_domain, dst, sizeof dst);
    snprintf(pair, sizeof pair, "%s2%s", src, dst);
    snprintf(image, sizeof image, "%s/image/%08" PRIu64 ".png", pair, p->done);
    snprintf(mask, sizeof mask, "%s/mask/%08" PRIu64 ".png", pair, p->done);
    int rc = 0;
    const char *subdirs[] = { "", "/image", "/mask" };
    for (int k = 0; k < 3 && !rc; k++) {
        if (snprintf(dir, sizeof dir, "%s/%s%s", p->out, pair, subdirs[k]) >= (int)sizeof dir)
            return ld_seterr(LD_ERANGE, "%s/%s: path too long", p->out, pair);
        rc = ld_afile_mkdir(dir);
    }
    ld_image_t img = { 0 }, m = { 0 };
    int s = (int)b->size;
    rc = rc ? rc : ld_image_alloc(&img, s, s, (int)b->channels);
    rc = rc ? rc : ld_image_alloc(&m, s, s, 1);
    if (!rc) {
        ld_batch_image_float(b, i, p->pixels);
        ld_image_put_float(&img, 0, 0, p->pixels, (int)b->channels, s);
        const uint8_t *ids = b->masks + (size_t)i * (size_t)s * (size_t)s;
        for (size_t j = 0; j < (size_t)s * (size_t)s; j++) {
            if (p->n_mask_values && ids[j] >= p->n_mask_values) {
                rc = ld_seterr(LD_ERANGE, "--mask-values gives %d values, but a mask has class %u",
                               p->n_mask_values, ids[j]);
                break;
            }
            m.data[j] = p->n_mask_values ? p->mask_values[ids[j]] : ids[j];
        }
    }
    char full[PATH_CAP + 8];
    if (!rc) {
        snprintf(full, sizeof full, "%s/%s", p->out, image);
        rc = ld_png_write(full, &img);
    }
    if (!rc) {
        snprintf(full, sizeof full, "%s/%s", p->out, mask);
        rc = ld_png_write(full, &m);
    }
    ld_image_free(&img);
    ld_image_free(&m);
    if (!rc)
        csv_row(p, b, i, image, mask, 0);
    return rc;
}

static int write_png_batch(pull_t *p, const ld_batch_t *b, uint32_t take)
{
    if (b->channels < 1 || b->channels > 4)
        return ld_seterr(LD_ENOTSUP, "PNG holds 1..4 channels, the samples have %u; use --format npz", b->channels);
    size_t need = (size_t)b->channels * b->size * b->size;
    if (need > p->pixels_cap) {
        float *np = realloc(p->pixels, need * sizeof *np);
        if (!np)
            return ld_seterr(LD_ENOMEM, "out of memory for a %ux%ux%u sample", b->channels, b->size, b->size);
        p->pixels = np;
        p->pixels_cap = need;
    }
    for (uint32_t i = 0; i < take; i++, p->done++) {
        int rc = write_png_sample(p, b, i);
        if (rc)
            return rc;
    }
    return 0;
}

/* The per-sample metadata columns of an npz batch. */
typedef struct {
    uint32_t *step, *item;
    float *energy;
    uint64_t *chain, *seed;
    int32_t *x, *y;
} npz_meta_t;

static int npz_meta_fill(npz_meta_t *nm, const ld_batch_t *b, uint32_t n)
{
    nm->step = malloc(n * sizeof *nm->step);
    nm->item = malloc(n * sizeof *nm->item);
    nm->energy = malloc(n * sizeof *nm->energy);
    nm->chain = malloc(n * sizeof *nm->chain);
    nm->seed = malloc(n * sizeof *nm->seed);
    nm->x = malloc(n * sizeof *nm->x);
    nm->y = malloc(n * sizeof *nm->y);
    if (!nm->step || !nm->item || !nm->energy || !nm->chain || !nm->seed || !nm->x || !nm->y)
        return ld_seterr(LD_ENOMEM, "out of memory for batch metadata");
    for (uint32_t i = 0; i < n; i++) {
        const ld_sample_meta_t *m = &b->meta[i];
        nm->step[i] = m->step;
        nm->item[i] = m->source_item;
        nm->energy[i] = m->energy;
        nm->chain[i] = m->chain_id;
        nm->seed[i] = m->seed;
        nm->x[i] = m->crop_x;
        nm->y[i] = m->crop_y;
    }
    return 0;
}

static void npz_meta_free(npz_meta_t *nm)
{
    free(nm->step);
    free(nm->item);
    free(nm->energy);
    free(nm->chain);
    free(nm->seed);
    free(nm->x);
    free(nm->y);
}

static int write_npz_batch(pull_t *p, const ld_batch_t *b, uint32_t take)
{
    static const char *const descr[] = { "<f4", "<f2", "|u1" };
    char name[64], path[PATH_CAP];
    snprintf(name, sizeof name, "batch_%06" PRIu64 ".npz", p->npz_files);
    if (snprintf(path, sizeof path, "%s/%s", p->out, name) >= (int)sizeof path)
        return ld_seterr(LD_ERANGE, "%s: path too long", p->out);
    size_t s = b->size, img_shape[4] = { take, b->channels, s, s }, mask_shape[3] = { take, s, s }, n1[1] = { take };
    size_t pix = (size_t)b->channels * s * s;
    ldt_npz_t z = { .n = 0 };
    npz_meta_t nm = { 0 };
    int rc = npz_meta_fill(&nm, b, take);
    rc = rc ? rc : ldt_npz_add(&z, "images", descr[b->encoding], img_shape, 4, b->images,
                               take * pix * ld_encoding_size(b->encoding));
    rc = rc ? rc : ldt_npz_add(&z, "masks", "|u1", mask_shape, 3, b->masks, take * s * s);
    rc = rc ? rc : ldt_npz_add(&z, "step", "<u4", n1, 1, nm.step, take * 4);
    rc = rc ? rc : ldt_npz_add(&z, "energy", "<f4", n1, 1, nm.energy, take * 4);
    rc = rc ? rc : ldt_npz_add(&z, "chain_id", "<u8", n1, 1, nm.chain, take * 8);
    rc = rc ? rc : ldt_npz_add(&z, "seed", "<u8", n1, 1, nm.seed, take * 8);
    rc = rc ? rc : ldt_npz_add(&z, "source_item", "<u4", n1, 1, nm.item, take * 4);
    rc = rc ? rc : ldt_npz_add(&z, "crop_x", "<i4", n1, 1, nm.x, take * 4);
    rc = rc ? rc : ldt_npz_add(&z, "crop_y", "<i4", n1, 1, nm.y, take * 4);
    rc = rc ? rc : ldt_npz_write(&z, path);
    npz_meta_free(&nm);
    if (rc)
        return rc;
    p->npz_files++;
    for (uint32_t i = 0; i < take; i++, p->done++)
        csv_row(p, b, i, name, name, i);
    return 0;
}

static int parse_mask_values(pull_t *p, const char *arg)
{
    int v[256], n;
    if (ld_text_parse_int_list("--mask-values", arg, 0, 255, v, 256, &n))
        return ldt_usage_error(CMD, "%s", ld_errdetail());
    for (int i = 0; i < n; i++)
        p->mask_values[i] = (uint8_t)v[i];
    p->n_mask_values = n;
    return 0;
}

/* The mask values of a dataset mask map, one per class it defines. */
static int parse_maskmap(pull_t *p, const char *arg)
{
    ld_maskmap_t map;
    if (ld_maskmap_parse(arg, &map))
        return ldt_usage_error(CMD, "--maskmap: %s", ld_errdetail());
    for (int c = 0; c < map.n_classes; c++) {
        if (!ld_maskmap_value(&map, c, &p->mask_values[c]))
            return ldt_usage_error(CMD, "--maskmap: no mask value maps to class %d", c);
    }
    p->n_mask_values = map.n_classes;
    return 0;
}

static int parse_args(int argc, char **argv, pull_t *p, ldt_request_t *req)
{
    static const struct option longopts[] = {
        LDC_REQUEST_LONGOPTS,
        { "count", required_argument, 0, 'n' },
        { "out", required_argument, 0, 'o' },
        { "format", required_argument, 0, 'f' },
        { "mask-values", required_argument, 0, OPT_MASK_VALUES },
        { "maskmap", required_argument, 0, OPT_MASKMAP },
        { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int opt, rc;
    int64_t n;
    while ((opt = ldt_getopt(CMD, argc, argv, "n:o:f:qh", longopts)) != -1) {
        if ((rc = ldt_request_option(req, CMD, opt, optarg)) >= 0) {
            if (rc)
                return rc;
            continue;
        }
        switch (opt) {
        case 'n':
            if (ld_text_parse_i64("-n", optarg, 1, INT64_MAX, &n))
                return ldt_usage_error(CMD, "%s", ld_errdetail());
            p->total = (uint64_t)n;
            break;
        case 'o': p->out = optarg; break;
        case 'f':
            if (strcmp(optarg, "png") && strcmp(optarg, "npz"))
                return ldt_usage_error(CMD, "--format: '%s' is not png or npz", optarg);
            p->npz = !strcmp(optarg, "npz");
            break;
        case OPT_MASK_VALUES:
        case OPT_MASKMAP:
            if (p->n_mask_values)
                return ldt_usage_error(CMD, "--mask-values and --maskmap: give one, once");
            if ((rc = opt == OPT_MASKMAP ? parse_maskmap(p, optarg) : parse_mask_values(p, optarg)))
                return rc;
            break;
        case 'q': p->quiet = 1; break;
        case 'h': usage(stdout); return -1;
        default: return 2;
        }
    }
    if ((rc = ldt_no_operands(CMD, argc, argv)) || (rc = ldt_request_finish(req, CMD)))
        return rc;
    if (!p->total)
        return ldt_usage_error(CMD, "-n N (samples to write) is required");
    if (!p->out)
        return ldt_usage_error(CMD, "--out DIR is required");
    if (!req->encoding_set)
        req->opts.encoding = p->npz ? LD_ENCODING_FLOAT32 : LD_ENCODING_UINT8;
    return 0;
}

static int run(pull_t *p, const ldt_request_t *req)
{
    static const char header[] = "index,image,mask,row,source_domain,target_domain,step,energy,chain_id,seed,"
                                 "source_file,crop_x,crop_y,model_hash,source_item,epoch,endpoint\n";
    char path[PATH_CAP];
    ld_client_t *client = NULL;
    int rc = ld_afile_mkdir(p->out);
    if (!rc && snprintf(path, sizeof path, "%s/samples.csv", p->out) >= (int)sizeof path)
        rc = ld_seterr(LD_ERANGE, "%s: path too long", p->out);
    rc = rc ? rc : ld_afile_open(path, &p->csv);
    rc = rc ? rc : ld_afile_write(p->csv, header, sizeof header - 1);
    rc = rc ? rc : ld_client_new(&req->opts, &client);
    if (!rc)
        ld_client_set_cancel(client, &interrupted);
    clock_gettime(CLOCK_MONOTONIC, &p->start);
    while (!rc && p->done < p->total && !interrupted) {
        ld_batch_t *b;
        if ((rc = ld_client_next(client, &b)))
            break;
        uint32_t take = p->total - p->done < b->n ? (uint32_t)(p->total - p->done) : b->n;
        for (uint32_t i = 0; i < take; i++)
            note_pair(p, b->meta[i].source_domain, b->meta[i].target_domain);
        rc = p->npz ? write_npz_batch(p, b, take) : write_png_batch(p, b, take);
        ld_batch_destroy(&b);
        progress(p, 0);
    }
    progress(p, 1);
    ld_client_destroy(&client);
    if (rc == LD_ECANCELED || (!rc && interrupted))
        return (rc = ld_afile_commit(&p->csv)) ? rc : ld_seterr(LD_ECANCELED, "interrupted");
    if (rc) {
        ld_afile_abort(&p->csv);
        return rc;
    }
    return ld_afile_commit(&p->csv);
}

int ldt_pull_main(int argc, char **argv)
{
    pull_t p = { .tty = isatty(STDERR_FILENO) };
    ldt_request_t req;
    ldt_request_init(&req, LD_ENCODING_UINT8);
    req.opts.name = "langdaug pull";
    int rc = parse_args(argc, argv, &p, &req);
    if (rc == 0) {
        if (!req.opts.n_targets && !req.opts.n_pairs && !p.quiet)
            fprintf(stderr, "langdaug pull: no --targets or --pairs: every (source, target) pair the sampler serves, "
                            "uniformly\n");
        catch_signals();
        rc = run(&p, &req);
        if (rc == LD_ECANCELED) {
            fprintf(stderr, "langdaug pull: interrupted; %" PRIu64 " samples written to %s\n", p.done, p.out);
            rc = 130;
        } else if (rc) {
            rc = ldt_fail(CMD, rc);
        } else if (!p.quiet) {
            char pairs[4096];
            pairs_text(&p, 1, pairs, sizeof pairs);
            fprintf(stderr, "langdaug pull: wrote %" PRIu64 " samples to %s (%s)\n", p.done, p.out, pairs);
        }
    } else if (rc < 0) {
        rc = 0; /* --help */
    }
    free(p.pixels);
    ldt_request_free(&req);
    return rc;
}
