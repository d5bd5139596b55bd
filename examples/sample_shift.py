#!/usr/bin/python3
"""How far do a sampler's chains carry their crops toward the target domain's colour?

For every pulled sample at --step (a `langdaug pull` folder: samples.csv and the PNGs), its mean
RGB is compared with the mean RGB of its own source crop (re-cut from the data at --scale, pixels
outside the image as 0): the shift, projected on the gap between the source and target domains'
mean colours inside their FOVs (domain_stats.py), is the fraction of that gap covered: 0 = the
colour did not move, 1 = it reached the target's mean, above 1 = overshoot. Printed per pair, with
the mean absolute colour change, so two samplers (pixel and latent) can be set side by side.

    /usr/bin/python3 examples/sample_shift.py examples/retina-results/fair-latent/CHASEDB1/samples \\
        --data ../shared/data/retina --scale 0.5 --step 30
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

from domain_stats import domain_stats
from study_util import read_csv


def source_crop_mean(data, row, scale, size, cache):
    key = (row["source_domain"], row["source_file"])
    if key not in cache:
        img = Image.open(os.path.join(data, *key)).convert("RGB")
        dims = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        cache[key] = np.asarray(img.resize(dims, Image.BOX if scale < 0.5 else Image.BILINEAR), np.float64) / 255
    img = cache[key]
    x, y = int(row["crop_x"]), int(row["crop_y"])
    crop = np.zeros((size, size, 3))
    y0, x0 = max(0, y), max(0, x)
    y1, x1 = min(img.shape[0], y + size), min(img.shape[1], x + size)
    if y1 > y0 and x1 > x0:
        crop[y0 - y:y1 - y, x0 - x:x1 - x] = img[y0:y1, x0:x1]
    return crop.reshape(-1, 3).mean(0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="a langdaug pull folder (samples.csv, <source>2<target>/image/*.png)")
    ap.add_argument("--data", required=True, help="the dataset the sampler served (ROOT/<domain>/image, fov)")
    ap.add_argument("--scale", type=float, default=0.5, help="the sampler's working scale")
    ap.add_argument("--step", type=int, default=30, help="snapshot step to measure")
    ap.add_argument("--per-pair", type=int, default=300, help="samples measured per pair (the first ones)")
    args = ap.parse_args(argv)
    rows = [r for r in read_csv(os.path.join(args.folder, "samples.csv"),
                                ("image", "source_domain", "target_domain", "step", "source_file", "crop_x",
                                 "crop_y")) if int(r["step"]) == args.step]
    if not rows:
        raise SystemExit("%s: no samples at step %d" % (args.folder, args.step))
    pairs, means, cache = {}, {}, {}
    for r in rows:
        pairs.setdefault((r["source_domain"], r["target_domain"]), []).append(r)
    print("| pair | samples | gap covered | mean abs colour change |")
    print("|---|---|---|---|")
    for (s, t), rs in sorted(pairs.items()):
        for d in (s, t):
            if d not in means:
                means[d] = domain_stats(args.data, d, args.scale)[:3]
        gap = means[t] - means[s]
        covered, change = [], []
        for r in rs[:args.per_pair]:
            sample = np.asarray(Image.open(os.path.join(args.folder, r["image"])).convert("RGB"), np.float64)
            shift = sample.reshape(-1, 3).mean(0) / 255 - source_crop_mean(args.data, r, args.scale,
                                                                           sample.shape[0], cache)
            covered.append(np.dot(shift, gap) / np.dot(gap, gap))
            change.append(np.abs(shift).mean())
        print("| %s>%s | %d | %.2f | %.3f |" % (s, t, len(covered), np.mean(covered), np.mean(change)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
