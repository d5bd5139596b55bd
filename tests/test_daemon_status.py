"""What an operator reads in langdaugd's status reply, against real daemons
on loopback ports (fixtures of tests/ldtest.py):
whether CURVE is on for each socket, how many client keys are allowed and
how many handshakes were refused since start; the bytes of finished samples
held in the queue next to max_queue_memory; the precise idle timeout in
HelloReply; and `langdaug status` showing them as text and as JSON (the
CURVE counts also with --prometheus).
"""
import json
import os
import re
import signal
import time
import unittest

import zmq
from prometheus_client.parser import text_string_to_metric_families

from ldtest import CLI, WAIT, CurveTestCase, DaemonTestCase, Hog, Keys, pull, run_cli, write_key

MIB = 1 << 20
BATCH = 32  # samples per batch of the queue tests: ~100 KiB, a tenth of a 1 MiB max_queue_memory


def cli_status(d, *args):
    """`langdaug status` of daemon d as (text, JSON object)."""
    text = run_cli("status", d.status_endpoint, *args, timeout=WAIT)
    assert text.returncode == 0, text.stderr
    js = run_cli("status", "--json", d.status_endpoint, *args, timeout=WAIT)
    assert js.returncode == 0, js.stderr
    return text.stdout, json.loads(js.stdout)


def wait_for(status, ready, what):
    """Polls status() until ready(reply) (bounded); returns the reply."""
    deadline = time.monotonic() + WAIT
    while True:
        st = status()
        if ready(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %.0f s; last status:\n%s" % (what, WAIT, st))
        time.sleep(0.05)


def one_attempt_client(d, keys, server_public=None):
    """A data-socket client that connects once (no reconnection after a refusal) and asks for a
    batch, so that each one is exactly one refused handshake."""
    s = d.ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RECONNECT_IVL, -1)
    d.secure(s, keys, server_public)
    s.connect(d.endpoint)
    pull(s, credits=1, batch_size=1, targets=["B"], steps=[0])
    return s


@unittest.skipUnless(os.access(CLI, os.X_OK), "langdaug not built")
class PlainSecurityTest(DaemonTestCase):
    def test_plain_daemon_says_curve_is_off(self):
        d = self.start()
        st = d.status()
        self.assertEqual((st.data_curve, st.status_curve), (False, False))
        self.assertTrue(st.HasField("data_curve") and st.HasField("status_curve"))
        self.assertFalse(st.HasField("allowed_keys"), "no keys are loaded without CURVE")
        self.assertFalse(st.HasField("refused_handshakes"), "nothing is refused without CURVE")
        text, js = cli_status(d)
        self.assertIn("security: data socket plain TCP, status socket plain TCP\n", text)
        self.assertEqual((js["data_curve"], js["status_curve"]), (False, False))
        self.assertNotIn("allowed_keys", js)
        self.assertNotIn("refused_handshakes", js)


@unittest.skipUnless(os.access(CLI, os.X_OK), "langdaug not built")
class CurveSecurityTest(CurveTestCase):
    def setUp(self):
        super().setUp()
        self.carol = Keys()
        write_key(os.path.join(self.allowed, "carol.pub"), self.carol.public)
        self.server_pub = os.path.join(self.tmp, "server.pub")
        write_key(self.server_pub, self.server.public)
        self.alice_key = os.path.join(self.tmp, "alice.key")
        write_key(self.alice_key, self.alice.secret, secret=True)

    def test_curve_daemon_counts_allowed_keys_and_refused_handshakes(self):
        d = self.start_curve()
        st = d.status()
        self.assertEqual((st.data_curve, st.status_curve, st.allowed_keys, st.refused_handshakes),
                         (True, True, 2, 0))
        refused = []
        for _ in range(3):  # unknown key: the ZAP handler says no
            refused.append(one_attempt_client(d, self.bob))
        wait_for(d.status, lambda r: r.refused_handshakes >= 3, "3 unknown keys refused")
        refused.append(one_attempt_client(d, None))  # no CURVE at all
        wait_for(d.status, lambda r: r.refused_handshakes >= 4, "a plain client refused")
        refused.append(one_attempt_client(d, self.alice, server_public=Keys().public))  # wrong server key
        wait_for(d.status, lambda r: r.refused_handshakes >= 5, "a wrong server key refused")
        time.sleep(1.0)  # a second count for any of them would show by now
        self.assertEqual(d.status().refused_handshakes, 5, "each refused client counts exactly once")
        self.assert_served(d)  # allowed clients are not counted
        curve_args = ("--curve-server-key", self.server_pub, "--curve-secret-key", self.alice_key)
        text, js = cli_status(d, *curve_args)
        self.assertIn("security: data socket CURVE, status socket CURVE, 2 allowed client keys, "
                      "5 refused handshakes\n", text)
        self.assertEqual((js["data_curve"], js["status_curve"], js["allowed_keys"], js["refused_handshakes"]),
                         (True, True, 2, 5))
        prom = run_cli("status", "--prometheus", d.status_endpoint, *curve_args, timeout=WAIT)
        self.assertEqual(prom.returncode, 0, prom.stderr)
        fams = {f.name: f for f in text_string_to_metric_families(prom.stdout)}
        self.assertEqual((fams["langdaug_refused_handshakes"].type, fams["langdaug_refused_handshakes"].samples[0].value,
                          fams["langdaug_allowed_client_keys"].samples[0].value), ("counter", 5, 2))
        os.remove(os.path.join(self.allowed, "carol.pub"))
        d.proc.send_signal(signal.SIGHUP)
        st = wait_for(d.status, lambda r: r.allowed_keys == 1, "the allowed keys re-read on SIGHUP")
        self.assertEqual(st.refused_handshakes, 5, "a reload does not reset the count")
        for s in refused:
            s.close()
        self.assertEqual(d.stop(), 0)


@unittest.skipUnless(os.access(CLI, os.X_OK), "langdaug not built")
class QueueMemoryTest(DaemonTestCase):
    def test_queue_bytes_idle_held_within_the_limit_and_released(self):
        d = self.start(extra=["--max-queue-memory", "1", "--max-credits", "1000"])
        st = d.status()
        self.assertEqual((st.queue_bytes, st.max_queue_bytes), (0, MIB))
        hog = Hog(d.endpoint, "B", BATCH)
        self.addCleanup(hog.close)
        seen = []

        def steady(r):
            """Something held, and nothing more sent since the previous poll."""
            seen.append(r)
            return r.queue_bytes > 0 and len(seen) > 1 and seen[-2].samples_sent == r.samples_sent

        def poll():
            time.sleep(0.25)
            return d.status()

        st = wait_for(poll, steady, "the hog's batches held in the queue")
        self.assertTrue(all(r.queue_bytes <= MIB for r in seen), [r.queue_bytes for r in seen])
        self.assertGreater(st.samples_sent, 0)
        text, js = cli_status(d)
        self.assertEqual((js["queue_bytes"], js["max_queue_bytes"]), (st.queue_bytes, MIB))
        m = re.search(r"^queue memory (\d+\.\d) MiB of 1\.0 MiB ", text, re.M)
        self.assertIsNotNone(m, text)
        self.assertEqual(m.group(1), "%.1f" % (st.queue_bytes / MIB))
        hog.close()  # ZeroMQ frees its batches; the session goes at the next send
        st = wait_for(d.status, lambda r: r.queue_bytes == 0 and not r.clients, "the queue emptied")
        self.assertEqual(st.max_queue_bytes, MIB)


class HelloIdleTimeoutTest(DaemonTestCase):
    def test_hello_reply_has_the_precise_idle_timeout(self):
        for seconds, whole in (("0.3", 1), ("2.5", 3), ("60", 60)):
            d = self.start(extra=["--idle-timeout", seconds])
            h = d.hello()
            self.assertTrue(h.HasField("idle_timeout"))
            self.assertEqual(h.idle_timeout, float(seconds))
            self.assertEqual(h.idle_timeout_s, whole, "the whole seconds are rounded up, never 0")
            self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
