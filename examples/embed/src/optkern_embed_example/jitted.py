"""The same steps from @njit code, through optkern.kernels' documented API.

Each cached function takes ``_optkern=K.CACHE_TAG`` as a default argument:
Numba types an omitted default by its value, so after an optkern upgrade the
cache key differs and the old machine code (with the old kernels compiled
in) is not reused.
"""
import numpy as np
from numba import njit

import optkern.kernels as K

_adam_prepare = K.adam_prepare
_adam_loop = K.adam_loop
_softmax_dense = K.loss_kernel("softmax", "dense")
_check = K.check_loss_buffers


@njit(cache=True)
def adam_steps(p, grads, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
               _optkern=K.CACHE_TAG):
    """len(grads) Adam steps on the 1-D p in place: prepare gives each step's
    kernel hyperparameters, the loop applies them; returns the last ones."""
    hyper = _adam_prepare(1, (), lr, beta1, beta2, eps, weight_decay, False, False, True,
                          False)[0]
    for t in range(grads.shape[0]):
        hyper = _adam_prepare(t + 1, (), lr, beta1, beta2, eps, weight_decay, False, False,
                              True, False)[0]
        _adam_loop(p, grads[t], exp_avg, exp_avg_sq, None, None, hyper, 0.0, None, 0)
    return hyper


@njit(cache=True)
def softmax_loss_grad(X, y, W, b, alpha, dW, db, scratch, _optkern=K.CACHE_TAG):
    """The softmax objective and gradient, buffers checked first."""
    _check(X.shape[1], W.shape[1], True, dW, db, scratch, 1)
    return _softmax_dense(X, y, None, W, b, alpha, 0.0, 0.1, dW, db, scratch)


def scratch_for(d, k, dtype):
    return np.empty(K.loss_scratch_size(1, d, k), dtype)
