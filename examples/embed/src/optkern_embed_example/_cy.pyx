# cython: boundscheck=False, wraparound=False
"""Adam training steps and a minibatch loss/gradient written against optkern's
public C API: no Python in the loops, no optkern Python objects."""
from cython cimport floating
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

cimport optkern.kernels.cython.updates as U
cimport optkern.kernels.cython.prepare as P
cimport optkern.kernels.cython.losses as L

import numpy as np

API_VERSION = U.OPTKERN_API_VERSION


def adam_steps(floating[::1] p, const floating[:, ::1] grads, floating[::1] exp_avg,
               floating[::1] exp_avg_sq, double lr, double beta1, double beta2, double eps,
               double weight_decay, bint amsgrad=False, floating[::1] max_exp_avg_sq=None,
               int64_t first_step=1):
    """Apply ``len(grads)`` Adam steps to ``p`` in place (torch.optim.Adam's rule).

    prepare turns (step, lr, betas, ...) into the loop's per-step values, the
    loop updates every element; returns the number of the last step made.
    """
    cdef double user[P.ADAM_NUSER]
    cdef double hyper[U.ADAM_NHYPER]
    cdef double scalars_out[1]
    cdef Py_ssize_t t, n = p.shape[0]
    cdef floating* mx = NULL
    if grads.shape[1] != n or exp_avg.shape[0] != n or exp_avg_sq.shape[0] != n:
        raise ValueError("grads, exp_avg and exp_avg_sq must match p")
    if amsgrad:
        if max_exp_avg_sq is None or max_exp_avg_sq.shape[0] != n:
            raise ValueError("max_exp_avg_sq must match p when amsgrad")
        mx = &max_exp_avg_sq[0]
    # RULES['adam'].user_hyper[1:]: beta1, beta2, eps, weight_decay, amsgrad,
    # maximize, bias_correction, decoupled
    user[0] = beta1; user[1] = beta2; user[2] = eps; user[3] = weight_decay
    user[4] = amsgrad; user[5] = 0; user[6] = 1; user[7] = 0
    with nogil:
        for t in range(grads.shape[0]):
            P.adam_prepare(first_step + t, NULL, lr, user, hyper, scalars_out)
            U.adam_loop(&p[0], &grads[t, 0], &exp_avg[0], &exp_avg_sq[0], mx, NULL, n,
                        hyper, 0.0, False, 0, 0, False)
    return first_step + grads.shape[0] - 1


def _check_scratch(Py_ssize_t d, Py_ssize_t k):
    return L.scratch_size(1, d, k)


def dense_loss_grad(str loss, const floating[:, ::1] X, y, const floating[:, ::1] W,
                    floating[::1] b, double alpha, floating[:, ::1] dW, floating[::1] db):
    """Objective and gradient ('squared' with (n, k) targets or 'softmax' with
    class indices) of a linear model on X, through optkern's minibatch kernel."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], k = W.shape[1]
    cdef const floating[:, ::1] Y
    cdef const int64_t[::1] c
    cdef floating[::1] scratch = np.empty(L.scratch_size(1, d, k), np.asarray(W).dtype)
    cdef const floating* bp = NULL if b is None else &b[0]
    cdef floating* dbp = NULL if b is None else &db[0]
    cdef double f
    if loss == "squared":
        Y = y
        with nogil:
            f = L.dense_squared(&X[0, 0], n, d, k, &Y[0, 0], NULL, NULL, &W[0, 0], bp,
                                alpha, 0.0, <floating>0.1, &dW[0, 0], dbp, &scratch[0], 1)
    elif loss == "softmax":
        c = y
        with nogil:
            f = L.dense_softmax(&X[0, 0], n, d, k, NULL, &c[0], NULL, &W[0, 0], bp,
                                alpha, 0.0, <floating>0.1, &dW[0, 0], dbp, &scratch[0], 1)
    else:
        raise ValueError(f"loss: 'squared' or 'softmax', got {loss!r}")
    return f


def csr_loss_grad(str loss, const floating[::1] data, const int[::1] indices,
                  const int[::1] indptr, Py_ssize_t d, y, const floating[:, ::1] W,
                  floating[::1] b, double alpha, floating[:, ::1] dW, floating[::1] db):
    """The same on a CSR matrix (int32 indices)."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, k = W.shape[1]
    cdef const floating[:, ::1] Y
    cdef const int64_t[::1] c
    cdef floating[::1] scratch = np.empty(L.scratch_size(1, d, k), np.asarray(W).dtype)
    cdef const floating* bp = NULL if b is None else &b[0]
    cdef floating* dbp = NULL if b is None else &db[0]
    cdef double f
    if loss == "squared":
        Y = y
        with nogil:
            f = L.csr_squared(&data[0], &indices[0], &indptr[0], n, d, k, &Y[0, 0], NULL,
                              NULL, &W[0, 0], bp, alpha, 0.0, <floating>0.1, &dW[0, 0], dbp,
                              &scratch[0], 1)
    elif loss == "softmax":
        c = y
        with nogil:
            f = L.csr_softmax(&data[0], &indices[0], &indptr[0], n, d, k, NULL, &c[0],
                              NULL, &W[0, 0], bp, alpha, 0.0, <floating>0.1, &dW[0, 0], dbp,
                              &scratch[0], 1)
    else:
        raise ValueError(f"loss: 'squared' or 'softmax', got {loss!r}")
    return f
