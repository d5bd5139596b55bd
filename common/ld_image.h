/* ld_image: 8-bit interleaved images in memory, and the pixel operations the
 * data side needs: channel conversion, resizing, float conversion, and
 * pasting and filling for trajectory grids.
 *
 * An ld_image_t is a plain value: `data` holds height*width*channels bytes,
 * row-major, channels interleaved (HWC). ld_image_alloc() fills it and the
 * owner releases it with ld_image_free(), which also zeroes the struct, so
 * freeing twice is safe. Functions that produce an image write into a
 * caller-provided, not yet allocated struct; on error it is left empty. */
#ifndef LD_IMAGE_H
#define LD_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int width, height, channels; /* channels 1..4: grey, grey+alpha, RGB, RGBA */
    uint8_t *data;               /* owned; height*width*channels bytes */
} ld_image_t;

/* Allocates a zero-filled image (LD_EINVAL on a bad size, LD_ENOMEM). */
int ld_image_alloc(ld_image_t *img, int width, int height, int channels);
void ld_image_free(ld_image_t *img);

/* Pixel pointer of (x, y); no bounds check. */
static inline uint8_t *ld_image_at(const ld_image_t *img, int x, int y)
{
    return img->data + ((size_t)y * (size_t)img->width + (size_t)x) * (size_t)img->channels;
}

/* Converts to 1 (grey) or 3 (RGB) channels; alpha is dropped (not
 * composited). Grey -> RGB replicates; RGB -> grey is the ITU-R BT.601 luma
 * (77 R + 150 G + 29 B + 128) >> 8, which maps identical channels to
 * themselves. */
int ld_image_convert(const ld_image_t *src, int channels, ld_image_t *dst);

/* Copies channel c of src into a 1-channel image. */
int ld_image_extract_channel(const ld_image_t *src, int c, ld_image_t *dst);

/* Copies the rectangle (x, y, w, h), which must lie inside src, into dst. */
int ld_image_crop(const ld_image_t *src, int x, int y, int w, int h, ld_image_t *dst);

typedef enum {
    LD_RESIZE_NEAREST, /* for masks and label maps: never invents values */
    LD_RESIZE_BILINEAR,/* half-pixel centres, edge-clamped */
    LD_RESIZE_AREA,    /* box average over each output pixel's footprint */
    LD_RESIZE_SMOOTH   /* AREA when shrinking by more than 2x on an axis, else BILINEAR */
} ld_resize_t;

/* Resizes src to width x height (same channel count). */
int ld_image_resize(const ld_image_t *src, int width, int height, ld_resize_t mode, ld_image_t *dst);

/* Float [C,S,S] planar values in [-1,1] -> 8-bit interleaved (v+1)*127.5,
 * rounded and clamped; C must be dst->channels, dst must be at least S x S
 * and allocated. Written at (x0, y0) of dst, clipped to dst. */
void ld_image_put_float(ld_image_t *dst, int x0, int y0, const float *chw, int c, int s);

/* Copies src into dst at (x0, y0), clipped; channel counts may differ
 * (converted per pixel as ld_image_convert does). */
void ld_image_paste(ld_image_t *dst, int x0, int y0, const ld_image_t *src);

/* Fills the rectangle (clipped) with colour rgb (its luma on grey images). */
void ld_image_fill_rect(ld_image_t *dst, int x0, int y0, int w, int h, const uint8_t rgb[3]);

#endif
