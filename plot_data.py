"""Draw the first canvases of a distorted-digit dataset, titled with their labels.

Reads a file written by create_mnist_sequence.py (or the chapter's own), prints
the shapes of its three splits and writes a PNG grid:

    python plot_data.py mnist_sequence1_sample_8distortions_9x9.npz
    python plot_data.py mnist_sequence3_sample_8distortions_9x9.npz --split test --n 20

The PNG goes to --output (default: the data file's name with _{split}.png).
"""
import os

from stn import cli


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("file", help="dataset .npz")
    parser.add_argument("--split", choices=("train", "valid", "test"), default="train",
                        help="which split to draw (default: %(default)s)")
    parser.add_argument("--n", type=cli.positive_int, default=10,
                        help="how many canvases (default: %(default)s)")
    parser.add_argument("--output", default=None,
                        help="PNG to write (default: FILE without .npz + _SPLIT.png)")
    parser.add_argument("--show", action="store_true",
                        help="also open a window (default: headless)")
    return parser


def main(file, split="train", n=10, output=None, show=False):
    """Print the shapes, write the grid; return the PNG path."""
    from stn import data, plots
    output = output or "%s_%s.png" % (os.path.splitext(file)[0], split)
    data.check_writable(output)
    dataset = data.load_sequences(file, hint="python create_mnist_sequence.py "
                                  "--nb_digits N --output %s" % file)
    for name in data.SPLITS:
        print("%-5s  X %s  y %s" % (name, dataset["X_" + name].shape,
                                    dataset["y_" + name].shape))
    X, y = dataset["X_" + split][:n], dataset["y_" + split][:n]
    if n > len(X):
        print("the %s split holds %d canvases: drawing them all" % (split, len(X)))
    plt = plots.pyplot(show)
    columns = min(len(X), 5)
    rows = -(-len(X) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, canvas, labels in zip(axes.flat, X, y):
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
        ax.set_title(" ".join(str(label) for label in labels))
    fig.suptitle("%s, %s split" % (os.path.basename(file), split))
    plots.save_figure(fig, output, show)
    print("Wrote %s" % output)
    return output


if __name__ == "__main__":
    cli.run(main, build_parser().parse_args())
