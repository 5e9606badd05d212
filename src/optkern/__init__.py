"""optkern: compiled optimizer kernels for training linear and softmax models.

Layers (README has an example of each):

* ``optkern.kernels``: plain functional kernels (updates, loss building
  blocks) callable from ``@njit`` code;
* the optimizer classes (torch.optim's names and algorithms), ``SGD``,
  ``Adam``, ... with ``backend="numpy" | "numba" | "numba-parallel" |
  "cython" | "cuda" | "auto"``;
* ``loss_and_grad``, ``predict_scores``, ``check_grad``: minibatch loss and
  gradient of linear and softmax models;
* ``LinearClassifier``, ``LinearRegressor``: scikit-learn estimators whose
  epochs run compiled; ``schedules``; ``load`` for saved models;
* the ``optkern`` command (``optkern.cli``).
"""

__version__ = "0.1.0"

from ._backend import BACKENDS, available_backends  # noqa: F401
from .optimizers import (  # noqa: F401
    FTRL, SGD, SGLD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam, Optimizer, RAdam, RMSprop,
    OPTIMIZER_NAMES, OPTIMIZERS,
)
from .losses import loss_and_grad, predict_scores, check_grad, LOSSES  # noqa: F401

from . import schedules  # noqa: F401,E402
from .io import load  # noqa: F401


def __getattr__(name):
    # the estimators import scikit-learn (about a second): only on first use
    if name in ("LinearClassifier", "LinearRegressor"):
        from . import estimators

        return getattr(estimators, name)
    from . import optimizers   # the class of a rule registered at run time

    try:
        return optimizers.optimizer_class(name)
    except KeyError:
        pass
    raise AttributeError(f"module 'optkern' has no attribute {name!r}")
