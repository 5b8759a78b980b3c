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
    low, high = sorted(top.get_xlim())   # the ticks drawn: those in view
    ticks = [(tick.get_loc(), tick.label2.get_window_extent(renderer))
             for tick in top.xaxis.get_major_ticks() if low <= tick.get_loc() <= high]
    minutes = [loc for loc, _ in ticks]
    centres = [box.x0 + box.width / 2 for _, box in ticks]
    assert minutes == [0, 20, 40, 60, 80, 100]
    # Each at its epoch's place on the bottom axis (epoch e ends at 4.4 (e + 1)
    # minutes); the ticks past the last epoch (120 minutes) out of view.
    to_pixels = fig.axes[0].transData.transform
    for loc, centre in zip(minutes, centres):
        epoch = loc / 4.4 - 1
        assert abs(centre - to_pixels((epoch, 0))[0]) < 1
    title = fig.axes[0].title.get_window_extent(renderer)
    label = top.xaxis.label.get_window_extent(renderer)
    assert label.y1 < title.y0


def test_interp_extrapolated_goes_on_at_the_mean_slope_past_both_ends():
    xp, fp = np.array([-1.0, 0, 1, 2]), np.array([0.0, 4, 10, 12])   # mean slope 4
    x = np.array([-3.0, -1, 0.5, 2, 5])
    expected = [-8.0, 0, 7, 12, 24]
    np.testing.assert_allclose(plots.interp_extrapolated(x, xp, fp), expected)
    # Its inverse, as the secondary axis uses it: back to x everywhere.
    np.testing.assert_allclose(plots.interp_extrapolated(expected, fp, xp), x)
