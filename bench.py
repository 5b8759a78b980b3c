"""Time the training and evaluation steps of the chapter's three models.

Builds the chapter's networks with the training scripts' own functions
(1-train-mnist.py, 2-stn-cnn-mnist.py, 3-recurrent-stn-mnist.py) and the
chapter's settings (rmsprop at lr 0.0005 for the STNs, without the recipe's
blur, noise and moving average), feeds them random data of the right shape
and, after a warm-up, times full training steps (forward, backward and
update) and evaluation batches.  Prints one JSON line:

    python bench.py --model stn --batch-size 128 --steps 20
    {"model": "stn", "batch_size": 128, "train_images_per_sec": ..., ...}

--cold compiles in a fresh, empty Theano cache to time a first run.
STN_MALLOC_TUNING=0 measures without the allocator tuning (see docs/speed.md).
`make bench` runs every model both ways and prints the table.
"""
import json
import os
import resource
import sys
import tempfile
import time

from stn import cli

SCRIPTS = {"mnist": "1-train-mnist.py", "stn": "2-stn-cnn-mnist.py",
           "rstn": "3-recurrent-stn-mnist.py"}
CANVAS = 100      # canvas side of the STN datasets
STEPS = {"stn": 1, "rstn": 3}


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--model", choices=sorted(SCRIPTS), default="stn",
                        help="which script's graph (default: %(default)s)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=128,
                        help="images per step (default: %(default)s)")
    parser.add_argument("--steps", type=cli.positive_int, default=20,
                        help="timed steps of each kind (default: %(default)s)")
    parser.add_argument("--cold", action="store_true",
                        help="compile in a fresh, empty Theano cache")
    return parser


def load_script(name):
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), SCRIPTS[name])
    spec = importlib.util.spec_from_file_location("bench_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_model(model, batch_size, rng):
    """Return ``train(), evaluate()`` closures over random inputs."""
    import numpy as np
    script = load_script(model)
    if model == "mnist":
        _, train_fn, val_fn = script.build_functions(learning_rate=0.01)
        X = rng.rand(batch_size, 1, 28, 28).astype(np.float32)
        y = rng.randint(0, 10, batch_size).astype(np.int32)
        return lambda: train_fn(X, y), lambda: val_fn(X, y)
    import lasagne
    import theano
    from stn import training
    sh_drp = theano.shared(lasagne.utils.floatX(0.0))
    l_in, l_out, l_A_net, _ = script.build_model(CANVAS, STEPS[model], 3.0, sh_drp)
    train_fn, eval_fn, _ = training.build_functions(l_in.input_var, l_out, l_A_net,
                                                    "rmsprop", 0.0005)
    X = rng.rand(batch_size, CANVAS, CANVAS).astype(np.float32)
    y = rng.randint(0, 10, (batch_size, STEPS[model])).astype(np.int32)
    return lambda: train_fn(X, y), lambda: eval_fn(X)


def images_per_sec(step, batch_size, steps):
    for _ in range(3):  # warm-up: first-call allocations, caches
        step()
    start = time.time()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.time() - start)


def main(model="stn", batch_size=128, steps=20, cold=False):
    """Measure; print and return the JSON record."""
    if cold:
        cache = tempfile.mkdtemp(prefix="theano-cold-")
        os.environ["THEANO_FLAGS"] = ",".join(
            f for f in [os.environ.get("THEANO_FLAGS", ""),
                        "base_compiledir=" + cache] if f)
    import numpy as np
    import stn.backend
    rng = np.random.RandomState(0)
    start = time.time()
    train, evaluate = compile_model(model, batch_size, rng)
    compile_seconds = time.time() - start
    record = {
        "model": model, "batch_size": batch_size,
        "train_images_per_sec": round(images_per_sec(train, batch_size, steps), 1),
        "eval_images_per_sec": round(images_per_sec(evaluate, batch_size, steps), 1),
        "compile_seconds": round(compile_seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
        "malloc_tuned": stn.backend.malloc_tuned, "cold": cold}
    print(json.dumps(record))
    sys.stdout.flush()
    return record


if __name__ == "__main__":
    cli.run(main, build_parser().parse_args())
