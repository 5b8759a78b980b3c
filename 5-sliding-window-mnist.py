"""Region-based localisation: the trained MNIST CNN slid over the whole canvas.

The chapter's region-based section, as code.  A classifier trained on 28x28
digits can look at every 28x28 window of a canvas, but running it window by
window repeats most of the work.  Rewritten as a fully convolutional network it
does all windows in one pass: the first dense layer (512 -> 256, over the
32x4x4 feature map) becomes a 4x4 convolution with the same weights, the
second (256 -> 10) a 1x1 convolution, and the softmax runs over the channels
at every position.  The two 2x2 poolings make the stride 4: on a 100x100
canvas the output is a 19x19 map of class probabilities, the one at (i, j)
being exactly the classifier's answer for the window at rows 4i..4i+27,
columns 4j..4j+27.

Detection: the position and class with the highest probability over the map.
It counts as right when that class is the label and the window's centre lies
inside the digit's box.  Reads model.npz (from 1-train-mnist.py) and the
1-digit dataset's test canvases with their boxes; writes a picture of score
maps and detections:

    python 5-sliding-window-mnist.py     # writes sliding_window.png

It also times the convolutional pass against the window-by-window one and
checks that both give the same maps.  Measured figures: docs/beyond.md.
"""
import time

from stn import cli

DEFAULT_DATA = "mnist_sequence1_sample_8distortions_9x9.npz"
CREATE_DATA = "python create_mnist_sequence.py --nb_digits 1"
WINDOW = 28   # the classifier's input side
STRIDE = 4    # two 2x2 poolings: one output position every 4 canvas pixels


def build_parser():
    parser = cli.parser(__doc__)
    add = parser.add_argument
    cli.add_cnn_flags(parser, DEFAULT_DATA)
    add("--test-size", type=cli.positive_int, default=None,
        help="evaluate the first N test canvases only (default: all)")
    add("--compare", type=cli.positive_int, default=20,
        help="canvases timed and checked window by window (default: %(default)s)")
    add("--batch-size", type=cli.positive_int, default=100,
        help="canvases per pass (default: %(default)s)")
    add("--n", type=cli.positive_int, default=6,
        help="canvases drawn (default: %(default)s)")
    add("--output", default="sliding_window.png",
        help="PNG to write (default: %(default)s)")
    return parser


# ---- The two networks, with the same weights ----

def dense_to_conv(W, channels, rows, cols):
    """The weights (channels*rows*cols, units) of a dense layer reading a
    flattened (channels, rows, cols) map, as (units, channels, rows, cols)
    filters of a Conv2DLayer that computes the same sums.  Lasagne 0.1
    convolves (it flips the filters), so they are stored flipped."""
    return W.T.reshape(W.shape[1], channels, rows, cols)[:, :, ::-1, ::-1].copy()


def build_networks(weights, dim):
    """The chapter's classifier on 28x28 windows and its fully convolutional
    twin on dim x dim canvases, both holding ``weights`` (model.npz order).

    Returns (l_dense_in, l_dense_out, l_conv_in, l_conv_out): l_dense_out gives
    (batch, 10) probabilities, l_conv_out (batch, 10, P, P) with
    P = (dim - 28) // 4 + 1.
    """
    import lasagne
    import theano.tensor as T
    import mnist_cnn
    from lasagne.layers import Conv2DLayer, DenseLayer, InputLayer

    l_dense_in = InputLayer((None, 1, WINDOW, WINDOW))
    l_dense_out = mnist_cnn.model(l_dense_in, p=0.0)
    lasagne.layers.set_all_param_values(l_dense_out, weights)

    l_conv_in = InputLayer((None, 1, dim, dim))
    trunk = mnist_cnn.model(l_conv_in, input_dim=dim, num_units=0)
    # The dense layer reads the trunk's output on a 28x28 window: 32 x 4 x 4.
    W1, b1, W2, b2 = weights[4:]
    first_dense = next(layer for layer in lasagne.layers.get_all_layers(l_dense_out)
                       if isinstance(layer, DenseLayer))
    channels, rows, cols = first_dense.input_shape[1:]
    l_hidden = Conv2DLayer(trunk, num_filters=len(b1), filter_size=(rows, cols),
                           W=dense_to_conv(W1, channels, rows, cols), b=b1,
                           nonlinearity=lasagne.nonlinearities.rectify)

    def channel_softmax(x):
        """The dense network's softmax, over the classes at every position."""
        e = T.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    l_conv_out = Conv2DLayer(l_hidden, num_filters=len(b2), filter_size=(1, 1),
                             W=dense_to_conv(W2, len(b1), 1, 1), b=b2,
                             nonlinearity=channel_softmax)
    lasagne.layers.set_all_param_values(trunk, weights[:4])
    return l_dense_in, l_dense_out, l_conv_in, l_conv_out


def compile_networks(weights, dim):
    """Compiled ``score_maps(X (N,1,dim,dim)) -> (N,10,P,P)`` and
    ``classify(windows (M,1,28,28)) -> (M,10)``."""
    import lasagne
    import theano
    l_dense_in, l_dense_out, l_conv_in, l_conv_out = build_networks(weights, dim)
    classify = theano.function([l_dense_in.input_var], lasagne.layers.get_output(
        l_dense_out, deterministic=True))
    score_maps = theano.function([l_conv_in.input_var], lasagne.layers.get_output(
        l_conv_out, deterministic=True))
    return score_maps, classify


def windows(canvases, positions):
    """Every 28x28 window at stride 4 of (N, W, W) canvases: (N*P*P, 1, 28, 28),
    canvas-major, then row, then column."""
    import numpy as np
    n = len(canvases)
    out = np.empty((n, positions, positions, WINDOW, WINDOW), np.float32)
    for i in range(positions):
        for j in range(positions):
            out[:, i, j] = canvases[:, STRIDE * i:STRIDE * i + WINDOW,
                                    STRIDE * j:STRIDE * j + WINDOW]
    return out.reshape(-1, 1, WINDOW, WINDOW)


def detect(maps):
    """The best (class, row, column) of each (10, P, P) map, as three arrays."""
    import numpy as np
    n, classes, positions, _ = maps.shape
    best = maps.reshape(n, -1).argmax(axis=1)
    return np.unravel_index(best, (classes, positions, positions))


def window_centres(rows, cols):
    """Canvas coordinates (x, y) of the centres of the windows at map (rows, cols)."""
    return STRIDE * cols + WINDOW / 2.0, STRIDE * rows + WINDOW / 2.0


# ---- Main ----

def main(model="model.npz", data=DEFAULT_DATA, test_size=None, compare=20,
         batch_size=100, n=6, output="sliding_window.png"):
    """Evaluate, time, draw; return a dict of the measured figures."""
    import numpy as np
    from stn import data as stn_data
    from stn.errors import UserError
    from stn.training import iterate_minibatches

    stn_data.check_writable(output)
    weights = stn_data.load_cnn_weights(model)
    dataset = stn_data.load_sequences(data, nb_digits=1, hint=CREATE_DATA, boxes=True)
    X, y, boxes = dataset["X_test"], dataset["y_test"][:, 0], dataset["boxes_test"][:, 0]
    if test_size:
        X, y, boxes = X[:test_size], y[:test_size], boxes[:test_size]
    dim = dataset["output_dim"]
    if dim < WINDOW:
        raise UserError("%s: %dx%d canvases are smaller than a %dx%d window"
                        % (data, dim, dim, WINDOW, WINDOW))
    positions = (dim - WINDOW) // STRIDE + 1
    print("test  X %s  y %s; %dx%d windows at stride %d: a %dx%d map per canvas"
          % (X.shape, y.shape, WINDOW, WINDOW, STRIDE, positions, positions))
    print("Compiling the dense and the fully convolutional networks...")
    score_maps, classify = compile_networks(weights, dim)

    # Detection over the test canvases.
    maps = np.empty((len(X), 10, positions, positions), np.float32)
    progress = cli.Progress(-(-len(X) // batch_size), "score maps")
    start = time.time()
    for idx in iterate_minibatches(len(X), batch_size):
        maps[idx] = score_maps(X[idx][:, None])
        progress.update()
    progress.close()
    conv_rate = len(X) / (time.time() - start)
    classes, rows, cols = detect(maps)
    centre_x, centre_y = window_centres(rows, cols)
    located = ((boxes[:, 0] <= centre_x) & (centre_x < boxes[:, 2])
               & (boxes[:, 1] <= centre_y) & (centre_y < boxes[:, 3]))
    correct = classes == y

    # The same maps, window by window, on the first canvases: time and check.
    few = X[:compare]
    start = time.time()
    slid = np.concatenate([classify(batch) for batch in np.array_split(
        windows(few, positions), max(1, len(few) * positions ** 2 // 2000))])
    window_rate = len(few) / (time.time() - start)
    slid = slid.reshape(len(few), positions, positions, 10).transpose(0, 3, 1, 2)
    max_difference = float(np.abs(slid - maps[:compare]).max())

    figures = dict(detection_accuracy=float((located & correct).mean()),
                   class_accuracy=float(correct.mean()),
                   location_accuracy=float(located.mean()),
                   conv_canvases_per_sec=conv_rate,
                   window_canvases_per_sec=window_rate,
                   max_difference=max_difference)
    print("Detection accuracy (right class, window centre in the digit box): %.4f"
          % figures["detection_accuracy"])
    print("  class right: %.4f   location right: %.4f"
          % (figures["class_accuracy"], figures["location_accuracy"]))
    print("Speed: %.0f canvases/s fully convolutional, %.0f canvases/s window by "
          "window (%d windows each): %.1fx" % (conv_rate, window_rate, positions ** 2,
                                               conv_rate / window_rate))
    print("Largest difference between the two maps: %.2g" % max_difference)

    draw(output, X[:n], y[:n], boxes[:n], maps[:n], classes[:n], rows[:n], cols[:n])
    print("Wrote %s" % output)
    return figures


def draw(output, X, y, boxes, maps, classes, rows, cols):
    """One row per canvas: the canvas with the digit's box (yellow) and the
    detected window (green if right, red if wrong), the map of the detected
    class's probability, and the map of the highest probability of any class."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    from stn import plots
    plt = plots.pyplot()
    fig, axes = plt.subplots(len(X), 3, squeeze=False, figsize=(8.6, 2.7 * len(X) + 0.8),
                             layout="constrained")
    for row, canvas, label, box, score, c, i, j in zip(axes, X, y, boxes, maps,
                                                       classes, rows, cols):
        centre_x, centre_y = window_centres(i, j)
        right = (c == label and box[0] <= centre_x < box[2] and box[1] <= centre_y < box[3])
        row[0].imshow(canvas, cmap="gray", vmin=0, vmax=1)
        row[0].add_patch(Rectangle((box[0] - .5, box[1] - .5), box[2] - box[0],
                                   box[3] - box[1], fill=False, color="yellow", ls="--"))
        row[0].add_patch(Rectangle((STRIDE * j - .5, STRIDE * i - .5), WINDOW, WINDOW,
                                   fill=False, color="lime" if right else "red", lw=2))
        row[0].set_title("label %d, detected %d" % (label, c))
        row[1].imshow(score[c], cmap="viridis", vmin=0, vmax=1)
        row[1].set_title("p(%d) per window" % c)
        row[2].imshow(score.max(axis=0), cmap="viridis", vmin=0, vmax=1)
        row[2].set_title("max p per window")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(axes[0, 1].images[0], ax=axes[:, 1:], shrink=0.5,
                 label="probability the CNN gives the window")
    fig.legend(handles=[Line2D([], [], color="yellow", ls="--", label="the digit's true box"),
                        Line2D([], [], color="lime", lw=2, label="detected window, right"),
                        Line2D([], [], color="red", lw=2, label="detected window, wrong")],
               loc="outside lower center", ncol=3, facecolor="lightgray")
    fig.suptitle("Sliding window: the MNIST CNN read at every %dx%d window, %d pixels apart;\n"
                 "the detection is the window and class of highest probability"
                 % (WINDOW, WINDOW, STRIDE))
    plots.save_figure(fig, output)


if __name__ == "__main__":
    cli.run(main, build_parser().parse_args())
