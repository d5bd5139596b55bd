/* ld_conv: Winograd F(2x2,3x3) transforms, im2col, pooling and silu for the
 * energy engine. See ld_conv.h for the layouts.
 *
 * Invariants: plain float arithmetic in a fixed order (the build uses ISO C,
 * so the compiler contracts nothing into FMAs), loops written so the compiler
 * can vectorise them; vector and scalar tails compute the same IEEE
 * operations and so the same bits. No allocation; scratch rows live on the
 * stack (bounded by LD_CONV_MAX_TW). */
/* The build's default -O2 does not vectorise loops whose trip count is
 * unknown; these kernels are worth it. */
#pragma GCC optimize("O3", "no-trapping-math")

#include "ld_conv.h"

/* The hot kernels are compiled for AVX-512, AVX2 and baseline x86-64 and
 * the best one for the CPU is picked at load time (GCC function
 * multi-versioning). With no contraction to FMA the three compute the same
 * IEEE operations, and one machine always runs the same version. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOT
#endif
#define INLINE static inline __attribute__((always_inline))

#include <stdint.h>
#include <string.h>

#define INV_SQRT2 0.70710678118654752440f

/* u = G g G^T per filter, G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]. For one
 * output channel at a time, the taps are first gathered into 9 contiguous
 * rows over input channels, so that both the arithmetic and the 16 output
 * rows u[e][co][0..cin) run along contiguous memory. */
HOT void ld_wino_weights(const float *w, int cout, int cin, int co0, int co1, float *u)
{
    const size_t e_stride = (size_t)cout * (size_t)cin;
    float tap[9][LD_CONV_MAX_CIN], gg[12][LD_CONV_MAX_CIN];
    for (int co = co0; co < co1; co++) {
        const float *wc = w + (size_t)co * (size_t)cin * 9;
        for (int ci0 = 0; ci0 < cin; ci0 += LD_CONV_MAX_CIN) {
            int n = cin - ci0 < LD_CONV_MAX_CIN ? cin - ci0 : LD_CONV_MAX_CIN;
            for (int k = 0; k < 9; k++)
                for (int i = 0; i < n; i++)
                    tap[k][i] = wc[(size_t)(ci0 + i) * 9 + (size_t)k];
            /* G g: rows r of the 4x3 result, gg[r*3 + kx] */
            for (int kx = 0; kx < 3; kx++) {
                const float *g0 = tap[kx], *g1 = tap[3 + kx], *g2 = tap[6 + kx];
                for (int i = 0; i < n; i++) {
                    gg[kx][i] = g0[i];
                    gg[3 + kx][i] = 0.5f * (g0[i] + g1[i] + g2[i]);
                    gg[6 + kx][i] = 0.5f * (g0[i] - g1[i] + g2[i]);
                    gg[9 + kx][i] = g2[i];
                }
            }
            /* (G g) G^T: row r, column c -> e = 4r + c */
            for (int r = 0; r < 4; r++) {
                const float *a = gg[3 * r], *b = gg[3 * r + 1], *c = gg[3 * r + 2];
                float *u0 = u + (size_t)(4 * r) * e_stride + (size_t)co * (size_t)cin + (size_t)ci0;
                float *u1 = u0 + e_stride, *u2 = u1 + e_stride, *u3 = u2 + e_stride;
                for (int i = 0; i < n; i++) {
                    u0[i] = a[i];
                    u1[i] = 0.5f * (a[i] + b[i] + c[i]);
                    u2[i] = 0.5f * (a[i] - b[i] + c[i]);
                    u3[i] = c[i];
                }
            }
        }
    }
}

int ld_wino_perm(int e)
{
    static const int p[4] = { 3, 1, 2, 0 };
    return p[e / 4] * 4 + p[e % 4];
}

/* B^T on one padded input row: t_j[tx] from taps pad[2tx .. 2tx+3]. */
INLINE void input_row(const float *pad, int tw, float *t0, float *t1, float *t2, float *t3)
{
    for (int tx = 0; tx < tw; tx++) {
        float a = pad[2 * tx], b = pad[2 * tx + 1], c = pad[2 * tx + 2], d = pad[2 * tx + 3];
        t0[tx] = a - c;
        t1[tx] = b + c;
        t2[tx] = c - b;
        t3[tx] = b - d;
    }
}

HOT void ld_wino_input(const float *x, int h, int w, int c0, int c1, int ty0, int ty1,
                   float *v, size_t e_stride, size_t c_stride)
{
    const int tw = w / 2;
    float pad[2 * LD_CONV_MAX_TW + 2];
    float t[4][4][LD_CONV_MAX_TW];
    pad[0] = 0.0f;
    pad[w + 1] = 0.0f;
    for (int c = c0; c < c1; c++) {
        const float *xc = x + (size_t)c * (size_t)h * (size_t)w;
        for (int ty = ty0; ty < ty1; ty++) {
            for (int i = 0; i < 4; i++) {
                int r = 2 * ty - 1 + i;
                if (r < 0 || r >= h) {
                    for (int j = 0; j < 4; j++)
                        memset(t[i][j], 0, (size_t)tw * sizeof(float));
                    continue;
                }
                memcpy(pad + 1, xc + (size_t)r * (size_t)w, (size_t)w * sizeof(float));
                input_row(pad, tw, t[i][0], t[i][1], t[i][2], t[i][3]);
            }
            float *vc = v + (size_t)c * c_stride + (size_t)(ty - ty0) * (size_t)tw;
            for (int j = 0; j < 4; j++) {
                float *v0 = vc + (size_t)j * e_stride, *v1 = vc + (size_t)(4 + j) * e_stride;
                float *v2 = vc + (size_t)(8 + j) * e_stride, *v3 = vc + (size_t)(12 + j) * e_stride;
                const float *r0 = t[0][j], *r1 = t[1][j], *r2 = t[2][j], *r3 = t[3][j];
                for (int tx = 0; tx < tw; tx++) {
                    v0[tx] = r0[tx] - r2[tx];
                    v1[tx] = r1[tx] + r2[tx];
                    v2[tx] = r2[tx] - r1[tx];
                    v3[tx] = r1[tx] - r3[tx];
                }
            }
        }
    }
}

/* exp by 2^n * p(f), f = x - n ln2 in [-ln2/2, ln2/2], Cephes' minimax
 * polynomial; n is rounded with the 1.5 * 2^23 trick so no libm call or
 * branch blocks vectorisation. */
INLINE float expf_inline(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float r = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float f = x - r * 0.693359375f;
    f = f - r * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * (f * f) + f + 1.0f;
    /* 2^r from the bits of r + 2^23 + 127 (r is an integer in [-126, 127]):
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

/* A^T m A for one tile row: y00/y01 go to output row 2ty, y10/y11 to 2ty+1. */
INLINE void output_row(const float *mc, size_t e_stride, int tw, float *y00, float *y01, float *y10, float *y11)
{
    const float *m[16];
    for (int e = 0; e < 16; e++)
        m[e] = mc + (size_t)e * e_stride;
    for (int tx = 0; tx < tw; tx++) {
        float q0[4], q1[4];
        for (int i = 0; i < 4; i++) {
            float a = m[4 * i][tx], b = m[4 * i + 1][tx], c = m[4 * i + 2][tx], d = m[4 * i + 3][tx];
            q0[i] = a + b + c;
            q1[i] = b - c - d;
        }
        y00[tx] = q0[0] + q0[1] + q0[2];
        y01[tx] = q1[0] + q1[1] + q1[2];
        y10[tx] = q0[1] - q0[2] - q0[3];
        y11[tx] = q1[1] - q1[2] - q1[3];
    }
}

INLINE void interleave(float *dst, const float *even, const float *odd, int n)
{
    for (int i = 0; i < n; i++) {
        dst[2 * i] = even[i];
        dst[2 * i + 1] = odd[i];
    }
}

INLINE void add_scalar(float *y, float b, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = y[i] + b;
}

INLINE void mul_deinterleaved(float *y0, float *y1, const float *aux, int n)
{
    for (int i = 0; i < n; i++) {
        y0[i] = y0[i] * aux[2 * i];
        y1[i] = y1[i] * aux[2 * i + 1];
    }
}

HOT void ld_wino_output(const float *m, size_t e_stride, size_t c_stride, int h, int w,
                    int c0, int c1, int ty0, int ty1, const ld_wino_out_t *o)
{
    const int tw = w / 2;
    const size_t plane = (size_t)h * (size_t)w, qplane = plane / 4;
    float y[4][LD_CONV_MAX_TW], s[4][LD_CONV_MAX_TW], d[4][LD_CONV_MAX_TW];
    for (int c = c0; c < c1; c++) {
        for (int ty = ty0; ty < ty1; ty++) {
            const float *mc = m + (size_t)c * c_stride + (size_t)(ty - ty0) * (size_t)tw;
            output_row(mc, e_stride, tw, y[0], y[1], y[2], y[3]);
            size_t row0 = (size_t)c * plane + (size_t)(2 * ty) * (size_t)w, row1 = row0 + (size_t)w;
            size_t prow = (size_t)c * qplane + (size_t)ty * (size_t)tw;
            switch (o->mode) {
            case LD_WINO_OUT_SILU:
                for (int k = 0; k < 4; k++) {
                    add_scalar(y[k], o->bias[c], tw);
                    silu_both(y[k], s[k], d[k], (size_t)tw);
                }
                interleave(o->out + row0, s[0], s[1], tw);
                interleave(o->out + row1, s[2], s[3], tw);
                interleave(o->dout + row0, d[0], d[1], tw);
                interleave(o->dout + row1, d[2], d[3], tw);
                break;
            case LD_WINO_OUT_SILU_POOL_RES: {
                for (int k = 0; k < 4; k++) {
                    add_scalar(y[k], o->bias[c], tw);
                    silu_both(y[k], s[k], d[k], (size_t)tw);
                }
                interleave(o->dout + row0, d[0], d[1], tw);
                interleave(o->dout + row1, d[2], d[3], tw);
                float *pool = o->pool + prow;
                for (int tx = 0; tx < tw; tx++) {
                    float mean = (s[0][tx] + s[1][tx] + s[2][tx] + s[3][tx]) * 0.25f;
                    pool[tx] = (mean + pool[tx]) * INV_SQRT2;
                }
                break;
            }
            case LD_WINO_OUT_MUL:
                mul_deinterleaved(y[0], y[1], o->aux + row0, tw);
                mul_deinterleaved(y[2], y[3], o->aux + row1, tw);
                interleave(o->out + row0, y[0], y[1], tw);
                interleave(o->out + row1, y[2], y[3], tw);
                break;
            default: { /* LD_WINO_OUT_ADD_UNPOOL */
                const float *aux = o->aux + prow;
                for (int tx = 0; tx < tw; tx++) {
                    float a = aux[tx] * 0.25f;
                    y[0][tx] = y[0][tx] + a;
                    y[1][tx] = y[1][tx] + a;
                    y[2][tx] = y[2][tx] + a;
                    y[3][tx] = y[3][tx] + a;
                }
                interleave(o->out + row0, y[0], y[1], tw);
                interleave(o->out + row1, y[2], y[3], tw);
                break;
            }
            }
        }
    }
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
