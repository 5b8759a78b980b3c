"""stn.ops: each fast operation gives exactly what Theano's own gives."""
import lasagne
import numpy as np
import theano
import theano.tensor as T
from theano.tensor.signal.pool import MaxPoolGrad, pool_2d

from stn.ops import MaxPool2x2Grad

REFERENCE = theano.compile.get_default_mode().excluding("local_max_pool_2x2_grad")


def pool_and_grad(mode=None):
    x, w = T.tensor4(), T.tensor4()
    pooled = pool_2d(x, (2, 2), ignore_border=True)
    grad = T.grad((pooled * w).sum(), x)
    return theano.function([x, w], [pooled, grad], mode=mode)


def ops_of(fn):
    return [type(node.op) for node in fn.maker.fgraph.toposort()]


def test_max_pool_gradient_equals_theanos_with_odd_sizes_and_ties():
    fast, reference = pool_and_grad(), pool_and_grad(REFERENCE)
    assert MaxPool2x2Grad in ops_of(fast) and MaxPoolGrad not in ops_of(fast)
    assert MaxPoolGrad in ops_of(reference)
    rng = np.random.RandomState(0)
    for shape in [(3, 2, 8, 6), (2, 3, 9, 7), (1, 1, 5, 4), (4, 32, 19, 19)]:
        # Small integers make ties inside windows common.
        x = rng.randint(0, 3, shape).astype(np.float32)
        w = rng.randn(*(shape[:2] + (shape[2] // 2, shape[3] // 2))).astype(np.float32)
        for got, expected in zip(fast(x, w), reference(x, w)):
            np.testing.assert_array_equal(got, expected)
        x = rng.rand(*shape).astype(np.float32)
        for got, expected in zip(fast(x, w), reference(x, w)):
            np.testing.assert_array_equal(got, expected)


def test_python_fallback_matches_the_c_code():
    x, m, g = T.tensor4(), T.tensor4(), T.tensor4()
    c_fn = theano.function([x, m, g], MaxPool2x2Grad()(x, m, g))
    py_fn = theano.function([x, m, g], MaxPool2x2Grad()(x, m, g),
                            mode=theano.compile.Mode(linker="py"))
    rng = np.random.RandomState(1)
    xv = rng.randint(0, 2, (2, 3, 7, 9)).astype(np.float32)
    mv = xv[:, :, :6, :8].reshape(2, 3, 3, 2, 4, 2).max(axis=(3, 5))
    gv = rng.randn(2, 3, 3, 4).astype(np.float32)
    np.testing.assert_array_equal(c_fn(xv, mv, gv), py_fn(xv, mv, gv))


def test_the_mnist_cnn_gradients_are_unchanged():
    import mnist_cnn
    x, y = T.tensor4(), T.ivector()
    lasagne.random.set_rng(np.random.RandomState(0))
    net = mnist_cnn.model(lasagne.layers.InputLayer((None, 1, 33, 33), x), p=0.0)
    loss = T.nnet.categorical_crossentropy(
        lasagne.layers.get_output(net, deterministic=True), y).mean()
    grads = T.grad(loss, lasagne.layers.get_all_params(net))
    fast = theano.function([x, y], grads)
    reference = theano.function([x, y], grads, mode=REFERENCE)
    rng = np.random.RandomState(2)
    xv = rng.rand(5, 1, 33, 33).astype(np.float32)
    yv = rng.randint(0, 10, 5).astype(np.int32)
    for got, expected in zip(fast(xv, yv), reference(xv, yv)):
        np.testing.assert_array_equal(got, expected)
