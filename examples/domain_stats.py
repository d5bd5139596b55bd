#!/usr/bin/python3
"""Where does each domain sit in image statistics? A held-out domain that lies
between the source domains is what LangDAug's intermediate domains can reach;
one outside them is not.

For every domain folder (ROOT/<domain>/image/, mask/, optional fov/, paired by
file name) at the working scale, averaged over its images and measured inside the
field of view when there is one:

    mean R,G,B     colour (0..1)
    sd R,G,B       spread of each channel (contrast)
    detail         mean |Laplacian| of the green channel (sharpness and noise)
    vessel         (mean background - mean foreground) / sd of the green channel
                   (how dark the labelled structures are against their surround)

then, for --holdout H, H's distance to the sources' range in each statistic:
how far below the smallest or above the largest source value it is (0 = within).

    /usr/bin/python3 examples/domain_stats.py ../shared/data/retina --scale 0.5 --holdout HRF
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

from study_util import abs_laplacian, find_pair

NAMES = ("mean R", "mean G", "mean B", "sd R", "sd G", "sd B", "detail", "vessel")


def load_grey(path, size):
    return np.asarray(Image.open(path).convert("L").resize(size, Image.NEAREST)) > 127


def image_stats(img, fov, fg):
    """The statistics of one image: img HxWx3 in 0..1, fov and fg HxW bool."""
    g = img[..., 1]
    lap = abs_laplacian(g)
    inner = fov[1:-1, 1:-1]
    spread = g[fov].std()
    bg, fgv = fov & ~fg, fov & fg
    vessel = (g[bg].mean() - g[fgv].mean()) / spread if bg.any() and fgv.any() and spread > 0 else np.nan
    return np.concatenate([img[fov].mean(0), img[fov].std(0), [lap[inner].mean() if inner.any() else np.nan,
                                                               vessel]])


def domain_stats(root, name, scale):
    imdir = os.path.join(root, name, "image")
    if not os.path.isdir(imdir):
        raise SystemExit("%s: no folder %s" % (name, imdir))
    rows = []
    for fname in sorted(os.listdir(imdir)):
        stem = os.path.splitext(fname)[0]
        mpath = find_pair(os.path.join(root, name, "mask"), stem)
        if mpath is None:
            continue
        img = Image.open(os.path.join(imdir, fname)).convert("RGB")
        size = (max(3, round(img.size[0] * scale)), max(3, round(img.size[1] * scale)))
        arr = np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float64) / 255.0
        fpath = find_pair(os.path.join(root, name, "fov"), stem)
        fov = load_grey(fpath, size) if fpath else np.ones(arr.shape[:2], bool)
        rows.append(image_stats(arr, fov, load_grey(mpath, size)))
    if not rows:
        raise SystemExit("%s: no image/mask pairs under %s" % (name, os.path.join(root, name)))
    return np.nanmean(rows, 0)


def outside(value, lo, hi):
    return lo - value if value < lo else value - hi if value > hi else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="dataset root: one folder per domain with image/, mask/[, fov/]")
    ap.add_argument("--domains", help="comma-separated domains (default: every folder)")
    ap.add_argument("--scale", type=float, default=1.0, help="working scale of the images")
    ap.add_argument("--holdout", help="also say how far this domain lies outside the others' range")
    args = ap.parse_args(argv)
    names = args.domains.split(",") if args.domains else sorted(
        d for d in os.listdir(args.root) if os.path.isdir(os.path.join(args.root, d)))
    if args.holdout and args.holdout not in names:
        ap.error("--holdout %s is not among %s" % (args.holdout, ", ".join(names)))
    stats = {n: domain_stats(args.root, n, args.scale) for n in names}
    print("| domain | " + " | ".join(NAMES) + " |")
    print("|---" * (len(NAMES) + 1) + "|")
    for n in names:
        print("| %s | %s |" % (n, " | ".join("%.4f" % v for v in stats[n])))
    if args.holdout:
        src = np.array([stats[n] for n in names if n != args.holdout])
        h = stats[args.holdout]
        print("| %s outside the sources by | %s |" % (args.holdout, " | ".join(
            "%.4f" % outside(h[i], src[:, i].min(), src[:, i].max()) for i in range(len(NAMES)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
