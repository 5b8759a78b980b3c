"""How well the transforms locate the digits: zoom, shift, and crops centred on their digit.

A transform theta = [[a, b, tx], [c, d, ty]] maps the crop's grid, in [-1, 1],
to the canvas, in [-1, 1] (the TransformerLayer's convention).  Its crop spans
|(a, c)| of the canvas across and |(b, d)| down (1 is the whole canvas, the
identity's), and its centre sits at (tx, ty), in pixels
((tx + 1) / 2 * (W - 1), (ty + 1) / 2 * (H - 1)) as the layer maps them.
"""
import numpy as np

STATS = ("zoom_x", "zoom_y", "shift", "centred")
# The bins, in pixels, of a crop's distance from its digit (accuracy_by_distance).
DISTANCE_EDGES = (0, 2, 4, 6, 8, 12, 20)


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
    A = as_steps(A)
    stats = {"zoom_x": np.hypot(A[..., 0], A[..., 3]).mean(0),
             "zoom_y": np.hypot(A[..., 1], A[..., 4]).mean(0),
             "shift": np.hypot(A[..., 2], A[..., 5]).mean(0),
             "centred": np.full(A.shape[1], np.nan)}
    if boxes is not None:
        if height is None or width is None:
            raise ValueError("summary: boxes need the canvas's height and width")
        boxes = paired_boxes(A, boxes, "summary")
        x, y = crop_centres(A, height, width)
        inside = ((boxes[..., 0] <= x) & (x < boxes[..., 2])
                  & (boxes[..., 1] <= y) & (y < boxes[..., 3]))
        stats["centred"] = inside.mean(0)
    return stats


def as_steps(A):
    """Transforms (N, 6) or (N, k, 6) as float64 (N, k, 6)."""
    A = np.asarray(A, np.float64)
    return A.reshape(len(A), -1, 6)


def paired_boxes(A, boxes, caller):
    """``boxes`` as an array (N, n, 4) to compare with transforms ``A`` (N, k,
    6): n == k pairs step j with digit j, n == 1 every step with the one
    digit.  Raises ValueError, naming ``caller``, for other shapes."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 3 or boxes.shape[0] != A.shape[0] or boxes.shape[1] not in (1, A.shape[1]):
        raise ValueError("%s: boxes of shape %s for transforms of shape %s; give (%d, 1 or "
                         "%d, 4)" % (caller, boxes.shape, A.shape, A.shape[0], A.shape[1]))
    return boxes


def crop_centres(A, height, width):
    """The centres (x, y) in pixels, each (N, k), of transforms ``A`` (N, k,
    6) on a height x width canvas."""
    return (A[..., 2] + 1) / 2 * (width - 1), (A[..., 5] + 1) / 2 * (height - 1)


def centre_distances(A, boxes, height, width):
    """The distance in pixels from each crop's centre to its digit's box's.

    ``A`` (N, 6) or (N, k, 6) and ``boxes`` (N, k, 4) or (N, 1, 4) as in
    ``summary``; a box [x0, y0, x1, y1) covers pixels x0 .. x1 - 1, so its
    centre is the middle of their centres, ((x0 + x1 - 1) / 2, (y0 + y1 - 1) /
    2) (``summary`` counts a crop centred when its centre lies in [x0, x1) x
    [y0, y1)).  Returns float64 (N, k), NaN for a non-finite transform.
    Raises ValueError for boxes of another shape.
    """
    A = as_steps(A)
    boxes = paired_boxes(A, boxes, "centre_distances").astype(np.float64)
    x, y = crop_centres(A, height, width)
    return np.hypot(x - (boxes[..., 0] + boxes[..., 2] - 1) / 2,
                    y - (boxes[..., 1] + boxes[..., 3] - 1) / 2)


def accuracy_by_distance(distances, correct, edges=DISTANCE_EDGES):
    """Count the crops and their errors by the distance of their centre from
    their digit's (``centre_distances``), in the bins [edges[i], edges[i + 1])
    pixels and a last one from edges[-1] on.  ``correct`` is a boolean array
    of the same shape as ``distances``.  Returns a list of (low, high, crops,
    errors), high being inf for the last bin; NaN distances fall in no bin."""
    distances, correct = np.ravel(distances), np.ravel(correct)
    bounds = list(edges) + [np.inf]
    rows = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        inside = (low <= distances) & (distances < high)
        rows.append((low, high, int(inside.sum()), int((inside & ~correct).sum())))
    return rows


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
