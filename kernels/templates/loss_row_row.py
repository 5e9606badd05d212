# Fragment of loss.py (HOLE_ROW_FORM or HOLE_LANES) for a row rule (a whole row of scores).  # template-only
from numba import njit  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only


@njit(cache=True, nogil=True, error_model="numpy")
def row(z, y_i, epsilon, dz):
    """Loss of one row of scores; writes d loss / d z into dz (may alias z)."""
    if z.shape[0] >= VEC_MIN_OUTPUTS and z.ctypes.data != dz.ctypes.data:
        return _rule_vec(z, y_i, epsilon, dz)
    return _rule(z, y_i, epsilon, dz)


# no one-output CSR loop for row rules (their targets are class indices)
CSR_K1_LOOP = False


@njit(cache=True, nogil=True)
def _csr_chunk_k1(data, indices, indptr, y, sw, W, b, epsilon, inv_w, acc, accb,
                  start, stop):
    """Never called (CSR_K1_LOOP is False): _csr_chunk's branch needs a name."""
    return 0.0


@njit(inline="always")
def _k1_in_range(indices, lo, hi, d):
    """Never called (CSR_K1_LOOP is False)."""
    return True


@njit(inline="always")
def _k1_scores(data, indices, indptr, w1, bz, zs, start, stop):
    """Never called (CSR_K1_LOOP is False)."""
    return True


@njit(inline="always")
def _k1_rules_scatter(data, indices, indptr, y, sw, zs, epsilon, inv_w, a1, start, stop):
    """Never called (CSR_K1_LOOP is False)."""
    return 0.0, a1.dtype.type(0)


def _row_source():
    return """
def row(z, y_i, epsilon, dz):
    return rule(z, y_i, epsilon, dz)
"""
