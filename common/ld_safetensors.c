/* ld_safetensors: the ordered metadata map, a validating reader and an
 * atomic writer for safetensors files (format rules in ld_safetensors.h).
 *
 * Reader invariants, once ld_st_open*() has returned 0: every tensor's
 * [data, data + nbytes) lies inside the buffer, tensors are sorted by offset,
 * tile the data area exactly, and have unique names. Nothing is handed out
 * before the whole header has been checked.
 * Writer invariant: data pointers are borrowed; nothing is read from them
 * before ld_st_writer_write(). */
#include "ld_safetensors.h"
#include "ld_afile.h"
#include "ld_error.h"
#include "ld_text.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "langdaug reads and writes tensor bytes as-is: a little-endian host is required"
#endif

/* ---- metadata map ------------------------------------------------------------ */

struct ld_meta_s {
    char **keys;
    char **values;
    size_t n, cap;
};

int ld_meta_new(ld_meta_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? LD_OK : ld_seterr(LD_ENOMEM, "metadata: out of memory");
}

void ld_meta_destroy(ld_meta_t **self_p)
{
    ld_meta_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->n; i++) {
        free(self->keys[i]);
        free(self->values[i]);
    }
    free(self->keys);
    free(self->values);
    free(self);
    *self_p = NULL;
}

static long meta_index(const ld_meta_t *self, const char *key)
{
    for (size_t i = 0; i < self->n; i++)
        if (strcmp(self->keys[i], key) == 0)
            return (long)i;
    return -1;
}

static int meta_nomem(const char *key)
{
    return ld_seterr(LD_ENOMEM, "metadata: out of memory for key '%.64s'", key);
}

static int meta_grow(ld_meta_t *self, const char *key)
{
    size_t cap = self->cap ? 2 * self->cap : 8;
    char **k = realloc(self->keys, cap * sizeof *k);
    if (!k)
        return meta_nomem(key);
    self->keys = k;
    char **v = realloc(self->values, cap * sizeof *v);
    if (!v)
        return meta_nomem(key);
    self->values = v;
    self->cap = cap;
    return LD_OK;
}

int ld_meta_set(ld_meta_t *self, const char *key, const char *value)
{
    if (!key || !value)
        return ld_seterr(LD_EINVAL, "metadata: NULL key or value");
    char *v = strdup(value);
    if (!v)
        return meta_nomem(key);
    long i = meta_index(self, key);
    if (i >= 0) {
        free(self->values[i]);
        self->values[i] = v;
        return LD_OK;
    }
    char *k = strdup(key);
    int rc = !k ? meta_nomem(key) : self->n == self->cap ? meta_grow(self, key) : LD_OK;
    if (rc) {
        free(k);
        free(v);
        return rc;
    }
    self->keys[self->n] = k;
    self->values[self->n] = v;
    self->n++;
    return LD_OK;
}

const char *ld_meta_get(const ld_meta_t *self, const char *key)
{
    long i = meta_index(self, key);
    return i >= 0 ? self->values[i] : NULL;
}

size_t ld_meta_count(const ld_meta_t *self)
{
    return self->n;
}

const char *ld_meta_key(const ld_meta_t *self, size_t i)
{
    return i < self->n ? self->keys[i] : NULL;
}

const char *ld_meta_value(const ld_meta_t *self, size_t i)
{
    return i < self->n ? self->values[i] : NULL;
}

static int meta_merge(ld_meta_t *dst, const ld_meta_t *src)
{
    for (size_t i = 0; i < src->n; i++) {
        int rc = ld_meta_set(dst, src->keys[i], src->values[i]);
        if (rc)
            return rc;
    }
    return LD_OK;
}

int ld_meta_clone(const ld_meta_t *self, ld_meta_t **out)
{
    int rc = ld_meta_new(out);
    if (rc == LD_OK && (rc = meta_merge(*out, self)) != LD_OK)
        ld_meta_destroy(out);
    return rc;
}

/* ---- dtypes --------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtypes[LD_DT_COUNT] = {
    [LD_DT_BOOL] = {"BOOL", 1}, [LD_DT_U8] = {"U8", 1},   [LD_DT_I8] = {"I8", 1},
    [LD_DT_U16] = {"U16", 2},   [LD_DT_I16] = {"I16", 2}, [LD_DT_F16] = {"F16", 2},
    [LD_DT_BF16] = {"BF16", 2}, [LD_DT_U32] = {"U32", 4}, [LD_DT_I32] = {"I32", 4},
    [LD_DT_F32] = {"F32", 4},   [LD_DT_U64] = {"U64", 8}, [LD_DT_I64] = {"I64", 8},
    [LD_DT_F64] = {"F64", 8},
};

static int dtype_valid(ld_dtype_t dt)
{
    return (int)dt >= 0 && dt < LD_DT_COUNT;
}

const char *ld_dtype_name(ld_dtype_t dt)
{
    return dtype_valid(dt) ? dtypes[dt].name : "?";
}

size_t ld_dtype_size(ld_dtype_t dt)
{
    return dtype_valid(dt) ? dtypes[dt].size : 0;
}

bool ld_dtype_parse(const char *name, ld_dtype_t *out)
{
    for (int i = 0; i < LD_DT_COUNT; i++)
        if (strcmp(dtypes[i].name, name) == 0) {
            *out = (ld_dtype_t)i;
            return true;
        }
    return false;
}

/* ---- hashing ------------------------------------------------------------------ */

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;

static int sodium_status;

static void sodium_start(void)
{
    /* SHA-256 needs no random source, so a failed init (-1) cannot affect
     * hashing; the status is kept only for debugging. */
    sodium_status = sodium_init();
}

static void hex_digest(const unsigned char d[crypto_hash_sha256_BYTES], char hex_out[65])
{
    sodium_bin2hex(hex_out, 65, d, crypto_hash_sha256_BYTES);
}

void ld_sha256_hex(const void *buf, size_t len, char hex_out[65])
{
    pthread_once(&sodium_once, sodium_start);
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(d, buf, len);
    hex_digest(d, hex_out);
}

/* ---- reader -------------------------------------------------------------------- */

struct ld_st_s {
    char *path;
    unsigned char *buf;
    size_t len;
    ld_st_tensor_t *tensors;
    size_t n;
    ld_meta_t *meta;
};

/* Untrusted names go into messages shortened and with control bytes masked. */
typedef struct {
    char s[72];
} shown_t;

static shown_t shown(const char *name)
{
    shown_t out;
    size_t i = 0;
    for (; name[i] && i < 60; i++) {
        unsigned char c = (unsigned char)name[i];
        out.s[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    strcpy(out.s + i, name[i] ? "..." : "");
    return out;
}

static int bad(const ld_st_t *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* LD_EFORMAT with "<path>: <message>". */
static int bad(const ld_st_t *st, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ld_seterr(LD_EFORMAT, "%s: %s", st->path, msg);
}

/* A JSON integer >= 0, else -1. */
static json_int_t json_count(const json_t *v)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    return x >= 0 ? x : -1;
}

static int parse_meta(ld_st_t *st, json_t *obj)
{
    if (!json_is_object(obj))
        return bad(st, "__metadata__ is not an object");
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        if (!json_is_string(v))
            return bad(st, "__metadata__ '%s' is not a string", shown(key).s);
        int rc = ld_meta_set(st->meta, key, json_string_value(v));
        if (rc)
            return ld_seterr(rc, "%s: %s", st->path, ld_errdetail());
    }
    return LD_OK;
}

static int parse_shape(ld_st_t *st, const char *name, json_t *shape, ld_st_tensor_t *t)
{
    if (!json_is_array(shape))
        return bad(st, "tensor '%s': shape is not an array", shown(name).s);
    size_t nd = json_array_size(shape);
    if (nd > LD_ST_MAX_DIMS)
        return ld_seterr(LD_ENOTSUP, "%s: tensor '%s': %zu dimensions (at most %d supported)",
                         st->path, shown(name).s, nd, LD_ST_MAX_DIMS);
    size_t numel = 1;
    for (size_t d = 0; d < nd; d++) {
        json_int_t x = json_count(json_array_get(shape, d));
        if (x < 0)
            return bad(st, "tensor '%s': shape[%zu] is not a non-negative integer", shown(name).s, d);
        if ((unsigned long long)x > SIZE_MAX || __builtin_mul_overflow(numel, (size_t)x, &numel))
            return bad(st, "tensor '%s': shape overflows (element count too large)", shown(name).s);
        t->shape[d] = (int64_t)x;
    }
    t->ndim = (int)nd;
    t->numel = numel;
    if (__builtin_mul_overflow(numel, ld_dtype_size(t->dtype), &t->nbytes))
        return bad(st, "tensor '%s': byte size overflows", shown(name).s);
    return LD_OK;
}

static int parse_offsets(ld_st_t *st, const char *name, json_t *offs, size_t data_len,
                         ld_st_tensor_t *t, size_t *begin_out)
{
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return bad(st, "tensor '%s': data_offsets is not a [begin, end] array", shown(name).s);
    json_int_t b = json_count(json_array_get(offs, 0)), e = json_count(json_array_get(offs, 1));
    if (b < 0 || e < 0)
        return bad(st, "tensor '%s': data_offsets are not non-negative integers", shown(name).s);
    if (b > e)
        return bad(st, "tensor '%s': data_offsets [%lld, %lld] are reversed", shown(name).s,
                   (long long)b, (long long)e);
    if ((unsigned long long)e > data_len)
        return bad(st, "tensor '%s': data_offsets [%lld, %lld] outside data area of %zu bytes",
                   shown(name).s, (long long)b, (long long)e, data_len);
    if ((size_t)(e - b) != t->nbytes)
        return bad(st, "tensor '%s': data_offsets [%lld, %lld] span %lld bytes, but %s %s needs %zu",
                   shown(name).s, (long long)b, (long long)e, (long long)(e - b),
                   ld_dtype_name(t->dtype), t->ndim ? "of this shape" : "scalar", t->nbytes);
    *begin_out = (size_t)b;
    return LD_OK;
}

static int parse_tensor(ld_st_t *st, const char *name, json_t *entry, const unsigned char *data,
                        size_t data_len, ld_st_tensor_t *t)
{
    if (!json_is_object(entry))
        return bad(st, "tensor '%s': entry is not an object", shown(name).s);
    const char *key;
    json_t *v;
    json_object_foreach(entry, key, v) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return bad(st, "tensor '%s': unknown field '%s'", shown(name).s, shown(key).s);
    }
    json_t *dt = json_object_get(entry, "dtype");
    json_t *shape = json_object_get(entry, "shape");
    json_t *offs = json_object_get(entry, "data_offsets");
    if (!dt || !shape || !offs)
        return bad(st, "tensor '%s': missing field '%s'", shown(name).s,
                   !dt ? "dtype" : !shape ? "shape" : "data_offsets");
    if (!json_is_string(dt) || !ld_dtype_parse(json_string_value(dt), &t->dtype))
        return bad(st, "tensor '%s': unknown dtype %s%s%s", shown(name).s, json_is_string(dt) ? "'" : "",
                   json_is_string(dt) ? shown(json_string_value(dt)).s : "(not a string)",
                   json_is_string(dt) ? "'" : "");
    int rc = parse_shape(st, name, shape, t);
    size_t begin = 0;
    if (rc == LD_OK)
        rc = parse_offsets(st, name, offs, data_len, t, &begin);
    if (rc)
        return rc;
    t->data = data + begin;
    t->name = strdup(name);
    return t->name ? LD_OK : ld_seterr(LD_ENOMEM, "%s: out of memory for tensor '%s'", st->path, shown(name).s);
}

static int by_offset(const void *pa, const void *pb)
{
    const ld_st_tensor_t *a = pa, *b = pb;
    const unsigned char *ea = (const unsigned char *)a->data + a->nbytes;
    const unsigned char *eb = (const unsigned char *)b->data + b->nbytes;
    if (a->data != b->data)
        return (const unsigned char *)a->data < (const unsigned char *)b->data ? -1 : 1;
    if (ea != eb)
        return ea < eb ? -1 : 1;
    return strcmp(a->name, b->name);
}

/* Sorted by offset, each tensor must start where the previous one ended and
 * the last must end at the end of the file. */
static int check_tiling(ld_st_t *st, const unsigned char *data, size_t data_len)
{
    if (st->n > 1)
        qsort(st->tensors, st->n, sizeof *st->tensors, by_offset);
    size_t pos = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < st->n; i++) {
        const ld_st_tensor_t *t = &st->tensors[i];
        size_t begin = (size_t)((const unsigned char *)t->data - data);
        if (begin < pos)
            return bad(st, "tensor '%s' overlaps tensor '%s' (data_offsets begin %zu < %zu)",
                       shown(t->name).s, shown(prev).s, begin, pos);
        if (begin > pos)
            return bad(st, "data area bytes [%zu, %zu) belong to no tensor", pos, begin);
        pos = begin + t->nbytes;
        prev = t->name;
    }
    if (pos != data_len)
        return bad(st, "data area bytes [%zu, %zu) belong to no tensor", pos, data_len);
    return LD_OK;
}

static int parse_header(ld_st_t *st)
{
    if (st->len < 8)
        return bad(st, "file is %zu bytes, too short for a safetensors header", st->len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | st->buf[i];
    if (hlen == 0)
        return bad(st, "header length is 0");
    if (hlen > LD_ST_MAX_HEADER)
        return bad(st, "header length %llu exceeds the limit of %u bytes", (unsigned long long)hlen,
                   LD_ST_MAX_HEADER);
    if (hlen > st->len - 8)
        return bad(st, "header length %llu exceeds the %zu bytes after it (truncated file?)",
                   (unsigned long long)hlen, st->len - 8);
    const char *header = (const char *)st->buf + 8;
    if (header[0] != '{')
        return bad(st, "header does not start with '{'");
    json_error_t jerr;
    json_t *root = json_loadb(header, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return bad(st, "header is not valid JSON: %s (byte %d)", jerr.text, jerr.position);
    const unsigned char *data = st->buf + 8 + hlen;
    size_t data_len = st->len - 8 - (size_t)hlen;
    int rc = LD_OK;
    if (!json_is_object(root))
        rc = bad(st, "header is not a JSON object");
    else if (!(st->tensors = calloc(json_object_size(root) + 1, sizeof *st->tensors)))
        rc = ld_seterr(LD_ENOMEM, "%s: out of memory for %zu tensors", st->path, json_object_size(root));
    const char *key;
    json_t *v;
    if (rc == LD_OK) {
        json_object_foreach(root, key, v) {
            if (strcmp(key, "__metadata__") == 0)
                rc = parse_meta(st, v);
            else if ((rc = parse_tensor(st, key, v, data, data_len, &st->tensors[st->n])) == LD_OK)
                st->n++;
            if (rc)
                break;
        }
    }
    json_decref(root);
    return rc ? rc : check_tiling(st, data, data_len);
}

/* Takes ownership of buf. */
static int st_from_buffer(const char *label, unsigned char *buf, size_t len, ld_st_t **out)
{
    *out = NULL;
    ld_st_t *st = calloc(1, sizeof *st);
    if (!st) {
        free(buf);
        return ld_seterr(LD_ENOMEM, "%s: out of memory", label);
    }
    st->buf = buf;
    st->len = len;
    int rc;
    if (!(st->path = strdup(label)) || ld_meta_new(&st->meta) != LD_OK)
        rc = ld_seterr(LD_ENOMEM, "%s: out of memory", label);
    else
        rc = parse_header(st);
    if (rc) {
        ld_st_close(&st);
        return rc;
    }
    *out = st;
    return LD_OK;
}

int ld_st_open(const char *path, ld_st_t **out)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    int rc = ld_afile_read_all(path, SIZE_MAX - 1, &buf, &len);
    return rc ? rc : st_from_buffer(path, (unsigned char *)buf, len, out);
}

int ld_st_open_mem(const void *bytes, size_t len, const char *label, ld_st_t **out)
{
    *out = NULL;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf)
        return ld_seterr(LD_ENOMEM, "%s: cannot allocate %zu bytes", label ? label : "(memory)", len);
    if (len)
        memcpy(buf, bytes, len);
    return st_from_buffer(label ? label : "(memory)", buf, len, out);
}

void ld_st_close(ld_st_t **self_p)
{
    ld_st_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->n; i++)
        free((char *)self->tensors[i].name);
    free(self->tensors);
    ld_meta_destroy(&self->meta);
    free(self->buf);
    free(self->path);
    free(self);
    *self_p = NULL;
}

size_t ld_st_n_tensors(const ld_st_t *self)
{
    return self->n;
}

const ld_st_tensor_t *ld_st_tensor(const ld_st_t *self, size_t i)
{
    return i < self->n ? &self->tensors[i] : NULL;
}

const ld_st_tensor_t *ld_st_find(const ld_st_t *self, const char *name)
{
    for (size_t i = 0; i < self->n; i++)
        if (strcmp(self->tensors[i].name, name) == 0)
            return &self->tensors[i];
    return NULL;
}

const ld_meta_t *ld_st_meta(const ld_st_t *self)
{
    return self->meta;
}

void ld_st_sha256(const ld_st_t *self, char hex_out[65])
{
    ld_sha256_hex(self->buf, self->len, hex_out);
}

const char *ld_st_path(const ld_st_t *self)
{
    return self->path;
}

/* ---- writer ---------------------------------------------------------------------- */

typedef struct {
    char *name;
    ld_dtype_t dtype;
    int ndim;
    int64_t shape[LD_ST_MAX_DIMS];
    const void *data;
    size_t nbytes;
} entry_t;

struct ld_st_writer_s {
    entry_t *v;
    size_t n, cap;
    ld_meta_t *meta;
};

int ld_st_writer_new(ld_st_writer_t **out)
{
    ld_st_writer_t *w = calloc(1, sizeof *w);
    if (!w || ld_meta_new(&w->meta) != LD_OK) {
        free(w);
        *out = NULL;
        return ld_seterr(LD_ENOMEM, "safetensors writer: out of memory");
    }
    *out = w;
    return LD_OK;
}

void ld_st_writer_destroy(ld_st_writer_t **self_p)
{
    ld_st_writer_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->n; i++)
        free(self->v[i].name);
    free(self->v);
    ld_meta_destroy(&self->meta);
    free(self);
    *self_p = NULL;
}

static int check_new_tensor(const ld_st_writer_t *self, const char *name, ld_dtype_t dtype, int ndim,
                            const int64_t *shape, size_t *nbytes_out)
{
    if (!name || strcmp(name, "__metadata__") == 0)
        return ld_seterr(LD_EINVAL, "safetensors writer: invalid tensor name '%s'", name ? name : "(null)");
    for (size_t i = 0; i < self->n; i++)
        if (strcmp(self->v[i].name, name) == 0)
            return ld_seterr(LD_EINVAL, "safetensors writer: duplicate tensor '%s'", name);
    if (!dtype_valid(dtype))
        return ld_seterr(LD_EINVAL, "safetensors writer: tensor '%s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > LD_ST_MAX_DIMS || (ndim > 0 && !shape))
        return ld_seterr(LD_EINVAL, "safetensors writer: tensor '%s': invalid ndim %d", name, ndim);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return ld_seterr(LD_EINVAL, "safetensors writer: tensor '%s': negative dimension %lld", name,
                             (long long)shape[d]);
        if ((uint64_t)shape[d] > SIZE_MAX || __builtin_mul_overflow(numel, (size_t)shape[d], &numel))
            return ld_seterr(LD_ERANGE, "safetensors writer: tensor '%s': size overflows", name);
    }
    if (__builtin_mul_overflow(numel, ld_dtype_size(dtype), nbytes_out))
        return ld_seterr(LD_ERANGE, "safetensors writer: tensor '%s': size overflows", name);
    return LD_OK;
}

int ld_st_writer_add(ld_st_writer_t *self, const char *name, ld_dtype_t dtype, int ndim,
                     const int64_t *shape, const void *data)
{
    size_t nbytes = 0;
    int rc = check_new_tensor(self, name, dtype, ndim, shape, &nbytes);
    if (rc)
        return rc;
    if (nbytes && !data)
        return ld_seterr(LD_EINVAL, "safetensors writer: tensor '%s': no data", name);
    if (self->n == self->cap) {
        size_t cap = self->cap ? 2 * self->cap : 16;
        entry_t *v = realloc(self->v, cap * sizeof *v);
        if (!v)
            return ld_seterr(LD_ENOMEM, "safetensors writer: tensor '%s': out of memory", name);
        self->v = v;
        self->cap = cap;
    }
    entry_t *e = &self->v[self->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name)))
        return ld_seterr(LD_ENOMEM, "safetensors writer: tensor '%s': out of memory", name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        e->shape[d] = shape[d];
    e->data = data;
    e->nbytes = nbytes;
    self->n++;
    return LD_OK;
}

int ld_st_writer_set_meta(ld_st_writer_t *self, const char *key, const char *value)
{
    return ld_meta_set(self->meta, key, value);
}

int ld_st_writer_merge_meta(ld_st_writer_t *self, const ld_meta_t *meta)
{
    return meta ? meta_merge(self->meta, meta) : LD_OK;
}

/* Adds key -> value to obj (value NULL: its construction failed; text: the
 * string value was made from, or NULL). Jansson refuses text that is not
 * UTF-8 and fails when out of memory, alike: the detail tells which. */
static int json_put(json_t *obj, const char *key, json_t *value, const char *text, const char *what)
{
    if (value && json_object_set_new(obj, key, value) == 0)
        return LD_OK;
    if (!ld_text_is_utf8(key))
        return ld_seterr(LD_EINVAL, "safetensors writer: %s '%s' is not valid UTF-8", what, shown(key).s);
    if (text && !ld_text_is_utf8(text))
        return ld_seterr(LD_EINVAL, "safetensors writer: the value of %s '%s' is not valid UTF-8", what,
                         shown(key).s);
    return ld_seterr(LD_ENOMEM, "safetensors writer: %s '%s': out of memory", what, shown(key).s);
}

static json_t *tensor_json(const entry_t *e, size_t begin)
{
    json_t *o = json_object(), *shape = json_array(), *offs = json_array();
    int ok = o && shape && offs;
    for (int d = 0; ok && d < e->ndim; d++)
        ok = json_array_append_new(shape, json_integer((json_int_t)e->shape[d])) == 0;
    ok = ok && json_array_append_new(offs, json_integer((json_int_t)begin)) == 0 &&
         json_array_append_new(offs, json_integer((json_int_t)(begin + e->nbytes))) == 0;
    ok = ok && json_object_set_new(o, "dtype", json_string(ld_dtype_name(e->dtype))) == 0;
    ok = ok && json_object_set(o, "shape", shape) == 0 && json_object_set(o, "data_offsets", offs) == 0;
    json_decref(shape);
    json_decref(offs);
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The header JSON text (malloc'ed) padded with spaces to a multiple of 8. */
static int build_header(const ld_st_writer_t *self, char **out, size_t *len_out)
{
    json_t *root = json_object();
    if (!root)
        return ld_seterr(LD_ENOMEM, "safetensors writer: out of memory for the header");
    int rc = LD_OK;
    if (self->meta->n) {
        json_t *m = json_object();
        for (size_t i = 0; rc == LD_OK && i < self->meta->n; i++)
            rc = json_put(m, self->meta->keys[i], json_string(self->meta->values[i]), self->meta->values[i],
                          "metadata entry");
        if (rc == LD_OK)
            rc = json_put(root, "__metadata__", m, NULL, "metadata");
        else
            json_decref(m);
    }
    size_t offset = 0, total;
    for (size_t i = 0; rc == LD_OK && i < self->n; i++) {
        const entry_t *e = &self->v[i];
        if (__builtin_add_overflow(offset, e->nbytes, &total))
            rc = ld_seterr(LD_ERANGE, "safetensors writer: total size overflows");
        else
            rc = json_put(root, e->name, tensor_json(e, offset), NULL, "tensor name");
        offset = total;
    }
    char *text = rc == LD_OK ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (rc)
        return rc;
    if (!text)
        return ld_seterr(LD_ENOMEM, "safetensors writer: out of memory for the header");
    size_t n = strlen(text), padded = (n + 7) & ~(size_t)7;
    if (padded > LD_ST_MAX_HEADER) {
        free(text);
        return ld_seterr(LD_ERANGE, "safetensors writer: header of %zu bytes is too large", padded);
    }
    char *p = realloc(text, padded + 1);
    if (!p) {
        free(text);
        return ld_seterr(LD_ENOMEM, "safetensors writer: out of memory for the header");
    }
    memset(p + n, ' ', padded - n);
    p[padded] = '\0';
    *out = p;
    *len_out = padded;
    return LD_OK;
}

static int put(ld_afile_t *af, crypto_hash_sha256_state *h, const void *buf, size_t len)
{
    if (!len)
        return LD_OK;
    crypto_hash_sha256_update(h, buf, len);
    return ld_afile_write(af, buf, len);
}

int ld_st_writer_write(ld_st_writer_t *self, const char *path, char sha256_out[65])
{
    pthread_once(&sodium_once, sodium_start);
    char *header = NULL;
    size_t hlen = 0;
    int rc = build_header(self, &header, &hlen);
    if (rc)
        return rc;
    ld_afile_t *af;
    if ((rc = ld_afile_open(path, &af)) != LD_OK) {
        free(header);
        return rc;
    }
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    rc = put(af, &h, len8, 8);
    if (rc == LD_OK)
        rc = put(af, &h, header, hlen);
    for (size_t i = 0; rc == LD_OK && i < self->n; i++)
        rc = put(af, &h, self->v[i].data, self->v[i].nbytes);
    free(header);
    if (rc) {
        ld_afile_abort(&af);
        return rc;
    }
    if ((rc = ld_afile_commit(&af)) != LD_OK)
        return rc;
    if (sha256_out) {
        unsigned char d[crypto_hash_sha256_BYTES];
        crypto_hash_sha256_final(&h, d);
        hex_digest(d, sha256_out);
    }
    return LD_OK;
}
