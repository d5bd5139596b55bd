#!/usr/bin/python3
"""One table from several train_segmenter.py result folders (one per held-out domain).

Rows: every (held-out domain, variant) with the mean and spread of Dice and IoU over
seeds, then one "mean" row per variant: for each seed, the average over the held-out
domains, then the mean and spread of those averages over seeds (only seeds present for
every held-out domain count), the figure leave-one-domain-out papers report.

    /usr/bin/python3 examples/results_table.py retina-experiment/*/segmenter --out retina-experiment/results.md
"""

import argparse
import csv
import os
import sys

import numpy as np

VARIANTS = ("none", "classic", "langdaug", "langdaug+classic")


def read_rows(folder):
    path = os.path.join(folder, "results.csv")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise SystemExit("%s: %s" % (path, e.strerror))
    need = {"holdout", "variant", "seed", "dice", "iou"}
    if not rows or not need <= set(rows[0]):
        raise SystemExit("%s: not a train_segmenter.py results file (needs columns %s)" % (
            path, ", ".join(sorted(need))))
    return rows


def order(variant):
    return VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)


def table(rows):
    by = {}
    for r in rows:
        by.setdefault((r["holdout"], r["variant"]), {})[r["seed"]] = (float(r["dice"]), float(r["iou"]))
    lines = ["| held-out | variant | seeds | Dice (mean ± sd) | IoU (mean ± sd) |", "|---|---|---|---|---|"]

    def line(name, variant, values):
        d, j = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        lines.append("| %s | %s | %d | %.4f ± %.4f | %.4f ± %.4f |" % (name, variant, len(values), d.mean(),
                                                                     d.std(), j.mean(), j.std()))

    holdouts = sorted({h for h, _ in by})
    variants = sorted({v for _, v in by}, key=lambda v: (order(v), v))
    for h in holdouts:
        for v in variants:
            if (h, v) in by:
                line(h, v, list(by[(h, v)].values()))
    if len(holdouts) > 1:
        for v in variants:
            if not all((h, v) in by for h in holdouts):
                continue
            seeds = set.intersection(*(set(by[(h, v)]) for h in holdouts))
            per_seed = [tuple(np.mean([by[(h, v)][s][k] for h in holdouts]) for k in (0, 1)) for s in sorted(seeds)]
            if per_seed:
                line("mean of %d" % len(holdouts), v, per_seed)
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="train_segmenter.py --out folders (each with results.csv)")
    ap.add_argument("--out", help="write the table here (atomically) as well as to stdout")
    args = ap.parse_args(argv)
    text = table([r for f in args.folders for r in read_rows(f)])
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.out)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
