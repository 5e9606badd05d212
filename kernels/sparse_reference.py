"""The NumPy oracle of the sparse modes (``kernels/sparse_rules.py``).

Plain, dense-array NumPy written from each mode's documented semantics, with
no closed forms and no bookkeeping of skipped steps: it is what the compiled
sparse epochs are tested against, and what ``backend="numpy"`` runs.

* "lazy": each step computes the minibatch's gradient on every row, then
  applies the update rule (``reference.UPDATES``) to the touched rows only,
  their penalty gradient divided by pi_f; the Polyak average takes every
  row's value at every step.
* "linear" (exact): the dense reference epoch itself
  (``_BaseLinear._reference_epoch``): exact means "the same as dense".
* "scaled" (exact plain SGD): the same, except that an L1 part is the
  cumulative penalty applied to every weight every step
  (``cumulative_l1_epoch``).

The epoch's loss is the mean minibatch data loss plus the penalty of the
final weights, as the compiled sparse epochs report it.
"""

import math

import numpy as np

from . import reference, sparse_rules
from .loss_reference import penalty as _penalty


def epoch(est, ctx, order, bs, mode):
    penalty, alpha = est._penalty_args()
    l1_ratio = {"l2": 0.0, "l1": 1.0}.get(penalty, float(est.l1_ratio))
    if mode == "lazy":
        return lazy_epoch(est, ctx, order, bs, alpha, l1_ratio)
    if mode == "scaled" and alpha * l1_ratio > 0:
        return cumulative_l1_epoch(est, ctx, order, bs, alpha, l1_ratio)
    return est._reference_epoch(ctx, order, bs)


def _batches(est, ctx, order, bs):
    """(rows, data loss, dW, db) per minibatch without the penalty: the
    minibatches of the dense reference epoch (``_weighted_minibatches``)."""
    return est._weighted_minibatches(ctx, order, bs, "numpy")


def _update(name, p, g, states, step, hyper, scalars, z):
    """reference.UPDATES[name] on flat arrays p, g, states; returns new scalars."""
    fn = reference.UPDATES[name]
    kwargs = dict(hyper)
    if z is not None:
        kwargs["z"] = z
    if name == "nadam":
        return (fn(p, g, states, step, mu_product=scalars[0], **kwargs),)
    fn(p, g, states, step, **kwargs)
    return scalars


def _hyper(opt, gi, lr):
    user = dict(zip(opt._spec.user_hyper, opt._hyper_tuple(opt.param_groups[gi])))
    user["lr"] = lr
    return user


def _intercept(opt, ctx, db, step, lr, key, averaging, w_avg):
    if ctx.b is None:
        return
    gB = opt._groups[1]
    states = {s: arrs[0] for s, arrs in gB.states.items() if arrs is not None}
    z = None
    if key is not None:
        z = reference.normal(key, int(gB.offsets[0]), db.size)
    gB.scalars = _update(opt._spec.name, ctx.b, db, states, step, _hyper(opt, 1, lr),
                         gB.scalars, z)
    if averaging:
        gB.avg[0][...] += w_avg * (ctx.b - gB.avg[0])


def _advance(opt, averaging):
    for g in opt._groups:
        g.step += 1
        if averaging:
            g.avg_count += 1


def lazy_epoch(est, ctx, order, bs, alpha, l1_ratio):
    X, W, opt = ctx.X, ctx.W, ctx.opt
    d, k = W.shape
    name = opt._spec.name
    gW = opt._groups[0]
    counts = np.bincount(X.indices, minlength=d)
    pi = sparse_rules.touch_probabilities(counts, X.shape[0], bs, est.sampling)
    total, count = 0.0, 0
    for rows, loss, dW, db in _batches(est, ctx, order, bs):
        if not math.isfinite(loss):
            return float("nan")
        touched = np.unique(X[rows].indices)
        Wt = W[touched]
        pen_grad = alpha * (l1_ratio * np.sign(Wt) + (1.0 - l1_ratio) * Wt)
        g = dW[touched] + (pen_grad / pi[touched][:, None]).astype(W.dtype)
        lr = ctx.base_lr * ctx.schedule.factor(ctx.t) * ctx.plateau
        step = gW.step + 1
        key = None
        if opt._noisy and opt._noise_on(opt._prepared_hyper(0, gW)):
            from ._helpers import step_key
            key = step_key(opt.seed, step)
        idx = (touched[:, None] * k + np.arange(k)).ravel()
        p = W.reshape(-1)[idx]
        states = {s: arrs[0][idx] for s, arrs in gW.states.items() if arrs is not None}
        z = None if key is None else reference.normal(key, int(gW.offsets[0]), d * k)[idx]
        gW.scalars = _update(name, p, g.reshape(-1), states, step, _hyper(opt, 0, lr),
                             gW.scalars, z)
        W.reshape(-1)[idx] = p
        for s, arr in states.items():
            gW.states[s][0][idx] = arr
        averaging = opt.average_start is not None and step > opt.average_start
        w_avg = 1.0 / (gW.avg_count + 1) if averaging else 0.0
        if averaging:
            gW.avg[0][...] += w_avg * (W.reshape(-1) - gW.avg[0])
        _intercept(opt, ctx, db, step, lr, key, averaging, w_avg)
        _advance(opt, averaging)
        ctx.t += 1
        total += loss * rows.shape[0]
        count += rows.shape[0]
    pen, _ = _penalty(W, alpha, l1_ratio)
    return (total / count if count else 0.0) + float(pen)


def cumulative_l1_epoch(est, ctx, order, bs, alpha, l1_ratio):
    """Plain SGD whose L2 part is the dense step's and whose L1 part is the
    cumulative penalty of Tsuruoka et al., on every weight every step.  In W's
    units: u (owed) and q (received) shrink with the step's L2 factor c, u
    grows by lr*l1; then every weight is clipped (sparse_rules.cumulative_l1)."""
    W, opt = ctx.W, ctx.opt
    gW = opt._groups[0]
    wf = W.reshape(-1)
    l1 = alpha * l1_ratio
    l2 = alpha * (1.0 - l1_ratio)
    q = np.zeros(wf.shape[0])
    u = 0.0
    total, count = 0.0, 0
    for rows, loss, dW, db in _batches(est, ctx, order, bs):
        if not math.isfinite(loss):
            return float("nan")
        lr = ctx.base_lr * ctx.schedule.factor(ctx.t) * ctx.plateau
        step = gW.step + 1
        hyper = _hyper(opt, 0, lr)
        g = dW + W.dtype.type(l2) * W
        states = {s: arrs[0] for s, arrs in gW.states.items() if arrs is not None}
        _update(opt._spec.name, wf, g.reshape(-1), states, step, hyper, gW.scalars, None)
        c = 1.0 - lr * (l2 + hyper["weight_decay"])
        u = c * u + lr * l1
        q *= c
        before = wf.astype(np.float64)
        after = np.where(before > 0, np.maximum(0.0, before - (u + q)),
                         np.where(before < 0, np.minimum(0.0, before + (u - q)), before))
        q += after - before
        wf[...] = after
        _intercept(opt, ctx, db, step, lr, None, False, 0.0)
        _advance(opt, False)
        ctx.t += 1
        total += loss * rows.shape[0]
        count += rows.shape[0]
    pen, _ = _penalty(W, alpha, l1_ratio)
    return (total / count if count else 0.0) + float(pen)
