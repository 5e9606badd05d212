# Fragment of sparse_epoch.py: the epoch of the scaled mode (``HOLE_NAME`` is  # template-only
# epoch_scaled or its one-output twin epoch_scaled_k1).  # template-only
from numba import njit  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only


@njit(cache=True, nogil=True, error_model="numpy")
def HOLE_NAME(data, indices, indptr, T, sw, order, start, stop, batch_size, W, b, HOLE_W_STATES, HOLE_B_STATES,
             avgW, avgB, userW, userB, scalarsW, scalarsB, step0, avg_start, avg_count0,
             sched, base_lr, plateau, alpha, l1_ratio, epsilon, seed, offW, offB, w_mean,
             slot, touched, G, z, dz, db, unique_rows, l1, q, carry):
    HOLE_START
    # no lazy penalty here (the steps' per-nonzero 1/pi_f)
    inv_p = None
    per_nz = False
    tscale = None
    one = dt(1.0)
    zero = dt(0.0)
    # per-example steps (batch 1, a row's features distinct, no L1): the
    # loop without the touched list and the compact gradient, with one pass
    # over the row's nonzeros per step; the same arithmetic in the same order
    # (the same weights as the general loop)
    per_example = direct and l1 <= 0
    # the L1 clip (clip_touched) reads the touched rows before the scores
    fused = (not direct) and l1 <= 0
    # the loop of kernels/sparse_epoch_rules.py, its primitives the scaled
    # mode's (per example: the example_* ones)
    if per_example:
        HOLE_EXAMPLE_LOOP
    else:
        HOLE_LOOP
