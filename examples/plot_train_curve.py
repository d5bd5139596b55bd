#!/usr/bin/python3
"""Draws the training curve written by `langdaug train --curve CSV` as a PNG.

    examples/plot_train_curve.py curve.csv curve.png [--smooth N]

Two panels over iterations: the mean energies of the positives (E+, real
crops of the target domain) and of the negatives (E-, Langevin samples), and
the loss; each a moving average over N iterations (default 50), the raw
values faint behind. Needs only Pillow (python3-pil), no plotting library.
"""
import argparse
import csv

from PIL import Image, ImageDraw

W, H, PAD, GAP = 900, 560, 60, 40
COLOURS = {"e_pos": (31, 119, 180), "e_neg": (214, 39, 40), "loss": (44, 160, 44)}
LABELS = {"e_pos": "E+ (real target crops)", "e_neg": "E- (Langevin negatives)", "loss": "loss"}


def moving_average(values, n):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= n:
            acc -= values[i - n]
        out.append(acc / min(i + 1, n))
    return out


def panel(draw, box, iters, series, smooth):
    x0, y0, x1, y1 = box
    smoothed = {k: moving_average(v, smooth) for k, v in series.items()}
    # the y range follows the smoothed curves after the first window: the
    # first iterations and single noisy ones would flatten everything else
    skip = smooth if len(iters) > 4 * smooth else 0
    lo = min(min(v[skip:]) for v in smoothed.values())
    hi = max(max(v[skip:]) for v in smoothed.values())
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    n = iters[-1]

    def xy(i, v):
        v = min(max(v, lo), hi)
        return x0 + (x1 - x0) * (i - 1) / max(n - 1, 1), y1 - (y1 - y0) * (v - lo) / (hi - lo)

    draw.rectangle(box, outline=(0, 0, 0))
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        _, y = xy(1, v)
        draw.line([(x0 - 4, y), (x0, y)], fill=(0, 0, 0))
        draw.text((4, y - 6), "%.2f" % v, fill=(0, 0, 0))
    if lo < 0 < hi:
        draw.line([xy(1, 0), xy(n, 0)], fill=(200, 200, 200))
    for key, values in series.items():  # raw values first, so no curve hides under them
        faint = tuple(255 - (255 - c) // 5 for c in COLOURS[key])
        draw.line([xy(i, v) for i, v in zip(iters, values)], fill=faint)
    for key in series:
        draw.line([xy(i, v) for i, v in zip(iters, smoothed[key])], fill=COLOURS[key], width=2)
    for row, key in enumerate(series):
        draw.rectangle((x0 + 6, y0 + 6 + 14 * row, x0 + 180, y0 + 20 + 14 * row), fill="white")
        draw.text((x0 + 10, y0 + 8 + 14 * row), LABELS[key], fill=COLOURS[key])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--smooth", type=int, default=50)
    args = ap.parse_args()
    with open(args.csv) as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        raise SystemExit("%s: needs at least 2 iterations" % args.csv)
    iters = [int(r["iteration"]) for r in rows]
    col = {k: [float(r[k]) for r in rows] for k in ("e_pos", "e_neg", "loss")}
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    mid = (H - GAP) // 2
    panel(draw, (PAD, 20, W - 20, mid), iters, {"e_pos": col["e_pos"], "e_neg": col["e_neg"]}, args.smooth)
    panel(draw, (PAD, mid + GAP, W - 20, H - 30), iters, {"loss": col["loss"]}, args.smooth)
    draw.text((W // 2 - 60, H - 20), "iteration (1..%d), moving average over %d" % (iters[-1], args.smooth),
              fill=(0, 0, 0))
    img.save(args.png)


if __name__ == "__main__":
    main()
