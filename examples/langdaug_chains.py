#!/usr/bin/python3
"""How far do the Langevin chains go, and does the label survive the walk?

Reads a folder written by `langdaug pull --format png` with step 0 among the
snapshot steps (step 0 is the source crop itself), so every chain's snapshots
can be compared with its start:

    langdaug pull --from tcp://127.0.0.1:5555 -n 4000 --steps 0,10,20,40 --out pulled
    /usr/bin/python3 examples/langdaug_chains.py pulled

and prints, per snapshot step (and with --per-pair, per source>target pair):

    change     mean |x_s - x_0| over the crop, in units of the 0..255 range
    progress   how far the crop's colour statistics (per-channel mean and spread)
               moved from its source domain toward the target's: the chain's
               displacement projected on (target centroid - source centroid),
               divided by that distance; 0 = still the source, 1 = the target's
               average look. Centroids come from the step-0 crops of each domain.
    contrast   foreground/background contrast (|mean fg - mean bg| / spread of the
               crop, on the luminance), relative to the same chain at step 0: 1 =
               the structures the mask labels are as visible as in the source
               crop, near 0 = washed out, and the mask no longer fits the image.
    detail     mean |Laplacian| of the luminance (fine texture: sharpness and
               noise), relative to the same chain at step 0: above 1 = the chain
               added texture no real domain may have.
    energy     mean energy the sampler reported

Chains are told apart by (seed, chain_id); a snapshot whose chain has no step-0
snapshot in the folder is ignored.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

from study_util import PULL_HINT, abs_laplacian, luminance, read_csv


def load(folder):
    path = os.path.join(folder, "samples.csv")
    rows = read_csv(path, ("image", "mask", "step", "source_domain", "target_domain", "energy", "chain_id", "seed"),
                    PULL_HINT)
    if not rows:
        raise SystemExit("%s: no samples" % path)
    chains = {}
    for r in rows:
        img = np.asarray(Image.open(os.path.join(folder, r["image"])), dtype=np.float64) / 255.0
        img = img[..., None] if img.ndim == 2 else img
        mask = np.asarray(Image.open(os.path.join(folder, r["mask"])))
        key = (r["seed"], r["chain_id"])
        chains.setdefault(key, {})[int(r["step"])] = dict(
            img=img, fg=mask > 0, energy=float(r["energy"]), source=r["source_domain"], target=r["target_domain"])
    return chains


def colour_stats(img):
    return np.concatenate([img.mean((0, 1)), img.std((0, 1))])


def contrast(img, fg):
    """|mean(fg) - mean(bg)| / spread of the luminance, or None when one side has under 4 pixels."""
    if fg.sum() < 4 or (~fg).sum() < 4:
        return None
    y = luminance(img)
    spread = y.std()
    return abs(y[fg].mean() - y[~fg].mean()) / spread if spread > 1e-6 else 0.0


def detail(img):
    return abs_laplacian(luminance(img)).mean()


COLUMNS = ("change", "progress", "contrast", "detail", "energy")


def measure(chains):
    """Per (source, target, step): the lists of each column's per-chain values."""
    starts = {}
    for snaps in chains.values():
        if 0 in snaps:
            x0 = snaps[0]
            x0["stats"] = colour_stats(x0["img"])
            starts.setdefault(x0["source"], []).append(x0["stats"])
    centroid = {d: np.mean(v, 0) for d, v in starts.items()}
    out = {}
    for snaps in chains.values():
        if 0 not in snaps:
            continue
        x0 = snaps[0]
        c0 = contrast(x0["img"], x0["fg"])
        d0 = detail(x0["img"])
        for step, s in snaps.items():
            if step == 0:
                continue
            m = out.setdefault((s["source"], s["target"], step), {c: [] for c in COLUMNS})
            m["change"].append(np.abs(s["img"] - x0["img"]).mean())
            m["energy"].append(s["energy"])
            if s["target"] in centroid and s["source"] in centroid:
                axis = centroid[s["target"]] - centroid[s["source"]]
                if axis @ axis > 1e-12:
                    m["progress"].append((colour_stats(s["img"]) - x0["stats"]) @ axis / (axis @ axis))
            c = contrast(s["img"], s["fg"])
            if c0 and c is not None:
                m["contrast"].append(c / c0)
            if d0 > 1e-9:
                m["detail"].append(detail(s["img"]) / d0)
    return out


def table(out, key_of):
    groups = {}
    for (src, tgt, step), m in out.items():
        g = groups.setdefault(key_of(src, tgt, step), {c: [] for c in COLUMNS})
        for k in g:
            g[k] += m[k]

    def fmt(v):
        return "%.3f" % np.mean(v) if v else "-"

    lines = ["| pair | step | chains | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 3) + "|"]
    for (pair, step), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append("| %s | %d | %d | %s |" % (pair, step, len(g["change"]), " | ".join(fmt(g[c]) for c in COLUMNS)))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="a `langdaug pull --format png` folder with step 0 among its steps")
    ap.add_argument("--per-pair", action="store_true", help="one row per source>target pair and step")
    args = ap.parse_args(argv)
    chains = load(args.folder)
    if not any(0 in s for s in chains.values()):
        raise SystemExit("%s: no step-0 snapshots; pull with --steps 0,..." % args.folder)
    out = measure(chains)
    if not out:
        raise SystemExit("%s: only step-0 snapshots; pull with more steps, e.g. --steps 0,10,20" % args.folder)
    if args.per_pair:
        print(table(out, lambda s, t, st: ("%s>%s" % (s, t), st)))
    else:
        print(table(out, lambda s, t, st: ("all", st)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
