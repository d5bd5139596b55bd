#!/usr/bin/python3
"""Leave-one-domain-out segmentation training with and without LangDAug.

A compact PyTorch U-Net is trained on the real images of the source domains and
evaluated on a held-out domain it never saw. The protocol (a fair test of the claim):

  * every training step sees a full batch of real source crops (--batch), with the
    same base augmentation for every variant (--base: flips, 90-degree rotations,
    scale-crop); a seed fixes the real batches and the U-Net's initial weights, so
    the same seed gives every variant the same real data and the differences
    between variants are paired;
  * the variants differ only in what they ADD to that batch, each add-on
    round(--ratio x batch) images per step:
        none              nothing
        classic           copies of the real crops with intensity/colour randomization
                            (gamma, colour cast, contrast and brightness, blur, noise)
        bridge            copies of the real crops whose colour statistics (per-channel
                            mean and sd in CIE LAB) move a random fraction of the way to
                            those of a random other source domain: a control that learns
                            nothing (if LangDAug cannot beat it, the EBM adds nothing)
        langdaug          LangDAug intermediate-domain samples (flipped and rotated
                            like the real crops)
        langdaug+classic  both the classic copies and the LangDAug samples
  * the same iteration count for every variant, chosen from a learning curve of
    "none" on source-domain validation images (--val-fraction, --val-every), never
    on the held-out domain.

LangDAug samples arrive from one or more samplers (--sampler) into a pool that keeps
growing while the trainer runs, or offline from --langdaug-dir (folders written by
`langdaug pull --format png`; --steps keeps only those snapshot steps), so every
variant and seed draws from the same sample set and --jobs N trains N runs at once.
The EBM behind the samples must have been trained without the held-out domain;
samples from or toward it are refused, or dropped with --drop-holdout-samples (for
leave-one-SOURCE-out validation, where the "held-out" domain is a source of the EBM).

Results: DIR/results.csv and DIR/results.md (Dice and IoU on the held-out domain,
mean and spread over seeds, and paired 95% intervals of the differences between
variants), DIR/results.png (a bar plot); with --val-every, DIR/curve.csv and
DIR/curve.md (source-validation Dice along training).

Example:
    /usr/bin/python3 examples/train_segmenter.py --data demo/data --holdout cam3 \\
        --variants none,langdaug --seeds 0 --iters 300 --sampler tcp://127.0.0.1:5555 --out demo/seg
"""

import argparse
import csv
import math
import os
import sys
import time

import numpy as np
import results_table
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from study_util import PULL_HINT, find_pair, read_csv

VARIANTS = results_table.VARIANTS
# What each variant adds to the real batch, in this order.
ADDONS = {"none": (), "classic": ("classic",), "bridge": ("bridge",), "langdaug": ("langdaug",),
          "langdaug+classic": ("classic", "langdaug")}
BASE_OPS = ("flip", "rot90", "scale")
SCALE_RANGE = (0.75, 1.0 / 0.75)  # scale-crop: a crop of side size * s, s log-uniform in this range, resized


# ----------------------------------------------------------------------------- data

def parse_maskmap(spec):
    """Mask value -> class table, the grammar of ld_maskmap_parse: "V:C", "A-B:C", "*:C", first match wins."""
    lut = np.full(256, -1, dtype=np.int16)
    for rule in spec.split(","):
        lhs, sep, cls = rule.strip().partition(":")
        if not sep or not cls.strip().isdigit():
            raise ValueError("mask map rule %r: expected VALUE:CLASS, LO-HI:CLASS or *:CLASS" % rule)
        if lhs == "*":
            lo, hi = 0, 255
        elif "-" in lhs:
            lo, hi = (int(v) for v in lhs.split("-", 1))
        else:
            lo = hi = int(lhs)
        if not 0 <= lo <= hi <= 255:
            raise ValueError("mask map rule %r: values must be 0..255" % rule)
        sel = lut[lo:hi + 1]
        sel[sel < 0] = int(cls)
    return lut


class Domain:
    """The images of one domain at working scale: uint8 HxWxC, masks HxW class ids, FOV HxW bool."""

    def __init__(self, name):
        self.name, self.images, self.masks, self.fovs, self.files = name, [], [], [], []

    def split(self, fraction):
        """(training part, validation part): every round(1/fraction)-th image (from the second) validates."""
        every = max(2, round(1 / fraction))
        parts = (Domain(self.name), Domain(self.name))
        for i in range(len(self.images)):
            part = parts[1] if i % every == 1 % every else parts[0]
            for k in ("images", "masks", "fovs", "files"):
                getattr(part, k).append(getattr(self, k)[i])
        return parts


def load_domain(root, name, subdir, scale, lut, channels):
    base = os.path.join(root, name, subdir or "")
    imdir = os.path.join(base, "image")
    if not os.path.isdir(imdir):
        raise SystemExit("domain %s: no folder %s" % (name, imdir))
    dom = Domain(name)
    for fname in sorted(os.listdir(imdir)):
        stem = os.path.splitext(fname)[0]
        mpath = find_pair(os.path.join(base, "mask"), stem)
        if mpath is None:
            print("warning: %s/%s has no mask, skipped" % (name, fname), file=sys.stderr)
            continue
        img = Image.open(os.path.join(imdir, fname)).convert("RGB" if channels == 3 else "L")
        mask = Image.open(mpath)
        mask = np.asarray(mask)[..., 0] if np.asarray(mask).ndim == 3 else np.asarray(mask)
        if mask.dtype != np.uint8:
            mask = (mask >> 8).astype(np.uint8)
        fpath = find_pair(os.path.join(base, "fov"), stem)
        w, h = img.size
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.BOX if scale < 0.5 else Image.BILINEAR)
        cls = lut[np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))]
        if (cls < 0).any():
            raise SystemExit("%s: mask value %d has no class in the mask map" % (mpath, mask[cls < 0][0]))
        fov = None
        if fpath:
            f = np.asarray(Image.open(fpath).convert("L").resize(size, Image.NEAREST)) > 127
            fov = f
        dom.images.append(np.asarray(img).reshape(size[1], size[0], channels))
        dom.masks.append(cls.astype(np.uint8))
        dom.fovs.append(fov)
        dom.files.append(fname)
    if not dom.images:
        raise SystemExit("domain %s: no image/mask pairs under %s" % (name, base))
    return dom


def to_tensor(img):
    """HxWxC uint8 -> CxHxW float in [-1, 1]."""
    return torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)


def cut(img, mask, y, x, side):
    """The side x side window at (y, x), zero-padded where it leaves the image."""
    h, w = mask.shape
    ci = np.zeros((side, side, img.shape[2]), np.uint8)
    cm = np.zeros((side, side), np.uint8)
    ch, cw = min(side, h - y), min(side, w - x)
    ci[:ch, :cw] = img[y:y + ch, x:x + cw]
    cm[:ch, :cw] = mask[y:y + ch, x:x + cw]
    return to_tensor(ci), torch.from_numpy(cm.astype(np.int64))


def dihedral(x, m, k, flip):
    """Rotates image [..., C, S, S] and mask [..., S, S] by k quarter turns, then mirrors them if flip."""
    x, m = torch.rot90(x, k, (-2, -1)), torch.rot90(m, k, (-2, -1))
    return (x.flip(-1), m.flip(-1)) if flip else (x, m)


def random_crops(domains, n, size, rng, ops=BASE_OPS):
    """n random training crops with the base augmentation in ops, every random choice from rng (so a seed
    fixes them whatever else the run draws). Returns images [n,C,S,S], masks [n,S,S], domain indices [n]."""
    xs, ms, ds = [], [], []
    for _ in range(n):
        d = int(rng.integers(len(domains)))
        dom = domains[d]
        i = rng.integers(len(dom.images))
        img, mask = dom.images[i], dom.masks[i]
        s = math.exp(rng.uniform(*np.log(SCALE_RANGE))) if "scale" in ops else 1.0
        side = max(2, round(size * s))
        h, w = mask.shape
        y, x = rng.integers(max(h - side, 0) + 1), rng.integers(max(w - side, 0) + 1)
        ci, cm = cut(img, mask, y, x, side)
        if side != size:
            ci = F.interpolate(ci[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            cm = F.interpolate(cm[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
        k = int(rng.integers(4)) if "rot90" in ops else 0
        flip = bool(rng.integers(2)) if "flip" in ops else False
        ci, cm = dihedral(ci, cm, k, flip)
        xs.append(ci)
        ms.append(cm)
        ds.append(d)
    return torch.stack(xs), torch.stack(ms), torch.tensor(ds)


CLASSIC_OPS = ("gamma", "cast", "contrast", "blur", "noise")


def classic_randomize(x, gen, ops=CLASSIC_OPS):
    """Intensity/colour randomization of a batch in [-1, 1]: each sample gets its own
    gamma, per-channel colour cast, contrast and brightness, blur and noise (those in ops)."""
    n, c = x.shape[:2]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    v = (x + 1) / 2
    if "gamma" in ops:
        v = v.clamp(1e-4, 1) ** u(0.6, 1.6, 1, 1, 1)
    if "cast" in ops:
        v = v * u(0.75, 1.25, c, 1, 1)
    if "contrast" in ops:
        mean = v.mean(dim=(1, 2, 3), keepdim=True)
        v = (v - mean) * u(0.6, 1.4, 1, 1, 1) + mean + u(-0.15, 0.15, 1, 1, 1)
    if "blur" in ops:
        blur = torch.rand(n, generator=gen) < 0.3
        if blur.any():
            k = torch.tensor([0.25, 0.5, 0.25])
            k2 = (k[:, None] * k[None, :]).expand(c, 1, 3, 3)
            v[blur] = F.conv2d(F.pad(v[blur], (1, 1, 1, 1), mode="replicate"), k2, groups=c)
    if "noise" in ops:
        v = v + torch.randn(v.shape, generator=gen) * u(0, 0.04, 1, 1, 1)
    return (v.clamp(0, 1) * 2 - 1)


# ----------------------------------------------------------------------------- the bridge control

_XYZ_FROM_RGB = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                              [0.2126729, 0.7151522, 0.0721750],
                              [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def rgb_to_lab(x):
    """sRGB [N,3,H,W] in [-1,1] -> CIE LAB (D65; L in 0..100), float64."""
    v = ((x.double() + 1) / 2).clamp(0, 1)
    lin = torch.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,njhw->nihw", _XYZ_FROM_RGB, lin) / _WHITE_D65[:, None, None]
    d = 6 / 29
    f = torch.where(xyz > d ** 3, xyz.clamp(min=0) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def lab_to_rgb(lab):
    """The inverse of rgb_to_lab, clamped to [-1, 1], float32."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
    d = 6 / 29
    xyz = torch.where(f > d, f ** 3, 3 * d * d * (f - 4 / 29)) * _WHITE_D65[:, None, None]
    lin = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_XYZ_FROM_RGB), xyz).clamp(0, 1)
    v = torch.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
    return (v * 2 - 1).clamp(-1, 1).float()


def colour_space(x):
    """The space the bridge moves statistics in: LAB for colour images, the grey value for one channel."""
    return rgb_to_lab(x) if x.shape[1] == 3 else x.double()


def from_colour_space(v, channels):
    return lab_to_rgb(v) if channels == 3 else v.clamp(-1, 1).float()


def channel_stats(v):
    """Per-image, per-channel mean and sd: [N,C] each."""
    return v.mean((2, 3)), v.std((2, 3), unbiased=False)


class Bridge:
    """The control that learns nothing: a crop's per-channel mean and sd (in LAB) move a random fraction
    t ~ U(0,1) of the way toward a random other source domain's (that domain's average crop statistics,
    from `probe` random crops drawn with a fixed seed)."""

    def __init__(self, domains, size, probe=256):
        if len(domains) < 2:
            raise SystemExit("the bridge variant needs at least two source domains")
        rng = np.random.default_rng(12345)
        self.means, self.sds = [], []
        for dom in domains:
            x, _, _ = random_crops([dom], probe, size, rng, ())
            m, s = channel_stats(colour_space(x))
            self.means.append(m.mean(0))
            self.sds.append(s.mean(0))
        self.means, self.sds = torch.stack(self.means), torch.stack(self.sds)

    def move(self, x, target, t):
        """x [N,C,S,S] -> its statistics moved the fraction t [N] of the way toward domain `target` [N]'s."""
        v = colour_space(x)
        m, s = channel_stats(v)
        t = t.double()[:, None]
        m2 = m + t * (self.means[target] - m)
        s2 = s + t * (self.sds[target] - s)
        v = (v - m[..., None, None]) / s.clamp(min=1e-6)[..., None, None] * s2[..., None, None] + m2[..., None, None]
        return from_colour_space(v, x.shape[1])

    def __call__(self, x, domain, gen):
        n, k = len(x), len(self.means)
        shift = torch.randint(1, k, (n,), generator=gen)  # a random OTHER domain
        return self.move(x, (domain + shift) % k, torch.rand(n, generator=gen))


# ----------------------------------------------------------------------------- model

def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, channels, classes, base=16, depth=3):
        super().__init__()
        widths = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([block(channels, widths[0])] +
                                  [block(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.dec = nn.ModuleList([block(2 * widths[i], widths[i]) for i in range(depth)])
        self.out = nn.Conv2d(widths[0], classes, 1)
        self.multiple = 2 ** depth

    def forward(self, x):
        skips = []
        for i, d in enumerate(self.down):
            x = d(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.dec[i](torch.cat([skips[i], self.up[i](x)], 1))
        return self.out(x)


def seg_loss(logits, target, classes):
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(1)
    onehot = F.one_hot(target, classes).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((0, 2, 3))[1:]
    denom = (prob + onehot).sum((0, 2, 3))[1:]
    return ce + (1 - (2 * inter + 1) / (denom + 1)).mean()


@torch.no_grad()
def evaluate(model, dom, classes):
    """Mean over images of Dice and IoU of the foreground classes, inside the FOV when there is one."""
    model.eval()
    dices, ious = [], []
    m = model.multiple
    for img, mask, fov in zip(dom.images, dom.masks, dom.fovs):
        x = to_tensor(img)[None]
        h, w = mask.shape
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m), value=-1.0)
        pred = model(x)[0, :, :h, :w].argmax(0).numpy()
        valid = fov if fov is not None else np.ones_like(mask, bool)
        d, j = [], []
        for k in range(1, classes):
            p, g = (pred == k) & valid, (mask == k) & valid
            inter, total, union = (p & g).sum(), p.sum() + g.sum(), (p | g).sum()
            d.append(1.0 if total == 0 else 2 * inter / total)
            j.append(1.0 if union == 0 else inter / union)
        dices.append(np.mean(d))
        ious.append(np.mean(j))
    model.train()
    return float(np.mean(dices)), float(np.mean(ious))


# ----------------------------------------------------------------------------- LangDAug pool

class SamplePool:
    """LangDAug samples to draw training samples from: images [N,C,S,S], masks [N,S,S], n valid."""

    images = masks = None
    n = received = 0

    def fill(self, wait_for=0):
        """Takes in what has arrived (a pool that streams); blocks until at least wait_for samples exist."""

    def draw(self, n, gen):
        idx = torch.randint(self.n, (n,), generator=gen)
        return self.images[idx], self.masks[idx]


class LangDAugPool(SamplePool):
    """LangDAug samples received so far (a ring of at most `capacity`), filled without blocking."""

    def __init__(self, client, capacity, channels, size):
        self.client, self.capacity, self.n, self.head = client, capacity, 0, 0
        self.images = torch.empty(capacity, channels, size, size)
        self.masks = torch.empty(capacity, size, size, dtype=torch.int64)
        self.received = 0

    def _add(self, batch):
        imgs = torch.from_numpy(batch.images_float())
        msks = torch.from_numpy(np.array(batch.masks, dtype=np.int64))
        for i in range(len(batch)):
            self.images[self.head], self.masks[self.head] = imgs[i], msks[i]
            self.head = (self.head + 1) % self.capacity
            self.n = min(self.n + 1, self.capacity)
        self.received += len(batch)

    def fill(self, wait_for=0):
        """Takes every batch already waiting; blocks until at least `wait_for` samples exist."""
        while True:
            try:
                self._add(self.client.next(timeout=0 if self.n >= wait_for else 60))
            except TimeoutError:
                if self.n >= wait_for:
                    return


class PulledPool(SamplePool):
    """LangDAug samples written earlier by `langdaug pull --format png` (DIR/samples.csv
    naming DIR/<source>2<target>/{image,mask}/<k>.png), optionally only those at the
    given Langevin steps and without those from or toward a domain in drop. Everything is in memory,
    so every variant and seed draws from the same sample set."""

    def __init__(self, dirs, steps, channels, size, classes, drop=()):
        imgs, msks = [], []
        self.counts, self.dropped = {}, 0
        for d in dirs:
            rows = read_csv(os.path.join(d, "samples.csv"), ("image", "mask", "step", "source_domain",
                                                             "target_domain"), PULL_HINT)
            for row in rows:
                step = int(row["step"])
                if steps and step not in steps:
                    continue
                if row["source_domain"] in drop or row["target_domain"] in drop:
                    self.dropped += 1
                    continue
                img, mask = self._load_pair(d, row, channels, size, classes)
                imgs.append(img)
                msks.append(mask)
                key = (row["source_domain"], row["target_domain"], step)
                self.counts[key] = self.counts.get(key, 0) + 1
        if not imgs:
            raise SystemExit("--langdaug-dir %s: no samples%s" % (
                ",".join(dirs), " at steps %s" % ",".join(map(str, sorted(steps))) if steps else ""))
        self.images, self.masks = torch.stack(imgs), torch.stack(msks)
        self.n = self.received = len(imgs)

    @staticmethod
    def _load_pair(d, row, channels, size, classes):
        ipath, mpath = os.path.join(d, row["image"]), os.path.join(d, row["mask"])
        try:
            img = np.asarray(Image.open(ipath).convert("RGB" if channels == 3 else "L"))
            mask = np.asarray(Image.open(mpath))
        except OSError as e:
            raise SystemExit("%s: %s" % (ipath, e))
        if img.shape[:2] != (size, size) or mask.shape != (size, size):
            raise SystemExit("%s: %dx%d sample, but --size is %d" % (ipath, img.shape[1], img.shape[0], size))
        if mask.max() >= classes:
            raise SystemExit("%s: class %d, but the mask map has %d classes (pull without --mask-values)" % (
                mpath, mask.max(), classes))
        return to_tensor(img.reshape(size, size, channels)), torch.from_numpy(mask.astype(np.int64))


# ----------------------------------------------------------------------------- experiment

class Run:
    """The randomness of one training run. `real` (numpy) draws only the real batches and their base
    augmentation, and torch's global seed sets the initial weights: both depend on the seed alone, so every
    variant of a seed trains on the same real crops from the same start. `extra` (torch) draws everything a
    variant adds (classic parameters, bridge targets, LangDAug samples and their flips)."""

    def __init__(self, seed):
        torch.manual_seed(seed)
        self.real = np.random.default_rng(seed)
        self.extra = torch.Generator().manual_seed(seed + 7919)


def make_batch(args, variant, sources, run, pool, bridge):
    """One training batch: the real crops, then each add-on of the variant (ADDONS), round(ratio x batch)
    images each. Returns images, masks and [(part, count)] in batch order."""
    x, y, dom = random_crops(sources, args.batch, args.size, run.real, args.base_ops)
    xs, ys, parts = [x], [y], [("real", len(x))]
    n_extra = round(args.ratio * args.batch)
    copies = torch.arange(n_extra) % args.batch  # the real crops an add-on of copies starts from
    for addon in ADDONS[variant]:
        if addon == "classic":
            xa, ya = classic_randomize(x[copies], run.extra, args.classic_ops), y[copies]
        elif addon == "bridge":
            xa, ya = bridge(x[copies], dom[copies], run.extra), y[copies]
        else:
            pool.fill(wait_for=n_extra)
            xa, ya = pool.draw(n_extra, run.extra)
            k = torch.randint(4 if "rot90" in args.base_ops else 1, (n_extra,), generator=run.extra)
            flip = torch.randint(2 if "flip" in args.base_ops else 1, (n_extra,), generator=run.extra)
            pairs = [dihedral(xa[i], ya[i], int(k[i]), bool(flip[i])) for i in range(n_extra)]
            xa, ya = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        xs.append(xa)
        ys.append(ya)
        parts.append((addon, n_extra))
    return torch.cat(xs), torch.cat(ys), parts


def evaluate_domains(model, domains, classes):
    """Mean over domains of evaluate()'s per-domain Dice and IoU (each domain counts once)."""
    scores = np.array([evaluate(model, d, classes) for d in domains])
    return float(scores[:, 0].mean()), float(scores[:, 1].mean())


def train_one(args, sources, holdout, variant, seed, pool, classes, channels, bridge=None, val=None):
    run = Run(seed)
    model = UNet(channels, classes, base=args.base)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iters)
    curve = []
    start, last = time.time(), time.time()
    for it in range(args.iters):
        x, y, parts = make_batch(args, variant, sources, run, pool, bridge)
        loss = seg_loss(model(x), y, classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if val and ((it + 1) % args.val_every == 0 or it + 1 == args.iters):
            d, j = evaluate_domains(model, val, classes)
            curve.append(dict(variant=variant, seed=seed, iteration=it + 1, val_dice=d, val_iou=j))
        if time.time() - last > 10 or it + 1 == args.iters:
            last = time.time()
            print("  [%s seed %d] iter %d/%d loss %.3f (%.1f it/s)%s%s" % (
                variant, seed, it + 1, args.iters, loss.item(), (it + 1) / (last - start),
                "  pool %d" % pool.n if "langdaug" in variant else "",
                "  val Dice %.4f" % curve[-1]["val_dice"] if curve else ""), flush=True)
    dice, iou = evaluate(model, holdout, classes)
    return dict(holdout=holdout.name, variant=variant, seed=seed, dice=dice, iou=iou,
                seconds=round(time.time() - start, 1)), curve


_worker_context = None


def _init_worker(context, trainer_pid):
    global _worker_context
    _worker_context = context
    if sys.platform.startswith("linux"):  # a worker must not outlive a killed trainer
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != trainer_pid:  # the trainer died before the line above
            os._exit(1)
    torch.set_num_threads(context[0].threads or 1)


def _run_in_worker(run):
    args, sources, holdout, pool, classes, channels, bridge, val = _worker_context
    return train_one(args, sources, holdout, run[0], run[1], pool, classes, channels, bridge, val)


def run_parallel(args, runs, context, record):
    """Runs (variant, seed) pairs in --jobs fresh processes (spawned: forking a process that has
    used torch's thread pool can hang); each worker gets the data and the pool once."""
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(context, os.getpid())) as ex:
        futures = [ex.submit(_run_in_worker, run) for run in runs]
        for f in concurrent.futures.as_completed(futures):
            record(*f.result())


def write_csv(path, rows, keys):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_results(rows, outdir):
    os.makedirs(outdir, exist_ok=True)
    write_csv(os.path.join(outdir, "results.csv"), rows, ["holdout", "variant", "seed", "dice", "iou", "seconds"])
    groups = results_table.entries(rows)
    text = results_table.markdown(groups) + "\n" + results_table.paired_markdown(rows)
    results_table.write_text(os.path.join(outdir, "results.md"), text)
    results_table.plot(groups, os.path.join(outdir, "results.png"))
    return text.rstrip("\n")


def previous_results(outdir, holdout):
    """The rows of OUT/results.csv and OUT/curve.csv of an earlier run on the same held-out domain."""
    path = os.path.join(outdir, "results.csv")
    if not os.path.exists(path):
        return [], []
    rows = read_csv(path, ("holdout", "variant", "seed", "dice", "iou", "seconds"))
    if any(r["holdout"] != holdout for r in rows):
        raise SystemExit("%s: results for another held-out domain; --resume needs the same --holdout" % path)
    for r in rows:
        r["seed"], r["dice"], r["iou"], r["seconds"] = int(r["seed"]), float(r["dice"]), float(r["iou"]), \
            float(r["seconds"])
    cpath = os.path.join(outdir, "curve.csv")
    curve = read_csv(cpath, ("variant", "seed", "iteration", "val_dice", "val_iou")) if os.path.exists(cpath) else []
    for c in curve:
        c["seed"], c["iteration"], c["val_dice"], c["val_iou"] = int(c["seed"]), int(c["iteration"]), \
            float(c["val_dice"]), float(c["val_iou"])
    return rows, curve


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset root: one folder per domain with image/, mask/[, fov/]")
    ap.add_argument("--subdir", default="", help="inside each domain folder, e.g. train/ROIs")
    ap.add_argument("--domains", help="comma-separated domains (default: every folder)")
    ap.add_argument("--holdout", required=True, help="the unseen domain to evaluate on")
    ap.add_argument("--variants", default="none,classic,bridge,langdaug,langdaug+classic")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--maskmap", default="0:0,*:1")
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--scale", type=float, default=1.0, help="working scale of the images")
    ap.add_argument("--size", type=int, default=64, help="training crop side (must equal the sampler's)")
    ap.add_argument("--batch", type=int, default=16, help="real crops per step (every variant)")
    ap.add_argument("--ratio", type=float, default=1.0,
                    help="images each add-on (classic, bridge, langdaug) adds per real crop")
    ap.add_argument("--base-aug", default=",".join(BASE_OPS),
                    help="base augmentation of every variant, a subset of %(default)s, or 'none'")
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--base", type=int, default=16, help="U-Net base width")
    ap.add_argument("--classic", default=",".join(CLASSIC_OPS),
                    help="the classic randomization's operations, a subset of %(default)s")
    ap.add_argument("--sampler", help="langdaugd endpoints (comma-separated) for the LangDAug variants")
    ap.add_argument("--langdaug-dir", help="instead of --sampler: folders written by `langdaug pull --format png`")
    ap.add_argument("--steps", default="", help="Langevin snapshot steps to ask for (default: the daemon's), "
                    "or to keep from --langdaug-dir (default: all)")
    ap.add_argument("--drop-holdout-samples", action="store_true",
                    help="drop samples from or toward the held-out domain instead of refusing them "
                    "(leave-one-source-out validation)")
    ap.add_argument("--pool", type=int, default=4096, help="LangDAug samples kept for reuse (live samplers)")
    ap.add_argument("--val-fraction", type=float, default=0.0,
                    help="keep this fraction of each source domain's images out of training, for --val-every")
    ap.add_argument("--val-every", type=int, default=0,
                    help="evaluate on the source-validation images every N iterations (learning curve)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default; 1 with --jobs)")
    ap.add_argument("--jobs", type=int, default=1, help="training runs at once, in separate processes "
                    "(needs --langdaug-dir for the LangDAug variants)")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in OUT/results.csv (and curve.csv) and train only the others")
    args = ap.parse_args(argv)
    check_args(ap, args)
    return args


def check_args(ap, args):
    args.variant_list = [v for v in args.variants.split(",") if v]
    for v in args.variant_list:
        if v not in VARIANTS:
            ap.error("unknown variant %r (choose from %s)" % (v, ", ".join(VARIANTS)))
    uses_pool = any("langdaug" in v for v in args.variant_list)
    if uses_pool and not (args.sampler or args.langdaug_dir):
        ap.error("the LangDAug variants need --sampler ENDPOINTS or --langdaug-dir DIR")
    if args.sampler and args.langdaug_dir:
        ap.error("give --sampler or --langdaug-dir, not both")
    args.classic_ops = tuple(o for o in args.classic.split(",") if o)
    unknown = [o for o in args.classic_ops if o not in CLASSIC_OPS]
    if unknown or not args.classic_ops:
        ap.error("--classic: %s; choose from %s" % ("%r is unknown" % unknown[0] if unknown else "empty",
                                                     ",".join(CLASSIC_OPS)))
    args.base_ops = () if args.base_aug == "none" else tuple(o for o in args.base_aug.split(",") if o)
    if not set(args.base_ops) <= set(BASE_OPS):
        ap.error("--base-aug: %r is unknown; choose from %s, or none" % (
            sorted(set(args.base_ops) - set(BASE_OPS))[0], ",".join(BASE_OPS)))
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    if args.jobs > 1 and args.sampler:
        ap.error("--jobs > 1 works with --langdaug-dir, not with a live --sampler (one stream, one trainer)")
    try:
        args.step_list = sorted({int(s) for s in args.steps.split(",") if s})
    except ValueError:
        ap.error("--steps: %r is not a comma-separated list of step counts" % args.steps)
    if not args.ratio > 0 or round(args.ratio * args.batch) < 1:
        ap.error("--ratio must be > 0 and add at least one image per step (ratio x batch >= 0.5)")
    if not 0 <= args.val_fraction < 1:
        ap.error("--val-fraction must be in [0, 1)")
    if (args.val_every > 0) != (args.val_fraction > 0):
        ap.error("--val-every and --val-fraction go together (a learning curve on source-validation images)")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        ap.error("--seeds: %r is not a comma-separated list of integers" % args.seeds)
    if args.iters < 1 or args.batch < 1:
        ap.error("--iters and --batch must be at least 1")


def load_pool(args, sources, holdout, classes):
    """The LangDAug sample pool of the run (None without a LangDAug variant) and the client to close."""
    if not any("langdaug" in v for v in args.variant_list):
        return None, None
    if args.langdaug_dir:
        drop = {holdout.name} if args.drop_holdout_samples else set()
        pool = PulledPool(args.langdaug_dir.split(","), set(args.step_list), args.channels, args.size, classes, drop)
        if any(holdout.name in (a, b) for (a, b, _) in pool.counts):
            raise SystemExit("--langdaug-dir: samples from or toward %s, the held-out domain: pull them from a "
                             "sampler whose EBM and dataset leave it out (or, for leave-one-source-out "
                             "validation, give --drop-holdout-samples)" % holdout.name)
        print("LangDAug samples loaded: %d (%s)%s" % (pool.n, ", ".join(
            "%s>%s@%d: %d" % (a, b, st, c) for (a, b, st), c in sorted(pool.counts.items())),
            "; %d touching %s dropped" % (pool.dropped, holdout.name) if drop else ""), flush=True)
        return pool, None
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client", "python"))
    import langdaug
    names = [d.name for d in sources]
    client = langdaug.Client(args.sampler, batch_size=8, pairs=[(a, b) for a in names for b in names if a != b],
                             steps=args.step_list or None, credits=8, timeout=120)
    return LangDAugPool(client, args.pool, args.channels, args.size), client


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lut = parse_maskmap(args.maskmap)
    classes = int(lut.max()) + 1
    names = args.domains.split(",") if args.domains else sorted(
        d for d in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, d)))
    if args.holdout not in names:
        raise SystemExit("held-out domain %r is not among %s" % (args.holdout, ", ".join(names)))
    doms = {n: load_domain(args.data, n, args.subdir, args.scale, lut, args.channels) for n in names}
    sources = [doms[n] for n in names if n != args.holdout]
    holdout = doms[args.holdout]
    val = None
    if args.val_fraction:
        sources, val = zip(*(d.split(args.val_fraction) for d in sources))
        sources, val = list(sources), list(val)
    print("sources: %s; held out: %s (%d images); classes %d%s" % (
        ", ".join("%s (%d)" % (d.name, len(d.images)) for d in sources), holdout.name, len(holdout.images),
        classes, "; source validation: %d images" % sum(len(d.images) for d in val) if val else ""), flush=True)
    bridge = Bridge(sources, args.size) if "bridge" in args.variant_list else None
    pool, client = load_pool(args, sources, holdout, classes)

    rows, curve = previous_results(args.out, holdout.name) if args.resume else ([], [])

    def record(r, c):
        rows.append(r)
        rows.sort(key=lambda x: (VARIANTS.index(x["variant"]), x["seed"]))
        curve.extend(c)
        print("%s seed %d: Dice %.4f IoU %.4f on %s (%.0f s)" % (
            r["variant"], r["seed"], r["dice"], r["iou"], holdout.name, r["seconds"]), flush=True)
        write_results(rows, args.out)
        if curve:
            curve.sort(key=lambda x: (VARIANTS.index(x["variant"]), x["seed"], x["iteration"]))
            write_csv(os.path.join(args.out, "curve.csv"), curve,
                      ["variant", "seed", "iteration", "val_dice", "val_iou"])
            results_table.write_text(os.path.join(args.out, "curve.md"), results_table.curve_markdown(curve))

    done = {(r["variant"], int(r["seed"])) for r in rows}
    runs = [(v, s) for v in args.variant_list for s in args.seed_list if (v, s) not in done]
    if done:
        print("resuming: %d runs done, %d to go" % (len(done), len(runs)), flush=True)
    try:
        if args.jobs > 1:
            run_parallel(args, runs, (args, sources, holdout, pool, classes, args.channels, bridge, val), record)
        else:
            for variant, seed in runs:
                record(*train_one(args, sources, holdout, variant, seed, pool, classes, args.channels, bridge, val))
    finally:
        if client is not None:
            client.close()
    print(write_results(rows, args.out))
    if curve:
        print(results_table.curve_markdown(curve))
    if pool is not None:
        print("LangDAug samples received: %d" % pool.received)
    return 0


if __name__ == "__main__":
    sys.exit(main())
