"""scikit-learn compatible linear estimators trained by optkern's kernels.

``LinearClassifier`` and ``LinearRegressor`` follow scikit-learn's estimator
API (fit, partial_fit, predict, predict_proba, decision_function, score,
get_params/set_params) and pass its ``check_estimator`` suite.

Training runs in epochs.  For each epoch the host draws the sample order
(``sampling``: "epoch" reshuffles, "replacement" draws with replacement,
"sequential" keeps the order) from a seeded NumPy generator, so every backend
sees the same minibatches; then the epoch itself (every minibatch's loss and
gradient, the optimizer update and the learning-rate schedule) runs:

* on "numba", "numba-parallel" and "cython": in one compiled call
  (``optkern.epochs``), no Python per minibatch;
* on "numpy": in the readable reference loop below (``loss_and_grad`` with
  backend "numpy" and the NumPy reference optimizer step) — the oracle;
* on "cuda": the reference loop over the CUDA kernels.

``solver="lbfgs"`` instead minimises the full-batch objective with
scipy.optimize's L-BFGS-B on the compiled ``loss_and_grad``.

After each epoch: the training loss (mean of the minibatch losses, penalty
included), the validation score when ``early_stopping``, convergence by
``tol``/``n_iter_no_change`` (scikit-learn's rule), callbacks (each called
with the epoch's history row; one returning ``False`` stops), and the
divergence check: a non-finite loss restores the weights of the last finite
epoch and raises FloatingPointError naming the epoch (``on_divergence="warn"``
warns and keeps those weights instead).  KeyboardInterrupt during fit leaves
the model of the last completed epoch, with a warning.
"""

import contextlib
import functools
import math
import numbers
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data, _check_sample_weight
from sklearn.utils._available_if import available_if

from optkern import _backend, _jit
from optkern import optimizers as _opt
from optkern import schedules as _sched

__all__ = ["LinearClassifier", "LinearRegressor", "OPTIMIZER_NAMES"]

# name -> (class, default lr, fixed options), derived from the registry's
# ``estimator_names`` (kernels/rules.py): one copy, shared with the command
# line, Dask and the benchmarks.  Default rates were chosen on standardised
# data (scikit-learn's bundled sets and make_classification) so that every name
# trains a good model without tuning; see tests/test_estimators.
OPTIMIZER_NAMES = _opt.OPTIMIZER_NAMES

CLASSIFIER_LOSSES = ("softmax", "log", "hinge", "squared_hinge", "modified_huber",
                     "multiclass_hinge")
BINARY_LOSSES = ("log", "hinge", "squared_hinge", "modified_huber")
REGRESSOR_LOSSES = ("squared", "huber", "epsilon_insensitive", "absolute")
SMOOTH_LOSSES = ("softmax", "log", "squared_hinge", "modified_huber", "squared", "huber")
PENALTIES = ("l2", "l1", "elasticnet", None)
SAMPLINGS = ("epoch", "replacement", "sequential")
_SPARSE_MODES = ("auto", "exact", "lazy", "dense")

# Defaults on sparse, wide data (CSR with at least SPARSE_WIDE_MIN_FEATURES
# columns and at most SPARSE_WIDE_MAX_DENSITY of its entries stored), for the
# parameters left at "auto"/None.  Chosen by measurement on the text-like
# problems of asv_benchmarks/benchmarks/bench_sparse.py (docs/sparse.md,
# "Defaults"): per-coordinate Adagrad with lazy updates reached
# LogisticRegression()'s test accuracy in about 7 epochs, small minibatches
# ran the epoch fastest, and alpha = 1/n_samples (LogisticRegression(C=1)'s
# strength on the mean loss) recovered the accuracy that alpha = 1e-4 leaves
# on wide data (2 classes, 100 000 rows, 2^18 features: 0.645 against 0.635).
# The constant rate stops at the first stall, and n_iter_no_change="auto" is
# 1 there: the first pass is already more accurate than SGDClassifier's fit
# and the test accuracy moves by about 0.002 after the second (docs/sparse.md,
# "Stopping"), so the fit ends after the first epoch whose training loss does
# not improve by tol (2 classes: 3 epochs instead of 7).
SPARSE_WIDE_MIN_FEATURES = 4096
SPARSE_WIDE_MAX_DENSITY = 0.01
# With n_iter_no_change="auto" the sparse, wide fit also stops at the first
# epoch that improves the training loss by less than 1% (rel_tol): tol's
# absolute 1e-3 is a relative 4e-4 on a 20-class loss of 2.6, where 240,000
# rows kept improving by 1e-3 to 1e-2 an epoch for 21 epochs (14.1 s, test
# accuracy 0.159) against 0.160 after 3 (docs/sparse.md, "Sixth round").
SPARSE_WIDE_DEFAULTS = {"optimizer": "adagrad", "lr": 0.3, "batch_size": 16,
                        "schedule": "constant", "n_iter_no_change": 1, "rel_tol": 0.01}
# ... and may stop after its first epoch, by progressive validation: a fresh
# fit's first epoch scores every row before it trains on it, so the mean
# minibatch loss (taken before each step, penalty excluded) of a later part
# of that epoch is a held-out loss of the model as it was then.  The first
# epoch runs in PROGRESSIVE_SEGMENTS compiled calls of equal minibatch counts
# (the same steps and weights as one call); when the least-squares slope of
# the held-out losses of the second half's segments against their position
# is not a decrease of at least PROGRESSIVE_T standard errors (a one-sided
# test at about 97.5%), the held-out loss has stopped improving measurably
# and the fit ends after one epoch; otherwise the epochs continue under the
# rule above.  At 240,000 rows: 2 classes t = 1.0 and -1.2 (two row orders:
# stop, test accuracy 0.746 against 0.747 after 3 epochs, 2.6x faster than
# SGDClassifier), 20 classes t = 3.0 and 2.9 (continue: 0.160, as before); at
# 20,000 rows 2 classes t = 3.0 and 2.1 (continue), 20 classes 1.0 and 0.04
# (stop: 0.141 against 0.144 after 3) (docs/sparse.md, "Seventh round").
PROGRESSIVE_SEGMENTS = 32
PROGRESSIVE_T = 2.0
DENSE_DEFAULT_ALPHA = 1e-4
DENSE_DEFAULT_OPTIMIZER = "adam"
DENSE_DEFAULT_N_ITER_NO_CHANGE = 5


def _check_csr_structure(X):
    """Once per fit: the CSR arrays describe X's declared shape.  Unsorted or
    duplicate column indices are fine as they are (duplicates add up, as in
    scipy); nothing is copied or densified."""
    from optkern.kernels import finite

    n, d = X.shape
    if d >= 2 ** 31:
        raise ValueError(f"X has {d} columns (2^31 or more): the model would need "
                         f"{d} rows per output; hash the features into a smaller space "
                         "(e.g. sklearn's HashingVectorizer(n_features=2**24))")
    indices, indptr = X.indices, X.indptr
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise TypeError(f"X has CSR index arrays of dtype {indices.dtype}/{indptr.dtype}; "
                        "expected integers")
    if indptr.shape[0] != n + 1 or int(indptr[0]) != 0 or int(indptr[-1]) != indices.shape[0] \
            or X.data.shape[0] != indices.shape[0]:
        raise ValueError(f"X is a malformed CSR matrix for shape {X.shape}: indptr has "
                         f"{indptr.shape[0]} entries, indices {indices.shape[0]}, "
                         f"data {X.data.shape[0]}")
    if n and np.any(np.diff(indptr) < 0):
        raise ValueError("X is a malformed CSR matrix: indptr decreases")
    if indices.shape[0]:
        from optkern.losses import _int_range
        lo, hi = _int_range(indices)
        if lo < 0 or hi >= d:
            raise ValueError(f"X has column indices in [{lo}, {hi}], outside its declared "
                             f"shape's [0, {d})")


def _snapshot_into(opt, snap):
    """``opt._snapshot()`` written into the arrays of an earlier snapshot ``snap``
    of the same optimizer (no new model-sized allocation per epoch); a fresh
    snapshot when ``snap`` does not have that layout."""
    kind, data = snap
    if kind != "host" or len(data) != len(opt._groups):
        return opt._snapshot()
    out = []
    for g, (states, avg, _, _, _) in zip(opt._groups, data):
        if len(states) != len(g.state_list) or (avg is None) != (g.avg is None):
            return opt._snapshot()
        for arrs, saved in zip(g.state_list, states):
            if (arrs is None) != (saved is None) or (
                    arrs is not None and len(arrs) != len(saved)) or (
                    arrs is not None and any(a.shape != v.shape or a.dtype != v.dtype
                                             for a, v in zip(arrs, saved))):
                return opt._snapshot()
            if arrs is not None:
                for a, v in zip(arrs, saved):
                    np.copyto(v, a)
        if avg is not None:
            for a, v in zip(g.avg, avg):
                np.copyto(v, a)
        out.append((states, avg, g.step, g.avg_count, g.scalars))
    return ("host", out)


def sparse_wide(X):
    """Whether X gets the sparse, wide defaults (see SPARSE_WIDE_DEFAULTS)."""
    if not sp.issparse(X) or X.shape[0] == 0:
        return False
    n, d = X.shape
    return d >= SPARSE_WIDE_MIN_FEATURES and X.nnz <= SPARSE_WIDE_MAX_DENSITY * n * d
# schedule=None ("adaptive"): stop dividing the rate by 5 below this
ADAPTIVE_MIN_LR = 1e-6



# a dense L-BFGS objective of at least this many multiply-adds (n x d x k) keeps
# BLAS's threads for its own X @ W and X.T @ P (the solver's steps run on one)
_LBFGS_BLAS_THREADED_WORK = 10_000_000
_LIMITER = []


def _blas_limiter():
    """A threadpoolctl controller (created once: it scans the loaded
    libraries), with ``info_threads`` the BLAS thread count to restore; None
    without threadpoolctl."""
    if not _LIMITER:
        try:
            from threadpoolctl import ThreadpoolController
            ctl = ThreadpoolController()
            blas = [p["num_threads"] for p in ctl.info() if p["user_api"] == "blas"]
            ctl.info_threads = max(blas) if blas else 1
        except Exception:   # no threadpoolctl, or a library it cannot read
            ctl = None
        _LIMITER.append(ctl)
    return _LIMITER[0]


def lbfgs_options(tol, max_iter):
    """scipy L-BFGS-B options of solver="lbfgs" (in memory and optkern.dask).

    scikit-learn's LogisticRegression(solver="lbfgs") stops when the projected
    gradient's max-norm is below its tol=1e-4 or the objective's relative
    change below 64 eps, on the same scale as ours (mean loss + penalty); our
    default tol=1e-3 (the SGD stall rule's) maps to its 1e-4.  The earlier
    tol/100 took 443 iterations on digits against its 100.
    """
    return {"maxiter": max_iter, "maxls": 50,
            "gtol": 1e-6 if tol is None else tol * 0.1,
            "ftol": 64 * np.finfo(np.float64).eps}


def progressive_marks(n, batch_size):
    """The first epoch's cut positions (multiples of batch_size, increasing,
    inside (0, n)): PROGRESSIVE_SEGMENTS segments of equal minibatch counts
    (within one); None when the epoch has fewer than 2 minibatches a segment."""
    nb = -(-n // batch_size)
    m = PROGRESSIVE_SEGMENTS
    if nb < 2 * m:
        return None
    return [(j * nb // m) * batch_size for j in range(1, m)]


def progressive_trend(segments, marks):
    """The t statistic of the held-out losses' decrease over the second half of
    the first epoch: ``segments`` [(start, stop, mean data loss)] of the
    epoch's calls (cut at least at ``marks``), merged into the marks'
    segments; the least-squares slope of the second half's segment means
    against their middle row, negated and divided by its standard error
    (residual variance with m - 2 degrees of freedom).  Positive = the loss
    still falls.  +inf for an exact decrease with no scatter, 0 for none."""
    cuts = [0] + list(marks) + [max(stop for _, stop, _ in segments)]
    m = len(cuts) - 1
    total = np.zeros(m)
    rows = np.zeros(m)
    for start, stop, mean in segments:
        j = int(np.searchsorted(cuts, start, side="right")) - 1
        total[j] += mean * (stop - start)
        rows[j] += stop - start
    half = slice(m // 2, m)
    y = total[half] / rows[half]
    x = 0.5 * (np.asarray(cuts[:-1], float) + np.asarray(cuts[1:], float))[half]
    x = x - x.mean()
    sxx = float(x @ x)
    slope = float(x @ (y - y.mean())) / sxx
    resid = y - y.mean() - slope * x
    se = math.sqrt(float(resid @ resid) / (y.shape[0] - 2) / sxx)
    if se == 0.0:
        return math.inf if slope < 0 else 0.0
    return -slope / se


class _Stall:
    """scikit-learn's stopping rule, per epoch (in memory) or round (dask):
    no improvement by ``tol`` of the training loss (or of the validation
    score, when there is one) for ``n_iter_no_change`` epochs in a row."""

    def __init__(self, tol, n_iter_no_change, rel_tol=0.0):
        if n_iter_no_change == "auto":   # the estimators resolve it per data set
            n_iter_no_change = DENSE_DEFAULT_N_ITER_NO_CHANGE
        self.tol, self.patience, self.rel_tol = tol, n_iter_no_change, rel_tol
        self.best_loss, self.best_score, self.no_improve = math.inf, -math.inf, 0

    def stalled(self, loss, val_score=None):
        """Record one epoch; True when the run has stalled (the count then
        restarts, for a caller that continues with a smaller rate)."""
        if val_score is not None:
            improved = val_score >= self.best_score + self.tol
            self.best_score = max(self.best_score, val_score)
        else:
            # rel_tol (sparse, wide defaults only): the larger of the two
            need = self.tol if self.best_loss == math.inf else \
                max(self.tol, self.rel_tol * abs(self.best_loss))
            improved = loss <= self.best_loss - need
            self.best_loss = min(self.best_loss, loss)
        self.no_improve = 0 if improved else self.no_improve + 1
        if self.no_improve >= self.patience:
            self.no_improve = 0
            return True
        return False


def _choice(name, value, choices):
    if value not in choices:
        import difflib
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}{hint}")


def _int_param(name, value, lo, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}{' or None' if allow_none else ''}, "
                         f"got {value!r}")


def _real_param(name, value, lo=None, lo_open=False, hi=None, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value!r}")


@functools.lru_cache(maxsize=256)
def _derived_seed(random_state):
    """The first draw of RandomState(random_state): the seed of a fit's
    Generator.  Cached: seeding a RandomState costs ~0.1 ms, a tenth of a
    small fit."""
    return int(np.random.RandomState(random_state).randint(0, 2 ** 31 - 1))


def _n_states(optimizer):
    """State arrays per parameter of an optimizer instance or name (the memory
    check's count: Adam 2, SGD 0, ...)."""
    from optkern.kernels.rules import RULES

    cls = type(optimizer) if isinstance(optimizer, _opt.Optimizer) else \
        OPTIMIZER_NAMES[optimizer][0]
    return len(RULES[cls._rule].states)


def _run_callbacks(callbacks, row):
    """Call every callback with its own copy of the epoch's history row (all
    of them, every epoch: one callback's answer never skips the next one);
    True when any returned False, which stops training as the README says.
    Any other return value (None, True, ...) continues."""
    answers = [cb(dict(row)) for cb in (callbacks or ())]
    return any(a is False or (isinstance(a, np.bool_) and not a) for a in answers)


# A compiled epoch holds the interpreter until it returns, so Ctrl-C (a Python
# signal handler) waits for it.  Epochs of more multiply-adds than this run as
# blocks of whole minibatches, one compiled call each, so an interrupt is
# answered within one block (~0.1 s at 1 GFLOP/s); the steps, their order and
# the weights are those of one call (the loss is summed per block).
EPOCH_BLOCK_WORK = 10 ** 8
# The sparse epochs' steps cost tens of ns per nonzero and output (random
# accesses to W and its state, the rule per element): blocks of ~5 x 10^6
# nonzeros x outputs answer Ctrl-C within ~1 s.
SPARSE_EPOCH_BLOCK_WORK = 5 * 10 ** 6


def _block_rows(X, k, batch_size, work=None):
    """Rows per compiled call: a multiple of the batch size near ``work``
    multiply-adds (EPOCH_BLOCK_WORK)."""
    work = EPOCH_BLOCK_WORK if work is None else work
    n = X.shape[0]
    per_row = (X.nnz / max(n, 1) if sp.issparse(X) else X.shape[1]) * max(k, 1)
    steps = int(work // max(per_row * batch_size, 1))
    return max(steps, 1) * batch_size


def _draw_order():
    """kernels/order.py's ``draw_order``: its ahead-of-time twin when built
    (no JIT warm-up on a first fit; the same orders element for element),
    else the Numba function (``seed`` as uint64 for it)."""
    mod = _backend.cython_module("order")
    if mod is not None:
        return mod.draw_order
    from optkern.kernels.order import draw_order

    return lambda seed, mode, out: draw_order(np.uint64(seed), mode, out)


def _blocked_epoch(runner, order, batch_size, block):
    """``runner(order, batch_size)`` in blocks of ``block`` rows; the row-weighted
    mean loss, as one call computes it (NaN as soon as a block diverges)."""
    n = order.shape[0]
    if n <= block:
        return runner(order, batch_size)
    total = 0.0
    for start in range(0, n, block):
        part = order[start:start + block]
        mean = runner(part, batch_size)
        if not math.isfinite(mean):
            return mean
        total += mean * part.shape[0]
    return total / n


class TrainingDiverged(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


class _BaseLinear(BaseEstimator):
    _losses = ()

    def __init__(self, *, loss, penalty="l2", alpha="auto", l1_ratio=0.15, fit_intercept=True,
                 optimizer="auto", lr=None, optimizer_params=None, schedule=None,
                 batch_size="auto", sampling="epoch", max_epochs=1000, tol=1e-3,
                 n_iter_no_change="auto", early_stopping=False, validation_fraction=0.1,
                 average=False, warm_start=False, random_state=None, backend="auto",
                 verbose=0, callbacks=None, solver="sgd", on_divergence="raise",
                 epsilon=0.1, sparse_updates="auto"):
        self.loss = loss
        self.sparse_updates = sparse_updates
        self.epsilon = epsilon
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.optimizer = optimizer
        self.lr = lr
        self.optimizer_params = optimizer_params
        self.schedule = schedule
        self.batch_size = batch_size
        self.sampling = sampling
        self.max_epochs = max_epochs
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.average = average
        self.warm_start = warm_start
        self.random_state = random_state
        self.backend = backend
        self.verbose = verbose
        self.callbacks = callbacks
        self.solver = solver
        self.on_divergence = on_divergence

    # ------------------------------------------------------------ validation
    def _validate_params(self):
        _choice("loss", self.loss, self._losses)
        _choice("penalty", self.penalty, PENALTIES)
        if self.alpha != "auto":
            _real_param("alpha", self.alpha, lo=0.0)
        _real_param("l1_ratio", self.l1_ratio, lo=0.0, hi=1.0)
        if self.batch_size != "auto":
            _int_param("batch_size", self.batch_size, 1, allow_none=True)
        _choice("sampling", self.sampling, SAMPLINGS)
        _int_param("max_epochs", self.max_epochs, 1)
        _real_param("tol", self.tol, lo=0.0, allow_none=True)
        if not (isinstance(self.n_iter_no_change, str) and self.n_iter_no_change == "auto"):
            if isinstance(self.n_iter_no_change, str):
                raise ValueError(f"n_iter_no_change must be an int >= 1 or 'auto', got "
                                 f"{self.n_iter_no_change!r}")
            _int_param("n_iter_no_change", self.n_iter_no_change, 1)
        _real_param("validation_fraction", self.validation_fraction, lo=0.0, lo_open=True,
                    hi=0.99)
        _real_param("lr", self.lr, lo=0.0, lo_open=True, allow_none=True)
        _choice("solver", self.solver, ("sgd", "lbfgs"))
        _choice("on_divergence", self.on_divergence, ("raise", "warn"))
        _real_param("epsilon", self.epsilon, lo=0.0)
        _choice("sparse_updates", self.sparse_updates, _SPARSE_MODES)
        _backend.validate_name(self.backend)
        if not (isinstance(self.average, (bool, np.bool_)) or
                (isinstance(self.average, numbers.Integral) and self.average >= 0)):
            raise ValueError(f"average must be a bool or an int >= 0, got {self.average!r}")
        if self.optimizer_params is not None and not isinstance(self.optimizer_params, dict):
            raise TypeError(f"optimizer_params must be a dict or None, got "
                            f"{type(self.optimizer_params).__name__}")
        if isinstance(self.optimizer, str):
            _choice("optimizer", self.optimizer, ("auto",) + tuple(OPTIMIZER_NAMES))
        elif not isinstance(self.optimizer, _opt.Optimizer):
            raise TypeError("optimizer must be a name from "
                            f"{sorted(OPTIMIZER_NAMES)} or an optkern optimizer instance, "
                            f"got {self.optimizer!r}")
        if self.schedule != "adaptive":
            _sched.get_schedule(self.schedule)
        if self.callbacks is not None and not all(callable(c) for c in self.callbacks):
            raise TypeError("callbacks must be a list of callables")
        if self.solver == "lbfgs":
            if self.loss not in SMOOTH_LOSSES:
                raise ValueError(f"solver='lbfgs' needs a smooth loss, one of "
                                 f"{[l for l in SMOOTH_LOSSES if l in self._losses]}; "
                                 f"got loss={self.loss!r}")
            if self.penalty in ("l1", "elasticnet") and (self.alpha == "auto" or self.alpha > 0):
                raise ValueError("solver='lbfgs' needs penalty='l2' or None (l1 is not smooth)")

    def _check_X(self, X, reset):
        return validate_data(self, X, reset=reset, accept_sparse="csr",
                             dtype=[np.float64, np.float32], order="C")

    def _plain_fit_data(self, X, y, reset, y_kinds):
        """(X, y) unchanged when they are what scikit-learn's ``validate_data``
        would return as they are -- a finite C-contiguous float32/float64
        ndarray and a 1-D ndarray of matching length whose dtype kind is in
        ``y_kinds`` -- and the feature bookkeeping is trivial; else None, and
        the caller runs ``validate_data``, which also words every error.
        validate_data costs 0.1-0.3 ms a call (dataframe detection), a tenth of
        a fit on digits."""
        if type(X) is not np.ndarray or type(y) is not np.ndarray:
            return None
        if X.ndim != 2 or y.ndim != 1 or X.dtype not in (np.float32, np.float64) \
                or not X.flags.c_contiguous or y.dtype.kind not in y_kinds:
            return None
        n, d = X.shape
        if n < 1 or d < 1 or y.shape[0] != n:
            return None
        if not reset and (getattr(self, "n_features_in_", None) != d
                          or hasattr(self, "feature_names_in_")):
            return None
        # NaN or inf anywhere makes the sum NaN or inf (scikit-learn's own first
        # test); a sum that overflows on finite data only sends it the slow way
        if not math.isfinite(float(X.sum())):
            return None
        if y.dtype.kind == "f" and not math.isfinite(float(y.sum())):
            return None
        if reset:
            self.n_features_in_ = d
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        return X, y

    # --------------------------------------------------------- optimisation
    def _make_optimizer(self, W, b, n_train, seed):
        params = dict(self.optimizer_params or {})
        if isinstance(self.optimizer, _opt.Optimizer):
            cls = type(self.optimizer)
            template = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
            for fixed in cls._fixed_options:   # AdamW's decoupled_weight_decay
                template.pop(fixed, None)
            template.update(params)
            params = template
            base_lr = params.pop("lr")
        else:
            cls, default_lr, fixed = OPTIMIZER_NAMES[self._optimizer_name()]
            if self._wide and self.optimizer == "auto":
                default_lr = SPARSE_WIDE_DEFAULTS["lr"]
            merged = dict(fixed)
            merged.update(params)
            params = merged
            base_lr = default_lr
            if cls is _opt.SGLD:
                # the gradients are of the mean loss, so temperature 1/n would
                # sample the posterior of the summed loss; 0.01/n (a "cold
                # posterior") keeps the final iterate a good classifier
                params.setdefault("noise_scale", 0.1 / math.sqrt(max(n_train, 1)))
        if self.lr is not None:
            base_lr = float(self.lr)
        if cls._noisy:
            params["seed"] = seed
        if cls is _opt.FTRL:
            # the penalty goes to FTRL's own proximal l1/l2 (exact zeros), growing
            # with the step as the summed gradients do (see _penalty_args)
            penalty, alpha = self._penalty_args(for_gradient=False)
            l1r = {"l2": 0.0, "l1": 1.0}.get(penalty, float(self.l1_ratio))
            params.setdefault("l1_per_step", alpha * l1r)
            params.setdefault("l2_per_step", alpha * (1.0 - l1r))
        groups = [{"params": [W]}]
        if b is not None:
            # the intercept is not penalised
            unpenalised = {k: 0.0 for k in ("weight_decay", "l1", "l2", "l1_per_step",
                                            "l2_per_step") if k in cls._option_names}
            groups.append({"params": [b], **unpenalised})
        try:
            opt = cls(groups, lr=base_lr, backend=self._optimizer_backend(W.size),
                      average=self.average, **params)
        except TypeError as exc:
            raise ValueError(f"optimizer_params {sorted(params)} do not fit "
                             f"{cls.__name__}: {exc}") from None
        return opt, base_lr

    def _optimizer_backend(self, size):
        be = self.backend
        if be == "auto":
            # The Numba epoch, not the Cython twin, even for small models: its
            # dense loops run over W^T and vectorise for this CPU (digits,
            # softmax + Adam: 0.45 vs 0.92 ms per epoch); loading it from the
            # disk cache costs ~0.15 s once per process.  backend="cython"
            # trains with no JIT at all.
            be = _backend.choose_auto(size)
            return "numba" if be == "cython" else be
        return be

    def _encode_y(self, y):
        raise NotImplementedError

    def _n_outputs(self):
        raise NotImplementedError

    def _effective_loss(self, k):
        """The kernel loss for k outputs (binary problems use one output)."""
        return self.loss

    def _uses_ftrl(self):
        return self.solver == "sgd" and (
            self._optimizer_name() == "ftrl" or isinstance(self.optimizer, _opt.FTRL))

    def _optimizer_name(self):
        """The optimizer name a fit uses ("auto": SPARSE_WIDE_DEFAULTS on sparse,
        wide data, else DENSE_DEFAULT_OPTIMIZER)."""
        if self.optimizer != "auto":
            return self.optimizer
        return SPARSE_WIDE_DEFAULTS["optimizer"] if self._wide else DENSE_DEFAULT_OPTIMIZER

    @property
    def _wide(self):
        return getattr(self, "_sparse_wide_fit", False)

    def _n_iter_no_change(self):
        """n_iter_no_change, with "auto" = 1 on sparse, wide data, else 5
        (scikit-learn's)."""
        if not isinstance(self.n_iter_no_change, str):
            return int(self.n_iter_no_change)
        return SPARSE_WIDE_DEFAULTS["n_iter_no_change"] if self._wide \
            else DENSE_DEFAULT_N_ITER_NO_CHANGE

    def _stall_rel_tol(self):
        """The relative improvement an epoch must make: 1% on sparse, wide data
        with n_iter_no_change="auto" (SPARSE_WIDE_DEFAULTS), else 0 (the
        absolute tol alone, scikit-learn's rule)."""
        auto = isinstance(self.n_iter_no_change, str)
        return SPARSE_WIDE_DEFAULTS["rel_tol"] if (auto and self._wide) else 0.0

    def _alpha_value(self):
        """alpha, with "auto" = 1/n_samples on sparse, wide data, else 1e-4."""
        if self.alpha != "auto":
            return float(self.alpha)
        n = getattr(self, "_fit_rows", 0)
        return 1.0 / n if (self._wide and n) else DENSE_DEFAULT_ALPHA

    def _set_data_defaults(self, X, partial):
        """Record what the "auto" defaults resolve to for this data (once per
        fit; partial_fit keeps the first call's choice)."""
        if partial and hasattr(self, "_fit_rows"):
            return
        self._sparse_wide_fit = sparse_wide(X)
        self._fit_rows = X.shape[0]

    def _penalty_args(self, for_gradient=True):
        """(penalty, alpha) of the gradient.  With FTRL the penalty is not in the
        gradient: FTRL applies it proximally (l1_per_step/l2_per_step)."""
        if self.penalty is None or (for_gradient and self._uses_ftrl()):
            return "l2", 0.0
        return self.penalty, self._alpha_value()

    def _batch_loss_grad(self, X, y, sw, W, b, backend, penalize=True):
        """Weighted-mean loss (+ penalty) and gradient, for any loss kind."""
        from optkern.losses import loss_and_grad

        loss = self._effective_loss(W.shape[1])
        penalty, alpha = self._penalty_args()
        if not penalize:
            alpha = 0.0
        if loss in BINARY_LOSSES and W.shape[1] > 1:
            # one-vs-rest: the sum of k binary objectives, column by column
            total = 0.0
            dW = np.empty_like(W)
            db = None if b is None else np.empty_like(b)
            for j in range(W.shape[1]):
                yj = (y == j).astype(W.dtype)
                lj, dWj, dbj = loss_and_grad(
                    X, yj, np.ascontiguousarray(W[:, j:j + 1]),
                    None if b is None else b[j:j + 1], loss=loss, alpha=alpha,
                    penalty=penalty, l1_ratio=self.l1_ratio, sample_weight=sw,
                    backend=backend, check_input=False, epsilon=self.epsilon)
                total += lj
                dW[:, j] = dWj[:, 0]
                if db is not None:
                    db[j] = dbj[0]
            return total, dW, db
        return loss_and_grad(X, y, W, b, loss=loss, alpha=alpha, penalty=penalty,
                             l1_ratio=self.l1_ratio, sample_weight=sw, backend=backend,
                             check_input=False, epsilon=self.epsilon)

    def _batch_size(self, n):
        """``"auto"``: n // 64 clipped to [1, 32] -- at least ~64 updates per epoch
        on small data (the tol test per epoch needs progress to measure), 32 rows
        per update on large data.  None: full batch."""
        if self.batch_size is None:
            return n
        if isinstance(self.batch_size, str):
            if self._wide:
                return int(min(SPARSE_WIDE_DEFAULTS["batch_size"], n))
            return int(min(max(n // 64, 1), 32))
        return min(self.batch_size, n)

    def _batches(self, rng, n):
        """The epoch's row order and batch size.  The order comes from the one
        compiled generator every backend uses (kernels/order.py), seeded by one
        draw of the fit's ``rng`` per epoch: the same minibatches for a given
        random_state on every backend, and about 1.5 ms an epoch for 240,000
        rows instead of NumPy's 5-9 ms ``rng.permutation``."""
        bs = self._batch_size(n)
        if self.sampling == "sequential":
            return np.arange(n), bs
        from optkern.kernels.order import MODES

        order = np.empty(n, dtype=np.int64)
        _draw_order()(int(rng.integers(0, 2 ** 63)), MODES[self.sampling], order)
        return order, bs

    def _run_epoch(self, ctx, order, bs, marks=None):
        """One epoch; returns the mean minibatch loss.  Compiled when possible.
        ``marks`` (sparse modes only: progressive_marks) also leaves the
        epoch's held-out segment losses in ``ctx.segments``."""
        from optkern import epochs

        if ctx.sparse_mode != "dense":
            return self._sparse_epoch(ctx, order, bs, marks)
        runner = epochs.runner_for(self, ctx)
        if runner is not None:
            return _blocked_epoch(runner, order, bs, _block_rows(ctx.X, ctx.W.shape[1], bs))
        return self._reference_epoch(ctx, order, bs)

    def _sparse_epoch(self, ctx, order, bs, marks=None):
        """An epoch whose steps touch only the minibatch's rows of W
        (``sparse_updates``; kernels/sparse_rules.py says what each mode computes)."""
        from optkern import sparse_epochs

        if ctx.backend in sparse_epochs.COMPILED:
            runner = getattr(ctx, "sparse_runner", None)
            if runner is None:
                runner = ctx.sparse_runner = sparse_epochs.SparseRunner(
                    self, ctx, ctx.sparse_mode)
                # while the sparse epochs are not compiled, backend="auto" trains
                # this fit with their Cython twin (or, not built, their NumPy
                # reference: the same algorithm) and the compile server compiles
                # them by fitting a copy on a few rows (optkern._jit)
                cold = self.backend == "auto" and \
                    not sparse_epochs.compiled_for(runner) and \
                    _jit.warm_up_call(sparse_epochs.warm_up, *sparse_epochs.warm_up_args(
                        self, ctx))
                runner.reference = cold and not runner.use_twin()
            if not runner.reference:
                loss = runner(order, bs, block=_block_rows(
                    ctx.X, ctx.W.shape[1], bs, SPARSE_EPOCH_BLOCK_WORK), marks=marks or ())
                ctx.segments = runner.segments
                return loss
        from optkern.kernels import sparse_reference
        if not marks:
            return sparse_reference.epoch(self, ctx, order, bs, ctx.sparse_mode)
        # the reference epoch cut at the marks: the same steps (the lazy and the
        # dense-step reference epochs do nothing at an epoch's end but add the
        # penalty's value; the cumulative-L1 one, which does, is not cut:
        # _progressive_fit)
        from optkern.kernels.loss_reference import penalty
        pen_name, alpha = self._penalty_args()
        l1_ratio = {"l2": 0.0, "l1": 1.0}.get(pen_name, float(self.l1_ratio))
        n = order.shape[0]
        cuts = [0] + list(marks) + [n]
        ctx.segments = []
        total = 0.0
        for start, stop in zip(cuts[:-1], cuts[1:]):
            mean = sparse_reference.epoch(self, ctx, order[start:stop], bs, ctx.sparse_mode)
            if not math.isfinite(mean):
                return mean
            if ctx.sparse_mode == "lazy":
                # its mean adds the penalty of the weights at its end
                data = mean - float(penalty(ctx.W, alpha, l1_ratio)[0])
            else:
                # _reference_epoch: each minibatch's loss adds its penalty
                data = ctx.data_mean
            ctx.segments.append((start, stop, data))
            total += (data if ctx.sparse_mode == "lazy" else mean) * (stop - start)
        if ctx.sparse_mode == "lazy":
            return total / n + float(penalty(ctx.W, alpha, l1_ratio)[0])
        return total / n

    def _reference_epoch(self, ctx, order, bs):
        """The readable epoch: the specification the compiled epochs follow.

        Each minibatch B estimates the objective sum(w L)/sum(w) + penalty
        without bias: sum_B(w L) / (|B| * mean(w)) + penalty.  (Normalising by
        the batch's own weight sum would cancel the weights of a batch that
        holds a single class.)
        """
        from optkern.kernels.loss_reference import penalty

        X, y, sw, W, b, opt = ctx.X, ctx.y, ctx.sw, ctx.W, ctx.b, ctx.opt
        be = ctx.backend
        loss_backend = be if be != "cython" or _backend.cython_module("losses") else "numba"
        pen_name, alpha = self._penalty_args()
        l1_ratio = {"l2": 0.0, "l1": 1.0}.get(pen_name, float(self.l1_ratio))
        w_mean = float(np.mean(sw))
        total = 0.0
        data_total = 0.0
        count = 0
        for start in range(0, order.shape[0], bs):
            rows = order[start:start + bs]
            swb = sw[rows]
            wsum = float(swb.sum())
            if wsum <= 0.0:
                continue
            loss, dW, db = self._batch_loss_grad(X[rows], y[rows], swb, W, b, loss_backend,
                                                 penalize=False)
            scale = wsum / (rows.shape[0] * w_mean)
            pen, dpen = penalty(W, alpha, l1_ratio)
            data_total += loss * scale * rows.shape[0]
            loss = loss * scale + pen
            dW = dW * W.dtype.type(scale) + dpen.astype(W.dtype, copy=False)
            if b is not None:
                db = db * W.dtype.type(scale)
            if not math.isfinite(loss):
                return float("nan")
            lr = ctx.base_lr * ctx.schedule.factor(ctx.t) * ctx.plateau
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step([dW] if b is None else [dW, db])
            total += loss * rows.shape[0]
            count += rows.shape[0]
            ctx.t += 1
        # the mean loss before the steps without the penalty (the progressive
        # loss of the first-epoch rule: _sparse_epoch)
        ctx.data_mean = data_total / count if count else 0.0
        return total / count if count else 0.0

    # ------------------------------------------------------------------- fit
    def fit(self, X, y, sample_weight=None):
        """Train from scratch (or from the last fit with ``warm_start``)."""
        self._validate_params()
        X, y = self._validate_fit_data(X, y, reset=True)
        sw = self._sample_weight(X, y, sample_weight)
        if not (self.warm_start and hasattr(self, "coef_")):
            for attr in ("_opt_state", "_t"):
                if hasattr(self, attr):
                    delattr(self, attr)
        return self._fit(X, y, sw, max_epochs=self.max_epochs, partial=False)

    def partial_fit(self, X, y, sample_weight=None, **kwargs):
        """One epoch over (X, y), continuing the optimizer state of earlier calls."""
        first = not hasattr(self, "coef_")
        self._validate_params()
        X, y = self._validate_fit_data(X, y, reset=first, **kwargs)
        sw = self._sample_weight(X, y, sample_weight)
        return self._fit(X, y, sw, max_epochs=1, partial=True)

    def _sample_weight(self, X, y, sample_weight):
        if sample_weight is None and getattr(self, "class_weight", None) is None:
            return np.ones(X.shape[0], dtype=X.dtype)
        sw = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        if sample_weight is not None and (not np.all(np.isfinite(sw)) or np.any(sw < 0)):
            raise ValueError("sample_weight must be finite and non-negative")
        sw = sw * self._class_weight_factors(y).astype(X.dtype, copy=False)
        if not sw.sum() > 0:
            raise ValueError("sample_weight sums to zero: nothing to train on")
        return np.ascontiguousarray(sw, dtype=X.dtype)

    def _class_weight_factors(self, y):
        return np.ones(y.shape[0])

    def _fit(self, X, y, sw, max_epochs, partial):
        # every "auto" kernel choice of this fit sees one load reading (an
        # L-BFGS fit calls loss_and_grad hundreds of times): one kernel for
        # the whole fit, whatever the machine's load does meanwhile
        with _backend.decide_once():
            return self._fit_decided(X, y, sw, max_epochs, partial)

    def _fit_decided(self, X, y, sw, max_epochs, partial):
        split = self.early_stopping and not partial
        if partial and hasattr(self, "_rng"):
            rng = self._rng
        elif isinstance(self.random_state, numbers.Integral) and not split:
            rng = np.random.default_rng(_derived_seed(int(self.random_state)))
        else:
            rs = check_random_state(self.random_state)
            rng = np.random.default_rng(rs.randint(0, 2 ** 31 - 1))
        X_val = y_val = None
        if split:   # rs is set: split implies partial=False
            X, X_val, y, y_val, sw, _ = self._split_validation(X, y, sw, rs)
        if sp.issparse(X):
            _check_csr_structure(X)
        self._set_data_defaults(X, partial)
        n, d = X.shape
        dtype = X.dtype
        k = self._n_outputs()
        self._check_fit_memory(X, k)
        keep_state = partial and hasattr(self, "_opt_state")
        reuse = (keep_state or self.warm_start) and hasattr(self, "_W") and \
            self._W.shape == (d, k) and self._W.dtype == dtype and \
            (self._b is not None) == bool(self.fit_intercept)
        if reuse:
            W = self._W.copy()
            b = None if self._b is None else self._b.copy()
        else:
            keep_state = False
            W = np.zeros((d, k), dtype=dtype)
            b = np.zeros(k, dtype=dtype) if self.fit_intercept else None
        if self.solver == "lbfgs":
            return self._fit_lbfgs(X, y, sw, W, b, max_epochs)
        opt, base_lr = self._make_optimizer(W, b, n, int(rng.integers(0, 2 ** 62)))
        if keep_state and self._opt_state is not None:
            opt.load_state_dict(self._opt_state)
        schedule = self.schedule
        if schedule is None and self._wide:
            schedule = SPARSE_WIDE_DEFAULTS["schedule"]
        elif schedule is None and self._uses_ftrl():
            # FTRL's lr scales its weights (w = -z lr / (beta + sqrt(n)) ...), not
            # its steps: "adaptive" division would shrink the model; constant
            schedule = "constant"
        ctx = _Context(X=X, y=y, sw=sw, W=W, b=b, opt=opt, base_lr=base_lr,
                       schedule=_sched.get_schedule(
                           None if schedule == "adaptive" else schedule),
                       t=getattr(self, "_t", 0) if keep_state else 0,
                       backend=opt.backend if self.backend != "numpy" else "numpy")
        if isinstance(ctx.schedule, _sched.ReduceOnPlateau):
            ctx.schedule.reset()
        from optkern import sparse_epochs
        ctx.sparse_mode = sparse_epochs.resolve_mode(self, X, opt, ctx.schedule, ctx.backend)
        adaptive = schedule is None or schedule == "adaptive"
        history = list(self.history_) if (keep_state and hasattr(self, "history_")) else []
        stall = _Stall(self.tol, self._n_iter_no_change(), self._stall_rel_tol())
        marks = self._progressive_marks(ctx, n, partial, reuse, X_val, adaptive)
        self.__dict__.pop("_progressive_t", None)   # set when the rule decides
        good_W, good_b = W.copy(), None if b is None else b.copy()
        good_state = opt._snapshot()
        epoch0 = len(history)
        limit = self._divergence_limit(X, y, sw, W, b)
        progress = self._progress(max_epochs)
        converged = False
        interrupted = False
        try:
            for epoch in range(max_epochs):
                order, bs = self._batches(rng, n)
                t0 = time.perf_counter()
                lr_now = base_lr * ctx.schedule.factor(ctx.t) * ctx.plateau
                try:
                    loss = self._run_epoch(ctx, order, bs, marks if epoch == 0 else None)
                except FloatingPointError:
                    loss = float("nan")
                elapsed = time.perf_counter() - t0
                finite = math.isfinite(loss) and loss <= limit and \
                    np.all(np.isfinite(W)) and (b is None or np.all(np.isfinite(b)))
                if not finite:
                    W[...] = good_W
                    if b is not None:
                        b[...] = good_b
                    opt._restore(good_state)
                    self._finish(W, b, history, ctx, opt, epoch0 + epoch, rng)
                    msg = (f"training diverged at epoch {epoch0 + epoch + 1}: the loss became "
                           f"{loss} (lr={lr_now:g}); the weights of epoch {epoch0 + epoch} "
                           f"were kept. {self._divergence_hint(lr_now)}")
                    if self.on_divergence == "warn":
                        warnings.warn(msg, RuntimeWarning, stacklevel=3)
                        return self
                    raise TrainingDiverged(msg)
                good_W[...] = W
                if b is not None:
                    good_b[...] = b
                good_state = _snapshot_into(opt, good_state)
                row = {"epoch": epoch0 + epoch + 1, "loss": float(loss), "val_score": None,
                       "lr": float(lr_now), "time": elapsed}
                # coef_/intercept_ show this epoch's model to the validation score
                # and to callbacks; nothing else reads them before the fit ends
                # (W.T is a model-sized copy: skipped when no one looks)
                if X_val is not None or self.callbacks:
                    self._finish(W, b, history, ctx, opt, epoch0 + epoch + 1, rng,
                                 final=False)
                if X_val is not None:
                    row["val_score"] = float(self.score(X_val, y_val))
                history.append(row)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.4g}")
                if isinstance(ctx.schedule, _sched.ReduceOnPlateau):
                    ctx.plateau = ctx.schedule.update(
                        -row["val_score"] if X_val is not None else loss)
                stop = _run_callbacks(self.callbacks, row)
                if self.tol is not None and not partial and stall.stalled(
                        loss, row["val_score"] if X_val is not None else None):
                    if adaptive and base_lr * ctx.plateau > ADAPTIVE_MIN_LR:
                        # scikit-learn's "adaptive": a stalled run continues
                        # with a five times smaller rate
                        ctx.plateau /= 5.0
                    else:
                        converged = True
                        break
                if marks is not None and epoch == 0 and not partial:
                    self._progressive_t = progressive_trend(ctx.segments, marks)
                    if self._progressive_t < PROGRESSIVE_T:
                        converged = True
                        break
                if stop:
                    converged = True
                    break
        except KeyboardInterrupt:
            interrupted = True
            W[...] = good_W
            if b is not None:
                b[...] = good_b
            opt._restore(good_state)
            warnings.warn(f"training interrupted; the model of epoch {len(history)} is kept",
                          RuntimeWarning, stacklevel=2)
        finally:
            if progress is not None:
                progress.close()
        self._warn_state_overflow(opt)
        # the last good epoch's copies are dead: free them before _finish makes
        # coef_ and the saved state (model-sized each)
        del good_W, good_b, good_state
        self._finish(W, b, history, ctx, opt, len(history), rng)
        if not (converged or partial or interrupted or self.tol is None):
            warnings.warn(f"maximum number of epochs ({max_epochs}) reached before "
                          "convergence; consider raising max_epochs", ConvergenceWarning,
                          stacklevel=2)
        return self

    def _progressive_marks(self, ctx, n, partial, reuse, X_val, adaptive):
        """The first epoch's cuts when the first-epoch rule applies to this fit
        (PROGRESSIVE_SEGMENTS), else None: sparse, wide data with
        n_iter_no_change="auto" and a tol; a fit from zero weights and a fresh
        optimizer (so the first epoch's losses are held out), without a
        validation split (its score decides) or the adaptive schedule (a
        stall divides the rate there); every row once an epoch (not
        sampling="replacement"); a sparse mode other than plain SGD's exact
        cumulative L1 penalty (its reference epoch owes L1 at its end and
        cannot be cut); at least 2 minibatches a segment."""
        if not (self._wide and isinstance(self.n_iter_no_change, str)) or \
                self.tol is None or partial or reuse or X_val is not None or adaptive:
            return None
        if self.sampling == "replacement" or ctx.sparse_mode == "dense":
            return None
        pen_name, alpha = self._penalty_args()
        l1_ratio = {"l2": 0.0, "l1": 1.0}.get(pen_name, float(self.l1_ratio))
        if ctx.sparse_mode == "scaled" and alpha * l1_ratio > 0:
            return None
        return progressive_marks(n, self._batch_size(n))

    def _divergence_hint(self, lr):
        """What to change: the penalty when alpha * lr alone overshoots (the
        penalty's step multiplies the weights by 1 - lr * alpha), else lr."""
        penalty, alpha = self._penalty_args()
        if alpha > 0 and alpha * lr >= 1.0:
            return (f"The penalty is the likely cause: alpha={alpha:g} times lr={lr:g} is "
                    f">= 1, so each step's {penalty} penalty overshoots; lower alpha "
                    "(alpha=...) or use a lower learning rate (lr=...).")
        return "Try a lower learning rate (lr=...)."

    def _warn_state_overflow(self, opt):
        """Adam-like second moments overflow to inf when gradients exceed ~1e154
        (float64): the steps g/sqrt(v) then become 0 and the fit "converges"
        where it started.  Say so instead of staying silent."""
        for g in opt._groups:
            for name, arrs in getattr(g, "states", {}).items():
                for a in arrs or ():
                    if isinstance(a, np.ndarray) and a.dtype.kind == "f" and \
                            not np.all(np.isfinite(a)):
                        warnings.warn(
                            f"the optimizer's {name} overflowed to infinity (gradients of "
                            "about 1e154 or more in float64, 1e19 in float32): the steps of "
                            "those weights became 0 and training stalled; scale the "
                            "features (e.g. sklearn.preprocessing.StandardScaler)",
                            RuntimeWarning, stacklevel=4)
                        return

    def _check_fit_memory(self, X, k):
        """ModelTooLargeError before anything is allocated (optkern._memory)."""
        from optkern import _memory

        n, d = X.shape
        if sp.issparse(X):
            rows = 0
        elif self.solver == "lbfgs":
            rows = n
        else:
            rows = min(n, self._batch_size(n) or n)
        opt = self.optimizer if isinstance(self.optimizer, _opt.Optimizer) else \
            self._optimizer_name()
        _memory.check_fit_memory(d, k, X.dtype, _n_states(opt),
                                 solver=self.solver, average=self.average,
                                 intercept=bool(self.fit_intercept), batch_rows=rows,
                                 what=f"{type(self).__name__}.fit")

    def _divergence_limit(self, X, y, sw, W, b):
        """A loss above this counts as diverged (as does NaN/inf): 1e4 times the
        objective of the starting weights (on up to 1000 rows), so an exploding
        run is reported instead of being mistaken for a converged one."""
        m = min(X.shape[0], 1000)
        if not W.any() and (b is None or not b.any()):
            # zero weights score every row 0, whatever X holds: one zero column
            # gives the same objective without reading X, and 128 rows are
            # plenty for a threshold four orders of magnitude away (a fresh
            # fit's start: on digits 0.25 ms -> 0.03 ms)
            m = min(m, 128)
            X, W = np.zeros((m, 1), W.dtype), np.zeros((1, W.shape[1]), W.dtype)
        # the ahead-of-time kernel when built (no JIT, ~10x the NumPy reference
        # here); the value only sets a threshold, any backend will do
        be = "cython" if _backend.cython_module("losses") is not None else "numpy"
        start, _, _ = self._batch_loss_grad(X[:m], y[:m], sw[:m], W, b, be)
        return 1e4 * max(float(start), 1e-3)

    def _finish(self, W, b, history, ctx, opt, n_epochs, rng, final=True):
        """Expose the fitted attributes (Polyak averages when ``average``)."""
        if self.average is not False and opt.average_start is not None and \
                any(g.avg_count for g in opt._groups):
            avg = opt.averaged_params()
            Wf, bf = avg[0], (avg[1] if b is not None else None)
        else:
            Wf, bf = W, b
        self._set_coef(Wf, bf)
        if final:
            self._W, self._b = W, b
            self.n_iter_ = n_epochs
            self.history_ = history
            self.t_ = ctx.t
            self._t = ctx.t
            self._opt_state = opt.state_dict()
            self._rng = rng

    def _set_coef(self, W, b):
        self.coef_ = np.ascontiguousarray(W.T)
        k = W.shape[1]
        self.intercept_ = b.copy() if b is not None else np.zeros(k, dtype=W.dtype)

    def _weights(self):
        """(W, b) as the kernels take them, from the public coef_/intercept_."""
        coef = np.asarray(self.coef_)
        W = coef.reshape(1, -1).T if coef.ndim == 1 else coef.T
        return W, np.asarray(self.intercept_).reshape(-1)

    def _fit_lbfgs(self, X, y, sw, W, b, max_epochs):
        from scipy.optimize import minimize

        d, k = W.shape
        n_w = d * k
        dtype = W.dtype
        backend = "numpy" if self.backend == "numpy" else (
            self.backend if self.backend in ("numba", "numba-parallel") else "auto")
        history = []
        t0 = time.perf_counter()

        csr = None
        if sp.issparse(X) and backend != "numpy":
            # one compiled pass over the nonzeros per evaluation, validated once
            from optkern import epochs as _ep
            from optkern.losses import CSRObjective, LOSSES

            loss_name = self._effective_loss(k)
            ctx = _Context(y=y, W=W)
            T = _ep._targets(self, ctx, LOSSES[loss_name].kind, k)
            penalty, alpha = self._penalty_args()
            l1r = {"l2": 0.0, "l1": 1.0}.get(penalty, float(self.l1_ratio))
            csr = CSRObjective(X, T, sw, W, loss_name, alpha, l1r, self.epsilon, backend)
            dW_buf = np.empty_like(W)
            db_buf = None if b is None else np.empty_like(b)
            grad = np.empty(n_w + (k if b is not None else 0))

        def fun(theta):
            W[...] = theta[:n_w].reshape(d, k)
            if b is not None:
                b[...] = theta[n_w:]
            if csr is not None:
                loss = csr(W, b, dW_buf, db_buf)
                grad[:n_w] = dW_buf.reshape(-1)
                if b is not None:
                    grad[n_w:] = db_buf
                return float(loss), grad
            loss, dW, db = self._batch_loss_grad(X, y, sw, W, b, backend)
            grad_ = np.concatenate([dW.ravel(), db if b is not None else []]).astype(np.float64)
            return float(loss), grad_

        def callback(intermediate_result):
            history.append({"epoch": len(history) + 1, "loss": float(intermediate_result.fun),
                            "val_score": None, "lr": None,
                            "time": time.perf_counter() - t0})
            if _run_callbacks(self.callbacks, history[-1]):
                raise StopIteration  # scipy >= 1.11: ends the minimisation at this iterate

        theta0 = np.concatenate([W.ravel(), b if b is not None else []]).astype(np.float64)
        # L-BFGS-B's own steps are BLAS/LAPACK calls on vectors of n_w elements
        # and m x m matrices: too small for threads, and with OpenBLAS's threads
        # on a busy machine (a compile server on the other core, another
        # program) each one waited for a descheduled thread: 13 ms a call on
        # digits against ~0.1 ms on one thread (docs/first_call.md).  The solve
        # runs with BLAS on one thread; a large dense objective that itself
        # runs on BLAS gets the threads back for its own call.
        limiter = _blas_limiter()
        heavy = csr is None and not sp.issparse(X) and X.size * k >= _LBFGS_BLAS_THREADED_WORK
        if limiter is not None and heavy:
            inner = fun

            def fun(theta):
                with limiter.limit(limits=limiter.info_threads, user_api="blas"):
                    return inner(theta)
        with (limiter.limit(limits=1, user_api="blas") if limiter is not None
              else contextlib.nullcontext()):
            res = minimize(fun, theta0, jac=True, method="L-BFGS-B", callback=callback,
                           options=lbfgs_options(self.tol, max_epochs))
        W[...] = res.x[:n_w].reshape(d, k).astype(dtype)
        if b is not None:
            b[...] = res.x[n_w:].astype(dtype)
        if not np.isfinite(res.fun):
            raise TrainingDiverged("L-BFGS produced a non-finite loss")
        self._set_coef(W, b)
        self._W, self._b = W, b
        self.n_iter_ = int(res.nit)
        self.history_ = history
        self.t_ = int(res.nit)
        self._opt_state = None
        if not res.success and res.nit >= max_epochs:
            warnings.warn(f"L-BFGS did not converge in {max_epochs} iterations",
                          ConvergenceWarning, stacklevel=3)
        return self

    def _split_validation(self, X, y, sw, rs):
        stratify = y if isinstance(self, LinearClassifier) else None
        try:
            return train_test_split(X, y, sw, test_size=self.validation_fraction,
                                    random_state=rs.randint(0, 2 ** 31 - 1), stratify=stratify)
        except ValueError:
            return train_test_split(X, y, sw, test_size=self.validation_fraction,
                                    random_state=rs.randint(0, 2 ** 31 - 1))

    def _progress(self, total):
        if not self.verbose:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            warnings.warn("verbose=True needs tqdm (pip install tqdm)", RuntimeWarning)
            return None
        return tqdm(total=total, desc=f"{type(self).__name__}({self._optimizer_name()})", unit="epoch")

    # --------------------------------------------------------------- predict
    def _decision(self, X):
        check_is_fitted(self, "coef_")
        X = self._check_X(X, reset=False)
        W, b = self._weights()
        W = W.astype(X.dtype, copy=False)
        b = b.astype(X.dtype, copy=False)
        scores = X @ W + b
        scores = np.asarray(scores)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def save(self, path):
        """Save the fitted model (arrays + JSON metadata, no pickle)."""
        from optkern.io import save
        save(self, path)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class _Context:
    """The mutable state of one fit, shared with the epoch runners."""

    def __init__(self, **kw):
        self.plateau = 1.0
        self.__dict__.update(kw)


class LinearClassifier(ClassifierMixin, _BaseLinear):
    """Linear classifier (multinomial softmax by default) trained by optkern.

    Parameters follow scikit-learn's SGDClassifier where they exist:
    ``loss`` in {"softmax", "log", "hinge", "squared_hinge", "modified_huber",
    "multiclass_hinge"} (binary losses on k > 2 classes train one-vs-rest);
    ``optimizer`` a name from ``OPTIMIZER_NAMES`` or an optimizer instance
    (its class and hyperparameters are used); ``lr=None`` takes the optimizer's
    default for this problem class; ``batch_size=1`` is per-example SGD,
    ``None`` full-batch gradient descent; ``solver="lbfgs"`` uses L-BFGS-B.

    Stopping: ``tol`` and ``n_iter_no_change`` as scikit-learn's SGDClassifier
    (the training loss, or the validation score with ``early_stopping``, must
    improve by ``tol`` within ``n_iter_no_change`` epochs).
    ``n_iter_no_change="auto"`` is 5 on dense data; on sparse, wide data
    (``sparse_wide``) it is 1, each epoch must also improve the best loss by
    1% of it, and a fit from zero weights may stop after its first epoch by
    progressive validation: every row's loss is taken before the model trains
    on it, so the first epoch's minibatch losses (penalty excluded) are
    held-out losses; the epoch runs in ``PROGRESSIVE_SEGMENTS`` = 32 compiled
    calls of equal minibatch counts (the same steps and weights as one call)
    and the fit ends after it unless the least-squares slope of the second
    half's 16 segment losses against their position is a decrease of at
    least ``PROGRESSIVE_T`` = 2 standard errors (``_progressive_t`` holds
    the statistic).  Not with ``tol=None``, ``early_stopping``,
    ``warm_start`` continuing a model, ``partial_fit``,
    ``sampling="replacement"``, the adaptive schedule,
    ``sparse_updates="dense"``, plain SGD's exact L1 penalty, or fewer than
    64 minibatches; an explicit ``n_iter_no_change`` keeps scikit-learn's rule
    alone (docs/sparse.md, "Stopping").
    """

    _losses = CLASSIFIER_LOSSES

    def __init__(self, loss="softmax", *, penalty="l2", alpha="auto", l1_ratio=0.15,
                 fit_intercept=True, optimizer="auto", lr=None, optimizer_params=None,
                 schedule=None, batch_size="auto", sampling="epoch", max_epochs=1000, tol=1e-3,
                 n_iter_no_change="auto", early_stopping=False, validation_fraction=0.1,
                 average=False, class_weight=None, warm_start=False, random_state=None,
                 backend="auto", verbose=0, callbacks=None, solver="sgd",
                 on_divergence="raise", epsilon=0.1, sparse_updates="auto"):
        super().__init__(loss=loss, epsilon=epsilon, sparse_updates=sparse_updates,
                         penalty=penalty, alpha=alpha, l1_ratio=l1_ratio,
                         fit_intercept=fit_intercept, optimizer=optimizer, lr=lr,
                         optimizer_params=optimizer_params, schedule=schedule,
                         batch_size=batch_size, sampling=sampling, max_epochs=max_epochs,
                         tol=tol, n_iter_no_change=n_iter_no_change,
                         early_stopping=early_stopping,
                         validation_fraction=validation_fraction, average=average,
                         warm_start=warm_start, random_state=random_state, backend=backend,
                         verbose=verbose, callbacks=callbacks, solver=solver,
                         on_divergence=on_divergence)
        self.class_weight = class_weight

    def _validate_fit_data(self, X, y, reset, classes=None):
        plain = self._plain_fit_data(X, y, reset, "iub")
        if plain is not None:
            X, y = plain
        else:
            X, y = validate_data(self, X, y, reset=reset, accept_sparse="csr",
                                 dtype=[np.float64, np.float32], order="C")
        if not (y.ndim == 1 and y.dtype.kind in "iub"):
            # integer labels in 1-D are always "binary" or "multiclass";
            # anything else gets scikit-learn's full (slower) inspection
            check_classification_targets(y)
        labels = np.unique(y)
        if reset:
            classes = labels if classes is None else np.unique(np.asarray(classes))
            if classes.shape[0] < 2:
                raise ValueError(f"y has {classes.shape[0]} class; a classifier needs at "
                                 "least 2 classes")
            self.classes_ = classes
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError("classes differs from the classes of the first partial_fit")
        unseen = np.setdiff1d(labels, self.classes_, assume_unique=True)
        if unseen.size:
            raise ValueError(f"y has labels {unseen.tolist()} not in classes_ "
                             f"{self.classes_.tolist()}")
        y_idx = np.searchsorted(self.classes_, y)
        return X, self._encode_y(y_idx, X.dtype)

    def _encode_y(self, y_idx, dtype):
        if self._n_outputs() == 1:  # binary: y in {0, 1}
            return y_idx.astype(dtype)
        return y_idx.astype(np.int64)

    def _n_outputs(self):
        k = len(self.classes_)
        return 1 if k == 2 else k

    def _effective_loss(self, k):
        if k == 1 and self.loss == "softmax":
            return "log"  # two-class softmax is the logistic loss on one output
        if k == 1 and self.loss == "multiclass_hinge":
            return "hinge"  # Crammer-Singer on two classes is the binary hinge
        return self.loss

    def _class_weight_factors(self, y):
        if self.class_weight is None:
            return np.ones(y.shape[0])
        idx = y.astype(np.int64) if self._n_outputs() > 1 else y.astype(np.int64)
        cw = compute_class_weight(self.class_weight, classes=self.classes_,
                                  y=self.classes_[idx])
        return cw[idx]

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y); ``classes`` is required on the first call."""
        if not hasattr(self, "coef_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return super().partial_fit(X, y, sample_weight=sample_weight, classes=classes)

    def decision_function(self, X):
        """Scores X W + b: shape (n,) for two classes (positive: classes_[1]),
        else (n, n_classes)."""
        return self._decision(X)

    def predict(self, X):
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.int64)]
        return self.classes_[np.argmax(scores, axis=1)]

    def _has_proba(self):
        return self.loss in ("softmax", "log", "modified_huber")

    @available_if(_has_proba)
    def predict_proba(self, X):
        """Class probabilities: softmax, logistic (one-vs-rest normalised) or
        modified_huber's (clip(z, -1, 1) + 1) / 2 (scikit-learn's definition)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            scores = scores[:, None]
        if self.loss == "softmax" and scores.shape[1] > 1:
            z = scores - scores.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        if self.loss == "modified_huber":
            p = (np.clip(scores, -1, 1) + 1) / 2
        else:
            p = 0.5 * (1 + np.tanh(0.5 * scores))  # stable logistic
        if p.shape[1] == 1:
            return np.hstack([1 - p, p])
        s = p.sum(axis=1, keepdims=True)
        zero = s[:, 0] == 0
        p[zero] = 1.0 / p.shape[1]
        s[zero] = 1.0
        return p / s

    @available_if(_has_proba)
    def predict_log_proba(self, X):
        if self.loss == "softmax":
            scores = self.decision_function(X)
            if scores.ndim == 1:
                scores = np.column_stack([np.zeros_like(scores), scores])
            z = scores - scores.max(axis=1, keepdims=True)
            return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class LinearRegressor(RegressorMixin, _BaseLinear):
    """Linear regressor trained by optkern: ``loss`` in {"squared", "huber",
    "epsilon_insensitive", "absolute"}; y of shape (n,) or (n, n_outputs).
    Stopping as ``LinearClassifier``'s (``n_iter_no_change="auto"`` on
    sparse, wide data: the first-epoch rule by progressive validation)."""

    _losses = REGRESSOR_LOSSES

    def __init__(self, loss="squared", *, penalty="l2", alpha="auto", l1_ratio=0.15,
                 fit_intercept=True, optimizer="auto", lr=None, optimizer_params=None,
                 schedule=None, batch_size="auto", sampling="epoch", max_epochs=1000, tol=1e-3,
                 n_iter_no_change="auto", early_stopping=False, validation_fraction=0.1,
                 average=False, warm_start=False, random_state=None, backend="auto",
                 verbose=0, callbacks=None, solver="sgd", on_divergence="raise",
                 epsilon=0.1, sparse_updates="auto"):
        super().__init__(loss=loss, epsilon=epsilon, sparse_updates=sparse_updates,
                         penalty=penalty, alpha=alpha, l1_ratio=l1_ratio,
                         fit_intercept=fit_intercept, optimizer=optimizer, lr=lr,
                         optimizer_params=optimizer_params, schedule=schedule,
                         batch_size=batch_size, sampling=sampling, max_epochs=max_epochs,
                         tol=tol, n_iter_no_change=n_iter_no_change,
                         early_stopping=early_stopping,
                         validation_fraction=validation_fraction, average=average,
                         warm_start=warm_start, random_state=random_state, backend=backend,
                         verbose=verbose, callbacks=callbacks, solver=solver,
                         on_divergence=on_divergence)

    def _validate_fit_data(self, X, y, reset):
        plain = self._plain_fit_data(X, y, reset, "fiu")
        if plain is not None:
            X, y = plain
        else:
            X, y = validate_data(self, X, y, reset=reset, accept_sparse="csr",
                                 dtype=[np.float64, np.float32], order="C",
                                 multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=X.dtype)
        if reset:
            self._y_ndim = y.ndim
            self._k = 1 if y.ndim == 1 else y.shape[1]
        elif (1 if y.ndim == 1 else y.shape[1]) != self._k:
            raise ValueError(f"y has {1 if y.ndim == 1 else y.shape[1]} outputs, the model "
                             f"was fitted with {self._k}")
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or infinity")
        return X, np.ascontiguousarray(y)

    def _n_outputs(self):
        return self._k

    def _set_coef(self, W, b):
        super()._set_coef(W, b)
        if self._y_ndim == 1:
            self.coef_ = self.coef_[0].copy()

    def predict(self, X):
        return self._decision(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
