"""``optkern demo``: train on digits with the default settings and report."""

import contextlib
import sys
import time
import warnings

import numpy as np

from optkern.cli._common import EXIT_OK, _check_plot_file, _progress, _save_figure, _table


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
