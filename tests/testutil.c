/* testutil: fixtures shared by the suites (see testutil.h). */
#include "testutil.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ld_error.h"
#include "ld_safetensors.h"

TCase *ld_tcase(const char *name, double timeout_s)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout_s);
    return tc;
}

int ld_test_run(Suite *suite)
{
    SRunner *sr = srunner_create(suite);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

const char *ld_test_data_dir(void)
{
    const char *dir = getenv("LD_DATA_DIR");
    if (!dir || !*dir)
        dir = "../shared/data";
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return NULL;
    return dir;
}

const char *ld_test_build_dir(void)
{
    const char *dir = getenv("LD_BUILD");
    return dir && *dir ? dir : "build";
}

char *ld_test_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char *path = ld_test_path(base && *base ? base : "/tmp", "langdaug-test.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(path));
    return path;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void ld_test_rmtree(const char *path)
{
    if (path)
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

char *ld_test_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    ck_assert_ptr_nonnull(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

void ld_test_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

char *ld_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    ck_assert_int_ge(size, 0);
    rewind(f);
    char *buf = malloc((size_t)size + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    buf[size] = '\0';
    if (len)
        *len = (size_t)size;
    return buf;
}

int ld_test_count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot open directory %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

int ld_test_system(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    fflush(NULL);
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

int ld_test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

double ld_test_silu(double x) { return x / (1.0 + exp(-x)); }

void ld_test_ref_conv(const double *x, int cin, int h, int w, const float *wt, const float *bias, int cout, int k,
                      double *y)
{
    int pad = k / 2;
    for (int co = 0; co < cout; co++)
        for (int yy = 0; yy < h; yy++)
            for (int xx = 0; xx < w; xx++) {
                double acc = bias ? bias[co] : 0.0;
                for (int ci = 0; ci < cin; ci++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int sy = yy + ky - pad, sx = xx + kx - pad;
                            if (sy < 0 || sy >= h || sx < 0 || sx >= w)
                                continue;
                            acc += (double)wt[((co * cin + ci) * k + ky) * k + kx] * x[(ci * h + sy) * w + sx];
                        }
                y[(co * h + yy) * w + xx] = acc;
            }
}

void ld_test_ref_pool(const double *x, int c, int h, int w, double *y)
{
    for (int ch = 0; ch < c; ch++)
        for (int r = 0; r < h / 2; r++)
            for (int q = 0; q < w / 2; q++) {
                const double *p = x + (ch * h + 2 * r) * w + 2 * q;
                y[(ch * (h / 2) + r) * (w / 2) + q] = 0.25 * (p[0] + p[1] + p[w] + p[w + 1]);
            }
}

void ld_test_ref_down(const double *x, int cin, int cout, int h, const float *const t[6], double *out)
{
    size_t n = (size_t)h * (size_t)h;
    double *t1 = malloc(sizeof(double) * (size_t)cout * n), *t2 = malloc(sizeof(double) * (size_t)cout * n);
    double *s = malloc(sizeof(double) * (size_t)cout * n), *sp = malloc(sizeof(double) * (size_t)cout * n / 4);
    ld_test_ref_conv(x, cin, h, h, t[0], t[1], cout, 3, t1);
    for (size_t i = 0; i < (size_t)cout * n; i++)
        t1[i] = ld_test_silu(t1[i]);
    ld_test_ref_conv(t1, cout, h, h, t[2], t[3], cout, 3, t2);
    for (size_t i = 0; i < (size_t)cout * n; i++)
        t2[i] = ld_test_silu(t2[i]);
    ld_test_ref_conv(x, cin, h, h, t[4], t[5], cout, 1, s);
    ld_test_ref_pool(t2, cout, h, h, out);
    ld_test_ref_pool(s, cout, h, h, sp);
    for (size_t i = 0; i < (size_t)cout * n / 4; i++)
        out[i] = (out[i] + sp[i]) / sqrt(2.0);
    free(t1);
    free(t2);
    free(s);
    free(sp);
}

void ld_test_write_defective(const char *src, const char *dst, const ld_test_defect_t *d)
{
    ld_st_t *st;
    ck_assert_int_eq(ld_st_open(src, &st), 0);
    ld_st_writer_t *w;
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    const ld_meta_t *m = ld_st_meta(st);
    for (size_t i = 0; i < ld_meta_count(m); i++) {
        const char *k = ld_meta_key(m, i), *v = ld_meta_value(m, i);
        if (d->meta_key && strcmp(k, d->meta_key) == 0) {
            if (!d->meta_value)
                continue;
            v = d->meta_value;
        }
        ck_assert_int_eq(ld_st_writer_set_meta(w, k, v), 0);
    }
    void *keep[4] = {NULL};
    int n_keep = 0;
    for (size_t i = 0; i < ld_st_n_tensors(st); i++) {
        const ld_st_tensor_t *t = ld_st_tensor(st, i);
        if (d->drop && strcmp(t->name, d->drop) == 0)
            continue;
        if (d->as_f64 && strcmp(t->name, d->as_f64) == 0) {
            double *x = malloc(t->numel * sizeof *x + 1);
            for (size_t j = 0; j < t->numel; j++) {
                float f;
                memcpy(&f, (const char *)t->data + 4 * j, 4);
                x[j] = f;
            }
            keep[n_keep++] = x;
            ck_assert_int_eq(ld_st_writer_add(w, t->name, LD_DT_F64, t->ndim, t->shape, x), 0);
        } else if (d->reshape && strcmp(t->name, d->reshape) == 0) {
            int64_t shape[2] = {2, t->shape[0] / 2};
            ck_assert_int_eq(ld_st_writer_add(w, t->name, LD_DT_F32, 2, shape, t->data), 0);
        } else if (d->nan_in && strcmp(t->name, d->nan_in) == 0) {
            float *x = malloc(t->nbytes + 4);
            memcpy(x, t->data, t->nbytes);
            x[0] = NAN;
            keep[n_keep++] = x;
            ck_assert_int_eq(ld_st_writer_add(w, t->name, LD_DT_F32, t->ndim, t->shape, x), 0);
        } else {
            ck_assert_int_eq(ld_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
        }
    }
    float extra = 1;
    int64_t one = 1;
    if (d->add)
        ck_assert_int_eq(ld_st_writer_add(w, d->add, LD_DT_F32, 1, &one, &extra), 0);
    ck_assert_int_eq(ld_st_writer_write(w, dst, NULL), 0);
    ld_st_writer_destroy(&w);
    ld_st_close(&st);
    for (int i = 0; i < n_keep; i++)
        free(keep[i]);
}

void ld_test_load_rejects(const char *good, const char *bad, const ld_test_defect_t *cases, size_t n,
                          int (*load)(const char *path))
{
    for (size_t i = 0; i < n; i++) {
        ld_test_write_defective(good, bad, &cases[i]);
        ld_test_stale_detail();
        int rc = load(bad);
        ck_assert_msg(rc == LD_EFORMAT, "case %zu (%s): got %s: %s", i, cases[i].needle, ld_strerror(rc),
                      ld_errdetail());
        ld_expect_fresh_detail(cases[i].needle);
        ck_assert_msg(strstr(ld_errdetail(), cases[i].needle) && strstr(ld_errdetail(), bad),
                      "case %zu: detail '%s' lacks '%s' or the path", i, ld_errdetail(), cases[i].needle);
    }
    /* the untouched rewrite loads: the defects above are the only cause */
    ld_test_defect_t none = { 0 };
    ld_test_write_defective(good, bad, &none);
    ck_assert_msg(load(bad) == 0, "%s", ld_errdetail());
}

void ld_test_tensor_table(const ld_cn_params_t *ps, const char *const *names, const int64_t (*shapes)[4], size_t n,
                          const char *absent)
{
    ck_assert_uint_eq(ps->n, n);
    size_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        const ld_cn_tensor_t *t = ld_cn_params_tensor(ps, i);
        ck_assert_str_eq(t->name, names[i]);
        ck_assert_uint_eq(t->offset, offset);
        size_t numel = 1;
        int ndim = 0;
        while (ndim < 4 && shapes[i][ndim])
            ndim++;
        ck_assert_int_eq(t->ndim, ndim);
        for (int d = 0; d < t->ndim; d++) {
            ck_assert_int_eq(t->shape[d], shapes[i][d]);
            numel *= (size_t)t->shape[d];
        }
        ck_assert_uint_eq(t->numel, numel);
        size_t found = n;
        ck_assert(ld_cn_params_find(ps, names[i], &found));
        ck_assert_uint_eq(found, i);
        offset += numel;
    }
    ck_assert_ptr_null(ld_cn_params_tensor(ps, n));
    ck_assert_uint_eq(ps->numel, offset);
    size_t found = n;
    ck_assert(!ld_cn_params_find(ps, absent, &found));
    ck_assert_uint_eq(found, n); /* not found: left as it was */
}

double ld_test_max_rel_err(const float *a, const float *b, size_t n, double floor)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double s = fabs((double)b[i]);
        double r = d / (s > floor ? s : floor);
        if (!(r <= worst)) /* NaN counts as worst */
            worst = isnan(r) ? INFINITY : r;
    }
    return worst;
}

void ld_test_drop_meta_key(const char *src, const char *dst, const char *key)
{
    ld_st_t *st;
    ld_st_writer_t *w;
    ck_assert_int_eq(ld_st_open(src, &st), 0);
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    const ld_meta_t *m = ld_st_meta(st);
    for (size_t i = 0; i < ld_meta_count(m); i++)
        if (strcmp(ld_meta_key(m, i), key) != 0)
            ck_assert_int_eq(ld_st_writer_set_meta(w, ld_meta_key(m, i), ld_meta_value(m, i)), 0);
    for (size_t i = 0; i < ld_st_n_tensors(st); i++) {
        const ld_st_tensor_t *t = ld_st_tensor(st, i);
        ck_assert_int_eq(ld_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    ck_assert_int_eq(ld_st_writer_write(w, dst, NULL), 0);
    ld_st_writer_destroy(&w);
    ld_st_close(&st);
}

int ld_test_files_equal(const char *a, const char *b)
{
    return ld_test_system("cmp -s '%s' '%s'", a, b) == 0;
}

ld_train_t *ld_test_train_new(const ld_train_config_t *cfg)
{
    ld_train_t *tr = NULL;
    int rc = ld_train_new(cfg, &tr);
    ck_assert_msg(rc == 0, "ld_train_new: %s: %s", ld_strerror(rc), ld_errdetail());
    return tr;
}

void ld_test_train_run_to(ld_train_t *tr, int64_t iters, const char *checkpoint, int64_t every)
{
    ld_train_run_opts_t ro = { .iters = iters, .checkpoint = checkpoint, .checkpoint_every = every };
    int rc = ld_train_run(tr, &ro);
    ck_assert_msg(rc == 0, "ld_train_run: %s: %s", ld_strerror(rc), ld_errdetail());
    ck_assert_int_eq(ld_train_iteration(tr), iters);
}

void ld_test_train_resume_bit_exact(const ld_train_config_t *cfg, const ld_train_config_t *split_cfg,
                                    const ld_meta_t *overrides, int64_t split, int64_t iters, int64_t every,
                                    const char *dir)
{
    char *ck_a = ld_test_path(dir, "a.ckpt"), *ck_b = ld_test_path(dir, "b.ckpt");
    char *mod_a = ld_test_path(dir, "a.safetensors"), *mod_b = ld_test_path(dir, "b.safetensors");
    ld_meta_t *prov;
    ck_assert_int_eq(ld_meta_new(&prov), 0);
    ck_assert_int_eq(ld_meta_set(prov, "command", "test"), 0);
    ld_train_t *tr = ld_test_train_new(cfg);
    ld_test_train_run_to(tr, iters, ck_a, every);
    ck_assert_int_eq(ld_train_save_model(tr, mod_a, prov, NULL), 0);
    ld_train_destroy(&tr);

    tr = ld_test_train_new(split_cfg ? split_cfg : cfg);
    ld_test_train_run_to(tr, split, ck_b, 0);
    ld_train_destroy(&tr);
    ck_assert_msg(ld_train_resume(ck_b, overrides, &tr) == 0, "%s", ld_errdetail());
    ck_assert_int_eq(ld_train_iteration(tr), split);
    ld_test_train_run_to(tr, iters, ck_b, every);
    ck_assert_int_eq(ld_train_save_model(tr, mod_b, prov, NULL), 0);
    ld_train_destroy(&tr);

    ck_assert_msg(ld_test_files_equal(mod_a, mod_b), "model files differ");
    ck_assert_msg(ld_test_files_equal(ck_a, ck_b), "final checkpoints differ");
    ld_meta_destroy(&prov);
    free(ck_a), free(ck_b), free(mod_a), free(mod_b);
}
