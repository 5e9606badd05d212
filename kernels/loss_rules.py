"""The per-row loss rules, each written once.

Two shapes of rule, both plain Python (this module imports only ``math`` so
that the Cython generator can read it without Numba installed):

*scalar rule* -- regression and binary losses, applied to every output::

    rule(z, y, epsilon) -> (loss, dloss_dz)

  ``z`` is one score, ``y`` its target (a real value for regression, 0.0 or
  1.0 for the binary losses, which use ``s = 2*y - 1``), ``epsilon`` the
  loss parameter (Huber's and epsilon-insensitive's width; ignored by the
  others).  A row's loss is the sum over its outputs.

*row rule* -- multiclass losses that couple the scores of one row::

    rule(z, y, epsilon, dz) -> loss

  ``z`` is the row of k scores, ``y`` the integer class index, ``dz`` the row
  of k derivatives the rule writes.  ``dz`` may be the same array as ``z``
  (the BLAS path computes the scores and their derivatives in one buffer), so
  a rule reads every score it needs before it writes that slot.

The drivers compile these texts into Numba serial / parallel / CUDA kernels
(``loss_drivers.py``) and into C functions for the Cython kernels
(``cython/generate_losses.py``).  So a rule may use only arithmetic,
comparisons, ``if``/``for`` over ``range``, ``abs`` and ``math.exp``,
``math.log``, ``math.log1p``; local variables whose names start with ``j``
are integer indices, every other local is a real number of the data's dtype.

Conventions at the kinks (subgradients, also in docs/losses.md): ``absolute``
and ``epsilon_insensitive`` use derivative 0 at their kinks; ``hinge``,
``squared_hinge`` and ``modified_huber`` are zero from margin ``s*z >= 1``
(derivative 0 there, as scikit-learn's ``dloss`` for ``squared_hinge`` and
``modified_huber``; scikit-learn's hinge takes -s at exactly 1); the
Crammer-Singer hinge picks the first (lowest index) of tied runners-up.
"""

import math
from collections import namedtuple

LossSpec = namedtuple("LossSpec", "name rule kind target smooth default_epsilon")
LossSpec.__doc__ = """One loss.

name     registry key
rule     the scalar or row rule
kind     "scalar" (per output) or "row" (per row of scores)
target   "regression" (real y, (n,) or (n, k)), "binary" (y in {0, 1}, one
         output) or "multiclass" (integer class index 0..k-1)
smooth   True when the derivative is continuous (check_grad is exact)
default_epsilon  the parameter's default (scikit-learn's SGD defaults)
"""

LOSS_RULES = {}


def register(spec):
    if spec.name in LOSS_RULES:
        raise ValueError(f"loss {spec.name!r} is registered twice")
    LOSS_RULES[spec.name] = spec
    return spec


# ---------------------------------------------------------------- regression


def squared_loss(z, y, epsilon):
    r = z - y
    return 0.5 * r * r, r


def huber_loss(z, y, epsilon):
    r = z - y
    if abs(r) <= epsilon:
        return 0.5 * r * r, r
    if r > 0:
        return epsilon * r - 0.5 * epsilon * epsilon, epsilon
    return -epsilon * r - 0.5 * epsilon * epsilon, -epsilon


def epsilon_insensitive_loss(z, y, epsilon):
    r = z - y
    if r > epsilon:
        return r - epsilon, 1.0
    if r < -epsilon:
        return -r - epsilon, -1.0
    return 0.0, 0.0


def absolute_loss(z, y, epsilon):
    r = z - y
    if r > 0:
        return r, 1.0
    if r < 0:
        return -r, -1.0
    return 0.0, 0.0


# -------------------------------------------------------------------- binary


def log_loss(z, y, epsilon):
    # log(1 + exp(-m)) with m = s*z, never exponentiating a positive number
    s = 2.0 * y - 1.0
    m = s * z
    if m > 0:
        e = math.exp(-m)
        return math.log1p(e), -s * e / (1.0 + e)
    e = math.exp(m)
    return math.log1p(e) - m, -s / (1.0 + e)


def hinge_loss(z, y, epsilon):
    s = 2.0 * y - 1.0
    m = s * z
    if m < 1.0:
        return 1.0 - m, -s
    return 0.0, 0.0


def squared_hinge_loss(z, y, epsilon):
    s = 2.0 * y - 1.0
    m = s * z
    if m < 1.0:
        r = 1.0 - m
        return r * r, -2.0 * s * r
    return 0.0, 0.0


def modified_huber_loss(z, y, epsilon):
    # scikit-learn's ModifiedHuber: quadratically smoothed hinge, linear below -1
    s = 2.0 * y - 1.0
    m = s * z
    if m >= 1.0:
        return 0.0, 0.0
    if m >= -1.0:
        r = 1.0 - m
        return r * r, -2.0 * s * r
    return -4.0 * m, -4.0 * s


# ---------------------------------------------------------------- multiclass


def softmax_row(z, y, epsilon, dz):
    # cross-entropy of the softmax, via log-sum-exp shifted by the row maximum
    zy = z[y]
    zmax = z[0]
    for j in range(1, z.shape[0]):
        # (written as max: the vector form's max_fast, kernels/_helpers.py,
        # makes this reduction vector code)
        zmax = max(zmax, z[j])
    # the exponentials first, then their sum: a loop that only writes can be
    # vectorised (the in-order sum cannot), so the compiled exp runs on whole
    # vectors (kernels/_helpers.py exp_fast: 2.0 vs 4.0 ns per score at k=100)
    for j in range(z.shape[0]):
        dz[j] = math.exp(z[j] - zmax)
    total = 0.0
    for j in range(z.shape[0]):
        total = total + dz[j]
    inv = 1.0 / total
    for j in range(z.shape[0]):
        dz[j] = dz[j] * inv
    dz[y] = dz[y] - 1.0
    return math.log(total) + (zmax - zy)


def multiclass_hinge_row(z, y, epsilon, dz):
    # Crammer-Singer: max(0, 1 + max_{j != y} z_j - z_y)
    zy = z[y]
    jbest = -1
    best = 0.0
    for j in range(z.shape[0]):
        if j != y:
            if jbest < 0 or z[j] > best:
                jbest = j
                best = z[j]
        dz[j] = 0.0
    if jbest < 0:
        return 0.0
    margin = 1.0 + best - zy
    if margin > 0.0:
        dz[jbest] = 1.0
        dz[y] = -1.0
        return margin
    return 0.0


register(LossSpec("squared", squared_loss, "scalar", "regression", True, 0.1))
register(LossSpec("huber", huber_loss, "scalar", "regression", True, 0.1))
register(LossSpec("epsilon_insensitive", epsilon_insensitive_loss, "scalar",
                  "regression", False, 0.1))
register(LossSpec("absolute", absolute_loss, "scalar", "regression", False, 0.1))
register(LossSpec("log", log_loss, "scalar", "binary", True, 0.1))
register(LossSpec("hinge", hinge_loss, "scalar", "binary", False, 0.1))
register(LossSpec("squared_hinge", squared_hinge_loss, "scalar", "binary", True, 0.1))
register(LossSpec("modified_huber", modified_huber_loss, "scalar", "binary", True, 0.1))
register(LossSpec("softmax", softmax_row, "row", "multiclass", True, 0.1))
register(LossSpec("multiclass_hinge", multiclass_hinge_row, "row", "multiclass",
                  False, 0.1))
