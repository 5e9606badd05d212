"""The linear estimators' full-batch solver: scipy's L-BFGS-B.

``LbfgsFit`` is the part of ``optkern.estimators._BaseLinear`` that
``solver="lbfgs"`` runs: the full-batch objective (mean loss + L2 penalty,
a compiled pass over the nonzeros on CSR data) minimised by
scipy.optimize's L-BFGS-B with ``lbfgs_options``, BLAS on one thread for the
solver's own small steps (``_blas_limiter``).
"""

import contextlib
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from optkern._lin_fit import _Context
from optkern._lin_stopping import TrainingDiverged, _run_callbacks

# a dense L-BFGS objective of at least this many multiply-adds (n x d x k) keeps
# BLAS's threads for its own X @ W and X.T @ P (the solver's steps run on one)
_LBFGS_BLAS_THREADED_WORK = 10_000_000
_LIMITER = []


def _blas_limiter():
    """A threadpoolctl controller (created once: it scans the loaded
    libraries), with ``info_threads`` the BLAS thread count to restore; None
    without threadpoolctl."""
    if not _LIMITER:
        try:
            from threadpoolctl import ThreadpoolController
            ctl = ThreadpoolController()
            blas = [p["num_threads"] for p in ctl.info() if p["user_api"] == "blas"]
            ctl.info_threads = max(blas) if blas else 1
        except Exception:   # no threadpoolctl, or a library it cannot read
            ctl = None
        _LIMITER.append(ctl)
    return _LIMITER[0]



def lbfgs_options(tol, max_iter):
    """scipy L-BFGS-B options of solver="lbfgs" (in memory and optkern.dask).

    scikit-learn's LogisticRegression(solver="lbfgs") stops when the projected
    gradient's max-norm is below its tol=1e-4 or the objective's relative
    change below 64 eps, on the same scale as ours (mean loss + penalty); our
    default tol=1e-3 (the SGD stall rule's) maps to its 1e-4.  The earlier
    tol/100 took 443 iterations on digits against its 100.
    """
    return {"maxiter": max_iter, "maxls": 50,
            "gtol": 1e-6 if tol is None else tol * 0.1,
            "ftol": 64 * np.finfo(np.float64).eps}



class LbfgsFit:
    """solver="lbfgs"."""

    def _fit_lbfgs(self, X, y, sw, W, b, max_epochs):
        from scipy.optimize import minimize

        d, k = W.shape
        n_w = d * k
        dtype = W.dtype
        backend = "numpy" if self.backend == "numpy" else (
            self.backend if self.backend in ("numba", "numba-parallel") else "auto")
        history = []
        t0 = time.perf_counter()

        csr = None
        if sp.issparse(X) and backend != "numpy":
            # one compiled pass over the nonzeros per evaluation, validated once
            from optkern import epochs as _ep
            from optkern.losses import CSRObjective, LOSSES

            loss_name = self._effective_loss(k)
            ctx = _Context(y=y, W=W)
            T = _ep._targets(self, ctx, LOSSES[loss_name].kind, k)
            alpha, l1r = self._penalty_terms()
            csr = CSRObjective(X, T, sw, W, loss_name, alpha, l1r, self.epsilon, backend)
            dW_buf = np.empty_like(W)
            db_buf = None if b is None else np.empty_like(b)
            grad = np.empty(n_w + (k if b is not None else 0))

        def fun(theta):
            W[...] = theta[:n_w].reshape(d, k)
            if b is not None:
                b[...] = theta[n_w:]
            if csr is not None:
                loss = csr(W, b, dW_buf, db_buf)
                grad[:n_w] = dW_buf.reshape(-1)
                if b is not None:
                    grad[n_w:] = db_buf
                return float(loss), grad
            loss, dW, db = self._batch_loss_grad(X, y, sw, W, b, backend)
            grad_ = np.concatenate([dW.ravel(), db if b is not None else []]).astype(np.float64)
            return float(loss), grad_

        def callback(intermediate_result):
            history.append({"epoch": len(history) + 1, "loss": float(intermediate_result.fun),
                            "val_score": None, "lr": None,
                            "time": time.perf_counter() - t0})
            if _run_callbacks(self.callbacks, history[-1]):
                raise StopIteration  # scipy >= 1.11: ends the minimisation at this iterate

        theta0 = np.concatenate([W.ravel(), b if b is not None else []]).astype(np.float64)
        # L-BFGS-B's own steps are BLAS/LAPACK calls on vectors of n_w elements
        # and m x m matrices: too small for threads, and with OpenBLAS's threads
        # on a busy machine (a compile server on the other core, another
        # program) each one waited for a descheduled thread: 13 ms a call on
        # digits against ~0.1 ms on one thread (docs/first_call.md).  The solve
        # runs with BLAS on one thread; a large dense objective that itself
        # runs on BLAS gets the threads back for its own call.
        limiter = _blas_limiter()
        heavy = csr is None and not sp.issparse(X) and X.size * k >= _LBFGS_BLAS_THREADED_WORK
        if limiter is not None and heavy:
            inner = fun

            def fun(theta):
                with limiter.limit(limits=limiter.info_threads, user_api="blas"):
                    return inner(theta)
        with (limiter.limit(limits=1, user_api="blas") if limiter is not None
              else contextlib.nullcontext()):
            res = minimize(fun, theta0, jac=True, method="L-BFGS-B", callback=callback,
                           options=lbfgs_options(self.tol, max_epochs))
        W[...] = res.x[:n_w].reshape(d, k).astype(dtype)
        if b is not None:
            b[...] = res.x[n_w:].astype(dtype)
        if not np.isfinite(res.fun):
            raise TrainingDiverged("L-BFGS produced a non-finite loss")
        self._set_coef(W, b)
        self._W, self._b = W, b
        self.n_iter_ = int(res.nit)
        self.history_ = history
        self.t_ = int(res.nit)
        self._opt_state = None
        if not res.success and res.nit >= max_epochs:
            warnings.warn(f"L-BFGS did not converge in {max_epochs} iterations",
                          ConvergenceWarning, stacklevel=3)
        return self
