/* testutil: shared helpers for the Check suites in tests/.
 *
 * Every suite runs each test in its own forked process (Check's default)
 * with a timeout, so one crash or hang cannot take others with it. A test
 * that cannot run here (no real data, no python3-torch) calls LD_SKIP, which
 * prints "SKIP: <test>: <why>" for tests/run to count and returns. */
#ifndef LD_TESTUTIL_H
#define LD_TESTUTIL_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ld_convnet.h"
#include "ld_error.h"
#include "ld_train.h"

#define LD_SKIP(...)                                   \
    do {                                               \
        printf("SKIP: %s: ", __func__);                \
        printf(__VA_ARGS__);                           \
        printf("\n");                                  \
        fflush(stdout);                                \
        return;                                        \
    } while (0)

/* ---- the error convention (ld_error.h) ----
 * A failing call must record a detail of its own: one left over from an
 * earlier call is exactly the bug these checks catch. */

/* The detail set before a call that must replace it. */
#define LD_TEST_STALE_DETAIL "<stale detail of an earlier call>"

/* Sets the calling thread's detail to LD_TEST_STALE_DETAIL. */
#define ld_test_stale_detail() ld_seterr(LD_OK, "%s", LD_TEST_STALE_DETAIL)

/* Fails the test unless the detail is non-empty and not the stale one;
 * `what` names the failing call in the message. */
#define ld_expect_fresh_detail(what)                                                                          \
    ck_assert_msg(ld_errdetail()[0] && strcmp(ld_errdetail(), LD_TEST_STALE_DETAIL) != 0,                      \
                  "%s failed without recording a fresh error detail (ld_seterr)", (what))

/* Evaluates call (an expression giving 0 or an LD_E* code) after making the
 * detail stale; fails the test unless it gives `code` with a fresh detail,
 * which ld_errdetail() then returns for further checks. */
#define ld_expect_err(call, code)                                                                             \
    do {                                                                                                      \
        ld_test_stale_detail();                                                                               \
        int ld_expect_rc_ = (call);                                                                           \
        int ld_expect_want_ = (code);                                                                         \
        ck_assert_msg(ld_expect_rc_ == ld_expect_want_, "%s gave %d (%s), expected %d (%s); detail: %s", #call, \
                      ld_expect_rc_, ld_strerror(ld_expect_rc_), ld_expect_want_, ld_strerror(ld_expect_want_),  \
                      ld_errdetail());                                                                        \
        ld_expect_fresh_detail(#call);                                                                        \
    } while (0)

/* A test case with a timeout in seconds (scaled by CK_TIMEOUT_MULTIPLIER). */
TCase *ld_tcase(const char *name, double timeout_s);

/* Runs the suite (takes ownership), prints Check's summary line, and
 * returns the process exit status (0 when every test passed). */
int ld_test_run(Suite *suite);

/* The real-data folder (env LD_DATA_DIR, default ../shared/data), or NULL if
 * it does not exist. */
const char *ld_test_data_dir(void);

/* The build folder (env LD_BUILD, default "build"). */
const char *ld_test_build_dir(void);

/* A fresh private directory under $TMPDIR (or /tmp); caller frees the string
 * and removes the tree with ld_test_rmtree(). Aborts the test on failure. */
char *ld_test_tmpdir(void);
void ld_test_rmtree(const char *path);

/* Joins a directory and a name into a static-free malloc'ed path. */
char *ld_test_path(const char *dir, const char *name);

/* Writes bytes to a file (test fixture); aborts the test on failure. */
void ld_test_write_file(const char *path, const void *data, size_t len);

/* Reads a whole file into a malloc'ed buffer with a NUL after the data;
 * *len (may be NULL) gets the size. Aborts the test if it cannot. */
char *ld_test_read_file(const char *path, size_t *len);

/* Number of entries in a directory, "." and ".." and dot-files excluded. */
int ld_test_count_entries(const char *dir);

/* Runs a shell command, returns its exit status (-1 if it did not exit). */
int ld_test_system(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it
 * for a socket that is then closed). Aborts the test if it cannot. */
int ld_test_free_port(void);

/* Rewrites safetensors file src as dst without metadata key (a file written
 * before the key existed); aborts the test on failure. */
void ld_test_drop_meta_key(const char *src, const char *dst, const char *key);

/* Whether two files have the same bytes. */
int ld_test_files_equal(const char *a, const char *b);

/* ld_train_new, failing the test with the detail unless it succeeds. */
ld_train_t *ld_test_train_new(const ld_train_config_t *cfg);
/* Trains to iteration iters (checkpoint and every as ld_train_run_opts_t;
 * checkpoint may be NULL), failing the test unless it gets there. */
void ld_test_train_run_to(ld_train_t *tr, int64_t iters, const char *checkpoint, int64_t every);

/* Resume bit-exactness: trains cfg straight to iters (checkpoint every
 * `every` to dir/a.ckpt, model dir/a.safetensors), then split_cfg (NULL:
 * cfg) to split (dir/b.ckpt) and resumes that checkpoint with overrides
 * (may be NULL) to iters (dir/b.ckpt, dir/b.safetensors); fails the test
 * unless the two model files and the two final checkpoints are identical. */
void ld_test_train_resume_bit_exact(const ld_train_config_t *cfg, const ld_train_config_t *split_cfg,
                                    const ld_meta_t *overrides, int64_t split, int64_t iters, int64_t every,
                                    const char *dir);

/* Max |a-b| / max(|b|, floor) over n values. */
double ld_test_max_rel_err(const float *a, const float *b, size_t n, double floor);

/* ---- naive double-precision references of the engine's layers ---- */

double ld_test_silu(double x);
/* y[co][y][x] = bias[co] + sum w[co][ci][ky][kx] x[ci][y+ky-k/2][x+kx-k/2]
 * with zero padding, k = 1 or 3; bias may be NULL. */
void ld_test_ref_conv(const double *x, int cin, int h, int w, const float *wt, const float *bias, int cout, int k,
                      double *y);
/* 2x2 average pooling of c planes of h x w. */
void ld_test_ref_pool(const double *x, int c, int h, int w, double *y);
/* The down block of ld_convnet.h on x [cin][h][h] -> out [cout][h/2][h/2];
 * t: the data of its six tensors (conv1.weight, conv1.bias, conv2.weight,
 * conv2.bias, skip.weight, skip.bias). */
void ld_test_ref_down(const double *x, int cin, int cout, int h, const float *const t[6], double *out);

/* ---- hostile model files ---- */

/* One defect written into a copy of a safetensors file. */
typedef struct {
    const char *needle;        /* expected in the error detail */
    const char *drop;          /* tensor left out */
    const char *as_f64;        /* tensor written as F64 */
    const char *reshape;       /* 1-D tensor of even length written as [2, n/2] */
    const char *nan_in;        /* tensor whose first element becomes NaN */
    const char *add;           /* extra tensor added */
    const char *meta_key;      /* metadata key changed ... */
    const char *meta_value;    /* ... to this (NULL = removed) */
} ld_test_defect_t;

/* Copies the safetensors file src to dst with the defect d (nothing else
 * changed); aborts the test on failure. */
void ld_test_write_defective(const char *src, const char *dst, const ld_test_defect_t *d);
/* For each of cases[0..n): writes good with the defect to bad and expects
 * load(bad) to return LD_EFORMAT with a detail naming bad and holding the
 * case's needle; then that the untouched rewrite loads (load returns 0).
 * load frees what it loaded and checks that a failed load left no output. */
void ld_test_load_rejects(const char *good, const char *bad, const ld_test_defect_t *cases, size_t n,
                          int (*load)(const char *path));

/* A network's parameter table is exactly names[0..n) with shapes[0..n)
 * (unused dims 0), contiguous from offset 0 in that order, found by name;
 * `absent` is not found. */
void ld_test_tensor_table(const ld_cn_params_t *ps, const char *const *names, const int64_t (*shapes)[4], size_t n,
                          const char *absent);

#endif
