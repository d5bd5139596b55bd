"""Tests of the sampler daemon `langdaugd` against the real binary.

Each test starts its own daemon on free 127.0.0.1 ports with a tiny random
model and a tiny synthetic dataset (tests/ldtest.py's fixtures: numpy + PIL,
written in the model-file format of common/ld_model.h), talks to it with pyzmq
and the generated protobuf classes, and stops it. Every wait is bounded in time.
"""
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import numpy as np
import zmq

from ldtest import (DAEMON, RANDOM_DOMAINS, ROOT, WAIT, WIDTHS, C, DaemonTestCase, S, cmsg, expect_error,
                    nothing_within, pb, pull, recv_batch, recv_msg, reference_crop, run_daemon, write_model)


def decode(images, encoding):
    if encoding == pb.ENCODING_UINT8:
        return images.astype(np.float32) / 127.5 - 1.0
    return images.astype(np.float32)


# ---------------------------------------------------------------- config and units

@unittest.skipUnless(os.access(DAEMON, os.X_OK), "langdaugd not built")
class ConfigTest(unittest.TestCase):
    def test_example_config_is_generated_from_the_table(self):
        r = run_daemon("--print-example-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(ROOT, "examples", "langdaugd.conf")) as f:
            self.assertEqual(r.stdout, f.read(), "examples/langdaugd.conf is stale: regenerate it with "
                             "langdaugd --print-example-config")

    def test_print_config_reads_back_identically(self):
        with tempfile.TemporaryDirectory() as tmp:
            r = run_daemon("--config", os.path.join(ROOT, "examples", "langdaugd.conf"), "--model", "/m1",
                                "--model", "/m2", "--data", "/d", "--max-clients", "7", "--noise", "0.25",
                                "--print-config")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("model = /m1\nmodel = /m2\n", r.stdout)
            self.assertIn("max_clients = 7\n", r.stdout)
            self.assertIn("noise = 0.25\n", r.stdout)
            path = os.path.join(tmp, "in-force.conf")
            with open(path, "w") as f:
                f.write(r.stdout)
            again = run_daemon("--config", path, "--print-config")
            self.assertEqual(again.returncode, 0, again.stderr)
            self.assertEqual(again.stdout, r.stdout)

    def test_bad_config_files_name_file_line_and_key(self):
        cases = [
            ("model = /m\ndata = /d\nfrobnicate = 3\n", 3, "frobnicate"),
            ("model = /m\ndata = /d\n\nmax_clients = 0\n", 4, "max_clients"),
            ("model = /m\ndata = /d\nnoise = lots\n", 3, "noise"),
            ("model = /m\ndata = /d\nworkers = 2\nworkers = 3\n", 4, "workers"),
            ("model = /m\nthis line has no equals sign\n", 2, "syntax"),
            ("model = /m\n[section]\ndata = /d\n", 3, "section"),
            ("model = /m\ndata = /d\nsteps = 3,3\n", 3, "steps"),
            ("model = /m\ndata = /d\nlog_level = loud\n", 3, "log_level"),
            # values --print-config could not write back (found by tests/fuzz/fuzz_config)
            ("model = /m\ndata =;/d\n", 2, "data"),
            ("model = /m\ndata = /d\x01\n", 2, "data"),
        ]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bad.conf")
            for text, line, word in cases:
                with open(path, "w") as f:
                    f.write(text)
                r = run_daemon("--config", path, "--print-config")
                self.assertEqual(r.returncode, 2, text)
                self.assertIn(f"{path}:{line}:", r.stderr, text)
                self.assertIn(word, r.stderr, text)

    def test_bad_command_lines(self):
        for args, word in [(["--no-such-option"], "no-such-option"), (["--workers"], "workers"),
                           (["--workers", "-1", "--model", "m", "--data", "d", "--print-config"], "workers"),
                           (["--model", "m", "--print-config"], "data"),
                           (["--data", "d", "--print-config"], "model"),
                           (["--config", "/nonexistent/x.conf", "--print-config"], "/nonexistent/x.conf"),
                           (["--data", " /d", "--model", "m", "--print-config"], "data"),
                           (["--data", "/" + "d" * 200, "--model", "m", "--print-config"], "longer than"),
                           (["stray"], "stray")]:
            r = run_daemon(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(word, r.stderr, args)
        self.assertEqual(run_daemon("--help").returncode, 0)


class SystemdUnitTest(unittest.TestCase):
    @unittest.skipUnless(shutil.which("systemd-analyze"), "systemd-analyze not available")
    def test_units_verify(self):
        with tempfile.TemporaryDirectory() as tmp:
            exe = DAEMON if os.access(DAEMON, os.X_OK) else "/bin/true"
            for src, dst in [("langdaugd.service", "langdaugd.service"), ("langdaugd@.service", "langdaugd@t1.service")]:
                with open(os.path.join(ROOT, "systemd", src)) as f:
                    text = f.read()
                self.assertIn("Type=notify", text)
                self.assertIn("DynamicUser=yes", text)
                self.assertIn("WatchdogSec=", text)
                with open(os.path.join(tmp, dst), "w") as f:
                    f.write(text.replace("/usr/local/bin/langdaugd", exe))
                r = subprocess.run(["systemd-analyze", "verify", os.path.join(tmp, dst)], capture_output=True,
                                   text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertNotIn(dst, r.stderr, r.stderr)  # no warnings about the unit


# ---------------------------------------------------------------- protocol

class ProtocolTest(DaemonTestCase):
    def test_hello_describes_models_and_domains(self):
        d = self.start()
        c = d.client()
        c.send(cmsg(hello=pb.Hello(min_version=1, max_version=3, client_name="t")))
        m, _ = recv_msg(c)
        self.assertEqual(m.WhichOneof("body"), "hello")
        h = m.hello
        self.assertEqual(h.version, 1)
        self.assertEqual(list(h.source_domains), RANDOM_DOMAINS)
        self.assertEqual((h.image_channels, h.mask_classes, h.size), (C, 2, S))
        self.assertEqual(list(h.default_steps), [0, 2, 4])
        self.assertEqual(len(h.models), 1)
        self.assertEqual(h.models[0].hash, self.model_hash)
        self.assertEqual(list(h.models[0].domains), RANDOM_DOMAINS)
        self.assertEqual(list(h.models[0].widths), WIDTHS)
        c.send(cmsg(hello=pb.Hello(min_version=2, max_version=5)))
        expect_error(c, pb.ERROR_UNSUPPORTED_VERSION)

    def test_batches_match_the_dataset_and_credits_are_never_exceeded(self):
        d = self.start()
        c = d.client()
        pull(c, credits=3, batch_size=5, pairs=[pb.Pair(source="A", target="B")], steps=[0, 2, 4], seed=11)
        chains = {}
        for k in range(3):
            b, images, masks = recv_batch(c)
            self.assertEqual((b.sequence, b.n, b.channels, b.size, b.mask_classes), (k, 5, C, S, 2))
            self.assertEqual(b.credits_left, 2 - k)
            self.assertEqual(images.shape, (5, C, S, S))
            for i, s in enumerate(b.samples):
                self.assertEqual((s.source_domain, s.target_domain, s.model_hash, s.seed),
                                 ("A", "B", self.model_hash, 11))
                self.assertIn(s.source_file, ["image/img0.png", "image/img1.png", "image/img2.png"])
                self.assertTrue(np.isfinite(s.energy))
                self.assertTrue(np.all(np.abs(images[i]) <= 1.0))
                ref_img, ref_mask = reference_crop(self.data, "A", s.source_file, s.crop_x, s.crop_y)
                np.testing.assert_array_equal(masks[i], ref_mask)
                if s.step == 0:
                    np.testing.assert_allclose(images[i], ref_img, atol=1e-6)
                chains.setdefault(s.chain_id, []).append((s.step, s.crop_x, s.crop_y, s.source_file))
        # samples come chain by chain, each chain's snapshots in step order
        self.assertEqual(sorted(chains), list(range(len(chains))))
        for cid, snaps in chains.items():
            steps = [x[0] for x in snaps]
            self.assertEqual(steps, [0, 2, 4][:len(steps)], cid)
            self.assertEqual(len({x[1:] for x in snaps}), 1, "one chain, one crop")
        self.assertTrue(nothing_within(c, 1.0), "a batch beyond the credits arrived")
        pull(c, credits=1)
        b, _, _ = recv_batch(c)
        self.assertEqual(b.sequence, 3)
        self.assertEqual(d.stop(), 0)

    def test_a_seed_makes_the_stream_reproducible_in_every_encoding(self):
        d = self.start()
        got = {}
        for enc in (pb.ENCODING_FLOAT32, pb.ENCODING_FLOAT16, pb.ENCODING_UINT8, pb.ENCODING_FLOAT32):
            c = d.client()
            pull(c, credits=2, batch_size=3, targets=["A"], steps=[1, 3], seed=5, encoding=enc)
            batches = [recv_batch(c) for _ in range(2)]
            c.send(cmsg(bye=pb.Bye()))
            c.close()
            meta = [(s.source_domain, s.source_file, s.crop_x, s.crop_y, s.step, s.chain_id, s.energy)
                    for b, _, _ in batches for s in b.samples]
            images = np.concatenate([decode(im, enc) for _, im, _ in batches])
            masks = np.concatenate([m for _, _, m in batches])
            self.assertTrue(all(x[0] == "B" for x in meta), "source 'any' other than the target A")
            if enc in got:
                self.assertEqual(meta, got[enc][0])
                np.testing.assert_array_equal(images, got[enc][1])
            else:
                got[enc] = (meta, images, masks)
        ref_meta, ref, ref_masks = got[pb.ENCODING_FLOAT32]
        for enc, tol in ((pb.ENCODING_FLOAT16, 1e-3), (pb.ENCODING_UINT8, 0.5 / 127.5 + 1e-6)):
            self.assertEqual(got[enc][0], ref_meta)
            np.testing.assert_array_equal(got[enc][2], ref_masks)
            np.testing.assert_allclose(got[enc][1], ref, atol=tol)

    def test_two_clients_are_served_concurrently(self):
        d = self.start()
        a, b = d.client(), d.client()
        pull(a, credits=4, batch_size=3, pairs=[pb.Pair(source="A", target="B")], steps=[2])
        pull(b, credits=4, batch_size=2, pairs=[pb.Pair(source="B", target="A", weight=2.0)], steps=[0, 1])
        got_a = got_b = 0
        deadline = time.monotonic() + WAIT * 2
        while (got_a < 4 or got_b < 4) and time.monotonic() < deadline:
            for sock, name in ((a, "a"), (b, "b")):
                if sock.poll(50):
                    batch, images, _ = recv_batch(sock)
                    if name == "a":
                        got_a += 1
                        self.assertEqual(batch.n, 3)
                        self.assertTrue(all((s.source_domain, s.target_domain, s.step) == ("A", "B", 2)
                                            for s in batch.samples))
                    else:
                        got_b += 1
                        self.assertEqual(batch.n, 2)
                        self.assertTrue(all((s.source_domain, s.target_domain) == ("B", "A") and s.step in (0, 1)
                                            for s in batch.samples))
            # fairness: neither finishes all of its batches while the other has none
            self.assertFalse(got_a == 4 and got_b == 0 or got_b == 4 and got_a == 0)
        self.assertEqual((got_a, got_b), (4, 4))
        st = d.status()
        self.assertEqual(st.samples_sent, 4 * 3 + 4 * 2)
        self.assertEqual(sorted(c.samples_sent for c in st.clients), [8, 12])

    def test_bad_messages_get_errors_while_another_client_is_served(self):
        d = self.start(extra=["--max-message-size", "1024", "--max-batch", "8", "--max-credits", "4"])
        good = d.client()
        pull(good, credits=4, batch_size=2, targets=["B"], steps=[1])
        bad = d.client()
        rnd = random.Random(3)
        cases = [
            (lambda: bad.send(bytes(rnd.randrange(256) for _ in range(40))), pb.ERROR_MALFORMED),
            (lambda: bad.send(b""), pb.ERROR_MALFORMED),
            (lambda: bad.send_multipart([cmsg(heartbeat=pb.Heartbeat()), b"x"]), pb.ERROR_MALFORMED),
            (lambda: bad.send(cmsg(version=7, heartbeat=pb.Heartbeat())), pb.ERROR_UNSUPPORTED_VERSION),
            (lambda: bad.send(pb.ClientMessage(heartbeat=pb.Heartbeat()).SerializeToString()),
             pb.ERROR_UNSUPPORTED_VERSION),
            (lambda: bad.send(pb.ClientMessage(version=1).SerializeToString()), pb.ERROR_MALFORMED),
            (lambda: bad.send(b"\x0a" + b"\xff" * 5000), pb.ERROR_TOO_LARGE),
            (lambda: pull(bad, credits=5, batch_size=2, targets=["B"]), pb.ERROR_LIMIT),
            (lambda: pull(bad, credits=1, batch_size=9, targets=["B"]), pb.ERROR_LIMIT),
            (lambda: pull(bad, credits=1, batch_size=0, targets=["B"]), pb.ERROR_INVALID_REQUEST),
            (lambda: pull(bad, credits=1, batch_size=2, pairs=[pb.Pair(source="A")]), pb.ERROR_INVALID_REQUEST),
            (lambda: pull(bad, credits=1), pb.ERROR_INVALID_REQUEST),
            (lambda: pull(bad, credits=1, batch_size=2, targets=["Z"]), pb.ERROR_UNKNOWN_DOMAIN),
            (lambda: pull(bad, credits=1, batch_size=2, pairs=[pb.Pair(source="Q", target="A")]),
             pb.ERROR_UNKNOWN_DOMAIN),
            (lambda: pull(bad, credits=1, batch_size=2, targets=["A"], steps=[3, 3]), pb.ERROR_INVALID_REQUEST),
            (lambda: pull(bad, credits=1, batch_size=2, targets=["A"], steps=[5000]), pb.ERROR_LIMIT),
            (lambda: pull(bad, credits=1, batch_size=2, pairs=[pb.Pair(target="A", weight=-1)]),
             pb.ERROR_INVALID_REQUEST),
        ]
        received = 0
        for send, code in cases:
            send()
            expect_error(bad, code)
            while good.poll(0):
                recv_batch(good)
                received += 1
        while received < 4:
            b, _, _ = recv_batch(good)
            self.assertTrue(all(s.target_domain == "B" for s in b.samples))
            received += 1
        st = d.status()
        self.assertGreaterEqual(st.protocol_errors, len(cases))
        self.assertEqual(len(st.clients), 1, "bad requests must not create sessions")
        self.assertIsNone(d.proc.poll())

    def test_epoch_mode_uses_every_tile_once_per_epoch(self):
        d = self.start()
        c = d.client()
        pull(c, credits=4, batch_size=8, pairs=[pb.Pair(source="A", target="B")], steps=[0], epoch=True, seed=3)
        crops = {}
        for _ in range(4):
            b, _, _ = recv_batch(c)
            for s in b.samples:
                crops.setdefault(s.epoch, []).append((s.source_file, s.crop_x, s.crop_y))
        self.assertGreaterEqual(len(crops), 3, "32 samples span several epochs of a few tiles")
        first = crops[1]
        self.assertEqual(len(first), len(set(first)), "a tile repeated within an epoch")
        self.assertEqual(sorted(first), sorted(crops[2]), "epochs cover the same tiles")
        self.assertEqual({f for f, _, _ in first}, {"image/img0.png", "image/img1.png", "image/img2.png"})

    def test_idle_clients_expire(self):
        d = self.start(extra=["--idle-timeout", "1", "--heartbeat-interval", "0.1"])
        quiet, chatty = d.client(), d.client()
        chatty.send(cmsg(hello=pb.Hello(client_name="chatty")))
        recv_msg(chatty)
        for c in (quiet, chatty):
            pull(c, credits=1, batch_size=1, targets=["B"], steps=[0])
            recv_batch(c)
        self.assertEqual(len(d.status().clients), 2)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and len(d.status().clients) == 2:
            chatty.send(cmsg(heartbeat=pb.Heartbeat(time_ms=1)))
            time.sleep(0.1)
        start = time.monotonic()
        while time.monotonic() - start < 2.5:  # more than twice the idle timeout
            chatty.send(cmsg(heartbeat=pb.Heartbeat(time_ms=1)))
            time.sleep(0.1)
        (left,) = d.status().clients
        self.assertEqual(left.name, "chatty")
        self.assertIn("idle timeout", d.log_text())


# ---------------------------------------------------------------- status, signals, systemd notify

class OperationsTest(DaemonTestCase):
    def test_status_reply(self):
        d = self.start()
        c = d.client()
        c.send(cmsg(hello=pb.Hello(min_version=1, max_version=1, client_name="trainer-7")))
        recv_msg(c)
        pull(c, credits=2, batch_size=4, pairs=[pb.Pair(source="A", target="B")], steps=[0, 4])
        for _ in range(2):
            recv_batch(c)
        st = d.status()
        self.assertEqual(st.version, 1)
        self.assertGreater(st.uptime_s, 0)
        self.assertEqual([m.hash for m in st.models], [self.model_hash])
        cfg = {e.key: e.value for e in st.config}
        self.assertEqual(cfg["bind"], d.endpoint)
        self.assertEqual(cfg["workers"], "1")
        self.assertEqual(st.workers, 1)
        self.assertEqual(st.samples_sent, 8)
        self.assertGreaterEqual(st.samples_produced, 8)
        self.assertEqual(st.batches_sent, 2)
        self.assertEqual([(x.domain, x.items) for x in st.dataset], [("A", 3), ("B", 3)])
        self.assertEqual(st.dataset_skipped, 0)
        self.assertGreater(st.resident_bytes, 1 << 20)
        (cl,) = st.clients
        self.assertEqual((cl.name, cl.samples_sent, cl.batch_size), ("trainer-7", 8, 4))
        self.assertEqual(cl.credits, 0)
        e = {(x.source, x.target): x for x in st.energies}
        self.assertIn(("A", "B"), e)
        self.assertGreaterEqual(e[("A", "B")].count, 8)
        self.assertLessEqual(e[("A", "B")].min, e[("A", "B")].mean)
        self.assertLessEqual(e[("A", "B")].mean, e[("A", "B")].max)
        self.assertEqual(st.last_reload, "")
        # a malformed status request gets an error reply, and the socket keeps working
        s = d.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(d.status_endpoint)
        s.send(b"\xff\xff\xff")
        self.assertTrue(s.poll(int(WAIT * 1000)))
        r = pb.StatusReply()
        r.ParseFromString(s.recv())
        self.assertEqual(r.error.code, pb.ERROR_MALFORMED)
        s.close()
        self.assertEqual(d.status().samples_sent, 8)

    def test_resident_memory_stays_flat(self):
        """A bounded soak: 30 MB of batches pass through; a leak of even a
        third of them would show in the resident size."""
        # Under AddressSanitizer freed memory sits in a quarantine: turn it off.
        asan = os.environ.get("ASAN_OPTIONS", "")
        asan += (":" if asan else "") + "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
        d = self.start(extra=["--queue-capacity", "4"], env={"ASAN_OPTIONS": asan})
        c = d.client()
        pull(c, credits=4, batch_size=64, targets=["B"], steps=[0], encoding=pb.ENCODING_FLOAT32)
        rss = []
        for k in range(160):
            recv_batch(c)
            pull(c, credits=1)
            if k in (39, 159):
                rss.append(d.status().resident_bytes)
        self.assertLess(rss[1] - rss[0], 8 << 20, "resident memory grew from %d to %d bytes" % tuple(rss))

    def test_sigterm_drains_and_exits_zero(self):
        d = self.start()
        c = d.client()
        pull(c, credits=2, batch_size=2, targets=["B"], steps=[0, 2])
        recv_batch(c)
        self.assertEqual(d.stop(signal.SIGTERM), 0)
        self.assertIn("draining", d.log_text())
        d2 = self.start()
        self.assertEqual(d2.stop(signal.SIGINT), 0)

    def test_sighup_reloads_a_good_model_and_keeps_serving_after_a_bad_one(self):
        model = os.path.join(self.tmp, "reload.safetensors")
        shutil.copy(self.model, model)
        d = self.start(model=model)
        c = d.client()
        pull(c, credits=1, batch_size=2, targets=["B"], steps=[0])
        b, _, _ = recv_batch(c)
        self.assertEqual(b.samples[0].model_hash, self.model_hash)
        new_hash = write_model(model + ".tmp", seed=99)
        os.replace(model + ".tmp", model)
        st = d.reload("ok")
        self.assertEqual([m.hash for m in st.models], [new_hash])
        pull(c, credits=1)  # the session and its request survive the reload
        b, _, _ = recv_batch(c)
        self.assertEqual([s.model_hash for s in b.samples], [new_hash] * 2)
        with open(model, "r+b") as f:  # corrupt: header length beyond the file
            f.write(struct.pack("<Q", 1 << 40))
        st = d.reload("failed")
        self.assertIn(model, st.last_reload)
        self.assertEqual([m.hash for m in st.models], [new_hash], "the running model stays")
        self.assertIn("reload failed", d.log_text())
        pull(c, credits=1)
        b, _, _ = recv_batch(c)
        self.assertEqual([s.model_hash for s in b.samples], [new_hash] * 2)
        self.assertEqual(d.stop(), 0)

    def test_notify_protocol(self):
        path = os.path.join(self.tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(WAIT)
        try:
            d = self.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
            seen = []

            def wait_for(word):
                deadline = time.monotonic() + WAIT
                while time.monotonic() < deadline:
                    msg = sock.recv(4096).decode()
                    seen.append(msg)
                    if word in msg.split("\n"):
                        return msg
                self.fail("no %s; got %s" % (word, seen))

            self.assertIn("STATUS=", wait_for("READY=1"))
            wait_for("WATCHDOG=1")
            wait_for("WATCHDOG=1")
            d.proc.send_signal(signal.SIGHUP)
            wait_for("RELOADING=1")
            wait_for("READY=1")
            d.proc.send_signal(signal.SIGTERM)
            wait_for("STOPPING=1")
            self.assertEqual(d.stop(), 0, d.log_text())
        finally:
            sock.close()


if __name__ == "__main__":
    unittest.main()
