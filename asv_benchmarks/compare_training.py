"""Time to a target test accuracy: optkern vs scikit-learn vs a PyTorch loop.

    cd asv_benchmarks && env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python compare_training.py [--quick]

(The OPENBLAS_* variables set on the project's machines slow NumPy's BLAS,
which LogisticRegression and PyTorch use; unset them for this one command.)

Problems: scikit-learn's digits (1,797 x 64, 10 classes) and a synthetic
200,000 x 100, 10-class make_classification problem; standardised, float32,
75/25 split.  The target is LogisticRegression(lbfgs)'s test accuracy minus
one point.  Each method trains epoch by epoch and is stopped at the first
epoch whose test accuracy reaches the target; the time counts training only
(evaluation between epochs is excluded), median of ``--repeats`` runs.

* optkern: LinearClassifier(optimizer="adam") with default settings
  (compiled epoch, adaptive rate; a callback stops it at the target, and a
  run that converges first is reported as not reaching it);
* SGDClassifier(loss="log_loss"), one partial_fit per epoch;
* LogisticRegression(lbfgs): one full fit (the reference model);
* PyTorch: nn.Linear + CrossEntropyLoss, torch.optim.Adam(fused=True),
  the same batch size and learning rate as optkern's, single-threaded
  and with torch's default threads.
"""

import argparse
import datetime
import os
import platform
import statistics
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits, make_classification
from sklearn import linear_model
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import optkern
from optkern.peers import import_peer, train_optkern, train_sgdclassifier, train_torch


def median_of(fn, repeats):
    """(median seconds over ``repeats`` runs,) + the first run's other results."""
    runs = [fn() for _ in range(repeats)]
    return (statistics.median(r[0] for r in runs),) + tuple(runs[0][1:])


def problems(quick):
    X, y = load_digits(return_X_y=True)
    yield "digits 1797x64, 10 classes", X, y
    n = 20_000 if quick else 200_000
    X, y = make_classification(n, 100, n_informative=60, n_redundant=20, n_classes=10,
                               n_clusters_per_class=1, class_sep=1.0, random_state=0)
    yield f"synthetic {n}x100, 10 classes", X, y


def prepare(X, y):
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    sc = StandardScaler().fit(Xtr)
    return (sc.transform(Xtr).astype(np.float32), sc.transform(Xte).astype(np.float32),
            ytr, yte)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, default=50,
                        help="a method still short of the target then is reported "
                             "as not reaching it (its speed-up is a lower bound)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    warnings.simplefilter("ignore")
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        print("note: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are set; they slow NumPy's BLAS "
              "(LogisticRegression, PyTorch). Unset them for this command.")
    torch = import_peer("torch")
    have_torch = torch is not None
    print(f"# {datetime.date.today()}  {platform.machine()}  {os.cpu_count()} cores  "
          f"optkern {optkern.__version__}")
    for name, X, y in problems(args.quick):
        Xtr, Xte, ytr, yte = prepare(X, y)
        # warm the compiled epoch so the table measures training, not compiling
        optkern.LinearClassifier(optimizer="adam", max_epochs=1, tol=None).fit(Xtr[:256],
                                                                              ytr[:256])
        t0 = time.perf_counter()
        lr_model = LogisticRegression(max_iter=1000).fit(Xtr, ytr)
        t_lr = time.perf_counter() - t0
        target = lr_model.score(Xte, yte) - 0.01
        print(f"\n## {name}: target test accuracy {target:.4f} "
              f"(LogisticRegression's {target + 0.01:.4f} - 1 point)")
        rows = []
        data = (Xtr, Xte, ytr, yte)
        # default settings (tol=1e-3: the "adaptive" rate divides by 5 when
        # the loss stalls); a callback stops the run at the target
        t_ok, ep, acc, bs = median_of(
            lambda: train_optkern(data, target, args.max_epochs, tol=1e-3), repeats)
        rows.append(("optkern LinearClassifier(adam)", t_ok, ep, acc))
        t_sgd, ep, acc = median_of(
            lambda: train_sgdclassifier(linear_model, data, target, args.max_epochs), repeats)
        rows.append(("sklearn SGDClassifier(log_loss)", t_sgd, ep, acc))
        rows.append(("sklearn LogisticRegression(lbfgs)", t_lr, "-", target + 0.01))
        torch_times = {}
        if have_torch:
            for threads in (1, os.cpu_count() or 1):
                t_t, ep, acc = median_of(
                    lambda: train_torch(torch, data, target, args.max_epochs, batch_size=bs,
                                        lr=0.01, threads=threads), repeats)
                torch_times[threads] = t_t
                rows.append((f"torch loop, fused Adam, {threads} thread(s)", t_t, ep, acc))
        else:
            rows.append(("torch loop (not installed: skipped)", float("nan"), "-", float("nan")))
        print(f"{'method':42s} {'time to target':>15s} {'epochs':>7s} {'per epoch':>10s} "
              f"{'test acc':>9s} {'optkern speed-up':>17s}")
        for label, t, ep, acc in rows:
            short = isinstance(ep, int) and acc < target
            per = f"{1e3 * t / ep:8.2f}ms" if isinstance(ep, int) and ep else f"{'-':>10s}"
            when = f"{t:14.3f}s" if not short else f"{'>' + format(t, '.3f') + 's':>15s}"
            ratio = f"{t / t_ok:16.1f}x" if not short else f"{'>' + format(t / t_ok, '.1f') + 'x':>17s}"
            print(f"{label:42s} {when} {str(ep):>7s} {per} {acc:9.4f} {ratio}")
        print("(> : the target was not reached within --max-epochs; time and speed-up "
              "are lower bounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
