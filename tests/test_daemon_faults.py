"""Fault tests of langdaugd against the real daemon (fixtures and helpers of
tests/ldtest.py): clients killed mid-stream, 50 concurrent clients, a slow
client next to a fast one, SIGHUP storms, and a model file replaced under
the daemon while it reloads. Everything on 127.0.0.1, bounded in count and
time; every process started here is stopped here.
"""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import zmq

from ldtest import HERE, WAIT, DaemonTestCase, cmsg, pb, pull, recv_batch, recv_msg, write_model

# A client in its own process, so that it can be killed with SIGKILL: it
# grants credits and prints the frame count of every message received but
# heartbeats (sent when nothing else went to the client for a heartbeat
# interval: between batches when the chains are slow, as under TSan).
def client_process(endpoint):
    code = (
        "import sys, zmq\n"
        "from ldtest import pb, cmsg\n"
        "ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(sys.argv[1])\n"
        "s.send(cmsg(pull=pb.PullRequest(credits=8, batch_size=8, targets=['B'], steps=[0, 1])))\n"
        "while True:\n"
        "    frames = s.recv_multipart()\n"
        "    m = pb.ServerMessage(); m.ParseFromString(frames[0])\n"
        "    if m.WhichOneof('body') == 'heartbeat': continue\n"
        "    print(len(frames), flush=True)\n"
        "    s.send(cmsg(pull=pb.PullRequest(credits=1)))\n")
    return subprocess.Popen([sys.executable, "-c", code, endpoint], cwd=HERE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


class FaultTest(DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(5)
            if p.stdout:
                p.stdout.close()
        super().tearDown()

    def wait_clients(self, d, n, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = d.status()
            if len(st.clients) == n:
                return st
            time.sleep(0.05)
        self.fail("expected %d clients, status shows %d" % (n, len(d.status().clients)))

    def test_killed_clients_leave_nothing_behind(self):
        asan = os.environ.get("ASAN_OPTIONS", "")
        asan += (":" if asan else "") + "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
        d = self.start(extra=["--idle-timeout", "1", "--heartbeat-interval", "0.1"], env={"ASAN_OPTIONS": asan})
        rss = []
        for cycle in range(8):
            p = client_process(d.endpoint)
            self.procs.append(p)
            for _ in range(3):  # mid-stream: batches are flowing and credits outstanding
                line = p.stdout.readline()
                self.assertEqual(line.strip(), b"3", "client process output: %r" % line)
            p.kill()
            p.wait(5)
            st = self.wait_clients(d, 0)
            if cycle in (1, 7):
                rss.append(st.resident_bytes)
        self.assertLess(rss[1] - rss[0], 8 << 20, "resident memory grew from %d to %d bytes" % tuple(rss))
        self.assertRegex(d.log_text(), r"(unreachable|idle timeout); \d+ credits expire")
        ok = d.client()
        pull(ok, credits=1, batch_size=2, targets=["B"], steps=[0])
        recv_batch(ok)
        self.assertEqual(d.stop(), 0)

    def test_fifty_concurrent_clients(self):
        d = self.start(extra=["--workers", "2", "--chain-batch", "4"])
        socks = [d.client() for _ in range(50)]
        for i, s in enumerate(socks):
            s.send(cmsg(hello=pb.Hello(client_name="c%d" % i)))
            pull(s, credits=2, batch_size=2, targets=["A" if i % 2 else "B"], steps=[0, 1], seed=i)
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        got = {id(s): 0 for s in socks}
        deadline = time.monotonic() + 3 * WAIT
        while min(got.values()) < 2 and time.monotonic() < deadline:
            for s, _ in poller.poll(200):
                m, extra = recv_msg(s)
                if m.WhichOneof("body") == "batch":
                    self.assertEqual((m.batch.n, len(extra)), (2, 2))
                    got[id(s)] += 1
        self.assertEqual(sorted(got.values()), [2] * 50)
        st = d.status()
        self.assertEqual(len(st.clients), 50)
        self.assertEqual(st.samples_sent, 50 * 2 * 2)
        self.assertEqual(sorted(c.name for c in st.clients), sorted("c%d" % i for i in range(50)))

    def test_a_slow_client_does_not_hold_back_a_fast_one(self):
        d = self.start(extra=["--max-credits", "16"])
        slow = d.client()
        slow.setsockopt(zmq.RCVHWM, 1)
        pull(slow, credits=16, batch_size=16, targets=["B"], steps=[0])  # and never reads
        fast = d.client()
        start = time.monotonic()
        pull(fast, credits=2, batch_size=2, targets=["A"], steps=[0])
        for k in range(30):
            b, _, _ = recv_batch(fast)
            self.assertEqual(b.sequence, k)
            pull(fast, credits=1)
        self.assertLess(time.monotonic() - start, 2 * WAIT)
        st = d.status()
        by_batch = {c.batch_size: c for c in st.clients}
        self.assertIn(by_batch[2].batches_sent, range(30, 33), "2 + 30 credits granted, 30 received")
        self.assertLessEqual(by_batch[16].batches_sent, 16, "the slow client got more than its credits")
        self.assertEqual(by_batch[16].credits + by_batch[16].batches_sent, 16)

    def test_sighup_storm(self):
        d = self.start()
        c = d.client()
        pull(c, credits=2, batch_size=2, targets=["B"], steps=[0, 2])
        received = 0
        for i in range(60):
            d.proc.send_signal(signal.SIGHUP)
            time.sleep(0.01)
            while c.poll(0):
                m, _ = recv_msg(c)
                self.assertEqual(m.WhichOneof("body"), "batch", m)
                received += 1
                pull(c, credits=1)
        self.assertIsNone(d.proc.poll(), "the daemon died in a SIGHUP storm")
        deadline = time.monotonic() + WAIT
        st = d.status()
        while not st.last_reload.startswith("ok") and time.monotonic() < deadline:
            time.sleep(0.05)
            st = d.status()
        self.assertTrue(st.last_reload.startswith("ok"), st.last_reload)
        for _ in range(3):  # still serving, and the session survived every reload
            recv_batch(c)
            pull(c, credits=1)
        self.assertGreater(d.status().samples_sent, 0)
        self.assertEqual(d.stop(), 0)
        self.assertIn("SIGHUP", d.log_text())

    def test_model_replaced_while_being_read(self):
        """Reloads race with atomic renames of new model files over the
        path: every reload reads one complete file, never a mix."""
        model = os.path.join(self.tmp, "racing.safetensors")
        hashes = []
        for k in range(2):
            hashes.append(write_model(os.path.join(self.tmp, "version%d" % k), seed=10 + k))
        shutil.copy(os.path.join(self.tmp, "version0"), model)
        d = self.start(model=model)
        stop = threading.Event()

        def replace():
            k = 0
            while not stop.is_set():
                tmp = model + ".tmp"
                shutil.copy(os.path.join(self.tmp, "version%d" % (k % 2)), tmp)
                os.replace(tmp, model)
                k += 1

        t = threading.Thread(target=replace)
        t.start()
        try:
            c = d.client()
            pull(c, credits=1, batch_size=2, targets=["B"], steps=[0])
            seen = set()
            for _ in range(15):
                sent = time.monotonic()
                d.proc.send_signal(signal.SIGHUP)
                while time.monotonic() < sent + WAIT:
                    st = d.status()
                    if st.last_reload and st.last_reload_age_s < time.monotonic() - sent:
                        break  # a reload that finished after this SIGHUP
                    time.sleep(0.02)
                self.assertTrue(st.last_reload.startswith("ok"), st.last_reload)
                self.assertIn(st.models[0].hash, hashes)
                seen.add(st.models[0].hash)
                b, _, _ = recv_batch(c)
                self.assertTrue(all(s.model_hash in hashes for s in b.samples))
                pull(c, credits=1)
        finally:
            stop.set()
            t.join(10)
        self.assertNotIn("reload failed", d.log_text())
        self.assertEqual(d.stop(), 0)
