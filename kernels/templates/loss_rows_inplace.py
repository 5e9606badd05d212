"""Snippet for loss.py: the BLAS path's in-place row pass, written once.

The body of ``rows_inplace`` is the body of loss.py's ``rows_inplace`` (``HOLE_RANGE``
is ``range``) and ``rows_inplace_parallel`` (``prange``).
"""
from numba import prange  # noqa: F401

from optkern.kernels.templates.standins import *  # noqa: F401,F403


def rows_inplace(Z, y, sw, b, epsilon, inv_w, row_loss):
    dt = Z.dtype.type
    eps = dt(epsilon)
    n, k = Z.shape
    for i in HOLE_RANGE(n):
        z = Z[i]
        if b is not None:
            for j in range(k):
                z[j] += b[j]
        w = 1.0 if sw is None else float(sw[i])
        row_loss[i] = w * row(z, y[i], eps, z)
        scale = dt(w * inv_w)
        for j in range(k):
            z[j] *= scale
    total = 0.0
    for i in range(n):
        total += row_loss[i]
    return total
