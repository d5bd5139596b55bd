/* ldt_npz: writing NumPy .npz files (a zip archive of .npy arrays).
 *
 * Entries are stored uncompressed (method 0), which NumPy's np.load reads,
 * with .npy format 1.0 headers padded to 64 bytes. Archives are written
 * atomically (ld_afile) in one go from arrays in memory; an entry larger
 * than 4 GiB - 1 (zip64) is refused with LD_ERANGE.
 *
 * Usage: ldt_npz_t z = {0}; ldt_npz_add(&z, "images", "<f4", shape, 4, data);
 *        ...; ldt_npz_write(&z, path); ldt_npz_clear(&z).
 * The archive keeps pointers to the caller's data until it is written. */
#ifndef LDC_NPZ_H
#define LDC_NPZ_H

#include <stddef.h>
#include <stdint.h>

#define LDC_NPZ_MAX_ENTRIES 32
#define LDC_NPZ_MAX_DIMS 8

typedef struct {
    char name[64];          /* array name; the entry is name + ".npy" */
    char descr[8];          /* NumPy dtype string: "<f4", "<f2", "|u1", "<u4", "<i4", "<u8" */
    size_t shape[LDC_NPZ_MAX_DIMS];
    int ndim;
    const void *data;       /* C order, little-endian, prod(shape) * itemsize bytes */
    size_t bytes;
} ldt_npz_entry_t;

typedef struct {
    ldt_npz_entry_t entries[LDC_NPZ_MAX_ENTRIES];
    int n;
} ldt_npz_t;

/* Adds an array (not copied). LD_EINVAL on a bad name/descr/ndim, LD_ERANGE
 * when full or the data does not match the shape. */
int ldt_npz_add(ldt_npz_t *z, const char *name, const char *descr, const size_t *shape, int ndim,
                const void *data, size_t bytes);

/* Writes the archive atomically to path. */
int ldt_npz_write(const ldt_npz_t *z, const char *path);

/* CRC-32 (zip/zlib polynomial), continuing from crc (start with 0). */
uint32_t ldt_crc32(uint32_t crc, const void *data, size_t len);

#endif
