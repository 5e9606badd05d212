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

The embedding API (docs/embedding.md; kernels/embed.py), for package authors
who call the kernels from their own ``@njit`` code::

    <rule>_prepare(step, scalars, lr, *user_hyper[1:]) -> (kernel_hyper, scalars)
    <rule>_loop(p, g, *states, avg, hyper, avg_weight, key, offset)   (1-D arrays)
    check_loss_buffers(n_features, n_outputs, has_intercept, dW, db, scratch, n_chunks)
    CACHE_TAG        changes with optkern's kernels: fold it into your cached
                     functions as a default argument (``_optkern=CACHE_TAG``)
    OPTKERN_VERSION  optkern's version

Stability: the names in ``__all__`` and their argument order are public;
an incompatible change is listed in docs/embedding.md.
"""

from .rules import RULES
# before any compiled module of the package: Numba's cache of a hand-written
# module is keyed on the kernels sources it imports too (_numba_cache.py)
from . import _numba_cache  # noqa: F401
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

# name exported here -> name in kernels/embed.py (imported on first use)
_EMBED_EXPORTS = ("CACHE_TAG", "OPTKERN_VERSION", "check_loss_buffers", "prepare_kernel",
                  "loop_kernel")

__all__ = (list(KERNEL_NAMES) + [f"{n}_rows" for n in KERNEL_NAMES]
           + [f"{n}_prepare" for n in KERNEL_NAMES] + [f"{n}_loop" for n in KERNEL_NAMES]
           + list(_LOSS_EXPORTS)
           + list(_EMBED_EXPORTS) + ["KERNEL_NAMES", "RULES", "LOSS_RULES", "noise_key"])


def __getattr__(name):
    if name.endswith("_rows") and name[:-5] in RULES:
        # the row-indexed (lazy) form: kernels/sparse_drivers.py
        from . import sparse_drivers

        fn = sparse_drivers.module_for(name[:-5]).functional
        globals()[name] = fn
        return fn
    if name.endswith("_prepare") and name[:-8] in RULES:
        from . import embed

        fn = embed.prepare_kernel(name[:-8])
        globals()[name] = fn
        return fn
    if name.endswith("_loop") and name[:-5] in RULES:
        from . import embed

        fn = embed.loop_kernel(name[:-5])
        globals()[name] = fn
        return fn
    if name in _EMBED_EXPORTS:
        from . import embed

        value = getattr(embed, name)
        globals()[name] = value
        return value
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
