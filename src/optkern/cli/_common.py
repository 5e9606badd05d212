"""What every subcommand shares: exit codes, errors, option parsers, file
checks, reading data and models, and table output."""

import argparse
import contextlib
import difflib
import math
import os
import sys
import warnings

import numpy as np

from optkern import optimizers as _optimizers
from optkern._progress import progress_bar
from optkern.metrics import is_classifier


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
    return progress_bar(iterable, file=sys.stderr, **kw)


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
    if not is_classifier(est):
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
