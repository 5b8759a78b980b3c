"""plot_curves.py and the curves every STN run draws beside its results."""
import os

import matplotlib.image
import numpy as np
import pytest

from conftest import load_script
from stn import data, plots
from stn.errors import UserError

script = load_script("plot_curves.py")


def test_a_run_draws_its_curves_and_the_script_redraws_them(tmp_path, sequences1,
                                                             monkeypatch):
    output = str(tmp_path / "res.npz")
    load_script("2-stn-cnn-mnist.py").main(data=sequences1, output=output, epochs=2,
                                           batch_size=50)
    beside = str(tmp_path / "res_curves.png")
    assert os.path.exists(beside)
    # A checkpoint from before the transform statistics: NaN epochs are drawn as gaps.
    res = data.load_npz(output)
    res["history_zoom_x"][0] = np.nan
    data.save_npz(output, **res)
    redrawn = script.main(output, output=str(tmp_path / "again.png"))
    image = matplotlib.image.imread(redrawn)
    # Three panels side by side: accuracy, loss and learning rate, transform.
    assert image.shape[1] > 2.5 * image.shape[0] > 500
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, show: drawn.append(fig))
    script.main(output, output=str(tmp_path / "again.png"))
    transform = drawn[0].axes[2]
    across = transform.get_lines()[0].get_ydata()
    assert np.isnan(across[0]) and np.isfinite(across[1])
    assert np.isfinite(transform.get_ylim()).all()


def test_a_file_without_history_is_refused(sequences1, tmp_path):
    with pytest.raises(UserError, match="holds no training history"):
        script.main(sequences1, output=str(tmp_path / "x.png"))
