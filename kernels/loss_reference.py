"""The NumPy reference of the losses: readable, vectorised, the oracle.

``loss_and_grad(X, Y, W, b, loss, alpha, l1_ratio, sample_weight, epsilon)``
computes, for X dense or scipy.sparse (n, d), W (d, k), b (k,) or None::

    Z      = X W + b                                 scores (n, k)
    L_i    = loss of row i (sum over outputs for the per-output losses)
    obj    = sum_i w_i L_i / sum_i w_i  +  alpha * (l1_ratio * ||W||_1
                                         + 0.5 * (1 - l1_ratio) * ||W||^2)
    dW     = X^T (w * dZ) / sum(w)  +  alpha * (l1_ratio * sign(W) + (1 - l1_ratio) * W)
    db     = sum_i w_i dZ_i / sum(w)                 (the intercept is not penalised)

l2 is ``l1_ratio=0``, l1 is ``l1_ratio=1``.  sign(0) = 0 is the subgradient
of |W| used at 0.  With sum(w) = 0 the data term and its gradient are 0.

Y is already in the kernel form (see ``optkern.losses``): (n, k) reals for the
regression losses, (n, 1) of 0.0/1.0 for the binary ones, (n,) integer class
indices for the multiclass ones.  Everything is computed in X's dtype.
"""

import numpy as np


def _binary_margin(Z, Y):
    s = 2.0 * Y - 1.0
    return s, s * Z


def rows_loss_dz(loss, Z, Y, epsilon):
    """Per-row loss (n,) and derivative with respect to the scores dZ (n, k)."""
    dt = Z.dtype.type
    eps = dt(epsilon)
    if loss == "squared":
        R = Z - Y
        return 0.5 * (R * R).sum(axis=1), R
    if loss == "huber":
        R = Z - Y
        inside = np.abs(R) <= eps
        L = np.where(inside, 0.5 * R * R, eps * np.abs(R) - 0.5 * eps * eps)
        return L.sum(axis=1), np.where(inside, R, eps * np.sign(R))
    if loss == "epsilon_insensitive":
        R = Z - Y
        L = np.maximum(np.abs(R) - eps, 0)
        return L.sum(axis=1), np.where(np.abs(R) > eps, np.sign(R), 0).astype(Z.dtype)
    if loss == "absolute":
        R = Z - Y
        return np.abs(R).sum(axis=1), np.sign(R)
    if loss == "log":
        s, m = _binary_margin(Z, Y)
        # log(1 + exp(-m)) = logaddexp(0, -m), stable for any m
        L = np.logaddexp(0, -m)
        return L.sum(axis=1), -s * np.exp(-np.logaddexp(0, m))
    if loss == "hinge":
        s, m = _binary_margin(Z, Y)
        active = m < 1
        return np.where(active, 1 - m, 0).sum(axis=1), np.where(active, -s, 0)
    if loss == "squared_hinge":
        s, m = _binary_margin(Z, Y)
        R = np.maximum(1 - m, 0)
        return (R * R).sum(axis=1), -2 * s * R
    if loss == "modified_huber":
        s, m = _binary_margin(Z, Y)
        R = np.maximum(1 - m, 0)
        L = np.where(m >= -1, R * R, -4 * m)
        dZ = np.where(m >= -1, -2 * s * R, -4 * s)
        return L.sum(axis=1), dZ
    n, k = Z.shape
    rows = np.arange(n)
    if loss == "softmax":
        zmax = Z.max(axis=1, keepdims=True)
        E = np.exp(Z - zmax)
        total = E.sum(axis=1, keepdims=True)
        L = np.log(total[:, 0]) + zmax[:, 0] - Z[rows, Y]
        dZ = E / total
        dZ[rows, Y] -= 1
        return L, dZ
    if loss == "multiclass_hinge":
        others = Z.copy()
        others[rows, Y] = -np.inf
        runner_up = np.argmax(others, axis=1)        # first of any ties
        margin = 1 + others[rows, runner_up] - Z[rows, Y]
        active = margin > 0
        dZ = np.zeros_like(Z)
        dZ[rows[active], runner_up[active]] = 1
        dZ[rows[active], Y[active]] = -1
        L = np.where(active, margin, 0)
        if k == 1:                                   # no competitor: no loss
            L = np.zeros(n, Z.dtype)
            dZ[:] = 0
        return L.astype(Z.dtype), dZ
    raise ValueError(f"unknown loss {loss!r}")


def penalty(W, alpha, l1_ratio):
    """(value, gradient) of alpha*(l1_ratio*|W|_1 + 0.5*(1-l1_ratio)*|W|^2)."""
    value = alpha * (l1_ratio * np.abs(W).sum() + 0.5 * (1 - l1_ratio) * (W * W).sum())
    grad = alpha * (l1_ratio * np.sign(W) + (1 - l1_ratio) * W)
    return value, grad.astype(W.dtype, copy=False)


def scores(X, W, b):
    Z = np.asarray(X @ W)
    if b is not None:
        Z = Z + b
    return Z.astype(W.dtype, copy=False)


def loss_and_grad(X, Y, W, b, loss, alpha=0.0, l1_ratio=0.0, sample_weight=None,
                  epsilon=0.1):
    dt = W.dtype
    Z = scores(X, W, b)
    L, dZ = rows_loss_dz(loss, Z, Y, epsilon)
    n = Z.shape[0]
    w = np.ones(n, dt) if sample_weight is None else sample_weight.astype(dt)
    total_w = w.sum(dtype=np.float64)
    if total_w > 0:
        value = float((w * L).sum(dtype=np.float64) / total_w)
        G = (dZ * (w / dt.type(total_w))[:, None]).astype(dt)
    else:
        value = 0.0
        G = np.zeros_like(dZ, dtype=dt)
    dW = np.asarray(X.T @ G).astype(dt, copy=False)
    pen, dpen = penalty(W, alpha, l1_ratio)
    db = None if b is None else G.sum(axis=0).astype(dt)
    return value + float(pen), (dW + dpen).astype(dt), db
