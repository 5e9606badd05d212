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

``_BaseLinear`` is put together from one mixin per concern, each in its own
module: ``_lin_params.LinearParams`` (the parameters, their validation, the
input checks), ``_lin_defaults.DataDefaults`` (what the "auto" parameters
resolve to for the data), ``_lin_epochs.Epochs`` (an epoch's order and the
call that trains it: compiled, sparse or the reference loop),
``_lin_stopping.Stopping`` (stall, progressive validation, callbacks,
divergence), ``_lin_fit.FitLoop`` (fit, partial_fit: the loop over epochs),
``_lin_lbfgs.LbfgsFit`` (solver="lbfgs") and ``_lin_model.FittedModel``
(coef_/intercept_, the decision function, save).  They share the instance
attributes the fit sets (``_W``, ``_b``, ``_opt_state``, ``_rng``, ``_t``,
``_sparse_wide_fit``, ``_fit_rows``) and the fit's ``_Context``.  This module
keeps the composed class, the classifier and the regressor, and every name
it had before the split.
"""

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data
from sklearn.utils._available_if import available_if

# every name this module had before the split, for the modules, tests and
# user code that import them from here (the imported ones too)
import contextlib, functools, math, numbers, time, warnings  # noqa: E401,F401
import scipy.sparse as sp  # noqa: F401
from sklearn.exceptions import ConvergenceWarning  # noqa: F401
from sklearn.utils import check_random_state  # noqa: F401
from sklearn.utils.validation import check_is_fitted, _check_sample_weight  # noqa: F401
from optkern import _backend, _jit  # noqa: F401
from optkern import optimizers as _opt  # noqa: F401
from optkern import schedules as _sched  # noqa: F401
from optkern._lin_defaults import (  # noqa: F401
    DENSE_DEFAULT_ALPHA, DENSE_DEFAULT_N_ITER_NO_CHANGE, DENSE_DEFAULT_OPTIMIZER,
    SPARSE_WIDE_DEFAULTS, SPARSE_WIDE_MAX_DENSITY, SPARSE_WIDE_MIN_FEATURES, DataDefaults,
    sparse_wide)
from optkern._lin_epochs import (  # noqa: F401
    EPOCH_BLOCK_WORK, SPARSE_EPOCH_BLOCK_WORK, Epochs, _block_rows, _blocked_epoch, _draw_order)
from optkern._lin_fit import FitLoop, _Context, _derived_seed, _n_states  # noqa: F401
from optkern._lin_lbfgs import (  # noqa: F401
    _LBFGS_BLAS_THREADED_WORK, _LIMITER, LbfgsFit, _blas_limiter, lbfgs_options)
from optkern._lin_model import FittedModel
from optkern._lin_params import (  # noqa: F401
    BINARY_LOSSES, CLASSIFIER_LOSSES, OPTIMIZER_NAMES, PENALTIES, REGRESSOR_LOSSES, SAMPLINGS,
    SMOOTH_LOSSES, _SPARSE_MODES, LinearParams, _check_csr_structure, _choice, _int_param,
    _real_param)
from optkern._lin_stopping import (  # noqa: F401
    ADAPTIVE_MIN_LR, PROGRESSIVE_SEGMENTS, PROGRESSIVE_T, Stopping, TrainingDiverged, _Stall,
    _run_callbacks, _snapshot_into, progressive_marks, progressive_trend)

__all__ = ["LinearClassifier", "LinearRegressor", "OPTIMIZER_NAMES"]


class _BaseLinear(LinearParams, DataDefaults, Epochs, Stopping, FitLoop, LbfgsFit, FittedModel,
                  BaseEstimator):
    """The linear estimators' common part: the mixins above, ahead of
    scikit-learn's BaseEstimator (whose ``_validate_params`` and
    ``__sklearn_tags__`` they override or extend)."""

    _losses = ()

    def _split_validation(self, X, y, sw, rs):
        stratify = y if isinstance(self, LinearClassifier) else None
        try:
            return train_test_split(X, y, sw, test_size=self.validation_fraction,
                                    random_state=rs.randint(0, 2 ** 31 - 1), stratify=stratify)
        except ValueError:
            return train_test_split(X, y, sw, test_size=self.validation_fraction,
                                    random_state=rs.randint(0, 2 ** 31 - 1))


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
