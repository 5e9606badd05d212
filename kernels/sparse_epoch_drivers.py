"""Compiled training epochs on CSR data whose steps touch only the batch's rows.

The sparse twin of ``epoch_drivers.py``'s CSR layout (which stays as the
``sparse_updates="dense"`` reference).  For a (loss rule, update rule) pair
this module writes one source file (the mechanism of ``drivers.py``) holding

``epoch_rows``
    the "lazy" and "linear" modes of ``kernels/sparse_rules.py``.  Each
    minibatch: the rows of W its features touch are listed once (``slot``
    maps a feature to its place in the compact gradient ``G``, so nothing is
    n_features x n_outputs but W and the states); with the tables ``P``/``S``
    (linear mode, or averaging) the touched rows are first brought up to date
    (``last`` holds the step each row is current at); then the scores and the
    loss rule per row, the compact gradient, and the update rule (the same
    scalar rule every target compiles) on the touched rows' elements, with
    the penalty's gradient (divided by pi_f in lazy mode: ``inv_p``), then
    the intercept's dense update.  At the end every row is brought up to date.
``epoch_scaled``
    the "scaled" mode (plain SGD): W holds V with W = s V during the epoch;
    the rule runs on s*V with the L2 coefficient as its weight decay, and the
    cumulative L1 penalty clips the touched weights.  At the end W = s V and
    every weight gets the L1 amount it is owed.

Both take ``start, stop`` right after ``order``: they train on the rows
order[start:stop] (a multiple of batch_size, or the epoch's tail) and resume
where the previous call stopped, so an epoch can run in blocks (Ctrl-C is
answered between them): the catch-up timestamps are set when start == 0, the
end-of-epoch pass and the penalty's value run when stop == n, and
``epoch_scaled`` keeps (s, u) in ``carry`` between calls.  Each has a
one-output twin (``epoch_rows_k1``, ``epoch_scaled_k1``): the same source
with k a literal 1, the same arithmetic.

``epoch_scaled`` at batch 1 on canonical CSR without L1 (per-example SGD)
runs its own loop: no touched list, no compact gradient, the same arithmetic
in the same order.  Every epoch's row loop prefetches what the next rows
read (``prefetch_rows``: their nonzeros, and the rows of W and its states
they touch): shuffled rows otherwise stall on memory once per row.

A step costs O(nnz_batch x k + k), independent of n_features; the epoch adds
O(n_features x k) once, at its end.  The epoch's loss is the mean minibatch
data loss plus the penalty of the weights at the end of the epoch (the dense
epoch adds the penalty of each step's weights, which would cost a pass over W
per step).  Arguments: see ``_EPOCH_ROWS``; the glue is ``optkern.sparse_epochs``.
"""

import numpy as np
from numba import njit
from numba.extending import overload

from . import _files
from . import _helpers  # noqa: F401 (the generated modules import it: in their digest)
from . import _simd  # noqa: F401 (the generated modules import it: in their digest)
from ._helpers import prefetch
from . import drivers as _drivers
from . import loss_rules as _loss_rules
from . import rules as _update_rules
from . import schedule_rules as _schedule_rules  # noqa: F401 (the generated modules import it: in their digest)
from . import sparse_rules as _sparse_rules
from . import templates as _templates
from ._simd import csr_row_scores



# ------------------------------------------------------------ shared pieces
# (compiled into the generated epochs; not cached on their own)

@njit(inline="always")
def collect_rows(indices, indptr, order, start, stop, slot, touched):
    """List the features of rows order[start:stop] once each; slot[f] = its place."""
    nt = 0
    for r in range(start, stop):
        i = order[r]
        for q in range(indptr[i], indptr[i + 1]):
            f = indices[q]
            if slot[f] < 0:
                slot[f] = nt
                touched[nt] = f
                nt += 1
    return nt


def prefetch_target(T, i):
    """Prefetch row i of the targets (2-D: one row per example; 1-D: labels)."""


@overload(prefetch_target, inline="always")
def _ol_prefetch_target(T, i):
    if T.ndim == 2:
        return lambda T, i: prefetch(T[i], 0)
    return lambda T, i: prefetch(T, i)


@njit(inline="always")
def prefetch_rows(data, indices, indptr, T, sw, order, r, stop, Wf, k):
    """Hint the CPU to fetch what the rows after order[r] will read: the row
    pointers three rows ahead, the nonzeros, target and weight two rows
    ahead, and the first cache line of each row of W the next row touches
    (its indices were fetched one row earlier, so these hints do not wait on
    memory).  Shuffled rows of an X larger than the cache otherwise stall on
    memory once per row: nothing overlaps those misses, a row's work fills
    the out-of-order window.  A no-op for the results."""
    if r + 3 < stop:
        prefetch(indptr, order[r + 3])
    if r + 2 < stop:
        nx = order[r + 2]
        lo = indptr[nx]
        hi = indptr[nx + 1]
        prefetch(sw, nx)
        prefetch_target(T, nx)
        for p in range(lo, hi, 8):
            prefetch(data, p)
        for p in range(lo, hi, 16):
            prefetch(indices, p)


@njit(inline="always")
def row_scores(data, indices, lo, hi, W, Wf, b, z):
    """z = b + X[i] W: a plain loop for one output (the vector intrinsic's
    masked loads cost more than they save there), else kernels/_simd.py's."""
    if W.shape[1] == 1:
        acc = Wf.dtype.type(0.0)
        for q in range(lo, hi):
            acc += data[q] * Wf[indices[q]]
        if b is not None:
            acc += b[0]
        z[0] = acc
    else:
        csr_row_scores(data, indices, lo, hi, W, b, z)


@njit(inline="always")
def scatter_row(data, indices, lo, hi, slot, dz, G, k):
    """G[slot[f]] += x_f * dz for the row's nonzeros (k = dz's length, a
    literal 1 in the one-output epochs)."""
    for q in range(lo, hi):
        s = slot[indices[q]]
        x = data[q]
        for j in range(k):
            G[s, j] += x * dz[j]


@njit(cache=True, nogil=True)
def feature_counts(indices, n_features):
    """Stored entries per column, without the int64 copy of ``indices`` that
    np.bincount makes (2 x the index array at 10^7 nonzeros and int32)."""
    out = np.zeros(n_features, np.int64)
    for q in range(indices.shape[0]):
        out[indices[q]] += 1
    return out


@njit(inline="always")
def penalty_grad(w, alpha, l1_ratio):
    """The penalty's (sub)gradient at w (sign(0) = 0), as the dense path's."""
    sgn = 1.0 if w > 0 else (-1.0 if w < 0 else 0.0)
    return alpha * (l1_ratio * sgn + (1.0 - l1_ratio) * w)


@njit(cache=True, nogil=True)
def penalty_value(Wf, alpha, l1_ratio):
    if alpha == 0:
        return 0.0
    a1 = 0.0
    a2 = 0.0
    for e in range(Wf.shape[0]):
        w = float(Wf[e])
        a1 += abs(w)
        a2 += w * w
    return alpha * (l1_ratio * a1 + 0.5 * (1.0 - l1_ratio) * a2)


@njit(inline="always")
def gap_matrices(gap, P, S, A, Ssum, tmp, want_sum):
    """A = M^gap and (want_sum) Ssum = sum_{t=1}^{gap} M^t from the tables."""
    m = A.shape[0]
    for a in range(m):
        for c in range(m):
            A[a, c] = 1.0 if a == c else 0.0
            Ssum[a, c] = 0.0
    j = 0
    g = gap
    while g > 0:
        if g & 1:
            if want_sum:
                for a in range(m):
                    for c in range(m):
                        acc = 0.0
                        for e in range(m):
                            acc += A[a, e] * S[j, e, c]
                        Ssum[a, c] += acc
            for a in range(m):
                for c in range(m):
                    acc = 0.0
                    for e in range(m):
                        acc += A[a, e] * P[j, e, c]
                    tmp[a, c] = acc
            for a in range(m):
                for c in range(m):
                    A[a, c] = tmp[a, c]
        g >>= 1
        j += 1


@njit(inline="always")
def cumulative_l1(v, q, u):
    """Tsuruoka et al.'s clip (sparse_rules.cumulative_l1), compiled."""
    z = v
    if v > 0:
        v = max(0.0, v - (u + q))
    elif v < 0:
        v = min(0.0, v + (u - q))
    return v, q + (v - z)


# ------------------------------------------------------------------ template

_HEADER = '''\
# Generated by optkern.kernels.sparse_epoch_drivers: loss {loss!r}, update {update!r}.
# Do not edit.  sources digest: {digest}
import math

import numpy as np
from numba import njit

from optkern.kernels.loss_rules import {loss_fn} as _loss_py
from optkern.kernels.rules import {rule_fn} as _rule_py, {prepare_fn} as _prepare_py
from optkern.kernels.schedule_rules import schedule_factor as _schedule_py
from optkern.kernels._helpers import (
    load, store, draw, update_average, noise_key_jit, with_fast_math, exp_fast, log_fast,
    VEC_MIN_OUTPUTS, prefetch)
from optkern.kernels.sparse_epoch_drivers import (
    collect_rows, prefetch_rows, row_scores, scatter_row, penalty_grad, penalty_value, gap_matrices, cumulative_l1)
from {update_module} import _loop_serial

_loss = njit(_loss_py)
{loss_vec}
_rule = njit(inline="always")(_rule_py)
_prepare = njit(cache=True)(_prepare_py)
_schedule = njit(cache=True)(_schedule_py)
'''

# the batch pass, shared by both epochs: scores (``scores_scale``: s for the
# scaled mode), the loss rule, the compact gradient, db
_BATCH = '''\
        if direct:
            # one row without repeated features: its nonzeros are the touched rows
            lo = indptr[order[r0]]
            nt = indptr[order[r0] + 1] - lo
            for u in range(nt):
                touched[u] = indices[lo + u]
        else:
            nt = collect_rows(indices, indptr, order, r0, r1, slot, touched)
            for u in range(nt):
                for j in range(k):
                    G[u, j] = 0.0
{catch_up_touched}
        for j in range(k):
            db[j] = 0.0
        lsum = 0.0
        wsum = 0.0
        for r in range(r0, r1):
            prefetch_rows(data, indices, indptr, T, sw, order, r, stop, Wf, k)
            if r + 1 < stop:
                nx = order[r + 1]
                for p in range(indptr[nx], indptr[nx + 1]):
                    f = indices[p]
                    prefetch(Wf, f * k)
{prefetch_more}
            i = order[r]
            w = sw[i]
            lo = indptr[i]
            hi = indptr[i + 1]
{scores}
{loss}
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
            else:
                scatter_row(data, indices, lo, hi, slot, dz, G, k)
        if wsum <= 0.0 or not math.isfinite(lsum):
            if not direct:
                for u in range(nt):
                    slot[touched[u]] = -1
        if wsum <= 0.0:
            continue
        inv = 1.0 / ((r1 - r0) * w_mean)
        batch_loss = lsum * inv
        if not math.isfinite(batch_loss):
            return np.nan, step - step0, avg_count, scalarsW, scalarsB
        total += batch_loss * (r1 - r0)
        weight += r1 - r0
        lr = base_lr * _schedule(sched[0], float(step), sched[1], sched[2], sched[3],
                                 sched[4], sched[5]) * plateau
        step += 1
        key = noise_key_jit(seed, step)
        hyperW, scalarsW = _prepare(step, scalarsW, lr, {user_w})
        averaging = avg_start >= 0 and step > avg_start
        w_avg = 1.0 / (avg_count + 1) if averaging else 0.0
{unpack}
'''

_INTERCEPT = '''\
        if b is not None:
            hyperB, scalarsB = _prepare(step, scalarsB, lr, {user_b})
            for j in range(k):
                db[j] = db[j] * inv
            _loop_serial(b, db, {b_states}, avgB, hyperB, w_avg, key, offB)
        if averaging:
            avg_count += 1
'''

_SIGNATURE = '''
@njit(cache=True, nogil=True, error_model="numpy")
def epoch_{kind}(data, indices, indptr, T, sw, order, start, stop, batch_size, W, b, {w_states}, {b_states},
             avgW, avgB, userW, userB, scalarsW, scalarsB, step0, avg_start, avg_count0,
             sched, base_lr, plateau, alpha, l1_ratio, epsilon, seed, offW, offB, w_mean,
             slot, touched, G, z, dz, db, unique_rows, {extra}):
    dt = W.dtype.type
    eps = dt(epsilon)
    n = order.shape[0]
    d = W.shape[0]
    k = W.shape[1]
    Wf = W.reshape(d * k)
    step = step0
    avg_count = avg_count0
    total = 0.0
    weight = 0.0
    direct = batch_size == 1 and unique_rows
'''

# lazy / linear: ``inv_p`` None = the full penalty (exact), else per-row 1/pi_f;
# ``P`` None = no tables (lazy without averaging: nothing to catch up)
_EPOCH_ROWS = _SIGNATURE.format(kind="rows", w_states="{w_states}", b_states="{b_states}",
                                extra="inv_p, P, S, last, A, Ssum, tmp, x, y") + '''\
    want_sum = avgW is not None
    l2_only = l1_ratio == 0.0
    if P is not None and start == 0:
        for f in range(d):
            last[f] = step0
    for r0 in range(start, stop, batch_size):
        r1 = min(r0 + batch_size, stop)
''' + _BATCH + '''\
        # two copies of the update: pure L2 (alpha * w, the value penalty_grad
        # gives without its sign branch, which kept the loop ~20% slower) and
        # the general penalty; exactly one of them runs
        nt2 = nt if l2_only else 0
        ntg = 0 if l2_only else nt
        for u in range(nt2):
            f = touched[u]
            scale = 1.0
            if inv_p is not None:
                scale = inv_p[f]
            for j in range(k):
                e = f * k + j
                p_e = Wf[e]
                pg = alpha * p_e
                g = dt(G[u, j] * inv + pg * scale)
                zz = dt(draw(key, offW + e, 0.0))
                p_i, {state_outs} = _rule(p_e, g, {state_loads}, {hyper_w}, zz)
{state_stores}
                update_average(avgW, e, p_i, w_avg)
                Wf[e] = p_i
            if not direct:
                slot[f] = -1
            if P is not None:
                last[f] = step
        for u in range(ntg):
            f = touched[u]
            scale = 1.0
            if inv_p is not None:
                scale = inv_p[f]
            for j in range(k):
                e = f * k + j
                p_e = Wf[e]
                pg = penalty_grad(p_e, alpha, l1_ratio)
                g = dt(G[u, j] * inv + pg * scale)
                zz = dt(draw(key, offW + e, 0.0))
                p_i, {state_outs} = _rule(p_e, g, {state_loads}, {hyper_w}, zz)
{state_stores}
                update_average(avgW, e, p_i, w_avg)
                Wf[e] = p_i
            if not direct:
                slot[f] = -1
            if P is not None:
                last[f] = step
''' + _INTERCEPT + '''\
    if stop < n:
        # a block of the epoch: the next call resumes at ``stop``
        return (total / weight if weight > 0.0 else 0.0), step - step0, avg_count, \\
            scalarsW, scalarsB
    if P is not None:
        for f in range(d):
{catch_up_row}
    mean = total / weight if weight > 0.0 else 0.0
    return mean + penalty_value(Wf, alpha, l1_ratio), step - step0, avg_count, scalarsW, \\
        scalarsB
'''

# bring row f from step last[f] to ``step``: x <- M^gap x, the average with
# the skipped iterates (those after avg_start)
_CATCH_UP_ROW = '''\
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
{load_x}
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
{store_y}
    last[f] = step'''

# the scaled epoch's per-example loop (batch 1, distinct features, no L1):
# _BATCH and the scaled update for one row, read straight from X
_PER_EXAMPLE = '''\
            prefetch_rows(data, indices, indptr, T, sw, order, r, stop, Wf, k)
            if r + 1 < stop:
                nx = order[r + 1]
                for p in range(indptr[nx], indptr[nx + 1]):
                    prefetch(Wf, indices[p] * k)
            i = order[r]
            w = sw[i]
            lo = indptr[i]
            hi = indptr[i + 1]
{scores}
{loss}
            if w != 1.0:
                for j in range(k):
                    dz[j] *= w
            if w <= 0.0:
                continue
            inv = 1.0 / w_mean
            batch_loss = (w * l) * inv
            if not math.isfinite(batch_loss):
                return np.nan, step - step0, avg_count, scalarsW, scalarsB
            total += batch_loss
            weight += 1
            lr = base_lr * _schedule(sched[0], float(step), sched[1], sched[2], sched[3],
                                     sched[4], sched[5]) * plateau
            step += 1
            key = noise_key_jit(seed, step)
            hyperW, scalarsW = _prepare(step, scalarsW, lr, {user_w})
            averaging = avg_start >= 0 and step > avg_start
            w_avg = 1.0 / (avg_count + 1) if averaging else 0.0
{unpack4}
            c_t, {state_outs} = _rule(one, zero, {zero_states}, {hyper_w}, zero)
            s_new = s * c_t
            for qq in range(lo, hi):
                f = indices[qq]
                x_f = data[qq]
                for j in range(k):
                    e = f * k + j
                    g = dt(dt(x_f * dz[j]) * inv)
                    p_i, {state_outs} = _rule(dt(s * Wf[e]), g, {state_loads}, {hyper_w}, zero)
                    Wf[e] = p_i / s_new
            s = s_new
            if s < {min_scale}:
                for e in range(d * k):
                    Wf[e] = Wf[e] * s
                s = 1.0
            if b is not None:
                hyperB, scalarsB = _prepare(step, scalarsB, lr, {user_b})
                for j in range(k):
                    db[j] = 0.0
                    db[j] += dz[j]
                    db[j] = db[j] * inv
                _loop_serial(b, db, {b_states}, avgB, hyperB, w_avg, key, offB)
            if averaging:
                avg_count += 1'''

_EPOCH_SCALED = _SIGNATURE.format(kind="scaled", w_states="{w_states}",
                                  b_states="{b_states}", extra="l1, q, carry") + '''\
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
    one = dt(1.0)
    zero = dt(0.0)
    # per-example steps (batch 1, a row's features distinct, no L1): the
    # loop below without the touched list and the compact gradient, and with
    # one pass over the row's nonzeros per step; the same arithmetic in the
    # same order (the same weights as the general loop)
    per_example = direct and l1 <= 0
    if per_example:
        for r in range(start, stop):
''' + _PER_EXAMPLE + '''
    for r0 in range(stop if per_example else start, stop, batch_size):
        r1 = min(r0 + batch_size, stop)
''' + _BATCH + '''\
        # the shrink of this step, read off the rule (1 - lr * weight_decay)
        c_t, {state_outs} = _rule(one, zero, {zero_states}, {hyper_w}, zero)
        s_new = s * c_t
        if l1 > 0:
            u_l1 += lr * l1 / s_new
        for u in range(nt):
            f = touched[u]
            for j in range(k):
                e = f * k + j
                g = dt(G[u, j] * inv)
                p_i, {state_outs} = _rule(dt(s * Wf[e]), g, {state_loads}, {hyper_w}, zero)
                v = p_i / s_new
                if l1 > 0:
                    v, q[e] = cumulative_l1(v, q[e], u_l1)
                Wf[e] = v
            if not direct:
                slot[f] = -1
        s = s_new
        if s < {min_scale}:
            for e in range(d * k):
                Wf[e] = Wf[e] * s
            if l1 > 0:
                for e in range(d * k):
                    q[e] = q[e] * s
                u_l1 *= s
            s = 1.0
''' + _INTERCEPT + '''\
    if stop < n:
        carry[0] = s
        carry[1] = u_l1
        return (total / weight if weight > 0.0 else 0.0), step - step0, avg_count, \\
            scalarsW, scalarsB
    for e in range(d * k):
        v = float(Wf[e])
        if l1 > 0:
            v, _ = cumulative_l1(v, float(q[e]), u_l1)
        Wf[e] = v * s
    mean = total / weight if weight > 0.0 else 0.0
    return mean + penalty_value(Wf, alpha, l1_ratio), step - step0, avg_count, scalarsW, \\
        scalarsB
'''

_SCORES = '''\
            row_scores(data, indices, lo, hi, W, Wf, b, z)'''
_SCORES_SCALED = '''\
            row_scores(data, indices, lo, hi, W, Wf, None, z)
            for j in range(k):
                z[j] = z[j] * s
            if b is not None:
                for j in range(k):
                    z[j] += b[j]'''

_CATCH_UP_TOUCHED = '''\
        if P is not None:
            for u in range(nt):
                f = touched[u]
{catch_up_row}'''


# scaled mode: a touched weight first gets the L1 amount it is owed so far, so
# that its scores and its step see what the dense algorithm's weight holds
_CLIP_TOUCHED = '''\
        if l1 > 0:
            for u in range(nt):
                f = touched[u]
                for j in range(k):
                    e = f * k + j
                    v, q[e] = cumulative_l1(float(Wf[e]), float(q[e]), u_l1)
                    Wf[e] = v'''


# the rows epoch's other per-feature arrays, for the next row's features: the
# slot map (batches), the rule's states, the lazy penalty's 1/pi_f
_PREFETCH_ROWS_EPOCH = '''\
if not direct:
    prefetch(slot, f)
{prefetch_states}
if inv_p is not None:
    prefetch(inv_p, f)'''


def _indent(text, n):
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.split("\n"))


def _source(loss_name, rule_name):
    loss = _loss_rules.LOSS_RULES[loss_name]
    spec = _update_rules.RULES[rule_name]
    update_mod = _drivers.module_for(rule_name)
    states = _update_rules.state_names(spec)
    ns = len(states)
    n_user = len(spec.user_hyper)
    w_states = ", ".join(f"sW{j}" for j in range(ns))
    b_states = ", ".join(f"sB{j}" for j in range(ns))
    nh = len(spec.kernel_hyper)
    hyper_w = ", ".join(f"h{j}" for j in range(nh))
    fill = dict(
        w_states=w_states, b_states=b_states, hyper_w=hyper_w,
        state_outs=", ".join(f"s{j}_i" for j in range(ns)),
        state_loads=", ".join(f"load(sW{j}, e, dt(0.0))" for j in range(ns)),
        state_stores=_indent("\n".join(f"store(sW{j}, e, s{j}_i)" for j in range(ns)), 16),
        zero_states=", ".join("zero" for _ in range(ns)),
        user_w=", ".join(f"userW[{j}]" for j in range(1, n_user)),
        user_b=", ".join(f"userB[{j}]" for j in range(1, n_user)),
        min_scale=repr(_sparse_rules.MIN_SCALE),
        unpack=_indent("\n".join(f"h{j} = dt(hyperW[{j}])" for j in range(nh)), 8),
        unpack4=_indent("\n".join(f"h{j} = dt(hyperW[{j}])" for j in range(nh)), 12),
    )
    prefetch_states = "\n".join(f"if sW{j} is not None:\n    prefetch(sW{j}, f * k)"
                                for j in range(ns))
    load_x = "\n".join(f"x[{1 + j}] = load(sW{j}, e, 0.0)" for j in range(ns))
    store_y = "\n".join(f"store(sW{j}, e, dt(y[{1 + j}]))" for j in range(ns))
    catch = _CATCH_UP_ROW.replace("{load_x}", _indent(load_x, 12)).replace(
        "{store_y}", _indent(store_y, 12))
    loss_body = _indent(_templates.snippet(
        "epoch_parts", "scalar_loss" if loss.kind == "scalar" else "row_loss"), 12)
    parts = []
    for kind, template, scores in (("rows", _EPOCH_ROWS, _SCORES),
                                   ("scaled", _EPOCH_SCALED, _SCORES_SCALED)):
        text = template.replace("{catch_up_touched}", _CLIP_TOUCHED if kind == "scaled" else
                                _CATCH_UP_TOUCHED.replace("{catch_up_row}",
                                                          _indent(catch, 16)))
        text = text.replace("{catch_up_row}", _indent(catch, 12))
        text = text.replace("{scores}", scores).replace("{loss}", loss_body)
        text = text.replace("{prefetch_more}", _indent(
            _PREFETCH_ROWS_EPOCH.replace("{prefetch_states}", prefetch_states), 20)
            if kind == "rows" else "")
        for key, value in fill.items():
            text = text.replace("{" + key + "}", value)
        parts.append(text)
        # the one-output twin (binary losses, regression): k a literal 1, so
        # the compiler drops every loop over the outputs (the same arithmetic
        # in the same order: the same weights as the general epoch)
        one = text.replace(f"def epoch_{kind}(", f"def epoch_{kind}_k1(", 1)
        assert one.count("    k = W.shape[1]\n") == 1
        parts.append(one.replace("    k = W.shape[1]\n", "    k = 1\n"))
    # the update module's templates too: the generated epoch imports it
    digest = _drivers.digest(__file__, "update", "update_elements", "epoch_parts")
    head = _HEADER.format(
        loss=loss_name, update=rule_name, digest=digest,
        loss_fn=loss.rule.__name__, rule_fn=spec.rule.__name__,
        prepare_fn=spec.prepare.__name__, update_module=update_mod.__name__,
        loss_vec=("_loss_vec = njit(fastmath={\"reassoc\", \"contract\"})"
                  "(with_fast_math(_loss_py))\n" if loss.kind == "row" else ""))
    return head + "\n".join(parts)


_MODULES = {}


def module_for(loss_name, rule_name):
    """Import (generating if needed) the sparse epoch module of this pair."""
    key = (loss_name, rule_name)
    if key in _MODULES:
        return _MODULES[key]
    if loss_name not in _loss_rules.LOSS_RULES:
        raise ValueError(f"unknown loss {loss_name!r}")
    if rule_name not in _update_rules.RULES:
        raise ValueError(f"unknown update rule {rule_name!r}")
    return _files.load_generated(
        _MODULES, key, _drivers.generated_dir(),
        f"optkern_sparse_epoch_{loss_name}_{rule_name}.py",
        f"optkern.kernels._generated_sparse_epoch_{loss_name}_{rule_name}",
        lambda: _source(loss_name, rule_name))
