#!/usr/bin/python3
"""One table from several train_segmenter.py result folders (one per held-out domain).

Rows: every (held-out domain, variant) with the mean and spread of Dice and IoU over
seeds, then one "mean" row per variant: for each seed, the average over the held-out
domains, then the mean and spread of those averages over seeds (only seeds present for
every held-out domain count), the figure leave-one-domain-out papers report; then the
paired differences between variants (COMPARISONS: the same seed gives both variants the
same real batches and initial weights), per held-out domain and over the per-seed mean of
the domains, with 95% t intervals: a difference whose interval holds 0 is no difference.
train_segmenter.py writes its own results.md and results.png through this module.

    /usr/bin/python3 examples/results_table.py retina-experiment/*/segmenter \\
        --out retina-experiment/results.md --plot retina-experiment/results.png

A folder given as LABEL=FOLDER is another sampler's runs of the same protocol (same seeds, so
paired with the plain folders' runs): its variants are named VARIANT[LABEL], and each tagged
LangDAug variant is compared with none, classic and the untagged variant of the same name; with
several labels, also with the same variant under each label given after its own (e.g.
latent=... ae-only=...: langdaug[latent] - langdaug[ae-only], the sampler against a control).
"""

import argparse
import os
import sys

import numpy as np

from study_util import read_csv

VARIANTS = ("none", "classic", "bridge", "langdaug", "langdaug+classic")
# The paired differences the study reports: (variant, minus variant).
COMPARISONS = (("langdaug", "none"), ("langdaug", "classic"), ("langdaug", "bridge"),
               ("langdaug+classic", "classic"), ("classic", "none"), ("bridge", "none"))
# Student's t, 0.975 quantile, for 1..30 degrees of freedom (beyond: the normal 1.96 is within 2%).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def read_rows(folder):
    """The rows of a results folder; LABEL=FOLDER tags its variants VARIANT[LABEL]."""
    label, _, path = folder.rpartition("=") if "=" in folder else ("", "", folder)
    path = os.path.join(path, "results.csv")
    rows = read_csv(path, ("holdout", "variant", "seed", "dice", "iou"))
    if not rows:
        raise SystemExit("%s: no results" % path)
    for r in rows if label else ():
        r["variant"] = "%s[%s]" % (r["variant"], label)
    return rows


def untagged(variant):
    return variant.split("[", 1)[0]


def order(variant):
    base = untagged(variant)
    return (VARIANTS.index(base) if base in VARIANTS else len(VARIANTS), variant != base)


def label_of(variant):
    return variant[len(untagged(variant)) + 1:-1]


def comparisons_of(rows):
    """COMPARISONS, then for each tagged LangDAug variant: minus none, classic and its untagged self,
    then minus the same variant under every label that came after its own in rows."""
    tagged = sorted({r["variant"] for r in rows if r["variant"] != untagged(r["variant"])}, key=order)
    extra = [(v, b) for v in tagged if untagged(v).startswith("langdaug")
             for b in ("none", "classic", untagged(v)) if b != "none" or untagged(v) == "langdaug"]
    labels = list(dict.fromkeys(label_of(r["variant"]) for r in rows if r["variant"] in tagged))
    extra += [(v, "%s[%s]" % (untagged(v), later)) for v in tagged if untagged(v).startswith("langdaug")
              for later in labels[labels.index(label_of(v)) + 1:] if "%s[%s]" % (untagged(v), later) in tagged]
    return COMPARISONS + tuple(extra)


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


def paired_interval(diffs):
    """(mean, half-width of the 95% t interval) of paired differences; half-width NaN for one pair."""
    d = np.asarray(diffs, float)
    if len(d) < 2:
        return float(d.mean()), float("nan")
    t = T975[len(d) - 2] if len(d) - 1 <= len(T975) else 1.96
    return float(d.mean()), float(t * d.std(ddof=1) / np.sqrt(len(d)))


def paired(rows, comparisons=COMPARISONS):
    """[(held-out name, "A - B", n pairs, (Dice mean, half-width), (IoU mean, half-width))] per held-out domain
    and, with several, over the per-seed mean of the domains (seeds present for both variants everywhere)."""
    by = {}
    for r in rows:
        by.setdefault((r["holdout"], r["variant"]), {})[str(r["seed"])] = (float(r["dice"]), float(r["iou"]))
    holdouts = sorted({h for h, _ in by})
    out = []
    for a, b in comparisons:
        have = [h for h in holdouts if (h, a) in by and (h, b) in by]
        seeds_of = {h: sorted(set(by[(h, a)]) & set(by[(h, b)])) for h in have}
        for h in have:
            if seeds_of[h]:
                out.append((h, "%s - %s" % (a, b), len(seeds_of[h]), *(paired_interval(
                    [by[(h, a)][s][k] - by[(h, b)][s][k] for s in seeds_of[h]]) for k in (0, 1))))
        if len(holdouts) > 1 and len(have) == len(holdouts):
            common = sorted(set.intersection(*(set(seeds_of[h]) for h in have)))
            if common:
                out.append(("mean of %d" % len(have), "%s - %s" % (a, b), len(common), *(paired_interval(
                    [np.mean([by[(h, a)][s][k] - by[(h, b)][s][k] for h in have]) for s in common])
                    for k in (0, 1))))
    return out


def paired_markdown(rows):
    """The paired differences as a table, in points (x100), with their 95% intervals."""
    lines = ["Paired differences (same seed = same real batches and initial weights), in points, "
             "mean [95% interval]:", "",
             "| held-out | difference | pairs | Dice | IoU |", "|---|---|---|---|---|"]

    def fmt(m, hw):
        return "%+.2f" % (100 * m) if hw != hw else "%+.2f [%+.2f, %+.2f]" % (100 * m, 100 * (m - hw),
                                                                            100 * (m + hw))
    entries_ = paired(rows, comparisons_of(rows))
    entries_.sort(key=lambda e: (e[0].startswith("mean"), e[0]))
    for h, name, n, dice, iou in entries_:
        lines.append("| %s | %s | %d | %s | %s |" % (h, name, n, fmt(*dice), fmt(*iou)))
    return "\n".join(lines) + "\n" if entries_ else ""


PLATEAU_TOLERANCE = 0.01  # one Dice point: what doubling the training must still gain


def curve_groups(curve):
    """{(variant, iteration): [source-validation Dice of each row]}."""
    by = {}
    for c in curve:
        by.setdefault((c["variant"], int(c["iteration"])), []).append(float(c["val_dice"]))
    return by


def plateaus(curve):
    """{variant: (first iteration whose mean source-validation Dice over the curve's rows is within
    PLATEAU_TOLERANCE of the best mean, that best mean)}; curve rows: variant, iteration, val_dice
    (several seeds, or several runs of different lengths, may share an iteration: they are averaged)."""
    by = curve_groups(curve)
    out = {}
    for v in sorted({v for v, _ in by}):
        means = {it: float(np.mean(ds)) for (w, it), ds in by.items() if w == v}
        best = max(means.values())
        out[v] = (min(it for it, m in means.items() if m >= best - PLATEAU_TOLERANCE), best)
    return out


def curve_markdown(curve):
    """Source-validation Dice per variant and iteration (mean ± sd over the rows), and the plateaus."""
    by = curve_groups(curve)
    lines = ["| variant | iteration | runs | source-validation Dice |", "|---|---|---|---|"]
    for (v, it), ds in sorted(by.items(), key=lambda e: (order(e[0][0]), e[0])):
        lines.append("| %s | %d | %d | %.4f ± %.4f |" % (v, it, len(ds), np.mean(ds), np.std(ds)))
    lines.append("")
    for v, (it, best) in plateaus(curve).items():
        lines.append("plateau (%s): iteration %d, the first within %.3f of the best mean (%.4f)%s" % (
            v, it, PLATEAU_TOLERANCE, best, "" if it < max(i for w, i in by if w == v) else
            "; it is the longest run: the curve may still be rising, try longer runs"))
    return "\n".join(lines) + "\n"


def markdown(groups):
    lines = ["| held-out | variant | seeds | Dice (mean ± sd) | IoU (mean ± sd) |", "|---|---|---|---|---|"]
    for name, variant, values in groups:
        d, j = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        lines.append("| %s | %s | %d | %.4f ± %.4f | %.4f ± %.4f |" % (name, variant, len(values), d.mean(),
                                                                     d.std(), j.mean(), j.std()))
    return "\n".join(lines) + "\n"


COLOURS = {"none": (120, 120, 120), "classic": (70, 130, 180), "bridge": (150, 100, 160), "langdaug": (220, 120, 40),
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
    ap.add_argument("--curves", action="store_true",
                    help="read the folders' curve.csv instead: one learning-curve table and its plateau")
    ap.add_argument("--plateau", metavar="VARIANT",
                    help="with --curves: print only the plateau iteration of VARIANT (for scripts)")
    ap.add_argument("--out", help="write the table here (atomically) as well as to stdout")
    ap.add_argument("--plot", help="write a bar plot of Dice here (PNG)")
    args = ap.parse_args(argv)
    if args.curves:
        curve = [r for f in args.folders for r in read_csv(os.path.join(f, "curve.csv"), (
            "variant", "seed", "iteration", "val_dice"))]
        if args.plateau:
            found = plateaus(curve).get(args.plateau)
            if found is None:
                raise SystemExit("no learning curve of %s in %s" % (args.plateau, ", ".join(args.folders)))
            print(found[0])
            return 0
        text = curve_markdown(curve)
        if args.out:
            write_text(args.out, text)
        sys.stdout.write(text)
        return 0
    rows = [r for f in args.folders for r in read_rows(f)]
    groups = entries(rows)
    text = markdown(groups) + "\n" + paired_markdown(rows)
    if args.out:
        write_text(args.out, text)
    if args.plot:
        plot(groups, args.plot)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
