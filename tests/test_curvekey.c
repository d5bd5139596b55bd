/* test_curve: CURVE key files (common/ld_curvekey.h): parsing, hostile input,
 * secret-key permissions, and key pairs written by ld_curvekey_write_keypair
 * (checked against libzmq's own Z85 decoder and zmq_curve_public). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "ld_curvekey.h"
#include "ld_error.h"
#include "testutil.h"

static const char *valid_key(void)
{
    static char pub[41], sec[41];
    ck_assert_int_eq(zmq_curve_keypair(pub, sec), 0);
    return pub;
}

START_TEST(test_parse_accepts_comments_blank_lines_and_crlf)
{
    const char *key = valid_key();
    char text[256], z85[41];
    uint8_t raw[32], expect[32];
    snprintf(text, sizeof text, "# a comment\r\n\n   \t%s  \r\n\n# trailing comment", key);
    ck_assert_int_eq(ld_curvekey_parse_key("k", text, strlen(text), z85, raw), 0);
    ck_assert_str_eq(z85, key);
    ck_assert_ptr_nonnull(zmq_z85_decode(expect, key));
    ck_assert_mem_eq(raw, expect, 32);
    /* no newline at all, and text not NUL-terminated after len */
    memcpy(text, key, 40);
    text[40] = 'X';
    ck_assert_int_eq(ld_curvekey_parse_key("k", text, 40, z85, NULL), 0);
    ck_assert_str_eq(z85, key);
}
END_TEST

START_TEST(test_parse_rejects_bad_keys_naming_file_and_line)
{
    const char *key = valid_key();
    char text[9][128], z85[41];
    snprintf(text[0], sizeof text[0], "%s", "");
    snprintf(text[1], sizeof text[1], "# only a comment\n\n");
    snprintf(text[2], sizeof text[2], "%s\n%s\n", key, key);
    snprintf(text[3], sizeof text[3], "# c\nabc\n");
    snprintf(text[4], sizeof text[4], "%s0\n", key);
    snprintf(text[5], sizeof text[5], "%.39s\"\n", key);        /* '"' is not in the alphabet */
    snprintf(text[6], sizeof text[6], "%.5s#####%.30s\n", key, key); /* '#####' > 2^32 - 1 */
    snprintf(text[7], sizeof text[7], "%.39s\x01\n", key);
    snprintf(text[8], sizeof text[8], "#####%.35s\n", key);      /* a comment line, nothing else */
    const char *expect[9] = { "k: no key", "k: no key", "k:2: a second key line", "k:2: expected a 40-character",
                              "k:1: expected a 40-character", "k:1: not a Z85 key", "k:1: not a Z85 key",
                              "k:1: not a Z85 key", "k: no key" };
    for (int i = 0; i < 9; i++) {
        int rc = ld_curvekey_parse_key("k", text[i], strlen(text[i]), z85, NULL);
        ck_assert_msg(rc == LD_EFORMAT, "case %d: rc %d", i, rc);
        ck_assert_msg(strstr(ld_errdetail(), expect[i]), "case %d: detail '%s'", i, ld_errdetail());
        ck_assert_msg(!strstr(ld_errdetail(), key), "case %d: the key text is in the detail", i);
    }
}
END_TEST

START_TEST(test_read_refuses_non_regular_and_oversized_files)
{
    char *dir = ld_test_tmpdir(), *fifo = ld_test_path(dir, "fifo"), *big = ld_test_path(dir, "big");
    char z85[41];
    ld_expect_err(ld_curvekey_read_key(dir, z85, NULL), LD_EIO);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "not a regular file"));
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ld_expect_err(ld_curvekey_read_key(fifo, z85, NULL), LD_EIO); /* does not block */
    char text[LD_CURVE_FILE_MAX + 100];
    memset(text, '#', sizeof text);
    ld_test_write_file(big, text, sizeof text);
    ld_expect_err(ld_curvekey_read_key(big, z85, NULL), LD_EFORMAT);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "not a key file"));
    ld_expect_err(ld_curvekey_read_key("/nonexistent/k.pub", z85, NULL), LD_EIO);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "/nonexistent/k.pub"));
    ld_test_rmtree(dir);
    free(dir);
    free(fifo);
    free(big);
}
END_TEST

START_TEST(test_keypair_round_trip_and_secret_permissions)
{
    char *dir = ld_test_tmpdir(), *prefix = ld_test_path(dir, "node");
    char *key = ld_test_path(dir, "node.key"), *pub = ld_test_path(dir, "node.pub");
    char printed[41], secret[41], public[41], derived[41];
    mode_t old = umask(0);
    int rc = ld_curvekey_write_keypair(prefix, 0, printed);
    umask(old);
    ck_assert_int_eq(rc, 0);
    struct stat st;
    ck_assert_int_eq(stat(key, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0600);
    ck_assert_int_eq(ld_curvekey_read_secret_key(key, secret), 0);
    ck_assert_int_eq(ld_curvekey_read_key(pub, public, NULL), 0);
    ck_assert_str_eq(public, printed);
    ck_assert_int_eq(ld_curvekey_public_key(secret, derived), 0);
    ck_assert_str_eq(derived, public);
    ck_assert_int_eq(ld_test_count_entries(dir), 2);
    /* an existing pair is kept */
    ld_expect_err(ld_curvekey_write_keypair(prefix, 0, NULL), LD_EINVAL);
    ck_assert_int_eq(ld_curvekey_read_secret_key(key, derived), 0);
    ck_assert_str_eq(derived, secret);
    ck_assert_int_eq(ld_curvekey_write_keypair(prefix, 1, NULL), 0);
    ck_assert_int_eq(ld_curvekey_read_secret_key(key, derived), 0);
    ck_assert_str_ne(derived, secret);
    /* a secret key others can read is refused; the group only gets a warning */
    ck_assert_int_eq(chmod(key, 0604), 0);
    ld_expect_err(ld_curvekey_read_secret_key(key, derived), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "other users"));
    ck_assert_int_eq(chmod(key, 0640), 0);
    ck_assert_int_eq(ld_curvekey_read_secret_key(key, derived), 0);
    ld_expect_err(ld_curvekey_write_keypair("", 0, NULL), LD_EINVAL);
    ld_test_rmtree(dir);
    free(dir);
    free(prefix);
    free(key);
    free(pub);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("curve");
    TCase *tc = ld_tcase("keys", 30);
    tcase_add_test(tc, test_parse_accepts_comments_blank_lines_and_crlf);
    tcase_add_test(tc, test_parse_rejects_bad_keys_naming_file_and_line);
    tcase_add_test(tc, test_read_refuses_non_regular_and_oversized_files);
    tcase_add_test(tc, test_keypair_round_trip_and_secret_permissions);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
