"""Draw what the spatial transformer looks at: its footprint on the canvas and its crops.

Reads a results file of 2-stn-cnn-mnist.py or 3-recurrent-stn-mnist.py
(res_test_2.npz, res_test_3.npz) and, for 5 random canvases of its stored test
batch, draws one row each: the canvas with the outline of each transform's
sampling grid (green, red, blue for steps or branches 1-3), then each crop with
the class read from it and, when it is wrong, the true one (in red).  The
crops are computed with the TransformerLayer's own mapping from the stored
canvases and transforms, blurred or supersampled as the run's settings say:

    python plot_crops.py res_test_2.npz            # writes res_test_2_crops.png
    python plot_crops.py res_test_3.npz --n 8 --output crops3.png
    python plot_crops.py res_test_2.npz --gif      # also res_test_2_epochs.gif

With --gif it also animates how the transformer learned: one frame an epoch,
the footprints and crops of the first test canvases, which every run keeps.

It also prints the whole test set's accuracy by the distance, in pixels, of
each crop's centre from its digit's box centre (one transform a digit: not for
--branches), which tells whether the errors come from crops that miss their
digit or from the classifier reading centred ones.
"""
import json
import os

from stn import cli

COLOURS = ("lime", "red", "deepskyblue", "yellow", "magenta", "cyan")
# The TransformerLayer's sampling keywords as the chapter's layer has them.
PLAIN = {"blur": 0.0, "blur_radius": 0, "supersample": 1}
REQUIRED = ("x", "A", "preds")
ROWS = 5        # canvases a column; more go into further columns


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("file", help="results .npz")
    parser.add_argument("--n", type=cli.positive_int, default=5,
                        help="canvases to draw (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=111,
                        help="which canvases are drawn (default: %(default)s)")
    parser.add_argument("--output", default=None,
                        help="PNG to write (default: FILE without .npz + _crops.png)")
    parser.add_argument("--show", action="store_true",
                        help="also open a window (default: headless)")
    parser.add_argument("--gif", action="store_true",
                        help="also write FILE without .npz + _epochs.gif: the "
                             "transforms of the first test canvases, epoch by epoch "
                             "(default: off)")
    return parser


def source_points(theta, out_height, out_width, height, width):
    """Pixel coordinates (x, y), each (out_height, out_width), that the layer
    samples for one 2x3 ``theta`` on a height x width canvas."""
    import numpy as np
    x_t, y_t = np.meshgrid(np.linspace(-1, 1, out_width), np.linspace(-1, 1, out_height))
    grid = np.stack([x_t.ravel(), y_t.ravel(), np.ones(x_t.size)])
    x_s, y_s = np.asarray(theta, np.float64).reshape(2, 3).dot(grid)
    return ((x_s + 1) / 2 * (width - 1)).reshape(out_height, out_width), \
           ((y_s + 1) / 2 * (height - 1)).reshape(out_height, out_width)


def bilinear(image, x, y):
    """Sample ``image`` at (x, y) as the layer does (border mode 'nearest')."""
    import numpy as np
    height, width = image.shape
    x0, y0 = np.floor(x), np.floor(y)

    def at(yi, xi):
        return image[np.clip(yi, 0, height - 1).astype(int),
                     np.clip(xi, 0, width - 1).astype(int)]

    return ((x0 + 1 - x) * (y0 + 1 - y) * at(y0, x0) + (x0 + 1 - x) * (y - y0) * at(y0 + 1, x0)
            + (x - x0) * (y0 + 1 - y) * at(y0, x0 + 1) + (x - x0) * (y - y0) * at(y0 + 1, x0 + 1))


def outline(theta, out_height, out_width, height, width):
    """The outline of the layer's sampling grid on the canvas: (x, y) along
    its four edges, in order."""
    import numpy as np
    x, y = source_points(theta, out_height, out_width, height, width)
    return (np.concatenate([x[0], x[:, -1], x[-1, ::-1], x[::-1, 0]]),
            np.concatenate([y[0], y[:, -1], y[-1, ::-1], y[::-1, 0]]))


def crop(canvas, theta, out_height, out_width, blur=0.0, blur_radius=0, supersample=1):
    """The TransformerLayer's (out_height, out_width) crop of one (H, W)
    ``canvas`` through the 2x3 ``theta``, with its ``blur`` and ``supersample``
    keywords: the blur is SciPy's Gaussian filter of sigma ``blur`` cut at
    ``blur_radius`` pixels, the layer's radius (set by the sigma a run
    started with, which -blurepochs then fades)."""
    import numpy as np
    from scipy import ndimage
    if blur and blur_radius:
        canvas = ndimage.gaussian_filter(canvas.astype(np.float64), blur, mode="nearest",
                                         truncate=blur_radius / blur)
    k = supersample
    x, y = source_points(theta, out_height * k, out_width * k, *canvas.shape)
    return bilinear(canvas, x, y).reshape(out_height, k, out_width, k).mean(axis=(1, 3))


def main(file, n=5, seed=111, output=None, show=False, gif=False):
    """Write the picture (and with ``gif`` the animation); return the PNG's path."""
    import numpy as np
    from stn import data, plots
    from stn.errors import UserError
    from stn.layers import output_size
    output = output or "%s_crops.png" % os.path.splitext(file)[0]
    data.check_writable(output)
    animation = "%s_epochs.gif" % os.path.splitext(file)[0] if gif else None
    if animation:
        data.check_writable(animation)
    res = data.load_npz(file, hint="python 2-stn-cnn-mnist.py (or "
                        "3-recurrent-stn-mnist.py) --output %s" % file)
    missing = [key for key in REQUIRED if key not in res]
    if missing:
        raise UserError("%s: lacks %s; give a results file of 2-stn-cnn-mnist.py or "
                        "3-recurrent-stn-mnist.py" % (file, ", ".join(missing)))
    if animation and "history_watch_A" not in res:
        raise UserError("%s: keeps no transforms by epoch (runs before --gif existed "
                        "did not); train again to animate" % file)
    canvases = res["x"]
    if canvases.ndim == 2:  # flattened canvases, as some files store them
        side = int(round(np.sqrt(canvases.shape[1])))
        canvases = canvases.reshape(-1, side, side)
    count, height, width = canvases.shape
    A = res["A"].reshape(count, -1, 6)
    steps = A.shape[1]
    # One prediction per transform (the recurrent model's steps), or one per
    # canvas read from the crops of parallel transformers (--branches).
    preds = res["preds"].reshape(count, -1)
    branches = preds.shape[1] != steps
    # The chapter's files lack the factor: theirs was 3.  A pair is (rows, cols).
    factors = np.broadcast_to(res["downsample"] if "downsample" in res else 3.0, 2)
    out_height, out_width = (int(output_size(side, factor))
                             for side, factor in zip((height, width), factors))
    settings = json.loads(str(res["settings"])) if "settings" in res else {}
    sampling = {key: settings.get(key, PLAIN[key]) for key in ("blur", "supersample")}
    sampling["blur_radius"] = int(2 * sampling["blur"] + 0.5)   # the layer's
    best = int(res["best_epoch"]) if "best_epoch" in res else None
    sigma = (res["history_blur"][list(res["history_epoch"]).index(best)]
             if best is not None and "history_blur" in res else None)
    drawn = epoch_sampling(sampling, settings, best, sigma)
    # The true digits, one per step, when the file has them.
    truth = res["y"].reshape(count, -1) if "y" in res else np.full((count, steps), None)

    if n > count:
        print("%s holds %d test canvases: drawing them all" % (file, count))
    chosen = np.random.RandomState(seed).choice(count, min(n, count), replace=False)
    # Up to ROWS canvases a column of (canvas, crops) groups, side by side.
    rows, groups = min(len(chosen), ROWS), -(-len(chosen) // ROWS)
    plt = plots.pyplot(show)
    fig, grid = plt.subplots(rows, groups * (1 + steps), squeeze=False,
                             figsize=(2.6 * groups * (1 + steps), 2.6 * rows),
                             layout="constrained")
    for ax in grid.flat:
        ax.axis("off")
    axes = [grid[k % ROWS, (k // ROWS) * (1 + steps):(k // ROWS + 1) * (1 + steps)]
            for k in range(len(chosen))]
    for row, i in zip(axes, chosen):
        for ax in row:
            ax.axis("on")
        row[0].imshow(canvases[i], cmap="gray", vmin=0, vmax=1)
        for step in range(steps):
            colour = COLOURS[step % len(COLOURS)]
            row[0].plot(*outline(A[i, step], out_height, out_width, height, width),
                        color=colour, linewidth=1.5)
            row[1 + step].imshow(crop(canvases[i], A[i, step], out_height, out_width,
                                      **drawn), cmap="gray", vmin=0, vmax=1)
            if branches:
                row[1 + step].set_title("branch %d" % (step + 1))
            else:
                text, text_colour = label("step %d: " % (step + 1) if steps > 1 else "",
                                          preds[i, step], truth[i, step])
                row[1 + step].set_title(text, color=text_colour)
            for side in row[1 + step].spines.values():
                side.set_edgecolor(colour)
                side.set_linewidth(3)
        if branches:
            text, text_colour = label("", preds[i, 0], truth[i, 0])
            row[0].set_title(text, color=text_colour)
        row[0].set_xlim(-0.5, width - 0.5)
        row[0].set_ylim(height - 0.5, -0.5)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if not branches:
        for group in range(groups):
            grid[0, group * (1 + steps)].set_title("canvas")
    factor = ("%g" % factors[0] if factors[0] == factors[1]
              else "%g,%g" % tuple(factors))
    extras = "".join(", %s %g" % (key, drawn[key]) for key in ("blur", "supersample")
                     if drawn[key] != PLAIN[key])
    fig.suptitle("What the transformer crops: %dx%d crops (downsample %s%s)"
                 % (out_height, out_width, factor, extras))
    plots.save_figure(fig, output, show)
    print("Wrote %s" % output)
    if animation:
        write_gif(res, (out_height, out_width), sampling, settings, animation)
        print("Wrote %s" % animation)
    if branches:
        print("No accuracy by distance: the parallel transformers' crops are read together")
    elif "all_A" in res and "all_boxes" in res:
        print_accuracy_by_distance(res, height, width)
    else:
        print("No accuracy by distance: %s keeps no test transforms and boxes (all_A, "
              "all_boxes; results written before they were kept, or of a dataset without "
              "boxes, lack them)" % file)
    return output


def print_accuracy_by_distance(res, height, width):
    """Print the test set's accuracy by the distance of each crop's centre from
    its digit's (from the results' ``all_A``, ``all_boxes``, ``all_preds`` and
    ``all_y``): whether the errors come from crops that miss their digit."""
    from stn import localization
    distances = localization.centre_distances(res["all_A"], res["all_boxes"], height, width)
    correct = res["all_preds"].reshape(distances.shape) == res["all_y"].reshape(distances.shape)
    print("Test accuracy by the distance of the crop's centre from its digit's centre:")
    print("%10s %7s %7s %9s %7s" % ("pixels", "crops", "share", "accuracy", "errors"))
    for low, high, crops, errors in localization.accuracy_by_distance(distances, correct):
        bin_name = "%g-%g" % (low, high) if high < float("inf") else "%g+" % low
        accuracy = "%.2f%%" % (100.0 * (crops - errors) / crops) if crops else "-"
        print("%10s %7d %6.1f%% %9s %7d" % (bin_name, crops, 100.0 * crops / distances.size,
                                           accuracy, errors))


def epoch_sampling(sampling, settings, epoch, sigma):
    """The ``crop`` keywords that draw what the classifier read at ``epoch``
    (None: the run's last): ``sampling``, the run's own, with ``sigma``, the
    blur recorded for that epoch (history_blur, as -blurepochs faded it;
    None or NaN if not recorded), or none where the classifier read the
    unblurred crop (-sharp, from -sharpepoch on)."""
    import numpy as np
    if sigma is not None and np.isfinite(sigma):
        sampling = dict(sampling, blur=float(sigma))
    if settings.get("sharp") and (epoch is None or epoch >= settings.get("sharpepoch", 0)):
        sampling = dict(sampling, blur=0.0)
    return sampling


def write_gif(res, crop_shape, sampling, settings, path):
    """Animate ``res``'s watched test canvases (watch_x) through their
    transforms by epoch (history_watch_A): one frame an epoch, the canvases
    with the sampling footprints above, the crops below, drawn with the
    ``sampling`` keywords of ``crop`` as the run's ``settings`` had the
    classifier read them that epoch (``epoch_sampling``)."""
    import numpy as np
    from matplotlib.animation import PillowWriter
    from stn import data, plots
    canvases, labels = res["watch_x"], res["watch_y"].reshape(len(res["watch_x"]), -1)
    transforms = res["history_watch_A"]            # (epochs, canvases, steps, 6)
    epochs = res["history_epoch"]
    count, steps = transforms.shape[1], transforms.shape[2]
    height, width = canvases.shape[1:]
    plt = plots.pyplot()
    fig, axes = plt.subplots(1 + steps, count, squeeze=False,
                             figsize=(1.9 * count, 2.0 * (1 + steps) + 0.4))
    writer = PillowWriter(fps=2)
    with data.atomic_path(path) as tmp:
        with writer.saving(fig, tmp, dpi=80):
            for frame, epoch in enumerate(epochs):
                if not np.isfinite(transforms[frame]).all():
                    continue       # an epoch from before the run kept transforms
                drawn = epoch_sampling(sampling, settings, epoch, res["history_blur"][frame]
                                       if "history_blur" in res else None)
                for ax in axes.flat:
                    ax.clear()
                    ax.set_xticks([])
                    ax.set_yticks([])
                for i in range(count):
                    axes[0, i].imshow(canvases[i], cmap="gray", vmin=0, vmax=1)
                    axes[0, i].set_title("digit%s %s" % (
                        "s" if steps > 1 else "", " ".join(map(str, labels[i]))),
                        fontsize=9)
                    for step in range(steps):
                        theta = transforms[frame, i, step]
                        axes[0, i].plot(*outline(theta, *crop_shape, height, width),
                                        color=COLOURS[step % len(COLOURS)], linewidth=1.5)
                        axes[1 + step, i].imshow(crop(canvases[i], theta, *crop_shape,
                                                      **drawn),
                                                 cmap="gray", vmin=0, vmax=1)
                    axes[0, i].set_xlim(-0.5, width - 0.5)
                    axes[0, i].set_ylim(height - 0.5, -0.5)
                axes[0, 0].set_ylabel("canvas")
                for step in range(steps):
                    axes[1 + step, 0].set_ylabel("crop" + (" %d" % (step + 1)
                                                           if steps > 1 else ""))
                fig.suptitle("What the transformer crops after epoch %d: test accuracy "
                             "%.1f%%" % (epoch, 100 * res["history_test_acc"][frame]))
                writer.grab_frame()
    plt.close(fig)


def label(prefix, pred, true=None):
    """A crop's title and its colour: the class read, and in red the true one
    when it differs."""
    if true is None or pred == true:
        return "%sread %d" % (prefix, pred), "black"
    return "%sread %d, is %d" % (prefix, pred, true), "red"


if __name__ == "__main__":
    cli.run(main, build_parser().parse_args())
