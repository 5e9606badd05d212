"""``optkern lr-sweep``: the final loss over a log grid of learning rates."""

import argparse
import math
import os
import warnings

import numpy as np

from optkern.cli._common import (DataError, EXIT_OK, UsageError, _check_plot_file, _detect,
                                 _load_data, _progress, _refuse_overwriting_inputs,
                                 _save_figure, _table, _zero_based)
from optkern.cli.train import _decide_task, _make_estimator


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
