"""Snippets for the sparse epochs (kernels/sparse_epoch_drivers.py): their
set-up and the primitives of the loop written once in
kernels/sparse_epoch_rules.py (``sparse_epoch``; the names: the table
rulelang.tables.NUMBA_SPARSE_EPOCH), each mode's alternatives written once.

``start`` opens both epochs (``HOLE_K`` is ``W.shape[1]``, or ``1`` in the
one-output twins: the compiler then drops every loop over the outputs, the
same arithmetic in the same order).  The primitives shared by the modes come
first (``collect_touched``, ``batch_pass``, ...: the batch pass's
``HOLE_SCORES`` and ``HOLE_PREFETCH_NEXT`` are the mode's), then the lazy
and linear modes' (``rows_*``), the scaled mode's (``scaled_*``) and its
per-example path's (``example_*``: batch 1, a row's features distinct, no
L1: the same loop without the touched list and the compact gradient).
"""
from optkern.kernels.templates.standins import *  # noqa: F401,F403


def start():
    dt = W.dtype.type
    eps = dt(epsilon)
    n = order.shape[0]
    d = W.shape[0]
    k = HOLE_K
    Wf = W.reshape(d * k)
    direct = batch_size == 1 and unique_rows
    # the slot table is hashed when it is shorter than W (sparse_epoch_drivers)
    hashed = slot.shape[0] < d
    # how far ahead the minibatch loop prefetches: X's rows a batch ahead
    # (at most 64 rows), the rows of W (and states) of the row half a batch
    # ahead (at most 32), whose indices arrived by then
    ahead = min(max(batch_size, 2), 64)
    near = min(max(batch_size // 2, 1), 32)


# ------------------------------- the primitives of both modes' minibatch loop

def collect_touched():
    if direct:
        # one row without repeated features: its nonzeros are the touched rows
        lo = indptr[order[r0]]
        nt = indptr[order[r0] + 1] - lo
        for u in range(nt):
            touched[0, u] = indices[lo + u]
            if inv_p is not None:
                tscale[u] = inv_p[lo + u] if per_nz else inv_p[indices[lo + u]]
    elif fused:
        # nothing reads the touched list before the row pass: it is built
        # there (collect_scatter_row)
        nt = 0
    else:
        nt = collect_rows(indices, indptr, order, r0, r1, slot, touched, hashed, inv_p,
                          per_nz, tscale)
        for u in range(nt):
            for j in range(k):
                G[u, j] = 0.0


def batch_pass():
    for j in range(k):
        db[j] = 0.0
    lsum = 0.0
    wsum = 0.0
    for r in range(r0, r1):
        prefetch_rows(data, indices, indptr, T, sw, order, r, stop, ahead, inv_p, per_nz)
        if r + near < stop:
            nx = order[r + near]
            for p in range(indptr[nx], indptr[nx + 1]):
                HOLE_PREFETCH_NEXT
        i = order[r]
        w = sw[i]
        lo = indptr[i]
        hi = indptr[i + 1]
        HOLE_SCORES
        HOLE_LOSS
        lsum += w * l
        wsum += w
        if w != 1.0:
            for j in range(k):
                dz[j] *= w
        for j in range(k):
            db[j] += dz[j]
        if direct:
            for u in range(nt):
                for j in range(k):
                    G[u, j] = data[lo + u] * dz[j]
        elif fused:
            nt = collect_scatter_row(data, indices, lo, hi, slot, hashed, touched, nt, dz,
                                     G, k, inv_p, per_nz, tscale)
        else:
            scatter_row(data, indices, lo, hi, slot, hashed, dz, G, k)


def release_touched():
    if not direct:
        release_slots(slot, touched, nt)


def prepare_w():
    hyperW, scalarsW = _prepare(step, scalarsW, lr, HOLE_USER_W)


def prepare_b():
    hyperB, scalarsB = _prepare(step, scalarsB, lr, HOLE_USER_B)


def update_b():
    for j in range(k):
        db[j] = db[j] * inv
    _loop_serial(b, db, HOLE_B_STATES, avgB, hyperB, w_avg, key, offB)


def no_step():
    pass


# ---------------------------------------------- the lazy and linear modes

def rows_begin_block():
    if P is not None and start == 0:
        for f in range(d):
            last[f] = step0


def rows_update():
    HOLE_UNPACK
    # two copies of the update: pure L2 (alpha * w, the value penalty_grad
    # gives without its sign branch, which kept the loop ~20% slower) and
    # the general penalty; exactly one of them runs
    nt2 = nt if l2_only else 0
    ntg = 0 if l2_only else nt
    for u in range(nt2):
        f = touched[0, u]
        scale = 1.0
        if inv_p is not None:
            scale = tscale[u]
        for j in range(k):
            e = f * k + j
            p_e = Wf[e]
            pg = alpha * p_e
            g = dt(G[u, j] * inv + pg * scale)
            zz = dt(draw(key, offW + e, 0.0))
            p_i, HOLE_STATE_OUTS = _rule(p_e, g, HOLE_STATE_LOADS, HOLE_HYPER_W, zz)
            HOLE_STATE_STORES
            update_average(avgW, e, p_i, w_avg)
            Wf[e] = p_i
        if P is not None:
            last[f] = step
    for u in range(ntg):
        f = touched[0, u]
        scale = 1.0
        if inv_p is not None:
            scale = tscale[u]
        for j in range(k):
            e = f * k + j
            p_e = Wf[e]
            pg = penalty_grad(p_e, alpha, l1_ratio)
            g = dt(G[u, j] * inv + pg * scale)
            zz = dt(draw(key, offW + e, 0.0))
            p_i, HOLE_STATE_OUTS = _rule(p_e, g, HOLE_STATE_LOADS, HOLE_HYPER_W, zz)
            HOLE_STATE_STORES
            update_average(avgW, e, p_i, w_avg)
            Wf[e] = p_i
        if P is not None:
            last[f] = step


def rows_end_epoch():
    if P is not None:
        for f in range(d):
            HOLE_CATCH_UP_ROW
    pen = penalty_value(Wf, alpha, l1_ratio)


def catch_up_touched():
    if P is not None:
        for u in range(nt):
            f = touched[0, u]
            HOLE_CATCH_UP_ROW


def catch_up_row():
    # bring row f from step last[f] to ``step``: x <- M^gap x, the average with
    # the skipped iterates (those after avg_start)
    gap = step - last[f]
    if gap > 0:
        pre = 0
        if want_sum:
            first_avg = max(last[f], avg_start)
            pre = min(max(first_avg - last[f], 0), gap)
        for part in range(2):
            g_part = pre if part == 0 else gap - pre
            if g_part == 0:
                continue
            summing = want_sum and part == 1
            gap_matrices(g_part, P, S, A, Ssum, tmp, summing)
            c0 = float(max(last[f] + pre - avg_start, 0)) if summing else 0.0
            for j in range(k):
                e = f * k + j
                x[0] = Wf[e]
                HOLE_LOAD_X
                for a in range(x.shape[0]):
                    acc = 0.0
                    for c in range(x.shape[0]):
                        acc += A[a, c] * x[c]
                    y[a] = acc
                if avgW is not None:
                    if summing:
                        s_p = 0.0
                        for c in range(x.shape[0]):
                            s_p += Ssum[0, c] * x[c]
                        avgW[e] = dt((c0 * avgW[e] + s_p) / (c0 + g_part))
                Wf[e] = dt(y[0])
                HOLE_STORE_Y
        last[f] = step


def rows_scores():
    row_scores(data, indices, lo, hi, W, Wf, b, z, k)


def prefetch_next():
    f = indices[p]
    prefetch(Wf, f * k)


def prefetch_rows_epoch():
    # the rows epoch's other per-feature arrays, for the next row's features:
    # the rule's states and the lazy penalty's per-feature 1/pi_f (the slot
    # table stays in the caches; a per-nonzero 1/pi_f comes with the row)
    HOLE_PREFETCH_STATES
    if inv_p is not None:
        if not per_nz:
            prefetch(inv_p, f)


def prefetch_state():
    if HOLE_STATE is not None:
        prefetch(HOLE_STATE, f * k)


# ---------------------------------------------------------- the scaled mode

def scaled_begin_block():
    # W = s V; u: the L1 amount (in V's units) every weight is owed so far;
    # a block after the first resumes them from ``carry``
    s = 1.0
    u_l1 = 0.0
    if start == 0:
        if l1 > 0:
            for e in range(d * k):
                q[e] = 0.0
    else:
        s = carry[0]
        u_l1 = carry[1]


def scaled_update():
    HOLE_UNPACK
    # the step is affine in (p, g) (plain SGD: no state, no noise), p' = c_t p
    # + a_t g, both read off the rule: c_t the shrink (1 - lr * weight_decay),
    # a_t the gradient's coefficient (-lr); with W = s V and s' = s c_t,
    # V' = V + (a_t / s') g
    c_t, HOLE_STATE_OUTS = _rule(one, zero, HOLE_ZERO_STATES, HOLE_HYPER_W, zero)
    a_t, HOLE_STATE_OUTS = _rule(zero, one, HOLE_ZERO_STATES, HOLE_HYPER_W, zero)
    s_new = s * c_t
    a_s = a_t / s_new
    if l1 > 0:
        u_l1 += lr * l1 / s_new
    for u in range(nt):
        f = touched[0, u]
        for j in range(k):
            e = f * k + j
            g = dt(G[u, j] * inv)
            v = Wf[e] + a_s * g
            if l1 > 0:
                v, q[e] = cumulative_l1(v, q[e], u_l1)
            Wf[e] = v
    s = s_new
    if s < HOLE_MIN_SCALE:
        for e in range(d * k):
            Wf[e] = Wf[e] * s
        if l1 > 0:
            for e in range(d * k):
                q[e] = q[e] * s
            u_l1 *= s
        s = 1.0


def scaled_end_block():
    carry[0] = s
    carry[1] = u_l1


def scaled_end_epoch():
    for e in range(d * k):
        v = float(Wf[e])
        if l1 > 0:
            v, _ = cumulative_l1(v, float(q[e]), u_l1)
        Wf[e] = v * s
    pen = penalty_value(Wf, alpha, l1_ratio)


def clip_touched():
    # a touched weight first gets the L1 amount it is owed so far, so that
    # its scores and its step see what the dense algorithm's weight holds
    if l1 > 0:
        for u in range(nt):
            f = touched[0, u]
            for j in range(k):
                e = f * k + j
                v, q[e] = cumulative_l1(float(Wf[e]), float(q[e]), u_l1)
                Wf[e] = v


def scaled_scores():
    row_scores(data, indices, lo, hi, W, Wf, None, z, k)
    for j in range(k):
        z[j] = z[j] * s
    if b is not None:
        for j in range(k):
            z[j] += b[j]


# ------------------------------------ the scaled mode's per-example path

def example_pass():
    # batch 1 (r1 = r0 + 1), one pass over the row's nonzeros per step: no
    # touched list, no compact gradient
    prefetch_rows(data, indices, indptr, T, sw, order, r0, stop, 2, None, False)
    if r0 + 1 < stop:
        nx = order[r0 + 1]
        for p in range(indptr[nx], indptr[nx + 1]):
            prefetch(Wf, indices[p] * k)
    i = order[r0]
    w = sw[i]
    lo = indptr[i]
    hi = indptr[i + 1]
    HOLE_SCORES
    HOLE_LOSS
    if w != 1.0:
        for j in range(k):
            dz[j] *= w
    for j in range(k):
        db[j] = 0.0
        db[j] += dz[j]
    lsum = 0.0
    wsum = 0.0
    lsum += w * l
    wsum += w


def example_update():
    HOLE_UNPACK
    c_t, HOLE_STATE_OUTS = _rule(one, zero, HOLE_ZERO_STATES, HOLE_HYPER_W, zero)
    a_t, HOLE_STATE_OUTS = _rule(zero, one, HOLE_ZERO_STATES, HOLE_HYPER_W, zero)
    s_new = s * c_t
    a_s = a_t / s_new
    for qq in range(lo, hi):
        f = indices[qq]
        x_f = data[qq]
        for j in range(k):
            e = f * k + j
            g = dt(dt(x_f * dz[j]) * inv)
            Wf[e] = Wf[e] + a_s * g
    s = s_new
    if s < HOLE_MIN_SCALE:
        for e in range(d * k):
            Wf[e] = Wf[e] * s
        s = 1.0
