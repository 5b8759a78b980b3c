"""1-train-mnist.py: a short real run, and the weights it writes load back."""
import os
import signal
import subprocess
import sys

import lasagne
import numpy as np
import pytest

import mnist_cnn
from conftest import ROOT, load_script
from stn import data
from stn.errors import UserError

script = load_script("1-train-mnist.py")


def test_short_run_learns_and_saves_loadable_weights(tmp_path):
    output = tmp_path / "model.npz"
    test_acc = script.main(epochs=1, train_size=3000, batch_size=100,
                           output=str(output))
    assert test_acc > 0.5  # chance is 0.1; one epoch on 3000 images gets far more
    with np.load(output, allow_pickle=False) as f:
        assert f.files == ["arr_%d" % i for i in range(8)]
        values = [f["arr_%d" % i] for i in range(8)]
    network = mnist_cnn.model(lasagne.layers.InputLayer((None, 1, 28, 28)))
    lasagne.layers.set_all_param_values(network, values)
    assert values[0].shape == (32, 1, 5, 5)


def test_ctrl_c_saves_the_weights_trained_so_far(tmp_path, monkeypatch):
    from stn import cli

    real_update = cli.Progress.update

    def update(self, n=1):
        real_update(self, n)
        if self.done == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli.Progress, "update", update)
    output = tmp_path / "model.npz"
    test_acc = script.main(epochs=3, train_size=1000, batch_size=100, output=str(output))
    assert 0 <= test_acc <= 1
    with np.load(output, allow_pickle=False) as f:
        assert len(f.files) == 8


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "a.npz"
    expected = script.main(epochs=2, train_size=1000, batch_size=100, output=str(straight))
    first = tmp_path / "b.npz"
    script.main(epochs=1, train_size=1000, batch_size=100, output=str(first))
    # The finished 1-epoch run goes on to 2 when asked.
    assert script.main(resume=str(tmp_path / "b.ckpt.npz"), epochs=2) == expected
    # The learning curves go on with the resumed run.
    assert (tmp_path / "b_curves.png").exists()
    history = data.load_npz(str(tmp_path / "b.ckpt.npz"))
    assert history["history_epoch"].tolist() == [0, 1]
    assert np.isfinite(history["history_valid_acc"]).all()
    with pytest.raises(UserError, match="--learning-rate 0.1: a resumed run keeps the "
                       "settings it started with"):
        script.main(resume=str(tmp_path / "b.ckpt.npz"), epochs=3, learning_rate=0.1)
    # A checkpoint of a float64 run: refused in one line under float32.
    ckpt = data.load_npz(str(tmp_path / "b.ckpt.npz"))
    data.save_npz(str(tmp_path / "c.ckpt.npz"), **{
        key: value.astype(np.float64) if key.startswith("shared_") else value
        for key, value in ckpt.items()})
    with pytest.raises(UserError, match="c.ckpt.npz: the checkpoint holds float64 weights "
                       "and this run computes in float32; resume it with "
                       "THEANO_FLAGS=floatX=float64"):
        script.main(resume=str(tmp_path / "c.ckpt.npz"), epochs=3)
    a, b = data.load_npz(str(straight)), data.load_npz(str(first))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_nan_loss_is_a_clear_error_and_writes_nothing(tmp_path):
    output = tmp_path / "model.npz"
    with pytest.raises(UserError, match="the loss became nan .*try a lower learning rate, "
                       "e.g. --lr 0.001$"):
        script.main(epochs=1, train_size=1000, batch_size=100, learning_rate=1e30,
                    output=str(output))
    assert not output.exists()


def test_bad_output_directory_fails_before_training(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        script.main(output=str(tmp_path / "missing" / "model.npz"))


def test_help_is_instant_and_bad_flags_are_one_line():
    out = subprocess.run([sys.executable, "1-train-mnist.py", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "(default: 500)" in out.stdout
    for flag in (["--epochs", "0"], ["--batch-size", "-5"], ["-lr", "0"]):
        out = subprocess.run([sys.executable, "1-train-mnist.py"] + flag, cwd=ROOT,
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 2
        assert "error: argument %s" % flag[0] in out.stderr
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_crops_trains_on_the_digits_of_a_dataset(tmp_path, sequences1, capsys):
    output = tmp_path / "oracle.npz"
    test_acc = script.main(epochs=1, batch_size=50, crops=sequences1,
                           output=str(output))
    assert "Loaded the digits of %s: train (200, 1, 28, 28)" % sequences1 in \
        capsys.readouterr().out
    # The accuracy it reports is that of its saved weights on the dataset's
    # test digits (not on MNIST's test set).
    with np.load(output, allow_pickle=False) as f:
        values = [f["arr_%d" % i] for i in range(8)]
    network = mnist_cnn.model(lasagne.layers.InputLayer((None, 1, 28, 28)))
    lasagne.layers.set_all_param_values(network, values)
    X_test, y_test = data.digit_crops(sequences1)[4:]
    probs = lasagne.layers.get_output(network, X_test, deterministic=True).eval()
    assert test_acc == pytest.approx(float((probs.argmax(1) == y_test).mean()))


def test_crops_of_a_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="create_mnist_sequence.py --nb_digits 1"):
        script.main(epochs=1, crops=str(tmp_path / "missing.npz"),
                    output=str(tmp_path / "m.npz"))
