"""The training loop's parts (stn/training.py): update rules, rates, schedules, history."""
import os
import signal

import numpy as np
import pytest

from conftest import load_script
from stn import training

stn_script = load_script("2-stn-cnn-mnist.py")


def first_steps(optimizer, lr, epsilon=None, rate_factors=None, l2=0.0):
    """One training step of a small STN (40x40 canvases) on a fixed random batch,
    from a fixed start.  Returns its ``l_out``, ``l_A_net``, the change of
    each trainable parameter, in get_all_params order, and the step's loss."""
    import lasagne
    import theano
    lasagne.random.set_rng(np.random.RandomState(1))
    l_in, l_out, l_A_net, _ = stn_script.build_model(40, 1, 2.0, theano.shared(np.float32(0)))
    params = lasagne.layers.get_all_params(l_out, trainable=True)
    if rate_factors is not None:
        rate_factors = tuple(theano.shared(np.float32(f)) for f in rate_factors)
    train_fn, _, _ = training.build_functions(l_in.input_var, l_out, l_A_net, optimizer, lr,
                                              rate_factors, epsilon=epsilon, l2=l2)
    before = [p.get_value() for p in params]
    rng = np.random.RandomState(0)
    loss, _ = train_fn(rng.rand(8, 40, 40).astype(np.float32),
                       rng.randint(0, 10, (8, 1)).astype(np.int32))
    return l_out, l_A_net, [p.get_value() - old for p, old in zip(params, before)], loss


def all_steps(*args, **kwargs):
    """The sizes of first_steps' changes of all the parameters, as one flat array."""
    return np.abs(np.concatenate([step.ravel() for step in first_steps(*args, **kwargs)[2]]))


def test_adams_epsilon_reaches_the_update_rule():
    # adam's first step is lr * |g| / (|g| + c * epsilon), with c fixed by the
    # betas: the step s1 taken with epsilon e1 gives c * e1 = |g| (lr / s1 - 1),
    # so from the same start, epsilon e2 = r * e1 must step by
    # s2 = lr / (1 + r (lr / s1 - 1)), whatever the gradient.
    lr, e1, ratio = 1e-2, 1e-4, 4.0
    s1, s2 = (all_steps("adam", lr, e) for e in (e1, e1 * ratio))
    damped = (s1 > 0.1 * lr) & (s1 < 0.9 * lr)
    assert damped.sum() > 100
    np.testing.assert_allclose(s2[damped], lr / (1 + ratio * (lr / s1[damped] - 1)), rtol=1e-2)


def test_rmsprops_epsilon_sits_inside_the_root():
    # Lasagne's rmsprop (rho 0.9) first steps by lr * |g| / sqrt(0.1 g^2 + epsilon):
    # the step s1 taken with epsilon e1 gives g^2 = s1^2 e1 / (lr^2 - 0.1 s1^2),
    # and from it the step that epsilon e2 = r * e1 must take.
    lr, e1, ratio = 1e-3, 1e-6, 4.0
    s1, s2 = (all_steps("rmsprop", lr, e) for e in (e1, e1 * ratio))
    largest = lr / np.sqrt(0.1)          # the step of a gradient far above the floor
    damped = (s1 > 0.1 * largest) & (s1 < 0.9 * largest)
    assert damped.sum() > 100
    g2 = s1[damped] ** 2 * e1 / (lr ** 2 - 0.1 * s1[damped] ** 2)
    np.testing.assert_allclose(s2[damped], lr * np.sqrt(g2 / (0.1 * g2 + ratio * e1)),
                               rtol=1e-2)


@pytest.mark.parametrize("classlr, loclr", [(None, None), (1.0, 0.25), (3.0, 0.1)])
def test_rate_factors_scale_the_classifiers_and_the_localizations_steps(classlr, loclr):
    # adam's first step moves every parameter whose gradient is not zero by the
    # rate itself (m / sqrt(v) = g / |g|): A_net by lr * loclr, the classifier
    # by lr * classlr (shared variables, as the -ratesepoch schedule sets them).
    import lasagne
    lr = 1e-3
    l_out, l_A_net, steps, _ = first_steps(
        "adam", lr, rate_factors=None if loclr is None else (classlr, loclr))
    localization = set(lasagne.layers.get_all_params(l_A_net, trainable=True))
    params = lasagne.layers.get_all_params(l_out, trainable=True)
    # The split: A_net and the localization's first convolution on one side,
    # the classifier's output layer and first convolution on the other.
    layers = lasagne.layers.get_all_layers(l_out)
    convs = [layer for layer in layers if isinstance(layer, lasagne.layers.Conv2DLayer)]
    transformer = next(layer for layer in layers
                       if isinstance(layer, lasagne.layers.TransformerLayer))
    loc_conv = convs[0]  # get_all_layers lists the localization network first
    class_conv = next(c for c in convs if c.input_layer is transformer)
    assert {l_A_net.W, l_A_net.b, loc_conv.W} <= localization
    assert not {l_out.W, l_out.b, class_conv.W} & localization
    moved = {True: [], False: []}
    for param, step in zip(params, steps):
        moved[param in localization].append(np.abs(step[step != 0]))
    for in_loc, rate in ((True, lr * (loclr or 1)), (False, lr * (classlr or 1))):
        taken = np.concatenate(moved[in_loc])
        assert taken.size > 100
        np.testing.assert_allclose(np.median(taken), rate, rtol=1e-3)
        assert taken.max() <= rate * 1.001


@pytest.mark.parametrize("name, num_steps", [("2-stn-cnn-mnist.py", 1),
                                             ("3-recurrent-stn-mnist.py", 3)])
def test_l2_sums_the_squares_of_the_classifiers_weights_only(name, num_steps):
    # The recurrent STN's localization network has a GRU: its weights are left out.
    import lasagne
    import theano
    lasagne.random.set_rng(np.random.RandomState(1))
    _, l_out, l_A_net, _ = load_script(name).build_model(40, num_steps, 2.0,
                                                         theano.shared(np.float32(0)))
    below_A_net = set(lasagne.layers.get_all_layers(l_A_net))
    classifier = [layer for layer in lasagne.layers.get_all_layers(l_out)
                  if layer not in below_A_net and hasattr(layer, "W")]
    assert len(classifier) == 4          # two convolutions, two dense layers
    expected = sum((layer.W.get_value().astype(np.float64) ** 2).sum() for layer in classifier)
    got = theano.function([], training.classifier_l2(l_out, l_A_net))()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_l2_adds_its_gradient_to_the_classifiers_weights_and_leaves_the_loss():
    # Lasagne's rmsprop first steps by lr * g / sqrt(0.1 g^2 + epsilon): with an
    # epsilon of 1e4 (g is clipped to 1), by lr * g / 100 to 5e-7.  -l2 adds
    # 2 * LAMBDA * W to the gradient of each of the classifier's weights W, so
    # their steps differ by -lr * 2 * LAMBDA * W / 100; the rest only by the
    # rounding of the total-norm rescaling, which the penalty's gradient
    # enters (float32: 1e-6 of the step).  This batch's gradient norm stays
    # under MAX_NORM, so that rescaling is 1 up to rounding (asserted).
    import lasagne
    lr, l2 = 1.0, 1e-2
    l_out, l_A_net, plain, loss = first_steps("rmsprop", lr, epsilon=1e4)
    _, _, penalised, loss_l2 = first_steps("rmsprop", lr, epsilon=1e4, l2=l2)
    assert loss_l2 == loss
    norm = np.sqrt(sum(((100 / lr * step.astype(np.float64)) ** 2).sum() for step in plain))
    assert norm < training.MAX_NORM
    params = lasagne.layers.get_all_params(l_out, trainable=True)
    start = [p.get_value() - step for p, step in zip(params, plain)]
    weights = set(lasagne.layers.get_all_params(l_out, regularizable=True)) - set(
        lasagne.layers.get_all_params(l_A_net))
    assert len(weights) == 4
    for param, w, a, b in zip(params, start, plain, penalised):
        expected = -lr * 2 * l2 * w / 100 if param in weights else 0 * w
        np.testing.assert_allclose(b - a, expected, atol=1e-3 * np.abs(expected).max()
                                   + 1e-6 * np.abs(a).max())


def test_dropout_ramps_up_and_the_blur_fades_by_epoch():
    settings = dict(dropout=0.4, blur=1.5, blurepochs=3)
    values = [training.scheduled(settings, e) for e in (0, 1, 3, 5)]
    assert [v["dropout"] for v in values] == pytest.approx([0.0, 0.1, 0.3, 0.4])
    assert [v["blur"] for v in values] == pytest.approx([1.5, 1.0, 0.0, 0.0])
    assert training.scheduled(dict(settings, blurepochs=0), 1) == {"dropout": 0.1}


def test_the_rate_factors_apply_from_ratesepoch_on():
    settings = dict(training.default_settings(training.RECIPE), classlr=3.0, loclr=0.1,
                    ratesepoch=3)
    assert [(training.scheduled(settings, epoch)["classlr"],
             training.scheduled(settings, epoch)["loclr"]) for epoch in range(5)] == [
        (1.0, 1.0)] * 3 + [(3.0, 0.1)] * 2
    assert training.scheduled(dict(settings, ratesepoch=0), 0)["loclr"] == 0.1
    assert "loclr" not in training.scheduled(dict(settings, classlr=1.0, loclr=1.0), 0)


def test_the_classifier_reads_the_sharp_crop_from_sharpepoch_on():
    settings = dict(training.default_settings(training.RECIPE), sharp=True, sharpepoch=2)
    assert [training.scheduled(settings, epoch)["sharp"] for epoch in range(4)] == [
        0.0, 0.0, 1.0, 1.0]
    assert "sharp" not in training.scheduled(dict(settings, sharpepoch=0), 0)
    assert "sharp" not in training.scheduled(dict(settings, sharp=False), 0)


def test_the_jitter_starts_at_jitterepoch():
    settings = dict(training.default_settings(training.RECIPE), jitter=0.05, jitterepoch=2)
    assert [training.scheduled(settings, epoch)["jitter"] for epoch in range(4)] == [
        0.0, 0.0, 0.05, 0.05]
    assert "jitter" not in training.scheduled(dict(settings, jitterepoch=0), 0)
    assert "jitter" not in training.scheduled(dict(settings, jitter=0.0), 0)


def test_the_clutter_starts_at_jitterepoch():
    settings = dict(training.default_settings(training.RECIPE), clutter=3, jitterepoch=2)
    assert [training.scheduled(settings, epoch)["clutter"] for epoch in range(4)] == [
        0, 0, 3, 3]
    assert training.scheduled(dict(settings, jitterepoch=0), 0)["clutter"] == 3
    assert "clutter" not in training.scheduled(dict(settings, clutter=0), 0)


def test_ema_evaluates_the_bias_corrected_average_of_the_trained_weights():
    import lasagne
    import theano
    lasagne.random.set_rng(np.random.RandomState(1))
    l_in, l_out, l_A_net, _ = stn_script.build_model(40, 1, 2.0, theano.shared(np.float32(0)))
    params = lasagne.layers.get_all_params(l_out, trainable=True)
    decay = 0.8
    train_fn, eval_fn, _ = training.build_functions(l_in.input_var, l_out, l_A_net, "adam",
                                                    0.01, ema=decay)
    as_trained = theano.function([l_in.input_var], lasagne.layers.get_output(
        [l_out, l_A_net], deterministic=True))
    rng = np.random.RandomState(0)
    X = rng.rand(8, 40, 40).astype(np.float32)
    # Before any step: the weights themselves.
    for out, expected in zip(eval_fn(X), as_trained(X)):
        np.testing.assert_array_equal(out, expected)
    sums = [np.zeros(p.get_value().shape) for p in params]
    for step in range(1, 4):
        train_fn(X, rng.randint(0, 10, (8, 1)).astype(np.int32))
        sums = [decay * a + (1 - decay) * p.get_value() for a, p in zip(sums, params)]
    got = eval_fn(X)
    assert not np.allclose(got[1], as_trained(X)[1], atol=1e-4)
    for p, a in zip(params, sums):
        p.set_value((a / (1 - decay ** 3)).astype(np.float32))
    for out, expected in zip(got, as_trained(X)):
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\), not 1.0"):
        training.averaged([], params, {}, 1.0)


def test_a_recipe_key_that_names_no_flag_is_refused():
    assert training.default_settings(dict(loclr=0.1))["loclr"] == 0.1
    with pytest.raises(TypeError, match="recipe keys that name no flag: locr"):
        training.default_settings(dict(locr=0.1))


def test_lr_schedule_is_the_chapters():
    decays, last = [], -10**9
    for epoch in range(70):
        if training.lr_decays(epoch, last, nodecay=30, decayinterval=10):
            decays.append(epoch)
            last = epoch
    assert decays == [31, 43, 55, 67]


def test_a_history_record_missing_in_two_saves_stays_missing():
    # An old checkpoint resumed, interrupted before its first new epoch ended,
    # saved the missing record as a scalar NaN; resumed again, it gets arrays.
    run = training.Run(training.default_settings())
    run.history["watch_A"] = [None, float("nan"), np.ones((6, 1, 6))]
    watched = run.history_arrays()["history_watch_A"]
    assert watched.shape == (3, 6, 1, 6)
    assert np.isnan(watched[:2]).all() and (watched[2] == 1).all()


class RecordingTrain:
    """A train_fn that keeps the batches it is given and trains nothing; it
    presses Ctrl-C during call number ``stop_at`` (counted from 1)."""

    def __init__(self, stop_at=None):
        self.batches, self.stop_at = [], stop_at

    def __call__(self, X, y):
        self.batches.append(X.copy())
        if len(self.batches) == self.stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return np.float32(2.3), np.full((y.size, 10), 0.1, np.float32)

    def get_shared(self):
        return []


class Value:
    """A stand-in for a Theano shared scalar."""

    def __init__(self, value=0.0):
        self.value = value

    def get_value(self):
        return self.value

    def set_value(self, value):
        self.value = value


def test_clutter_is_laid_on_the_training_batches_from_jitterepoch_on(tmp_path, mnist):
    from stn import clutter

    def blank(n):
        X = np.zeros((n, 32, 32), np.float32)
        X.setflags(write=False)   # as the memory-mapped datasets
        return X
    evaluated = []

    def eval_fn(X):
        evaluated.append(X.copy())
        return (np.full((len(X), 10), 0.1, np.float32),
                np.tile(np.float32([1, 0, 0, 0, 1, 0]), (len(X), 1)))
    patch_db = clutter.patch_database(np.random.RandomState(4), mnist, 5)
    dataset = {"X_train": blank(16), "y_train": np.zeros((16, 1), np.int32),
               "X_valid": blank(8), "y_valid": np.zeros((8, 1), np.int32),
               "X_test": blank(8), "y_test": np.zeros((8, 1), np.int32),
               "output_dim": 32, "distortion_size": 5, "patches": patch_db}
    settings = dict(training.default_settings(), epochs=2, batch_size=8, seed=4, clutter=2,
                    jitterepoch=1, checkpoint=str(tmp_path / "c.ckpt.npz"), output=None,
                    script="x.py")
    train_fn = RecordingTrain()
    training.fit(train_fn, eval_fn, Value(0.1), {"dropout": Value()}, dataset, settings)
    assert len(train_fn.batches) == 4
    # Before -jitterepoch: the blank canvases as they are.
    assert not any(batch.any() for batch in train_fn.batches[:2])
    # From it on: two patches a canvas from the database, placed at random
    # from the run's seed, the epoch and the batch.
    for batch, recorded in enumerate(train_fn.batches[2:]):
        expected = clutter.add_clutter(np.zeros((8, 32, 32), np.float32), patch_db, 2,
                                       np.random.RandomState([4, 1, batch]))
        assert recorded.any() and np.array_equal(recorded, expected)
    # Validation and test read the canvases as they are.
    assert len(evaluated) == 4 and not any(X.any() for X in evaluated)
    # Stopped by Ctrl-C after the first batch of epoch 1 and resumed, the run
    # is given the same batches.
    stopped = RecordingTrain(stop_at=3)
    with pytest.raises(training.Interrupted):
        training.fit(stopped, eval_fn, Value(0.1), {"dropout": Value()}, dataset, settings)
    resumed = RecordingTrain()
    training.fit(resumed, eval_fn, Value(0.1), {"dropout": Value()}, dataset, settings,
                 resume=settings["checkpoint"])
    assert len(resumed.batches) == 1
    assert np.array_equal(resumed.batches[0], train_fn.batches[3])
