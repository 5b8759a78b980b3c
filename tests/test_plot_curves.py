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


def test_the_minutes_axis_is_linear_when_the_epochs_take_equal_time(tmp_path, monkeypatch):
    # 25 epochs of 264 s: the epochs end at 4.4, 8.8, ... 110 minutes, and the
    # axis runs on past both ends (0 minutes where epoch 0 starts).
    epochs = np.arange(25)
    results = {"history_epoch": epochs, "history_seconds": np.full(25, 264.0),
               "history_train_acc": np.linspace(0.5, 0.98, 25),
               "history_train_loss": np.linspace(1.3, 0.1, 25),
               "history_lr": np.full(25, 3e-4)}
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, show: drawn.append(fig))
    plots.learning_curves(results, str(tmp_path / "c.png"), "t")
    fig = drawn[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (top,) = fig.axes[0].child_axes
    axes_left, axes_right = fig.axes[0].get_window_extent(renderer).intervalx
    low, high = sorted(top.get_xlim())   # the ticks drawn: those in view
    ticks = [(tick.get_loc(), tick.label2.get_window_extent(renderer))
             for tick in top.xaxis.get_major_ticks() if low <= tick.get_loc() <= high]
    minutes = [loc for loc, _ in ticks]
    centres = [box.x0 + box.width / 2 for _, box in ticks]
    assert minutes[:2] == [0, 20] and len(minutes) >= 5
    # Equal minutes apart, equal pixels apart; each at its epoch's place on the
    # bottom axis (epoch e ends at 4.4 (e + 1) minutes); none off the panel.
    to_pixels = fig.axes[0].transData.transform
    for loc, centre in zip(minutes, centres):
        epoch = loc / 4.4 - 1
        assert abs(centre - to_pixels((epoch, 0))[0]) < 1
        assert axes_left - 1 <= centre <= axes_right + 1
    title = fig.axes[0].title.get_window_extent(renderer)
    label = top.xaxis.label.get_window_extent(renderer)
    assert label.y1 < title.y0
