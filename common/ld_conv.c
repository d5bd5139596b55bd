/* ld_conv: Winograd F(2x2,3x3) and F(4x4,3x3) transforms, im2col, pooling and silu for the
 * energy engine. See ld_conv.h for the layouts.
 *
 * Invariants: plain float arithmetic in a fixed order (the build uses ISO C,
 * so the compiler contracts nothing into FMAs), loops written so the compiler
 * can vectorise them; vector and scalar tails compute the same IEEE
 * operations and so the same bits. No allocation; scratch rows live on the
 * stack (bounded by LD_CONV_MAX_W: about 60 KB per call). */
/* The build's default -O2 does not vectorise loops whose trip count is
 * unknown; these kernels are worth it. */
#pragma GCC optimize("O3", "no-trapping-math")

#include "ld_conv.h"

/* The hot kernels are compiled for AVX-512, AVX2 and baseline x86-64 and
 * the best one for the CPU is picked at load time (GCC function
 * multi-versioning). With no contraction to FMA the three compute the same
 * IEEE operations, and one machine always runs the same version. Not under
 * ThreadSanitizer: the loader runs the version resolvers before the TSan
 * runtime is up, and their instrumented entry crashes the program. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOT
#endif
#define INLINE static inline __attribute__((always_inline))

#include <math.h>
#include <stdint.h>
#include <string.h>

#define INV_SQRT2 0.70710678118654752440f

/* exp by 2^r * p(f), r = round(x / ln2), f = x - r ln2 in [-ln2/2, ln2/2],
 * Cephes' minimax polynomial; r is rounded with the 1.5 * 2^23 trick so no
 * libm call blocks vectorisation. r and f are clamped (r to [-126, 127], f
 * to +-0.35), not x: clamping x itself makes GCC split the callers' loops
 * into masked special cases, measured 3-4x slower. Accurate to ~1 ulp on
 * [-87, 88]; saturates to about 8e-39 below and 2.4e38 above; NaN stays NaN. */
INLINE float expf_inline(float x)
{
    float r = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    r = r < -126.0f ? -126.0f : r;
    r = r > 127.0f ? 127.0f : r;
    float f = x - r * 0.693359375f;
    f = f - r * -2.12194440e-4f;
    f = f < -0.35f ? -0.35f : f;
    f = f > 0.35f ? 0.35f : f;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * (f * f) + f + 1.0f;
    /* 2^r from the bits of r + 2^23 + 127 (r an integer in [-126, 127]):
     * unsigned and conversion-free, so NaN input just yields NaN. */
    union { float f; uint32_t u; } biased = { .f = r + 8388735.0f }, scale;
    scale.u = (biased.u - 0x4B000000u) << 23;
    return p * scale.f;
}

float ld_expf(float x)
{
    return expf_inline(x);
}

INLINE float sigmoid(float x)
{
    return 1.0f / (1.0f + expf_inline(-x));
}

INLINE void silu_both(const float *a, float *s, float *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = a[i], sg = sigmoid(x);
        s[i] = x * sg;
        d[i] = sg * (1.0f + x * (1.0f - sg));
    }
}

/* tanh(a) = sign(a) (1 - e) / (1 + e), e = exp(-2|a|) <= 1 (no overflow;
 * NaN stays NaN), and its derivative 1 - tanh^2. */
INLINE void tanh_both(const float *a, float *t, float *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = a[i], e = expf_inline(-2.0f * fabsf(x)), th = (1.0f - e) / (1.0f + e);
        th = x < 0.0f ? -th : th;
        t[i] = th;
        d[i] = 1.0f - th * th;
    }
}

/* ---------------- Winograd F(m x m, 3x3), m = 2 or 4 ----------------
 * a = m + 2 taps per tile side, E = a*a transformed elements.
 *   m = 2: B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
 *          G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
 *          A^T = [1 1 1 0; 0 1 -1 -1]
 *   m = 4 (points 0, 1, -1, 2, -2, inf):
 *          B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0;
 *                 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
 *          G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6;
 *                 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 *          A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
 * Each row k of a matrix is one "combine" of a source arrays, computed
 * elementwise over n values in a fixed order of operations. */

/* Stack rows: a*a*tw and m*a*tw floats at most, over m = 2 (tw <= 512) and m = 4 (tw <= 256). */
#define WINO_T_FLOATS (36 * LD_CONV_MAX_TW / 2)
#define WINO_Q_FLOATS (24 * LD_CONV_MAX_TW / 2)

/* dst[i] = row k of B^T applied to s[0..a)[i * ss] */
INLINE void bt_combine(int m, int k, const float *const *s, int ss, float *dst, int n)
{
    if (m == 2) {
        switch (k) {
        case 0: for (int i = 0; i < n; i++) dst[i] = s[0][i * ss] - s[2][i * ss]; break;
        case 1: for (int i = 0; i < n; i++) dst[i] = s[1][i * ss] + s[2][i * ss]; break;
        case 2: for (int i = 0; i < n; i++) dst[i] = s[2][i * ss] - s[1][i * ss]; break;
        default: for (int i = 0; i < n; i++) dst[i] = s[1][i * ss] - s[3][i * ss]; break;
        }
        return;
    }
    switch (k) {
    case 0: for (int i = 0; i < n; i++) dst[i] = (4.0f * s[0][i * ss] - 5.0f * s[2][i * ss]) + s[4][i * ss]; break;
    case 1: for (int i = 0; i < n; i++) dst[i] = (s[3][i * ss] + s[4][i * ss]) - 4.0f * (s[1][i * ss] + s[2][i * ss]); break;
    case 2: for (int i = 0; i < n; i++) dst[i] = (s[4][i * ss] - s[3][i * ss]) + 4.0f * (s[1][i * ss] - s[2][i * ss]); break;
    case 3: for (int i = 0; i < n; i++) dst[i] = (s[4][i * ss] - s[2][i * ss]) + 2.0f * (s[3][i * ss] - s[1][i * ss]); break;
    case 4: for (int i = 0; i < n; i++) dst[i] = (s[4][i * ss] - s[2][i * ss]) - 2.0f * (s[3][i * ss] - s[1][i * ss]); break;
    default: for (int i = 0; i < n; i++) dst[i] = (4.0f * s[1][i * ss] - 5.0f * s[3][i * ss]) + s[5][i * ss]; break;
    }
}

/* dst[i * ds] = row k of A^T applied to s[0..a)[i] */
INLINE void at_combine(int m, int k, const float *const *s, float *dst, int ds, int n)
{
    if (m == 2) {
        if (k == 0)
            for (int i = 0; i < n; i++) dst[i * ds] = (s[0][i] + s[1][i]) + s[2][i];
        else
            for (int i = 0; i < n; i++) dst[i * ds] = (s[1][i] - s[2][i]) - s[3][i];
        return;
    }
    switch (k) {
    case 0: for (int i = 0; i < n; i++) dst[i * ds] = (s[0][i] + (s[1][i] + s[2][i])) + (s[3][i] + s[4][i]); break;
    case 1: for (int i = 0; i < n; i++) dst[i * ds] = (s[1][i] - s[2][i]) + 2.0f * (s[3][i] - s[4][i]); break;
    case 2: for (int i = 0; i < n; i++) dst[i * ds] = (s[1][i] + s[2][i]) + 4.0f * (s[3][i] + s[4][i]); break;
    default: for (int i = 0; i < n; i++) dst[i * ds] = ((s[1][i] - s[2][i]) + 8.0f * (s[3][i] - s[4][i])) + s[5][i]; break;
    }
}

/* dst = row k of G applied to three taps */
INLINE void g_combine(int m, int k, const float *g0, const float *g1, const float *g2, float *dst, int n)
{
    if (m == 2) {
        switch (k) {
        case 0: for (int i = 0; i < n; i++) dst[i] = g0[i]; break;
        case 1: for (int i = 0; i < n; i++) dst[i] = 0.5f * ((g0[i] + g1[i]) + g2[i]); break;
        case 2: for (int i = 0; i < n; i++) dst[i] = 0.5f * ((g0[i] - g1[i]) + g2[i]); break;
        default: for (int i = 0; i < n; i++) dst[i] = g2[i]; break;
        }
        return;
    }
    const float s6 = -1.0f / 6.0f, s24 = 1.0f / 24.0f;
    switch (k) {
    case 0: for (int i = 0; i < n; i++) dst[i] = 0.25f * g0[i]; break;
    case 1: for (int i = 0; i < n; i++) dst[i] = s6 * ((g0[i] + g1[i]) + g2[i]); break;
    case 2: for (int i = 0; i < n; i++) dst[i] = s6 * ((g0[i] - g1[i]) + g2[i]); break;
    case 3: for (int i = 0; i < n; i++) dst[i] = s24 * ((g0[i] + 2.0f * g1[i]) + 4.0f * g2[i]); break;
    case 4: for (int i = 0; i < n; i++) dst[i] = s24 * ((g0[i] - 2.0f * g1[i]) + 4.0f * g2[i]); break;
    default: for (int i = 0; i < n; i++) dst[i] = g2[i]; break;
    }
}

/* u[e][r][0..n) = (G g G^T)[e] for rows r in [r0, r1) and n inner indices,
 * the 9 taps of (r, i) at src[r * rs + i * is + k * ks]. Taps are gathered
 * into contiguous rows over the inner index first, so that the arithmetic
 * and the E output rows all run along contiguous memory. */
INLINE void weights_rows(int m, const float *src, size_t rs, size_t is, ptrdiff_t ks, int r0, int r1, int n,
                         float *u, size_t e_stride)
{
    const int a = m + 2;
    float tap[9][LD_CONV_MAX_CIN], gg[6][3][LD_CONV_MAX_CIN];
    for (int r = r0; r < r1; r++) {
        for (int i0 = 0; i0 < n; i0 += LD_CONV_MAX_CIN) {
            int cnt = n - i0 < LD_CONV_MAX_CIN ? n - i0 : LD_CONV_MAX_CIN;
            const float *base = src + (size_t)r * rs + (size_t)i0 * is;
            for (int k = 0; k < 9; k++)
                for (int i = 0; i < cnt; i++)
                    tap[k][i] = base[(ptrdiff_t)((size_t)i * is) + k * ks];
            for (int kx = 0; kx < 3; kx++) /* G along ky: gg[row][kx] */
                for (int row = 0; row < a; row++)
                    g_combine(m, row, tap[kx], tap[3 + kx], tap[6 + kx], gg[row][kx], cnt);
            for (int row = 0; row < a; row++) /* G along kx */
                for (int col = 0; col < a; col++)
                    g_combine(m, col, gg[row][0], gg[row][1], gg[row][2],
                              u + (size_t)(row * a + col) * e_stride + (size_t)r * (size_t)n + (size_t)i0, cnt);
        }
    }
}

HOT void ld_wino_weights(int m, const float *w, int cout, int cin, int co0, int co1, float *u)
{
    weights_rows(m, w, (size_t)cin * 9, 9, 1, co0, co1, cin, u, (size_t)cout * (size_t)cin);
}

HOT void ld_wino_weights_t(int m, const float *w, int cout, int cin, int ci0, int ci1, float *ut)
{
    /* tap k of the flipped kernel is tap 8 - k of the original */
    weights_rows(m, w + 8, 9, (size_t)cin * 9, -1, ci0, ci1, cout, ut, (size_t)cout * (size_t)cin);
}

INLINE void wino_input_m(int m, const float *x, int h, int w, int c0, int c1, int ty0, int ty1, float *v,
                         size_t e_stride, size_t c_stride)
{
    const int a = m + 2, tw = (w + m - 1) / m, padded = m * tw + 2;
    float pad[LD_CONV_MAX_W + 8];
    float t[WINO_T_FLOATS]; /* [input row i][k][tx]: B^T along x */
    for (int c = c0; c < c1; c++) {
        const float *xc = x + (size_t)c * (size_t)h * (size_t)w;
        for (int ty = ty0; ty < ty1; ty++) {
            for (int i = 0; i < a; i++) {
                int r = m * ty - 1 + i;
                memset(pad, 0, (size_t)padded * sizeof(float));
                if (r >= 0 && r < h)
                    memcpy(pad + 1, xc + (size_t)r * (size_t)w, (size_t)w * sizeof(float));
                const float *s[6] = { pad, pad + 1, pad + 2, pad + 3, pad + 4, pad + 5 }; /* tap j of tile tx: s[j][m*tx] */
                for (int k = 0; k < a; k++)
                    bt_combine(m, k, s, m, t + (size_t)(i * a + k) * (size_t)tw, tw);
            }
            float *vc = v + (size_t)c * c_stride + (size_t)(ty - ty0) * (size_t)tw;
            for (int k = 0; k < a; k++) { /* B^T along y, for column element k */
                const float *s[6] = { 0 };
                for (int i = 0; i < a; i++)
                    s[i] = t + (size_t)(i * a + k) * (size_t)tw;
                for (int row = 0; row < a; row++)
                    bt_combine(m, row, s, 1, vc + (size_t)(row * a + k) * e_stride, tw);
            }
        }
    }
}

/* Specialised for each m so that tile sizes and strides are constants. */
HOT void ld_wino_input(int m, const float *x, int h, int w, int c0, int c1, int ty0, int ty1, float *v,
                       size_t e_stride, size_t c_stride)
{
    if (m == 2)
        wino_input_m(2, x, h, w, c0, c1, ty0, ty1, v, e_stride, c_stride);
    else
        wino_input_m(4, x, h, w, c0, c1, ty0, ty1, v, e_stride, c_stride);
}

/* The m output rows of one tile row: y[r * ys + x] for x in 0..m*tw. */
INLINE void output_rows(int m, const float *mc, size_t e_stride, int tw, float *y, int ys)
{
    const int a = m + 2;
    float q[WINO_Q_FLOATS]; /* [r][j][tx] */
    for (int j = 0; j < a; j++) { /* A^T along y for column element j */
        const float *s[6];
        for (int i = 0; i < a; i++)
            s[i] = mc + (size_t)(i * a + j) * e_stride;
        for (int r = 0; r < m; r++)
            at_combine(m, r, s, q + (size_t)(r * a + j) * (size_t)tw, 1, tw);
    }
    for (int r = 0; r < m; r++) { /* A^T along x */
        const float *s[6];
        for (int j = 0; j < a; j++)
            s[j] = q + (size_t)(r * a + j) * (size_t)tw;
        for (int cx = 0; cx < m; cx++)
            at_combine(m, cx, s, y + (size_t)r * (size_t)ys + cx, m, tw);
    }
}

INLINE void add_scalar(float *y, float b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = y[i] + b;
}

/* Rows are handled in segments: all rows of the tile row at once when they
 * are contiguous (no partial border tile), else one by one. */
INLINE void wino_output_m(int m, const float *mm, size_t e_stride, size_t c_stride, int h, int w, int c0, int c1,
                          int ty0, int ty1, const ld_wino_out_t *o)
{
    const int tw = (w + m - 1) / m, pw = w / 2, ys = m * tw;
    const size_t plane = (size_t)h * (size_t)w, qplane = plane / 4;
    float y[4 * (LD_CONV_MAX_W + 8)], s[4 * (LD_CONV_MAX_W + 8)];
    for (int c = c0; c < c1; c++) {
        for (int ty = ty0; ty < ty1; ty++) {
            output_rows(m, mm + (size_t)c * c_stride + (size_t)(ty - ty0) * (size_t)tw, e_stride, tw, y, ys);
            int rows = h - m * ty < m ? h - m * ty : m, seg = ys == w ? rows : 1;
            for (int r = 0; r < rows; r += seg) {
                int yy = m * ty + r;
                float *yr = y + (size_t)r * (size_t)ys;
                size_t at = (size_t)c * plane + (size_t)yy * (size_t)w, n = (size_t)seg * (size_t)w;
                switch (o->mode) {
                case LD_WINO_OUT_SILU:
                    add_scalar(yr, o->bias[c], n);
                    silu_both(yr, o->out + at, o->dout + at, n);
                    break;
                case LD_WINO_OUT_SILU_POOL_RES:
                    add_scalar(yr, o->bias[c], n);
                    silu_both(yr, s + (size_t)r * (size_t)ys, o->dout + at, n);
                    break;
                case LD_WINO_OUT_MUL: {
                    const float *aux = o->aux + at;
                    float *out = o->out + at;
                    for (size_t x = 0; x < n; x++)
                        out[x] = yr[x] * aux[x];
                    break;
                }
                case LD_WINO_OUT_BIAS: {
                    float *out = o->out + at;
                    if (o->bias)
                        add_scalar(yr, o->bias[c], n);
                    memcpy(out, yr, n * sizeof(float));
                    break;
                }
                case LD_WINO_OUT_TANH:
                    add_scalar(yr, o->bias[c], n);
                    tanh_both(yr, o->out + at, o->dout + at, n);
                    break;
                case LD_WINO_OUT_SILU_RES: {
                    const float *aux = o->aux + at;
                    float *out = o->out + at;
                    add_scalar(yr, o->bias[c], n);
                    silu_both(yr, out, o->dout + at, n);
                    for (size_t x = 0; x < n; x++)
                        out[x] = (out[x] + aux[x]) * INV_SQRT2;
                    break;
                }
                case LD_WINO_OUT_ADD: {
                    const float *aux = o->aux + at;
                    float *out = o->out + at;
                    for (size_t x = 0; x < n; x++)
                        out[x] = yr[x] + aux[x];
                    break;
                }
                case LD_WINO_OUT_SUM_POOL: /* pooled from y below */
                    break;
                default: /* LD_WINO_OUT_ADD_UNPOOL */
                    for (int k = 0; k < seg; k++) {
                        const float *aux = o->aux + (size_t)c * qplane + (size_t)((yy + k) / 2) * (size_t)pw;
                        const float *yk = yr + (size_t)k * (size_t)ys;
                        float *out = o->out + at + (size_t)k * (size_t)w;
                        for (int q = 0; q < pw; q++) {
                            float add = aux[q] * 0.25f;
                            out[2 * q] = yk[2 * q] + add;
                            out[2 * q + 1] = yk[2 * q + 1] + add;
                        }
                    }
                    break;
                }
            }
            if (o->mode != LD_WINO_OUT_SILU_POOL_RES && o->mode != LD_WINO_OUT_SUM_POOL)
                continue;
            const float *src = o->mode == LD_WINO_OUT_SUM_POOL ? y : s;
            for (int r = 1; r < rows; r += 2) { /* rows r-1, r make one pooled row */
                float *pool = o->pool + (size_t)c * qplane + (size_t)((m * ty + r) / 2) * (size_t)pw;
                const float *s0 = src + (size_t)(r - 1) * (size_t)ys, *s1 = src + (size_t)r * (size_t)ys;
                if (o->mode == LD_WINO_OUT_SUM_POOL) {
                    for (int q = 0; q < pw; q++)
                        pool[q] = ((s0[2 * q] + s0[2 * q + 1]) + s1[2 * q]) + s1[2 * q + 1];
                    continue;
                }
                for (int q = 0; q < pw; q++) {
                    float mean = (((s0[2 * q] + s0[2 * q + 1]) + s1[2 * q]) + s1[2 * q + 1]) * 0.25f;
                    pool[q] = (mean + pool[q]) * INV_SQRT2;
                }
            }
        }
    }
}

HOT void ld_wino_output(int m, const float *mm, size_t e_stride, size_t c_stride, int h, int w, int c0, int c1,
                        int ty0, int ty1, const ld_wino_out_t *o)
{
    if (m == 2)
        wino_output_m(2, mm, e_stride, c_stride, h, w, c0, c1, ty0, ty1, o);
    else
        wino_output_m(4, mm, e_stride, c_stride, h, w, c0, c1, ty0, ty1, o);
}

HOT void ld_im2col3x3(const float *x, int c, int h, int w, int y0, int y1, float *col, size_t ldc)
{
    for (int ch = 0; ch < c; ch++) {
        const float *xc = x + (size_t)ch * (size_t)h * (size_t)w;
        for (int ky = 0; ky < 3; ky++) {
            for (int kx = 0; kx < 3; kx++) {
                float *dst = col + (size_t)(ch * 9 + ky * 3 + kx) * ldc;
                for (int y = y0; y < y1; y++) {
                    float *row = dst + (size_t)(y - y0) * (size_t)w;
                    int sy = y + ky - 1;
                    if (sy < 0 || sy >= h) {
                        memset(row, 0, (size_t)w * sizeof(float));
                        continue;
                    }
                    const float *src = xc + (size_t)sy * (size_t)w;
                    int lo = kx == 0 ? 1 : 0, hi = kx == 2 ? w - 1 : w;
                    if (kx == 0)
                        row[0] = 0.0f;
                    if (kx == 2)
                        row[w - 1] = 0.0f;
                    memcpy(row + lo, src + lo + kx - 1, (size_t)(hi - lo) * sizeof(float));
                }
            }
        }
    }
}

HOT void ld_avgpool2(const float *x, int h, int w, int c0, int c1, int r0, int r1, float *out)
{
    const int ow = w / 2;
    for (int c = c0; c < c1; c++) {
        const float *xc = x + (size_t)c * (size_t)h * (size_t)w;
        float *oc = out + (size_t)c * (size_t)(h / 2) * (size_t)ow;
        for (int r = r0; r < r1; r++) {
            const float *a = xc + (size_t)(2 * r) * (size_t)w, *b = a + w;
            float *o = oc + (size_t)r * (size_t)ow;
            for (int q = 0; q < ow; q++)
                o[q] = (a[2 * q] + a[2 * q + 1] + b[2 * q] + b[2 * q + 1]) * 0.25f;
        }
    }
}

HOT void ld_upsample2(const float *x, int h, int w, int c0, int c1, float *out)
{
    const int ow = 2 * w;
    for (int c = c0; c < c1; c++) {
        const float *xc = x + (size_t)c * (size_t)h * (size_t)w;
        float *oc = out + (size_t)c * (size_t)(2 * h) * (size_t)ow;
        for (int r = 0; r < h; r++) {
            const float *src = xc + (size_t)r * (size_t)w;
            float *o = oc + (size_t)(2 * r) * (size_t)ow;
            for (int q = 0; q < w; q++)
                o[2 * q] = o[2 * q + 1] = src[q];
            memcpy(o + ow, o, (size_t)ow * sizeof(float));
        }
    }
}

HOT void ld_silu(const float *a, float *s, float *d, size_t n)
{
    if (s && d) {
        silu_both(a, s, d, n);
    } else if (s) {
        for (size_t i = 0; i < n; i++)
            s[i] = a[i] * sigmoid(a[i]);
    } else if (d) {
        for (size_t i = 0; i < n; i++) {
            float x = a[i], sg = sigmoid(x);
            d[i] = sg * (1.0f + x * (1.0f - sg));
        }
    }
}
