"""The Python client (langdaug.client.Client) and the PyTorch dataset
(langdaug.torch_data.LangDAugDataset) against the real langdaugd binary.

Each test class starts its own daemon(s) on free 127.0.0.1 ports with a tiny
model written by `langdaug init-model` and a tiny two-domain dataset written
by `langdaug synth` (tests/ldtest.py's Fixture), and stops them; a daemon
also dies with the test process (PR_SET_PDEATHSIG). Every wait is bounded in
time.
"""
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import zmq

from langdaug.client import (Client, LangDAugError, ProtocolError, RequestRejected, parse_pairs, read_key_file,
                             session_seed, status)
from ldtest import (DOMAINS, HERE, SOURCE, STEPS, TARGET, WAIT, C, CurveFixture, Fixture, Hog, K, S,
                    SamplerTestCase, StallWatch, free_port, luminance_change, pb, run_cli)

try:
    import torch
    from torch.utils.data import DataLoader
    from langdaug.torch_data import LangDAugDataset
except ImportError:  # pragma: no cover - Debian's python3-torch is a build dependency
    torch = None


def check_batch(test, b, n, dtype, target=TARGET, steps=STEPS):
    test.assertEqual(b.images.shape, (n, C, S, S))
    test.assertEqual(b.images.dtype, np.dtype(dtype))
    test.assertEqual(b.masks.shape, (n, S, S))
    test.assertEqual(b.masks.dtype, np.uint8)
    x = b.images_float()
    test.assertTrue(np.all(x >= -1) and np.all(x <= 1), "pixels outside [-1, 1]")
    test.assertLess(int(b.masks.max()), K)
    test.assertEqual(len(b.meta), n)
    for m in b.meta:
        test.assertEqual(m["target_domain"], target)
        test.assertIn(m["source_domain"], DOMAINS)
        test.assertNotEqual(m["source_domain"], m["target_domain"])
        test.assertIn(m["step"], steps)
        test.assertTrue(np.isfinite(m["energy"]))


def pull_until_from(test, client, endpoint, counts=None):
    """Takes batches until one comes from `endpoint` (bounded in time)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        b = client.next()
        if counts is not None:
            counts[b.endpoint] = counts.get(b.endpoint, 0) + 1
        if b.endpoint == endpoint:
            return b
    test.fail("no batch from endpoint %d within %.0f s" % (endpoint, WAIT))


class OfflineTest(unittest.TestCase):
    def test_options_are_checked(self):
        for kwargs, word in [(dict(endpoints=[]), "endpoints"), (dict(batch_size=0), "batch_size"),
                             (dict(targets=[""]), "target"), (dict(steps=[4, 2]), "ascending"),
                             (dict(credits=0), "credits"), (dict(dtype="int8"), "dtype"),
                             (dict(endpoints=["nonsense"]), "nonsense"), (dict(pairs=["A"]), "SOURCE:TARGET"),
                             (dict(keep="luma"), "keep")]:
            args = dict(endpoints=["tcp://127.0.0.1:1"], batch_size=4, targets=[TARGET])
            args.update(kwargs)
            with self.assertRaises(ValueError) as cm:
                Client(**args)
            self.assertIn(word, str(cm.exception))

    def test_pairs_parse(self):
        self.assertEqual(parse_pairs(["A:B", ":B:2.5", ("A", "B", 3), {"target": "C"}]),
                         [("A", "B", 1.0), ("", "B", 2.5), ("A", "B", 3.0), ("", "C", 1.0)])
        for bad in ["A:", "A:B:0", "A:B:x", "A:B:1:2"]:
            with self.assertRaises(ValueError):
                parse_pairs([bad])

    def test_session_seeds(self):
        self.assertEqual(session_seed(42, 0, 0), 42)
        seeds = {session_seed(42, e, k) for e in range(8) for k in range(8)}
        self.assertEqual(len(seeds), 64)
        self.assertTrue(all(0 <= s < 2 ** 64 for s in seeds))

    def test_times_out_without_sampler(self):
        ep = "tcp://127.0.0.1:%d" % free_port()
        with Client(ep, 4, targets=[TARGET], timeout=0.3) as c:
            t0 = time.monotonic()
            with self.assertRaises(TimeoutError) as cm:
                c.next()
            took = time.monotonic() - t0
            self.assertTrue(0.25 <= took < 5, took)
            self.assertIn(ep, str(cm.exception))
            self.assertIn("down", str(cm.exception))
            self.assertEqual(c.stats()[0]["state"], "down")
        with self.assertRaises(LangDAugError):
            c.next()


class FakeSampler:
    """A ROUTER socket the test drives by hand, to send what a real daemon never would."""

    def __init__(self, test):
        self.test, self.pb, self.zmq = test, pb, zmq
        self.ctx = zmq.Context()
        test.addCleanup(self.ctx.destroy, 0)
        self.router = self.ctx.socket(zmq.ROUTER)
        test.addCleanup(self.router.close, 0)
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = "tcp://127.0.0.1:%d" % self.port
        self.rid = None

    def receive(self, kind):
        """The next client message of `kind` (heartbeats skipped)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.router.poll(100):
                self.rid, data = self.router.recv_multipart()
                m = self.pb.ClientMessage()
                m.ParseFromString(data)
                if m.WhichOneof("body") != "heartbeat":
                    self.test.assertEqual(m.WhichOneof("body"), kind)
                    return getattr(m, kind)
        self.test.fail("no %s from the client" % kind)

    def received_credits(self):
        """Sum of the credits of the PullRequests waiting, which must carry nothing else."""
        total = 0
        while self.router.poll(0):
            _, data = self.router.recv_multipart()
            m = self.pb.ClientMessage()
            m.ParseFromString(data)
            if m.WhichOneof("body") == "pull":
                self.test.assertFalse(m.pull.HasField("batch_size") or m.pull.targets, "a top-up re-sent the request")
                total += m.pull.credits
        return total

    def send(self, *frames, **body):
        if body:
            frames = (self.pb.ServerMessage(version=1, **body).SerializeToString(),) + frames
        self.router.send_multipart([self.rid] + list(frames))

    def batch(self, n=2, encoding=0, samples=None, mask_classes=K, **fields):
        pb = self.pb
        b = pb.Batch(n=n, channels=C, size=S, encoding=encoding, mask_classes=mask_classes, **fields)
        for i in range(n if samples is None else samples):
            b.samples.add(source_domain="A", target_domain="B", step=2, chain_id=i, seed=9)
        return b


class PackageTest(unittest.TestCase):
    def test_installs_offline_with_debian_python(self):
        """pip installs the package from a copy of client/python with no index and no build isolation."""
        tmp = tempfile.mkdtemp(prefix="langdaug-pip-")
        self.addCleanup(shutil.rmtree, tmp, True)
        src = os.path.join(tmp, "src")
        shutil.copytree(os.path.join(os.path.dirname(HERE), "client", "python"), src,
                        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                            "--disable-pip-version-check", "--target", os.path.join(tmp, "site"), src],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        probe = ("import langdaug, langdaug.client as c, langdaug.torch_data, importlib.metadata as m; "
                 "print(c.__file__); print(c.session_seed(42, 1, 0) == %d); "
                 "print(m.version('langdaug') == langdaug.__version__)" % session_seed(42, 1, 0))
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp,
                           env=dict(os.environ, PYTHONPATH=os.path.join(tmp, "site")))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), [os.path.join(tmp, "site", "langdaug", "client.py"), "True", "True"])

    def test_version_is_the_c_version(self):
        import langdaug
        with open(os.path.join(os.path.dirname(HERE), "common", "ld_version.h")) as f:
            c_version = re.search(r'^#define LD_VERSION "(.*)"$', f.read(), re.M)[1]
        self.assertEqual(langdaug.__version__, c_version)
        self.assertEqual(run_cli("--version", timeout=10).stdout.strip(), "langdaug " + c_version)


class ProtocolTest(unittest.TestCase):
    def test_malformed_messages(self):
        fake = FakeSampler(self)
        pb = fake.pb
        img, mask = np.zeros((2, C, S, S), "<f4").tobytes(), np.ones((2, S, S), "u1").tobytes()
        with Client(fake.endpoint, 2, targets=["B"], timeout=0.2, credits=8) as c:
            with self.assertRaises(TimeoutError):
                c.next()  # sends Hello meanwhile
            fake.receive("hello")
            fake.send(hello=pb.HelloReply(version=1, max_credits=3, idle_timeout_s=60))
            with self.assertRaises(TimeoutError):
                c.next()
            pull = fake.receive("pull")
            self.assertEqual((pull.credits, pull.batch_size, list(pull.targets)), (3, 2, ["B"]))
            cases = [((b"\xff\xff",), {}, "does not decode"),
                     ((img, mask[:-1]), dict(batch=fake.batch()), "masks frame"),
                     ((img[:-4], mask), dict(batch=fake.batch()), "images frame"),
                     ((img, mask), dict(batch=fake.batch(samples=1)), "metadata"),
                     ((img, np.full((2, S, S), K, "u1").tobytes()), dict(batch=fake.batch()), "mask value"),
                     ((img, mask), dict(batch=fake.batch(encoding=pb.ENCODING_UINT8)), "encoding"),
                     ((img,), dict(batch=fake.batch()), "frames"),
                     ((b"x",), dict(heartbeat=pb.Heartbeat()), "extra frames")]
            for frames, body, word in cases:
                fake.send(*frames, **body)
                with self.assertRaises(ProtocolError) as cm:
                    c.next()
                self.assertIn(word, str(cm.exception))
                self.assertIn(fake.endpoint, str(cm.exception))
            fake.send(img, mask, batch=fake.batch())
            b = c.next()  # the client goes on after every error
            self.assertEqual(b.images.shape, (2, C, S, S))
            np.testing.assert_array_equal(b.masks, 1)
            time.sleep(0.2)
            self.assertEqual(fake.received_credits(), 7, "one credit back per batch message received")
            self.assertEqual(c.stats()[0]["errors"], 8)
            fake.send(error=pb.Error(code=pb.ERROR_LIMIT, text="too many"))
            with self.assertRaises(RequestRejected) as cm:
                c.next()
            self.assertEqual((cm.exception.code, cm.exception.text), ("ERROR_LIMIT", "too many"))
            self.assertEqual(c.stats()[0]["state"], "rejected")


class ClientTest(SamplerTestCase):

    def test_pulls_batches(self):
        for dtype in ("float32", "float16", "uint8"):
            with Client(self.sampler.endpoint, 4, targets=[TARGET], steps=[0, 3], dtype=dtype, seed=11,
                        timeout=WAIT) as c:
                prev = None
                for _, b in zip(range(4), c):
                    check_batch(self, b, 4, {"float32": "<f4", "float16": "<f2", "uint8": "u1"}[dtype],
                                steps=[0, 3])
                    self.assertFalse(b.images.flags.owndata, "images should view the received frame")
                    self.assertEqual(b.endpoint, 0)
                    self.assertTrue(all(m["seed"] == 11 for m in b.meta))
                    if prev is not None:
                        self.assertEqual(b.sequence, prev + 1)
                    prev = b.sequence
                st = c.stats()[0]
                self.assertEqual((st["state"], st["batches"], st["samples"], st["sessions"]), ("live", 4, 16, 1))
                self.assertLessEqual(st["outstanding"], st["window"])

    def test_status(self):
        with Client(self.sampler.endpoint, 2, targets=[TARGET], timeout=WAIT, name="status-probe") as c:
            c.next()
            reply = status(self.sampler.status_endpoint, timeout=WAIT)
        self.assertEqual(list(reply.models[0].domains), DOMAINS)
        self.assertIn("status-probe", [cl.name for cl in reply.clients])
        with self.assertRaises(TimeoutError):
            status("tcp://127.0.0.1:%d" % free_port(), timeout=0.2)

    def test_same_seed_same_stream(self):
        def first_batches(seed):
            with Client(self.sampler.endpoint, 2, targets=[TARGET], dtype="uint8", seed=seed, timeout=WAIT) as c:
                return [np.array(b.images) for _, b in zip(range(2), c)]
        a, b, other = first_batches(5), first_batches(5), first_batches(6)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        self.assertFalse(all(np.array_equal(x, y) for x, y in zip(a, other)))

    def test_refused_request(self):
        with Client(self.sampler.endpoint, 4, targets=["no-such-domain"], timeout=WAIT) as c:
            t0 = time.monotonic()
            with self.assertRaises(RequestRejected) as cm:
                c.next()
            self.assertEqual(cm.exception.code, "ERROR_UNKNOWN_DOMAIN")
            self.assertIn(self.sampler.endpoint, str(cm.exception))
            with self.assertRaises(RequestRejected):  # every sampler refused: at once
                c.next()
            self.assertLess(time.monotonic() - t0, WAIT / 2)


class KeepTest(unittest.TestCase):
    """keep= of Client and LangDAugDataset against a daemon whose keep setting is luminance:
    None asks for the daemon's, "none" and "luminance" override it."""

    @classmethod
    def setUpClass(cls):
        cls.fx = Fixture()
        if cls.fx.missing:
            raise unittest.SkipTest(cls.fx.missing)
        cls.sampler = cls.fx.sampler(extra=["--keep", "luminance"])

    @classmethod
    def tearDownClass(cls):
        cls.sampler.stop()
        cls.fx.close()

    def luminance_moved(self, images):
        """Largest L* change of the step-4 samples from their step-0 crops (chains come as pairs)."""
        moved = [luminance_change(images[i], images[i + 1]) for i in range(0, len(images), 2)]
        self.assertGreater(sum(n for _, n, _ in moved), len(moved) * S * S // 2, "too few pixels inside the gamut")
        self.assertGreater(max(dab for _, _, dab in moved), 1e-3, "the chains did not change the colour")
        return max(dl for dl, _, _ in moved)

    def client_images(self, keep):
        with Client(self.sampler.endpoint, 4, targets=[TARGET], steps=[0, 4], seed=3, keep=keep, timeout=WAIT) as c:
            return np.array(c.next().images)

    def test_client(self):
        default, none, luminance = self.client_images(None), self.client_images("none"), self.client_images("luminance")
        self.assertLess(self.luminance_moved(default), 1e-3)
        np.testing.assert_array_equal(default, luminance)
        self.assertGreater(self.luminance_moved(none), 0.01)

    @unittest.skipIf(torch is None, "python3-torch is not installed")
    def test_dataset(self):
        for keep, kept in ((None, True), ("none", False)):
            ds = LangDAugDataset(self.sampler.endpoint, targets=[TARGET], steps=[0, 4], request_batch=4,
                                 num_samples=4, timeout=WAIT, seed=1, keep=keep)
            items = list(ds)
            self.assertEqual([m["step"] for _, _, m in items], [0, 4, 0, 4])
            moved = self.luminance_moved(np.stack([x.numpy() for x, _, _ in items]))
            if kept:
                self.assertLess(moved, 1e-3)
            else:
                self.assertGreater(moved, 0.01)


class MultiSamplerTest(unittest.TestCase):
    def setUp(self):
        self.fx = Fixture()
        if self.fx.missing:
            self.skipTest(self.fx.missing)
        self.addCleanup(self.fx.close)
        self.samplers = [self.fx.sampler(), self.fx.sampler()]
        self.addCleanup(lambda: [s.stop() for s in self.samplers])  # the list as it is at the end

    def test_two_samplers_one_restarted(self):
        eps = [s.endpoint for s in self.samplers]
        with Client(eps, 2, targets=[SOURCE], credits=2, seed=5, timeout=WAIT, heartbeat=0.2, dead=1.0) as c:
            pull_until_from(self, c, 1)
            pull_until_from(self, c, 0)
            port = self.samplers[1].port
            self.samplers[1].stop(signal.SIGKILL)
            from_live = sum(c.next().endpoint == 0 for _ in range(12))
            self.assertGreaterEqual(from_live, 12 - 2 * 2, "the live sampler should carry on alone")
            self.assertEqual(c.stats()[1]["state"], "down")
            self.samplers[1] = self.fx.sampler(port=port)
            pull_until_from(self, c, 1)
            b = pull_until_from(self, c, 1)
            self.assertEqual(b.meta[0]["seed"], session_seed(5, 1, 1))
            st = c.stats()[1]
            self.assertEqual((st["state"], st["sessions"]), ("live", 2))


    def test_faster_sampler_serves_more(self):
        """Each sampler has its own credit window, so a slow one does not hold the fast one back."""
        slow = self.fx.sampler(steps=[0, 400])  # requests without steps get the daemon's default
        self.addCleanup(slow.stop)
        fast = self.samplers[0]
        counts = {0: 0, 1: 0}
        t0 = time.monotonic()
        with Client([slow.endpoint, fast.endpoint], 2, targets=[TARGET], credits=2, timeout=WAIT) as c:
            pull_until_from(self, c, 1, counts)
            for _ in range(40):
                counts[c.next().endpoint] += 1
        self.assertLess(time.monotonic() - t0, WAIT)
        self.assertGreaterEqual(counts[1], 3 * counts[0], counts)

    def test_outlives_session_expiry(self):
        """The caller stops asking for longer than the daemon keeps a session: the client must
        start a new session rather than wait for batches the daemon has forgotten."""
        sampler = self.fx.sampler(extra=["--idle-timeout", "1"])
        self.addCleanup(sampler.stop)
        with Client(sampler.endpoint, 4, targets=[TARGET], timeout=WAIT) as c:
            c.next()
            time.sleep(2.5)
            for _ in range(3 * 4):  # past what the old session had already queued
                c.next()
            self.assertEqual(c.stats()[0]["sessions"], 2)

    def test_heartbeats_keep_a_short_idle_timeout(self):
        """idle_timeout 0.3 s: HelloReply.idle_timeout says so, idle_timeout_s says 1. While next()
        waits with no batch to come (a hog holds the queue memory), heartbeats planned from the
        precise value (one each 0.1 s: checked directly) keep the session; planned from 1 s they
        would come every 333 ms, too late, and the daemon would forget a client that does not notice.
        A stall of about 0.2 s of this process or of the daemon's loop also ends the session, with
        no bug: a round that lost it while a stall was witnessed (tests/stallwatch.py) is run
        again, at most ATTEMPTS rounds in all; one that lost it with no stall witnessed fails."""
        attempts = 3
        witnessed = []
        for attempt in range(1, attempts + 1):
            lost, watch = self._short_idle_round("short-idle-%d" % attempt)
            if not lost:
                return
            if not watch.stalled(0.1):
                self.fail("round %d lost its session (%s) with no stall witnessed: %s" % (attempt, lost, watch))
            witnessed.append("%s (%s)" % (lost, watch))
        self.fail("every round lost its session, each during a stall: " + "; ".join(witnessed))

    def _short_idle_round(self, name):
        """One round of the short idle timeout: (why the session was lost or None, StallWatch)."""
        batch = 32
        sampler = self.fx.sampler(extra=["--idle-timeout", "0.3", "--max-queue-memory", "1",
                                         "--max-credits", "1000"])
        self.addCleanup(sampler.stop)
        hog = Hog(sampler.endpoint, TARGET, batch)
        self.addCleanup(hog.close)
        lost = None
        with StallWatch([sampler.proc.pid]) as watch, \
                Client(sampler.endpoint, batch, targets=[TARGET], steps=[0], timeout=3.0, name=name) as c:
            waited, deadline = False, time.monotonic() + WAIT
            while not waited and time.monotonic() < deadline:
                try:
                    c.next()  # batches come until the hog's fill the queue memory
                except TimeoutError:
                    waited = True
            self.assertTrue(waited, "the hog never held the queue memory: nothing was tested")
            self.assertAlmostEqual(c.heartbeat, 0.1, places=9, msg="heartbeats planned from idle_timeout / 3")
            if name not in [cl.name for cl in status(sampler.status_endpoint, WAIT).clients]:
                lost = "gone from the status while waiting"
            hog.close()
            try:
                c.next()  # the same session is served once the memory is free
            except TimeoutError:
                lost = lost or "no batch once the memory was free"
            st = c.stats()[0]
            if (st["state"], st["sessions"]) != ("live", 1):
                lost = lost or "client state %s after %d sessions" % (st["state"], st["sessions"])
        if "(%s): idle timeout" % name in sampler.log_tail():
            lost = lost or "the daemon logged its idle timeout"
        sampler.stop()
        hog.close()
        return lost, watch


class CurveTest(unittest.TestCase):
    def test_keys(self):
        keys = CurveFixture(self)
        server_pub = read_key_file(keys.server_pub)
        self.assertEqual(server_pub, keys.server.public)
        ep = keys.sampler.endpoint
        with Client(ep, 2, targets=[TARGET], timeout=WAIT, curve_server_key=server_pub,
                    curve_secret_key=read_key_file(keys.client_sec)) as c:
            check_batch(self, c.next(), 2, "<f4")
        reply = status(keys.sampler.status_endpoint, WAIT, curve_server_key=server_pub,
                       curve_secret_key=keys.client.secret)
        self.assertEqual(list(reply.models[0].domains), DOMAINS)
        for kwargs, word in [(dict(curve_server_key=server_pub, curve_secret_key=keys.other.secret),
                              "refused our CURVE key"),
                             ({}, "security handshake failed")]:
            with Client(ep, 2, targets=[TARGET], timeout=1.5, **kwargs) as c:
                with self.assertRaises(TimeoutError) as cm:
                    c.next()
                self.assertIn(word, str(cm.exception))
        with self.assertRaises(TimeoutError):
            status(keys.sampler.status_endpoint, 0.5, curve_server_key=server_pub,
                   curve_secret_key=keys.other.secret)
        for kwargs, word in [(dict(curve_server_key=server_pub), "secret key"),
                             (dict(curve_server_key=b"x" * 39, curve_secret_key=keys.client.secret),
                              "curve_server_key")]:
            with self.assertRaises(ValueError) as cm:
                Client(ep, 2, targets=[TARGET], **kwargs)
            self.assertIn(word, str(cm.exception))
        with open(os.path.join(self.fx.dir, "bad.pub"), "w") as f:
            f.write("# no key\n")
        with self.assertRaises(ValueError):
            read_key_file(os.path.join(self.fx.dir, "bad.pub"))


@unittest.skipIf(torch is None, "python3-torch is not installed")
class TorchModelTest(unittest.TestCase):
    """A model made by langdaug.torch.EBM is served by the daemon, whose energies match PyTorch's."""

    def test_energies_match(self):
        from langdaug.torch import EBM
        fx = Fixture()
        if fx.missing:
            self.skipTest(fx.missing)
        self.addCleanup(fx.close)
        torch.manual_seed(0)
        ebm = EBM(C, K, S, [4, 8], DOMAINS)
        with torch.no_grad():  # sizeable energies, so that a wrong tensor would show
            for p in ebm.parameters():
                p.mul_(3.0)
        path = os.path.join(fx.dir, "torch.safetensors")
        ebm.save_safetensors(path)
        sampler = fx.sampler(model=path)
        self.addCleanup(sampler.stop)
        with Client(sampler.endpoint, 6, pairs=[(SOURCE, TARGET), (TARGET, SOURCE)], steps=[0, 3],
                    seed=4, timeout=WAIT) as c:
            batches = [c.next() for _ in range(2)]
        images = torch.from_numpy(np.concatenate([b.images for b in batches]))
        masks = torch.from_numpy(np.concatenate([b.masks for b in batches]))
        meta = [m for b in batches for m in b.meta]
        target = torch.tensor([DOMAINS.index(m["target_domain"]) for m in meta])
        with torch.no_grad():
            want = ebm(images, masks, target).double().numpy()
        got = np.array([m["energy"] for m in meta])
        self.assertEqual({m["step"] for m in meta}, {0, 3})
        self.assertEqual({m["target_domain"] for m in meta}, set(DOMAINS))
        self.assertGreater(np.ptp(want), 1e-3, "energies too alike to tell anything")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@unittest.skipIf(torch is None, "python3-torch is not installed")
class DatasetTest(SamplerTestCase):

    def dataset(self, **kw):
        args = dict(targets=[TARGET], request_batch=4, timeout=WAIT, seed=77)
        args.update(kw)
        return LangDAugDataset(self.sampler.endpoint, **args)

    def test_two_workers(self):
        ds = self.dataset(num_samples=32)
        loader = DataLoader(ds, batch_size=4, num_workers=2, timeout=WAIT)
        samples, chains_by_seed = set(), {}
        n = 0
        for x, y, meta in loader:
            self.assertEqual(x.shape, (4, C, S, S))
            self.assertEqual(x.dtype, torch.float32)
            self.assertTrue(bool((x >= -1).all() and (x <= 1).all()))
            self.assertEqual(y.shape, (4, S, S))
            self.assertEqual(y.dtype, torch.int64)
            self.assertLess(int(y.max()), K)
            self.assertTrue(all(t == TARGET for t in meta["target_domain"]))
            for seed, chain, step in zip(meta["seed"].tolist(), meta["chain_id"].tolist(), meta["step"].tolist()):
                key = (seed, chain, step)
                self.assertNotIn(key, samples, "a sample was served twice")
                samples.add(key)
                chains_by_seed.setdefault(seed, set()).add(chain)
            n += len(x)
        self.assertEqual(n, 32)
        # one stream per worker; a chain is (seed, chain_id), so the workers' chains never collide
        self.assertEqual(len(chains_by_seed), 2)
        self.assertNotIn(77, chains_by_seed)
        self.assertEqual(ds.state_dict()["samples"], 0)  # the iteration completed

    def test_state_dict_resume(self):
        ds = self.dataset(num_samples=48)
        loader = DataLoader(ds, batch_size=4, num_workers=2, timeout=WAIT)
        first = set()
        for i, (_, _, meta) in enumerate(loader):
            first.update(zip(meta["seed"].tolist(), meta["chain_id"].tolist()))
            if i == 1:
                break
        state = ds.state_dict()
        self.assertEqual(state["seed"], 77)
        self.assertTrue(8 <= state["samples"] < 48, state)
        del loader

        resumed = self.dataset(num_samples=48, seed=None)
        resumed.load_state_dict(state)
        self.assertEqual(resumed.seed, 77)
        n, later = 0, set()
        for x, _, meta in DataLoader(resumed, batch_size=2, num_workers=2, timeout=WAIT):
            n += len(x)
            later.update(zip(meta["seed"].tolist(), meta["chain_id"].tolist()))
        self.assertEqual(n, 48 - state["samples"])
        self.assertFalse(first & later, "a resumed run must not replay chains")
        after = resumed.state_dict()
        self.assertEqual((after["generation"], after["samples"]), (state["generation"] + 1, 0))

    def test_single_process(self):
        ds = self.dataset(num_samples=6)
        items = list(ds)
        self.assertEqual(len(items), 6)
        image, mask, meta = items[0]
        self.assertEqual(tuple(image.shape), (C, S, S))
        self.assertEqual(tuple(mask.shape), (S, S))
        self.assertEqual(meta["target_domain"], TARGET)
        self.assertEqual(ds.state_dict()["samples"], 0)


if __name__ == "__main__":
    unittest.main()
