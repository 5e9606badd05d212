"""Compiled training epochs: every minibatch of an epoch in one Numba call.

For a (loss rule, update rule, data layout) triple this module writes one
source file (same mechanism and reasons as ``drivers.py``) holding

``epoch_serial`` / ``epoch_parallel``
    for each minibatch of ``order`` (the epoch's row order, drawn by the host):
    the fused single pass over the batch rows (scores, the loss rule, the
    rank-1 accumulation of dW; rows split into ``n_chunks`` chunks with their
    own partial sums, reduced in chunk order, so a given chunk count is
    deterministic), the penalty, the learning-rate schedule
    (``schedule_rules.schedule_factor``), the noise key, the optimizer's
    ``prepare`` and its generated update loop (``_loop_serial`` of the update
    rule's driver module) for W and then b, and Polyak averaging.

The loss rule (``loss_rules.py``) and the update rule (``rules.py``) are the
same texts every other target compiles; only the loops live here.

Arguments (dense layout; the CSR layout takes ``data, indices, indptr``
instead of ``X``)::

    epoch(X, T, sw, order, batch_size, n_chunks, W, b, dWp, dbp, Z, D, lossp, wsump,
          sW0, sW1, sW2, sB0, sB1, sB2, avgW, avgB, userW, userB, scalarsW, scalarsB,
          step0, avg_start, avg_count0, sched, base_lr, plateau, alpha, l1_ratio,
          epsilon, seed, offW, offB, par_work, w_mean)
      -> (mean_loss, steps_done, avg_count, scalarsW, scalarsB)

``T`` is the target: (n, k) float for scalar (per-output) losses, (n,) int64
class indices for row losses.  ``dWp`` (n_chunks, d, k), ``dbp`` (n_chunks, k),
``Z``/``D`` (n_chunks, k) and ``lossp``/``wsump`` (n_chunks,) are scratch the
caller allocates once per fit.  A non-finite minibatch loss stops the epoch
early and returns NaN (the caller restores the last good weights).
"""

import textwrap

import numpy as np
from numba import njit

from . import _files
from . import _helpers  # noqa: F401 (the generated modules import it: in their digest)
from ._helpers import log_fast
from . import _simd  # noqa: F401 (the generated modules import it: in their digest)
from . import drivers as _drivers
from . import loss_drivers as _loss_drivers  # noqa: F401 (the generated modules import it: in their digest)
from . import loss_rules as _loss_rules
from . import rule_lanes as _rule_lanes
from . import rules as _update_rules
from . import schedule_rules as _schedule_rules  # noqa: F401 (the generated modules import it: in their digest)

# Rows per block of the dense epoch's fused pass (issue 18, item 2): the loss
# rule's lane form runs its loops over the block's rows, so the block is a
# whole number of vectors at both widths (48 = 3 x 16 float32, 6 x 8 float64
# lanes of AVX-512) and of the 6-row register tiles (8 of them); small enough
# that the block's rows stay in L1/L2 between the score and the dW pass
# (48 x 784 float64 = 300 KB at the grid's widest).
DENSE_LANE_ROWS = 48

_TILE_FLAGS = {"reassoc", "contract"}


@njit(inline="always")
def log1p_lanes(x):
    """log1p(x) for the scalar rules' lane forms (rule_lanes maps
    ``math.log1p`` to it there): log(1 + x) corrected by x / ((1 + x) - 1),
    which cancels the rounding of 1 + x (a few ulps, Goldberg's method), on
    ``_helpers.log_fast``, which vectorises (libm's log1p is a call per
    lane; the log loss's lane form spent most of its time there)."""
    u = 1.0 + x
    if u == 1.0:
        return x * 1.0
    return log_fast(u) * (x / (u - 1.0))


@njit(cache=True, nogil=True, fastmath=_TILE_FLAGS)
def gathered_scores_lanes(X, order, r0, m, WT, b, ZT):
    """ZT[j, q] = X[order[r0 + q]] . WT[j] + b[j] for q < m: the rows read
    where they lie (no gathered copy), the scores written in the loss rule's
    lane form (no transpose).  Register tiles of 6 rows x 2 outputs as
    loss_drivers._scores_block (12 vector accumulators over the features)."""
    k, d = WT.shape
    dt = WT.dtype.type
    t = 0
    while t + 6 <= m:
        x0 = X[order[r0 + t]]
        x1 = X[order[r0 + t + 1]]
        x2 = X[order[r0 + t + 2]]
        x3 = X[order[r0 + t + 3]]
        x4 = X[order[r0 + t + 4]]
        x5 = X[order[r0 + t + 5]]
        j = 0
        while j + 2 <= k:
            w = WT[j]
            v = WT[j + 1]
            a0 = dt(0)
            a1 = dt(0)
            a2 = dt(0)
            a3 = dt(0)
            a4 = dt(0)
            a5 = dt(0)
            c0 = dt(0)
            c1 = dt(0)
            c2 = dt(0)
            c3 = dt(0)
            c4 = dt(0)
            c5 = dt(0)
            for f in range(d):
                wf = w[f]
                vf = v[f]
                y0 = x0[f]
                y1 = x1[f]
                y2 = x2[f]
                y3 = x3[f]
                y4 = x4[f]
                y5 = x5[f]
                a0 += y0 * wf
                a1 += y1 * wf
                a2 += y2 * wf
                a3 += y3 * wf
                a4 += y4 * wf
                a5 += y5 * wf
                c0 += y0 * vf
                c1 += y1 * vf
                c2 += y2 * vf
                c3 += y3 * vf
                c4 += y4 * vf
                c5 += y5 * vf
            zj = ZT[j]
            zv = ZT[j + 1]
            zj[t] = a0
            zj[t + 1] = a1
            zj[t + 2] = a2
            zj[t + 3] = a3
            zj[t + 4] = a4
            zj[t + 5] = a5
            zv[t] = c0
            zv[t + 1] = c1
            zv[t + 2] = c2
            zv[t + 3] = c3
            zv[t + 4] = c4
            zv[t + 5] = c5
            j += 2
        if j < k:
            w = WT[j]
            a0 = dt(0)
            a1 = dt(0)
            a2 = dt(0)
            a3 = dt(0)
            a4 = dt(0)
            a5 = dt(0)
            for f in range(d):
                wf = w[f]
                a0 += x0[f] * wf
                a1 += x1[f] * wf
                a2 += x2[f] * wf
                a3 += x3[f] * wf
                a4 += x4[f] * wf
                a5 += x5[f] * wf
            zj = ZT[j]
            zj[t] = a0
            zj[t + 1] = a1
            zj[t + 2] = a2
            zj[t + 3] = a3
            zj[t + 4] = a4
            zj[t + 5] = a5
        t += 6
    while t < m:
        xr = X[order[r0 + t]]
        for j in range(k):
            w = WT[j]
            a = dt(0)
            for f in range(d):
                a += xr[f] * w[f]
            ZT[j, t] = a
        t += 1
    if b is not None:
        for j in range(k):
            bj = b[j]
            zj = ZT[j]
            for q in range(m):
                zj[q] += bj


@njit(cache=True, nogil=True, fastmath=_TILE_FLAGS)
def gathered_accumulate_lanes(X, order, r0, m, DT, accT):
    """accT[j] += sum_q DT[j, q] X[order[r0 + q]] for q < m (the block's rank-m
    update of dW^T, from the rule's lane form, the rows read where they lie:
    still in cache from the score pass).  Tiles of 6 rows x 4 outputs: each
    step over the features loads 6 values of X for 24 multiply-adds."""
    k, d = accT.shape
    t = 0
    while t + 6 <= m:
        x0 = X[order[r0 + t]]
        x1 = X[order[r0 + t + 1]]
        x2 = X[order[r0 + t + 2]]
        x3 = X[order[r0 + t + 3]]
        x4 = X[order[r0 + t + 4]]
        x5 = X[order[r0 + t + 5]]
        j = 0
        while j + 4 <= k:
            g0 = accT[j]
            g1 = accT[j + 1]
            g2 = accT[j + 2]
            g3 = accT[j + 3]
            e = DT[j]
            p0, p1, p2, p3, p4, p5 = e[t], e[t + 1], e[t + 2], e[t + 3], e[t + 4], e[t + 5]
            e = DT[j + 1]
            q0, q1, q2, q3, q4, q5 = e[t], e[t + 1], e[t + 2], e[t + 3], e[t + 4], e[t + 5]
            e = DT[j + 2]
            s0, s1, s2, s3, s4, s5 = e[t], e[t + 1], e[t + 2], e[t + 3], e[t + 4], e[t + 5]
            e = DT[j + 3]
            u0, u1, u2, u3, u4, u5 = e[t], e[t + 1], e[t + 2], e[t + 3], e[t + 4], e[t + 5]
            for f in range(d):
                y0 = x0[f]
                y1 = x1[f]
                y2 = x2[f]
                y3 = x3[f]
                y4 = x4[f]
                y5 = x5[f]
                g0[f] += p0 * y0 + p1 * y1 + p2 * y2 + p3 * y3 + p4 * y4 + p5 * y5
                g1[f] += q0 * y0 + q1 * y1 + q2 * y2 + q3 * y3 + q4 * y4 + q5 * y5
                g2[f] += s0 * y0 + s1 * y1 + s2 * y2 + s3 * y3 + s4 * y4 + s5 * y5
                g3[f] += u0 * y0 + u1 * y1 + u2 * y2 + u3 * y3 + u4 * y4 + u5 * y5
            j += 4
        while j < k:
            g0 = accT[j]
            e = DT[j]
            p0, p1, p2, p3, p4, p5 = e[t], e[t + 1], e[t + 2], e[t + 3], e[t + 4], e[t + 5]
            for f in range(d):
                g0[f] += (p0 * x0[f] + p1 * x1[f] + p2 * x2[f] + p3 * x3[f] + p4 * x4[f]
                          + p5 * x5[f])
            j += 1
        t += 6
    while t < m:
        xr = X[order[r0 + t]]
        for j in range(k):
            g = accT[j]
            dr = DT[j, t]
            for f in range(d):
                g[f] += dr * xr[f]
        t += 1


@njit(cache=True, nogil=True)
def dense_lane_buffers(n_chunks, k, n_real, n_int, dtype):
    """lane_buffers' arrays for the fused dense pass: the lane form at
    DENSE_LANE_ROWS lanes (ZT, DT (k, lanes), S, SI, loss, labels); the row
    forms (Xb, Zb, Db) are not used by it and come as placeholders."""
    R = DENSE_LANE_ROWS
    return (np.empty((n_chunks, 1, 1), dtype), np.empty((n_chunks, 1, k), dtype),
            np.empty((n_chunks, 1, k), dtype),
            np.empty((n_chunks, k, R), dtype), np.empty((n_chunks, k, R), dtype),
            np.empty((n_chunks, max(n_real, 1), R), dtype),
            np.empty((n_chunks, max(n_int, 1), R), np.int64),
            np.empty((n_chunks, R)), np.empty((n_chunks, R), np.int64))

_HEADER = '''\
# Generated by optkern.kernels.epoch_drivers: loss {loss!r}, update {update!r}, {layout}.
# Do not edit.  sources digest: {digest}
import math

import numpy as np
from numba import njit, prange

from optkern.kernels.loss_rules import {loss_fn} as _loss_py
from optkern.kernels.rules import {prepare_fn} as _prepare_py
from optkern.kernels.schedule_rules import schedule_factor as _schedule_py
from optkern.kernels._helpers import (
    load, store, noise_key_jit, prefetch, with_fast_math, exp_fast, log_fast,
    VEC_MIN_OUTPUTS)
from optkern.kernels.loss_drivers import (
    LANE_ROWS, penalty_add, _scores_tiles, _accumulate_tiles, _to_lanes, lane_buffers)
from optkern.kernels.epoch_drivers import (
    DENSE_LANE_ROWS, gathered_scores_lanes, gathered_accumulate_lanes, dense_lane_buffers,
    log1p_lanes)
from optkern.kernels._simd import csr_row_scores, csr_row_scatter
from {update_module} import _loop_serial, _loop_parallel

# Not cached on their own (they would not see a change of _helpers.py): they
# are compiled into the cached batch pass, as separate functions so that they
# keep exact floating point (no fast-math flags).  Row rules come twice, the
# second with exp_fast (loss_drivers._RULE_VEC says why and when).
_loss = njit(_loss_py)
{loss_vec}
_prepare = njit(cache=True)(_prepare_py)
_schedule = njit(cache=True)(_schedule_py)
'''

# the per-row pieces of the CSR layout (the dense layout has its own batch
# pass, _BATCH_DENSE)
# (kernels/_simd.py: one masked vector per nonzero, the scores in registers)
_CSR_SCORES = '''\
            csr_row_scores(data, indices, indptr[i], indptr[i + 1], W, b, z)'''
_CSR_ACCUM = '''\
            csr_row_scatter(data, indices, indptr[i], indptr[i + 1], dz, dW)'''

_SCALAR_LOSS = '''\
            l = 0.0
            for j in range(k):
                lj, dj = _loss(z[j], T[i, j], eps)
                l += lj
                dz[j] = dj'''
_ROW_LOSS = '''\
            if k >= VEC_MIN_OUTPUTS:
                l = _loss_vec(z, T[i], eps, dz)
            else:
                l = _loss(z, T[i], eps, dz)'''

_BATCH = '''

@njit(cache=True, nogil=True, error_model="numpy",
      fastmath={{"reassoc", "contract"}}{parallel_flag})
def _batch_{kind}({data_args}, T, sw, order, start, stop, n_chunks, {w_arg}, b, dWp, dbp,
                  Z, D, lossp, wsump, eps):
    """Fused pass over rows order[start:stop]: partial dW, db, loss per chunk."""
{dims}
    n_rows = stop - start
    for c in {range_fn}(n_chunks):
        lo = start + (n_rows * c) // n_chunks
        hi = start + (n_rows * (c + 1)) // n_chunks
        dW = {chunk_grad}
        z = Z[c]
        dz = D[c]
        dW[:, :] = 0.0
        dbp[c, :] = 0.0
        lsum = 0.0
        wsum = 0.0
        for r in range(lo, hi):
            i = order[r]
            w = sw[i]
{scores}
{loss}
            lsum += w * l
            wsum += w
            if w != 1.0:
                for j in range(k):
                    dz[j] *= w
            for j in range(k):
                dbp[c, j] += dz[j]
{accum}
        lossp[c] = lsum
        wsump[c] = wsum
'''

_BATCH_DENSE = '''

@njit(cache=True, nogil=True, error_model="numpy"{parallel_flag})
def _batch_{kind}(X, T, sw, order, start, stop, n_chunks, WT, b, dWp, dbp, Z, D,
                  lossp, wsump, eps, Xb, Zb, Db, ZT, DT, S, SI, LS, YB):
    """Rows order[start:stop] in blocks of LANE_ROWS, gathered into Xb: their
    scores and their update of dW^T run in the register tiles of the fused
    loss kernel (loss_drivers._scores_tiles, _accumulate_tiles); in between,
    the loss rule in its lane form when it has one (kernels/rule_lanes.py:
    softmax at k = 10 runs in vector code across the rows instead of scalar
    code along a row), else row by row.  Per-chunk partials as _BATCH."""
    k = WT.shape[0]
    d = WT.shape[1]
    Xflat = X.reshape(X.size)
    pf_step = max(64 // X.itemsize, 1)
    n_rows = stop - start
    n_order = order.shape[0]
    for c in {range_fn}(n_chunks):
        lo = start + (n_rows * c) // n_chunks
        hi = start + (n_rows * (c + 1)) // n_chunks
        dW = dWp[c].reshape((k, d))
        xb = Xb[c]
        zb = Zb[c]
        db = Db[c]
        zt = ZT[c]
        dt_ = DT[c]
        yb = YB[c]
        ls = LS[c]
        dW[:, :] = 0.0
        dbp[c, :] = 0.0
        lsum = 0.0
        wsum = 0.0
        r0 = lo
        while r0 < hi:
            m = min(LANE_ROWS, hi - r0)
            for q in range(m):
                # the next block's rows, across the minibatch's end (a minibatch
                # is often one block): shuffled rows of an X larger than the
                # cache otherwise stall on memory
                if r0 + m + q < n_order:
                    nxt = order[r0 + m + q] * d
                    for p in range(0, d, pf_step):
                        prefetch(Xflat, nxt + p)
                i = order[r0 + q]
                xb[q, :] = X[i]
            _scores_tiles(xb, 0, m, WT, b, zb)
{rule_block}
            for q in range(m):
                w = sw[order[r0 + q]]
                lsum += w * ls[q]
                wsum += w
                if w != 1.0:
                    for j in range(k):
                        db[q, j] *= w
                for j in range(k):
                    dbp[c, j] += db[q, j]
            _accumulate_tiles(xb, 0, m, db, dW)
            r0 += m
        lossp[c] = lsum
        wsump[c] = wsum
'''

# The dense pass when the loss rule has a lane form (softmax, ...): no
# gathered copy of the rows and no transposes.  Per block of ZT.shape[2] rows
# (DENSE_LANE_ROWS): the next block's rows prefetched, the scores written in
# lane form straight from X's rows (gathered_scores_lanes), the rule across
# the lanes, the sample weights and db across the lanes (vector loops, no
# per-row loop over k), the rank-m update of dW^T from the lane form and the
# same rows of X, still in cache (gathered_accumulate_lanes).
_BATCH_DENSE_LANES = '''

@njit(cache=True, nogil=True, error_model="numpy"{parallel_flag})
def _batch_{kind}(X, T, sw, order, start, stop, n_chunks, WT, b, dWp, dbp, Z, D,
                  lossp, wsump, eps, Xb, Zb, Db, ZT, DT, S, SI, LS, YB):
    """Rows order[start:stop] in blocks of ZT.shape[2] lanes, fused (see
    _BATCH_DENSE_LANES in kernels/epoch_drivers.py).  Per-chunk partials as
    _BATCH."""
    k = WT.shape[0]
    d = WT.shape[1]
    R = ZT.shape[2]
    Xflat = X.reshape(X.size)
    pf_step = max(64 // X.itemsize, 1)
    n_rows = stop - start
    n_order = order.shape[0]
    for c in {range_fn}(n_chunks):
        lo = start + (n_rows * c) // n_chunks
        hi = start + (n_rows * (c + 1)) // n_chunks
        dW = dWp[c].reshape((k, d))
        zt = ZT[c]
        dt_ = DT[c]
        yb = YB[c]
        ls = LS[c]
        dW[:, :] = 0.0
        dbc = dbp[c]
        dbc[:] = 0.0
        lsum = 0.0
        wsum = 0.0
        r0 = lo
        while r0 < hi:
            m = min(R, hi - r0)
            # the next block's rows, across the minibatch's end (a minibatch
            # is often a few blocks): shuffled rows of an X larger than the
            # cache otherwise stall on memory
            for q in range(min(m, n_order - r0 - m)):
                nxt = order[r0 + m + q] * d
                for p in range(0, d, pf_step):
                    prefetch(Xflat, nxt + p)
{targets}
            gathered_scores_lanes(X, order, r0, m, WT, b, zt)
            _loss_lanes(zt, yb, eps, dt_, ls, m, S[c], SI[c])
            weighted = False
            for q in range(m):
                w = sw[order[r0 + q]]
                lsum += w * ls[q]
                wsum += w
                if w != 1.0:
                    weighted = True
            if weighted:
                for q in range(m):
                    ls[q] = sw[order[r0 + q]]
                for j in range(k):
                    e = dt_[j]
                    for q in range(m):
                        e[q] = e[q] * ls[q]
            for j in range(k):
                e = dt_[j]
                s = dbc[j]
                for q in range(m):
                    s += e[q]
                dbc[j] = s
            gathered_accumulate_lanes(X, order, r0, m, dt_, dW)
            r0 += m
        lossp[c] = lsum
        wsump[c] = wsum
'''

# the block's targets in the rule's lane form: class labels (row rules), or
# the k targets of each row as (k, lanes) like the scores (scalar rules)
_ROW_TARGETS = '''\
            for q in range(m):
                yb[q] = T[order[r0 + q]]'''
_SCALAR_TARGETS = '''\
            for q in range(m):
                i = order[r0 + q]
                for j in range(k):
                    yb[j, q] = T[i, j]'''

# the rule step of _BATCH_DENSE (rules without a lane form): row by row
_RULE_BY_ROWS = '''\
            for q in range(m):
                i = order[r0 + q]
                z = zb[q]
                dz = db[q]
{loss}
                ls[q] = l'''

_EPOCH = '''

# The parallel epoch is parallel=True itself (its partial-gradient reduction
# runs over features in prange): a cached plain function calling cached
# parallel=True ones segfaults when loaded back from Numba's disk cache
# (numba/numba#8578).
@njit(cache=True, nogil=True, error_model="numpy"{parallel_flag})
def epoch_{kind}({data_args}, T, sw, order, batch_size, n_chunks, W, b, dWp, dbp, Z, D,
                 lossp, wsump, {w_states}, {b_states}, avgW, avgB, userW, userB,
                 scalarsW, scalarsB, step0, avg_start, avg_count0, sched, base_lr,
                 plateau, alpha, l1_ratio, epsilon, seed, offW, offB, par_work, w_mean):
    dt = W.dtype.type
    eps = dt(epsilon)
    n = order.shape[0]
    d = W.shape[0]
    k = W.shape[1]
    Wf = W.reshape(d * k)
{grad_setup}
    dWf = G.reshape(d * k)
    step = step0
    avg_count = avg_count0
    total = 0.0
    weight = 0.0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
{refresh}
{batch_call}
        lsum = 0.0
        wsum = 0.0
        for c in range(used):
            lsum += lossp[c]
            wsum += wsump[c]
        if used > 1:
            # each element summed in chunk order 0, 1, ...: the same result
            # whichever thread does it
            for f in {range_fn}(d):
                for c in range(1, used):
                    for j in range(k):
                        dWp[0, f, j] += dWp[c, f, j]
            for c in range(1, used):
                for j in range(k):
                    dbp[0, j] += dbp[c, j]
        if wsum <= 0.0:
            continue
        # unbiased minibatch estimate of sum(w L)/sum(w) over the whole data set:
        # normalising by the batch's own weight sum would cancel the weights of a
        # batch holding one class only
        inv = 1.0 / ((stop - start) * w_mean)
        for f in range(d):
            for j in range(k):
                G[f, j] = {grad_read} * inv
        # the penalty's (sub)gradient and value in one branch-free pass that
        # vectorises (the loss kernels' own): a per-element loop with the sign
        # as branches and an in-order sum cost digits (64 x 10, batch 21)
        # about 50 us of a 340 us epoch
        pen = penalty_add(W, G, alpha, l1_ratio)
        for j in range(k):
            dbp[0, j] = dbp[0, j] * inv
        batch_loss = lsum * inv + pen
        if not math.isfinite(batch_loss):
            return np.nan, step - step0, avg_count, scalarsW, scalarsB
        total += batch_loss * (stop - start)
        weight += stop - start
        lr = base_lr * _schedule(sched[0], float(step), sched[1], sched[2], sched[3],
                                 sched[4], sched[5]) * plateau
        step += 1
        key = noise_key_jit(seed, step)
        hyperW, scalarsW = _prepare(step, scalarsW, lr, {user_w})
        averaging = avg_start >= 0 and step > avg_start
        w_avg = 1.0 / (avg_count + 1) if averaging else 0.0
        # before averaging starts w_avg is 0 and the average is left as it is; one
        # call signature (not two) keeps the compile time down
{update_call}
        if b is not None:
            hyperB, scalarsB = _prepare(step, scalarsB, lr, {user_b})
            db = dbp[0]
            _loop_serial(b, db, {b_states}, avgB, hyperB, w_avg, key, offB)
        if averaging:
            avg_count += 1
    mean = total / weight if weight > 0.0 else 0.0
    return mean, step - step0, avg_count, scalarsW, scalarsB
'''


def _source(loss_name, rule_name, layout):
    loss = _loss_rules.LOSS_RULES[loss_name]
    spec = _update_rules.RULES[rule_name]
    update_mod = _drivers.module_for(rule_name)
    if layout == "dense":
        data_args, data_names = "X", "X"
        scores = accum = ""
        lay = dict(
            w_arg="WT", w_name="WT",
            dims=("    k = WT.shape[0]\n    d = WT.shape[1]\n"
                  "    Xflat = X.reshape(X.size)\n"
                  "    pf_step = max(64 // X.itemsize, 1)"),
            chunk_grad="dWp[c].reshape((k, d))",
            # W^T and the gradient in W's layout: two small buffers per epoch
            grad_setup=("    WT = np.empty((k, d), W.dtype)\n"
                        "    G = np.empty((d, k), W.dtype)\n"
                        "    dT = dWp[0].reshape((k, d))"),
            batch_extra=", Xb, Zb, Db, ZT, DT, S, SI, LS, YB",
            refresh=("        for f in range(d):\n"
                     "            for j in range(k):\n"
                     "                WT[j, f] = W[f, j]"),
            grad_read="dT[j, f]")
    else:
        data_args, data_names = "data, indices, indptr", "data, indices, indptr"
        scores, accum = _CSR_SCORES, _CSR_ACCUM
        lay = dict(w_arg="W", w_name="W", dims="    d = W.shape[0]\n    k = W.shape[1]",
                   chunk_grad="dWp[c]", grad_setup="    G = dWp[0]", refresh="",
                   grad_read="G[f, j]", batch_extra="")
    body_loss = _SCALAR_LOSS if loss.kind == "scalar" else _ROW_LOSS
    lanes = ""
    scalar = loss.kind == "scalar"
    lane_fns = ((_rule_lanes.scalar_lane_source, _rule_lanes.scalar_lane_slots) if scalar
                else (lambda rule, name: _rule_lanes.lane_source(rule, name, returns=True),
                      lambda rule: _rule_lanes.lane_slots(rule, returns=True)))
    if layout == "dense":
        try:
            lanes = lane_fns[0](loss.rule, "_loss_lanes_py")
        except _rule_lanes.NotLaneable:
            lanes = ""
    if layout == "dense":
        n_real, n_int = lane_fns[1](loss.rule) if lanes else (0, 0)
        if lanes and scalar:
            # the targets in lane form, (k, lanes) in T's dtype
            lay["grad_setup"] += (
                "\n    Xb, Zb, Db, ZT, DT, S, SI, LS, YB_ = dense_lane_buffers("
                f"n_chunks, k, {n_real}, {n_int}, W.dtype)"
                "\n    YB = np.empty((n_chunks, k, DENSE_LANE_ROWS), T.dtype)")
        elif lanes:
            lay["grad_setup"] += (
                "\n    Xb, Zb, Db, ZT, DT, S, SI, LS, YB = dense_lane_buffers("
                f"n_chunks, k, {n_real}, {n_int}, W.dtype)")
        else:
            lay["grad_setup"] += (
                "\n    Xb = np.empty((n_chunks, LANE_ROWS, d), W.dtype)"
                "\n    Zb, Db, ZT, DT, S, SI, LS, YB = lane_buffers("
                f"n_chunks, k, {n_real}, {n_int}, W.dtype)")
    # the update module's templates too: the generated epoch imports it
    digest = _drivers.digest(__file__, "update", "update_elements")
    if lanes:
        lanes = ("\n" + lanes + "\n\n_loss_lanes = njit(error_model=\"numpy\")(_loss_lanes_py)\n")
    parts = [_HEADER.format(loss=loss_name, update=rule_name, layout=layout, digest=digest,
                            loss_fn=loss.rule.__name__,
                            loss_vec=("_loss_vec = njit(fastmath={\"reassoc\", \"contract\"})"
                                      "(with_fast_math(_loss_py))\n"
                                      if loss.kind == "row" else ""),
                            prepare_fn=spec.prepare.__name__,
                            update_module=update_mod.__name__), lanes]
    n_states = len(_update_rules.state_names(spec))
    n_user = len(spec.user_hyper)  # user_hyper[0] is always lr: the schedule sets it
    user_w = ", ".join(f"userW[{j}]" for j in range(1, n_user))
    user_b = ", ".join(f"userB[{j}]" for j in range(1, n_user))
    w_states = ", ".join(f"sW{j}" for j in range(n_states))
    b_states = ", ".join(f"sB{j}" for j in range(n_states))
    batch = ("_batch_{0}({1}, T, sw, order, start, stop, used, %s, b, dWp, dbp, Z, D, "
             "lossp, wsump, eps%s)" % (lay["w_name"], lay["batch_extra"]))
    update = "{0}(Wf, dWf, %s, avgW, hyperW, w_avg, key, offW)" % w_states
    calls = {
        "serial": (" " * 8 + "used = 1\n" + " " * 8 + batch.format("serial", data_names),
                   " " * 8 + update.format("_loop_serial")),
        # a parallel region per minibatch only pays off with enough work in it
        "parallel": ("\n".join([
            " " * 8 + "used = n_chunks if (stop - start) * d * k >= par_work else 1",
            " " * 8 + "if used > 1:",
            " " * 12 + batch.format("parallel", data_names),
            " " * 8 + "else:",
            " " * 12 + batch.format("serial", data_names)]),
            "\n".join([
                " " * 8 + "if d * k >= par_work:",
                " " * 12 + update.format("_loop_parallel"),
                " " * 8 + "else:",
                " " * 12 + update.format("_loop_serial")])),
    }
    for kind, range_fn, flag in (("serial", "range", ""),
                                 ("parallel", "prange", ", parallel=True")):
        if layout == "dense":
            if lanes:
                parts.append(_BATCH_DENSE_LANES.format(
                    kind=kind, range_fn=range_fn, parallel_flag=flag,
                    targets=_SCALAR_TARGETS if scalar else _ROW_TARGETS))
                continue
            rule_block = _RULE_BY_ROWS.replace(
                "{loss}", textwrap.indent(body_loss, " " * 4))
            parts.append(_BATCH_DENSE.format(
                kind=kind, range_fn=range_fn, parallel_flag=flag, rule_block=rule_block))
        else:
            parts.append(_BATCH.format(kind=kind, range_fn=range_fn, parallel_flag=flag,
                                       data_args=data_args, scores=scores, accum=accum,
                                       loss=body_loss, **lay))
    for kind, range_fn, flag in (("serial", "range", ""),
                                 ("parallel", "prange", ", parallel=True")):
        batch_call, update_call = calls[kind]
        parts.append(_EPOCH.format(kind=kind, range_fn=range_fn, parallel_flag=flag,
                                   w_states=w_states, b_states=b_states,
                                   user_w=user_w, user_b=user_b, data_args=data_args,
                                   batch_call=batch_call, update_call=update_call, **lay))
    return "".join(parts)


_MODULES = {}


def module_for(loss_name, rule_name, layout):
    """Import (generating if needed) the epoch module for this combination."""
    key = (loss_name, rule_name, layout)
    if key in _MODULES:
        return _MODULES[key]
    if loss_name not in _loss_rules.LOSS_RULES:
        raise ValueError(f"unknown loss {loss_name!r}")
    if rule_name not in _update_rules.RULES:
        raise ValueError(f"unknown update rule {rule_name!r}")
    if layout not in ("dense", "csr"):
        raise ValueError(f"layout must be 'dense' or 'csr', got {layout!r}")
    return _files.load_generated(
        _MODULES, key, _drivers.generated_dir(),
        f"optkern_epoch_{loss_name}_{rule_name}_{layout}.py",
        f"optkern.kernels._generated_epoch_{loss_name}_{rule_name}_{layout}",
        lambda: _source(loss_name, rule_name, layout))
