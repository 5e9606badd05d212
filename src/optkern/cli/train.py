"""``optkern train``: fit an estimator on a data file, save it, and keep the
last good model when interrupted."""

import argparse
import contextlib
import os
import sys
import time

import numpy as np

from optkern.metrics import metrics
from optkern.cli._common import (CLASSIFIER_LOSSES, DataError, EXIT_INTERRUPTED, EXIT_OK,
                                 REGRESSOR_LOSSES, UNSET, UsageError, _check_classes,
                                 _check_input, _check_labels, _check_output, _detect, _err,
                                 _format_metrics, _load_data, _read_like_training,
                                 _refuse_overwriting_inputs, _reported_warnings, _zero_based)


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
