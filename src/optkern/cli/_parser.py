"""The argument parser of every subcommand, and ``main``."""

import argparse
import contextlib
import os
import sys

from optkern.cli._common import (CLASSIFIER_LOSSES, CLIError, EXIT_INTERRUPTED, EXIT_OK,
                                 EXIT_TERMINATED, EXIT_USAGE, MAX_PIXELS, OPTIMIZER_NAMES,
                                 REGRESSOR_LOSSES, SCHEDULE_NAMES, Terminated, UNSET,
                                 _backend_name, _batch_size, _err, _finite_float, _fraction,
                                 _key_value, _memory_limit, _name, _nonneg_float, _nonneg_int,
                                 _pixels, _positive_float, _positive_int, _schedule, _tol)
from optkern.cli.bench import cmd_bench
from optkern.cli.demo import cmd_demo
from optkern.cli.evaluate import cmd_evaluate
from optkern.cli.lr_sweep import cmd_lr_sweep
from optkern.cli.make_data import MAKE_DATA_SETS, cmd_make_data
from optkern.cli.predict import cmd_predict
from optkern.cli.race import cmd_race
from optkern.cli.train import cmd_train
from optkern.cli.trajectories import cmd_trajectories


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, with a short error: the message and a pointer to --help
    (instead of the full usage block), exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n"
                              f"(see '{self.prog} --help')\n")


def _data_options(p, label=True):
    g = p.add_argument_group("reading data files")
    g.add_argument("--format", choices=("svmlight", "csv", "npz", "npy"), default=None,
                   help="data format (default: from the extension: .svm/.svmlight/.libsvm, "
                        ".csv/.tsv, .npz, .npy; .gz/.bz2 allowed; otherwise sniffed)")
    if label:
        g.add_argument("--label-column", default=None, metavar="COL",
                       help="CSV/.npy: the label column, an index (negative counts from the "
                            "end) or a header name (default: the last column)")
    g.add_argument("--delimiter", default=None,
                   help="CSV field separator (default: ',' or tab for .tsv)")
    g.add_argument("--zero-based", choices=("auto", "true", "false", "yes", "no"),
                   default="auto", metavar="{auto,true,false}",
                   help="svmlight: are feature indices 0-based? auto (default): yes when an "
                        "index 0 occurs, as scikit-learn's load_svmlight_file; say true for a "
                        "zero-based file whose column 0 is all zeros (predict/evaluate reuse "
                        "the training file's choice; yes/no are accepted too)")
    g.add_argument("--n-features", type=_positive_int, default=None, metavar="N",
                   help="svmlight: the number of features (default: the largest index in "
                        "the file); a file with an index beyond N is refused.  CSV/.npz/.npy: "
                        "the expected column count without the label.  predict/evaluate: "
                        "must equal the model's")


def _model_options(p, sweep=False):
    # No defaults here: an option not given leaves the estimator's own default
    # (optkern.LinearClassifier / LinearRegressor), so the two always agree.
    g = p.add_argument_group("model and training (defaults: the estimator's)")
    g.add_argument("--task", choices=("auto", "classification", "regression"), default="auto",
                   help="auto: from --loss, else classification when every label is an "
                        "integer or text (default: auto)")
    g.add_argument("--loss", type=_name("loss", CLASSIFIER_LOSSES + REGRESSOR_LOSSES),
                   default=None, help="classification: " + ", ".join(CLASSIFIER_LOSSES) +
                   " (default softmax); regression: " + ", ".join(REGRESSOR_LOSSES) +
                   " (default squared)")
    if not sweep:
        g.add_argument("--optimizer", type=_name("optimizer", OPTIMIZER_NAMES), default=None,
                       help=", ".join(OPTIMIZER_NAMES) + " (default adam)")
        g.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: the optimizer's default)")
        g.add_argument("--epochs", type=_positive_int, default=None,
                       help="maximum number of epochs")
        g.add_argument("--tol", type=_tol, default=UNSET,
                       help="stop when the loss improves by less than this for "
                            "--n-iter-no-change epochs ('none': run every epoch)")
    else:
        g.add_argument("--epochs", type=_positive_int, default=10,
                       help="epochs per run; every run trains exactly this many (default: 10)")
    g.add_argument("--n-iter-no-change", type=_positive_int, default=None, metavar="N",
                   help="epochs without an improvement of --tol before stopping "
                        "(default: the estimator's, 5)")
    g.add_argument("--optimizer-param", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="optimizer hyperparameter, e.g. betas=0.9,0.99 or momentum=0.95 "
                        "(repeatable)")
    g.add_argument("--penalty", choices=("l2", "l1", "elasticnet", "none"), default=None,
                   help="regularisation term (default: l2)")
    g.add_argument("--alpha", type=_nonneg_float, default=None, help="penalty strength")
    g.add_argument("--l1-ratio", type=_nonneg_float, default=None,
                   help="elasticnet: the L1 share of the penalty, in [0, 1] (default: 0.15)")
    g.add_argument("--epsilon", type=_nonneg_float, default=None,
                   help="huber / epsilon_insensitive threshold")
    g.add_argument("--no-intercept", action="store_true", help="fit no intercept")
    g.add_argument("--batch-size", type=_batch_size, default=UNSET, metavar="N",
                   help="minibatch size, 'auto', or 'full' (full-batch gradient descent)")
    g.add_argument("--sampling", choices=("epoch", "replacement", "sequential"), default=None,
                   help="minibatch order: reshuffle each epoch, draw with replacement, or "
                        "keep the file order")
    g.add_argument("--schedule", type=_schedule, default=None, metavar="NAME[:K=V,...]",
                   help="learning-rate schedule: " + ", ".join(SCHEDULE_NAMES) +
                   ", e.g. invscaling:power=0.5 or cosine:total_steps=1000")
    g.add_argument("--average", type=_nonneg_int, default=None, metavar="K",
                   help="Polyak averaging of the iterates after K steps")
    g.add_argument("--class-weight", choices=("balanced",), default=None,
                   help="balanced: weight classes inversely to their frequency "
                        "(default: every sample weighs 1)")
    g.add_argument("--solver", choices=("sgd", "lbfgs"), default=None,
                   help="sgd: minibatch epochs with --optimizer (default); lbfgs: "
                        "full-batch L-BFGS on a smooth loss with l2 or no penalty")
    g.add_argument("--validation-fraction", type=_fraction, default=None, metavar="F",
                   help="hold out this fraction for early stopping on the validation score")
    g.add_argument("--backend", type=_backend_name, default=None,
                   help="numpy, numba, numba-parallel, cython, cuda or auto")
    g.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="(default: float64)")
    g.add_argument("--seed", type=int, default=0, help="random seed: shuffling, noise, "
                                                       "validation split (default: 0)")
    g.add_argument("--memory-limit", type=_memory_limit, default=None, metavar="SIZE",
                   help="refuse a model (weights, optimizer state, fit buffers) larger than "
                        "this: bytes with K/M/G/T (64G), a fraction of the available memory "
                        "(0.9) or none (default: $OPTKERN_MEMORY_LIMIT, else 0.8)")


def build_parser():
    from optkern import trajectories as tr

    parser = _Parser(
        prog="optkern", formatter_class=_Formatter,
        description="optkern: compiled optimizer kernels for linear and softmax models.",
        epilog="Start with: optkern demo.  Exit status: 0 success, 1 data error, "
               "2 usage error.  Details: docs/cli.md")
    import optkern
    parser.add_argument("--version", action="version", version=f"optkern {optkern.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", formatter_class=_Formatter,
                       help="train on scikit-learn's digits with every optimizer",
                       description="Train softmax regression on scikit-learn's bundled digits "
                                   "data with each optimizer and compare with "
                                   "scikit-learn's SGDClassifier and LogisticRegression.")
    p.add_argument("--optimizers", nargs="+", type=_name("optimizer", OPTIMIZER_NAMES),
                   default=list(OPTIMIZER_NAMES), metavar="NAME",
                   help="optimizers to train (default: all)")
    p.add_argument("--epochs", type=_positive_int, default=30,
                   help="maximum epochs (default: 30)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="(default: the estimator's, 'auto')")
    p.add_argument("--backend", type=_backend_name, default="auto", help="(default: auto)")
    p.add_argument("--seed", type=int, default=0, help="train/test split and shuffling "
                                                       "(default: 0)")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="save the training-loss curves (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", formatter_class=_Formatter,
                       help="train a model on a data file",
                       description="Train a linear classifier or regressor on DATA "
                                   "(svmlight/libsvm, CSV, .npz or .npy) and save it.")
    p.add_argument("data", metavar="DATA",
                   help="training data file (svmlight/libsvm, CSV, .npz or .npy; "
                        "see 'reading data files')")
    p.add_argument("--test", metavar="DATA", default=None,
                   help="also report metrics on this file (read like DATA)")
    p.add_argument("-o", "--output", metavar="MODEL", default=None,
                   help="save the model here (.npz; written atomically)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--save-interrupted", nargs="?", const="auto", default=None, metavar="PATH",
                   help="on Ctrl-C, save the model of the last completed epoch here "
                        "(without PATH: beside -o, as NAME.interrupted.npz); -o is never "
                        "touched by an interrupted run, which exits with status 130")
    _data_options(p)
    _model_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", formatter_class=_Formatter,
                       help="predict with a saved model",
                       description="One predicted label (or value) per line; --proba: a "
                                   "header line of the classes, then one line of "
                                   "comma-separated probabilities per sample.")
    p.add_argument("model", metavar="MODEL", help="a model file saved by 'optkern train -o'")
    p.add_argument("data", metavar="DATA",
                   help="data file, read as the training file was (see 'reading data files')")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="write here instead of stdout (atomically)")
    p.add_argument("--proba", action="store_true", help="class probabilities")
    _data_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", formatter_class=_Formatter,
                       help="score a saved model on a labelled data file",
                       description="Classifiers: accuracy and log loss; regressors: R^2, "
                                   "RMSE and MAE.")
    p.add_argument("model", metavar="MODEL", help="a model file saved by 'optkern train -o'")
    p.add_argument("data", metavar="DATA",
                   help="data file, read as the training file was (see 'reading data files')")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _data_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("trajectories", formatter_class=_Formatter,
                       help="optimizer paths on a 2-D test function",
                       description="Contour plot of a 2-D test function with each "
                                   "optimizer's path, stepped by optkern's optimizer classes.")
    p.add_argument("--function", type=_name("function", tuple(tr.FUNCTIONS)),
                   default="quadratic", help=", ".join(tr.FUNCTIONS) + " (default: quadratic)")
    p.add_argument("--optimizers", nargs="+", type=_name("optimizer", tuple(tr.OPTIMIZERS)),
                   default=list(tr.DEFAULT_OPTIMIZERS), metavar="NAME",
                   help=", ".join(tr.OPTIMIZERS) +
                   f" (default: {' '.join(tr.DEFAULT_OPTIMIZERS)})")
    p.add_argument("--lr", type=_key_value, action="append", default=[],
                   metavar="NAME=LR", help="learning rate for one optimizer (repeatable)")
    p.add_argument("--steps", type=_nonneg_int, default=None,
                   help="steps per optimizer (default: per function)")
    p.add_argument("--start", type=_finite_float, nargs=2, default=None, metavar=("X", "Y"),
                   help="start point (default: per function)")
    p.add_argument("--backend", choices=("numba", "numpy", "cython"), default="numba",
                   help="(default: numba)")
    p.add_argument("--seed", type=int, default=0, help="noise seed for sgld (default: 0)")
    p.add_argument("-o", "--output", metavar="FILE.png", default=None,
                   help="save the contour plot with the paths here (needs matplotlib)")
    p.add_argument("--animate", metavar="FILE.gif", default=None,
                   help="also write an animated GIF")
    p.add_argument("--frames", type=_positive_int, default=40,
                   help="animation frames (default: 40)")
    p.add_argument("--fps", type=_positive_int, default=12, help="(default: 12)")
    p.add_argument("--width", type=_pixels, default=800, help="pixels, at most "
                   f"{MAX_PIXELS} (default: 800)")
    p.add_argument("--height", type=_pixels, default=600, help="pixels, at most "
                   f"{MAX_PIXELS} (default: 600)")
    p.add_argument("--dpi", type=_pixels, default=100, help="(default: 100)")
    p.set_defaults(func=cmd_trajectories)

    p = sub.add_parser("lr-sweep", formatter_class=_Formatter,
                       help="final loss over a log-spaced grid of learning rates",
                       description="Train for a fixed number of epochs at each learning rate "
                                   "of a log-spaced grid and report (and plot) the final "
                                   "training loss.")
    p.add_argument("data", metavar="DATA",
                   help="training data file (see 'reading data files')")
    p.add_argument("--optimizer", nargs="+", type=_name("optimizer", OPTIMIZER_NAMES),
                   default=["sgd", "adam"], metavar="NAME",
                   help=", ".join(OPTIMIZER_NAMES) + " (default: sgd adam)")
    p.add_argument("--lr-min", type=_positive_float, default=1e-4, help="(default: 1e-4)")
    p.add_argument("--lr-max", type=_positive_float, default=1.0, help="(default: 1)")
    p.add_argument("--num", type=_positive_int, default=9, help="grid points (default: 9)")
    p.add_argument("-o", "--output", metavar="FILE.png", default=None,
                   help="plot final loss vs lr (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _data_options(p)
    _model_options(p, sweep=True)
    p.set_defaults(func=cmd_lr_sweep)

    p = sub.add_parser("make-data", formatter_class=_Formatter,
                       help="write a bundled data set as svmlight files",
                       description="Write one of scikit-learn's bundled data sets as "
                                   "svmlight/libsvm files (one-based indices), split into "
                                   "training and test files (stratified for the "
                                   "classification sets): data to try train, predict, "
                                   "evaluate and lr-sweep on.")
    p.add_argument("name", choices=MAKE_DATA_SETS, metavar="NAME",
                   help="the data set: " + ", ".join(MAKE_DATA_SETS) +
                        " (diabetes is a regression set)")
    p.add_argument("train", metavar="TRAIN", help="the training file to write (.svm)")
    p.add_argument("test", metavar="TEST", nargs="?", default=None,
                   help="the test file to write (without it, TRAIN gets every sample)")
    p.add_argument("--test-fraction", type=_fraction, default=0.25, metavar="F",
                   help="share of the samples in TEST (default: 0.25)")
    p.add_argument("--seed", type=int, default=0, help="the split's seed (default: 0)")
    p.set_defaults(func=cmd_make_data)

    p = sub.add_parser("race", formatter_class=_Formatter,
                       help="race every optimizer on an ill-conditioned quadratic",
                       description="Steps to converge and time per step of every optimizer on "
                                   "every backend.")
    p.add_argument("--size", type=int, default=10_000,
                   help="number of parameters of the quadratic (default: 10000)")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="converged when f(x)/f(x0) falls below this (default: 1e-6)")
    p.add_argument("--max-steps", type=int, default=5_000,
                   help="give up after this many steps (default: 5000)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="parameter dtype (default: float64)")
    p.add_argument("--backends", nargs="+", default=None,
                   help="backends to race (default: every available one but cuda)")
    p.set_defaults(func=cmd_race)

    from optkern import bench

    p = sub.add_parser("bench", formatter_class=_Formatter,
                       help="optkern vs NumPy, PyTorch and scikit-learn, side by side",
                       description="Update step, gradient and training time of optkern's "
                                   "best backend beside the NumPy reference, PyTorch and "
                                   "scikit-learn (where installed) and the roofline probes, "
                                   "in one process.  Details: docs/benchmarks.md",
                       epilog=bench.__doc__.split("\n\n", 2)[2])
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


@contextlib.contextmanager
def _memory_limit_restored():
    """--memory-limit sets OPTKERN_MEMORY_LIMIT for this command only (main()
    may be called in-process, e.g. by tests or notebooks)."""
    from optkern import _memory

    before = os.environ.get(_memory.MEMORY_LIMIT_ENV)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_memory.MEMORY_LIMIT_ENV, None)
        else:
            os.environ[_memory.MEMORY_LIMIT_ENV] = before


@contextlib.contextmanager
def _terminate_cleanly():
    """SIGTERM raises Terminated in the main thread while a command runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    """Run the command line; returns the exit status (0, 1 data, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or an argparse usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prefix = f"optkern {args.command}"
    try:
        with _terminate_cleanly(), _memory_limit_restored():
            return args.func(args) or EXIT_OK
    except CLIError as exc:
        _err(f"{prefix}: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err(f"{prefix}: interrupted; no output was written or changed")
        return EXIT_INTERRUPTED
    except Terminated:
        _err(f"{prefix}: terminated; no output was written or changed")
        return EXIT_TERMINATED
    except BrokenPipeError:  # e.g. `optkern predict ... | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return EXIT_OK
