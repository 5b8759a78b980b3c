"""stn.ops: the faster pooling, its gradient and the bias-gradient sum compute
what Theano's own ops compute (bit for bit, the sum to float32 rounding)."""
import numpy as np
import pytest
import theano
import theano.tensor as T
from theano.tensor.signal.pool import MaxPoolGrad, Pool, pool_2d

from stn.ops import ChannelSum, MaxPool2x2, MaxPool2x2Grad


def pool_gradient(mode, ws=(2, 2), stride=None, dtype="float32"):
    """A function (x, gz) -> d(pool(x))/dx applied to gz, compiled in ``mode``."""
    x = T.tensor4(dtype=dtype)
    gz = T.tensor4(dtype=dtype)
    z = pool_2d(x, ws=ws, stride=stride, ignore_border=True)
    gx = theano.grad(None, x, known_grads={z: gz})
    return theano.function([x, gz], gx, mode=mode)


def grad_ops(fn):
    return {type(node.op) for node in fn.maker.fgraph.toposort()}


def theano_reference():
    return theano.compile.get_default_mode().excluding(
        "local_maxpool_2x2_grad", "local_maxpool_2x2", "local_channel_sum")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (3, 2, 7, 9), (1, 1, 3, 5), (4, 32, 46, 46)])
def test_pooling_equals_theano_bit_for_bit(shape, dtype):
    x = T.tensor4(dtype=dtype)
    z = pool_2d(x, ws=(2, 2), ignore_border=True)
    ours, reference = theano.function([x], z), theano.function([x], z, mode=theano_reference())
    assert MaxPool2x2 in grad_ops(ours) and Pool not in grad_ops(ours)
    assert Pool in grad_ops(reference)
    xv = np.random.RandomState(sum(shape)).randn(*shape).astype(dtype)
    xv.flat[::7] = np.nan  # the comparisons' order decides where NaN wins
    np.testing.assert_array_equal(ours(xv), reference(xv))


def test_channel_sum_equals_theanos_sum():
    x = T.tensor4()
    total = x.sum(axis=(0, 2, 3))
    ours, reference = theano.function([x], total), theano.function([x], total,
                                                                 mode=theano_reference())
    assert ChannelSum in grad_ops(ours) and ChannelSum not in grad_ops(reference)
    assert [n.op.acc_dtype for n in reference.maker.fgraph.toposort()
            if isinstance(n.op, T.Sum)] == ["float64"]
    xv = np.random.RandomState(1).randn(64, 32, 23, 23).astype(np.float32)
    got = ours(xv)
    assert got.dtype == np.float32 and got.shape == (32,)
    np.testing.assert_allclose(got, reference(xv), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, xv.sum(axis=(0, 2, 3), dtype=np.float64), rtol=1e-6)
    # other axes keep Theano's Sum
    assert ChannelSum not in grad_ops(theano.function([x], x.sum(axis=(0, 1))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (3, 2, 7, 9), (1, 1, 3, 5), (4, 32, 46, 46)])
def test_equals_theano_bit_for_bit_with_ties_and_odd_sizes(shape, dtype):
    ours, reference = pool_gradient(None, dtype=dtype), pool_gradient(theano_reference(),
                                                                      dtype=dtype)
    assert MaxPool2x2Grad in grad_ops(ours) and MaxPoolGrad not in grad_ops(ours)
    assert MaxPoolGrad in grad_ops(reference)
    rng = np.random.RandomState(sum(shape))
    # few distinct values, so that windows hold ties; negative zeros in gz
    x = rng.randint(-2, 2, shape).astype(dtype)
    gz = rng.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2).astype(dtype)
    gz[..., ::3] = -0.0
    expected, got = reference(x, gz), ours(x, gz)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))
    assert np.count_nonzero(got) > 0


def test_python_implementations_equal_the_c_code():
    x, z, gz = T.tensor4(), T.tensor4(), T.tensor4()
    outputs = [MaxPool2x2()(x), ChannelSum()(x), MaxPool2x2Grad()(x, z, gz)]
    python = theano.function([x, z, gz], outputs, mode=theano.compile.Mode(linker="py"))
    c = theano.function([x, z, gz], outputs, mode=theano.compile.Mode(linker="c"))
    rng = np.random.RandomState(0)
    xv = rng.randint(0, 3, (3, 4, 9, 7)).astype(np.float32)
    zv = xv[:, :, :8, :6].reshape(3, 4, 4, 2, 3, 2).max(axis=(3, 5))
    gzv = rng.randn(3, 4, 4, 3).astype(np.float32)
    expected = c(xv, zv, gzv)
    np.testing.assert_array_equal(expected[0], zv)
    for got, want in zip(python(xv, zv, gzv), expected):
        np.testing.assert_array_equal(got, want)
    assert np.count_nonzero(expected[2]) >= zv.size


@pytest.mark.parametrize("ws, stride", [((3, 3), None), ((2, 2), (1, 1)), ((2, 3), None)])
def test_other_poolings_keep_theanos_gradient(ws, stride):
    ops = grad_ops(pool_gradient(None, ws=ws, stride=stride))
    assert MaxPoolGrad in ops and Pool in ops


def test_stn_training_step_uses_it():
    from conftest import load_script
    from stn import training
    script = load_script("2-stn-cnn-mnist.py")
    l_in, l_out, l_A_net, _ = script.build_model(40, 1, 2.0, theano.shared(np.float32(0)))
    train_fn, _, _ = training.build_functions(l_in.input_var, l_out, l_A_net, "adam", 1e-3)
    ops = grad_ops(train_fn)
    assert {MaxPool2x2, MaxPool2x2Grad, ChannelSum} <= ops
    assert not {Pool, MaxPoolGrad} & ops
