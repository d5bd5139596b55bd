"""What is reproducible, as the README states it (The energy network): on one machine
type with one build of langdaug and of OpenBLAS, energies, gradients and Langevin
chains are bit for bit the same whatever the thread count and the batch; under
another sgemm kernel (OPENBLAS_CORETYPE, standing in for another CPU) they are not
bit-identical but agree within a stated tolerance.

Through the commands, each run its own process: `langdaug energy` (a 32 px model,
so the F(4x4,3x3) and F(2x2,3x3) paths both run) and `langdaug sample` (chains of
40 steps: samples.csv and every PNG).
"""
import ctypes.util
import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

import numpy as np

from ldtest import CLI, run_cli_ok

N, C, K, S = 6, 3, 2, 32
ENERGY_RTOL = 1e-5     # energies under two sgemm kernels (measured: about 1e-7)
GRAD_TOL = 1e-4        # gradients under two kernels, relative to the largest |gradient|
PIXEL_TOL = 1          # 8-bit levels of sample PNGs under two kernels


def kernel_pair():
    """Two OpenBLAS core types this CPU can run: Haswell and Sandybridge if it has AVX2
    and FMA (the pair the README measures), else older ones."""
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if {"avx2", "fma"} <= flags:
        return "Haswell", "Sandybridge"
    if "avx" in flags:
        return "Sandybridge", "Nehalem"
    return "Nehalem", "Core2"


def corename(coretype):
    """The kernel OpenBLAS says it uses under OPENBLAS_CORETYPE=coretype (in a fresh process)."""
    lib = ctypes.util.find_library("openblas") or "libopenblas.so.0"
    code = ("import ctypes, sys; b = ctypes.CDLL(sys.argv[1]); b.openblas_get_corename.restype = ctypes.c_char_p; "
            "print(b.openblas_get_corename().decode())")
    r = subprocess.run(["/usr/bin/python3", "-c", code, lib], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, OPENBLAS_CORETYPE=coretype))
    return r.stdout.strip().lower()


def write_tensors(path, tensors):
    """A safetensors file of (name, dtype tag, array) in order."""
    header, blobs, off = {}, [], 0
    for name, tag, arr in tensors:
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": tag, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_tensors(path):
    """{name: raw bytes} of a safetensors file (metadata left out)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return {k: data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in header.items() if k != "__metadata__"}


@unittest.skipUnless(os.access(CLI, os.X_OK), "langdaug is not built")
class ReproducibilityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="langdaug-repro-")
        cls.model = os.path.join(cls.tmp, "m.safetensors")
        run_cli_ok("init-model", "--out", cls.model, "--size", S, "--widths", "8,16,16", "--domains", "A,B",
                   "--mask-classes", K, "--image-channels", C, "--seed", 3)
        rng = np.random.default_rng(11)
        cls.inputs = os.path.join(cls.tmp, "x.safetensors")
        write_tensors(cls.inputs, [
            ("image", "F32", rng.uniform(-1, 1, (N, C, S, S)).astype("<f4")),
            ("mask", "U8", (rng.random((N, S, S)) < 0.4).astype(np.uint8)),
            ("target", "I32", (np.arange(N) % 2).astype("<i4"))])
        cls.data = os.path.join(cls.tmp, "data")
        run_cli_ok("synth", "--out", cls.data, "--domains", 2, "--per-domain", 2, "--size", 48, "--seed", 7)
        cls.runs = 0

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def cli(self, args, coretype=None):
        env = dict(os.environ)
        env.pop("OPENBLAS_CORETYPE", None)
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        r = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
        self.assertEqual(r.returncode, 0, "langdaug %s: %s" % (" ".join(map(str, args)), r.stderr))

    def energy(self, threads, batch, coretype=None):
        type(self).runs += 1
        out = os.path.join(self.tmp, "e%d.safetensors" % self.runs)
        self.cli(["energy", "--model", self.model, "--in", self.inputs, "--out", out, "--threads", threads,
                  "--batch", batch], coretype)
        return read_tensors(out)

    def sample(self, threads, coretype=None):
        type(self).runs += 1
        out = os.path.join(self.tmp, "s%d" % self.runs)
        self.cli(["sample", "--model", self.model, "--data", self.data, "--source", "cam0", "--target", "B",
                  "--batch", 4, "--steps", 40, "--snapshots", "0,20,40", "--threads", threads, "--seed", 5,
                  "--out", out], coretype)
        files = {}
        for sub in ("", "image", "mask"):
            for name in sorted(os.listdir(os.path.join(out, sub))):
                path = os.path.join(out, sub, name)
                if os.path.isfile(path) and name != "grid.png":
                    with open(path, "rb") as f:
                        files[os.path.join(sub, name)] = f.read()
        return files

    def test_energies_bit_identical_across_threads_and_batches(self):
        ref = self.energy(1, 1)
        self.assertEqual(set(ref), {"energy", "grad"})
        for threads, batch in ((2, N), (2, 4), (1, 16), (3, 5)):
            got = self.energy(threads, batch)
            for k in ref:
                self.assertEqual(got[k], ref[k], "%s with %d threads, batch %d" % (k, threads, batch))

    def test_chains_bit_identical_across_threads(self):
        ref = self.sample(1)
        self.assertIn("samples.csv", ref)
        self.assertEqual(self.sample(2), ref)

    def test_two_sgemm_kernels_agree_within_the_stated_tolerance(self):
        a, b = kernel_pair()
        # the premise: OpenBLAS takes the core type it is given (else nothing is compared)
        self.assertEqual((corename(a), corename(b)), (a.lower(), b.lower()))
        ea, eb = self.energy(2, 4, a), self.energy(2, 4, b)
        self.assertEqual(self.energy(1, 1, a), ea, "same kernel, other threads and batch: bit-identical")
        fa, fb = (np.frombuffer(e["energy"], "<f4").astype(np.float64) for e in (ea, eb))
        np.testing.assert_allclose(fb, fa, rtol=ENERGY_RTOL, atol=0)
        ga, gb = (np.frombuffer(e["grad"], "<f4").astype(np.float64) for e in (ea, eb))
        self.assertLessEqual(np.max(np.abs(ga - gb)), GRAD_TOL * np.max(np.abs(ga)))
        sa, sb = self.sample(1, a), self.sample(1, b)
        self.assertEqual(sorted(sa), sorted(sb))
        rows_a, rows_b = (s["samples.csv"].decode().splitlines() for s in (sa, sb))
        self.assertEqual(len(rows_a), len(rows_b))
        col = rows_a[0].split(",").index("energy")
        for ra, rb in zip(rows_a[1:], rows_b[1:]):
            xa, xb = ra.split(","), rb.split(",")
            self.assertEqual(xa[:col] + xa[col + 1:], xb[:col] + xb[col + 1:], "same chains, crops and files")
            self.assertLessEqual(abs(float(xa[col]) - float(xb[col])), ENERGY_RTOL * abs(float(xa[col])), (ra, rb))
        from PIL import Image
        import io
        for name in sa:
            if name.endswith(".png"):
                pa = np.asarray(Image.open(io.BytesIO(sa[name])), dtype=np.int16)
                pb = np.asarray(Image.open(io.BytesIO(sb[name])), dtype=np.int16)
                self.assertLessEqual(int(np.max(np.abs(pa - pb))), PIXEL_TOL, name)


if __name__ == "__main__":
    unittest.main(verbosity=2)
