/* bench_engine: Langevin image-steps/s of the energy engine, its GFLOP/s,
 * OpenBLAS sgemm GFLOP/s on the same machine in the same run, and a
 * per-layer time profile.
 *
 *   bench_engine [--sizes 64,128] [--batches 1,8,16] [--threads 1,2]
 *                [--widths 32,64,128,128,256] [--seconds 4] [--steps K]
 *                [--sgemm] [--peak] [--profile S,BATCH,THREADS] [--tsv]
 *
 * Langevin runs use the reference network (C=3, K=2, D=3; random weights,
 * random images and masks), step size 0.01, noise 0.005. After a one-step
 * warm-up, ld_langevin_run runs of --steps steps (default: enough for 32
 * image-steps, at least 2; a run transforms the weights once) are timed one
 * by one, at least 3 and until --seconds have passed, and the best run
 * counts: image-steps/s = chains * steps / seconds of that run. (Best-of
 * because other processes on a shared machine only ever slow a run down.)
 * GFLOP/s uses ld_ebm_arch_flops (nominal forward + backward-to-input
 * convolution FLOPs, 2 per multiply-add). --tsv prints
 * "engine<TAB>S<TAB>batch<TAB>threads<TAB>img_steps_per_s<TAB>gflops" lines
 * for tests/bench.
 *
 * --sgemm measures cblas_sgemm: 1024^3, and the conv-like shapes the engine
 * runs (Winograd GEMMs of the reference network), on 1 thread, on 2 threads
 * inside OpenBLAS, and as 2 independent single-threaded GEMMs running
 * concurrently (what the engine does with 2 threads); with --tsv as
 * "sgemm<TAB>core<TAB>MxNxK<TAB>shape<TAB>1 thread<TAB>2 OpenBLAS<TAB>2x1".
 *
 * --peak measures the machine's single-precision FMA peak: independent
 * chains of fused multiply-adds in registers (enough of them to cover the
 * FMA latency on every x86 core), 256-bit (AVX2+FMA) and, where the CPU has
 * it, 512-bit (AVX-512F), on 1 thread and on 2 threads at once, best of 3;
 * with --tsv as "peak<TAB>isa<TAB>1 thread<TAB>2 threads" (GFLOP/s, 2 per
 * multiply-add). It is the ceiling both the engine and PyTorch are held to. */
#include <cblas.h>
#include <getopt.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ld_ebm.h"
#include "ld_error.h"
#include "ld_langevin.h"
#include "ld_rng.h"

#define MAX_LIST 8
#define WINDOW_IMAGE_STEPS 32 /* image-steps per timed run (default --steps) */
#define MIN_RUNS 3

typedef struct {
    int sizes[MAX_LIST], n_sizes;
    int batches[MAX_LIST], n_batches;
    int threads[MAX_LIST], n_threads;
    const char *widths;
    double seconds;
    int steps, sgemm, peak, tsv;
    int prof[3], profile;
} opts_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 100000)
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

/* ---------------- sgemm ---------------- */

typedef struct {
    int m, n, k, reps;
    float *a, *b, *c;
} gemm_arg_t;

static void gemm_alloc(gemm_arg_t *g, int m, int n, int k)
{
    g->m = m;
    g->n = n;
    g->k = k;
    g->a = malloc(sizeof(float) * (size_t)m * (size_t)k);
    g->b = malloc(sizeof(float) * (size_t)k * (size_t)n);
    g->c = malloc(sizeof(float) * (size_t)m * (size_t)n);
    ld_rng_t r;
    ld_rng_init(&r, 1, 0);
    for (size_t i = 0; i < (size_t)m * (size_t)k; i++)
        g->a[i] = (float)ld_rng_uniform(&r);
    for (size_t i = 0; i < (size_t)k * (size_t)n; i++)
        g->b[i] = (float)ld_rng_uniform(&r);
}

static void gemm_free(gemm_arg_t *g)
{
    free(g->a);
    free(g->b);
    free(g->c);
}

static void *gemm_loop(void *arg)
{
    gemm_arg_t *g = arg;
    for (int r = 0; r < g->reps; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->m, g->n, g->k, 1.0f, g->a, g->k, g->b, g->n, 0.0f,
                    g->c, g->n);
    return NULL;
}

/* mode 0: 1 thread; 1: OpenBLAS with 2 threads; 2: two independent 1-thread GEMMs. */
static double gemm_gflops(int m, int n, int k, int mode)
{
    double flop = 2.0 * m * n * k;
    gemm_arg_t g[2];
    gemm_alloc(&g[0], m, n, k);
    gemm_alloc(&g[1], m, n, k);
    openblas_set_num_threads(mode == 1 ? 2 : 1);
    g[0].reps = 1;
    gemm_loop(&g[0]); /* warm-up */
    g[0].reps = g[1].reps = (int)(1.5e10 / flop) + 1;
    double t0 = now_s();
    if (mode == 2) {
        pthread_t th;
        pthread_create(&th, NULL, gemm_loop, &g[1]);
        gemm_loop(&g[0]);
        pthread_join(th, NULL);
    } else {
        gemm_loop(&g[0]);
    }
    double dt = now_s() - t0;
    openblas_set_num_threads(1);
    gemm_free(&g[0]);
    gemm_free(&g[1]);
    return flop * g[0].reps * (mode == 2 ? 2 : 1) / dt / 1e9;
}

/* ---------------- FMA peak ---------------- */

/* 12 independent accumulators (FMA latency 4-5 cycles x 2 ports, and some),
 * written out so that they stay in registers at any optimization level. */
#define FMA_CHAINS 12
#define FMA_12(op, m, c)                                                                                  \
    do {                                                                                                  \
        a0 = op(a0, m, c), a1 = op(a1, m, c), a2 = op(a2, m, c), a3 = op(a3, m, c);                         \
        a4 = op(a4, m, c), a5 = op(a5, m, c), a6 = op(a6, m, c), a7 = op(a7, m, c);                         \
        a8 = op(a8, m, c), a9 = op(a9, m, c), a10 = op(a10, m, c), a11 = op(a11, m, c);                     \
    } while (0)

typedef struct {
    int wide;       /* 512-bit lanes, else 256-bit */
    long iters;
    float out;      /* the sums, so that the loop is not optimized away */
} fma_arg_t;

__attribute__((target("avx2,fma"))) static float fma_loop_256(long iters)
{
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    /* distinct starts: equal ones would let the compiler merge the chains into one */
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3);
    __m256 a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
    __m256 a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
    for (long i = 0; i < iters; i++)
        FMA_12(_mm256_fmadd_ps, m, c);
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float lanes[8], sum = 0;
    _mm256_storeu_ps(lanes, s);
    for (int j = 0; j < 8; j++)
        sum += lanes[j];
    return sum;
}

__attribute__((target("avx512f"))) static float fma_loop_512(long iters)
{
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    /* distinct starts: equal ones would let the compiler merge the chains into one */
    __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3);
    __m512 a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7);
    __m512 a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
    for (long i = 0; i < iters; i++)
        FMA_12(_mm512_fmadd_ps, m, c);
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}

static void *fma_thread(void *p)
{
    fma_arg_t *a = p;
    a->out = a->wide ? fma_loop_512(a->iters) : fma_loop_256(a->iters);
    return NULL;
}

/* GFLOP/s of n_threads threads running the FMA loop at once, best of 3. */
static double fma_gflops(int wide, int n_threads)
{
    const double flop_per_iter = 2.0 * FMA_CHAINS * (wide ? 16 : 8);
    fma_arg_t a[2] = { { wide, 1000000, 0 }, { wide, 1000000, 0 } };
    double t0 = now_s();
    fma_thread(&a[0]); /* warm-up, and the iteration count for about 0.3 s */
    a[0].iters = a[1].iters = (long)(a[0].iters * 0.3 / (now_s() - t0 + 1e-9)) + 1;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        pthread_t th;
        t0 = now_s();
        if (n_threads == 2)
            pthread_create(&th, NULL, fma_thread, &a[1]);
        fma_thread(&a[0]);
        if (n_threads == 2)
            pthread_join(th, NULL);
        double g = flop_per_iter * (double)a[0].iters * n_threads / (now_s() - t0) / 1e9;
        best = g > best ? g : best;
    }
    return best;
}

static void bench_peak(int tsv)
{
    static const char *isa[] = { "avx2+fma", "avx512f" };
    int have[] = { __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                   __builtin_cpu_supports("avx512f") };
    if (!tsv)
        printf("FMA peak, GFLOP/s (single precision, 2 per multiply-add):\n  %-10s %9s %10s\n", "isa",
               "1 thread", "2 threads");
    for (int w = 0; w < 2; w++) {
        if (!have[w])
            continue;
        double g1 = fma_gflops(w, 1), g2 = fma_gflops(w, 2);
        if (tsv)
            printf("peak\t%s\t%.1f\t%.1f\n", isa[w], g1, g2);
        else
            printf("  %-10s %9.1f %10.1f\n", isa[w], g1, g2);
    }
}

static void bench_sgemm(int tsv)
{
    static const int shapes[][3] = { { 1024, 1024, 1024 }, { 64, 256, 64 }, { 128, 128, 128 }, { 256, 64, 256 } };
    static const char *what[] = { "square", "Winograd GEMM, 64 channels",
                                  "Winograd GEMM, 128 channels", "Winograd GEMM, 256 channels" };
    if (!tsv) {
        printf("OpenBLAS sgemm (core %s), GFLOP/s:\n", openblas_get_corename());
        printf("  %-22s %-40s %8s %14s %14s\n", "M x N x K", "shape", "1 thread", "2 (OpenBLAS)", "2 x 1 thread");
    }
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        char dims[32];
        snprintf(dims, sizeof dims, "%d x %d x %d", shapes[i][0], shapes[i][1], shapes[i][2]);
        double g1 = gemm_gflops(shapes[i][0], shapes[i][1], shapes[i][2], 0);
        double g2 = gemm_gflops(shapes[i][0], shapes[i][1], shapes[i][2], 1);
        double g3 = gemm_gflops(shapes[i][0], shapes[i][1], shapes[i][2], 2);
        if (tsv)
            printf("sgemm\t%s\t%s\t%s\t%.1f\t%.1f\t%.1f\n", openblas_get_corename(), dims, what[i], g1, g2, g3);
        else
            printf("  %-22s %-40s %8.1f %14.1f %14.1f\n", dims, what[i], g1, g2, g3);
        fflush(stdout);
    }
}

/* ---------------- Langevin ---------------- */

typedef struct {
    ld_ebm_arch_t arch;
    ld_ebm_t *m;
    ld_ebm_ws_t *ws;
    int n;
    float *image;
    uint8_t *mask;
    int32_t *target;
    uint64_t *chain;
} setup_t;

static int setup(setup_t *s, const opts_t *o, int size, int batch, int threads)
{
    memset(s, 0, sizeof *s);
    s->arch.image_channels = 3;
    s->arch.mask_classes = 2;
    s->arch.size = size;
    int rc;
    if ((rc = ld_ebm_arch_set_widths(&s->arch, o->widths)) || (rc = ld_ebm_arch_set_domains(&s->arch, "A,B,C")) ||
        (rc = ld_ebm_new(&s->arch, &s->m)) || (rc = ld_ebm_ws_new(&s->arch, batch, threads, &s->ws)))
        return rc;
    ld_ebm_init_random(s->m, 7);
    s->n = batch;
    size_t q = (size_t)size * (size_t)size;
    s->image = malloc((size_t)batch * 3 * q * sizeof(float));
    s->mask = malloc((size_t)batch * q);
    s->target = malloc((size_t)batch * sizeof(int32_t));
    s->chain = malloc((size_t)batch * sizeof(uint64_t));
    if (!s->image || !s->mask || !s->target || !s->chain)
        return ld_seterr(LD_ENOMEM, "out of memory");
    ld_rng_t r;
    ld_rng_init(&r, 3, 0);
    for (size_t i = 0; i < (size_t)batch * 3 * q; i++)
        s->image[i] = (float)(2.0 * ld_rng_uniform(&r) - 1.0);
    for (size_t i = 0; i < (size_t)batch * q; i++)
        s->mask[i] = (uint8_t)((i / (size_t)size / 8 + i % (size_t)size / 8) % 2);
    for (int c = 0; c < batch; c++) {
        s->target[c] = c % 3;
        s->chain[c] = (uint64_t)c;
    }
    return 0;
}

static void teardown(setup_t *s)
{
    ld_ebm_ws_destroy(&s->ws);
    ld_ebm_destroy(&s->m);
    free(s->image);
    free(s->mask);
    free(s->target);
    free(s->chain);
}

/* Returns image-steps/s, or -1 on error. */
/* Steps per ld_langevin_run: --steps, or (0) enough for 32 image-steps per run. */
static int steps_per_run(const opts_t *o, int batch)
{
    if (o->steps > 0)
        return o->steps;
    int k = (WINDOW_IMAGE_STEPS + batch - 1) / batch;
    return k < 2 ? 2 : k;
}

/* Returns the best image-steps/s over the runs (at least MIN_RUNS, and
 * until --seconds have passed), or -1 on error. */
static double langevin_rate(setup_t *s, const opts_t *o)
{
    ld_langevin_params_t p;
    memset(&p, 0, sizeof p);
    p.step_size = 0.01f;
    p.noise = 0.005f;
    p.seed = 1;
    p.steps = 1; /* warm-up */
    if (ld_langevin_run(s->m, s->ws, &p, s->n, s->image, s->mask, s->target, s->chain, NULL, NULL, NULL))
        return -1;
    p.steps = steps_per_run(o, s->n);
    double best = 0, start = now_s();
    for (int runs = 0; runs < MIN_RUNS || now_s() - start < o->seconds; runs++) {
        double t0 = now_s();
        if (ld_langevin_run(s->m, s->ws, &p, s->n, s->image, s->mask, s->target, s->chain, NULL, NULL, NULL))
            return -1;
        double rate = (double)s->n * p.steps / (now_s() - t0);
        best = rate > best ? rate : best;
    }
    return best;
}

static int bench_langevin(const opts_t *o)
{
    if (!o->tsv)
        printf("%5s %6s %8s %16s %10s\n", "S", "batch", "threads", "image-steps/s", "GFLOP/s");
    for (int i = 0; i < o->n_sizes; i++)
        for (int j = 0; j < o->n_batches; j++)
            for (int k = 0; k < o->n_threads; k++) {
                setup_t s;
                int rc = setup(&s, o, o->sizes[i], o->batches[j], o->threads[k]);
                double rate = rc ? -1 : langevin_rate(&s, o);
                if (rate < 0) {
                    fprintf(stderr, "bench_engine: %s: %s\n", ld_strerror(rc ? rc : LD_EINVAL), ld_errdetail());
                    teardown(&s);
                    return 1;
                }
                double gf = rate * ld_ebm_arch_flops(&s.arch) / 1e9;
                if (o->tsv)
                    printf("engine\t%d\t%d\t%d\t%.3f\t%.1f\n", o->sizes[i], o->batches[j], o->threads[k], rate, gf);
                else
                    printf("%5d %6d %8d %16.2f %10.1f\n", o->sizes[i], o->batches[j], o->threads[k], rate, gf);
                fflush(stdout);
                teardown(&s);
            }
    return 0;
}

/* Entries "blocks.B.LAYER.PASS.PART" go into a table (one row per layer,
 * columns fwd/bwd x in/gemm/out); the others are listed on one line. */
static const char *const PARTS[] = { "fwd.in", "fwd.gemm", "fwd.out", "fwd", "bwd.in", "bwd.gemm", "bwd.out", "bwd" };
enum { N_PARTS = 8 };

static void print_profile(const ld_ebm_prof_t *prof, int n, double budget, const opts_t *o, double rate, double wall)
{
    char rows[64][32];
    double cell[64][N_PARTS] = { { 0 } }, total = 0;
    int n_rows = 0;
    printf("Per-layer profile, S=%d batch %d threads %d: %.2f image-steps/s with profiling on; %% of %.2f s x %d "
           "threads (thread-seconds)\n",
           o->prof[0], o->prof[1], o->prof[2], rate, wall, o->prof[2]);
    printf("  other:");
    for (int i = 0; i < n; i++) {
        total += prof[i].seconds;
        const char *name = prof[i].name;
        int part = -1;
        for (int k = 0; k < N_PARTS && part < 0; k++) {
            size_t ln = strlen(name), lp = strlen(PARTS[k]);
            if (strncmp(name, "blocks.", 7) == 0 && ln > lp + 1 && strcmp(name + ln - lp, PARTS[k]) == 0 &&
                name[ln - lp - 1] == '.')
                part = k;
        }
        if (part < 0) {
            printf(" %s %.1f%%", name, 100 * prof[i].seconds / budget);
            continue;
        }
        char layer[32];
        snprintf(layer, sizeof layer, "%.*s", (int)(strlen(name) - strlen(PARTS[part]) - 1), name);
        int r = 0;
        while (r < n_rows && strcmp(rows[r], layer) != 0)
            r++;
        if (r == n_rows && n_rows < 64)
            snprintf(rows[n_rows++], sizeof rows[0], "%s", layer);
        if (r < 64)
            cell[r][part] += prof[i].seconds;
    }
    printf("\n  %-18s", "% of time");
    for (int k = 0; k < N_PARTS; k++)
        printf(" %9s", PARTS[k]);
    printf("\n");
    for (int r = 0; r < n_rows; r++) {
        printf("  %-18s", rows[r]);
        for (int k = 0; k < N_PARTS; k++)
            if (cell[r][k] > 0)
                printf(" %9.1f", 100 * cell[r][k] / budget);
            else
                printf(" %9s", "");
        printf("\n");
    }
    printf("  engine total %.1f%% (the rest: Langevin update and noise, outside the engine)\n", 100 * total / budget);
}

static int bench_profile(const opts_t *o)
{
    setup_t s;
    int rc = setup(&s, o, o->prof[0], o->prof[1], o->prof[2]);
    if (rc) {
        fprintf(stderr, "bench_engine: %s\n", ld_errdetail());
        teardown(&s);
        return 1;
    }
    ld_ebm_ws_set_profiling(s.ws, 1);
    double t0 = now_s();
    double rate = langevin_rate(&s, o);
    double wall = now_s() - t0;
    ld_ebm_prof_t prof[256];
    int n = ld_ebm_ws_profile(s.ws, prof, 256);
    print_profile(prof, n < 256 ? n : 256, wall * o->prof[2], o, rate, wall);
    teardown(&s);
    return 0;
}

static void usage(FILE *f)
{
    fputs("Usage: bench_engine [--sizes 64,128] [--batches 1,8,16] [--threads 1,2] [--widths W0,..,WL]\n"
          "                    [--seconds 4] [--steps K] [--sgemm] [--peak] [--profile S,BATCH,THREADS] [--tsv]\n",
          f);
}

int main(int argc, char **argv)
{
    opts_t o = { .sizes = { 64, 128 }, .n_sizes = 2, .batches = { 1, 8, 16 }, .n_batches = 3,
                 .threads = { 1, 2 }, .n_threads = 2, .widths = "32,64,128,128,256", .seconds = 4, .steps = 0 };
    static const struct option longopts[] = {
        { "sizes", required_argument, NULL, 'S' },   { "batches", required_argument, NULL, 'b' },
        { "threads", required_argument, NULL, 't' }, { "widths", required_argument, NULL, 'w' },
        { "seconds", required_argument, NULL, 's' }, { "steps", required_argument, NULL, 'k' },
        { "sgemm", no_argument, NULL, 'g' },         { "profile", required_argument, NULL, 'p' },
        { "tsv", no_argument, NULL, 'T' },           { "help", no_argument, NULL, 'h' },
        { "peak", no_argument, NULL, 'P' },
        { NULL, 0, NULL, 0 },
    };
    int c, only_extra = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int ok = 1;
        switch (c) {
        case 'S': ok = (o.n_sizes = parse_list(optarg, o.sizes, MAX_LIST)) > 0; break;
        case 'b': ok = (o.n_batches = parse_list(optarg, o.batches, MAX_LIST)) > 0; break;
        case 't': ok = (o.n_threads = parse_list(optarg, o.threads, MAX_LIST)) > 0; break;
        case 'w': o.widths = optarg; break;
        case 's': o.seconds = atof(optarg); ok = o.seconds >= 0; break;
        case 'k': o.steps = atoi(optarg); ok = o.steps >= 0; break;
        case 'g': o.sgemm = 1; only_extra = 1; break;
        case 'P': o.peak = 1; only_extra = 1; break;
        case 'p': ok = parse_list(optarg, o.prof, 3) == 3; o.profile = 1; only_extra = 1; break;
        case 'T': o.tsv = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (!ok) {
            fprintf(stderr, "bench_engine: bad value '%s' for %s\n", optarg, argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    if (o.peak)
        bench_peak(o.tsv);
    if (o.sgemm)
        bench_sgemm(o.tsv);
    if (o.profile && bench_profile(&o))
        return 1;
    if (!only_extra)
        return bench_langevin(&o);
    return 0;
}
