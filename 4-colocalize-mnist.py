"""Unsupervised co-localisation: find the digit a set of canvases has in common.

The chapter's co-localisation section (after Jaderberg et al. 2015, "Spatial
Transformer Networks", appendix), as code.  Every canvas of the set holds the
same digit class among clutter, and no box is given.  A localization network
with a TransformerLayer cuts a 28x28 crop out of each canvas; an encoder, the
first layers of the classifier trained by 1-train-mnist.py (its two
convolution and pooling stages, loaded from model.npz and frozen), turns each
crop into 32 maps of 4x4 features, which keep where the strokes are.
Training minimises a triplet hinge loss over random pairs (n, m) of canvases:

    max(0, |e(crop n) - e(crop m)|^2 - |e(crop n) - e(random crop of n)|^2 + margin)

on L2-normalised encodings: the crops of two canvases must look more alike to
the encoder than a crop and a random 28x28 window of its own canvas.  The
crop keeps the digit's size (one canvas pixel per crop pixel) and moves, always
inside the canvas.

Blank background is common to all canvases too, and on cluttered canvases a
random window nearly always holds some clutter: with the loss above alone,
every crop settles on the same empty corner.  So, by default, a second term of
the same form takes an empty crop as the negative, and the crops must be less
like an empty crop than like each other (--no-blank-negative drops it).  What is
left for the canvases to share is the digit.

Quality is the fraction of test canvases whose crop overlaps the digit's true
box (from create_mnist_sequence.py) with IoU > 0.5; the boxes are used for
that measure only.  Reads model.npz and a 1-digit dataset of 60x60 canvases
(any 1-digit dataset with --data), writes a picture:

    python create_mnist_sequence.py --nb_digits 1 --output_dim 60 --train_size 40000 \\
        --valid_size 2000 --test_size 2000 --output mnist_sequence1_60x60.npz
    python 4-colocalize-mnist.py --digit 3     # writes colocalize.png

Expect 86% of the test canvases of 3s at IoU > 0.5 after the 20 epochs, in
under 2 minutes on 2 cores; 8 classes of 10 reach 86-99.5% (docs/beyond.md).
"""
from stn import cli

# 60x60 canvases (Jaderberg et al.'s size): on the chapter's 100x100 ones most
# crops start on blank background, far from their digit, where they get no gradient.
DEFAULT_DATA = "mnist_sequence1_60x60.npz"
CREATE_DATA = ("python create_mnist_sequence.py --nb_digits 1 --output_dim 60 "
               "--train_size 40000 --valid_size 2000 --test_size 2000 "
               "--output mnist_sequence1_60x60.npz")
CROP = 28           # crop side: the encoder's input, an MNIST digit's size
IOU_THRESHOLD = 0.5


def build_parser():
    import argparse
    parser = cli.parser(__doc__)
    add = parser.add_argument
    cli.add_cnn_flags(parser, DEFAULT_DATA)
    add("--digit", type=int, choices=range(10), default=3, metavar="{0..9}",
        help="the class whose canvases are co-localised (default: %(default)s)")
    add("--epochs", type=cli.positive_int, default=20,
        help="passes over that class's training canvases (default: %(default)s)")
    add("--batch-size", type=cli.positive_int, default=64,
        help="canvases per step, paired at random (default: %(default)s)")
    add("--lr", type=cli.positive_float, default=0.001,
        help="adam learning rate (default: %(default)s)")
    add("--margin", type=cli.positive_float, default=0.5,
        help="hinge margin, in squared distance of unit vectors (default: %(default)s)")
    add("--blank-negative", action=argparse.BooleanOptionalAction, default=True,
        help="add the hinge term whose negative is an empty crop (default: on)")
    add("--train-size", type=cli.positive_int, default=None,
        help="use the first N canvases of the class only (default: all)")
    add("--seed", type=int, default=1234, help="random seed (default: %(default)s)")
    add("--n", type=cli.positive_int, default=8,
        help="test canvases drawn (default: %(default)s)")
    add("--output", default="colocalize.png", help="PNG to write (default: %(default)s)")
    return parser


# ---- Boxes ----

def crop_boxes(A, dim, out_size):
    """Boxes [x0, y0, x1, y1) of the crops that 2x3 transforms ``A`` (N, 6)
    take from dim x dim canvases, in the digit boxes' convention (pixel indices,
    x1 one past the last): x0 is the first sampled pixel centre of the
    TransformerLayer's grid, x1 the last plus one sample spacing."""
    import numpy as np
    theta = np.asarray(A, np.float64).reshape(-1, 2, 3)
    corners = np.array([[-1, -1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]], np.float64).T
    x, y = (theta.dot(corners).transpose(1, 0, 2) + 1) / 2 * (dim - 1)
    step_x = (x.max(1) - x.min(1)) / (out_size - 1)
    step_y = (y.max(1) - y.min(1)) / (out_size - 1)
    return np.stack([x.min(1), y.min(1), x.max(1) + step_x, y.max(1) + step_y], axis=1)


def iou(a, b):
    """Intersection over union of boxes [x0, y0, x1, y1), row by row."""
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = width * height
    area = lambda box: (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    return inter / (area(a) + area(b) - inter)


# ---- Model ----

def attention_scale(dim):
    """The theta scale at which a 28-sample crop steps one canvas pixel."""
    return (CROP - 1.0) / (dim - 1)


def random_thetas(rng, n, scale):
    """``n`` transforms of crops of the given scale, placed uniformly inside
    the canvas: the random windows of the loss."""
    import numpy as np
    shift = rng.uniform(-(1 - scale), 1 - scale, (n, 2))
    theta = np.zeros((n, 6), np.float32)
    theta[:, 0] = theta[:, 4] = scale
    theta[:, 2], theta[:, 5] = shift[:, 0], shift[:, 1]
    return theta


def place(scale, shift):
    """Theano: the transforms [s, 0, (1 - s) x, 0, s, (1 - s) y] of crops of
    scale s whose shifts (x, y) (N, 2) in [-1, 1] span the canvas."""
    import numpy as np
    import theano.tensor as T
    scale = T.ones_like(shift[:, 0]) * np.float32(scale)
    zero = T.zeros_like(scale)
    return T.stack([scale, zero, (1 - scale) * shift[:, 0], zero, scale,
                    (1 - scale) * shift[:, 1]], axis=1)


def build_model(dim, weights):
    """The localization network, the two crops and the frozen encoder.

    Returns a dict of layers: ``in`` (canvases), ``A_net`` (their transforms),
    ``crop`` (the learned 28x28 crops), ``random_theta`` (an input of
    transforms) and ``random_crop`` (its crops), ``encoder_in`` and ``encoder``
    (28x28 images -> 512 features, holding the trained weights).
    """
    import lasagne
    import theano.tensor as T
    import mnist_cnn
    from lasagne.layers import (DenseLayer, DimshuffleLayer, FlattenLayer, InputLayer,
                                MaxPool2DLayer, TransformerLayer)

    class PlaceLayer(lasagne.layers.Layer):
        """Two numbers per canvas -> the transform of a crop of the given
        scale, placed anywhere inside the canvas."""

        def __init__(self, incoming, scale, **kwargs):
            super(PlaceLayer, self).__init__(incoming, **kwargs)
            self.scale = scale

        def get_output_shape_for(self, input_shape):
            return (input_shape[0], 6)

        def get_output_for(self, input, **kwargs):
            return place(self.scale, T.tanh(input))

    layers = {"in": InputLayer((None, dim, dim))}
    l_dim = DimshuffleLayer(layers["in"], (0, 'x', 1, 2))

    # Localization network: as the STN's, ending in the crop's place, near
    # the centre of the canvas at first.  Its last weights start small and
    # random rather than at zero: from one place shared by every canvas, the
    # gradients of the pairs cancel out and, for some digits, the crops never
    # leave the centre.
    l_loc = mnist_cnn.model(MaxPool2DLayer(l_dim, pool_size=(2, 2)), input_dim=dim,
                            p=0.0, num_classes=0)
    l_where = DenseLayer(l_loc, num_units=2, W=lasagne.init.Normal(0.01),
                         b=lasagne.init.Constant(0.0),
                         nonlinearity=lasagne.nonlinearities.identity)
    layers["A_net"] = PlaceLayer(l_where, attention_scale(dim), name="A_net")

    # Both crops sample the canvas the same way: 28x28.
    downsample = dim / float(CROP)
    layers["crop"] = TransformerLayer(l_dim, layers["A_net"], downsample_factor=downsample)
    layers["random_theta"] = InputLayer((None, 6))
    layers["random_crop"] = TransformerLayer(l_dim, layers["random_theta"],
                                             downsample_factor=downsample)

    # The encoder: the trained classifier's convolutional stages, frozen.  Its
    # 256-unit hidden layer was tried too: it keeps less of where the strokes
    # are, and the crops settled off their digits (docs/beyond.md).
    layers["encoder_in"] = InputLayer((None, 1, CROP, CROP))
    layers["encoder"] = FlattenLayer(mnist_cnn.model(layers["encoder_in"], p=0.0,
                                                     num_units=0))
    lasagne.layers.set_all_param_values(layers["encoder"], weights[:4])
    return layers


def triplet_hinge(e_n, e_m, e_r, margin):
    """Mean of max(0, |e_n - e_m|^2 - |e_n - e_r|^2 + margin) over the rows."""
    import theano.tensor as T
    near = T.sqr(e_n - e_m).sum(axis=1)
    far = T.sqr(e_n - e_r).sum(axis=1)
    return T.maximum(0, near - far + margin).mean()


def build_functions(layers, learning_rate, margin, blank_negative=True):
    """``train_fn(X, shifts) -> loss`` (one adam step on the localization
    network only; ``shifts`` (N, 2) uniform in [-1, 1] place each canvas's
    random window) and ``look_fn(X) -> (thetas, crops)``.  With
    ``blank_negative`` the loss has a second term whose negative is an empty
    crop."""
    import lasagne
    import theano.tensor as T
    from stn import compiled
    X = layers["in"].input_var
    shifts = T.matrix("shifts")
    A, crop = lasagne.layers.get_output([layers["A_net"], layers["crop"]],
                                        deterministic=True)
    # The random window of each canvas: the crop's size, anywhere.
    random_theta = place(layers["A_net"].scale, shifts)
    random_crop = lasagne.layers.get_output(
        layers["random_crop"], {layers["in"]: X, layers["random_theta"]: random_theta})

    def encode(images):
        e = lasagne.layers.get_output(layers["encoder"], {layers["encoder_in"]: images},
                                      deterministic=True)
        return e / T.sqrt(T.sqr(e).sum(axis=1, keepdims=True) + 1e-8)

    e_n, e_r = encode(crop), encode(random_crop)
    # Random pairs: the minibatch is shuffled, so each canvas is paired with
    # the next one in it.
    e_m = T.roll(e_n, 1, axis=0)
    loss = triplet_hinge(e_n, e_m, e_r, margin)
    if blank_negative:
        e_blank = T.addbroadcast(encode(T.zeros((1, 1, CROP, CROP), crop.dtype)), 0)
        loss += triplet_hinge(e_n, e_m, e_blank, margin)
    params = lasagne.layers.get_all_params(layers["A_net"], trainable=True)
    updates = lasagne.updates.adam(loss, params, learning_rate=learning_rate)
    train_fn, look_fn = compiled.functions([([X, shifts], loss, updates),
                                            ([X], [A, crop[:, 0]], None)])
    return train_fn, look_fn


# ---- Main ----

def main(model="model.npz", data=DEFAULT_DATA, digit=3, epochs=20, batch_size=64,
         lr=0.001, margin=0.5, blank_negative=True, train_size=None, seed=1234, n=8,
         output="colocalize.png"):
    """Train, print the localisation quality each epoch, draw; return a dict
    with the history and the final test IoUs."""
    import sys
    import time
    import numpy as np
    from stn import data as stn_data, plots, training
    from stn.errors import UserError

    stn_data.check_writable(output)
    weights = stn_data.load_cnn_weights(model)
    dataset = stn_data.load_sequences(data, nb_digits=1, hint=CREATE_DATA, boxes=True)
    dim = dataset["output_dim"]
    if dim < CROP + 2:
        raise UserError("%s: %dx%d canvases leave no room to move a %dx%d crop"
                        % (data, dim, dim, CROP, CROP))
    X_train = dataset["X_train"][dataset["y_train"][:, 0] == digit][:train_size]
    test = dataset["y_test"][:, 0] == digit
    X_test, boxes_test = dataset["X_test"][test], dataset["boxes_test"][test, 0]
    if len(X_train) < 2 or len(X_test) == 0:
        raise UserError("%s: too few canvases of digit %d to pair (%d train, %d test)"
                        % (data, digit, len(X_train), len(X_test)))
    batch_size = min(batch_size, len(X_train))
    print("digit %d: train X %s, test X %s (labels and boxes unused in training)"
          % (digit, X_train.shape, X_test.shape))

    import lasagne
    np.random.seed(seed)
    lasagne.random.set_rng(np.random.RandomState(seed))
    rng = np.random.RandomState(seed)
    print("Compiling the training function...")
    layers = build_model(dim, weights)
    train_fn, look_fn = build_functions(layers, lr, margin, blank_negative)
    scale = attention_scale(dim)

    def quality():
        A = np.concatenate([look_fn(X_test[idx])[0] for idx in
                            training.iterate_minibatches(len(X_test), 256)])
        ious = iou(crop_boxes(A, dim, CROP), boxes_test)
        return A, ious, float((ious > IOU_THRESHOLD).mean())

    chance = iou(crop_boxes(random_thetas(np.random.RandomState(0), len(X_test), scale),
                            dim, CROP), boxes_test)
    A, ious, start = quality()
    print("Before training: IoU > %.1f for %.4f of the test canvases (random "
          "windows: %.4f)" % (IOU_THRESHOLD, start, (chance > IOU_THRESHOLD).mean()))
    history = {"loss": [], "located": [], "seconds": []}
    with training.StopFlag() as stop:
        for epoch in range(epochs):
            start_time = time.time()
            losses = []
            progress = cli.Progress(len(X_train) // batch_size, "epoch %d" % epoch)
            for idx in training.iterate_minibatches(len(X_train), batch_size, rng):
                shifts = rng.uniform(-1, 1, (len(idx), 2)).astype(np.float32)
                losses.append(float(train_fn(X_train[idx], shifts)))
                progress.update()
                if stop.raised:
                    break
            progress.close()
            A, ious, located = quality()
            history["loss"].append(float(np.mean(losses)))
            history["located"].append(located)
            history["seconds"].append(time.time() - start_time)
            print("Epoch {} loss {:.4f}, IoU > {} on the test canvases: {:.4f} "
                  "({:.0f}s)".format(epoch, history["loss"][-1], IOU_THRESHOLD,
                                     located, history["seconds"][-1]))
            sys.stdout.flush()
            plots.learning_curves(
                {"history_epoch": np.arange(epoch + 1), "history_train_loss": history["loss"],
                 "history_located": history["located"], "history_seconds": history["seconds"],
                 "history_lr": np.full(epoch + 1, lr)}, plots.curves_path(output),
                "Learning curves of 4-colocalize-mnist.py (digit %d, seed %d, adam at lr %g)"
                % (digit, seed, lr))
            if stop.raised:
                print("Stopped by Ctrl-C: drawing the crops learned so far")
                break

    draw(output, X_test[:n], boxes_test[:n], look_fn(X_test[:n])[1], A[:n], ious[:n],
         dim, digit)
    print("Wrote %s" % output)
    return dict(history, ious=ious, A=A)


def draw(output, X, boxes, crops, A, ious, dim, digit):
    """Canvases with the digit's true box (yellow, dashed) and the learned crop
    (green when IoU > 0.5, red otherwise), each followed by its crop."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    from stn import plots
    columns = 4
    rows = -(-len(X) // columns)
    plt = plots.pyplot()
    fig, axes = plt.subplots(rows, 2 * columns, squeeze=False,
                             figsize=(2.2 * 2 * columns, 2.4 * rows), layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for k, (canvas, box, crop_box, crop, score) in enumerate(
            zip(X, boxes, crop_boxes(A, dim, CROP), crops, ious)):
        ax, ax_crop = axes[k // columns, 2 * (k % columns)], axes[k // columns,
                                                                  2 * (k % columns) + 1]
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
        ax.add_patch(Rectangle((box[0] - .5, box[1] - .5), box[2] - box[0], box[3] - box[1],
                               fill=False, color="yellow", ls="--"))
        ax.add_patch(Rectangle((crop_box[0] - .5, crop_box[1] - .5), crop_box[2] - crop_box[0],
                               crop_box[3] - crop_box[1], fill=False, lw=2,
                               color="lime" if score > IOU_THRESHOLD else "red"))
        ax.set_title("IoU %.2f" % score)
        ax_crop.imshow(crop, cmap="gray", vmin=0, vmax=1)
    fig.legend(handles=[Line2D([], [], color="yellow", ls="--", label="the digit's true box"),
                        Line2D([], [], color="lime", lw=2,
                               label="learned crop, IoU > %g" % IOU_THRESHOLD),
                        Line2D([], [], color="red", lw=2,
                               label="learned crop, IoU <= %g" % IOU_THRESHOLD)],
               loc="outside lower center", ncol=3, facecolor="lightgray")
    fig.suptitle("Co-localisation of the digit %d: each test canvas, then its crop, learned "
                 "from canvases of that digit without their boxes" % digit)
    plots.save_figure(fig, output)


if __name__ == "__main__":
    cli.run(main, build_parser().parse_args())
