"""Compiled training epochs: every minibatch of an epoch in one Numba call.

For a (loss rule, update rule, data layout) triple this module writes one
source file (the templates kernels/templates/epoch*.py filled; the mechanism
and reasons of ``drivers.py``) holding

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
same texts every other target compiles; so is the minibatch loop itself
(``epoch_rules.minibatch_epoch``, pasted as the body after its set-up, each of
its primitives bound to the code of templates/epoch_parts.py for this layout:
``rulelang.epoch.numba_text``).  Only the batch passes live here.

Arguments: about 40, positional, each
named in ``optkern._epoch_args``: ``DenseEpochArgs`` holds a call, its
``positional()`` lays it out in the generated signature's order (the one
place that does), and tests/test_epoch_args.py checks that order against the
signatures generated for every rule.  In that order: the data (``X``; the
CSR layout ``data, indices, indptr``), ``T``, ``sw``, ``order``,
``batch_size``, ``n_chunks``, ``W``, ``b``, the scratch (``EpochScratch``),
then ``OptimizerArgs`` (the W group's state arrays ``sW0, sW1, ...`` and the
intercept group's ``sB0, ...``, one per state of the rule, so their number
varies with it; the averages, the prepared hyperparameters and scalars, the
step counters, the schedule, the penalty's ``alpha``/``l1_ratio``,
``epsilon``, the noise seed and offsets), and ``par_work``, ``w_mean``.
The call returns ``(mean_loss, steps_done, avg_count, scalarsW, scalarsB)``.

``T`` is the target: (n, k) float for scalar (per-output) losses, (n,) int64
class indices for row losses.  The scratch -- ``dWp`` (n_chunks, d, k),
``dbp`` (n_chunks, k), ``Z``/``D`` (n_chunks, k) and ``lossp``/``wsump``
(n_chunks,) -- is allocated once per fit (``_epoch_args.epoch_scratch``).
A non-finite minibatch loss stops the epoch early and returns NaN (the
caller restores the last good weights).
"""

import numpy as np
from numba import njit

from . import _files
from . import _helpers  # noqa: F401 (the generated modules import it: in their digest)
from ._helpers import log_fast
from . import _simd  # noqa: F401 (the generated modules import it: in their digest)
from . import drivers as _drivers
from . import epoch_rules as _epoch_rules
from . import loss_drivers as _loss_drivers  # noqa: F401 (the generated modules import it: in their digest)
from . import loss_rules as _loss_rules
from . import rule_lanes as _rule_lanes
from . import rules as _update_rules
from . import templates as _templates
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

_TEMPLATES = ("update", "update_elements", "epoch", "epoch_parts", "epoch_batch_csr",
              "epoch_batch_dense", "epoch_lanes")


def _part(function, **holes):
    """The body of ``function`` in templates/epoch_parts.py, its holes filled."""
    return _templates.substitute(_templates.snippet("epoch_parts", function), holes)


def _lanes(loss, scalar):
    """The loss rule's lane form (kernels/rule_lanes.py) and its slot counts,
    or ("", 0, 0) when the translator refuses it."""
    form = _rule_lanes.lane_form(loss.rule, "_loss_lanes_py", returns=True, scalar=scalar)
    return form if form is not None else ("", 0, 0)


def _calls(rule):
    """Whether the rule calls a module's function (``math.exp``,
    ``math.log1p``; ``abs`` and ``max`` compile to instructions): such a
    rule's loop over the outputs stays scalar (libm has no vector form
    here), so the CSR pass keeps its one loop (epoch_parts.scalar_loss_split
    says why the others split it).  Read from the names its code refers to,
    not from its source: this runs in every process that first makes a CSR
    epoch module (parsing the source took 0.2-0.5 ms there)."""
    import types
    return any(isinstance(rule.__globals__.get(name), types.ModuleType)
               for name in rule.__code__.co_names)


def _epoch_loop(name, primitives, written=None):
    """The epoch's loop as Numba compiles it (``epoch_rules.minibatch_epoch``,
    or ``written`` = (module, function name, rulelang.epoch's tables' name),
    with ``primitives`` bound, rulelang.epoch.numba_text), kept beside the
    generated modules (``_files.cached_json``) under a digest of its sources
    (the written epoch's file, the rule language's files) and of the
    primitives' text: the module's text is made again in every process
    (``load_generated``), and a warm one then loads no front end."""
    import json
    import os

    module, fn_name, tables = written or (_epoch_rules, "minibatch_epoch", "DENSE")

    def build():
        from .rulelang import epoch as _epoch_lang
        fn = getattr(module, fn_name)
        if tables == "DENSE":
            return _epoch_lang.numba_text(fn, primitives)
        return _epoch_lang.numba_text(fn, primitives, epoch=getattr(_epoch_lang, tables))

    here = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.abspath(module.__file__)] + _files.rulelang_files()
    key = _files.source_digest(files, here, json.dumps([fn_name, tables, primitives],
                                                       sort_keys=True) if written
                               else json.dumps(primitives, sort_keys=True),
                               follow_imports=False)
    path = os.path.join(_drivers.generated_dir(), f"optkern_epochloop_{name}.json")
    return _files.cached_json(path, key, build, lambda value: isinstance(value, str))


def _source(loss_name, rule_name, layout):
    """The text of the epoch module: templates/epoch.py filled."""
    loss = _loss_rules.LOSS_RULES[loss_name]
    spec = _update_rules.RULES[rule_name]
    update_mod = _drivers.module_for(rule_name)
    scalar = loss.kind == "scalar"
    n_states = len(_update_rules.state_names(spec))
    n_user = len(spec.user_hyper)  # user_hyper[0] is always lr: the schedule sets it
    w_states = ", ".join(f"sW{j}" for j in range(n_states))
    b_states = ", ".join(f"sB{j}" for j in range(n_states))
    loss_body = _part(("scalar_loss_split" if layout == "csr" and not _calls(loss.rule)
                       else "scalar_loss") if scalar else "row_loss")
    lanes = ""
    if layout == "dense":
        lanes, n_real, n_int = _lanes(loss, scalar)
        buffers = ("scalar_lane_buffers" if scalar else "row_lane_buffers") if lanes \
            else "row_buffers"
        grad_setup = "\n".join([_part("dense_setup"),
                                _part(buffers, n_real=str(n_real), n_int=str(n_int))])
        refresh = _part("dense_refresh")
        call = dict(data_args="X", batch_args="WT, b, dWp, dbp, Z, D, lossp, wsump, eps, "
                    "Xb, Zb, Db, ZT, DT, S, SI, LS, YB")
        grad_read = "dT[j, f]"
        if lanes:
            body = _templates.snippet("epoch_parts", "batch_dense_lanes")
            body_holes = dict(targets=_part("scalar_targets" if scalar else "row_targets"))
        else:
            body = _templates.snippet("epoch_parts", "batch_dense")
            body_holes = dict(loss=loss_body)
    else:
        grad_setup = _part("csr_setup")
        refresh = ""     # (an empty line: the generated text is kept as it was)
        call = dict(data_args="data, indices, indptr",
                    batch_args="W, b, dWp, dbp, Z, D, lossp, wsump, eps")
        grad_read = "G[f, j]"
        body = _templates.snippet("epoch_parts", "batch_csr")
        body_holes = dict(loss=loss_body)
    batches = _templates.substitute(
        _templates.fragment("epoch_batch_dense" if layout == "dense" else "epoch_batch_csr"),
        dict(serial=_templates.substitute(body, dict(body_holes, range="range")),
             parallel=_templates.substitute(body, dict(body_holes, range="prange"))))
    epoch = _templates.snippet("epoch_parts", "epoch")

    def epoch_body(kind, range_fn):
        # the loop written once (epoch_rules.py), its primitives bound to this
        # layout's code: the functions of templates/epoch_parts.py named in
        # rulelang.tables.NUMBA_EPOCH, their holes filled
        primitives = dict(
            batch_pass=_part("batch_pass", range=range_fn, batch_call="\n".join(
                [refresh, _part(kind + "_batch", **call)])),
            finish_gradients=_part("finish_gradients", grad_read=grad_read),
            prepare_w=_part("prepare_w", user_w=", ".join(f"userW[{j}]" for j in range(1, n_user))),
            update_w=_part("update_w", update_call=_part(kind + "_update", w_states=w_states)),
            prepare_b=_part("prepare_b", user_b=", ".join(f"userB[{j}]" for j in range(1, n_user))),
            update_b=_part("update_b", b_states=b_states))
        loop = _epoch_loop(f"{rule_name}_{layout}_{kind}", primitives)
        return _templates.substitute(epoch, dict(grad_setup=grad_setup, loop=loop))

    return _templates.fill("epoch", dict(
        loss_repr=repr(loss_name), update_repr=repr(rule_name), layout=layout,
        # the update module's templates too: the generated epoch imports it
        digest=_drivers.digest(__file__, *_TEMPLATES),
        loss_import=f"from optkern.kernels.loss_rules import {loss.rule.__name__} as _loss_py",
        prepare_import=f"from optkern.kernels.rules import {spec.prepare.__name__} as _prepare_py",
        update_import=f"from {update_mod.__name__} import _loop_serial, _loop_parallel",
        loss_vec="" if scalar else _part("loss_vec"),
        lanes="\n" + _templates.substitute(_templates.fragment("epoch_lanes"),
                                           dict(lane_source=lanes)) if lanes else "",
        batches=batches, data_args=call["data_args"], w_states=w_states, b_states=b_states,
        epoch_serial=epoch_body("serial", "range"),
        epoch_parallel=epoch_body("parallel", "prange")))


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
        _MODULES, key, _drivers.generated_dir,
        f"optkern_epoch_{loss_name}_{rule_name}_{layout}.py",
        f"optkern.kernels._generated_epoch_{loss_name}_{rule_name}_{layout}",
        lambda: _source(loss_name, rule_name, layout))
