/* ld_conv: single-threaded kernels of the energy engine (float32, one
 * sample's channel-major [C][H][W] planes). The caller (ld_ebm.c) cuts the
 * work into pieces (channel ranges, tile-row bands) and runs the GEMMs;
 * every kernel's arithmetic for one output element is fixed, whatever piece
 * it is computed in, so results never depend on how work was cut.
 *
 * Winograd F(m x m, 3x3), m = 2 or 4 (Lavin & Gray 2016), computes a 3x3,
 * pad 1, stride 1 cross-correlation over m x m output tiles as
 *   Y = A^T [ U (.) V ] A,  U = G g G^T (weights), V = B^T d B ((m+2)^2 input tile)
 * The E = (m+2)^2 products over channels are E GEMMs
 *   M[e] = U[e] (Cout x Cin) * V[e] (Cin x P),  P = tiles of a band.
 * Tiles cover ceil(h/m) x ceil(w/m); parts of border tiles outside the image
 * read zeros and are not written. Layouts: U[E][Cout][Cin]; V/M[e][c][p]
 * with p = (ty - ty0) * ceil(w/m) + tx (strides given by the caller: e_stride
 * floats between e, c_stride between c). The gradient to the input is the
 * correlation of dY with the flipped, transposed kernel: Ut[E][Cin][Cout]
 * (ld_wino_weights_t), M'[e] = Ut[e] * V'[e]. */
#ifndef LD_CONV_H
#define LD_CONV_H

#include <stddef.h>

#define LD_WINO_MAX_E 36      /* (4 + 2)^2 */
#define LD_CONV_MAX_W 1024    /* widest image row: LD_EBM_MAX_SIZE */
#define LD_CONV_MAX_TW 512    /* most tiles in a row: LD_CONV_MAX_W / 2 */
#define LD_CONV_TMP 2048      /* max over m of (m+2) * tiles per row */
#define LD_CONV_MAX_CIN 256   /* inner channels per step of the weight transform */

/* Transformed elements of F(m x m, 3x3). */
static inline int ld_wino_elems(int m) { return (m + 2) * (m + 2); }

/* u[e][co][ci] for co in [co0, co1) from w[cout][cin][3][3]. */
void ld_wino_weights(int m, const float *w, int cout, int cin, int co0, int co1, float *u);
/* ut[e][ci][co] of the flipped kernel w[co][ci][2-ky][2-kx], ci in [ci0, ci1). */
void ld_wino_weights_t(int m, const float *w, int cout, int cin, int ci0, int ci1, float *ut);

/* Input transform of channels [c0, c1) of x [C][h][w] (h, w even; zero
 * padding), tile rows [ty0, ty1), into v[e*e_stride + c*c_stride + p]. */
void ld_wino_input(int m, const float *x, int h, int w, int c0, int c1, int ty0, int ty1,
                   float *v, size_t e_stride, size_t c_stride);

/* What the output transform does with the output y of channel c. */
enum {
    LD_WINO_OUT_SILU,          /* a = y + bias: out = silu(a), dout = silu'(a) */
    LD_WINO_OUT_SILU_POOL_RES, /* a = y + bias: dout = silu'(a); for each 2x2 cell,
                                  pool[c][y/2][x/2] = (mean of silu(a) over the cell + pool) / sqrt(2) */
    LD_WINO_OUT_MUL,           /* out = y * aux (aux [C][h][w]) */
    LD_WINO_OUT_ADD_UNPOOL,    /* out = y + aux[c][y/2][x/2] / 4 (aux [C][h/2][w/2]) */
    LD_WINO_OUT_BIAS,          /* out = y + bias (bias NULL: out = y) */
    LD_WINO_OUT_TANH,          /* a = y + bias: out = tanh(a), dout = 1 - tanh(a)^2 */
    LD_WINO_OUT_SILU_RES,      /* a = y + bias: dout = silu'(a), out = (silu(a) + aux) / sqrt(2) (aux [C][h][w]) */
    LD_WINO_OUT_ADD,           /* out = y + aux (aux [C][h][w]) */
    LD_WINO_OUT_SUM_POOL       /* pool[c][y/2][x/2] = sum of y over the 2x2 cell (written, not added) */
};

typedef struct {
    int mode;
    const float *bias;  /* [C]: SILU, SILU_POOL_RES, BIAS, TANH, SILU_RES */
    float *out;         /* [C][h][w]: SILU, MUL, ADD_UNPOOL, BIAS, TANH, SILU_RES, ADD */
    float *dout;        /* [C][h][w]: SILU, SILU_POOL_RES, TANH, SILU_RES */
    const float *aux;   /* MUL, ADD_UNPOOL, SILU_RES, ADD */
    float *pool;        /* [C][h/2][w/2]: SILU_POOL_RES (in and out), SUM_POOL (out) */
} ld_wino_out_t;

/* Output transform of channels [c0, c1), tile rows [ty0, ty1) of mm (laid
 * out like v) for an h x w output, applying o. */
void ld_wino_output(int m, const float *mm, size_t e_stride, size_t c_stride, int h, int w,
                    int c0, int c1, int ty0, int ty1, const ld_wino_out_t *o);

/* col[(c*9 + ky*3 + kx) * ldc + (y - y0)*w + x] = x[c][y+ky-1][x+kx-1] (0
 * outside) for all channels and output rows [y0, y1): the im2col matrix of a
 * 3x3 pad-1 convolution. */
void ld_im2col3x3(const float *x, int c, int h, int w, int y0, int y1, float *col, size_t ldc);

/* 2x2 average pooling of channels [c0, c1) of x [C][h][w], output rows
 * [r0, r1): out[c][r][q] = (four inputs summed) * 0.25. */
void ld_avgpool2(const float *x, int h, int w, int c0, int c1, int r0, int r1, float *out);

/* 2x nearest-neighbour upsampling of channels [c0, c1) of x [C][h][w]:
 * out[c][y][x] = x[c][y/2][x/2] for out [C][2h][2w]. */
void ld_upsample2(const float *x, int h, int w, int c0, int c1, float *out);

/* silu and its derivative: s[i] = a*sigmoid(a), d[i] = sigmoid(a)(1 + a(1 - sigmoid(a))).
 * Either output may be NULL. */
void ld_silu(const float *a, float *s, float *d, size_t n);

/* exp(x) to ~1 ulp for x in [-87, 88], saturating to about 8e-39 below and
 * 2.4e38 above (NaN stays NaN); vectorisable (the kernels inline it). */
float ld_expf(float x);

#endif
