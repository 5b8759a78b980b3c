"""The cache of compiled functions: a loaded function computes exactly what a
fresh compile computes, on the caller's own parameters."""
import os

import numpy as np
import pytest

from stn import compiled


def build(units=12, seed=0):
    """A small network with dropout (random streams) trained by adam
    (optimizer state): its specs and its layers."""
    import lasagne
    import theano.tensor as T
    lasagne.random.set_rng(np.random.RandomState(seed))
    X, y = T.matrix("X"), T.ivector("y")
    l_in = lasagne.layers.InputLayer((None, 5), X)
    l_hid = lasagne.layers.DenseLayer(lasagne.layers.dropout(l_in, p=0.3), units)
    l_out = lasagne.layers.DenseLayer(l_hid, 3, nonlinearity=lasagne.nonlinearities.softmax)
    loss = lasagne.objectives.categorical_crossentropy(
        lasagne.layers.get_output(l_out), y).mean()
    params = lasagne.layers.get_all_params(l_out)
    updates = lasagne.updates.adam(loss, params, learning_rate=0.01)
    evaluate = lasagne.layers.get_output(l_out, deterministic=True)
    return [([X, y], loss, updates), ([X], evaluate, None)], l_out


def train(specs, l_out):
    import lasagne
    rng = np.random.RandomState(1)
    X = rng.rand(16, 5).astype("float32")
    y = rng.randint(0, 3, 16).astype("int32")
    train_fn, eval_fn = compiled.functions(specs)
    before = lasagne.layers.get_all_param_values(l_out)
    losses = [float(train_fn(X, y)) for _ in range(4)]
    return losses, eval_fn(X), before, lasagne.layers.get_all_param_values(l_out)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled, "cache_directory", lambda: str(tmp_path))
    monkeypatch.delenv("STN_FUNCTION_CACHE", raising=False)
    return tmp_path


def test_loaded_functions_equal_a_fresh_compile(cache, monkeypatch, capsys):
    import theano
    train(*build(seed=0))                     # compiles and stores the graph
    assert len(os.listdir(str(cache))) == 1
    assert "first build of these functions" in capsys.readouterr().out
    monkeypatch.setenv("STN_FUNCTION_CACHE", "0")
    fresh = train(*build(seed=5))             # the same graph, other values
    monkeypatch.delenv("STN_FUNCTION_CACHE")

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled although the graph is cached")

    monkeypatch.setattr(theano, "function", no_compile)
    capsys.readouterr()
    loaded = train(*build(seed=5))
    assert "first build" not in capsys.readouterr().out
    assert fresh[0] == loaded[0]              # losses, dropout masks included
    np.testing.assert_array_equal(fresh[1], loaded[1])
    # The loaded function started from the caller's initial values, not the
    # stored ones, and trained the caller's parameters.
    for key in (2, 3):
        for a, b in zip(fresh[key], loaded[key]):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(loaded[2][0], loaded[3][0])


def test_the_fingerprint_follows_the_graph():
    specs, _ = build(units=12)
    same, _ = build(units=12, seed=5)   # other initial values, same graph
    other, _ = build(units=13)
    key, shared = compiled.fingerprint(specs)
    assert compiled.fingerprint(same)[0] == key
    assert compiled.fingerprint(other)[0] != key
    # Parameters, adam's moments and step, the dropout stream's state.
    assert len(shared) == len({id(v) for v in shared}) and len(shared) >= 4 + 8 + 1 + 1


def test_a_damaged_entry_is_compiled_again(cache):
    fresh = train(*build())
    (entry,) = os.listdir(str(cache))
    with open(str(cache / entry), "wb") as f:
        f.write(b"not a pickle")
    assert train(*build())[0] == fresh[0]
    assert os.path.getsize(str(cache / entry)) > 100


def test_the_cache_can_be_turned_off(cache, monkeypatch):
    monkeypatch.setenv("STN_FUNCTION_CACHE", "0")
    train(*build())
    assert os.listdir(str(cache)) == []


def fingerprint_in_another_process(extra_flags=""):
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys; sys.path.insert(0, %r); import conftest, test_compiled; "
            "print(test_compiled.compiled.fingerprint(test_compiled.build()[0])[0])" % here)
    env = dict(os.environ)
    env["THEANO_FLAGS"] = ",".join(f for f in [env.get("THEANO_FLAGS", ""), extra_flags] if f)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=env).stdout.split()[-1]


def test_the_fingerprint_is_the_same_in_another_process():
    assert fingerprint_in_another_process() == compiled.fingerprint(build()[0])[0]


@pytest.mark.parametrize("flag", ["profile=True", "optimizer_excluding=conv_gemm",
                                  "mode=FAST_COMPILE"])
def test_the_fingerprint_follows_the_compile_flags(flag):
    # Theano's own configuration hash is the same with and without these.
    assert fingerprint_in_another_process(flag) != compiled.fingerprint(build()[0])[0]


def test_only_the_most_recent_entries_are_kept(cache, monkeypatch):
    monkeypatch.setattr(compiled, "KEEP", 2)
    (cache / ".entry.pkl.x.tmp.pkl").write_bytes(b"another run is writing this")
    for units in (12, 13, 14):
        train(*build(units=units))
    names = sorted(os.listdir(str(cache)))
    assert len(names) == 3 and names[0].startswith(".")
    assert compiled.fingerprint(build(units=12)[0])[0] + ".pkl" not in names
