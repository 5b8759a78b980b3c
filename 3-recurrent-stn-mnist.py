"""Recurrent spatial transformer: a GRU reads a canvas of three digits, one crop per step.

After Sønderby et al. 2015, "Recurrent Spatial Transformer Networks".  A
convolutional network looks at the 100x100 canvas once; a GRU, fed those
features at every step, emits one affine transform per digit; each transform
crops one digit (33x33 with downsample 3), and one MNIST CNN, shared by all
steps, reads every crop.  Only the digit labels, left to right, are given.

Reads mnist_sequence3_sample_8distortions_9x9.npz (create it with
`python create_mnist_sequence.py --nb_digits 3`) and writes res_test_3.npz and a
checkpoint after every epoch.  The flags, and the recipe they default to, are
2-stn-cnn-mnist.py's (adam at lr 0.0003 on minibatches of 32 with an epsilon of
1e-4, the canvas blurred by sigma 1.5 pixels on its way into the sampler, the
transforms starting as a centred crop of 0.65 of the canvas, dropout 0.25, from
epoch 6 the two rates, the sharp crop and the jitter, the learning rate divided
by 1.5 at epochs 11, 15, 19, ..., validation and test on a moving average of
the weights), except that this script has no --branches and no -classdropout
(its localization network has no dense layer for dropout to act on, so its
dropout acts in the classifier only), and that its jitter is in the canvas's
units (-jitter 0.04; -cropjitter is untried here).  The chapter's own settings
are one command away:

    python 3-recurrent-stn-mnist.py -optimizer rmsprop -lr 0.0005 --batch-size 100 \\
        -epsilon 1e-6 -blur 0 -initzoom 1 -nodecay 30 -decayinterval 10 \\
        -dropout 0 -classlr 1 -loclr 1 --no-sharp -jitter 0 -ema 0

Train, then draw its crops:

    python 3-recurrent-stn-mnist.py
    python plot_crops.py res_test_3.npz

Each epoch prints the per-digit accuracy (the chapter's "Acc") and the sequence
accuracy (all three digits right).  It reads canvases of N digits with N steps
(the chapter's: 3).  With `--seed 1 --epochs 25` it read 98.55% of the test
digits at epoch 23, the crops zoomed to 0.48 across and 0.46 down (1 h 50 min
on 2 cores shared with another run); the measurements: docs/recurrent.md.
"""
from stn import cli, training

DEFAULT_DATA = "mnist_sequence3_sample_8distortions_9x9.npz"
CREATE_DATA = "python create_mnist_sequence.py --nb_digits 3"
GRU_UNITS = 256


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="dataset .npz (default: %(default)s)")
    training.add_training_flags(parser, "res_test_3.npz", training.RECIPE)
    return parser


def build_model(dim, num_steps, downsample, sh_drp, initzoom=1.0, jitter=0.0,
                cropjitter=False, blur=0.0, sharp=False, supersample=1):
    """The chapter's recurrent network for ``num_steps`` digits per canvas;
    returns (l_in, l_out, l_A_net, l_transform).  ``l_out`` and ``l_A_net`` give
    one row per (canvas, step), canvas-major: canvas 0 steps 0, 1, 2, canvas 1...
    The transforms start as a centred crop of ``initzoom`` of the canvas (1:
    the identity); while training, ``jitter`` > 0 (a float, or a shared
    scalar) adds Gaussian noise of that sigma to the transforms the crops are
    taken with (``stn.layers.jittered``, which gives the units: the
    canvas's, or with ``cropjitter`` the crop's); ``blur``, ``sharp`` and
    ``supersample`` are the TransformerLayer's.
    """
    import lasagne
    import numpy as np
    import mnist_cnn
    from lasagne.layers import (DenseLayer, DimshuffleLayer, GRULayer, InputLayer,
                                MaxPool2DLayer, ReshapeLayer, TransformerLayer)
    from stn.layers import Repeat, jittered
    l_in = InputLayer((None, dim, dim))
    l_dim = DimshuffleLayer(l_in, (0, 'x', 1, 2))

    # Localization: the convolutional trunk sees the canvas once, at half
    # resolution; the GRU gets its features at every step and emits, through
    # A_net, one transform per step (starting as a centred crop of initzoom).
    l_pool0_loc = MaxPool2DLayer(l_dim, pool_size=(2, 2))
    l_conv_loc = mnist_cnn.model(l_pool0_loc, input_dim=dim, p=sh_drp, num_units=0)
    l_repeat_loc = Repeat(l_conv_loc, n=num_steps)
    l_gru = GRULayer(l_repeat_loc, num_units=GRU_UNITS, unroll_scan=True,
                     learn_init=False)  # Lasagne master's default; 0.1's is True
    l_shp = ReshapeLayer(l_gru, (-1, GRU_UNITS))
    start = np.array([[initzoom, 0, 0], [0, initzoom, 0]], dtype="float32").flatten()
    l_A_net = DenseLayer(l_shp, num_units=6, name='A_net', b=start,
                         W=lasagne.init.Constant(0.0),
                         nonlinearity=lasagne.nonlinearities.identity)

    # Each step's transform samples its own copy of the canvas, in the same
    # canvas-major order as the GRU's reshaped output.
    l_dim_repeat = ReshapeLayer(Repeat(l_dim, n=num_steps), (-1, 1, dim, dim))
    (l_theta,) = jittered([l_A_net], jitter, cropjitter)
    l_transform = TransformerLayer(l_dim_repeat, l_theta, downsample_factor=downsample,
                                   blur=blur, sharp=sharp, supersample=supersample)
    l_out = mnist_cnn.model(l_transform, input_dim=dim, p=sh_drp, num_units=400)
    return l_in, l_out, l_A_net, l_transform


def main(**settings):
    """Train; write the results file and its checkpoint; return the results arrays.

    ``settings`` are the flags by name (data=..., output=..., lr=0.0003, ...;
    see ``--help``); those left out take their defaults.
    """
    return training.run_script("3-recurrent-stn-mnist.py", settings, build_parser(),
                               CREATE_DATA, None, build_model, (), training.RECIPE)


if __name__ == "__main__":
    cli.run(main, cli.given(build_parser()))
