/* test_daemon_samples: what langdaugd streams equals a direct engine run.
 *
 * Starts the real daemon on free loopback ports with a random model and a
 * synthetic dataset written here (ld_synth), pulls batches over ZeroMQ, and
 * for every sample re-extracts the source crop named by its metadata,
 * evaluates the energy with ld_ebm_energy, and re-runs the chain with
 * ld_langevin_run from (crop, target, seed, chain id): masks, step-0
 * images, energies and every snapshot must match. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "langdaug.pb-c.h"
#include "ld_dataset.h"
#include "ld_langevin.h"
#include "ld_model.h"
#include "ld_synth.h"
#include "testutil.h"

#define S 16
#define C 3
#define STEP_SIZE "0.01"
#define NOISE "0.005"

typedef struct {
    char *dir, *data, *model, *log;
    char bind[64], status[64];
    char hash[65];
    pid_t pid;
} fixture_t;

static void make_fixture(fixture_t *f)
{
    f->dir = ld_test_tmpdir();
    f->data = ld_test_path(f->dir, "data");
    f->model = ld_test_path(f->dir, "model.safetensors");
    f->log = ld_test_path(f->dir, "daemon.log");
    ld_synth_opts_t so;
    ld_synth_defaults(&so);
    so.n_domains = 2;
    so.per_domain = 2;
    so.size = 40;
    so.seed = 1;
    ck_assert_int_eq(ld_synth_write(f->data, &so), 0);
    ld_ebm_arch_t arch = { .image_channels = C, .mask_classes = 2, .size = S };
    ck_assert_int_eq(ld_ebm_arch_set_widths(&arch, "4,8"), 0);
    ck_assert_int_eq(ld_ebm_arch_set_domains(&arch, "cam0,cam1"), 0);
    ld_ebm_t *ebm = NULL;
    ck_assert_int_eq(ld_ebm_new(&arch, &ebm), 0);
    ld_ebm_init_random(ebm, 3);
    ck_assert_int_eq(ld_model_save(f->model, ebm, NULL, f->hash), 0);
    ld_ebm_destroy(&ebm);
}

static void start_daemon(fixture_t *f)
{
    snprintf(f->bind, sizeof f->bind, "tcp://127.0.0.1:%d", ld_test_free_port());
    snprintf(f->status, sizeof f->status, "tcp://127.0.0.1:%d", ld_test_free_port());
    char *exe = ld_test_path(ld_test_build_dir(), "langdaugd");
    f->pid = fork();
    ck_assert_int_ge(f->pid, 0);
    if (f->pid == 0) {
        int fd = open(f->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(exe, exe, "--model", f->model, "--data", f->data, "--bind", f->bind, "--status", f->status,
              "--workers", "2", "--chain-batch", "3", "--step-size", STEP_SIZE, "--noise", NOISE, (char *)NULL);
        _exit(127);
    }
    free(exe);
}

/* SIGTERM, then waits at most 20 s; returns the exit status (-1: killed). */
static int stop_daemon(fixture_t *f)
{
    kill(f->pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 200; i++) {
        if (waitpid(f->pid, &status, WNOHANG) == f->pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        struct timespec ts = { 0, 100000000 };
        nanosleep(&ts, NULL);
    }
    kill(f->pid, SIGKILL);
    waitpid(f->pid, &status, 0);
    return -1;
}

static void free_fixture(fixture_t *f)
{
    ld_test_rmtree(f->dir);
    free(f->dir);
    free(f->data);
    free(f->model);
    free(f->log);
}

static void send_pull(void *sock, uint32_t credits, uint32_t batch, const char *source, const char *target,
                      const uint32_t *steps, size_t n_steps, uint64_t seed)
{
    Langdaug__V1__Pair pair = LANGDAUG__V1__PAIR__INIT, *pairs[1] = { &pair };
    pair.source = (char *)source;
    pair.target = (char *)target;
    Langdaug__V1__PullRequest pull = LANGDAUG__V1__PULL_REQUEST__INIT;
    pull.has_credits = pull.has_batch_size = pull.has_seed = 1;
    pull.credits = credits;
    pull.batch_size = batch;
    pull.seed = seed;
    pull.n_pairs = 1;
    pull.pairs = pairs;
    pull.n_steps = n_steps;
    pull.steps = (uint32_t *)steps;
    Langdaug__V1__ClientMessage m = LANGDAUG__V1__CLIENT_MESSAGE__INIT;
    m.has_version = 1;
    m.version = 1;
    m.body_case = LANGDAUG__V1__CLIENT_MESSAGE__BODY_PULL;
    m.pull = &pull;
    uint8_t buf[1024];
    size_t len = langdaug__v1__client_message__pack(&m, buf);
    ck_assert_int_eq(zmq_send(sock, buf, len, 0), (int)len);
}

typedef struct {
    Langdaug__V1__ServerMessage *header;
    float *images;
    uint8_t *masks;
} batch_t;

/* The next batch (heartbeats skipped), within 30 s. */
static void recv_batch(void *sock, batch_t *out)
{
    int timeout = 30000;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    for (;;) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        ck_assert_msg(zmq_msg_recv(&part, sock, 0) >= 0, "no message from the daemon");
        Langdaug__V1__ServerMessage *m =
            langdaug__v1__server_message__unpack(NULL, zmq_msg_size(&part), zmq_msg_data(&part));
        ck_assert_ptr_nonnull(m);
        int more = zmq_msg_more(&part);
        zmq_msg_close(&part);
        if (m->body_case == LANGDAUG__V1__SERVER_MESSAGE__BODY_HEARTBEAT) {
            langdaug__v1__server_message__free_unpacked(m, NULL);
            continue;
        }
        ck_assert_msg(m->body_case == LANGDAUG__V1__SERVER_MESSAGE__BODY_BATCH, "expected a batch, got %s",
                      m->body_case == LANGDAUG__V1__SERVER_MESSAGE__BODY_ERROR ? m->error->text : "other");
        ck_assert(more);
        const Langdaug__V1__Batch *b = m->batch;
        out->header = m;
        out->images = malloc(b->images_bytes);
        out->masks = malloc(b->masks_bytes);
        ck_assert_int_eq(zmq_recv(sock, out->images, b->images_bytes, 0), (int)b->images_bytes);
        ck_assert_int_eq(zmq_recv(sock, out->masks, b->masks_bytes, 0), (int)b->masks_bytes);
        int rcvmore = 0;
        size_t sz = sizeof rcvmore;
        zmq_getsockopt(sock, ZMQ_RCVMORE, &rcvmore, &sz);
        ck_assert_int_eq(rcvmore, 0);
        return;
    }
}

static void free_batch(batch_t *b)
{
    langdaug__v1__server_message__free_unpacked(b->header, NULL);
    free(b->images);
    free(b->masks);
}

START_TEST(test_samples_equal_a_direct_engine_run)
{
    char *exe = ld_test_path(ld_test_build_dir(), "langdaugd");
    int built = access(exe, X_OK) == 0;
    free(exe);
    if (!built)
        LD_SKIP("langdaugd not built");
    fixture_t f = { 0 };
    make_fixture(&f);
    start_daemon(&f);
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    ck_assert_int_eq(zmq_connect(sock, f.bind), 0);
    static const uint32_t steps[] = { 0, 2, 5 };
    send_pull(sock, 2, 7, "cam0", "cam1", steps, 3, 9);

    ld_ebm_t *ebm = NULL;
    char hash[65];
    ck_assert_int_eq(ld_model_load(f.model, &ebm, NULL, hash), 0);
    ck_assert_str_eq(hash, f.hash);
    ld_dataset_opts_t dopts = { .root = f.data, .channels = C };
    ld_dataset_t *ds = NULL;
    ck_assert_int_eq(ld_dataset_open(&dopts, &ds), 0);
    ld_ebm_ws_t *ws = NULL;
    ck_assert_int_eq(ld_ebm_ws_new(ld_ebm_arch(ebm), 1, 1, &ws), 0);
    ld_langevin_params_t lp = { .steps = 5, .seed = 9 };
    lp.step_size = strtof(STEP_SIZE, NULL);
    lp.noise = strtof(NOISE, NULL);
    ck_assert_int_eq(ld_langevin_set_snapshots(&lp, "0,2,5"), 0);
    int target_domain = -1;
    ck_assert(ld_ebm_arch_domain(ld_ebm_arch(ebm), "cam1", &target_domain));
    int32_t target = target_domain;

    const size_t css = (size_t)C * S * S;
    float crop[C * S * S], start[C * S * S], snaps[3 * C * S * S], snap_e[3], energy;
    uint8_t mask[S * S];
    int checked = 0;
    for (int k = 0; k < 2; k++) {
        batch_t b;
        recv_batch(sock, &b);
        const Langdaug__V1__Batch *h = b.header->batch;
        ck_assert_uint_eq(h->n, 7);
        ck_assert_uint_eq(h->channels, C);
        ck_assert_uint_eq(h->size, S);
        ck_assert_uint_eq(h->n_samples, 7);
        for (uint32_t i = 0; i < h->n; i++) {
            const Langdaug__V1__SampleMeta *m = h->samples[i];
            ck_assert_str_eq(m->model_hash, f.hash);
            ck_assert_str_eq(m->source_domain, "cam0");
            ck_assert_str_eq(m->target_domain, "cam1");
            ck_assert_uint_eq(m->seed, 9);
            int source_domain = -1;
            ck_assert(ld_dataset_domain_index(ds, "cam0", &source_domain));
            ld_crop_t c = { .domain = source_domain, .item = (int)m->source_item,
                            .x = m->crop_x, .y = m->crop_y, .size = S };
            ck_assert_str_eq(ld_dataset_item_name(ds, c.domain, c.item), m->source_file);
            ck_assert_int_eq(ld_dataset_extract(ds, &c, crop, mask), 0);
            const float *img = b.images + i * css;
            ck_assert_msg(memcmp(b.masks + i * S * S, mask, sizeof mask) == 0, "sample %u: mask differs", i);
            if (m->step == 0)
                ck_assert_msg(memcmp(img, crop, sizeof crop) == 0, "sample %u: step-0 image is not the crop", i);
            ck_assert_int_eq(ld_ebm_energy(ebm, ws, 1, img, mask, &target, &energy, NULL), 0);
            ck_assert_msg(energy == m->energy, "sample %u: energy %.9g, engine says %.9g", i, m->energy, energy);
            /* the whole chain again, alone in its batch */
            uint64_t id = m->chain_id;
            memcpy(start, crop, sizeof start);
            ck_assert_int_eq(ld_langevin_run(ebm, ws, &lp, 1, start, mask, &target, &id, snaps, snap_e, NULL), 0);
            int snap = m->step == 0 ? 0 : m->step == 2 ? 1 : 2;
            ck_assert_uint_eq(steps[snap], m->step);
            ck_assert_msg(memcmp(img, snaps + snap * css, sizeof crop) == 0, "sample %u: step %u differs from a rerun",
                          i, m->step);
            ck_assert_msg(snap_e[snap] == m->energy, "sample %u: snapshot energy differs", i);
            checked++;
        }
        free_batch(&b);
    }
    ck_assert_int_eq(checked, 14);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    ck_assert_int_eq(stop_daemon(&f), 0);
    ld_ebm_ws_destroy(&ws);
    ld_dataset_destroy(&ds);
    ld_ebm_destroy(&ebm);
    free_fixture(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("daemon_samples");
    TCase *tc = ld_tcase("samples", 120);
    tcase_add_test(tc, test_samples_equal_a_direct_engine_run);
    suite_add_tcase(s, tc);
    return ld_test_run(s);
}
