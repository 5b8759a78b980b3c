"""Draw the learning curves of a training run from its results file.

Every STN script already redraws them beside its results after each epoch
(res_test_2.npz: res_test_2_curves.png); this draws them again from any
results file, e.g. after copying it from another machine:

    python plot_curves.py res_test_2.npz
    python plot_curves.py res_test_3.npz --output curves.png

Panels: accuracy of the training batches, the validation and the test set by
epoch (minutes on the top axis); training loss and learning rate; the
transform's mean zoom and the share of test crops centred on their digit.
"""
import json

from stn import cli


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("results", help="results .npz of 2-stn-cnn-mnist.py or "
                                        "3-recurrent-stn-mnist.py")
    parser.add_argument("--output", default=None,
                        help="PNG to write (default: RESULTS without .npz + _curves.png)")
    parser.add_argument("--show", action="store_true",
                        help="also open a window (default: headless)")
    return parser


def main(results, output=None, show=False):
    """Write the PNG; return its path."""
    from stn import data, plots
    output = output or plots.curves_path(results)
    data.check_writable(output)
    res = data.load_npz(results, hint="python 2-stn-cnn-mnist.py (or "
                        "3-recurrent-stn-mnist.py) --output %s" % results)
    if "history_epoch" not in res:
        raise cli.UserError("%s: holds no training history; is it a results file of "
                            "2-stn-cnn-mnist.py or 3-recurrent-stn-mnist.py?" % results)
    settings = json.loads(str(res["settings"])) if "settings" in res else {}
    plots.learning_curves(res, output, plots.curves_title(settings), show)
    print("Wrote %s" % output)
    return output


if __name__ == "__main__":
    cli.run(main, build_parser().parse_args())
