"""optkern.kernels: the hot loops, and the plain functional kernels.

One functional kernel per optimizer, compiled from the same rule as the
optimizer classes (``rules.py`` -> generated Numba driver)::

    optkern.kernels.adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step,
                         lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                         bias_correction, decoupled)

Each updates caller-owned C-contiguous arrays (any shape, float32 or float64)
in place, and returns the new scalar-state tuple (empty except for NAdam's
``(mu_product,)``; pass it back as ``scalar_state=``).  Optional states
(``max_exp_avg_sq`` without amsgrad, ``momentum_buffer`` without momentum,
...) are passed as ``None``.  Keyword extras: ``average``/``average_weight``
(Polyak averaging in the same pass), ``noise_key``/``noise_offset`` (Gaussian
noise of SGD/SGLD, a uint64 from ``optkern.kernels.noise_key(seed, step)``).

They are Numba dispatchers, so they can be called from Python and from your
own ``@njit`` functions.  They do NOT check shapes, dtypes or finiteness:
that is the optimizer classes' job.

The hyperparameter order of each kernel is ``rules.RULES[name].user_hyper``.
"""

from .rules import RULES
from ._helpers import step_key as noise_key  # noqa: F401

KERNEL_NAMES = tuple(RULES)

__all__ = list(KERNEL_NAMES) + ["KERNEL_NAMES", "RULES", "noise_key"]


def __getattr__(name):
    if name in RULES:
        from . import drivers

        fn = drivers.module_for(name).functional
        globals()[name] = fn
        return fn
    raise AttributeError(f"module 'optkern.kernels' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(KERNEL_NAMES))
