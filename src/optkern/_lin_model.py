"""The fitted linear model: its attributes, decision function and saving.

``FittedModel`` is the part of ``optkern.estimators._BaseLinear`` that
turns the kernels' (W, b) into scikit-learn's ``coef_``/``intercept_`` and
back (``_set_coef``, ``_weights``), scores new data (``_decision``, which
the subclasses' ``predict``, ``decision_function`` and ``predict_proba``
use), saves the model (``save``: ``optkern.io``, arrays and JSON, no pickle)
and declares its scikit-learn tags.
"""

import numpy as np
from sklearn.utils.validation import check_is_fitted


class FittedModel:
    """coef_/intercept_, the decision function, save, the scikit-learn tags."""

    def _set_coef(self, W, b):
        self.coef_ = np.ascontiguousarray(W.T)
        k = W.shape[1]
        self.intercept_ = b.copy() if b is not None else np.zeros(k, dtype=W.dtype)

    def _weights(self):
        """(W, b) as the kernels take them, from the public coef_/intercept_."""
        coef = np.asarray(self.coef_)
        W = coef.reshape(1, -1).T if coef.ndim == 1 else coef.T
        return W, np.asarray(self.intercept_).reshape(-1)

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
