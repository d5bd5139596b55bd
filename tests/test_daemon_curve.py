"""CURVE encryption and client authentication of langdaugd's sockets.

Against the real daemon on loopback ports (fixtures and helpers of
test_daemon.py): a client whose public key is in curve_allowed_keys_dir is
served on the data and status sockets; a client with an unknown key, with
no CURVE at all or with the wrong server key gets nothing, and the daemon
logs the refusal (unknown keys with their Z85 and the peer address). Also:
reloading the allowed keys on SIGHUP, config and key-file errors, the log
rate limit, and `langdaug keygen`.
"""
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import unittest

import zmq

import test_daemon as td
from test_daemon import pb

CLI = os.path.join(td.BUILD, "langdaug")
BURST = 20  # LDD_CURVE_LOG_BURST in daemon/ldd_curve.h


def write_key(path, z85, secret=False):
    """A key file as `langdaug keygen` writes it (comment line + key)."""
    with open(path, "w") as f:
        f.write("# %s key\n%s\n" % ("secret" if secret else "public", z85.decode()))
    os.chmod(path, 0o600 if secret else 0o644)


class Keys:
    def __init__(self):
        self.public, self.secret = zmq.curve_keypair()


class CurveDaemon(td.Daemon):
    """A daemon whose sockets need CURVE: clients get keys."""

    def __init__(self, workdir, server, client, **kw):
        self.server, self.default_client = server, client
        super().__init__(workdir, **kw)

    def secure(self, sock, keys, server_public=None):
        if keys is not None:
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
            sock.curve_serverkey = server_public or self.server.public
        return sock

    def status(self, timeout=td.WAIT, keys=None):
        deadline = time.monotonic() + timeout
        while True:
            s = self.secure(self.ctx.socket(zmq.REQ), keys or self.default_client)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(self.status_ep)
            s.send(pb.StatusRequest(version=1).SerializeToString())
            if s.poll(500):
                r = pb.StatusReply()
                r.ParseFromString(s.recv())
                s.close()
                return r
            s.close()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("no status reply; daemon log:\n" + self.log_text())

    def client(self, keys="default", server_public=None):
        d = self.ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        self.secure(d, self.default_client if keys == "default" else keys, server_public)
        d.connect(self.bind)
        return d


@unittest.skipUnless(os.access(td.DAEMON, os.X_OK), "langdaugd not built")
@unittest.skipUnless(zmq.has("curve"), "libzmq without CURVE")
class CurveTestCase(td.DaemonTestCase):
    """Keys server, alice and bob; a fresh allowed-keys folder per test with alice's key only;
    start_curve() starts a daemon that needs CURVE. Also used by test_daemon_status.py."""

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
        d = CurveDaemon(self.tmp, self.server, self.alice, model=self.model, data=self.data,
                        extra=["--curve-secret-key-file", self.server_key,
                               "--curve-allowed-keys-dir", self.allowed, *extra])
        self.daemons.append(d)
        d.status()  # ready
        return d

    def wait_log(self, d, pattern, timeout=td.WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, d.log_text())
            if m:
                return m
            time.sleep(0.05)
        self.fail("no log line matching %r; log:\n%s" % (pattern, d.log_text()))

    def assert_served(self, d, keys="default"):
        c = d.client(keys)
        td.pull(c, credits=1, batch_size=2, targets=["B"], steps=[0])
        b, images, masks = td.recv_batch(c)
        self.assertEqual((b.n, images.shape[0], masks.shape[0]), (2, 2, 2))
        c.close()


class CurveTest(CurveTestCase):
    def test_allowed_key_is_served_on_data_and_status(self):
        d = self.start_curve()
        self.assertIn("CURVE on: server public key " + self.server.public.decode(), d.log_text())
        self.assert_served(d)
        self.assertEqual(d.status().samples_sent, 2)
        self.wait_log(d, r"client key 'alice' \(%s\) connected from 127\.0\.0\.1 to the data socket"
                      % re.escape(self.alice.public.decode()))
        self.assertEqual(d.stop(), 0)

    def test_unknown_key_gets_nothing_and_is_logged_with_key_and_address(self):
        d = self.start_curve()
        intruder = d.client(self.bob)
        td.pull(intruder, credits=4, batch_size=2, targets=["B"], steps=[0])
        self.wait_log(d, r"refused unknown client key %s from 127\.0\.0\.1 on the data socket"
                      % re.escape(self.bob.public.decode()))
        self.assertTrue(td.nothing_within(intruder, 1.5), "an unknown key got a message")
        with self.assertRaises(AssertionError):
            d.status(timeout=1.5, keys=self.bob)
        self.wait_log(d, r"refused unknown client key %s from 127\.0\.0\.1 on the status socket"
                      % re.escape(self.bob.public.decode()))
        self.assert_served(d)  # the allowed client is not disturbed
        st = d.status()
        self.assertEqual(len(st.clients), 1, "the refused client must not have a session")
        self.assertEqual(st.samples_sent, 2)

    def test_plain_client_gets_nothing_and_is_logged(self):
        d = self.start_curve()
        plain = d.client(keys=None)
        td.pull(plain, credits=4, batch_size=2, targets=["B"], steps=[0])
        # whichever side sees the mechanism mismatch first decides the reason logged
        self.wait_log(d, r"refused a connection to the data socket .*(the client does not use CURVE|"
                      r"handshake failed before authentication)")
        self.assertTrue(td.nothing_within(plain, 1.5), "a plain client got a message")
        s = d.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(d.status_ep)
        s.send(pb.StatusRequest(version=1).SerializeToString())
        self.assertEqual(s.poll(1500), 0, "a plain status request was answered")
        s.close()
        # (a REQ socket closed mid-handshake may show as "no detail" instead)
        self.wait_log(d, r"refused a connection to the status socket ")
        self.assertEqual(len(d.status().clients), 0)

    def test_wrong_server_key_gets_nothing_and_is_logged(self):
        d = self.start_curve()
        other = Keys()
        c = d.client(self.alice, server_public=other.public)
        td.pull(c, credits=1, batch_size=2, targets=["B"], steps=[0])
        self.assertTrue(td.nothing_within(c, 1.5))
        self.wait_log(d, r"refused a connection to the data socket .*: (CURVE decryption failed|malformed handshake)")
        self.assertNotRegex(d.log_text(), r"client key 'alice' .* to the data socket")

    def test_sighup_reloads_the_allowed_keys(self):
        d = self.start_curve()
        self.assert_served(d)
        write_key(os.path.join(self.allowed, "bob.pub"), self.bob.public)
        os.remove(os.path.join(self.allowed, "alice.pub"))
        d.proc.send_signal(signal.SIGHUP)
        self.wait_log(d, r"CURVE: 1 allowed client keys")
        self.assert_served(d, self.bob)
        late = d.client(self.alice)  # a new connection with the removed key
        td.pull(late, credits=1, batch_size=2, targets=["B"], steps=[0])
        self.assertTrue(td.nothing_within(late, 1.5), "a removed key was still let in")
        self.wait_log(d, r"refused unknown client key %s" % re.escape(self.alice.public.decode()))
        # a malformed key file fails the reload, which keeps the running set
        with open(os.path.join(self.allowed, "broken.pub"), "w") as f:
            f.write("not a key\n")
        d.proc.send_signal(signal.SIGHUP)
        st = d.status(keys=self.bob)
        deadline = time.monotonic() + td.WAIT
        while not st.last_reload.startswith("failed") and time.monotonic() < deadline:
            time.sleep(0.05)
            st = d.status(keys=self.bob)
        self.assertIn("broken.pub", st.last_reload)
        self.assert_served(d, self.bob)
        self.assertEqual(d.stop(), 0)

    def test_refusals_are_logged_at_most_a_burst_a_minute(self):
        d = self.start_curve()
        socks = []
        for _ in range(BURST + 10):
            s = d.client(self.bob)
            s.setsockopt(zmq.RECONNECT_IVL, 5000)  # one attempt each
            socks.append(s)
        pattern = r"refused unknown client key"
        deadline = time.monotonic() + td.WAIT
        while time.monotonic() < deadline and len(re.findall(pattern, d.log_text())) < BURST:
            time.sleep(0.05)
        time.sleep(1.0)  # the remaining attempts are refused meanwhile
        self.assertEqual(len(re.findall(pattern, d.log_text())), BURST)
        for s in socks:
            s.close()
        self.assert_served(d)

    def test_config_and_key_file_errors(self):
        def run(*args):
            return subprocess.run([td.DAEMON, "--model", self.model, "--data", self.data,
                                   "--bind", "tcp://127.0.0.1:%d" % td.free_port(),
                                   "--status", "tcp://127.0.0.1:%d" % td.free_port(), *args],
                                  capture_output=True, text=True, timeout=td.WAIT)

        r = run("--curve-secret-key-file", self.server_key, "--print-config")
        self.assertEqual(r.returncode, 2)
        self.assertIn("curve_allowed_keys_dir", r.stderr)
        r = run("--curve-allowed-keys-dir", self.allowed, "--print-config")
        self.assertEqual(r.returncode, 2)
        self.assertIn("curve_secret_key_file", r.stderr)
        open_key = os.path.join(self.tmp, "open.key")
        write_key(open_key, self.server.secret, secret=True)
        os.chmod(open_key, 0o644)
        r = run("--curve-secret-key-file", open_key, "--curve-allowed-keys-dir", self.allowed)
        self.assertEqual(r.returncode, 1)
        self.assertIn(open_key, r.stderr)
        self.assertIn("other users", r.stderr)
        bad_key = os.path.join(self.tmp, "bad.key")
        with open(bad_key, "w") as f:
            f.write("# a comment\n" + self.server.secret.decode()[:-1] + "~\n")
        os.chmod(bad_key, 0o600)
        r = run("--curve-secret-key-file", bad_key, "--curve-allowed-keys-dir", self.allowed)
        self.assertEqual(r.returncode, 1)
        self.assertIn(bad_key + ":2:", r.stderr)
        self.assertNotIn(self.server.secret.decode()[:20], r.stderr, "secret key text in an error")
        with open(os.path.join(self.allowed, "two.pub"), "w") as f:
            f.write(self.bob.public.decode() + "\n" + self.bob.public.decode() + "\n")
        r = run("--curve-secret-key-file", self.server_key, "--curve-allowed-keys-dir", self.allowed)
        self.assertEqual(r.returncode, 1)
        self.assertIn("two.pub:2:", r.stderr)
        os.remove(os.path.join(self.allowed, "two.pub"))
        shutil.copy(os.path.join(self.allowed, "alice.pub"), os.path.join(self.allowed, "alice2.pub"))
        r = run("--curve-secret-key-file", self.server_key, "--curve-allowed-keys-dir", self.allowed)
        self.assertEqual(r.returncode, 1)
        self.assertIn("same key", r.stderr)
        r = run("--curve-secret-key-file", self.server_key, "--curve-allowed-keys-dir",
                os.path.join(self.tmp, "no-such-dir"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("no-such-dir", r.stderr)

    def test_plain_daemon_on_a_public_address_warns(self):
        d = td.Daemon(self.tmp, model=self.model, data=self.data,
                      extra=["--bind", "tcp://0.0.0.0:%d" % td.free_port()])
        self.daemons.append(d)
        d.status()
        self.assertIn("plain TCP: anyone who can reach it may use it", d.log_text())
        self.assertNotIn("the status socket", d.log_text(), "status is on loopback: no warning")


@unittest.skipUnless(os.access(CLI, os.X_OK), "langdaug not built")
@unittest.skipUnless(zmq.has("curve"), "libzmq without CURVE")
class KeygenTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="keygen-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)  # also when setUp skips
        probe = subprocess.run([CLI, "keygen", "--help"], capture_output=True, text=True, timeout=td.WAIT)
        if "unknown command" in probe.stderr:
            self.skipTest("`langdaug keygen` is not in the command table yet")

    def keygen(self, *args):
        return subprocess.run([CLI, "keygen", *args], capture_output=True, text=True, timeout=td.WAIT)

    def read_key(self, path):
        lines = [x.strip() for x in open(path) if x.strip() and not x.startswith("#")]
        self.assertEqual(len(lines), 1, path)
        return lines[0].encode()

    def test_writes_a_matching_pair_with_a_private_secret(self):
        prefix = os.path.join(self.tmp, "node1")
        old = os.umask(0)  # even a permissive umask must not expose the secret key
        try:
            r = self.keygen("--out", prefix)
        finally:
            os.umask(old)
        self.assertEqual(r.returncode, 0, r.stderr)
        secret, public = self.read_key(prefix + ".key"), self.read_key(prefix + ".pub")
        self.assertEqual(zmq.curve_public(secret), public)
        self.assertIn(public.decode(), r.stdout)
        self.assertNotIn(secret.decode(), r.stdout)
        self.assertEqual(stat.S_IMODE(os.stat(prefix + ".key").st_mode), 0o600)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["node1.key", "node1.pub"], "no temporary files left")
        # an existing pair is kept unless --force
        r = self.keygen("--out", prefix)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("already exists", r.stderr)
        self.assertEqual(self.read_key(prefix + ".key"), secret)
        r = self.keygen("--out", prefix, "--force")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotEqual(self.read_key(prefix + ".key"), secret)

    def test_usage_errors(self):
        for args in ([], ["--out"], ["--bogus"], ["--out", os.path.join(self.tmp, "x"), "stray"]):
            r = self.keygen(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn("langdaug keygen", r.stderr)
        r = self.keygen("--out", os.path.join(self.tmp, "missing-dir", "x"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing-dir", r.stderr)


if __name__ == "__main__":
    unittest.main()
