"""Faster C code for the chapter's networks, swapped in by Theano's optimizer.

Each op computes what a Theano op computes in the cases these networks need
(``mnist_cnn.model``'s 2x2, stride-2 max pooling, its convolutions' biases, the
dense layers' products), sharing the work among the OpenMP threads:

* ``MaxPool2x2``: Theano's ``Pool`` (the same maxima, NaN included);
* ``MaxPool2x2Grad``: Theano's ``MaxPoolGrad`` (every input equal to its
  window's maximum receives the window's gradient, the rest 0).  Theano's fills
  its output with zeros on one thread and walks the windows with generic index
  arithmetic: 14% of an STN training step;
* ``ChannelSum``: Theano's ``Sum{axis=[0, 2, 3], acc_dtype=float64}`` of
  float32, the gradient of a convolution's biases, which Theano sums on one
  thread;
* ``ParallelDot22``: Theano's ``Dot22`` (a matrix product) with the output's
  rows shared among the OpenMP threads, each calling the single-threaded BLAS
  that the convolutions use (a second BLAS thread pool halves the speed of
  everything).  The dense and GRU layers' products ran on one core.

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
from theano.tensor import blas, blas_headers
from theano.tensor.nnet import corr
from theano.tensor.signal.pool import MaxPoolGrad, Pool

FLOATS = ("float32", "float64")


class TemplateOp(OpenMPOp):
    """An op whose C code is ``template``, formatted with the names in
    ``c_names`` (inputs, then the output), ``dtype`` (the C type of the first
    input), ``gemm`` (the BLAS matrix product of that type), ``omp`` (the OpenMP
    pragma, or nothing), ``threads`` and ``fail``."""
    __props__ = ()
    c_names = ()
    template = ""

    def c_code_cache_version(self):
        # Versioned by the text itself: a changed kernel is compiled afresh.
        digest = hashlib.sha256(self.template.encode()).hexdigest()
        return (int(digest[:15], 16), self.openmp)

    def c_code(self, node, name, inputs, outputs, sub):
        names = dict(zip(self.c_names, list(inputs) + list(outputs)))
        dtype = node.inputs[0].dtype
        names.update(dtype="npy_" + dtype, gemm="sgemm_" if dtype == "float32" else "dgemm_",
                     fail=sub["fail"],
                     omp="#pragma omp parallel for schedule(static)" if self.openmp else "",
                     threads="omp_get_max_threads()" if self.openmp else "1")
        return self.template % names


class MaxPool2x2(TemplateOp):
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


class MaxPool2x2Grad(TemplateOp):
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


class ChannelSum(TemplateOp):
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


class ParallelDot22(TemplateOp):
    """x . y for matrices of one float dtype, a block of rows per thread."""
    c_names = ("x", "y", "out")

    def make_node(self, x, y):
        x, y = T.as_tensor_variable(x), T.as_tensor_variable(y)
        if x.ndim != 2 or y.ndim != 2 or x.dtype != y.dtype or x.dtype not in FLOATS:
            raise TypeError("ParallelDot22 takes two matrices of one float dtype")
        return Apply(self, [x, y], [T.matrix(dtype=x.dtype)])

    def perform(self, node, inputs, outputs):
        x, y = inputs
        outputs[0][0] = np.dot(x, y)

    def infer_shape(self, node, shapes):
        return [(shapes[0][0], shapes[1][1])]

    def c_support_code(self):
        return blas_headers.blas_header_text()

    def c_libraries(self):
        return blas.ldflags()

    def c_compile_args(self):
        return blas.ldflags(libs=False, flags=True) + super().c_compile_args()

    def c_lib_dirs(self):
        return blas.ldflags(libs=False, libs_dir=True)

    def c_header_dirs(self):
        return blas.ldflags(libs=False, include_dir=True)

    template = """
    {
    /* In BLAS's column-major terms out^T = op(y^T) op(x^T), so a block of
       rows of out is a block of columns of out^T. */
    PyArrayObject *xc = %(x)s, *yc = %(y)s;
    Py_INCREF(xc);
    Py_INCREF(yc);
    if (!PyArray_IS_C_CONTIGUOUS(xc) && !PyArray_IS_F_CONTIGUOUS(xc)) {
        Py_DECREF(xc);
        xc = PyArray_GETCONTIGUOUS(%(x)s);
    }
    if (yc && !PyArray_IS_C_CONTIGUOUS(yc) && !PyArray_IS_F_CONTIGUOUS(yc)) {
        Py_DECREF(yc);
        yc = PyArray_GETCONTIGUOUS(%(y)s);
    }
    int ok = xc && yc;
    npy_intp dims[2] = {0, 0};
    if (ok) {
        dims[0] = PyArray_DIMS(xc)[0];
        dims[1] = PyArray_DIMS(yc)[1];
        if (PyArray_DIMS(xc)[1] != PyArray_DIMS(yc)[0]) {
            PyErr_SetString(PyExc_ValueError, "ParallelDot22: shapes do not match");
            ok = 0;
        }
    }
    if (ok && !(%(out)s && PyArray_IS_C_CONTIGUOUS(%(out)s)
                && PyArray_CompareLists(PyArray_DIMS(%(out)s), dims, 2))) {
        Py_XDECREF(%(out)s);
        %(out)s = (PyArrayObject*)PyArray_EMPTY(2, dims, PyArray_TYPE(xc), 0);
        ok = %(out)s != NULL;
    }
    if (ok && dims[0] > 0 && dims[1] > 0) {
        int M = dims[0], N = dims[1], K = PyArray_DIMS(xc)[1];
        const int x_c = PyArray_IS_C_CONTIGUOUS(xc), y_c = PyArray_IS_C_CONTIGUOUS(yc);
        char tx = x_c ? 'N' : 'T', ty = y_c ? 'N' : 'T';
        int ldx = x_c ? (K > 1 ? K : 1) : M, ldy = y_c ? N : (K > 1 ? K : 1);
        const %(dtype)s one = 1, zero = 0;
        const %(dtype)s *xp = (%(dtype)s*)PyArray_DATA(xc);
        %(dtype)s *yp = (%(dtype)s*)PyArray_DATA(yc);
        %(dtype)s *op = (%(dtype)s*)PyArray_DATA(%(out)s);
        if (K == 0) {
            for (npy_intp i = 0; i < (npy_intp)M * N; i++) op[i] = 0;
        } else {
            /* a block of rows per thread, for products worth it */
            const int blocks = (double)M * N * K >= 4e6 && M >= 64 ? %(threads)s : 1;
            %(omp)s
            for (int t = 0; t < blocks; t++) {
                int m0 = (int)((npy_intp)M * t / blocks), rows = (int)((npy_intp)M * (t + 1) / blocks) - m0;
                %(dtype)s *xb = (%(dtype)s*)(x_c ? xp + (npy_intp)m0 * K : xp + m0);
                %(gemm)s(&ty, &tx, &N, &rows, &K, (%(dtype)s*)&one, yp, &ldy, xb, &ldx,
                      (%(dtype)s*)&zero, op + (npy_intp)m0 * N, &N);
            }
        }
    }
    Py_XDECREF(xc);
    Py_XDECREF(yc);
    if (!ok) %(fail)s
    }
    """


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


@local_optimizer([blas.Dot22])
def local_parallel_dot22(node):
    if type(node.op) is blas.Dot22 and node.inputs[0].dtype in FLOATS:
        return [ParallelDot22()(*node.inputs)]
    return False


patch_corr_mm()
for rewrite in (local_maxpool_2x2, local_maxpool_2x2_grad, local_channel_sum,
                local_parallel_dot22):
    T.opt.register_specialize(rewrite)
