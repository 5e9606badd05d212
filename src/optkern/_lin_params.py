"""Parameters of the linear estimators and their validation.

``LinearParams`` is the part of ``optkern.estimators._BaseLinear`` that
holds the constructor's parameters (scikit-learn's convention: stored as
given, checked when a fit starts), checks them (``_validate_params``: every
message names the argument and what was expected) and checks the data a fit
gets: ``_check_X``, the fast path ``_plain_fit_data`` for arrays that need no
conversion, ``_sample_weight`` (with the classifier's class weights) and,
once per fit, ``_check_csr_structure`` for CSR input.  The subclasses supply
``_validate_fit_data``, ``_encode_y``, ``_n_outputs`` and
``_effective_loss`` per problem kind.
"""

import math
import numbers

import numpy as np
from sklearn.utils.validation import validate_data, _check_sample_weight

from optkern import _backend
from optkern import optimizers as _opt
from optkern import schedules as _sched

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



class LinearParams:
    """The constructor's parameters, their validation and the fit's input checks."""

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

    def _encode_y(self, y):
        raise NotImplementedError

    def _n_outputs(self):
        raise NotImplementedError

    def _effective_loss(self, k):
        """The kernel loss for k outputs (binary problems use one output)."""
        return self.loss
