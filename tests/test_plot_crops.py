"""plot_crops.py: the crops it draws are the layer's, and bad files fail clearly."""
import json

import numpy as np
import pytest
import theano
import theano.tensor as T

from conftest import load_script
from stn import data
from stn.errors import UserError
from stn.layers import affine_transform

script = load_script("plot_crops.py")


@pytest.mark.parametrize("factors, out_size", [((3, 3), (10, 10)), ((1.5, 3), (20, 10))])
def test_crops_match_the_transformer_layer(factors, out_size):
    rng = np.random.RandomState(0)
    canvases = rng.rand(4, 1, 30, 30).astype(np.float32)
    thetas = (np.float32([0.4, 0, 0.1, 0, 0.4, -0.2]) + rng.uniform(-0.3, 0.3, (4, 6))).astype(np.float32)
    images, theta = T.tensor4(), T.matrix()
    layer = theano.function([images, theta], affine_transform(theta, images, factors,
                                                               "nearest"))
    expected = layer(canvases, thetas)
    assert expected.shape[2:] == out_size
    for i in range(4):
        x, y = script.source_points(thetas[i], out_size[0], out_size[1], 30, 30)
        np.testing.assert_allclose(script.bilinear(canvases[i, 0], x, y), expected[i, 0],
                                   atol=1e-5)


@pytest.mark.parametrize("blur, supersample", [(1.5, 1), (0.0, 3), (0.8, 2)])
def test_crops_match_the_layer_with_blur_and_supersampling(blur, supersample):
    import lasagne
    from stn.layers import TransformerLayer
    rng = np.random.RandomState(2)
    canvases = rng.rand(3, 1, 30, 30).astype(np.float32)
    thetas = (np.float32([0.5, 0, 0.1, 0, 0.5, -0.2])
              + rng.uniform(-0.2, 0.2, (3, 6))).astype(np.float32)
    images, theta = T.tensor4(), T.matrix()
    layer = TransformerLayer(lasagne.layers.InputLayer((None, 1, 30, 30), images),
                             lasagne.layers.InputLayer((None, 6), theta), 3,
                             blur=blur, supersample=supersample)
    expected = theano.function([images, theta], lasagne.layers.get_output(layer))(
        canvases, thetas)
    for i in range(3):
        np.testing.assert_allclose(script.crop(canvases[i, 0], thetas[i], 10, 10, blur,
                                               layer.blur_radius, supersample),
                                   expected[i, 0], atol=1e-5)


def test_titles_say_the_class_read_and_the_true_one_when_wrong():
    assert script.label("step 1: ", 3, 3) == ("step 1: read 3", "black")
    assert script.label("", 3) == ("read 3", "black")
    assert script.label("step 2: ", 3, 5) == ("step 2: read 3, is 5", "red")


@pytest.mark.parametrize("steps", [1, 3])
def test_writes_png_for_one_and_three_steps(tmp_path, steps):
    rng = np.random.RandomState(1)
    path = str(tmp_path / "res.npz")
    A = np.tile(np.float32([0.3, 0, 0, 0, 0.3, 0]), (20 * steps, 1))
    data.save_npz(path, x=rng.rand(20, 60, 60).astype(np.float32),
                  A=A if steps == 1 else A.reshape(20, steps, 6),
                  preds=np.zeros(20 * steps, np.int32), downsample=np.float32(2))
    png = script.main(path)
    assert png == str(tmp_path / "res_crops.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_file_without_the_test_transforms_says_why_it_has_no_distance_table(tmp_path,
                                                                               capsys):
    path = str(tmp_path / "res.npz")
    data.save_npz(path, x=np.zeros((2, 30, 30), np.float32), A=np.zeros((2, 6), np.float32),
                  preds=np.zeros(2, np.int32))
    script.main(path)
    assert ("No accuracy by distance: %s keeps no test transforms and boxes" % path
            in capsys.readouterr().out)


def test_more_canvases_than_a_column_go_side_by_side(tmp_path, capsys):
    import matplotlib.image
    rng = np.random.RandomState(2)
    path = str(tmp_path / "res.npz")
    data.save_npz(path, x=rng.rand(20, 60, 60).astype(np.float32),
                  A=np.tile(np.float32([0.3, 0, 0, 0, 0.3, 0]), (20, 1)),
                  preds=np.zeros(20, np.int32), downsample=np.float32(2))
    image = matplotlib.image.imread(script.main(path, n=30))
    assert "holds 20 test canvases: drawing them all" in capsys.readouterr().out
    # Four columns of five (canvas, crop) pairs: about 8 panels wide, 5 high.
    assert 1.3 < image.shape[1] / image.shape[0] < 2.0


def test_draws_with_the_blur_of_the_epoch_it_shows(tmp_path, monkeypatch):
    # A run that started at sigma 1.5 (the layer's radius 3) and faded it to
    # 0.75 by its best epoch, 1: the crops are drawn at 0.75, radius 3.
    rng = np.random.RandomState(3)
    path = str(tmp_path / "res.npz")
    data.save_npz(path, x=rng.rand(4, 30, 30).astype(np.float32),
                  A=np.tile(np.float32([0.5, 0, 0, 0, 0.5, 0]), (4, 1)),
                  preds=np.zeros(4, np.int32), y=np.arange(4, dtype=np.int32),
                  downsample=np.float32(3), best_epoch=np.array(1),
                  history_epoch=np.arange(2), history_blur=np.array([1.5, 0.75]),
                  settings=np.array(json.dumps({"blur": 1.5, "blurepochs": 2})))
    calls = []
    real_crop = script.crop

    def crop(*args, **keywords):
        calls.append(keywords)
        return real_crop(*args, **keywords)

    monkeypatch.setattr(script, "crop", crop)
    script.main(path, n=2)
    assert calls == [{"blur": 0.75, "blur_radius": 3, "supersample": 1}] * 2


def test_draws_the_sharp_crop_from_sharpepoch_on(tmp_path, monkeypatch):
    # -blur 1.5 -sharp -sharpepoch 1: the classifier read the blurred crop at
    # epoch 0, the best, and the unblurred one at epoch 1.
    rng = np.random.RandomState(3)
    path = str(tmp_path / "res.npz")
    theta = np.float32([0.5, 0, 0, 0, 0.5, 0])
    data.save_npz(path, x=rng.rand(4, 30, 30).astype(np.float32), A=np.tile(theta, (4, 1)),
                  preds=np.zeros(4, np.int32), y=np.arange(4, dtype=np.int32),
                  downsample=np.float32(3), best_epoch=np.array(0),
                  history_epoch=np.arange(2), history_blur=np.array([1.5, 1.5]),
                  history_test_acc=np.array([0.5, 0.6]),
                  watch_x=rng.rand(2, 30, 30).astype(np.float32),
                  watch_y=np.arange(2, dtype=np.int32).reshape(2, 1),
                  history_watch_A=np.tile(theta, (2, 2, 1, 1)),
                  settings=np.array(json.dumps({"blur": 1.5, "sharp": True,
                                                "sharpepoch": 1})))
    blurs = []
    real_crop = script.crop

    def crop(*args, **keywords):
        blurs.append(keywords["blur"])
        return real_crop(*args, **keywords)

    monkeypatch.setattr(script, "crop", crop)
    script.main(path, n=2, gif=True)
    # The picture (best epoch 0), then the animation's frames for epochs 0 and 1.
    assert blurs == [1.5] * 2 + [1.5] * 2 + [0.0] * 2


def test_prints_the_test_accuracy_by_the_crops_distance_from_its_digit(tmp_path, capsys):
    # 101x101 canvases, every digit's box centred at pixel (50, 50); the crop
    # centres 50 t px away for a shift t: 0, 1, 5 and 30 px.
    path = str(tmp_path / "res.npz")
    shifts = np.array([0.0, 0.02, 0.1, 0.6])
    all_A = np.zeros((4, 6), np.float32)
    all_A[:, 0] = all_A[:, 4] = 0.5
    all_A[:, 2] = shifts
    data.save_npz(path, x=np.zeros((4, 101, 101), np.float32), A=all_A,
                  preds=np.zeros(4, np.int32), all_A=all_A,
                  all_boxes=np.tile(np.int32([40, 40, 61, 61]), (4, 1, 1)),
                  all_preds=np.int32([7, 3, 7, 1]), all_y=np.int32([7, 7, 7, 7]))
    script.main(path)
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index("Test accuracy by the distance of the crop's centre from "
                              "its digit's centre:") + 2:]
    assert [line.split() for line in table] == [
        ["0-2", "2", "50.0%", "50.00%", "1"], ["2-4", "0", "0.0%", "-", "0"],
        ["4-6", "1", "25.0%", "100.00%", "0"], ["6-8", "0", "0.0%", "-", "0"],
        ["8-12", "0", "0.0%", "-", "0"], ["12-20", "0", "0.0%", "-", "0"],
        ["20+", "1", "25.0%", "0.00%", "1"]]


def test_results_file_without_the_needed_keys(tmp_path):
    path = str(tmp_path / "res.npz")
    data.save_npz(path, x=np.zeros((2, 30, 30), np.float32))
    with pytest.raises(UserError, match="lacks A, preds; give a results file"):
        script.main(path)


def test_gif_animates_the_watched_canvases_epoch_by_epoch(tmp_path, sequences1):
    from PIL import Image
    output = str(tmp_path / "res.npz")
    load_script("2-stn-cnn-mnist.py").main(data=sequences1, output=output, epochs=2,
                                           batch_size=50, initzoom=0.5)
    res = data.load_npz(output)
    assert res["watch_x"].shape == (6, 60, 60) and res["history_watch_A"].shape == (2, 6, 1, 6)
    # The watched transforms are the test set's first six.
    np.testing.assert_array_equal(res["watch_x"], data.load_sequences(sequences1)["X_test"][:6])
    script.main(output, gif=True)
    with Image.open(str(tmp_path / "res_epochs.gif")) as gif:
        assert gif.n_frames == 2


def test_gif_of_a_run_that_kept_no_transforms_is_refused(tmp_path):
    path = str(tmp_path / "res.npz")
    data.save_npz(path, x=np.zeros((2, 30, 30), np.float32), A=np.zeros((2, 6), np.float32),
                  preds=np.zeros(2, np.int32))
    with pytest.raises(UserError, match="keeps no transforms by epoch"):
        script.main(path, gif=True)
    assert not (tmp_path / "res_crops.png").exists()
