"""stn.localization: the transform statistics on hand-made transforms and boxes."""
import numpy as np
import pytest

from stn import localization


def test_identity_and_a_zoomed_shifted_crop():
    # A 101x101 canvas: [-1, 1] maps to pixels [0, 100], so theta's shift t
    # puts the crop's centre at pixel 50 + 50 t.
    identity = [1, 0, 0, 0, 1, 0]
    zoomed = [0.5, 0, 0.2, 0, 0.25, -0.4]      # centre at pixel (60, 30)
    boxes = np.array([[[40, 40, 60, 60]], [[50, 20, 70, 40]]])
    stats = localization.summary(np.array([identity, zoomed]), boxes, 101, 101)
    np.testing.assert_allclose(stats["zoom_x"], [(1 + 0.5) / 2])
    np.testing.assert_allclose(stats["zoom_y"], [(1 + 0.25) / 2])
    np.testing.assert_allclose(stats["shift"], [np.hypot(0.2, 0.4) / 2])
    np.testing.assert_allclose(stats["centred"], [1.0])
    # Box ends are exclusive: a centre on x1 is outside.
    stats = localization.summary(np.array([zoomed]), np.array([[[40, 20, 60, 40]]]),
                                 101, 101)
    np.testing.assert_allclose(stats["centred"], [0.0])


def test_rotation_keeps_the_zoom():
    angle, scale = 0.6, 0.4
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    stats = localization.summary(np.array([[c, -s, 0, s, c, 0]]))
    np.testing.assert_allclose([stats["zoom_x"][0], stats["zoom_y"][0]], [scale, scale])
    assert np.isnan(stats["centred"]).all()


def test_steps_are_compared_with_their_own_digit():
    # Two canvases of 3 steps; step j should sit on digit j.
    A = np.zeros((2, 3, 6))
    A[..., 0] = A[..., 4] = 0.3
    A[:, :, 2] = [-0.5, 0, 0.5]                    # centres at x = 25, 50, 75 (101 px)
    boxes = np.array([[[20, 40, 30, 60], [45, 40, 55, 60], [70, 40, 80, 60]],
                      [[20, 40, 30, 60], [70, 40, 80, 60], [45, 40, 55, 60]]])
    stats = localization.summary(A, boxes, 101, 101)
    np.testing.assert_allclose(stats["centred"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(stats["zoom_x"], [0.3, 0.3, 0.3])
    line = localization.describe(stats)
    assert line == ("Transform: zoom 0.30/0.30/0.30 across, 0.30/0.30/0.30 down, "
                    "shift 0.50/0.00/0.50, centred 100%/50%/50%")
    with pytest.raises(ValueError, match=r"summary: boxes of shape \(2, 2, 4\) for "
                                         r"transforms of shape \(2, 3, 6\); give \(2, 1 or 3, 4\)"):
        localization.summary(A, boxes[:, :2], 101, 101)


def test_centre_distances_and_accuracy_by_distance():
    # 101x101 canvas: theta's shift t puts the centre at pixel 50 + 50 t.  Box
    # [40, 40, 61, 61) covers pixels 40..60: its centre is (50, 50).
    box = [40, 40, 61, 61]
    A = np.array([[0.5, 0, 0, 0, 0.5, 0],          # on the centre: 0 px
                  [0.5, 0, 0.06, 0, 0.5, 0.08],    # (53, 54): 5 px
                  [0.5, 0, -0.5, 0, 0.5, 0],       # (25, 50): 25 px
                  [0.5, 0, 0, 0, 0.5, -0.04]])     # (50, 48): 2 px, the bin's low edge
    distances = localization.centre_distances(A, np.array([[box]] * 4), 101, 101)
    np.testing.assert_allclose(distances, [[0], [5], [25], [2]], atol=1e-12)
    correct = np.array([[True], [False], [False], [True]])
    rows = localization.accuracy_by_distance(distances, correct, edges=(0, 2, 6))
    assert rows == [(0, 2, 1, 0), (2, 6, 2, 1), (6, np.inf, 1, 1)]
    # Steps against their own digit, as summary compares them.
    steps = localization.centre_distances(A.reshape(2, 2, 6),
                                          np.array([[box, [0, 0, 11, 11]]] * 2), 101, 101)
    np.testing.assert_allclose(steps[:, 0], [0, 25], atol=1e-12)
    np.testing.assert_allclose(steps[:, 1], [np.hypot(48, 49), np.hypot(45, 43)])
    # One box a canvas without its digit axis would broadcast to (4, 4): refused.
    with pytest.raises(ValueError, match="centre_distances: boxes of shape \\(4, 4\\)"):
        localization.centre_distances(A, np.array([box] * 4), 101, 101)
