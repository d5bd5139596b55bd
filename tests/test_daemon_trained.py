"""langdaugd serving models that `langdaug train` wrote with the paper's
authors' settings: chains in CIE LAB (--colour-space lab), samples that keep
their source's luminance (keep = luminance, per request and in the config),
and noise-free chains (--noise 0, taken up by the daemon's noise = auto).

The models are trained here for a few iterations on a `langdaug synth` set
of 32x32 images (one 32x32 crop per image, so epoch mode visits fixed
crops). Luminance is checked with tests/ldtest.py's own numpy sRGB -> CIE
LAB (D65), not the C library's. Real daemon on 127.0.0.1 ports, fixtures and
helpers of tests/ldtest.py; every wait is bounded and every daemon started
here is stopped here.
"""
import os
import time
import unittest

import numpy as np

from ldtest import (WAIT, SynthData, chains, expect_error, lab, lab_to_rgb, luminance_change, pb, pull, pull_batch,
                    run_cli, run_cli_ok, run_daemon, safetensors_meta, write_with_meta)

TRAIN = ["--size", "32", "--widths", "8,16", "--batch", "4", "--langevin-steps", "3", "--threads", "1", "--iters", "3",
         "--checkpoint-every", "0", "--quiet"]


class TrainedModels(SynthData):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lab_model = os.path.join(cls.tmp, "lab.safetensors")
        run_cli_ok("train", "--data", cls.data, "--colour-space", "lab", *TRAIN, "--out", cls.lab_model)
        cls.quiet_model = os.path.join(cls.tmp, "noise0.safetensors")
        run_cli_ok("train", "--data", cls.data, "--noise", "0", *TRAIN, "--out", cls.quiet_model)

    # ------------------------------------------------------------ luminance

    def assert_keeps_luminance(self, batch, images, masks, kept):
        """Step 0 is the source crop; at step 3 the CIE L* of every pixel no RGB
        component of which was clamped is the source's within 1e-3 (kept) or
        moved (not kept), and the colour (a*, b*) moved."""
        checked = 0
        moved_l = moved_ab = 0.0
        for ch in chains(batch, images, masks, 2):
            dl, n, dab = luminance_change(ch[0][0], ch[3][0])
            if kept:
                self.assertLess(dl, 1e-3, "L* of a kept-luminance sample moved")
            checked += n
            moved_l, moved_ab = max(moved_l, dl), max(moved_ab, dab)
        self.assertGreater(checked, 0.5 * batch.n // 2 * images.shape[2] * images.shape[3], "too few pixels checked")
        self.assertGreater(moved_ab, 0.1, "the chains did not change the colour")
        if not kept:
            self.assertGreater(moved_l, 0.01, "L* did not move without keep: the check above proves nothing")

    def test_lab_model_is_served_in_rgb_and_keeps_luminance_per_request(self):
        meta = safetensors_meta(self.lab_model)
        self.assertEqual((meta["colour_space"], meta["train.colour-space"]), ("lab", "lab"))
        d = self.start(model=self.lab_model, langevin=())
        h = d.hello()
        self.assertEqual(h.models[0].colour_space, pb.COLOUR_SPACE_LAB)
        self.assertEqual(h.keep, pb.KEEP_NONE)
        st = d.status()
        self.assertEqual(st.models[0].colour_space, pb.COLOUR_SPACE_LAB)
        self.assertEqual({e.key: e.value for e in st.config}["keep"], "none")
        self.assertIn("colour space lab", d.log_text())
        pairs = [pb.Pair(source="cam0", target="cam1")]
        kept = pull_batch(d, 3, [0, 3], pairs=pairs, keep=pb.KEEP_LUMINANCE)
        free = pull_batch(d, 3, [0, 3], pairs=pairs, keep=pb.KEEP_NONE)
        default = pull_batch(d, 3, [0, 3], pairs=pairs)
        for b, images, _ in (kept, free):
            self.assertTrue(np.all((images >= -1) & (images <= 1)), "wire images are RGB in [-1, 1]")
        self.assert_keeps_luminance(*kept, kept=True)
        self.assert_keeps_luminance(*free, kept=False)
        np.testing.assert_array_equal(default[1], free[1])  # the daemon's keep: none
        # the source crop is the same in all three; only the kept sample's L* differs from the free one
        np.testing.assert_array_equal(kept[1][0::2], free[1][0::2])
        # status shows what a client has in force
        c = d.client()
        pull(c, credits=0, batch_size=2, targets=["cam1"], keep=pb.KEEP_LUMINANCE)
        deadline = time.monotonic() + WAIT
        while not [cl for cl in d.status().clients if cl.keep == pb.KEEP_LUMINANCE]:
            self.assertLess(time.monotonic(), deadline, "no client with keep LUMINANCE in the status")
            time.sleep(0.05)
        c.close()
        r = run_cli("status", d.status_endpoint, timeout=WAIT)
        self.assertIn("colour space lab", r.stdout)
        self.assertIn("luminance", r.stdout)

    def test_keep_from_the_config_and_a_request_that_overrides_it(self):
        d = self.start(model=self.lab_model, langevin=(), extra=["--keep", "luminance"])
        self.assertEqual(d.hello().keep, pb.KEEP_LUMINANCE)
        targets = ["cam2"]
        self.assert_keeps_luminance(*pull_batch(d, 5, [0, 3], targets=targets), kept=True)
        self.assert_keeps_luminance(*pull_batch(d, 5, [0, 3], targets=targets, keep=pb.KEEP_NONE), kept=False)
        # an RGB model keeps luminance too (through a LAB round trip)
        rgb = self.start(model=self.quiet_model, langevin=("--step-size", "5", "--noise", "0.005"),
                         extra=["--keep", "luminance"])
        self.assertEqual(rgb.hello().models[0].colour_space, pb.COLOUR_SPACE_RGB)
        self.assert_keeps_luminance(*pull_batch(rgb, 5, [0, 3], targets=targets), kept=True)
        r = run_daemon("--model", "/m", "--data", "/d", "--keep", "luminance", "--print-config")
        self.assertIn("\nkeep = luminance\n", r.stdout)
        r = run_daemon("--model", "/m", "--data", "/d", "--keep", "L", "--print-config")
        self.assertEqual(r.returncode, 2)
        self.assertIn("keep: 'L' is not none or luminance", r.stderr)

    def test_lab_chains_move_the_lab_channels(self):
        """The daemon's noise-free chain equals one computed here with the
        PyTorch twin in LAB from the step-0 crop, converted back with this
        file's inverse; the same chain in RGB would end elsewhere."""
        try:
            import torch
            from langdaug.torch import EBM
        except ImportError:
            self.skipTest("python3-torch is not installed")
        model = EBM.load_safetensors(self.lab_model)
        self.assertEqual(model.colour_space, "lab")
        eta, k = 2.0, 3
        d = self.start(model=self.lab_model, langevin=("--step-size", str(eta), "--noise", "0"))
        b, images, masks = pull_batch(d, 1, [0, k], n_chains=2, targets=["cam1"])

        def walk(x, mask, target):
            x = torch.tensor(x, dtype=torch.float32)[None]
            m, t = torch.tensor(mask[None].astype(np.int64)), torch.tensor([target])
            for _ in range(k):
                x.requires_grad_(True)
                (g,) = torch.autograd.grad(model(x, m, t).sum(), x)
                x = (x.detach() - np.float32(eta / 2) * g).clamp(-1, 1)
            return x[0].numpy().astype(np.float64)

        moved = 0.0
        for ch in chains(b, images, masks, 2):
            src, mask, meta = ch[0]
            out = ch[k][0]
            t = self.DOMAINS.index(meta.target_domain)
            L, a, bb = lab(src)
            walked = walk(np.stack([L / 50 - 1, a / 128, bb / 128]), mask, t)
            expect = lab_to_rgb((walked[0] + 1) * 50, walked[1] * 128, walked[2] * 128)
            np.testing.assert_allclose(out, expect, atol=2e-3)
            in_rgb = np.clip(walk(src, mask, t), -1, 1)
            self.assertGreater(np.abs(in_rgb - out).max(), 0.02, "an RGB chain ends at the same place")
            moved = max(moved, np.abs(out - src).max())
        self.assertGreater(moved, 0.02, "the chains did not move")

    def test_bad_colour_space_and_keep_values_are_refused(self):
        bad = os.path.join(self.tmp, "bad-colour.safetensors")
        write_with_meta(self.lab_model, bad, colour_space="Lab")
        d = self.refused("with a corrupt colour_space", model=bad, langevin=())
        self.assertEqual(d.proc.returncode, 1)
        self.assertIn("%s: metadata 'colour_space': 'Lab' is not rgb or lab" % bad, d.log_text())
        # a file without the key (written before it existed) is an RGB model
        old = os.path.join(self.tmp, "old.safetensors")
        write_with_meta(self.lab_model, old, colour_space=None)
        self.assertEqual(self.start(model=old, langevin=()).hello().models[0].colour_space, pb.COLOUR_SPACE_RGB)

        d = self.start(model=self.lab_model, langevin=())
        c = d.client()
        # KEEP has two values: 7 can only be sent as raw bytes (field 9, varint)
        request = pb.PullRequest(credits=1, batch_size=2, targets=["cam1"]).SerializeToString() + b"\x48\x07"
        c.send(b"\x08\x01" + b"\x1a" + bytes([len(request)]) + request)
        text = expect_error(c, pb.ERROR_INVALID_REQUEST)
        self.assertIn("keep: unknown value 7", text)
        c.close()

    def test_grey_models_cannot_keep_luminance(self):
        grey = os.path.join(self.tmp, "grey.safetensors")
        run_cli_ok("init-model", "--out", grey, "--image-channels", "1", "--size", "32", "--widths", "4,8",
                    "--domains", ",".join(self.DOMAINS))
        d = self.refused("with keep = luminance and 1 channel", model=grey, extra=["--keep", "luminance"])
        self.assertEqual(d.proc.returncode, 1)
        self.assertIn("keep = luminance needs 3-channel images; the models have 1 channel(s)", d.log_text())
        d = self.start(model=grey)
        c = d.client()
        pull(c, credits=1, batch_size=2, targets=["cam1"], keep=pb.KEEP_LUMINANCE)
        self.assertIn("keep: luminance needs 3-channel images", expect_error(c, pb.ERROR_INVALID_REQUEST))
        c.close()

    def test_pytorch_twin_writes_the_colour_space(self):
        try:
            from langdaug.torch import EBM
        except ImportError:
            self.skipTest("python3-torch is not installed")
        path = os.path.join(self.tmp, "torch-lab.safetensors")
        EBM(3, 2, 32, [8, 16], self.DOMAINS, colour_space="lab").save_safetensors(path)
        self.assertEqual(safetensors_meta(path)["colour_space"], "lab")
        self.assertEqual(EBM.load_safetensors(path).colour_space, "lab")
        d = self.start(model=path, langevin=())
        self.assertEqual(d.hello().models[0].colour_space, pb.COLOUR_SPACE_LAB)
        for bad, word in (({"colour_space": "xyz"}, "not rgb or lab"), ({"colour_space": "lab", "image_channels": 1},
                                                                         "needs 3 image channels")):
            args = {"image_channels": 3, **bad}
            with self.assertRaisesRegex(ValueError, word):
                EBM(args["image_channels"], 2, 32, [8, 16], self.DOMAINS, colour_space=args["colour_space"])

    # ------------------------------------------------------------ noise-free chains

    def test_noise_free_training_gives_noise_free_sampling(self):
        """A model trained with --noise 0 says so (train.noise = 0) and the
        daemon's noise = auto takes it: two streams with different seeds give
        the same snapshots for the same source crops (epoch mode visits every
        crop of cam0; its images are one crop each). With noise they differ."""
        self.assertEqual(safetensors_meta(self.quiet_model)["train.noise"], "0")

        def by_crop(d, seed):
            b, images, masks = pull_batch(d, seed, [0, 2], n_chains=2,
                                          pairs=[pb.Pair(source="cam0", target="cam1")], epoch=True)
            got = {}
            for ch in chains(b, images, masks, 2):
                meta = ch[2][2]
                got[(meta.source_file, meta.crop_x, meta.crop_y)] = ch[2][0]
            self.assertEqual(len(got), 2, "epoch mode should visit both crops of cam0")
            return got

        quiet = self.start(model=self.quiet_model, langevin=())
        self.assertIn("noise = 0 (auto): train.noise of model " + self.quiet_model, quiet.log_text())
        a, b = by_crop(quiet, 1), by_crop(quiet, 2)
        self.assertEqual(sorted(a), sorted(b))
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        noisy = self.start(model=self.quiet_model, langevin=("--noise", "0.005"))
        a, b = by_crop(noisy, 1), by_crop(noisy, 2)
        self.assertTrue(any(not np.array_equal(a[key], b[key]) for key in a), "noise 0.005 gave identical chains")


if __name__ == "__main__":
    unittest.main()
