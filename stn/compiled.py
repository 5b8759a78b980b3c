"""Theano functions kept between runs, so that a warm start skips optimisation.

Theano caches the C code it compiles, but it optimises every graph again at
each start: about 20 s for the STN's training function.  ``functions`` pickles
the optimised functions under Theano's compile directory, keyed by a
fingerprint of the graphs (every operation with its parameters, how they
connect, the types, the constants, the shapes of the shared variables) and of
Theano's configuration (its C-code settings, and the mode, optimizer, linker and
profiling flags, which that hash leaves out) and of ``stn/ops.py``, and loads
them when the same graphs are built again.  The loaded functions then work on the caller's own
shared variables, so the parameters, their initial values and everything that
reads them are the same as after a fresh compile.  ``STN_FUNCTION_CACHE=0``
turns the cache off.
"""
import contextlib
import hashlib
import os
import pickle
import sys

import numpy as np

from . import data

KEEP = 12  # cached graphs kept; older ones are deleted
# Theano flags that change how a graph is compiled but are not in Theano's own
# configuration hash (it covers the C-code settings only): with
# THEANO_FLAGS=profile=True or optimizer_excluding=... a cached function
# compiled without them must not be loaded.
COMPILE_FLAGS = ("mode", "linker", "optimizer", "optimizer_including",
                 "optimizer_excluding", "optimizer_requiring", "allow_gc",
                 "profile", "profile_memory", "profile_optimizer")

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops.py"), "rb") as source:
    OPS_DIGEST = hashlib.sha256(source.read()).hexdigest()


@contextlib.contextmanager
def deep_recursion():
    """Theano graphs are deep: pickling one recurses far past Python's default."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 100000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def describe(value):
    """A text for an op's parameter that is the same in every process: objects
    without a repr of their own (a scalar op) are described by class and str."""
    text = repr(value)
    if " at 0x" in text:
        text = "%s.%s %s" % (type(value).__module__, type(value).__qualname__, value)
    return text


def fingerprint(specs):
    """(sha256 hex digest, shared variables in the order the digest meets them)
    of the graphs in ``specs``: a list of (inputs, outputs, updates)."""
    import theano
    from theano.compile import SharedVariable
    from theano.gof import Constant, graph

    ids, shared = {}, []
    lines = [theano.__version__, theano.configparser.get_config_hash()]
    lines += ["%s=%s" % (name, getattr(theano.config, name)) for name in COMPILE_FLAGS]
    lines.append(OPS_DIGEST)  # the project's own rewrites shape the optimised graph

    def leaf(var):
        if isinstance(var, SharedVariable):
            shared.append(var)
            return "shared %s %s" % (var.type, np.shape(var.get_value(borrow=True)))
        if isinstance(var, Constant):
            value = np.asarray(var.data)
            return "constant %s %s %s" % (var.type, value.shape,
                                          hashlib.sha256(value.tobytes()).hexdigest())
        return "input %s" % var.type

    def ident(var):
        if var not in ids:
            ids[var] = len(ids)
            if var.owner is None:
                lines.append("%d = %s" % (ids[var], leaf(var)))
        return ids[var]

    for inputs, outputs, updates in specs:
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        updates = list(dict(updates or {}).items())
        ends = list(outputs) + [expr for _, expr in updates]
        lines.append("inputs %s" % [ident(v) for v in inputs])
        for node in graph.io_toposort(graph.inputs(ends), ends):
            op = node.op
            props = op._props_dict() if hasattr(op, "__props__") else {}
            props = [(name, describe(value)) for name, value in sorted(props.items())]
            arguments = [ident(v) for v in node.inputs]
            results = [(ident(v), str(v.type)) for v in node.outputs]
            lines.append("%s %s %s <- %s" % (op, props, results, arguments))
        lines.append("outputs %s" % [ident(v) for v in outputs])
        lines.append("updates %s" % [(ident(t), ident(e)) for t, e in updates])
    for var in list(shared):
        if getattr(var, "default_update", None) is not None:
            lines.append("default update %d <- %d" % (ident(var), ident(var.default_update)))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest(), shared


def cache_directory():
    import theano
    return os.path.join(theano.config.compiledir, "stn-functions")


def functions(specs):
    """``theano.function(inputs, outputs, updates=updates)`` for each of
    ``specs``, loaded from the cache when the same graphs were compiled before
    (otherwise a line on stdout says that compiling takes minutes)."""
    import theano
    if os.environ.get("STN_FUNCTION_CACHE", "1") == "0":
        return [theano.function(i, o, updates=u) for i, o, u in specs]
    key, shared = fingerprint(specs)
    directory = cache_directory()
    path = os.path.join(directory, key + ".pkl")
    position = {var: k for k, var in enumerate(shared)}
    if os.path.exists(path):
        try:
            with open(path, "rb") as f, deep_recursion():
                loaded, indices = pickle.load(f)
        except Exception:  # a damaged or incompatible entry: compile afresh
            pass
        else:
            for fn, fn_indices in zip(loaded, indices):
                for stored, k in zip(fn.get_shared(), fn_indices):
                    # The loaded function keeps its own storage: give it the
                    # caller's values and make the caller's variable use it.
                    stored.set_value(shared[k].get_value())
                    shared[k].container = stored.container
            os.utime(path)
            return loaded
    print("  (first build of these functions: Theano optimises them and compiles the "
          "C code it lacks, up to minutes on 2 cores; later runs load them in seconds)")
    sys.stdout.flush()
    compiled = [theano.function(i, o, updates=u) for i, o, u in specs]
    indices = [[position.get(var) for var in fn.get_shared()] for fn in compiled]
    if all(k is not None for fn_indices in indices for k in fn_indices):
        os.makedirs(directory, exist_ok=True)
        with data.atomic_path(path) as tmp, open(tmp, "wb") as f, deep_recursion():
            pickle.dump((compiled, indices), f, pickle.HIGHEST_PROTOCOL)
        prune(directory)
    return compiled


def prune(directory):
    """Delete all but the KEEP most recently used entries."""
    entries = []
    for name in os.listdir(directory):
        if name.startswith("."):
            continue  # another run's entry, still being written
        with contextlib.suppress(FileNotFoundError):  # another run may prune too
            entries.append((os.path.getmtime(os.path.join(directory, name)), name))
    for _, name in sorted(entries)[:-KEEP]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, name))
