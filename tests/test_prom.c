/* ld_prom: what the live tests cannot make a daemon send: a client name
 * with invalid UTF-8 (becomes U+FFFD), non-finite values, and a reply from
 * an older daemon without the optional fields (no metric, not a zero). */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ld_prom.h"

static char *format(const Langdaug__V1__StatusReply *r)
{
    char *text;
    size_t len;
    ck_assert_int_eq(ld_prom_format(r, &text, &len), 0);
    ck_assert_uint_eq(strlen(text), len);
    return text;
}

START_TEST(invalid_utf8_in_a_label_becomes_replacement_characters)
{
    Langdaug__V1__ClientStatus c = LANGDAUG__V1__CLIENT_STATUS__INIT, *cp = &c;
    c.id = "01";
    c.name = "ok\xC3\xA9 cut\xC3 bad\xFF surrogate\xED\xA0\x80";
    Langdaug__V1__StatusReply r = LANGDAUG__V1__STATUS_REPLY__INIT;
    r.n_clients = 1;
    r.clients = &cp;
    char *text = format(&r);
    ck_assert_ptr_nonnull(strstr(text, "langdaug_client_credits{client=\"01\",name=\"ok\xC3\xA9 cut\xEF\xBF\xBD bad"
                                       "\xEF\xBF\xBD surrogate\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(text, "langdaug_clients_connected 1\n"));
    free(text);
}
END_TEST

START_TEST(non_finite_values_use_the_format_spelling)
{
    Langdaug__V1__EnergyStats e = LANGDAUG__V1__ENERGY_STATS__INIT, *ep = &e;
    e.source = "A";
    e.target = "B";
    e.mean = NAN;
    e.min = -INFINITY;
    e.max = INFINITY;
    Langdaug__V1__StatusReply r = LANGDAUG__V1__STATUS_REPLY__INIT;
    r.n_energies = 1;
    r.energies = &ep;
    char *text = format(&r);
    ck_assert_ptr_nonnull(strstr(text, "langdaug_energy_mean{source=\"A\",target=\"B\"} NaN\n"));
    ck_assert_ptr_nonnull(strstr(text, "langdaug_energy_min{source=\"A\",target=\"B\"} -Inf\n"));
    ck_assert_ptr_nonnull(strstr(text, "langdaug_energy_max{source=\"A\",target=\"B\"} +Inf\n"));
    free(text);
}
END_TEST

START_TEST(absent_fields_give_no_metric)
{
    Langdaug__V1__StatusReply r = LANGDAUG__V1__STATUS_REPLY__INIT;
    r.server_version = "0.0.1";
    char *text = format(&r);
    ck_assert_str_eq(text, "# HELP langdaug_info Always 1; the daemon's version in the label.\n"
                           "# TYPE langdaug_info gauge\n"
                           "langdaug_info{version=\"0.0.1\"} 1\n"
                           "# HELP langdaug_clients_connected Client sessions held.\n"
                           "# TYPE langdaug_clients_connected gauge\n"
                           "langdaug_clients_connected 0\n");
    free(text);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("prom");
    TCase *tc = ld_tcase("prom", 10);
    tcase_add_test(tc, invalid_utf8_in_a_label_becomes_replacement_characters);
    tcase_add_test(tc, non_finite_values_use_the_format_spelling);
    tcase_add_test(tc, absent_fields_give_no_metric);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
