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

Each also has a row-indexed form, ``optkern.kernels.<name>_rows(param, grad,
rows, <states>, step, <hyperparameters>, ...)``: the lazy sparse step on the
given rows of a C-contiguous (d, k) parameter, grad of shape (len(rows), k)
(kernels/sparse_drivers.py).

They are Numba dispatchers, so they can be called from Python and from your
own ``@njit`` functions.  They do NOT check shapes, dtypes or finiteness:
that is the optimizer classes' job.

The hyperparameter order of each kernel is ``rules.RULES[name].user_hyper``.

Loss and gradient building blocks (docs/losses.md), also ``@njit``-callable::

    loss_kernel(loss, layout="dense"|"csr"|"blas", parallel=False)
        -> e.g. dense_serial(X, y, sw, W, b, alpha, l1_ratio, epsilon, dW, db, scratch)
    loss_scratch_size(n_chunks, n_features, n_outputs)
    loss_penalty_add(W, dW, alpha, l1_ratio)
    predict_dense(X, W, b, out, WT), predict_dense_parallel(...)
    predict_csr(data, indices, indptr, W, b, out), predict_csr_parallel(...)
    LOSS_RULES  (name -> rule spec, kernels/loss_rules.py)
"""

from .rules import RULES
from ._helpers import step_key as noise_key  # noqa: F401

KERNEL_NAMES = tuple(RULES)

# name exported here -> name in loss_drivers (imported on first use: it is
# the larger module and most users of the update kernels never need it)
_LOSS_EXPORTS = {
    "loss_kernel": "kernel",
    "loss_scratch_size": "scratch_size",
    "loss_penalty_add": "penalty_add",
    "predict_dense": "predict_dense",
    "predict_dense_parallel": "predict_dense_parallel",
    "predict_csr": "predict_csr",
    "predict_csr_parallel": "predict_csr_parallel",
}

__all__ = (list(KERNEL_NAMES) + [f"{n}_rows" for n in KERNEL_NAMES] + list(_LOSS_EXPORTS)
           + ["KERNEL_NAMES", "RULES", "LOSS_RULES", "noise_key"])


def __getattr__(name):
    if name.endswith("_rows") and name[:-5] in RULES:
        # the row-indexed (lazy) form: kernels/sparse_drivers.py
        from . import sparse_drivers

        fn = sparse_drivers.module_for(name[:-5]).functional
        globals()[name] = fn
        return fn
    if name in RULES:
        from . import drivers

        fn = drivers.module_for(name).functional
        globals()[name] = fn
        return fn
    if name in _LOSS_EXPORTS:
        from . import loss_drivers

        fn = getattr(loss_drivers, _LOSS_EXPORTS[name])
        globals()[name] = fn
        return fn
    if name == "LOSS_RULES":
        from .loss_rules import LOSS_RULES

        globals()[name] = LOSS_RULES
        return LOSS_RULES
    raise AttributeError(f"module 'optkern.kernels' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
