"""The order of an epoch's rows, drawn in compiled code.

One generator for every backend: the compiled epochs, the sparse epochs and
the NumPy reference epoch all take an epoch's order from ``draw_order``, so a
given ``random_state`` gives the same minibatches in the same order
everywhere.  ``kernels/cython/_order.pyx`` is its ahead-of-time twin (the
no-JIT path); tests/test_epoch_order.py checks the two agree element for
element.

The generator is SplitMix64 (Steele, Lea and Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014): a 64-bit counter advanced by
the golden-ratio increment, each value the counter through a bijective
mixing function.  It passes BigCrush, has no state beyond one integer, and
is a handful of integer instructions in any language: what a twin in C
needs.  Bounded values use the multiply-shift method with rejection (Lemire,
"Fast random integer generation in an interval", 2019) on the upper 32 bits
of a draw, so they are exactly uniform; populations of 2**32 rows or more
(never seen in memory, but not refused) fall back to 64-bit modulo with
rejection.

Modes (``mode``):
    0  a permutation of 0..n-1 (Fisher-Yates, from the last position down)
    1  n draws with replacement from 0..n-1
    2  0..n-1 in order

The estimator draws one 64-bit seed per epoch from its own generator
(``numpy.random.Generator``, seeded from ``random_state``), so ``partial_fit``
continues the sequence of epochs a ``fit`` would have drawn.
"""

import numpy as np
from numba import njit

MODES = {"epoch": 0, "replacement": 1, "sequential": 2}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO32 = np.uint64(0x100000000)


@njit(cache=True, nogil=True)
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _below(state, s):
    """(a uniform integer in [0, s), the advanced state), s >= 1 (uint64s)."""
    if s <= _LOW32:
        state += _GOLDEN
        m = (_mix(state) >> np.uint64(32)) * s
        low = m & _LOW32
        if low < s:
            t = (_TWO32 - s) % s
            while low < t:
                state += _GOLDEN
                m = (_mix(state) >> np.uint64(32)) * s
                low = m & _LOW32
        return m >> np.uint64(32), state
    t = (np.uint64(0) - s) % s
    state += _GOLDEN
    r = _mix(state)
    while r < t:
        state += _GOLDEN
        r = _mix(state)
    return r % s, state


@njit(cache=True, nogil=True)
def draw_order(seed, mode, out):
    """Fill ``out`` (int64, length n) with the epoch's order for ``seed``
    (uint64) in ``mode`` (``MODES``)."""
    n = out.shape[0]
    # the seed goes through the mixer once: neighbouring seeds start far apart
    state = _mix(np.uint64(seed))
    if mode == 1:
        s = np.uint64(n)
        for i in range(n):
            j, state = _below(state, s)
            out[i] = np.int64(j)
        return
    for i in range(n):
        out[i] = i
    if mode != 0:
        return
    for i in range(n - 1, 0, -1):
        j, state = _below(state, np.uint64(i + 1))
        jj = np.int64(j)
        tmp = out[i]
        out[i] = out[jj]
        out[jj] = tmp
