"""Glue between the estimators and the sparse compiled epochs.

``SparseRunner(estimator, ctx, kind)`` trains one epoch on CSR data in one
compiled call of ``kernels/sparse_epoch_drivers.py`` ("lazy", "linear" or
"scaled": ``kernels/sparse_rules.py`` says what each computes), on the
optimizer's own state arrays, and brings the optimizer's bookkeeping up to
date as ``optkern.epochs`` does.  Everything the fit needs beyond the
optimizer's state (the feature -> slot map, the compact gradient, the lazy
penalty's per-row factors, the catch-up tables) is O(n_features) or
O(nonzeros in a minibatch x n_outputs), allocated once per fit: nothing of
the size n_features x n_outputs but W and its states, nothing of the size of X.

``resolve_mode(estimator, X, opt, schedule)`` turns ``sparse_updates`` into
the mode a fit runs ("dense" for dense X).
"""

import numpy as np
import scipy.sparse as sp

from optkern import epochs as _epochs
from optkern._epoch_args import (DenseEpochArgs, RowsModeArgs, ScaledModeArgs, SparseEpochArgs,
                                 epoch_scratch, optimizer_args)
from optkern.kernels import epoch_drivers, sparse_epoch_drivers
from optkern.kernels import sparse_rules as _sr
from optkern.kernels.rules import state_names

# backends on which a fit runs the compiled sparse epoch ("cython" runs the
# Numba one; the Cython twin, kernels/cython/generate_sparse_epochs.py, serves
# backend="auto" while the Numba epoch is not compiled: optkern._jit)
COMPILED = ("numba", "numba-parallel", "cython")


def _user(opt, gi=0):
    return dict(zip(opt._spec.user_hyper, opt._hyper_tuple(opt.param_groups[gi])))


def resolve_mode(estimator, X, opt, schedule, backend):
    """"dense", "lazy", "scaled" or "linear" for this fit (see sparse_rules)."""
    mode = estimator.sparse_updates
    if not sp.issparse(X) or mode == "dense":
        return "dense"
    if backend == "cuda":
        if mode not in ("auto", "dense"):
            raise ValueError(f"sparse_updates={mode!r} runs on the CPU backends; the "
                             "'cuda' estimator path is the dense reference loop")
        return "dense"
    alpha, l1r = estimator._penalty_terms()
    lr_constant = _sr.lr_constant_within_epoch(schedule)
    return _sr.resolve(mode, opt._spec.name, _user(opt), alpha, l1r,
                       opt.average_start is not None, lr_constant)


def feature_counts(X):
    """Stored entries per feature (an explicit zero counts; a duplicate counts
    twice): one compiled pass over indices, no copy of them."""
    return sparse_epoch_drivers.feature_counts(X.indices, X.shape[1])


def compiled_for(runner):
    """Whether this runner's Numba kernels are loaded or in the disk cache
    (optkern._jit): the epoch, and the feature counts of the lazy mode."""
    from optkern import _jit
    fn = runner.mod.epoch_scaled if runner.kind == "scaled" else runner.mod.epoch_rows
    if runner.ctx.W.shape[1] == 1:
        fn = runner.mod.epoch_scaled_k1 if runner.kind == "scaled" else runner.mod.epoch_rows_k1
    need = [fn]
    if runner.kind == "lazy" and runner.alpha > 0:
        need.append(sparse_epoch_drivers.feature_counts)
    if runner.kind == "linear":
        need.append(epoch_drivers.module_for(runner.loss_name, runner.rule, "csr").epoch_serial)
    return all(_jit.compiled(d) for d in need)


def warm_up_args(estimator, ctx):
    """(params, X, y) of a small fit that runs the same kernels: a few rows
    holding every class (so the same loss), class weights dropped (they only
    scale the sample weights)."""
    y = ctx.y
    rows = np.arange(min(y.shape[0], 64))
    if y.ndim == 1 and y.dtype.kind in "iu":
        rows = np.union1d(rows, np.unique(y, return_index=True)[1])
    params = estimator.get_params()
    if "class_weight" in params:
        params["class_weight"] = None
    return params, ctx.X[rows], y[rows]


def warm_up(params, X, y):
    """Run in the compile server: fit a copy of the estimator on a few rows,
    compiling (into Numba's disk cache) the sparse epoch a fit with these
    parameters runs."""
    from optkern.estimators import LinearClassifier, LinearRegressor
    cls = LinearRegressor if "class_weight" not in params else LinearClassifier
    cls(**dict(params, max_epochs=2, tol=None, early_stopping=False, verbose=0,
               callbacks=None)).fit(X, y)


def slot_table(n_features, cap, dtype):
    """The epochs' slot table (kernels/sparse_epoch_drivers.py) for minibatches
    touching at most ``cap`` features: hashed, a power of two at least 2 cap
    rows (half full at most), when that is shorter than n_features; else one
    row per feature.  Every entry free (-1)."""
    rows = 1 << max(int(2 * cap - 1).bit_length(), 1)
    return np.full((rows if rows < n_features else n_features, 2), -1, dtype)


# Above this size the lazy penalty's 1/pi_f goes to the epoch per nonzero.
PER_NONZERO_MIN_BYTES = 4 << 20


def per_nonzero_scales(inv_f, indices):
    """The lazy penalty's 1/pi_f as the epoch reads it: per feature while
    that array is at most PER_NONZERO_MIN_BYTES (2^20 float32 features),
    else per nonzero (``inv_f[indices]``, as long as X's data: the epoch
    reads it in order with each row instead of one random cache line per
    touched feature; at 2^22 features the lazy epoch took 1.2x less time,
    docs/sparse.md "Tenth round").  Not lower: the copy is a fresh array of
    X's length, made once per fit, and on this project's machine a fresh
    69 MB array (2^18 float64 features, 192,000 rows) cost up to 0.5 s of
    page faults in the fit's first epoch, more than the epochs gain at that
    width.  The epoch tells the two apart by length: per nonzero is never
    n_features long."""
    if inv_f.nbytes <= PER_NONZERO_MIN_BYTES or indices.shape[0] == inv_f.shape[0]:
        return inv_f
    out = np.empty(indices.shape[0], inv_f.dtype)
    # in small chunks: np.take converts its indices to intp, which for all
    # of X's int32 indices at once was twice the result's size again (and a
    # large temporary faults its pages in anew each time)
    step = 1 << 16
    for a in range(0, indices.shape[0], step):
        np.take(inv_f, indices[a:a + step], out=out[a:a + step])
    return out


class SparseRunner:
    reference = False
    twin = None

    def __init__(self, estimator, ctx, kind):
        from optkern.losses import LOSSES

        W, opt = ctx.W, ctx.opt
        d, k = W.shape
        self.ctx, self.kind = ctx, kind
        self.loss_name = estimator._effective_loss(k)
        spec = LOSSES[self.loss_name]
        self.T = _epochs._targets(estimator, ctx, spec.kind, k)
        X = ctx.X
        self.X = X
        self.data = (X.data, X.indices, X.indptr)
        self.rule = opt._spec.name
        self.mod = sparse_epoch_drivers.module_for(self.loss_name, self.rule)
        alpha, self.l1_ratio = estimator._penalty_terms()
        self.alpha = alpha
        eps = getattr(estimator, "epsilon", None)
        self.epsilon = float(spec.default_epsilon if eps is None else eps)
        self.sw = ctx.sw
        self.w_mean = float(np.mean(ctx.sw))
        self.gW = opt._groups[0]
        self.gB = opt._groups[1] if ctx.b is not None else None
        dt = W.dtype
        self.idx_t = np.int32 if d < 2 ** 31 else np.int64
        self.slot = None
        self.max_row_nnz = int(np.max(np.diff(X.indptr))) if X.shape[0] else 0
        # sorted and without duplicates (scipy's flag, computed once): a row's
        # nonzeros are then its distinct touched rows
        self.unique_rows = bool(X.has_canonical_format)
        self.touched = self.G = self.tscale = None
        self.z, self.dz, self.db = np.zeros(k, dt), np.zeros(k, dt), np.zeros(k, dt)
        self.sampling = estimator.sampling
        self.counts = None
        self.inv_p = None
        self.inv_p_batch = None
        nstates = len(state_names(opt._spec))
        self.m = 1 + nstates
        self.last = None
        self.A = np.zeros((self.m, self.m))
        self.Ssum = np.zeros((self.m, self.m))
        self.tmp = np.zeros((self.m, self.m))
        self.x = np.zeros(self.m)
        self.y = np.zeros(self.m)
        self.q = np.zeros(d * k if (kind == "scaled" and alpha * self.l1_ratio > 0) else 1, dt)
        self.carry = np.zeros(2)  # the scaled epoch's (s, u) between blocks

    def use_twin(self):
        """Serve this fit with the ahead-of-time Cython twin of the epoch (the
        same loop and arithmetic, no JIT: optkern._jit's cold path).  False
        when the twin is not built.  Its integer arrays (indices, indptr, slot,
        touched) share the dtype of X.indices."""
        from optkern import _backend
        mod = _backend.cython_module("sparse_epochs")
        if mod is None:
            return False
        self.twin = mod.epoch_for(self.loss_name, self.rule,
                                  "scaled" if self.kind == "scaled" else "rows")
        X = self.X
        it = X.indices.dtype if X.indices.dtype in (np.int32, np.int64) else np.int64
        self.data = (X.data, np.ascontiguousarray(X.indices, it),
                     np.ascontiguousarray(X.indptr, it))
        self.idx_t = it
        self.slot = self.touched = self.G = None
        return True

    def _buffers(self, batch_size):
        d, k = self.ctx.W.shape
        need = max(1, min(d, batch_size * max(self.max_row_nnz, 1)))
        if self.G is None or self.G.shape[0] < need:
            self.G = np.zeros((need, k), self.ctx.W.dtype)
            self.tscale = np.zeros(need, self.ctx.W.dtype)
            self.touched = np.zeros((2, need), self.idx_t)
            self.slot = slot_table(d, need, self.idx_t)

    def _lazy_scales(self, batch_size):
        if self.inv_p_batch != batch_size:
            if self.counts is None:
                # the twin's fit: NumPy's count (no Numba compile on a cold call)
                self.counts = feature_counts(self.X) if self.twin is None else \
                    np.bincount(self.X.indices, minlength=self.X.shape[1])
            inv_f = _sr.lazy_scales(self.counts, self.X.shape[0], batch_size,
                                    self.sampling, self.ctx.W.dtype)
            self.inv_p = per_nonzero_scales(inv_f, self.data[1])
            self.inv_p_batch = batch_size
        return self.inv_p

    def _tables(self, user, lr, n_steps):
        """(P, S) of this epoch's untouched step, or (None, None) when it is the
        identity and nothing is averaged (nothing to catch up)."""
        opt = self.ctx.opt
        g = self.gW
        present = [s is not None for s in g.state_list]
        step = max(g.step, 1) + 1  # a step after the first (sparse_rules.first_step_dense)
        hyper, _ = opt._spec.prepare(step, g.scalars, lr, *user[1:])
        M = _sr.untouched_matrix(self.rule, hyper, self.alpha * (1.0 - self.l1_ratio),
                                 present)
        if np.array_equal(M[np.ix_(*[np.flatnonzero([True] + present)] * 2)],
                          np.eye(1 + sum(present))) and opt.average_start is None:
            return None, None
        if self.last is None:
            self.last = np.zeros(self.ctx.W.shape[0], np.int64)
        return _sr.power_tables(M, n_steps + 1)

    def _dense_first_step(self, order, batch_size):
        """The first step of a fresh optimizer on every row (the dense CSR epoch
        on the first minibatch): sparse_rules.first_step_dense.  Allocates one
        n_features x n_outputs gradient, once."""
        d, k = self.ctx.W.shape
        dt = self.ctx.W.dtype
        data = self.data
        if self.twin is not None:
            # the dense CSR epoch's twin (int64 indices)
            from optkern import _backend
            fn = _backend.cython_module("epochs").epoch_for(self.loss_name, self.rule, "csr")
            data = (data[0], data[1].astype(np.int64), data[2].astype(np.int64))
        else:
            fn = epoch_drivers.module_for(self.loss_name, self.rule, "csr").epoch_serial
        a = DenseEpochArgs()
        a.opt = self._common(self.ctx.opt._prepared_hyper(0, self.gW))
        a.scratch = epoch_scratch(1, d, k, dt)
        a.data = data
        a.T = self.T
        a.sw = self.sw
        a.order = order[:batch_size]
        a.batch_size = int(batch_size)
        a.n_chunks = 1
        a.W = self.ctx.W
        a.b = self.ctx.b
        a.par_work = _epochs.PARALLEL_MIN_WORK
        a.w_mean = self.w_mean
        return self._finish(fn(*a.positional()))

    def _common(self, userW):
        """The arguments every epoch takes, from the states to offB
        (``_epoch_args.OptimizerArgs``)."""
        return optimizer_args(self.ctx, self.gW, self.gB, tuple(float(v) for v in userW),
                              self.alpha, self.l1_ratio, self.epsilon)

    def _finish(self, result):
        mean, steps, avg_count, scalarsW, scalarsB = result
        for g, scalars in ((self.gW, scalarsW), (self.gB, scalarsB)):
            if g is None:
                continue
            g.step += int(steps)
            g.avg_count = int(avg_count)
            g.scalars = tuple(float(v) for v in scalars)
        self.ctx.t += int(steps)
        return float(mean)

    def __call__(self, order, batch_size, block=None, marks=()):
        """One epoch over ``order``; with ``block`` (a multiple of batch_size) in
        compiled calls of ``block`` rows each (the epoch's ``start, stop``), so
        that Ctrl-C is answered between them: the same steps and weights as
        one call (the lazy catch-up state and the scaled epoch's scale carry
        across blocks; the end-of-epoch pass runs in the last block).

        ``marks`` (positions in ``order``, multiples of batch_size) cut the
        calls there too, and ``self.segments`` is then [(start, stop, mean
        data loss)] of every call, in ``order``'s positions: each minibatch's
        loss is taken before its step (the progressive loss of the estimators'
        first-epoch rule), without the penalty."""
        ctx, opt = self.ctx, self.ctx.opt
        order = np.ascontiguousarray(order, dtype=np.int64)
        self._buffers(batch_size)
        user = opt._prepared_hyper(0, self.gW)
        lead = None
        self.segments = []
        self._offset = 0
        if self.kind == "linear" and self.gW.step == 0 \
                and _sr.first_step_dense(self.rule, _user(opt)):
            lead = self._dense_first_step(order, batch_size)
            # a fresh fit's weights are 0 there: its loss is the data loss
            self.segments.append((0, min(batch_size, order.shape[0]), lead))
            self._offset = batch_size
            order = order[batch_size:]
            if order.shape[0] == 0:
                return lead
        n_steps = -(-order.shape[0] // batch_size)
        inv_p = P = S = None
        extra = ()
        if self.kind == "lazy":
            if self.alpha > 0:
                inv_p = self._lazy_scales(batch_size)
            if opt.average_start is not None:
                P, S = _sr.power_tables(np.eye(self.m), n_steps + 1)
                if self.last is None:
                    self.last = np.zeros(ctx.W.shape[0], np.int64)
        elif self.kind == "linear":
            lr = ctx.base_lr * ctx.schedule.factor(ctx.t) * ctx.plateau
            P, S = self._tables(user, lr, n_steps)
        one = ctx.W.shape[1] == 1      # the one-output twins (no loops over outputs)
        if self.kind == "scaled":
            fn = self.mod.epoch_scaled_k1 if one else self.mod.epoch_scaled
            wd = opt._spec.user_hyper.index("weight_decay")
            user = tuple(v + self.alpha * (1.0 - self.l1_ratio) if j == wd else v
                         for j, v in enumerate(user))
            extra = ScaledModeArgs()
            extra.l1 = float(self.alpha * self.l1_ratio)
            extra.q = self.q
            extra.carry = self.carry
        else:
            fn = self.mod.epoch_rows_k1 if one else self.mod.epoch_rows
            extra = RowsModeArgs()
            extra.inv_p, extra.P, extra.S = inv_p, P, S
            extra.tscale = self.tscale
            extra.last = self.last if self.last is not None else np.zeros(1, np.int64)
            extra.A, extra.Ssum, extra.tmp, extra.x, extra.y = \
                self.A, self.Ssum, self.tmp, self.x, self.y
        marks = [m - self._offset for m in marks if 0 < m - self._offset < order.shape[0]]
        mean = self._blocks(fn, order, batch_size, user, extra, block, marks)
        if lead is not None and np.isfinite(mean):
            n_rest = order.shape[0]
            mean = (lead * batch_size + mean * n_rest) / (batch_size + n_rest)
        return mean

    def _blocks(self, fn, order, batch_size, userW, extra, block, marks=()):
        """The epoch's compiled calls; the row-weighted mean loss plus the
        penalty at the end, as one call computes it (NaN as soon as a block
        diverges).  ``marks``: more positions where a call ends."""
        n = order.shape[0]
        if (block is None or block >= n) and not marks:
            # (no segments asked for: no extra pass over W for the penalty)
            return self._run(fn, order, 0, n, batch_size, userW, extra)
        if block is None or block >= n:
            block = n
        block = max(int(block) // batch_size, 1) * batch_size
        cuts = sorted(set(range(0, n, block)) | {int(m) for m in marks} | {n})
        total = 0.0
        for start, stop in zip(cuts[:-1], cuts[1:]):
            mean = self._run(fn, order, start, stop, batch_size, userW, extra)
            if not np.isfinite(mean):
                return mean
            if stop == n:
                # the last call adds the penalty of the epoch's weights
                pen = self._penalty_value()
                self.segments.append((self._offset + start, self._offset + stop, mean - pen))
                return (total + (mean - pen) * (stop - start)) / n + pen
            self.segments.append((self._offset + start, self._offset + stop, mean))
            total += mean * (stop - start)
        return total / n  # not reached

    def _penalty_value(self):
        """The penalty of the weights, as the epoch's last call adds it (in
        NumPy when the Cython twin serves the fit: no Numba compile)."""
        Wf = self.ctx.W.reshape(-1)
        if self.twin is None:
            return float(sparse_epoch_drivers.penalty_value(Wf, self.alpha, self.l1_ratio))
        if self.alpha == 0:
            return 0.0
        w = Wf.astype(np.float64)
        return float(self.alpha * (self.l1_ratio * np.abs(w).sum()
                                   + 0.5 * (1.0 - self.l1_ratio) * (w @ w)))

    def _run(self, fn, order, start, stop, batch_size, userW, extra):
        # the step, the averaging count and the rule's scalars as the last
        # block left them (_finish)
        a = SparseEpochArgs()
        a.opt = self._common(userW)
        a.data = self.data
        a.T = self.T
        a.sw = self.sw
        a.order = order
        a.start = int(start)
        a.stop = int(stop)
        a.batch_size = int(batch_size)
        a.W = self.ctx.W
        a.b = self.ctx.b
        a.w_mean = self.w_mean
        a.slot = self.slot
        a.touched = self.touched
        a.G = self.G
        a.z = self.z
        a.dz = self.dz
        a.db = self.db
        a.unique_rows = self.unique_rows
        a.mode = extra
        args = a.positional()
        if self.twin is not None:
            from optkern import _jit
            _jit.count_twin()
            return self._finish(self.twin(*args))
        return self._finish(fn(*args))
