"""Snippet for update.py: the element loop of one tensor, written once.

The body of ``elements`` is pasted into update.py's four loops (``HOLE_RANGE``
is ``range`` or ``prange``).
"""
from numba import prange  # noqa: F401

from optkern.kernels._helpers import load, store, update_average, draw  # noqa: F401
from optkern.kernels.templates.standins import *  # noqa: F401,F403


def elements(p, g, HOLE_STATE_ARGS, avg, hyper, avg_weight, key, offset):
    dt = p.dtype.type
    zero = dt(0)
    HOLE_UNPACK
    w = dt(avg_weight)
    for i in HOLE_RANGE(p.shape[0]):
        z = dt(draw(key, offset + i, 0.0))
        p_i, HOLE_STATE_OUTS = _rule(p[i], g[i], HOLE_STATE_LOADS, HOLE_HYPER_ARGS, z)
        HOLE_STATE_STORES
        update_average(avg, i, p_i, w)
        p[i] = p_i
