"""The ``optkern`` command line: every subcommand's arguments and implementation.

Subcommands: demo, train, predict, evaluate, trajectories, lr-sweep, race,
bench.  ``docs/cli.md`` documents them with examples.

Errors the user can fix are reported as one line ``optkern CMD: error: ...``
on stderr, without a traceback, and the exit status says what kind:

* 2, usage: a bad option value, an unknown optimizer/loss/backend/function
  name (the message lists the valid names and suggests the closest), a
  missing input file, an output directory that does not exist, a plot
  option without matplotlib installed;
* 1, data: a malformed data file (the message names the file and line), a
  model file that is corrupt, of another kind or from a newer optkern, test
  labels never seen in training, training that diverges.

Every file is written to a temporary file beside its destination and renamed
over it at the end, so a failed command never leaves a half-written file or
overwrites an existing one.
"""

import argparse
import contextlib
import difflib
import math
import os
import sys
import time
import warnings

import numpy as np

from optkern import optimizers as _optimizers

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process killed by it


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``atomic_write`` and every
    ``finally`` clean up (the default action would kill the process and leave
    a temporary file beside the output).  Not a KeyboardInterrupt: the
    estimators' "keep the last epoch" handling does not swallow it."""

# The registry's names (optkern.optimizers, no scikit-learn import): the same
# live mapping the estimators use, so a rule registered at run time is a name here.
OPTIMIZER_NAMES = _optimizers.OPTIMIZER_NAMES
CLASSIFIER_LOSSES = ("softmax", "log", "hinge", "squared_hinge", "modified_huber",
                     "multiclass_hinge")
REGRESSOR_LOSSES = ("squared", "huber", "epsilon_insensitive", "absolute")
SCHEDULE_NAMES = ("constant", "invscaling", "step", "exponential", "cosine", "plateau")


class _Unset:
    def __repr__(self):
        return "<the estimator's default>"


UNSET = _Unset()  # an option not given: leave the estimator's default (None is a value)


class CLIError(Exception):
    """An expected error: reported in one line, no traceback."""

    exit_code = EXIT_DATA


class UsageError(CLIError):
    exit_code = EXIT_USAGE


class DataError(CLIError):
    exit_code = EXIT_DATA


# ---------------------------------------------------------------------------
# argument types
# ---------------------------------------------------------------------------
def _suggest(value, valid):
    close = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name_message(kind, value, valid):
    """'unknown optimizer 'adm'; choose from sgd, ..., adam (did you mean 'adam'?)'."""
    return f"unknown {kind} {value!r}; choose from {', '.join(valid)}{_suggest(value, valid)}"


def _name(kind, valid):
    def parse(value):
        if value not in valid:
            raise argparse.ArgumentTypeError(unknown_name_message(kind, value, valid))
        return value
    parse.__name__ = kind
    return parse


def _backends():
    from optkern import _backend
    return _backend.BACKENDS


def _backend_name(value):
    return _name("backend", _backends())(value)


def _number(value, cast=float):
    """``cast(value)``, or the usage error naming the (shortened) token."""
    try:
        return cast(value)
    except ValueError:
        kind = "a number" if cast is float else "an integer"
        raise argparse.ArgumentTypeError(f"{value[:80]!r} is not {kind}") from None


def _positive_float(value):
    v = _number(value)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return v


def _nonneg_float(value):
    v = _number(value)
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return v


def _fraction(value):
    v = _positive_float(value)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return v


def _positive_int(value):
    v = _number(value, int)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return v


def _nonneg_int(value):
    v = _number(value, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return v


def _memory_limit(value):
    from optkern import _memory
    try:
        _memory.parse_memory_limit(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


MAX_PIXELS = 10_000  # a 200,000-pixel-wide canvas was a raw MemoryError


def _pixels(value):
    v = _positive_int(value)
    if v > MAX_PIXELS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PIXELS}, got {value}")
    return v


def _finite_float(value):
    v = _number(value)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return v


def _batch_size(value):
    if value.lower() in ("full", "none", "all"):
        return None
    if value.lower() == "auto":
        return "auto"
    return _positive_int(value)


def _tol(value):
    if value.lower() == "none":
        return None
    return _nonneg_float(value)


def _scalar(text):
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low == "none":
        return None
    if "," in text:
        return tuple(_scalar(t) for t in text.split(",") if t.strip())
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.strip()


def _key_value(value):
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key.strip(), _scalar(val)


def _schedule(value):
    """NAME or NAME:key=value,key=value -> an optkern.schedules object."""
    from optkern import schedules as S

    classes = {"constant": S.Constant, "invscaling": S.InverseScaling, "step": S.StepDecay,
               "exponential": S.Exponential, "cosine": S.Cosine, "plateau": S.ReduceOnPlateau}
    name, _, argtext = value.partition(":")
    if name not in classes:
        raise argparse.ArgumentTypeError(unknown_name_message("schedule", name, SCHEDULE_NAMES))
    kwargs = {}
    for item in filter(None, (t.strip() for t in argtext.split(";" if ";" in argtext else ","))):
        k, sep, v = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"schedule arguments are key=value, got {item!r}")
        kwargs[k.strip()] = _scalar(v)
    try:
        return classes[name](**kwargs)
    except TypeError as exc:
        raise argparse.ArgumentTypeError(f"{name}: {exc}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{name}: {exc}") from None


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _err(msg):
    print(msg, file=sys.stderr)


def _check_output(path, option):
    """Fail early (usage) when an output file cannot be written where asked."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a directory")
    if not os.path.isdir(directory):
        raise UsageError(f"{option} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"{option} {path}: the directory {directory} is not writable")


def _same_file(a, b):
    """True when paths ``a`` and ``b`` name one file: the same path, a symlink
    to it or a hard link (compared by device and inode, as ``os.path.samefile``
    does, but without raising for a path that does not exist yet)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        # an output that does not exist yet cannot be an input; two outputs
        # that do not exist yet are the same file when their paths resolve alike
        return os.path.realpath(a) == os.path.realpath(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _refuse_overwriting_inputs(outputs, inputs):
    """Usage error (exit 2, before any work) when an output would replace an
    input file or another output.  ``outputs``: [(option, path)], ``inputs``:
    [(what, path)]; None paths are skipped."""
    outputs = [(o, p) for o, p in outputs if p is not None]
    inputs = [(w, p) for w, p in inputs if p is not None]
    for i, (option, out) in enumerate(outputs):
        for what, inp in inputs:
            if _same_file(out, inp):
                how = "" if os.path.abspath(out) == os.path.abspath(inp) else \
                    " (through a link)"
                raise UsageError(f"{option} {out} is the same file as the {what} {inp}{how}; "
                                 "refusing to overwrite an input: choose another output path")
        for option2, out2 in outputs[:i]:
            if _same_file(out, out2):
                raise UsageError(f"{option} {out} and {option2} {out2} are the same file; "
                                 "choose different output paths")


def _check_input(path, what="file"):
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such {what}")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, not a {what}")


def need_matplotlib(option):
    """Raise UsageError naming the ``plot`` extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"{option} needs matplotlib, which is not installed; install the "
                         "plot extra: pip install 'optkern[plot]'") from None


def _check_plot_file(path, option, allowed=None):
    if path is None:
        return
    need_matplotlib(option)
    _check_output(path, option)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if allowed is None:
        from matplotlib.figure import Figure
        allowed = sorted(Figure().canvas.get_supported_filetypes())
    if ext not in allowed:
        raise UsageError(f"{option} {path}: unsupported picture format {ext or '(none)'!r}; "
                         f"use one of {', '.join('.' + a for a in allowed)}")


def _save_figure(fig, path):
    from optkern.io import atomic_write

    ext = os.path.splitext(path)[1].lower().lstrip(".")
    with atomic_write(path) as fh:
        fig.savefig(fh, format=ext)


@contextlib.contextmanager
def _reported_warnings(prefix):
    """Show warnings as one clean line each instead of Python's file:line form."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    seen = set()
    for w in caught:
        msg = str(w.message)
        if msg not in seen:
            seen.add(msg)
            _err(f"{prefix}: warning: {msg}")


def _progress(iterable=None, **kw):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(iterable, file=sys.stderr, **kw)


def format_label(v):
    """A label as text: integral floats without the '.0', others as repr."""
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if f.is_integer() and abs(f) < 2 ** 53:
            return str(int(f))
        return repr(f)
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def _csv_row(fields):
    """One CSV line, quoted where a field needs it (a class named 'a,b')."""
    import csv
    import io as _io

    buf = _io.StringIO()
    csv.writer(buf, lineterminator="").writerow(list(fields))
    return buf.getvalue()


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)


def _is_classifier(est):
    return type(est).__name__ == "LinearClassifier"


def _has_proba(est):
    return _is_classifier(est) and est.loss in ("softmax", "log", "modified_huber")


def metrics(est, X, y):
    """Accuracy and log loss (classifiers) or R^2, RMSE, MAE (regressors)."""
    from sklearn import metrics as M

    if _is_classifier(est):
        out = {"n_samples": int(X.shape[0]),
               "accuracy": float(M.accuracy_score(y, est.predict(X)))}
        if _has_proba(est):
            proba = est.predict_proba(X)
            out["log_loss"] = float(M.log_loss(y, proba, labels=est.classes_))
        return out
    pred = est.predict(X)
    y = np.asarray(y, dtype=np.float64)
    return {"n_samples": int(X.shape[0]), "r2": float(M.r2_score(y, pred)),
            "rmse": float(np.sqrt(M.mean_squared_error(y, pred))),
            "mae": float(M.mean_absolute_error(y, pred))}


def _format_metrics(m):
    parts = []
    for k, v in m.items():
        if k == "n_samples":
            continue
        parts.append(f"{k} {v:.4f}")
    return "  ".join(parts) + f"  (n={m['n_samples']})"


def _check_labels(est, y, path):
    """Labels of a test file, checked against the model: a classifier's must be
    among its classes, a regressor's must be numbers."""
    if y is None:
        raise DataError(f"{path}: has no labels")
    if not _is_classifier(est):
        if np.asarray(y).dtype == object:
            raise DataError(f"{path}: the labels are not numbers, but the model is a regressor")
        return np.asarray(y, dtype=np.float64)
    return _check_classes(est.classes_, y, path)


def _check_classes(classes, y, path):
    classes = np.asarray(classes)
    y = np.asarray(y)
    if classes.dtype == object and y.dtype != object:
        y = np.array([format_label(v) for v in y], dtype=object)
    elif classes.dtype != object and y.dtype == object:
        try:
            y = y.astype(np.float64)
        except ValueError:
            raise DataError(f"{path}: the labels are text but the model's classes are "
                            "numbers") from None
    unseen = np.setdiff1d(np.unique(y), classes)
    if unseen.size:
        shown = ", ".join(format_label(v) for v in unseen[:10])
        known = ", ".join(format_label(c) for c in classes[:20])
        raise DataError(f"{path}: labels {shown}{' ...' if unseen.size > 10 else ''} were "
                        f"not seen in training (the model's classes are {known}"
                        f"{' ...' if len(classes) > 20 else ''})")
    return y


def _load_data(path, **kw):
    from optkern import io

    _check_input(path, "data file")
    try:
        return io.load_data(path, **kw)
    except io.DataFileError as exc:
        raise DataError(str(exc)) from None
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, UnicodeError, MemoryError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None


def _load_model(path):
    from optkern import io

    _check_input(path, "model file")
    try:
        return io.load_with_metadata(path)
    except io.ModelFileError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None


def _zero_based(value):
    """--zero-based's value for io.load_data: "auto", True or False."""
    return "auto" if value == "auto" else value in ("true", "yes")


def _read_like_training(path, args, extra, n_features):
    """Read a predict/evaluate/test file the way the training file was read."""
    from optkern import io

    data = extra.get("data", {}) if isinstance(extra, dict) else {}
    fmt = getattr(args, "format", None) or _detect(path)
    kw = {"fmt": fmt, "n_features": n_features}
    if fmt == data.get("format"):
        if fmt == "svmlight":
            kw["zero_based"] = data.get("zero_based", "auto")
        if fmt == "csv":
            kw["delimiter"] = data.get("delimiter")
            kw["label_column"] = data.get("label_column")
        if fmt == "npy":
            kw["label_column"] = data.get("label_column")
    if getattr(args, "label_column", None) is not None:
        kw["label_column"] = args.label_column
    if getattr(args, "delimiter", None) is not None:
        kw["delimiter"] = args.delimiter
    zb = _zero_based(getattr(args, "zero_based", "auto"))
    if zb != "auto":
        kw["zero_based"] = zb
    given = getattr(args, "n_features", None)
    if given is not None and given != n_features:
        raise UsageError(f"--n-features {given}: the model takes {n_features} features")
    del io
    return _load_data(path, **kw)


def _detect(path):
    from optkern import io

    _check_input(path, "data file")
    try:
        return io.detect_format(path)
    except io.DataFileError as exc:
        raise UsageError(str(exc)) from None


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------
def cmd_demo(args):
    from optkern.estimators import LinearClassifier
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    _check_plot_file(args.plot, "--plot")
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=args.seed,
                                          stratify=y)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    names = list(args.optimizers)
    print(f"optkern demo: digits (scikit-learn's bundled 8x8 digits), {Xtr.shape[0]} train / "
          f"{Xte.shape[0]} test samples, {X.shape[1]} features, 10 classes; softmax "
          f"regression, up to {args.epochs} epochs, batch size {args.batch_size or 'auto'}, "
          f"backend {args.backend}")
    rows, curves = [], {}
    bar = None if args.quiet else _progress(total=len(names) + 2, desc="training",
                                            unit="model", leave=False)
    from optkern import _jit
    watch = _jit.CompileWatch(sys.stderr, announce=not args.quiet)

    def tick(label):
        if bar is not None:
            bar.set_postfix_str(label)
            bar.update(1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name in names:
            def make(epochs, name=name):
                kw = {} if args.batch_size is None else {"batch_size": args.batch_size}
                return LinearClassifier(optimizer=name, max_epochs=epochs, backend=args.backend,
                                        random_state=args.seed, **kw)
            # compile (or load from the cache) outside the timing; a compile
            # that still happens is announced and left out of the time
            with watch:
                make(1).fit(Xtr[:64], ytr[:64])
                t0 = time.perf_counter()
                before = watch.seconds
                try:
                    clf = make(args.epochs).fit(Xtr, ytr)
                except FloatingPointError as exc:
                    rows.append([name, "-", "-", f"diverged ({exc})"])
                    tick(name)
                    continue
                elapsed = time.perf_counter() - t0 - (watch.seconds - before)
            curves[name] = [h["loss"] for h in clf.history_]
            rows.append([name, clf.n_iter_, f"{elapsed:.3f} s",
                         f"{clf.score(Xte, yte):.4f}"])
            tick(name)
        # one BLAS/OpenMP thread, like optkern's serial kernels at this size (on a
        # busy 2-core machine, threaded BLAS can make lbfgs 30x slower)
        with _single_threaded():
            t0 = time.perf_counter()
            sgd = SGDClassifier(loss="log_loss", max_iter=args.epochs, random_state=args.seed)
            sgd.fit(Xtr, ytr)
            rows.append(["sklearn SGDClassifier(log_loss)", sgd.n_iter_,
                         f"{time.perf_counter() - t0:.3f} s", f"{sgd.score(Xte, yte):.4f}"])
            tick("SGDClassifier")
            t0 = time.perf_counter()
            lr = LogisticRegression(max_iter=1000).fit(Xtr, ytr)
            rows.append(["sklearn LogisticRegression(lbfgs)", int(np.max(lr.n_iter_)),
                         f"{time.perf_counter() - t0:.3f} s", f"{lr.score(Xte, yte):.4f}"])
            tick("LogisticRegression")
    if bar is not None:
        bar.close()
    print(_table(["optimizer", "epochs", "train time", "test accuracy"], rows))
    if watch.seconds >= 0.05:
        print(f"(compiling kernels, first use: {watch.seconds:.1f} s, not in the train times; "
              "cached afterwards)")
    if args.plot:
        _plot_curves(curves, args.plot, title="digits: training loss per epoch",
                     xlabel="epoch", ylabel="training loss (mean softmax loss + penalty)")
        print(f"loss curves saved to {args.plot}")
    return EXIT_OK


def _single_threaded():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _plot_curves(curves, path, title, xlabel, ylabel, logy=True):
    from matplotlib.figure import Figure

    from optkern.trajectories import _palette

    fig = Figure(figsize=(8, 5), dpi=100)
    ax = fig.add_subplot()
    for i, ((name, values), colour) in enumerate(zip(curves.items(), _palette(len(curves)))):
        ax.plot(np.arange(1, len(values) + 1), values, label=name, color=colour, linewidth=1.8,
                linestyle="-" if i < 10 else "--")  # tab10 has ten colours
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    _save_figure(fig, path)


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------
def _decide_task(args, y, path):
    if args.task != "auto":
        return args.task
    if args.loss is not None:
        return "classification" if args.loss in CLASSIFIER_LOSSES else "regression"
    y = np.asarray(y)
    if y.dtype == object:
        return "classification"
    if y.ndim == 1 and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return "classification"
    return "regression"


def _make_estimator(args, task, epoch_callback):
    """The estimator for ``args``: options the user did not give are left to the
    estimator's own defaults (so the command line and the Python API agree)."""
    from optkern import _memory
    from optkern.estimators import LinearClassifier, LinearRegressor

    if getattr(args, "memory_limit", None) is not None:
        # the estimators read it when a fit starts (optkern._memory)
        os.environ[_memory.MEMORY_LIMIT_ENV] = args.memory_limit

    params = {}
    for name, value in (("alpha", args.alpha), ("l1_ratio", args.l1_ratio),
                        ("optimizer", args.optimizer), ("lr", args.lr),
                        ("schedule", args.schedule), ("sampling", args.sampling),
                        ("max_epochs", args.epochs), ("n_iter_no_change", args.n_iter_no_change),
                        ("average", args.average), ("random_state", args.seed),
                        ("backend", args.backend), ("solver", args.solver),
                        ("epsilon", args.epsilon)):
        if value is not None:
            params[name] = value
    if args.penalty is not None:
        params["penalty"] = None if args.penalty == "none" else args.penalty
    if args.no_intercept:
        params["fit_intercept"] = False
    if args.optimizer_param:
        params["optimizer_params"] = dict(args.optimizer_param)
    if args.batch_size is not UNSET:
        params["batch_size"] = args.batch_size
    if args.tol is not UNSET:
        params["tol"] = args.tol
    if args.validation_fraction is not None:
        params["early_stopping"] = True
        params["validation_fraction"] = args.validation_fraction
    if epoch_callback is not None:
        params["callbacks"] = [epoch_callback]
    if task == "classification":
        loss = args.loss or "softmax"
        if loss not in CLASSIFIER_LOSSES:
            raise UsageError(f"--loss {loss!r} is a regression loss but the task is "
                             f"classification; choose from {', '.join(CLASSIFIER_LOSSES)}")
        if args.class_weight is not None:
            params["class_weight"] = args.class_weight
        return LinearClassifier(loss=loss, **params)
    loss = args.loss or "squared"
    if loss not in REGRESSOR_LOSSES:
        raise UsageError(f"--loss {loss!r} is a classification loss but the task is "
                         f"regression; choose from {', '.join(REGRESSOR_LOSSES)}")
    if args.class_weight is not None:
        raise UsageError("--class-weight applies to classification only")
    return LinearRegressor(loss=loss, **params)


def _fit(est, X, y, prefix):
    from optkern.estimators import TrainingDiverged

    try:
        with _reported_warnings(prefix):
            est.fit(X, y)
    except TrainingDiverged as exc:
        raise DataError(str(exc)) from None
    except FloatingPointError as exc:
        raise DataError(f"training failed: {exc}") from None
    except ValueError as exc:
        raise DataError(f"training failed: {exc}") from None
    return est


def _interrupted_path(args):
    """Where --save-interrupted writes: its PATH, or NAME.interrupted.npz beside -o."""
    if args.save_interrupted is None:
        return None
    if args.save_interrupted != "auto":
        return args.save_interrupted
    if args.output is None:
        raise UsageError("--save-interrupted without a PATH needs -o/--output (the partial "
                         "model is saved beside it); give --save-interrupted PATH")
    stem, ext = os.path.splitext(args.output)
    return f"{stem}.interrupted{ext or '.npz'}"


@contextlib.contextmanager
def _noting_sigint(flag):
    """Record a SIGINT in ``flag`` and raise KeyboardInterrupt as usual (the
    estimator then keeps its last completed epoch and returns)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        flag.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_train(args):
    from optkern import io

    _check_output(args.output, "-o/--output")
    partial_path = _interrupted_path(args)
    _check_output(partial_path, "--save-interrupted")
    _refuse_overwriting_inputs([("-o/--output", args.output),
                                ("--save-interrupted", partial_path)],
                               [("data file", args.data), ("test file", args.test)])
    _check_input(args.data, "data file")
    if args.test:
        _check_input(args.test, "data file")
    fmt = args.format or _detect(args.data)
    X, y, info = _load_data(args.data, fmt=fmt, label_column=args.label_column,
                            delimiter=args.delimiter,
                            zero_based=_zero_based(args.zero_based),
                            n_features=args.n_features,
                            dtype=np.dtype(args.dtype))
    if y is None:
        raise DataError(f"{args.data}: has no labels to train on")
    task = _decide_task(args, y, args.data)
    if task == "regression" and np.asarray(y).dtype == object:
        raise DataError(f"{args.data}: the labels are not numbers; regression needs numbers")
    test = None
    if args.test:
        Xt, yt, _ = _read_like_training(
            args.test, argparse.Namespace(format=None, label_column=args.label_column,
                                          delimiter=args.delimiter,
                                          zero_based=args.zero_based, n_features=None),
            {"data": info}, X.shape[1])
        test = (Xt, yt)
    kind = "sparse CSR" if hasattr(X, "tocsr") else "dense"
    print(f"data: {args.data}: {X.shape[0]} samples x {X.shape[1]} features ({kind}, "
          f"{info['format']})")

    from optkern import _jit
    # foreground Numba compiles are announced on stderr and their time is left
    # out of the epoch times and the training time (reported beside them)
    watch = _jit.CompileWatch(sys.stderr, announce=not args.quiet)
    seen = [0.0]

    def on_epoch(row):
        if args.quiet:
            return None
        compiling = watch.seconds - seen[0]
        seen[0] = watch.seconds
        val = "" if row.get("val_score") is None else f"  val_score {row['val_score']:.4f}"
        lr = "" if row.get("lr") is None else f"  lr {row['lr']:.3g}"
        note = f" (+ {compiling:.1f} s compiling)" if compiling >= 0.05 else ""
        _err(f"epoch {row['epoch']:>4}  loss {row['loss']:.6g}{val}{lr}  "
             f"{1e3 * max(row['time'] - compiling, 0.0):.1f} ms{note}")
        return None

    est = _make_estimator(args, task, on_epoch)
    if task == "classification":
        n_classes = len(np.unique(np.asarray(y)))
        print(f"task: classification ({n_classes} classes), loss {est.loss}, optimizer "
              f"{est.optimizer}, backend {est.backend}")
    else:
        print(f"task: regression, loss {est.loss}, optimizer {est.optimizer}, backend "
              f"{est.backend}")
    if test is not None and test[1] is not None:
        # fail before a long training run, not after it
        if task == "classification":
            test = (test[0], _check_classes(np.unique(np.asarray(y)), test[1], args.test))
        elif np.asarray(test[1]).dtype == object:
            raise DataError(f"{args.test}: the labels are not numbers; regression needs numbers")
    t0 = time.perf_counter()
    interrupted = []
    with _noting_sigint(interrupted), watch:
        _fit(est, X, y, "optkern train")
    elapsed = time.perf_counter() - t0
    est.set_params(callbacks=None)
    if interrupted:
        return _after_interrupt(est, args, partial_path, info)
    compiled = (f" (+ {watch.seconds:.1f} s compiling kernels, first use)"
                if watch.seconds >= 0.05 else "")
    print(f"trained: {est.n_iter_} epochs in {elapsed - watch.seconds:.3f} s{compiled}")
    print(f"train: {_format_metrics(metrics(est, X, y))}")
    if test is not None:
        Xt, yt = test
        if yt is None:
            print(f"test: {args.test} has no labels; skipped")
        else:
            m = metrics(est, Xt, _check_labels(est, yt, args.test))
            print(f"test:  {_format_metrics(m)}")
    if args.output:
        extra = {"data": info, "task": task, "trained_on": os.path.basename(args.data)}
        try:
            with _reported_warnings("optkern train"):
                io.save(est, args.output, extra=extra)
        except (TypeError, ValueError) as exc:
            raise DataError(f"cannot save the model: {exc}") from None
        except OSError as exc:   # disk full, quota, permissions: the old file is kept
            raise DataError(f"cannot save the model to {args.output}: "
                            f"{exc.strerror or exc}; {args.output} was not changed") from None
        print(f"model saved to {args.output}")
    return EXIT_OK


def _after_interrupt(est, args, partial_path, info):
    """Ctrl-C during training: -o stays as it was; the last completed epoch's
    model is saved only to --save-interrupted's path; exit status 130."""
    from optkern import io

    epochs = getattr(est, "n_iter_", 0)
    kept = f"; {args.output} was not touched" if args.output else ""
    if partial_path is None:
        hint = "--save-interrupted PATH" if args.output is None else \
            f"--save-interrupted (it would write {_interrupted_path_hint(args.output)})"
        _err(f"optkern train: interrupted after {epochs} epochs{kept}; the partial model "
             f"was not saved (pass {hint} to keep it)")
        return EXIT_INTERRUPTED
    if not hasattr(est, "coef_") or epochs == 0:
        _err(f"optkern train: interrupted before the first epoch ended{kept}; nothing to save")
        return EXIT_INTERRUPTED
    extra = {"data": info, "trained_on": os.path.basename(args.data),
             "interrupted_after_epochs": int(epochs)}
    try:
        with _reported_warnings("optkern train"):
            io.save(est, partial_path, extra=extra)
    except (TypeError, ValueError, OSError) as exc:
        raise DataError(f"interrupted, and the partial model cannot be saved: {exc}") from None
    _err(f"optkern train: interrupted after {epochs} epochs{kept}; the partial model was "
         f"saved to {partial_path}")
    return EXIT_INTERRUPTED


def _interrupted_path_hint(output):
    stem, ext = os.path.splitext(output)
    return f"{stem}.interrupted{ext or '.npz'}"


# ---------------------------------------------------------------------------
# predict / evaluate
# ---------------------------------------------------------------------------
def cmd_predict(args):
    from optkern import io

    _check_output(args.output, "-o/--output")
    _refuse_overwriting_inputs([("-o/--output", args.output)],
                               [("model file", args.model), ("data file", args.data)])
    est, extra = _load_model(args.model)
    if args.proba and not _has_proba(est):
        kind = f"loss={est.loss!r}" if hasattr(est, "loss") else type(est).__name__
        raise UsageError(f"--proba: this model ({type(est).__name__}, {kind}) gives no "
                         "probabilities; train with loss softmax, log or modified_huber")
    X, _, _ = _read_like_training(args.data, args, extra, est.n_features_in_)
    if args.proba:
        proba = est.predict_proba(X)
        lines = [_csv_row(format_label(c) for c in est.classes_)]
        lines += [",".join(repr(float(p)) for p in row) for row in proba]
    else:
        pred = est.predict(X)
        if pred.ndim == 2:
            lines = [",".join(format_label(v) for v in row) for row in pred]
        else:
            lines = [format_label(v) for v in pred]
    text = "\n".join(lines) + "\n"
    if args.output:
        try:
            with io.atomic_write(args.output, "w") as fh:
                fh.write(text)
        except OSError as exc:
            raise DataError(f"cannot write {args.output}: {exc.strerror or exc}; "
                            f"{args.output} was not changed") from None
        _err(f"{len(lines) - bool(args.proba)} predictions written to {args.output}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_evaluate(args):
    import json

    est, extra = _load_model(args.model)
    X, y, _ = _read_like_training(args.data, args, extra, est.n_features_in_)
    y = _check_labels(est, y, args.data)
    m = metrics(est, X, y)
    if args.json:
        print(json.dumps(m))
    else:
        for k, v in m.items():
            print(f"{k:10s} {v}" if k == "n_samples" else f"{k:10s} {v:.6f}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# trajectories
# ---------------------------------------------------------------------------
def cmd_trajectories(args):
    from optkern import trajectories as tr

    if args.output is None and args.animate is None:
        raise UsageError("give -o FILE.png and/or --animate FILE.gif")
    _check_plot_file(args.output, "-o/--output")
    _check_plot_file(args.animate, "--animate", allowed=["gif"])
    _refuse_overwriting_inputs([("-o/--output", args.output), ("--animate", args.animate)], [])
    fn = tr.get_function(args.function)
    lrs = dict(args.lr)
    for name in lrs:
        if name not in args.optimizers:
            raise UsageError(f"--lr {name}=...: {name!r} is not among --optimizers "
                             f"({', '.join(args.optimizers)})")
    paths = {}
    rows = []
    for name in args.optimizers:
        try:
            path = tr.optimizer_path(fn, name, lr=lrs.get(name), steps=args.steps,
                                     start=args.start, backend=args.backend, seed=args.seed)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{name}: {exc}") from None
        paths[name] = path
        end = path[-1]
        dist = "-" if fn.minimum is None else f"{math.hypot(*(end - np.array(fn.minimum))):.3g}"
        rows.append([name, f"{lrs.get(name, fn.lrs[name]):g}", len(path) - 1,
                     f"({end[0]:.4g}, {end[1]:.4g})", f"{fn(end[0], end[1]):.4g}", dist])
    x0, y0 = next(iter(paths.values()))[0] if paths else fn.start
    print(f"{fn.name}: f(x, y) = {fn.formula}, start ({x0:g}, {y0:g}), backend {args.backend}")
    print(_table(["optimizer", "lr", "steps", "end point", "f(end)", "distance to minimum"],
                 rows))
    shown_lrs = {n: lrs.get(n, fn.lrs[n]) for n in args.optimizers}
    if args.output:
        fig, _ = tr._figure(fn, paths, shown_lrs, (args.width / args.dpi,
                                                   args.height / args.dpi), args.dpi)
        _save_figure(fig, args.output)
        print(f"picture saved to {args.output}")
    if args.animate:
        from optkern.io import atomic_write
        with atomic_write(args.animate) as fh:
            tr.animate_paths(fn, paths, fh, lrs=shown_lrs, frames=args.frames, fps=args.fps,
                             figsize=(args.width / args.dpi, args.height / args.dpi),
                             dpi=args.dpi)
        print(f"animation saved to {args.animate}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# lr-sweep
# ---------------------------------------------------------------------------
def cmd_lr_sweep(args):
    from optkern.estimators import TrainingDiverged
    from sklearn.exceptions import ConvergenceWarning

    _check_plot_file(args.output, "-o/--output")
    _refuse_overwriting_inputs([("-o/--output", args.output)], [("data file", args.data)])
    if not args.lr_min < args.lr_max:
        raise UsageError(f"--lr-min ({args.lr_min:g}) must be below --lr-max "
                         f"({args.lr_max:g})")
    fmt = args.format or _detect(args.data)
    X, y, _ = _load_data(args.data, fmt=fmt, label_column=args.label_column,
                         delimiter=args.delimiter, zero_based=_zero_based(args.zero_based),
                         n_features=args.n_features)
    if y is None:
        raise DataError(f"{args.data}: has no labels to train on")
    task = _decide_task(args, y, args.data)
    grid = np.logspace(math.log10(args.lr_min), math.log10(args.lr_max), args.num)
    results = {name: [] for name in args.optimizer}
    bar = None if args.quiet else _progress(total=len(grid) * len(args.optimizer),
                                            desc="lr sweep", unit="fit", leave=False)
    for name in args.optimizer:
        for lr in grid:
            ns = argparse.Namespace(**vars(args))
            ns.optimizer, ns.lr, ns.epochs, ns.tol = name, float(lr), args.epochs, None
            est = _make_estimator(ns, task, None)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    est.fit(X, y)
                loss = est.history_[-1]["loss"] if est.history_ else float("nan")
            except (TrainingDiverged, FloatingPointError):
                loss = float("nan")
            except ValueError as exc:
                raise DataError(f"training failed: {exc}") from None
            results[name].append(loss if math.isfinite(loss) else float("nan"))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    header = ["lr"] + list(args.optimizer)
    rows = [[f"{lr:.3g}"] + [("diverged" if math.isnan(results[n][i]) else f"{results[n][i]:.5g}")
                             for n in args.optimizer] for i, lr in enumerate(grid)]
    print(f"final training loss after {args.epochs} epochs ({task}, {args.data})")
    print(_table(header, rows))
    for name in args.optimizer:
        vals = np.array(results[name])
        if np.all(np.isnan(vals)):
            print(f"best lr for {name}: none (every run diverged)")
        else:
            i = int(np.nanargmin(vals))
            print(f"best lr for {name}: {grid[i]:.3g} (loss {vals[i]:.5g})")
    if args.output:
        from matplotlib.figure import Figure

        from optkern.trajectories import _palette

        fig = Figure(figsize=(8, 5), dpi=100)
        ax = fig.add_subplot()
        finite = [v for vals in results.values() for v in vals if math.isfinite(v)]
        top = max(finite) * 1.5 if finite else 1.0
        for (name, vals), colour in zip(results.items(), _palette(len(results))):
            vals = np.array(vals)
            ax.plot(grid, vals, marker="o", color=colour, label=name)
            bad = np.isnan(vals)
            if bad.any():
                ax.plot(grid[bad], np.full(bad.sum(), top), marker="x", linestyle="none",
                        color=colour, markersize=9)
        ax.set_xscale("log")
        if finite and min(finite) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"training loss after {args.epochs} epochs (x: diverged)")
        ax.set_title(f"learning-rate sweep on {os.path.basename(args.data)}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        _save_figure(fig, args.output)
        print(f"plot saved to {args.output}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# race and bench
# ---------------------------------------------------------------------------
def _race_settings():
    # learning rates chosen for f(x) = 0.5 * sum(a_i x_i^2), a_i in [1, 100]
    import optkern

    return [
        ("SGD", optkern.SGD, dict(lr=0.019)),
        ("SGD momentum", optkern.SGD, dict(lr=0.01, momentum=0.9)),
        ("SGD nesterov", optkern.SGD, dict(lr=0.01, momentum=0.9, nesterov=True)),
        ("Adagrad", optkern.Adagrad, dict(lr=0.5)),
        ("RMSprop", optkern.RMSprop, dict(lr=0.01)),
        ("Adadelta", optkern.Adadelta, dict(lr=1.0, rho=0.9, eps=1e-4)),
        ("Adam", optkern.Adam, dict(lr=0.05)),
        ("AdamW", optkern.AdamW, dict(lr=0.05, weight_decay=0.0)),
        ("Adamax", optkern.Adamax, dict(lr=0.05)),
        ("NAdam", optkern.NAdam, dict(lr=0.05)),
        ("RAdam", optkern.RAdam, dict(lr=0.05)),
    ]


def race(n=10_000, tol=1e-6, max_steps=5_000, backends=None, dtype="float64", out=None):
    """Steps for f(x)/f(x0) < tol on f = 0.5 x^T diag(a) x, condition number 100."""
    import optkern

    out = sys.stdout if out is None else out
    dt = np.dtype(dtype)
    a = np.logspace(0, 2, n).astype(dt)
    backends = list(backends or [b for b in optkern.available_backends() if b != "cuda"])
    f0 = 0.5 * float(np.dot(a, np.ones(n, dt)))
    rows = []
    for label, cls, kw in _race_settings():
        row = [label]
        for be in backends:
            warm = np.ones(n, dtype=dt)  # first call compiles: keep it out of the timing
            cls(warm, backend=be, **kw).step(a * warm)
            x = np.ones(n, dtype=dt)
            g = np.empty_like(x)
            opt = cls(x, backend=be, **kw)
            steps, elapsed = max_steps, 0.0
            for t in range(1, max_steps + 1):
                np.multiply(a, x, out=g)
                t0 = time.perf_counter()
                opt.step(g)
                elapsed += time.perf_counter() - t0
                if 0.5 * float(np.dot(a * x, x)) < tol * f0:
                    steps = t
                    break
            conv = str(steps) if steps < max_steps else f">{max_steps}"
            row.append(f"{conv:>6} {1e6 * elapsed / t:8.1f}us")
        rows.append(row)
    header = ["optimizer"] + [f"{b} (steps, per step)" for b in backends]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print(f"Race on an ill-conditioned quadratic: n={n}, condition number 100, "
          f"{dt.name}, stop at f(x)/f(x0) < {tol:g}", file=out)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)), file=out)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)
    return rows


MAKE_DATA_SETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")


def cmd_make_data(args):
    """Write one of scikit-learn's bundled data sets, split, as svmlight files."""
    from sklearn import datasets
    from sklearn.datasets import dump_svmlight_file
    from sklearn.model_selection import train_test_split

    from optkern.io import atomic_write

    outputs = [("TRAIN", args.train)] + ([("TEST", args.test)] if args.test else [])
    for option, path in outputs:
        _check_output(path, option)
    _refuse_overwriting_inputs(outputs, [])
    if args.test is None and args.test_fraction != 0.25:
        raise UsageError("--test-fraction needs a TEST file")
    X, y = getattr(datasets, f"load_{args.name}")(return_X_y=True)
    parts = [(args.train, X, y)]
    if args.test:
        regression = args.name == "diabetes"
        Xtr, Xte, ytr, yte = train_test_split(
            X, y, test_size=args.test_fraction, random_state=args.seed,
            stratify=None if regression else y)
        parts = [(args.train, Xtr, ytr), (args.test, Xte, yte)]
    for path, Xp, yp in parts:
        # one-based indices (the libsvm convention), so that --zero-based auto
        # reads digits' all-zero column 0 right; the shape goes in the comment
        with atomic_write(path) as fh:
            dump_svmlight_file(Xp, yp, fh, zero_based=False,
                               comment=f"{args.name}: {Xp.shape[0]} samples x "
                                       f"{Xp.shape[1]} features")
        print(f"{path}: {Xp.shape[0]} samples x {Xp.shape[1]} features ({args.name})")
    return EXIT_OK


def cmd_race(args):
    import optkern

    if args.size < 1 or args.max_steps < 1 or not args.tol > 0:
        raise UsageError("--size and --max-steps must be >= 1 and --tol > 0")
    if args.backends:
        for be in args.backends:
            if be not in optkern.available_backends():
                raise UsageError(f"--backends: {be!r} is not available here; choose from "
                                 f"{', '.join(optkern.available_backends())}"
                                 f"{_suggest(be, optkern.available_backends())}")
    race(n=args.size, tol=args.tol, max_steps=args.max_steps, backends=args.backends,
         dtype=args.dtype)
    return EXIT_OK


def cmd_bench(args):
    """optkern side by side with NumPy, PyTorch and scikit-learn (optkern.bench)."""
    from optkern import bench

    _refuse_overwriting_inputs([("--plot", getattr(args, "plot", None)),
                                ("--json", getattr(args, "json", None))], [])
    return bench.run(args)


# ---------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------
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
