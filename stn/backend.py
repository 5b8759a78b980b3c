"""Theano/Lasagne set-up: ``import stn`` prepares it, Theano's first import applies it.

PyPI offers only Theano 1.0.5 and Lasagne 0.1, and the two do not work together
out of the box.  This module makes them work, fast, on a CPU:

* Theano flags: ``floatX=float32``, the best BLAS that can be found and a
  project-local compile cache, each only where the user has not chosen a value
  in ``THEANO_FLAGS`` or a ``.theanorc`` file.  They are settled when Theano
  is first imported, so that ``import stn`` stays cheap and fails only on a
  Python that Theano cannot run: the venv that ``make`` builds imports it at
  start-up (its ``stn.pth``), and a setting the project cannot run is refused
  at ``import theano``.
* glibc's allocator keeps freed memory for reuse (about twice the training
  speed); ``STN_MALLOC_TUNING=0`` turns that off.
* ``theano.tensor.signal.downsample``, which Lasagne 0.1 imports and Theano 1.0
  removed, is provided as a thin alias of ``theano.tensor.signal.pool``, and
  ``lasagne.layers.TransformerLayer`` is added where Lasagne lacks it, both
  when Theano and Lasagne are imported.
* The known deprecation noise of Theano and Lasagne is filtered, by module.
"""
import configparser
import ctypes
import ctypes.util
import functools
import glob
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import tempfile
import time
import types
import warnings

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Whether configure() changed the allocator thresholds, for the benchmark.
malloc_tuned = False
# When stn was first imported (by a script, or by the venv's stn.pth at start-up):
# start-up times count from here.
started = time.time()

# glibc mallopt parameters and the values measured to double training speed.
# Freed blocks below 32 MiB stay in the heap instead of being unmapped, and the
# heap is only trimmed past 2 GiB (mallopt takes a C int, so 2**31 - 1 is the
# largest trim threshold it accepts; GLIBC_TUNABLES's 16 GiB behaves the same).
# 32 MiB is the largest mmap threshold glibc accepts, and larger arrays were
# still mapped and page-faulted afresh at every step (the STN's first
# localization convolution gives 35 MB at minibatches of 128: 17k page faults
# a step), so mmap is not used at all (M_MMAP_MAX 0): no page faults a step.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
MALLOC_SETTINGS = ((M_MMAP_THRESHOLD, 32 * 2**20),
                   (M_TRIM_THRESHOLD, 2**31 - 1),
                   (M_TOP_PAD, 256 * 2**20),
                   (M_MMAP_MAX, 0))

# Messages that Theano 1.0.5 and Lasagne 0.1 print on every model build, although
# nothing is wrong: Lasagne 0.1 calls Theano's old argument names.
NOISE = (
    ("The `image_shape` keyword argument", "theano"),
    ("stack\\(\\*tensors\\) interface is deprecated", "theano"),
    ("DEPRECATION: the 'ds' parameter", "theano"),
    ("DEPRECATION: the 'st' parameter", "theano"),
    ("DEPRECATION: the 'padding' parameter", "theano"),
    ("", "lasagne"),
)


def user_theano_settings():
    """Return the Theano options that the user set by flags or a .theanorc:
    their names (lower case, as Theano's .theanorc reader compares them) and
    values, the flags' over the files'."""
    names = {}
    default_rc = os.pathsep.join(["~/.theanorc", "~/.theanorc.txt"])
    rc_files = [os.path.expanduser(p)
                for p in os.environ.get("THEANORC", default_rc).split(os.pathsep)]
    parser = configparser.ConfigParser(interpolation=None)
    parser.read([p for p in rc_files if os.path.isfile(p)])
    for section in parser.sections():
        for key, value in parser[section].items():
            names[(key if section == "global" else section + "." + key).lower()] = value
    for item in os.environ.get("THEANO_FLAGS", "").split(","):
        if "=" in item:
            key, value = item.split("=", 1)
            names[key.strip().lower()] = value.strip()
    return names


# The BLAS and OpenBLAS functions that Theano's C code calls.  The
# scipy-openblas32 wheel names them with a ``scipy_`` prefix; Theano passes the
# non-library words of ``blas.ldflags`` to the compiler of every BLAS-using op,
# so ``-Dsgemm_=scipy_sgemm_`` and the like point its calls at them.
BLAS_CALLS = ["%s%s_" % (kind, name) for name in ("gemm", "gemv", "ger", "dot", "axpy",
                                                  "copy", "scal") for kind in "sd"]
BLAS_CALLS += ["openblas_set_num_threads", "openblas_get_num_threads"]


@functools.lru_cache(maxsize=None)
def find_blas():
    """Return Theano ``blas.ldflags`` for the best OpenBLAS found, or ''.

    First the OpenBLAS of the scipy-openblas32 wheel (a requirement): version
    0.3.34 runs the convolutions' small matrix products 1.4-1.8 times as fast on
    this project's machines as the 0.3.18 inside the scipy wheel.  Then the
    system's OpenBLAS, then the scipy wheel's, both linked under their own names.
    """
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is not None and spec.submodule_search_locations:
        lib_dir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
        found = sorted(glob.glob(os.path.join(lib_dir, "libscipy_openblas*.so")))
        if found:
            renames = " ".join("-D%s=scipy_%s" % (name, name) for name in BLAS_CALLS)
            return "-L%s -l:%s %s" % (lib_dir, os.path.basename(found[0]), renames)
    if ctypes.util.find_library("openblas"):
        return "-lopenblas"
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        return ""
    libs_dir = os.path.join(os.path.dirname(list(spec.submodule_search_locations)[0]),
                            "scipy.libs")
    found = sorted(glob.glob(os.path.join(libs_dir, "libopenblas*.so*")))
    if not found:
        return ""
    return "-L%s -l:%s" % (libs_dir, os.path.basename(found[0]))


def refuse(message):
    """A set-up the project cannot run: one line on stderr, "prog: error:
    message", as the scripts' other errors ("python: error:" under ``-c``),
    and exit code 2."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] != "-c" else ""
    sys.stderr.write("%s: error: %s\n" % (prog or "python", message))
    raise SystemExit(2)


def compile_cache(project_dir):
    """Theano's base_compiledir: ``project_dir``/.theano, or, where that cannot
    be written (a read-only checkout), a per-user cache directory, said in one
    line on stderr."""
    project = os.path.join(project_dir, ".theano")
    user = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "stn-theano")
    problem = unwritable(project)
    if not problem:
        return project
    if unwritable(user):
        refuse("%s: %s, and so is %s; give Theano a writable compile cache with "
               "THEANO_FLAGS=base_compiledir=DIR" % (project, problem, user))
    sys.stderr.write("stn: %s: %s; Theano compiles into %s instead\n"
                     % (project, problem, user))
    return user


def unwritable(path):
    """Why files cannot be created in directory ``path`` (made if missing), or None."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return None
    except OSError as e:
        return (e.strerror or str(e)).lower()


def default_blas():
    """The BLAS that the project gives Theano: ``find_blas()``, or '' where the
    user has chosen one."""
    return "" if "blas.ldflags" in user_theano_settings() else find_blas()


def thread_defaults():
    """With our BLAS, Theano's OpenMP ops parallelise over the batch and call
    BLAS on one thread each: OMP_NUM_THREADS (the cores) and
    OPENBLAS_NUM_THREADS=1, where unset.  OpenBLAS reads its thread count when
    it loads, NumPy's own included, so this runs at ``import stn``."""
    if default_blas():
        os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def theano_flags():
    """Return the THEANO_FLAGS string: the user's flags plus our defaults.
    Exits (``refuse``) on a setting the project cannot run, and says on stderr
    when the compile cache moves (``compile_cache``)."""
    user = user_theano_settings()
    if user.get("optimizer", "").lower() == "none":
        refuse("optimizer=None (THEANO_FLAGS or .theanorc): Theano 1.0.5 runs the "
               "convolutions unoptimised only through SciPy modules that the pinned "
               "SciPy lacks; to debug, use optimizer=fast_compile")
    defaults = {"floatX": "float32"}
    if "compiledir" not in user and "base_compiledir" not in user:
        defaults["base_compiledir"] = compile_cache(PROJECT_DIR)
    if "blas.ldflags" not in user:
        ldflags = find_blas()
        defaults["blas.ldflags"] = ldflags
        # OpenMP without a real BLAS kills the interpreter (the NumPy C-API
        # fallback takes the GIL from worker threads), so never combine them.
        defaults["openmp"] = str(bool(ldflags))
    flags = [os.environ.get("THEANO_FLAGS", "")]
    flags += ["%s=%s" % kv for kv in defaults.items() if kv[0].lower() not in user]
    return ",".join(f for f in flags if f)


def tune_malloc():
    """Keep freed memory for reuse (glibc only); return True if applied.

    ``STN_MALLOC_TUNING=0`` leaves the allocator as it is.
    """
    if os.environ.get("STN_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has this symbol
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS)


def filter_noise():
    """Silence the known deprecation warnings of Theano and Lasagne only."""
    for message, module in NOISE:
        warnings.filterwarnings("ignore", message=message, module=module)
    # The scipy OpenBLAS is linked by file name, which Theano's directory check
    # does not recognise, so it warns that no dynamic library was found.
    logging.getLogger("theano.tensor.blas").addFilter(
        lambda record: "did not find a dynamic library" not in record.getMessage())


def downsample_module():
    """Build ``theano.tensor.signal.downsample`` for Lasagne 0.1."""
    from theano.tensor.signal import pool

    def max_pool_2d(input, ds, ignore_border=None, st=None, padding=(0, 0),
                    mode="max"):
        return pool.pool_2d(input, ws=ds, ignore_border=ignore_border,
                            stride=st, pad=padding, mode=mode)

    module = types.ModuleType("theano.tensor.signal.downsample",
                              "Lasagne 0.1's view of theano.tensor.signal.pool.")
    module.max_pool_2d = max_pool_2d
    return module


class ShimLoader(importlib.abc.Loader):
    """Load the downsample alias, or call ``after(module)`` once a module loaded."""

    def __init__(self, loader=None, after=None):
        self.loader, self.after = loader, after

    def create_module(self, spec):
        if self.loader is None:
            return downsample_module()
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if self.loader is not None:
            self.loader.exec_module(module)
            self.after(module)


class ShimFinder(importlib.abc.MetaPathFinder):
    """Patch Theano and Lasagne as they are imported.

    Theano's flags are set (``theano_flags``) just before it loads;
    ``theano.tensor.signal.downsample`` comes from ``downsample_module`` and,
    once ``lasagne.layers`` has loaded, ``stn.layers.install`` adds the
    TransformerLayer that Lasagne 0.1 lacks; once ``theano`` has, ``stn.ops``
    installs its faster kernels; ``theano.gof.op`` and
    ``theano.gof.cc`` get ``stable_cop_version`` and
    ``version_parameterless_ops``, so that a warm start compiles no C code.
    """

    def find_spec(self, name, path, target=None):
        if name == "theano":
            os.environ["THEANO_FLAGS"] = theano_flags()
        if name == "theano.tensor.signal.downsample":
            return importlib.machinery.ModuleSpec(name, ShimLoader())
        after = {"lasagne.layers": install_layers, "theano.gof.op": stable_cop_version,
                 "theano.gof.cc": version_parameterless_ops,
                 "theano": install_ops}
        if name in after:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None:
                spec.loader = ShimLoader(spec.loader, after[name])
            return spec
        return None


def stable_cop_version(op_module):
    """Theano 1.0.5 versions the C code of each COp (DimShuffle, the
    convolutions, pooling) by Python's hash() of its source text, which differs
    in every process since Python 3.3 randomises string hashes: those modules
    were compiled again at every start (about 11 s).  Version them by a SHA-256
    of the text instead, otherwise as Theano does."""
    def c_code_cache_version(self):
        digest = hashlib.sha256("\0".join(self.func_codes).encode()).hexdigest()
        version = (int(digest[:15], 16),)
        if hasattr(self, "params_type"):
            version += (self.params_type.c_code_cache_version(),)
        return version

    op_module.COp.c_code_cache_version = c_code_cache_version


def version_parameterless_ops(cc_module):
    """Theano 1.0.5 takes an op's empty ``__props__`` (an op without
    parameters: Alloc, Dot22, AdvancedSubtensor1, SoftmaxWithBias...) for a
    missing C code version, so every module holding one was compiled afresh in
    each process.  Keep such keys versioned when everything else in them is."""
    original = cc_module.CLinker.cmodule_key_

    def cmodule_key_(self, fgraph, *args, **kwargs):
        key = original(self, fgraph, *args, **kwargs)
        if key is None or key[0] != ():
            return key
        version = []
        for node in self.schedule(fgraph):
            if hasattr(node.op, "c_code_cache_version_apply"):
                version.append(node.op.c_code_cache_version_apply(node))
            if getattr(node.op, "__props__", None):
                version.append(node.op.__props__)
            version.extend(v.type.c_code_cache_version()
                           for v in node.inputs + node.outputs)
        return (tuple(version), key[1]) if all(version) else key

    cc_module.CLinker.cmodule_key_ = cmodule_key_


def install_ops(theano_module):
    """Theano has loaded: give it the faster kernels of ``stn.ops``."""
    from . import ops  # noqa: F401  (registers its rewrites on import)


def install_layers(lasagne_layers):
    if "stn.layers" in sys.modules and not hasattr(sys.modules["stn.layers"], "install"):
        return  # stn.layers is importing Lasagne; it installs itself when done
    from . import layers
    layers.install(lasagne_layers)


def configure():
    """Prepare everything above (``ShimFinder`` applies it as Theano and
    Lasagne load); must run before Theano is imported."""
    global malloc_tuned
    if sys.version_info >= (3, 12):
        refuse("Theano 1.0.5 does not run on Python %d.%d: use Python 3.11 "
               "(`make demo` and `make test` create a Python 3.11 venv)"
               % sys.version_info[:2])
    malloc_tuned = tune_malloc()
    filter_noise()
    if "theano" not in sys.modules:
        thread_defaults()
    if not any(isinstance(f, ShimFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ShimFinder())
    if "theano.gof.op" in sys.modules:
        stable_cop_version(sys.modules["theano.gof.op"])
        version_parameterless_ops(sys.modules["theano.gof.cc"])
    if "lasagne.layers" in sys.modules:
        install_layers(sys.modules["lasagne.layers"])
