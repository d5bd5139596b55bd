/* ld_safetensors: reading and writing safetensors files, and the ordered
 * string map used for their __metadata__.
 *
 * File layout (https://github.com/huggingface/safetensors):
 *   u64 LE  N                 header length
 *   N bytes JSON object       {"__metadata__": {str: str}, "<name>": {"dtype": "F32",
 *                              "shape": [..], "data_offsets": [begin, end]}, ...}
 *                             (padded with trailing spaces)
 *   data area                 every tensor's bytes, little-endian, row-major
 *
 * The reader loads the whole file into memory and validates everything before
 * handing anything out; a file that does not pass is rejected with LD_EFORMAT
 * and a detail naming the file and the problem. It never reads outside the
 * file. Rules beyond plain JSON well-formedness:
 *   - 8 <= file size; 1 <= N <= LD_ST_MAX_HEADER and N <= file size - 8;
 *     the header starts with '{', is UTF-8 JSON with no duplicate keys;
 *   - each tensor entry has exactly the keys dtype, shape, data_offsets;
 *     dtype is one of ld_dtype_t; shape has at most LD_ST_MAX_DIMS
 *     non-negative integers whose product (and byte size) does not overflow;
 *     data_offsets = [begin, end] with begin <= end <= data area size and
 *     end - begin = numel * dtype size;
 *   - tensors do not overlap and, as the format requires, cover the data
 *     area completely with no holes (this blocks polyglot files and hidden
 *     payloads): checked after ordering tensors by their data offsets;
 *   - __metadata__, when present, maps strings to strings.
 * More than LD_ST_MAX_DIMS dimensions is LD_ENOTSUP (a valid file that this
 * library chooses not to handle); every other violation is LD_EFORMAT.
 *
 * The writer emits the header in insertion order (__metadata__ first, then
 * tensors in the order added), compact JSON padded with spaces so that the
 * data area starts at a multiple of 8 bytes, then the data in the same order.
 * It writes atomically (ld_afile) and can return the SHA-256 of the bytes.
 *
 * Host byte order must be little-endian (checked at compile time): tensor
 * data is handed out and taken in as raw bytes. */
#ifndef LD_SAFETENSORS_H
#define LD_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LD_ST_MAX_DIMS 8
#define LD_ST_MAX_HEADER (100u * 1024u * 1024u)

/* ---- ordered string -> string map ---------------------------------------- */

typedef struct ld_meta_s ld_meta_t;

/* Empty map. Caller owns *out. */
int ld_meta_new(ld_meta_t **out);
void ld_meta_destroy(ld_meta_t **self_p);
/* Deep copy. Caller owns *out. */
int ld_meta_clone(const ld_meta_t *self, ld_meta_t **out);
/* Sets key to a copy of value; an existing key keeps its position. */
int ld_meta_set(ld_meta_t *self, const char *key, const char *value);
/* The value of key (owned by the map, valid until it changes), or NULL. */
const char *ld_meta_get(const ld_meta_t *self, const char *key);
size_t ld_meta_count(const ld_meta_t *self);
/* The i-th key / value in insertion order (i < count). */
const char *ld_meta_key(const ld_meta_t *self, size_t i);
const char *ld_meta_value(const ld_meta_t *self, size_t i);

/* ---- dtypes ----------------------------------------------------------------- */

typedef enum {
    LD_DT_BOOL, LD_DT_U8, LD_DT_I8, LD_DT_U16, LD_DT_I16, LD_DT_F16, LD_DT_BF16,
    LD_DT_U32, LD_DT_I32, LD_DT_F32, LD_DT_U64, LD_DT_I64, LD_DT_F64,
    LD_DT_COUNT
} ld_dtype_t;

/* "F32" etc.; "?" for an invalid value. */
const char *ld_dtype_name(ld_dtype_t dt);
/* Bytes per element (0 for an invalid value). */
size_t ld_dtype_size(ld_dtype_t dt);
/* Whether `name` names a dtype exactly; if so *out = it. */
bool ld_dtype_parse(const char *name, ld_dtype_t *out);

/* ---- reader ------------------------------------------------------------------ */

typedef struct {
    const char *name;                /* owned by the reader */
    ld_dtype_t dtype;
    int ndim;                        /* 0 = scalar */
    int64_t shape[LD_ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;                   /* numel * ld_dtype_size(dtype) */
    const void *data;                /* inside the reader's buffer: NOT aligned, memcpy it */
} ld_st_tensor_t;

typedef struct ld_st_s ld_st_t;

/* Reads and validates a file. Caller owns *out. LD_EIO if it cannot be read,
 * LD_EFORMAT / LD_ENOTSUP (see above) if it is not acceptable. */
int ld_st_open(const char *path, ld_st_t **out);
/* Same on bytes in memory (copied); `label` names the source in errors. */
int ld_st_open_mem(const void *buf, size_t len, const char *label, ld_st_t **out);
void ld_st_close(ld_st_t **self_p);

/* Tensors, ordered by data offset (ties, i.e. empty tensors, by name). */
size_t ld_st_n_tensors(const ld_st_t *self);
const ld_st_tensor_t *ld_st_tensor(const ld_st_t *self, size_t i);
/* The tensor called name, or NULL. */
const ld_st_tensor_t *ld_st_find(const ld_st_t *self, const char *name);
/* The __metadata__ (empty when absent); owned by the reader. */
const ld_meta_t *ld_st_meta(const ld_st_t *self);
/* Lowercase hex SHA-256 of the whole file as read. */
void ld_st_sha256(const ld_st_t *self, char hex_out[65]);
/* The path or label given at open. */
const char *ld_st_path(const ld_st_t *self);

/* ---- writer ------------------------------------------------------------------ */

typedef struct ld_st_writer_s ld_st_writer_t;

/* Caller owns *out. */
int ld_st_writer_new(ld_st_writer_t **out);
void ld_st_writer_destroy(ld_st_writer_t **self_p);
/* Adds a tensor. name and shape are copied; data (numel * dtype size bytes,
 * any alignment; may be NULL when numel is 0) is BORROWED and must stay valid
 * until ld_st_writer_write(). LD_EINVAL on a duplicate name, the reserved name
 * "__metadata__", a bad dtype, ndim > LD_ST_MAX_DIMS or a negative dimension;
 * LD_ERANGE if the size overflows. */
int ld_st_writer_add(ld_st_writer_t *self, const char *name, ld_dtype_t dtype, int ndim,
                     const int64_t *shape, const void *data);
/* Sets one __metadata__ entry (copied). */
int ld_st_writer_set_meta(ld_st_writer_t *self, const char *key, const char *value);
/* Sets every entry of meta (copied). */
int ld_st_writer_merge_meta(ld_st_writer_t *self, const ld_meta_t *meta);
/* Writes the file atomically; sha256_out (may be NULL) receives the lowercase
 * hex SHA-256 of the bytes written. The writer can be written again. */
int ld_st_writer_write(ld_st_writer_t *self, const char *path, char sha256_out[65]);

/* Lowercase hex SHA-256 of a buffer (libsodium). */
void ld_sha256_hex(const void *buf, size_t len, char hex_out[65]);

#endif
