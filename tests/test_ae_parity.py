"""The aeconv autoencoder in PyTorch (langdaug.torch.Autoencoder) against the
C engine (common/ld_ae.h), and the twin's own checks.

Two uses:
  * `python3 tests/test_ae_parity.py reference DIR SEED` is the PyTorch side
    of tests/test_ae.c's parity_with_pytorch. It reads DIR/model.safetensors
    (written by ld_ae_save) and DIR/io.safetensors (image, latent,
    grad_output, grad_latent, float32), evaluates the model in float64 on the
    same float32 weights and inputs, and writes DIR/ref.safetensors (float64):
      latent       encode(image)
      recon        decode(latent)
      grad_image   d sum <grad_latent, encode(image)> / d image
      grad_latent  d sum <grad_output, decode(latent)> / d latent
      grad.<name>  d sum <grad_output, decode(encode(image))> / d <name>
    and, for the other direction, a model initialised by PyTorch (seeded by
    SEED) saved as DIR/py_model.safetensors, with its py.latent and py.recon
    on the same inputs. The C test compares: encodings and decodings within
    1e-4, gradients within 1e-3 of each tensor's largest magnitude.
  * as a unittest suite (tests/run): the twin alone: tensor names and shapes
    (the C table), shapes and range of its outputs, architecture bounds, the
    file round trip and its metadata, hostile files rejected.
"""
import os
import shutil
import sys
import tempfile
import unittest

import numpy as np

try:
    import torch
    from langdaug.torch import EBM, Autoencoder, read_safetensors, write_safetensors
except ImportError as e:  # pragma: no cover - depends on the machine
    torch = None
    IMPORT_ERROR = str(e)


def reference(d, seed):
    model = Autoencoder.load_safetensors(os.path.join(d, "model.safetensors")).double()
    io, _ = read_safetensors(os.path.join(d, "io.safetensors"))
    image, latent, gy, gz = (torch.from_numpy(io[k]).double() for k in ("image", "latent", "grad_output",
                                                                          "grad_latent"))
    out = {}
    x = image.clone().requires_grad_(True)
    z = model.encode(x)
    (out["grad_image"],) = torch.autograd.grad((z * gz).sum(), x)
    out["latent"] = z
    zin = latent.clone().requires_grad_(True)
    y = model.decode(zin)
    (out["grad_latent"],) = torch.autograd.grad((y * gy).sum(), zin)
    out["recon"] = y
    model.zero_grad()
    (model(image) * gy).sum().backward()
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad
    torch.manual_seed(seed)
    py = Autoencoder(model.image_channels, model.size, model.widths, model.latent_channels)
    py.save_safetensors(os.path.join(d, "py_model.safetensors"))
    py = py.double()
    with torch.no_grad():
        out["py.latent"] = py.encode(image)
        out["py.recon"] = py.decode(latent)
    write_safetensors(os.path.join(d, "ref.safetensors"),
                      {k: v.detach().numpy().astype(np.float64) for k, v in out.items()})


# The C table for Autoencoder(3, 16, [4, 6, 8], 5) (tests/test_ae.c tensor_table_matches_state_dict).
C_TABLE = [("encoder.stem.weight", [4, 3, 3, 3]), ("encoder.stem.bias", [4])]
for _i, (_ci, _co) in enumerate([(4, 6), (6, 8)]):
    C_TABLE += [("encoder.blocks.%d.conv1.weight" % _i, [_co, _ci, 3, 3]), ("encoder.blocks.%d.conv1.bias" % _i, [_co]),
                ("encoder.blocks.%d.conv2.weight" % _i, [_co, _co, 3, 3]), ("encoder.blocks.%d.conv2.bias" % _i, [_co]),
                ("encoder.blocks.%d.skip.weight" % _i, [_co, _ci, 1, 1]), ("encoder.blocks.%d.skip.bias" % _i, [_co])]
C_TABLE += [("encoder.latent.weight", [5, 8, 3, 3]), ("encoder.latent.bias", [5]),
            ("decoder.stem.weight", [8, 5, 3, 3]), ("decoder.stem.bias", [8])]
for _k, (_ci, _co) in enumerate([(8, 6), (6, 4)]):
    C_TABLE += [("decoder.blocks.%d.up.weight" % _k, [_co, _ci, 3, 3]), ("decoder.blocks.%d.up.bias" % _k, [_co]),
                ("decoder.blocks.%d.conv1.weight" % _k, [_co, _co, 3, 3]), ("decoder.blocks.%d.conv1.bias" % _k, [_co]),
                ("decoder.blocks.%d.conv2.weight" % _k, [_co, _co, 3, 3]), ("decoder.blocks.%d.conv2.bias" % _k, [_co])]
C_TABLE += [("decoder.out.weight", [3, 4, 3, 3]), ("decoder.out.bias", [3])]


@unittest.skipIf(torch is None, "torch not importable: %s" % (globals().get("IMPORT_ERROR"),))
class AutoencoderTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ld-ae-")
        torch.manual_seed(7)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_tensor_table_is_the_engines(self):
        m = Autoencoder(3, 16, [4, 6, 8], 5)
        self.assertEqual([(k, list(v.shape)) for k, v in m.state_dict().items()], C_TABLE)

    def test_shapes_and_range(self):
        for widths, factor in (([4, 6, 8], 4), ([3, 4, 5, 6], 8)):
            m = Autoencoder(2, 32, widths, 3)
            self.assertEqual(m.factor, factor)
            x = torch.rand(2, 2, 32, 32) * 2 - 1
            z = m.encode(x)
            self.assertEqual(list(z.shape), [2, 3, 32 // factor, 32 // factor])
            y = m.decode(z * 50)  # saturates: still inside [-1, 1]
            self.assertEqual(list(y.shape), [2, 2, 32, 32])
            self.assertTrue(bool((y.abs() <= 1).all()))
            self.assertTrue(torch.equal(m(x), m.decode(z)))

    def test_architecture_bounds(self):
        for args, kw in (((3, 16, [4, 6], 5), {}),                # 2 widths
                         ((3, 16, [4, 6, 8], 5), {"factor": 8}),  # factor disagrees with widths
                         ((3, 20, [4, 6, 8], 5), {}),             # not a multiple of 2f
                         ((3, 16, [4, 6, 8], 0), {}),
                         ((3, 16, [4, 6, 8], 65), {}),
                         ((5, 16, [4, 6, 8], 5), {}),
                         ((1, 16, [4, 6, 8], 5), {"colour_space": "lab"}),
                         ((3, 16, [4, 6, 8], 5), {"colour_space": "LAB"})):
            with self.assertRaises(ValueError, msg="%s %s" % (args, kw)):
                Autoencoder(*args, **kw)
        self.assertEqual(Autoencoder(3, 16, [4, 6, 8], 5, factor=4).factor, 4)

    def test_file_roundtrip(self):
        m = Autoencoder(3, 16, [4, 6, 8], 5, colour_space="lab")
        path = os.path.join(self.dir, "ae.safetensors")
        m.save_safetensors(path, {"created": "test"})
        tensors, meta = read_safetensors(path)
        self.assertEqual(meta, {"format": "langdaug-ae", "version": "1", "arch": "aeconv", "image_channels": "3",
                                "size": "16", "widths": "4,6,8", "latent_channels": "5", "factor": "4",
                                "colour_space": "lab", "created": "test"})
        self.assertEqual(list(tensors), list(m.state_dict()))
        back = Autoencoder.load_safetensors(path)
        self.assertEqual(back.colour_space, "lab")
        for k, v in m.state_dict().items():
            self.assertTrue(torch.equal(v, back.state_dict()[k]), k)
        with self.assertRaises(ValueError):
            m.save_safetensors(path, {"factor": "8"})

    def test_hostile_files_rejected(self):
        m = Autoencoder(3, 16, [4, 6, 8], 5)
        good = os.path.join(self.dir, "good.safetensors")
        m.save_safetensors(good)
        tensors, meta = read_safetensors(good)
        bad = os.path.join(self.dir, "bad.safetensors")

        def rejected(t, md, why):
            write_safetensors(bad, t, md)
            with self.assertRaises(ValueError, msg=why):
                Autoencoder.load_safetensors(bad)

        rejected(tensors, dict(meta, format="langdaug-ebm"), "format")
        rejected(tensors, dict(meta, arch="resdown"), "arch")
        rejected(tensors, dict(meta, factor="8"), "factor disagrees with widths")
        rejected(tensors, {k: v for k, v in meta.items() if k != "colour_space"}, "colour_space missing")
        rejected(tensors, dict(meta, latent_channels="4"), "shapes of another architecture")
        rejected({k: v for k, v in tensors.items() if k != "decoder.out.bias"}, meta, "missing tensor")
        rejected(dict(tensors, extra=np.zeros(1, np.float32)), meta, "extra tensor")
        rejected(dict(tensors, **{"decoder.stem.bias": np.zeros((2, 4), np.float32)}), meta, "shape")
        rejected(dict(tensors, **{"decoder.stem.bias": tensors["decoder.stem.bias"].astype(np.float64)}), meta,
                 "dtype")
        nan = tensors["encoder.latent.weight"].copy()
        nan[0, 0, 0, 0] = np.nan
        rejected(dict(tensors, **{"encoder.latent.weight": nan}), meta, "NaN weight")
        EBM(3, 2, 16, [4, 8], 2).save_safetensors(bad)
        with self.assertRaises(ValueError):
            Autoencoder.load_safetensors(bad)
        write_safetensors(bad, tensors, meta)  # the untouched rewrite loads
        Autoencoder.load_safetensors(bad)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "reference":
        reference(sys.argv[2], int(sys.argv[3]))
    else:
        unittest.main()
