"""The roofline of a dense training epoch, and where an epoch's time goes.

Used by asv_benchmarks/epoch_roofline.py (the report), the asv metric
``track_fraction_of_roofline`` (asv_benchmarks/benchmarks/bench_epoch_roofline.py)
and ``optkern bench --rows epoch``; it lives in the installed package so all
three measure with the same code.

The limit
---------
A dense softmax epoch over X (n x d) with k outputs reads X once (``n*d*itemsize``
bytes: the rows come in a shuffled order, but each row is a contiguous run of
d elements) and does ``2*n*d*k`` multiply-adds (the scores ``X_B W`` and the
gradient ``X_B^T dZ`` of every minibatch B).  Everything else (the softmax,
the optimizer update of the d x k weights, the schedule) is O(n k + (n/batch)
d k) and vanishes from the limit when the batch is not tiny.  So

    roofline time = max(bytes of X / streaming bandwidth,
                        multiply-adds / multiply-add rate)

with both rates *measured on this machine in the same run* by two compiled
probes:

``read_bytes_per_s``   a read-only reduction over an array of 128 MB
                       (4x the last-level cache of the machines we run on):
                       what streaming reads deliver; X is only read.
``fma_per_s``          independent multiply-add chains on registers,
                       128 lanes (8 AVX-512 float32 vectors, 16 of float64):
                       the arithmetic peak Numba's code reaches here.

Both probes run on one core and on every core (``parallel=``); ``Probes``
takes the larger of the two for each rate (its docstring says why).

The stage breakdown
-------------------
``stage_seconds`` times the pieces of the dense batch pass of
``kernels/epoch_drivers.py`` over a whole epoch each, in compiled loops (one
compiled call per stage, no Python per minibatch):

gather      the shuffled rows of each LANE_ROWS block copied into the block
            buffer (with the epoch's prefetch of the next block)
scores      ``_scores_tiles``: the block's X W + b in register tiles
accumulate  ``_accumulate_tiles``: the block's rank-m update of dW^T
rule        the rest of the batch pass: the loss rule (softmax in lane form),
            its labels, sample weights, db and loss bookkeeping
            (batch pass - gather - scores - accumulate)
tail        per minibatch outside the batch pass: W^T refreshed, dW^T turned
            back into W's layout and scaled, the penalty, the schedule,
            the optimizer's update of W and b (epoch - batch passes)
"""

import time

import numpy as np
from numba import njit, prange

READ_PROBE_BYTES = 128 * 2 ** 20
FMA_LANES = 128      # independent chains: latency x issue width of the FMA units
FMA_REPS = 2_000_000   # about 10 ms a call: thread start-up vanishes


@njit(cache=True, nogil=True, fastmath=True)
def _read_serial(a):
    s = a.dtype.type(0.0)
    for i in range(a.shape[0]):
        s += a[i]
    return s


@njit(cache=True, nogil=True, parallel=True)
def _read_parallel(a, n_parts):
    # one contiguous part per thread, each summed by the serial probe (a
    # prange reduction would mix dtypes and not vectorise)
    out = np.zeros(n_parts)
    n = a.shape[0]
    for t in prange(n_parts):
        out[t] = _read_serial(a[(n * t) // n_parts:(n * (t + 1)) // n_parts])
    return out.sum()


@njit(cache=True, nogil=True, fastmath=True)
def _fma_chains(acc, a, c, reps):
    # the trip count is a literal (FMA_LANES): LLVM unrolls the lanes into
    # vector registers and keeps them there across the reps
    for r in range(reps):
        for i in range(128):
            acc[i] = acc[i] * a + c


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def _fma_parallel(accs, a, c, reps):
    for t in prange(accs.shape[0]):
        _fma_chains(accs[t], a, c, reps)


def _best_seconds(fn, repeats):
    fn()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def read_bytes_per_s(parallel=True, repeats=7, dtype=np.float32, nbytes=READ_PROBE_BYTES):
    """Streaming-read bandwidth (best of ``repeats`` passes over ``nbytes``)."""
    import numba

    a = np.ones(nbytes // np.dtype(dtype).itemsize, dtype)
    if parallel:
        nt = numba.get_num_threads()
        return a.nbytes / _best_seconds(lambda: _read_parallel(a, nt), repeats)
    return a.nbytes / _best_seconds(lambda: _read_serial(a), repeats)


def fma_per_s(dtype=np.float32, parallel=True, repeats=5, n_threads=None, reps=FMA_REPS):
    """Multiply-adds per second (best of ``repeats``) of independent chains."""
    import numba

    dt = np.dtype(dtype)
    a, c = dt.type(0.999999), dt.type(1e-6)
    if parallel:
        nt = n_threads or numba.get_num_threads()
        accs = np.ones((nt, FMA_LANES), dt)
        sec = _best_seconds(lambda: _fma_parallel(accs, a, c, reps), repeats)
        return nt * FMA_LANES * reps / sec
    acc = np.ones(FMA_LANES, dt)
    sec = _best_seconds(lambda: _fma_chains(acc, a, c, reps), repeats)
    return FMA_LANES * reps / sec


def epoch_bytes(n, d, dtype):
    return int(n) * int(d) * np.dtype(dtype).itemsize


def epoch_fmas(n, d, k):
    return 2 * int(n) * int(d) * int(k)


def roofline_seconds(n, d, k, dtype, bytes_per_s, fmas_per_s):
    """(seconds, bound): the epoch's limit and which resource sets it."""
    t_mem = epoch_bytes(n, d, dtype) / bytes_per_s
    t_fma = epoch_fmas(n, d, k) / fmas_per_s
    return (t_mem, "memory") if t_mem >= t_fma else (t_fma, "arithmetic")


class Probes:
    """Both probe rates, measured once (per dtype on demand) in this process.

    Each rate is the larger of the one-core and the all-core probe: the limit
    is the best the machine delivered.  (On a shared machine the all-core
    probe can lose to the one-core one: a busy neighbour holds the second
    core, and a parallel region waits for its slowest thread.)"""

    def __init__(self, repeats=5, read_bytes=READ_PROBE_BYTES, fma_reps=FMA_REPS):
        self.repeats = repeats
        self.fma_reps = fma_reps
        self.bytes_per_s = max(read_bytes_per_s(False, repeats, nbytes=read_bytes),
                               read_bytes_per_s(True, repeats, nbytes=read_bytes))
        self._fma = {}

    def fmas_per_s(self, dtype):
        key = np.dtype(dtype).char
        if key not in self._fma:
            self._fma[key] = max(fma_per_s(dtype, False, self.repeats, reps=self.fma_reps),
                                 fma_per_s(dtype, True, self.repeats, reps=self.fma_reps))
        return self._fma[key]

    def roofline(self, n, d, k, dtype):
        return roofline_seconds(n, d, k, dtype, self.bytes_per_s, self.fmas_per_s(dtype))


# ---------------------------------------------------------------------------
# the problem and the epoch as the estimator runs it
# ---------------------------------------------------------------------------
def problem(n, d, k, dtype=np.float32, seed=0):
    """Standard-normal X and labels of a random linear teacher (all k present)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float64).astype(dtype)
    teacher = rng.standard_normal((d, k))
    y = (X @ teacher).argmax(axis=1)
    y[:k] = np.arange(k)
    return X, y


def epoch_seconds(X, y, batch, backend="numba", epochs=5, optimizer="adam"):
    """Median wall time of one compiled epoch of ``LinearClassifier`` (softmax,
    ``optimizer``, batch ``batch``) over epochs 2..``epochs`` of one fit (the
    first one loads the kernels): the estimator's own per-epoch ``time``,
    which covers ``_run_epoch`` (the compiled call(s)) and nothing else."""
    from optkern import LinearClassifier

    LinearClassifier(optimizer=optimizer, batch_size=batch, max_epochs=1, tol=None,
                     random_state=0, backend=backend).fit(X[:2 * batch], y[:2 * batch])
    est = LinearClassifier(optimizer=optimizer, batch_size=batch, max_epochs=epochs,
                           tol=None, random_state=0, backend=backend).fit(X, y)
    times = [row["time"] for row in est.history_[1:]] or [est.history_[0]["time"]]
    return float(np.median(times)), est


# ---------------------------------------------------------------------------
# stage breakdown (dense layout, serial epoch)
# ---------------------------------------------------------------------------
def _compiled_stages():
    """The stage loops, compiled on first use (they import the kernels)."""
    global _STAGES
    if _STAGES is not None:
        return _STAGES
    from optkern.kernels._helpers import prefetch
    from optkern.kernels.loss_drivers import LANE_ROWS, _scores_tiles, _accumulate_tiles

    @njit(nogil=True)
    def gather(X, order, bs, Xb):
        n = order.shape[0]
        d = X.shape[1]
        Xflat = X.reshape(X.size)
        pf_step = max(64 // X.itemsize, 1)
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            r0 = start
            while r0 < stop:
                m = min(LANE_ROWS, stop - r0)
                for q in range(m):
                    if r0 + m + q < n:
                        nxt = order[r0 + m + q] * d
                        for p in range(0, d, pf_step):
                            prefetch(Xflat, nxt + p)
                    Xb[q, :] = X[order[r0 + q]]
                r0 += m

    # scores and accumulate run on the block buffer the gather fills, once
    # per block of the epoch: the same calls, on data in L1, as in the epoch
    @njit(nogil=True)
    def scores(n, bs, Xb, WT, b, Zb):
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            r0 = start
            while r0 < stop:
                m = min(LANE_ROWS, stop - r0)
                _scores_tiles(Xb, 0, m, WT, b, Zb)
                r0 += m

    @njit(nogil=True)
    def accumulate(n, bs, Xb, Db, dW):
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            r0 = start
            while r0 < stop:
                m = min(LANE_ROWS, stop - r0)
                _accumulate_tiles(Xb, 0, m, Db, dW)
                r0 += m

    # the generated batch pass itself, minibatch after minibatch (a function
    # argument: not cacheable, compiled once per run)
    @njit(nogil=True)
    def batch_passes(batch_fn, X, T, sw, order, bs, WT, b, dWp, dbp, Z, D, lossp, wsump,
                     eps, Xb, Zb, Db, ZT, DT, S, SI, LS, YB):
        n = order.shape[0]
        for start in range(0, n, bs):
            batch_fn(X, T, sw, order, start, min(start + bs, n), 1, WT, b, dWp, dbp, Z, D,
                     lossp, wsump, eps, Xb, Zb, Db, ZT, DT, S, SI, LS, YB)

    _STAGES = dict(gather=gather, scores=scores, accumulate=accumulate,
                   batch_passes=batch_passes, rows=LANE_ROWS)
    return _STAGES


_STAGES = None


def stage_seconds(X, y, batch, optimizer="adam", epochs=5, repeats=5):
    """{stage: seconds per epoch} of the serial dense softmax epoch
    (the module docstring defines the stages), plus "epoch" (the whole
    compiled epoch) and "order" (drawing the epoch's order)."""
    from optkern.kernels import epoch_drivers, rule_lanes, loss_rules
    from optkern.kernels.loss_drivers import lane_buffers

    st = _compiled_stages()
    n, d = X.shape
    k = int(y.max()) + 1
    dt = X.dtype
    # best of epochs, as every stage below is a best of repeats: on a shared
    # machine a median epoch against best-of stages would charge the load to
    # the tail
    _, est = epoch_seconds(X, y, batch, "numba", epochs, optimizer)
    epoch_s = min(r["time"] for r in est.history_[1:] or est.history_)
    mod = epoch_drivers.module_for("softmax", optimizer, "dense")  # the rule of that name
    rng = np.random.default_rng(1)
    order = rng.permutation(n).astype(np.int64)
    R = st["rows"]
    Xb = np.empty((R, d), dt)
    W = (0.01 * rng.standard_normal((d, k))).astype(dt)
    WT = np.ascontiguousarray(W.T)
    b = np.zeros(k, dt)
    Zb = np.empty((R, k), dt)
    Db = (0.01 * rng.standard_normal((R, k))).astype(dt)
    dW = np.zeros((k, d), dt)
    out = {"epoch": epoch_s}
    out["gather"] = _best_seconds(lambda: st["gather"](X, order, batch, Xb), repeats)
    out["scores"] = _best_seconds(lambda: st["scores"](n, batch, Xb, WT, b, Zb), repeats)
    out["accumulate"] = _best_seconds(lambda: st["accumulate"](n, batch, Xb, Db, dW),
                                      repeats)
    rule = loss_rules.LOSS_RULES["softmax"].rule
    try:
        rule_lanes.lane_source(rule, "_probe")
        n_real, n_int = rule_lanes.lane_slots(rule)
    except rule_lanes.NotLaneable:
        n_real = n_int = 0
    bufs = lane_buffers(1, k, n_real, n_int, dt)
    T = np.ascontiguousarray(y, dtype=np.int64)
    sw = np.ones(n)
    scratch = (np.zeros((1, d, k), dt), np.zeros((1, k), dt), np.zeros((1, k), dt),
               np.zeros((1, k), dt), np.zeros(1), np.zeros(1))
    Xb1 = np.empty((1, R, d), dt)
    eps = dt.type(0.0)

    def passes():
        st["batch_passes"](mod._batch_serial, X, T, sw, order, batch, WT, b, *scratch,
                           eps, Xb1, *bufs)
    batch_s = _best_seconds(passes, repeats)
    out["rule"] = max(batch_s - out["gather"] - out["scores"] - out["accumulate"], 0.0)
    out["tail"] = max(epoch_s - batch_s, 0.0)
    out["batch pass"] = batch_s
    out["order (NumPy permutation)"] = _best_seconds(
        lambda: np.random.default_rng(0).permutation(n), repeats)
    try:
        from optkern.kernels import order as _order
        buf = np.empty(n, np.int64)
        out["order (compiled)"] = _best_seconds(
            lambda: _order.draw_order(np.uint64(12345), 0, buf), repeats)
    except ImportError:
        pass
    return out
