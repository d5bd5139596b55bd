/* ld_conv: single-threaded kernels of the energy engine (float32, one
 * sample's channel-major [C][H][W] planes). The caller (ld_ebm.c) cuts the
 * work into pieces (channel ranges, tile-row bands) and runs the GEMMs;
 * every kernel's arithmetic for one output element is fixed, whatever piece
 * it is computed in, so results never depend on how work was cut.
 *
 * Winograd F(2x2,3x3) (Lavin & Gray 2016) computes a 3x3, pad 1, stride 1
 * cross-correlation as
 *   Y = A^T [ U (.) V ] A,  U = G g G^T (weights), V = B^T d B (4x4 input tile)
 * over 2x2 output tiles. The 16 products over channels are 16 GEMMs
 *   M[e] = U[e] (Cout x Cin) * V[e] (Cin x P),  P = tiles of a band.
 * Layouts: U[16][Cout][Cin]; V/M[e][c][p] with p = (ty - ty0) * (W/2) + tx
 * (strides given by the caller: e_stride floats between e, P between c).
 * The gradient to the input is the correlation of dY with the flipped,
 * transposed kernel, whose transform is U[perm(e)]^T with perm swapping
 * rows/columns 0 and 3 of the 4x4 (see ld_wino_perm): no second weight
 * transform is needed. */
#ifndef LD_CONV_H
#define LD_CONV_H

#include <stddef.h>

#define LD_WINO_E 16          /* 4x4 transformed-tile elements */
#define LD_CONV_MAX_TW 512    /* widest tile row: LD_EBM_MAX_SIZE / 2 */
#define LD_CONV_MAX_CIN 512   /* input channels per step of the weight transform */

/* u[e][co][ci] for co in [co0, co1) from w[cout][cin][3][3]. */
void ld_wino_weights(const float *w, int cout, int cin, int co0, int co1, float *u);

/* Index e' such that the transposed-conv transform of element e is U[e']^T. */
int ld_wino_perm(int e);

/* Input transform of channels [c0, c1) of x [C][h][w] (h, w even; zero
 * padding of 1), tile rows [ty0, ty1), into v[e*e_stride + c*c_stride + p]. */
void ld_wino_input(const float *x, int h, int w, int c0, int c1, int ty0, int ty1,
                   float *v, size_t e_stride, size_t c_stride);

/* What the output transform does with each 2x2 tile y of channel c. */
enum {
    LD_WINO_OUT_SILU,          /* a = y + bias: out = silu(a), dout = silu'(a) */
    LD_WINO_OUT_SILU_POOL_RES, /* a = y + bias: dout = silu'(a);
                                  pool[c][ty][tx] = (mean of silu(a) over the tile + pool) / sqrt(2) */
    LD_WINO_OUT_MUL,           /* out = y * aux (aux [C][h][w]) */
    LD_WINO_OUT_ADD_UNPOOL     /* out = y + aux[c][ty][tx] / 4 (aux [C][h/2][w/2]) */
};

typedef struct {
    int mode;
    const float *bias;  /* [C]: SILU, SILU_POOL_RES */
    float *out;         /* [C][h][w]: SILU, MUL, ADD_UNPOOL */
    float *dout;        /* [C][h][w]: SILU, SILU_POOL_RES */
    const float *aux;   /* MUL, ADD_UNPOOL */
    float *pool;        /* [C][h/2][w/2], in and out: SILU_POOL_RES */
} ld_wino_out_t;

/* Output transform of channels [c0, c1), tile rows [ty0, ty1) of m (laid
 * out like v) for an h x w output, applying o. */
void ld_wino_output(const float *m, size_t e_stride, size_t c_stride, int h, int w,
                    int c0, int c1, int ty0, int ty1, const ld_wino_out_t *o);

/* col[(c*9 + ky*3 + kx) * ldc + (y - y0)*w + x] = x[c][y+ky-1][x+kx-1] (0
 * outside) for all channels and output rows [y0, y1): the im2col matrix of a
 * 3x3 pad-1 convolution. */
void ld_im2col3x3(const float *x, int c, int h, int w, int y0, int y1, float *col, size_t ldc);

/* 2x2 average pooling of channels [c0, c1) of x [C][h][w], output rows
 * [r0, r1): out[c][r][q] = (four inputs summed) * 0.25. */
void ld_avgpool2(const float *x, int h, int w, int c0, int c1, int r0, int r1, float *out);

/* silu and its derivative: s[i] = a*sigmoid(a), d[i] = sigmoid(a)(1 + a(1 - sigmoid(a))).
 * Either output may be NULL. */
void ld_silu(const float *a, float *s, float *d, size_t n);

/* exp(x) to ~2 ulp for x in [-87, 88] (clamped outside), vectorisable. */
float ld_expf(float x);

#endif
