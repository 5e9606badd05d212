# Fragment of epoch.py (HOLE_BATCHES), dense layout: the batch pass, serial and parallel.  # template-only
from numba import njit  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only


@njit(cache=True, nogil=True, error_model="numpy")
def _batch_serial(X, T, sw, order, start, stop, n_chunks, WT, b, dWp, dbp, Z, D,
                  lossp, wsump, eps, Xb, Zb, Db, ZT, DT, S, SI, LS, YB):
    HOLE_SERIAL


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _batch_parallel(X, T, sw, order, start, stop, n_chunks, WT, b, dWp, dbp, Z, D,
                  lossp, wsump, eps, Xb, Zb, Db, ZT, DT, S, SI, LS, YB):
    HOLE_PARALLEL
