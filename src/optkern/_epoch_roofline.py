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
``stage_seconds`` times the pieces of the serial dense epoch of
``kernels/epoch_drivers.py`` (the fused lane pass, ``_BATCH_DENSE_LANES``,
and the epoch loop around it) over a whole epoch each, in compiled loops
(one compiled call per stage, no Python per minibatch), with the arguments
of a real fit: scores (with the prefetch and the labels), dW/db, the rule,
the optimizer update, the per-minibatch bookkeeping; its docstring defines
each.
"""

import time

import numpy as np
from numba import njit, prange

from optkern._epoch_args import DenseEpochArgs
from optkern.kernels._helpers import prefetch

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


# the shuffled-row floor: an epoch must visit X's rows in its fixed shuffled
# order (the same minibatches in the same order on every backend), so no
# epoch is faster than reading the rows once in such an order
ROW_PREFETCH_DISTANCES = (0, 4, 8, 16, 32)


@njit(cache=True, nogil=True, fastmath=True)
def _read_rows(X, order, dist):
    # every row of X once, in ``order``, summed into a d-vector (the reads a
    # score pass makes, without its arithmetic); the row ``dist`` rows ahead
    # prefetched line by line (0: none), as the epochs prefetch the next block
    from_ = X.reshape(X.size)
    n = order.shape[0]
    d = X.shape[1]
    step = max(64 // X.itemsize, 1)
    acc = np.zeros(d, X.dtype)
    for r in range(n):
        if dist > 0 and r + dist < n:
            ahead = order[r + dist] * d
            for p in range(0, d, step):
                prefetch(from_, ahead + p)
        i = order[r]
        for f in range(d):
            acc[f] += X[i, f]
    return acc.sum()


@njit(cache=True, nogil=True, parallel=True)
def _read_rows_parallel(X, order, dist, n_parts):
    # one contiguous part of the order per thread, as the parallel epoch
    # splits a minibatch
    out = np.zeros(n_parts)
    n = order.shape[0]
    for t in prange(n_parts):
        out[t] = _read_rows(X, order[(n * t) // n_parts:(n * (t + 1)) // n_parts], dist)
    return out.sum()


def shuffled_read_seconds(X, order=None, parallel=True, repeats=5,
                          distances=ROW_PREFETCH_DISTANCES):
    """(seconds, distance): the best time to read every row of ``X`` once in a
    random order (``order``, default a permutation of the rows), over the
    prefetch ``distances`` and, with ``parallel``, one core and all cores.

    X of the grid is 30-120 MB and its rows are 128 B-6 KB: in a shuffled
    order each row is a few cache lines from a random place, which costs more
    than streaming the same bytes (``read_bytes_per_s``).  This is a floor
    for any epoch that keeps the issue's fixed row order (it reads at least
    X, in that order); ``--grid`` reports it beside the roofline."""
    import numba

    X = np.ascontiguousarray(X)
    if order is None:
        order = np.random.default_rng(12345).permutation(X.shape[0]).astype(np.int64)
    best = (np.inf, 0)
    for dist in distances:
        best = min(best, (_best_seconds(lambda: _read_rows(X, order, dist), repeats), dist))
        if parallel and numba.get_num_threads() > 1:
            nt = numba.get_num_threads()
            best = min(best, (_best_seconds(lambda: _read_rows_parallel(X, order, dist, nt),
                                            repeats), dist))
    return best


def epoch_bytes(n, d, dtype):
    return int(n) * int(d) * np.dtype(dtype).itemsize


def epoch_fmas(n, d, k):
    return 2 * int(n) * int(d) * int(k)


def roofline_seconds(n, d, k, dtype, bytes_per_s, fmas_per_s):
    """(seconds, bound): the epoch's limit and which resource sets it."""
    t_mem = epoch_bytes(n, d, dtype) / bytes_per_s
    t_fma = epoch_fmas(n, d, k) / fmas_per_s
    return (t_mem, "memory") if t_mem >= t_fma else (t_fma, "arithmetic")


def blas_pair_seconds(X, k, repeats=5, seed=0):
    """The best time of the epoch's multiply-adds in the form the machine's
    BLAS runs fastest: the scores ``X @ W`` and the gradient ``X.T @ P``
    over the whole of ``X`` in order -- two GEMMs through NumPy with all of
    its BLAS threads, no shuffle, no softmax, no optimizer, and none of the
    dependency of one minibatch on the last.  Strictly less work than an
    epoch, so a reference for what the roofline's ``2 n d k`` multiply-adds
    cost in practice at this shape (skinny GEMMs with few outputs use a small
    part of the FMA units: the probe's peak assumes every lane busy).
    OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, where set, slow it: the report's
    command unsets them."""
    X = np.ascontiguousarray(X)
    n, d = X.shape
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, k)).astype(X.dtype)
    P = rng.standard_normal((n, k)).astype(X.dtype)
    Z = np.empty((n, k), X.dtype)
    G = np.empty((d, k), X.dtype)

    def pair():
        np.matmul(X, W, out=Z)
        np.matmul(X.T, P, out=G)

    return _best_seconds(pair, repeats)


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
# stage breakdown (dense layout, serial epoch, the fused lane pass)
# ---------------------------------------------------------------------------
def _compiled_stages():
    """The stage loops, compiled on first use (they import the kernels)."""
    global _STAGES
    if _STAGES is not None:
        return _STAGES
    from optkern.kernels._helpers import prefetch
    from optkern.kernels.epoch_drivers import (gathered_accumulate_lanes,
                                               gathered_scores_lanes)

    # the first part of every block of the fused pass (_BATCH_DENSE_LANES):
    # the next block's rows prefetched, the labels, the scores in lane form
    # read from X's rows where they lie
    # the block's targets in the rule's lane form (as the generated pass):
    # class labels of a row rule, the (k, lanes) targets of a scalar rule
    @njit(nogil=True)
    def row_targets(T, order, r0, m, YB):
        for q in range(m):
            YB[q] = T[order[r0 + q]]

    @njit(nogil=True)
    def scalar_targets(T, order, r0, m, YB):
        for q in range(m):
            i = order[r0 + q]
            for j in range(T.shape[1]):
                YB[j, q] = T[i, j]

    @njit(nogil=True)
    def scores(targets, X, T, order, bs, WT, b, ZT, YB, DT, dW, db, with_accumulate):
        n = order.shape[0]
        d = X.shape[1]
        k = WT.shape[0]
        R = ZT.shape[1]
        Xflat = X.reshape(X.size)
        pf_step = max(64 // X.itemsize, 1)
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            r0 = start
            while r0 < stop:
                m = min(R, stop - r0)
                for q in range(min(m, n - r0 - m)):
                    nxt = order[r0 + m + q] * d
                    for p in range(0, d, pf_step):
                        prefetch(Xflat, nxt + p)
                targets(T, order, r0, m, YB)
                gathered_scores_lanes(X, order, r0, m, WT, b, ZT)
                if with_accumulate:
                    # the block's db sums across the lanes and its rank-m
                    # update of dW^T (the rows again, in cache from the scores)
                    for j in range(k):
                        e = DT[j]
                        s = db[j]
                        for q in range(m):
                            s += e[q]
                        db[j] = s
                    gathered_accumulate_lanes(X, order, r0, m, DT, dW)
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

    # the rule alone, block after block, on one block of scores (a check on
    # the difference of the passes above)
    @njit(nogil=True)
    def rule(rule_fn, targets, T, order, bs, ZT, YB, eps, DT, LS, S, SI):
        n = order.shape[0]
        R = ZT.shape[1]
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            r0 = start
            while r0 < stop:
                m = min(R, stop - r0)
                targets(T, order, r0, m, YB)
                rule_fn(ZT, YB, eps, DT, LS, m, S, SI)
                r0 += m

    _STAGES = dict(scores=scores, batch_passes=batch_passes, rule=rule,
                   row_targets=row_targets, scalar_targets=scalar_targets)
    return _STAGES


_STAGES = None

# per minibatch outside the batch pass (the epoch template's own statements,
# _EPOCH in kernels/epoch_drivers.py), in two parts; generated per update
# rule (its number of states and hyperparameters)
_TAIL = """
def bookkeeping(n, bs, W, WT, G, dT, dbp, alpha, l1_ratio, sched, base_lr, plateau, step0):
    d, k = W.shape
    acc = 0.0
    step = step0
    for start in range(0, n, bs):
        for f in range(d):
            for j in range(k):
                WT[j, f] = W[f, j]
        inv = 1.0 / bs
        for f in range(d):
            for j in range(k):
                G[f, j] = dT[j, f] * inv
        pen = penalty_add(W, G, alpha, l1_ratio)
        for j in range(k):
            dbp[0, j] = dbp[0, j] * inv
        acc += base_lr * _schedule(sched[0], float(step), sched[1], sched[2], sched[3],
                                   sched[4], sched[5]) * plateau + pen
        step += 1
    return acc


def optimizer(n, bs, Wf, dWf, {sw}, avgW, b, db, {sb}, avgB, userW, userB, scalarsW,
              scalarsB, step0, seed, offW, offB, lr):
    step = step0
    for start in range(0, n, bs):
        step += 1
        key = noise_key_jit(seed, step)
        hyperW, scalarsW = _prepare(step, scalarsW, lr, {uw})
        _loop_serial(Wf, dWf, {sw}, avgW, hyperW, 0.0, key, offW)
        if b is not None:
            hyperB, scalarsB = _prepare(step, scalarsB, lr, {ub})
            _loop_serial(b, db, {sb}, avgB, hyperB, 0.0, key, offB)
    return scalarsW
"""


def _tail_loops(mod, optimizer):
    from optkern.kernels import rules
    from optkern.kernels._helpers import noise_key_jit
    from optkern.kernels.loss_drivers import penalty_add

    spec = rules.RULES[optimizer]
    n_states = len(rules.state_names(spec))
    n_user = len(spec.user_hyper)
    src = _TAIL.format(sw=", ".join(f"sW{j}" for j in range(n_states)),
                       sb=", ".join(f"sB{j}" for j in range(n_states)),
                       uw=", ".join(f"userW[{j}]" for j in range(1, n_user)),
                       ub=", ".join(f"userB[{j}]" for j in range(1, n_user)))
    env = dict(penalty_add=penalty_add, noise_key_jit=noise_key_jit, _prepare=mod._prepare,
               _schedule=mod._schedule, _loop_serial=mod._loop_serial)
    exec(compile(src, "<epoch tail stages>", "exec"), env)
    return njit(nogil=True)(env["bookkeeping"]), njit(nogil=True)(env["optimizer"]), n_states


def _captured_epoch_args(X, y, batch, optimizer, epochs, loss="softmax"):
    """The arguments of the serial compiled epoch as the estimator passes them
    (captured from a real fit), and the fit's per-epoch times."""
    from optkern import LinearClassifier
    from optkern.kernels import epoch_drivers

    if np.unique(y).shape[0] == 2:   # one output: the estimator's binary form
        loss = {"softmax": "log", "multiclass_hinge": "hinge"}.get(loss, loss)
    mod = epoch_drivers.module_for(loss, optimizer, "dense")
    real = mod.epoch_serial
    captured = []

    def spy(*args):
        captured.append(args)
        return real(*args)

    kw = dict(loss=loss, optimizer=optimizer, batch_size=batch, tol=None, random_state=0,
              backend="numba")
    LinearClassifier(max_epochs=1, **kw).fit(X[:2 * batch], y[:2 * batch])   # load
    mod.epoch_serial = spy
    try:
        est = LinearClassifier(max_epochs=epochs, **kw).fit(X, y)
    finally:
        mod.epoch_serial = real
    times = [r["time"] for r in est.history_[1:]] or [est.history_[0]["time"]]
    return mod, captured[-1], times, loss


def stage_seconds(X, y, batch, optimizer="adam", epochs=5, repeats=5, loss="softmax"):
    """{stage: seconds per epoch} of the serial dense epoch of ``loss`` (any
    built-in rule: all run the fused pass; two classes train one output with
    the binary form of ``loss``, as the estimator does), plus "epoch" (the whole compiled epoch,
    best of ``repeats`` calls with the arguments of a real fit), "epoch (fit)"
    (best epoch of that fit, which includes the call's Python), and "order"
    (drawing the epoch's order).

    Stages (each a compiled loop over the whole epoch, best of ``repeats``):

    scores       per block of the pass: the next block's rows prefetched, the
                 labels, ``gathered_scores_lanes`` (X_B W^T + b into lane form)
    dW/db        ``gathered_accumulate_lanes`` (the block's rank-m update of
                 dW^T) and the db sums: (scores + dW/db) - scores, both run
                 in the same loop so the rows are in cache as in the epoch
    rule         the loss rule's lane form and the weights/loss sums: the
                 generated batch pass - (scores + dW/db);
                 "rule (alone)" times the lane form by itself as a check
    optimizer    per minibatch: the update rule's prepare and its generated
                 update loop over W and over b
    bookkeeping  per minibatch: W^T refreshed, dW^T back into W's layout and
                 scaled, the penalty, db scaled, the schedule
    rest         epoch - batch passes - optimizer - bookkeeping (the loop's
                 own overhead; negative values are load noise)
    """
    from optkern.kernels import epoch_drivers

    from optkern.kernels import loss_rules

    st = _compiled_stages()
    n, d = X.shape
    dt = X.dtype
    mod, args, fit_times, loss = _captured_epoch_args(X, y, batch, optimizer, epochs, loss)
    scalar = loss_rules.LOSS_RULES[loss].kind == "scalar"
    targets = st["scalar_targets"] if scalar else st["row_targets"]
    bookkeeping, opt_loop, n_states = _tail_loops(mod, optimizer)
    call = DenseEpochArgs.from_positional(args, n_data=1, n_states=n_states)
    o = call.opt
    (X_,), T, sw, bs = call.data, call.T, call.sw, call.batch_size
    k = call.W.shape[1]   # W's outputs (one for two classes)
    dWp, dbp, Z, D, lossp, wsump = call.scratch.positional()
    # private copies: the timing calls below train them further
    W = call.W.copy()
    b = None if call.b is None else call.b.copy()
    sW = tuple(None if s is None else s.copy() for s in o.sW)
    sB = tuple(None if s is None else s.copy() for s in o.sB)
    # the fit calls the epoch in blocks of rows (estimators._blocked_epoch):
    # every stage here runs over one whole epoch's order
    order = np.random.default_rng(2).permutation(n).astype(np.int64)
    call.order, call.n_chunks, call.W, call.b, o.sW, o.sB = order, 1, W, b, sW, sB
    whole = call.positional()
    out = {}
    out["epoch"] = _best_seconds(lambda: mod.epoch_serial(*whole), repeats)
    out["epoch (fit)"] = min(fit_times)

    rng = np.random.default_rng(1)
    WT = np.ascontiguousarray(W.T)
    bufs = epoch_drivers.dense_lane_buffers(1, k, *_lane_slots(loss), dt)
    if scalar:
        bufs = bufs[:-1] + (np.empty((1, k, epoch_drivers.DENSE_LANE_ROWS), T.dtype),)
    Xb, Zb, Db, ZT, DT, S, SI, LS, YB = bufs
    DT0 = (0.01 * rng.standard_normal((k, ZT.shape[2]))).astype(dt)
    dW = np.zeros((k, d), dt)
    db = np.zeros(k, dt)
    eps = dt.type(o.epsilon)
    s_only = _best_seconds(lambda: st["scores"](targets, X_, T, order, bs, WT, b, ZT[0],
                                                YB[0], DT0, dW, db, False), repeats)
    s_acc = _best_seconds(lambda: st["scores"](targets, X_, T, order, bs, WT, b, ZT[0],
                                               YB[0], DT0, dW, db, True), repeats)
    passes = _best_seconds(lambda: st["batch_passes"](
        mod._batch_serial, X_, T, sw, order, bs, WT, b, dWp, dbp, Z, D, lossp, wsump, eps,
        *bufs), repeats)
    out["scores"] = s_only
    out["dW/db"] = s_acc - s_only
    out["rule"] = passes - s_acc
    out["batch passes"] = passes
    # the rule alone on the last block's scores
    out["rule (alone)"] = _best_seconds(lambda: st["rule"](
        mod._loss_lanes, targets, T, order, bs, ZT[0], YB[0], eps, DT[0], LS[0], S[0], SI[0]),
        repeats)
    Wf = W.reshape(-1)
    G, dbz = last_gradient(dWp, dbp, bs, call.w_mean)
    out["optimizer"] = _best_seconds(lambda: opt_loop(
        n, bs, Wf, G.reshape(-1), *sW, o.avgW, b, dbz, *sB, o.avgB, o.userW, o.userB,
        o.scalarsW, o.scalarsB, o.step0, o.seed, o.offW, o.offB, float(o.base_lr)), repeats)
    out["bookkeeping"] = _best_seconds(lambda: bookkeeping(
        n, bs, W, WT, G, dWp[0].reshape((k, d)), dbp, o.alpha, o.l1_ratio, o.sched, o.base_lr,
        o.plateau, o.step0), repeats)
    out["rest"] = out["epoch"] - passes - out["optimizer"] - out["bookkeeping"]
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


def last_gradient(dWp, dbp, batch, w_mean):
    """The gradient (d x k, k) of the last minibatch the batch pass left in
    its scratch (dWp[0] holds dW^T, dbp[0] db, both unscaled; scaled here as
    the epoch's tail scales them), for the optimizer stage of ``stage_seconds``.

    A real gradient, not zeros: on a zero gradient Adam's first moment shrinks
    by beta1 = 0.9 a step, from about 1e-3 to below float32's smallest normal
    (1.2e-38) in about 760 steps, and subnormal arithmetic is many times
    slower; at batch 32 (7,500 steps an epoch) the optimizer stage then
    took more than the whole epoch (23 ms of a 36 ms epoch at 240,000 x 32 x 8
    float32, against 1.6 ms on a real gradient)."""
    _, d, k = dWp.shape
    dt = dWp.dtype
    inv = 1.0 / (batch * w_mean)
    G = np.ascontiguousarray(dWp[0].reshape((k, d)).T * inv).astype(dt)
    return G, (dbp[0] * inv).astype(dt)


def _lane_slots(loss):
    from optkern.kernels import loss_rules, rule_lanes

    spec = loss_rules.LOSS_RULES[loss]
    if spec.kind == "scalar":
        return rule_lanes.scalar_lane_slots(spec.rule)
    return rule_lanes.lane_slots(spec.rule, returns=True)
