"""Glue between the estimators and the compiled training epochs.

``runner_for(estimator, ctx)`` returns ``run(order, batch_size) -> mean loss``
that trains one epoch in a single compiled call (``kernels/epoch_drivers.py``
for "numba" and "numba-parallel"; its ahead-of-time twin
``optkern.kernels.cython._epochs`` for "cython", same arguments; Python
names them in ``optkern._epoch_args.DenseEpochArgs``) on the optimizer's own
state arrays, then brings the optimizer's bookkeeping (step count, Polyak
count, NAdam's mu_product) up to date, so ``state_dict``, ``partial_fit`` and
``warm_start`` see exactly what a step-by-step run would.
Returns None when the backend has no compiled epoch ("numpy": the reference
loop is the specification; "cuda": the per-step CUDA kernels are used).
"""

import numba
import numpy as np
import scipy.sparse as sp

from optkern import _backend, _jit
from optkern._epoch_args import DenseEpochArgs, epoch_scratch, optimizer_args
from optkern.kernels import epoch_drivers
from optkern.kernels.rules import state_names

COMPILED_EPOCH_BACKENDS = ("numba", "numba-parallel", "cython")

# multiply-adds in one minibatch (rows x features x outputs) below which the
# parallel epoch stays on one thread: a parallel region costs tens of
# microseconds to open, more when the machine is busy (README, "Training").
PARALLEL_MIN_WORK = 200_000


def _targets(estimator, ctx, loss_kind, k):
    y = ctx.y
    dtype = ctx.W.dtype
    if loss_kind == "row":
        return np.ascontiguousarray(y, dtype=np.int64)
    if y.ndim == 2:
        return np.ascontiguousarray(y, dtype=dtype)
    if k > 1:  # one-vs-rest targets for a binary loss on k classes
        T = np.zeros((y.shape[0], k), dtype=dtype)
        T[np.arange(y.shape[0]), y.astype(np.int64)] = 1.0
        return T
    return np.ascontiguousarray(y, dtype=dtype).reshape(-1, 1)


def runner_for(estimator, ctx):
    """A compiled epoch runner for this fit, or None for the reference loop."""
    if ctx.backend not in COMPILED_EPOCH_BACKENDS:
        return None
    run = getattr(ctx, "runner", None)
    if run is not None:
        return run
    run = ctx.runner = _Runner(estimator, ctx)
    return run


class _Runner:
    def __init__(self, estimator, ctx):
        from optkern.losses import LOSSES

        W, b, opt = ctx.W, ctx.b, ctx.opt
        d, k = W.shape
        self.ctx = ctx
        loss_name = estimator._effective_loss(k)
        spec = LOSSES[loss_name]
        self.T = _targets(estimator, ctx, spec.kind, k)
        X = ctx.X
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            if not X.has_canonical_format:
                X = X.copy()
                X.sum_duplicates()
            self.data_args = (X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64))
            layout = "csr"
        else:
            self.data_args = (np.ascontiguousarray(X),)
            layout = "dense"
        parallel = ctx.backend == "numba-parallel"
        self.fn = None
        if ctx.backend == "cython":
            # the ahead-of-time twin (kernels/cython/generate_epochs.py): same
            # arguments, same arithmetic, no JIT warm-up, the GIL released
            epochs_mod = _backend.cython_module("epochs")
            if epochs_mod is not None and opt._has_cython_twin():
                self.fn = epochs_mod.epoch_for(loss_name, opt._spec.name, layout)
        # backend="auto" chose a Numba epoch: its Cython twin trains while the
        # Numba one is not compiled (optkern._jit), decided on the first epoch
        # and kept for the whole fit (one kernel per fit, one trajectory)
        self.twin = None
        self.prefer_twin = layout == "dense" and ctx.backend == "numba"
        if self.fn is None:
            mod = epoch_drivers.module_for(loss_name, opt._spec.name, layout)
            self.fn = mod.epoch_parallel if parallel else mod.epoch_serial
            if getattr(estimator, "backend", None) == "auto":
                epochs_mod = _backend.cython_module("epochs")
                # a rule registered at run time has no Cython twin: Numba alone
                if epochs_mod is not None and opt._has_cython_twin():
                    self.twin = epochs_mod.epoch_for(loss_name, opt._spec.name, layout)
        self.dense = layout == "dense"
        self.helper_skip, self.helper_backoff = 0, 1
        self.key = ("epoch", loss_name, opt._spec.name, layout, parallel, W.dtype.char)
        self.n_chunks = numba.get_num_threads() if parallel else 1
        dt = W.dtype
        c = self.n_chunks
        self.scratch = epoch_scratch(c, d, k, dt)
        self.sw = ctx.sw
        self.w_mean = float(np.mean(ctx.sw))
        self.alpha, self.l1_ratio = estimator._penalty_terms()
        eps = getattr(estimator, "epsilon", None)
        self.epsilon = float(spec.default_epsilon if eps is None else eps)
        self.gW = opt._groups[0]
        self.gB = opt._groups[1] if b is not None else None

    def __call__(self, order, batch_size):
        ctx = self.ctx
        gW, gB = self.gW, self.gB
        o = optimizer_args(ctx, gW, gB, ctx.opt._prepared_hyper(0, gW), self.alpha,
                           self.l1_ratio, self.epsilon)
        a = DenseEpochArgs()
        a.data = self.data_args
        a.T = self.T
        a.sw = self.sw
        a.order = np.ascontiguousarray(order, dtype=np.int64)
        a.batch_size = int(batch_size)
        a.n_chunks = self.n_chunks
        a.W = ctx.W
        a.b = ctx.b
        a.scratch = self.scratch
        a.opt = o
        a.par_work = PARALLEL_MIN_WORK
        a.w_mean = self.w_mean
        args = a.positional()
        if self.twin is not None:
            # the twin for the whole fit where it measured faster (serial dense
            # epochs of small d and k: _backend.cython_dense_epoch_pays), else
            # while the Numba epoch is not compiled
            W = ctx.W
            if (self.prefer_twin and _backend.cython_dense_epoch_pays(
                    W.shape[0], W.shape[1], a.batch_size, W.dtype)) or \
                    not _jit.ready(self.key + (o.seed is None, o.avgW is None), self.fn, args):
                self.fn = self.twin
            self.twin = None
        stopped = None
        cy = _backend.cython_module("epochs") if self.dense else None
        if self.helper_skip:
            self.helper_skip -= 1
        elif cy is not None and isinstance(self.fn, cy.Epoch):
            # the Cython epoch: a helper thread for each minibatch's second
            # half of rows where that pays (the same arithmetic either way)
            W = ctx.W
            a.n_chunks = _backend.cython_epoch_threads(W.shape[0], W.shape[1], a.batch_size)
            if a.n_chunks > 1:
                args = a.positional()
                stopped = cy.helper_stats()["stopped"]
        result = self.fn(*args)
        if stopped is not None and cy.helper_stats()["stopped"] > stopped:
            # the helper kept the epoch waiting (the machine is shared, or a
            # hiccup of it): the next 1, 2, 4, ... epochs of this fit run on
            # one thread, the same arithmetic
            self.helper_skip = self.helper_backoff
            self.helper_backoff *= 2
        mean, steps, avg_count, scalarsW, scalarsB = result
        for g, scalars in ((gW, scalarsW), (gB, scalarsB)):
            if g is None:
                continue
            g.step += int(steps)
            g.avg_count = int(avg_count)
            g.scalars = tuple(float(v) for v in scalars)
        ctx.t += int(steps)
        return float(mean)
