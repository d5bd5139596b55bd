/* ld_rng: Philox4x32-10 (Salmon et al., SC'11) and streams over it. */
#include "ld_rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void ld_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* Two normals from two words; u1 is in (0, 1] so log() is finite. */
static void box_muller(uint32_t a, uint32_t b, double *z0, double *z1)
{
    double u1 = ((double)a + 1.0) * (1.0 / 4294967296.0);
    double u2 = (double)b * (1.0 / 4294967296.0);
    double r = sqrt(-2.0 * log(u1));
    double t = 6.283185307179586476925 * u2;
    *z0 = r * cos(t);
    *z1 = r * sin(t);
}

void ld_noise_fill(uint64_t seed, uint64_t chain, uint32_t step, float *out, size_t n)
{
    const uint32_t key[2] = { (uint32_t)seed, (uint32_t)(seed >> 32) };
    uint32_t ctr[4] = { 0, step, (uint32_t)chain, (uint32_t)(chain >> 32) };
    for (size_t j = 0; j < n; j += 4) {
        uint32_t w[4];
        double z[4];
        ctr[0] = (uint32_t)(j / 4);
        ld_philox4x32(ctr, key, w);
        box_muller(w[0], w[1], &z[0], &z[1]);
        box_muller(w[2], w[3], &z[2], &z[3]);
        for (size_t k = 0; k < 4 && j + k < n; k++)
            out[j + k] = (float)z[k];
    }
}

void ld_rng_init(ld_rng_t *rng, uint64_t seed, uint64_t stream)
{
    rng->seed = seed;
    rng->stream = stream;
    rng->counter = 0;
    rng->used = 4;
    for (int i = 0; i < 4; i++)
        rng->buf[i] = 0;
}

uint32_t ld_rng_u32(ld_rng_t *rng)
{
    if (rng->used >= 4) {
        const uint32_t key[2] = { (uint32_t)rng->seed, (uint32_t)(rng->seed >> 32) };
        const uint32_t ctr[4] = { (uint32_t)rng->counter, (uint32_t)(rng->counter >> 32),
                                  (uint32_t)rng->stream, (uint32_t)(rng->stream >> 32) ^ 0x5bd1e995u };
        ld_philox4x32(ctr, key, rng->buf);
        rng->counter++;
        rng->used = 0;
    }
    return rng->buf[rng->used++];
}

uint64_t ld_rng_u64(ld_rng_t *rng)
{
    uint64_t hi = ld_rng_u32(rng);
    return (hi << 32) | ld_rng_u32(rng);
}

double ld_rng_uniform(ld_rng_t *rng)
{
    return (double)(ld_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
}

uint32_t ld_rng_below(ld_rng_t *rng, uint32_t n)
{
    /* Lemire's multiply-shift with rejection: unbiased, no division mostly. */
    uint64_t m = (uint64_t)ld_rng_u32(rng) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (uint64_t)ld_rng_u32(rng) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

double ld_rng_normal(ld_rng_t *rng)
{
    double z0, z1;
    uint32_t a = ld_rng_u32(rng), b = ld_rng_u32(rng);
    box_muller(a, b, &z0, &z1);
    (void)z1; /* one value per call keeps the stream position simple to save */
    return z0;
}
