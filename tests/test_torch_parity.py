"""PyTorch parity: the C engine (`langdaug energy`) against langdaug.torch.EBM
on the same weights, plus the pure-numpy safetensors reader/writer.

For each configuration (the reference C=3, K=2, widths 32,64,128,128,256 at
S=64, and seeded random small ones) the test builds an EBM, saves it with
EBM.save_safetensors, writes image/mask/target, runs
  $LD_BUILD/langdaug energy --model M --in X --out Y [--param-grad]
and compares with PyTorch evaluated in float64 on the same (float32) weights
and inputs. Metric, for every compared tensor T (energy [N], grad [N,C,S,S],
each grad.<parameter>):
  max |T_c - T_torch| / max |T_torch|
must be <= 1e-4 for energies and <= 1e-3 for gradients (relative to the
tensor's largest magnitude, so near-zero entries do not dominate).
Skips (unittest skip) without torch, without $LD_BUILD/langdaug, or when it
has no `energy` subcommand; the weight-gradient check skips when `energy`
has no --param-grad.
"""
import os
import random
import shutil
import struct
import subprocess
import tempfile
import unittest

import numpy as np

from ldtest import CLI

try:
    import torch
    from langdaug.torch import EBM, read_safetensors, write_safetensors
except ImportError as e:  # pragma: no cover - depends on the machine
    torch = None
    IMPORT_ERROR = str(e)

ENERGY_TOL = 1e-4
GRAD_TOL = 1e-3


def cli_help():
    """`langdaug energy --help` text, or None when unavailable."""
    if not os.access(CLI, os.X_OK):
        return None
    try:
        r = subprocess.run([CLI, "energy", "--help"], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return r.stdout if r.returncode == 0 and "--model" in r.stdout else None


def max_rel(got, want):
    scale = float(np.max(np.abs(want)))
    return float(np.max(np.abs(got.astype(np.float64) - want))) / (scale if scale > 0 else 1.0)


def reference_configs():
    configs = [dict(C=3, K=2, S=64, widths=[32, 64, 128, 128, 256], D=3, N=3)]
    rng = random.Random(20250519)
    for _ in range(3):
        L = rng.randint(1, 3)
        configs.append(dict(C=rng.randint(1, 4), K=rng.randint(1, 5), S=(1 << L) * rng.randint(1, 5),
                            widths=[rng.randint(3, 24) for _ in range(L + 1)], D=rng.randint(1, 4),
                            N=rng.randint(1, 5)))
    return configs


@unittest.skipIf(torch is None, "torch not importable: %s" % (globals().get("IMPORT_ERROR"),))
class SafetensorsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ld-st-")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_roundtrip_all_dtypes(self):
        rng = np.random.default_rng(1)
        tensors = {
            "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
            "f16": rng.standard_normal(5).astype(np.float16),
            "u8": rng.integers(0, 256, (3, 3), dtype=np.uint8),
            "i32": rng.integers(-2**31, 2**31, 7, dtype=np.int32),
            "i64": rng.integers(-2**62, 2**62, 2, dtype=np.int64),
            "scalar": np.array(3.5, dtype=np.float32),
            "empty": np.zeros((0, 4), dtype=np.float32),
        }
        path = os.path.join(self.dir, "t.safetensors")
        write_safetensors(path, tensors, {"format": "test", "note": "x"})
        with open(path, "rb") as f:
            raw = f.read()
        (n,) = struct.unpack("<Q", raw[:8])
        self.assertEqual((8 + n) % 8, 0)
        self.assertIn(b'"dtype":"F16"', raw[8:8 + n])
        got, meta = read_safetensors(path)
        self.assertEqual(meta, {"format": "test", "note": "x"})
        self.assertEqual(set(got), set(tensors))
        for k, v in tensors.items():
            self.assertEqual(got[k].dtype, v.dtype, k)
            np.testing.assert_array_equal(got[k], v)
        self.assertEqual([f for f in os.listdir(self.dir)], ["t.safetensors"])  # no temp files left

    def test_malformed_files_rejected(self):
        path = os.path.join(self.dir, "bad.safetensors")
        write_safetensors(path, {"a": np.arange(4, dtype=np.float32)})
        with open(path, "rb") as f:
            good = f.read()
        (n,) = struct.unpack("<Q", good[:8])
        for bad in (good[:5], struct.pack("<Q", 1 << 40) + good[8:], good[:-1],
                    good.replace(b'"F32"', b'"X32"'), good[:8] + b"[" + good[9:]):
            with open(path, "wb") as f:
                f.write(bad)
            with self.assertRaises(ValueError):
                read_safetensors(path)
        with self.assertRaises(TypeError):
            write_safetensors(path, {"a": np.zeros(2, dtype=np.complex64)})
        with self.assertRaises(TypeError):
            write_safetensors(path, {"a": np.zeros(2, dtype=np.float32)}, {"k": 1})

    def test_model_file_roundtrip(self):
        torch.manual_seed(3)
        m = EBM(3, 2, 16, [4, 6, 8], ["DRIVE", "STARE"])
        path = os.path.join(self.dir, "m.safetensors")
        m.save_safetensors(path, {"created": "test"})
        tensors, meta = read_safetensors(path)
        self.assertEqual(meta["format"], "langdaug-ebm")
        self.assertEqual(meta["widths"], "4,6,8")
        self.assertEqual(meta["domains"], "DRIVE,STARE")
        self.assertEqual(meta["created"], "test")
        self.assertEqual(list(tensors), list(m.state_dict()))  # state_dict order and names
        m2 = EBM.load_safetensors(path)
        for k, v in m.state_dict().items():
            self.assertTrue(torch.equal(v, m2.state_dict()[k]), k)
        with self.assertRaises(ValueError):
            m.save_safetensors(path, {"widths": "1,2"})
        tensors["head.bias"] = np.zeros(2, np.float32)
        write_safetensors(path, tensors, meta)
        with self.assertRaises(ValueError):
            EBM.load_safetensors(path)


@unittest.skipIf(torch is None, "torch not importable: %s" % (globals().get("IMPORT_ERROR"),))
class TorchParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.help = cli_help()

    def setUp(self):
        if self.help is None:
            self.skipTest("%s missing or without the `energy` subcommand" % CLI)
        self.dir = tempfile.mkdtemp(prefix="ld-parity-")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def run_config(self, i, cfg, param_grad):
        torch.manual_seed(100 + i)
        model = EBM(cfg["C"], cfg["K"], cfg["S"], cfg["widths"], cfg["D"])
        N, C, S = cfg["N"], cfg["C"], cfg["S"]
        image = (torch.rand(N, C, S, S) * 2 - 1).numpy()
        mask = torch.randint(0, cfg["K"], (N, S, S)).numpy().astype(np.uint8)
        target = torch.randint(0, cfg["D"], (N,)).numpy().astype(np.int32)
        mpath, xpath, ypath = (os.path.join(self.dir, n) for n in ("m.safetensors", "x.safetensors", "y.safetensors"))
        model.save_safetensors(mpath)
        write_safetensors(xpath, {"image": image, "mask": mask, "target": target})
        cmd = [CLI, "energy", "--model", mpath, "--in", xpath, "--out", ypath, "--threads", "2", "--batch", "2"]
        if param_grad:
            cmd.append("--param-grad")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, "config %d: %s\n%s" % (i, cmd, r.stderr))
        out, _ = read_safetensors(ypath)

        ref = model.double()
        x = torch.from_numpy(image).double().requires_grad_(True)
        e = ref(x, torch.from_numpy(mask).long(), torch.from_numpy(target).long())
        ref.zero_grad()
        (gx,) = torch.autograd.grad(e.sum(), x, retain_graph=param_grad)
        desc = "config %d %s" % (i, cfg)
        self.assertEqual(out["energy"].shape, (N,))
        self.assertEqual(out["grad"].shape, (N, C, S, S))
        err = max_rel(out["energy"], e.detach().numpy())
        self.assertLessEqual(err, ENERGY_TOL, "%s: energy error %.3g" % (desc, err))
        err = max_rel(out["grad"], gx.numpy())
        self.assertLessEqual(err, GRAD_TOL, "%s: grad error %.3g" % (desc, err))
        if param_grad:
            e.sum().backward()
            for name, p in ref.named_parameters():
                got = out["grad." + name]
                self.assertEqual(list(got.shape), list(p.shape), name)
                err = max_rel(got, p.grad.numpy())
                self.assertLessEqual(err, GRAD_TOL, "%s: grad.%s error %.3g" % (desc, name, err))

    def test_energy_and_image_gradient(self):
        for i, cfg in enumerate(reference_configs()):
            with self.subTest(config=i):
                self.run_config(i, cfg, param_grad=False)

    def test_weight_gradients(self):
        if "--param-grad" not in self.help:
            self.skipTest("langdaug energy has no --param-grad")
        for i, cfg in enumerate(reference_configs()):
            with self.subTest(config=i):
                self.run_config(i, cfg, param_grad=True)


if __name__ == "__main__":
    unittest.main()
