# Fragment of loss.py (HOLE_ROW_FORM or HOLE_LANES) for a rule with a lane form (after its generated ``_rule_lanes_py``).  # template-only
from numba import njit  # template-only
import numpy as np  # template-only
from optkern.kernels.loss_drivers import LANE_CAP  # noqa: F401  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only


_rule_lanes = njit(error_model="numpy")(_rule_lanes_py)
# the rule has no integer locals (else it would keep the row form): a
# read-only stand-in for their slots
_NO_INTS = np.zeros((1, LANE_CAP), np.int64)


@njit(cache=True, nogil=True, error_model="numpy")
def _block_rule(Zr, y, sw, i, m, eps, inv_w, ZT, DT, loss, S, Dr, accb, total):
    """The rule's lane form on rows i..i+m-1 (their scores in Zr[:m]): Dr[:m]
    gets w_i/sum(w) * dZ, accb their sum; returns total + sum w_i L_i (in
    row order)."""
    _to_lanes(Zr, m, ZT)
    _rule_lanes(ZT, y[i:i + m], eps, DT, loss, m, S, _NO_INTS)
    return _scale_lanes(DT, loss, sw, i, m, inv_w, Dr, accb, total)


@njit(cache=True, nogil=True, error_model="numpy")
def _dense_chunk_lanes(X, y, sw, WT, b, epsilon, inv_w, accT, accb, lanes, start, stop):
    """_dense_chunk with the rule applied LANE_ROWS rows at a time; lanes are
    the chunk's _lane_views."""
    dt = WT.dtype.type
    eps = dt(epsilon)
    Zr, Dr, ZT, DT, S, loss = lanes
    accT[:, :] = 0
    accb[:] = 0
    total = 0.0
    i = start
    while i < stop:
        m = min(LANE_ROWS, stop - i)
        _scores_tiles(X, i, m, WT, b, Zr)
        total = _block_rule(Zr, y, sw, i, m, eps, inv_w, ZT, DT, loss, S, Dr, accb, total)
        _accumulate_tiles(X, i, m, Dr, accT)
        i += m
    return total


@njit(cache=True, nogil=True, error_model="numpy")
def _csr_chunk_lanes(data, indices, indptr, y, sw, W, b, epsilon, inv_w, acc, accb,
                     lanes, start, stop):
    """_csr_chunk with the rule applied CSR_LANE_ROWS rows at a time; lanes
    are the chunk's _lane_views."""
    eps = W.dtype.type(epsilon)
    Zr, Dr, ZT, DT, S, loss = lanes
    accb[:] = 0
    total = 0.0
    i = start
    while i < stop:
        m = min(CSR_LANE_ROWS, stop - i)
        for r in range(m):
            _csr_row_scores(data, indices, indptr, i + r, W, b, Zr[r])
        total = _block_rule(Zr, y, sw, i, m, eps, inv_w, ZT, DT, loss, S, Dr, accb, total)
        for r in range(m):
            _csr_row_scatter(data, indices, indptr, i + r, Dr[r], acc)
        i += m
    return total


@njit(cache=True, nogil=True, error_model="numpy")
def _dense_rows(X, y, sw, WT, b, epsilon, inv_w, accT, accb, Zb, Db, scratch, c,
                start, stop):
    k, d = WT.shape
    if k < VEC_MIN_OUTPUTS:
        return _dense_chunk_lanes(X, y, sw, WT, b, epsilon, inv_w, accT, accb,
                                  _lane_views(scratch, c, d, k), start, stop)
    return _dense_chunk(X, y, sw, WT, b, epsilon, inv_w, accT, accb, Zb, Db, start, stop)


@njit(cache=True, nogil=True, error_model="numpy")
def _csr_rows(data, indices, indptr, y, sw, W, b, epsilon, inv_w, acc, accb, z, dz,
              scratch, c, start, stop):
    d, k = W.shape
    if k < VEC_MIN_OUTPUTS:
        return _csr_chunk_lanes(data, indices, indptr, y, sw, W, b, epsilon, inv_w, acc,
                                accb, _lane_views(scratch, c, d, k), start, stop)
    return _csr_chunk(data, indices, indptr, y, sw, W, b, epsilon, inv_w, acc, accb, z, dz,
                      start, stop)
