# cython: boundscheck=False, wraparound=False, cdivision=True
"""Ahead-of-time twin of kernels/order.py: the same SplitMix64 stream, the
same bounded draws, the same Fisher-Yates; element for element the same
orders (tests/test_epoch_order.py).  That module's docstring explains the
generator and the modes; keep the two in step."""

from libc.stdint cimport int64_t, uint64_t

cdef uint64_t _GOLDEN = 0x9E3779B97F4A7C15ULL
cdef uint64_t _MIX1 = 0xBF58476D1CE4E5B9ULL
cdef uint64_t _MIX2 = 0x94D049BB133111EBULL
cdef uint64_t _LOW32 = 0xFFFFFFFFULL
cdef uint64_t _TWO32 = 0x100000000ULL


cdef inline uint64_t _mix(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * _MIX1
    z = (z ^ (z >> 27)) * _MIX2
    return z ^ (z >> 31)


cdef inline uint64_t _below(uint64_t* state, uint64_t s) noexcept nogil:
    cdef uint64_t m, low, t, r
    if s <= _LOW32:
        state[0] += _GOLDEN
        m = (_mix(state[0]) >> 32) * s
        low = m & _LOW32
        if low < s:
            t = (_TWO32 - s) % s
            while low < t:
                state[0] += _GOLDEN
                m = (_mix(state[0]) >> 32) * s
                low = m & _LOW32
        return m >> 32
    t = (<uint64_t>0 - s) % s
    state[0] += _GOLDEN
    r = _mix(state[0])
    while r < t:
        state[0] += _GOLDEN
        r = _mix(state[0])
    return r % s


def draw_order(seed, int64_t mode, int64_t[::1] out):
    """Fill ``out`` with the epoch's order for ``seed`` in ``mode``
    (kernels/order.py: 0 permutation, 1 with replacement, 2 in order)."""
    cdef uint64_t state = _mix(<uint64_t>int(seed))
    cdef Py_ssize_t n = out.shape[0], i
    cdef int64_t j, tmp
    with nogil:
        if mode == 1:
            for i in range(n):
                out[i] = <int64_t>_below(&state, <uint64_t>n)
        else:
            for i in range(n):
                out[i] = i
            if mode == 0:
                for i in range(n - 1, 0, -1):
                    j = <int64_t>_below(&state, <uint64_t>(i + 1))
                    tmp = out[i]
                    out[i] = out[j]
                    out[j] = tmp
