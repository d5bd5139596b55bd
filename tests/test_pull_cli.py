"""`langdaug pull`, `langdaug status` and `langdaug bench` against the real daemon.

pull's PNG files are checked pixel for pixel against what the Python client
receives for the same seed (the daemon's stream is a function of the seed),
so the images, and the masks with and without --mask-values, must match
exactly; --format npz likewise. Also: the CSV, usage errors, status as a
table, as JSON and in --watch mode, and bench's report. Fixtures (daemon,
tiny model, tiny dataset) come from tests/ldtest.py.
"""
import csv
import json
import os
import re
import pty
import shutil
import subprocess
import tempfile
import time
import unittest

import numpy as np
from PIL import Image

from ldtest import (CLI, DOMAINS, TARGET, WAIT, C, CurveFixture, S, SamplerTestCase, free_port, interrupt_when,
                    run_cli)

from langdaug.client import Client

SEED = 21


def cli(*args, timeout=60):
    return run_cli(*args, timeout=timeout)


def commands_missing():
    if not os.access(CLI, os.X_OK):
        return "%s is not built yet" % CLI
    for cmd in ("pull", "status", "bench"):
        if cli(cmd, "--help").returncode != 0:
            return "`langdaug %s` is not in the command table of client/langdaug.c yet" % cmd
    return None


class PullCliTest(SamplerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.skip_reason = commands_missing()
        super().setUpClass()

    def setUp(self):
        super().setUp()
        self.out = tempfile.mkdtemp(prefix="langdaug-pull-")
        self.addCleanup(shutil.rmtree, self.out, True)

    def reference(self, n, batch, dtype, keep=None):
        """The first n samples of the seeded stream, as the Python client gets them."""
        images, masks, meta = [], [], []
        with Client(self.sampler.endpoint, batch, targets=[TARGET], dtype=dtype, seed=SEED, timeout=WAIT,
                    keep=keep) as c:
            while len(meta) < n:
                b = c.next()
                images.append(np.array(b.images))
                masks.append(np.array(b.masks))
                meta += b.meta
        return np.concatenate(images)[:n], np.concatenate(masks)[:n], meta[:n]

    def pull(self, *extra):
        r = cli("pull", "--from", self.sampler.endpoint, "--targets", TARGET, "--seed", SEED, "--out", self.out,
                "--timeout", WAIT, *extra)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(self.out, "samples.csv"), newline="") as f:
            return list(csv.DictReader(f))

    def test_png_layout_and_content(self):
        rows = self.pull("-n", 10, "--batch", 4)
        images, masks, meta = self.reference(10, 4, "uint8")
        self.assertEqual(len(rows), 10)
        for k, row in enumerate(rows):
            self.assertEqual(int(row["index"]), k)
            pair = "%s2%s" % (meta[k]["source_domain"], meta[k]["target_domain"])
            self.assertEqual(row["image"], "%s/image/%08d.png" % (pair, k))
            self.assertEqual(row["mask"], "%s/mask/%08d.png" % (pair, k))
            for key in ("source_domain", "target_domain", "source_file", "model_hash"):
                self.assertEqual(row[key], str(meta[k][key]))
            for key in ("step", "chain_id", "seed", "crop_x", "crop_y", "source_item"):
                self.assertEqual(int(row[key]), meta[k][key])
            self.assertAlmostEqual(float(row["energy"]), meta[k]["energy"], places=5)
            img = Image.open(os.path.join(self.out, row["image"]))
            mask = Image.open(os.path.join(self.out, row["mask"]))
            self.assertEqual((img.mode, img.size), ("RGB", (S, S)))
            self.assertEqual((mask.mode, mask.size), ("L", (S, S)))
            np.testing.assert_array_equal(np.asarray(img), images[k].transpose(1, 2, 0))
            np.testing.assert_array_equal(np.asarray(mask), masks[k])
        self.assertFalse([f for _, _, files in os.walk(self.out) for f in files if f.startswith(".")],
                         "temporary files left behind")

    def test_progress_bar_only_on_a_terminal(self):
        master, slave = pty.openpty()
        try:
            r = subprocess.run([CLI, "pull", "--from", self.sampler.endpoint, "--targets", TARGET, "-n", "6", "--batch", "2",
                                "--out", self.out, "--timeout", str(WAIT)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=slave, timeout=60)
            self.assertEqual(r.returncode, 0)
            os.set_blocking(master, False)
            tty = b""
            try:
                while True:
                    chunk = os.read(master, 65536)
                    if not chunk:
                        break
                    tty += chunk
            except (BlockingIOError, OSError):
                pass
        finally:
            os.close(master)
            os.close(slave)
        self.assertIn(b"\r[", tty)
        self.assertIn(b"] 6/6 samples", tty)
        r = cli("pull", "--from", self.sampler.endpoint, "--targets", TARGET, "-n", 2, "--out", self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("\r", r.stderr)
        self.assertIn("wrote 2 samples", r.stderr)

    def test_interrupted_pull_keeps_a_consistent_folder(self):
        proc = subprocess.Popen([CLI, "pull", "--from", self.sampler.endpoint, "--targets", TARGET, "-n", "1000000",
                                 "--batch", "2", "--out", self.out, "-q"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        _, err = interrupt_when(proc, lambda: sum(len(files) for _, _, files in os.walk(self.out)) >= 8, WAIT)
        self.assertEqual(proc.returncode, 130, err)
        self.assertIn("interrupted", err)
        with open(os.path.join(self.out, "samples.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        images = sorted(os.path.join(d, f) for d, _, files in os.walk(self.out) for f in files
                        if os.path.basename(d) == "image")
        self.assertGreaterEqual(len(rows), 2)
        self.assertEqual(sorted(os.path.join(self.out, r["image"]) for r in rows), images)
        self.assertFalse([f for _, _, files in os.walk(self.out) for f in files if f.startswith(".")])

    def assert_mask_files(self, rows, n, class0_value, other_value):
        """The mask PNGs of rows are the first n reference masks with class 0
        written as class0_value and every other class as other_value."""
        _, masks, _ = self.reference(n, n, "uint8")
        self.assertEqual(len(rows), n)
        for k, row in enumerate(rows):
            got = np.asarray(Image.open(os.path.join(self.out, row["mask"])))
            np.testing.assert_array_equal(got, np.where(masks[k] == 0, class0_value, other_value))

    def test_mask_values(self):
        rows = self.pull("-n", 3, "--batch", 3, "--mask-values", "255,7")
        self.assert_mask_files(rows, 3, 255, 7)

    def test_maskmap(self):
        rows = self.pull("-n", 2, "--batch", 2, "--maskmap", "0:0,*:1")
        self.assert_mask_files(rows, 2, 0, 255)
        for args in (["--maskmap", "0:0,*:1", "--mask-values", "0,1"], ["--maskmap", "0:0,*:2"],
                     ["--maskmap", "x"]):
            r = cli("pull", "--from", self.sampler.endpoint, "--targets", TARGET, "-n", 1, "--out", self.out, *args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn("--ma", r.stderr)

    def test_npz(self):
        rows = self.pull("-n", 6, "--batch", 4, "--format", "npz")
        images, masks, meta = self.reference(6, 4, "float32")
        self.assertEqual([r["image"] for r in rows], ["batch_000000.npz"] * 4 + ["batch_000001.npz"] * 2)
        parts = [np.load(os.path.join(self.out, "batch_%06d.npz" % i)) for i in range(2)]
        self.assertEqual(parts[0]["images"].shape, (4, C, S, S))
        self.assertEqual(parts[1]["images"].shape, (2, C, S, S))
        self.assertEqual(parts[0]["images"].dtype, np.float32)
        np.testing.assert_array_equal(np.concatenate([p["images"] for p in parts]), images)
        np.testing.assert_array_equal(np.concatenate([p["masks"] for p in parts]), masks)
        chain = np.concatenate([p["chain_id"] for p in parts])
        step = np.concatenate([p["step"] for p in parts])
        self.assertEqual(chain.dtype, np.uint64)
        self.assertEqual(chain.tolist(), [m["chain_id"] for m in meta])
        self.assertEqual(step.tolist(), [m["step"] for m in meta])
        self.assertEqual([int(r["row"]) for r in rows], [0, 1, 2, 3, 0, 1])

    def test_keep(self):
        self.pull("-n", 4, "--batch", 4, "--format", "npz", "--keep", "luminance")
        got = np.load(os.path.join(self.out, "batch_000000.npz"))["images"]
        kept, _, meta = self.reference(4, 4, "float32", keep="luminance")
        free, _, _ = self.reference(4, 4, "float32", keep="none")
        np.testing.assert_array_equal(got, kept)
        later = [k for k, m in enumerate(meta) if m["step"] > 0]
        self.assertTrue(later and not np.array_equal(kept[later], free[later]), "--keep changed nothing")

    def test_usage_errors(self):
        ep = self.sampler.endpoint
        for args, word in [(["-n", 1, "--targets", TARGET, "--from", ep], "--out"),
                           (["--out", self.out, "--targets", TARGET, "--from", ep], "-n"),
                           (["-n", 1, "--out", self.out, "--targets", TARGET], "--from"),
                           (["-n", 0, "--out", self.out, "--targets", TARGET, "--from", ep], "-n"),
                           (["-n", 1, "--out", self.out, "--pairs", "A", "--from", ep], "--pairs"),
                           (["-n", 1, "--out", self.out, "--targets", "B,,A", "--from", ep], "--targets"),
                           (["-n", 1, "--out", self.out, "--targets", TARGET, "--from", ep, "--format", "jpg"], "--format"),
                           (["-n", 1, "--out", self.out, "--targets", TARGET, "--from", ep, "--steps", "4,2"], "--steps"),
                           (["-n", 1, "--out", self.out, "--targets", TARGET, "--from", ep, "--encoding", "f8"], "--encoding"),
                           (["-n", 1, "--out", self.out, "--targets", TARGET, "--from", ep, "--keep", "L"],
                            "--keep: 'L' is not none or luminance"),
                           (["-n", 1, "--out", self.out, "--targets", TARGET, "--from", ep, "--bogus"], "--bogus"),
                           (["-n", 1, "--out", self.out, "--targets", TARGET, "--from", ep, "extra"], "extra")]:
            r = cli("pull", *args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(word, r.stderr)
        self.assertEqual(os.listdir(self.out), [])

    def test_every_served_pair_without_targets_or_pairs(self):
        r = cli("pull", "--from", self.sampler.endpoint, "-n", 40, "--batch", 4, "--seed", SEED, "--out", self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("every (source, target) pair the sampler serves", r.stderr)
        with open(os.path.join(self.out, "samples.csv"), newline="") as f:
            pairs = [(row["source_domain"], row["target_domain"]) for row in csv.DictReader(f)]
        served = {(a, b) for a in DOMAINS for b in DOMAINS if a != b}
        self.assertEqual(len(pairs), 40)
        self.assertEqual(set(pairs), served)  # both directions, never a domain to itself
        # the closing line names every pair pulled with its count, as samples.csv has them
        counts = {p: pairs.count(p) for p in served}
        said = re.search(r"wrote 40 samples to .* \((.*)\)\n", r.stderr).group(1)
        self.assertEqual({tuple(name.split(">")): int(n) for name, n in (x.split(" ") for x in said.split(", "))},
                         counts)
        with Client(self.sampler.endpoint, 8, seed=SEED, timeout=WAIT) as c:
            got = set()
            for _ in range(6):
                got |= {(m["source_domain"], m["target_domain"]) for m in c.next(timeout=WAIT).meta}
        self.assertEqual(got, served)

    def test_refused_request_fails_cleanly(self):
        r = cli("pull", "--from", self.sampler.endpoint, "--targets", "nope", "-n", 2, "--out", self.out,
                "--timeout", WAIT)
        self.assertEqual(r.returncode, 1)
        self.assertIn("ERROR_UNKNOWN_DOMAIN", r.stderr)
        self.assertEqual(os.listdir(self.out), [], "no CSV for a failed run")

    def test_status(self):
        r = cli("status", self.sampler.status_endpoint)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("langdaugd", r.stdout)
        self.assertIn("dataset: cam0 (2) cam1 (2)", r.stdout)
        r = cli("status", "--json", self.sampler.status_endpoint)
        self.assertEqual(r.returncode, 0, r.stderr)
        status = json.loads(r.stdout)
        self.assertEqual(status["models"][0]["domains"], DOMAINS)
        self.assertEqual(status["models"][0]["size"], S)
        self.assertIn({"key": "bind", "value": self.sampler.endpoint}, status["config"])
        t0 = time.monotonic()
        r = cli("status", "--json", "--watch=0.1", "--count", 3, self.sampler.status_endpoint)
        self.assertEqual(r.returncode, 0, r.stderr)
        uptimes = [json.loads(line)["uptime_s"] for line in r.stdout.splitlines()]
        self.assertEqual(len(uptimes), 3)
        self.assertTrue(uptimes[0] < uptimes[1] < uptimes[2], uptimes)
        self.assertLess(time.monotonic() - t0, WAIT)
        for args in (["--watch", "0.1", self.sampler.status_endpoint], [self.sampler.status_endpoint, "--watch", "0.1"],
                     ["--watch", self.sampler.status_endpoint]):
            r = cli("status", "--json", "--count", 2, *args)
            self.assertEqual(r.returncode, 0, (args, r.stderr))
            self.assertEqual(len(r.stdout.splitlines()), 2, args)

    def test_status_errors(self):
        r = cli("status", "tcp://127.0.0.1:%d" % free_port(), "--timeout", 0.3)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no status reply", r.stderr)
        for args in (["--json"], ["--count", 2, self.sampler.status_endpoint], ["--watch=x", "tcp://x:1"]):
            self.assertEqual(cli("status", *args).returncode, 2, args)

    def test_bench(self):
        r = cli("bench", "--from", self.sampler.endpoint, "--targets", TARGET, "--seconds", 0.5, "--batch", 4)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("first batch after"), lines)
        self.assertTrue(lines[-1].startswith("total"), lines)
        self.assertIn("MB/s", lines[-1])
        self.assertEqual(cli("bench", "--targets", TARGET).returncode, 2)


class CurveCliTest(unittest.TestCase):
    def test_pull_and_status_with_keys(self):
        missing = commands_missing()
        if missing:
            self.skipTest(missing)
        keys = CurveFixture(self)
        out = os.path.join(self.fx.dir, "out")
        key_args = ["--curve-server-key", keys.server_pub, "--curve-secret-key", keys.client_sec]
        r = cli("pull", "--from", keys.sampler.endpoint, "--targets", TARGET, "-n", 2, "--out", out,
                "--timeout", WAIT, *key_args)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "samples.csv")) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 2)
        self.assertTrue(all(os.path.exists(os.path.join(out, row["image"])) for row in rows))
        r = cli("status", "--json", keys.sampler.status_endpoint, *key_args)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["models"][0]["domains"], DOMAINS)
        r = cli("status", keys.sampler.status_endpoint, "--timeout", 0.5)  # no keys: no answer
        self.assertEqual(r.returncode, 1)
        r = cli("bench", "--from", keys.sampler.endpoint, "--targets", TARGET, "--timeout", 1, "--seconds", 0.1,
                "--curve-server-key", keys.server_pub, "--curve-secret-key", keys.server_pub)
        self.assertEqual(r.returncode, 1, "a public key is no secret key file: %s" % r.stderr)
        os.chmod(keys.client_sec, 0o644)
        r = cli("pull", "--from", keys.sampler.endpoint, "--targets", TARGET, "-n", 1, "--out", out, *key_args)
        self.assertEqual(r.returncode, 1, "a secret key others may read is refused")
        self.assertIn(keys.client_sec, r.stderr)
        r = cli("pull", "--from", keys.sampler.endpoint, "--targets", TARGET, "-n", 1, "--out", out,
                "--curve-server-key", keys.server_pub)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--curve-secret-key", r.stderr)


if __name__ == "__main__":
    unittest.main()
