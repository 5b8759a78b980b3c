"""The layers the chapter uses that Lasagne 0.1 lacks: TransformerLayer, Repeat;
and ``jittered`` with ``CropNoiseLayer``, the transform's training noise."""
import sys

import numpy as np
import theano
import theano.tensor as T
from theano.ifelse import ifelse
import lasagne.layers
import lasagne.random
import lasagne.utils
from lasagne.layers.base import Layer, MergeLayer
from lasagne.layers.noise import GaussianNoiseLayer

BORDER_MODES = ("nearest", "mirror", "wrap")


class TransformerLayer(MergeLayer):
    """Spatial transformer with an affine transform and bilinear sampling.

    It behaves as Lasagne master's ``lasagne.layers.TransformerLayer``, the layer
    the chapter ran on (Jaderberg et al. 2015, "Spatial Transformer Networks").

    Parameters
    ----------
    incoming : Layer or shape
        Images, (batch, channels, rows, cols).
    localization_network : Layer or shape
        Affine parameters, (batch, 6): theta reshaped row-major to 2x3 maps the
        output grid (x_t, y_t, 1), in [-1, 1], to source coordinates (x_s, y_s).
        [1, 0, 0, 0, 1, 0] is the identity.
    downsample_factor : float or (float, float)
        The output has ``rows // f_h`` rows and ``cols // f_w`` columns.
    border_mode : 'nearest', 'mirror' or 'wrap'
        How samples outside the image are read: clipped to the edge, reflected
        about the edge pixels, or wrapped around.
    blur : float or Theano shared scalar
        Extra, not in Lasagne: before sampling, blur the images with a
        Gaussian of this standard deviation in pixels (not trained; truncated
        at 2 sigma, edges extended, as ``scipy.ndimage.gaussian_filter(image,
        blur, mode='nearest', truncate=2)``).  0, the default, is Lasagne's
        layer.  Against the aliasing of a bilinear sampler that downsamples
        (Jaderberg et al. 2015, section 3.4).  A shared variable lets training
        change sigma (not above its value here, which sets the kernel's size).
    sharp : bool or Theano shared scalar
        Extra, not in Lasagne: with a blur, the output is the sample of the
        unblurred images while the gradient with respect to theta is the
        blurred sample's (a straight-through estimate: the classifier reads a
        sharp crop, the transform learns from the smoother one).  False, the
        default, outputs the blurred sample.  A shared scalar s in [0, 1]
        lets training switch: the output is ``blurred + s * (plain -
        blurred)``, plain the sample of the unblurred images, with the
        blurred sample's gradient whatever s; at s = 0 plain is not
        computed.
    supersample : int
        Extra, not in Lasagne: sample a grid ``supersample`` times finer each
        way, spread evenly over the same [-1, 1] square, and average each
        supersample x supersample block, so that each output pixel averages
        several samples of its part of the canvas (as MatConvNet's and
        Chainer's STN examples average-pool a full-resolution sample).  The
        output shape is unchanged; the blocks' centres lie slightly inside the
        plain grid's points (by (k - 1) / (k * n - 1) of the half-side, k the
        factor, n the output side).  1, the default, is Lasagne's.
    """

    def __init__(self, incoming, localization_network, downsample_factor=1,
                 border_mode="nearest", blur=0.0, sharp=False, supersample=1, **kwargs):
        super(TransformerLayer, self).__init__([incoming, localization_network],
                                               **kwargs)
        self.downsample_factor = lasagne.utils.as_tuple(downsample_factor, 2)
        if border_mode not in BORDER_MODES:
            raise ValueError("TransformerLayer: border_mode must be one of %s, not %r"
                             % (", ".join(BORDER_MODES), border_mode))
        self.border_mode = border_mode
        sigma = blur.get_value() if hasattr(blur, "get_value") else blur
        if not 0 <= sigma < float("inf"):
            raise ValueError("TransformerLayer: blur must be 0 or more, not %r" % (sigma,))
        if int(supersample) != supersample or supersample < 1:
            raise ValueError("TransformerLayer: supersample must be a whole number of "
                             "at least 1, not %r" % (supersample,))
        self.blur, self.supersample = blur, int(supersample)
        self.sharp = sharp if hasattr(sharp, "get_value") else bool(sharp)
        self.blur_radius = int(2 * sigma + 0.5)
        input_shp, loc_shp = self.input_shapes
        if len(loc_shp) != 2 or loc_shp[1] != 6:
            raise ValueError("TransformerLayer: the localization network must output "
                             "shape (batch, 6), not %s" % (loc_shp,))
        if len(input_shp) != 4:
            raise ValueError("TransformerLayer: the input must be 4-D (batch, channels, "
                             "rows, cols), not %s" % (input_shp,))

    def get_output_shape_for(self, input_shapes):
        shape = input_shapes[0]
        factors = self.downsample_factor
        return (shape[:2] + tuple(None if s is None else int(output_size(s, f))
                                  for s, f in zip(shape[2:], factors)))

    def get_output_for(self, inputs, **kwargs):
        images, theta = inputs

        def sample(images):
            return affine_transform(theta, images, self.downsample_factor,
                                    self.border_mode, self.supersample)
        if not self.blur_radius:
            return sample(images)
        blurred = sample(gaussian_blur(images, self.blur, self.blur_radius))
        if self.sharp is False:
            return blurred
        if self.sharp is True:
            detail = sample(images) - blurred
        else:
            # At s = 0 the unblurred canvas is not sampled: the branch that
            # samples it must not read ``blurred``, which the sum below may
            # overwrite in place (an ordering that would force the branch).
            share = T.cast(self.sharp, blurred.dtype)
            detail = ifelse(T.gt(share, 0), share * sample(images),
                            T.zeros_like(blurred)) - share * blurred
        return blurred + theano.gradient.disconnected_grad(detail)


def output_size(size, factor):
    """The sampled side for an input side of ``size`` pixels (a Python or a
    symbolic integer) and a downsample ``factor``: floor(size / factor) in
    float64, a quotient within a millionth below a whole number taken as that
    number (60 / 0.6 gives 100 and 33 / 1.1 gives 30, where Python's // gives
    99.0 and 29.0, and 60 / float32(0.6) 99.99999).  Lasagne master's
    ``s // f`` for whole factors."""
    return (size / np.float64(factor) * (1 + 1e-6)) // 1


def linspace(start, stop, num):
    """Theano ``linspace`` in floatX for a symbolic ``num``."""
    num_f = T.cast(num, theano.config.floatX)
    step = (stop - start) / (num_f - 1)
    return start + T.arange(num).astype(theano.config.floatX) * step


def affine_grid(theta, out_height, out_width):
    """Source coordinates (x_s, y_s), each (batch, out_height * out_width).

    The target grid is x_t along the columns and y_t along the rows, both evenly
    spaced over [-1, 1], flattened row by row.
    """
    x_t = T.tile(linspace(-1, 1, out_width).dimshuffle("x", 0), (out_height, 1))
    y_t = T.tile(linspace(-1, 1, out_height).dimshuffle(0, "x"), (1, out_width))
    grid = T.stack([x_t.flatten(), y_t.flatten(), T.ones_like(x_t.flatten())])
    source = T.dot(theta.reshape((-1, 2, 3)), grid)  # (batch, 2, points)
    return source[:, 0], source[:, 1]


def border_index(index, size, border_mode):
    """Map integer-valued float indices into [0, size - 1]."""
    if border_mode == "nearest":
        return T.clip(index, 0, size - 1)
    if border_mode == "mirror":
        period = 2 * (size - 1)
        return T.minimum(index % period, -index % period)
    return index % size  # wrap


def bilinear_sample(images, x, y, border_mode):
    """Sample ``images`` (batch, channels, H, W) at pixel coordinates.

    ``x`` and ``y`` are (batch, points).  The weights come from the unclipped
    coordinates; only the four neighbours' indices are moved inside the image.
    Returns (batch, channels, points).
    """
    height, width = images.shape[2], images.shape[3]
    height_f = T.cast(height, theano.config.floatX)
    width_f = T.cast(width, theano.config.floatX)
    # A diverged transform's non-finite coordinates index pixel 0; their
    # weights keep the NaN or infinity, so their output is not finite.
    x0_f, y0_f = [T.floor(T.switch(T.isnan(v) | T.isinf(v), 0, v)) for v in (x, y)]
    x1_f, y1_f = x0_f + 1, y0_f + 1
    x0, x1 = [T.cast(border_index(v, width_f, border_mode), "int64")
              for v in (x0_f, x1_f)]
    y0, y1 = [T.cast(border_index(v, height_f, border_mode), "int64")
              for v in (y0_f, y1_f)]
    # Gather from (batch, H*W, channels) so that one integer index per point
    # picks a whole channel vector.
    flat = images.dimshuffle(0, 2, 3, 1).reshape(
        (images.shape[0] * height * width, images.shape[1]))
    base = (T.arange(images.shape[0], dtype="int64") * height * width).dimshuffle(0, "x")

    def gather(yi, xi):
        return flat[(base + yi * width + xi).flatten()]

    def weight(w):
        return w.flatten().dimshuffle(0, "x")

    out = (weight((x1_f - x) * (y1_f - y)) * gather(y0, x0)
           + weight((x1_f - x) * (y - y0_f)) * gather(y1, x0)
           + weight((x - x0_f) * (y1_f - y)) * gather(y0, x1)
           + weight((x - x0_f) * (y - y0_f)) * gather(y1, x1))
    return out.reshape((x.shape[0], x.shape[1], images.shape[1])).dimshuffle(0, 2, 1)


def affine_transform(theta, images, downsample_factor, border_mode, supersample=1):
    """The TransformerLayer's output for symbolic ``theta`` (batch, 6) and
    ``images`` (batch, channels, H, W): (batch, channels, output_size(H, f_h),
    output_size(W, f_w)),
    each pixel the mean of a ``supersample`` x ``supersample`` block of samples."""
    height, width = images.shape[2], images.shape[3]
    out_height = T.cast(output_size(height, downsample_factor[0]), "int64")
    out_width = T.cast(output_size(width, downsample_factor[1]), "int64")
    x_s, y_s = affine_grid(theta, out_height * supersample, out_width * supersample)
    # From [-1, 1] to pixel coordinates [0, size - 1].
    width_f = T.cast(width, theano.config.floatX)
    height_f = T.cast(height, theano.config.floatX)
    x = snap((x_s + 1) / 2 * (width_f - 1), width_f)
    y = snap((y_s + 1) / 2 * (height_f - 1), height_f)
    sampled = bilinear_sample(images, x, y, border_mode)
    if supersample == 1:
        return sampled.reshape((images.shape[0], images.shape[1], out_height, out_width))
    blocks = sampled.reshape((images.shape[0], images.shape[1], out_height, supersample,
                              out_width, supersample))
    return blocks.mean(axis=(3, 5))


def snap(coordinates, size):
    """Pixel ``coordinates`` on a side of ``size`` pixels that lie within
    4 * size float roundings of a whole pixel (the error of mapping [-1, 1]
    onto [0, size - 1]), moved onto it, with the gradient of the unmoved ones.
    The identity's grid then lands on every pixel exactly (in float32 it falls
    just short of most), so that the identity reproduces its input bit for bit,
    as Lasagne's test of the layer asks; elsewhere the samples move by that
    rounding at most."""
    nearest = T.round(coordinates)
    tolerance = 4 * np.finfo(theano.config.floatX).eps * size
    offset = T.switch(abs(nearest - coordinates) <= tolerance, nearest - coordinates, 0)
    return coordinates + theano.gradient.disconnected_grad(offset)


def gaussian_blur(images, sigma, radius):
    """Blur symbolic ``images`` (batch, channels, H, W), each channel on its
    own, with a normalised Gaussian of standard deviation ``sigma`` (pixels; a
    number or a symbolic scalar) cut at ``radius`` pixels, the edges extended.
    At sigma 0 the kernel is a unit impulse: the images pass unchanged."""
    offsets = np.arange(-radius, radius + 1).astype(theano.config.floatX)
    # Below a hundredth of a pixel every tap but the centre underflows to 0.
    taps = T.exp(-0.5 * (offsets / T.maximum(sigma, 0.01)) ** 2)
    kernel = T.cast(taps / taps.sum(), theano.config.floatX)
    width_k = 2 * radius + 1
    batch, channels, height, width = images.shape
    planes = images.reshape((batch * channels, 1, height, width))
    # Extend the edges by repeating the border rows and columns.
    rows = T.clip(T.arange(-radius, height + radius), 0, height - 1)
    cols = T.clip(T.arange(-radius, width + radius), 0, width - 1)
    padded = T.take(T.take(planes, rows, axis=2), cols, axis=3)
    # Separable: a column of taps, then a row (symmetric, so not flipped).
    blurred = T.nnet.conv2d(padded, kernel.reshape((1, 1, width_k, 1)),
                            filter_shape=(1, 1, width_k, 1))
    blurred = T.nnet.conv2d(blurred, kernel.reshape((1, 1, 1, width_k)),
                            filter_shape=(1, 1, 1, width_k))
    return blurred.reshape((batch, channels, height, width))


def jittered(heads, sigma, cropjitter=False):
    """The transforms of the layers ``heads`` (each (batch, 6)) with Gaussian
    noise of standard deviation ``sigma`` while training (none in a
    deterministic pass), one noise layer each; ``heads`` itself when ``sigma``
    is 0.

    ``sigma`` is a float, or a Theano shared scalar that a schedule sets.  By
    default the noise is added to every parameter (Lasagne's
    GaussianNoiseLayer), in the transform's normalised units, where the canvas
    spans [-1, 1]: a shift's noise of sigma moves the crop by sigma * (W - 1) / 2
    pixels, a diagonal entry's changes the crop's side by sigma of the
    canvas's, the off-diagonal entries' shear and turn it.  With
    ``cropjitter`` the noise is in the crop's own units instead
    (``CropNoiseLayer``): sigma of the crop's half-side on the shifts, of its
    side on the scales, whatever the zoom, so that a smaller crop does not
    make the same noise larger.  Each noise layer seeds its own stream from
    Lasagne's generator, which is then put back as it was, so that the layers
    built after them start from the same weights as without the noise.
    """
    if not isinstance(sigma, theano.Variable) and not sigma:
        return list(heads)
    noise_layer = CropNoiseLayer if cropjitter else GaussianNoiseLayer
    rng = lasagne.random.get_rng()
    state = rng.get_state()
    noisy = [noise_layer(head, sigma) for head in heads]
    rng.set_state(state)
    return noisy


class CropNoiseLayer(GaussianNoiseLayer):
    """Gaussian noise on affine transforms (batch, 6), in the crop's frame.

    Each transform theta = [A | t] (2x3, the rows of the 6 parameters) is
    composed with a random one near the identity, applied to the crop's grid
    first: theta' = theta @ [[I + E_A, e_t], [0, 1]] = [A + A E_A | t + A e_t],
    the entries of E = [E_A | e_t] drawn from N(0, sigma^2) as Lasagne's
    GaussianNoiseLayer draws its noise (a stream seeded the same way from
    Lasagne's generator).  For A = z I (a crop of z of the canvas) this is
    the additive noise of sigma * z.  None in a deterministic pass.
    """

    def get_output_for(self, input, deterministic=False, **kwargs):
        if deterministic or self.sigma == 0:
            return input
        theta = input.reshape((-1, 2, 3))
        noise = self._srng.normal(theta.shape, avg=0.0, std=self.sigma)
        return (theta + T.batched_dot(theta[:, :, :2], noise)).reshape(input.shape)


class Repeat(Layer):
    """Repeat the input n times along a new axis 1: (batch, ...) -> (batch, n, ...).

    The recurrent STN feeds the same image features to the GRU at every step.
    """

    def __init__(self, incoming, n, **kwargs):
        super(Repeat, self).__init__(incoming, **kwargs)
        if int(n) < 1:
            raise ValueError("Repeat: n must be at least 1, not %r" % (n,))
        self.n = int(n)

    def get_output_shape_for(self, input_shape):
        return (input_shape[0], self.n) + tuple(input_shape[1:])

    def get_output_for(self, input, **kwargs):
        pattern = [0, "x"] + list(range(1, input.ndim))
        return T.repeat(input.dimshuffle(*pattern), self.n, axis=1)


def install(lasagne_layers):
    """Backfill ``TransformerLayer`` into the module ``lasagne.layers`` if absent."""
    if not hasattr(lasagne_layers, "TransformerLayer"):
        lasagne_layers.TransformerLayer = TransformerLayer


# Lasagne may still be importing (this module can be loaded by its import hook).
install(sys.modules["lasagne.layers"])
