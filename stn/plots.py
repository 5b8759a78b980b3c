"""Pictures: every PNG is drawn headless (Agg) and written atomically."""
import os

import numpy as np

from .data import atomic_path


def pyplot(show=False):
    """matplotlib.pyplot on the Agg backend, unless a window was asked for."""
    import matplotlib
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, show=False):
    """Write ``fig`` to the PNG ``path`` atomically, then show it if asked."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight")
    if show:
        pyplot(show).show()
    pyplot(show).close(fig)


def save_mosaic(images, columns, path):
    """Tile (N, H, W) images in [0, 1], ``columns`` per row, into a grey PNG."""
    import matplotlib.image
    n, h, w = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1), np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = image
    with atomic_path(path) as tmp:
        matplotlib.image.imsave(tmp, grid, cmap="gray", vmin=0, vmax=1, format="png")


def curves_path(results):
    """Where the learning curves of a run whose results go to ``results`` go:
    res.npz, res_curves.png."""
    return os.path.splitext(results)[0] + "_curves.png"


def curves_title(settings):
    """The learning curves' title, from a run's settings."""
    if not {"script", "seed", "optimizer", "lr", "batch_size"} <= set(settings):
        return "Learning curves"
    return "Learning curves of %s (seed %s, %s at lr %g, minibatches of %s)" % (
        settings["script"], settings["seed"], settings["optimizer"], settings["lr"],
        settings["batch_size"])


def interp_extrapolated(x, xp, fp):
    """``np.interp(x, xp, fp)`` (``x`` of any shape; ``xp`` and ``fp`` 1-D,
    ``xp`` increasing from ``xp[0]`` < ``xp[-1]``), continued linearly past
    both ends of ``xp`` at the mean slope, so that a secondary axis places
    the ticks beyond the data where they belong instead of piling them on
    the ends."""
    x = np.asarray(x, dtype=float)
    slope = (fp[-1] - fp[0]) / (xp[-1] - xp[0])
    return np.where(x < xp[0], fp[0] + (x - xp[0]) * slope,
                    np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * slope,
                             np.interp(x, xp, fp)))


def learning_curves(results, path, title, show=False):
    """Draw the history of a results file (its ``history_*`` arrays) to the PNG
    ``path``: accuracy (%) of the training batches, the validation and the
    test set by epoch (those it has; for co-localisation the share of test
    crops located), with the minutes elapsed on the top axis; the training
    loss and the learning rate; and, for the STN scripts, the transform's mean
    zoom (crop span / canvas, across and down, per step) and the share of test
    crops centred on their digit.  A checkpoint's epochs without a value
    (NaN) are left out."""
    plt = pyplot(show)
    import matplotlib.ticker
    epochs = np.asarray(results["history_epoch"])
    has_transform = "history_zoom_x" in results
    fig, axes = plt.subplots(1, 3 if has_transform else 2, squeeze=False,
                             figsize=(15 if has_transform else 10, 4),
                             layout="constrained")
    axes = axes[0]
    ax = axes[0]
    for key, label in (("train_acc", "training batches"), ("valid_acc", "validation"),
                       ("test_acc", "test"), ("located", "test crops at IoU > 0.5")):
        if "history_" + key in results:
            ax.plot(epochs, 100 * np.asarray(results["history_" + key]), marker=".",
                    label=label)
    ax.set(xlabel="epoch", ylabel="accuracy (%)")
    # The minutes elapsed at the end of each epoch, 0 where the first began.
    ends = np.concatenate([[epochs[0] - 1], epochs])
    minutes = np.concatenate([[0.0], np.cumsum(np.nan_to_num(results["history_seconds"]))
                              / 60.0])
    has_minutes = len(epochs) > 1 and minutes[-1] > 0
    # Room above the panel for the minutes axis and its label.
    ax.set_title("Accuracy", pad=40 if has_minutes else None)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    if has_minutes:
        top = ax.secondary_xaxis("top", functions=(
            lambda e: interp_extrapolated(e, ends, minutes),
            lambda m: interp_extrapolated(m, minutes, ends)))
        top.set_xlabel("minutes")
        top.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(6))

    ax = axes[1]
    ax.plot(epochs, results["history_train_loss"], marker=".", color="C3")
    ax.set(xlabel="epoch", ylabel="training loss", title="Loss and learning rate")
    ax.tick_params(axis="y", colors="C3")
    lr = ax.twinx()
    lr.plot(epochs, results["history_lr"], color="C7", linestyle="--")
    lr.set_yscale("log")
    lr.set_ylabel("learning rate (dashed)")
    ax.grid(alpha=0.3)

    if has_transform:
        ax = axes[2]
        zoom_x = np.asarray(results["history_zoom_x"], dtype=float).reshape(len(epochs), -1)
        zoom_y = np.asarray(results["history_zoom_y"], dtype=float).reshape(len(epochs), -1)
        for step in range(zoom_x.shape[1]):
            name = " step %d" % (step + 1) if zoom_x.shape[1] > 1 else ""
            ax.plot(epochs, zoom_x[:, step], color="C%d" % step, marker=".",
                    label="zoom across" + name)
            ax.plot(epochs, zoom_y[:, step], color="C%d" % step, marker="x",
                    linestyle=":", label="zoom down" + name)
        ax.set(xlabel="epoch", ylabel="crop span / canvas (1: whole canvas)",
               title="Transform (test set)")
        ax.set_ylim(0, max(1.05, np.nanmax(np.concatenate([zoom_x, zoom_y]),
                                           initial=0) + 0.05))
        centred = 100 * np.asarray(results["history_centred"], dtype=float).reshape(
            len(epochs), -1)
        if np.isfinite(centred).any():
            share = ax.twinx()
            share.plot(epochs, centred.mean(axis=1), color="k", linestyle="--",
                       label="crops centred on their digit")
            share.set(ylim=(0, 105), ylabel="centred on their digit (%, dashed)")
        # Below the panel, where it can hide no curve, whatever the zoom.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=max(2, zoom_x.shape[1]), fontsize="small")
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(title)
    save_figure(fig, path, show)
