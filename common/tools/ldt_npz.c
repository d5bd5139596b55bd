/* ldt_npz: stored-entry zip of .npy arrays (see ldt_npz.h). The layout is
 *   per entry: local file header, name, .npy header, array bytes
 *   then: central directory (one record per entry), end record.
 * CRC and sizes are known before an entry is written (the data is in
 * memory), so no data descriptors are needed. */
#include "ldt_npz.h"

#include <stdio.h>
#include <string.h>

#include "ld_afile.h"
#include "ld_error.h"

#define NPY_ALIGN 64
#define ZIP_MAX 0xFFFFFFFEu

uint32_t ldt_crc32(uint32_t crc, const void *data, size_t len)
{
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++)
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static size_t itemsize(const char *descr)
{
    static const struct { const char *d; size_t size; } known[] = {
        { "<f4", 4 }, { "<f2", 2 }, { "|u1", 1 }, { "<u4", 4 }, { "<i4", 4 }, { "<u8", 8 }, { "<i8", 8 },
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(descr, known[i].d))
            return known[i].size;
    return 0;
}

int ldt_npz_add(ldt_npz_t *z, const char *name, const char *descr, const size_t *shape, int ndim,
                const void *data, size_t bytes)
{
    if (z->n == LDC_NPZ_MAX_ENTRIES)
        return ld_seterr(LD_ERANGE, "npz: more than %d arrays", LDC_NPZ_MAX_ENTRIES);
    size_t isz = itemsize(descr);
    if (!name[0] || strlen(name) + 5 > sizeof z->entries[0].name || !isz || ndim < 0 || ndim > LDC_NPZ_MAX_DIMS)
        return ld_seterr(LD_EINVAL, "npz: bad array '%s' (%s, %d dims)", name, descr, ndim);
    size_t n = isz;
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(n, shape[i], &n))
            return ld_seterr(LD_ERANGE, "npz: array '%s' is too large", name);
    if (n != bytes)
        return ld_seterr(LD_ERANGE, "npz: array '%s' has %zu bytes, its shape needs %zu", name, bytes, n);
    ldt_npz_entry_t *e = &z->entries[z->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->descr, sizeof e->descr, "%s", descr);
    memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
    e->ndim = ndim;
    e->data = data;
    e->bytes = bytes;
    return 0;
}

/* The .npy v1.0 header (magic, version, length, dict padded with spaces and
 * a newline so that the data starts at a multiple of 64). Returns its size. */
static size_t npy_header(const ldt_npz_entry_t *e, char *out, size_t cap)
{
    char dict[256], shape[160] = "";
    size_t len = 0;
    for (int i = 0; i < e->ndim; i++)
        len += (size_t)snprintf(shape + len, sizeof shape - len, "%zu,%s", e->shape[i],
                                i + 1 < e->ndim ? " " : "");
    if (e->ndim > 1)
        shape[len - 1] = '\0'; /* (2, 3) but (2,) */
    int dlen = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", e->descr,
                        shape);
    size_t total = 10 + (size_t)dlen + 1;
    total = (total + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    if (total > cap)
        return 0;
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    out[8] = (char)((total - 10) & 0xff);
    out[9] = (char)((total - 10) >> 8);
    memcpy(out + 10, dict, (size_t)dlen);
    memset(out + 10 + dlen, ' ', total - 10 - (size_t)dlen - 1);
    out[total - 1] = '\n';
    return total;
}

static void put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, v & 0xffff);
    put16(p + 2, v >> 16);
}

/* The common part of local (30 bytes) and central (46 bytes) headers. */
static size_t zip_header(uint8_t *h, int central, const char *name, uint32_t crc, uint32_t size, uint32_t offset)
{
    size_t nlen = strlen(name), o = central ? 2 : 0;
    memset(h, 0, 46);
    put32(h, central ? 0x02014b50u : 0x04034b50u);
    if (central)
        put16(h + 4, 20);           /* version made by */
    put16(h + 4 + o, 20);           /* version needed */
    put16(h + 6 + o, 0);            /* flags */
    put16(h + 8 + o, 0);            /* stored */
    put16(h + 10 + o, 0);           /* time 00:00 */
    put16(h + 12 + o, 0x21);        /* date 1980-01-01 */
    put32(h + 14 + o, crc);
    put32(h + 18 + o, size);
    put32(h + 22 + o, size);
    put16(h + 26 + o, (unsigned)nlen);
    if (central)
        put32(h + 42, offset);
    return central ? 46 : 30;
}

int ldt_npz_write(const ldt_npz_t *z, const char *path)
{
    char hdr[LDC_NPZ_MAX_ENTRIES][512];
    size_t hlen[LDC_NPZ_MAX_ENTRIES];
    uint32_t crc[LDC_NPZ_MAX_ENTRIES], offset[LDC_NPZ_MAX_ENTRIES];
    char names[LDC_NPZ_MAX_ENTRIES][72];
    uint64_t pos = 0;
    for (int i = 0; i < z->n; i++) {
        const ldt_npz_entry_t *e = &z->entries[i];
        snprintf(names[i], sizeof names[i], "%s.npy", e->name);
        if (!(hlen[i] = npy_header(e, hdr[i], sizeof hdr[i])))
            return ld_seterr(LD_EINVAL, "%s: array '%s' header too long", path, e->name);
        if (e->bytes > ZIP_MAX - hlen[i] || pos > ZIP_MAX)
            return ld_seterr(LD_ERANGE, "%s: array '%s' of %zu bytes needs zip64, not supported", path, e->name,
                             e->bytes);
        crc[i] = ldt_crc32(ldt_crc32(0, hdr[i], hlen[i]), e->data, e->bytes);
        offset[i] = (uint32_t)pos;
        pos += 30 + strlen(names[i]) + hlen[i] + e->bytes;
    }
    if (pos > ZIP_MAX)
        return ld_seterr(LD_ERANGE, "%s: archive over 4 GiB needs zip64, not supported", path);
    ld_afile_t *af;
    int rc = ld_afile_open(path, &af);
    if (rc)
        return rc;
    uint8_t h[46];
    for (int i = 0; i < z->n && !rc; i++) {
        uint32_t size = (uint32_t)(hlen[i] + z->entries[i].bytes);
        size_t n = zip_header(h, 0, names[i], crc[i], size, 0);
        rc = ld_afile_write(af, h, n);
        rc = rc ? rc : ld_afile_write(af, names[i], strlen(names[i]));
        rc = rc ? rc : ld_afile_write(af, hdr[i], hlen[i]);
        rc = rc ? rc : ld_afile_write(af, z->entries[i].data, z->entries[i].bytes);
    }
    uint64_t cd_start = pos;
    for (int i = 0; i < z->n && !rc; i++) {
        uint32_t size = (uint32_t)(hlen[i] + z->entries[i].bytes);
        size_t n = zip_header(h, 1, names[i], crc[i], size, offset[i]);
        rc = ld_afile_write(af, h, n);
        rc = rc ? rc : ld_afile_write(af, names[i], strlen(names[i]));
        pos += n + strlen(names[i]);
    }
    uint8_t end[22] = { 0 };
    put32(end, 0x06054b50u);
    put16(end + 8, (unsigned)z->n);
    put16(end + 10, (unsigned)z->n);
    put32(end + 12, (uint32_t)(pos - cd_start));
    put32(end + 16, (uint32_t)cd_start);
    rc = rc ? rc : ld_afile_write(af, end, sizeof end);
    if (rc) {
        ld_afile_abort(&af);
        return rc;
    }
    return ld_afile_commit(&af);
}
