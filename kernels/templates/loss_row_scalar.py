# Fragment of loss.py (HOLE_ROW_FORM or HOLE_LANES) for a scalar rule (one output at a time).  # template-only
from numba import njit  # template-only
import numpy as np  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only
from optkern.kernels._helpers import load  # template-only
from optkern.kernels._simd import fmuladd  # template-only


@njit(cache=True, nogil=True, error_model="numpy")
def row(z, y_i, epsilon, dz):
    """Loss of one row of scores; writes d loss / d z into dz (may alias z)."""
    total = 0.0
    for j in range(z.shape[0]):
        l_j, d_j = _rule(z[j], y_i[j], epsilon)
        dz[j] = d_j
        total += l_j
    return total


# The CSR kernels' loop at one output (binary and single-target losses):
# _csr_chunk runs it when k == 1.  At k = 1 the general row loop keeps one
# score in a vector register and chains a dependent multiply-add per nonzero
# (4 cycles each: a 131-nonzero row waits ~500 cycles for its score, and the
# scatter waits for the score); here four rows' chains run side by side in
# scalar registers, so the core overlaps them.  Each row's score is still
# summed in nonzero order with the same fused multiply-adds, and the rows'
# rules, intercept terms and scatters still run in row order: the results
# are the same bits as the general loop's.
CSR_K1_LOOP = True


@njit(inline="always")
def _k1_rule_scatter(data, indices, lo, hi, z, y_ij, w, eps, inv_w, acc):
    """Row lo..hi's rule on its score z, then its scatter into acc (d,);
    returns (w * L, the row's scaled derivative).  Positions and indices go
    unsigned: no negative-index wraparound code in the loops."""
    dt = acc.dtype.type
    l_j, d_j = _rule(z, y_ij, eps)
    g = dt(d_j) * dt(w * inv_w)
    for v in range(lo, hi):
        f = np.uint64(indices[v])
        acc[f] = fmuladd(data[v], g, acc[f])
    return w * (0.0 + l_j), g


@njit(inline="always")
def _k1_score(data, indices, lo, hi, w1, z):
    for v in range(lo, hi):
        z = fmuladd(data[v], w1[np.uint64(indices[v])], z)
    return z


@njit(inline="always")
def _k1_four(data, indices, indptr, i, p0, p1, p2, p3, p4, w1, bz):
    """The scores bz + X[r] w1 of rows i..i+3 (p0..p4: indptr[i..i+4],
    unsigned): their four chains side by side over the rows' common
    length, then each row's tail; each summed in nonzero order."""
    # the common length, from signed differences (a decreasing indptr
    # gives empty rows, as in the general loop, not a huge unsigned m)
    n01 = min(indptr[i + 1] - indptr[i], indptr[i + 2] - indptr[i + 1])
    n23 = min(indptr[i + 3] - indptr[i + 2], indptr[i + 4] - indptr[i + 3])
    m = np.uint64(max(0, min(n01, n23)))
    z0 = bz
    z1 = bz
    z2 = bz
    z3 = bz
    t = np.uint64(0)
    while t < m:
        z0 = fmuladd(data[p0 + t], w1[np.uint64(indices[p0 + t])], z0)
        z1 = fmuladd(data[p1 + t], w1[np.uint64(indices[p1 + t])], z1)
        z2 = fmuladd(data[p2 + t], w1[np.uint64(indices[p2 + t])], z2)
        z3 = fmuladd(data[p3 + t], w1[np.uint64(indices[p3 + t])], z3)
        t += np.uint64(1)
    return (_k1_score(data, indices, p0 + m, p1, w1, z0),
            _k1_score(data, indices, p1 + m, p2, w1, z1),
            _k1_score(data, indices, p2 + m, p3, w1, z2),
            _k1_score(data, indices, p3 + m, p4, w1, z3))


@njit(cache=True, nogil=True, error_model="numpy")
def _csr_chunk_k1(data, indices, indptr, y, sw, W, b, epsilon, inv_w, acc, accb,
                  start, stop):
    """_csr_chunk at one output (acc, W: (d, 1) C-contiguous), four rows at a
    time: their scores side by side, then each row's rule and scatter."""
    dt = W.dtype.type
    eps = dt(epsilon)
    d = W.shape[0]
    w1 = W.reshape(d)
    a1 = acc.reshape(d)
    bz = load(b, 0, dt(0))
    gb = dt(0)
    total = 0.0
    i = start
    while i + 4 <= stop:
        p0 = np.uint64(indptr[i])
        p1 = np.uint64(indptr[i + 1])
        p2 = np.uint64(indptr[i + 2])
        p3 = np.uint64(indptr[i + 3])
        p4 = np.uint64(indptr[i + 4])
        z0, z1, z2, z3 = _k1_four(data, indices, indptr, i, p0, p1, p2, p3, p4, w1, bz)
        w = 1.0 if sw is None else float(sw[i])
        l, g = _k1_rule_scatter(data, indices, p0, p1, z0, y[i, 0], w, eps, inv_w, a1)
        total += l
        gb += g
        w = 1.0 if sw is None else float(sw[i + 1])
        l, g = _k1_rule_scatter(data, indices, p1, p2, z1, y[i + 1, 0], w, eps, inv_w, a1)
        total += l
        gb += g
        w = 1.0 if sw is None else float(sw[i + 2])
        l, g = _k1_rule_scatter(data, indices, p2, p3, z2, y[i + 2, 0], w, eps, inv_w, a1)
        total += l
        gb += g
        w = 1.0 if sw is None else float(sw[i + 3])
        l, g = _k1_rule_scatter(data, indices, p3, p4, z3, y[i + 3, 0], w, eps, inv_w, a1)
        total += l
        gb += g
        i += 4
    while i < stop:
        p0 = np.uint64(indptr[i])
        p1 = np.uint64(indptr[i + 1])
        z0 = _k1_score(data, indices, p0, p1, w1, bz)
        w = 1.0 if sw is None else float(sw[i])
        l, g = _k1_rule_scatter(data, indices, p0, p1, z0, y[i, 0], w, eps, inv_w, a1)
        total += l
        gb += g
        i += 1
    accb[0] = gb
    return total


# At one output csr_serial and csr_parallel run two passes over X when the
# rows' scores fit the scratch (K1 room: the parts the CSR kernels do not
# use otherwise): every row's score first (gathers from the 1 MB W at
# d = 2^18, W alone in L2 beside X's stream), then each row's rule and
# scatter (read-modify-writes of dW, alone in L2), each pass split over the
# chunks.  One fused pass had both tables share L2 with X: 6.7 against 5.7
# ms CPU serial at (20000, 2^18, 131 nonzeros a row) float32.  Each score is
# still summed in nonzero order and each dW entry gets its rows' terms in
# row order: the same bits as _csr_chunk_k1 (docs/first_call.md).  The first
# pass also checks each group's column indices before it gathers with them
# (a vector min and max of indices that are then in L1 for the gathers), so
# loss_and_grad skips its separate scan of them (0.37-0.41 ms at 2.6 M).


@njit(inline="always")
def _k1_in_range(indices, lo, hi, d):
    """Whether indices[lo:hi] all lie in [0, d) (lo >= hi: empty, True)."""
    if hi <= lo:
        return True
    mn = indices[lo]
    mx = indices[lo]
    for v in range(lo + np.uint64(1), hi):
        t = indices[v]
        mn = min(mn, t)
        mx = max(mx, t)
    return mn >= 0 and mx < d


@njit(inline="always")
def _k1_scores(data, indices, indptr, w1, bz, zs, start, stop):
    """zs[i] = bz + X[i] w1 for rows start..stop-1, four rows' chains side by
    side as in _csr_chunk_k1; False (and the rest unscored) as soon as a
    group of rows holds a column index outside [0, d), before any gather
    with it.  The group's check spans the lowest to the highest of its
    indptr entries: every position any of its rows reads, even with a
    decreasing indptr."""
    d = w1.shape[0]
    i = start
    while i + 4 <= stop:
        p0 = np.uint64(indptr[i])
        p1 = np.uint64(indptr[i + 1])
        p2 = np.uint64(indptr[i + 2])
        p3 = np.uint64(indptr[i + 3])
        p4 = np.uint64(indptr[i + 4])
        if not _k1_in_range(indices, min(min(p0, p1), min(min(p2, p3), p4)),
                            max(max(p0, p1), max(max(p2, p3), p4)), d):
            return False
        zs[i], zs[i + 1], zs[i + 2], zs[i + 3] = _k1_four(data, indices, indptr, i, p0, p1, p2,
                                                                  p3, p4, w1, bz)
        i += 4
    while i < stop:
        p0 = np.uint64(indptr[i])
        p1 = np.uint64(indptr[i + 1])
        if not _k1_in_range(indices, p0, p1, d):
            return False
        zs[i] = _k1_score(data, indices, p0, p1, w1, bz)
        i += 1
    return True


@njit(inline="always")
def _k1_rules_scatter(data, indices, indptr, y, sw, zs, epsilon, inv_w, a1, start, stop):
    """Rows start..stop-1 from their scores zs[i]: each row's rule, then its
    scatter into a1 (d,), in row order; returns (sum w_i L_i, the intercept
    term sum), summed in row order as _csr_chunk_k1 does."""
    dt = a1.dtype.type
    eps = dt(epsilon)
    gb = dt(0)
    total = 0.0
    for i in range(start, stop):
        w = 1.0 if sw is None else float(sw[i])
        l, g = _k1_rule_scatter(data, indices, np.uint64(indptr[i]), np.uint64(indptr[i + 1]),
                                zs[i], y[i, 0], w, eps, inv_w, a1)
        total += l
        gb += g
    return total, gb


def _row_source():
    return """
def row(z, y_i, epsilon, dz):
    total = 0.0
    for j in range(z.shape[0]):
        l_j, d_j = rule(z[j], y_i[j], epsilon)
        dz[j] = d_j
        total += l_j
    return total
"""
