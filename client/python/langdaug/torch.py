"""langdaug.torch: the resdown energy network and the aeconv autoencoder in
PyTorch, and langdaug model files (safetensors) read and written in pure
Python/numpy.

EBM mirrors common/ld_ebm.h exactly, with the same state_dict names
(stem, blocks.{i}.conv1/conv2/skip, head, domain_embed), so a model trained
here runs in the C engine and back; Autoencoder likewise mirrors
common/ld_ae.h (encoder.*, decoder.*). Model files are safetensors:
  8-byte little-endian header length N, N bytes of JSON header
  ({"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}),
  then the raw little-endian tensor data; offsets are relative to the end of
  the header. Files are written atomically (temp file, fsync, os.replace).
"""
import json
import math
import os
import re
import struct
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT = "langdaug-ebm"
VERSION = "1"
ARCH = "resdown"
AE_FORMAT = "langdaug-ae"
AE_VERSION = "1"
AE_ARCH = "aeconv"
COLOUR_SPACES = ("rgb", "lab")

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {(dt.kind, dt.itemsize): code for code, dt in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def _atomic_write(path, chunks):
    """Writes the byte chunks to path atomically: temp file in the same
    directory, fsync, rename over path, fsync the directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: np.ndarray} (F64/F32/F16/I64/I32/I16/I8/U8/BOOL) and a
    str->str metadata dict as a safetensors file, atomically."""
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("metadata must map str to str, got %r: %r" % (k, v))
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError("bad tensor name %r" % (name,))
        arr = np.asarray(value)
        code = _CODES.get((arr.dtype.kind, arr.dtype.itemsize))
        if code is None:
            raise TypeError("tensor %r: unsupported dtype %s" % (name, arr.dtype))
        data = np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()
        header[name] = {"dtype": code, "shape": [int(d) for d in arr.shape],
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)  # keeps the data 8-byte aligned
    _atomic_write(path, [struct.pack("<Q", len(hbytes)), hbytes] + blobs)


def read_safetensors(path):
    """Returns ({name: np.ndarray}, metadata dict). Raises ValueError on a
    malformed file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError("%s: too short for a safetensors file" % path)
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, _MAX_HEADER):
        raise ValueError("%s: header length %d exceeds the file" % (path, n))
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError("%s: bad JSON header: %s" % (path, e))
    if not isinstance(header, dict):
        raise ValueError("%s: header is not a JSON object" % path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("%s: __metadata__ must map strings to strings" % path)
    base, size = 8 + n, len(data) - 8 - n
    tensors = {}
    for name, info in header.items():
        try:
            dt = _DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            b, e = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("%s: tensor %r: bad dtype, shape or data_offsets" % (path, name))
        count = int(np.prod(shape)) if shape else 1
        if any(d < 0 for d in shape) or not 0 <= b <= e <= size or e - b != count * dt.itemsize:
            raise ValueError("%s: tensor %r: data_offsets [%d, %d] do not fit shape %s %s" %
                             (path, name, b, e, shape, info["dtype"]))
        tensors[name] = np.frombuffer(data, dtype=dt, count=count, offset=base + b).reshape(shape).copy()
    return tensors, meta


def _save_model(module, path, extra_metadata):
    """Writes module's state_dict as float32 with module.metadata() plus the
    extra keys (which may not replace an architecture key)."""
    meta = module.metadata()
    for k, v in (extra_metadata or {}).items():
        if k in meta:
            raise ValueError("extra metadata key %r collides with an architecture key" % k)
        meta[k] = str(v)
    tensors = {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()}
    write_safetensors(path, tensors, meta)


def _read_model(path, fmt, version, arch):
    """The tensors and metadata of a model file whose format, version and
    arch keys are the given ones."""
    tensors, meta = read_safetensors(path)
    for key, want in (("format", fmt), ("version", version), ("arch", arch)):
        if meta.get(key) != want:
            raise ValueError("%s: metadata %s=%r, expected %r" % (path, key, meta.get(key), want))
    return tensors, meta


def _load_state(model, path, tensors):
    """Loads the file's tensors into model: exactly its state_dict's names,
    float32, same shapes. Returns model."""
    state = model.state_dict()
    if set(tensors) != set(state):
        raise ValueError("%s: tensors %s, expected %s" % (path, sorted(tensors), sorted(state)))
    for name, value in state.items():
        if list(tensors[name].shape) != list(value.shape) or tensors[name].dtype != np.float32:
            raise ValueError("%s: tensor %r is %s %s, expected float32 %s" %
                             (path, name, tensors[name].dtype, list(tensors[name].shape), list(value.shape)))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    return model


class _Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = F.silu(self.conv1(x))
        h = F.avg_pool2d(F.silu(self.conv2(h)), 2)
        s = F.avg_pool2d(self.skip(x), 2)
        return (h + s) / math.sqrt(2.0)


class EBM(nn.Module):
    """E(image, mask, target domain); low energy = looks like the domain.

    image [N,C,S,S] in [-1,1], mask [N,S,S] integer class ids < K, target [N]
    domain indices < D. domains: list of names (or a count: d0, d1, ...).
    colour_space: "rgb", or "lab" (3 channels): the images the model is
    trained on are scaled CIE LAB (L*/50 - 1, a*/128, b*/128 of sRGB D65, as
    common/ld_colour.h; converting is the trainer's job), and the daemon and
    `langdaug sample` run its chains in LAB from RGB crops and return RGB.
    Saved as the metadata key colour_space.
    Initialisation: PyTorch defaults, domain_embed N(0, 0.1^2) (as the C
    engine's ld_ebm_init_random, which draws different numbers)."""

    def __init__(self, image_channels, mask_classes, size, widths, domains, colour_space="rgb"):
        super().__init__()
        widths = [int(w) for w in widths]
        if isinstance(domains, int):
            domains = ["d%d" % i for i in range(domains)]
        domains = [str(d) for d in domains]
        if len(widths) < 2:
            raise ValueError("widths: need w0 and at least one block width")
        if size % (1 << (len(widths) - 1)) != 0:
            raise ValueError("size %d is not a multiple of 2^%d" % (size, len(widths) - 1))
        if not domains or len(set(domains)) != len(domains) or any(not re.fullmatch(r"[A-Za-z0-9_.-]+", d) for d in domains):
            raise ValueError("domains must be distinct names of [A-Za-z0-9_.-]+: %r" % (domains,))
        if colour_space not in COLOUR_SPACES:
            raise ValueError("colour_space %r is not rgb or lab" % (colour_space,))
        if colour_space == "lab" and int(image_channels) != 3:
            raise ValueError("colour_space lab needs 3 image channels, not %d" % int(image_channels))
        self.colour_space = colour_space
        self.image_channels = int(image_channels)
        self.mask_classes = int(mask_classes)
        self.size = int(size)
        self.widths = widths
        self.domains = domains
        self.stem = nn.Conv2d(self.image_channels + self.mask_classes, widths[0], 1)
        self.blocks = nn.ModuleList(_Block(widths[i], widths[i + 1]) for i in range(len(widths) - 1))
        self.head = nn.Linear(widths[-1], 1)
        self.domain_embed = nn.Embedding(len(domains), widths[-1])
        with torch.no_grad():
            self.domain_embed.weight.normal_(0.0, 0.1)

    def forward(self, image, mask, target):
        onehot = F.one_hot(mask.long(), self.mask_classes).permute(0, 3, 1, 2).to(image.dtype) * 2 - 1
        h = self.stem(torch.cat([image, onehot], 1))
        for block in self.blocks:
            h = block(h)
        v = F.silu(h).sum((2, 3))
        return self.head(v).squeeze(1) + (self.domain_embed(target.long()) * v).sum(1)

    def metadata(self):
        return {
            "format": FORMAT,
            "version": VERSION,
            "arch": ARCH,
            "image_channels": str(self.image_channels),
            "mask_classes": str(self.mask_classes),
            "size": str(self.size),
            "widths": ",".join(str(w) for w in self.widths),
            "domains": ",".join(self.domains),
            "colour_space": self.colour_space,
        }

    def save_safetensors(self, path, extra_metadata=None):
        _save_model(self, path, extra_metadata)

    @classmethod
    def load_safetensors(cls, path):
        tensors, meta = _read_model(path, FORMAT, VERSION, ARCH)
        try:
            model = cls(int(meta["image_channels"]), int(meta["mask_classes"]), int(meta["size"]),
                        [int(w) for w in meta["widths"].split(",")], meta["domains"].split(","),
                        meta.get("colour_space", "rgb"))  # absent in files from before the key
        except (KeyError, ValueError) as e:
            raise ValueError("%s: bad architecture metadata: %s" % (path, e))
        return _load_state(model, path, tensors)


class _Encoder(nn.Module):
    def __init__(self, image_channels, widths, latent_channels):
        super().__init__()
        self.stem = nn.Conv2d(image_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(_Block(widths[i], widths[i + 1]) for i in range(len(widths) - 1))
        self.latent = nn.Conv2d(widths[-1], latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.latent(h)


class _UpBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.up = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, g):
        c = self.up(F.interpolate(g, scale_factor=2, mode="nearest"))
        r = F.silu(self.conv2(F.silu(self.conv1(c))))
        return (c + r) / math.sqrt(2.0)


class _Decoder(nn.Module):
    def __init__(self, image_channels, widths, latent_channels):
        super().__init__()
        self.stem = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        self.blocks = nn.ModuleList(_UpBlock(widths[j + 1], widths[j]) for j in reversed(range(len(widths) - 1)))
        self.out = nn.Conv2d(widths[0], image_channels, 3, padding=1)

    def forward(self, z):
        g = self.stem(z)
        for block in self.blocks:
            g = block(g)
        return torch.tanh(self.out(g))


class Autoencoder(nn.Module):
    """The aeconv autoencoder of common/ld_ae.h: encode(image [N,C,S,S] in
    [-1,1]) -> latent [N,Z,S/f,S/f]; decode(latent) -> image in [-1,1];
    forward = decode(encode(x)).

    widths: w0..wL, 3 of them (factor f = 4) or 4 (f = 8); factor, when
    given, must agree. size: a multiple of 2f. colour_space: "rgb" or "lab"
    (3 channels), as for EBM. Tensor names, the file format (metadata
    format=langdaug-ae, arch=aeconv, ...) and the architecture's bounds are
    the C engine's, so a model saved here loads there and back.
    Initialisation: PyTorch defaults (as ld_ae_init_random, which draws
    different numbers)."""

    MAX_CHANNELS, MAX_WIDTH, MAX_LATENT, MAX_SIZE = 4, 4096, 64, 1024

    def __init__(self, image_channels, size, widths, latent_channels, factor=None, colour_space="rgb"):
        super().__init__()
        widths = [int(w) for w in widths]
        image_channels, size, latent_channels = int(image_channels), int(size), int(latent_channels)
        if len(widths) not in (3, 4):
            raise ValueError("widths %r: need 3 (factor 4) or 4 (factor 8)" % (widths,))
        levels = len(widths) - 1
        if factor is not None and int(factor) != 1 << levels:
            raise ValueError("factor %s but widths %r make factor %d" % (factor, widths, 1 << levels))
        if not 1 <= image_channels <= self.MAX_CHANNELS:
            raise ValueError("image_channels %d outside 1..%d" % (image_channels, self.MAX_CHANNELS))
        if any(not 1 <= w <= self.MAX_WIDTH for w in widths):
            raise ValueError("widths %r outside 1..%d" % (widths, self.MAX_WIDTH))
        if not 1 <= size <= self.MAX_SIZE or size % (2 << levels) != 0:
            raise ValueError("size %d is not a multiple of 2 x factor = %d in 1..%d" % (size, 2 << levels,
                                                                                     self.MAX_SIZE))
        if not 1 <= latent_channels <= self.MAX_LATENT:
            raise ValueError("latent_channels %d outside 1..%d" % (latent_channels, self.MAX_LATENT))
        if colour_space not in COLOUR_SPACES:
            raise ValueError("colour_space %r is not rgb or lab" % (colour_space,))
        if colour_space == "lab" and image_channels != 3:
            raise ValueError("colour_space lab needs 3 image channels, not %d" % image_channels)
        self.image_channels, self.size, self.widths = image_channels, size, widths
        self.latent_channels, self.factor, self.colour_space = latent_channels, 1 << levels, colour_space
        self.encoder = _Encoder(image_channels, widths, latent_channels)
        self.decoder = _Decoder(image_channels, widths, latent_channels)

    def encode(self, image):
        return self.encoder(image)

    def decode(self, latent):
        return self.decoder(latent)

    def forward(self, image):
        return self.decode(self.encode(image))

    def metadata(self):
        return {
            "format": AE_FORMAT,
            "version": AE_VERSION,
            "arch": AE_ARCH,
            "image_channels": str(self.image_channels),
            "size": str(self.size),
            "widths": ",".join(str(w) for w in self.widths),
            "latent_channels": str(self.latent_channels),
            "factor": str(self.factor),
            "colour_space": self.colour_space,
        }

    def save_safetensors(self, path, extra_metadata=None):
        _save_model(self, path, extra_metadata)

    @classmethod
    def load_safetensors(cls, path):
        """Loads a file as strictly as ld_ae_load: every architecture key,
        exactly the tensors of the architecture (float32, shapes), finite."""
        tensors, meta = _read_model(path, AE_FORMAT, AE_VERSION, AE_ARCH)
        try:
            model = cls(int(meta["image_channels"]), int(meta["size"]), [int(w) for w in meta["widths"].split(",")],
                        int(meta["latent_channels"]), int(meta["factor"]), meta["colour_space"])
        except (KeyError, ValueError) as e:
            raise ValueError("%s: bad architecture metadata: %s" % (path, e))
        _load_state(model, path, tensors)
        for name, value in model.state_dict().items():
            if not torch.isfinite(value).all():
                raise ValueError("%s: tensor %r has non-finite values" % (path, name))
        return model


def __getattr__(name):
    # langdaug.torch.LangDAugDataset lives in torch_data (it needs pyzmq);
    # loaded on first use so that model files work without it.
    if name == "LangDAugDataset":
        from .torch_data import LangDAugDataset
        return LangDAugDataset
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
