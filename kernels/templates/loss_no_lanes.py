# Fragment of loss.py (HOLE_ROW_FORM or HOLE_LANES) for a rule without a lane form.  # template-only
from numba import njit  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only


@njit(cache=True, nogil=True, error_model="numpy")
def _dense_rows(X, y, sw, WT, b, epsilon, inv_w, accT, accb, Zb, Db, scratch, c,
                start, stop):
    return _dense_chunk(X, y, sw, WT, b, epsilon, inv_w, accT, accb, Zb, Db, start, stop)


@njit(cache=True, nogil=True, error_model="numpy")
def _csr_rows(data, indices, indptr, y, sw, W, b, epsilon, inv_w, acc, accb, z, dz,
              scratch, c, start, stop):
    return _csr_chunk(data, indices, indptr, y, sw, W, b, epsilon, inv_w, acc, accb, z, dz,
                      start, stop)
