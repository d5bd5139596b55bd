/* ld_dataset: loading multi-domain segmentation data and cutting crops.
 *
 * Loading, per domain:  list images -> pair each with mask (and FOV) by file
 * stem -> per pair: read, check sizes, map mask values to classes, convert
 * channels, resize -> keep, or skip with a warning and count it.
 * Only ENOMEM aborts loading; any other per-file failure skips that pair.
 * Unpaired masks/FOVs are warned about but not counted (they are not items).
 *
 * Conversions: grey -> RGB replicates, RGB -> grey is BT.601 luma, alpha is
 * dropped (ld_image_convert); masks and FOVs use their first channel (16-bit
 * files: high byte); FOV pixels > 127 are inside. Working size: round(w *
 * scale) x round(h * scale), or the shorter side exactly `resize`, or (fit,
 * whole images) the longer side exactly `fit` after the image was cut to its
 * FOV's bounding box; images are resized with LD_RESIZE_SMOOTH, masks/FOVs
 * with nearest, after the mask map was applied at the original size.
 *
 * Invariants after ld_dataset_open(): every domain has >= 1 item; every
 * item has image (h*w*channels bytes), mask (h*w class ids < n_classes) and
 * optionally fov (h*w bytes 0/1) at working scale; nothing changes until
 * ld_dataset_destroy(), so all queries are thread-safe. */
#include "ld_dataset.h"
#include "ld_afile.h"
#include "ld_error.h"
#include "ld_image.h"
#include "ld_log.h"
#include "ld_png.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FOV_TRIES 64
#define MANIFEST_MAX_BYTES (64L * 1024 * 1024)

typedef struct {
    char *name;     /* image file as listed */
    int w, h;
    uint8_t *image; /* h*w*channels */
    uint8_t *mask;  /* h*w class ids */
    uint8_t *fov;   /* h*w 0/1, or NULL */
    size_t fov_count;
} item_t;

typedef struct {
    char *name;
    item_t *items;
    int n, cap;
} domain_t;

struct ld_dataset_s {
    domain_t *domains;
    int n_domains;
    int channels;
    int n_skipped;
    ld_maskmap_t map;
    float to_unit[256]; /* v -> 2*v/255 - 1, computed once */
    int fit;            /* opts.fit: whole images of this side */
    const ld_dataset_opts_t *opts; /* only during ld_dataset_open */
};

/* ---- mask maps ---- */

static int parse_byte(const char *s, size_t n, int max, int *out)
{
    if (n == 0 || n > 3)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static const char *skip_space(const char *s, const char *end)
{
    while (s < end && isspace((unsigned char)*s))
        s++;
    return s;
}

static size_t trimmed_len(const char *s, const char *end)
{
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    return (size_t)(end - s);
}

/* One "V:C", "A-B:C" or "*:C" rule in [s, end). */
static int parse_rule(const char *spec, const char *s, const char *end, ld_maskmap_t *out)
{
    s = skip_space(s, end);
    size_t len = trimmed_len(s, end);
    const char *colon = memchr(s, ':', len);
    int lo, hi, cls;
    if (!colon)
        return ld_seterr(LD_EINVAL, "mask map '%s': rule '%.*s' has no ':'", spec, (int)len, s);
    const char *rhs = skip_space(colon + 1, s + len);
    size_t lhs_len = trimmed_len(s, colon);
    if (parse_byte(rhs, trimmed_len(rhs, s + len), 255, &cls))
        return ld_seterr(LD_EINVAL, "mask map '%s': rule '%.*s': class must be 0..255", spec, (int)len, s);
    const char *dash = memchr(s, '-', lhs_len);
    if (lhs_len == 1 && *s == '*') {
        lo = 0;
        hi = 255;
    } else if (dash) {
        const char *b = skip_space(dash + 1, colon);
        if (parse_byte(s, trimmed_len(s, dash), 255, &lo) || parse_byte(b, trimmed_len(b, colon), 255, &hi)
            || lo > hi)
            return ld_seterr(LD_EINVAL, "mask map '%s': rule '%.*s': range must be A-B with 0 <= A <= B <= 255",
                             spec, (int)len, s);
    } else if (parse_byte(s, lhs_len, 255, &lo) == 0) {
        hi = lo;
    } else {
        return ld_seterr(LD_EINVAL, "mask map '%s': rule '%.*s': value must be 0..255, A-B or *", spec,
                         (int)len, s);
    }
    for (int v = lo; v <= hi; v++)
        if (out->lut[v] < 0)
            out->lut[v] = (int16_t)cls; /* first match wins */
    if (cls + 1 > out->n_classes)
        out->n_classes = cls + 1;
    return LD_OK;
}

int ld_maskmap_parse(const char *spec, ld_maskmap_t *out)
{
    if (!spec)
        spec = LD_MASKMAP_DEFAULT;
    for (int v = 0; v < 256; v++)
        out->lut[v] = -1;
    out->n_classes = 0;
    const char *s = spec, *end = spec + strlen(spec);
    if (skip_space(s, end) == end)
        return ld_seterr(LD_EINVAL, "mask map is empty (example: \"" LD_MASKMAP_DEFAULT "\")");
    while (s <= end) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        const char *stop = comma ? comma : end;
        int rc = parse_rule(spec, s, stop, out);
        if (rc)
            return rc;
        s = stop + 1;
    }
    return LD_OK;
}

bool ld_maskmap_value(const ld_maskmap_t *map, int cls, uint8_t *value)
{
    if (cls < 0)   /* -1 marks the unmapped values in lut */
        return false;
    for (int i = 0; i < 256; i++) {
        int v = i == 0 ? 0 : i == 1 ? 255 : i - 1;   /* the two ends first, then 1..254 */
        if (map->lut[v] == cls) {
            *value = (uint8_t)v;
            return true;
        }
    }
    return false;
}

/* ---- files and paths ---- */

static char *path_join(const char *a, const char *b)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", a, b) < 0)
        return NULL;
    return p;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

typedef struct {
    char **names;
    int n, cap;
} names_t;

static void names_free(names_t *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l->names);
    memset(l, 0, sizeof *l);
}

static int names_add(names_t *l, const char *name, size_t len)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        char **p = realloc(l->names, sizeof *p * (size_t)cap);
        if (!p)
            return ld_seterr(LD_ENOMEM, "dataset: out of memory for %d names", cap);
        l->names = p;
        l->cap = cap;
    }
    if (!(l->names[l->n] = strndup(name, len)))
        return ld_seterr(LD_ENOMEM, "dataset: out of memory for the name '%.*s'", (int)len, name);
    l->n++;
    return LD_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted non-hidden entries of dir that are directories (want_dirs) or
 * anything else (regular files, symlinks to them). */
static int list_dir(const char *dir, int want_dirs, names_t *out)
{
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d)
        return ld_seterr(errno == ENOENT ? LD_ENOENT : LD_EIO, "%s: cannot list: %s", dir, strerror(errno));
    int rc = LD_OK;
    for (struct dirent *e; !rc && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char *p = path_join(dir, e->d_name);
        if (!p) {
            rc = ld_seterr(LD_ENOMEM, "dataset: out of memory");
            break;
        }
        if (is_dir(p) == !!want_dirs)
            rc = names_add(out, e->d_name, strlen(e->d_name));
        free(p);
    }
    closedir(d);
    if (rc) {
        names_free(out);
        return ld_seterr(rc, "%s: out of memory listing", dir);
    }
    if (out->n > 1)
        qsort(out->names, (size_t)out->n, sizeof *out->names, cmp_str);
    return LD_OK;
}

static size_t stem_len(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && dot != name ? (size_t)(dot - name) : strlen(name);
}

/* The entry of a sorted list whose stem equals name's stem (first in
 * sort order), or NULL. */
static const char *find_by_stem(const names_t *l, const char *name)
{
    size_t n = stem_len(name);
    for (int i = 0; i < l->n; i++)
        if (stem_len(l->names[i]) == n && !strncmp(l->names[i], name, n))
            return l->names[i];
    return NULL;
}

/* ---- items ---- */

static void item_free(item_t *it)
{
    free(it->name);
    free(it->image);
    free(it->mask);
    free(it->fov);
}

static void working_size(const ld_dataset_opts_t *o, int w, int h, int *ow, int *oh)
{
    if (o->fit > 0) {
        double f = (double)o->fit / (w > h ? w : h);
        *ow = w >= h ? o->fit : (int)lround(w * f);
        *oh = w >= h ? (int)lround(h * f) : o->fit;
    } else if (o->resize > 0) {
        int shorter = w < h ? w : h;
        double f = (double)o->resize / shorter;
        *ow = w == shorter ? o->resize : (int)lround(w * f);
        *oh = w == shorter ? (int)lround(h * f) : o->resize;
    } else {
        double f = o->scale > 0 ? o->scale : 1.0;
        *ow = (int)lround(w * f);
        *oh = (int)lround(h * f);
    }
    *ow = *ow < 1 ? 1 : *ow;
    *oh = *oh < 1 ? 1 : *oh;
}

static int read_label_plane(const char *path, const ld_image_t *ref, ld_image_t *out)
{
    ld_image_t raw;
    int rc = ld_png_read(path, &raw);
    if (rc)
        return rc;
    if (raw.width != ref->width || raw.height != ref->height)
        rc = ld_seterr(LD_EFORMAT, "%s: size %dx%d differs from its image's %dx%d", path, raw.width, raw.height,
                       ref->width, ref->height);
    else
        rc = ld_image_extract_channel(&raw, 0, out);
    ld_image_free(&raw);
    return rc;
}

static int map_mask(const ld_maskmap_t *map, const char *path, ld_image_t *mask)
{
    size_t n = (size_t)mask->width * (size_t)mask->height;
    for (size_t i = 0; i < n; i++) {
        int16_t c = map->lut[mask->data[i]];
        if (c < 0)
            return ld_seterr(LD_EFORMAT, "%s: mask value %u at (%zu,%zu) matches no rule of the mask map", path,
                             mask->data[i], i % (size_t)mask->width, i / (size_t)mask->width);
        mask->data[i] = (uint8_t)c;
    }
    return LD_OK;
}

/* Whole images: image, mask and FOV cut to the FOV's bounding box (kept
 * as they are when the FOV is empty). */
static int cut_to_fov(ld_image_t *raw, ld_image_t *mask, ld_image_t *fov)
{
    int x0 = fov->width, y0 = fov->height, x1 = -1, y1 = -1;
    for (int y = 0; y < fov->height; y++)
        for (int x = 0; x < fov->width; x++)
            if (*ld_image_at(fov, x, y) > 127) {
                x0 = x < x0 ? x : x0, x1 = x > x1 ? x : x1;
                y0 = y < y0 ? y : y0, y1 = y > y1 ? y : y1;
            }
    if (x1 < 0)
        return LD_OK;
    ld_image_t *planes[3] = { raw, mask, fov };
    for (int p = 0; p < 3; p++) {
        ld_image_t cut;
        int rc = ld_image_crop(planes[p], x0, y0, x1 - x0 + 1, y1 - y0 + 1, &cut);
        if (rc)
            return rc;
        ld_image_free(planes[p]);
        *planes[p] = cut;
    }
    return LD_OK;
}

/* Reads one pair (and FOV) into *it at working scale. */
static int load_item(ld_dataset_t *ds, const char *img_path, const char *mask_path, const char *fov_path,
                     item_t *it)
{
    ld_image_t raw = { 0 }, img = { 0 }, mask = { 0 }, fov = { 0 }, tmp = { 0 };
    int w, h, rc = ld_png_read(img_path, &raw);
    if (!rc && !ds->channels)
        ds->channels = raw.channels >= 3 ? 3 : 1;
    if (!rc)
        rc = read_label_plane(mask_path, &raw, &mask);
    if (!rc)
        rc = map_mask(&ds->map, mask_path, &mask);
    if (!rc && fov_path)
        rc = read_label_plane(fov_path, &raw, &fov);
    if (!rc && fov.data && ds->opts->fit > 0)
        rc = cut_to_fov(&raw, &mask, &fov);
    if (rc)
        goto done;
    working_size(ds->opts, raw.width, raw.height, &w, &h);
    if (ds->opts->min_side > 0 && (w < h ? w : h) < ds->opts->min_side) {
        rc = ld_seterr(LD_ERANGE, "%s: shorter side %d at working scale is below the minimum %d", img_path,
                       w < h ? w : h, ds->opts->min_side);
        goto done;
    }
    rc = ld_image_convert(&raw, ds->channels, &tmp);
    if (!rc)
        rc = ld_image_resize(&tmp, w, h, LD_RESIZE_SMOOTH, &img);
    ld_image_free(&tmp);
    if (!rc)
        rc = ld_image_resize(&mask, w, h, LD_RESIZE_NEAREST, &tmp);
    if (!rc) {
        ld_image_free(&mask);
        mask = tmp;
        memset(&tmp, 0, sizeof tmp);
    }
    if (!rc && fov.data)
        rc = ld_image_resize(&fov, w, h, LD_RESIZE_NEAREST, &tmp);
    if (rc)
        goto done;
    it->w = w;
    it->h = h;
    it->image = img.data;
    it->mask = mask.data;
    img.data = mask.data = NULL;
    if (tmp.data) {
        it->fov = tmp.data;
        tmp.data = NULL;
        for (size_t i = 0; i < (size_t)w * (size_t)h; i++) {
            it->fov[i] = it->fov[i] > 127;
            it->fov_count += it->fov[i];
        }
    }
done:
    ld_image_free(&raw);
    ld_image_free(&img);
    ld_image_free(&mask);
    ld_image_free(&fov);
    ld_image_free(&tmp);
    return rc;
}

static int domain_push(domain_t *dom, item_t *it)
{
    if (dom->n == dom->cap) {
        int cap = dom->cap ? 2 * dom->cap : 16;
        item_t *p = realloc(dom->items, sizeof *p * (size_t)cap);
        if (!p)
            return ld_seterr(LD_ENOMEM, "dataset: domain '%s': out of memory for %d items", dom->name, cap);
        dom->items = p;
        dom->cap = cap;
    }
    dom->items[dom->n++] = *it;
    return LD_OK;
}

/* Loads one pair into dom, or skips it with a warning; only running out of
 * memory is returned as an error. name (not NULL) is taken over. */
static int add_pair(ld_dataset_t *ds, domain_t *dom, char *name, const char *img_path, const char *mask_path,
                    const char *fov_path)
{
    item_t it = { .name = name };
    int rc = LD_OK;
    if (!mask_path)
        rc = ld_seterr(LD_ENOENT, "%s: no mask with the same file stem", img_path);
    if (!rc)
        rc = load_item(ds, img_path, mask_path, fov_path, &it);
    if (!rc)
        rc = domain_push(dom, &it);
    if (rc == LD_ENOMEM) {
        item_free(&it);
        return ld_seterr(LD_ENOMEM, "dataset: out of memory loading %s", img_path);
    }
    if (rc) {
        ld_warn("dataset: domain '%s': skipping %s", dom->name, ld_errdetail());
        ds->n_skipped++;
        item_free(&it);
    }
    return LD_OK;
}

/* ---- folder layout ---- */

static int warn_orphans(const domain_t *dom, const char *what, const names_t *l, const names_t *images)
{
    for (int i = 0; i < l->n; i++)
        if (!find_by_stem(images, l->names[i]))
            ld_warn("dataset: domain '%s': %s file '%s' has no image with the same stem", dom->name, what,
                    l->names[i]);
    return LD_OK;
}

static int load_folder_domain(ld_dataset_t *ds, const char *base, domain_t *dom)
{
    names_t images = { 0 }, masks = { 0 }, fovs = { 0 };
    char *idir = path_join(base, "image"), *mdir = path_join(base, "mask"), *fdir = path_join(base, "fov");
    const char *sub = ds->opts->subdir;
    int rc = idir && mdir && fdir ? LD_OK : ld_seterr(LD_ENOMEM, "dataset: domain '%s': out of memory", dom->name);
    if (!rc && !is_dir(idir))
        rc = ld_seterr(LD_ENOENT, "domain '%s': no folder %s", dom->name, idir);
    if (!rc)
        rc = list_dir(idir, 0, &images);
    if (!rc && is_dir(mdir))
        rc = list_dir(mdir, 0, &masks);
    if (!rc && is_dir(fdir))
        rc = list_dir(fdir, 0, &fovs);
    for (int i = 0; !rc && i < images.n; i++) {
        const char *m = find_by_stem(&masks, images.names[i]), *f = find_by_stem(&fovs, images.names[i]);
        char *ip = path_join(idir, images.names[i]), *mp = m ? path_join(mdir, m) : NULL;
        char *fp = f ? path_join(fdir, f) : NULL, *name = NULL;
        if (asprintf(&name, "%s%simage/%s", sub ? sub : "", sub ? "/" : "", images.names[i]) < 0)
            name = NULL;
        if (!ip || !name || (m && !mp) || (f && !fp)) {
            free(name);
            rc = ld_seterr(LD_ENOMEM, "dataset: out of memory");
        } else {
            rc = add_pair(ds, dom, name, ip, mp, fp);
        }
        free(ip);
        free(mp);
        free(fp);
    }
    if (!rc) {
        warn_orphans(dom, "mask", &masks, &images);
        warn_orphans(dom, "fov", &fovs, &images);
    }
    names_free(&images);
    names_free(&masks);
    names_free(&fovs);
    free(idir);
    free(mdir);
    free(fdir);
    return rc;
}

/* ---- manifest layout ---- */

typedef struct {
    char *domain, *name;      /* name: the image field as listed */
    char *image, *mask, *fov; /* resolved paths; fov may be NULL */
} row_t;

typedef struct {
    row_t *rows;
    int n;
    char *dir; /* folder of the CSV */
} manifest_t;

static void manifest_free(manifest_t *m)
{
    for (int i = 0; i < m->n; i++) {
        free(m->rows[i].domain);
        free(m->rows[i].name);
        free(m->rows[i].image);
        free(m->rows[i].mask);
        free(m->rows[i].fov);
    }
    free(m->rows);
    free(m->dir);
    memset(m, 0, sizeof *m);
}

/* Splits one CSV line in place into up to max fields; double quotes
 * protect commas, "" inside quotes is a quote. Fields are trimmed.
 * Returns the field count, or -1 on an unterminated quote. */
static int split_csv(char *line, char **fields, int max)
{
    int n = 0;
    char *r = line;
    for (;;) {
        while (*r == ' ' || *r == '\t')
            r++;
        char *start = r, *w = r;
        if (*r == '"') {
            r++;
            for (;;) {
                if (!*r)
                    return -1;
                if (*r == '"' && r[1] == '"') {
                    *w++ = '"';
                    r += 2;
                } else if (*r == '"') {
                    r++;
                    break;
                } else {
                    *w++ = *r++;
                }
            }
            while (*r && *r != ',')
                r++;
        } else {
            while (*r && *r != ',')
                *w++ = *r++;
            while (w > start && isspace((unsigned char)w[-1]))
                w--;
        }
        char sep = *r;
        *w = '\0';
        if (n < max)
            fields[n] = start;
        n++;
        if (sep != ',')
            return n;
        r++;
    }
}

static int read_text_file(const char *path, char **out)
{
    *out = NULL;
    size_t len;
    int rc = ld_afile_read_all(path, MANIFEST_MAX_BYTES, out, &len);
    if (rc)
        return rc;
    if (strlen(*out) != len) {
        free(*out);
        *out = NULL;
        return ld_seterr(LD_EFORMAT, "%s: manifest contains a NUL byte", path);
    }
    return LD_OK;
}

static int parse_manifest_row(const char *path, int line_no, char **f, int nf, int want, manifest_t *m)
{
    if (nf != want)
        return ld_seterr(LD_EFORMAT, "%s: line %d has %d fields, expected %d", path, line_no, nf, want);
    if (!*f[0] || !*f[1] || !*f[2])
        return ld_seterr(LD_EFORMAT, "%s: line %d: domain, image and mask must not be empty", path, line_no);
    row_t *r = &m->rows[m->n];
    memset(r, 0, sizeof *r);
    r->domain = strdup(f[0]);
    r->name = strdup(f[1]);
    r->image = f[1][0] == '/' ? strdup(f[1]) : path_join(m->dir, f[1]);
    r->mask = f[2][0] == '/' ? strdup(f[2]) : path_join(m->dir, f[2]);
    if (want == 4 && *f[3])
        r->fov = f[3][0] == '/' ? strdup(f[3]) : path_join(m->dir, f[3]);
    m->n++;
    if (!r->domain || !r->name || !r->image || !r->mask || (want == 4 && *f[3] && !r->fov))
        return ld_seterr(LD_ENOMEM, "%s: line %d: out of memory", path, line_no);
    return LD_OK;
}

static int parse_manifest(const char *path, manifest_t *m)
{
    memset(m, 0, sizeof *m);
    char *text = NULL;
    int rc = read_text_file(path, &text);
    if (rc)
        return rc;
    size_t lines = 1;
    for (const char *p = text; *p; p++)
        lines += *p == '\n';
    char *slash = strrchr(path, '/');
    m->dir = slash ? strndup(path, (size_t)(slash - path + (slash == path))) : strdup(".");
    m->rows = calloc(lines, sizeof *m->rows);
    if (!m->dir || !m->rows)
        rc = ld_seterr(LD_ENOMEM, "%s: out of memory for %zu lines", path, lines);
    int want = 0, line_no = 0;
    for (char *line = text, *next; !rc && line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line_no++;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r')
            line[--len] = '\0';
        if (!*line || strspn(line, " \t") == len)
            continue;
        char *f[4];
        int nf = split_csv(line, f, 4);
        if (nf < 0)
            rc = ld_seterr(LD_EFORMAT, "%s: line %d: unterminated quote", path, line_no);
        else if (!want) {
            if ((nf == 3 || nf == 4) && !strcmp(f[0], "domain") && !strcmp(f[1], "image") && !strcmp(f[2], "mask")
                && (nf == 3 || !strcmp(f[3], "fov")))
                want = nf;
            else
                rc = ld_seterr(LD_EFORMAT, "%s: line %d: header must be \"domain,image,mask\" or "
                               "\"domain,image,mask,fov\"", path, line_no);
        } else {
            rc = parse_manifest_row(path, line_no, f, nf, want, m);
        }
    }
    if (!rc && !want)
        rc = ld_seterr(LD_EFORMAT, "%s: empty manifest (no header line)", path);
    free(text);
    if (rc)
        manifest_free(m);
    return rc;
}

static int load_manifest_domain(ld_dataset_t *ds, const manifest_t *m, domain_t *dom)
{
    for (int i = 0; i < m->n; i++) {
        const row_t *r = &m->rows[i];
        if (strcmp(r->domain, dom->name))
            continue;
        char *name = strdup(r->name);
        int rc = name ? add_pair(ds, dom, name, r->image, r->mask, r->fov)
                      : ld_seterr(LD_ENOMEM, "dataset: out of memory");
        if (rc)
            return rc;
    }
    return LD_OK;
}

/* ---- domains ---- */

static int add_domain_name(names_t *l, const char *name, size_t len, int check_dup)
{
    for (int i = 0; i < l->n; i++)
        if (strlen(l->names[i]) == len && !strncmp(l->names[i], name, len)) {
            if (check_dup)
                return ld_seterr(LD_EINVAL, "domain '%.*s' is listed twice", (int)len, name);
            return LD_OK;
        }
    return names_add(l, name, len);
}

/* The domains to load: opts->domains in order, else all (sorted). */
static int choose_domains(const ld_dataset_opts_t *o, const manifest_t *m, names_t *out)
{
    memset(out, 0, sizeof *out);
    int rc = LD_OK;
    if (o->domains) {
        const char *s = o->domains, *end = s + strlen(s);
        while (!rc && s <= end) {
            const char *comma = memchr(s, ',', (size_t)(end - s)), *stop = comma ? comma : end;
            const char *a = skip_space(s, stop);
            size_t len = trimmed_len(a, stop);
            rc = len ? add_domain_name(out, a, len, 1)
                     : ld_seterr(LD_EINVAL, "domain list '%s' has an empty name", o->domains);
            s = stop + 1;
        }
    } else if (m) {
        for (int i = 0; !rc && i < m->n; i++)
            rc = add_domain_name(out, m->rows[i].domain, strlen(m->rows[i].domain), 0);
        if (!rc && out->n > 1)
            qsort(out->names, (size_t)out->n, sizeof *out->names, cmp_str);
    } else {
        rc = list_dir(o->root, 1, out);
    }
    if (!rc && out->n == 0)
        rc = ld_seterr(LD_ENOENT, "%s: no domains found", m ? o->manifest : o->root);
    if (rc)
        names_free(out);
    return rc == LD_ENOMEM ? ld_seterr(rc, "dataset: out of memory") : rc;
}

static int domain_exists(const manifest_t *m, const char *name, const char *dir)
{
    if (!m)
        return is_dir(dir);
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->rows[i].domain, name))
            return 1;
    return 0;
}

static int load_domain(ld_dataset_t *ds, const manifest_t *m, domain_t *dom)
{
    const ld_dataset_opts_t *o = ds->opts;
    char *dir = NULL, *base = NULL;
    int rc = LD_OK;
    if (!m) {
        dir = path_join(o->root, dom->name);
        base = dir && o->subdir ? path_join(dir, o->subdir) : (dir ? strdup(dir) : NULL);
        if (!dir || !base)
            rc = ld_seterr(LD_ENOMEM, "dataset: out of memory");
    }
    if (!rc && !domain_exists(m, dom->name, dir))
        rc = ld_seterr(LD_ENOENT, "unknown domain '%s': %s%s", dom->name, m ? "no row in " : "no folder ",
                       m ? o->manifest : dir);
    int skipped_before = ds->n_skipped;
    if (!rc)
        rc = m ? load_manifest_domain(ds, m, dom) : load_folder_domain(ds, base, dom);
    if (!rc && dom->n == 0)
        rc = ld_seterr(LD_ENOENT, "domain '%s' has no usable image/mask pairs (%d skipped)", dom->name,
                       ds->n_skipped - skipped_before);
    free(dir);
    free(base);
    return rc;
}

static int check_opts(const ld_dataset_opts_t *o)
{
    if (!o || (!o->root == !o->manifest))
        return ld_seterr(LD_EINVAL, "dataset: set exactly one of root and manifest");
    if (o->channels != 0 && o->channels != 1 && o->channels != 3)
        return ld_seterr(LD_EINVAL, "dataset: channels must be 0, 1 or 3, not %d", o->channels);
    if (!(o->scale >= 0) || o->scale > 64 || o->resize < 0 || o->resize > 16384 || o->min_side < 0 ||
        o->fit < 0 || o->fit > 16384)
        return ld_seterr(LD_ERANGE, "dataset: scale %g / resize %d / fit %d / min_side %d out of range", o->scale,
                         o->resize, o->fit, o->min_side);
    if (o->subdir && (!*o->subdir || o->subdir[0] == '/'))
        return ld_seterr(LD_EINVAL, "dataset: subdir '%s' must be a relative folder", o->subdir);
    return LD_OK;
}

int ld_dataset_open(const ld_dataset_opts_t *opts, ld_dataset_t **out)
{
    *out = NULL;
    int rc = check_opts(opts);
    if (rc)
        return rc;
    ld_dataset_t *ds = calloc(1, sizeof *ds);
    manifest_t m = { 0 };
    names_t names = { 0 };
    if (!ds)
        return ld_seterr(LD_ENOMEM, "dataset: out of memory");
    ds->opts = opts;
    ds->fit = opts->fit;
    ds->channels = opts->channels;
    for (int v = 0; v < 256; v++)
        ds->to_unit[v] = 2.0f * (float)v / 255.0f - 1.0f;
    rc = ld_maskmap_parse(opts->maskmap, &ds->map);
    if (!rc && opts->manifest)
        rc = parse_manifest(opts->manifest, &m);
    if (!rc)
        rc = choose_domains(opts, opts->manifest ? &m : NULL, &names);
    if (!rc && !(ds->domains = calloc((size_t)names.n, sizeof *ds->domains)))
        rc = ld_seterr(LD_ENOMEM, "dataset: out of memory");
    for (int d = 0; !rc && d < names.n; d++) {
        ds->domains[d].name = names.names[d];
        names.names[d] = NULL;
        ds->n_domains++;
        rc = load_domain(ds, opts->manifest ? &m : NULL, &ds->domains[d]);
    }
    names_free(&names);
    manifest_free(&m);
    ds->opts = NULL;
    if (rc) {
        ld_dataset_destroy(&ds);
        return rc;
    }
    *out = ds;
    return LD_OK;
}

void ld_dataset_destroy(ld_dataset_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ld_dataset_t *ds = *self_p;
    for (int d = 0; d < ds->n_domains; d++) {
        for (int i = 0; i < ds->domains[d].n; i++)
            item_free(&ds->domains[d].items[i]);
        free(ds->domains[d].items);
        free(ds->domains[d].name);
    }
    free(ds->domains);
    free(ds);
    *self_p = NULL;
}

/* ---- queries ---- */

int ld_dataset_n_domains(const ld_dataset_t *self) { return self->n_domains; }
int ld_dataset_channels(const ld_dataset_t *self) { return self->channels; }
int ld_dataset_n_classes(const ld_dataset_t *self) { return self->map.n_classes; }
int ld_dataset_n_skipped(const ld_dataset_t *self) { return self->n_skipped; }
const ld_maskmap_t *ld_dataset_maskmap(const ld_dataset_t *self) { return &self->map; }

const char *ld_dataset_domain(const ld_dataset_t *self, int d)
{
    return d >= 0 && d < self->n_domains ? self->domains[d].name : NULL;
}

bool ld_dataset_domain_index(const ld_dataset_t *self, const char *name, int *index)
{
    for (int d = 0; d < self->n_domains; d++)
        if (!strcmp(self->domains[d].name, name)) {
            *index = d;
            return true;
        }
    return false;
}

int ld_dataset_n_items(const ld_dataset_t *self, int d)
{
    return d >= 0 && d < self->n_domains ? self->domains[d].n : 0;
}

static const item_t *get_item(const ld_dataset_t *self, int d, int i)
{
    if (d < 0 || d >= self->n_domains || i < 0 || i >= self->domains[d].n)
        return NULL;
    return &self->domains[d].items[i];
}

const char *ld_dataset_item_name(const ld_dataset_t *self, int d, int i)
{
    const item_t *it = get_item(self, d, i);
    return it ? it->name : NULL;
}

void ld_dataset_item_size(const ld_dataset_t *self, int d, int i, int *width, int *height)
{
    const item_t *it = get_item(self, d, i);
    *width = it ? it->w : 0;
    *height = it ? it->h : 0;
}

int ld_dataset_item_has_fov(const ld_dataset_t *self, int d, int i)
{
    const item_t *it = get_item(self, d, i);
    return it && it->fov;
}

/* ---- crops ---- */

static int check_crop_args(const ld_dataset_t *self, int d, int i, int size)
{
    if (d < 0 || d >= self->n_domains)
        return ld_seterr(LD_ENOENT, "dataset: no domain %d (have %d)", d, self->n_domains);
    if (i >= self->domains[d].n)
        return ld_seterr(LD_ENOENT, "dataset: domain '%s' has no item %d (has %d)", self->domains[d].name, i,
                         self->domains[d].n);
    if (size < 1 || size > 16384)
        return ld_seterr(LD_ERANGE, "dataset: crop size %d out of range", size);
    return LD_OK;
}

/* Uniform in [min(0, n-s), max(0, n-s)]: inside the image when it is
 * larger than the crop, else the image anywhere inside the crop. */
static int draw_offset(int n, int s, ld_rng_t *rng)
{
    int lo = n - s < 0 ? n - s : 0, hi = n - s > 0 ? n - s : 0;
    return lo + (int)ld_rng_below(rng, (uint32_t)(hi - lo + 1));
}

static int fov_at(const item_t *it, int x, int y)
{
    return x >= 0 && y >= 0 && x < it->w && y < it->h && it->fov[(size_t)y * (size_t)it->w + (size_t)x];
}

int ld_dataset_random_crop(const ld_dataset_t *self, int d, int i, int size, ld_rng_t *rng, ld_crop_t *out)
{
    int rc = check_crop_args(self, d, i, size);
    if (rc)
        return rc;
    if (i < 0)
        i = (int)ld_rng_below(rng, (uint32_t)self->domains[d].n);
    const item_t *it = &self->domains[d].items[i];
    if (self->fit > 0 && size == self->fit)
        return ld_dataset_center_crop(self, d, i, size, out);
    *out = (ld_crop_t){ .domain = d, .item = i, .size = size };
    for (int t = 0; t < FOV_TRIES; t++) {
        out->x = draw_offset(it->w, size, rng);
        out->y = draw_offset(it->h, size, rng);
        if (!it->fov || it->fov_count == 0 || fov_at(it, out->x + size / 2, out->y + size / 2))
            return LD_OK;
    }
    /* FOV hit too rarely by chance: centre on a uniformly drawn FOV pixel. */
    size_t k = (size_t)(ld_rng_uniform(rng) * (double)it->fov_count);
    for (size_t p = 0;; p++)
        if (it->fov[p] && k-- == 0) {
            out->x = (int)(p % (size_t)it->w) - size / 2;
            out->y = (int)(p / (size_t)it->w) - size / 2;
            return LD_OK;
        }
}

int ld_dataset_center_crop(const ld_dataset_t *self, int d, int i, int size, ld_crop_t *out)
{
    int rc = check_crop_args(self, d, i, size);
    if (!rc && i < 0)
        rc = ld_seterr(LD_ENOENT, "dataset: centre crop needs an item index, not %d", i);
    if (rc)
        return rc;
    const item_t *it = &self->domains[d].items[i];
    *out = (ld_crop_t){ .domain = d, .item = i, .size = size, .x = (it->w - size) / 2, .y = (it->h - size) / 2 };
    return LD_OK;
}

int ld_dataset_extract(const ld_dataset_t *self, const ld_crop_t *crop, float *image, uint8_t *mask)
{
    const item_t *it = get_item(self, crop->domain, crop->item);
    if (!it || crop->size < 1 || crop->size > 16384)
        return ld_seterr(LD_EINVAL, "dataset: bad crop (domain %d, item %d, size %d)", crop->domain, crop->item,
                         crop->size);
    int s = crop->size, c = self->channels;
    size_t plane = (size_t)s * (size_t)s;
    for (int y = 0; y < s; y++) {
        int sy = crop->y + y;
        for (int x = 0; x < s; x++) {
            int sx = crop->x + x;
            size_t o = (size_t)y * (size_t)s + (size_t)x;
            int inside = sx >= 0 && sy >= 0 && sx < it->w && sy < it->h;
            size_t src = inside ? (size_t)sy * (size_t)it->w + (size_t)sx : 0;
            for (int k = 0; k < c; k++)
                image[(size_t)k * plane + o] =
                    inside ? self->to_unit[it->image[src * (size_t)c + (size_t)k]] : -1.0f;
            mask[o] = inside ? it->mask[src] : 0;
        }
    }
    return LD_OK;
}
