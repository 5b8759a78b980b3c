"""Create the chapter's distorted-digit datasets: MNIST digits on a cluttered canvas.

Each canvas holds --nb_digits MNIST digits side by side (no gap) at a random
place, following a random slope, plus --nb_distortions clutter patches cut from
random MNIST digits.  Reads MNIST (see 1-train-mnist.py) and writes, by default,
mnist_sequence{nb_digits}_sample_{nb_distortions}distortions_{size}x{size}.npz:

    python create_mnist_sequence.py --nb_digits 1   # for 2-stn-cnn-mnist.py
    python create_mnist_sequence.py --nb_digits 3   # for 3-recurrent-stn-mnist.py

The file has the chapter's keys: X_train (N, W*W) float32 in [0, 1] and y_train
(N, nb_digits) int32, the same for _valid and _test; and extra keys: boxes_train
etc. (N, nb_digits, 4) int32, each digit's [x0, y0, x1, y1) on the canvas, and
the generator settings.  The default 80k canvases of 100x100 take about 20 s.
"""
from stn import cli
from stn.clutter import CHAPTER_SIZE, DIGIT, PATCH_DATABASE, lay_patches, patch_database

CHUNK = 2000              # canvases rendered at a time (bounds memory)


def build_parser():
    parser = cli.parser(__doc__)
    add = parser.add_argument
    add("--nb_digits", type=cli.positive_int, default=3,
        help="digits per canvas (default: %(default)s)")
    add("--output_dim", type=cli.positive_int, default=100,
        help="canvas side in pixels (default: %(default)s)")
    add("--nb_distortions", type=cli.nonnegative_int, default=8,
        help="clutter patches per canvas (default: %(default)s)")
    add("--distortion_size", type=cli.positive_int, default=CHAPTER_SIZE,
        help="side of a clutter patch, at most 28 (default: %(default)s)")
    add("--train_size", type=cli.positive_int, default=60000,
        help="training canvases (default: %(default)s)")
    add("--valid_size", type=cli.positive_int, default=10000,
        help="validation canvases (default: %(default)s)")
    add("--test_size", type=cli.positive_int, default=10000,
        help="test canvases (default: %(default)s)")
    add("--seed", type=int, default=1234, help="random seed (default: %(default)s)")
    add("--mnist", default=None,
        help="path of mnist.pkl.gz (default: found automatically)")
    add("--output", default=None,
        help="output file (default: mnist_sequence{nb_digits}_sample_"
             "{nb_distortions}distortions_{size}x{size}.npz)")
    add("--compress", action="store_true",
        help="deflate the arrays: a file about 50x smaller, but every script then "
             "spends about 10 s decompressing it at start (default: stored, and "
             "memory-mapped by the scripts)")
    add("--mosaic", default=None, metavar="PNG",
        help="also draw the first 400 training canvases, 20x20, to this PNG")
    return parser


def check_settings(parser, args):
    """Reject settings the algorithm cannot honour, argparse-style."""
    if args.output_dim < DIGIT * args.nb_digits + 2:
        parser.error("argument --output_dim: %d is too small for %d digits side by "
                     "side; use at least %d" % (args.output_dim, args.nb_digits,
                                               DIGIT * args.nb_digits + 2))
    if args.distortion_size > DIGIT:
        parser.error("argument --distortion_size: patches are cut from 28x28 digits; "
                     "use at most 28, not %d" % args.distortion_size)


def default_output(nb_digits, nb_distortions, distortion_size):
    return "mnist_sequence%d_sample_%ddistortions_%dx%d.npz" % (
        nb_digits, nb_distortions, distortion_size, distortion_size)


# ---- The algorithm ----

def draw_layout(rng, count, n_digits_available, nb_digits, dim, nb_distortions,
                distortion_size):
    """Draw every random choice for ``count`` canvases up front.

    Drawing first and rendering afterwards, chunk by chunk, makes the result
    independent of the chunk size.  Returns the digit indices and top-left
    corners (x, y) of the digits, and the patch indices and corners.
    """
    import numpy as np
    which = rng.randint(0, n_digits_available, (count, nb_digits))
    # Side by side, centred on a random horizontal offset in [-base, base - 1].
    base = (dim - DIGIT * nb_digits) // 2
    x = (base + rng.randint(-base, base, count))[:, None] + DIGIT * np.arange(nb_digits)
    # A random row, then a slope of up to half a digit per digit, either way.
    slope = rng.randint(-DIGIT // 2, DIGIT // 2, count)
    y = rng.randint(0, dim, count)[:, None] + np.arange(nb_digits) * slope[:, None]
    # Digits that would leave the canvas are moved back onto it.
    y = np.clip(y, 0, dim - DIGIT)
    patches = rng.randint(0, PATCH_DATABASE, (count, nb_distortions))
    corners = rng.randint(0, dim - distortion_size + 1, (count, nb_distortions, 2))
    return {"which": which, "x": x, "y": y, "patches": patches, "corners": corners}


def render(layout, digits, patch_db, start, stop, dim):
    """Canvases ``start:stop`` of a layout, as (stop - start, dim * dim) float32."""
    import numpy as np
    n = stop - start
    rows = np.arange(n)[:, None, None]
    canvas = np.zeros((n, dim, dim), np.float32)
    span = np.arange(DIGIT)
    for i in range(layout["x"].shape[1]):
        y = layout["y"][start:stop, i][:, None, None]
        x = layout["x"][start:stop, i][:, None, None]
        canvas[rows, y + span[None, :, None], x + span[None, None, :]] = \
            digits[layout["which"][start:stop, i]]
    lay_patches(canvas, patch_db[layout["patches"][start:stop]], layout["corners"][start:stop])
    return canvas.reshape(n, dim * dim)


def boxes(layout):
    """Each digit's [x0, y0, x1, y1) box, (N, nb_digits, 4) int32."""
    import numpy as np
    x, y = layout["x"], layout["y"]
    return np.stack([x, y, x + DIGIT, y + DIGIT], axis=-1).astype(np.int32)


# ---- Main ----

def main(nb_digits=3, output_dim=100, nb_distortions=8, distortion_size=CHAPTER_SIZE,
         train_size=60000, valid_size=10000, test_size=10000, seed=1234,
         mnist=None, output=None, compress=False, mosaic=None):
    """Write the dataset file (and the mosaic); return the output path."""
    import time
    import numpy as np
    from stn import data
    output = output or default_output(nb_digits, nb_distortions, distortion_size)
    data.check_writable(output)
    if mosaic:
        data.check_writable(mosaic, "--mosaic")
    start_time = time.time()
    rng = np.random.RandomState(seed)

    splits = data.load_mnist(mnist)
    X_train, y_train, X_valid, y_valid, X_test, y_test = splits
    images = {"train": (X_train[:, 0], y_train), "valid": (X_valid[:, 0], y_valid),
              "test": (X_test[:, 0], y_test)}
    sizes = {"train": train_size, "valid": valid_size, "test": test_size}
    patch_db = patch_database(rng, splits, distortion_size)
    layouts = {split: draw_layout(rng, sizes[split], len(images[split][0]), nb_digits,
                                  output_dim, nb_distortions, distortion_size)
               for split in data.SPLITS}

    progress = cli.Progress(sum(sizes.values()), "canvases")
    with data.NpzWriter(output, compress) as npz:
        for split in data.SPLITS:
            digits, labels = images[split]
            layout = layouts[split]
            shape = (sizes[split], output_dim * output_dim)
            with npz.stream("X_" + split, shape, np.float32) as write:
                for start in range(0, sizes[split], CHUNK):
                    stop = min(start + CHUNK, sizes[split])
                    write(render(layout, digits, patch_db, start, stop, output_dim))
                    progress.update(stop - start)
            npz.add("y_" + split, labels[layout["which"]].astype(np.int32))
            npz.add("boxes_" + split, boxes(layout))
        for name, value in [("nb_digits", nb_digits), ("output_dim", output_dim),
                            ("nb_distortions", nb_distortions),
                            ("distortion_size", distortion_size), ("seed", seed)]:
            npz.add(name, np.int64(value))
    progress.close()
    print("Wrote %s in %.1fs: train %d, valid %d, test %d canvases of %dx%d, %d digit(s)"
          % (output, time.time() - start_time, train_size, valid_size, test_size,
             output_dim, output_dim, nb_digits))
    if mosaic:
        from stn import plots
        count = min(400, train_size)
        first = render(layouts["train"], images["train"][0], patch_db, 0, count,
                       output_dim)
        plots.save_mosaic(first.reshape(-1, output_dim, output_dim), 20, mosaic)
        print("Wrote the first %d training canvases to %s" % (count, mosaic))
    return output


if __name__ == "__main__":
    parser = build_parser()
    args = parser.parse_args()
    check_settings(parser, args)
    cli.run(main, args)
