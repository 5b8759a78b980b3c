"""stn.cli: one-line errors from ``run``, the flags ``given`` on a command line."""
import argparse
import io

import numpy as np
import pytest

from stn import cli
from stn.errors import UserError


def call(main, capsys):
    """``cli.run(main, no flags)``: the exit code and the lines on stderr."""
    with pytest.raises(SystemExit) as stop:
        cli.run(main, argparse.Namespace())
    return stop.value.code, capsys.readouterr().err.splitlines()


def test_a_user_error_is_one_line(capsys):
    def main():
        raise UserError("--data x.npz: no such file")
    code, lines = call(main, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].endswith("error: --data x.npz: "
                                                               "no such file")


def test_an_error_inside_theano_is_one_line_with_a_hint(capsys, monkeypatch):
    import theano
    import theano.tensor as T
    monkeypatch.delenv(cli.TRACEBACK_VARIABLE, raising=False)
    x = T.matrix("x")
    f = theano.function([x], x.sum())
    code, lines = call(lambda: f(np.zeros(3, np.float32)), capsys)
    assert code == 2 and len(lines) == 1
    assert "error: in theano, TypeError: " in lines[0]
    assert "run again with STN_TRACEBACK=1" in lines[0]


def test_a_file_system_error_is_one_line(capsys, tmp_path):
    code, lines = call(lambda: np.load(str(tmp_path / "none.npz")), capsys)
    assert code == 2 and len(lines) == 1 and "FileNotFoundError" in lines[0]


def test_a_bug_in_the_project_and_the_opt_in_keep_the_traceback(monkeypatch):
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda: 1 / 0, argparse.Namespace())
    # Even when NumPy raises it: wrong shapes are the project's bug.
    with pytest.raises(ValueError):
        cli.run(lambda: np.concatenate([np.zeros(2), np.zeros((2, 2))]),
                argparse.Namespace())
    monkeypatch.setenv(cli.TRACEBACK_VARIABLE, "1")
    with pytest.raises(FileNotFoundError):
        cli.run(lambda: np.load("/no/such/file.npz"), argparse.Namespace())


def test_long_flags_take_either_word_separator():
    parser = cli.parser(None)
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--output_dim", type=int)
    args = parser.parse_args(["--train_size", "5", "--output-dim=60"])
    assert (args.train_size, args.output_dim) == (5, 60)
    assert "--train_size" not in parser.format_help()


def test_given_holds_only_the_flags_on_the_command_line():
    parser = cli.parser(None)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--output", default="res.npz")
    assert vars(cli.given(parser, [])) == {}
    assert vars(cli.given(parser, ["--lr", "0.1"])) == {"lr": 0.1}


def test_progress_logs_a_line_a_minute_when_not_on_a_terminal(monkeypatch):
    stream = io.StringIO()
    clock = iter(range(0, 1000, 25))     # 25 s between calls
    monkeypatch.setattr(cli.time, "time", lambda: next(clock))
    progress = cli.Progress(10, "epoch 3", stream)
    for _ in range(10):
        progress.update()
    progress.close()
    lines = stream.getvalue().splitlines()
    # Updates at 25, 50, ... 250 s: a line at 75 s (3 done), 150 s and 225 s;
    # none at the end, where the epoch's own line follows.
    assert lines == ["epoch 3: 3/10, 75 s elapsed, ETA 175 s",
                     "epoch 3: 6/10, 150 s elapsed, ETA 100 s",
                     "epoch 3: 9/10, 225 s elapsed, ETA 25 s"]
