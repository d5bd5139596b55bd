/* ld_error: names of codes, per-thread details, and a detail that wraps the
 * previous one (ld_seterr(..., "%s", ld_errdetail())); ld_log's level names,
 * parsed under the same convention. */
#include "testutil.h"

#include <pthread.h>
#include <string.h>

#include "ld_error.h"
#include "ld_log.h"

START_TEST(every_code_has_a_name)
{
    for (int code = LD_OK; code >= LD_ECANCELED; code--)
        ck_assert_str_ne(ld_strerror(code), "unknown error");
    ck_assert_str_eq(ld_strerror(-1000), "unknown error");
}
END_TEST

START_TEST(detail_can_wrap_itself)
{
    ck_assert_int_eq(ld_seterr(LD_EIO, "open.key: %s", "permission denied"), LD_EIO);
    ck_assert_int_eq(ld_seterr(LD_EINVAL, "curve_secret_key_file: %s", ld_errdetail()), LD_EINVAL);
    ck_assert_str_eq(ld_errdetail(), "curve_secret_key_file: open.key: permission denied");
    ld_clearerr();
    ck_assert_str_eq(ld_errdetail(), "");
}
END_TEST

static void *set_in_thread(void *arg)
{
    (void)arg;
    ld_seterr(LD_EIO, "from the other thread");
    return NULL;
}

START_TEST(detail_is_per_thread)
{
    ld_seterr(LD_EFORMAT, "mine");
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, set_in_thread, NULL), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_str_eq(ld_errdetail(), "mine");
}
END_TEST

START_TEST(long_detail_is_truncated_not_overflowed)
{
    char big[2048];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ld_seterr(LD_EINVAL, "%s", big);
    size_t n = strlen(ld_errdetail());
    ck_assert_uint_gt(n, 100);
    ck_assert_uint_lt(n, sizeof big - 1);
}
END_TEST

static int fails_with_detail(void)
{
    return ld_seterr(LD_ERANGE, "value %d is out of range", 7);
}

static int fails_silently(void)
{
    return LD_ERANGE;
}

/* The test helper's rule: a failing call must replace the stale detail. */
START_TEST(expect_err_needs_a_fresh_detail)
{
    ld_expect_err(fails_with_detail(), LD_ERANGE);
    ck_assert_str_eq(ld_errdetail(), "value 7 is out of range");
    ld_test_stale_detail();
    ck_assert_int_eq(fails_silently(), LD_ERANGE);
    ck_assert_str_eq(ld_errdetail(), LD_TEST_STALE_DETAIL); /* what ld_expect_fresh_detail refuses */
}
END_TEST

START_TEST(log_levels_parse_by_name_and_refuse_others)
{
    static const struct { const char *name; int level; } ok[] = {
        { "error", LD_LOG_ERROR }, { "warn", LD_LOG_WARN }, { "WARNING", LD_LOG_WARN },
        { "info", LD_LOG_INFO }, { "Debug", LD_LOG_DEBUG },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int level = -7;
        ck_assert_int_eq(ld_log_level_parse(ok[i].name, &level), LD_OK);
        ck_assert_int_eq(level, ok[i].level);
    }
    const char *bad[] = { "loud", "", "info ", "errors", NULL };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int level = -7;
        ld_expect_err(ld_log_level_parse(bad[i], &level), LD_EINVAL);
        ck_assert_int_eq(level, -7);
        ck_assert_ptr_nonnull(strstr(ld_errdetail(), "is not one of error, warning, info, debug"));
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("error");
    TCase *tc = ld_tcase("error", 10);
    tcase_add_test(tc, every_code_has_a_name);
    tcase_add_test(tc, detail_can_wrap_itself);
    tcase_add_test(tc, detail_is_per_thread);
    tcase_add_test(tc, long_detail_is_truncated_not_overflowed);
    tcase_add_test(tc, expect_err_needs_a_fresh_detail);
    tcase_add_test(tc, log_levels_parse_by_name_and_refuse_others);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
