"""2-stn-cnn-mnist.py: a real short run, its results file, faults and resume."""
import inspect
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, check_chapter_command, load_script, make_sequences
from stn import cli, data, localization, training
from stn.errors import UserError

script = load_script("2-stn-cnn-mnist.py")
TINY = dict(epochs=1, batch_size=50)


def run(tmp_path, sequences, name="res.npz", **settings):
    output = str(tmp_path / name)
    results = script.main(data=sequences, output=output, **dict(TINY, **settings))
    return output, results


def test_smoke_run_writes_the_chapter_keys(tmp_path, sequences1):
    output, _ = run(tmp_path, sequences1)
    res = data.load_npz(output)
    assert res["probs"].shape == (50, 10) and res["preds"].shape == (50,)
    assert res["x"].shape == (50, 60, 60) and res["y"].shape == (50,)
    assert res["A"].shape == (50, 6)
    assert res["all_y"].shape == (50,) and res["all_preds"].shape == (50,)
    assert float(res["downsample"]) == 3.0
    assert res["history_epoch"].tolist() == [0]
    assert 0 <= res["history_test_acc"][0] <= 1
    assert 0 < res["history_train_seconds"][0] < res["history_seconds"][0]
    assert os.path.exists(str(tmp_path / "res.ckpt.npz"))
    # Flags left out take the script's recipe, over the chapter's defaults.
    settings = json.loads(str(res["settings"]))
    assert dict(script.RECIPE, **TINY) == {key: settings[key]
                                          for key in set(script.RECIPE) | set(TINY)}
    assert settings["downsample"] == 3.0
    args = vars(script.build_parser().parse_args([]))
    assert {key: args[key] for key in script.RECIPE} == script.RECIPE


def test_the_documented_chapter_command_gives_the_chapters_settings():
    argv = check_chapter_command(script, "2-stn-cnn-mnist.py", classdropout=False,
                                 epsilon=1e-6)    # Lasagne's rmsprop epsilon
    # The README shows the same command, on one line.
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read().split("python 2-stn-cnn-mnist.py -optimizer")[1]
    assert ("-optimizer" + readme.split("\n")[0]).split() == argv


def test_a_crop_that_is_not_square(tmp_path, sequences1):
    assert cli.factor_pair("3") == 3.0 and cli.factor_pair("2,3") == (2.0, 3.0)
    output, _ = run(tmp_path, sequences1, downsample=(2.0, 3.0))
    res = data.load_npz(output)
    assert res["downsample"].tolist() == [2.0, 3.0]
    png = load_script("plot_crops.py").main(output)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="-downsample 4: leaves a 15-pixel crop"):
        run(tmp_path, sequences1, downsample=(2.0, 4.0))


def test_parallel_branches_crop_separately(tmp_path, sequences1):
    import lasagne
    import theano
    l_in, l_out, l_A_net, l_transform = script.build_model(60, 1, 3.0, theano.shared(
        np.float32(0)), branches=2)
    assert l_A_net.output_shape == (None, 12)
    assert l_transform.output_shape == (None, 2, 20, 20)
    names = [p.name for p in lasagne.layers.get_all_params(l_A_net)]
    assert names.count("A_net0.W") == names.count("A_net1.W") == 1
    # Each channel is its branch's crop: set branch 1 to a zoom and compare.
    W, b = l_A_net.input_layers[1].get_params()
    b.set_value(np.float32([0.5, 0, 0.2, 0, 0.5, -0.1]))
    canvases = data.load_sequences(sequences1)["X_test"][:3]
    crops = lasagne.layers.get_output(l_transform, deterministic=True).eval(
        {l_in.input_var: canvases})
    plot_crops = load_script("plot_crops.py")
    for k, theta in enumerate([[1, 0, 0, 0, 1, 0], [0.5, 0, 0.2, 0, 0.5, -0.1]]):
        x, y = plot_crops.source_points(theta, 20, 20, 60, 60)
        for i in range(3):
            np.testing.assert_allclose(crops[i, k], plot_crops.bilinear(canvases[i], x, y),
                                       atol=1e-5)

    output, _ = run(tmp_path, sequences1, branches=2)
    res = data.load_npz(output)
    assert res["A"].shape == (50, 2, 6) and res["preds"].shape == (50,)
    assert res["probs"].shape == (50, 10)
    png = plot_crops.main(output)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_initzoom_starts_at_a_centred_crop_and_the_sampling_flags_reach_the_layer():
    import lasagne
    import theano
    l_in, _, l_A_net, l_transform = script.build_model(
        60, 1, 3.0, theano.shared(np.float32(0)), initzoom=0.6, blur=1.5, supersample=2)
    assert (l_transform.blur, l_transform.supersample) == (1.5, 2)
    rng = np.random.RandomState(0)
    canvases = rng.rand(2, 60, 60).astype(np.float32)
    A = lasagne.layers.get_output(l_A_net, deterministic=True).eval(
        {l_in.input_var: canvases})
    np.testing.assert_array_equal(A, np.float32([[0.6, 0, 0, 0, 0.6, 0]] * 2))
    _, _, l_A_net, _ = script.build_model(60, 1, 3.0, theano.shared(np.float32(0)))
    np.testing.assert_array_equal(l_A_net.b.get_value(), [1, 0, 0, 0, 1, 0])


def test_jitter_crops_through_a_noisy_transform_in_training_only():
    import lasagne
    import theano
    import theano.tensor as T
    from stn.layers import affine_transform
    sigma = 0.05
    lasagne.random.set_rng(np.random.RandomState(0))
    l_in, _, l_A_net, l_transform = script.build_model(
        60, 1, 3.0, theano.shared(np.float32(0)), initzoom=0.6, jitter=sigma)
    l_noise = l_transform.input_layers[1]
    assert l_noise.input_layer is l_A_net
    canvases = np.random.RandomState(0).rand(200, 60, 60).astype(np.float32)
    outputs = theano.function([l_in.input_var], lasagne.layers.get_output(
        [l_A_net, l_noise, l_transform]))
    A, jittered, crops = outputs(canvases)
    noise = jittered - A
    # 1200 draws of N(0, sigma): the mean within 4 standard errors, the spread within 10%.
    assert abs(noise.mean()) < 4 * sigma / np.sqrt(noise.size)
    assert abs(noise.std() / sigma - 1) < 0.1
    assert len(np.unique(noise)) == noise.size
    images, theta = T.tensor4(), T.matrix()
    crop = theano.function([images, theta], affine_transform(theta, images, (3, 3), "nearest"))
    np.testing.assert_allclose(crops, crop(canvases[:, None], jittered), atol=1e-5)
    # Validation and test: the transform as predicted.
    deterministic = lasagne.layers.get_output(l_transform, deterministic=True).eval(
        {l_in.input_var: canvases})
    np.testing.assert_allclose(deterministic, crop(canvases[:, None], A), atol=1e-5)


def test_the_jitter_leaves_the_starting_weights_as_they_were():
    import lasagne
    import theano
    weights = []
    for jitter in (0.0, 0.05):
        lasagne.random.set_rng(np.random.RandomState(3))
        _, l_out, _, _ = script.build_model(60, 1, 3.0, theano.shared(np.float32(0)),
                                            jitter=jitter)
        weights.append([p.get_value() for p in lasagne.layers.get_all_params(l_out)])
    assert len(weights[0]) == len(weights[1])
    for plain, noisy in zip(*weights):
        np.testing.assert_array_equal(plain, noisy)


def called_with(monkeypatch, owner, name, tmp_path, sequences, argv):
    """The arguments, by name, that the script run with the flags ``argv``
    passes to ``owner.name``, which stops the run there."""
    class Called(Exception):
        pass

    real = getattr(owner, name)
    signature = inspect.signature(real)   # the real one's, even if already replaced

    def stop(*args, **kwargs):
        raise Called(signature.bind(*args, **kwargs).arguments)
    stop.__wrapped__ = real
    monkeypatch.setattr(owner, name, stop)
    with pytest.raises(Called) as caught:
        run(tmp_path, sequences, **vars(cli.given(script.build_parser(), argv)))
    return caught.value.args[0]


@pytest.mark.parametrize("argv, jitter", [(["-jitter", "0"], 0.0),
                                          (["-jitter", "0.05", "-jitterepoch", "0"], 0.05),
                                          ([], "shared")])
def test_jitter_goes_to_build_model(tmp_path, sequences1, monkeypatch, argv, jitter):
    # By default a shared sigma, which the schedule sets from -jitterepoch on.
    got = called_with(monkeypatch, script, "build_model", tmp_path, sequences1,
                      argv)["jitter"]
    if jitter == "shared":
        assert got.get_value() == 0.0
    else:
        assert got == jitter


@pytest.mark.parametrize("argv, cropjitter", [(["--no-cropjitter"], False), ([], True)])
def test_cropjitter_reaches_the_transformers_noise_layer(tmp_path, sequences1, monkeypatch,
                                                         argv, cropjitter):
    from stn.layers import CropNoiseLayer
    called = called_with(monkeypatch, script, "build_model", tmp_path, sequences1,
                         ["-jitter", "0.05"] + argv)
    assert called["cropjitter"] is cropjitter
    l_transform = script.build_model.__wrapped__(**called)[3]
    assert isinstance(l_transform.input_layers[1], CropNoiseLayer) is cropjitter


@pytest.mark.parametrize("classdropout", [False, True])
def test_classdropout_leaves_the_localization_network_without_dropout(classdropout):
    import lasagne
    import theano
    l_in, l_out, l_A_net, _ = script.build_model(
        60, 1, 3.0, theano.shared(np.float32(0.5)), classdropout=classdropout)
    # A_net's weights start at zero; random ones let its input's dropout show.
    rng = np.random.RandomState(0)
    l_A_net.W.set_value(rng.normal(0, 0.1, l_A_net.W.get_value().shape).astype(np.float32))
    canvases = {l_in.input_var: rng.rand(4, 60, 60).astype(np.float32)}
    for layer, dropped in [(l_A_net, not classdropout), (l_out, True)]:
        trained = lasagne.layers.get_output(layer).eval(canvases)
        deterministic = lasagne.layers.get_output(layer, deterministic=True).eval(canvases)
        assert np.allclose(trained, deterministic) != dropped


def test_classdropout_goes_to_build_model_and_needs_dropout(tmp_path, sequences1,
                                                            monkeypatch):
    for argv, classdropout in (([], True), (["-classdropout"], True),
                               (["--no-classdropout"], False)):
        assert called_with(monkeypatch, script, "build_model", tmp_path, sequences1,
                           argv)["classdropout"] is classdropout
    with pytest.raises(UserError, match="-classdropout: acts on the dropout, so it needs "
                       "-dropout above 0"):
        run(tmp_path, sequences1, classdropout=True, dropout=0.0)
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("argv, epsilon, ema, l2", [([], 1e-4, 0.999, 0.0),
                                                    (["-epsilon", "1e-6"], 1e-6, 0.999, 0.0),
                                                    (["-ema", "0"], 1e-4, 0.0, 0.0),
                                                    (["-l2", "1e-4"], 1e-4, 0.999, 1e-4)])
def test_epsilon_ema_and_l2_reach_build_functions(tmp_path, sequences1, monkeypatch, argv,
                                                  epsilon, ema, l2):
    arguments = called_with(monkeypatch, training, "build_functions", tmp_path,
                            sequences1, argv)
    assert [arguments.get(key) for key in ("epsilon", "ema", "l2")] == [epsilon, ema, l2]


def test_epoch_summary_matches_the_saved_transforms_and_boxes(tmp_path, sequences1,
                                                              capsys):
    # 50 test canvases in one batch of 50: the results' last batch is the whole
    # test set, so the history's statistics can be recomputed from "A".
    output, res = run(tmp_path, sequences1, epochs=2, initzoom=0.5)
    A, boxes = res["A"].astype(np.float64), data.load_sequences(sequences1)["boxes_test"]
    assert len(A) == len(boxes) == 50
    best = list(res["history_epoch"]).index(int(res["best_epoch"]))
    zoom_x = np.sqrt(A[:, 0] ** 2 + A[:, 3] ** 2).mean()
    zoom_y = np.sqrt(A[:, 1] ** 2 + A[:, 4] ** 2).mean()
    shift = np.sqrt(A[:, 2] ** 2 + A[:, 5] ** 2).mean()
    centre_x, centre_y = (A[:, 2] + 1) / 2 * 59, (A[:, 5] + 1) / 2 * 59
    centred = np.mean([b[0, 0] <= x < b[0, 2] and b[0, 1] <= y < b[0, 3]
                       for x, y, b in zip(centre_x, centre_y, boxes)])
    assert res["history_zoom_x"].shape == (2, 1)
    # The whole test set's transforms and boxes, for plot_crops.py's errors table.
    np.testing.assert_array_equal(res["all_A"], res["A"])
    np.testing.assert_array_equal(res["all_boxes"], boxes)
    for key, value in [("zoom_x", zoom_x), ("zoom_y", zoom_y), ("shift", shift),
                       ("centred", centred)]:
        np.testing.assert_allclose(res["history_" + key][best], [value], rtol=1e-5)
    out = capsys.readouterr().out
    assert ("Transform: zoom %.2f across, %.2f down, shift %.2f, centred %.0f%%"
            % (zoom_x, zoom_y, shift, 100 * centred)) in out
    for epoch in (0, 1):
        # The chapter's line, its values to 4 decimals, then the epoch's own.
        assert "Epoch %d Acc Valid %.4f, Acc Train = %.4f, Acc Test = %.4f\n" % (
            (epoch,) + tuple(res["history_" + key][epoch]
                             for key in ("valid_acc", "train_acc", "test_acc"))) in out
        # Before -ratesepoch, both networks learn at the one rate; before
        # -jitterepoch, without the jitter and the recipe's fresh clutter.
        assert ("Loss %.4f, lr 0.0003 (classifier x1, localization x1), jitter 0, clutter 0, "
                "%.0f s "
                "(training %.0f s)") % tuple(
            res["history_" + key][epoch] for key in ("train_loss", "seconds",
                                                    "train_seconds")) in out


@pytest.fixture
def transformers(monkeypatch):
    """The TransformerLayer of each network the script builds, in order."""
    layers = []
    real_build_model = script.build_model

    def capture(*args, **keywords):
        network = real_build_model(*args, **keywords)
        layers.append(network[3])
        return network

    monkeypatch.setattr(script, "build_model", capture)
    return layers


def test_a_fading_blur_reaches_the_layer_as_a_shared_sigma(tmp_path, sequences1,
                                                         transformers):
    layers = transformers
    run(tmp_path, sequences1, epochs=2, blur=1.3, blurepochs=2)
    (transformer,) = layers
    assert transformer.blur_radius == 3                 # int(2 * 1.3 + 0.5)
    np.testing.assert_allclose(transformer.blur.get_value(), 0.65)  # epoch 1's sigma
    run(tmp_path, sequences1, blur=1.3)
    assert layers[1].blur == 1.3                         # no fade: a constant


def test_sharpepoch_reaches_the_layer_as_a_shared_switch(tmp_path, sequences1, transformers):
    layers = transformers
    run(tmp_path, sequences1, epochs=1, blur=1.5, sharp=True, sharpepoch=1)
    assert layers[0].sharp.get_value() == 0          # epoch 0 read the blurred crop
    script.main(resume=str(tmp_path / "res.ckpt.npz"), epochs=2)
    assert layers[1].sharp.get_value() == 1          # epoch 1, resumed, the sharp one
    run(tmp_path, sequences1, blur=1.5, sharp=True, sharpepoch=0)
    assert layers[2].sharp is True                   # from the start: a constant


def test_jitterepoch_reaches_the_noise_as_a_shared_sigma(tmp_path, sequences1, transformers,
                                                         capsys):
    layers = transformers
    run(tmp_path, sequences1, epochs=1, jitter=0.05, jitterepoch=1)
    assert layers[0].input_layers[1].sigma.get_value() == 0      # epoch 0: no noise
    assert ", jitter 0, " in capsys.readouterr().out
    script.main(resume=str(tmp_path / "res.ckpt.npz"), epochs=2)
    np.testing.assert_allclose(layers[1].input_layers[1].sigma.get_value(), 0.05)
    assert ", jitter 0.05, " in capsys.readouterr().out
    run(tmp_path, sequences1, jitter=0.05, jitterepoch=0)
    assert layers[2].input_layers[1].sigma == 0.05               # from the start: a constant


def test_a_blur_that_follows_the_zoom(tmp_path, sequences1):
    settings = dict(dropout=0.0, blur=1.5, blurzoom=True, initzoom=0.6)
    assert training.scheduled(settings, 0)["blur"] == pytest.approx(0.9)    # 1.5 * 0.6
    assert training.scheduled(settings, 3, zoom=0.4)["blur"] == pytest.approx(0.6)
    assert training.scheduled(settings, 3, zoom=1.3)["blur"] == pytest.approx(1.5)
    # In a run: each epoch's sigma is the blur times the last epoch's mean zoom.
    _, res = run(tmp_path, sequences1, epochs=3, blur=1.5, blurzoom=True, initzoom=0.6)
    zoom = (res["history_zoom_x"][:, 0] + res["history_zoom_y"][:, 0]) / 2
    np.testing.assert_allclose(res["history_blur"], 1.5 * np.minimum(1, np.r_[0.6, zoom[:2]]),
                               rtol=1e-6)


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path, sequences1, monkeypatch,
                                                        capsys):
    # With two rates from epoch 1 on: two adam update rules to checkpoint; and
    # the weights' moving average.
    settings = dict(epochs=2, dropout=0.3, blurepochs=2, classlr=2.0, loclr=0.5,
                    ratesepoch=1, ema=0.9)
    straight, expected = run(tmp_path, sequences1, "a.npz", **settings)

    # Press Ctrl-C during the third batch of epoch 0.
    real_update = cli.Progress.update
    calls = []

    def update(self, n=1):
        real_update(self, n)
        calls.append(n)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli.Progress, "update", update)
    # The message names the checkpoint only: no results file exists yet.
    with pytest.raises(training.Interrupted, match=r"^interrupted at epoch 0 after batch "
                       r"3/4; checkpoint in \S*b.ckpt.npz; resume with: python "
                       r"2-stn-cnn-mnist.py --resume \S*b.ckpt.npz$"):
        run(tmp_path, sequences1, "b.npz", **settings)
    monkeypatch.setattr(cli.Progress, "update", real_update)
    capsys.readouterr()
    resumed = script.main(resume=str(tmp_path / "b.ckpt.npz"))
    epoch_lines = [line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("Loss ")]
    assert "(classifier x1, localization x1)" in epoch_lines[0]
    assert "(classifier x2, localization x0.5)" in epoch_lines[1]
    for key in ("preds", "all_preds", "history_valid_acc", "history_test_acc"):
        np.testing.assert_array_equal(resumed[key], expected[key])
    np.testing.assert_allclose(resumed["history_blur"], [1.5, 0.75])
    np.testing.assert_allclose(resumed["A"], expected["A"], rtol=1e-5, atol=1e-6)


def test_resume_with_epochs_continues_a_finished_run(tmp_path, sequences1):
    output, first = run(tmp_path, sequences1)
    ckpt = str(tmp_path / "res.ckpt.npz")
    assert script.main(resume=ckpt)["history_epoch"].tolist() == [0]  # already done
    longer = script.main(resume=ckpt, epochs=2)
    assert longer["history_epoch"].tolist() == [0, 1]
    assert longer["history_test_acc"][0] == first["history_test_acc"][0]
    assert training.checkpoint_settings(ckpt)["epochs"] == 2


def test_the_command_line_gives_main_only_the_flags_typed():
    parser = script.build_parser()
    assert vars(cli.given(parser, ["-lr", "0.1", "--resume", "r.ckpt.npz"])) == {
        "lr": 0.1, "resume": "r.ckpt.npz"}
    assert vars(cli.given(parser, ["--batch-size", "32"])) == {"batch_size": 32}


def test_resume_refuses_a_changed_flag_and_takes_a_new_output(tmp_path, sequences1):
    output, _ = run(tmp_path, sequences1, "a.npz")
    ckpt = str(tmp_path / "a.ckpt.npz")
    with pytest.raises(UserError, match=r"--lr 0.1: a resumed run keeps the settings it "
                       r"started with \(0.0003 in .*a.ckpt.npz\)"):
        script.main(resume=ckpt, epochs=2, lr=0.1)
    # Another script's checkpoint is refused before any data is read.
    for other in ("3-recurrent-stn-mnist.py", "1-train-mnist.py"):
        with pytest.raises(UserError, match="a.ckpt.npz: a checkpoint of 2-stn-cnn-mnist.py; "
                           "resume it with: python 2-stn-cnn-mnist.py --resume"):
            load_script(other).main(resume=ckpt)
    with pytest.raises(UserError, match=r"--batch-size 5, --downsample 2.0: a resumed run "
                       r"keeps the settings it started with \(50, 3.0 in .*\); leave those "
                       r"flags out"):
        script.main(resume=ckpt, downsample=2.0, batch_size=5)
    before = (tmp_path / "a.npz").read_bytes()
    # A flag equal to the run's own is accepted, however spelt; --output takes effect.
    resumed = script.main(resume=ckpt, epochs=2, batch_size=50, downsample=(3.0, 3.0),
                          data=os.path.relpath(sequences1), output=str(tmp_path / "b.npz"))
    assert resumed["history_epoch"].tolist() == [0, 1]
    assert (tmp_path / "a.npz").read_bytes() == before
    assert json.loads(str(data.load_npz(str(tmp_path / "b.npz"))["settings"]))[
        "output"] == str(tmp_path / "b.npz")


def test_resume_from_a_copy_elsewhere_leaves_the_original_alone(tmp_path, monkeypatch):
    # A run started with relative paths, resumed from another directory
    # through a copy of its checkpoint.
    monkeypatch.chdir(tmp_path)
    make_sequences(tmp_path, 1, 48, train_size=100)
    script.main(data="seq1.npz", output="run.npz", epochs=1, batch_size=50)
    original = {name: (tmp_path / name).read_bytes() for name in ("run.npz", "run.ckpt.npz")}
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "copy.ckpt.npz").write_bytes(original["run.ckpt.npz"])
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = script.main(resume="copy.ckpt.npz", epochs=2)
    assert resumed["history_epoch"].tolist() == [0, 1]
    assert (tmp_path / "elsewhere" / "copy.npz").exists()
    assert {name: (tmp_path / name).read_bytes() for name in original} == original
    # Without its dataset, the hint rewrites that very file.
    (tmp_path / "seq1.npz").rename(tmp_path / "gone.npz")
    with pytest.raises(UserError, match="create it with: python create_mnist_sequence.py "
                       "--nb_digits 1 --output_dim 48 .*--train_size 100 .*--output "
                       + str(tmp_path / "seq1.npz")):
        script.main(resume="copy.ckpt.npz", epochs=3)


def test_a_checkpoint_older_than_the_sampling_flags_resumes_as_the_chapter(
        tmp_path, sequences1):
    # A run of the chapter's network, its checkpoint stripped of what this
    # project added later: the flags' settings and the transform statistics.
    run(tmp_path, sequences1, blur=0.0, initzoom=1.0, jitter=0.0)
    path = str(tmp_path / "res.ckpt.npz")
    ckpt = data.load_npz(path)
    settings = json.loads(str(ckpt["settings"]))
    for key in training.TRANSFORM_FLAGS + ("blurepochs", "sharpepoch", "jitterepoch"):
        del settings[key]
    ckpt["settings"] = np.array(json.dumps(settings))
    for key in ("blur", "watch_A") + tuple(localization.STATS):
        del ckpt["history_" + key]
    data.save_npz(path, **ckpt)
    resumed = script.main(resume=path, epochs=2)
    settings = json.loads(str(resumed["settings"]))
    assert (settings["blur"], settings["initzoom"], settings["supersample"],
            settings["jitter"]) == (0.0, 1.0, 1, 0.0)
    assert resumed["history_zoom_x"].shape == (2, 1)
    assert np.isnan(resumed["history_zoom_x"][0]).all()
    assert np.isfinite(resumed["history_zoom_x"][1]).all()


def test_a_checkpoint_older_than_the_recipes_flags_resumes_as_it_ran(
        tmp_path, sequences1, transformers):
    # A run of the former defaults (the sharp crop from the start, one rate,
    # dropout in both networks, no jitter, no moving average), its checkpoint
    # stripped of the flags added since: they resume at the chapter's values,
    # not at today's recipe.
    later = ("sharpepoch", "classdropout", "ratesepoch", "classlr", "loclr", "ema", "l2",
             "jitter", "jitterepoch")
    run(tmp_path, sequences1, sharp=True, sharpepoch=0, classdropout=False,
        ratesepoch=0, classlr=1.0, loclr=1.0, ema=0.0, jitter=0.0, jitterepoch=0)
    path = str(tmp_path / "res.ckpt.npz")
    ckpt = data.load_npz(path)
    settings = json.loads(str(ckpt["settings"]))
    for key in later:
        del settings[key]
    ckpt["settings"] = np.array(json.dumps(settings))
    data.save_npz(path, **ckpt)
    resumed = script.main(resume=path, epochs=2)
    settings = json.loads(str(resumed["settings"]))
    assert {key: settings[key] for key in later} == {
        key: script.build_parser().chapter_defaults[key] for key in later} == dict(
        sharpepoch=0, classdropout=False, ratesepoch=0, classlr=1.0, loclr=1.0, ema=0.0,
        l2=0.0, jitter=0.0, jitterepoch=0)
    assert transformers[1].sharp is True                 # a constant, as it ran
    assert resumed["history_epoch"].tolist() == [0, 1]


@pytest.mark.parametrize("lr", [1e30, 1e38])   # as reported: 1e38 ended in an IndexError
def test_nan_loss_stops_and_keeps_the_previous_results(tmp_path, sequences1, lr):
    output = tmp_path / "res.npz"
    data.save_npz(str(output), previous=np.arange(3))
    before = output.read_bytes()
    with pytest.raises(UserError, match="the loss became nan .*try a lower learning rate"):
        run(tmp_path, sequences1, lr=lr, optimizer="adam", downsample=2, batch_size=100,
            epochs=3)
    assert output.read_bytes() == before


def test_data_that_does_not_fit(tmp_path, sequences3):
    with pytest.raises(UserError, match="holds 3 digits per canvas, this script reads 1"):
        run(tmp_path, sequences3)
    with pytest.raises(UserError, match="no such file; create it with: python "
                       "create_mnist_sequence.py --nb_digits 1"):
        run(tmp_path, str(tmp_path / "missing.npz"))


def test_downsample_too_large_is_refused_before_training(tmp_path, sequences1):
    with pytest.raises(UserError, match="-downsample 4: leaves a 15-pixel crop"):
        run(tmp_path, sequences1, downsample=4)


@pytest.mark.parametrize("flag, value", [("sharp", True), ("blurepochs", 3),
                                         ("blurzoom", True)])
def test_a_blur_flag_without_blur_is_refused(tmp_path, sequences1, flag, value):
    with pytest.raises(UserError, match="-%s: acts on the blur, so it needs -blur above 0"
                       % flag):
        run(tmp_path, sequences1, blur=0.0, **{flag: value})


def test_sharpepoch_without_sharp_is_refused(tmp_path, sequences1):
    with pytest.raises(UserError, match="-sharpepoch: .* so it needs -sharp$"):
        run(tmp_path, sequences1, sharp=False, sharpepoch=2)
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("flag, value, needs", [("jitterepoch", 2, "one of them above 0"),
                                               ("cropjitter", True, "-jitter above 0")])
def test_a_jitter_flag_without_jitter_is_refused(tmp_path, sequences1, flag, value, needs):
    with pytest.raises(UserError, match="-%s: .* so it needs %s$" % (flag, needs)):
        run(tmp_path, sequences1, jitter=0.0, clutter=0, **{flag: value})
    assert os.listdir(str(tmp_path)) == []


def test_clutter_alone_is_laid_from_jitterepoch_on(tmp_path, sequences1, capsys):
    output, _ = run(tmp_path, sequences1, epochs=2, jitter=0.0, clutter=2, jitterepoch=1)
    settings = json.loads(str(data.load_npz(output)["settings"]))
    assert (settings["clutter"], settings["jitterepoch"], settings["jitter"]) == (2, 1, 0.0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Loss")]
    assert [", clutter %d," % n in line for n, line in zip((0, 2), lines)] == [True, True]


def test_a_dataset_without_clutter_gets_none_from_the_recipe_and_refuses_it_typed(
        tmp_path, capsys):
    clean = make_sequences(tmp_path, 1, 60, train_size=50, nb_distortions=0)
    assert script.RECIPE["clutter"] > 0
    output, _ = run(tmp_path, clean)
    assert json.loads(str(data.load_npz(output)["settings"]))["clutter"] == 0
    out = capsys.readouterr().out
    assert "-clutter 0: %s has no clutter (--nb_distortions 0)" % clean in out
    with pytest.raises(UserError, match="-clutter 3: .* has no clutter .*; leave -clutter at 0$"):
        run(tmp_path, clean, name="typed.npz", clutter=3)
    assert not os.path.exists(str(tmp_path / "typed.npz"))


def test_jitterepoch_is_refused_where_the_recipes_clutter_gives_way_and_no_jitter_is_left(
        tmp_path):
    clean = make_sequences(tmp_path, 1, 60, train_size=50, nb_distortions=0)
    with pytest.raises(UserError, match="-jitterepoch: .* has no clutter, so -jitterepoch "
                                        "needs -jitter above 0$"):
        run(tmp_path, clean, jitter=0.0, jitterepoch=3)
    assert sorted(os.listdir(str(tmp_path))) == [os.path.basename(clean)]


def test_ratesepoch_without_a_rate_factor_is_refused(tmp_path, sequences1):
    with pytest.raises(UserError, match="-ratesepoch: .* needs one of them other than 1"):
        run(tmp_path, sequences1, classlr=1.0, loclr=1.0, ratesepoch=2)
    assert os.listdir(str(tmp_path)) == []


def test_a_recipes_dependent_flag_does_not_refuse_its_partner_typed_off(
        tmp_path, sequences1, monkeypatch):
    # Only a typed flag is refused: the recipe's -ratesepoch and -blurepochs
    # are left alone when the user types the one rate and no blur.
    monkeypatch.setattr(script, "RECIPE", dict(script.RECIPE, ratesepoch=1, classlr=2.0,
                                               blurepochs=3))
    output, _ = run(tmp_path, sequences1, classlr=1.0, blur=0.0)
    settings = json.loads(str(data.load_npz(output)["settings"]))
    assert (settings["ratesepoch"], settings["classlr"], settings["blur"]) == (1, 1.0, 0.0)


def test_a_canvas_too_small_for_the_localization_network_is_refused(tmp_path):
    small = make_sequences(tmp_path, 1, 30, train_size=50)
    with pytest.raises(UserError, match="canvases are 30 pixels wide; the localization "
                       "network needs at least 32"):
        run(tmp_path, small, downsample=1.5)


@pytest.mark.parametrize("flags, message", [
    (["-lr", "0"], "argument -lr/--lr: must be a positive number"),
    (["-loclr", "-1"], "argument -loclr/--loclr: must be a positive number"),
    (["-classlr", "0"], "argument -classlr/--classlr: must be a positive number"),
    (["--epochs", "0"], "argument --epochs: must be at least 1"),
    (["--batch-size", "-1"], "argument --batch-size: must be at least 1"),
    (["-optimizer", "sgd"], "argument -optimizer/--optimizer: invalid choice: 'sgd'"),
    (["-downsample", "-2"], "argument -downsample/--downsample: must be a positive"),
    (["-downsample", "2,0"], "argument -downsample/--downsample: must be a positive"),
    (["-downsample", "1,2,3"], "argument -downsample/--downsample: '1,2,3': give one "
                               "number or two (rows,cols)"),
    (["-blur", "-1"], "argument -blur/--blur: must be 0 or more"),
    (["-jitter", "-0.1"], "argument -jitter/--jitter: must be 0 or more"),
    (["-supersample", "0"], "argument -supersample/--supersample: must be at least 1"),
    (["-initzoom", "0"], "argument -initzoom/--initzoom: must be a positive number"),
    (["-epsilon", "0"], "argument -epsilon/--epsilon: must be a positive number"),
    (["--output", "/no/such/dir/res.npz"], "--output /no/such/dir/res.npz: the "
                                           "directory /no/such/dir does not exist"),
])
def test_bad_flags_are_one_line_errors(flags, message):
    out = subprocess.run([sys.executable, "2-stn-cnn-mnist.py"] + flags, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
