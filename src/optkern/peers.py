"""The trainers optkern is raced against, written once.

``optkern bench`` (its training row) and ``asv_benchmarks/compare_training.py``
both time "training to a target test accuracy" for optkern's
``LinearClassifier``, scikit-learn's ``SGDClassifier`` and a PyTorch loop; the
three trainers live here so the two races run the same code.  Each trainer
takes ``data = (X_train, X_test, y_train, y_test)`` and returns ``(seconds,
epochs, test accuracy)``: the seconds count training only (evaluation between
epochs is excluded), and a run stops at the first epoch whose test accuracy
reaches ``target``, after ``max_epochs``, or once ``max_seconds`` of training
have passed.

The peers are imported lazily (scikit-learn and torch are optional here);
callers pass the imported module, or use :func:`import_peer`, which answers
None when a peer is not installed.
"""

import importlib
import math
import statistics
import time

import numpy as np


def import_peer(name):
    """The module ``name``, or None when it is not installed (a skipped peer)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class Stopwatch:
    """Adds up the time between ``start`` and ``stop`` calls."""

    def __init__(self):
        self.total = 0.0
        self._t0 = None

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self):
        self.total += time.perf_counter() - self._t0


def accuracy(pred, y):
    return float(np.mean(np.asarray(pred) == y))


def median_run(fn, repeats):
    """Run ``fn`` ``repeats`` times: (median seconds, best seconds, first run's
    result), where ``fn`` returns a tuple whose first item is seconds."""
    runs = [fn() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), min(r[0] for r in runs), runs[0]


def train_optkern(data, target, max_epochs, max_seconds=math.inf, backend="auto",
                  tol=None, optimizer="adam"):
    """optkern's ``LinearClassifier(optimizer=...)``, stopped by a callback at
    the target (a run that converges by ``tol`` first stops there).
    Returns (seconds, epochs, test accuracy, the batch size it used)."""
    import optkern

    Xtr, Xte, ytr, yte = data
    watch = Stopwatch()
    state = {"epochs": 0, "acc": 0.0}
    holder = {}

    def at_target(row):
        watch.stop()
        state["epochs"] = row["epoch"]
        state["acc"] = accuracy(holder["model"].predict(Xte), yte)
        watch.start()
        # a callback's False stops the fit (the README's convention)
        return not (state["acc"] >= target or watch.total > max_seconds)

    model = holder["model"] = optkern.LinearClassifier(
        optimizer=optimizer, max_epochs=max_epochs, tol=tol, random_state=0, backend=backend,
        callbacks=[at_target])
    watch.start()
    model.fit(Xtr, ytr)
    watch.stop()
    return watch.total, state["epochs"], state["acc"], model._batch_size(len(ytr))


def train_sgdclassifier(linear_model, data, target, max_epochs, max_seconds=math.inf,
                        alpha=1e-4):
    """scikit-learn's ``SGDClassifier(loss="log_loss", alpha=alpha)``, one
    ``partial_fit`` per epoch (``linear_model``: ``sklearn.linear_model``)."""
    Xtr, Xte, ytr, yte = data
    model = linear_model.SGDClassifier(loss="log_loss", alpha=alpha, random_state=0)
    classes = np.unique(ytr)
    total, acc, epoch = 0.0, 0.0, 0
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        model.partial_fit(Xtr, ytr, classes=classes)
        total += time.perf_counter() - t0
        acc = accuracy(model.predict(Xte), yte)
        if acc >= target or total > max_seconds:
            break
    return total, epoch, acc


def train_torch(torch, data, target, max_epochs, max_seconds=math.inf, *, batch_size, lr,
                weight_decay=0.0, threads=None):
    """A PyTorch loop: ``nn.Linear`` from zeros, ``CrossEntropyLoss``,
    ``torch.optim.Adam(fused=True)`` (``foreach=True`` where this torch has no
    fused CPU Adam), L2 ``weight_decay`` on the weights only, shuffled
    minibatches; ``threads`` sets torch's intra-op threads for the run.  The
    time budget is checked within an epoch too (every 64 steps)."""
    Xtr, Xte, ytr, yte = data
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        Xt = torch.from_numpy(Xtr)
        yt = torch.from_numpy(ytr.astype(np.int64))
        Xv = torch.from_numpy(Xte)
        k = int(max(ytr.max(), yte.max())) + 1
        model = torch.nn.Linear(Xtr.shape[1], k)
        torch.nn.init.zeros_(model.weight)
        torch.nn.init.zeros_(model.bias)
        groups = [{"params": [model.weight], "weight_decay": weight_decay},
                  {"params": [model.bias], "weight_decay": 0.0}]
        try:
            opt = torch.optim.Adam(groups, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            opt = torch.optim.Adam(groups, lr=lr, foreach=True)
        loss_fn = torch.nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(0)
        n = Xt.shape[0]
        total, acc, epoch = 0.0, 0.0, 0
        for epoch in range(1, max_epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            for step, start in enumerate(range(0, n, batch_size)):
                idx = perm[start:start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(Xt[idx]), yt[idx]).backward()
                opt.step()
                if step % 64 == 63 and total + time.perf_counter() - t0 > max_seconds:
                    break   # out of time budget, even within an epoch
            total += time.perf_counter() - t0
            with torch.no_grad():
                acc = accuracy(model(Xv).argmax(1).numpy(), yte)
            if acc >= target or total > max_seconds:
                break
        return total, epoch, acc
    finally:
        torch.set_num_threads(before)
