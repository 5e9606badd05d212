"""Compiled training epochs and estimator fits, float32 softmax.

Benchmarks (asv), over optimizers {sgd, momentum, adam} x backends {numba,
numba-parallel, cython} (the backends with a compiled epoch) x {dense, csr}:

Epoch.time_partial_fit         asv timing of one ``partial_fit``: one epoch over
                               the data in one compiled call, plus the
                               estimator's per-call validation
Epoch.track_samples_per_s      rows per second of that epoch (median of repeats)
Fit.time_fit                   a whole ``fit`` of EPOCHS epochs (tol=None, so
                               always EPOCHS), from a fresh estimator
Fit.track_samples_per_s        EPOCHS * rows / median fit time

Problems: dense 20,000 x 100 and CSR 20,000 x 5,000 at 1% density (about 50
non-zeros per row), 10 classes, labels from a random linear teacher; the
estimator's default batch size ("auto": 32 rows here).  Setup fits once on a
few rows so the compiled epoch is loaded (or compiled) before timing.  With
OPTKERN_BENCH_SMOKE=1 the problems are tiny.
"""

import os

import numpy as np
import scipy.sparse as sp

import optkern

from . import probes

SMOKE = os.environ.get("OPTKERN_BENCH_SMOKE") == "1"
MIN_TIME = 0.02 if SMOKE else 0.5
MIN_REPS = 2 if SMOKE else 5
EPOCHS = 1 if SMOKE else 3

OPTIMIZERS = ["sgd", "momentum", "adam"]
BACKENDS = ["numba", "numba-parallel", "cython"]
FORMATS = ["dense", "csr"]
N_CLASSES = 3 if SMOKE else 10
# format -> (rows, features, density)
SHAPES = {"dense": (200, 16, 1.0), "csr": (200, 200, 0.05)} if SMOKE else \
    {"dense": (20_000, 100, 1.0), "csr": (20_000, 5_000, 0.01)}


def make_problem(fmt, seed=0):
    """(X, y): float32 features (C-ordered dense or canonical CSR) and labels
    from a random linear teacher, so training makes progress."""
    n, d, density = SHAPES[fmt]
    rng = np.random.default_rng(seed)
    if fmt == "csr":
        X = sp.random(n, d, density=density, format="csr", dtype=np.float32,
                      random_state=seed, data_rvs=lambda m: rng.standard_normal(m))
        X.sum_duplicates()
    else:
        X = rng.standard_normal((n, d), dtype=np.float32)
    teacher = rng.standard_normal((d, N_CLASSES)).astype(np.float32)
    y = np.asarray(X @ teacher).argmax(axis=1)
    return X, y


def classifier(**kw):
    """optkern.LinearClassifier, or NotImplementedError (asv's skip) on a
    commit that has no estimators."""
    try:
        cls = optkern.LinearClassifier
    except AttributeError:
        raise NotImplementedError("this optkern has no LinearClassifier") from None
    return cls(**kw)


def check_backend(backend):
    try:
        avail = optkern.available_backends("epochs")
    except (KeyError, ValueError, TypeError):
        avail = optkern.available_backends()
    if backend not in avail:
        raise NotImplementedError(f"backend {backend!r} has no compiled epoch here")


def warm(optimizer, backend, X, y):
    """Fit once on a few rows: compiles (or loads) the epoch for this layout."""
    classifier(optimizer=optimizer, backend=backend, max_epochs=1, tol=None,
               random_state=0).fit(X[:64], y[:64])


class Epoch:
    params = [OPTIMIZERS, BACKENDS, FORMATS]
    param_names = ["optimizer", "backend", "format"]
    timeout = 300

    def setup(self, optimizer, backend, fmt):
        check_backend(backend)
        self.X, self.y = make_problem(fmt)
        warm(optimizer, backend, self.X, self.y)
        self.model = classifier(optimizer=optimizer, backend=backend, tol=None,
                                random_state=0)
        self.model.partial_fit(self.X, self.y, classes=np.arange(N_CLASSES))

    def time_partial_fit(self, optimizer, backend, fmt):
        self.model.partial_fit(self.X, self.y)

    def track_samples_per_s(self, optimizer, backend, fmt):
        sec = probes.median_seconds(lambda: self.model.partial_fit(self.X, self.y),
                                    min_time=MIN_TIME, min_reps=MIN_REPS, batch=1)
        return self.X.shape[0] / sec
    track_samples_per_s.unit = "samples/s"


class Fit:
    params = [OPTIMIZERS, BACKENDS, FORMATS]
    param_names = ["optimizer", "backend", "format"]
    timeout = 300

    def setup(self, optimizer, backend, fmt):
        check_backend(backend)
        self.X, self.y = make_problem(fmt)
        warm(optimizer, backend, self.X, self.y)
        self.options = {"optimizer": optimizer, "backend": backend, "max_epochs": EPOCHS,
                        "tol": None, "random_state": 0}

    def _fit(self):
        classifier(**self.options).fit(self.X, self.y)

    def time_fit(self, optimizer, backend, fmt):
        self._fit()

    def track_samples_per_s(self, optimizer, backend, fmt):
        sec = probes.median_seconds(self._fit, min_time=MIN_TIME, min_reps=MIN_REPS, batch=1)
        return EPOCHS * self.X.shape[0] / sec
    track_samples_per_s.unit = "samples/s"
