# Fragment of epoch.py (HOLE_BATCHES), CSR layout: the batch pass, serial and parallel.  # template-only
from numba import njit  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only


@njit(cache=True, nogil=True, error_model="numpy",
      fastmath={"reassoc", "contract"})
def _batch_serial(data, indices, indptr, T, sw, order, start, stop, n_chunks, W, b, dWp, dbp,
                  Z, D, lossp, wsump, eps):
    HOLE_SERIAL


@njit(cache=True, nogil=True, error_model="numpy",
      fastmath={"reassoc", "contract"}, parallel=True)
def _batch_parallel(data, indices, indptr, T, sw, order, start, stop, n_chunks, W, b, dWp, dbp,
                  Z, D, lossp, wsump, eps):
    HOLE_PARALLEL
