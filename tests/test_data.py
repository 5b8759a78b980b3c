"""stn.data: the MNIST loader, npz loading and validation, atomic writes."""
import gzip
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from stn import data
from stn.errors import UserError


class RunsCode:
    """An object whose unpickling would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


def test_real_mnist_shapes_dtypes_ranges(mnist):
    X_train, y_train, X_valid, y_valid, X_test, y_test = mnist
    assert [len(a) for a in mnist] == [50000, 50000, 10000, 10000, 10000, 10000]
    for X, y in [(X_train, y_train), (X_valid, y_valid), (X_test, y_test)]:
        assert X.shape[1:] == (1, 28, 28) and X.dtype == np.float32
        assert y.dtype == np.int32
        assert 0 <= X.min() and X.max() <= 1 and X.max() > 0.99
        assert set(np.unique(y)) == set(range(10))


def test_lookup_order(tmp_path, monkeypatch):
    chosen = tmp_path / "mine.pkl.gz"
    chosen.write_bytes(b"")
    monkeypatch.setenv("MNIST_PKL", str(chosen))
    assert data.find_mnist() == str(chosen)
    assert data.find_mnist(str(chosen)) == str(chosen)
    monkeypatch.delenv("MNIST_PKL")
    assert data.find_mnist() in (data.CHAPTER_MNIST, data.bundled_mnist())


def test_missing_mnist_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--mnist .*no such file"):
        data.load_mnist(str(tmp_path / "nope.pkl.gz"))
    monkeypatch.setenv("MNIST_PKL", str(tmp_path / "nope.pkl.gz"))
    with pytest.raises(UserError, match="MNIST_PKL"):
        data.load_mnist()


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(((RunsCode(marker), None),), f, protocol=2)
    with pytest.raises(UserError, match="refusing to load posix.system"):
        data.load_mnist(str(path))
    assert not marker.exists()


def test_truncated_mnist_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pkl.gz"
    with open(data.find_mnist(), "rb") as f:
        path.write_bytes(f.read(100000))
    with pytest.raises(UserError, match="truncated"):
        data.load_mnist(str(path))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.npz"
    np.savez(path, X_train=np.array([RunsCode(marker)], dtype=object))
    with pytest.raises(UserError, match="pickled objects"):
        data.load_npz(str(path))
    assert not marker.exists()


def test_missing_and_truncated_npz(tmp_path):
    with pytest.raises(UserError, match="no such file; create it with: make it"):
        data.load_npz(str(tmp_path / "nope.npz"), hint="make it")
    path = tmp_path / "cut.npz"
    data.save_npz(str(path), X=np.arange(100000.0))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="cut.npz: not an .npz file, or a truncated"):
        data.load_npz(str(path))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(UserError, match="text.npz: not an .npz file"):
        data.load_npz(str(tmp_path / "text.npz"))


def sequences(n=4, dim=30, digits=1):
    out = {}
    for split in data.SPLITS:
        out["X_" + split] = np.zeros((n, dim * dim), np.float32)
        out["y_" + split] = np.zeros((n, digits), np.int32)
    return out


def test_load_sequences_checks_keys_shapes_and_digits(tmp_path):
    path = str(tmp_path / "s.npz")
    data.save_npz(path, **sequences())
    loaded = data.load_sequences(path, nb_digits=1)
    assert loaded["X_test"].shape == (4, 30, 30) and loaded["output_dim"] == 30
    # The side of its clutter patches: the chapter's when the file does not
    # say; their number: None.
    assert (loaded["distortion_size"], loaded["nb_distortions"]) == (9, None)
    data.save_npz(path, distortion_size=np.int64(5), nb_distortions=np.int64(0),
                  **sequences())
    loaded = data.load_sequences(path)
    assert (loaded["distortion_size"], loaded["nb_distortions"]) == (5, 0)
    with pytest.raises(UserError, match="holds 1 digits per canvas, this script reads 3"):
        data.load_sequences(path, nb_digits=3)
    bad = sequences()
    bad["X_valid"] = np.zeros((4, 30 * 31), np.float32)
    data.save_npz(path, **bad)
    with pytest.raises(UserError, match="not a square canvas"):
        data.load_sequences(path)
    bad = sequences()
    del bad["y_test"]
    data.save_npz(path, **bad)
    with pytest.raises(UserError, match="lacks X_test or y_test"):
        data.load_sequences(path)


def test_check_writable(tmp_path, monkeypatch):
    data.check_writable(str(tmp_path / "out.npz"))
    with pytest.raises(UserError, match="--output .*does not exist"):
        data.check_writable(str(tmp_path / "no" / "out.npz"))
    with pytest.raises(UserError, match="is a directory"):
        data.check_writable(str(tmp_path))
    # Tests run as root, who may write anywhere: pretend the directory is read-only.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match="--output .*out.npz: cannot write to"):
        data.check_writable(str(tmp_path / "out.npz"))


def test_killed_writer_leaves_previous_file_intact(tmp_path):
    path = tmp_path / "res.npz"
    data.save_npz(str(path), old=np.arange(10))
    before = path.read_bytes()
    writer = subprocess.Popen([sys.executable, "-c", (
        "import numpy as np; from stn import data; "
        "data.save_npz(%r, big=np.random.rand(6000, 6000))" % str(path))],
        env=dict(os.environ, PYTHONPATH=ROOT))
    # Kill it once it is writing its temporary file.
    deadline = time.time() + 60
    while not any(p.name.endswith(".tmp.npz") and p.stat().st_size > 0
                  for p in tmp_path.iterdir()):
        assert writer.poll() is None, "the writer finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert path.read_bytes() == before
    with np.load(path) as f:
        assert list(f["old"]) == list(range(10))


@pytest.mark.parametrize("compress", [True, False])
def test_npz_writer_round_trip_and_memory_map(tmp_path, compress):
    # One array above the memory-map threshold (written in chunks), one below.
    big = np.random.RandomState(0).rand(300, 1000).astype(np.float32)
    small = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert big.nbytes >= data.MAP_MIN_BYTES > small.nbytes
    path = str(tmp_path / "d.npz")
    with data.NpzWriter(path, compress) as npz:
        npz.add("small", small)
        with npz.stream("big", big.shape, np.float32) as write:
            for start in range(0, 300, 70):
                write(big[start:start + 70])
    loaded = data.load_npz(path)
    np.testing.assert_array_equal(loaded["big"], big)
    np.testing.assert_array_equal(loaded["small"], small)
    # The same arrays as numpy's own reader gives.
    with np.load(path) as f:
        np.testing.assert_array_equal(f["big"], loaded["big"])
    # Stored (uncompressed) large members are mapped, not read; read-only.
    assert isinstance(loaded["big"], np.memmap) == (not compress)
    assert not isinstance(loaded["small"], np.memmap)
    if not compress:
        with pytest.raises(ValueError):
            loaded["big"][0, 0] = 1
        # Aligned even as a slice: Theano refuses unaligned arrays.
        assert loaded["big"].ctypes.data % 64 == 0 and loaded["big"][3:7].flags.aligned


def test_unaligned_stored_member_is_read_not_mapped(tmp_path):
    import zipfile
    big = np.arange(2**19, dtype=np.float32)
    path = str(tmp_path / "u.npz")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        with z.open("x.npy", "w") as f:   # a 6-byte name: the data lands unaligned
            np.lib.format.write_array(f, big)
    loaded = data.load_npz(path)["x"]
    assert not isinstance(loaded, np.memmap) and loaded.flags.aligned
    np.testing.assert_array_equal(loaded, big)


def test_digit_crops_are_the_mnist_digits_at_their_boxes(tmp_path, mnist):
    from conftest import load_script
    create = load_script("create_mnist_sequence.py")
    path = str(tmp_path / "seq.npz")
    # No clutter: every crop must be exactly one MNIST digit of its split,
    # with its label, and the crops must hold all of the canvas's ink.
    create.main(nb_digits=3, output_dim=90, nb_distortions=0, train_size=40,
                valid_size=10, test_size=10, output=path)
    crops = data.digit_crops(path)
    canvases = data.load_sequences(path)
    for i, split in enumerate(data.SPLITS):
        X, y = crops[2 * i], crops[2 * i + 1]
        images, labels = mnist[2 * i], mnist[2 * i + 1]
        known = {image.tobytes(): label for image, label in zip(images, labels)}
        assert X.shape == (len(canvases["y_" + split]) * 3, 1, 28, 28)
        assert X.dtype == np.float32 and y.dtype == np.int32
        assert [known[x.tobytes()] for x in X] == y.tolist()
        np.testing.assert_array_equal(y, canvases["y_" + split].ravel())
        np.testing.assert_allclose(X.reshape(-1, 3, 28 * 28).sum(axis=(1, 2)),
                                   canvases["X_" + split].sum(axis=(1, 2)), rtol=1e-5)


def test_digit_crops_need_the_boxes(tmp_path):
    path = str(tmp_path / "noboxes.npz")
    X = np.zeros((4, 60 * 60), np.float32)
    y = np.zeros((4, 1), np.int32)
    data.save_npz(path, **{k + s: v for s in data.SPLITS for k, v in (("X_", X), ("y_", y))})
    with pytest.raises(UserError, match="boxes_train"):
        data.digit_crops(path)
