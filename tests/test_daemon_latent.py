"""langdaugd serving a latent model (issue 12): an energy model that `langdaug train --latent`
trained on the latents of an autoencoder from `langdaug train-ae`. The daemon finds the
autoencoder next to the model, serves images of the autoencoder's size, and its noise-free chains
equal the same chain computed here with the PyTorch twins (encode, gradient steps on the latent
under the mask taken to the latent grid, decode). A model whose autoencoder is missing or another
file does not start; a reload that would pair it with another autoencoder fails and keeps the
last good pair. Real daemon on 127.0.0.1 ports (tests/ldtest.py's helpers); every wait is bounded
and every daemon started here is stopped here.
"""
import hashlib
import os
import shutil
import unittest

import numpy as np

from ldtest import WAIT, SynthData, chains, pull_batch, run_cli, run_cli_ok

SIZE, FACTOR = 16, 4
AE_TRAIN = ["--size", str(SIZE), "--widths", "4,6,8", "--batch", "2", "--iters", "2", "--threads", "1", "--quiet"]
EBM_TRAIN = ["--size", str(SIZE), "--widths", "8,16", "--batch", "4", "--langevin-steps", "3", "--threads", "1",
             "--iters", "3", "--checkpoint-every", "0", "--noise", "0", "--quiet"]


def latent_mask(mask, f=FACTOR):
    """ld_latent_mask, written again: a cell takes its most frequent labelled class, else 0."""
    s = mask.shape[0] // f
    out = np.zeros((s, s), np.int64)
    for y in range(s):
        for x in range(s):
            counts = np.bincount(mask[y * f:(y + 1) * f, x * f:(x + 1) * f].ravel(), minlength=2)
            counts[0] = 0
            out[y, x] = int(np.argmax(counts)) if counts.any() else 0
    return out


class LatentModel(SynthData):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.models = os.path.join(cls.tmp, "models")
        os.mkdir(cls.models)
        cls.ae = os.path.join(cls.models, "ae.safetensors")
        run_cli_ok("train-ae", "--data", cls.data, *AE_TRAIN, "--latent-channels", "3", "--out", cls.ae)
        cls.other_ae = os.path.join(cls.tmp, "other-ae.safetensors")
        run_cli_ok("train-ae", "--data", cls.data, *AE_TRAIN, "--latent-channels", "3", "--seed", "2",
                   "--out", cls.other_ae)
        cls.model = os.path.join(cls.models, "latent.safetensors")
        run_cli_ok("train", "--data", cls.data, "--latent", cls.ae, *EBM_TRAIN, "--out", cls.model)

    def test_serves_decoded_images_that_match_the_pytorch_chain(self):
        try:
            import torch
            from langdaug.torch import EBM, Autoencoder
        except ImportError:
            self.skipTest("python3-torch is not installed")
        eta, k = 50.0, 3
        d = self.start(model=self.model, langevin=("--step-size", str(eta), "--noise", "0"))
        h = d.hello()
        self.assertEqual((h.size, h.image_channels), (SIZE, 3))
        self.assertIn("latent (autoencoder sha256", d.log_text())
        st = d.status()
        m = st.models[0]
        with open(self.ae, "rb") as f:
            ae_hash = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual((m.size, m.image_channels), (SIZE, 3))
        self.assertEqual((m.autoencoder_hash, m.latent_channels, m.latent_size), (ae_hash, 3, SIZE // FACTOR))
        r = run_cli("status", d.status_endpoint, timeout=WAIT)
        self.assertIn("latent: 3 channels at 4x4, autoencoder %s" % ae_hash[:12], r.stdout)
        b, images, masks = pull_batch(d, 1, [0, k], n_chains=2, targets=["cam1"])
        self.assertEqual(images.shape[1:], (3, SIZE, SIZE))
        ebm, ae = EBM.load_safetensors(self.model), Autoencoder.load_safetensors(self.ae)
        moved = 0.0
        for ch in chains(b, images, masks, 2):
            src, mask, meta = ch[0]
            out = ch[k][0]
            m = torch.tensor(latent_mask(mask)[None])
            t = torch.tensor([self.DOMAINS.index(meta.target_domain)])
            with torch.no_grad():
                z = ae.encode(torch.tensor(src, dtype=torch.float32)[None])
            for _ in range(k):
                z.requires_grad_(True)
                (g,) = torch.autograd.grad(ebm(z, m, t).sum(), z)
                z = z.detach() - np.float32(eta / 2) * g  # never clamped: a latent
            with torch.no_grad():
                expect = ae.decode(z)[0].numpy()
            np.testing.assert_allclose(out, expect, atol=2e-3)
            np.testing.assert_array_equal(ch[k][1], mask)  # the label is the source mask at full size
            moved = max(moved, float(np.abs(z.detach().numpy()).max()))
        self.assertGreater(moved, 0.0)

    def test_python_dataset_streams_latent_samples(self):
        from langdaug.torch import LangDAugDataset
        d = self.start(model=self.model, langevin=("--step-size", "5", "--noise", "0"))
        ds = LangDAugDataset(d.endpoint, targets=["cam2"], steps=[0, 2], seed=3, num_samples=4, request_batch=4)
        got = list(ds)
        self.assertEqual(len(got), 4)
        for image, mask, meta in got:
            self.assertEqual(tuple(image.shape), (3, SIZE, SIZE))
            self.assertEqual(tuple(mask.shape), (SIZE, SIZE))
            self.assertTrue(bool(((image >= -1) & (image <= 1)).all()))

    def test_whole_images_are_served_fitted_and_padded(self):
        """whole_images = 1: the step-0 sample is the source image cut to its FOV's box, its longer side
        resized to the size (16) and centred: padding rows or columns read -1 and class 0, the rest has
        the box's mean colour."""
        from PIL import Image
        d = self.start(model=self.model, langevin=("--step-size", "5", "--noise", "0"),
                       extra=["--whole-images", "1"])
        b, images, masks = pull_batch(d, 2, [0, 2], n_chains=2, targets=["cam1"])
        for i in (0, 2):
            meta = b.samples[i]
            name = os.path.basename(meta.source_file)
            folder = os.path.join(self.data, meta.source_domain)
            fov = np.asarray(Image.open(os.path.join(folder, "fov", name))) > 127
            ys, xs = np.nonzero(fov)
            box = np.asarray(Image.open(os.path.join(folder, "image", name)).convert("RGB"), np.float64)[
                ys.min():ys.max() + 1, xs.min():xs.max() + 1] / 127.5 - 1
            h, w = box.shape[:2]
            fh, fw = (SIZE, round(w * SIZE / h)) if h > w else (round(h * SIZE / w), SIZE)
            top, left = (SIZE - fh) // 2, (SIZE - fw) // 2
            inside = np.zeros((SIZE, SIZE), bool)
            inside[top:top + fh, left:left + fw] = True
            self.assertTrue(np.all(images[i][:, ~inside] == -1) and np.all(masks[i][~inside] == 0))
            np.testing.assert_allclose(images[i][:, inside].mean(axis=1), box.mean(axis=(0, 1)), atol=0.03)

    def test_missing_or_foreign_autoencoder_is_refused_and_a_reload_keeps_the_pair(self):
        lone = os.path.join(self.tmp, "lone")
        os.makedirs(lone, exist_ok=True)
        model = os.path.join(lone, "latent.safetensors")
        shutil.copy(self.model, model)
        d = self.refused("without the autoencoder", model=model, langevin=())
        self.assertEqual(d.proc.returncode, 1)
        self.assertIn("the autoencoder of latent model %s" % model, d.log_text())

        ae = os.path.join(lone, "ae.safetensors")
        shutil.copy(self.ae, ae)
        d = self.start(model=model, langevin=("--step-size", "5", "--noise", "0"))
        before = pull_batch(d, 7, [0, 2], targets=["cam1"])[1]
        shutil.copy(self.other_ae, ae + ".tmp")
        os.replace(ae + ".tmp", ae)
        d.reload("failed")
        self.assertIn("was trained on", d.log_text())
        np.testing.assert_array_equal(pull_batch(d, 7, [0, 2], targets=["cam1"])[1], before)


if __name__ == "__main__":
    unittest.main()
