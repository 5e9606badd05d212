# Fragment of loss.py (HOLE_ROW_FORM or HOLE_LANES) for a scalar rule (one output at a time).  # template-only
from numba import njit  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only


@njit(cache=True, nogil=True, error_model="numpy")
def row(z, y_i, epsilon, dz):
    """Loss of one row of scores; writes d loss / d z into dz (may alias z)."""
    total = 0.0
    for j in range(z.shape[0]):
        l_j, d_j = _rule(z[j], y_i[j], epsilon)
        dz[j] = d_j
        total += l_j
    return total


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
