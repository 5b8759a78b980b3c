"""stn.backend: Theano flags, the Lasagne 0.1 shim, allocator tuning."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter with ``env`` added; return stdout."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, check=True,
                          capture_output=True, text=True).stdout


def test_lasagne_imports_and_gets_transformer_layer():
    import lasagne
    from stn.layers import TransformerLayer
    assert lasagne.layers.TransformerLayer is TransformerLayer


def test_import_stn_does_not_load_theano():
    out = run_python("import sys, stn; print('theano' in sys.modules)")
    assert out.strip() == "False"


def test_flags_default_to_float32_and_a_real_blas():
    import theano
    assert theano.config.floatX == "float32"
    assert "openblas" in theano.config.blas.ldflags
    assert theano.config.openmp


def test_the_venvs_python_sets_theano_up_without_import_stn(tmp_path):
    import sysconfig
    assert os.path.exists(os.path.join(sysconfig.get_path("purelib"), "stn.pth")), (
        "this Python's venv has no stn.pth: run the tests with `make test`")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "THEANO_FLAGS")}
    out = subprocess.run([sys.executable, "-c", (
        "import theano, lasagne, stn.layers, stn.backend as b; print("
        "theano.config.floatX, theano.config.openmp, "
        "theano.config.blas.ldflags == b.find_blas() != '', "
        "lasagne.layers.TransformerLayer is stn.layers.TransformerLayer)")],
        cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["float32", "True", "True", "True"]


@pytest.mark.parametrize("theano_flags, openblas_threads", [
    ("", "1"), ("blas.ldflags=-lblas", "None")])
def test_with_our_blas_openblas_runs_on_one_thread(theano_flags, openblas_threads):
    # Theano's OpenMP ops parallelise over the batch, each calling our BLAS on
    # one thread; a BLAS the user chose keeps its own threads.
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(PYTHONPATH=ROOT, THEANO_FLAGS=theano_flags)
    out = subprocess.run([sys.executable, "-c", "import os, stn; print("
                          "os.environ.get('OPENBLAS_NUM_THREADS'), "
                          "os.environ.get('OMP_NUM_THREADS') is not None)"],
                         env=env, check=True, capture_output=True, text=True).stdout
    assert out.split() == [openblas_threads, str(openblas_threads == "1")]


def test_user_flags_are_kept():
    out = run_python("import stn, theano; print(theano.config.floatX, "
                     "repr(theano.config.blas.ldflags), theano.config.openmp)",
                     THEANO_FLAGS="floatX=float64,blas.ldflags=")
    assert out.split() == ["float64", "''", "False"]


def test_theanorc_settings_are_kept(tmp_path):
    rc = tmp_path / "theanorc"
    rc.write_text("[global]\nfloatX = float64\n[blas]\nldflags =\n")
    out = run_python("import stn, theano; print(theano.config.floatX, "
                     "repr(theano.config.blas.ldflags))", THEANORC=str(rc), THEANO_FLAGS="")
    assert out.split() == ["float64", "''"]


def test_downsample_alias_pools_like_numpy():
    import theano
    import theano.tensor as T
    import lasagne
    x = T.tensor4()
    layer = lasagne.layers.MaxPool2DLayer(lasagne.layers.InputLayer((None, 2, 6, 8), x), 2)
    pooled = theano.function([x], lasagne.layers.get_output(layer))
    images = np.random.RandomState(0).rand(3, 2, 6, 8).astype(np.float32)
    expected = images.reshape(3, 2, 3, 2, 4, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(pooled(images), expected)


def test_malloc_tuning_applied_and_can_be_turned_off():
    code = "import stn.backend as b; print(b.malloc_tuned)"
    assert run_python(code).strip() == "True"
    assert run_python(code, STN_MALLOC_TUNING="0").strip() == "False"


def test_python_312_is_refused_clearly(monkeypatch, capsys):
    from stn import backend
    monkeypatch.setattr(sys, "version_info", (3, 12, 0))
    with pytest.raises(SystemExit) as stop:
        backend.configure()
    assert stop.value.code == 2
    assert "does not run on Python 3.12: use Python 3.11" in capsys.readouterr().err


def test_optimizer_none_is_refused_in_one_line_at_import_theano(tmp_path):
    # The script loads MNIST, then imports Theano: refused there.  A Python of
    # the venv that never imports Theano runs as usual, stn imported at
    # start-up by stn.pth.
    env = dict(os.environ, THEANO_FLAGS="optimizer=None")
    script = [os.path.join(ROOT, "1-train-mnist.py"), "--output", str(tmp_path / "m.npz")]
    for args, prog in ((script, "1-train-mnist.py"), (["-c", "import lasagne"], "python")):
        out = subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith(prog + ": error: ")
        assert "optimizer=None" in out.stderr and "use optimizer=fast_compile" in out.stderr
    out = subprocess.run([sys.executable, "-c", "import sys; print('stn' in sys.modules)"],
                         capture_output=True, text=True, env=env)
    assert (out.returncode, out.stdout, out.stderr) == (0, "True\n", "")
    assert os.listdir(str(tmp_path)) == []


def test_an_unwritable_project_compiles_into_a_user_cache(tmp_path, monkeypatch, capsys):
    from stn import backend
    # A project directory that is a file: nothing can be created inside it,
    # as on a read-only mount (where even root cannot write).
    project = tmp_path / "checkout"
    project.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert backend.compile_cache(str(project)) == str(tmp_path / "cache" / "stn-theano")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Theano compiles into %s" % (tmp_path / "cache") in err
    assert backend.compile_cache(str(tmp_path)) == str(tmp_path / ".theano")
    (tmp_path / "nowhere").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit):
        backend.compile_cache(str(project))
    assert "THEANO_FLAGS=base_compiledir=DIR" in capsys.readouterr().err


def test_c_code_versions_are_the_same_in_every_process():
    # Theano hashed COp source text with Python's per-process string hash, so
    # DimShuffle, convolution and pooling modules were rebuilt at each start.
    code = ("import stn, theano.tensor as T; "
            "print(T.DimShuffle((False,), ('x', 0)).c_code_cache_version())")
    runs = {run_python(code, PYTHONHASHSEED=str(seed)) for seed in (1, 2)}
    assert len(runs) == 1 and runs.pop().strip() not in ("", "()")


def test_modules_of_parameterless_ops_are_cached():
    # An op without parameters (empty __props__) used to make the whole
    # module key unversioned: compiled again in every process.
    import theano
    import theano.tensor as T
    x = T.fvector("x")
    y = T.alloc(x, 3, x.shape[0])
    assert y.owner.op.__props__ == ()
    linker = theano.gof.cc.CLinker().accept(theano.gof.FunctionGraph([x], [y]))
    version, signature = linker.cmodule_key()
    assert version != () and len(version) > 1
