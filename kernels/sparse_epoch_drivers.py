"""Compiled training epochs on CSR data whose steps touch only the batch's rows.

The sparse twin of ``epoch_drivers.py``'s CSR layout (which stays as the
``sparse_updates="dense"`` reference).  For a (loss rule, update rule) pair
this module writes one source file (the mechanism of ``drivers.py``: the
templates kernels/templates/sparse_epoch*.py filled) holding

``epoch_rows``
    the "lazy" and "linear" modes of ``kernels/sparse_rules.py``.  Each
    minibatch: the rows of W its features touch are listed once (the slot
    table ``slot``, below, maps a feature to its place in the compact
    gradient ``G``, so nothing is n_features x n_outputs but W and the
    states); with the tables ``P``/``S``
    (linear mode, or averaging) the touched rows are first brought up to date
    (``last`` holds the step each row is current at); then the scores and the
    loss rule per row, the compact gradient, and the update rule (the same
    scalar rule every target compiles) on the touched rows' elements, with
    the penalty's gradient (divided by pi_f in lazy mode: ``inv_p``, per
    feature, or per nonzero on wide data: optkern.sparse_epochs), then
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

The minibatch loop of both is the one written in
kernels/sparse_epoch_rules.py (``sparse_epoch``, which the Cython twins are
generated from too), pasted with its primitives bound to the mode's code in
templates/sparse_epoch_parts.py.  ``epoch_scaled`` at batch 1 on canonical
CSR without L1 (per-example SGD) runs the same loop bound to the per-example
primitives: no touched list, no compact gradient, the same arithmetic in the
same order.  Every epoch's row loop prefetches what the next rows
read (``prefetch_rows``: their nonzeros, and the rows of W and its states
they touch): shuffled rows otherwise stall on memory once per row.

A step costs O(nnz_batch x k + k), independent of n_features; the epoch adds
O(n_features x k) once, at its end.  The epoch's loss is the mean minibatch
data loss plus the penalty of the weights at the end of the epoch (the dense
epoch adds the penalty of each step's weights, which would cost a pass over W
per step).  Arguments: see kernels/templates/sparse_epoch_rows.py (the
template of the generated code); the glue is ``optkern.sparse_epochs``.
"""

import numpy as np
from numba import njit

from . import _files
from . import _helpers  # noqa: F401 (the generated modules import it: in their digest)
from . import _simd  # noqa: F401 (the generated modules import it: in their digest)
from ._helpers import prefetch, prefetch_target
from . import drivers as _drivers
from . import loss_rules as _loss_rules
from . import penalty as _pen
from . import rules as _update_rules
from . import schedule_rules as _schedule_rules  # noqa: F401 (the generated modules import it: in their digest)
from . import sparse_epoch_rules as _sparse_epoch_rules
from . import sparse_rules as _sparse_rules
from . import templates as _templates
from ._simd import csr_row_scores
from .epoch_drivers import _epoch_loop



# ------------------------------------------------------------ shared pieces
# (compiled into the generated epochs; not cached on their own)

# The slot table: where a minibatch's touched features sit in the compact
# gradient G.  ``slot[h, 0]`` is a feature (-1: free) and ``slot[h, 1]`` its
# row of G.  When the table has fewer rows than W (``hashed``: a power of
# two, at least twice the most features a minibatch can touch), h is the
# feature's multiplicative hash with linear probing, and the table (a few
# kB) stays in the core's caches; otherwise (n_features at most about twice
# that) h is the feature itself.  A per-feature map of W's length reached
# one more random cache line per nonzero on wide data: at 2^22 features the
# lazy epoch spent a sixth of its time there (docs/sparse.md, "Tenth
# round").  Either way the touched list is the features in order of first
# appearance, so G and the steps are the same.

_HASH = 2654435761  # Knuth's multiplicative constant (2^32 / the golden ratio)


@njit(inline="always")
def slot_at(slot, f, hashed):
    """The table row of feature f: its entry, or the free row it would take."""
    if not hashed:
        return f
    mask = slot.shape[0] - 1
    h = (f * _HASH) & mask
    while slot[h, 0] >= 0 and slot[h, 0] != f:
        h = (h + 1) & mask
    return h


@njit(inline="always")
def new_slot(slot, h, f, touched, nt, inv_p, per_nz, q, tscale):
    """Enter feature f (nonzero q) at table row h as touched row nt; with the
    lazy penalty, its 1/pi_f in tscale[nt] (``per_nz``: inv_p holds it per
    nonzero, read in order with the row, not at a random place of an
    n_features array; else per feature).  (A conditional expression: the
    same store under ``if per_nz:`` made the lazy epoch 50% slower.)"""
    slot[h, 0] = f
    slot[h, 1] = nt
    touched[0, nt] = f
    touched[1, nt] = h
    if inv_p is not None:
        tscale[nt] = inv_p[q] if per_nz else inv_p[f]


@njit(inline="always")
def collect_rows(indices, indptr, order, start, stop, slot, touched, hashed, inv_p, per_nz,
                 tscale):
    """List the features of rows order[start:stop] once each (touched[0]) and
    their table rows (touched[1])."""
    nt = 0
    for r in range(start, stop):
        i = order[r]
        for q in range(indptr[i], indptr[i + 1]):
            f = indices[q]
            h = slot_at(slot, f, hashed)
            if slot[h, 0] < 0:
                new_slot(slot, h, f, touched, nt, inv_p, per_nz, q, tscale)
                nt += 1
    return nt


@njit(inline="always")
def release_slots(slot, touched, nt):
    """Free the table rows of the minibatch's touched features."""
    for u in range(nt):
        slot[touched[1, u], 0] = -1


@njit(inline="always")
def prefetch_rows(data, indices, indptr, T, sw, order, r, stop, ahead, inv_p, per_nz):
    """Hint the CPU to fetch what row order[r + ahead] will read: its row
    pointers one row earlier (at r + ahead + 1), then its nonzeros, target
    and weight (and the lazy penalty's 1/pi_f when inv_p holds it per
    nonzero, ``per_nz``).  Shuffled rows of an X larger than the cache otherwise stall
    on memory once per row: nothing overlaps those misses, a row's work
    fills the out-of-order window.  The minibatch epochs look a whole batch
    ahead (the next batch's rows arrive while this one runs: its first pass
    over them otherwise waits on each row in turn); the per-example loop
    two rows.  A no-op for the results."""
    if r + ahead + 1 < stop:
        prefetch(indptr, order[r + ahead + 1])
    if r + ahead < stop:
        nx = order[r + ahead]
        lo = indptr[nx]
        hi = indptr[nx + 1]
        prefetch(sw, nx)
        prefetch_target(T, nx)
        for p in range(lo, hi, 8):
            prefetch(data, p)
        for p in range(lo, hi, 16):
            prefetch(indices, p)
        if inv_p is not None:
            if per_nz:
                for p in range(lo, hi, 64 // inv_p.itemsize):
                    prefetch(inv_p, p)


@njit(inline="always")
def row_scores(data, indices, lo, hi, W, Wf, b, z, k):
    """z = b + X[i] W: a plain loop for one output (the vector intrinsic's
    masked loads cost more than they save there), else kernels/_simd.py's.
    ``k`` is W.shape[1], or the literal 1 of the one-output epochs: the
    compiler then drops the other branch (testing W.shape[1] at run time
    instead kept the per-example epoch 12% slower, same weights)."""
    if k == 1:
        acc = Wf.dtype.type(0.0)
        for q in range(lo, hi):
            acc += data[q] * Wf[indices[q]]
        if b is not None:
            acc += b[0]
        z[0] = acc
    else:
        csr_row_scores(data, indices, lo, hi, W, b, z)


@njit(inline="always")
def scatter_row(data, indices, lo, hi, slot, hashed, dz, G, k):
    """G[slot of f] += x_f * dz for the row's nonzeros (k = dz's length, a
    literal 1 in the one-output epochs)."""
    for q in range(lo, hi):
        s = slot[slot_at(slot, indices[q], hashed), 1]
        x = data[q]
        for j in range(k):
            G[s, j] += x * dz[j]


@njit(inline="always")
def collect_scatter_row(data, indices, lo, hi, slot, hashed, touched, nt, dz, G, k, inv_p,
                        per_nz, tscale):
    """scatter_row that also lists the row's features not seen before in this
    minibatch (collect_rows's work, in the same order, in the same pass):
    their compact rows start at 0.  Returns the new count of touched rows.
    The same G as collect_rows then scatter_row, bit for bit.  (slot_at's
    probe written into the loop: one read of the entry per probe, ~10% of
    the lazy epoch at 2^16 features against the helper's two.)"""
    mask = slot.shape[0] - 1
    for q in range(lo, hi):
        f = indices[q]
        h = ((f * _HASH) & mask) if hashed else f
        while True:
            key = slot[h, 0]
            if key == f:
                s = slot[h, 1]
                break
            if key < 0:
                s = nt
                new_slot(slot, h, f, touched, nt, inv_p, per_nz, q, tscale)
                for j in range(k):
                    G[s, j] = 0.0
                nt += 1
                break
            h = (h + 1) & mask
        x = data[q]
        for j in range(k):
            G[s, j] += x * dz[j]
    return nt


@njit(cache=True, nogil=True)
def feature_counts(indices, n_features):
    """Stored entries per column, without the int64 copy of ``indices`` that
    np.bincount makes (2 x the index array at 10^7 nonzeros and int32)."""
    out = np.zeros(n_features, np.int64)
    for q in range(indices.shape[0]):
        out[indices[q]] += 1
    return out


# the penalty's (sub)gradient at w (sign(0) = 0), as the dense path's: the
# one definition, kernels/penalty.py's, compiled inline into the sparse epochs
penalty_grad = njit(inline="always")(_pen.penalty_grad)
_penalty_of_sums = njit(inline="always")(_pen.penalty_of_sums)


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def penalty_value(Wf, alpha, l1_ratio):
    """The elastic-net penalty of the weights, in float64.  The sums may be
    reassociated (vector lanes): in feature order they were one dependent
    chain, 11 ms an epoch at 2^22 features (docs/sparse.md, "Tenth round");
    the epoch's reported loss moves in its last bits, the weights not at all."""
    if alpha == 0:
        return 0.0
    a1 = 0.0
    a2 = 0.0
    for e in range(Wf.shape[0]):
        w = float(Wf[e])
        a1 += abs(w)
        a2 += w * w
    return _penalty_of_sums(alpha, l1_ratio, a1, a2)


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


# ------------------------------------------------------------ the module

_TEMPLATES = ("update", "update_elements", "epoch_parts", "sparse_epoch", "sparse_epoch_parts",
              "sparse_epoch_rows", "sparse_epoch_scaled")


def _part(function, **holes):
    """The body of ``function`` in templates/sparse_epoch_parts.py, filled."""
    return _templates.substitute(_templates.snippet("sparse_epoch_parts", function), holes)


def _source(loss_name, rule_name):
    """The text of the sparse epoch module: templates/sparse_epoch.py filled."""
    loss = _loss_rules.LOSS_RULES[loss_name]
    spec = _update_rules.RULES[rule_name]
    update_mod = _drivers.module_for(rule_name)
    ns = len(_update_rules.state_names(spec))
    n_user = len(spec.user_hyper)
    nh = len(spec.kernel_hyper)
    rule = dict(
        state_outs=", ".join(f"s{j}_i" for j in range(ns)),
        state_loads=", ".join(f"load(sW{j}, e, dt(0.0))" for j in range(ns)),
        hyper_w=", ".join(f"h{j}" for j in range(nh)),
        unpack="\n".join(f"h{j} = dt(hyperW[{j}])" for j in range(nh)))
    common = dict(
        w_states=", ".join(f"sW{j}" for j in range(ns)),
        b_states=", ".join(f"sB{j}" for j in range(ns)),
        user_w=", ".join(f"userW[{j}]" for j in range(1, n_user)),
        user_b=", ".join(f"userB[{j}]" for j in range(1, n_user)),
        loss=_templates.snippet("epoch_parts",
                                "scalar_loss" if loss.kind == "scalar" else "row_loss"))
    catch_up = _part("catch_up_row",
                     load_x="\n".join(f"x[{1 + j}] = load(sW{j}, e, 0.0)" for j in range(ns)),
                     store_y="\n".join(f"store(sW{j}, e, dt(y[{1 + j}]))" for j in range(ns)))
    min_scale = repr(_sparse_rules.MIN_SCALE)
    # the scaled mode reads no state: its step is c_t p + a_t g (scaled_update)
    scaled_rule = {hole: text for hole, text in rule.items() if hole != "state_loads"}
    scaled_rule["zero_states"] = ", ".join("zero" for _ in range(ns))
    # the primitives of sparse_epoch_rules.sparse_epoch, per mode (the names:
    # rulelang.tables.NUMBA_SPARSE_EPOCH): the functions of
    # templates/sparse_epoch_parts.py, their holes filled
    shared = dict(
        collect_touched=_part("collect_touched"),
        release_touched=_part("release_touched"),
        prepare_w=_part("prepare_w", user_w=common["user_w"]),
        prepare_b=_part("prepare_b", user_b=common["user_b"]),
        update_b=_part("update_b", b_states=common["b_states"]))

    def batch_pass(scores, prefetch_next):
        return _part("batch_pass", scores=scores, loss=common["loss"],
                     prefetch_next=prefetch_next)

    rows = dict(
        shared, begin_block=_part("rows_begin_block"),
        bring_touched=_part("catch_up_touched", catch_up_row=catch_up),
        batch_pass=batch_pass(_part("rows_scores"), "\n".join([_part("prefetch_next"), _part(
            "prefetch_rows_epoch", prefetch_states="\n".join(
                _part("prefetch_state", state=f"sW{j}") for j in range(ns)))])),
        update_touched=_part("rows_update", state_stores="\n".join(
            f"store(sW{j}, e, s{j}_i)" for j in range(ns)), **rule),
        end_block=_part("no_step"),
        end_epoch=_part("rows_end_epoch", catch_up_row=catch_up))
    scaled = dict(
        shared, begin_block=_part("scaled_begin_block"),
        bring_touched=_part("clip_touched"),
        batch_pass=batch_pass(_part("scaled_scores"), _part("prefetch_next")),
        update_touched=_part("scaled_update", min_scale=min_scale, **scaled_rule),
        end_block=_part("scaled_end_block"),
        end_epoch=_part("scaled_end_epoch"))
    # the per-example path: the same loop, without the touched list and the
    # compact gradient (nothing to collect, bring up to date or free)
    example = dict(
        scaled, collect_touched=_part("no_step"), bring_touched=_part("no_step"),
        release_touched=_part("no_step"),
        batch_pass=_part("example_pass", scores=_part("scaled_scores"), loss=common["loss"]),
        update_touched=_part("example_update", min_scale=min_scale, **scaled_rule))
    written = (_sparse_epoch_rules, "sparse_epoch", "SPARSE")

    def loop(mode, primitives):
        return _epoch_loop(f"sparse_{loss_name}_{rule_name}_{mode}", primitives, written)

    modes = {"rows": dict(loop=loop("rows", rows)),
             "scaled": dict(loop=loop("scaled", scaled), example_loop=loop("example", example))}
    epochs = {}
    for kind, holes in modes.items():
        holes = dict(holes, w_states=common["w_states"], b_states=common["b_states"])
        text = _templates.fragment(f"sparse_epoch_{kind}")
        # the one-output twin (binary losses, regression): k a literal 1, so
        # the compiler drops every loop over the outputs (the same arithmetic
        # in the same order: the same weights as the general epoch)
        for name, k in ((f"epoch_{kind}", "W.shape[1]"), (f"epoch_{kind}_k1", "1")):
            epochs[name] = _templates.substitute(text, dict(holes, name=name,
                                                            start=_part("start", k=k)))
    return _templates.fill("sparse_epoch", dict(
        loss_repr=repr(loss_name), update_repr=repr(rule_name),
        # the update module's templates too: the generated epoch imports it
        digest=_drivers.digest(__file__, *_TEMPLATES),
        loss_import=f"from optkern.kernels.loss_rules import {loss.rule.__name__} as _loss_py",
        rule_import=(f"from optkern.kernels.rules import {spec.rule.__name__} as _rule_py, "
                     f"{spec.prepare.__name__} as _prepare_py"),
        update_import=f"from {update_mod.__name__} import _loop_serial",
        loss_vec="" if loss.kind == "scalar" else _templates.snippet("epoch_parts", "loss_vec"),
        **{name: text for name, text in epochs.items()}))


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
        _MODULES, key, _drivers.generated_dir,
        f"optkern_sparse_epoch_{loss_name}_{rule_name}.py",
        f"optkern.kernels._generated_sparse_epoch_{loss_name}_{rule_name}",
        lambda: _source(loss_name, rule_name))
