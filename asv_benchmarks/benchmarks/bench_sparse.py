"""Sparse, wide training (issue 12): the text-like problems of optkern.sparse_bench.

SparseEpoch.time_epoch        one epoch (``partial_fit``) at a fixed number of
                              nonzeros (rows x 45) as n_features grows from 2^16
                              to 2^22: the cost must stay flat (a step touches
                              only the minibatch's rows of W)
SparseEpoch.track_ns_per_nonzero  the same epoch in nanoseconds per nonzero
SparseEpoch.track_epoch_in_fit_ms the epoch inside a fit (history_ time), without
                              partial_fit's per-call set-up
SparseFit.time_fit            a whole default fit (2 or 20 classes, 2^18
                              features) beside scikit-learn's
                              SGDClassifier(loss="log_loss") on the same data
SparseFit.track_test_accuracy held-out accuracy of each fit

``mode``: "exact" = plain SGD with an L2 penalty (the scaled-weight trick),
"lazy" = Adagrad (the sparse, wide default).  With OPTKERN_BENCH_SMOKE=1 the
problems are tiny.  asv_benchmarks/sparse_race.py prints the headline table
(with the optional peers) and draws the flat-epoch plot of docs/sparse.md.
"""

import os
import time
import warnings

import numpy as np

import optkern
from optkern.sparse_bench import split, text_like

SMOKE = os.environ.get("OPTKERN_BENCH_SMOKE") == "1"
ROWS = 300 if SMOKE else 50_000
FEATURES = [2 ** 12, 2 ** 14] if SMOKE else [2 ** 16, 2 ** 18, 2 ** 20, 2 ** 22]
FIT_ROWS = 400 if SMOKE else 240_000
FIT_FEATURES = 2 ** 12 if SMOKE else 2 ** 18
MODES = {"exact": dict(optimizer="sgd", lr=0.1, batch_size=1, sparse_updates="exact"),
         "lazy": dict(optimizer="adagrad", lr=0.3, batch_size=16, sparse_updates="lazy")}


def _epoch_model(mode, X, y):
    m = optkern.LinearClassifier(random_state=0, max_epochs=1, tol=None, **MODES[mode])
    m.partial_fit(X[:50], y[:50], classes=np.unique(y))     # compile / load, allocate
    return m


class SparseEpoch:
    params = (FEATURES, list(MODES))
    param_names = ["n_features", "mode"]
    timeout = 600

    def setup(self, n_features, mode):
        self.X, self.y = text_like(ROWS, n_features, 2, seed=0, dtype=np.float32)
        self.model = _epoch_model(mode, self.X, self.y)

    def time_epoch(self, n_features, mode):
        self.model.partial_fit(self.X, self.y)

    def track_ns_per_nonzero(self, n_features, mode):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.model.partial_fit(self.X, self.y)
            times.append(time.perf_counter() - t0)
        return 1e9 * float(np.median(times)) / self.X.nnz

    track_ns_per_nonzero.unit = "ns"

    def track_epoch_in_fit_ms(self, n_features, mode):
        # the epoch alone: the median of a 3-epoch fit's history_ times
        # (partial_fit above also repeats the per-fit set-up, O(n_features))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = optkern.LinearClassifier(random_state=0, max_epochs=3, tol=None,
                                         **MODES[mode]).fit(self.X, self.y)
        return 1e3 * float(np.median([h["time"] for h in m.history_]))

    track_epoch_in_fit_ms.unit = "ms"


class SparseFit:
    params = ([2, 20], ["optkern", "SGDClassifier"])
    param_names = ["n_classes", "trainer"]
    timeout = 1800
    number = 1
    repeat = 3

    def setup(self, n_classes, trainer):
        X, y = text_like(FIT_ROWS, FIT_FEATURES, n_classes, seed=0)
        self.Xtr, self.ytr, self.Xte, self.yte = split(X, y)
        optkern.LinearClassifier(max_epochs=1).fit(self.Xtr[:200], self.ytr[:200])

    def _fit(self, trainer):
        from sklearn.linear_model import SGDClassifier
        m = (optkern.LinearClassifier(random_state=0) if trainer == "optkern"
             else SGDClassifier(loss="log_loss", random_state=0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return m.fit(self.Xtr, self.ytr)

    def time_fit(self, n_classes, trainer):
        self._fit(trainer)

    def track_test_accuracy(self, n_classes, trainer):
        return float(self._fit(trainer).score(self.Xte, self.yte))

    track_test_accuracy.unit = "accuracy"
