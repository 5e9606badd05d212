# Fragment of sparse_epoch.py: the epoch of the scaled mode (``HOLE_NAME`` is  # template-only
# epoch_scaled or its one-output twin epoch_scaled_k1).  # template-only
from numba import njit  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only


@njit(cache=True, nogil=True, error_model="numpy")
def HOLE_NAME(data, indices, indptr, T, sw, order, start, stop, batch_size, W, b, HOLE_W_STATES, HOLE_B_STATES,
             avgW, avgB, userW, userB, scalarsW, scalarsB, step0, avg_start, avg_count0,
             sched, base_lr, plateau, alpha, l1_ratio, epsilon, seed, offW, offB, w_mean,
             slot, touched, G, z, dz, db, unique_rows, l1, q, carry):
    HOLE_START
    # no lazy penalty here (the steps' per-nonzero 1/pi_f)
    inv_p = None
    per_nz = False
    tscale = None
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
    # the L1 clip (clip_touched) reads the touched rows before the scores
    fused = (not direct) and l1 <= 0
    if per_example:
        for r in range(start, stop):
            prefetch_rows(data, indices, indptr, T, sw, order, r, stop, 2, None, False)
            if r + 1 < stop:
                nx = order[r + 1]
                for p in range(indptr[nx], indptr[nx + 1]):
                    prefetch(Wf, indices[p] * k)
            i = order[r]
            w = sw[i]
            lo = indptr[i]
            hi = indptr[i + 1]
            HOLE_SCORES
            HOLE_LOSS
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
            hyperW, scalarsW = _prepare(step, scalarsW, lr, HOLE_USER_W)
            averaging = avg_start >= 0 and step > avg_start
            w_avg = 1.0 / (avg_count + 1) if averaging else 0.0
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
            if b is not None:
                hyperB, scalarsB = _prepare(step, scalarsB, lr, HOLE_USER_B)
                for j in range(k):
                    db[j] = 0.0
                    db[j] += dz[j]
                    db[j] = db[j] * inv
                _loop_serial(b, db, HOLE_B_STATES, avgB, hyperB, w_avg, key, offB)
            if averaging:
                avg_count += 1
    HOLE_STEPS
    if stop < n:
        carry[0] = s
        carry[1] = u_l1
        return (total / weight if weight > 0.0 else 0.0), step - step0, avg_count, \
            scalarsW, scalarsB
    for e in range(d * k):
        v = float(Wf[e])
        if l1 > 0:
            v, _ = cumulative_l1(v, float(q[e]), u_l1)
        Wf[e] = v * s
    mean = total / weight if weight > 0.0 else 0.0
    return mean + penalty_value(Wf, alpha, l1_ratio), step - step0, avg_count, scalarsW, \
        scalarsB
