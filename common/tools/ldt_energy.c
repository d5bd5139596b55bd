/* langdaug energy: energies and dE/dimage of a batch of samples under a model.
 *
 * Reads image/mask/target tensors from a safetensors file, checks them
 * against the model, evaluates them in batches of --batch with
 * ld_ebm_energy (results do not depend on --batch or --threads), and writes
 * energy, grad (and with --param-grad the weight gradients of the summed
 * energy, "grad.<param>") to one safetensors file atomically. It is the
 * reference path the PyTorch parity tests use. */
#include "ldt.h"
#include "ld_text.h"
#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_model.h"
#include "ld_safetensors.h"
#include "ld_threadpool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "energy"

static const char usage_text[] =
    "Usage: langdaug energy --model M --in X.safetensors --out Y.safetensors [options]\n"
    "\n"
    "Evaluates the energy E(image | mask, target domain) of every sample in X and\n"
    "its gradient with respect to the image, and writes them to Y atomically.\n"
    "\n"
    "Input tensors (X):\n"
    "  image    [N,C,S,S]  F32         images in [-1,1], in the model's colour space\n"
    "                                  (scaled CIE LAB for a colour_space=lab model)\n"
    "  mask     [N,S,S]    U8          class ids < K\n"
    "  target   [N]        I32 or I64  target domain indices < D\n"
    "Output tensors (Y):\n"
    "  energy   [N]        F32\n"
    "  grad     [N,C,S,S]  F32         dE/dimage\n"
    "  grad.<parameter>    F32         with --param-grad: d(sum of E)/d(parameter)\n"
    "\n"
    "Options:\n"
    "  -m, --model FILE    the model (.safetensors)\n"
    "  -i, --in FILE       input tensors\n"
    "  -o, --out FILE      output tensors\n"
    "  -t, --threads T     threads (default: online CPUs, at most 16)\n"
    "  -b, --batch B       samples per evaluation (default 16)\n"
    "      --param-grad    also write the weight gradients\n"
    "  -h, --help          this help\n";

typedef struct {
    const char *model, *in, *out;
    int threads, batch, param_grad;
} energy_opts_t;

/* Returns -1 to go on, or the exit status. */
static int parse_options(int argc, char **argv, energy_opts_t *o)
{
    enum { OPT_PARAM_GRAD = 256 };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"in", required_argument, NULL, 'i'},
        {"out", required_argument, NULL, 'o'},   {"threads", required_argument, NULL, 't'},
        {"batch", required_argument, NULL, 'b'}, {"param-grad", no_argument, NULL, OPT_PARAM_GRAD},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    *o = (energy_opts_t){.threads = ld_threadpool_default_threads(16), .batch = 16};
    int c;
    while ((c = ldt_getopt(CMD, argc, argv, "m:i:o:t:b:h", longopts)) != -1) {
        int rc = LD_OK;
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'i': o->in = optarg; break;
        case 'o': o->out = optarg; break;
        case 't': rc = ld_text_parse_int("--threads", optarg, 1, 256, &o->threads); break;
        case 'b': rc = ld_text_parse_int("--batch", optarg, 1, 65536, &o->batch); break;
        case OPT_PARAM_GRAD: o->param_grad = 1; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: return 2;
        }
        if (rc)
            return ldt_usage_error(CMD, "%s", ld_errdetail());
    }
    if (ldt_no_operands(CMD, argc, argv))
        return 2;
    if (!o->model || !o->in || !o->out)
        return ldt_usage_error(CMD, "--%s is required", !o->model ? "model" : !o->in ? "in" : "out");
    return -1;
}

typedef struct {
    int n;           /* N */
    size_t img;      /* C*S*S */
    size_t pix;      /* S*S */
    float *image;    /* [N,C,S,S], aligned copies of the file's bytes */
    uint8_t *mask;   /* [N,S,S] */
    int32_t *target; /* [N] */
} batch_in_t;

static void batch_in_free(batch_in_t *b)
{
    free(b->image);
    free(b->mask);
    free(b->target);
    memset(b, 0, sizeof *b);
}

static int input_tensor(const ld_st_t *st, const char *name, const ld_st_tensor_t **out)
{
    *out = ld_st_find(st, name);
    if (!*out)
        return ld_seterr(LD_EFORMAT, "%s: no tensor '%s'", ld_st_path(st), name);
    return LD_OK;
}

/* dims = the expected shape; N is image's first dimension, shown as "N" when
 * image itself has no dimensions. */
static int check_shape(const ld_st_t *st, const ld_st_tensor_t *t, int ndim, const int64_t *dims)
{
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = t->shape[d] == dims[d];
    if (ok)
        return LD_OK;
    char want[128], got[128];
    size_t nw = 0, ng = 0;
    for (int d = 0; d < ndim; d++)
        nw += dims[d] < 0 ? (size_t)snprintf(want + nw, sizeof want - nw, "%sN", d ? "," : "")
                          : (size_t)snprintf(want + nw, sizeof want - nw, "%s%lld", d ? "," : "", (long long)dims[d]);
    got[0] = '\0';
    for (int d = 0; d < t->ndim && ng < sizeof got; d++)
        ng += (size_t)snprintf(got + ng, sizeof got - ng, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    return ld_seterr(LD_EFORMAT, "%s: tensor '%s' has shape [%s], the model needs [%s]", ld_st_path(st), t->name,
                     got, want);
}

static int check_dtype(const ld_st_t *st, const ld_st_tensor_t *t, ld_dtype_t want, ld_dtype_t alt)
{
    if (t->dtype == want || t->dtype == alt)
        return LD_OK;
    return ld_seterr(LD_EFORMAT, "%s: tensor '%s' has dtype %s, expected %s%s%s", ld_st_path(st), t->name,
                     ld_dtype_name(t->dtype), ld_dtype_name(want), alt != want ? " or " : "",
                     alt != want ? ld_dtype_name(alt) : "");
}

static int check_mask_values(const ld_st_t *st, const batch_in_t *b, int classes)
{
    for (int i = 0; i < b->n; i++)
        for (size_t p = 0; p < b->pix; p++) {
            int v = b->mask[(size_t)i * b->pix + p];
            if (v >= classes)
                return ld_seterr(LD_EINVAL, "%s: mask of sample %d has class %d at pixel %zu; the model has %d classes",
                                 ld_st_path(st), i, v, p, classes);
        }
    return LD_OK;
}

static int read_targets(const ld_st_t *st, const ld_st_tensor_t *t, const ld_ebm_arch_t *a, int32_t *out)
{
    for (size_t i = 0; i < t->numel; i++) {
        int64_t v;
        if (t->dtype == LD_DT_I64) {
            memcpy(&v, (const char *)t->data + 8 * i, 8);
        } else {
            int32_t v32;
            memcpy(&v32, (const char *)t->data + 4 * i, 4);
            v = v32;
        }
        if (v < 0 || v >= a->n_domains)
            return ld_seterr(LD_EINVAL, "%s: target[%zu] = %lld is not a domain index (the model has %d domains)",
                             ld_st_path(st), i, (long long)v, a->n_domains);
        out[i] = (int32_t)v;
    }
    return LD_OK;
}

static int load_inputs(const char *path, const ld_ebm_arch_t *a, batch_in_t *b)
{
    memset(b, 0, sizeof *b);
    ld_st_t *st;
    int rc = ld_st_open(path, &st);
    if (rc)
        return rc;
    const ld_st_tensor_t *img, *msk, *tgt;
    if ((rc = input_tensor(st, "image", &img)) || (rc = input_tensor(st, "mask", &msk)) ||
        (rc = input_tensor(st, "target", &tgt)) || (rc = check_dtype(st, img, LD_DT_F32, LD_DT_F32)) ||
        (rc = check_dtype(st, msk, LD_DT_U8, LD_DT_U8)) || (rc = check_dtype(st, tgt, LD_DT_I32, LD_DT_I64)))
        goto done;
    int64_t n = img->ndim >= 1 ? img->shape[0] : -1, S = a->size;
    int64_t dims_img[4] = {n, a->image_channels, S, S}, dims_mask[3] = {n, S, S}, dims_tgt[1] = {n};
    if ((rc = check_shape(st, img, 4, dims_img)) || (rc = check_shape(st, msk, 3, dims_mask)) ||
        (rc = check_shape(st, tgt, 1, dims_tgt)))
        goto done;
    if (n > INT32_MAX) {
        rc = ld_seterr(LD_ERANGE, "%s: %lld samples is too many", path, (long long)n);
        goto done;
    }
    b->n = (int)n;
    b->pix = (size_t)S * (size_t)S;
    b->img = (size_t)a->image_channels * b->pix;
    b->image = malloc(img->nbytes + 1);
    b->mask = malloc(msk->nbytes + 1);
    b->target = malloc(tgt->numel * sizeof *b->target + 1);
    if (!b->image || !b->mask || !b->target) {
        rc = ld_seterr(LD_ENOMEM, "%s: cannot allocate the inputs", path);
        goto done;
    }
    memcpy(b->image, img->data, img->nbytes);
    memcpy(b->mask, msk->data, msk->nbytes);
    if ((rc = read_targets(st, tgt, a, b->target)) == LD_OK)
        rc = check_mask_values(st, b, a->mask_classes);
done:
    if (rc)
        batch_in_free(b);
    ld_st_close(&st);
    return rc;
}

typedef struct {
    float *energy;      /* [N] */
    float *grad;        /* [N,C,S,S] */
    float *param_grad;  /* [numel] or NULL */
} batch_out_t;

static int evaluate(const ld_ebm_t *m, const energy_opts_t *o, const batch_in_t *in, batch_out_t *out)
{
    int max_batch = in->n < o->batch ? (in->n > 0 ? in->n : 1) : o->batch;
    ld_ebm_ws_t *ws = NULL;
    float *ones = malloc((size_t)max_batch * sizeof *ones);
    int rc = ones ? ld_ebm_ws_new(ld_ebm_arch(m), max_batch, o->threads, &ws)
                  : ld_seterr(LD_ENOMEM, "out of memory for a batch of %d", max_batch);
    for (int i = 0; ones && i < max_batch; i++)
        ones[i] = 1.0f;
    for (int i0 = 0; rc == LD_OK && i0 < in->n; i0 += max_batch) {
        int n = in->n - i0 < max_batch ? in->n - i0 : max_batch;
        const float *x = in->image + (size_t)i0 * in->img;
        const uint8_t *mk = in->mask + (size_t)i0 * in->pix;
        const int32_t *t = in->target + i0;
        rc = ld_ebm_energy(m, ws, n, x, mk, t, out->energy + i0, out->grad + (size_t)i0 * in->img);
        if (rc == LD_OK && out->param_grad)
            rc = ld_ebm_backward_params(m, ws, n, x, mk, t, ones, NULL, out->param_grad);
    }
    ld_ebm_ws_destroy(&ws);
    free(ones);
    return rc;
}

static int write_outputs(const char *path, const ld_ebm_t *m, const char *model_hash, const batch_in_t *in,
                         const batch_out_t *out)
{
    const ld_ebm_arch_t *a = ld_ebm_arch(m);
    int64_t n = in->n, dims_e[1] = {n}, dims_g[4] = {n, a->image_channels, a->size, a->size};
    ld_st_writer_t *w;
    int rc = ld_st_writer_new(&w);
    if (rc)
        return rc;
    if ((rc = ld_st_writer_set_meta(w, "format", "langdaug-energy")) ||
        (rc = ld_st_writer_set_meta(w, "model_sha256", model_hash)) ||
        (rc = ld_st_writer_add(w, "energy", LD_DT_F32, 1, dims_e, out->energy)) ||
        (rc = ld_st_writer_add(w, "grad", LD_DT_F32, 4, dims_g, out->grad)))
        goto done;
    for (size_t i = 0; out->param_grad && i < ld_ebm_n_tensors(m); i++) {
        const ld_ebm_tensor_t *p = ld_ebm_tensor(m, i);
        char name[LD_NAME_MAX + 80];
        snprintf(name, sizeof name, "grad.%s", p->name);
        if ((rc = ld_st_writer_add(w, name, LD_DT_F32, p->ndim, p->shape, out->param_grad + p->offset)))
            goto done;
    }
    rc = ld_st_writer_write(w, path, NULL);
done:
    ld_st_writer_destroy(&w);
    return rc;
}

int ldt_energy_main(int argc, char **argv)
{
    energy_opts_t o;
    int status = parse_options(argc, argv, &o);
    if (status >= 0)
        return status;
    ld_ebm_t *m = NULL;
    char hash[65];
    batch_in_t in = {0};
    batch_out_t out = {0};
    int rc = ld_model_load(o.model, &m, NULL, hash);
    if (rc == LD_OK)
        rc = load_inputs(o.in, ld_ebm_arch(m), &in);
    if (rc == LD_OK) {
        out.energy = calloc((size_t)in.n + 1, sizeof *out.energy);
        out.grad = calloc((size_t)in.n * in.img + 1, sizeof *out.grad);
        out.param_grad = o.param_grad ? calloc(ld_ebm_numel(m), sizeof *out.param_grad) : NULL;
        if (!out.energy || !out.grad || (o.param_grad && !out.param_grad))
            rc = ld_seterr(LD_ENOMEM, "cannot allocate the outputs for %d samples", in.n);
    }
    if (rc == LD_OK)
        rc = evaluate(m, &o, &in, &out);
    if (rc == LD_OK)
        rc = write_outputs(o.out, m, hash, &in, &out);
    free(out.energy);
    free(out.grad);
    free(out.param_grad);
    batch_in_free(&in);
    ld_ebm_destroy(&m);
    return rc ? ldt_fail(CMD, rc) : 0;
}
