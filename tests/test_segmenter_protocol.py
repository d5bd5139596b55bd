"""The fair-test protocol of examples/train_segmenter.py on hand-made data whose
answers are known: additive batches (each add-on adds round(ratio x batch) images,
the real part is never replaced), paired seeds (every variant of a seed trains on
bit-identical real batches), base augmentation that keeps image and mask aligned,
the bridge control (colour statistics moved exactly the asked fraction in LAB),
the LAB conversion against reference colours, the paired 95% intervals of
examples/results_table.py, examples/sample_shift.py, and the helpers of
examples/retina_validation."""
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

from ldtest import HERE

sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
import results_table  # noqa: E402
import sample_shift  # noqa: E402
import train_segmenter as ts  # noqa: E402

S = 8


def constant_domain(name, rgb, n=3, size=24, texture=0):
    """A domain of n images of one colour (plus a checkerboard of +-texture); the mask is the left half."""
    dom = ts.Domain(name)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = np.empty((size, size, 3), np.int16)
        img[:] = rgb
        img += (((yy + xx + i) % 2) * 2 - 1)[..., None] * texture
        dom.images.append(np.clip(img, 0, 255).astype(np.uint8))
        dom.masks.append((xx < size // 2).astype(np.uint8))
        dom.fovs.append(None)
        dom.files.append("%s-%d.png" % (name, i))
    return dom


class ConstantPool(ts.SamplePool):
    """A pool whose samples are all one value (0.5), with an all-ones mask."""

    def __init__(self):
        self.images = torch.full((10, 3, S, S), 0.5)
        self.masks = torch.ones(10, S, S, dtype=torch.int64)
        self.n = self.received = 10


def args_for(argv=()):
    return ts.parse_args(["--data", "unused", "--holdout", "X", "--size", str(S), "--batch", "4", "--out", "unused",
                          "--langdaug-dir", "unused", *argv])


class AdditiveBatchTest(unittest.TestCase):
    def setUp(self):
        self.sources = [constant_domain("A", (40, 80, 120)), constant_domain("B", (200, 60, 30))]
        self.bridge = ts.Bridge(self.sources, S, probe=16)

    def batch(self, variant, seed, argv=(), steps=1):
        args = args_for(argv)
        run = ts.Run(seed)
        return [ts.make_batch(args, variant, self.sources, run, ConstantPool(), self.bridge) for _ in range(steps)]

    def test_every_add_on_adds_ratio_times_batch_and_keeps_the_real_batch(self):
        expect = {"none": [("real", 4)], "classic": [("real", 4), ("classic", 4)],
                  "bridge": [("real", 4), ("bridge", 4)], "langdaug": [("real", 4), ("langdaug", 4)],
                  "langdaug+classic": [("real", 4), ("classic", 4), ("langdaug", 4)]}
        for variant, parts in expect.items():
            x, y, got = self.batch(variant, 0)[0]
            self.assertEqual(got, parts, variant)
            self.assertEqual(len(x), sum(n for _, n in parts))
            self.assertEqual(len(y), len(x))
        x, _, parts = self.batch("langdaug", 0, ("--ratio", "2.5"))[0]
        self.assertEqual(parts, [("real", 4), ("langdaug", 10)])
        self.assertTrue(torch.equal(x[4:], torch.full((10, 3, S, S), 0.5)))  # the pool's samples, flipped

    def test_the_same_seed_gives_every_variant_bit_identical_real_batches(self):
        ref = [x[:4] for x, _, _ in self.batch("none", 3, steps=3)]
        for variant in ("classic", "bridge", "langdaug", "langdaug+classic"):
            for step, (x, y, _) in enumerate(self.batch(variant, 3, steps=3)):
                self.assertTrue(torch.equal(x[:4], ref[step]), (variant, step))
        other = [x[:4] for x, _, _ in self.batch("none", 4, steps=3)]
        self.assertFalse(all(torch.equal(a, b) for a, b in zip(ref, other)))

    def test_copies_start_from_the_real_crops(self):
        x, y, _ = self.batch("bridge", 1)[0]
        self.assertTrue(torch.equal(y[4:], y[:4]))
        x, y, _ = self.batch("classic", 1, ("--classic", "cast"))[0]
        self.assertTrue(torch.equal(y[4:], y[:4]))
        self.assertFalse(torch.equal(x[4:], x[:4]))

    def test_bad_ratio_base_augmentation_and_curve_options_are_refused(self):
        for argv in (("--ratio", "0"), ("--base-aug", "flip,shear"), ("--val-every", "10")):
            with open(os.devnull, "w") as devnull, self.assertRaises(SystemExit) as cm:
                stderr, sys.stderr = sys.stderr, devnull
                try:
                    args_for(argv)
                finally:
                    sys.stderr = stderr
            self.assertEqual(cm.exception.code, 2, argv)


class BaseAugmentationTest(unittest.TestCase):
    def test_image_and_mask_stay_aligned_under_scale_flips_and_rotations(self):
        # the image is bright exactly where the mask is 1 (a diagonal-free blob), so alignment is checkable
        dom = ts.Domain("A")
        yy, xx = np.mgrid[:40, :40]
        mask = ((xx < 14) & (yy > 9)).astype(np.uint8)
        dom.images.append(np.repeat((mask * 200 + 20)[..., None], 3, 2).astype(np.uint8))
        dom.masks.append(mask)
        dom.fovs.append(None)
        dom.files.append("a.png")
        rng = np.random.default_rng(5)
        x, m, d = ts.random_crops([dom], 64, 16, rng)
        self.assertEqual(tuple(x.shape), (64, 3, 16, 16))
        self.assertEqual(tuple(m.shape), (64, 16, 16))
        bright = x[:, 0] > ((20 + 220) / 2 / 127.5 - 1)
        # bilinear resizing blurs edges by at most a pixel: nearly every pixel agrees
        self.assertGreater((bright == m.bool()).float().mean().item(), 0.9)
        # the augmentations ran: some crops differ from the unaugmented crop at the same place
        x0, m0, _ = ts.random_crops([dom], 64, 16, np.random.default_rng(5), ())
        self.assertTrue(torch.equal(x0[:, 0] > 0, m0.bool()))

    def test_dihedral_matches_numpy(self):
        x = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
        m = torch.arange(9).reshape(3, 3)
        xr, mr = ts.dihedral(x, m, 1, True)
        self.assertTrue(np.array_equal(mr.numpy(), np.rot90(m.numpy(), 1)[:, ::-1]))
        self.assertTrue(np.array_equal(xr.numpy(), np.rot90(x.numpy(), 1, (1, 2))[:, :, ::-1]))


class BridgeTest(unittest.TestCase):
    def setUp(self):
        self.a = constant_domain("A", (60, 90, 120), texture=10)
        self.b = constant_domain("B", (180, 120, 60), texture=20)
        self.bridge = ts.Bridge([self.a, self.b], S, probe=32)
        self.x, _, self.d = ts.random_crops([self.a], 6, S, np.random.default_rng(0), ())

    def stats(self, x):
        return ts.channel_stats(ts.rgb_to_lab(x))

    def test_moves_the_asked_fraction_of_the_way_in_lab(self):
        m0, s0 = self.stats(self.x)
        target = torch.ones(6, dtype=torch.int64)
        for t in (0.0, 0.5, 1.0):
            m, s = self.stats(self.bridge.move(self.x, target, torch.full((6,), t)))
            want_m = m0 + t * (self.bridge.means[1] - m0)
            want_s = s0 + t * (self.bridge.sds[1] - s0)
            # float32 RGB in between: LAB units to 0.05
            self.assertLess((m - want_m).abs().max().item(), 0.05, t)
            self.assertLess((s - want_s).abs().max().item(), 0.05, t)
        m1, _ = self.stats(self.bridge.move(self.x, target, torch.ones(6)))
        self.assertGreater((m1 - m0).abs().max().item(), 10)  # B is far from A: a real move

    def test_the_target_is_always_another_domain(self):
        seen = []
        orig = self.bridge.move
        self.bridge.move = lambda x, target, t: seen.append(target) or orig(x, target, t)
        gen = torch.Generator().manual_seed(1)
        for d in (0, 1):
            self.bridge(self.x, torch.full((6,), d), gen)
            self.assertTrue(bool((seen[-1] != d).all()))


class LabTest(unittest.TestCase):
    def test_reference_colours_and_round_trip(self):
        ref = {(255, 255, 255): (100.0, 0.0, 0.0), (255, 0, 0): (53.24, 80.09, 67.20),
               (0, 255, 0): (87.73, -86.18, 83.18), (0, 0, 255): (32.30, 79.19, -107.86),
               (128, 128, 128): (53.59, 0.0, 0.0)}
        for rgb, lab in ref.items():
            x = (torch.tensor(rgb, dtype=torch.float64) / 127.5 - 1).reshape(1, 3, 1, 1)
            got = ts.rgb_to_lab(x)[0, :, 0, 0].tolist()
            for g, w in zip(got, lab):
                self.assertAlmostEqual(g, w, delta=0.02, msg=rgb)
        grid = torch.linspace(-1, 1, 21)
        x = torch.stack(torch.meshgrid(grid, grid, grid, indexing="ij")).reshape(1, 3, 21, 441)
        self.assertLess((ts.lab_to_rgb(ts.rgb_to_lab(x)) - x).abs().max().item(), 1e-4)


class PairedIntervalTest(unittest.TestCase):
    def rows(self):
        out = []
        for h, base, diffs in (("A", 0.5, (0.01, 0.03, 0.02)), ("B", 0.6, (-0.02, 0.00, 0.02))):
            for seed, d in enumerate(diffs):
                out.append(dict(holdout=h, variant="none", seed=seed, dice=base, iou=base / 2))
                out.append(dict(holdout=h, variant="langdaug", seed=seed, dice=base + d, iou=(base + d) / 2))
        return out

    def test_known_means_and_t_intervals(self):
        got = {(h, name): (n, dice, iou) for h, name, n, dice, iou in
               results_table.paired(self.rows(), (("langdaug", "none"),))}
        n, (m, hw), (mi, hwi) = got[("A", "langdaug - none")]
        self.assertEqual(n, 3)
        self.assertAlmostEqual(m, 0.02)
        self.assertAlmostEqual(hw, 4.303 * 0.01 / np.sqrt(3))  # sd 0.01, t(2) = 4.303
        self.assertAlmostEqual(mi, 0.01)
        # over domains: per-seed means of the differences 0.005 -0.0... : (-0.005, 0.015, 0.02)
        n, (m, hw), _ = got[("mean of 2", "langdaug - none")]
        d = np.array([-0.005, 0.015, 0.02])
        self.assertEqual(n, 3)
        self.assertAlmostEqual(m, d.mean())
        self.assertAlmostEqual(hw, 4.303 * d.std(ddof=1) / np.sqrt(3))
        text = results_table.paired_markdown(self.rows())
        self.assertIn("| A | langdaug - none | 3 | +2.00 [", text)


    def test_a_tagged_folder_is_another_sampler_paired_with_the_plain_runs(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name, rows in (("pixel", self.rows()), ("latent", [dict(r, dice=r["dice"] + 0.01) for r in self.rows()
                                                                    if r["variant"] == "langdaug"])):
                os.mkdir(os.path.join(tmp, name))
                with open(os.path.join(tmp, name, "results.csv"), "w") as f:
                    f.write("holdout,variant,seed,dice,iou\n")
                    f.writelines("%(holdout)s,%(variant)s,%(seed)s,%(dice)r,%(iou)r\n" % r for r in rows)
            rows = results_table.read_rows(os.path.join(tmp, "pixel")) + \
                results_table.read_rows("latent=" + os.path.join(tmp, "latent"))
        self.assertEqual({r["variant"] for r in rows}, {"none", "langdaug", "langdaug[latent]"})
        text = results_table.paired_markdown(rows)
        self.assertIn("| A | langdaug[latent] - langdaug | 3 | +1.00 [+1.00, +1.00] |", text)
        self.assertIn("| A | langdaug[latent] - none | 3 | +3.00 [", text)
        order = [v for h, v, _ in results_table.entries(rows) if h == "A"]
        self.assertLess(order.index("langdaug"), order.index("langdaug[latent]"))

    def test_several_labels_are_compared_in_the_order_given(self):
        base = [r for r in self.rows() if r["variant"] == "langdaug"]
        rows = [dict(r, variant="langdaug[latent]", dice=r["dice"] + 0.03) for r in base] + \
            [dict(r, variant="langdaug[ae-only]", dice=r["dice"] - 0.02) for r in base]
        text = results_table.paired_markdown(self.rows() + rows)
        self.assertIn("| A | langdaug[latent] - langdaug[ae-only] | 3 | +5.00 [+5.00, +5.00] |", text)
        self.assertNotIn("langdaug[ae-only] - langdaug[latent]", text)


class PlateauTest(unittest.TestCase):
    def curve(self, points):
        return [dict(variant="none", seed=s, iteration=it, val_dice=d) for it, ds in points for s, d in enumerate(ds)]

    def test_the_first_length_within_the_tolerance_of_the_best_mean(self):
        tol = results_table.PLATEAU_TOLERANCE
        # means 0.60, 0.70, 0.70 + tol/2, 0.70 + tol/4: 1000 is within tol of the best (2000)
        got = results_table.plateaus(self.curve([(500, (0.59, 0.61)), (1000, (0.70,)),
                                                 (2000, (0.70 + tol / 2,)), (4000, (0.70 + tol / 4,))]))
        self.assertEqual(got["none"][0], 1000)
        self.assertAlmostEqual(got["none"][1], 0.70 + tol / 2)
        # still rising by more than the tolerance: the longest run, and the table says so
        rising = self.curve([(500, (0.6,)), (1000, (0.6 + 2 * tol,))])
        self.assertEqual(results_table.plateaus(rising)["none"][0], 1000)
        self.assertIn("may still be rising", results_table.curve_markdown(rising))



class SampleShiftTest(unittest.TestCase):
    """examples/sample_shift.py on hand-made data: domain A is grey 0.2, B grey 0.6 (8x8 images, FOV
    everywhere); a sample of an A crop at 0.4 has covered half the gap, one at 0.8 one and a half."""

    def test_gap_covered_is_the_projected_colour_shift(self):
        from PIL import Image
        with tempfile.TemporaryDirectory() as tmp:
            data, pulled = os.path.join(tmp, "data"), os.path.join(tmp, "pulled")
            for d, v in (("A", 0.2), ("B", 0.6)):
                for sub in ("image", "mask", "fov"):
                    os.makedirs(os.path.join(data, d, sub))
                img = np.full((8, 8, 3), round(v * 255), np.uint8)
                Image.fromarray(img).save(os.path.join(data, d, "image", "x.png"))
                Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(data, d, "mask", "x.png"))
                Image.fromarray(np.full((8, 8), 255, np.uint8)).save(os.path.join(data, d, "fov", "x.png"))
            os.makedirs(os.path.join(pulled, "A2B", "image"))
            lines = ["image,source_domain,target_domain,step,source_file,crop_x,crop_y"]
            for i, v in enumerate((0.4, 0.8)):
                name = "A2B/image/%d.png" % i
                Image.fromarray(np.full((4, 4, 3), round(v * 255), np.uint8)).save(os.path.join(pulled, name))
                lines.append("%s,A,B,30,image/x.png,2,2" % name)
            with open(os.path.join(pulled, "samples.csv"), "w") as f:
                f.write("\n".join(lines) + "\n")
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                sample_shift.main([pulled, "--data", data, "--scale", "1", "--step", "30"])
        row = [line for line in out.getvalue().splitlines() if line.startswith("| A>B")][0]
        covered = float(row.split("|")[3])
        self.assertAlmostEqual(covered, ((0.4 - 0.2) + (0.8 - 0.2)) / 2 / 0.4, delta=0.02)


def bash_function(script, name):
    """The text of shell function NAME in examples/SCRIPT, to run on its own."""
    with open(os.path.join(os.path.dirname(HERE), "examples", script)) as f:
        text = f.read()
    start = text.index("\n%s() {" % name) + 1
    return text[start:text.index("\n}\n", start) + 3]


class RetinaValidationScriptTest(unittest.TestCase):
    """examples/retina_validation's helpers, run by bash under the script's set -euo pipefail."""

    def bash(self, function, body):
        return subprocess.run(["bash", "-c", "set -euo pipefail\nALL=(DRIVE CHASEDB1 STARE HRF)\n%s\n%s" % (
            bash_function("retina_validation", function), body)], capture_output=True, text=True, timeout=30)

    def test_every_fold_has_the_next_site_as_its_inner_validation(self):
        r = self.bash("inner_of", 'for h in "${ALL[@]}"; do v=$(inner_of "$h"); echo "$h>$v"; done')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ["DRIVE>CHASEDB1", "CHASEDB1>STARE", "STARE>HRF", "HRF>DRIVE"])

    def test_none_rows_are_shared_once_and_nothing_else(self):
        with tempfile.TemporaryDirectory() as tmp:
            first = os.path.join(tmp, "first.csv")
            rows = ["holdout,variant,seed,dice,iou,seconds", "V,none,0,0.7,0.5,9", "V,langdaug,0,0.8,0.6,9",
                    "V,none,1,0.71,0.51,9"]
            with open(first, "w") as f:
                f.write("\n".join(rows) + "\n")
            to = os.path.join(tmp, "setting")
            for _ in range(2):  # a second call (a resumed run) adds nothing
                r = self.bash("share_none", 'share_none "%s" "%s"' % (first, to))
                self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(to, "results.csv")) as f:
                self.assertEqual(f.read().splitlines(), [rows[0], rows[1], rows[3]])


if __name__ == "__main__":
    unittest.main()
