"""Roofline probes: the hardware limits optkern's kernels are judged by.

Used by ``optkern bench`` (src/optkern/bench.py) and by the asv suite
(asv_benchmarks/benchmarks/probes.py re-exports this module), so they live in
the installed package.

Streaming bandwidth (optimizer updates)
---------------------------------------
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

GEMM (gradients)
----------------
A minibatch softmax ``loss_and_grad`` on dense X (batch x d) with W (d x k)
does two matrix products, ``Z = X @ W`` and ``dW = X.T @ dZ``: 4*batch*d*k
flops, plus O(batch*k) elementwise work.  ``gemm_pair_seconds`` times exactly
those two NumPy (BLAS) products on arrays of the same shapes and dtype, so
``gemm flop/s`` is what this machine's BLAS delivers for this shape, measured
in the same process; a gradient kernel's fraction of it is its distance from
the BLAS roofline.
"""

import time

import numpy as np
from numba import njit, prange

__all__ = ["bytes_per_element", "stream_rw", "probe_bytes_per_s", "measure",
           "median_seconds", "warm_up", "gemm_flops", "gemm_pair", "gemm_pair_seconds",
           "gemm_flops_per_s"]


def bytes_per_element(n_states, itemsize=4):
    """Bytes moved per element by a step with ``n_states`` per-element states:
    params, grad and states read; params and states written."""
    return itemsize * ((2 + n_states) + (1 + n_states))


# One kernel per state count and threading: tuples of arrays would add
# unboxing cost and a different signature, and the probe must add nothing to
# the pattern it measures.  Module-level functions so Numba caches them on disk
# (asv runs every benchmark in a fresh process).


@njit(cache=True, nogil=True)
def _rw0_serial(p, g, s0, s1, s2, a, b):
    for i in range(p.shape[0]):
        p[i] += a * g[i]


@njit(cache=True, nogil=True, parallel=True)
def _rw0_parallel(p, g, s0, s1, s2, a, b):
    for i in prange(p.shape[0]):
        p[i] += a * g[i]


@njit(cache=True, nogil=True)
def _rw1_serial(p, g, s0, s1, s2, a, b):
    for i in range(p.shape[0]):
        gi = g[i]
        m = s0[i] + b * gi
        s0[i] = m
        p[i] += a * m


@njit(cache=True, nogil=True, parallel=True)
def _rw1_parallel(p, g, s0, s1, s2, a, b):
    for i in prange(p.shape[0]):
        gi = g[i]
        m = s0[i] + b * gi
        s0[i] = m
        p[i] += a * m


@njit(cache=True, nogil=True)
def _rw2_serial(p, g, s0, s1, s2, a, b):
    for i in range(p.shape[0]):
        gi = g[i]
        m = s0[i] + b * gi
        v = s1[i] + b * gi
        s0[i] = m
        s1[i] = v
        p[i] += a * m


@njit(cache=True, nogil=True, parallel=True)
def _rw2_parallel(p, g, s0, s1, s2, a, b):
    for i in prange(p.shape[0]):
        gi = g[i]
        m = s0[i] + b * gi
        v = s1[i] + b * gi
        s0[i] = m
        s1[i] = v
        p[i] += a * m


@njit(cache=True, nogil=True)
def _rw3_serial(p, g, s0, s1, s2, a, b):
    for i in range(p.shape[0]):
        gi = g[i]
        m = s0[i] + b * gi
        v = s1[i] + b * gi
        w = s2[i] + b * gi
        s0[i] = m
        s1[i] = v
        s2[i] = w
        p[i] += a * m


@njit(cache=True, nogil=True, parallel=True)
def _rw3_parallel(p, g, s0, s1, s2, a, b):
    for i in prange(p.shape[0]):
        gi = g[i]
        m = s0[i] + b * gi
        v = s1[i] + b * gi
        w = s2[i] + b * gi
        s0[i] = m
        s1[i] = v
        s2[i] = w
        p[i] += a * m


_KERNELS = {(k, par): globals()[f"_rw{k}_{'parallel' if par else 'serial'}"]
            for k in range(4) for par in (False, True)}


def _kernel(n_states, parallel):
    return _KERNELS[(min(int(n_states), 3), bool(parallel))]


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
    """Compile (or load from Numba's cache) every probe kernel."""
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


def measure(step, probe, min_time=0.4, min_reps=7, max_reps=2000, full=False):
    """Median seconds of ``step()`` and of ``probe()``, sampled alternately.

    Interleaving the two makes them see the same machine: on a shared, noisy
    host a neighbour's burst then slows both rather than only one of them.
    With ``full=True`` returns a dict with the medians, the minima ("best of")
    and the median of the paired ratios ``probe_time / step_time`` (each step
    batch and the probe batch right after it form a pair), the statistic
    least sensitive to load that comes and goes.
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
    step_s = np.asarray(out["step"])
    probe_s = np.asarray(out["probe"])
    if not full:
        return float(np.median(step_s)), float(np.median(probe_s))
    return {"step_s": float(np.median(step_s)), "probe_s": float(np.median(probe_s)),
            "step_best_s": float(step_s.min()), "probe_best_s": float(probe_s.min()),
            "paired_ratio": float(np.median(probe_s / step_s)),
            "samples": len(step_s)}


def gemm_flops(batch, n_features, n_outputs):
    """Flops of the two products of a dense minibatch gradient:
    ``X @ W`` and ``X.T @ dZ``, 2*batch*d*k each."""
    return 4 * int(batch) * int(n_features) * int(n_outputs)


def gemm_pair(batch, n_features, n_outputs, dtype=np.float32, seed=0):
    """A callable doing ``X @ W`` and ``X.T @ G`` (into preallocated outputs)
    on fresh arrays of the gradient's shapes."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    X = rng.standard_normal((batch, n_features)).astype(dtype)
    W = rng.standard_normal((n_features, n_outputs)).astype(dtype)
    G = rng.standard_normal((batch, n_outputs)).astype(dtype)
    Z = np.empty((batch, n_outputs), dtype)
    dW = np.empty((n_features, n_outputs), dtype)

    def once():
        np.matmul(X, W, out=Z)
        np.matmul(X.T, G, out=dW)
    return once


def gemm_pair_seconds(batch, n_features, n_outputs, dtype=np.float32, min_time=0.2,
                      min_reps=5):
    """Median seconds of the two gradient products (``gemm_pair``)."""
    return median_seconds(gemm_pair(batch, n_features, n_outputs, dtype),
                          min_time=min_time, min_reps=min_reps)


def gemm_flops_per_s(batch, n_features, n_outputs, dtype=np.float32, min_time=0.2):
    """Flop/s NumPy's BLAS reaches on the gradient's two products."""
    sec = gemm_pair_seconds(batch, n_features, n_outputs, dtype, min_time=min_time)
    return gemm_flops(batch, n_features, n_outputs) / sec
