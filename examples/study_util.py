"""Pieces the example scripts share (numpy only, so that importing it is cheap):
reading the CSV files langdaug and the examples write, finding an image's mask
or field-of-view file, and the image statistics the study tools measure.

Errors are SystemExit with a message naming the file, as the scripts report them.
"""

import csv
import os

import numpy as np

PULL_HINT = " (write it with `langdaug pull --format png`)"
LUMA = np.array([0.299, 0.587, 0.114])


def read_csv(path, need, hint=""):
    """The rows of a CSV file with a header (a list of dicts, maybe empty); the
    columns in `need` must be there when there is a row. hint follows an I/O error."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise SystemExit("%s: %s%s" % (path, e.strerror, hint))
    if rows and not set(need) <= set(rows[0]):
        raise SystemExit("%s: missing column(s) %s" % (path, ", ".join(sorted(set(need) - set(rows[0])))))
    return rows


def find_pair(folder, stem):
    """folder/stem with the first image extension that exists, or None."""
    for ext in (".png", ".PNG", ".tif", ".gif", ".jpg"):
        p = os.path.join(folder, stem + ext)
        if os.path.exists(p):
            return p
    return None


def luminance(img):
    """HxWxC (C = 1 or 3) -> HxW weighted sum of the channels, in the image's units."""
    w = LUMA[:img.shape[2]]
    return img @ w / w.sum()


def abs_laplacian(y):
    """|4-neighbour Laplacian| of a 2-D array, on the interior pixels (H-2 x W-2)."""
    return np.abs(4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:])
