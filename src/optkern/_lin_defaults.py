"""What the linear estimators' "auto" parameters resolve to for a data set.

``DataDefaults`` is the part of ``optkern.estimators._BaseLinear`` that
turns ``optimizer="auto"``, ``alpha="auto"``, ``batch_size="auto"``,
``n_iter_no_change="auto"`` and ``schedule=None`` into values for the data
of a fit: the sparse, wide defaults (``SPARSE_WIDE_DEFAULTS``, chosen by
``sparse_wide``) or the dense ones, recorded once per fit by
``_set_data_defaults`` (``partial_fit`` keeps its first call's choice); and
the penalty the gradient carries (``_penalty_args``: none with FTRL, which
applies it proximally; ``_penalty_terms``: its alpha and l1_ratio).
"""

import scipy.sparse as sp

from optkern import optimizers as _opt
from optkern.kernels.penalty import l1_ratio_of

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
DENSE_DEFAULT_ALPHA = 1e-4
DENSE_DEFAULT_OPTIMIZER = "adam"
DENSE_DEFAULT_N_ITER_NO_CHANGE = 5


def sparse_wide(X):
    """Whether X gets the sparse, wide defaults (see SPARSE_WIDE_DEFAULTS)."""
    if not sp.issparse(X) or X.shape[0] == 0:
        return False
    n, d = X.shape
    return d >= SPARSE_WIDE_MIN_FEATURES and X.nnz <= SPARSE_WIDE_MAX_DENSITY * n * d



class DataDefaults:
    """The "auto" parameters resolved for the fit's data."""

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

    def _penalty_terms(self, for_gradient=True):
        """(alpha, l1_ratio) of the kernels' elastic-net form of
        ``_penalty_args`` (kernels/penalty.py)."""
        penalty, alpha = self._penalty_args(for_gradient)
        return alpha, l1_ratio_of(penalty, self.l1_ratio)

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
