"""Shared test helpers: scripts loaded as modules, real data made small."""
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import stn  # noqa: E402  (Theano set-up before anything imports it)

# The venv's stn.pth imports the stn of the checkout whose `make` built it.
assert os.path.dirname(os.path.dirname(os.path.abspath(stn.__file__))) == ROOT, (
    "these tests would test %s: run them with this checkout's own venv (make test)"
    % os.path.dirname(stn.__file__))


def load_script(filename):
    """Import a script such as ``1-train-mnist.py`` without running its main."""
    path = os.path.join(ROOT, filename)
    name = "script_" + os.path.splitext(filename)[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_chapter_command(script, filename, **chapter):
    """Parse the chapter's command that ``script``'s docstring gives
    (``python FILENAME -optimizer ...``, its lines joined) and assert that it
    gives the chapter's settings, ``chapter`` over the training flags'
    defaults; return its argv."""
    from stn import training
    command = script.__doc__.split("python %s -optimizer" % filename)[1]
    argv = ("-optimizer" + command.split("\n\n")[0]).replace("\\\n", " ").split()
    args = vars(script.build_parser().parse_args(argv))
    chapter = dict(training.default_settings(), **chapter)
    recipe = getattr(script, "RECIPE", training.RECIPE)
    # -ratesepoch, -sharpepoch, -jitterepoch and -cropjitter are left to the
    # recipe: with no rate factor, no -sharp and no -jitter they act on nothing.
    assert not training.two_rates(args)
    assert not any(training.starts_later(args, name) for name in training.LATER_FLAGS)
    assert not args["jitter"]
    kept = [key for key in recipe if not key.endswith("epoch") and key != "cropjitter"]
    assert {key: args[key] for key in kept} == {key: chapter[key] for key in kept}
    return argv


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST splits, loaded once."""
    from stn import data
    return data.load_mnist()


def make_sequences(directory, nb_digits, output_dim, train_size=200, nb_distortions=8):
    """A small real dataset made by create_mnist_sequence.py."""
    create = load_script("create_mnist_sequence.py")
    return create.main(nb_digits=nb_digits, output_dim=output_dim,
                       nb_distortions=nb_distortions, train_size=train_size,
                       valid_size=50, test_size=50,
                       output=str(directory / ("seq%d.npz" % nb_digits)))


@pytest.fixture(scope="session")
def sequences1(tmp_path_factory):
    """A small 1-digit dataset of 60x60 canvases."""
    return make_sequences(tmp_path_factory.mktemp("seq1"), 1, 60)


@pytest.fixture(scope="session")
def sequences3(tmp_path_factory):
    """A small 3-digit dataset of 90x90 canvases."""
    return make_sequences(tmp_path_factory.mktemp("seq3"), 3, 90)


@pytest.fixture(scope="session")
def cnn_weights():
    """Weights of the chapter's MNIST CNN, as model.npz holds them: its random
    initialisation, with random biases too, so that tests see every array's place."""
    import lasagne
    import numpy as np
    import mnist_cnn
    lasagne.random.set_rng(np.random.RandomState(5))
    network = mnist_cnn.model(lasagne.layers.InputLayer((None, 1, 28, 28)))
    values = lasagne.layers.get_all_param_values(network)
    rng = np.random.RandomState(6)
    return [v if v.ndim > 1 else rng.uniform(-.2, .2, v.shape).astype(np.float32)
            for v in values]


@pytest.fixture(scope="session")
def model_file(cnn_weights, tmp_path_factory):
    """A model.npz of those weights."""
    path = str(tmp_path_factory.mktemp("model") / "model.npz")
    from stn import data
    data.save_npz(path, *cnn_weights)
    return path
