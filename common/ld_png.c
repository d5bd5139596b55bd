/* ld_png: libpng wrappers.
 * libpng reports errors by longjmp. Each setjmp lives in a small function
 * (decode/encode) that keeps all state it changes in a context struct owned
 * by its caller, so nothing modified between setjmp and longjmp is a local
 * of the function that called setjmp; the caller releases every resource
 * on both paths. libpng's messages land in the context's msg buffer. */
#include "ld_png.h"
#include "ld_afile.h"
#include "ld_error.h"
#include "ld_log.h"

#include <errno.h>
#include <png.h>
#include <stdlib.h>
#include <string.h>

/* Ancillary chunks (text, ICC profiles) may not make libpng allocate more. */
#define LD_PNG_MAX_CHUNK (8u * 1024u * 1024u)

typedef struct {
    char msg[256];
} png_msg_t;

static void on_png_error(png_structp png, png_const_charp msg)
{
    png_msg_t *m = png_get_error_ptr(png);
    snprintf(m->msg, sizeof m->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    ld_debug("libpng: %s", msg);
}

typedef struct {
    png_msg_t err;
    FILE *fp;
    png_structp png;
    png_infop info;
    png_bytep *rows;
    ld_image_t img;
} png_reader_t;

/* Sets up 8-bit output for any input format. */
static void request_8bit(png_reader_t *r)
{
    int type = png_get_color_type(r->png, r->info);
    int depth = png_get_bit_depth(r->png, r->info);
    if (depth == 16)
        png_set_strip_16(r->png);
    if (type == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(r->png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(r->png);
    if (png_get_valid(r->png, r->info, PNG_INFO_tRNS))
        png_set_tRNS_to_alpha(r->png);
    png_set_interlace_handling(r->png);
    png_read_update_info(r->png, r->info);
}

/* Returns 0 on success, -1 after a libpng error, -2 when too large. */
static int decode(png_reader_t *r)
{
    if (setjmp(png_jmpbuf(r->png)))
        return -1;
    png_init_io(r->png, r->fp);
    png_set_sig_bytes(r->png, 8);
    png_set_user_limits(r->png, LD_PNG_MAX_SIDE, LD_PNG_MAX_SIDE);
    png_set_chunk_malloc_max(r->png, LD_PNG_MAX_CHUNK);
    png_read_info(r->png, r->info);
    png_uint_32 w = png_get_image_width(r->png, r->info), h = png_get_image_height(r->png, r->info);
    if ((uint64_t)w * h > LD_PNG_MAX_PIXELS)
        return -2;
    request_8bit(r);
    int c = png_get_channels(r->png, r->info);
    if (c < 1 || c > 4 || png_get_rowbytes(r->png, r->info) != (size_t)w * (size_t)c)
        png_error(r->png, "unexpected pixel layout after conversion to 8 bits");
    if (ld_image_alloc(&r->img, (int)w, (int)h, c))
        png_error(r->png, "out of memory for the pixels");
    r->rows = malloc(sizeof *r->rows * h);
    if (!r->rows)
        png_error(r->png, "out of memory for row pointers");
    for (png_uint_32 y = 0; y < h; y++)
        r->rows[y] = ld_image_at(&r->img, 0, (int)y);
    png_read_image(r->png, r->rows);
    png_read_end(r->png, NULL);
    return 0;
}

int ld_png_read(const char *path, ld_image_t *out)
{
    memset(out, 0, sizeof *out);
    png_reader_t r = { 0 };
    int rc = LD_OK;
    r.fp = fopen(path, "rb");
    if (!r.fp)
        return ld_seterr(LD_EIO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char sig[8];
    size_t got = fread(sig, 1, sizeof sig, r.fp);
    if (got != sizeof sig || png_sig_cmp(sig, 0, sizeof sig)) {
        rc = ferror(r.fp) ? ld_seterr(LD_EIO, "%s: read failed: %s", path, strerror(errno))
                          : ld_seterr(LD_EFORMAT, "%s: not a PNG file", path);
        goto done;
    }
    r.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r.err, on_png_error, on_png_warning);
    if (r.png)
        r.info = png_create_info_struct(r.png);
    if (!r.png || !r.info) {
        rc = ld_seterr(LD_ENOMEM, "%s: cannot create a PNG reader", path);
        goto done;
    }
    int st = decode(&r);
    if (st == -2)
        rc = ld_seterr(LD_EFORMAT, "%s: image %ux%u is too large (limit %u pixels)", path,
                       png_get_image_width(r.png, r.info), png_get_image_height(r.png, r.info),
                       LD_PNG_MAX_PIXELS);
    else if (st && ferror(r.fp))
        rc = ld_seterr(LD_EIO, "%s: read failed: %s", path, r.err.msg);
    else if (st)
        rc = ld_seterr(LD_EFORMAT, "%s: corrupt or unsupported PNG: %s", path, r.err.msg);
done:
    if (r.png)
        png_destroy_read_struct(&r.png, r.info ? &r.info : NULL, NULL);
    free(r.rows);
    fclose(r.fp);
    if (rc)
        ld_image_free(&r.img);
    else
        *out = r.img;
    return rc;
}

typedef struct {
    png_msg_t err;
    png_structp png;
    png_infop info;
} png_writer_t;

static int encode(png_writer_t *w, FILE *fp, const ld_image_t *img)
{
    static const int types[] = { PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                 PNG_COLOR_TYPE_RGB_ALPHA };
    if (setjmp(png_jmpbuf(w->png)))
        return -1;
    png_init_io(w->png, fp);
    png_set_IHDR(w->png, w->info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
                 types[img->channels - 1], PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(w->png, w->info);
    for (int y = 0; y < img->height; y++)
        png_write_row(w->png, ld_image_at(img, 0, y));
    png_write_end(w->png, NULL);
    return 0;
}

int ld_png_write(const char *path, const ld_image_t *img)
{
    if (!img->data || img->channels < 1 || img->channels > 4 || img->width < 1 || img->height < 1
        || img->width > LD_PNG_MAX_SIDE || img->height > LD_PNG_MAX_SIDE)
        return ld_seterr(LD_EINVAL, "%s: cannot write a %dx%d image with %d channels as PNG", path,
                         img->width, img->height, img->channels);
    ld_afile_t *af = NULL;
    int rc = ld_afile_open(path, &af);
    if (rc)
        return rc;
    png_writer_t w = { 0 };
    w.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &w.err, on_png_error, on_png_warning);
    if (w.png)
        w.info = png_create_info_struct(w.png);
    if (!w.png || !w.info)
        rc = ld_seterr(LD_ENOMEM, "%s: cannot create a PNG writer", path);
    else if (encode(&w, ld_afile_fp(af), img))
        rc = ld_seterr(LD_EIO, "%s: PNG write failed: %s", path, w.err.msg);
    if (w.png)
        png_destroy_write_struct(&w.png, w.info ? &w.info : NULL);
    if (rc) {
        ld_afile_abort(&af);
        return rc;
    }
    return ld_afile_commit(&af);
}
