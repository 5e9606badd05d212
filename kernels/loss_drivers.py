"""Numba drivers for the loss rules: fused serial / parallel, BLAS, CSR, CUDA.

For every loss in ``loss_rules.LOSS_RULES`` this module writes one small
source file into ``drivers.generated_dir()`` (so Numba's ``cache=True``
works: a closure over a jitted rule would recompile in every process) and
imports it.  Its text carries a digest of every kernels source behind it
(``drivers.digest``), so editing any of them invalidates the cache.  ``module_for(loss)`` returns it.

The compiled building blocks (all ``@njit(cache=True, nogil=True)``, callable
from Python and from a user's ``@njit`` code -- e.g. a compiled training
epoch).  They write into caller buffers, allocate nothing, check nothing
(``optkern.losses.loss_and_grad`` validates), and return the objective::

    dense_serial(X, y, sw, W, b, alpha, l1_ratio, epsilon, dW, db, scratch)
    dense_parallel(X, y, sw, W, b, alpha, l1_ratio, epsilon, dW, db, scratch, n_chunks)
    csr_serial(data, indices, indptr, y, sw, W, b, alpha, l1_ratio, epsilon,
               dW, db, scratch)
    csr_parallel(data, indices, indptr, y, sw, W, b, alpha, l1_ratio, epsilon,
                 dW, db, scratch, n_chunks)
    dense_blas(X, y, sw, W, b, alpha, l1_ratio, epsilon, dW, db, Z)
    rows_inplace(Z, y, sw, b, epsilon, inv_total_w, row_loss) -> weighted loss sum
    rows_inplace_parallel(...)  (same; row_loss makes the sum order fixed)
    rows_checked(Z, y, sw, b, epsilon, inv_total_w, row_loss, tmp)
        -> (weighted loss sum, 0 or NaN: whether every score Z + b was finite);
        rows_inplace with the rule's vector form from 16 outputs (tmp: (k,))

Arguments: ``X`` (n, d) float32/float64 (any layout; the fused kernel is
fastest on C order); ``data, indices, indptr`` a canonical CSR matrix with d
columns; ``y`` (n, k) of X's dtype for the per-output (regression, binary)
losses, (n,) int64 class indices for the multiclass ones; ``sw`` (n,) sample
weights or None; ``W`` (d, k); ``b`` (k,) or None (no intercept, then ``db``
is None too); ``dW`` (d, k), ``db`` (k,) outputs (overwritten);
``scratch`` a 1-D array of X's dtype with at least
``scratch_size(n_chunks, d, k)`` elements; ``Z`` an (n, k) C-contiguous array.
``epsilon`` is the loss parameter (Huber, epsilon-insensitive).  The penalty
is ``alpha*(l1_ratio*|W|_1 + 0.5*(1-l1_ratio)*|W|^2)`` (l2: l1_ratio=0, l1: 1).

Computation.  The fused dense kernel transposes W once into scratch, then
walks the rows in blocks of ``ROW_BLOCK`` (6): the block's scores are
dot products over contiguous rows, computed in register tiles of 6 rows x 2
outputs (12 vector accumulators; each step over the features loads 8 vectors
for 12 multiply-adds), compiled with the ``reassoc``/``contract`` fast-math
flags so that they vectorise, accumulated in X's dtype; the rule turns them
into the loss and dZ (rules compiled without fast-math, in their own
function); the block's rank-6 update of dW^T runs over the same rows while
they are in cache, in tiles of 6 rows x 5 outputs (then 2, then 1: 6 loads of
X, 5 loads and 5 stores of dW^T for 30 multiply-adds).  Both loops run at
about one 512-bit FMA per cycle on the project machine (AMD EPYC, family 25
model 17, Zen 4: 512-bit FMAs are double-pumped, 16 float32 multiply-adds per
cycle and core); with 4-row, 1-output tiles they were bound by loads and
stores at about half of that.  X is read from memory once.
The CSR kernel does the same per row with gathers from W and scatters into dW;
at one output (the scalar-rule losses) it runs four rows' score chains side
by side in scalar registers (templates/loss_row_scalar.py ``_csr_chunk_k1``:
the same bits as the row loop, docs/first_call.md), and, when the rows'
scores fit the scratch (``k1_room``), in two passes over X: every row's
score, then the rules and the scatter, each pass split into the same row
chunks (the same bits again).  At one output the CSR kernels check the
column indices themselves (in the score pass, or in a scan before the
fused loop): an index outside [0, d) returns NaN with nothing written, and
``loss_and_grad`` then names it.
The BLAS path computes Z = X W with BLAS (``np.dot``), the rule row by row in
place, and dW = X^T dZ with BLAS.

Parallel reduction order (determinism).  ``dense_parallel``/``csr_parallel``
split the rows into ``n_chunks`` contiguous equal ranges; chunk c accumulates
its own partial dW^T, db and loss in ``scratch``; after the parallel loop the
calling thread adds them in chunk order 0, 1, ..., n_chunks-1 (one parallel
region per call: a second one, for the reduction, cost a second fork-join,
which on a loaded machine waits for a descheduled thread -- the sum itself is
only d*k*n_chunks additions).  So a result depends on ``n_chunks``
(optkern.losses passes the Numba thread count, capped by n) but never on
thread timing: repeated calls are bit-identical, and n_chunks=1 equals the
serial kernel.
"""

import numpy as np
from numba import njit, prange
from numba.extending import overload, register_jitable

from . import _helpers  # noqa: F401 (the generated modules import it: in their digest)
from . import penalty as _pen
from . import _simd
from . import loss_rules as _rules
from . import rule_lanes
from . import _files
from . import templates as _templates
from .drivers import digest as _digest, generated_dir

ROW_BLOCK = 6
# rows of _scores_block_wide's tiles, used where Numba compiles for AVX-512
WIDE_ROWS = 4
AVX512 = _helpers.AVX512
# Row rules the lane translator takes (kernels/rule_lanes.py) get a lane form,
# and the fused dense and CSR kernels apply it to blocks of LANE_ROWS rows
# when a row is shorter than a vector's worth of outputs (k < 16), where the
# row form runs scalar: softmax at k = 10, float32, 5.8 -> 3.0 ns per score.
LANE_ROWS = 36      # six of the fused kernel's 6-row tiles
# The CSR kernel's blocks are longer: the rule's loops over the lanes run in
# vectors of 16 and do better with more of them (softmax at k = 10, float32:
# 15.4 ns a row at 36 lanes, 11.2 at 96; 128 took another 0.4 us off 256
# rows, 256 lanes no more), and a CSR block keeps no rows of X
# in cache between its passes (the dense kernel re-reads its 36 rows for dW,
# so its blocks must stay small).  The lane buffers hold LANE_CAP lanes.
CSR_LANE_ROWS = 128
LANE_CAP = max(LANE_ROWS, CSR_LANE_ROWS)
LANE_SLOTS = 8      # real locals a lane form may have in the loss kernels' scratch

# fast-math only where a float reduction must vectorise; no nnan/ninf: the
# rules rely on inf and NaN behaving (they are not compiled with these flags)
_REDUCE_FLAGS = {"reassoc", "contract"}


@register_jitable
def _lane_size(n_outputs):
    """Elements of a chunk's lane-form buffers (none from 16 outputs up: the
    kernels use the lane form only below, see VEC_MIN_OUTPUTS)."""
    if n_outputs >= 16:
        return 0
    return LANE_CAP * (4 * n_outputs + LANE_SLOTS + 1)


# Every piece of the scratch starts a multiple of SCRATCH_ALIGN elements (64
# bytes of float32) from its start, and optkern's own scratch starts on a
# 64-byte line (losses._aligned_empty): the rows of W^T and of the chunks'
# dW^T partials then start on a line wherever X's rows do (d a multiple of
# 16 float32 or 8 float64), and the score and update tiles' 512-bit loads of
# them never span two lines (scores at (4096, 784, 10) float32, X in L3:
# 36.6 -> 41.1 G multiply-adds/s; the update 32.4 -> 35.6).
SCRATCH_ALIGN = 16


@register_jitable
def _padded(n):
    return (n + SCRATCH_ALIGN - 1) // SCRATCH_ALIGN * SCRATCH_ALIGN


@register_jitable
def _per_chunk(n_features, n_outputs):
    k = n_outputs
    return (_padded(k * n_features) + _padded(k + 2 * ROW_BLOCK * k + 1)
            + _padded(_lane_size(k)))


@register_jitable
def scratch_size(n_chunks, n_features, n_outputs):
    """Elements of the 1-D scratch the fused and CSR kernels need."""
    return _padded(n_outputs * n_features) + n_chunks * _per_chunk(n_features, n_outputs)


@register_jitable
def _lane_views(scratch, c, n_features, n_outputs):
    """Chunk c's lane-form buffers: (Zr (R, k), Dr (R, k), ZT (k, R), DT (k, R),
    S (LANE_SLOTS, R), loss (R,)) with R = LANE_CAP, carved from scratch."""
    k = n_outputs
    R = LANE_CAP
    o = (_padded(k * n_features) + (c + 1) * _per_chunk(n_features, k)
         - _padded(_lane_size(k)))
    Zr = scratch[o:o + R * k].reshape((R, k))
    o += R * k
    Dr = scratch[o:o + R * k].reshape((R, k))
    o += R * k
    ZT = scratch[o:o + k * R].reshape((k, R))
    o += k * R
    DT = scratch[o:o + k * R].reshape((k, R))
    o += k * R
    S = scratch[o:o + LANE_SLOTS * R].reshape((LANE_SLOTS, R))
    o += LANE_SLOTS * R
    return Zr, Dr, ZT, DT, S, scratch[o:o + R]


@register_jitable
def _chunk_views(scratch, c, n_features, n_outputs):
    """(accT (k, d), accb (k,), Zb (R, k), Db (R, k), loss slot (1,)) of chunk c."""
    k = n_outputs
    d = n_features
    o = _padded(k * d) + c * _per_chunk(d, k)
    accT = scratch[o:o + k * d].reshape((k, d))
    o += _padded(k * d)
    accb = scratch[o:o + k]
    o += k
    Zb = scratch[o:o + ROW_BLOCK * k].reshape((ROW_BLOCK, k))
    o += ROW_BLOCK * k
    Db = scratch[o:o + ROW_BLOCK * k].reshape((ROW_BLOCK, k))
    o += ROW_BLOCK * k
    return accT, accb, Zb, Db, scratch[o:o + 1]


@register_jitable
def k1_room(n_features):
    """Scores the CSR kernels' one-output two-pass loop can keep in the
    scratch: the shared W^T piece and chunk 0's partial, which the CSR
    kernels do not use otherwise (chunk 0 adds into dW).  With more rows than
    this they run the fused one-output loop after a scan of the indices."""
    return _padded(n_features) + n_features


@register_jitable
def _shared_WT(scratch, n_features, n_outputs):
    return scratch[:n_outputs * n_features].reshape((n_outputs, n_features))


@njit(cache=True, nogil=True)
def total_weight(sw, n):
    if sw is None:
        return float(n)
    t = 0.0
    for i in range(n):
        t += sw[i]
    return t


@njit(cache=True, nogil=True)
def inverse_weight(sw, n):
    t = total_weight(sw, n)
    return 1.0 / t if t > 0 else 0.0


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_REDUCE_FLAGS)
def penalty_add(W, dW, alpha, l1_ratio):
    """Add the penalty's (sub)gradient to dW; return its value (sign(0) = 0).

    Branch-free and reassociated so that it vectorises; the elements are
    summed in W's dtype in runs of PENALTY_RUN (rows of W when W or dW is not
    C-contiguous), the run sums in float64."""
    if alpha == 0:
        return 0.0
    return _penalty(W, dW, alpha, l1_ratio, True)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_REDUCE_FLAGS)
def penalty_set(W, dW, alpha, l1_ratio):
    """penalty_add into a dW it overwrites (zeros without a penalty): the CSR
    kernels start from it and add the rows' terms, one pass over dW fewer
    than zeroing it first (2 MB at (512, 1000) float32)."""
    if alpha == 0:
        dW[...] = 0
        return 0.0
    return _penalty(W, dW, alpha, l1_ratio, False)


PENALTY_RUN = 512

# kernels/penalty.py's pieces, inlined into the penalty loops below as Numba
# IR (so that they take those loops' fastmath flags, as the text they replace)
_l1_strength = njit(inline="always")(_pen.l1_strength)
_l2_strength = njit(inline="always")(_pen.l2_strength)
_penalty_of_sums = njit(inline="always")(_pen.penalty_of_sums)


def _penalty(W, dW, alpha, l1_ratio, add):
    """The penalty loop for any layout: the rows of W are the runs."""
    l1 = 0.0
    l2 = 0.0
    for f in range(W.shape[0]):
        l1, l2 = _penalty_run(W[f], dW[f], alpha, l1_ratio, l1, l2, add)
    return _penalty_of_sums(alpha, l1_ratio, l1, l2)


@register_jitable(fastmath=_REDUCE_FLAGS)
def _penalty_run(w_run, dw_run, alpha, l1_ratio, l1, l2, add):
    """One run: dw_run gets the (sub)gradient, then the run's sums of |w| and
    w^2 are added to l1, l2.  The two are separate loops on purpose: in one
    loop the stores into dw_run make LLVM guard its vector form with a
    run-time overlap check of dw_run against w_run, and when dW happens to
    lie within a few vectors after W in memory the scalar form runs, whose
    reassociated sums come out in another order -- the penalty (and so the
    loss) would depend in its last bits on where NumPy put the two arrays.
    The reduction loop stores nothing: one vector form, whatever the
    addresses (tests/test_losses.py pins it)."""
    dt = w_run.dtype.type
    a1 = dt(_l1_strength(alpha, l1_ratio))
    a2 = dt(_l2_strength(alpha, l1_ratio))
    zero = dt(0)
    one = dt(1)
    r1 = zero
    r2 = zero
    if l1_ratio == 0:
        # l2 alone, the common penalty: no sign or |w| (0.86 -> 0.61 us over
        # a (784, 10) float32 W)
        for t in range(w_run.shape[0]):
            w = w_run[t]
            dw_run[t] = dw_run[t] + a2 * w if add else a2 * w
        for t in range(w_run.shape[0]):
            w = w_run[t]
            r2 += w * w
        return l1, l2 + r2
    for t in range(w_run.shape[0]):
        w = w_run[t]
        s = (one if w > zero else zero) - (one if w < zero else zero)
        g = a1 * s + a2 * w
        dw_run[t] = dw_run[t] + g if add else g
    for t in range(w_run.shape[0]):
        w = w_run[t]
        r1 += abs(w)
        r2 += w * w
    return l1 + r1, l2 + r2


@overload(_penalty, jit_options={"fastmath": _REDUCE_FLAGS}, inline="always")
def _ov_penalty(W, dW, alpha, l1_ratio, add):
    if not (W.layout == "C" and dW.layout == "C"):
        return _penalty

    # one flat loop in runs of PENALTY_RUN elements: the rows of a (784, 10)
    # W are too short for a vector loop (3.4 -> 1.0 us a call)
    def flat(W, dW, alpha, l1_ratio, add):
        n = W.size
        Wf = W.reshape(n)
        dWf = dW.reshape(n)
        l1 = 0.0
        l2 = 0.0
        for s in range(0, n, PENALTY_RUN):
            e = min(s + PENALTY_RUN, n)
            l1, l2 = _penalty_run(Wf[s:e], dWf[s:e], alpha, l1_ratio, l1, l2, add)
        return _penalty_of_sums(alpha, l1_ratio, l1, l2)
    return flat


@njit(cache=True, nogil=True, fastmath=_REDUCE_FLAGS)
def add_bias_check(z, b):
    """z += b (b None: z unchanged); returns 0 when every z is then finite,
    else NaN.  ``x - x`` is 0 or NaN and a sum of them is 0 or NaN in any
    order, so the sum may be reassociated and the loop vectorises (as
    finite.any_nonfinite; no nnan/ninf, which would fold x - x to 0)."""
    s = z.dtype.type(0)
    if b is None:
        for j in range(z.shape[0]):
            v = z[j]
            s += v - v
    else:
        for j in range(z.shape[0]):
            v = z[j] + b[j]
            z[j] = v
            s += v - v
    return s


@njit(cache=True, nogil=True)
def transpose_into(W, WT):
    d, k = W.shape
    for j in range(k):
        for f in range(d):
            WT[j, f] = W[f, j]


@njit(cache=True, nogil=True, fastmath=_REDUCE_FLAGS)
def _scores_rows(X, i, r_n, WT, Zb):
    """Zb[r] = X[i + r] W for r < r_n, row by row (a partial block)."""
    k, d = WT.shape
    dt = WT.dtype.type
    for r in range(r_n):
        xr = X[i + r]
        for j in range(k):
            w = WT[j]
            a = dt(0)
            for f in range(d):
                a += xr[f] * w[f]
            Zb[r, j] = a


@njit(cache=True, nogil=True)
def _add_bias(Zb, r_n, b):
    """Zb[r] += b for r < r_n (nothing without an intercept)."""
    if b is not None:
        for r in range(r_n):
            for j in range(Zb.shape[1]):
                Zb[r, j] += b[j]


@njit(cache=True, nogil=True, fastmath=_REDUCE_FLAGS)
def _scores_block(X, i, r_n, WT, b, Zb):
    """Zb[r] = X[i + r] W + b for r < r_n (dot products along contiguous rows).

    A full block (r_n == ROW_BLOCK == 6) is computed in register tiles of
    6 rows x 2 outputs: 12 vector accumulators, and each step of the loop
    over features loads 6 values of X and 2 of W^T for 12 multiply-adds."""
    k, d = WT.shape
    dt = WT.dtype.type
    if r_n == 6:
        x0 = X[i]
        x1 = X[i + 1]
        x2 = X[i + 2]
        x3 = X[i + 3]
        x4 = X[i + 4]
        x5 = X[i + 5]
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
            Zb[0, j] = a0
            Zb[1, j] = a1
            Zb[2, j] = a2
            Zb[3, j] = a3
            Zb[4, j] = a4
            Zb[5, j] = a5
            Zb[0, j + 1] = c0
            Zb[1, j + 1] = c1
            Zb[2, j + 1] = c2
            Zb[3, j + 1] = c3
            Zb[4, j + 1] = c4
            Zb[5, j + 1] = c5
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
            Zb[0, j] = a0
            Zb[1, j] = a1
            Zb[2, j] = a2
            Zb[3, j] = a3
            Zb[4, j] = a4
            Zb[5, j] = a5
    else:
        _scores_rows(X, i, r_n, WT, Zb)
    _add_bias(Zb, r_n, b)


@njit(cache=True, nogil=True, fastmath=_REDUCE_FLAGS)
def _scores_block_wide(X, i, r_n, WT, b, Zb):
    """Zb[r] = X[i + r] W + b for r < r_n <= WIDE_ROWS: _scores_block for a
    target with AVX-512.  A full block runs in register tiles of 4 rows x 5
    outputs (then 4 x 2, then 4 x 1): 20 512-bit accumulators, and each step
    of the loop over features loads 4 vectors of X and 5 of W^T for 20
    multiply-adds.  Loads of X per multiply-add are what bound the 6 x 2 tile:
    NumPy's rows are 16 bytes off a 64-byte line, so every 512-bit load of X
    spans two lines; W^T sits in L1.  Measured (project machine, float32,
    (n, 784) x 10 outputs, G multiply-adds/s): 38 -> 55-60 with X in L2,
    31 -> 44 with X in L3."""
    _helpers.wide_vectors()
    k, d = WT.shape
    dt = WT.dtype.type
    if r_n == 4:
        x0 = X[i]
        x1 = X[i + 1]
        x2 = X[i + 2]
        x3 = X[i + 3]
        j = 0
        while j + 5 <= k:
            w0 = WT[j]
            w1 = WT[j + 1]
            w2 = WT[j + 2]
            w3 = WT[j + 3]
            w4 = WT[j + 4]
            a00 = dt(0)
            a01 = dt(0)
            a02 = dt(0)
            a03 = dt(0)
            a04 = dt(0)
            a10 = dt(0)
            a11 = dt(0)
            a12 = dt(0)
            a13 = dt(0)
            a14 = dt(0)
            a20 = dt(0)
            a21 = dt(0)
            a22 = dt(0)
            a23 = dt(0)
            a24 = dt(0)
            a30 = dt(0)
            a31 = dt(0)
            a32 = dt(0)
            a33 = dt(0)
            a34 = dt(0)
            for f in range(d):
                y0 = x0[f]
                y1 = x1[f]
                y2 = x2[f]
                y3 = x3[f]
                u0 = w0[f]
                u1 = w1[f]
                u2 = w2[f]
                u3 = w3[f]
                u4 = w4[f]
                a00 += y0 * u0
                a01 += y0 * u1
                a02 += y0 * u2
                a03 += y0 * u3
                a04 += y0 * u4
                a10 += y1 * u0
                a11 += y1 * u1
                a12 += y1 * u2
                a13 += y1 * u3
                a14 += y1 * u4
                a20 += y2 * u0
                a21 += y2 * u1
                a22 += y2 * u2
                a23 += y2 * u3
                a24 += y2 * u4
                a30 += y3 * u0
                a31 += y3 * u1
                a32 += y3 * u2
                a33 += y3 * u3
                a34 += y3 * u4
            Zb[0, j] = a00
            Zb[0, j + 1] = a01
            Zb[0, j + 2] = a02
            Zb[0, j + 3] = a03
            Zb[0, j + 4] = a04
            Zb[1, j] = a10
            Zb[1, j + 1] = a11
            Zb[1, j + 2] = a12
            Zb[1, j + 3] = a13
            Zb[1, j + 4] = a14
            Zb[2, j] = a20
            Zb[2, j + 1] = a21
            Zb[2, j + 2] = a22
            Zb[2, j + 3] = a23
            Zb[2, j + 4] = a24
            Zb[3, j] = a30
            Zb[3, j + 1] = a31
            Zb[3, j + 2] = a32
            Zb[3, j + 3] = a33
            Zb[3, j + 4] = a34
            j += 5
        while j + 2 <= k:
            w0 = WT[j]
            w1 = WT[j + 1]
            a00 = dt(0)
            a01 = dt(0)
            a10 = dt(0)
            a11 = dt(0)
            a20 = dt(0)
            a21 = dt(0)
            a30 = dt(0)
            a31 = dt(0)
            for f in range(d):
                y0 = x0[f]
                y1 = x1[f]
                y2 = x2[f]
                y3 = x3[f]
                u0 = w0[f]
                u1 = w1[f]
                a00 += y0 * u0
                a01 += y0 * u1
                a10 += y1 * u0
                a11 += y1 * u1
                a20 += y2 * u0
                a21 += y2 * u1
                a30 += y3 * u0
                a31 += y3 * u1
            Zb[0, j] = a00
            Zb[0, j + 1] = a01
            Zb[1, j] = a10
            Zb[1, j + 1] = a11
            Zb[2, j] = a20
            Zb[2, j + 1] = a21
            Zb[3, j] = a30
            Zb[3, j + 1] = a31
            j += 2
        if j < k:
            w0 = WT[j]
            a00 = dt(0)
            a10 = dt(0)
            a20 = dt(0)
            a30 = dt(0)
            for f in range(d):
                y0 = x0[f]
                y1 = x1[f]
                y2 = x2[f]
                y3 = x3[f]
                u0 = w0[f]
                a00 += y0 * u0
                a10 += y1 * u0
                a20 += y2 * u0
                a30 += y3 * u0
            Zb[0, j] = a00
            Zb[1, j] = a10
            Zb[2, j] = a20
            Zb[3, j] = a30
    else:
        _scores_rows(X, i, r_n, WT, Zb)
    _add_bias(Zb, r_n, b)


@njit(cache=True, nogil=True, fastmath=_REDUCE_FLAGS)
def _accumulate_block(X, i, r_n, Db, accT):
    """accT[j] += sum_r Db[r, j] * X[i + r] (a rank-r_n update of dW^T).

    A full block (r_n == 6) runs in tiles of 6 rows x 5 outputs (then 2, then
    1): each step over features loads 6 values of X once for 30 multiply-adds
    into 5 rows of dW^T (so the loop is bound by the multiply-adds, not by
    loads and stores).  With AVX-512 the loop runs in 512-bit vectors
    (_helpers.wide_vectors: 42.6 -> 55.0 G multiply-adds/s from L2 at 784
    features, float32)."""
    _helpers.wide_vectors()
    k, d = accT.shape
    if r_n == 6:
        x0 = X[i]
        x1 = X[i + 1]
        x2 = X[i + 2]
        x3 = X[i + 3]
        x4 = X[i + 4]
        x5 = X[i + 5]
        j = 0
        while j + 5 <= k:
            g0 = accT[j]
            g1 = accT[j + 1]
            g2 = accT[j + 2]
            g3 = accT[j + 3]
            g4 = accT[j + 4]
            p0, p1, p2, p3, p4, p5 = Db[0, j], Db[1, j], Db[2, j], Db[3, j], Db[4, j], Db[5, j]
            q0, q1, q2, q3, q4, q5 = (Db[0, j + 1], Db[1, j + 1], Db[2, j + 1], Db[3, j + 1],
                                      Db[4, j + 1], Db[5, j + 1])
            s0, s1, s2, s3, s4, s5 = (Db[0, j + 2], Db[1, j + 2], Db[2, j + 2], Db[3, j + 2],
                                      Db[4, j + 2], Db[5, j + 2])
            t0, t1, t2, t3, t4, t5 = (Db[0, j + 3], Db[1, j + 3], Db[2, j + 3], Db[3, j + 3],
                                      Db[4, j + 3], Db[5, j + 3])
            u0, u1, u2, u3, u4, u5 = (Db[0, j + 4], Db[1, j + 4], Db[2, j + 4], Db[3, j + 4],
                                      Db[4, j + 4], Db[5, j + 4])
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
                g3[f] += t0 * y0 + t1 * y1 + t2 * y2 + t3 * y3 + t4 * y4 + t5 * y5
                g4[f] += u0 * y0 + u1 * y1 + u2 * y2 + u3 * y3 + u4 * y4 + u5 * y5
            j += 5
        while j + 2 <= k:
            g0 = accT[j]
            g1 = accT[j + 1]
            p0, p1, p2, p3, p4, p5 = Db[0, j], Db[1, j], Db[2, j], Db[3, j], Db[4, j], Db[5, j]
            q0, q1, q2, q3, q4, q5 = (Db[0, j + 1], Db[1, j + 1], Db[2, j + 1], Db[3, j + 1],
                                      Db[4, j + 1], Db[5, j + 1])
            for f in range(d):
                y0 = x0[f]
                y1 = x1[f]
                y2 = x2[f]
                y3 = x3[f]
                y4 = x4[f]
                y5 = x5[f]
                g0[f] += p0 * y0 + p1 * y1 + p2 * y2 + p3 * y3 + p4 * y4 + p5 * y5
                g1[f] += q0 * y0 + q1 * y1 + q2 * y2 + q3 * y3 + q4 * y4 + q5 * y5
            j += 2
        if j < k:
            g0 = accT[j]
            p0, p1, p2, p3, p4, p5 = Db[0, j], Db[1, j], Db[2, j], Db[3, j], Db[4, j], Db[5, j]
            for f in range(d):
                g0[f] += (p0 * x0[f] + p1 * x1[f] + p2 * x2[f] + p3 * x3[f] + p4 * x4[f]
                          + p5 * x5[f])
    else:
        for r in range(r_n):
            xr = X[i + r]
            for j in range(k):
                g = accT[j]
                dr = Db[r, j]
                for f in range(d):
                    g[f] += dr * xr[f]


@njit(cache=True, nogil=True)
def _scores_tiles(X, i, m, WT, b, Zr):
    """Zr[:m] = X[i:i+m] W + b, in the register tiles of _scores_block (of
    _scores_block_wide when Numba compiles for AVX-512)."""
    t = 0
    if AVX512:
        while t < m:
            tn = min(WIDE_ROWS, m - t)
            _scores_block_wide(X, i + t, tn, WT, b, Zr[t:t + tn])
            t += tn
        return
    while t < m:
        tn = min(ROW_BLOCK, m - t)
        _scores_block(X, i + t, tn, WT, b, Zr[t:t + tn])
        t += tn


@njit(cache=True, nogil=True)
def _accumulate_tiles(X, i, m, Dr, accT):
    """accT += Dr[:m]^T X[i:i+m], in the register tiles of _accumulate_block."""
    t = 0
    while t < m:
        tn = min(ROW_BLOCK, m - t)
        _accumulate_block(X, i + t, tn, Dr[t:t + tn], accT)
        t += tn


@njit(cache=True, nogil=True)
def _to_lanes(Zr, m, ZT):
    """ZT[:, :m] = Zr[:m]^T: a block's rows as the lane form's columns."""
    for j in range(ZT.shape[0]):
        for r in range(m):
            ZT[j, r] = Zr[r, j]


@njit(cache=True, nogil=True, fastmath=_REDUCE_FLAGS)
def _sum_lanes(row, m):
    """sum(row[:m]), reassociated (vectorised)."""
    s = row.dtype.type(0)
    for r in range(m):
        s += row[r]
    return s


@njit(cache=True, nogil=True, error_model="numpy")
def _scale_lanes(DT, loss, sw, i, m, inv_w, Dr, accb, total):
    """A lane block's tail: DT[:, r] *= w_{i+r} / sum(w), accb += its rows'
    sums, Dr[:m] = DT^T; returns total + sum_r w_{i+r} loss[r] (in row
    order).  Scaled and summed in the lane form, each a loop over the lanes
    (vectorised), then one transpose: 1.5 -> 1.1 us for 256 rows of 10
    outputs, float32, against a loop over the rows doing all three."""
    dt = DT.dtype.type
    k = DT.shape[0]
    if sw is None:
        scale = dt(inv_w)
        for j in range(k):
            for r in range(m):
                DT[j, r] = DT[j, r] * scale
        for r in range(m):
            total += loss[r]
    else:
        for r in range(m):
            w = float(sw[i + r])
            total += w * loss[r]
            loss[r] = w * inv_w         # the row's scale, in the loss slot
        for j in range(k):
            for r in range(m):
                DT[j, r] = DT[j, r] * dt(loss[r])
    for j in range(k):
        accb[j] += _sum_lanes(DT[j], m)
    for r in range(m):
        for j in range(k):
            Dr[r, j] = DT[j, r]
    return total


@njit(cache=True, nogil=True)
def lane_buffers(n_chunks, k, n_real, n_int, dtype):
    """Per-chunk work arrays of a rule's lane form, LANE_ROWS lanes each:
    (Zr (rows, k), Dr, ZT (k, lanes), DT, S, SI, loss, labels)."""
    R = LANE_ROWS
    return (np.empty((n_chunks, R, k), dtype), np.empty((n_chunks, R, k), dtype),
            np.empty((n_chunks, k, R), dtype), np.empty((n_chunks, k, R), dtype),
            np.empty((n_chunks, max(n_real, 1), R), dtype),
            np.empty((n_chunks, max(n_int, 1), R), np.int64),
            np.empty((n_chunks, R)), np.empty((n_chunks, R), np.int64))


@njit(cache=True, nogil=True)
def reduce_chunks_T(scratch, n_chunks, dW, db):
    """dW = sum_c accT_c^T, db = sum_c accb_c, in chunk order; returns the loss sum."""
    d, k = dW.shape
    for f in range(d):
        for j in range(k):
            dW[f, j] = 0
    total = 0.0
    for c in range(n_chunks):
        accT, accb, Zb, Db, slot = _chunk_views(scratch, c, d, k)
        for j in range(k):
            for f in range(d):
                dW[f, j] += accT[j, f]
        if db is not None:
            if c == 0:
                for j in range(k):
                    db[j] = accb[j]
            else:
                for j in range(k):
                    db[j] += accb[j]
        total += slot[0]
    return total


def _add_partial(dW, part):
    """dW += part, element by element (the plain loop, for any layout)."""
    d, k = dW.shape
    for f in range(d):
        for j in range(k):
            dW[f, j] += part[f, j]


@overload(_add_partial, inline="always")
def _ov_add_partial(dW, part):
    if not (dW.layout == "C" and part.layout == "C"):
        return _add_partial

    # one flat loop, which vectorises: over (d, k) loops with k = 1 the inner
    # loop ran one element a step (2^18 x 1 float32: 0.34 ms against 0.02 ms,
    # the serial part of csr_parallel at one output); the same additions
    def flat(dW, part):
        n = dW.size
        a = dW.reshape(n)
        p = part.reshape(n)
        for t in range(n):
            a[t] += p[t]
    return flat


def zero_partial(acc):
    """acc[...] = 0 (the plain loop, for any layout)."""
    acc[:, :] = 0


@overload(zero_partial, inline="always")
def _ov_zero_partial(acc):
    if acc.layout != "C":
        return zero_partial

    # one flat loop (a memset): over a (d, 1) chunk partial ``acc[:, :] = 0``
    # stored one element a step (2^18 x 1 float32: 0.24 ms against 0.03 ms,
    # on the thread of the chunk that zeroes it while chunk 0's thread scatters)
    def flat(acc):
        a = acc.reshape(acc.size)
        for t in range(a.shape[0]):
            a[t] = 0
    return flat


@njit(cache=True, nogil=True)
def reduce_chunks(scratch, n_chunks, dW, db):
    """CSR variant (csr_parallel): dW += the partials of chunks 1.. (in W's
    (d, k) layout; chunk 0 added its rows to dW itself), db = the sum of
    every chunk's, in chunk order; returns the loss sum."""
    d, k = dW.shape
    total = 0.0
    for c in range(n_chunks):
        acc, accb, Zb, Db, slot = _chunk_views(scratch, c, d, k)
        if c > 0:       # chunk 0 accumulated into dW itself
            _add_partial(dW, acc.reshape((d, k)))   # same memory, (d, k) layout for CSR
        if db is not None:
            if c == 0:
                for j in range(k):
                    db[j] = accb[j]
            else:
                for j in range(k):
                    db[j] += accb[j]
        total += slot[0]
    return total


# ------------------------------------------------------------- predictions


@njit(cache=True, nogil=True, fastmath=_REDUCE_FLAGS)
def _predict_dense_rows(X, WT, b, out, start, stop):
    k, d = WT.shape
    dt = WT.dtype.type
    for i in range(start, stop):
        x = X[i]
        for j in range(k):
            w = WT[j]
            a = dt(0)
            for f in range(d):
                a += x[f] * w[f]
            out[i, j] = a if b is None else a + b[j]


@njit(cache=True, nogil=True)
def predict_dense(X, W, b, out, WT):
    """out = X W + b (serial); WT is a (k, d) scratch for W's transpose."""
    transpose_into(W, WT)
    _predict_dense_rows(X, WT, b, out, 0, X.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def predict_dense_parallel(X, W, b, out, WT):
    transpose_into(W, WT)
    n = X.shape[0]
    n_chunks = min(n, 64)
    for c in prange(n_chunks):
        _predict_dense_rows(X, WT, b, out, c * n // n_chunks, (c + 1) * n // n_chunks)


# inlined into their callers (Numba IR): as called functions the per-row
# call cost the CSR kernel 20% at 8 nonzeros a row
@njit(inline="always")
def _csr_row_scores(data, indices, indptr, i, W, b, z):
    """z = b + X[i] W (b None: 0), summed in nonzero order (kernels/_simd.py:
    one masked vector multiply-add per nonzero, the scores in registers)."""
    _simd.csr_row_scores(data, indices, indptr[i], indptr[i + 1], W, b, z)


@njit(inline="always")
def _csr_row_scatter(data, indices, indptr, i, dz, acc):
    """acc[f] += X[i, f] * dz for every nonzero of row i."""
    _simd.csr_row_scatter(data, indices, indptr[i], indptr[i + 1], dz, acc)


@njit(cache=True, nogil=True)
def _predict_csr_rows(data, indices, indptr, W, b, out, start, stop):
    for i in range(start, stop):
        _csr_row_scores(data, indices, indptr, i, W, b, out[i])


@njit(cache=True, nogil=True)
def predict_csr(data, indices, indptr, W, b, out):
    _predict_csr_rows(data, indices, indptr, W, b, out, 0, out.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def predict_csr_parallel(data, indices, indptr, W, b, out):
    n = out.shape[0]
    n_chunks = min(n, 64)
    for c in prange(n_chunks):
        _predict_csr_rows(data, indices, indptr, W, b, out,
                          c * n // n_chunks, (c + 1) * n // n_chunks)


# ------------------------------------------------------ generated per loss

# A row rule is compiled twice: with libm's exp, and (``_rule_vec``) with
# exp_fast (kernels/_helpers.py), which vectorises in the rule's store-only
# exp loop when the row is long enough and dz is not z; ``row`` picks.
# Scalar rules keep libm's exp only: their exp sits in an in-order loss sum,
# where the inlined polynomial measured slower (4.8 vs 3.4 ns) than libm's.
# _rule_vec is also reassociated (its own function: inlined, it would take
# its caller's flags), so that the row's sums and maxima-free reductions
# vectorise: softmax at k = 1000, 2.0 -> 1.26 ns per score.  No nnan/ninf:
# NaN and inf keep their meaning; only the order of a sum's terms changes.
_RULE_VEC = ('_rule_vec = njit(error_model="numpy", fastmath={"reassoc", "contract"})'
             '(with_fast_math(_rule_py))')


def _rule_vec_line(spec):
    return _RULE_VEC if spec.kind == "row" else ""


def _lanes_part(spec):
    """The generated lane form and kernels of ``spec``'s rule, or the plain
    dispatchers when it has none (scalar rules; row rules the translator
    refuses, e.g. multiclass_hinge's early returns)."""
    if spec.kind != "row":
        return _templates.fragment("loss_no_lanes")
    form = rule_lanes.lane_form(spec.rule, "_rule_lanes_py")
    if form is None:
        return _templates.fragment("loss_no_lanes")
    text, n_real, n_int = form
    if n_int or n_real > LANE_SLOTS:
        return _templates.fragment("loss_no_lanes")    # its locals would not fit the scratch
    return text.strip("\n") + "\n\n\n" + _templates.fragment("loss_lanes")


def _source(spec):
    """The text of ``spec``'s driver module: templates/loss.py filled."""
    rows_inplace = _templates.snippet("loss_rows_inplace", "rows_inplace")
    return _templates.fill("loss", dict(
        name_repr=repr(spec.name),
        digest=_digest(__file__, *_TEMPLATES),
        rule_import=f"from optkern.kernels.loss_rules import {spec.rule.__name__} as _rule_py",
        rule_vec=_rule_vec_line(spec),
        row_form=_templates.fragment(
            "loss_row_scalar" if spec.kind == "scalar" else "loss_row_row"),
        rows_inplace_serial=_templates.substitute(rows_inplace, {"range": "range"}),
        rows_inplace_parallel=_templates.substitute(rows_inplace, {"range": "prange"}),
        lanes=_lanes_part(spec)))


_TEMPLATES = ("loss", "loss_row_scalar", "loss_row_row", "loss_rows_inplace", "loss_lanes",
              "loss_no_lanes")
_MODULES = {}


def module_for(loss):
    """Import (generating if needed) the compiled driver module of ``loss``."""
    if loss not in _MODULES and loss not in _rules.LOSS_RULES:
        raise ValueError(f"unknown loss {loss!r}; known: {sorted(_rules.LOSS_RULES)}")
    return _files.load_generated(
        _MODULES, loss, generated_dir, f"optkern_loss_{loss}_drivers.py",
        f"optkern.kernels._generated_loss_{loss}", lambda: _source(_rules.LOSS_RULES[loss]))


_CUDA = {}


def cuda_kernels(loss):
    kern = _CUDA.get(loss)
    if kern is None:
        kern = _CUDA[loss] = module_for(loss).make_cuda_kernels()
    return kern


def kernel(loss, layout="dense", parallel=False):
    """The compiled building block for ``loss``: layout "dense", "csr" or "blas"."""
    mod = module_for(loss)
    if layout == "blas":
        return mod.dense_blas
    if layout not in ("dense", "csr"):
        raise ValueError(f"layout={layout!r}: expected 'dense', 'csr' or 'blas'")
    return getattr(mod, f"{layout}_{'parallel' if parallel else 'serial'}")
