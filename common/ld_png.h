/* ld_png: reading and writing PNG files (libpng) as ld_image_t.
 *
 * Reading accepts every PNG colour type and bit depth and returns 8 bits
 * per channel: grey (1), grey+alpha (2), RGB (3) or RGBA (4) channels.
 * Palette images expand to RGB (RGBA with a transparency chunk), grey below
 * 8 bits expands to 8, 16-bit samples keep their high byte, a tRNS chunk
 * becomes an alpha channel. Untrusted input is safe: libpng errors are
 * caught, nothing leaks, and images wider or taller than LD_PNG_MAX_SIDE or
 * with more than LD_PNG_MAX_PIXELS pixels are refused before any pixel
 * memory is allocated (decompression bombs).
 * Errors: LD_EIO (cannot open/read), LD_EFORMAT (not a PNG, corrupt,
 * truncated, too large), each with a detail naming the file.
 *
 * Writing stores 8-bit images of 1..4 channels atomically (ld_afile): the
 * destination is either the old file or the complete new one. */
#ifndef LD_PNG_H
#define LD_PNG_H

#include "ld_image.h"

#define LD_PNG_MAX_SIDE 16384
#define LD_PNG_MAX_PIXELS (64u * 1024u * 1024u)

/* Reads path into *out (allocated here; caller frees with ld_image_free). */
int ld_png_read(const char *path, ld_image_t *out);

/* Writes img atomically to path. */
int ld_png_write(const char *path, const ld_image_t *img);

#endif
