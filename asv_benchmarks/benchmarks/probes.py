"""Streaming-bandwidth probes: the hardware limit an update kernel is judged by.

An optimizer step is elementwise and memory bound: per element it reads the
parameter, the gradient and every state element once and writes the parameter
and every state element once, doing a handful of flops in between.  The
probes here replay exactly that traffic with (almost) no arithmetic, so their
bytes/s is what *this* machine delivers for *this* access pattern at *this*
size, measured in the same process as the kernel it is compared with (same
thread pool, same NUMA placement, same noise from neighbours).

``stream_rw(p, g, states, parallel)``: one pass of

    p[i] += a * s0[i];   s_k[i] = s_k[i] + b * g[i]   for every state s_k

i.e. ``2 + n_states`` arrays read and ``1 + n_states`` written in place.  With
two states it is Adam's pattern (p, g, m, v read; p, m, v written: 28 bytes
per float32 element), with one it is SGD-momentum's and RMSprop's.  Arrays are
updated in place, as the optimizers do, so there is no write-allocate traffic
beyond what the kernel itself causes.  The ``a``/``b`` coefficients are tiny
and vary in sign so repeated calls stay finite.

What it is not: a peak-bandwidth benchmark (STREAM triad with non-temporal
stores can score higher), nor a cache benchmark; at 1e3 elements everything
sits in L1 and the "bandwidth" is mostly call overhead.  Read the fraction
``kernel GB/s / probe GB/s`` only at sizes well beyond the last-level cache
(1e7 float32 elements = 40 MB per array).

Functions return bytes per second (median over repeats, see ``measure``).
"""

import time

import numpy as np
from numba import njit, prange

__all__ = ["bytes_per_element", "stream_rw", "probe_bytes_per_s", "measure",
           "median_seconds", "warm_up"]


def bytes_per_element(n_states, itemsize=4):
    """Bytes moved per element by a step with ``n_states`` per-element states:
    params, grad and states read; params and states written."""
    return itemsize * ((2 + n_states) + (1 + n_states))


# One kernel per state count: tuples of arrays of varying length would force
# a different (and slower to unbox) signature, and the probe must add nothing
# to the pattern it measures.

def _make(n_states, parallel):
    rng = prange if parallel else range

    if n_states == 0:
        def kern(p, g, s0, s1, s2, a, b):
            for i in rng(p.shape[0]):
                p[i] += a * g[i]
    elif n_states == 1:
        def kern(p, g, s0, s1, s2, a, b):
            for i in rng(p.shape[0]):
                gi = g[i]
                m = s0[i] + b * gi
                s0[i] = m
                p[i] += a * m
    elif n_states == 2:
        def kern(p, g, s0, s1, s2, a, b):
            for i in rng(p.shape[0]):
                gi = g[i]
                m = s0[i] + b * gi
                v = s1[i] + b * gi
                s0[i] = m
                s1[i] = v
                p[i] += a * m
    else:
        def kern(p, g, s0, s1, s2, a, b):
            for i in rng(p.shape[0]):
                gi = g[i]
                m = s0[i] + b * gi
                v = s1[i] + b * gi
                w = s2[i] + b * gi
                s0[i] = m
                s1[i] = v
                s2[i] = w
                p[i] += a * m
    return njit(cache=False, nogil=True, parallel=parallel)(kern)


# cache=False: the kernels are defined in a closure (see kernels/drivers.py for
# why closures do not cache); compiling all of them takes ~1 s, once per process.
_KERNELS = {}


def _kernel(n_states, parallel):
    key = (min(int(n_states), 3), bool(parallel))
    k = _KERNELS.get(key)
    if k is None:
        k = _KERNELS[key] = _make(*key)
    return k


def stream_rw(p, g, states, parallel=True, sign=1.0):
    """One probe pass over ``p`` (in place) with ``g`` and up to 3 ``states``."""
    states = list(states)
    if len(states) > 3:
        raise ValueError("the probe models at most 3 per-element states")
    pad = states + [p] * (3 - len(states))  # unused slots: never touched
    dt = p.dtype.type
    _kernel(len(states), parallel)(p, g, pad[0], pad[1], pad[2],
                                   dt(sign * 1e-12), dt(-sign * 1e-12))


def median_seconds(fn, min_time=0.2, min_reps=5, max_reps=1000, batch=None):
    """Median wall time of ``fn()`` in seconds.

    Calls are timed in batches (so that a sample lasts >= ~50 us and timer
    resolution does not matter) and repeated until ``min_time`` has elapsed
    and at least ``min_reps`` samples exist.
    """
    fn()
    if batch is None:
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-9)
        batch = max(1, int(5e-5 / one))
    samples = []
    start = time.perf_counter()
    while len(samples) < max_reps:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch)
        if len(samples) >= min_reps and time.perf_counter() - start >= min_time:
            break
    return float(np.median(samples))


def warm_up():
    """Compile every probe kernel (first calls compile, ~1 s in all)."""
    a = np.zeros(8, np.float32)
    for n in range(4):
        for par in (False, True):
            stream_rw(a.copy(), a.copy(), [a.copy() for _ in range(n)], parallel=par)


def probe_bytes_per_s(n, n_states=2, dtype=np.float32, parallel=True, min_time=0.2):
    """Bytes/s of the in-place streaming pattern with ``n_states`` states at
    ``n`` elements (fresh arrays, median of repeats)."""
    dtype = np.dtype(dtype)
    p = np.zeros(n, dtype)
    g = np.ones(n, dtype)
    states = [np.zeros(n, dtype) for _ in range(n_states)]
    flip = [1.0]

    def once():
        flip[0] = -flip[0]
        stream_rw(p, g, states, parallel=parallel, sign=flip[0])

    sec = median_seconds(once, min_time=min_time)
    return n * bytes_per_element(n_states, dtype.itemsize) / sec


def measure(step, probe, min_time=0.4, min_reps=7, max_reps=2000):
    """Median seconds of ``step()`` and of ``probe()``, sampled alternately.

    Interleaving the two makes them see the same machine: on a shared, noisy
    host a neighbour's burst then slows both rather than only one of them.
    """
    step()
    probe()
    batch = {}
    for name, fn in (("step", step), ("probe", probe)):
        t0 = time.perf_counter()
        fn()
        batch[name] = max(1, int(5e-5 / max(time.perf_counter() - t0, 1e-9)))
    out = {"step": [], "probe": []}
    start = time.perf_counter()
    while len(out["step"]) < max_reps:
        for name, fn in (("step", step), ("probe", probe)):
            b = batch[name]
            t0 = time.perf_counter()
            for _ in range(b):
                fn()
            out[name].append((time.perf_counter() - t0) / b)
        if len(out["step"]) >= min_reps and time.perf_counter() - start >= min_time:
            break
    return float(np.median(out["step"])), float(np.median(out["probe"]))
