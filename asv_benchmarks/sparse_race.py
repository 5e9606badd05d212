"""The headline numbers of docs/sparse.md, in one run (issue 12).

    python asv_benchmarks/sparse_race.py [--rows 240000] [--repeats 3] [--plot docs/sparse_epoch_cost.png]

1. The race on the text-like problem (optkern.sparse_bench: Zipf features,
   l2-normalised rows, labels from a dense random model), 2 and 20 classes at
   2^18 features: optkern's default fit, scikit-learn's SGDClassifier(loss=
   "log_loss") and LogisticRegression(), and LIBLINEAR / Vowpal Wabbit / Snap
   ML where they install (skipped with a note otherwise).
2. The cost of one epoch at fixed nonzeros (50 000 rows x 45) as n_features
   grows from 2^16 to 2^22, for the exact (plain SGD) and lazy (Adagrad)
   epochs (the median epoch of a fit, history_["time"]), with --plot a
   picture of it.
Prints the load average before and after: quote it with the numbers.
"""

import argparse
import os
import sys
import time

import numpy as np

import optkern
from optkern.sparse_bench import race, text_like

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks.bench_sparse import MODES, _epoch_model  # noqa: E402


def epoch_sweep(rows, features, repeats, sklearn=False):
    """Median time of one epoch inside a fit (``history_[i]["time"]``: the
    compiled epoch and its glue, without the per-fit set-up that
    ``partial_fit`` repeats on every call: validation, the lazy penalty's
    per-feature factors, the model-sized copies) of ``repeats`` epochs.

    ``sklearn``: also SGDClassifier's epoch on the same data (float64, its
    working type), as (fit with max_iter=5 - fit with max_iter=1) / 4, medians
    of ``repeats`` interleaved pairs: how much a per-example epoch of the
    specialist grows with the width on this machine (key ``(d, "sklearn")``)."""
    import warnings

    from optkern import _jit

    out = {}
    for d in features:
        X, y = text_like(rows, d, 2, seed=0, dtype=np.float32)
        for mode in MODES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _epoch_model(mode, X, y)          # compile / load
                _jit.wait(900)
                _epoch_model(mode, X, y)
                m = optkern.LinearClassifier(random_state=0, max_epochs=repeats, tol=None,
                                             **MODES[mode]).fit(X, y)
            out[(d, mode)] = float(np.median([h["time"] for h in m.history_]))
            print(f"n_features 2^{int(np.log2(d))}  {mode:5s}  epoch {out[(d, mode)] * 1e3:8.1f} ms"
                  f"  ({1e9 * out[(d, mode)] / X.nnz:.1f} ns per nonzero)", flush=True)
        if sklearn:
            from sklearn.linear_model import SGDClassifier
            X64 = X.astype(np.float64)
            per = []
            for _ in range(repeats):
                t = []
                for it in (1, 5):
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        SGDClassifier(loss="log_loss", max_iter=it, tol=None,
                                      random_state=0).fit(X64, y)
                    t.append(time.perf_counter() - t0)
                per.append((t[1] - t[0]) / 4)
            out[(d, "sklearn")] = float(np.median(per))
            print(f"n_features 2^{int(np.log2(d))}  SGDClassifier epoch "
                  f"{out[(d, 'sklearn')] * 1e3:8.1f} ms", flush=True)
    return out


def accuracy_by_epoch(rows, features, n_classes, epochs, seeds=(0, 1)):
    """The default fit with ``tol=None``: training loss and test accuracy after
    every epoch (a callback scores ``coef_``), per seed of the row order --
    the measurement that chose ``n_iter_no_change="auto"`` on sparse, wide
    data (docs/sparse.md, "Stopping")."""
    import warnings

    from optkern.sparse_bench import split

    X, y = text_like(rows, features, n_classes, seed=0)
    Xtr, ytr, Xte, yte = split(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optkern.LinearClassifier(max_epochs=1).fit(Xtr[:500], ytr[:500])   # compile / load
        for seed in seeds:
            clf = optkern.LinearClassifier(random_state=seed, max_epochs=epochs, tol=None)
            accs = []
            clf.callbacks = [lambda row: accs.append(clf.score(Xte, yte))]
            clf.fit(Xtr, ytr)
            for h, a in zip(clf.history_, accs):
                print(f"  {n_classes} classes, seed {seed}: epoch {h['epoch']:2d}  loss "
                      f"{h['loss']:.5f}  test accuracy {a:.4f}  ({h['time']:.2f} s)", flush=True)


def per_example(rows, features, repeats, epochs=5):
    """Per-example SGD on CSR: optkern's exact plain-SGD epoch (batch_size=1,
    the scaled-weight trick) against SGDClassifier's loop, ``epochs`` epochs
    each at the same alpha, interleaved; wall and process CPU medians."""
    import warnings

    from sklearn.linear_model import SGDClassifier

    from optkern.sparse_bench import split

    X, y = text_like(rows, features, 2, seed=0)
    Xtr, ytr, _, _ = split(X, y)
    fits = {
        "optkern sgd exact, batch 1": lambda: optkern.LinearClassifier(
            optimizer="sgd", lr=0.01, batch_size=1, sparse_updates="exact", alpha=1e-4,
            max_epochs=epochs, tol=None, random_state=0),
        "scikit-learn SGDClassifier": lambda: SGDClassifier(
            loss="log_loss", alpha=1e-4, max_iter=epochs, tol=None, random_state=0),
    }
    from optkern import _jit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm up twice: the first fit of a cold cache returns while Numba
        # compiles in the background (its twin serves it); time the compiled one
        fits["optkern sgd exact, batch 1"]().fit(Xtr[:200], ytr[:200])
        _jit.wait(900)
        fits["optkern sgd exact, batch 1"]().fit(Xtr[:200], ytr[:200])
        wall = {k: [] for k in fits}
        cpu = {k: [] for k in fits}
        for _ in range(repeats):
            for name, make in fits.items():
                t0, c0 = time.perf_counter(), time.process_time()
                make().fit(Xtr, ytr)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    print(f"\nper-example SGD, {Xtr.shape[0]} x 2^{int(np.log2(features))}, {epochs} epochs, "
          f"{Xtr.nnz} nonzeros; medians of {repeats} interleaved")
    for name in fits:
        print(f"  {name:30s} wall {np.median(wall[name]):7.3f} s  cpu "
              f"{np.median(cpu[name]):7.3f} s", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=240_000)
    p.add_argument("--features", type=int, default=2 ** 18)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epoch-rows", type=int, default=50_000)
    p.add_argument("--plot", default=None)
    p.add_argument("--skip-race", action="store_true")
    p.add_argument("--classes", default="2,20", help="comma-separated class counts")
    p.add_argument("--skip", default="", help="comma-separated name parts of contenders to skip")
    p.add_argument("--once", default="LogisticRegression,LIBLINEAR",
                   help="contenders fitted in the first repeat only (slow references)")
    p.add_argument("--extra", default="", help="more optkern rows: ';'-separated dicts, "
                   "e.g. \"dict(n_iter_no_change=1)\"")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--sweep-sklearn", action="store_true",
                   help="the sweep also times SGDClassifier's epoch at each width")
    p.add_argument("--per-example", action="store_true",
                   help="also time per-example SGD against SGDClassifier's loop")
    p.add_argument("--accuracy-by-epoch", type=int, default=0, metavar="EPOCHS",
                   help="also print the default fit's loss and test accuracy after each of "
                   "EPOCHS epochs (tol=None), for each of --classes")
    args = p.parse_args(argv)
    print(f"load average before: {os.getloadavg()}; optkern {optkern.__version__}")
    if not args.skip_race:
        extra = [eval(e, {"__builtins__": {}}, {"dict": dict})   # noqa: S307
                 for e in args.extra.split(";") if e.strip()]
        for k in [int(c) for c in args.classes.split(",")]:
            print(f"\n{args.rows} rows, 2^{int(np.log2(args.features))} features, {k} classes "
                  "(80% train, 20% test); median fit time of", args.repeats)
            for name, kind, med, best, acc, note in race(
                    args.rows, args.features, k, repeats=args.repeats, extra_optkern=extra,
                    skip=[x for x in args.skip.split(",") if x],
                    once=[x for x in args.once.split(",") if x]):
                if med is None:
                    print(f"  {name:55s} skipped: {note}")
                else:
                    print(f"  {name:55s} {med:8.2f} s  test accuracy {acc:.3f}", flush=True)
    if args.per_example:
        per_example(args.rows, args.features, args.repeats)
    if args.accuracy_by_epoch:
        for k in [int(c) for c in args.classes.split(",")]:
            accuracy_by_epoch(args.rows, args.features, k, args.accuracy_by_epoch)
    if args.skip_sweep:
        print(f"load average after: {os.getloadavg()}")
        return
    feats = [2 ** 16, 2 ** 18, 2 ** 20, 2 ** 22]
    sweep = epoch_sweep(args.epoch_rows, feats, args.repeats, sklearn=args.sweep_sklearn)
    for mode in list(MODES) + (["sklearn"] if args.sweep_sklearn else []):
        ts = [sweep[(d, mode)] for d in feats]
        print(f"{mode}: largest / smallest epoch time over 2^16..2^22 = {max(ts) / min(ts):.2f}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for mode in MODES:
            ax.plot(feats, [1e3 * sweep[(d, mode)] for d in feats], marker="o",
                    label=f"{mode} ({MODES[mode]['optimizer']})")
        if args.sweep_sklearn:
            ax.plot(feats, [1e3 * sweep[(d, "sklearn")] for d in feats], marker="s",
                    linestyle="--", label="SGDClassifier (float64)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("n_features")
        ax.set_ylabel("one epoch (ms)")
        ax.set_title(f"{args.epoch_rows} rows x 45 nonzeros, float32, 2 classes")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print("plot:", args.plot)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
