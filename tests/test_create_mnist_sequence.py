"""create_mnist_sequence.py: the file format, the algorithm's placement, flags."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, load_script
from stn import data

script = load_script("create_mnist_sequence.py")
SMALL = dict(train_size=40, valid_size=20, test_size=30)


def make(tmp_path, name="d.npz", **settings):
    path = str(tmp_path / name)
    script.main(output=path, **dict(SMALL, **settings))
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_format_keys_shapes_dtypes_and_range(tmp_path):
    d = make(tmp_path, nb_digits=2, output_dim=80)
    for split, n in [("train", 40), ("valid", 20), ("test", 30)]:
        assert d["X_" + split].shape == (n, 80 * 80)
        assert d["X_" + split].dtype == np.float32
        assert d["y_" + split].shape == (n, 2) and d["y_" + split].dtype == np.int32
        assert d["boxes_" + split].shape == (n, 2, 4)
        assert 0 <= d["X_" + split].min() and d["X_" + split].max() <= 1
        assert 0 <= d["y_" + split].min() and d["y_" + split].max() <= 9
    assert int(d["nb_digits"]) == 2 and int(d["output_dim"]) == 80
    assert int(d["nb_distortions"]) == 8 and int(d["distortion_size"]) == 9
    # The project's loader accepts it as a 2-digit dataset.
    assert data.load_sequences(str(tmp_path / "d.npz"), nb_digits=2)["output_dim"] == 80


def test_digits_sit_where_the_boxes_say_left_to_right(tmp_path, mnist):
    d = make(tmp_path, nb_digits=3, output_dim=100, nb_distortions=0)
    test_images, test_labels = mnist[4][:, 0], mnist[5]
    for canvas, labels, boxes in zip(d["X_test"].reshape(-1, 100, 100), d["y_test"],
                                     d["boxes_test"]):
        x0, y0, x1, y1 = boxes.T
        assert (x1 - x0 == 28).all() and (y1 - y0 == 28).all()
        assert (x1[:-1] == x0[1:]).all()          # side by side, no gap
        assert x0[0] >= 0 and x1[-1] <= 100 and (y0 >= 0).all() and (y1 <= 100).all()
        assert abs(int(y0[1]) - int(y0[0])) <= 14   # slope of at most half a digit
        outside = canvas.copy()
        for box, label in zip(boxes, labels):
            crop = canvas[box[1]:box[3], box[0]:box[2]]
            # The crop is exactly an MNIST test digit with this label.
            same = test_images[test_labels == label]
            assert (np.abs(same - crop).max(axis=(1, 2)) == 0).any()
            outside[box[1]:box[3], box[0]:box[2]] = 0
        assert outside.max() == 0                 # no clutter was asked for


def test_clutter_is_added_and_clipped(tmp_path):
    clean = make(tmp_path, "a.npz", nb_digits=1, nb_distortions=0)
    cluttered = make(tmp_path, "b.npz", nb_digits=1, nb_distortions=8)
    assert (cluttered["X_train"] > 0).sum() > (clean["X_train"] > 0).sum()
    assert cluttered["X_train"].max() <= 1


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make(tmp_path, "a.npz", nb_digits=1)
    b = make(tmp_path, "b.npz", nb_digits=1)
    c = make(tmp_path, "c.npz", nb_digits=1, seed=7)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes()
    assert a["X_train"].tobytes() != c["X_train"].tobytes()


def test_stored_by_default_compressed_on_request(tmp_path):
    import zipfile
    stored = make(tmp_path, "s.npz", nb_digits=1)
    deflated = make(tmp_path, "z.npz", nb_digits=1, compress=True)
    for key in stored:
        assert stored[key].tobytes() == deflated[key].tobytes()
    for name, kind in [("s.npz", zipfile.ZIP_STORED), ("z.npz", zipfile.ZIP_DEFLATED)]:
        with zipfile.ZipFile(str(tmp_path / name)) as z:
            assert {info.compress_type for info in z.infolist()} == {kind}
    assert (tmp_path / "z.npz").stat().st_size < (tmp_path / "s.npz").stat().st_size / 3


def test_default_name_and_mosaic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = script.main(nb_digits=1, mosaic="m.png", **SMALL)
    assert path == "mnist_sequence1_sample_8distortions_9x9.npz"
    assert (tmp_path / path).exists()
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags, message", [
    (["--nb_digits", "0"], "argument --nb_digits: must be at least 1"),
    (["--nb_digits", "2", "--output_dim", "57"], "argument --output_dim: 57 is too small"),
    (["--train_size", "-3"], "argument --train_size: must be at least 1"),
    (["--nb_distortions", "-1"], "argument --nb_distortions: must be 0 or more"),
    (["--distortion_size", "29"], "argument --distortion_size: patches are cut"),
])
def test_bad_flags_are_one_line_errors(flags, message):
    out = subprocess.run([sys.executable, "create_mnist_sequence.py"] + flags, cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
