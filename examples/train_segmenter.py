#!/usr/bin/python3
"""Leave-one-domain-out segmentation training with and without LangDAug.

A compact PyTorch U-Net is trained on the real images of the source domains and
evaluated on a held-out domain it never saw, for the variants the paper compares:

    none              real source crops only
    classic           + intensity/colour randomization (brightness, contrast, gamma,
                        colour cast, blur, noise) on every training crop
    langdaug          + LangDAug intermediate-domain samples pulled from langdaugd
    langdaug+classic  both

LangDAug samples arrive from one or more samplers (--sampler) into a pool; every
training batch mixes real crops with samples drawn from the pool (--langdaug-ratio),
so a slow sampler never stalls training: the pool keeps growing while the trainer
runs, and early iterations reuse what has arrived. The EBM behind the samplers must
have been trained on the source domains only, or the held-out result is not honest.

Offline, --langdaug-dir reads samples written before by `langdaug pull --format png`
(--steps then keeps only those snapshot steps): every variant and seed draws from the
same sample set, no sampler competes with the trainer for the CPU, and one pull at
many steps serves a study of how far along the chains to sample. With samples from a
folder (or no LangDAug variant), --jobs N trains N runs at once in separate processes.

Results: DIR/results.csv and DIR/results.md (Dice and IoU on the held-out domain,
mean and spread over seeds), DIR/results.png (a bar plot).

Example:
    /usr/bin/python3 examples/train_segmenter.py --data demo/data --holdout cam3 \
        --variants none,langdaug --seeds 0 --iters 300 --sampler tcp://127.0.0.1:5555 --out demo/seg
"""

import argparse
import csv
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


def random_crops(domains, n, size, rng):
    xs, ms = [], []
    for _ in range(n):
        dom = domains[rng.integers(len(domains))]
        i = rng.integers(len(dom.images))
        img, mask = dom.images[i], dom.masks[i]
        h, w = mask.shape
        y = rng.integers(max(h - size, 0) + 1)
        x = rng.integers(max(w - size, 0) + 1)
        ci = np.full((size, size, img.shape[2]), 0, np.uint8)
        cm = np.zeros((size, size), np.uint8)
        ch, cw = min(size, h), min(size, w)
        ci[:ch, :cw] = img[y:y + ch, x:x + cw]
        cm[:ch, :cw] = mask[y:y + ch, x:x + cw]
        xs.append(to_tensor(ci))
        ms.append(torch.from_numpy(cm.astype(np.int64)))
    return torch.stack(xs), torch.stack(ms)


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
    given Langevin steps. Everything is in memory,
    so every variant and seed draws from the same sample set."""

    def __init__(self, dirs, steps, channels, size, classes):
        imgs, msks = [], []
        self.counts = {}
        for d in dirs:
            rows = read_csv(os.path.join(d, "samples.csv"), ("image", "mask", "step", "source_domain",
                                                             "target_domain"), PULL_HINT)
            for row in rows:
                step = int(row["step"])
                if steps and step not in steps:
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

def train_one(args, sources, holdout, variant, seed, pool, classes, channels):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = UNet(channels, classes, base=args.base)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iters)
    n_aug = round(args.batch * args.langdaug_ratio) if "langdaug" in variant else 0
    start, last = time.time(), time.time()
    for it in range(args.iters):
        x, y = random_crops(sources, args.batch - n_aug, args.size, rng)
        if n_aug:
            pool.fill(wait_for=n_aug)
            xa, ya = pool.draw(n_aug, gen)
            x, y = torch.cat([x, xa]), torch.cat([y, ya])
        if "classic" in variant:
            x = classic_randomize(x, gen, args.classic_ops)
        loss = seg_loss(model(x), y, classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if time.time() - last > 10 or it + 1 == args.iters:
            last = time.time()
            print("  [%s seed %d] iter %d/%d loss %.3f (%.1f it/s)%s" % (
                variant, seed, it + 1, args.iters, loss.item(), (it + 1) / (last - start),
                "  pool %d" % pool.n if n_aug else ""), flush=True)
    dice, iou = evaluate(model, holdout, classes)
    return dict(holdout=holdout.name, variant=variant, seed=seed, dice=dice, iou=iou,
                seconds=round(time.time() - start, 1))


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
    args, sources, holdout, pool, classes, channels = _worker_context
    return train_one(args, sources, holdout, run[0], run[1], pool, classes, channels)


def run_parallel(args, runs, context, record):
    """Runs (variant, seed) pairs in --jobs fresh processes (spawned: forking a process that has
    used torch's thread pool can hang); each worker gets the data and the pool once."""
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(context, os.getpid())) as ex:
        futures = [ex.submit(_run_in_worker, run) for run in runs]
        for f in concurrent.futures.as_completed(futures):
            record(f.result())


def write_results(rows, outdir):
    os.makedirs(outdir, exist_ok=True)
    keys = ["holdout", "variant", "seed", "dice", "iou", "seconds"]
    tmp = os.path.join(outdir, ".results.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(outdir, "results.csv"))
    groups = results_table.entries(rows)
    text = results_table.markdown(groups)
    results_table.write_text(os.path.join(outdir, "results.md"), text)
    results_table.plot(groups, os.path.join(outdir, "results.png"))
    return text.rstrip("\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset root: one folder per domain with image/, mask/[, fov/]")
    ap.add_argument("--subdir", default="", help="inside each domain folder, e.g. train/ROIs")
    ap.add_argument("--domains", help="comma-separated domains (default: every folder)")
    ap.add_argument("--holdout", required=True, help="the unseen domain to evaluate on")
    ap.add_argument("--variants", default="none,classic,langdaug,langdaug+classic")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--maskmap", default="0:0,*:1")
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--scale", type=float, default=1.0, help="working scale of the images")
    ap.add_argument("--size", type=int, default=64, help="training crop side (must equal the sampler's)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--base", type=int, default=16, help="U-Net base width")
    ap.add_argument("--classic", default=",".join(CLASSIC_OPS),
                    help="the classic randomization's operations, a subset of %(default)s")
    ap.add_argument("--sampler", help="langdaugd endpoints (comma-separated) for the LangDAug variants")
    ap.add_argument("--langdaug-dir", help="instead of --sampler: folders written by `langdaug pull --format png`")
    ap.add_argument("--steps", default="", help="Langevin snapshot steps to ask for (default: the daemon's), "
                    "or to keep from --langdaug-dir (default: all)")
    ap.add_argument("--langdaug-ratio", type=float, default=0.5, help="share of each batch from LangDAug")
    ap.add_argument("--pool", type=int, default=4096, help="LangDAug samples kept for reuse")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default; 1 with --jobs)")
    ap.add_argument("--jobs", type=int, default=1, help="training runs at once, in separate processes "
                    "(needs --langdaug-dir for the LangDAug variants)")
    ap.add_argument("--out", required=True, help="results folder")
    args = ap.parse_args(argv)

    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error("unknown variant %r (choose from %s)" % (v, ", ".join(VARIANTS)))
    if any("langdaug" in v for v in variants) and not (args.sampler or args.langdaug_dir):
        ap.error("the LangDAug variants need --sampler ENDPOINTS or --langdaug-dir DIR")
    if args.sampler and args.langdaug_dir:
        ap.error("give --sampler or --langdaug-dir, not both")
    args.classic_ops = tuple(o for o in args.classic.split(",") if o)
    unknown = [o for o in args.classic_ops if o not in CLASSIC_OPS]
    if unknown or not args.classic_ops:
        ap.error("--classic: %s; choose from %s" % ("%r is unknown" % unknown[0] if unknown else "empty",
                                                     ",".join(CLASSIC_OPS)))
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    if args.jobs > 1 and args.sampler:
        ap.error("--jobs > 1 works with --langdaug-dir, not with a live --sampler (one stream, one trainer)")
    try:
        steps = sorted({int(s) for s in args.steps.split(",") if s})
    except ValueError:
        ap.error("--steps: %r is not a comma-separated list of step counts" % args.steps)
    if not 0 < args.langdaug_ratio < 1:
        ap.error("--langdaug-ratio must be in (0, 1)")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.threads:
        torch.set_num_threads(args.threads)
    lut = parse_maskmap(args.maskmap)
    classes = int(lut.max()) + 1
    names = args.domains.split(",") if args.domains else sorted(
        d for d in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, d)))
    if args.holdout not in names:
        ap.error("held-out domain %r is not among %s" % (args.holdout, ", ".join(names)))
    doms = {n: load_domain(args.data, n, args.subdir, args.scale, lut, args.channels) for n in names}
    sources = [doms[n] for n in names if n != args.holdout]
    holdout = doms[args.holdout]
    print("sources: %s; held out: %s (%d images); classes %d" % (
        ", ".join("%s (%d)" % (d.name, len(d.images)) for d in sources), holdout.name, len(holdout.images),
        classes), flush=True)

    pool = client = None
    if any("langdaug" in v for v in variants) and args.langdaug_dir:
        pool = PulledPool(args.langdaug_dir.split(","), set(steps), args.channels, args.size, classes)
        if any(args.holdout in (a, b) for (a, b, _) in pool.counts):
            raise SystemExit("--langdaug-dir: samples from or toward %s, the held-out domain: pull them from a "
                             "sampler whose EBM and dataset leave it out" % args.holdout)
        print("LangDAug samples loaded: %d (%s)" % (pool.n, ", ".join(
            "%s>%s@%d: %d" % (a, b, st, c) for (a, b, st), c in sorted(pool.counts.items()))), flush=True)
    elif any("langdaug" in v for v in variants):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client", "python"))
        import langdaug
        client = langdaug.Client(args.sampler, batch_size=8, targets=[d.name for d in sources], steps=steps or None,
                                 credits=8, timeout=120)
        pool = LangDAugPool(client, args.pool, args.channels, args.size)

    rows = []
    runs = [(v, s) for v in variants for s in seeds]

    def record(r):
        rows.append(r)
        rows.sort(key=lambda x: (VARIANTS.index(x["variant"]), x["seed"]))
        print("%s seed %d: Dice %.4f IoU %.4f on %s (%.0f s)" % (
            r["variant"], r["seed"], r["dice"], r["iou"], holdout.name, r["seconds"]), flush=True)
        write_results(rows, args.out)

    try:
        if args.jobs > 1:
            run_parallel(args, runs, (args, sources, holdout, pool, classes, args.channels), record)
        else:
            for variant, seed in runs:
                record(train_one(args, sources, holdout, variant, seed, pool, classes, args.channels))
    finally:
        if client is not None:
            client.close()
    print(write_results(rows, args.out))
    if pool is not None:
        print("LangDAug samples received: %d" % pool.received)
    return 0


if __name__ == "__main__":
    sys.exit(main())
