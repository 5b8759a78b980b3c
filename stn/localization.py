"""How well the transforms locate the digits: zoom, shift, and crops centred on their digit.

A transform theta = [[a, b, tx], [c, d, ty]] maps the crop's grid, in [-1, 1],
to the canvas, in [-1, 1] (the TransformerLayer's convention).  Its crop spans
|(a, c)| of the canvas across and |(b, d)| down (1 is the whole canvas, the
identity's), and its centre sits at (tx, ty), in pixels
((tx + 1) / 2 * (W - 1), (ty + 1) / 2 * (H - 1)) as the layer maps them.
"""
import numpy as np

STATS = ("zoom_x", "zoom_y", "shift", "centred")


def summary(A, boxes=None, height=None, width=None):
    """Mean zoom across and down, mean shift, and the share of crops centred on
    their digit, one value per transform step.

    Parameters
    ----------
    A : array (N, 6) or (N, k, 6)
        Transforms, row-major 2x3; k steps (recurrent STN) or branches.
    boxes : array (N, n, 4) or None
        Each digit's box [x0, y0, x1, y1) in pixels (a dataset's ``boxes_*``).
        With n == k, step j is compared with digit j; with n == 1, every step
        with the one digit.
    height, width : int
        The canvas size in pixels; needed with ``boxes``.

    Returns
    -------
    dict of float64 arrays (k,): ``zoom_x``, ``zoom_y`` (fraction of the canvas
    the crop spans across and down), ``shift`` (distance of the crop's centre
    from the canvas's, in half-canvas units), and ``centred`` (share of crops
    whose centre falls inside their digit's box; NaN without boxes).
    """
    A = np.asarray(A, np.float64)
    A = A.reshape(len(A), -1, 6)
    stats = {"zoom_x": np.hypot(A[..., 0], A[..., 3]).mean(0),
             "zoom_y": np.hypot(A[..., 1], A[..., 4]).mean(0),
             "shift": np.hypot(A[..., 2], A[..., 5]).mean(0),
             "centred": np.full(A.shape[1], np.nan)}
    if boxes is not None:
        if height is None or width is None:
            raise ValueError("summary: boxes need the canvas's height and width")
        boxes = np.asarray(boxes)
        if boxes.shape[1] not in (1, A.shape[1]):
            raise ValueError("summary: %d boxes a canvas for %d transforms"
                             % (boxes.shape[1], A.shape[1]))
        x = (A[..., 2] + 1) / 2 * (width - 1)
        y = (A[..., 5] + 1) / 2 * (height - 1)
        inside = ((boxes[..., 0] <= x) & (x < boxes[..., 2])
                  & (boxes[..., 1] <= y) & (y < boxes[..., 3]))
        stats["centred"] = inside.mean(0)
    return stats


def describe(stats):
    """One line for the epoch's output, e.g. ``Transform: zoom 0.97 across,
    1.00 down, shift 0.01, centred 11%`` (values per step, separated by /)."""
    def values(key, fmt):
        return "/".join(fmt % v for v in stats[key])
    line = "Transform: zoom %s across, %s down, shift %s" % (
        values("zoom_x", "%.2f"), values("zoom_y", "%.2f"), values("shift", "%.2f"))
    if not np.isnan(stats["centred"]).all():
        line += ", centred %s" % "/".join("%.0f%%" % (100 * v) for v in stats["centred"])
    return line
