"""Training shared by the scripts: minibatches, and the STN scripts' epoch loop.

``build_functions`` compiles the chapter's training and evaluation functions
and ``fit`` runs its epoch loop: dropout ramp, learning-rate decay, early
stopping, the per-epoch line, the results file, and a checkpoint after every
epoch (and on Ctrl-C) that ``--resume`` continues exactly.
"""
import argparse
import functools
import json
from collections import OrderedDict
import math
import os
import signal
import sys
import time

import numpy as np

from . import backend, cli, clutter, compiled, data, localization
from .errors import UserError

LOG_EPSILON = 1e-5     # added to the softmax output before the log, as the chapter
CLIP_GRADIENT = 1.0    # each gradient element is clipped to +-1 ...
MAX_NORM = 5.0         # ... then all of them rescaled to a total norm of at most 5
DROPOUT_RAMP = 4       # dropout grows linearly to its value over epochs 0-4
MIN_CROP = 16          # the smallest crop the MNIST CNN (two 5x5 convs and pools) reads
MIN_CANVAS = 2 * MIN_CROP   # the localization network reads the canvas pooled 2x2
WATCH = 6              # the first test canvases whose transforms every epoch keeps
EPOCHS = 300           # the chapter's maximum number of epochs
# The flags of the transform and its sampling that both scripts pass to their
# build_model.
TRANSFORM_FLAGS = ("initzoom", "jitter", "cropjitter", "blur", "sharp", "supersample")
# The flags that -NAMEepoch can hold off until that epoch (``starts_later``).
LATER_FLAGS = ("jitter", "sharp")
BLUR_FLAGS = ("sharp", "blurepochs", "blurzoom")
# The STN scripts' defaults where they differ from the chapter's: the recipe
# that makes the transformer localise on 100x100 canvases and read what it
# finds.  Adam's epsilon raised from Lasagne's 1e-8, at which some seeds throw
# every crop off the canvas in their first epoch; dropout 0.25 against the
# classifier's overfitting; from epoch 6 the two rates, the sharp crop and the
# jitter; the weights' moving average for validation and test
# (docs/localisation.md, "A first epoch that goes dead", "Two rates: the
# classifier's and the localization network's", "The sharp crop with the
# localization network held", "Testing with a moving average of the weights"
# and "The jitter from epoch 6", seeds 1-3 each, on 2-stn-cnn-mnist.py;
# docs/recurrent.md, one seed, on the recurrent STN).  2-stn-cnn-mnist.py adds
# -classdropout and puts its jitter in the crop's units (its RECIPE: -jitter 0.08
# -cropjitter), so the -jitter 0.04 here is the recurrent STN's alone.
RECIPE = dict(optimizer="adam", lr=0.0003, batch_size=32, epsilon=1e-4, blur=1.5,
              initzoom=0.65, nodecay=10, decayinterval=2, dropout=0.25, ratesepoch=6,
              classlr=3.0, loclr=0.1, sharp=True, sharpepoch=6, jitter=0.04,
              jitterepoch=6, ema=0.999)
# The rate factors of the classifier and of the localization network.
RATE_FACTORS = ("classlr", "loclr")


class Interrupted(UserError):
    """Ctrl-C: the run stopped cleanly after a batch and can be resumed."""
    label = "stopped"
    exit_code = 130


def iterate_minibatches(n, batch_size, rng=None):
    """Yield index arrays of ``batch_size`` over ``range(n)``.

    With ``rng`` the order is shuffled and the last, incomplete batch dropped
    (every training step sees a full batch); without it every sample is
    visited in order, the last batch possibly smaller.
    """
    if rng is not None:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]
    else:
        for start in range(0, n, batch_size):
            yield np.arange(start, min(start + batch_size, n))


# ---- The STN scripts' flags and driver ----

def add_training_flags(parser, default_output, recipe=None):
    """The flags of both STN scripts, with the chapter's names and defaults,
    except those the script's ``recipe`` dict sets by name.  The defaults of
    all the parser's flags before the recipe, the chapter's, are kept in
    ``parser.chapter_defaults``, so a script adds its own flags first.
    Raises TypeError for a recipe key that names no flag."""
    add = parser.add_argument
    add("-lr", "--lr", type=cli.positive_float, default=0.0005,
        help="learning rate (default: %(default)s)")
    add("-loclr", "--loclr", type=cli.positive_float, default=1.0,
        help="from epoch -ratesepoch on, the localization network (A_net and the "
             "layers below it) learns at -lr times this (default: %(default)s)")
    add("-classlr", "--classlr", type=cli.positive_float, default=1.0,
        help="from epoch -ratesepoch on, the classifier learns at -lr times this "
             "(default: %(default)s)")
    add("-ratesepoch", "--ratesepoch", type=cli.nonnegative_int, default=0,
        help="the epoch from which -loclr and -classlr apply; before it the whole "
             "network learns at -lr, so that the transform can settle first "
             "(default: %(default)s)")
    add("-decayinterval", "--decayinterval", type=cli.positive_int, default=10,
        help="after -nodecay epochs the learning rate is divided by -decayfac every "
             "DECAYINTERVAL + 2 epochs, the chapter's schedule (default: %(default)s)")
    add("-decayfac", "--decayfac", type=cli.positive_float, default=1.5,
        help="the learning rate is divided by this at each decay (default: %(default)s)")
    add("-nodecay", "--nodecay", type=cli.nonnegative_int, default=30,
        help="epochs before the first decay (default: %(default)s)")
    add("-optimizer", "--optimizer", choices=("rmsprop", "adam"), default="rmsprop",
        help="update rule (default: %(default)s)")
    add("-epsilon", "--epsilon", type=cli.positive_float, default=None,
        help="the update rule's epsilon, a floor under the root of the "
             "squared-gradient average that each step is divided by: adam adds "
             "it to the root (a floor of E), Lasagne's rmsprop inside it (a floor "
             "of sqrt(E)); parameters whose gradients are smaller than the floor "
             "take damped steps; the default applies to either rule (default: "
             "%(default)s; None is Lasagne's, 1e-8 for adam, 1e-6 for rmsprop)")
    add("-ema", "--ema", type=cli.probability, default=0.0, metavar="DECAY",
        help="validate, test, and draw the transforms with an exponential moving "
             "average of the weights: each minibatch step weighs the new weights "
             "by 1 - DECAY (0.999: about the last 1000 steps); 'Acc Train' stays "
             "the running one of the trained weights; the checkpoint keeps both "
             "(0: off, the weights as trained, the chapter's) (default: %(default)s)")
    add("-l2", "--l2", type=cli.nonnegative_float, default=0.0, metavar="LAMBDA",
        help="add LAMBDA times the sum of the squared weights of the classifier "
             "(Lasagne's l2 penalty; not its biases, not the localization "
             "network) to the loss the gradients are taken of; an L2 term, not "
             "the decoupled weight decay of AdamW, so with adam its LAMBDA is not "
             "a weight-decay rate; the printed loss stays the cross-entropy "
             "(0: none, the chapter's) (default: %(default)s)")
    add("-dropout", "--dropout", type=cli.probability, default=0.0,
        help="dropout before the dense layers, ramped up over epochs 0-4 "
             "(default: %(default)s)")
    add("-downsample", "--downsample", type=cli.factor_pair, default=3.0,
        help="the crop is the canvas side divided by this; two numbers, rows,cols "
             "(e.g. 1.5,3), give a crop that is not square (default: %(default)s)")
    add("-initzoom", "--initzoom", type=cli.positive_float, default=1.0,
        help="the transform starts as a centred crop of this fraction of the "
             "canvas (1: the identity, the chapter's) (default: %(default)s)")
    add("-jitter", "--jitter", type=cli.nonnegative_float, default=0.0, metavar="SIGMA",
        help="while training, add Gaussian noise of this sigma to each of the "
             "transform's 6 parameters before the crop (Lasagne's "
             "GaussianNoiseLayer), so that the classifier learns from crops "
             "shifted, scaled and turned a little; in the transform's units, "
             "the canvas spanning -1 to 1: 0.04 shifts by 2 pixels of a "
             "100-pixel canvas and scales by 4%% of its side; validation and "
             "test crop without it; -cropjitter puts it in the crop's units "
             "(0: none, the chapter's) (default: %(default)s)")
    add("-cropjitter", "--cropjitter", action=argparse.BooleanOptionalAction,
        default=False,
        help="with -jitter, the noise is in the crop's own units instead of the "
             "canvas's: its SIGMA is of the crop's half-side on the shifts and of "
             "its side on the scales, whatever the zoom, so that zooming in does "
             "not make the same noise larger (the transform composed with a random "
             "one near the identity; --no-cropjitter: the canvas's units) "
             "(default: %(default)s)")
    add("-clutter", "--clutter", type=cli.nonnegative_int, default=0,
        help="from -jitterepoch on, while training, lay this many more clutter "
             "patches over each training canvas and its own clutter, new ones "
             "every batch, cut from MNIST's training and validation digits as "
             "create_mnist_sequence.py cuts the dataset's, of its "
             "--distortion_size, so that the classifier cannot learn the "
             "canvases' clutter by heart; the training accuracy is then read on "
             "these canvases, validation and test on the dataset's as they are "
             "(0: none, the chapter's; on a dataset made without clutter a "
             "script's default gives way to 0 and a value typed is refused) "
             "(default: %(default)s)")
    add("-jitterepoch", "--jitterepoch", type=cli.nonnegative_int, default=0,
        help="with -jitter or -clutter, the training noise starts at this epoch, "
             "once the transform has found the digit (0: from the start) "
             "(default: %(default)s)")
    add("-blur", "--blur", type=cli.nonnegative_float, default=0.0,
        help="blur the canvas on its way into the sampler with a fixed Gaussian "
             "of this sigma in pixels (0: none, the chapter's) (default: %(default)s)")
    add("-blurepochs", "--blurepochs", type=cli.nonnegative_int, default=0,
        help="the blur fades linearly to none over this many epochs (0: it "
             "stays) (default: %(default)s)")
    add("-blurzoom", "--blurzoom", action="store_true",
        help="the blur's sigma follows the transform: -blur times the mean zoom of "
             "the last epoch, as the spacing of the sampled points shrinks "
             "(default: off, a fixed sigma)")
    add("-sharp", "--sharp", action=argparse.BooleanOptionalAction, default=False,
        help="with -blur, the classifier reads the unblurred crop (from "
             "-sharpepoch on); the blur only smooths the transform's gradient; "
             "--no-sharp: the blurred crop, as the blur alone gives "
             "(default: %(default)s)")
    add("-sharpepoch", "--sharpepoch", type=cli.nonnegative_int, default=0,
        help="with -sharp, the classifier reads the blurred crop before this epoch "
             "and the sharp one from it on, once the transform has found the "
             "digit (0: from the start) (default: %(default)s)")
    add("-supersample", "--supersample", type=cli.positive_int, default=1,
        help="sample each crop pixel on an N x N grid and average it (1: one "
             "bilinear sample, the chapter's) (default: %(default)s)")
    add("--epochs", type=cli.positive_int, default=None,
        help="maximum number of epochs (default: %d, the chapter's; with --resume, "
             "the run's own, which this raises or lowers)" % EPOCHS)
    add("--patience", type=cli.positive_int, default=50,
        help="stop after this many epochs without a validation gain "
             "(default: %(default)s)")
    add("--batch-size", type=cli.positive_int, default=100,
        help="minibatch size (default: %(default)s)")
    add("--train-eval", choices=("running", "full"), default="running",
        help="'Acc Train' from the training batches as they are trained "
             "(running), or from re-evaluating the whole training set every "
             "epoch as the chapter does (full; slower) (default: %(default)s)")
    add("--train-size", type=cli.positive_int, default=None,
        help="train on the first N canvases only (default: all)")
    add("--seed", type=int, default=1234, help="random seed (default: %(default)s)")
    add("--output", default=default_output,
        help="results file (default: %(default)s)")
    add("--checkpoint", default=None,
        help="checkpoint written every epoch (default: OUTPUT with .ckpt.npz)")
    add("--resume", default=None, metavar="CHECKPOINT",
        help="continue the run saved in CHECKPOINT, with its settings")
    parser.chapter_defaults = vars(parser.parse_args([]))
    unknown = set(recipe or ()) - set(parser.chapter_defaults)
    if unknown:
        raise TypeError("recipe keys that name no flag: %s" % ", ".join(sorted(unknown)))
    parser.set_defaults(**(recipe or {}))


def default_settings(recipe=None):
    """The training flags' defaults, by their names (lr, decayinterval, ...),
    with a script's ``recipe`` over the chapter's."""
    parser = cli.parser(None)
    add_training_flags(parser, None, recipe)
    return vars(parser.parse_args([]))


def run_script(script, settings, parser, create_data, nb_digits, build_model,
               model_flags=(), recipe=None, partners=()):
    """What both STN scripts do around their network: check the settings, load
    the data, build the network with ``build_model(dim, num_steps, downsample,
    sh_drp, initzoom=, jitter=, cropjitter=, blur=, sharp=, supersample=,
    **model_settings)``, compile, train.  ``settings`` are the flags given, by name; ``parser`` the
    script's, whose defaults fill the rest; ``model_flags`` the names of its
    own flags that build_model takes; ``recipe`` its defaults that differ
    from the chapter's; ``partners`` its (flag, partner, why) rows: a flag
    typed that does nothing while its partner flag is 0 or off.  With
    ``settings["resume"]``, see ``resumed_settings``."""
    defaults = vars(parser.parse_args([]))
    typed = set(settings)
    unknown = typed - set(defaults)
    if unknown:
        raise TypeError("unknown settings: %s" % ", ".join(sorted(unknown)))
    if settings.get("resume"):
        # A checkpoint older than a flag ran as the chapter: its flags take the
        # chapter's defaults, not the script's recipe.
        settings = resumed_settings(settings, dict(defaults, **{
            key: parser.chapter_defaults[key] for key in recipe or ()}), script)
    else:
        settings = dict(defaults, **settings)
        settings["checkpoint"] = settings["checkpoint"] or checkpoint_path(settings["output"])
        # Absolute, so that --resume works from any directory.
        for name in ("data", "output", "checkpoint"):
            settings[name] = os.path.abspath(settings[name])
    # A flag typed that acts on another left at its default does nothing.
    needs = [(flag, settings["blur"], "acts on the blur, so it needs -blur above 0")
             for flag in BLUR_FLAGS]
    needs += [("sharpepoch", settings["sharp"],
               "the epoch from which -sharp applies, so it needs -sharp"),
              ("jitterepoch", settings["jitter"] or settings["clutter"],
               "the epoch from which -jitter and -clutter apply, so it needs one "
               "of them above 0"),
              ("cropjitter", settings["jitter"],
               "sets the units of -jitter's noise, so it needs -jitter above 0"),
              ("ratesepoch", two_rates(settings), "the epoch from which -loclr and "
               "-classlr apply, so it needs one of them other than 1")]
    needs += [(flag, settings[partner], why) for flag, partner, why in partners]
    for flag, partner, why in needs:
        if flag in typed and settings[flag] and not partner:
            raise UserError("-%s: %s" % (flag, why))
    resume = settings.pop("resume")
    settings["epochs"] = settings["epochs"] or EPOCHS
    settings["script"] = script
    data.check_writable(settings["output"])
    data.check_writable(settings["checkpoint"], "--checkpoint")

    dataset = data.load_sequences(settings["data"], nb_digits=nb_digits,
                                  hint=settings.get("create_data", create_data))
    if settings["clutter"] and dataset["nb_distortions"] == 0:
        # Clutter on the training canvases alone would make them unlike the
        # test canvases: a recipe's -clutter gives way, a typed one is refused.
        if "clutter" in typed:
            raise UserError("-clutter %d: %s has no clutter (--nb_distortions 0), "
                            "so its training canvases should have none either; "
                            "leave -clutter at 0" % (settings["clutter"], settings["data"]))
        print("-clutter 0: %s has no clutter (--nb_distortions 0)" % settings["data"])
        settings["clutter"] = 0
        if "jitterepoch" in typed and settings["jitterepoch"] and not settings["jitter"]:
            raise UserError("-jitterepoch: %s has no clutter, so -jitterepoch needs "
                            "-jitter above 0" % settings["data"])
    if settings["clutter"]:
        dataset["patches"] = clutter.patch_database(
            np.random.RandomState(settings["seed"]), data.load_mnist(),
            dataset["distortion_size"])
    settings["create_data"] = dataset.pop("create_command") or create_data
    if settings["train_size"]:
        for key in ("X_train", "y_train"):
            dataset[key] = dataset[key][:settings["train_size"]]
    from .layers import output_size
    dim = dataset["output_dim"]
    if dim < MIN_CANVAS:
        raise UserError("%s: its canvases are %d pixels wide; the localization "
                        "network needs at least %d (create_mnist_sequence.py "
                        "--output_dim %d or more)"
                        % (settings["data"], dim, MIN_CANVAS, MIN_CANVAS))
    for factor in np.broadcast_to(settings["downsample"], 2):
        crop = int(output_size(dim, factor))
        if crop < MIN_CROP:
            raise UserError("-downsample %g: leaves a %d-pixel crop of the %d-pixel "
                            "canvas; the classifier needs at least %d, so use at most %g"
                            % (factor, crop, dim, MIN_CROP, dim / float(MIN_CROP)))
    for split in data.SPLITS:
        print("%-5s  X %s  y %s" % (split, dataset["X_" + split].shape,
                                    dataset["y_" + split].shape))

    import lasagne
    import theano
    np.random.seed(settings["seed"])
    lasagne.random.set_rng(np.random.RandomState(settings["seed"]))
    # The settings that change by epoch (``scheduled``), as shared variables.
    shared = {"dropout": theano.shared(lasagne.utils.floatX(0.0), name="dropout")}
    if settings["blurepochs"] or settings["blurzoom"]:
        shared["blur"] = theano.shared(lasagne.utils.floatX(settings["blur"]), name="blur")
    for name in LATER_FLAGS:
        if starts_later(settings, name):
            shared[name] = theano.shared(lasagne.utils.floatX(0.0), name=name)
    if two_rates(settings):
        for name in RATE_FACTORS:
            shared[name] = theano.shared(lasagne.utils.floatX(1.0), name=name)
    num_steps = dataset["y_train"].shape[1]
    l_in, l_out, l_A_net, _ = build_model(
        dim, num_steps, settings["downsample"], shared["dropout"],
        **dict({key: settings[key] for key in TRANSFORM_FLAGS + tuple(model_flags)},
               jitter=shared.get("jitter", settings["jitter"]),
               blur=shared.get("blur", settings["blur"]),
               sharp=shared.get("sharp", settings["sharp"])))
    print("Compiling the training and evaluation functions...")
    start = time.time()
    train_fn, eval_fn, sh_lr = build_functions(
        l_in.input_var, l_out, l_A_net, settings["optimizer"], settings["lr"],
        tuple(shared[name] for name in RATE_FACTORS) if two_rates(settings) else None,
        settings["epsilon"], settings["ema"], settings["l2"])
    print(ready_line(start))
    results = fit(train_fn, eval_fn, sh_lr, shared, dataset, settings, resume=resume)
    print("Results in %s, checkpoint in %s" % (settings["output"],
                                              settings["checkpoint"]))
    return results


# ---- The STN scripts' training and evaluation functions ----

def ready_line(compile_start):
    """How long compiling and the whole start-up took."""
    return "Compiled in %.1f s; training starts %.1f s after launch" % (
        time.time() - compile_start, time.time() - backend.started)


def build_functions(input_var, l_out, l_A_net, optimizer, learning_rate,
                    rate_factors=None, epsilon=None, ema=0.0, l2=0.0):
    """Compile the chapter's functions for a classifier reading ``num_steps`` crops.

    ``l_out`` gives (batch * num_steps, 10) class probabilities, sample-major,
    and ``l_A_net`` the matching (batch * num_steps, 6) transforms, or
    (batch, 6 * branches) for parallel transformers.  Returns
    ``train_fn(X, y) -> (loss, probs)`` with y of shape (batch, num_steps),
    ``eval_fn(X) -> (probs, A)`` and the shared learning rate.  With
    ``rate_factors`` = (classifier's, localization network's), numbers or
    shared variables, the classifier learns at the rate times the first and
    the parameters of ``l_A_net`` and the layers below it at the rate times
    the second; without, the whole network at the rate, as the chapter's.
    ``epsilon``, if given, replaces the update rule's own: Lasagne's adam
    steps by its bias-corrected rate times m / (sqrt(v) + epsilon), its
    rmsprop by rate * g / sqrt(v + epsilon), with m and v the running means
    of the gradient and of its square.  With ``ema`` d in (0, 1), ``eval_fn``
    reads an exponential moving average of the trainable parameters instead of
    the parameters themselves: a_t = d a_{t-1} + (1 - d) p_t after step t,
    from a_0 = 0, divided by 1 - d^t (``averaged``); before the first step,
    the parameters.  With ``l2`` > 0 the gradients are those of the
    cross-entropy plus ``l2`` times ``classifier_l2``, clipped and
    norm-constrained with the rest; ``train_fn``'s loss stays the
    cross-entropy.
    """
    import lasagne
    import theano
    import theano.tensor as T
    target_var = T.imatrix("targets")
    sh_lr = theano.shared(lasagne.utils.floatX(learning_rate), name="learning_rate")
    output_train = lasagne.layers.get_output(l_out, input_var, deterministic=False)
    output_eval, A_eval = lasagne.layers.get_output([l_out, l_A_net], input_var,
                                                    deterministic=True)
    cost = T.mean(T.nnet.categorical_crossentropy(output_train + LOG_EPSILON,
                                                  target_var.flatten()))
    params = lasagne.layers.get_all_params(l_out, trainable=True)
    objective = cost + l2 * classifier_l2(l_out, l_A_net) if l2 else cost
    grads = [T.clip(g, -CLIP_GRADIENT, CLIP_GRADIENT) for g in T.grad(objective, params)]
    grads = lasagne.updates.total_norm_constraint(grads, max_norm=MAX_NORM)
    update = {"rmsprop": lasagne.updates.rmsprop, "adam": lasagne.updates.adam}[optimizer]
    if epsilon is not None:
        update = functools.partial(update, epsilon=epsilon)
    # One rate (one update rule, as the chapter's, so that checkpoints of
    # one-rate runs still load) or two: the classifier's, and the
    # localization network's.
    groups = [(range(len(params)), sh_lr)]
    if rate_factors is not None:
        class_factor, loc_factor = rate_factors
        loc_params = localization_params(l_A_net)
        groups = [([k for k, param in enumerate(params) if (param in loc_params) == in_loc],
                   sh_lr * T.cast(factor, theano.config.floatX))
                  for in_loc, factor in ((False, class_factor), (True, loc_factor))]
    updates = OrderedDict()
    for part, rate in groups:
        updates.update(update([grads[k] for k in part], [params[k] for k in part],
                              learning_rate=rate))
    if ema:
        output_eval, A_eval = averaged([output_eval, A_eval], params, updates, ema)
    train_fn, eval_fn = compiled.functions([
        ([input_var, target_var], [cost, output_train], updates),
        ([input_var], [output_eval, A_eval], None)])
    return train_fn, eval_fn, sh_lr


def localization_params(l_A_net):
    """The localization network's parameters, a set: those of ``l_A_net`` and
    of the layers below it."""
    import lasagne
    return set(lasagne.layers.get_all_params(l_A_net))


def classifier_l2(l_out, l_A_net):
    """Lasagne's l2 penalty, the sum of the squares, of the classifier's
    weights: the regularizable parameters (weights, not biases) below
    ``l_out`` that are not the localization network's; a scalar variable."""
    import lasagne
    localization = localization_params(l_A_net)
    weights = [param for param in lasagne.layers.get_all_params(l_out, regularizable=True)
               if param not in localization]
    return lasagne.regularization.apply_penalty(weights, lasagne.regularization.l2)


def averaged(outputs, params, updates, ema_decay):
    """``outputs`` (a list of variables) with each of ``params`` replaced by
    its bias-corrected exponential moving average (Kingma & Ba 2015, section
    7.2, temporal averaging), ``ema_decay`` in [0, 1); returns the list.  The
    averages' updates are added to ``updates``, an OrderedDict that must hold
    each parameter's own update (the average follows the updated value), so
    that they are trained, and checkpointed, with the parameters."""
    import theano
    import theano.tensor as T
    if not 0 <= ema_decay < 1:
        raise ValueError("ema_decay must be in [0, 1), not %r" % (ema_decay,))
    floatx = theano.config.floatX
    # The same rounded decay in the updates and in the correction, so that
    # the averages' weights sum to 1.
    rounded = np.asarray(ema_decay, dtype=floatx)
    decay, rest = T.constant(rounded), T.constant((1 - rounded).astype(floatx))
    steps = theano.shared(np.asarray(0, dtype=floatx), name="ema_steps")
    updates[steps] = steps + 1
    correction = 1 - decay ** steps
    replace = {}
    for param in params:
        average = theano.shared(np.zeros_like(param.get_value()), name="ema_" + str(param),
                                broadcastable=param.broadcastable)
        updates[average] = decay * average + rest * updates[param]
        replace[param] = T.switch(steps > 0, average / correction, param)
    return theano.clone(outputs, replace=replace)


def predict(eval_fn, X, num_steps, batch_size):
    """Class predictions (N, num_steps) and transforms (N, k, 6) of a whole
    set (k: steps or branches), and the last batch's indices and probabilities."""
    preds, transforms = [], []
    for idx in iterate_minibatches(len(X), batch_size):
        probs, A = eval_fn(X[idx])
        preds.append(probs.argmax(axis=-1).reshape(len(idx), num_steps))
        transforms.append(A.reshape(len(idx), -1, 6))
    return (np.concatenate(preds).astype(np.int32), np.concatenate(transforms),
            (idx, probs))


def scheduled(settings, epoch, zoom=None):
    """The values at ``epoch`` of the settings that change by epoch: dropout,
    ramped up over epochs 0-DROPOUT_RAMP; with ``blurepochs``, the blur,
    faded linearly to 0 over that many epochs; with ``blurzoom``, the blur
    times ``zoom`` (at most 1), the transform's mean zoom in the last epoch
    (``initzoom`` before the first), so that the blur follows the spacing of
    the sampled points as an anti-aliasing filter should (Jaderberg et al.
    2015, section 3.4); with ``jitter`` and ``jitterepoch``, the jitter: 0
    before that epoch, ``jitter`` from it on; with ``clutter``, the patches
    added to each training canvas: 0 before epoch ``jitterepoch``, ``clutter``
    from it on; with ``sharp`` and
    ``sharpepoch``, sharp: 0 before that epoch, 1 from it on; with ``loclr``
    or ``classlr``, both rate factors: 1 before epoch ``ratesepoch``, theirs
    from it on."""
    values = {"dropout": settings["dropout"] * min(epoch, DROPOUT_RAMP) / DROPOUT_RAMP}
    if settings.get("blurepochs") or settings.get("blurzoom"):
        values["blur"] = settings["blur"]
    if settings.get("blurepochs"):
        values["blur"] *= max(0.0, 1 - epoch / settings["blurepochs"])
    if settings.get("blurzoom"):
        values["blur"] *= min(1.0, settings["initzoom"] if zoom is None else zoom)
    for name in LATER_FLAGS:
        if starts_later(settings, name):
            on = epoch >= settings[name + "epoch"]
            values[name] = float(settings[name]) if on else 0.0
    if settings.get("clutter"):
        values["clutter"] = settings["clutter"] if epoch >= settings["jitterepoch"] else 0
    if two_rates(settings):
        for name in RATE_FACTORS:
            values[name] = 1.0 if epoch < settings["ratesepoch"] else settings[name]
    return values


def starts_later(settings, name):
    """Whether the setting ``name`` ("sharp": the classifier switches from the
    blurred crop to the sharp one; "jitter") is off before epoch
    ``settings[name + "epoch"]`` and on from it: set, with that epoch above 0."""
    return bool(settings.get(name) and settings.get(name + "epoch"))


def two_rates(settings):
    """Whether the classifier and the localization network learn at rates of
    their own (``-classlr`` or ``-loclr`` other than 1)."""
    return any(settings.get(name, 1) != 1 for name in RATE_FACTORS)


def lr_decays(epoch, last_decay, nodecay, decayinterval):
    """The chapter's schedule: after ``nodecay`` epochs, decay every
    ``decayinterval + 2`` epochs (with the defaults: epochs 31, 43, 55...)."""
    return epoch > nodecay and epoch - last_decay > decayinterval + 1


# ---- Checkpoints ----

def checkpoint_path(output):
    """The checkpoint beside a run's results file: res.npz -> res.ckpt.npz."""
    return (output[:-len(".npz")] if output.endswith(".npz") else output) + ".ckpt.npz"


def results_path(checkpoint):
    """The inverse of ``checkpoint_path``, where a run resumed from a copied
    checkpoint writes its results: copy.ckpt.npz -> copy.npz (any other name
    gets .results.npz appended)."""
    if checkpoint.endswith(".ckpt.npz"):
        return checkpoint[:-len(".ckpt.npz")] + ".npz"
    return checkpoint + ".results.npz"


def save_checkpoint(path, train_fn, settings, rng_state, **arrays):
    """Write a checkpoint: the run's settings, every shared variable
    ``train_fn`` uses (parameters, optimizer state, learning rate, dropout level
    and its random streams; with -ema the weights' moving averages and their
    step count), a NumPy generator state and any other ``arrays``."""
    arrays["settings"] = np.array(json.dumps(settings))
    _, keys, pos, has_gauss, gauss = rng_state
    arrays.update(rng_keys=keys, rng_pos=np.array(pos),
                  rng_has_gauss=np.array(has_gauss), rng_gauss=np.array(gauss))
    for i, v in enumerate(train_fn.get_shared()):
        arrays["shared_%d" % i] = v.get_value()
    data.save_npz(path, **arrays)


# The flags that a resumed run takes from its command line; the rest are the run's.
# --data may point to the same dataset moved (the network refuses another size).
RESUME_CHANGES = ("epochs", "patience", "output", "checkpoint", "data")
PATH_FLAGS = ("data", "mnist", "crops")     # stored absolute


def resumed_settings(given, defaults, script):
    """The settings of the run checkpointed in ``given["resume"]``, with the
    flags of RESUME_CHANGES that ``given`` holds.  The checkpoint written is
    the one resumed from (so that a copy goes on in itself) and, unless that
    is the run's own, the results go beside it (copy.ckpt.npz: copy.npz).
    ``defaults`` fill the settings a checkpoint older than them lacks.

    Raises UserError for a checkpoint of another script than ``script`` (the
    checkpoints of 1-train-mnist.py older than this check do not name theirs),
    and naming any other flag given with a value other than the run's: a
    resumed run cannot change it."""
    path = given["resume"]
    stored = checkpoint_settings(path)
    writer = stored.get("script", "1-train-mnist.py")
    if writer != script:
        raise UserError("%s: a checkpoint of %s; resume it with: python %s --resume %s"
                        % (path, writer, writer, path))
    settings = dict(defaults, **stored)
    changed = [name for name, value in sorted(given.items())
               if name not in RESUME_CHANGES + ("resume",)
               and comparable(name, value) != comparable(name, settings.get(name))]
    if changed:
        raise UserError("%s: a resumed run keeps the settings it started with (%s in %s); "
                        "leave %s out, or start a new run" % (
                            ", ".join("--%s %s" % (name.replace("_", "-"), given[name])
                                      for name in changed),
                            ", ".join(str(settings.get(name)) for name in changed), path,
                            "the flag" if len(changed) == 1 else "those flags"))
    own = settings.get("checkpoint") and os.path.exists(settings["checkpoint"]) \
        and os.path.samefile(path, settings["checkpoint"])
    settings["checkpoint"] = os.path.abspath(given.get("checkpoint") or path)
    if given.get("data"):
        settings["data"] = os.path.abspath(given["data"])
    if given.get("output"):
        settings["output"] = os.path.abspath(given["output"])
    elif own:
        settings["output"] = os.path.abspath(settings["output"])
    else:
        settings["output"] = os.path.abspath(results_path(path))
    for name in ("epochs", "patience"):
        if given.get(name) is not None:
            settings[name] = given[name]
    settings["resume"] = path
    return settings


def comparable(name, value):
    """A flag's ``value`` in the form a run stores it: paths absolute, a
    downsample factor as a (rows, cols) pair of floats, the rest as JSON."""
    if name in PATH_FLAGS and value:
        return os.path.abspath(value)
    if name == "downsample" and value is not None:
        return [float(f) for f in np.broadcast_to(value, 2)]
    return json.dumps(value)


def checkpoint_settings(path):
    """The settings a checkpoint's run was started with."""
    ckpt = data.load_npz(path)
    if "settings" not in ckpt:
        raise UserError("%s: not a checkpoint of this project" % path)
    return json.loads(str(ckpt["settings"]))


def load_checkpoint(path, train_fn):
    """Restore ``train_fn``'s shared variables from a checkpoint; return the
    generator state and the checkpoint's other arrays."""
    ckpt = data.load_npz(path)
    if "rng_keys" not in ckpt:
        raise UserError("%s: not a checkpoint of this project" % path)
    ckpt.pop("settings", None)
    shared = train_fn.get_shared()
    values = [ckpt.pop("shared_%d" % i) for i in range(len(shared))
              if "shared_%d" % i in ckpt]
    if any(k.startswith("shared_") for k in ckpt) or len(values) != len(shared) or any(
            np.shape(v.get_value()) != np.shape(value) for v, value in zip(shared, values)):
        raise UserError("%s: the checkpoint does not fit this network; was it "
                        "written by the same script and data?" % path)
    import theano
    floatx = theano.config.floatX
    others = {str(value.dtype) for value in values if value.dtype.kind == "f"} - {floatx}
    if others:
        kind = sorted(others)[0]
        raise UserError("%s: the checkpoint holds %s weights and this run computes in "
                        "%s; resume it with THEANO_FLAGS=floatX=%s"
                        % (path, kind, floatx, kind))
    for v, value in zip(shared, values):
        v.set_value(value)
    rng_state = ("MT19937", ckpt.pop("rng_keys"), int(ckpt.pop("rng_pos")),
                 int(ckpt.pop("rng_has_gauss")), float(ckpt.pop("rng_gauss")))
    return rng_state, ckpt


class Run:
    """Everything ``fit`` needs to carry from epoch to epoch, and to a checkpoint."""

    def __init__(self, settings):
        self.settings = settings
        self.epoch = 0            # the epoch to run next
        self.batch = 0            # batches of that epoch already trained
        self.batch_loss = 0.0     # their summed loss
        self.batch_correct = 0    # and correct digits
        self.last_decay = -10**9
        self.best_valid = -1.0
        self.best_epoch = -1
        self.best = {}            # the results arrays of the best epoch
        self.history = {k: [] for k in ("epoch", "train_loss", "train_acc",
                                        "valid_acc", "test_acc", "test_seq_acc",
                                        "lr", "seconds", "train_seconds", "blur",
                                        "watch_A")
                        + localization.STATS}
        self.watch = {}           # the test canvases whose transforms are kept
        # The shuffling generator's state at the start of the current epoch.
        self.epoch_rng_state = np.random.RandomState(settings["seed"]).get_state()

    def save(self, path, train_fn):
        arrays = {}
        for name in ("epoch", "batch", "batch_loss", "batch_correct", "last_decay",
                     "best_valid", "best_epoch"):
            arrays[name] = np.array(getattr(self, name))
        arrays.update(self.history_arrays())
        for key, value in self.best.items():
            arrays["result_" + key] = value
        save_checkpoint(path, train_fn, self.settings, self.epoch_rng_state, **arrays)

    def history_arrays(self):
        """The history as ``history_{key}`` arrays: (epochs,), or (epochs, k)
        for the transform statistics, (epochs, WATCH, k, 6) for the watched
        transforms; epochs without a record hold NaN."""
        arrays = {}
        for key, values in self.history.items():
            # Missing: None, or the scalar NaN an earlier save wrote for it.
            missing = [v is None or (np.ndim(v) == 0 and v != v) for v in values]
            width = np.shape(next((v for v, m in zip(values, missing) if not m), np.nan))
            arrays["history_" + key] = np.array(
                [np.full(width, np.nan) if m else v for v, m in zip(values, missing)],
                np.int64 if key == "epoch" else np.float64).reshape((len(values),) + width)
        return arrays

    def restore(self, path, train_fn):
        self.epoch_rng_state, ckpt = load_checkpoint(path, train_fn)
        for name in ("epoch", "batch", "batch_correct", "last_decay", "best_epoch"):
            setattr(self, name, int(ckpt[name]))
        self.batch_loss = float(ckpt["batch_loss"])
        self.best_valid = float(ckpt["best_valid"])
        for key in self.history:
            # Checkpoints older than a record lack it: None, saved as NaN.
            values = ckpt.get("history_" + key)
            self.history[key] = (values.tolist() if values is not None
                                 else [None] * len(ckpt["history_epoch"]))
        self.best = {k[len("result_"):]: v for k, v in ckpt.items()
                     if k.startswith("result_")}


class StopFlag:
    """The first Ctrl-C asks the loop to stop after the current batch; a second
    one interrupts at once."""

    def __init__(self):
        self.raised = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True
        sys.stderr.write("\nStopping after this batch (Ctrl-C again to abort now)\n")

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


# ---- The epoch loop ----

def fit(train_fn, eval_fn, sh_lr, shared, dataset, settings, resume=None):
    """Train as the chapter: returns the results dict that is also saved.

    ``shared`` maps the names of ``scheduled`` settings (but ``clutter``,
    which acts on the batches) to the shared variables that hold them;
    ``dataset`` comes from ``data.load_sequences``, with ``settings["clutter"]``
    its ``patches`` too (``clutter.patch_database``);
    ``settings`` holds the script's flags (epochs, batch_size, lr,
    decayinterval, decayfac, nodecay, dropout, blur, blurepochs, blurzoom,
    sharp, sharpepoch, jitter, clutter, jitterepoch, initzoom, classlr, loclr,
    ratesepoch, patience, train_eval, seed, output, checkpoint, script).
    """
    X_train, y_train = dataset["X_train"], dataset["y_train"]
    num_steps = y_train.shape[1]
    batch_size = settings["batch_size"]
    if batch_size > len(X_train):
        raise UserError("--batch-size %d: larger than the %d training canvases"
                        % (batch_size, len(X_train)))
    run = Run(settings)
    run.watch = {"watch_x": dataset["X_test"][:WATCH], "watch_y": dataset["y_test"][:WATCH]}
    if resume:
        run.restore(resume, train_fn)
        print("Resumed from %s at epoch %d, batch %d" % (resume, run.epoch, run.batch))
    resume_hint = "python %s --resume %s" % (settings["script"], settings["checkpoint"])

    with StopFlag() as stop:
        while run.epoch < settings["epochs"]:
            epoch = run.epoch
            start_time = time.time()
            zooms = [z for key in ("zoom_x", "zoom_y") for z in run.history[key][-1:]]
            values = scheduled(settings, epoch,
                               float(np.mean(zooms)) if zooms and zooms[0] is not None
                               else None)
            more_clutter = values.pop("clutter", 0)
            for name, value in values.items():
                shared[name].set_value(np.float32(value))
            if run.batch == 0 and lr_decays(epoch, run.last_decay, settings["nodecay"],
                                            settings["decayinterval"]):
                sh_lr.set_value(np.float32(sh_lr.get_value() / settings["decayfac"]))
                run.last_decay = epoch

            # Train, resuming inside the epoch if a checkpoint stopped there.
            rng = np.random.RandomState()
            rng.set_state(run.epoch_rng_state)
            batches = list(iterate_minibatches(len(X_train), batch_size, rng))
            progress = cli.Progress(len(batches), "epoch %d" % epoch, done=run.batch)
            for idx in batches[run.batch:]:
                # An index array copies the batch (writable even from the
                # read-only memory map), so the clutter leaves the dataset as it is.
                X = X_train[idx]
                if more_clutter:
                    # Drawn from the epoch and batch, so a resumed run lays the same.
                    clutter.add_clutter(X, dataset["patches"], more_clutter,
                                        np.random.RandomState([settings["seed"], epoch,
                                                               run.batch]))
                loss, probs = train_fn(X, y_train[idx])
                if not math.isfinite(float(loss)):
                    progress.close()
                    raise UserError(
                        "the loss became %s at epoch %d; the last good results and "
                        "checkpoint are kept (%s, %s): try a lower learning rate, "
                        "e.g. -lr %g" % (float(loss), epoch, settings["output"],
                                         settings["checkpoint"],
                                         min(settings["lr"] / 10, 0.001)))
                run.batch += 1
                run.batch_loss += float(loss)
                run.batch_correct += int((probs.argmax(-1) == y_train[idx].ravel()).sum())
                progress.update()
                if stop.raised:
                    progress.close()
                    run.save(settings["checkpoint"], train_fn)
                    raise Interrupted(
                        "interrupted at epoch %d after batch %d/%d; checkpoint in "
                        "%s; resume with: %s"
                        % (epoch, run.batch, len(batches), settings["checkpoint"],
                           resume_hint))
            progress.close()
            train_seconds = time.time() - start_time
            train_loss = run.batch_loss / run.batch
            train_acc = run.batch_correct / float(run.batch * batch_size * num_steps)

            # Evaluate.  The chapter re-evaluates the whole training set; by
            # default the accuracy of the training batches themselves is shown.
            if settings["train_eval"] == "full":
                train_preds, _, _ = predict(eval_fn, X_train, num_steps, batch_size)
                train_acc = float((train_preds == y_train).mean())
            valid_preds, _, _ = predict(eval_fn, dataset["X_valid"], num_steps,
                                        batch_size)
            test_preds, test_A, (idx, probs) = predict(eval_fn, dataset["X_test"],
                                                       num_steps, batch_size)
            y_test = dataset["y_test"]
            valid_acc = float((valid_preds == dataset["y_valid"]).mean())
            test_acc = float((test_preds == y_test).mean())
            test_seq_acc = float((test_preds == y_test).all(axis=1).mean())
            line = "Epoch {} Acc Valid {:.4f}, Acc Train = {:.4f}, Acc Test = {:.4f}".format(
                epoch, valid_acc, train_acc, test_acc)
            if num_steps > 1:
                line += ", Seq Acc Test = {:.4f}".format(test_seq_acc)
            print(line)
            stats = localization.summary(test_A, dataset.get("boxes_test"),
                                         *dataset["X_test"].shape[1:])
            print(localization.describe(stats))
            seconds = time.time() - start_time
            rates = ""
            if two_rates(settings):
                rates = " (classifier x%g, localization x%g)" % tuple(
                    values[name] for name in RATE_FACTORS)
            if "jitter" in values:
                rates += ", jitter %g" % values["jitter"]
            if settings["clutter"]:
                rates += ", clutter %d" % more_clutter
            print("Loss %.4f, lr %.3g%s, %.0f s (training %.0f s)"
                  % (train_loss, float(sh_lr.get_value()), rates, seconds, train_seconds))
            sys.stdout.flush()

            for key, value in [("epoch", epoch), ("train_loss", train_loss),
                               ("train_acc", train_acc), ("valid_acc", valid_acc),
                               ("test_acc", test_acc), ("test_seq_acc", test_seq_acc),
                               ("lr", float(sh_lr.get_value())), ("seconds", seconds),
                               ("train_seconds", train_seconds),
                               ("blur", values.get("blur", settings["blur"])),
                               ("watch_A", test_A[:WATCH])] + [
                    (key, stats[key].tolist()) for key in localization.STATS]:
                run.history[key].append(value)
            if valid_acc > run.best_valid:
                run.best_valid, run.best_epoch = valid_acc, epoch
                last = y_test[idx]
                # (batch, 6) for one transform per canvas, else (batch, k, 6):
                # k recurrent steps or parallel branches.
                A = test_A[idx]
                run.best = {
                    "probs": probs, "preds": probs.argmax(-1).astype(np.int32),
                    "x": dataset["X_test"][idx],
                    "y": last.ravel() if num_steps == 1 else last,
                    "A": A[:, 0] if A.shape[1] == 1 else A,
                    "all_y": y_test.ravel() if num_steps == 1 else y_test,
                    "all_preds": test_preds.ravel() if num_steps == 1 else test_preds,
                    "all_A": test_A[:, 0] if test_A.shape[1] == 1 else test_A}
                if "boxes_test" in dataset:
                    run.best["all_boxes"] = np.asarray(dataset["boxes_test"])
            run.epoch += 1
            run.batch = run.batch_correct = 0
            run.batch_loss = 0.0
            run.epoch_rng_state = rng.get_state()
            run.save(settings["checkpoint"], train_fn)
            if settings["output"]:
                save_results(settings["output"], run)
            if epoch - run.best_epoch >= settings["patience"]:
                print("Early stopping: no validation gain for %d epochs"
                      % settings["patience"])
                break

    results = results_arrays(run)
    print("Best epoch %d: Acc Valid %.4f, Acc Test %.4f"
          % (run.best_epoch, run.best_valid, run.history["test_acc"][
              run.history["epoch"].index(run.best_epoch)]))
    return results


def results_arrays(run):
    """The results file's arrays: the chapter's keys, settings and history,
    and the first WATCH test canvases and labels (watch_x, watch_y) whose
    transforms history_watch_A keeps by epoch."""
    arrays = dict(run.best, **run.watch)
    arrays["settings"] = np.array(json.dumps(run.settings))
    arrays["downsample"] = np.array(run.settings["downsample"], np.float64)
    arrays["best_epoch"] = np.array(run.best_epoch)
    arrays.update(run.history_arrays())
    return arrays


def save_results(path, run):
    """Write the results file and, beside it, its learning curves."""
    from . import plots
    arrays = results_arrays(run)
    data.save_npz(path, **arrays)
    try:
        plots.learning_curves(arrays, plots.curves_path(path),
                              plots.curves_title(run.settings))
    except Exception as e:   # a picture must not stop a run of hours
        print("Could not draw %s (%s: %s); the run goes on"
              % (plots.curves_path(path), type(e).__name__, e))
