"""4-colocalize-mnist.py: boxes, IoU and the loss are exact; a real short run."""
import numpy as np
import pytest
import theano
import theano.tensor as T

from conftest import load_script
from stn import data
from stn.errors import UserError

script = load_script("4-colocalize-mnist.py")


def test_iou_of_known_boxes():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 4]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [1, 1, 3, 3]])
    np.testing.assert_allclose(script.iou(a, b), [1, 50 / 150., 0, 4 / 16.])


def test_crop_boxes_are_the_pixels_the_layer_samples():
    from stn.layers import affine_transform
    dim, scale = 60, script.attention_scale(60)
    thetas = script.random_thetas(np.random.RandomState(0), 5, scale)
    # Whole-pixel shifts, so that the crop is an exact cut of the canvas.
    step = 2.0 / (dim - 1)
    thetas[:, [2, 5]] = np.round(thetas[:, [2, 5]] / step) * step
    boxes = script.crop_boxes(thetas, dim, 28)
    np.testing.assert_allclose(boxes[:, 2:] - boxes[:, :2], 28, atol=1e-6)
    canvases = np.random.RandomState(1).rand(5, 1, dim, dim).astype(np.float32)
    images, theta = T.tensor4(), T.matrix()
    crops = theano.function([images, theta], affine_transform(
        theta, images, (dim / 28.5, dim / 28.5), "nearest"))(canvases, thetas)
    for canvas, crop, box in zip(canvases, crops, boxes):
        x0, y0 = int(round(box[0])), int(round(box[1]))
        np.testing.assert_allclose(crop[0], canvas[0, y0:y0 + 28, x0:x0 + 28], atol=1e-5)
    # Random windows stay inside the canvas.
    many = script.crop_boxes(script.random_thetas(np.random.RandomState(2), 500, scale),
                             dim, 28)
    assert many[:, :2].min() >= -1e-9 and many[:, 2:].max() <= dim + 1e-9


def test_triplet_hinge_matches_numpy():
    rng = np.random.RandomState(3)
    e_n, e_m, e_r = (rng.randn(7, 5).astype(np.float32) for _ in range(3))
    a, b, c = T.matrices("abc")
    loss = theano.function([a, b, c], script.triplet_hinge(a, b, c, 0.5))(e_n, e_m, e_r)
    near, far = ((e_n - e_m) ** 2).sum(1), ((e_n - e_r) ** 2).sum(1)
    expected = np.maximum(0, near - far + 0.5).mean()
    assert 0 < expected
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_place_layer_keeps_the_crop_inside(cnn_weights):
    import lasagne
    layers = script.build_model(60, cnn_weights)
    where = layers["A_net"].input_layer
    where.b.set_value(np.float32([50, -50]))   # pushed to the top right corner
    A = lasagne.layers.get_output(layers["A_net"], deterministic=True).eval(
        {layers["in"].input_var: np.zeros((2, 60, 60), np.float32)})
    scale = script.attention_scale(60)
    np.testing.assert_allclose(A, [[scale, 0, 1 - scale, 0, scale, scale - 1]] * 2,
                               rtol=1e-6)
    box = script.crop_boxes(A, 60, 28)[0]
    np.testing.assert_allclose(box, [32, 0, 60, 28], atol=1e-4)
    assert layers["crop"].output_shape == (None, 1, 28, 28)


@pytest.mark.parametrize("blank_negative", [False, True])
def test_loss_is_the_hinge_with_and_without_the_blank_term(cnn_weights, blank_negative):
    # The training function's loss, before its step, against the same terms
    # computed from the crops it looks at: NumPy encodings of its own crops,
    # of the random windows the shifts place, and of an empty crop.
    import lasagne
    dim = 40
    layers = script.build_model(dim, cnn_weights)
    train_fn, look_fn = script.build_functions(layers, 0.0, 0.5, blank_negative)
    rng = np.random.RandomState(4)
    X = rng.rand(6, dim, dim).astype(np.float32)
    shifts = rng.uniform(-1, 1, (6, 2)).astype(np.float32)
    crops = look_fn(X)[1]
    scale = script.attention_scale(dim)
    windows = np.zeros((6, 6), np.float32)
    windows[:, 0] = windows[:, 4] = scale
    windows[:, [2, 5]] = (1 - scale) * shifts
    crop_fn = lasagne.layers.get_output(layers["random_crop"]).eval
    random_crops = crop_fn({layers["in"].input_var: X,
                            layers["random_theta"].input_var: windows})[:, 0]
    encoder = lasagne.layers.get_output(layers["encoder"], deterministic=True)

    def encode(images):
        e = encoder.eval({layers["encoder_in"].input_var: images[:, None]})
        return e / np.sqrt((e ** 2).sum(1, keepdims=True) + 1e-8)

    e_n, e_r = encode(crops), encode(random_crops)
    e_m, e_b = np.roll(e_n, 1, axis=0), encode(np.zeros((1, 28, 28), np.float32))
    hinge = lambda neg: np.maximum(0, ((e_n - e_m) ** 2).sum(1)
                                   - ((e_n - neg) ** 2).sum(1) + 0.5).mean()
    expected = hinge(e_r) + (hinge(e_b) if blank_negative else 0)
    assert hinge(e_b) > 0
    np.testing.assert_allclose(train_fn(X, shifts), expected, rtol=1e-4)


def test_main_trains_and_draws(model_file, sequences1, tmp_path):
    output = str(tmp_path / "coloc.png")
    digit = int(np.bincount(data.load_npz(sequences1)["y_test"].ravel()).argmax())
    result = script.main(model=model_file, data=sequences1, digit=digit, epochs=1,
                         batch_size=8, n=3, output=output)
    assert len(result["loss"]) == 1 and np.isfinite(result["loss"][0])
    assert 0 <= result["located"][0] <= 1 and result["A"].shape[1] == 6
    with open(output, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "coloc_curves.png").exists()


def test_bad_inputs_are_named(model_file, sequences1, tmp_path):
    with pytest.raises(UserError, match="1-train-mnist.py"):
        script.main(model=str(tmp_path / "none.npz"), data=sequences1)
    with pytest.raises(UserError, match="create_mnist_sequence.py --nb_digits 1"):
        script.main(model=model_file, data=str(tmp_path / "none.npz"))
