"""One training epoch of the linear estimators' minibatch solver.

``Epochs`` is the part of ``optkern.estimators._BaseLinear`` that draws an
epoch's row order (``_batches``: the one compiled generator every backend
uses) and runs the epoch (``_run_epoch``): in one compiled call
(``optkern.epochs``; in blocks of rows so that Ctrl-C is answered), through
the sparse epochs whose steps touch only the minibatch's rows of W
(``_sparse_epoch``, ``optkern.sparse_epochs``), or in the readable
reference loop (``_reference_epoch``, the specification the compiled epochs
follow).  ``_batch_loss_grad`` is the minibatch objective (loss, penalty and
gradient, one-vs-rest for a binary loss on k classes) the reference loop,
the divergence threshold and L-BFGS evaluate.
"""

import math

import numpy as np
import scipy.sparse as sp

from optkern import _backend, _jit
from optkern._lin_params import BINARY_LOSSES

# A compiled epoch holds the interpreter until it returns, so Ctrl-C (a Python
# signal handler) waits for it.  Epochs of more multiply-adds than this run as
# blocks of whole minibatches, one compiled call each, so an interrupt is
# answered within one block (~0.1 s at 1 GFLOP/s); the steps, their order and
# the weights are those of one call (the loss is summed per block).
EPOCH_BLOCK_WORK = 10 ** 8
# The sparse epochs' steps cost tens of ns per nonzero and output (random
# accesses to W and its state, the rule per element): blocks of ~5 x 10^6
# nonzeros x outputs answer Ctrl-C within ~1 s.
SPARSE_EPOCH_BLOCK_WORK = 5 * 10 ** 6


def _block_rows(X, k, batch_size, work=None):
    """Rows per compiled call: a multiple of the batch size near ``work``
    multiply-adds (EPOCH_BLOCK_WORK)."""
    work = EPOCH_BLOCK_WORK if work is None else work
    n = X.shape[0]
    per_row = (X.nnz / max(n, 1) if sp.issparse(X) else X.shape[1]) * max(k, 1)
    steps = int(work // max(per_row * batch_size, 1))
    return max(steps, 1) * batch_size



def _draw_order():
    """kernels/order.py's ``draw_order``: its ahead-of-time twin when built
    (no JIT warm-up on a first fit; the same orders element for element),
    else the Numba function (``seed`` as uint64 for it)."""
    mod = _backend.cython_module("order")
    if mod is not None:
        return mod.draw_order
    from optkern.kernels.order import draw_order

    return lambda seed, mode, out: draw_order(np.uint64(seed), mode, out)



def _blocked_epoch(runner, order, batch_size, block):
    """``runner(order, batch_size)`` in blocks of ``block`` rows; the row-weighted
    mean loss, as one call computes it (NaN as soon as a block diverges)."""
    n = order.shape[0]
    if n <= block:
        return runner(order, batch_size)
    total = 0.0
    for start in range(0, n, block):
        part = order[start:start + block]
        mean = runner(part, batch_size)
        if not math.isfinite(mean):
            return mean
        total += mean * part.shape[0]
    return total / n



class Epochs:
    """An epoch's order, its minibatches and the call that trains them."""

    def _batch_loss_grad(self, X, y, sw, W, b, backend, penalize=True):
        """Weighted-mean loss (+ penalty) and gradient, for any loss kind."""
        from optkern.losses import loss_and_grad

        loss = self._effective_loss(W.shape[1])
        penalty, alpha = self._penalty_args()
        if not penalize:
            alpha = 0.0
        if loss in BINARY_LOSSES and W.shape[1] > 1:
            # one-vs-rest: the sum of k binary objectives, column by column
            total = 0.0
            dW = np.empty_like(W)
            db = None if b is None else np.empty_like(b)
            for j in range(W.shape[1]):
                yj = (y == j).astype(W.dtype)
                lj, dWj, dbj = loss_and_grad(
                    X, yj, np.ascontiguousarray(W[:, j:j + 1]),
                    None if b is None else b[j:j + 1], loss=loss, alpha=alpha,
                    penalty=penalty, l1_ratio=self.l1_ratio, sample_weight=sw,
                    backend=backend, check_input=False, epsilon=self.epsilon)
                total += lj
                dW[:, j] = dWj[:, 0]
                if db is not None:
                    db[j] = dbj[0]
            return total, dW, db
        return loss_and_grad(X, y, W, b, loss=loss, alpha=alpha, penalty=penalty,
                             l1_ratio=self.l1_ratio, sample_weight=sw, backend=backend,
                             check_input=False, epsilon=self.epsilon)

    def _batches(self, rng, n):
        """The epoch's row order and batch size.  The order comes from the one
        compiled generator every backend uses (kernels/order.py), seeded by one
        draw of the fit's ``rng`` per epoch: the same minibatches for a given
        random_state on every backend, and about 1.5 ms an epoch for 240,000
        rows instead of NumPy's 5-9 ms ``rng.permutation``."""
        bs = self._batch_size(n)
        if self.sampling == "sequential":
            return np.arange(n), bs
        from optkern.kernels.order import MODES

        order = np.empty(n, dtype=np.int64)
        _draw_order()(int(rng.integers(0, 2 ** 63)), MODES[self.sampling], order)
        return order, bs

    def _run_epoch(self, ctx, order, bs, marks=None):
        """One epoch; returns the mean minibatch loss.  Compiled when possible.
        ``marks`` (sparse modes only: progressive_marks) also leaves the
        epoch's held-out segment losses in ``ctx.segments``."""
        from optkern import epochs

        if ctx.sparse_mode != "dense":
            return self._sparse_epoch(ctx, order, bs, marks)
        runner = epochs.runner_for(self, ctx)
        if runner is not None:
            return _blocked_epoch(runner, order, bs, _block_rows(ctx.X, ctx.W.shape[1], bs))
        return self._reference_epoch(ctx, order, bs)

    def _sparse_epoch(self, ctx, order, bs, marks=None):
        """An epoch whose steps touch only the minibatch's rows of W
        (``sparse_updates``; kernels/sparse_rules.py says what each mode computes)."""
        from optkern import sparse_epochs

        if ctx.backend in sparse_epochs.COMPILED:
            runner = getattr(ctx, "sparse_runner", None)
            if runner is None:
                runner = ctx.sparse_runner = sparse_epochs.SparseRunner(
                    self, ctx, ctx.sparse_mode)
                # while the sparse epochs are not compiled, backend="auto" trains
                # this fit with their Cython twin (or, not built, their NumPy
                # reference: the same algorithm) and the compile server compiles
                # them by fitting a copy on a few rows (optkern._jit)
                cold = self.backend == "auto" and \
                    not sparse_epochs.compiled_for(runner) and \
                    _jit.warm_up_call(sparse_epochs.warm_up, *sparse_epochs.warm_up_args(
                        self, ctx))
                runner.reference = cold and not runner.use_twin()
            if not runner.reference:
                loss = runner(order, bs, block=_block_rows(
                    ctx.X, ctx.W.shape[1], bs, SPARSE_EPOCH_BLOCK_WORK), marks=marks or ())
                ctx.segments = runner.segments
                return loss
        from optkern.kernels import sparse_reference
        if not marks:
            return sparse_reference.epoch(self, ctx, order, bs, ctx.sparse_mode)
        # the reference epoch cut at the marks: the same steps (the lazy and the
        # dense-step reference epochs do nothing at an epoch's end but add the
        # penalty's value; the cumulative-L1 one, which does, is not cut:
        # _progressive_fit)
        from optkern.kernels.loss_reference import penalty
        alpha, l1_ratio = self._penalty_terms()
        n = order.shape[0]
        cuts = [0] + list(marks) + [n]
        ctx.segments = []
        total = 0.0
        for start, stop in zip(cuts[:-1], cuts[1:]):
            mean = sparse_reference.epoch(self, ctx, order[start:stop], bs, ctx.sparse_mode)
            if not math.isfinite(mean):
                return mean
            if ctx.sparse_mode == "lazy":
                # its mean adds the penalty of the weights at its end
                data = mean - float(penalty(ctx.W, alpha, l1_ratio)[0])
            else:
                # _reference_epoch: each minibatch's loss adds its penalty
                data = ctx.data_mean
            ctx.segments.append((start, stop, data))
            total += (data if ctx.sparse_mode == "lazy" else mean) * (stop - start)
        if ctx.sparse_mode == "lazy":
            return total / n + float(penalty(ctx.W, alpha, l1_ratio)[0])
        return total / n

    def _weighted_minibatches(self, ctx, order, bs, backend):
        """(rows, data loss, dW, db) of each minibatch of ``order`` in turn, the
        gradient at the weights as they stand when the minibatch is reached
        (a generator: the caller steps between them), without the penalty.

        The unbiased estimate of sum(w L)/sum(w): sum_B(w L) / (|B| mean(w)),
        the loss and gradients of ``_batch_loss_grad`` (on ``backend``) scaled
        by sum_B(w) / (|B| mean(w)); a minibatch of zero weight is skipped.
        The one minibatch loop of the reference epochs (``_reference_epoch``
        and kernels/sparse_reference.py)."""
        X, y, sw, W, b = ctx.X, ctx.y, ctx.sw, ctx.W, ctx.b
        w_mean = float(np.mean(sw))
        for start in range(0, order.shape[0], bs):
            rows = order[start:start + bs]
            swb = sw[rows]
            wsum = float(swb.sum())
            if wsum <= 0.0:
                continue
            loss, dW, db = self._batch_loss_grad(X[rows], y[rows], swb, W, b, backend,
                                                 penalize=False)
            scale = wsum / (rows.shape[0] * w_mean)
            yield rows, loss * scale, dW * W.dtype.type(scale), \
                (None if db is None else db * W.dtype.type(scale))

    def _reference_epoch(self, ctx, order, bs):
        """The readable epoch: the specification the compiled epochs follow.

        Each minibatch B estimates the objective sum(w L)/sum(w) + penalty
        without bias: sum_B(w L) / (|B| * mean(w)) + penalty.  (Normalising by
        the batch's own weight sum would cancel the weights of a batch that
        holds a single class.)
        """
        from optkern.kernels.loss_reference import penalty

        W, b, opt = ctx.W, ctx.b, ctx.opt
        be = ctx.backend
        loss_backend = be if be != "cython" or _backend.cython_module("losses") else "numba"
        alpha, l1_ratio = self._penalty_terms()
        total = 0.0
        data_total = 0.0
        count = 0
        for rows, data, dW, db in self._weighted_minibatches(ctx, order, bs, loss_backend):
            pen, dpen = penalty(W, alpha, l1_ratio)
            data_total += data * rows.shape[0]
            loss = data + pen
            dW = dW + dpen.astype(W.dtype, copy=False)
            if not math.isfinite(loss):
                return float("nan")
            lr = ctx.base_lr * ctx.schedule.factor(ctx.t) * ctx.plateau
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step([dW] if b is None else [dW, db])
            total += loss * rows.shape[0]
            count += rows.shape[0]
            ctx.t += 1
        # the mean loss before the steps without the penalty (the progressive
        # loss of the first-epoch rule: _sparse_epoch)
        ctx.data_mean = data_total / count if count else 0.0
        return total / count if count else 0.0
