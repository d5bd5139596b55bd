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

#include "ld_train.h"

#define LD_SKIP(...)                                   \
    do {                                               \
        printf("SKIP: %s: ", __func__);                \
        printf(__VA_ARGS__);                           \
        printf("\n");                                  \
        fflush(stdout);                                \
        return;                                        \
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

#endif
