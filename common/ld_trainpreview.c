/* ld_trainpreview: the preview grid of an energy-model training run (see
 * ld_trainpreview.h).
 *
 * Invariants: the grid has one row per source of a trained pair and
 * 1 + (most trained targets of one source) x (snapshots + 1) columns; every
 * random number comes from the caller's rng (the crops, then the chains'
 * seed), none from the training stream; the model is never written. */
#include "ld_trainpreview.h"
#include "ld_error.h"
#include "ld_image.h"
#include "ld_png.h"

#include <stdlib.h>
#include <string.h>

#define SNAPS LD_TRAINPREVIEW_SNAPSHOTS
#define TILE_GAP 2

typedef struct {
    const ld_trainpreview_t *p;
    ld_image_t grid;
    int tile;                    /* S + gap */
    int d_count, channels;
    size_t il, ml;               /* floats / bytes per crop and per mask */
    int row[LD_EBM_MAX_DOMAINS]; /* grid row of each source domain, -1 = not a source of a trained pair */
    int n_rows, max_blocks;      /* rows; most trained targets of one source */
    float *src_img;              /* [D, C,S,S]: one source crop per domain */
    uint8_t *src_mask;           /* [D, S,S] */
    float *real_img;             /* [D, C,S,S]: one real crop per domain */
    uint8_t *real_mask;
    float *chain_img;            /* [D, C,S,S] chains of one target */
    uint8_t *chain_mask;
    int32_t *chain_target;
    uint64_t *chain_id;
    float *snaps;                /* [SNAPS, D, C,S,S] */
} grid_t;

/* Whether the run trains (s, t): a listed pair, or any s != t. */
static int trained_pair(const ld_trainpreview_t *p, int s, int t)
{
    if (!p->n_pairs)
        return s != t;
    for (int k = 0; k < p->n_pairs; k++)
        if (p->pairs[k].source == s && p->pairs[k].target == t)
            return 1;
    return 0;
}

/* Marks in green, on the RGB grid at (x0, y0), every labelled pixel of the
 * s x s mask that has a 4-neighbour of another class: the mask's outline. */
static void draw_outline(ld_image_t *grid, int x0, int y0, const uint8_t *mask, int s)
{
    for (int y = 0; y < s; y++) {
        for (int x = 0; x < s; x++) {
            uint8_t v = mask[y * s + x];
            int edge = (x > 0 && mask[y * s + x - 1] != v) || (x + 1 < s && mask[y * s + x + 1] != v) ||
                       (y > 0 && mask[(y - 1) * s + x] != v) || (y + 1 < s && mask[(y + 1) * s + x] != v);
            if (!v || !edge || x0 + x >= grid->width || y0 + y >= grid->height)
                continue;
            uint8_t *px = ld_image_at(grid, x0 + x, y0 + y);
            px[0] = 0;
            px[1] = 255;
            px[2] = 0;
        }
    }
}

/* One crop into the grid, in column col of source domain d's row; mask
 * (may be NULL) outlined over it. */
static void put_tile(grid_t *g, int col, int d, const float *chw, const uint8_t *mask)
{
    const int s = g->p->size, c = g->channels;
    const int x = col * g->tile, y = g->row[d] * g->tile;
    ld_image_t tile = { 0 };
    if (ld_image_alloc(&tile, s, s, c) != LD_OK)
        return;
    ld_image_put_float(&tile, 0, 0, chw, c, s);
    ld_image_paste(&g->grid, x, y, &tile);
    ld_image_free(&tile);
    if (mask)
        draw_outline(&g->grid, x, y, mask, s);
}

static void grid_free(grid_t *g)
{
    ld_image_free(&g->grid);
    free(g->src_img);
    free(g->src_mask);
    free(g->real_img);
    free(g->real_mask);
    free(g->chain_img);
    free(g->chain_mask);
    free(g->chain_target);
    free(g->chain_id);
    free(g->snaps);
}

/* Column block of target t in source s's row: the trained targets of s in
 * domain order. */
static int block_of(const grid_t *g, int s, int t)
{
    int b = 0;
    for (int u = 0; u < t; u++)
        b += trained_pair(g->p, s, u);
    return b;
}

/* Rows and columns: one row per source of a trained pair. */
static void layout(grid_t *g)
{
    for (int s = 0; s < g->d_count; s++) {
        int blocks = block_of(g, s, g->d_count);
        g->row[s] = blocks ? g->n_rows++ : -1;
        g->max_blocks = blocks > g->max_blocks ? blocks : g->max_blocks;
    }
}

static int grid_alloc(grid_t *g)
{
    size_t d = (size_t)g->d_count, il = g->il, ml = g->ml;
    g->tile = g->p->size + TILE_GAP;
    int cols = 1 + g->max_blocks * (SNAPS + 1);
    g->src_img = malloc(d * il * sizeof(float));
    g->real_img = malloc(d * il * sizeof(float));
    g->chain_img = malloc(d * il * sizeof(float));
    g->snaps = malloc(SNAPS * d * il * sizeof(float));
    g->src_mask = malloc(d * ml);
    g->real_mask = malloc(d * ml);
    g->chain_mask = malloc(d * ml);
    g->chain_target = malloc(d * sizeof(int32_t));
    g->chain_id = malloc(d * sizeof(uint64_t));
    if (!g->src_img || !g->real_img || !g->chain_img || !g->snaps || !g->src_mask || !g->real_mask ||
        !g->chain_mask || !g->chain_target || !g->chain_id)
        return ld_seterr(LD_ENOMEM, "preview: out of memory");
    return ld_image_alloc(&g->grid, cols * g->tile, g->n_rows * g->tile, 3);
}

/* One source crop and one real crop of every domain. */
static int draw_crops(grid_t *g, ld_rng_t *rng)
{
    const ld_dataset_t *ds = g->p->ds;
    for (int d = 0; d < g->d_count; d++) {
        ld_crop_t a, b;
        int rc = ld_dataset_random_crop(ds, d, -1, g->p->size, rng, &a);
        if (!rc)
            rc = ld_dataset_extract(ds, &a, g->src_img + d * g->il, g->src_mask + d * g->ml);
        if (!rc)
            rc = ld_dataset_random_crop(ds, d, -1, g->p->size, rng, &b);
        if (!rc)
            rc = ld_dataset_extract(ds, &b, g->real_img + d * g->il, g->real_mask + d * g->ml);
        if (rc)
            return rc;
    }
    return LD_OK;
}

/* The chains of first..first+m toward their targets, snapshots into g->snaps. */
static int run_chains(grid_t *g, const ld_langevin_params_t *lp, int first, int m)
{
    const ld_trainpreview_t *p = g->p;
    const float *start = g->chain_img + first * g->il;
    const uint8_t *mask = g->chain_mask + first * g->ml;
    if (p->ae)
        return ld_langevin_sample_latent(p->model, p->ws, p->ae, p->ae_ws, lp, LD_KEEP_NONE, m, start, mask,
                                         g->chain_target + first, g->chain_id + first, g->snaps, NULL, NULL, NULL);
    return ld_langevin_sample(p->model, p->ws, lp, LD_KEEP_NONE, m, start, mask, g->chain_target + first,
                              g->chain_id + first, g->snaps, NULL, NULL, NULL);
}

/* Chains toward target t from the source crop of every domain trained
 * toward t, in chunks of the workspace's batch; snapshots drawn into the
 * column block of t. */
static int draw_target(grid_t *g, int t, const ld_langevin_params_t *lp)
{
    const size_t il = g->il, ml = g->ml;
    int rows[LD_EBM_MAX_DOMAINS], n = 0;
    for (int s = 0; s < g->d_count; s++) {
        if (!trained_pair(g->p, s, t))
            continue;
        rows[n] = s;
        memcpy(g->chain_img + n * il, g->src_img + s * il, il * sizeof(float));
        memcpy(g->chain_mask + n * ml, g->src_mask + s * ml, ml);
        g->chain_target[n] = t;
        g->chain_id[n] = (uint64_t)(s * LD_EBM_MAX_DOMAINS + t);
        n++;
    }
    const int max_batch = ld_ebm_ws_max_batch(g->p->ws);
    for (int first = 0; first < n; first += max_batch) {
        int m = n - first < max_batch ? n - first : max_batch;
        int rc = run_chains(g, lp, first, m);
        if (rc)
            return rc;
        for (int j = 0; j < m; j++) {
            int s = rows[first + j];
            int col0 = 1 + block_of(g, s, t) * (SNAPS + 1);
            for (int k = 0; k < lp->n_snapshots; k++)
                put_tile(g, col0 + k, s, g->snaps + ((size_t)k * m + j) * il, NULL);
            put_tile(g, col0 + SNAPS, s, g->real_img + t * il, g->real_mask + t * ml);
        }
    }
    return LD_OK;
}

/* The chains' parameters: the run's, a seed from rng and the snapshots
 * K/4, K/2, 3K/4, K (short chains repeat a step: the list is kept
 * strictly ascending). */
static void chain_params(const ld_trainpreview_t *p, ld_rng_t *rng, ld_langevin_params_t *lp)
{
    *lp = *p->lp;
    lp->seed = ld_rng_u64(rng);
    lp->n_snapshots = 0;
    const int k = lp->steps;
    for (int i = 0; i < SNAPS; i++) {
        int step = (int)(((int64_t)k * (i + 1)) / SNAPS);
        lp->snapshots[lp->n_snapshots] = step;
        lp->n_snapshots += lp->n_snapshots == 0 || step > lp->snapshots[lp->n_snapshots - 1];
    }
}

int ld_trainpreview_write(const ld_trainpreview_t *p, ld_rng_t *rng, const char *path)
{
    grid_t g;
    memset(&g, 0, sizeof g);
    g.p = p;
    g.d_count = ld_dataset_n_domains(p->ds);
    g.channels = ld_dataset_channels(p->ds);
    g.ml = (size_t)p->size * (size_t)p->size;
    g.il = (size_t)g.channels * g.ml;
    ld_langevin_params_t lp;
    chain_params(p, rng, &lp);
    layout(&g);
    int rc = grid_alloc(&g);
    if (!rc)
        rc = draw_crops(&g, rng);
    for (int d = 0; d < g.d_count && !rc; d++)
        if (g.row[d] >= 0)
            put_tile(&g, 0, d, g.src_img + d * g.il, g.src_mask + d * g.ml);
    for (int t = 0; t < g.d_count && !rc; t++)
        rc = draw_target(&g, t, &lp);
    if (!rc)
        rc = ld_png_write(path, &g.grid);
    grid_free(&g);
    return rc;
}
