"""5-sliding-window-mnist.py: the dense-to-convolution rewrite is exact; a real run."""
import numpy as np
import pytest

from conftest import load_script
from stn import data
from stn.errors import UserError

script = load_script("5-sliding-window-mnist.py")


def test_dense_to_conv_computes_the_dense_sums():
    rng = np.random.RandomState(0)
    W = rng.randn(2 * 3 * 4, 5)
    x = rng.randn(2, 3, 4)
    filters = script.dense_to_conv(W, 2, 3, 4)
    assert filters.shape == (5, 2, 3, 4)
    # A valid convolution whose input is the filter's size: one output per unit,
    # each filter applied flipped.
    convolved = np.einsum("cij,ucij->u", x, filters[:, :, ::-1, ::-1])
    np.testing.assert_allclose(convolved, x.ravel().dot(W), rtol=1e-12)


def test_score_map_is_the_dense_network_on_every_window(cnn_weights, sequences1):
    canvases = data.load_sequences(sequences1)["X_test"][:4]
    score_maps, classify = script.compile_networks(cnn_weights, 60)
    maps = score_maps(canvases[:, None])
    assert maps.shape == (4, 10, 9, 9)          # (60 - 28) // 4 + 1 positions
    for i, j in [(0, 0), (3, 5), (8, 8)]:
        window = canvases[:, 4 * i:4 * i + 28, 4 * j:4 * j + 28]
        np.testing.assert_allclose(maps[:, :, i, j], classify(window[:, None]),
                                   atol=2e-6)
    windows = script.windows(canvases, 9)
    np.testing.assert_array_equal(windows[3 * 81 + 2 * 9 + 7, 0],
                                  canvases[3, 8:36, 28:56])
    slid = classify(windows).reshape(4, 9, 9, 10).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(maps, slid, atol=2e-6)
    np.testing.assert_allclose(maps.sum(axis=1), 1, rtol=1e-5)


def test_detect_finds_the_best_class_and_window():
    maps = np.zeros((2, 10, 5, 5), np.float32)
    maps[0, 3, 1, 4] = 0.9
    maps[1, 7, 0, 2] = 0.8
    maps[1, 2, 4, 4] = 0.7
    classes, rows, cols = script.detect(maps)
    assert classes.tolist() == [3, 7] and rows.tolist() == [1, 0]
    assert cols.tolist() == [4, 2]
    x, y = script.window_centres(rows, cols)
    assert x.tolist() == [30.0, 22.0] and y.tolist() == [18.0, 14.0]


def test_main_measures_and_draws(model_file, sequences1, tmp_path):
    output = str(tmp_path / "windows.png")
    figures = script.main(model=model_file, data=sequences1, compare=5, n=3,
                          output=output)
    assert figures["max_difference"] < 1e-5
    for key in ("detection_accuracy", "class_accuracy", "location_accuracy"):
        assert 0 <= figures[key] <= 1
    assert figures["detection_accuracy"] <= min(figures["class_accuracy"],
                                                figures["location_accuracy"])
    with open(output, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_are_named(model_file, sequences1, tmp_path):
    with pytest.raises(UserError, match="1-train-mnist.py"):
        script.main(model=str(tmp_path / "none.npz"), data=sequences1)
    wrong = str(tmp_path / "wrong.npz")
    data.save_npz(wrong, *[np.zeros(3)] * 8)
    with pytest.raises(UserError, match="do not fit the chapter's MNIST CNN"):
        script.main(model=wrong, data=sequences1)
    raw = data.load_npz(sequences1)
    no_boxes = str(tmp_path / "chapter.npz")
    data.save_npz(no_boxes, **{k: v for k, v in raw.items() if not k.startswith("boxes")})
    with pytest.raises(UserError, match="boxes"):
        script.main(model=model_file, data=no_boxes)
