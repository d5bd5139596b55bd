"""`langdaug train` end to end: argument and data errors before any work,
progress and outputs (model provenance, checkpoint, curve, previews), and
SIGINT -> checkpoint -> --resume giving the same state as a straight run.

Skips when the CLI has no `train` command registered. Every subprocess wait
is bounded in time; the data is a tiny `langdaug synth` set.
"""
import os
import shutil
import subprocess
import tempfile
import time
import unittest

from ldtest import CLI, interrupt_when, run_cli, safetensors_meta

WAIT = 120.0  # seconds any single command may take (sanitizer builds are slow)
SMALL = ["--size", "16", "--widths", "8,16", "--batch", "4", "--langevin-steps", "3", "--threads", "1"]


def run(*args, timeout=WAIT):
    return run_cli(*args, timeout=timeout)


class TrainCli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(CLI, os.X_OK):
            raise unittest.SkipTest("%s not built" % CLI)
        if run("train", "--help").returncode != 0:
            raise unittest.SkipTest("the CLI has no 'train' command registered")
        cls.tmp = tempfile.mkdtemp(prefix="langdaug-train-py.")
        cls.data = os.path.join(cls.tmp, "data")
        r = run("synth", "--out", cls.data, "--domains", "3", "--per-domain", "3", "--size", "32")
        if r.returncode != 0:
            shutil.rmtree(cls.tmp)
            raise unittest.SkipTest("langdaug synth failed: " + r.stderr)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def out(self, name):
        return os.path.join(self.tmp, name)

    def test_usage_errors_name_the_option(self):
        cases = [
            (["--data", self.data, "--out", self.out("x"), "--lr", "fast"], "--lr"),
            (["--data", self.data, "--out", self.out("x"), "--betas", "0.5"], "--betas"),
            (["--data", self.data, "--out", self.out("x"), "--nonsense", "1"], "--nonsense"),
            (["--data", self.data], "--out"),
            (["--out", self.out("x")], "--data"),
            (["--data", self.data, "--out", self.out("x"), "--iters", "0"], "--iters"),
            (["--data", self.data, "--out", self.out("x"), "stray"], "stray"),
        ]
        for args, word in cases:
            r = run("train", *args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(word, r.stderr, args)
        self.assertFalse(os.path.exists(self.out("x")))

    def test_bad_data_and_paths_fail_before_training(self):
        cases = [
            (["--data", os.path.join(self.tmp, "nowhere"), "--out", self.out("y")], "nowhere"),
            (["--data", self.data, "--domains", "cam0", "--out", self.out("y")], "at least 2 domains"),
            (["--data", self.data, "--out", os.path.join(self.tmp, "no", "dir", "m")], "--out"),
            (["--data", self.data, "--size", "30", "--out", self.out("y")], "--size"),
        ]
        for args, word in cases:
            start = time.monotonic()
            r = run("train", *args)
            self.assertEqual(r.returncode, 1, (args, r.stderr))
            self.assertIn(word, r.stderr, args)
            self.assertNotIn("iter ", r.stderr)
            self.assertLess(time.monotonic() - start, WAIT)
        self.assertFalse(os.path.exists(self.out("y")))
        self.assertFalse(os.path.exists(self.out("y.ckpt")))

    def test_outputs_and_provenance(self):
        model, prev, curve = self.out("p.safetensors"), self.out("prev"), self.out("p.csv")
        r = run("train", "--data", self.data, "--out", model, "--iters", "4", "--preview", prev,
                "--preview-every", "2", "--curve", curve, *SMALL)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("iter 4/4", r.stderr)  # plain progress lines: stderr is not a terminal
        meta = safetensors_meta(model)
        self.assertEqual(meta["iterations"], "4")
        self.assertEqual(meta["domains"], "cam0,cam1,cam2")
        self.assertEqual(meta["maskmap"], "0:0,*:1")
        self.assertEqual(meta["train.lr"], "0.001")
        self.assertTrue(meta["command"].startswith("langdaug train --data"))
        self.assertRegex(meta["created"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(safetensors_meta(model + ".ckpt")["iteration"], "4")
        self.assertEqual(sorted(os.listdir(prev)), ["preview_00000002.png", "preview_00000004.png"])
        with open(curve) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "iteration,loss,e_pos,e_neg")
        self.assertEqual([l.split(",")[0] for l in lines[1:]], ["1", "2", "3", "4"])

    def test_interrupt_then_resume_equals_straight_run(self):
        ckpt = self.out("i.ckpt")
        proc = subprocess.Popen([CLI, "train", "--data", self.data, *SMALL, "--checkpoint", ckpt, "--checkpoint-every",
                                 "2", "--out", self.out("i.safetensors"), "--iters", "100000"],
                                stderr=subprocess.PIPE, text=True)
        running, err = interrupt_when(proc, lambda: os.path.exists(ckpt), WAIT)
        self.assertTrue(running, "no checkpoint appeared before SIGINT")
        self.assertEqual(proc.returncode, 1, err)
        self.assertIn("interrupted after iteration", err)
        done = int(safetensors_meta(ckpt)["iteration"])
        self.assertGreaterEqual(done, 2)
        self.assertFalse(os.path.exists(self.out("i.safetensors")))  # no model from an interrupted run

        total = done + 3
        r = run("train", "--resume", ckpt, "--out", self.out("i.safetensors"), "--iters", str(total), "--threads", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run("train", "--data", self.data, *SMALL, "--checkpoint", self.out("s.ckpt"), "--out",
                self.out("s.safetensors"), "--iters", str(total))
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(ckpt, "rb") as a, open(self.out("s.ckpt"), "rb") as b:
            self.assertTrue(a.read() == b.read(), "resumed and straight checkpoints differ")
        self.assertEqual(safetensors_meta(self.out("i.safetensors"))["resumed_from"], ckpt)


if __name__ == "__main__":
    unittest.main()
