"""CURVE encryption and client authentication of langdaugd's sockets.

Against the real daemon on loopback ports (fixtures and helpers of
tests/ldtest.py): a client whose public key is in curve_allowed_keys_dir is
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
import tempfile
import time
import unittest

import zmq

from ldtest import (CLI, WAIT, CurveTestCase, Keys, free_port, nothing_within, pb, pull, run_cli, run_daemon,
                    write_key)

BURST = 20  # LDD_CURVE_LOG_BURST in daemon/ldd_curve.h


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
        pull(intruder, credits=4, batch_size=2, targets=["B"], steps=[0])
        self.wait_log(d, r"refused unknown client key %s from 127\.0\.0\.1 on the data socket"
                      % re.escape(self.bob.public.decode()))
        self.assertTrue(nothing_within(intruder, 1.5), "an unknown key got a message")
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
        pull(plain, credits=4, batch_size=2, targets=["B"], steps=[0])
        # whichever side sees the mechanism mismatch first decides the reason logged
        self.wait_log(d, r"refused a connection to the data socket .*(the client does not use CURVE|"
                      r"handshake failed before authentication)")
        self.assertTrue(nothing_within(plain, 1.5), "a plain client got a message")
        s = d.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(d.status_endpoint)
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
        pull(c, credits=1, batch_size=2, targets=["B"], steps=[0])
        self.assertTrue(nothing_within(c, 1.5))
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
        pull(late, credits=1, batch_size=2, targets=["B"], steps=[0])
        self.assertTrue(nothing_within(late, 1.5), "a removed key was still let in")
        self.wait_log(d, r"refused unknown client key %s" % re.escape(self.alice.public.decode()))
        # a malformed key file fails the reload, which keeps the running set
        with open(os.path.join(self.allowed, "broken.pub"), "w") as f:
            f.write("not a key\n")
        d.proc.send_signal(signal.SIGHUP)
        st = d.status(keys=self.bob)
        deadline = time.monotonic() + WAIT
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
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and len(re.findall(pattern, d.log_text())) < BURST:
            time.sleep(0.05)
        time.sleep(1.0)  # the remaining attempts are refused meanwhile
        self.assertEqual(len(re.findall(pattern, d.log_text())), BURST)
        for s in socks:
            s.close()
        self.assert_served(d)

    def test_config_and_key_file_errors(self):
        def run(*args):
            return run_daemon("--model", self.model, "--data", self.data, "--bind", "tcp://127.0.0.1:%d" % free_port(),
                              "--status", "tcp://127.0.0.1:%d" % free_port(), *args)

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
        d = self.start(extra=["--bind", "tcp://0.0.0.0:%d" % free_port()])
        self.assertIn("plain TCP: anyone who can reach it may use it", d.log_text())
        self.assertNotIn("the status socket", d.log_text(), "status is on loopback: no warning")


@unittest.skipUnless(os.access(CLI, os.X_OK), "langdaug not built")
@unittest.skipUnless(zmq.has("curve"), "libzmq without CURVE")
class KeygenTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="keygen-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)  # also when setUp skips
        probe = run_cli("keygen", "--help", timeout=WAIT)
        if "unknown command" in probe.stderr:
            self.skipTest("`langdaug keygen` is not in the command table yet")

    def keygen(self, *args):
        return run_cli("keygen", *args, timeout=WAIT)

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
