"""The study tools in examples/: langdaug_chains.py, domain_stats.py and
results_table.py on hand-made data whose answers are known, and
train_segmenter.py trained on samples that a real sampler on 127.0.0.1 wrote
through `langdaug pull`, including the errors it must give for samples of the
held-out domain, wrong sizes and missing files, and its --jobs workers dying
with a killed trainer."""
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import numpy as np
from PIL import Image

from ldtest import CLI, DAEMON, HERE, run_cli, sampler_daemon

EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
CHAINS = os.path.join(EXAMPLES, "langdaug_chains.py")
SEGMENTER = os.path.join(EXAMPLES, "train_segmenter.py")
WAIT = 120  # seconds for one example run (torch import included)
S = 16
DOMAINS = ["cam0", "cam1", "cam2"]


def run_py(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=WAIT)


def write_pull_folder(folder, chains):
    """A folder in the layout of `langdaug pull --format png`: chains is a list of
    (source, target, {step: (image uint8 SxSx3, mask uint8 SxS)})."""
    rows = []
    for chain_id, (src, tgt, snaps) in enumerate(chains):
        for step, (img, mask) in sorted(snaps.items()):
            k = len(rows)
            sub = "%s2%s" % (src, tgt)
            os.makedirs(os.path.join(folder, sub, "image"), exist_ok=True)
            os.makedirs(os.path.join(folder, sub, "mask"), exist_ok=True)
            image, maskf = "%s/image/%08d.png" % (sub, k), "%s/mask/%08d.png" % (sub, k)
            Image.fromarray(img).save(os.path.join(folder, image))
            Image.fromarray(mask).save(os.path.join(folder, maskf))
            rows.append(dict(index=k, image=image, mask=maskf, source_domain=src, target_domain=tgt, step=step,
                             energy=-float(step), chain_id=chain_id, seed=1))
    with open(os.path.join(folder, "samples.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def children(ppid, needle):
    """PIDs of the processes whose parent is ppid and whose command line contains needle."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if parent == ppid and needle in cmd:
            out.append(int(d))
    return out


def alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(probe, seconds):
    """probe()'s first truthy value within `seconds` (polled every 50 ms), else None."""
    deadline = time.monotonic() + seconds
    while True:
        v = probe()
        if v or time.monotonic() >= deadline:
            return v or None
        time.sleep(0.05)


def table_rows(text):
    """{(pair, step): (chains, change, progress, contrast, detail, energy)} from langdaug_chains.py's table."""
    out = {}
    for m in re.finditer(r"^\| (\S+) \| (\d+) \| (\d+) \| (\S+) \| (\S+) \| (\S+) \| (\S+) \| (\S+) \|$", text,
                         re.M):
        out[(m[1], int(m[2]))] = (int(m[3]), *(float(v) if v != "-" else None for v in m.groups()[3:]))
    return out


class ChainsReportTest(unittest.TestCase):
    """Chains built by hand: A is dark, B bright; the mask is a bright stripe on the left half."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="langdaug-chains-test-")
        self.mask = np.zeros((S, S), np.uint8)
        self.mask[:, :S // 2] = 1

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def crop(self, level, stripe):
        img = np.full((S, S, 3), level, np.uint8)
        img[:, :S // 2] += stripe
        return img

    def test_known_change_progress_and_contrast(self):
        a, b = self.crop(40, 60), self.crop(140, 60)
        washed = self.crop(90, 0)     # halfway in mean colour, stripe gone
        same = a.copy()
        write_pull_folder(self.dir, [
            ("A", "B", {0: (a, self.mask), 5: (same, self.mask), 10: (b, self.mask)}),
            ("B", "A", {0: (b, self.mask), 10: (washed, self.mask)}),
        ])
        r = run_py(CHAINS, self.dir, "--per-pair")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = table_rows(r.stdout)
        self.assertEqual(set(rows), {("A>B", 5), ("A>B", 10), ("B>A", 10)}, r.stdout)
        chains, change, progress, contrast, detail, energy = rows[("A>B", 5)]
        self.assertEqual((chains, change, progress, contrast, detail, energy), (1, 0.0, 0.0, 1.0, 1.0, -5.0))
        _, change, progress, contrast, detail, _ = rows[("A>B", 10)]
        self.assertAlmostEqual(change, 100 / 255, places=3)
        self.assertAlmostEqual(progress, 1.0, places=3)
        self.assertAlmostEqual(contrast, 1.0, places=3)
        self.assertAlmostEqual(detail, 1.0, places=3)   # the same stripe edge, brighter
        _, change, progress, contrast, detail, _ = rows[("B>A", 10)]
        # the stripe lost its 60 levels: mean moved 80 of B->A's 100, and the spread went to 0
        self.assertAlmostEqual(contrast, 0.0, places=3)
        self.assertAlmostEqual(detail, 0.0, places=3)
        self.assertAlmostEqual(progress, 0.8, places=3)

    def test_without_step_zero_is_an_error(self):
        a = self.crop(40, 60)
        write_pull_folder(self.dir, [("A", "B", {5: (a, self.mask)})])
        r = run_py(CHAINS, self.dir)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no step-0", r.stderr)

    def test_missing_folder_is_an_error_naming_it(self):
        r = run_py(CHAINS, os.path.join(self.dir, "nowhere"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("nowhere", r.stderr)


class DomainStatsTest(unittest.TestCase):
    """examples/domain_stats.py on domains drawn by hand: A has a dark vessel stripe, B and C are flat."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="langdaug-stats-test-")
        half = np.zeros((8, 8), bool)
        half[:, :4] = True
        striped = np.zeros((8, 8, 3), np.uint8)
        striped[..., 0], striped[..., 2] = 200, 40
        striped[..., 1] = np.where(half, 50, 150)
        self.write("A", striped, half)
        self.write("B", np.full((8, 8, 3), 100, np.uint8), half)
        self.write("C", np.full((8, 8, 3), (220, 100, 100), np.uint8), half)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, domain, img, fg):
        for sub in ("image", "mask"):
            os.makedirs(os.path.join(self.dir, domain, sub))
        Image.fromarray(img).save(os.path.join(self.dir, domain, "image", "1.png"))
        Image.fromarray(fg.astype(np.uint8) * 255).save(os.path.join(self.dir, domain, "mask", "1.png"))

    def test_known_statistics_and_distance_outside_the_sources(self):
        r = run_py(os.path.join(EXAMPLES, "domain_stats.py"), self.dir, "--holdout", "C")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = {m[1]: m[2].split(" | ") for m in re.finditer(r"^\| (.+?) \| (.*) \|$", r.stdout, re.M)}
        a, b = [list(map(float, rows[d])) for d in ("A", "B")]
        # mean R,G,B; sd R,G,B; detail; vessel
        self.assertAlmostEqual(a[0], 200 / 255, places=4)
        self.assertAlmostEqual(a[2], 40 / 255, places=4)
        self.assertAlmostEqual(a[1], 100 / 255, places=4)
        self.assertAlmostEqual(a[4], 50 / 255, places=4)
        self.assertEqual((a[3], a[5]), (0.0, 0.0))
        self.assertGreater(a[6], 0.0)              # the stripe's edge is detail
        self.assertAlmostEqual(a[7], 2.0, places=4)  # (150 - 50) / 50
        self.assertEqual(b[6], 0.0)                # a flat image has none
        self.assertEqual(rows["B"][7], "nan")      # no contrast to measure
        outside = list(map(float, rows["C outside the sources by"]))
        self.assertAlmostEqual(outside[0], 20 / 255, places=4)
        self.assertEqual(outside[1:6], [0.0] * 5)

    def test_unknown_holdout_is_refused(self):
        r = run_py(os.path.join(EXAMPLES, "domain_stats.py"), self.dir, "--holdout", "D")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--holdout D", r.stderr)


class ResultsTableTest(unittest.TestCase):
    """examples/results_table.py over two hand-written results.csv files."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="langdaug-results-test-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, holdout, rows):
        folder = os.path.join(self.dir, holdout)
        os.makedirs(folder)
        with open(os.path.join(folder, "results.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["holdout", "variant", "seed", "dice", "iou", "seconds"])
            for variant, seed, dice in rows:
                w.writerow([holdout, variant, seed, dice, dice / 2, 1.0])
        return folder

    def test_per_domain_rows_and_the_mean_over_domains_per_seed(self):
        a = self.write("A", [("none", 0, 0.5), ("none", 1, 0.7), ("langdaug", 0, 0.6), ("langdaug", 1, 0.6)])
        b = self.write("B", [("none", 0, 0.3), ("none", 1, 0.5), ("none", 2, 0.9), ("langdaug", 0, 0.8)])
        out, png = os.path.join(self.dir, "all.md"), os.path.join(self.dir, "all.png")
        r = run_py(os.path.join(EXAMPLES, "results_table.py"), a, b, "--out", out, "--plot", png)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            self.assertEqual(f.read(), r.stdout)
        with Image.open(png) as im:
            self.assertEqual(im.format, "PNG")
        rows = {(m[1], m[2]): (int(m[3]), float(m[4]), float(m[5]))
                for m in re.finditer(r"^\| (.+?) \| (\S+) \| (\d+) \| ([\d.]+) ± ([\d.]+) \|", r.stdout, re.M)}
        self.assertEqual(rows[("A", "none")], (2, 0.6, 0.1))
        self.assertEqual(rows[("B", "none")][:2], (3, round(1.7 / 3, 4)))
        # seeds present for both: none 0 -> (0.5+0.3)/2, 1 -> (0.7+0.5)/2; langdaug only seed 0 -> 0.7
        self.assertEqual(rows[("mean of 2", "none")], (2, 0.5, 0.1))
        self.assertEqual(rows[("mean of 2", "langdaug")], (1, 0.7, 0.0))
        self.assertLess(r.stdout.index("| none |"), r.stdout.index("| langdaug |"))

    def test_not_a_results_file_is_an_error_naming_it(self):
        folder = os.path.join(self.dir, "x")
        os.makedirs(folder)
        with open(os.path.join(folder, "results.csv"), "w") as f:
            f.write("a,b\n1,2\n")
        r = run_py(os.path.join(EXAMPLES, "results_table.py"), folder)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(os.path.join(folder, "results.csv"), r.stderr)


class SegmenterOnPulledSamplesTest(unittest.TestCase):
    """Three synthetic cameras; the sampler serves cam0 and cam1 only, so cam2 is an honest held-out domain."""

    @classmethod
    def setUpClass(cls):
        cls.dir = None
        for path in (DAEMON, CLI):
            if not os.access(path, os.X_OK):
                raise unittest.SkipTest("%s is not built yet" % path)
        cls.dir = tempfile.mkdtemp(prefix="langdaug-segmenter-test-")
        cls.data = os.path.join(cls.dir, "data")
        cls.pulled = os.path.join(cls.dir, "pulled")
        model = os.path.join(cls.dir, "m.safetensors")
        for args in (("init-model", "--out", model, "--size", S, "--widths", "4,8", "--domains", ",".join(DOMAINS),
                      "--mask-classes", 2, "--image-channels", 3, "--seed", 3),
                     ("synth", "--out", cls.data, "--domains", 3, "--per-domain", 2, "--size", 32, "--seed", 7)):
            r = run_cli(*args, timeout=60)
            if r.returncode:
                raise AssertionError("langdaug %s failed: %s" % (args[0], r.stderr))
        sampler = sampler_daemon(cls.dir, model, cls.data, extra=["--domains", "cam0,cam1"])
        try:
            r = run_cli("pull", "--from", sampler.endpoint, "-n", 24, "--batch", 12, "--targets", "cam0,cam1", "--steps", "0,2,4",
                        "--seed", 5, "--timeout", 30, "-q", "--out", cls.pulled, timeout=WAIT)
        finally:
            sampler.stop()
        if r.returncode:
            raise AssertionError("langdaug pull failed: %s\n%s" % (r.stderr, sampler.log_tail()))

    @classmethod
    def tearDownClass(cls):
        if cls.dir:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def segmenter(self, *extra, holdout="cam2", size=S):
        out = tempfile.mkdtemp(prefix="seg-", dir=self.dir)
        return out, run_py(SEGMENTER, "--data", self.data, "--holdout", holdout, "--size", size, "--batch", 4,
                           "--iters", 3, "--seeds", 0, "--threads", 1, "--out", out, *extra)

    def test_chains_report_on_real_pull(self):
        r = run_py(CHAINS, self.pulled)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = table_rows(r.stdout)
        self.assertEqual(set(rows), {("all", 2), ("all", 4)}, r.stdout)
        self.assertEqual(rows[("all", 2)][0] + rows[("all", 4)][0], 16)  # 8 chains x 2 steps after step 0

    def test_trains_on_pulled_samples_of_chosen_steps(self):
        out, r = self.segmenter("--variants", "none,langdaug", "--langdaug-dir", self.pulled, "--steps", "2,4")
        self.assertEqual(r.returncode, 0, r.stderr)
        loaded = re.search(r"^LangDAug samples loaded: (\d+) \((.*)\)$", r.stdout, re.M)
        self.assertIsNotNone(loaded, r.stdout)
        self.assertEqual(int(loaded[1]), 16)
        self.assertNotIn("@0:", loaded[2])
        with open(os.path.join(out, "results.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([(x["holdout"], x["variant"]) for x in rows], [("cam2", "none"), ("cam2", "langdaug")])
        for x in rows:
            self.assertTrue(0.0 <= float(x["dice"]) <= 1.0, x)
        self.assertTrue(os.path.exists(os.path.join(out, "results.png")))

    def test_parallel_runs_give_the_serial_results(self):
        common = ("--variants", "none,langdaug", "--seeds", "0,1", "--langdaug-dir", self.pulled)
        results = []
        for jobs in ("1", "2"):
            out, r = self.segmenter(*common, "--jobs", jobs)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(out, "results.csv"), newline="") as f:
                results.append([(x["variant"], x["seed"], x["dice"], x["iou"]) for x in csv.DictReader(f)])
        self.assertEqual(len(results[0]), 4)
        self.assertEqual(results[0], results[1])

    def test_workers_die_with_a_killed_trainer(self):
        out = tempfile.mkdtemp(prefix="seg-", dir=self.dir)
        args = [SEGMENTER, "--data", self.data, "--holdout", "cam2", "--size", S, "--batch", 4, "--iters", 10 ** 6,
                "--seeds", "0,1", "--threads", 1, "--jobs", 2, "--variants", "none", "--out", out]
        proc = subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines, workers = [], []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        try:
            # both workers training (each prints its progress after 10 s), not still starting up
            training = wait_for(lambda: sum("[none seed" in x for x in list(lines)) >= 2, WAIT)
            self.assertTrue(training, "workers did not report progress:\n" + "".join(lines))
            workers = children(proc.pid, "spawn_main")
            self.assertEqual(len(workers), 2, workers)
            proc.kill()
            proc.wait(WAIT)
            left = wait_for(lambda: not any(alive(pid) for pid in workers) or None, WAIT)
            self.assertTrue(left, "workers %s outlived the trainer" % workers)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in workers:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            reader.join(WAIT)
            proc.stdout.close()

    def test_unknown_classic_operation_is_refused(self):
        _, r = self.segmenter("--variants", "classic", "--classic", "gamma,sharpen")
        self.assertEqual(r.returncode, 2)
        self.assertIn("'sharpen' is unknown", r.stderr)

    def test_parallel_runs_need_pulled_samples(self):
        _, r = self.segmenter("--variants", "langdaug", "--jobs", "2", "--sampler", "tcp://127.0.0.1:1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--jobs", r.stderr)

    def test_samples_touching_the_held_out_domain_are_refused(self):
        _, r = self.segmenter("--variants", "langdaug", "--langdaug-dir", self.pulled, holdout="cam1")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("held-out domain", r.stderr)

    def test_wrong_crop_size_is_an_error_naming_the_file(self):
        _, r = self.segmenter("--variants", "langdaug", "--langdaug-dir", self.pulled, size=32)
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stderr, r"\.png: 16x16 sample, but --size is 32")

    def test_no_samples_at_the_steps_asked(self):
        _, r = self.segmenter("--variants", "langdaug", "--langdaug-dir", self.pulled, "--steps", "3")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no samples at steps 3", r.stderr)

    def test_sampler_and_folder_together_are_refused(self):
        _, r = self.segmenter("--variants", "langdaug", "--langdaug-dir", self.pulled,
                              "--sampler", "tcp://127.0.0.1:1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("not both", r.stderr)


if __name__ == "__main__":
    unittest.main()
