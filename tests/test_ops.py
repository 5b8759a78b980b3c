"""stn.ops: the faster pooling, its gradient, the bias-gradient sum, the
threaded matrix product and the convolutions' fast paths compute what Theano's
own code computes (bit for bit; the sum to float32 rounding)."""
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import theano
import theano.tensor as T
from theano.tensor.nnet import corr
from theano.tensor.signal.pool import MaxPoolGrad, Pool, pool_2d

from conftest import ROOT
from stn.ops import ChannelSum, MaxPool2x2, MaxPool2x2Grad, ParallelDot22


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
        "local_maxpool_2x2_grad", "local_maxpool_2x2", "local_channel_sum",
        "local_parallel_dot22")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m, k, n", [(384, 300, 200), (200, 384, 65), (7, 5, 3), (64, 1, 80)])
def test_matrix_product_equals_theanos_dot22(m, k, n, dtype):
    """Every layout of the operands (transposed views and strided slices); the
    first two shapes are large enough to be split between threads, which may
    change the last bit of some sums: float rounding tolerance."""
    a, b = T.matrix(dtype=dtype), T.matrix(dtype=dtype)
    rng = np.random.RandomState(m + k + n)
    av = rng.randn(2 * m, k).astype(dtype)
    bv = rng.randn(k, n).astype(dtype)
    c_ordered = [(a[:m], b),                   # both C-contiguous
                 (a[::2], b),                  # every other row of x
                 (a[:m], b[:, ::-1])]          # y's columns reversed (copied)
    for x, y in c_ordered:
        ours = theano.function([a, b], T.dot(x, y))
        reference = theano.function([a, b], T.dot(x, y), mode=theano_reference())
        assert ParallelDot22 in grad_ops(ours) and ParallelDot22 not in grad_ops(reference)
        assert_close(ours(av, bv), reference(av, bv))
    fortran = [(a.T, b, np.ascontiguousarray(av[:m].T), bv),
               (a, b.T, av[:m], np.ascontiguousarray(bv.T))]
    for x, y, a_value, b_value in fortran:  # x, then y, Fortran-ordered
        ours = theano.function([a, b], T.dot(x, y))
        reference = theano.function([a, b], T.dot(x, y), mode=theano_reference())
        assert_close(ours(a_value, b_value), reference(a_value, b_value))


def assert_close(got, expected):
    """Equal to the rounding of the dtype, relative to the largest entry."""
    eps = np.finfo(expected.dtype).eps
    np.testing.assert_allclose(got, expected, rtol=0, atol=8 * eps * np.abs(expected).max())
    assert np.abs(expected).max() > 0


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
def test_pooling_gradient_equals_theano_bit_for_bit(shape, dtype):
    """With ties in the windows, odd sizes and negative zeros."""
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
    outputs = [MaxPool2x2()(x), ChannelSum()(x), MaxPool2x2Grad()(x, z, gz),
               ParallelDot22()(x[0, 0].T, x[0, 0])]
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
    assert {MaxPool2x2, MaxPool2x2Grad, ChannelSum, ParallelDot22} <= ops
    assert not {Pool, MaxPoolGrad} & ops


CONVOLUTIONS = """
import sys
import numpy as np
import theano
import theano.tensor as T
x, w = T.tensor4(), T.tensor4()
y = T.nnet.conv2d(x, w)
f = theano.function([x, w], [y] + theano.grad((y * y[::-1]).sum(), [x, w]))
ops = {type(n.op).__name__ for n in f.maker.fgraph.toposort()}
assert {"CorrMM", "CorrMM_gradInputs", "CorrMM_gradWeights"} <= ops, ops
args = np.load(sys.argv[1])
np.savez(sys.argv[2], *f(args["x"], args["w"]))
"""


@pytest.fixture(scope="module")
def plain_compiledir(tmp_path_factory):
    """A Theano cache of its own for Theano as released: unpickling the
    project's cache entries would import stn.ops, and so patch it."""
    return str(tmp_path_factory.mktemp("plain_theano"))


@pytest.mark.parametrize("x_shape, w_shape", [((6, 32, 23, 23), (32, 32, 5, 5)),
                                              ((4, 3, 11, 9), (5, 3, 3, 4))])
def test_convolutions_equal_plain_theano_bit_for_bit(tmp_path, plain_compiledir,
                                                     x_shape, w_shape):
    """The convolution and both its gradients, with the im2col/col2im fast
    paths, against an interpreter running Theano 1.0.5 as released (with the
    flags that stn chose, read from THEANO_FLAGS)."""
    rng = np.random.RandomState(0)
    np.savez(tmp_path / "in.npz", x=rng.randn(*x_shape).astype(np.float32),
             w=rng.randn(*w_shape).astype(np.float32))
    flags = os.environ["THEANO_FLAGS"]
    # The plain interpreter skips site (-S), so that the venv's stn.pth does not
    # import stn, and finds the venv's packages through PYTHONPATH.
    runs = {"ours": ([], "import stn\n", dict(PYTHONPATH=ROOT, THEANO_FLAGS=flags)),
            "plain": (["-S"], "", dict(PYTHONPATH=sysconfig.get_path("purelib"),
                                       THEANO_FLAGS=flags + ",base_compiledir="
                                       + plain_compiledir))}
    for name, (options, prelude, env) in runs.items():
        code = prelude + CONVOLUTIONS + "\nassert ('stn.ops' in sys.modules) == %r\n" % (
            name == "ours")
        subprocess.run([sys.executable] + options + ["-c", code, str(tmp_path / "in.npz"),
                        str(tmp_path / (name + ".npz"))], check=True,
                       cwd=str(tmp_path), env=dict(os.environ, **env))
    ours, plain = np.load(tmp_path / "ours.npz"), np.load(tmp_path / "plain.npz")
    assert len(ours.files) == 3
    for key in ours.files:
        np.testing.assert_array_equal(ours[key], plain[key])


def test_convolutions_compile_the_fast_paths():
    from stn import ops
    x, w = T.tensor4(), T.tensor4()
    y = T.nnet.conv2d(x, w)
    f = theano.function([x, w], [y] + theano.grad(y.sum(), [x, w]))
    nodes = [n for n in f.maker.fgraph.toposort() if isinstance(n.op, corr.BaseCorrMM)]
    assert len(nodes) == 3
    for node in nodes:
        code = node.op.c_support_code_apply(node, "node")
        assert ops.IM2COL_FAST % {"float_type": "npy_float"} in code
        assert ops.COL2IM_FAST % {"float_type": "npy_float"} in code
        assert ops.CORR_DIGEST in node.op.c_code_cache_version()
