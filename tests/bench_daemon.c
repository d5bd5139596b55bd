/* bench_daemon: how much of the engine's speed langdaugd delivers to one
 * client, and how long the first batch takes after start.
 *
 * For each worker count W of --workers, in the same process run:
 *   engine   W threads, each with its own one-thread workspace, run
 *            ld_langevin_run on --chain-batch chains at a time with the
 *            daemon's Langevin settings (crops extracted beforehand):
 *            samples/s = chains * snapshots / s. Measured before AND after
 *            the daemon phase; the mean is the reference and the spread is
 *            printed, so load from other processes shows.
 *   daemon   build/langdaugd with the same model, dataset, steps, workers
 *            and chain batch on loopback ports; one raw ZeroMQ DEALER client
 *            keeps --credits batches of --batch samples granted (one new
 *            credit per batch received) and drops the pixels. Latency to
 *            the first batch = process start -> first batch received
 *            (loading the model and dataset, binding, first chains);
 *            throughput = samples received in --seconds after the first
 *            --warmup seconds of batches.
 * The model is a small random "resdown" network and the dataset synthetic
 * (ld_synth), both written to a private temporary folder removed at exit.
 * The ratio daemon/engine is the figure of merit (goal >= 95%).
 *
 * Speed is measured here only, never in tests (`make bench`). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "langdaug.pb-c.h"
#include "ld_text.h"
#include "ld_dataset.h"
#include "ld_error.h"
#include "ld_langevin.h"
#include "ld_model.h"
#include "ld_synth.h"
#include "testutil.h"

#define CHANNELS 3
#define MAX_RUNS 8

typedef struct {
    double seconds, warmup;
    int workers[MAX_RUNS], n_runs;
    int batch, chain_batch, credits, size;
    const char *steps, *widths;
    double step_size, noise;
} bench_opts_t;

typedef struct {
    char *dir, *data, *model, *log;
    ld_ebm_t *ebm;
    ld_dataset_t *dataset;
    ld_langevin_params_t params;
} fixture_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_daemon: %s: %s\n", what, ld_errdetail());
    exit(1);
}

/* ------------------------------------------------------------ fixture */

/* dir/name, malloc'ed. (testutil's helpers assert through Check, which
 * only works inside a Check test.) */
static char *join(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0) {
        perror("bench_daemon");
        exit(1);
    }
    return p;
}

static void make_fixture(const bench_opts_t *o, fixture_t *f)
{
    const char *tmp = getenv("TMPDIR");
    f->dir = join(tmp && *tmp ? tmp : "/tmp", "bench_daemon-XXXXXX");
    if (!mkdtemp(f->dir)) {
        perror("bench_daemon: mkdtemp");
        exit(1);
    }
    f->data = join(f->dir, "data");
    f->model = join(f->dir, "model.safetensors");
    f->log = join(f->dir, "daemon.log");
    ld_synth_opts_t so;
    ld_synth_defaults(&so);
    so.n_domains = 2;
    so.per_domain = 4;
    so.size = 96;
    if (ld_synth_write(f->data, &so) < 0)
        die("synthetic dataset");
    ld_ebm_arch_t arch = { .image_channels = CHANNELS, .mask_classes = 2, .size = o->size };
    if (ld_ebm_arch_set_widths(&arch, o->widths) < 0 || ld_ebm_arch_set_domains(&arch, "cam0,cam1") < 0 ||
        ld_ebm_new(&arch, &f->ebm) < 0)
        die("model architecture");
    ld_ebm_init_random(f->ebm, 7);
    if (ld_model_save(f->model, f->ebm, NULL, NULL) < 0)
        die("model file");
    ld_dataset_opts_t dopts = { .root = f->data, .channels = CHANNELS };
    if (ld_dataset_open(&dopts, &f->dataset) < 0)
        die("dataset");
    f->params = (ld_langevin_params_t){ .step_size = (float)o->step_size, .noise = (float)o->noise, .seed = 1 };
    if (ld_langevin_set_snapshots(&f->params, o->steps) < 0)
        die("steps");
    int last = f->params.snapshots[f->params.n_snapshots - 1];
    f->params.steps = last > 0 ? last : 1;
}

static void free_fixture(fixture_t *f)
{
    ld_dataset_destroy(&f->dataset);
    ld_ebm_destroy(&f->ebm);
    ld_test_rmtree(f->dir);
    free(f->dir);
    free(f->data);
    free(f->model);
    free(f->log);
}

/* ------------------------------------------------------------ engine alone */

typedef struct {
    const fixture_t *f;
    int chain_batch, index;
    double deadline;
    long long chains;
} engine_thread_t;

static void *engine_thread(void *arg)
{
    engine_thread_t *t = arg;
    const ld_ebm_arch_t *arch = ld_ebm_arch(t->f->ebm);
    int n = t->chain_batch;
    size_t css = (size_t)arch->image_channels * arch->size * arch->size, ss = (size_t)arch->size * arch->size;
    size_t ns = (size_t)t->f->params.n_snapshots;
    float *crops = malloc((size_t)n * css * sizeof(float)), *start = malloc((size_t)n * css * sizeof(float));
    float *snaps = malloc(ns * n * css * sizeof(float)), *energy = malloc(ns * n * sizeof(float));
    uint8_t *masks = malloc((size_t)n * ss);
    int32_t *target = malloc((size_t)n * sizeof(int32_t));
    uint64_t *ids = malloc((size_t)n * sizeof(uint64_t));
    ld_ebm_ws_t *ws = NULL;
    if (!crops || !start || !snaps || !energy || !masks || !target || !ids ||
        ld_ebm_ws_new(arch, n, 1, &ws) < 0)
        die("engine buffers");
    ld_rng_t rng;
    ld_rng_init(&rng, 11, (uint64_t)t->index);
    for (int i = 0; i < n; i++) {
        ld_crop_t c;
        if (ld_dataset_random_crop(t->f->dataset, 0, -1, arch->size, &rng, &c) < 0 ||
            ld_dataset_extract(t->f->dataset, &c, crops + i * css, masks + i * ss) < 0)
            die("crop");
        target[i] = 1;
    }
    while (now_s() < t->deadline) {
        memcpy(start, crops, (size_t)n * css * sizeof(float));
        for (int i = 0; i < n; i++)
            ids[i] = (uint64_t)t->chains + (uint64_t)i;
        if (ld_langevin_run(t->f->ebm, ws, &t->f->params, n, start, masks, target, ids, snaps, energy, NULL) < 0)
            die("ld_langevin_run");
        t->chains += n;
    }
    ld_ebm_ws_destroy(&ws);
    free(crops);
    free(start);
    free(snaps);
    free(energy);
    free(masks);
    free(target);
    free(ids);
    return NULL;
}

/* Samples per second of `workers` engine threads over `seconds`. */
static double engine_rate(const fixture_t *f, int workers, int chain_batch, double seconds)
{
    engine_thread_t t[64];
    pthread_t th[64];
    double t0 = now_s();
    for (int i = 0; i < workers; i++) {
        t[i] = (engine_thread_t){ .f = f, .chain_batch = chain_batch, .index = i, .deadline = t0 + seconds };
        if (pthread_create(&th[i], NULL, engine_thread, &t[i]) != 0)
            die("pthread_create");
    }
    long long chains = 0;
    for (int i = 0; i < workers; i++) {
        pthread_join(th[i], NULL);
        chains += t[i].chains;
    }
    return (double)chains * f->params.n_snapshots / (now_s() - t0);
}

/* ------------------------------------------------------------ daemon + client */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        perror("bench_daemon: free port");
        exit(1);
    }
    close(fd);
    return ntohs(a.sin_port);
}

static pid_t spawn_daemon(const bench_opts_t *o, const fixture_t *f, int workers, const char *bind,
                          const char *status)
{
    char *exe = join(ld_test_build_dir(), "langdaugd");
    char w[16], cb[16], eta[32], sigma[32];
    snprintf(w, sizeof w, "%d", workers);
    snprintf(cb, sizeof cb, "%d", o->chain_batch);
    snprintf(eta, sizeof eta, "%.9g", o->step_size);
    snprintf(sigma, sizeof sigma, "%.9g", o->noise);
    pid_t pid = fork();
    if (pid < 0) {
        perror("bench_daemon: fork");
        exit(1);
    }
    if (pid == 0) {
        int fd = open(f->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(exe, exe, "--model", f->model, "--data", f->data, "--bind", bind, "--status", status, "--workers", w,
              "--chain-batch", cb, "--steps", o->steps, "--step-size", eta, "--noise", sigma, "--log-level", "warning",
              (char *)NULL);
        _exit(127);
    }
    free(exe);
    return pid;
}

static int stop_daemon(pid_t pid)
{
    kill(pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 300; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        struct timespec ts = { 0, 100000000 };
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

static void send_pull(void *sock, uint32_t credits, uint32_t batch)
{
    Langdaug__V1__PullRequest pull = LANGDAUG__V1__PULL_REQUEST__INIT;
    char *targets[1] = { "cam1" };
    pull.has_credits = 1;
    pull.credits = credits;
    if (batch) {
        pull.has_batch_size = 1;
        pull.batch_size = batch;
        pull.n_targets = 1;
        pull.targets = targets;
    }
    Langdaug__V1__ClientMessage m = LANGDAUG__V1__CLIENT_MESSAGE__INIT;
    m.has_version = 1;
    m.version = 1;
    m.body_case = LANGDAUG__V1__CLIENT_MESSAGE__BODY_PULL;
    m.pull = &pull;
    uint8_t buf[256];
    size_t len = langdaug__v1__client_message__pack(&m, buf);
    if (zmq_send(sock, buf, len, 0) != (int)len)
        die("zmq_send");
}

/* Receives one whole message; returns the samples of a batch, 0 for
 * anything else, -1 on timeout. Errors from the daemon end the bench. */
static int recv_batch(void *sock)
{
    zmq_msg_t part;
    zmq_msg_init(&part);
    if (zmq_msg_recv(&part, sock, 0) < 0) {
        zmq_msg_close(&part);
        return -1;
    }
    Langdaug__V1__ServerMessage *m =
        langdaug__v1__server_message__unpack(NULL, zmq_msg_size(&part), zmq_msg_data(&part));
    int more = zmq_msg_more(&part), n = 0;
    while (more) {
        zmq_msg_close(&part);
        zmq_msg_init(&part);
        zmq_msg_recv(&part, sock, 0);
        more = zmq_msg_more(&part);
    }
    zmq_msg_close(&part);
    if (!m) {
        fprintf(stderr, "bench_daemon: undecodable message from the daemon\n");
        exit(1);
    }
    if (m->body_case == LANGDAUG__V1__SERVER_MESSAGE__BODY_ERROR) {
        fprintf(stderr, "bench_daemon: daemon error: %s\n", m->error->text);
        exit(1);
    }
    if (m->body_case == LANGDAUG__V1__SERVER_MESSAGE__BODY_BATCH)
        n = (int)m->batch->n;
    langdaug__v1__server_message__free_unpacked(m, NULL);
    return n;
}

typedef struct {
    double first_batch_s, rate;
    long long samples;
} daemon_result_t;

static daemon_result_t daemon_run(const bench_opts_t *o, const fixture_t *f, int workers)
{
    char bind[64], status[64];
    snprintf(bind, sizeof bind, "tcp://127.0.0.1:%d", free_port());
    snprintf(status, sizeof status, "tcp://127.0.0.1:%d", free_port());
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, timeout = 30000;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    daemon_result_t r = { 0 };
    double t0 = now_s();
    pid_t pid = spawn_daemon(o, f, workers, bind, status);
    /* ZeroMQ reconnects until the daemon listens; the pull waits in the pipe. */
    zmq_connect(sock, bind);
    send_pull(sock, (uint32_t)o->credits, (uint32_t)o->batch);
    int n;
    while ((n = recv_batch(sock)) == 0)
        ;
    if (n < 0) {
        fprintf(stderr, "bench_daemon: no first batch within %d s; daemon log: %s\n", timeout / 1000, f->log);
        exit(1);
    }
    double t_first = now_s();
    r.first_batch_s = t_first - t0;
    send_pull(sock, 1, 0);
    double start = t_first + o->warmup, end = start + o->seconds, t_start = 0;
    long long samples = 0;
    while ((n = recv_batch(sock)) >= 0) {
        double t = now_s();
        if (n == 0)
            continue;
        send_pull(sock, 1, 0);
        if (t >= start && !t_start)
            t_start = t; /* counting starts after this batch */
        else if (t_start)
            samples += n;
        if (t >= end)
            break;
    }
    if (n < 0 || !t_start) {
        fprintf(stderr, "bench_daemon: the daemon stopped sending; log: %s\n", f->log);
        exit(1);
    }
    r.samples = samples;
    r.rate = (double)samples / (now_s() - t_start);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    if (stop_daemon(pid) != 0)
        fprintf(stderr, "bench_daemon: warning: the daemon did not exit 0 on SIGTERM (log %s)\n", f->log);
    return r;
}

/* ------------------------------------------------------------ command line */

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: bench_daemon [options]\n"
            "Samples/s langdaugd delivers to one client vs the engine alone, and latency to the first batch.\n"
            "  --workers LIST      worker counts to measure, e.g. 1,2 (default 1,2)\n"
            "  --seconds S         measuring time per phase (default 8)\n"
            "  --warmup S          daemon batches not counted after the first one (default 1)\n"
            "  --batch N           client batch size (default 16)\n"
            "  --credits N         client window of credits (default 4)\n"
            "  --chain-batch N     chains per engine call, daemon and engine (default 4)\n"
            "  --steps LIST        snapshot steps (default 5,10,20)\n"
            "  --size S            crop side (default 32)\n"
            "  --widths LIST       model widths (default 16,32)\n"
            "  --step-size X --noise X  Langevin settings (default 0.01, 0.005)\n"
            "Environment: LD_BUILD = build folder holding langdaugd (default build).\n");
}

static int parse_workers(const char *s, bench_opts_t *o)
{
    return ld_text_parse_int_list("--workers", s, 1, 64, o->workers, MAX_RUNS, &o->n_runs);
}

static int parse_args(int argc, char **argv, bench_opts_t *o)
{
    static const struct option longopts[] = {
        { "workers", required_argument, NULL, 'w' }, { "seconds", required_argument, NULL, 's' },
        { "warmup", required_argument, NULL, 'W' },  { "batch", required_argument, NULL, 'b' },
        { "credits", required_argument, NULL, 'c' }, { "chain-batch", required_argument, NULL, 'C' },
        { "steps", required_argument, NULL, 'S' },   { "size", required_argument, NULL, 'z' },
        { "widths", required_argument, NULL, 'd' },  { "step-size", required_argument, NULL, 'e' },
        { "noise", required_argument, NULL, 'n' },   { "help", no_argument, NULL, 'h' },
        { 0 }
    };
    *o = (bench_opts_t){ .seconds = 8, .warmup = 1, .batch = 16, .chain_batch = 4, .credits = 4, .size = 32,
                         .steps = "5,10,20", .widths = "16,32", .step_size = 0.01, .noise = 0.005 };
    parse_workers("1,2", o);
    int c, rc = 0;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 'w': rc = parse_workers(optarg, o); break;
        case 's': rc = ld_text_parse_double("--seconds", optarg, 0.5, 3600, &o->seconds); break;
        case 'W': rc = ld_text_parse_double("--warmup", optarg, 0, 3600, &o->warmup); break;
        case 'b': rc = ld_text_parse_int("--batch", optarg, 1, 4096, &o->batch); break;
        case 'c': rc = ld_text_parse_int("--credits", optarg, 1, 16, &o->credits); break;
        case 'C': rc = ld_text_parse_int("--chain-batch", optarg, 1, 256, &o->chain_batch); break;
        case 'S': o->steps = optarg; break;
        case 'z': rc = ld_text_parse_int("--size", optarg, 4, 1024, &o->size); break;
        case 'd': o->widths = optarg; break;
        case 'e': rc = ld_text_parse_double("--step-size", optarg, 1e-9, 1e6, &o->step_size); break;
        case 'n': rc = ld_text_parse_double("--noise", optarg, 0, 100, &o->noise); break;
        case 'h': usage(stdout); exit(0);
        case ':': rc = ld_seterr(LD_EINVAL, "option '%s' needs a value", argv[optind - 1]); break;
        default: rc = ld_seterr(LD_EINVAL, "unknown option '%s'", argv[optind - 1]); break;
        }
    }
    if (rc == 0 && optind < argc)
        rc = ld_seterr(LD_EINVAL, "unexpected argument '%s'", argv[optind]);
    return rc;
}

int main(int argc, char **argv)
{
    bench_opts_t o;
    if (parse_args(argc, argv, &o) < 0) {
        fprintf(stderr, "bench_daemon: %s\nTry 'bench_daemon --help'.\n", ld_errdetail());
        return 2;
    }
    char *exe = join(ld_test_build_dir(), "langdaugd");
    if (access(exe, X_OK) != 0) {
        fprintf(stderr, "bench_daemon: %s not built\n", exe);
        return 1;
    }
    free(exe);
    printf("command:");
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\nmodel: resdown %dx%dx%d widths %s; steps %s; chain batch %d; client batch %d, %d credits; "
           "%.3g s per phase\n",
           CHANNELS, o.size, o.size, o.widths, o.steps, o.chain_batch, o.batch, o.credits, o.seconds);
    fixture_t f = { 0 };
    make_fixture(&o, &f);
    printf("%-8s %14s %14s %14s %9s %16s\n", "workers", "engine samp/s", "(before/after)", "daemon samp/s",
           "daemon %", "first batch (s)");
    for (int i = 0; i < o.n_runs; i++) {
        int w = o.workers[i];
        double before = engine_rate(&f, w, o.chain_batch, o.seconds);
        daemon_result_t d = daemon_run(&o, &f, w);
        double after = engine_rate(&f, w, o.chain_batch, o.seconds);
        double engine = (before + after) / 2;
        char spread[32];
        snprintf(spread, sizeof spread, "%.0f/%.0f", before, after);
        printf("%-8d %14.1f %14s %14.1f %8.1f%% %16.3f\n", w, engine, spread, d.rate, 100.0 * d.rate / engine,
               d.first_batch_s);
        fflush(stdout);
    }
    free_fixture(&f);
    return 0;
}
