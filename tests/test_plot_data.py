"""plot_data.py: prints the shapes and writes a PNG grid; clear error on a bad file."""
import subprocess
import sys

import numpy as np

from conftest import ROOT, load_script
from stn import data

script = load_script("plot_data.py")


def test_writes_png_and_prints_shapes(tmp_path, capsys):
    path = str(tmp_path / "d.npz")
    arrays = {}
    for split in data.SPLITS:
        arrays["X_" + split] = np.random.RandomState(0).rand(7, 60 * 60).astype(np.float32)
        arrays["y_" + split] = np.zeros((7, 2), np.int32)
    data.save_npz(path, **arrays)
    png = script.main(path, split="test", n=6)
    assert png == str(tmp_path / "d_test.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "test   X (7, 60, 60)  y (7, 2)" in capsys.readouterr().out


def test_missing_file_prints_the_command_that_creates_it(tmp_path):
    out = subprocess.run([sys.executable, "plot_data.py", str(tmp_path / "x.npz")],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no such file; create it with: python create_mnist_sequence.py" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
