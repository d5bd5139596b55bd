/* ld_image: channel conversion, separable resizing, float conversion and
 * drawing on 8-bit interleaved images.
 * Resizing builds, for each axis, a table of source taps and weights per
 * output index (bilinear or box/area), then filters rows into a float
 * buffer and columns into the result, so both filters share one code path.
 * Nearest resizing maps output centre (i + 0.5) * src / dst to its source
 * pixel, so it only ever copies existing values. */
#include "ld_image.h"
#include "ld_error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LD_IMAGE_MAX_SIDE 65536

int ld_image_alloc(ld_image_t *img, int width, int height, int channels)
{
    memset(img, 0, sizeof *img);
    if (width < 1 || height < 1 || width > LD_IMAGE_MAX_SIDE || height > LD_IMAGE_MAX_SIDE
        || channels < 1 || channels > 4)
        return ld_seterr(LD_EINVAL, "image: bad size %dx%d with %d channels", width, height, channels);
    img->data = calloc((size_t)width * (size_t)height, (size_t)channels);
    if (!img->data)
        return ld_seterr(LD_ENOMEM, "image: out of memory for %dx%dx%d", width, height, channels);
    img->width = width;
    img->height = height;
    img->channels = channels;
    return LD_OK;
}

void ld_image_free(ld_image_t *img)
{
    if (!img)
        return;
    free(img->data);
    memset(img, 0, sizeof *img);
}

static uint8_t luma(const uint8_t *rgb)
{
    return (uint8_t)((77u * rgb[0] + 150u * rgb[1] + 29u * rgb[2] + 128u) >> 8);
}

/* One pixel from sc to dc channels (alpha dropped, never added as opaque
 * unless dc has an alpha slot: then 255). */
static void convert_pixel(const uint8_t *s, int sc, uint8_t *d, int dc)
{
    uint8_t rgb[3], grey;
    if (sc >= 3) {
        memcpy(rgb, s, 3);
        grey = luma(s);
    } else {
        rgb[0] = rgb[1] = rgb[2] = grey = s[0];
    }
    switch (dc) {
    case 1: d[0] = grey; break;
    case 2: d[0] = grey; d[1] = (sc == 2 || sc == 4) ? s[sc - 1] : 255; break;
    case 3: memcpy(d, rgb, 3); break;
    default: memcpy(d, rgb, 3); d[3] = (sc == 2 || sc == 4) ? s[sc - 1] : 255; break;
    }
}

int ld_image_convert(const ld_image_t *src, int channels, ld_image_t *dst)
{
    if (channels != 1 && channels != 3)
        return ld_seterr(LD_EINVAL, "image: cannot convert to %d channels (1 or 3)", channels);
    int rc = ld_image_alloc(dst, src->width, src->height, channels);
    if (rc)
        return rc;
    size_t n = (size_t)src->width * (size_t)src->height;
    if (src->channels == channels) {
        memcpy(dst->data, src->data, n * (size_t)channels);
        return LD_OK;
    }
    for (size_t i = 0; i < n; i++)
        convert_pixel(src->data + i * (size_t)src->channels, src->channels, dst->data + i * (size_t)channels,
                      channels);
    return LD_OK;
}

int ld_image_extract_channel(const ld_image_t *src, int c, ld_image_t *dst)
{
    if (c < 0 || c >= src->channels)
        return ld_seterr(LD_EINVAL, "image: no channel %d in a %d-channel image", c, src->channels);
    int rc = ld_image_alloc(dst, src->width, src->height, 1);
    if (rc)
        return rc;
    size_t n = (size_t)src->width * (size_t)src->height;
    for (size_t i = 0; i < n; i++)
        dst->data[i] = src->data[i * (size_t)src->channels + (size_t)c];
    return LD_OK;
}

int ld_image_crop(const ld_image_t *src, int x, int y, int w, int h, ld_image_t *dst)
{
    if (x < 0 || y < 0 || w < 1 || h < 1 || x > src->width - w || y > src->height - h)
        return ld_seterr(LD_EINVAL, "image: rectangle %dx%d at (%d,%d) is not inside a %dx%d image", w, h, x, y,
                         src->width, src->height);
    int rc = ld_image_alloc(dst, w, h, src->channels);
    for (int r = 0; r < h && !rc; r++)
        memcpy(ld_image_at(dst, 0, r), ld_image_at(src, x, y + r), (size_t)w * (size_t)src->channels);
    return rc;
}

/* Source taps of output index i: first[i] .. first[i]+count[i]-1 with
 * weights w[i*max_taps ...] summing to 1. */
typedef struct {
    int *first, *count;
    float *w;
    int max_taps;
} taps_t;

static void taps_free(taps_t *t)
{
    free(t->first);
    free(t->count);
    free(t->w);
}

static int taps_build(int src_n, int dst_n, int area, taps_t *t)
{
    double r = (double)src_n / dst_n;
    t->max_taps = area ? (int)ceil(r) + 2 : 2;
    t->first = malloc(sizeof(int) * (size_t)dst_n);
    t->count = malloc(sizeof(int) * (size_t)dst_n);
    t->w = calloc((size_t)dst_n * (size_t)t->max_taps, sizeof(float));
    if (!t->first || !t->count || !t->w) {
        taps_free(t);
        return ld_seterr(LD_ENOMEM, "image: out of memory for resize tables");
    }
    for (int i = 0; i < dst_n; i++) {
        float *w = t->w + (size_t)i * (size_t)t->max_taps;
        if (area) {
            double lo = i * r, hi = (i + 1) * r;
            int a = (int)floor(lo), b = (int)ceil(hi) - 1;
            if (b > src_n - 1)
                b = src_n - 1;
            if (b < a)
                b = a;
            t->first[i] = a;
            t->count[i] = b - a + 1;
            for (int k = a; k <= b; k++) {
                double ov = fmin(hi, k + 1.0) - fmax(lo, (double)k);
                w[k - a] = (float)(ov > 0 ? ov / r : 0);
            }
        } else {
            double s = (i + 0.5) * r - 0.5;
            if (s < 0)
                s = 0;
            if (s > src_n - 1)
                s = src_n - 1;
            int a = (int)floor(s);
            double f = s - a;
            t->first[i] = a;
            if (a + 1 < src_n && f > 0) {
                t->count[i] = 2;
                w[0] = (float)(1 - f);
                w[1] = (float)f;
            } else {
                t->count[i] = 1;
                w[0] = 1;
            }
        }
    }
    return LD_OK;
}

static int resize_nearest(const ld_image_t *src, ld_image_t *dst)
{
    int *xs = malloc(sizeof(int) * (size_t)dst->width);
    if (!xs)
        return ld_seterr(LD_ENOMEM, "image: out of memory for resize tables");
    size_t c = (size_t)src->channels;
    for (int x = 0; x < dst->width; x++) {
        int sx = (int)((x + 0.5) * src->width / dst->width);
        xs[x] = sx < src->width ? sx : src->width - 1;
    }
    for (int y = 0; y < dst->height; y++) {
        int sy = (int)((y + 0.5) * src->height / dst->height);
        if (sy >= src->height)
            sy = src->height - 1;
        for (int x = 0; x < dst->width; x++)
            memcpy(ld_image_at(dst, x, y), ld_image_at(src, xs[x], sy), c);
    }
    free(xs);
    return LD_OK;
}

static int resize_filtered(const ld_image_t *src, ld_image_t *dst, int area_x, int area_y)
{
    taps_t tx = { 0 }, ty = { 0 };
    float *rows = NULL;
    int rc = taps_build(src->width, dst->width, area_x, &tx);
    if (!rc)
        rc = taps_build(src->height, dst->height, area_y, &ty);
    size_t c = (size_t)src->channels, dw = (size_t)dst->width;
    if (!rc && !(rows = malloc(sizeof(float) * (size_t)src->height * dw * c)))
        rc = ld_seterr(LD_ENOMEM, "image: out of memory for resizing");
    if (rc)
        goto done;
    /* Horizontal pass: every source row -> dst width, as floats. */
    for (int y = 0; y < src->height; y++) {
        float *out = rows + (size_t)y * dw * c;
        for (int x = 0; x < dst->width; x++) {
            const float *w = tx.w + (size_t)x * (size_t)tx.max_taps;
            const uint8_t *s = ld_image_at(src, tx.first[x], y);
            for (size_t k = 0; k < c; k++) {
                float acc = 0;
                for (int j = 0; j < tx.count[x]; j++)
                    acc += w[j] * s[(size_t)j * c + k];
                out[(size_t)x * c + k] = acc;
            }
        }
    }
    /* Vertical pass. */
    for (int y = 0; y < dst->height; y++) {
        const float *w = ty.w + (size_t)y * (size_t)ty.max_taps;
        uint8_t *out = ld_image_at(dst, 0, y);
        for (size_t e = 0; e < dw * c; e++) {
            float acc = 0;
            for (int j = 0; j < ty.count[y]; j++)
                acc += w[j] * rows[(size_t)(ty.first[y] + j) * dw * c + e];
            acc = acc < 0 ? 0 : acc > 255 ? 255 : acc;
            out[e] = (uint8_t)lrintf(acc);
        }
    }
done:
    free(rows);
    taps_free(&tx);
    taps_free(&ty);
    return rc;
}

int ld_image_resize(const ld_image_t *src, int width, int height, ld_resize_t mode, ld_image_t *dst)
{
    int rc = ld_image_alloc(dst, width, height, src->channels);
    if (rc)
        return rc;
    if (width == src->width && height == src->height) {
        memcpy(dst->data, src->data, (size_t)width * (size_t)height * (size_t)src->channels);
        return LD_OK;
    }
    switch (mode) {
    case LD_RESIZE_NEAREST: rc = resize_nearest(src, dst); break;
    case LD_RESIZE_BILINEAR: rc = resize_filtered(src, dst, 0, 0); break;
    case LD_RESIZE_AREA: rc = resize_filtered(src, dst, 1, 1); break;
    case LD_RESIZE_SMOOTH:
        rc = resize_filtered(src, dst, src->width > 2 * width, src->height > 2 * height);
        break;
    default: rc = ld_seterr(LD_EINVAL, "image: unknown resize mode %d", (int)mode); break;
    }
    if (rc)
        ld_image_free(dst);
    return rc;
}

void ld_image_put_float(ld_image_t *dst, int x0, int y0, const float *chw, int c, int s)
{
    size_t plane = (size_t)s * (size_t)s;
    for (int y = 0; y < s; y++) {
        if (y0 + y < 0 || y0 + y >= dst->height)
            continue;
        for (int x = 0; x < s; x++) {
            if (x0 + x < 0 || x0 + x >= dst->width)
                continue;
            uint8_t *d = ld_image_at(dst, x0 + x, y0 + y);
            for (int k = 0; k < c && k < dst->channels; k++) {
                float v = (chw[(size_t)k * plane + (size_t)y * (size_t)s + (size_t)x] + 1.0f) * 127.5f;
                v = v > 0 ? v : 0; /* also maps NaN to 0 */
                d[k] = (uint8_t)lrintf(v < 255 ? v : 255);
            }
        }
    }
}

void ld_image_paste(ld_image_t *dst, int x0, int y0, const ld_image_t *src)
{
    for (int y = 0; y < src->height; y++) {
        if (y0 + y < 0 || y0 + y >= dst->height)
            continue;
        for (int x = 0; x < src->width; x++) {
            if (x0 + x < 0 || x0 + x >= dst->width)
                continue;
            convert_pixel(ld_image_at(src, x, y), src->channels, ld_image_at(dst, x0 + x, y0 + y),
                          dst->channels);
        }
    }
}

static void put_colour(ld_image_t *dst, int x, int y, const uint8_t rgb[3])
{
    if (x < 0 || y < 0 || x >= dst->width || y >= dst->height)
        return;
    uint8_t *d = ld_image_at(dst, x, y);
    if (dst->channels >= 3)
        memcpy(d, rgb, 3);
    else
        d[0] = luma(rgb);
}

void ld_image_fill_rect(ld_image_t *dst, int x0, int y0, int w, int h, const uint8_t rgb[3])
{
    for (int y = y0; y < y0 + h; y++)
        for (int x = x0; x < x0 + w; x++)
            put_colour(dst, x, y, rgb);
}
