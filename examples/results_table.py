#!/usr/bin/python3
"""One table from several train_segmenter.py result folders (one per held-out domain).

Rows: every (held-out domain, variant) with the mean and spread of Dice and IoU over
seeds, then one "mean" row per variant: for each seed, the average over the held-out
domains, then the mean and spread of those averages over seeds (only seeds present for
every held-out domain count), the figure leave-one-domain-out papers report.
train_segmenter.py writes its own results.md and results.png through this module.

    /usr/bin/python3 examples/results_table.py retina-experiment/*/segmenter \\
        --out retina-experiment/results.md --plot retina-experiment/results.png
"""

import argparse
import os
import sys

import numpy as np

from study_util import read_csv

VARIANTS = ("none", "classic", "langdaug", "langdaug+classic")


def read_rows(folder):
    path = os.path.join(folder, "results.csv")
    rows = read_csv(path, ("holdout", "variant", "seed", "dice", "iou"))
    if not rows:
        raise SystemExit("%s: no results" % path)
    return rows


def order(variant):
    return VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)


def entries(rows):
    """[(held-out name, variant, [(dice, iou) per seed])]: the per-domain groups, then (with more than
    one held-out domain) "mean of N" per variant over the seeds every domain has."""
    by = {}
    for r in rows:
        by.setdefault((r["holdout"], r["variant"]), {})[str(r["seed"])] = (float(r["dice"]), float(r["iou"]))
    holdouts = sorted({h for h, _ in by})
    variants = sorted({v for _, v in by}, key=lambda v: (order(v), v))
    out = [(h, v, list(by[(h, v)].values())) for h in holdouts for v in variants if (h, v) in by]
    if len(holdouts) > 1:
        for v in variants:
            if not all((h, v) in by for h in holdouts):
                continue
            seeds = sorted(set.intersection(*(set(by[(h, v)]) for h in holdouts)))
            per_seed = [tuple(np.mean([by[(h, v)][s][k] for h in holdouts]) for k in (0, 1)) for s in seeds]
            if per_seed:
                out.append(("mean of %d" % len(holdouts), v, per_seed))
    return out


def markdown(groups):
    lines = ["| held-out | variant | seeds | Dice (mean ± sd) | IoU (mean ± sd) |", "|---|---|---|---|---|"]
    for name, variant, values in groups:
        d, j = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        lines.append("| %s | %s | %d | %.4f ± %.4f | %.4f ± %.4f |" % (name, variant, len(values), d.mean(),
                                                                     d.std(), j.mean(), j.std()))
    return "\n".join(lines) + "\n"


COLOURS = {"none": (120, 120, 120), "classic": (70, 130, 180), "langdaug": (220, 120, 40),
           "langdaug+classic": (60, 160, 80)}


def plot(groups, path):
    """A bar plot of mean Dice (with ±sd whiskers) per held-out domain and variant, written atomically."""
    from PIL import Image, ImageDraw
    names = list(dict.fromkeys(name for name, _, _ in groups))
    variants = sorted({v for _, v, _ in groups}, key=lambda v: (order(v), v))
    bw, gap, h, top = 28, 30, 300, 30
    width = max(60 + len(names) * (len(variants) * bw + gap), 60 + 140 * len(variants))
    img = Image.new("RGB", (width, h + 90), "white")
    d = ImageDraw.Draw(img)
    for t in range(0, 11, 2):
        y = top + h - t * h // 10
        d.line([(50, y), (width - 5, y)], fill=(225, 225, 225))
        d.text((10, y - 6), "%.1f" % (t / 10), fill="black")
    for name, variant, values in groups:
        dice = np.array([v[0] for v in values])
        x = 60 + names.index(name) * (len(variants) * bw + gap) + variants.index(variant) * bw
        y = top + h - int(dice.mean() * h)
        d.rectangle([x, y, x + bw - 4, top + h], fill=COLOURS.get(variant, (150, 100, 160)))
        sd = int(dice.std() * h)
        d.line([(x + bw // 2 - 2, y - sd), (x + bw // 2 - 2, y + sd)], fill="black")
    for gi, name in enumerate(names):
        d.text((60 + gi * (len(variants) * bw + gap), top + h + 5), name, fill="black")
    for vi, variant in enumerate(variants):
        d.rectangle([60 + vi * 140, h + 60, 72 + vi * 140, h + 72], fill=COLOURS.get(variant, (150, 100, 160)))
        d.text((76 + vi * 140, h + 60), variant, fill="black")
    d.text((60, 8), "Dice on the held-out domain", fill="black")
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)


def write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="train_segmenter.py --out folders (each with results.csv)")
    ap.add_argument("--out", help="write the table here (atomically) as well as to stdout")
    ap.add_argument("--plot", help="write a bar plot of Dice here (PNG)")
    args = ap.parse_args(argv)
    groups = entries([r for f in args.folders for r in read_rows(f)])
    text = markdown(groups)
    if args.out:
        write_text(args.out, text)
    if args.plot:
        plot(groups, args.plot)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
