/* ld_rng: counter-based random numbers (Philox4x32-10).
 *
 * A draw is a pure function of (key, counter): no hidden state is shared
 * between threads, so a Langevin chain's noise depends only on
 * (seed, chain id, step, element index) and never on thread count, worker
 * count or which batch the chain ran in.
 *
 * ld_rng_t is a small stream on top of it for everything else (init, crop
 * positions, domain choice). It is a plain struct that can be copied and
 * saved in a checkpoint, so a resumed run draws exactly the same numbers. */
#ifndef LD_RNG_H
#define LD_RNG_H

#include <stddef.h>
#include <stdint.h>

/* splitmix64's finaliser: spreads seeds and keys (e.g. a session seed from
 * a daemon seed and a session key) over all 64 bits. Inline, so the thin
 * client library needs no engine code for it. */
static inline uint64_t ld_splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* One Philox4x32-10 block: out = philox(key, ctr). */
void ld_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Fills out[0..n) with standard normals for Langevin noise. Element j uses
 * block j/4 of counter (j/4, step, chain_lo, chain_hi) under key seed, and
 * Box-Muller on its words, so any sub-range is reproducible by itself. */
void ld_noise_fill(uint64_t seed, uint64_t chain, uint32_t step, float *out, size_t n);

typedef struct {
    uint64_t seed;     /* key */
    uint64_t stream;   /* independent sub-stream id */
    uint64_t counter;  /* next block */
    uint32_t buf[4];   /* current block */
    uint32_t used;     /* words of buf consumed (4 = empty) */
} ld_rng_t;

/* Initialises a stream; distinct (seed, stream) pairs are independent. */
void ld_rng_init(ld_rng_t *rng, uint64_t seed, uint64_t stream);
uint32_t ld_rng_u32(ld_rng_t *rng);
uint64_t ld_rng_u64(ld_rng_t *rng);
/* Uniform in [0, 1) with 53 random bits. */
double ld_rng_uniform(ld_rng_t *rng);
/* Uniform integer in [0, n), unbiased; n >= 1. */
uint32_t ld_rng_below(ld_rng_t *rng, uint32_t n);
/* Standard normal (Box-Muller; one value per call, two words consumed). */
double ld_rng_normal(ld_rng_t *rng);

#endif
