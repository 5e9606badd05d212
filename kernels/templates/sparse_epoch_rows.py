# Fragment of sparse_epoch.py: the epoch of the lazy and linear modes (``HOLE_NAME``  # template-only
# is epoch_rows or its one-output twin epoch_rows_k1).  ``inv_p`` None = the full  # template-only
# penalty (exact), else 1/pi_f of each nonzero's feature (aligned with  # template-only
# ``indices``), copied to ``tscale`` per touched row; ``P`` None = no tables  # template-only
# (lazy without averaging: nothing to catch up).  # template-only
from numba import njit  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only


@njit(cache=True, nogil=True, error_model="numpy")
def HOLE_NAME(data, indices, indptr, T, sw, order, start, stop, batch_size, W, b, HOLE_W_STATES, HOLE_B_STATES,
             avgW, avgB, userW, userB, scalarsW, scalarsB, step0, avg_start, avg_count0,
             sched, base_lr, plateau, alpha, l1_ratio, epsilon, seed, offW, offB, w_mean,
             slot, touched, G, z, dz, db, unique_rows, inv_p, tscale, P, S, last, A, Ssum, tmp,
             x, y):
    HOLE_START
    # the lazy penalty's 1/pi_f: per nonzero (aligned with ``indices``) when
    # inv_p is not n_features long, else per feature (new_slot)
    per_nz = False
    if inv_p is not None:
        per_nz = inv_p.shape[0] != d
    want_sum = avgW is not None
    l2_only = l1_ratio == 0.0
    # the catch-up (P) reads the touched rows before the scores
    fused = (not direct) and P is None
    # the loop of kernels/sparse_epoch_rules.py, its primitives the rows mode's
    HOLE_LOOP
