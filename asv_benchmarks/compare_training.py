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
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import optkern


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


class Timer:
    def __init__(self):
        self.total = 0.0
        self._t = None

    def start(self):
        self._t = time.perf_counter()

    def stop(self):
        self.total += time.perf_counter() - self._t


def run_optkern(Xtr, Xte, ytr, yte, target, max_epochs):
    timer = Timer()
    state = {"epochs": 0, "acc": 0.0}
    model = None

    def stop_at_target(row):
        timer.stop()
        state["epochs"] = row["epoch"]
        state["acc"] = model.score(Xte, yte)
        timer.start()
        return state["acc"] >= target

    # default settings (tol=1e-3: the "adaptive" rate divides by 5 when the
    # loss stalls); the callback stops the run at the target
    model = optkern.LinearClassifier(optimizer="adam", max_epochs=max_epochs,
                                     random_state=0, callbacks=[stop_at_target])
    timer.start()
    model.fit(Xtr, ytr)
    timer.stop()
    return timer.total, state["epochs"], state["acc"], model._batch_size(len(ytr))


def run_sgd(Xtr, Xte, ytr, yte, target, max_epochs):
    model = SGDClassifier(loss="log_loss", random_state=0)
    classes = np.unique(ytr)
    t = 0.0
    acc = 0.0
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        model.partial_fit(Xtr, ytr, classes=classes)
        t += time.perf_counter() - t0
        acc = model.score(Xte, yte)
        if acc >= target:
            break
    return t, epoch, acc


def run_torch(Xtr, Xte, ytr, yte, target, max_epochs, batch_size, lr, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    Xt, yt = torch.from_numpy(Xtr), torch.from_numpy(ytr.astype(np.int64))
    Xv = torch.from_numpy(Xte)
    model = torch.nn.Linear(Xtr.shape[1], int(ytr.max()) + 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    n = Xt.shape[0]
    t = 0.0
    acc = 0.0
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        t += time.perf_counter() - t0
        with torch.no_grad():
            acc = float((model(Xv).argmax(1).numpy() == yte).mean())
        if acc >= target:
            break
    return t, epoch, acc


def median_of(fn, repeats):
    runs = [fn() for _ in range(repeats)]
    times = [r[0] for r in runs]
    return (statistics.median(times),) + tuple(runs[0][1:])


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
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
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
        t_ok, ep, acc, bs = median_of(
            lambda: run_optkern(Xtr, Xte, ytr, yte, target, args.max_epochs), repeats)
        rows.append(("optkern LinearClassifier(adam)", t_ok, ep, acc))
        t_sgd, ep, acc = median_of(
            lambda: run_sgd(Xtr, Xte, ytr, yte, target, args.max_epochs), repeats)
        rows.append(("sklearn SGDClassifier(log_loss)", t_sgd, ep, acc))
        rows.append(("sklearn LogisticRegression(lbfgs)", t_lr, "-", target + 0.01))
        torch_times = {}
        if have_torch:
            for threads in (1, os.cpu_count() or 1):
                t_t, ep, acc = median_of(
                    lambda: run_torch(Xtr, Xte, ytr, yte, target, args.max_epochs, bs, 0.01,
                                      threads), repeats)
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
