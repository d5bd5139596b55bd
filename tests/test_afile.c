/* Atomic writes: commit replaces, abort and failures leave the old file and
 * no temporary behind; errors carry a detail naming the path. Also the
 * helpers ld_afile_mkdir and ld_afile_read_all. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ld_afile.h"
#include "ld_error.h"

static void assert_file_text(const char *path, const char *want)
{
    char *text = ld_test_read_file(path, NULL);
    ck_assert_str_eq(text, want);
    free(text);
}

START_TEST(commit_replaces)
{
    char *dir = ld_test_tmpdir(), *p = ld_test_path(dir, "f.txt");
    ck_assert_int_eq(ld_afile_write_all(p, "old", 3), 0);
    ld_afile_t *af;
    ck_assert_int_eq(ld_afile_open(p, &af), 0);
    ck_assert_int_eq(ld_afile_write(af, "new!", 4), 0);
    assert_file_text(p, "old"); /* not visible before commit */
    ck_assert_int_eq(ld_test_count_entries(dir), 2);
    ck_assert_int_eq(ld_afile_commit(&af), 0);
    ck_assert_ptr_null(af);
    assert_file_text(p, "new!");
    ck_assert_int_eq(ld_test_count_entries(dir), 1);
    ld_test_rmtree(dir);
    free(p);
    free(dir);
}
END_TEST

START_TEST(abort_keeps_old)
{
    char *dir = ld_test_tmpdir(), *p = ld_test_path(dir, "f.txt");
    ck_assert_int_eq(ld_afile_write_all(p, "old", 3), 0);
    ld_afile_t *af;
    ck_assert_int_eq(ld_afile_open(p, &af), 0);
    fprintf(ld_afile_fp(af), "partial");
    ld_afile_abort(&af);
    ck_assert_ptr_null(af);
    ld_afile_abort(&af); /* NULL-safe */
    assert_file_text(p, "old");
    ck_assert_int_eq(ld_test_count_entries(dir), 1);
    ld_test_rmtree(dir);
    free(p);
    free(dir);
}
END_TEST

START_TEST(disk_full_keeps_old)
{
    /* /dev/full fails every write: commit must fail and leave nothing. */
    char *dir = ld_test_tmpdir(), *p = ld_test_path(dir, "f.txt");
    ck_assert_int_eq(ld_afile_write_all(p, "old", 3), 0);
    ld_afile_t *af;
    ck_assert_int_eq(ld_afile_open(p, &af), 0);
    FILE *full = fopen("/dev/full", "wb");
    if (!full) {
        ld_afile_abort(&af);
        LD_SKIP("no /dev/full");
    }
    /* Swap the stream's descriptor for /dev/full's. */
    ck_assert_int_ne(dup2(fileno(full), fileno(ld_afile_fp(af))), -1);
    fclose(full);
    char big[8192];
    memset(big, 'x', sizeof big);
    (void)ld_afile_write(af, big, sizeof big);
    int rc = ld_afile_commit(&af);
    ck_assert_int_eq(rc, LD_EIO);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "f.txt"));
    assert_file_text(p, "old");
    ck_assert_int_eq(ld_test_count_entries(dir), 1);
    ld_test_rmtree(dir);
    free(p);
    free(dir);
}
END_TEST

START_TEST(missing_directory_is_an_error)
{
    ld_afile_t *af = (ld_afile_t *)1;
    int rc = ld_afile_open("/nonexistent-dir-langdaug/x", &af);
    ck_assert_int_eq(rc, LD_EIO);
    ck_assert_ptr_null(af);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "/nonexistent-dir-langdaug/x"));
    ck_assert_str_eq(ld_strerror(LD_EIO), "input/output error");
}
END_TEST

/* ld_afile_mkdir: a new or existing folder is fine; a file in the way or a
 * missing parent is LD_EIO naming the path. */
START_TEST(mkdir_creates_or_accepts_folder)
{
    char *dir = ld_test_tmpdir(), *sub = ld_test_path(dir, "sub"), *file = ld_test_path(dir, "file");
    ck_assert_int_eq(ld_afile_mkdir(sub), 0);
    struct stat st;
    ck_assert_int_eq(stat(sub, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_int_eq(ld_afile_mkdir(sub), 0); /* already there */

    ld_test_write_file(file, "x", 1);
    ld_expect_err(ld_afile_mkdir(file), LD_EIO);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), file));

    char *orphan = ld_test_path(file, "child");
    ld_expect_err(ld_afile_mkdir(orphan), LD_EIO);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), orphan));
    ck_assert_int_eq(ld_test_count_entries(dir), 2);
    ld_test_rmtree(dir);
    free(orphan);
    free(file);
    free(sub);
    free(dir);
}
END_TEST

/* ld_afile_read_all: whole file plus a NUL; missing, oversized and
 * non-regular files refused with the path named (a FIFO without a writer
 * must not block). */
START_TEST(read_all_reads_or_names_the_problem)
{
    char *dir = ld_test_tmpdir(), *p = ld_test_path(dir, "f.bin"), *fifo = ld_test_path(dir, "fifo");
    ld_test_write_file(p, "ab\0cd", 5);
    char *buf = NULL;
    size_t len = 0;
    ck_assert_int_eq(ld_afile_read_all(p, 5, &buf, &len), 0);
    ck_assert_uint_eq(len, 5);
    ck_assert_mem_eq(buf, "ab\0cd", 6); /* data and the NUL after it */
    free(buf);

    ld_expect_err(ld_afile_read_all(p, 4, &buf, &len), LD_ERANGE);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), p));

    ld_test_write_file(p, "", 0);
    ck_assert_int_eq(ld_afile_read_all(p, 0, &buf, &len), 0);
    ck_assert_uint_eq(len, 0);
    ck_assert_str_eq(buf, "");
    free(buf);

    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ld_expect_err(ld_afile_read_all(fifo, 100, &buf, &len), LD_EIO);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "not a regular file"));
    ld_expect_err(ld_afile_read_all(dir, 100, &buf, &len), LD_EIO);

    char *missing = ld_test_path(dir, "missing");
    ld_expect_err(ld_afile_read_all(missing, 100, &buf, &len), LD_ENOENT);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), missing));
    ld_test_rmtree(dir);
    free(missing);
    free(fifo);
    free(p);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("afile");
    TCase *tc = ld_tcase("afile", 20);
    tcase_add_test(tc, commit_replaces);
    tcase_add_test(tc, abort_keeps_old);
    tcase_add_test(tc, disk_full_keeps_old);
    tcase_add_test(tc, missing_directory_is_an_error);
    tcase_add_test(tc, mkdir_creates_or_accepts_folder);
    tcase_add_test(tc, read_all_reads_or_names_the_problem);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
