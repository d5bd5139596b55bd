/* safetensors: round trips of every dtype, metadata, empty and scalar
 * tensors; the writer's layout (8-byte aligned data, insertion order); and
 * hostile files: each rejected with LD_EFORMAT (or LD_ENOTSUP) and a detail
 * naming the problem, never a crash or an out-of-bounds read (run this suite
 * under SANITIZE=address,undefined to check the latter). */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ld_error.h"
#include "ld_rng.h"
#include "ld_safetensors.h"

/* ---- helpers -------------------------------------------------------------- */

/* A file image: u64 LE header length, the header text, then data_len bytes
 * of a fixed pattern. */
static unsigned char *make_file(const char *header, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    unsigned char *buf = malloc(*len + 1);
    ck_assert_ptr_nonnull(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + h + i] = (unsigned char)(i * 7 + 1);
    return buf;
}

/* Opens bytes, expects failure `err` with a detail naming the source and
 * containing `needle`. */
static void expect_reject_bytes(const unsigned char *buf, size_t len, int err, const char *needle)
{
    ld_st_t *st = (ld_st_t *)1;
    ld_clearerr();
    int rc = ld_st_open_mem(buf, len, "hostile.safetensors", &st);
    ck_assert_msg(rc == err, "expected %s, got %s (%s) for: %s", ld_strerror(err), ld_strerror(rc),
                  ld_errdetail(), needle);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(ld_errdetail(), "hostile.safetensors") != NULL, "detail lacks file: %s",
                  ld_errdetail());
    ck_assert_msg(strstr(ld_errdetail(), needle) != NULL, "detail '%s' lacks '%s'", ld_errdetail(), needle);
}

static void expect_reject(const char *header, size_t data_len, const char *needle)
{
    size_t len;
    unsigned char *buf = make_file(header, data_len, &len);
    expect_reject_bytes(buf, len, LD_EFORMAT, needle);
    free(buf);
}

static void expect_accept(const char *header, size_t data_len, size_t n_tensors)
{
    size_t len;
    unsigned char *buf = make_file(header, data_len, &len);
    ld_st_t *st;
    int rc = ld_st_open_mem(buf, len, "ok.safetensors", &st);
    ck_assert_msg(rc == 0, "rejected %s: %s", header, ld_errdetail());
    ck_assert_uint_eq(ld_st_n_tensors(st), n_tensors);
    ld_st_close(&st);
    ck_assert_ptr_null(st);
    free(buf);
}

/* A small valid file written by the writer: two tensors and metadata. */
static unsigned char *small_valid_file(size_t *len)
{
    char *dir = ld_test_tmpdir(), *p = ld_test_path(dir, "s.safetensors");
    static const float w[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    static const int32_t ids[3] = {4, 5, 6};
    int64_t s23[2] = {2, 3}, s3[1] = {3};
    ld_st_writer_t *wr;
    ck_assert_int_eq(ld_st_writer_new(&wr), 0);
    ck_assert_int_eq(ld_st_writer_set_meta(wr, "k", "v"), 0);
    ck_assert_int_eq(ld_st_writer_add(wr, "w", LD_DT_F32, 2, s23, w), 0);
    ck_assert_int_eq(ld_st_writer_add(wr, "ids", LD_DT_I32, 1, s3, ids), 0);
    ck_assert_int_eq(ld_st_writer_write(wr, p, NULL), 0);
    ld_st_writer_destroy(&wr);
    unsigned char *buf = (unsigned char *)ld_test_read_file(p, len);
    ld_test_rmtree(dir);
    free(p);
    free(dir);
    return buf;
}

/* ---- round trips ------------------------------------------------------------ */

START_TEST(roundtrip_all_dtypes)
{
    char *dir = ld_test_tmpdir(), *p = ld_test_path(dir, "all.safetensors");
    unsigned char bytes[LD_DT_COUNT][8 * 3 * 2];
    ld_st_writer_t *w;
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    ck_assert_int_eq(ld_st_writer_set_meta(w, "format", "test"), 0);
    ck_assert_int_eq(ld_st_writer_set_meta(w, "unicode", "caf\xc3\xa9 \xe2\x9c\x93"), 0);
    ck_assert_int_eq(ld_st_writer_set_meta(w, "empty", ""), 0);
    for (int dt = 0; dt < LD_DT_COUNT; dt++) {
        for (size_t i = 0; i < sizeof bytes[dt]; i++)
            bytes[dt][i] = (unsigned char)(dt * 31 + i * 13);
        int64_t shape[2] = {3, 2};
        char name[32];
        snprintf(name, sizeof name, "t_%s", ld_dtype_name((ld_dtype_t)dt));
        ck_assert_int_eq(ld_st_writer_add(w, name, (ld_dtype_t)dt, 2, shape, bytes[dt]), 0);
    }
    int64_t empty_shape[2] = {0, 4};
    double scalar = -2.25;
    ck_assert_int_eq(ld_st_writer_add(w, "empty", LD_DT_F32, 2, empty_shape, NULL), 0);
    ck_assert_int_eq(ld_st_writer_add(w, "scalar", LD_DT_F64, 0, NULL, &scalar), 0);
    char hash_w[65];
    ck_assert_int_eq(ld_st_writer_write(w, p, hash_w), 0);
    ld_st_writer_destroy(&w);

    ld_st_t *st;
    ck_assert_msg(ld_st_open(p, &st) == 0, "%s", ld_errdetail());
    ck_assert_uint_eq(ld_st_n_tensors(st), LD_DT_COUNT + 2);
    for (int dt = 0; dt < LD_DT_COUNT; dt++) {
        char name[32];
        snprintf(name, sizeof name, "t_%s", ld_dtype_name((ld_dtype_t)dt));
        const ld_st_tensor_t *t = ld_st_find(st, name);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(t->dtype, dt);
        ck_assert_int_eq(t->ndim, 2);
        ck_assert_int_eq(t->shape[0], 3);
        ck_assert_int_eq(t->shape[1], 2);
        ck_assert_uint_eq(t->numel, 6);
        ck_assert_uint_eq(t->nbytes, 6 * ld_dtype_size((ld_dtype_t)dt));
        ck_assert_int_eq(memcmp(t->data, bytes[dt], t->nbytes), 0);
    }
    const ld_st_tensor_t *e = ld_st_find(st, "empty"), *s = ld_st_find(st, "scalar");
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->ndim, 2);
    ck_assert_int_eq(e->shape[0], 0);
    ck_assert_int_eq(e->shape[1], 4);
    ck_assert_uint_eq(e->nbytes, 0);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(s->ndim, 0);
    ck_assert_uint_eq(s->numel, 1);
    double got;
    memcpy(&got, s->data, sizeof got);
    ck_assert(got == scalar);
    ck_assert_ptr_null(ld_st_find(st, "nope"));
    ck_assert_ptr_null(ld_st_tensor(st, LD_DT_COUNT + 2));

    const ld_meta_t *m = ld_st_meta(st);
    ck_assert_uint_eq(ld_meta_count(m), 3);
    ck_assert_str_eq(ld_meta_key(m, 0), "format");
    ck_assert_str_eq(ld_meta_key(m, 1), "unicode");
    ck_assert_str_eq(ld_meta_value(m, 1), "caf\xc3\xa9 \xe2\x9c\x93");
    ck_assert_str_eq(ld_meta_get(m, "empty"), "");

    /* the hash of the bytes written = of the bytes read = of the file */
    char hash_r[65], hash_f[65];
    ld_st_sha256(st, hash_r);
    size_t len;
    unsigned char *raw = (unsigned char *)ld_test_read_file(p, &len);
    ld_sha256_hex(raw, len, hash_f);
    ck_assert_str_eq(hash_w, hash_r);
    ck_assert_str_eq(hash_w, hash_f);
    ck_assert_uint_eq(strlen(hash_w), 64);
    ld_st_close(&st);
    free(raw);
    ld_test_rmtree(dir);
    free(p);
    free(dir);
}
END_TEST

START_TEST(sha256_known_answer)
{
    char hex[65];
    ld_sha256_hex("abc", 3, hex);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
END_TEST

START_TEST(writer_layout)
{
    /* header padded with spaces to a multiple of 8, keys in insertion order,
     * data in insertion order right after it */
    char *dir = ld_test_tmpdir(), *p = ld_test_path(dir, "l.safetensors");
    ld_st_writer_t *w;
    uint8_t a[3] = {1, 2, 3}, b[1] = {9};
    int64_t s3 = 3, s1 = 1;
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    ck_assert_int_eq(ld_st_writer_add(w, "zeta", LD_DT_U8, 1, &s3, a), 0);
    ck_assert_int_eq(ld_st_writer_add(w, "alpha", LD_DT_U8, 1, &s1, b), 0);
    ck_assert_int_eq(ld_st_writer_set_meta(w, "m", "1"), 0);
    ck_assert_int_eq(ld_st_writer_write(w, p, NULL), 0);
    ld_st_writer_destroy(&w);
    size_t len;
    unsigned char *buf = (unsigned char *)ld_test_read_file(p, &len);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = (h << 8) | buf[i];
    ck_assert_uint_eq(h % 8, 0);
    ck_assert_uint_eq(len, 8 + h + 4);
    ck_assert_int_eq(buf[8 + h - 1], ' ');
    char *text = strndup((char *)buf + 8, h);
    char *pm = strstr(text, "__metadata__"), *pz = strstr(text, "\"zeta\""), *pa = strstr(text, "\"alpha\"");
    ck_assert(pm && pz && pa && pm < pz && pz < pa);
    ck_assert_ptr_nonnull(strstr(text, "\"data_offsets\":[0,3]"));
    ck_assert_ptr_nonnull(strstr(text, "\"data_offsets\":[3,4]"));
    ck_assert_int_eq(memcmp(buf + 8 + h, "\x01\x02\x03\x09", 4), 0);
    free(text);
    free(buf);
    ld_test_rmtree(dir);
    free(p);
    free(dir);
}
END_TEST

START_TEST(writer_rejects_bad_input)
{
    char *dir = ld_test_tmpdir(), *p = ld_test_path(dir, "w.safetensors");
    ld_st_writer_t *w;
    float x[2] = {0};
    int64_t s2 = 2, neg = -1, big[3] = {INT64_MAX, INT64_MAX, 2};
    int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    ck_assert_int_eq(ld_st_writer_add(w, "x", LD_DT_F32, 1, &s2, x), 0);
    ld_expect_err(ld_st_writer_add(w, "x", LD_DT_F32, 1, &s2, x), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "duplicate tensor 'x'"));
    ld_expect_err(ld_st_writer_add(w, "__metadata__", LD_DT_F32, 1, &s2, x), LD_EINVAL);
    ld_expect_err(ld_st_writer_add(w, "n", LD_DT_F32, 1, &neg, x), LD_EINVAL);
    ld_expect_err(ld_st_writer_add(w, "b", LD_DT_F32, 3, big, x), LD_ERANGE);
    ld_expect_err(ld_st_writer_add(w, "d", LD_DT_F32, 9, nine, x), LD_EINVAL);
    ld_expect_err(ld_st_writer_add(w, "t", (ld_dtype_t)99, 1, &s2, x), LD_EINVAL);
    ld_expect_err(ld_st_writer_add(w, "nodata", LD_DT_F32, 1, &s2, NULL), LD_EINVAL);
    /* invalid UTF-8 in metadata: the write fails and creates nothing */
    ck_assert_int_eq(ld_st_writer_set_meta(w, "bad\xff", "v"), 0);
    ld_expect_err(ld_st_writer_write(w, p, NULL), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "metadata entry 'bad"));
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "is not valid UTF-8"));
    ck_assert_int_eq(access(p, F_OK), -1);
    ld_st_writer_destroy(&w);
    ck_assert_ptr_null(w);
    /* in a metadata value: the detail names the entry whose value it is */
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    ck_assert_int_eq(ld_st_writer_set_meta(w, "note", "caf\xc3"), 0);
    ld_expect_err(ld_st_writer_write(w, p, NULL), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "the value of metadata entry 'note' is not valid UTF-8"));
    ck_assert_int_eq(access(p, F_OK), -1);
    ld_st_writer_destroy(&w);
    /* in a tensor name */
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    ck_assert_int_eq(ld_st_writer_add(w, "w\xed\xa0\x80", LD_DT_F32, 1, &s2, x), 0);
    ld_expect_err(ld_st_writer_write(w, p, NULL), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "tensor name"));
    ck_assert_int_eq(access(p, F_OK), -1);
    ld_st_writer_destroy(&w);
    /* a write into a missing directory fails cleanly */
    ck_assert_int_eq(ld_st_writer_new(&w), 0);
    ld_expect_err(ld_st_writer_write(w, "/nonexistent-langdaug-dir/x.safetensors", NULL), LD_EIO);
    ld_st_writer_destroy(&w);
    ld_test_rmtree(dir);
    free(p);
    free(dir);
}
END_TEST

START_TEST(meta_map)
{
    ld_meta_t *m, *c;
    ck_assert_int_eq(ld_meta_new(&m), 0);
    ck_assert_uint_eq(ld_meta_count(m), 0);
    ck_assert_ptr_null(ld_meta_get(m, "a"));
    ck_assert_int_eq(ld_meta_set(m, "b", "1"), 0);
    ck_assert_int_eq(ld_meta_set(m, "a", "2"), 0);
    ck_assert_int_eq(ld_meta_set(m, "b", "3"), 0); /* replaces in place */
    ck_assert_uint_eq(ld_meta_count(m), 2);
    ck_assert_str_eq(ld_meta_key(m, 0), "b");
    ck_assert_str_eq(ld_meta_value(m, 0), "3");
    ck_assert_str_eq(ld_meta_key(m, 1), "a");
    ck_assert_ptr_null(ld_meta_key(m, 2));
    for (int i = 0; i < 100; i++) { /* growth */
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        ck_assert_int_eq(ld_meta_set(m, k, k), 0);
    }
    ck_assert_int_eq(ld_meta_clone(m, &c), 0);
    ck_assert_uint_eq(ld_meta_count(c), 102);
    ck_assert_str_eq(ld_meta_get(c, "k99"), "k99");
    ck_assert_int_eq(ld_meta_set(m, "a", "changed"), 0);
    ck_assert_str_eq(ld_meta_get(c, "a"), "2"); /* deep copy */
    ld_meta_destroy(&m);
    ld_meta_destroy(&c);
    ck_assert_ptr_null(m);
    ld_meta_destroy(&m); /* NULL-safe */
}
END_TEST

START_TEST(dtype_names)
{
    ld_dtype_t parsed = LD_DT_COUNT;
    for (int dt = 0; dt < LD_DT_COUNT; dt++) {
        ck_assert(ld_dtype_parse(ld_dtype_name((ld_dtype_t)dt), &parsed));
        ck_assert_int_eq(parsed, dt);
    }
    ck_assert(!ld_dtype_parse("f32", &parsed));
    ck_assert(!ld_dtype_parse("", &parsed));
    ck_assert_int_eq(parsed, LD_DT_COUNT - 1); /* not found: left as it was */
    ck_assert_str_eq(ld_dtype_name((ld_dtype_t)-1), "?");
    ck_assert_uint_eq(ld_dtype_size(LD_DT_BF16), 2);
    ck_assert_uint_eq(ld_dtype_size(LD_DT_F64), 8);
}
END_TEST

START_TEST(handcrafted_valid)
{
    expect_accept("{}", 0, 0);
    expect_accept("{}      ", 0, 0);
    expect_accept("{\"__metadata__\":{}}", 0, 0);
    expect_accept("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[2,2]}}  ",
                  2, 2);
    /* header order need not be data order */
    expect_accept("{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[3,4]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}",
                  4, 2);
    /* unaligned data start: readers must not assume alignment */
    size_t len;
    unsigned char *buf = make_file("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &len);
    ld_st_t *st;
    ck_assert_int_eq(ld_st_open_mem(buf, len, "u", &st), 0);
    ck_assert_str_eq(ld_st_tensor(st, 0)->name, "x");
    ck_assert_int_eq(memcmp(ld_st_tensor(st, 0)->data, buf + len - 4, 4), 0);
    ld_st_close(&st);
    free(buf);
}
END_TEST

/* ---- hostile files ---------------------------------------------------------- */

START_TEST(truncated_at_every_byte)
{
    size_t len;
    unsigned char *buf = small_valid_file(&len);
    ld_st_t *st;
    ck_assert_int_eq(ld_st_open_mem(buf, len, "full", &st), 0);
    ld_st_close(&st);
    for (size_t n = 0; n < len; n++) {
        /* each prefix is copied to an exact-size heap block so ASan sees any overread */
        unsigned char *cut = malloc(n ? n : 1);
        memcpy(cut, buf, n);
        expect_reject_bytes(cut, n, LD_EFORMAT, "");
        ck_assert_int_ne(ld_errdetail()[0], '\0');
        free(cut);
    }
    free(buf);
}
END_TEST

START_TEST(bad_header_length)
{
    unsigned char buf[16] = {0};
    memcpy(buf + 8, "{}      ", 8);
    expect_reject_bytes(buf, 7, LD_EFORMAT, "too short");
    expect_reject_bytes(buf, 16, LD_EFORMAT, "header length is 0");
    buf[0] = 9; /* one past the end */
    expect_reject_bytes(buf, 16, LD_EFORMAT, "exceeds the 8 bytes after it");
    memset(buf, 0xff, 8); /* 2^64 - 1 */
    expect_reject_bytes(buf, 16, LD_EFORMAT, "exceeds the limit");
    memset(buf, 0, 8);
    buf[3] = 0x10; /* 256 MB + 0, beyond the 100 MB cap */
    expect_reject_bytes(buf, 16, LD_EFORMAT, "exceeds the limit");
}
END_TEST

START_TEST(bad_json)
{
    expect_reject("{\"a\":", 0, "not valid JSON");
    expect_reject("[1,2]", 0, "does not start with '{'");
    expect_reject(" {}", 0, "does not start with '{'");
    expect_reject("{} x", 0, "not valid JSON");
    unsigned char nul[16] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0, 0, 0, 0, 0, 0};
    expect_reject_bytes(nul, sizeof nul, LD_EFORMAT, "not valid JSON"); /* NUL padding */
    expect_reject("{\"\xff\":{}}", 0, "not valid JSON");
    expect_reject("{\"a\\u0000b\":{}}", 0, "not valid JSON");
    expect_reject("{\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                  "\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
                  0, "duplicate");
    /* deep nesting must fail cleanly, not overflow the stack */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 32);
    strcpy(deep, "{\"__metadata__\":");
    size_t n = strlen(deep);
    memset(deep + n, '[', depth);
    memset(deep + n + depth, ']', depth);
    strcpy(deep + n + 2 * depth, "}");
    expect_reject(deep, 0, "not valid JSON");
    free(deep);
}
END_TEST

START_TEST(bad_entries)
{
    expect_reject("{\"t\":1}", 0, "tensor 't': entry is not an object");
    expect_reject("{\"t\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16,
                  "tensor 't': unknown dtype 'F128'");
    expect_reject("{\"t\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'f32'");
    expect_reject("{\"t\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "(not a string)");
    expect_reject("{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "missing field 'dtype'");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "missing field 'shape'");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "missing field 'data_offsets'");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
                  "unknown field 'x'");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}", 4, "shape is not an array");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
                  "shape[0] is not a non-negative integer");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
                  "shape[0] is not a non-negative integer");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4,
                  "shape[0] is not a non-negative integer");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                  "\"data_offsets\":[0,4]}}",
                  4, "shape overflows");
    expect_reject("{\"t\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}", 4,
                  "byte size overflows");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4,
                  "not valid JSON");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
                  "data_offsets is not a [begin, end] array");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}}", 4,
                  "data_offsets are not non-negative integers");
    expect_reject("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,0]}}", 4, "reversed");
    expect_reject("{\"stem.weight\":{\"dtype\":\"F32\",\"shape\":[24],\"data_offsets\":[0,96]}}", 64,
                  "tensor 'stem.weight': data_offsets [0, 96] outside data area of 64 bytes");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                  "span 4 bytes, but F32 of this shape needs 8");
    expect_reject("{\"t\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,8]}}", 8,
                  "span 8 bytes, but F32 scalar needs 4");
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}",
                  12, "tensor 'b' overlaps tensor 'a'");
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}",
                  8, "overlaps");
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                  "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                  8, "tensor 'e' overlaps tensor 'a'");
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 8,
                  "data area bytes [4, 8) belong to no tensor");
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8,
                  "data area bytes [0, 4) belong to no tensor");
    expect_reject("{}", 3, "data area bytes [0, 3) belong to no tensor");
    expect_reject("{\"__metadata__\":{\"a\":1}}", 0, "__metadata__ 'a' is not a string");
    expect_reject("{\"__metadata__\":{\"a\":null}}", 0, "__metadata__ 'a' is not a string");
    expect_reject("{\"__metadata__\":[\"a\"]}", 0, "__metadata__ is not an object");
    /* a long name with control bytes is shown shortened and masked */
    expect_reject("{\"\\u0001aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\":1}", 0,
                  "tensor '?aaaaaaaaa");
    size_t len;
    unsigned char *buf =
        make_file("{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, &len);
    expect_reject_bytes(buf, len, LD_ENOTSUP, "9 dimensions");
    free(buf);
}
END_TEST

START_TEST(open_errors)
{
    ld_st_t *st = (ld_st_t *)1;
    ld_expect_err(ld_st_open("/nonexistent-langdaug/x.safetensors", &st), LD_ENOENT);
    ck_assert_ptr_null(st);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "/nonexistent-langdaug/x.safetensors"));
    char *dir = ld_test_tmpdir();
    ld_expect_err(ld_st_open(dir, &st), LD_EIO);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "not a regular file"));
    char *fifo = ld_test_path(dir, "fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ld_expect_err(ld_st_open(fifo, &st), LD_EIO); /* refused, without waiting for a writer */
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), "not a regular file"));
    free(fifo);
    char *p = ld_test_path(dir, "empty");
    ld_test_write_file(p, "", 0);
    ld_expect_err(ld_st_open(p, &st), LD_EFORMAT);
    ck_assert_ptr_nonnull(strstr(ld_errdetail(), p));
    ld_test_rmtree(dir);
    free(p);
    free(dir);
}
END_TEST

/* Bounded random mutations of a valid file: each must load cleanly or be
 * rejected with a detail; a loaded one must be internally consistent. */
START_TEST(random_mutations)
{
    size_t len;
    unsigned char *orig = small_valid_file(&len);
    static const char interesting[] = "{}[]\",:0123456789-e. \\\xff";
    ld_rng_t rng;
    ld_rng_init(&rng, 20250519, 0);
    int accepted = 0;
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = len;
        if (ld_rng_below(&rng, 8) == 0)
            n = ld_rng_below(&rng, (uint32_t)len + 1);
        unsigned char *buf = malloc(n ? n : 1);
        memcpy(buf, orig, n);
        int edits = 1 + (int)ld_rng_below(&rng, 3);
        for (int e = 0; e < edits && n; e++) {
            size_t at = ld_rng_below(&rng, (uint32_t)n);
            switch (ld_rng_below(&rng, 3)) {
            case 0: buf[at] ^= (unsigned char)(1u << ld_rng_below(&rng, 8)); break;
            case 1: buf[at] = (unsigned char)interesting[ld_rng_below(&rng, sizeof interesting - 1)]; break;
            default: buf[at] = (unsigned char)ld_rng_u32(&rng); break;
            }
        }
        ld_st_t *st = NULL;
        ld_clearerr();
        int rc = ld_st_open_mem(buf, n, "mutant", &st);
        if (rc == 0) {
            accepted++;
            unsigned sum = 0;
            size_t total = 0;
            for (size_t i = 0; i < ld_st_n_tensors(st); i++) {
                const ld_st_tensor_t *t = ld_st_tensor(st, i);
                ck_assert_uint_eq(t->nbytes, t->numel * ld_dtype_size(t->dtype));
                for (size_t b = 0; b < t->nbytes; b++)
                    sum += ((const unsigned char *)t->data)[b];
                total += t->nbytes;
            }
            ck_assert_uint_le(total, n);
            (void)sum;
            ld_st_close(&st);
        } else {
            ck_assert_msg(rc == LD_EFORMAT || rc == LD_ENOTSUP, "iteration %d: %s", iter, ld_strerror(rc));
            ck_assert_ptr_null(st);
            ck_assert_ptr_nonnull(strstr(ld_errdetail(), "mutant"));
        }
        free(buf);
    }
    /* flips inside the data area keep the file valid: some must pass */
    ck_assert_int_gt(accepted, 0);
    free(orig);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = ld_tcase("roundtrip", 20);
    tcase_add_test(tc, roundtrip_all_dtypes);
    tcase_add_test(tc, sha256_known_answer);
    tcase_add_test(tc, writer_layout);
    tcase_add_test(tc, writer_rejects_bad_input);
    tcase_add_test(tc, meta_map);
    tcase_add_test(tc, dtype_names);
    tcase_add_test(tc, handcrafted_valid);
    suite_add_tcase(s, tc);
    TCase *th = ld_tcase("hostile", 60);
    tcase_add_test(th, truncated_at_every_byte);
    tcase_add_test(th, bad_header_length);
    tcase_add_test(th, bad_json);
    tcase_add_test(th, bad_entries);
    tcase_add_test(th, open_errors);
    tcase_add_test(th, random_mutations);
    suite_add_tcase(s, th);
    return ld_test_run(s);
}
