"""3-recurrent-stn-mnist.py: step ordering of the transforms and crops, a short run."""
import json

import lasagne
import numpy as np
import theano
import theano.tensor as T

from conftest import check_chapter_command, load_script
from stn import data, training
from stn.layers import affine_transform

script = load_script("3-recurrent-stn-mnist.py")
DIM, STEPS = 40, 3


def model():
    sh_drp = theano.shared(lasagne.utils.floatX(0.0))
    return script.build_model(DIM, STEPS, 2.0, sh_drp)


def test_transforms_are_canvas_major_and_differ_by_step():
    l_in, l_out, l_A_net, _ = model()
    l_A_net.W.set_value(np.random.RandomState(0).normal(0, 0.05, l_A_net.W.get_value().shape)
                        .astype(np.float32))
    A_fn = theano.function([l_in.input_var],
                           lasagne.layers.get_output(l_A_net, deterministic=True))
    rng = np.random.RandomState(1)
    canvases = rng.rand(3, DIM, DIM).astype(np.float32)
    canvases[1] = canvases[0]
    A = A_fn(canvases).reshape(3, STEPS, 6)
    np.testing.assert_allclose(A[0], A[1], rtol=1e-5)   # rows 0-2 and 3-5: equal canvases
    assert np.abs(A[0] - A[2]).max() > 1e-4             # another canvas, other transforms
    assert np.abs(A[0, 0] - A[0, 1]).max() > 1e-4       # the GRU moves between steps


def test_crop_k_of_canvas_i_comes_from_canvas_i():
    l_in, _, l_A_net, l_transform = model()
    theta = T.matrix()
    crops_fn = theano.function([l_in.input_var, theta], lasagne.layers.get_output(
        l_transform, {l_A_net: theta}, deterministic=True))
    rng = np.random.RandomState(2)
    canvases = rng.rand(4, DIM, DIM).astype(np.float32)
    # Hand-set transforms: step k looks at a different third of the canvas.
    thetas = np.array([[0.3, 0, -0.6 + 0.6 * k, 0, 0.5, 0.1 * i]
                       for i in range(4) for k in range(STEPS)], np.float32)
    crops = crops_fn(canvases, thetas)
    assert crops.shape == (4 * STEPS, 1, DIM // 2, DIM // 2)
    images, th = T.tensor4(), T.matrix()
    one = theano.function([images, th], affine_transform(th, images, (2, 2), "nearest"))
    for i in range(4):
        for k in range(STEPS):
            expected = one(canvases[i][None, None], thetas[i * STEPS + k][None])
            np.testing.assert_allclose(crops[i * STEPS + k], expected[0], atol=1e-6)


def test_jitter_moves_each_step_of_each_canvas_in_training_only():
    sh_drp = theano.shared(lasagne.utils.floatX(0.0))
    lasagne.random.set_rng(np.random.RandomState(0))
    l_in, _, l_A_net, l_transform = script.build_model(DIM, STEPS, 2.0, sh_drp, jitter=0.1)
    l_noise = l_transform.input_layers[1]
    canvases = {l_in.input_var: np.random.RandomState(3).rand(4, DIM, DIM).astype(np.float32)}
    A, jittered = theano.function([l_in.input_var], lasagne.layers.get_output(
        [l_A_net, l_noise]))(canvases[l_in.input_var])
    noise = jittered - A
    assert noise.shape == (4 * STEPS, 6) and len(np.unique(noise)) == noise.size
    assert 0.05 < noise.std() < 0.2
    trained, tested = (lasagne.layers.get_output(l_transform, deterministic=d).eval(canvases)
                       for d in (False, True))
    A_expr = lasagne.layers.get_output(l_A_net, deterministic=True)
    untouched = lasagne.layers.get_output(l_transform, {l_noise: A_expr},
                                          deterministic=True).eval(canvases)
    np.testing.assert_allclose(tested, untouched, atol=1e-6)
    assert np.abs(trained - tested).max() > 1e-3


def test_cropjitter_scales_each_steps_noise_by_its_transform():
    from stn.layers import CropNoiseLayer
    sh_drp = theano.shared(lasagne.utils.floatX(0.0))
    lasagne.random.set_rng(np.random.RandomState(0))
    l_in, _, l_A_net, l_transform = script.build_model(DIM, STEPS, 2.0, sh_drp, jitter=0.1,
                                                       cropjitter=True, initzoom=0.5)
    l_noise = l_transform.input_layers[1]
    assert isinstance(l_noise, CropNoiseLayer)
    canvases = np.random.RandomState(3).rand(4, DIM, DIM).astype(np.float32)
    A, jittered = theano.function([l_in.input_var], lasagne.layers.get_output(
        [l_A_net, l_noise]))(canvases)
    # A starts as 0.5 I: the noise of sigma 0.1 in the crop is 0.05 in the canvas.
    np.testing.assert_allclose(A, np.tile([0.5, 0, 0, 0, 0.5, 0], (4 * STEPS, 1)), atol=1e-6)
    # 72 draws: their spread within 30% of 0.05 (the canvas's units would give 0.1).
    assert 0.035 < (jittered - A).std() < 0.065


def test_the_documented_chapter_command_gives_the_chapters_settings():
    check_chapter_command(script, "3-recurrent-stn-mnist.py",
                          epsilon=1e-6)           # Lasagne's rmsprop epsilon


def test_smoke_run_writes_the_chapter_keys(tmp_path, sequences3, capsys):
    output = str(tmp_path / "res3.npz")
    script.main(data=sequences3, output=output, epochs=1, batch_size=25)
    res = data.load_npz(output)
    assert (", Seq Acc Test = %.4f\n" % res["history_test_seq_acc"][0]) in capsys.readouterr().out
    assert res["probs"].shape == (75, 10) and res["preds"].shape == (75,)
    assert res["x"].shape == (25, 90, 90) and res["y"].shape == (25, 3)
    assert res["A"].shape == (25, 3, 6)
    assert res["all_y"].shape == (50, 3) and res["all_preds"].shape == (50, 3)
    # Each step's transform of every test canvas, and each digit's box, in order.
    assert res["all_A"].shape == (50, 3, 6)
    np.testing.assert_array_equal(res["all_boxes"],
                                  data.load_sequences(sequences3, nb_digits=3)["boxes_test"])
    assert len(res["history_test_seq_acc"]) == 1
    # One zoom and centred share per step, each centred share a fraction of 50.
    assert res["history_zoom_y"].shape == res["history_centred"].shape == (1, 3)
    # The STN scripts' recipe: the transforms start as a centred 0.65 crop.
    # This script has no -classdropout (its dropout acts in the classifier only).
    settings = json.loads(str(res["settings"]))
    assert {key: settings[key] for key in training.RECIPE if key != "batch_size"} == {
        key: value for key, value in training.RECIPE.items() if key != "batch_size"}
    assert "classdropout" not in settings
    np.testing.assert_allclose(res["history_zoom_y"], training.RECIPE["initzoom"], atol=0.2)
    np.testing.assert_allclose(res["history_centred"] * 50,
                               np.round(res["history_centred"] * 50), atol=1e-9)
    plot = load_script("plot_crops.py")
    png = plot.main(output)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_run_with_clutter_on_the_three_digit_canvases_lays_it_from_jitterepoch_on(
        tmp_path, sequences3, capsys):
    output = str(tmp_path / "res3.npz")
    script.main(data=sequences3, output=output, epochs=2, batch_size=25, clutter=2,
                jitterepoch=1)
    assert json.loads(str(data.load_npz(output)["settings"]))["clutter"] == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Loss")]
    assert len(lines) == 2
    assert ", clutter 0," in lines[0] and ", clutter 2," in lines[1]
