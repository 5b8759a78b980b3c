"""Command-line plumbing shared by the scripts: flag types, errors, progress.

Nothing here imports Theano, so ``--help`` answers at once.
"""
import argparse
import os
import sys
import time

from .errors import UserError


def flag_type(convert, accept, requirement):
    """An argparse type: ``convert`` the text, then insist on ``accept(value)``."""
    kind = "an integer" if convert is int else "a number"

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not %s" % (text, kind))
        if not accept(value):
            raise argparse.ArgumentTypeError("must be %s, not %s" % (requirement, text))
        return value

    return parse


positive_int = flag_type(int, lambda v: v >= 1, "at least 1")
nonnegative_int = flag_type(int, lambda v: v >= 0, "0 or more")
positive_float = flag_type(float, lambda v: 0 < v < float("inf"), "a positive number")
nonnegative_float = flag_type(float, lambda v: 0 <= v < float("inf"), "0 or more")
probability = flag_type(float, lambda v: 0 <= v < 1, "in [0, 1)")


def factor_pair(text):
    """A positive number, or two separated by a comma (rows,cols): a float, or
    a (float, float) pair."""
    parts = text.split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError("%r: give one number or two (rows,cols)" % text)
    values = tuple(positive_float(part) for part in parts)
    return values[0] if len(values) == 1 else values


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, pointing to --help, and
    that takes a long flag spelt with - or _ between its words (--train-size,
    --train_size) as whichever of the two it defines."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self.spelling(arg) for arg in args], namespace)

    def spelling(self, arg):
        """``arg`` with its flag name respelt as this parser defines it."""
        name, equals, value = arg.partition("=")
        known = self._option_string_actions
        if not name.startswith("--") or name in known:
            return arg
        for other in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
            if other in known:
                return other + equals + value
        return arg

    def error(self, message):
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


def parser(doc):
    """A Parser whose description is the script's docstring."""
    return Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_cnn_flags(parser, data):
    """--model (the weights 1-train-mnist.py saves) and --data (default ``data``),
    for the scripts that reuse the trained MNIST classifier."""
    parser.add_argument("--model", default="model.npz",
                        help="weights saved by 1-train-mnist.py (default: %(default)s)")
    parser.add_argument("--data", default=data,
                        help="1-digit dataset (default: %(default)s)")


def given(parser, argv=None):
    """Parse the command line (``argv``, default sys.argv[1:]) into a Namespace
    of the flags given on it only, so that ``main`` can tell a flag given from
    one left at its default (a resumed run must)."""
    unset = object()
    names = vars(parser.parse_args([]))
    args = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(names, unset)))
    return argparse.Namespace(**{name: value for name, value in vars(args).items()
                                 if value is not unset})


# Set to show the traceback of an error that ``run`` would put in one line.
TRACEBACK_VARIABLE = "STN_TRACEBACK"
LIBRARIES = ("theano", "lasagne")


def run(main, args):
    """Call ``main(**vars(args))``; a UserError becomes one line on stderr,
    "prog: error: message", and exit code 2 (a subclass may set ``label`` and
    ``exit_code``).  So does an unforeseen error of the environment or the
    file system (OSError, MemoryError) or one raised inside Theano or Lasagne,
    with a hint to rerun with STN_TRACEBACK=1 for its traceback; other errors
    (the project's own bugs, even when NumPy raises them) keep theirs."""
    prog = sys.argv[0].rsplit("/", 1)[-1]
    try:
        return main(**vars(args))
    except UserError as e:
        sys.stderr.write("%s: %s: %s\n" % (prog, getattr(e, "label", "error"), e))
        raise SystemExit(getattr(e, "exit_code", 2))
    except Exception as e:
        where = library_of(e)
        if os.environ.get(TRACEBACK_VARIABLE) or not (
                where or isinstance(e, (OSError, MemoryError))):
            raise
        text = (str(e).strip().splitlines() or [""])[0][:300]
        sys.stderr.write("%s: error: %s%s: %s (for the traceback, e.g. in a bug report, "
                         "run again with %s=1)\n"
                         % (prog, "in %s, " % where if where else "", type(e).__name__,
                            text, TRACEBACK_VARIABLE))
        raise SystemExit(2)


def library_of(error):
    """The library (one of LIBRARIES) in whose code ``error`` was raised, or None."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    top = module.split(".")[0]
    return top if top in LIBRARIES else None


class Progress:
    """Progress with an ETA: a bar redrawn in place on a terminal; elsewhere (a
    log under nohup, a pipe, a notebook) a line every ``LOG_SECONDS``."""

    LOG_SECONDS = 60

    def __init__(self, total, desc="", stream=None, done=0):
        self.total, self.desc = total, desc
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.start = self.last = time.time()
        self.done = self.first = done    # ``done`` already before this start

    def update(self, n=1):
        self.done += n
        now = time.time()
        if self.terminal:
            if now - self.last < 0.2 and self.done < self.total:
                return
        elif now - self.last < self.LOG_SECONDS or self.done >= self.total:
            return
        self.last = now
        elapsed = now - self.start
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0
        eta = (self.total - self.done) / rate if rate else 0
        if self.terminal:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write("\r%s [%s%s] %d/%d  %.0fs elapsed, ETA %.0fs " % (
                self.desc, "#" * filled, "." * (width - filled), self.done,
                self.total, elapsed, eta))
        else:
            self.stream.write("%s: %d/%d, %.0f s elapsed, ETA %.0f s\n" % (
                self.desc, self.done, self.total, elapsed, eta))
        self.stream.flush()

    def close(self):
        if self.terminal:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()
