"""When the linear estimators' minibatch fit stops, and what it keeps.

``Stopping`` is the part of ``optkern.estimators._BaseLinear`` that holds
the rules ending a fit other than ``max_epochs``: scikit-learn's stall rule
(``_Stall``: ``tol`` and ``n_iter_no_change`` on the training loss or the
validation score), the first-epoch rule by progressive validation
(``progressive_marks``, ``progressive_trend``, ``_progressive_marks``),
callbacks returning False (``_run_callbacks``), and divergence: a loss above
``_divergence_limit`` or not finite restores the last good epoch (kept by
``_snapshot_into``) and raises ``TrainingDiverged`` with ``_divergence_hint``
(or warns); ``_warn_state_overflow`` reports optimizer state that overflowed.
The loop that applies them is ``optkern._lin_fit``.
"""

import math
import warnings

import numpy as np

from optkern import _backend
from optkern.kernels import penalty as _penalty
from optkern._lin_defaults import DENSE_DEFAULT_N_ITER_NO_CHANGE

# A sparse, wide fit (SPARSE_WIDE_DEFAULTS, optkern._lin_defaults) may also
# stop after its first epoch, by progressive validation: a fresh
# fit's first epoch scores every row before it trains on it, so the mean
# minibatch loss (taken before each step, penalty excluded) of a later part
# of that epoch is a held-out loss of the model as it was then.  The first
# epoch runs in PROGRESSIVE_SEGMENTS compiled calls of equal minibatch counts
# (the same steps and weights as one call); when the least-squares slope of
# the held-out losses of the second half's segments against their position
# is not a decrease of at least PROGRESSIVE_T standard errors (a one-sided
# test at about 97.5%), the held-out loss has stopped improving measurably
# and the fit ends after one epoch; otherwise the epochs continue under the
# stall rule (_Stall).  At 240,000 rows: 2 classes t = 1.0 and -1.2 (two row orders:
# stop, test accuracy 0.746 against 0.747 after 3 epochs, 2.6x faster than
# SGDClassifier), 20 classes t = 3.0 and 2.9 (continue: 0.160, as before); at
# 20,000 rows 2 classes t = 3.0 and 2.1 (continue), 20 classes 1.0 and 0.04
# (stop: 0.141 against 0.144 after 3) (docs/sparse.md, "Seventh round").
PROGRESSIVE_SEGMENTS = 32
PROGRESSIVE_T = 2.0
# schedule=None ("adaptive"): stop dividing the rate by 5 below this
ADAPTIVE_MIN_LR = 1e-6



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



def _run_callbacks(callbacks, row):
    """Call every callback with its own copy of the epoch's history row (all
    of them, every epoch: one callback's answer never skips the next one);
    True when any returned False, which stops training as the README says.
    Any other return value (None, True, ...) continues."""
    answers = [cb(dict(row)) for cb in (callbacks or ())]
    return any(a is False or (isinstance(a, np.bool_) and not a) for a in answers)



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



class TrainingDiverged(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""
    # public as optkern.estimators.TrainingDiverged (tracebacks, pickles)
    __module__ = "optkern.estimators"


class Stopping:
    """The first-epoch rule's cuts and the divergence check of the fit loop."""

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
        alpha, l1_ratio = self._penalty_terms()
        if ctx.sparse_mode == "scaled" and _penalty.l1_strength(alpha, l1_ratio) > 0:
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
