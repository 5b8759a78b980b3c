"""Faster C code for the pooling layers of the chapter's networks, swapped in by
Theano's optimizer.

Each op computes what a Theano op computes for ``mnist_cnn.model``'s 2x2,
stride-2 max pooling and its convolutions' biases, in one pass over the data and
a plane or a channel per OpenMP thread:

* ``MaxPool2x2``: Theano's ``Pool`` (the same maxima, NaN included);
* ``MaxPool2x2Grad``: Theano's ``MaxPoolGrad`` (every input equal to its
  window's maximum receives the window's gradient, the rest 0).  Theano's fills
  its output with zeros on one thread and walks the windows with generic index
  arithmetic: 14% of an STN training step;
* ``ChannelSum``: Theano's ``Sum{axis=[0, 2, 3], acc_dtype=float64}`` of
  float32, the gradient of a convolution's biases, which Theano sums on one
  thread.

It also gives the convolutions (Theano's ``CorrMM`` and its gradients) a fast
path for the unpadded, unstrided, undilated case of every layer here: the
unfolding of an image into columns (``im2col``) and its reverse
(``col2im``) copy and add whole rows, which the compiler vectorises, where
Theano checks the bounds of each pixel.  They took about half of each
convolution.  The same values are copied and added in the same order.

Importing the module patches ``CorrMM`` and adds the rewrites to Theano's
``specialize`` phase; ``stn.backend`` imports it as soon as Theano has loaded.
"""
import hashlib

import numpy as np
import theano.tensor as T
from theano.gof import Apply, OpenMPOp, local_optimizer
from theano.tensor.nnet import corr
from theano.tensor.signal.pool import MaxPoolGrad, Pool

FLOATS = ("float32", "float64")


class PlaneKernel(OpenMPOp):
    """An op whose C code is ``template``, formatted with the names in
    ``c_names`` (inputs, then the output), ``dtype`` (the C type of the first
    input), ``omp`` (the OpenMP pragma, or nothing) and ``fail``."""
    __props__ = ()
    c_names = ()
    template = ""

    def c_code_cache_version(self):
        # Versioned by the text itself: a changed kernel is compiled afresh.
        digest = hashlib.sha256(self.template.encode()).hexdigest()
        return (int(digest[:15], 16), self.openmp)

    def c_code(self, node, name, inputs, outputs, sub):
        names = dict(zip(self.c_names, list(inputs) + list(outputs)))
        names.update(dtype="npy_" + node.inputs[0].dtype, fail=sub["fail"],
                     omp="#pragma omp parallel for schedule(static)" if self.openmp else "")
        return self.template % names


class MaxPool2x2(PlaneKernel):
    """2x2, stride-2, unpadded max pooling (ignore_border=True) of a 4-d tensor."""
    c_names = ("x", "z")

    def make_node(self, x):
        x = T.as_tensor_variable(x)
        if x.ndim != 4 or x.dtype not in FLOATS:
            raise TypeError("MaxPool2x2 takes a 4-d float tensor")
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        x, = inputs
        b, c, rows, cols = x.shape
        top = x[:, :, :rows // 2 * 2, :cols // 2 * 2]
        outputs[0][0] = top.reshape(b, c, rows // 2, 2, cols // 2, 2).max(axis=(3, 5))

    def infer_shape(self, node, shapes):
        b, c, rows, cols = shapes[0]
        return [(b, c, rows // 2, cols // 2)]

    template = """
    {
    PyArrayObject *xc = PyArray_GETCONTIGUOUS(%(x)s);
    int ok = xc != NULL;
    npy_intp zd[4];
    if (ok) {
        npy_intp *xd = PyArray_DIMS(xc);
        zd[0] = xd[0]; zd[1] = xd[1]; zd[2] = xd[2] / 2; zd[3] = xd[3] / 2;
    }
    if (ok && !(%(z)s && PyArray_IS_C_CONTIGUOUS(%(z)s)
                && PyArray_CompareLists(PyArray_DIMS(%(z)s), zd, 4))) {
        Py_XDECREF(%(z)s);
        %(z)s = (PyArrayObject*)PyArray_EMPTY(4, zd, PyArray_TYPE(xc), 0);
        ok = %(z)s != NULL;
    }
    if (ok) {
        const npy_intp planes = zd[0] * zd[1], zrows = zd[2], zcols = zd[3];
        const npy_intp rows = PyArray_DIMS(xc)[2], cols = PyArray_DIMS(xc)[3];
        const %(dtype)s *xp = (%(dtype)s*)PyArray_DATA(xc);
        %(dtype)s *zp = (%(dtype)s*)PyArray_DATA(%(z)s);
        %(omp)s
        for (npy_intp p = 0; p < planes; p++) {
            const %(dtype)s *xs = xp + p * rows * cols;
            %(dtype)s *out = zp + p * zrows * zcols;
            for (npy_intp i = 0; i < zrows; i++) {
                const %(dtype)s *x0 = xs + 2 * i * cols, *x1 = x0 + cols;
                for (npy_intp j = 0; j < zcols; j++) {
                    /* Theano's order: row by row, a later value wins if larger */
                    %(dtype)s m = x0[2 * j];
                    if (x0[2 * j + 1] > m) m = x0[2 * j + 1];
                    if (x1[2 * j] > m) m = x1[2 * j];
                    if (x1[2 * j + 1] > m) m = x1[2 * j + 1];
                    out[i * zcols + j] = m;
                }
            }
        }
    }
    Py_XDECREF(xc);
    if (!ok) %(fail)s
    }
    """


class MaxPool2x2Grad(PlaneKernel):
    """Gradient of a 2x2, stride-2, unpadded max pooling (ignore_border=True).

    Inputs: ``x`` (batch, channels, rows, cols), its pooling ``z`` and the
    gradient ``gz`` with respect to ``z``.  Output: the gradient with respect to
    ``x``; a last odd row or column, which no window covers, gets 0.
    """
    c_names = ("x", "z", "gz", "gx")

    def make_node(self, x, z, gz):
        x, z, gz = (T.as_tensor_variable(v) for v in (x, z, gz))
        if x.ndim != 4 or z.ndim != 4 or gz.ndim != 4:
            raise TypeError("MaxPool2x2Grad takes 4-d x, z and gz")
        if not x.dtype == z.dtype == gz.dtype or x.dtype not in FLOATS:
            raise TypeError("MaxPool2x2Grad takes x, z and gz of one float dtype")
        return Apply(self, [x, z, gz], [x.type()])

    def perform(self, node, inputs, outputs):
        x, z, gz = inputs
        rows, cols = 2 * z.shape[2], 2 * z.shape[3]
        up = lambda a: a.repeat(2, axis=2).repeat(2, axis=3)
        gx = np.zeros_like(x)
        gx[:, :, :rows, :cols] = np.where(x[:, :, :rows, :cols] == up(z),
                                          x.dtype.type(0) + up(gz), 0)
        outputs[0][0] = gx

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    template = """
    {
    PyArrayObject *xc = PyArray_GETCONTIGUOUS(%(x)s);
    PyArrayObject *zc = PyArray_GETCONTIGUOUS(%(z)s);
    PyArrayObject *gzc = PyArray_GETCONTIGUOUS(%(gz)s);
    int ok = xc && zc && gzc;
    npy_intp *xd = ok ? PyArray_DIMS(xc) : NULL, *zd = ok ? PyArray_DIMS(zc) : NULL;
    if (ok && (zd[0] != xd[0] || zd[1] != xd[1] || zd[2] != xd[2] / 2
               || zd[3] != xd[3] / 2
               || !PyArray_CompareLists(zd, PyArray_DIMS(gzc), 4))) {
        PyErr_SetString(PyExc_ValueError,
                        "MaxPool2x2Grad: z and gz must be x pooled 2x2");
        ok = 0;
    }
    if (ok && !(%(gx)s && PyArray_IS_C_CONTIGUOUS(%(gx)s)
                && PyArray_CompareLists(PyArray_DIMS(%(gx)s), xd, 4))) {
        Py_XDECREF(%(gx)s);
        %(gx)s = (PyArrayObject*)PyArray_EMPTY(4, xd, PyArray_TYPE(xc), 0);
        ok = %(gx)s != NULL;
    }
    if (ok) {
        const npy_intp planes = xd[0] * xd[1], rows = xd[2], cols = xd[3];
        const npy_intp zrows = zd[2], zcols = zd[3];
        const %(dtype)s *xp = (%(dtype)s*)PyArray_DATA(xc);
        const %(dtype)s *zp = (%(dtype)s*)PyArray_DATA(zc);
        const %(dtype)s *gzp = (%(dtype)s*)PyArray_DATA(gzc);
        %(dtype)s *gxp = (%(dtype)s*)PyArray_DATA(%(gx)s);
        %(omp)s
        for (npy_intp p = 0; p < planes; p++) {
            const %(dtype)s *xs = xp + p * rows * cols;
            const %(dtype)s *zs = zp + p * zrows * zcols;
            const %(dtype)s *gs = gzp + p * zrows * zcols;
            %(dtype)s *out = gxp + p * rows * cols;
            for (npy_intp i = 0; i < zrows; i++) {
                const %(dtype)s *x0 = xs + 2 * i * cols, *x1 = x0 + cols;
                %(dtype)s *o0 = out + 2 * i * cols, *o1 = o0 + cols;
                for (npy_intp j = 0; j < zcols; j++) {
                    const %(dtype)s m = zs[i * zcols + j];
                    /* 0 + g, as Theano adds the gradient to a zeroed output */
                    const %(dtype)s g = (%(dtype)s)0 + gs[i * zcols + j];
                    o0[2 * j] = x0[2 * j] == m ? g : 0;
                    o0[2 * j + 1] = x0[2 * j + 1] == m ? g : 0;
                    o1[2 * j] = x1[2 * j] == m ? g : 0;
                    o1[2 * j + 1] = x1[2 * j + 1] == m ? g : 0;
                }
                for (npy_intp j = 2 * zcols; j < cols; j++)
                    o0[j] = o1[j] = 0;
            }
            for (npy_intp k = 2 * zrows * cols; k < rows * cols; k++)
                out[k] = 0;
        }
    }
    Py_XDECREF(xc);
    Py_XDECREF(zc);
    Py_XDECREF(gzc);
    if (!ok) %(fail)s
    }
    """


class ChannelSum(PlaneKernel):
    """Sum of a 4-d float32 tensor over axes 0, 2 and 3, accumulated in float64."""
    c_names = ("x", "total")

    def make_node(self, x):
        x = T.as_tensor_variable(x)
        if x.ndim != 4 or x.dtype != "float32":
            raise TypeError("ChannelSum takes a 4-d float32 tensor")
        return Apply(self, [x], [T.vector(dtype="float32")])

    def perform(self, node, inputs, outputs):
        x, = inputs
        outputs[0][0] = x.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)

    def infer_shape(self, node, shapes):
        return [(shapes[0][1],)]

    template = """
    {
    PyArrayObject *xc = PyArray_GETCONTIGUOUS(%(x)s);
    int ok = xc != NULL;
    npy_intp channels = ok ? PyArray_DIMS(xc)[1] : 0;
    if (ok && !(%(total)s && PyArray_DIMS(%(total)s)[0] == channels
                && PyArray_IS_C_CONTIGUOUS(%(total)s))) {
        Py_XDECREF(%(total)s);
        %(total)s = (PyArrayObject*)PyArray_EMPTY(1, &channels, NPY_FLOAT32, 0);
        ok = %(total)s != NULL;
    }
    if (ok) {
        const npy_intp batch = PyArray_DIMS(xc)[0];
        const npy_intp plane = PyArray_DIMS(xc)[2] * PyArray_DIMS(xc)[3];
        const npy_float32 *xp = (npy_float32*)PyArray_DATA(xc);
        npy_float32 *tp = (npy_float32*)PyArray_DATA(%(total)s);
        %(omp)s
        for (npy_intp c = 0; c < channels; c++) {
            double acc = 0;
            for (npy_intp b = 0; b < batch; b++) {
                const npy_float32 *xs = xp + (b * channels + c) * plane;
                for (npy_intp k = 0; k < plane; k++)
                    acc += xs[k];
            }
            tp[c] = (npy_float32)acc;
        }
    }
    Py_XDECREF(xc);
    if (!ok) %(fail)s
    }
    """


# Inserted at the top of Theano's im2col and col2im (theano/tensor/nnet/c_code/
# corr_gemm.c, a %-template: hence %%) after the line each is keyed on.
IM2COL_FAST = """
  if (dilation_h == 1 && dilation_w == 1 && stride_h == 1 && stride_w == 1
      && pad_hl == 0 && pad_hr == 0 && pad_wl == 0 && pad_wr == 0) {
    for (int c = 0; c < channels_col; ++c) {
      const int w_offset = c %% kernel_w, h_offset = (c / kernel_w) %% kernel_h;
      const int c_im = c / kernel_h / kernel_w;
      for (int h = 0; h < height_col; ++h) {
        const %(float_type)s *src = data_im + (npy_intp)(c_im * height + h + h_offset) * width + w_offset;
        %(float_type)s *dst = data_col + (npy_intp)(c * height_col + h) * width_col;
        for (int w = 0; w < width_col; ++w) dst[w] = src[w];
      }
    }
    return;
  }
"""
COL2IM_FAST = """
  if (dilation_h == 1 && dilation_w == 1 && stride_h == 1 && stride_w == 1
      && pad_hl == 0 && pad_hr == 0 && pad_wl == 0 && pad_wr == 0) {
    for (int c = 0; c < channels_col; ++c) {
      const int w_offset = c %% patch_w, h_offset = (c / patch_w) %% patch_h;
      const int c_im = c / patch_h / patch_w;
      for (int h = 0; h < height_col; ++h) {
        const %(float_type)s *src = data_col + (npy_intp)(c * height_col + h) * width_col;
        %(float_type)s *dst = data_im + (npy_intp)(c_im * height + h + h_offset) * width + w_offset;
        for (int w = 0; w < width_col; ++w) dst[w] += src[w];
      }
    }
    return;
  }
"""
CORR_ANCHORS = [("  int channels_col = channels * kernel_h * kernel_w;\n", IM2COL_FAST),
                ("  int channels_col = channels * patch_h * patch_w;\n", COL2IM_FAST)]
CORR_DIGEST = int(hashlib.sha256((IM2COL_FAST + COL2IM_FAST).encode()).hexdigest()[:15], 16)


def patch_corr_mm(base=corr.BaseCorrMM):
    """Insert the fast paths into the C code of ``CorrMM`` and its gradients."""
    support_code_apply = base.c_support_code_apply
    cache_version = base.c_code_cache_version

    def c_support_code_apply(self, node, nodename):
        code = support_code_apply(self, node, nodename)
        float_type = "npy_float" if node.inputs[0].dtype == "float32" else "npy_double"
        for anchor, fast in CORR_ANCHORS:
            if code.count(anchor) != 1:
                raise RuntimeError("stn.ops: Theano's corr_gemm.c is not the one "
                                   "this project patches (Theano 1.0.5)")
            code = code.replace(anchor, anchor + fast % {"float_type": float_type})
        return code

    def c_code_cache_version(self):
        return cache_version(self) + (CORR_DIGEST,)

    base.c_support_code_apply = c_support_code_apply
    base.c_code_cache_version = c_code_cache_version


def pooling_2x2(node):
    """Whether ``node`` (a Pool or MaxPoolGrad) is a 2x2, stride-2, unpadded
    max pooling of 4-d floats that ignores the border."""
    op, x = node.op, node.inputs[0]
    if not (op.mode == "max" and op.ndim == 2 and op.ignore_border
            and x.ndim == 4 and x.dtype in FLOATS
            and all(v.dtype == x.dtype for v in node.inputs[1:-3])):
        return False
    ws, stride, pad = node.inputs[-3:]
    return (constant_pair(ws, (2, 2)) and constant_pair(stride, (2, 2))
            and constant_pair(pad, (0, 0)))


def constant_pair(var, value):
    """Whether ``var`` is a constant equal to the pair ``value``."""
    try:
        return tuple(T.get_scalar_constant_value(var[i]) for i in range(2)) == value
    except T.NotScalarConstantError:
        return False


@local_optimizer([Pool])
def local_maxpool_2x2(node):
    if isinstance(node.op, Pool) and pooling_2x2(node):
        return [MaxPool2x2(openmp=node.op.openmp)(node.inputs[0])]
    return False


@local_optimizer([MaxPoolGrad])
def local_maxpool_2x2_grad(node):
    if isinstance(node.op, MaxPoolGrad) and pooling_2x2(node):
        return [MaxPool2x2Grad(openmp=node.op.openmp)(*node.inputs[:3])]
    return False


@local_optimizer([T.Sum])
def local_channel_sum(node):
    op, x = node.op, node.inputs[0]
    if (isinstance(op, T.Sum) and x.ndim == 4 and tuple(op.axis or ()) == (0, 2, 3)
            and x.dtype == op.dtype == "float32" and op.acc_dtype == "float64"):
        return [ChannelSum()(x)]
    return False


patch_corr_mm()
for rewrite in (local_maxpool_2x2, local_maxpool_2x2_grad, local_channel_sum):
    T.opt.register_specialize(rewrite)
