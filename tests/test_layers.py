"""stn.layers: TransformerLayer against an independent SciPy sampler; Repeat."""
import lasagne
import numpy as np
import pytest
import theano
import theano.tensor as T
from scipy import ndimage

from stn.layers import CropNoiseLayer, Repeat, TransformerLayer, jittered

SCIPY_MODE = {"nearest": "nearest", "mirror": "mirror", "wrap": "grid-wrap"}


def transformer(shape, downsample=1, border_mode="nearest", **keywords):
    images, theta = T.tensor4("images"), T.matrix("theta")
    layer = TransformerLayer(lasagne.layers.InputLayer(shape, images),
                             lasagne.layers.InputLayer((None, 6), theta),
                             downsample_factor=downsample, border_mode=border_mode,
                             **keywords)
    fn = theano.function([images, theta], lasagne.layers.get_output(layer))
    return layer, fn


def reference(images, thetas, out_h, out_w, border_mode):
    """The layer's definition, computed with NumPy coordinates and SciPy sampling."""
    n, c, h, w = images.shape
    x_t, y_t = np.meshgrid(np.linspace(-1, 1, out_w), np.linspace(-1, 1, out_h))
    grid = np.stack([x_t.ravel(), y_t.ravel(), np.ones(x_t.size)])
    out = np.empty((n, c, out_h, out_w))
    for i in range(n):
        x_s, y_s = thetas[i].reshape(2, 3).astype(np.float64).dot(grid)
        coords = [(y_s + 1) / 2 * (h - 1), (x_s + 1) / 2 * (w - 1)]
        for ch in range(c):
            out[i, ch] = ndimage.map_coordinates(
                images[i, ch].astype(np.float64), coords, order=1,
                mode=SCIPY_MODE[border_mode]).reshape(out_h, out_w)
    return out


def random_inputs(n=3, c=2, h=13, w=17, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.rand(n, c, h, w).astype(np.float32)
    thetas = (np.array([1, 0, 0, 0, 1, 0]) + rng.uniform(-0.7, 0.7, (n, 6))).astype(np.float32)
    return images, thetas


@pytest.mark.parametrize("height, width", [(13, 17), (28, 28), (60, 60), (100, 100)])
def test_identity_reproduces_the_input_exactly(height, width):
    images, _ = random_inputs(h=height, w=width)
    _, fn = transformer((None, 2, height, width))
    identity = np.tile(np.float32([1, 0, 0, 0, 1, 0]), (3, 1))
    np.testing.assert_array_equal(fn(images, identity), images)


def test_translation_shifts_by_the_expected_pixels():
    images, _ = random_inputs(w=11)
    _, fn = transformer((None, 2, 13, 11))
    # x_s = x_t + 0.4 reads 0.4 * (11 - 1) / 2 = 2 pixels further right.
    shifted = fn(images, np.tile(np.float32([1, 0, 0.4, 0, 1, 0]), (3, 1)))
    np.testing.assert_allclose(shifted[..., :-2], images[..., 2:], atol=1e-5)
    # Past the right edge, 'nearest' repeats the last column.
    np.testing.assert_allclose(shifted[..., -2:], images[..., -1:].repeat(2, -1), atol=1e-5)


@pytest.mark.parametrize("downsample, expected", [
    (1, (13, 17)), (3, (4, 5)), (3.0, (4, 5)), ((2, 4), (6, 4)), ((1.5, 2.5), (8, 6))])
def test_output_shapes(downsample, expected):
    images, thetas = random_inputs()
    layer, fn = transformer((None, 2, 13, 17), downsample)
    assert layer.output_shape == (None, 2) + expected
    assert fn(images, thetas).shape == (3, 2) + expected
    assert TransformerLayer((None, 1, 100, 100), (None, 6), 3).output_shape == (None, 1, 33, 33)


@pytest.mark.parametrize("size", [22, 30, 33, 60, 100])
def test_declared_and_computed_shapes_agree_for_factors_below_and_above_one(size):
    images, theta = T.tensor4("images"), T.matrix("theta")
    layers = [TransformerLayer(lasagne.layers.InputLayer((None, 1, size, size), images),
                               lasagne.layers.InputLayer((None, 6), theta), factor)
              for factor in (0.6, 0.7, 1.1, 1.5, 1.875, 2.2, 3, 3.3)]
    shapes = theano.function([images, theta],
                             [lasagne.layers.get_output(layer).shape for layer in layers])
    computed = shapes(np.zeros((1, 1, size, size), np.float32),
                      np.float32([[1, 0, 0, 0, 1, 0]]))
    assert [tuple(shape[2:]) for shape in computed] == [layer.output_shape[2:]
                                                       for layer in layers]
    # Quotients a float rounding below a whole number: 60 / 0.6 and 33 / 1.1.
    if size in (60, 33):
        assert layers[0 if size == 60 else 2].output_shape[2] == {60: 100, 33: 30}[size]


@pytest.mark.parametrize("border_mode", ["nearest", "mirror", "wrap"])
@pytest.mark.parametrize("downsample", [1, (2, 3)])
def test_matches_an_independent_bilinear_sampler(border_mode, downsample):
    images, thetas = random_inputs()
    layer, fn = transformer((None, 2, 13, 17), downsample, border_mode)
    out = fn(images, thetas)
    expected = reference(images, thetas, out.shape[2], out.shape[3], border_mode)
    np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("sigma", [0.6, 1.5])
def test_blur_is_scipys_gaussian_filter_before_sampling(sigma):
    images, thetas = random_inputs()
    layer, fn = transformer((None, 2, 13, 17), (2, 3), blur=sigma)
    out = fn(images, thetas)
    assert layer.output_shape == (None, 2, 6, 5) and out.shape == (3, 2, 6, 5)
    blurred = np.stack([[ndimage.gaussian_filter(channel.astype(np.float64), sigma,
                                                 mode="nearest", truncate=2.0)
                         for channel in image] for image in images])
    expected = reference(blurred, thetas, 6, 5, "nearest")
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_a_shared_blur_can_change_and_fade_to_none():
    images, thetas = random_inputs()
    sigma = theano.shared(np.float32(1.5))
    layer, fn = transformer((None, 2, 13, 17), (2, 3), blur=sigma)
    assert layer.blur_radius == 3
    sigma.set_value(np.float32(0.6))
    # The kernel keeps its radius of 3: SciPy's truncate at 3 / 0.6 sigmas.
    blurred = np.stack([[ndimage.gaussian_filter(channel.astype(np.float64), 0.6,
                                                 mode="nearest", truncate=3 / 0.6)
                         for channel in image] for image in images])
    np.testing.assert_allclose(fn(images, thetas),
                               reference(blurred, thetas, 6, 5, "nearest"), atol=2e-5)
    sigma.set_value(np.float32(0))
    np.testing.assert_allclose(fn(images, thetas),
                               reference(images, thetas, 6, 5, "nearest"), atol=2e-5)


def test_sharp_outputs_the_plain_crop_with_the_blurred_crops_gradient():
    images, thetas = random_inputs()
    weights = np.random.RandomState(5).rand(3, 2, 6, 5).astype(np.float32)
    shared_sharp = theano.shared(np.float32(0), name="sharp")
    fns = []
    for keywords in ({}, {"blur": 1.5}, {"blur": 1.5, "sharp": True},
                     {"blur": 1.5, "sharp": shared_sharp}):
        images_var, theta = T.tensor4("images"), T.matrix("theta")
        layer = TransformerLayer(lasagne.layers.InputLayer((None, 2, 13, 17), images_var),
                                 lasagne.layers.InputLayer((None, 6), theta), (2, 3),
                                 **keywords)
        out = lasagne.layers.get_output(layer)
        fns.append(theano.function([images_var, theta],
                                   [out, T.grad((out * weights).sum(), theta)],
                                   profile=True))
    (plain, plain_grad), (blurred, blurred_grad), (sharp, sharp_grad) = [
        fn(images, thetas) for fn in fns[:3]]
    np.testing.assert_allclose(sharp, plain, atol=1e-5)
    np.testing.assert_allclose(sharp_grad, blurred_grad, rtol=1e-4, atol=1e-5)
    assert np.abs(blurred_grad - plain_grad).max() > 1e-2
    assert np.abs(sharp - blurred).max() > 1e-2
    # A shared sharp s outputs blurred + s * (plain - blurred), with the
    # blurred crop's gradient whatever s.
    # At s = 0 the unblurred canvas is not sampled: its four gathers (one
    # AdvancedSubtensor1 per bilinear neighbour in bilinear_sample, with
    # supersample 1) do not run.
    gathers_run = {}
    for s in (0.0, 0.5, 1.0):
        shared_sharp.set_value(np.float32(s))
        calls = dict(fns[3].profile.apply_callcount)
        out, grad = fns[3](images, thetas)
        np.testing.assert_allclose(out, blurred + s * (plain - blurred), atol=1e-5)
        np.testing.assert_allclose(grad, blurred_grad, rtol=1e-4, atol=1e-5)
        gathers_run[s] = sum(count > calls.get(node, 0) for node, count
                             in fns[3].profile.apply_callcount.items()
                             if isinstance(node.op, T.subtensor.AdvancedSubtensor1))
    assert gathers_run[0.0] + 4 == gathers_run[0.5] == gathers_run[1.0]


@pytest.mark.parametrize("supersample", [2, 3])
def test_supersample_averages_a_finer_grid(supersample):
    images, thetas = random_inputs()
    layer, fn = transformer((None, 2, 13, 17), (2, 3), supersample=supersample)
    out = fn(images, thetas)
    assert layer.output_shape == (None, 2, 6, 5) and out.shape == (3, 2, 6, 5)
    fine = reference(images, thetas, 6 * supersample, 5 * supersample, "nearest")
    expected = fine.reshape(3, 2, 6, supersample, 5, supersample).mean(axis=(3, 5))
    np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("border_mode", ["nearest", "mirror", "wrap"])
def test_a_non_finite_transform_gives_a_non_finite_crop_not_an_index_error(border_mode):
    images, thetas = random_inputs()
    thetas[0, 2], thetas[1, 4], thetas[2, 5] = np.nan, np.inf, 1e30
    _, fn = transformer((None, 2, 13, 17), (2, 3), border_mode)
    out = fn(images, thetas)
    assert not np.isfinite(out[0]).any() and not np.isfinite(out[1]).all()
    assert np.isfinite(out[2]).all()


def test_gradients_with_respect_to_theta_and_input():
    images, thetas = random_inputs(n=2, c=1, h=7, w=9, seed=3)

    def apply(theta, images):
        layer = TransformerLayer(lasagne.layers.InputLayer((None, 1, 7, 9), images),
                                 lasagne.layers.InputLayer((None, 6), theta), 1)
        return lasagne.layers.get_output(layer)

    theano.gradient.verify_grad(apply, [thetas.astype(np.float64),
                                        images.astype(np.float64)],
                                rng=np.random.RandomState(1), eps=1e-4,
                                abs_tol=1e-3, rel_tol=1e-3)


def test_bad_construction_is_a_clear_value_error():
    with pytest.raises(ValueError, match="border_mode must be one of"):
        TransformerLayer((None, 1, 10, 10), (None, 6), border_mode="reflect")
    with pytest.raises(ValueError, match=r"must output shape \(batch, 6\)"):
        TransformerLayer((None, 1, 10, 10), (None, 4))
    with pytest.raises(ValueError, match="must be 4-D"):
        TransformerLayer((None, 10, 10), (None, 6))
    with pytest.raises(ValueError, match="blur must be 0 or more"):
        TransformerLayer((None, 1, 10, 10), (None, 6), blur=-1)
    with pytest.raises(ValueError, match="supersample must be a whole number"):
        TransformerLayer((None, 1, 10, 10), (None, 6), supersample=1.5)


def test_jittered_adds_a_stream_of_noise_per_head_and_leaves_the_generator_alone():
    heads = [lasagne.layers.InputLayer((None, 6)) for _ in range(2)]
    assert jittered(heads, 0.0) == heads
    lasagne.random.set_rng(np.random.RandomState(5))
    noisy = jittered(heads, theano.shared(np.float32(0.1)))
    # The next draw is the one it would have been without the noise layers.
    assert lasagne.random.get_rng().rand() == np.random.RandomState(5).rand()
    A = np.tile(np.float32([0.5, 0, 0.1, 0, 0.5, -0.1]), (500, 1))
    trained = theano.function([h.input_var for h in heads], lasagne.layers.get_output(noisy))
    first, second = (out - A for out in trained(A, A))
    assert abs(first.std() - 0.1) < 0.01 and abs(second.std() - 0.1) < 0.01
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.1   # their own streams
    tested = lasagne.layers.get_output(noisy[0], deterministic=True).eval(
        {heads[0].input_var: A})
    np.testing.assert_array_equal(tested, A)


def test_crop_noise_is_the_same_draws_composed_in_the_crops_frame():
    head = lasagne.layers.InputLayer((None, 6))
    layers = []
    for cropjitter in (False, True):
        lasagne.random.set_rng(np.random.RandomState(7))
        layers += jittered([head], theano.shared(np.float32(0.1)), cropjitter=cropjitter)
    assert isinstance(layers[1], CropNoiseLayer)
    rng = np.random.RandomState(0)
    theta = np.concatenate([rng.uniform(-1, 1, (50, 6)),
                            np.tile([0.5, 0, 0.2, 0, 0.5, -0.3], (50, 1))]).astype(np.float32)
    added, composed = theano.function([head.input_var],
                                      lasagne.layers.get_output(layers))(theta)
    # theta' = theta @ [[I + E_A, e_t], [0, 1]], E the additive layer's draws.
    E = (added - theta).reshape(-1, 2, 3)
    noise = np.zeros((len(theta), 3, 3))
    noise[:, :2] = E
    expected = np.matmul(theta.reshape(-1, 2, 3), np.eye(3) + noise)
    np.testing.assert_allclose(composed, expected.reshape(-1, 6), atol=1e-6)
    # A crop of half the canvas: half the additive noise on every parameter.
    np.testing.assert_allclose((composed - theta)[50:], 0.5 * (added - theta)[50:], atol=1e-6)
    tested = lasagne.layers.get_output(layers[1], deterministic=True).eval(
        {head.input_var: theta})
    np.testing.assert_array_equal(tested, theta)


def test_repeat_shapes_and_order():
    x = T.tensor3()
    layer = Repeat(lasagne.layers.InputLayer((None, 4, 5), x), 3)
    assert layer.output_shape == (None, 3, 4, 5)
    values = np.random.RandomState(0).rand(2, 4, 5).astype(np.float32)
    out = theano.function([x], lasagne.layers.get_output(layer))(values)
    assert out.shape == (2, 3, 4, 5)
    for step in range(3):
        np.testing.assert_array_equal(out[:, step], values)
    with pytest.raises(ValueError, match="at least 1"):
        Repeat((None, 4), 0)
