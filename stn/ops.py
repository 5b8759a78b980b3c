"""Faster C code for a step of the chapter's networks, swapped in by Theano's optimizer.

``MaxPool2x2Grad`` computes exactly what Theano's ``MaxPoolGrad`` computes for
the 2x2, stride-2 max pooling of ``mnist_cnn.model`` (every input equal to its
window's maximum receives the window's gradient, the rest 0), in one parallel
pass over the input.  Theano's op first fills its output with zeros on one
thread and then walks the windows with generic index arithmetic: 14% of an STN
training step.  Importing the module adds the rewrite to Theano's
``specialize`` phase; ``stn.backend`` imports it as soon as Theano has loaded.
"""
import numpy as np
import theano
import theano.tensor as T
from theano.gof import Apply, OpenMPOp, local_optimizer
from theano.tensor.signal.pool import MaxPoolGrad


class MaxPool2x2Grad(OpenMPOp):
    """Gradient of a 2x2, stride-2, unpadded max pooling (ignore_border=True).

    Inputs: ``x`` (batch, channels, rows, cols), its pooling ``z`` and the
    gradient ``gz`` with respect to ``z``.  Output: the gradient with respect to
    ``x``; a last odd row or column, which no window covers, gets 0.
    """
    __props__ = ()

    def make_node(self, x, z, gz):
        x, z, gz = (T.as_tensor_variable(v) for v in (x, z, gz))
        if x.ndim != 4 or z.ndim != 4 or gz.ndim != 4:
            raise TypeError("MaxPool2x2Grad takes 4-d x, z and gz")
        if not x.dtype == z.dtype == gz.dtype or x.dtype not in ("float32", "float64"):
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

    def c_code_cache_version(self):
        return (1, self.openmp)

    def c_code(self, node, name, inputs, outputs, sub):
        x, z, gz = inputs
        gx, = outputs
        fail = sub["fail"]
        dtype = "npy_" + node.inputs[0].dtype
        omp = "#pragma omp parallel for schedule(static)" if self.openmp else ""
        return """
        {
        PyArrayObject *xc = PyArray_GETCONTIGUOUS(%(x)s);
        PyArrayObject *zc = PyArray_GETCONTIGUOUS(%(z)s);
        PyArrayObject *gzc = PyArray_GETCONTIGUOUS(%(gz)s);
        npy_intp *xd = PyArray_DIMS(xc), *zd = PyArray_DIMS(zc);
        int ok = xc && zc && gzc;
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
        """ % locals()


def constant_pair(var, value):
    """Whether ``var`` is a constant equal to the pair ``value``."""
    try:
        return tuple(T.get_scalar_constant_value(var[i]) for i in range(2)) == value
    except T.NotScalarConstantError:
        return False


@local_optimizer([MaxPoolGrad])
def local_maxpool_2x2_grad(node):
    op = node.op
    if not (isinstance(op, MaxPoolGrad) and op.mode == "max" and op.ndim == 2
            and op.ignore_border and node.inputs[0].ndim == 4):
        return False
    x, z, gz, ws, stride, pad = node.inputs
    if not (constant_pair(ws, (2, 2)) and constant_pair(stride, (2, 2))
            and constant_pair(pad, (0, 0))):
        return False
    if not x.dtype == z.dtype == gz.dtype or x.dtype not in ("float32", "float64"):
        return False
    return [MaxPool2x2Grad(openmp=op.openmp)(x, z, gz)]


T.opt.register_specialize(local_maxpool_2x2_grad)
