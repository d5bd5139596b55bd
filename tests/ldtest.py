"""The one fixture module of the Python test suites: every tests/test_*.py (and
tests/soak.py) takes what it shares with another from here (tests/run runs the
suites with cwd tests/, so `import ldtest` works). In it:

- where the built programs are; running the CLI and the daemon's command line
  with a bounded wait; a free 127.0.0.1 port; WAIT, the bound of any one wait;
- pb, the generated protobuf classes, and a raw data-socket client's helpers
  (cmsg, pull, recv_msg, recv_batch, expect_error, nothing_within);
- Daemon, the one way a test starts langdaugd: a config file written for it,
  free loopback ports, an optional wrapper command (valgrind), waiting until it
  answers, a stop with bounded waits, death with the test process, its output
  in a log file, its environment;
- the model and data fixtures: a random model and a tiny dataset written here
  (write_model, write_dataset; DaemonTestCase), a model and dataset that
  `langdaug init-model` and `langdaug synth` make (Fixture, SamplerTestCase),
  and a three-domain synth set for trained models (SynthData);
- CURVE keys and daemons that need them (CurveTestCase, CurveFixture),
  Prometheus parsing and scraping, an sRGB -> CIE LAB check of luminance,
  model metadata, interrupting a command, and a client that fills a daemon's
  queue memory (Hog).
"""
import ctypes
import hashlib
import http.client
import importlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import numpy as np
import zmq

import stallwatch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("LD_BUILD", os.path.join(ROOT, "build"))
DAEMON = os.path.join(BUILD, "langdaugd")
CLI = os.environ.get("LD_CLI", os.path.join(BUILD, "langdaug"))
WAIT = 20.0  # seconds any single expected event may take
StallWatch = stallwatch.StallWatch  # shared from here like the rest; tests/stallwatch.py stays a file of its own


def load_pb2():
    """The generated classes: from the package if built, else from protoc."""
    try:
        return importlib.import_module("langdaug.langdaug_pb2")
    except ImportError:
        pass
    out = tempfile.mkdtemp(prefix="ldpb-")
    subprocess.run(["protoc", "--python_out=" + out, "-I" + os.path.join(ROOT, "proto"), "langdaug.proto"],
                   check=True)
    sys.path.insert(0, out)
    return importlib.import_module("langdaug_pb2")


pb = load_pb2()

# ---------------------------------------------------------------- running programs


def run_cli(*args, timeout):
    """Runs `langdaug ARGS` (each argument str()'ed) and returns the
    CompletedProcess with text stdout and stderr."""
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def run_cli_ok(*args, timeout=120):
    """run_cli that raises AssertionError with the command's stderr unless it exits 0."""
    r = run_cli(*args, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError("langdaug %s failed: %s" % (" ".join(map(str, args)), r.stderr))
    return r


def run_daemon(*args, timeout=WAIT):
    """Runs `langdaugd ARGS` to its end (--print-config, a refused command line) as run_cli does."""
    return subprocess.run([DAEMON, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def interrupt_when(proc, ready, timeout):
    """Waits (at most timeout seconds) until ready() is true or proc has
    ended, sends SIGINT, and waits (again at most timeout seconds) for proc
    to exit. Returns (whether ready() was true when SIGINT was sent, proc's
    stderr). proc must have been started with stderr=subprocess.PIPE; it is
    killed if anything goes wrong."""
    try:
        deadline = time.monotonic() + timeout
        while True:
            was_ready = ready()
            if was_ready or proc.poll() is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=timeout)
        return was_ready, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- model files

def safetensors_meta(path):
    """The __metadata__ of a safetensors file (model or checkpoint)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))["__metadata__"]


def write_with_meta(src, dst, **changes):
    """A copy of model file src with metadata keys changed (None = removed);
    keys with dots or dashes go through a dict: **{"train.pairs": "A:B"}."""
    with open(src, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    for k, v in changes.items():
        if v is None:
            header["__metadata__"].pop(k, None)
        else:
            header["__metadata__"][k] = v
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data[8 + n:])


# ---------------------------------------------------------------- fixtures: what the models are

C, K, S = 3, 2, 16     # image channels, mask classes and size of both fixtures' models
WIDTHS = [4, 8]
RANDOM_DOMAINS = ["A", "B"]  # of write_model's random model and write_dataset's set
DOMAINS = ["cam0", "cam1"]   # `langdaug synth`'s names: the domains of Fixture
SOURCE, TARGET = DOMAINS
STEPS = [0, 2, 4]      # the snapshots every Daemon serves by default
LANGEVIN = ("--step-size", "0.01", "--noise", "0.005")  # explicit, so that tests do not depend on auto


def arch_tensors(rng, scale=0.3):
    """Parameters in the PyTorch state_dict order of common/ld_ebm.h."""
    t = [("stem.weight", (WIDTHS[0], C + K, 1, 1)), ("stem.bias", (WIDTHS[0],))]
    for i in range(len(WIDTHS) - 1):
        a, b = WIDTHS[i], WIDTHS[i + 1]
        t += [(f"blocks.{i}.conv1.weight", (b, a, 3, 3)), (f"blocks.{i}.conv1.bias", (b,)),
              (f"blocks.{i}.conv2.weight", (b, b, 3, 3)), (f"blocks.{i}.conv2.bias", (b,)),
              (f"blocks.{i}.skip.weight", (b, a, 1, 1)), (f"blocks.{i}.skip.bias", (b,))]
    t += [("head.weight", (1, WIDTHS[-1])), ("head.bias", (1,)),
          ("domain_embed.weight", (len(RANDOM_DOMAINS), WIDTHS[-1]))]
    return [(name, shape, (rng.standard_normal(shape) * scale).astype("<f4")) for name, shape in t]


def write_model(path, seed, meta=None):
    """A random model (weights fixed by seed) in the model-file format of
    common/ld_model.h; meta adds metadata keys, e.g. {"train.step-size": "5"},
    as `langdaug train` writes them. Returns its sha256."""
    rng = np.random.default_rng(seed)
    header, blobs, off = {}, [], 0
    for name, shape, arr in arch_tensors(rng):
        b = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "langdaug-ebm", "version": "1", "arch": "resdown",
                              "image_channels": str(C), "mask_classes": str(K), "size": str(S),
                              "widths": ",".join(map(str, WIDTHS)), "domains": ",".join(RANDOM_DOMAINS),
                              **(meta or {})}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    data = struct.pack("<Q", len(h)) + h + b"".join(blobs)
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def write_dataset(root, seed):
    """Two domains (RANDOM_DOMAINS) of three RGB images (24x20, 20x24, 16x16) with 0/255 masks."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    sizes = [(24, 20), (20, 24), (16, 16)]
    for d, dom in enumerate(RANDOM_DOMAINS):
        os.makedirs(os.path.join(root, dom, "image"))
        os.makedirs(os.path.join(root, dom, "mask"))
        for i, (w, h) in enumerate(sizes):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img[..., d] //= 2  # a per-domain colour cast
            mask = np.where(rng.random((h, w)) < 0.4, 255, 0).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, dom, "image", f"img{i}.png"))
            Image.fromarray(mask).save(os.path.join(root, dom, "mask", f"img{i}.png"))


def reference_crop(root, domain, name, x, y):
    """The crop the daemon should have started from: image as 2v/255-1,
    mask class ids (0:0,*:1), pixels outside read as -1 / class 0.
    name is the image path relative to the domain folder (image/x.png)."""
    from PIL import Image
    img = np.asarray(Image.open(os.path.join(root, domain, name)).convert("RGB"), dtype=np.float32)
    mask_name = os.path.join("mask", os.path.basename(name))
    mask = np.asarray(Image.open(os.path.join(root, domain, mask_name)))
    h, w = mask.shape
    out_img = np.full((C, S, S), -1.0, np.float32)
    out_mask = np.zeros((S, S), np.uint8)
    for yy in range(S):
        for xx in range(S):
            sy, sx = y + yy, x + xx
            if 0 <= sy < h and 0 <= sx < w:
                out_img[:, yy, xx] = img[sy, sx, :] * np.float32(2.0 / 255.0) - 1.0
                out_mask[yy, xx] = 1 if mask[sy, sx] != 0 else 0
    return out_img, out_mask


# ---------------------------------------------------------------- a raw client of the data socket

def cmsg(**kw):
    """A serialized ClientMessage with the given body fields (version 1 unless version=)."""
    m = pb.ClientMessage(version=kw.pop("version", 1))
    for k, v in kw.items():
        getattr(m, k).CopyFrom(v)
    return m.SerializeToString()


def pull(sock, **kw):
    sock.send(cmsg(pull=pb.PullRequest(**kw)))


def recv_msg(sock, timeout=WAIT):
    """Next ServerMessage (heartbeats skipped) and its extra frames."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            raise AssertionError("no message within %.0f s" % timeout)
        frames = sock.recv_multipart()
        m = pb.ServerMessage()
        m.ParseFromString(frames[0])
        if m.WhichOneof("body") != "heartbeat":
            return m, frames[1:]


DTYPES = {pb.ENCODING_FLOAT32: np.float32, pb.ENCODING_FLOAT16: np.float16, pb.ENCODING_UINT8: np.uint8}


def recv_batch(sock, timeout=WAIT):
    """The next Batch and its images [n,C,S,S] and masks [n,S,S] (AssertionError if something else comes)."""
    m, extra = recv_msg(sock, timeout)
    if m.WhichOneof("body") != "batch":
        raise AssertionError("expected a batch, got %s" % m)
    b = m.batch
    assert len(extra) == 2, "a batch has exactly two pixel frames"
    assert len(extra[0]) == b.images_bytes and len(extra[1]) == b.masks_bytes
    images = np.frombuffer(extra[0], dtype=DTYPES[b.encoding]).reshape(b.n, b.channels, b.size, b.size)
    masks = np.frombuffer(extra[1], dtype=np.uint8).reshape(b.n, b.size, b.size)
    return b, images, masks


def expect_error(sock, code, timeout=WAIT):
    """The text of the next message, which must be an Error of `code`."""
    m, _ = recv_msg(sock, timeout)
    assert m.WhichOneof("body") == "error", "expected an error, got %s" % m
    assert m.error.code == code, "expected code %d, got %d (%s)" % (code, m.error.code, m.error.text)
    return m.error.text


def nothing_within(sock, seconds):
    """True if no non-heartbeat message arrives within `seconds`."""
    try:
        recv_msg(sock, seconds)
        return False
    except AssertionError:
        return True


# ---------------------------------------------------------------- the daemon

# Looked up here, not in the forked child, which should call no more than prctl itself.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """preexec_fn: the daemon gets SIGKILL when the thread that started it ends,
    so that a test process killed by a timeout leaves no daemon behind."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _daemon_env(env):
    """This process's environment without NOTIFY_SOCKET (a test daemon must not notify the
    runner's systemd; a test of the protocol sets its own), plus env."""
    full = dict(os.environ)
    full.pop("NOTIFY_SOCKET", None)
    full.update(env or {})
    return full


class Daemon:
    """A langdaugd process on free 127.0.0.1 ports: data socket `endpoint` (port),
    status socket `status_endpoint` (status_port). Started at once and not waited
    for (ready() waits); stop() always ends it; it also dies with the thread that
    started it. Its output goes to log_path (a fresh file in workdir).

    model: the first --model (None: none on the command line); data: --data.
    extra: more options, last (a repeated option wins, a repeated --model adds one).
    config: [(key, value)] written to a config file in workdir (--config), which
    configure() rewrites (before a reload). langevin: the step size and noise
    options (() = the config's or auto). steps: the default snapshots.
    drain_timeout: seconds; log_level: None = the daemon's default.
    port: the data port (to restart a daemon where it was). wrapper: a command
    the daemon runs under (valgrind and its options). env: variables added to
    this process's (NOTIFY_SOCKET is always removed first: a test sets its own).
    curve: (server Keys, client Keys) of a daemon that needs CURVE: status() and
    client() then use the client's keys unless told otherwise."""

    def __init__(self, workdir, model, data, extra=(), env=None, config=None, langevin=LANGEVIN, steps=STEPS,
                 drain_timeout=5, log_level="debug", port=None, wrapper=(), curve=None):
        self.port, self.status_port = port or free_port(), free_port()
        self.endpoint = "tcp://127.0.0.1:%d" % self.port
        self.status_endpoint = "tcp://127.0.0.1:%d" % self.status_port
        self.server_keys, self.client_keys = curve or (None, None)
        fd, self.log_path = tempfile.mkstemp(prefix="daemon-%d-" % self.port, suffix=".log", dir=workdir)
        args = [*wrapper, DAEMON, "--bind", self.endpoint, "--status", self.status_endpoint, "--data", data,
                "--workers", "1", "--chain-batch", "2", "--steps", ",".join(map(str, steps)), *langevin,
                "--drain-timeout", str(drain_timeout)]
        if log_level:
            args += ["--log-level", log_level]
        if config is not None:
            self.config_path = self.log_path[:-len(".log")] + ".conf"
            self.configure(config)
            args += ["--config", self.config_path]
        args += (["--model", model] if model else []) + list(extra)
        with os.fdopen(fd, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_daemon_env(env),
                                         preexec_fn=_die_with_parent)
        self.ctx = zmq.Context()

    def configure(self, entries):
        """(Re)writes the config file: one `key = value` line per (key, value), in order."""
        with open(self.config_path, "w") as f:
            f.write("".join("%s = %s\n" % (k, v) for k, v in entries))

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def log_tail(self, chars=3000):
        """The end of the log, short enough for a failure message."""
        return self.log_text()[-chars:]

    def secure(self, sock, keys, server_public=None):
        """sock with the CURVE client keys `keys` (Keys; None: plain) and the daemon's server key
        (or server_public)."""
        if keys is not None:
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
            sock.curve_serverkey = server_public or self.server_keys.public
        return sock

    def status(self, timeout=WAIT, keys=None):
        """One status round trip (a fresh REQ socket each try; keys: as secure(), default the client's)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.secure(self.ctx.socket(zmq.REQ), keys or self.client_keys)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(self.status_endpoint)
            s.send(pb.StatusRequest(version=1).SerializeToString())
            if s.poll(500):
                r = pb.StatusReply()
                r.ParseFromString(s.recv())
                s.close()
                return r
            s.close()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("no status reply; daemon log:\n" + self.log_text())

    def ready(self, timeout=WAIT):
        """Waits until the daemon answers a status request; returns self."""
        self.status(timeout)
        return self

    def client(self, keys="default", server_public=None):
        """A DEALER connected to the data socket (keys: as secure(); "default": the client's)."""
        d = self.ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        self.secure(d, self.client_keys if keys == "default" else keys, server_public)
        d.connect(self.endpoint)
        return d

    def reload(self, expect):
        """Sends SIGHUP, waits (bounded) for the reload to end, i.e. for its "reload ok|failed" log
        line, and returns the status then; AssertionError unless its last_reload starts with
        expect ("ok" or "failed")."""
        def reloads():
            return len(re.findall(r"\breload (?:ok|failed)\b", self.log_text()))
        before = reloads()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT
        while reloads() == before:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("the reload did not end; log:\n" + self.log_text())
            time.sleep(0.05)
        st = self.status()
        if not st.last_reload.startswith(expect):
            raise AssertionError("reload '%s', expected %s; log:\n%s" % (st.last_reload, expect, self.log_text()))
        return st

    def hello(self):
        """The HelloReply to a Hello from a fresh client."""
        c = self.client()
        c.send(cmsg(hello=pb.Hello(min_version=1, max_version=1, client_name="test-hello")))
        m, _ = recv_msg(c)
        c.close()
        if m.WhichOneof("body") != "hello":
            raise AssertionError("expected a HelloReply, got %s" % m)
        return m.hello

    def stop(self, sig=signal.SIGTERM, timeout=WAIT):
        """Signals the daemon and returns its exit status; one still running after timeout
        seconds is killed and AssertionError raised."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                    raise AssertionError("daemon did not stop; log:\n" + self.log_text())
            return self.proc.returncode
        finally:
            self.ctx.destroy(linger=0)


def sampler_daemon(workdir, model, data, **kw):
    """A Daemon as the client suites start it: the daemon's default log level (their checks read
    the end of the log) and a 2 s drain."""
    return Daemon(workdir, model, data, **{"drain_timeout": 2, "log_level": None, **kw})


# ---------------------------------------------------------------- test cases of the daemon suites

@unittest.skipUnless(os.access(DAEMON, os.X_OK), "langdaugd not built")
class DaemonTestCase(unittest.TestCase):
    """Daemons on write_model's random model (cls.model, sha256 cls.model_hash) and
    write_dataset's set (cls.data), in cls.tmp. tearDown kills what is still running
    and fails on a sanitizer report in any daemon's log."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="langdaugd-test-")
        cls.data = os.path.join(cls.tmp, "data")
        write_dataset(cls.data, seed=1)
        cls.model = os.path.join(cls.tmp, "model.safetensors")
        cls.model_hash = write_model(cls.model, seed=2)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            if d.proc.poll() is None:
                d.stop(signal.SIGKILL)
            d.ctx.destroy(linger=0)
            log = d.log_text()
            self.assertNotIn("Sanitizer", log, log)
            self.assertNotIn("runtime error:", log, log)

    def launch(self, **kw):
        """A Daemon on cls.model (unless model=) and cls.data, ended by tearDown; not waited for."""
        kw.setdefault("model", self.model)
        d = Daemon(self.tmp, data=self.data, **kw)
        self.daemons.append(d)
        return d

    def start(self, timeout=WAIT, **kw):
        """launch(), then wait (at most timeout seconds) until the daemon answers."""
        return self.launch(**kw).ready(timeout)

    def refused(self, what, **kw):
        """launch() of a daemon that must refuse to start: it is waited for (at most WAIT seconds;
        if it is still running the test fails, saying it started `what`) and returned."""
        d = self.launch(**kw)
        try:
            d.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.fail("the daemon started%s; log:\n%s" % (what and " " + what, d.log_text()))
        return d


@unittest.skipUnless(os.access(CLI, os.X_OK) and os.access(DAEMON, os.X_OK), "langdaug / langdaugd not built")
class SynthData(DaemonTestCase):
    """Daemon tests on a `langdaug synth` set (cls.data) of DOMAINS, two 32x32 images each."""

    DOMAINS = ["cam0", "cam1", "cam2"]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data = os.path.join(cls.tmp, "synth")
        run_cli_ok("synth", "--out", cls.data, "--domains", len(cls.DOMAINS), "--per-domain", "2", "--size", "32")


def pull_batch(d, seed, steps, n_chains=4, **kw):
    """One batch of n_chains chains (a fresh client): (Batch, images, masks), the arrays copied."""
    c = d.client()
    pull(c, credits=1, batch_size=n_chains * len(steps), steps=steps, seed=seed, **kw)
    b, images, masks = recv_batch(c)
    c.close()
    return b, images.copy(), masks.copy()


def chains(batch, images, masks, n_steps):
    """Per chain (in batch order): {step: (image, mask, meta)}; samples come
    chain by chain, each chain's snapshots in step order."""
    out = []
    for i in range(0, batch.n, n_steps):
        out.append({batch.samples[i + k].step: (images[i + k], masks[i + k], batch.samples[i + k])
                    for k in range(n_steps)})
    return out


# ---------------------------------------------------------------- test cases of the client suites

class Fixture:
    """Temporary folder with a model (`langdaug init-model`: C, K, S, widths 4,8, DOMAINS) and a
    dataset (`langdaug synth`: two 32x32 images per domain); `missing` says why tests must skip."""

    def __init__(self):
        self.missing = None
        for path in (DAEMON, CLI):
            if not os.access(path, os.X_OK):
                self.missing = "%s is not built yet" % path
                return
        self.dir = tempfile.mkdtemp(prefix="langdaug-client-test-")
        self.model = os.path.join(self.dir, "m.safetensors")
        self.data = os.path.join(self.dir, "data")
        run_cli_ok("init-model", "--out", self.model, "--size", S, "--widths", "4,8", "--domains", ",".join(DOMAINS),
                   "--mask-classes", K, "--image-channels", C, "--seed", 3, timeout=60)
        run_cli_ok("synth", "--out", self.data, "--domains", 2, "--per-domain", 2, "--size", 32, "--seed", 7,
                   timeout=60)

    def sampler(self, model=None, **kw):
        """A sampler_daemon on this model (or model) and dataset; the caller stops it."""
        return sampler_daemon(self.dir, model or self.model, self.data, **kw)

    def close(self):
        if not self.missing:
            shutil.rmtree(self.dir, ignore_errors=True)


class SamplerTestCase(unittest.TestCase):
    """Base of test classes that share one daemon (self.sampler) and fixture (self.fx)."""

    skip_reason = None

    @classmethod
    def setUpClass(cls):
        # a reason to skip is given to each test (setUp), so that tests/run counts them as skipped
        cls.fx = cls.sampler = None
        if cls.skip_reason is None:
            cls.fx = Fixture()
            cls.skip_reason = cls.fx.missing
        if cls.skip_reason is None:
            cls.sampler = cls.fx.sampler()

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.sampler:
                cls.sampler.stop()
        finally:
            if cls.fx:
                cls.fx.close()

    def setUp(self):
        if self.skip_reason:
            self.skipTest(self.skip_reason)


# ---------------------------------------------------------------- CURVE

class Keys:
    """A fresh CURVE key pair (public, secret: Z85 bytes)."""

    def __init__(self):
        self.public, self.secret = zmq.curve_keypair()


def write_key(path, z85, secret=False):
    """A key file as `langdaug keygen` writes it (common/ld_curvekey.h: comment line + key)."""
    with open(path, "w") as f:
        f.write("# %s key\n%s\n" % ("secret" if secret else "public", z85.decode()))
    os.chmod(path, 0o600 if secret else 0o644)


@unittest.skipUnless(os.access(DAEMON, os.X_OK), "langdaugd not built")
@unittest.skipUnless(zmq.has("curve"), "libzmq without CURVE")
class CurveTestCase(DaemonTestCase):
    """Keys server, alice and bob; a fresh allowed-keys folder per test with alice's key only;
    start_curve() starts a daemon that needs CURVE and serves alice by default."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server, cls.alice, cls.bob = Keys(), Keys(), Keys()
        cls.server_key = os.path.join(cls.tmp, "server.key")
        write_key(cls.server_key, cls.server.secret, secret=True)

    def setUp(self):
        super().setUp()
        self.allowed = tempfile.mkdtemp(prefix="allowed-", dir=self.tmp)
        write_key(os.path.join(self.allowed, "alice.pub"), self.alice.public)
        with open(os.path.join(self.allowed, "README"), "w") as f:
            f.write("files other than *.pub are ignored\n")

    def tearDown(self):
        super().tearDown()
        shutil.rmtree(self.allowed, ignore_errors=True)

    def start_curve(self, extra=()):
        return self.start(curve=(self.server, self.alice),
                          extra=["--curve-secret-key-file", self.server_key,
                                 "--curve-allowed-keys-dir", self.allowed, *extra])

    def wait_log(self, d, pattern, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, d.log_text())
            if m:
                return m
            time.sleep(0.05)
        self.fail("no log line matching %r; log:\n%s" % (pattern, d.log_text()))

    def assert_served(self, d, keys="default"):
        c = d.client(keys)
        pull(c, credits=1, batch_size=2, targets=["B"], steps=[0])
        b, images, masks = recv_batch(c)
        self.assertEqual((b.n, images.shape[0], masks.shape[0]), (2, 2, 2))
        c.close()


class CurveFixture:
    """For a client-suite test: a Fixture (test.fx), key pairs server, client and other (Keys),
    their files, and a sampler that only serves the client's key; all cleaned up with the test."""

    def __init__(self, test):
        test.fx = Fixture()
        if test.fx.missing:
            test.skipTest(test.fx.missing)
        test.addCleanup(test.fx.close)
        self.server, self.client, self.other = Keys(), Keys(), Keys()
        d = test.fx.dir
        self.server_pub, self.server_sec = os.path.join(d, "server.pub"), os.path.join(d, "server.key")
        self.client_sec, allowed = os.path.join(d, "client.key"), os.path.join(d, "allowed")
        os.mkdir(allowed)
        write_key(self.server_pub, self.server.public)
        write_key(self.server_sec, self.server.secret, secret=True)
        write_key(self.client_sec, self.client.secret, secret=True)
        write_key(os.path.join(allowed, "client.pub"), self.client.public)
        self.sampler = test.fx.sampler(extra=["--curve-secret-key-file", self.server_sec,
                                              "--curve-allowed-keys-dir", allowed])
        test.addCleanup(self.sampler.stop)


# ---------------------------------------------------------------- Prometheus

def families(text):
    """{family name: [Sample]} of an exposition text (the parser fails on a malformed one)."""
    from prometheus_client.parser import text_string_to_metric_families
    return {f.name + ("_total" if f.type == "counter" else ""): f.samples
            for f in text_string_to_metric_families(text)}


def value(fams, family, /, **labels):
    """The one sample of family whose labels include labels."""
    hits = [s.value for s in fams[family] if all(s.labels.get(k) == v for k, v in labels.items())]
    if len(hits) != 1:
        raise AssertionError("%s%s: %d samples in %s" % (family, labels, len(hits), fams.get(family)))
    return hits[0]


def http_get(port, path="/metrics", method="GET", headers=None):
    """(status, headers, body text) of one request to 127.0.0.1:port."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        c.close()


# ---------------------------------------------------------------- an independent sRGB <-> CIE LAB (D65)

_M = np.array([[0.4124564, 0.3575761, 0.1804375],
               [0.2126729, 0.7151522, 0.0721750],
               [0.0193339, 0.1191920, 0.9503041]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def lab(img):
    """[3,H,W] sRGB values in [-1,1] -> (L*, a*, b*) arrays in CIE units (D65), written here in numpy,
    not the C library's conversion."""
    c = (np.asarray(img, np.float64) + 1.0) / 2.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.tensordot(_M, lin, axes=1) / _WHITE[:, None, None]
    d = 6.0 / 29.0
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    return 116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])


def lab_to_rgb(L, a, b):
    """The inverse, clamped into [-1,1] (for a chain computed in a test)."""
    d = 6.0 / 29.0
    fy = (L + 16.0) / 116.0
    f = np.stack([fy + a / 500.0, fy, fy - b / 200.0])
    xyz = np.where(f > d, f ** 3, 3 * d * d * (f - 4.0 / 29.0)) * _WHITE[:, None, None]
    lin = np.clip(np.tensordot(np.linalg.inv(_M), xyz, axes=1), 0.0, 1.0)
    c = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return 2.0 * c - 1.0


def luminance_change(src, out):
    """How far sample `out` [3,H,W] is from its source crop `src` in CIE L* and in a*, b*
    (largest absolute difference of each) over the pixels where no RGB component of out is
    at -1 or 1 (where keep = luminance promises L*), and how many such pixels there are."""
    (ls, as_, bs), (lo, ao, bo) = lab(src), lab(out)
    inside = np.all((out > -1) & (out < 1), axis=0)
    dl = np.abs(lo - ls)[inside].max(initial=0)
    dab = max(np.abs(ao - as_)[inside].max(initial=0), np.abs(bo - bs)[inside].max(initial=0))
    return dl, int(inside.sum()), dab


# ---------------------------------------------------------------- a client that fills the queue memory

class Hog:
    """A raw client of a daemon's data socket that asks for `credits` batches of `batch_size`
    samples of `target` (step 0) and never reads them, with tiny receive buffers: once the
    kernel's socket buffers are full, its batches wait in the daemon's ZeroMQ queue and hold
    max_queue_memory, so no other client gets a batch of that size until the hog closes. A
    thread owns the socket and sends heartbeats every 50 ms, so that even a short idle_timeout
    keeps its session. close() (idempotent) ends the thread and the socket."""

    def __init__(self, endpoint, target, batch_size, credits=1000):
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        request = pb.PullRequest(credits=credits, batch_size=batch_size, targets=[target], steps=[0])
        self._thread = threading.Thread(target=self._run, args=(endpoint, request), daemon=True)
        self._thread.start()

    def _run(self, endpoint, request):
        sock = self._ctx.socket(zmq.DEALER)
        for opt, v in ((zmq.LINGER, 0), (zmq.RCVHWM, 1), (zmq.RCVBUF, 4096)):
            sock.setsockopt(opt, v)
        sock.connect(endpoint)
        sock.send(pb.ClientMessage(version=1, pull=request).SerializeToString())
        beat = pb.ClientMessage(version=1, heartbeat=pb.Heartbeat()).SerializeToString()
        while not self._stop.wait(0.05):
            try:
                sock.send(beat, zmq.DONTWAIT)
            except zmq.Again:  # the daemon is not reading: its session ends, which the test sees
                pass
        sock.close()

    def close(self):
        self._stop.set()
        self._thread.join(10)
        self._ctx.destroy(linger=0)
