"""The chapter's clutter (stn/clutter.py): patches cut from digits, laid on canvases."""
import numpy as np

from stn import clutter


def test_cut_patches_are_the_digits_pixels_at_the_drawn_offsets():
    rng = np.random.RandomState(0)
    digits = rng.rand(5, 28, 28).astype(np.float32)
    patches = clutter.cut_patches(np.random.RandomState(3), digits, 7, 9)
    draws = np.random.RandomState(3)
    which, top, left = (draws.randint(0, 5, 7), draws.randint(0, 20, 7),
                        draws.randint(0, 20, 7))
    assert patches.shape == (7, 9, 9)
    for patch, w, t, l in zip(patches, which, top, left):
        assert np.array_equal(patch, digits[w, t:t + 9, l:l + 9])


def test_lay_patches_overwrites_in_order_on_its_own_layer_then_adds_and_clips():
    canvas = np.full((2, 12, 12), 0.1, np.float32)
    patches = np.stack([np.full((2, 3, 3), 0.2, np.float32),
                        np.full((2, 3, 3), 0.3, np.float32)], axis=1)
    patches[1, 1] = 1.0
    corners = np.array([[[0, 0], [1, 1]], [[5, 2], [9, 9]]])
    expected = canvas.copy()
    for i in range(2):
        layer = np.zeros((12, 12), np.float32)
        for j in range(2):
            y, x = corners[i, j]
            layer[y:y + 3, x:x + 3] = patches[i, j]
        expected[i] = np.clip(expected[i] + layer, 0, 1)
    out = clutter.lay_patches(canvas, patches, corners)
    assert out is canvas and np.array_equal(canvas, expected)
    # Where they overlap the later patch replaces the earlier (0.1 + 0.3, not
    # 0.1 + 0.2 + 0.3); the earlier alone adds 0.2; the sum is clipped at 1.
    assert np.isclose(canvas[0, 1, 1], 0.4) and np.isclose(canvas[0, 0, 0], 0.3)
    assert canvas[1, 9, 9] == 1.0 and np.isclose(canvas[1, 0, 0], 0.1)


def test_patch_database_is_cut_from_mnists_training_and_validation_digits(mnist):
    patch_db = clutter.patch_database(np.random.RandomState(2), mnist, 6)
    assert patch_db.shape == (clutter.PATCH_DATABASE, 6, 6) and patch_db.dtype == np.float32
    X_train, _, X_valid, _, _, _ = mnist
    draws = np.random.RandomState(2)
    which = draws.randint(0, len(X_train) + len(X_valid), clutter.PATCH_DATABASE)
    top = draws.randint(0, 23, clutter.PATCH_DATABASE)
    left = draws.randint(0, 23, clutter.PATCH_DATABASE)
    for i in (0, 1, clutter.PATCH_DATABASE - 1) + tuple(np.flatnonzero(which >= len(X_train))[:3]):
        w = which[i]
        digit = X_train[w, 0] if w < len(X_train) else X_valid[w - len(X_train), 0]
        assert np.array_equal(patch_db[i], digit[top[i]:top[i] + 6, left[i]:left[i] + 6])


def test_add_clutter_lays_count_patches_drawn_from_the_database():
    patch_db = np.random.RandomState(1).rand(50, 4, 4).astype(np.float32)
    canvas = np.zeros((3, 20, 20), np.float32)
    clutter.add_clutter(canvas, patch_db, 2, np.random.RandomState(5))
    draws = np.random.RandomState(5)
    which = draws.randint(0, 50, (3, 2))
    corners = draws.randint(0, 17, (3, 2, 2))
    expected = clutter.lay_patches(np.zeros((3, 20, 20), np.float32), patch_db[which],
                                   corners)
    assert np.array_equal(canvas, expected)
    assert 0 < np.count_nonzero(canvas[0]) <= 2 * 16
    # None: the canvases as they were.
    before = canvas.copy()
    assert np.array_equal(clutter.add_clutter(canvas, patch_db, 0, draws), before)
