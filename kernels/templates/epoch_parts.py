"""Snippets for epoch.py (kernels/epoch_drivers.py): the bodies of its
functions and the pieces their block holes take, each written once.

``epoch`` is the body of ``epoch_serial`` and ``epoch_parallel``: its set-up,
then (``HOLE_LOOP``) the loop of kernels/epoch_rules.py as written, each of
its primitives replaced by the body of the function of its name here
(``batch_pass``, ``finish_gradients``, ``prepare_w``, ...; ``HOLE_RANGE`` is
``range`` or ``prange``); ``batch_csr``, ``batch_dense``
and ``batch_dense_lanes`` are the bodies of the two ``_batch_*`` passes of
each layout (epoch_batch_csr.py, epoch_batch_dense.py); the rest are the
alternatives of their holes.  ``scalar_loss`` and ``row_loss`` (the loss
rule on one row) are pasted into sparse_epoch.py's epochs too;
``scalar_loss_split`` is ``scalar_loss`` for the reassociated CSR pass.
"""
from numba import prange  # noqa: F401

from optkern.kernels.templates.standins import *  # noqa: F401,F403


def epoch():
    dt = W.dtype.type
    eps = dt(epsilon)
    n = order.shape[0]
    d = W.shape[0]
    k = W.shape[1]
    Wf = W.reshape(d * k)
    HOLE_GRAD_SETUP
    dWf = G.reshape(d * k)
    HOLE_LOOP


# ------------------- the epoch's primitives (kernels/epoch_rules.py, tables.NUMBA_EPOCH)

def batch_pass():
    HOLE_BATCH_CALL
    lsum = 0.0
    wsum = 0.0
    for c in range(used):
        lsum += lossp[c]
        wsum += wsump[c]
    if used > 1:
        # each element summed in chunk order 0, 1, ...: the same result
        # whichever thread does it
        for f in HOLE_RANGE(d):
            for c in range(1, used):
                for j in range(k):
                    dWp[0, f, j] += dWp[c, f, j]
        for c in range(1, used):
            for j in range(k):
                dbp[0, j] += dbp[c, j]


def finish_gradients():
    for f in range(d):
        for j in range(k):
            G[f, j] = HOLE_GRAD_READ * inv
    # the penalty's (sub)gradient and value in one branch-free pass that
    # vectorises (the loss kernels' own): a per-element loop with the sign
    # as branches and an in-order sum cost digits (64 x 10, batch 21)
    # about 50 us of a 340 us epoch
    pen = penalty_add(W, G, alpha, l1_ratio)
    for j in range(k):
        dbp[0, j] = dbp[0, j] * inv


def prepare_w():
    hyperW, scalarsW = _prepare(step, scalarsW, lr, HOLE_USER_W)


def update_w():
    HOLE_UPDATE_CALL


def prepare_b():
    hyperB, scalarsB = _prepare(step, scalarsB, lr, HOLE_USER_B)


def update_b():
    db = dbp[0]
    _loop_serial(b, db, HOLE_B_STATES, avgB, hyperB, w_avg, key, offB)


# ------------------------------------------ the epoch's holes, per layout

def dense_setup():
    WT = np.empty((k, d), W.dtype)
    G = np.empty((d, k), W.dtype)
    dT = dWp[0].reshape((k, d))


def scalar_lane_buffers():
    # the targets in lane form, (k, lanes) in T's dtype
    Xb, Zb, Db, ZT, DT, S, SI, LS, YB_ = dense_lane_buffers(n_chunks, k, HOLE_N_REAL, HOLE_N_INT, W.dtype)
    YB = np.empty((n_chunks, k, DENSE_LANE_ROWS), T.dtype)


def row_lane_buffers():
    Xb, Zb, Db, ZT, DT, S, SI, LS, YB = dense_lane_buffers(n_chunks, k, HOLE_N_REAL, HOLE_N_INT, W.dtype)


def row_buffers():
    Xb = np.empty((n_chunks, LANE_ROWS, d), W.dtype)
    Zb, Db, ZT, DT, S, SI, LS, YB = lane_buffers(n_chunks, k, HOLE_N_REAL, HOLE_N_INT, W.dtype)


def csr_setup():
    G = dWp[0]


def dense_refresh():
    for f in range(d):
        for j in range(k):
            WT[j, f] = W[f, j]


def serial_batch():
    used = 1
    _batch_serial(HOLE_DATA_ARGS, T, sw, order, start, stop, used, HOLE_BATCH_ARGS)


def parallel_batch():
    used = n_chunks if (stop - start) * d * k >= par_work else 1
    if used > 1:
        _batch_parallel(HOLE_DATA_ARGS, T, sw, order, start, stop, used, HOLE_BATCH_ARGS)
    else:
        _batch_serial(HOLE_DATA_ARGS, T, sw, order, start, stop, used, HOLE_BATCH_ARGS)


def serial_update():
    _loop_serial(Wf, dWf, HOLE_W_STATES, avgW, hyperW, w_avg, key, offW)


def parallel_update():
    if d * k >= par_work:
        _loop_parallel(Wf, dWf, HOLE_W_STATES, avgW, hyperW, w_avg, key, offW)
    else:
        _loop_serial(Wf, dWf, HOLE_W_STATES, avgW, hyperW, w_avg, key, offW)


def loss_vec():
    _loss_vec = njit(fastmath={"reassoc", "contract"})(with_fast_math(_loss_py))


# ------------------------------------------------------- the batch passes

def batch_csr():
    """Fused pass over rows order[start:stop]: partial dW, db, loss per chunk."""
    d = W.shape[0]
    k = W.shape[1]
    n_rows = stop - start
    for c in HOLE_RANGE(n_chunks):
        lo = start + (n_rows * c) // n_chunks
        hi = start + (n_rows * (c + 1)) // n_chunks
        dW = dWp[c]
        z = Z[c]
        dz = D[c]
        dW[:, :] = 0.0
        dbp[c, :] = 0.0
        lsum = 0.0
        wsum = 0.0
        for r in range(lo, hi):
            i = order[r]
            w = sw[i]
            csr_row_scores(data, indices, indptr[i], indptr[i + 1], W, b, z)
            HOLE_LOSS
            lsum += w * l
            wsum += w
            if w != 1.0:
                for j in range(k):
                    dz[j] *= w
            for j in range(k):
                dbp[c, j] += dz[j]
            csr_row_scatter(data, indices, indptr[i], indptr[i + 1], dz, dW)
        lossp[c] = lsum
        wsump[c] = wsum


def batch_dense():
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
    for c in HOLE_RANGE(n_chunks):
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
                    i_next = order[r0 + m + q]
                    nxt = i_next * d
                    for p in range(0, d, pf_step):
                        prefetch(Xflat, nxt + p)
                    # its target and weight, at random places too
                    prefetch(sw, i_next)
                    prefetch_target(T, i_next)
                i = order[r0 + q]
                xb[q, :] = X[i]
            _scores_tiles(xb, 0, m, WT, b, zb)
            for q in range(m):
                i = order[r0 + q]
                z = zb[q]
                dz = db[q]
                HOLE_LOSS
                ls[q] = l
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


# The dense pass when the loss rule has a lane form (softmax, ...): no
# gathered copy of the rows and no transposes.  Per block of ZT.shape[2] rows
# (DENSE_LANE_ROWS): the next block's rows prefetched, the scores written in
# lane form straight from X's rows (gathered_scores_lanes), the rule across
# the lanes, the sample weights and db across the lanes (vector loops, no
# per-row loop over k), the rank-m update of dW^T from the lane form and the
# same rows of X, still in cache (gathered_accumulate_lanes).
def batch_dense_lanes():
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
    for c in HOLE_RANGE(n_chunks):
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
                i_next = order[r0 + m + q]
                nxt = i_next * d
                for p in range(0, d, pf_step):
                    prefetch(Xflat, nxt + p)
                # its target and weight, at random places too
                prefetch(sw, i_next)
                prefetch_target(T, i_next)
            HOLE_TARGETS
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


# ------------------------------------------------- the batch passes' holes

def scalar_loss():
    l = 0.0
    for j in range(k):
        lj, dj = _loss(z[j], T[i, j], eps)
        l += lj
        dz[j] = dj


def scalar_loss_split():
    # The CSR pass's form of scalar_loss for a rule without calls: in the
    # reassociated batch pass the one loop above vectorises (from 4 outputs),
    # and its stores into dz make LLVM guard the vector form with a run-time
    # check of dz against z and T[i]; a dz lying within 16 elements after
    # either ran the scalar loop, whose in-order sum gave the row's loss
    # other last bits.  So the derivatives in one loop, the loss in a loop
    # that stores nothing (the rule again: its derivative is dropped), which
    # has one vector form whatever the addresses -- the sum the vector form
    # gave before.  A rule with calls (log: exp, log1p) does not vectorise
    # and keeps the one loop (tests/test_epoch_placement.py pins both).
    for j in range(k):
        lj, dj = _loss(z[j], T[i, j], eps)
        dz[j] = dj
    l = 0.0
    for j in range(k):
        lj, dj = _loss(z[j], T[i, j], eps)
        l += lj


def row_loss():
    if k >= VEC_MIN_OUTPUTS:
        l = _loss_vec(z, T[i], eps, dz)
    else:
        l = _loss(z, T[i], eps, dz)


def row_targets():
    # the block's targets in the rule's lane form: class labels (row rules), or
    # the k targets of each row as (k, lanes) like the scores (scalar rules)
    for q in range(m):
        yb[q] = T[order[r0 + q]]


def scalar_targets():
    for q in range(m):
        i = order[r0 + q]
        for j in range(k):
            yb[j, q] = T[i, j]
