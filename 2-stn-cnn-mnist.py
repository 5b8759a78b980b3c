"""Spatial transformer network on cluttered MNIST: locate the digit, crop it, read it.

A localization network looks at the 100x100 canvas and predicts an affine
transform; a TransformerLayer samples the canvas through it (a crop, zoomed,
downsampled 3x to 33x33), and the chapter's MNIST CNN classifies the crop.  The
whole network learns from the labels alone.

On the 100x100 canvases the chapter's settings (rmsprop, lr 0.0005, minibatches
of 100, the transform starting at the identity) often leave the transform at
the identity, reading the small digit in the whole canvas.  The defaults here
are the recipe that localises (docs/localisation.md): adam at lr 0.0003 on
minibatches of 32 with an epsilon of 1e-4, the canvas blurred (sigma 1.5
pixels) on its way into the sampler, the transform starting as a centred crop
of 0.65 of the canvas, and the learning rate divided by 1.5 at epochs 11, 15,
19, ...  From epoch 6, once the transform has found the digit, the classifier
learns three times faster and reads the unblurred crop, and the localization
network ten times slower, and the transform the crop is taken with gets a
little Gaussian noise while training, in the crop's own units (sigma 0.08 of
its half-side on the shifts, of its side on the scales), and each training
canvas gets 4 more clutter patches, new every batch; dropout 0.25, ramped up over
epochs 0-4, acts in the classifier only; validation and test read a moving
average of the weights (decay 0.999).  The chapter's own settings are
one command away:

    python 2-stn-cnn-mnist.py -optimizer rmsprop -lr 0.0005 --batch-size 100 \\
        -epsilon 1e-6 -blur 0 -initzoom 1 -nodecay 30 -decayinterval 10 \\
        -dropout 0 -classlr 1 -loclr 1 --no-sharp --no-classdropout -jitter 0 \\
        -clutter 0 -ema 0

Reads mnist_sequence1_sample_8distortions_9x9.npz (create it with
`python create_mnist_sequence.py --nb_digits 1`) and writes res_test_2.npz (the
last test batch, its transforms and predictions, the run's settings and
history; see README.md) and a checkpoint after every epoch:

    python 2-stn-cnn-mnist.py
    python 2-stn-cnn-mnist.py --resume res_test_2.ckpt.npz   # after Ctrl-C
    python plot_crops.py res_test_2.npz
    python 2-stn-cnn-mnist.py --branches 2     # two transformers in parallel

See README.md for the measured accuracy and time on a 2-core machine, and
docs/localisation.md for how the recipe was found.
"""
import argparse

from stn import cli, training

DEFAULT_DATA = "mnist_sequence1_sample_8distortions_9x9.npz"
CREATE_DATA = "python create_mnist_sequence.py --nb_digits 1"
# The shared recipe, with its dropout in the classifier only, its jitter in
# the crop's units and fresh clutter on the training canvases
# (docs/localisation.md, "The defaults with adam's epsilon at 1e-4", "The
# jitter in the crop's units" and "Fresh clutter every batch", seeds 1-3 each).
RECIPE = dict(training.RECIPE, classdropout=True, jitter=0.08, cropjitter=True, clutter=4)
# This script's flags that do nothing while their partner flag is 0 or off
# (run_script refuses them typed alone): (flag, partner, why).
PARTNERS = [("classdropout", "dropout", "acts on the dropout, so it needs -dropout above 0")]


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="dataset .npz (default: %(default)s)")
    parser.add_argument("--branches", type=cli.positive_int, default=1,
                        help="parallel spatial transformers (Jaderberg et al.'s "
                             "2xST-CNN): each has its own A_net on the shared "
                             "localization features and crops the canvas, and the "
                             "classifier reads the crops as channels "
                             "(default: %(default)s, the chapter's)")
    parser.add_argument("-classdropout", "--classdropout",
                        action=argparse.BooleanOptionalAction, default=False,
                        help="-dropout in the classifier only, not before the "
                             "localization network's dense layer; --no-classdropout: "
                             "in both networks, the chapter's (default: %(default)s)")
    training.add_training_flags(parser, "res_test_2.npz", RECIPE)
    return parser


def build_model(dim, num_steps, downsample, sh_drp, initzoom=1.0, jitter=0.0,
                cropjitter=False, blur=0.0, sharp=False, supersample=1, branches=1,
                classdropout=False):
    """The chapter's network for ``dim`` x ``dim`` canvases holding ``num_steps``
    digit (one, here); returns (l_in, l_out, l_A_net, l_transform).  The
    transform starts as a centred crop of ``initzoom`` of the canvas (1: the
    identity); while training, ``jitter`` > 0 (a float, or a shared scalar)
    adds Gaussian noise of that sigma to the transform the crop is taken with
    (``stn.layers.jittered``, which gives the units: the canvas's, or with
    ``cropjitter`` the crop's); ``blur``, ``sharp`` and ``supersample`` are
    the TransformerLayer's.  With ``branches`` > 1,
    l_A_net gives the branches' transforms side by side (batch, 6 * branches)
    and l_transform their crops as channels.  With ``classdropout`` the
    dropout ``sh_drp`` is the classifier's only."""
    import lasagne
    import numpy as np
    import mnist_cnn
    from lasagne.layers import (ConcatLayer, DenseLayer, DimshuffleLayer, InputLayer,
                                MaxPool2DLayer, TransformerLayer)
    from stn.layers import jittered
    l_in = InputLayer((None, dim, dim))
    l_dim = DimshuffleLayer(l_in, (0, 'x', 1, 2))

    # Localization network: it sees the canvas at half resolution and outputs
    # the 6 affine parameters, starting from a centred crop (W = 0, b = the
    # identity scaled by initzoom).
    l_pool0_loc = MaxPool2DLayer(l_dim, pool_size=(2, 2))
    l_dense_loc = mnist_cnn.model(l_pool0_loc, input_dim=dim,
                                  p=0.0 if classdropout else sh_drp, num_classes=0)
    start = np.array([[initzoom, 0, 0], [0, initzoom, 0]], dtype="float32").flatten()
    heads = [DenseLayer(l_dense_loc, num_units=6, b=start,
                        name='A_net' if branches == 1 else 'A_net%d' % k,
                        W=lasagne.init.Constant(0.0),
                        nonlinearity=lasagne.nonlinearities.identity)
             for k in range(branches)]

    # The transformer samples the full-resolution canvas through the predicted
    # transform: a (dim / downsample)-pixel crop for the classifier.  Parallel
    # branches start alike; the classifier's different weights for each crop
    # channel pull them apart.  The jitter perturbs the crop in training only.
    crops = [TransformerLayer(l_dim, l_theta, downsample_factor=downsample,
                              blur=blur, sharp=sharp, supersample=supersample)
             for l_theta in jittered(heads, jitter, cropjitter)]
    if branches == 1:
        l_A_net, l_transform = heads[0], crops[0]
    else:
        l_A_net, l_transform = ConcatLayer(heads, axis=1), ConcatLayer(crops, axis=1)
    l_out = mnist_cnn.model(l_transform, input_dim=dim, p=sh_drp, num_units=400)
    return l_in, l_out, l_A_net, l_transform


def main(**settings):
    """Train; write the results file and its checkpoint; return the results arrays.

    ``settings`` are the flags by name (data=..., output=..., lr=0.0003,
    branches=1, ...; see ``--help``); those left out take their defaults.
    """
    return training.run_script("2-stn-cnn-mnist.py", settings, build_parser(),
                               CREATE_DATA, 1, build_model, ("branches", "classdropout"),
                               RECIPE, PARTNERS)


if __name__ == "__main__":
    cli.run(main, cli.given(build_parser()))
