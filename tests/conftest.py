"""Shared test helpers: load a top-level script as a module by its file name."""
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import stn  # noqa: E402,F401  (Theano set-up before anything imports it)


def load_script(filename):
    """Import a script such as ``1-train-mnist.py`` without running its main."""
    path = os.path.join(ROOT, filename)
    name = "script_" + os.path.splitext(filename)[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST splits, loaded once."""
    from stn import data
    return data.load_mnist()
