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
