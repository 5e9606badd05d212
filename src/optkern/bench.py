"""``optkern bench``: optkern side by side with its peers, in one process.

    optkern bench [--quick] [--sizes full|quick|tiny] [--rows ...] [--plot FILE] [--json FILE]
    python -m optkern.bench ...

Rows (float32 throughout):

update      one optimizer step, Adam and SGD(momentum=0.9), on one array of
            1e6 elements (quick: 1e5): every compiled optkern backend, the
            NumPy reference (optkern's ``backend="numpy"``), torch.optim
            with ``foreach=True`` and with ``fused=True`` (where this torch
            supports it on CPU), and the streaming-bandwidth probe with the
            optimizer's memory traffic (``optkern._probes``): the roofline.
gradient    softmax ``loss_and_grad`` (mean cross entropy + L2, alpha=1e-4) on
            a dense 4096 x 784 batch with 10 classes (quick: 1024 x 784 x 10):
            optkern's compiled backends, the NumPy reference, PyTorch autograd
            (``cross_entropy`` + ``backward``), and the GEMM probe: NumPy's
            BLAS doing the gradient's two products (X @ W and X.T @ dZ) on
            arrays of the same shapes.
training    time to reach a target test accuracy on a make_classification
            problem (100,000 x 100, 10 classes; quick: 20,000 x 50): optkern's
            LinearClassifier(optimizer="adam") per compiled backend and on the
            NumPy reference backend, scikit-learn's SGDClassifier (log loss,
            one partial_fit per epoch) and a PyTorch loop (nn.Linear,
            CrossEntropyLoss, Adam, optkern's batch size and learning rate),
            with torch's default threads and with one thread.
            The target is the test accuracy of optkern's L-BFGS fit minus 1.5
            points (class_sep=2: the optimum is about 0.97); evaluation
            between epochs is not timed.  A run stops at 100 epochs or 60 s
            of training (quick: 50 epochs, 10 s; the PyTorch loop checks
            within an epoch too), flagged "target not reached".
epoch       (on request) one dense compiled epoch, softmax + Adam, batch 256,
            on 240,000 x 64 x 8 float32 (quick: 60,000 rows) per compiled
            backend, against its roofline (optkern._epoch_roofline: the larger
            of bytes of X / a streaming-read probe and 2 n d k multiply-adds /
            a multiply-add probe, both measured in this run); the probe line's
            "speed-up" is the fastest backend's fraction of the roofline.
step-check  (on request) the default optimizer step (check_finite=True: the
            NaN/inf scan of the gradients inside the update kernel's call)
            against check_finite=False, Adam and SGD, float32, at 1e3 and 1e7
            elements (quick: 1e3 and 1e6), per compiled backend; the default
            line's detail is its extra time over check_finite=False.
lean        (on request) ``loss_and_grad`` with default arguments against the
            lean NumPy/SciPy pipeline a user writes (issue 13: ``X @ W + b``,
            a NumPy softmax, ``X.T @ P``): dense (4096, 784, 10), (512, 1000,
            1000), (1024, 4096, 100), CSR 1% (4096, 10000, 10) and the binary
            log loss on CSR (20,000 x 2^18, 131 nonzeros a row); quick: the
            first and the 1% CSR case.  Warm kernels (the JIT service's
            compiles awaited); the BLAS threadpoolctl reports is in the detail.
            Run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset.
first-call  (on request) the first call of ``loss_and_grad`` (softmax,
            digits), ``Adam.step`` (1e6 float32) and
            ``LinearClassifier().fit`` (digits), each in a fresh process whose
            Numba and generated-driver caches are an empty directory (a new
            install), then the same call again in that process ("second"),
            then the first call in a second fresh process on the cache the
            first one left ("warm cache"), and the lean NumPy pipeline's first
            call in a fresh process.  Speed-up here is relative to the second
            call: the cold line's is its cold/warm ratio.

Update and gradient rows sample all implementations round-robin (so a busy
neighbour slows all of them alike) and report the median and the best
per-call time; training rows report the median over ``--repeats`` runs.
"speed-up" is the implementation's median time divided by optkern's best
backend's median time: > 1 means optkern is faster; on a probe row it is
optkern's fraction of the hardware limit.  Peers that are not installed are
reported as skipped.
"""

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

from optkern import first_calls as _fc
from optkern.peers import (accuracy as _accuracy, import_peer as _import_peer,
                           median_run as _median_run, train_optkern, train_sgdclassifier,
                           train_torch)

EXIT_OK, EXIT_USAGE = 0, 2

SIZES = {
    # update elements, gradient (batch, features, classes), training (rows,
    # features, classes), sampling seconds per row, min samples, training repeats,
    # max epochs and max training seconds per run
    "full": {"sparse": (240_000, 2 ** 18), "update_n": 1_000_000, "grad": (4096, 784, 10), "train": (100_000, 100, 10),
             "epoch": (240_000, 64, 8, 256), "min_time": 2.0, "min_reps": 15, "repeats": 3, "max_epochs": 100,
             "max_seconds": 60.0},
    "quick": {"sparse": (20_000, 2 ** 16), "update_n": 100_000, "grad": (1024, 784, 10), "train": (20_000, 50, 10),
              "epoch": (60_000, 64, 8, 256), "min_time": 0.3, "min_reps": 7, "repeats": 1, "max_epochs": 50,
              "max_seconds": 10.0},
    "tiny": {"sparse": (600, 2 ** 12), "update_n": 1_000, "grad": (64, 32, 4), "train": (600, 10, 3),
             "epoch": (600, 8, 3, 32), "min_time": 0.005, "min_reps": 3, "repeats": 1, "max_epochs": 10,
             "max_seconds": 5.0},
}
ROWS = ("update", "gradient", "training", "sparse", "epoch", "step-check", "lean",
        "first-call")
DEFAULT_ROWS = ("update", "gradient", "training")   # "sparse", "epoch" on request
COMPILED = ("numba", "numba-parallel", "cython")
ALPHA = 1e-4
# training target: the L-BFGS optimum's test accuracy minus this.  Constant-lr
# minibatch methods hover about a point below the optimum, so a smaller gap
# would measure their noise rather than their speed.
TARGET_GAP = 0.015
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class Result:
    """One line of the table."""

    def __init__(self, row, impl, kind, median_s=None, best_s=None, detail="", note=""):
        self.row = row
        self.impl = impl
        self.kind = kind            # "optkern", "reference", "peer", "probe"
        self.median_s = median_s    # None: not measured (skipped)
        self.best_s = best_s
        self.detail = detail        # throughput, epochs, ...
        self.note = note            # why skipped, target not reached, ...
        self.speedup = None
        self.best_backend = False

    @property
    def skipped(self):
        return self.median_s is None

    def as_dict(self):
        return {"row": self.row, "implementation": self.impl, "kind": self.kind,
                "status": "skipped" if self.skipped else "ok", "median_s": self.median_s,
                "best_s": self.best_s, "speedup": self.speedup, "detail": self.detail,
                "note": self.note, "optkern_best": self.best_backend}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _batch_for(fn, target=2e-4):
    """Calls per timed sample so that a sample lasts about ``target`` seconds."""
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-9)
    return max(1, min(1000, int(target / one)))


def interleaved(calls, min_time, min_reps):
    """Per-call seconds of every sample of each callable, sampled round-robin.

    Each callable is called once first (warm-up / compile).  Returns a list of
    lists of per-call seconds.
    """
    for fn in calls:
        fn()
    batches = [_batch_for(fn) for fn in calls]
    samples = [[] for _ in calls]
    start = time.perf_counter()
    while len(samples[0]) < min_reps or time.perf_counter() - start < min_time:
        for fn, b, out in zip(calls, batches, samples):
            t0 = time.perf_counter()
            for _ in range(b):
                fn()
            out.append((time.perf_counter() - t0) / b)
    return samples


def settled_blocks(calls, min_time, min_reps, settle=0.1, block=0.05):
    """Seconds of every timed repeat of each callable, in alternating blocks.

    Each round gives every callable a block: ``settle`` seconds of untimed
    calls, then timed calls for ``block`` seconds (at least one).  The blocks
    alternate, so slow drifts of a shared machine hit every callable alike.
    The untimed start is there because calls alternating one by one measured
    the previous callable's threads as much as this one's: a multi-threaded
    BLAS call leaves OpenBLAS's workers spinning for a while, and a parallel
    kernel started in that window waits for a core.  Measured on 2 cores:
    CSR (256, 512, 1000), numba-parallel: 6.8 ms right after a dense BLAS
    call, 3.5 ms 1 ms later, 1.2 ms from 10 ms on (numba serial: 1.0-1.5 ms
    at any gap); the default ``loss_and_grad`` at (4096, 784, 10): 1.9-2.4
    ms alternating call by call with the lean NumPy pipeline, 1.1-1.3 ms in
    its own loop.  Neither a training loop nor asv's own timing alternates
    two implementations call by call."""
    times = [[] for _ in calls]
    start = time.perf_counter()
    while len(times[0]) < min_reps or time.perf_counter() - start < min_time:
        for t, fn in zip(times, calls):
            t_end = time.perf_counter() + settle
            while time.perf_counter() < t_end:
                fn()
            t_end = time.perf_counter() + block
            while True:
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                t.append(t1 - t0)
                if t1 >= t_end:
                    break
    return times


def _fmt_time(s):
    if s is None:
        return "-"
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _available_compiled(kind):
    import optkern

    avail = optkern.available_backends(kind)
    return [b for b in COMPILED if b in avail]


def _finish_row(results):
    """Mark optkern's best backend and fill every line's speed-up."""
    ours = [r for r in results if r.kind == "optkern" and not r.skipped]
    if not ours:
        return results
    best = min(ours, key=lambda r: r.median_s)
    best.best_backend = True
    for r in results:
        if not r.skipped:
            r.speedup = r.median_s / best.median_s
    return results


# ---------------------------------------------------------------------------
# update rows
# ---------------------------------------------------------------------------
_UPDATE_VARIANTS = {
    # label -> (optkern class, torch class name, options), states per element
    "Adam": ("Adam", "Adam", {"lr": 1e-3}, 2),
    "SGD-momentum": ("SGD", "SGD", {"lr": 1e-3, "momentum": 0.9}, 1),
}


def _torch_update_calls(torch, torch_cls, options, params, grad):
    """{label: callable or skip-reason} for torch.optim with foreach and fused."""
    out = {}
    for flavour in ("foreach", "fused"):
        label = f"torch.optim.{torch_cls}({flavour}=True)"
        p = torch.nn.Parameter(torch.from_numpy(params.copy()))
        p.grad = torch.from_numpy(grad.copy())
        try:
            opt = getattr(torch.optim, torch_cls)([p], **options, **{flavour: True})
            opt.step()
        except (RuntimeError, TypeError, ValueError) as exc:
            out[label] = f"skipped ({flavour} not supported here: {str(exc).splitlines()[0]})"
            continue
        out[label] = opt.step
    return out


def bench_update(label, n, min_time, min_reps):
    import optkern
    from optkern import _probes

    cls_name, torch_cls, options, n_states = _UPDATE_VARIANTS[label]
    row = f"update: {label}, {n:.0e} elements"
    rng = np.random.default_rng(0)
    params = rng.standard_normal(n, dtype=np.float32)
    grad = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
    bpe = _probes.bytes_per_element(n_states, 4)

    entries = []   # (Result, callable)
    for backend in _available_compiled("updates") + ["numpy"]:
        opt = getattr(optkern, cls_name)(params.copy(), backend=backend, check_finite=False,
                                         **options)
        g = grad
        kind = "reference" if backend == "numpy" else "optkern"
        name = "NumPy reference (optkern numpy backend)" if backend == "numpy" else \
            f"optkern {backend}"
        entries.append((Result(row, name, kind), lambda o=opt, g=g: o.step(g)))

    torch = _import_peer("torch")
    if torch is None:
        for flavour in ("foreach", "fused"):
            entries.append((Result(row, f"torch.optim.{torch_cls}({flavour}=True)", "peer",
                                   note="skipped (torch not installed)"), None))
    else:
        for name, call in _torch_update_calls(torch, torch_cls, options, params,
                                              grad).items():
            if callable(call):
                entries.append((Result(row, name, "peer"), call))
            else:
                entries.append((Result(row, name, "peer", note=call), None))

    probe_p = np.zeros(n, np.float32)
    probe_g = np.ones(n, np.float32)
    probe_s = [np.zeros(n, np.float32) for _ in range(n_states)]
    sign = [1.0]

    def probe():
        sign[0] = -sign[0]
        _probes.stream_rw(probe_p, probe_g, probe_s, parallel=True, sign=sign[0])
    entries.append((Result(row, f"roofline: streaming probe ({bpe} B/element)", "probe"),
                    probe))

    timed = [(r, c) for r, c in entries if c is not None]
    samples = interleaved([c for _, c in timed], min_time, min_reps)
    for (r, _), s in zip(timed, samples):
        r.median_s = float(np.median(s))
        r.best_s = float(np.min(s))
        r.detail = f"{n * bpe / r.median_s / 1e9:.1f} GB/s"
    return _finish_row([r for r, _ in entries])


# ---------------------------------------------------------------------------
# gradient row
# ---------------------------------------------------------------------------
def softmax_problem(batch, d, k, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, d), dtype=np.float32)
    W = rng.standard_normal((d, k), dtype=np.float32) / np.float32(np.sqrt(d))
    b = np.zeros(k, np.float32)
    y = rng.integers(0, k, batch)
    return X, y, W, b


def torch_softmax_grad(torch, X, y, W, b, alpha=ALPHA):
    """A callable computing the same objective and gradient with autograd;
    returns (loss, dW, db) as NumPy arrays when called with ``numpy=True``."""
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    Wt = torch.from_numpy(W.copy()).requires_grad_()
    bt = torch.from_numpy(b.copy()).requires_grad_()
    F = torch.nn.functional

    def call(numpy=False):
        Wt.grad = None
        bt.grad = None
        loss = F.cross_entropy(torch.addmm(bt, Xt, Wt), yt) + 0.5 * alpha * (Wt * Wt).sum()
        loss.backward()
        if numpy:
            return float(loss.detach()), Wt.grad.numpy().copy(), bt.grad.numpy().copy()
    return call


def bench_gradient(batch, d, k, min_time, min_reps):
    from optkern import _probes
    from optkern.losses import loss_and_grad

    row = f"gradient: softmax {batch}x{d}x{k}"
    X, y, W, b = softmax_problem(batch, d, k)
    flops = _probes.gemm_flops(batch, d, k)
    entries = []
    for backend in _available_compiled("losses") + ["numpy"]:
        out = (np.empty_like(W), np.empty_like(b))

        def call(backend=backend, out=out):
            loss_and_grad(X, y, W, b, loss="softmax", alpha=ALPHA, backend=backend,
                          out=out, check_input=False)
        kind = "reference" if backend == "numpy" else "optkern"
        name = "NumPy reference (optkern numpy backend)" if backend == "numpy" else \
            f"optkern {backend}"
        entries.append((Result(row, name, kind), call))
    torch = _import_peer("torch")
    name = "PyTorch autograd (cross_entropy + backward)"
    if torch is None:
        entries.append((Result(row, name, "peer", note="skipped (torch not installed)"), None))
    else:
        entries.append((Result(row, name, "peer"), torch_softmax_grad(torch, X, y, W, b)))
    entries.append((Result(row, "roofline: GEMM probe (NumPy X@W and X.T@dZ)", "probe"),
                    _probes.gemm_pair(batch, d, k)))

    timed = [(r, c) for r, c in entries if c is not None]
    samples = interleaved([c for _, c in timed], min_time, min_reps)
    for (r, _), s in zip(timed, samples):
        r.median_s = float(np.median(s))
        r.best_s = float(np.min(s))
        r.detail = f"{flops / r.median_s / 1e9:.1f} GFLOP/s, {batch / r.median_s:.3g} samples/s"
    return _finish_row([r for r, _ in entries])


# ---------------------------------------------------------------------------
# training row
# ---------------------------------------------------------------------------
def training_problem(n, d, k, seed=0):
    """Standardised float32 train/test split of a make_classification problem."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n, d, n_informative=max(2, int(0.6 * d)),
                               n_redundant=max(0, int(0.2 * d)), n_classes=k,
                               n_clusters_per_class=1, class_sep=2.0, random_state=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    cut = int(0.75 * n)
    tr, te = order[:cut], order[cut:]
    mean, std = X[tr].mean(0), X[tr].std(0) + 1e-12
    X = ((X - mean) / std).astype(np.float32)
    return X[tr], X[te], y[tr], y[te]


def bench_training(n, d, k, repeats, max_epochs, max_seconds):
    import optkern
    from optkern.estimators import OPTIMIZER_NAMES

    data = training_problem(n, d, k)
    Xtr, Xte, ytr, yte = data
    ref = optkern.LinearClassifier(solver="lbfgs", max_epochs=500, random_state=0).fit(Xtr, ytr)
    ref_acc = _accuracy(ref.predict(Xte), yte)
    target = ref_acc - TARGET_GAP
    row = f"training: {n}x{d}, {k} classes, to test acc {target:.3f}"
    results = []

    def add(name, kind, fn):
        t_med, t_best, (_, epochs, acc) = _median_run(fn, repeats)
        note = ""
        if acc >= target and t_med > max_seconds:
            note = f"hit the {max_seconds:g} s budget mid-epoch, at the target by then"
        elif acc < target:
            stopped = epochs < max_epochs or t_best > max_seconds
            note = (f"target not reached in {epochs} epochs" +
                    (f" (stopped after {max_seconds:g} s)" if stopped else "") +
                    ": time is to where it stopped")
        r = Result(row, name, kind, t_med, t_best,
                   detail=f"{epochs} epochs, acc {acc:.3f}", note=note)
        results.append(r)

    for backend in _available_compiled("epochs") + ["numpy"]:
        # compile (or load the cached kernels) before timing
        optkern.LinearClassifier(optimizer="adam", max_epochs=1, tol=None, backend=backend
                                 ).fit(Xtr[:256], ytr[:256])
        kind = "reference" if backend == "numpy" else "optkern"
        name = ("NumPy reference (LinearClassifier backend=numpy)" if backend == "numpy"
                else f"optkern LinearClassifier(adam) {backend}")
        add(name, kind, lambda b=backend: train_optkern(data, target, max_epochs,
                                                        max_seconds, b)[:3])

    linear_model = _import_peer("sklearn.linear_model")
    name = "scikit-learn SGDClassifier(log_loss)"
    if linear_model is None:
        results.append(Result(row, name, "peer", note="skipped (scikit-learn not installed)"))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            add(name, "peer", lambda: train_sgdclassifier(linear_model, data, target,
                                                          max_epochs, max_seconds, ALPHA))
    torch = _import_peer("torch")
    name = "PyTorch loop (nn.Linear, Adam)"
    if torch is None:
        results.append(Result(row, name, "peer", note="skipped (torch not installed)"))
    else:
        batch_size = optkern.LinearClassifier()._batch_size(len(ytr))
        lr = OPTIMIZER_NAMES["adam"][1]
        # warm-up
        train_torch(torch, (Xtr[:256], Xte, ytr[:256], yte), 2.0, 1, 1.0,
                    batch_size=batch_size, lr=lr, weight_decay=ALPHA)
        threads = torch.get_num_threads()
        # torch's default intra-op threads, and one thread: on a busy machine a
        # multi-threaded loop of small ops waits for descheduled threads
        for n_threads in dict.fromkeys((threads, 1)):
            add(f"{name}, {n_threads} thread{'s' if n_threads > 1 else ''}", "peer",
                lambda t=n_threads: train_torch(torch, data, target, max_epochs, max_seconds,
                                                batch_size=batch_size, lr=lr,
                                                weight_decay=ALPHA, threads=t))
    return _finish_row(results)


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------
def bench_sparse(n, d, n_classes, repeats):
    """The sparse race (optkern.sparse_bench.race): default fits on text-like data."""
    from optkern import sparse_bench

    row = f"sparse: {n} x 2^{int(np.log2(d))}, {n_classes} classes"
    out = []
    for name, kind, med, best, acc, note in sparse_bench.race(n, d, n_classes,
                                                              repeats=repeats):
        out.append(Result(row, name, kind, med, best,
                          detail="" if acc is None else f"test accuracy {acc:.3f}",
                          note=note))
    return _finish_row(out)


# ---------------------------------------------------------------------------
# epoch row: the dense compiled epoch against the machine's limit
# ---------------------------------------------------------------------------
def bench_epoch(n, d, k, batch, tiny=False):
    """One dense softmax Adam epoch per compiled backend (median over epochs
    2..5 of a fit) and its roofline (optkern._epoch_roofline): the probe
    line's "speed-up" is the best backend's fraction of the roofline."""
    from optkern import _epoch_roofline as R

    row = f"epoch: {n} x {d} x {k}, batch {batch}, float32 (dense, softmax, Adam)"
    probes = R.Probes(repeats=2, read_bytes=2 ** 20, fma_reps=1000) if tiny else R.Probes()
    limit, bound = probes.roofline(n, d, k, np.float32)
    X, y = R.problem(n, d, k, np.float32)
    out = []
    for backend in _available_compiled("epochs"):
        med, est = R.epoch_seconds(X, y, batch, backend)
        best = min(r["time"] for r in est.history_[1:] or est.history_)
        out.append(Result(row, f"optkern {backend}", "optkern", med, best,
                          detail=f"{limit / med:.3f} of the roofline ({med / limit:.1f}x it)"))
    out.append(Result(
        row, f"roofline: max(X bytes / read probe, 2ndk / FMA probe), {bound} bound",
        "probe", limit, limit,
        detail=f"read {probes.bytes_per_s / 1e9:.1f} GB/s, "
               f"{probes.fmas_per_s(np.float32) / 1e9:.1f} G multiply-adds/s"))
    return _finish_row(out)


def environment():
    import numba

    import optkern

    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "optkern": optkern.__version__,
            "numpy": np.__version__, "numba": numba.__version__,
            "numba_threads": numba.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    for name, dist in (("torch", "torch"), ("sklearn", "scikit-learn")):
        if name in sys.modules:   # imported, or hidden (None)
            info[name] = getattr(sys.modules[name], "__version__", None)
        else:                     # not needed by the rows that ran
            try:
                info[name] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                info[name] = None
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    for var in OPENBLAS_VARS:
        info[var] = os.environ.get(var)
    return info


def format_table(results):
    header = ("row", "implementation", "median", "best", "throughput / result",
              "speed-up of optkern")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 4) + "|"]
    last_row = None
    for r in results:
        row = r.row if r.row != last_row else ""
        last_row = r.row
        impl = r.impl + (" **(best)**" if r.best_backend else "")
        if r.skipped:
            cells = (row, impl, r.note or "skipped", "-", "-", "-")
        else:
            detail = r.detail + (f"; {r.note}" if r.note else "")
            cells = (row, impl, _fmt_time(r.median_s), _fmt_time(r.best_s), detail,
                     f"{r.speedup:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(r.row for r in results))
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.2 + 0.45 * len(results)),
                             squeeze=False)
    colors = {"optkern": "tab:blue", "reference": "tab:gray", "peer": "tab:orange",
              "probe": "tab:green"}
    for ax, row in zip(axes[:, 0], rows):
        mine = [r for r in results if r.row == row and not r.skipped]
        labels = [r.impl for r in mine]
        ax.barh(range(len(mine)), [r.speedup for r in mine],
                color=[colors[r.kind] for r in mine])
        ax.set_yticks(range(len(mine)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(row, fontsize=9)
    axes[-1, 0].set_xlabel("time relative to optkern's best backend (> 1: optkern faster)")
    fig.tight_layout()
    from optkern.io import atomic_write

    ext = os.path.splitext(path)[1].lower().lstrip(".") or "png"
    with atomic_write(path) as fh:
        fig.savefig(fh, format=ext, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# step-check rows: the default step against check_finite=False
# ---------------------------------------------------------------------------
STEP_CHECK_SIZES = {"full": (1_000, 10_000_000), "quick": (1_000, 1_000_000),
                    "tiny": (1_000,)}
_STEP_CHECK_VARIANTS = {"Adam": ("Adam", {"lr": 1e-3}), "SGD": ("SGD", {"lr": 1e-3})}


def bench_step_check(label, n, min_time, min_reps):
    import optkern

    cls_name, options = _STEP_CHECK_VARIANTS[label]
    row = f"step-check: {label}, {n:.0e} elements"
    rng = np.random.default_rng(0)
    params = rng.standard_normal(n, dtype=np.float32)
    grad = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
    entries = []
    for backend in _available_compiled("updates"):
        for check in (False, True):
            opt = getattr(optkern, cls_name)(params.copy(), backend=backend,
                                             check_finite=check, **options)
            name = f"optkern {backend}, " + ("default (check_finite=True)" if check
                                              else "check_finite=False")
            entries.append((Result(row, name, "optkern"), lambda o=opt: o.step(grad)))
    samples = interleaved([c for _, c in entries], min_time, min_reps)
    for (r, _), s in zip(entries, samples):
        r.median_s = float(np.median(s))
        r.best_s = float(np.min(s))
    for (off, _), (on, _) in zip(entries[0::2], entries[1::2]):
        off.detail = f"{n * 4 / off.median_s / 1e9:.1f} GB/s of params"
        on.detail = (f"{(on.median_s / off.median_s - 1) * 100:+.1f}% over "
                     "check_finite=False")
    return _finish_row([r for r, _ in entries])


# ---------------------------------------------------------------------------
# lean rows: the default loss_and_grad against what a user writes
# ---------------------------------------------------------------------------
def lean_softmax(X, y, W, b):
    """Softmax, mean loss, as a user writes it with NumPy/SciPy (issue 13)."""
    Z = np.asarray(X @ W + b)
    Z -= Z.max(1, keepdims=True)
    lse = np.log(np.exp(Z).sum(1))
    rows = np.arange(len(y))
    loss = (lse - Z[rows, y]).mean()
    P = np.exp(Z - lse[:, None])
    P[rows, y] -= 1
    P /= len(y)
    return loss, X.T @ P, P.sum(0)


def lean_log(X, y, W, b):
    """The binary log loss the same way (y in {0, 1} as floats, one output)."""
    z = np.asarray(X @ W + b)
    loss = (np.logaddexp(0, z[:, 0]) - y * z[:, 0]).mean()
    P = (1.0 / (1.0 + np.exp(-z)) - y[:, None]).astype(z.dtype)
    P /= len(y)
    return loss, X.T @ P, P.sum(0)


# (label, n, d, k, density or None for dense, loss)
LEAN_CASES = (
    ("dense (4096, 784, 10)", 4096, 784, 10, None, "softmax"),
    ("dense (512, 1000, 1000)", 512, 1000, 1000, None, "softmax"),
    ("dense (1024, 4096, 100)", 1024, 4096, 100, None, "softmax"),
    ("CSR 1% (4096, 10000, 10)", 4096, 10000, 10, 0.01, "softmax"),
    ("CSR (20000, 2^18, 1), 131 nnz/row", 20000, 2 ** 18, 1, 131 / 2 ** 18, "log"),
)
LEAN_SIZES = {"full": LEAN_CASES, "quick": (LEAN_CASES[0], LEAN_CASES[3]),
              "tiny": (("dense (64, 32, 4)", 64, 32, 4, None, "softmax"),
                       ("CSR 10% (64, 200, 4)", 64, 200, 4, 0.1, "softmax"),
                       ("CSR (64, 200, 1)", 64, 200, 1, 0.05, "log"))}


def lean_problem(n, d, k, density, loss, seed=0):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    if density is None:
        X = rng.standard_normal((n, d)).astype(np.float32)
    else:
        # built row by row (sp.random permutes n*d positions: 39 GiB at 20,000 x 2^18)
        per_row = max(1, int(round(density * d)))
        cols = np.sort(rng.integers(0, d, (n, per_row)), axis=1).ravel()
        data = rng.standard_normal(n * per_row).astype(np.float32)
        X = sp.csr_matrix((data, cols, np.arange(0, n * per_row + 1, per_row)), shape=(n, d))
        X.sum_duplicates()
    y = rng.integers(0, 2 if loss == "log" else k, n)
    W = (0.01 * rng.standard_normal((d, k))).astype(np.float32)
    b = np.zeros(k, np.float32)
    return X, y, W, b


def blas_info():
    """NumPy's BLAS as threadpoolctl reports it (kernel, threads)."""
    np.ones((4, 4)) @ np.ones((4, 4))      # loaded before threadpoolctl looks
    threadpoolctl = _import_peer("threadpoolctl")
    if threadpoolctl is None:
        return "threadpoolctl not installed"
    return ", ".join(f"{p.get('internal_api')} {p.get('architecture')} "
                     f"{p.get('num_threads')} threads"
                     for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")


def bench_lean(case, min_time, min_reps):
    import optkern
    from optkern import _jit

    label, n, d, k, density, loss = case
    row = f"lean: {label} {loss}, float32"
    X, y, W, b = lean_problem(n, d, k, density, loss)
    lean = lean_softmax if loss == "softmax" else lean_log
    yl = y.astype(np.float32) if loss == "log" else y

    def ours():
        return optkern.loss_and_grad(X, y, W, b, loss=loss)

    def theirs():
        return lean(X, yl, W, b)
    ref, got = theirs(), ours()
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-3)     # the same objective
    _jit.wait(900)      # time the Numba kernels, not the twins serving meanwhile
    entries = [(Result(row, "optkern loss_and_grad, default arguments", "optkern"), ours),
               (Result(row, "lean NumPy/SciPy pipeline", "peer"), theirs)]
    # blocks, not call by call: OpenBLAS's spinning workers (settled_blocks)
    samples = settled_blocks([c for _, c in entries], min_time, min_reps)
    for (r, _), s in zip(entries, samples):
        r.median_s = float(np.median(s))
        r.best_s = float(np.min(s))
    entries[1][0].detail = f"BLAS: {blas_info()}"
    return _finish_row([r for r, _ in entries])


# ---------------------------------------------------------------------------
# first-call rows: a new install's first call against the warm call
# ---------------------------------------------------------------------------
# label -> (set-up code, the call): three of optkern.first_calls.ENTRIES
FIRST_CALL_ENTRIES = {_fc.ENTRIES[n][2].replace("`", ""): _fc.ENTRIES[n][:2]
                      for n in ("loss_and_grad", "adam_step", "fit_default")}
_LEAN_FIRST = ("from optkern.bench import lean_softmax\n" + _fc.ENTRIES["loss_and_grad"][0],
               "lean_softmax(X, y, W, b)")


def _first_call_child(setup, call, cache):
    return _fc.run_child(setup, call, cache, settle=True, timeout=900)


def bench_first_call(label, repeats):
    import shutil
    import tempfile

    setup, call = FIRST_CALL_ENTRIES[label]
    row = f"first-call: {label}"
    cold, second, warm, lean, served = [], [], [], [], None
    for _ in range(repeats):
        cache = tempfile.mkdtemp(prefix="optkern-bench-first-call-")
        try:
            c = _first_call_child(setup, call, cache)
            w = _first_call_child(setup, call, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        cold.append(c["first"])
        second.append(c["second"])
        warm.append(w["first"])
        served = c["served"]
        if label.startswith("loss_and_grad"):
            cache = tempfile.mkdtemp(prefix="optkern-bench-first-call-")
            try:
                lean.append(_first_call_child(*_LEAN_FIRST, cache)["first"])
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    out = [Result(row, "optkern, empty cache (first call after install)", "optkern",
                  statistics.median(cold), min(cold),
                  detail=f"served: twin {served['twin']}, Numba {served['numba']}"),
           Result(row, "optkern, warm cache (first call of a later run)", "optkern",
                  statistics.median(warm), min(warm)),
           Result(row, "optkern, second call (same process)", "optkern",
                  statistics.median(second), min(second))]
    if lean:
        out.append(Result(row, "lean NumPy pipeline, first call (fresh process)", "peer",
                          statistics.median(lean), min(lean)))
    return _finish_row(out)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def add_arguments(parser):
    """The bench options, on ``parser`` (``optkern bench`` and ``python -m optkern.bench``)."""
    parser.add_argument("--quick", action="store_true",
                        help="smaller problems and shorter sampling (under a minute)")
    parser.add_argument("--sizes", choices=tuple(SIZES), default=None,
                        help="problem sizes (default: full, or quick with --quick; tiny is "
                             "for tests)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(DEFAULT_ROWS),
                        metavar="ROW", help="rows to run: " + ", ".join(ROWS) +
                        " (default: " + ", ".join(DEFAULT_ROWS) + "; sparse: the text-like "
                        "race of optkern.sparse_bench, with LIBLINEAR, Vowpal Wabbit and "
                        "Snap ML where installed; epoch: the dense epoch's fraction of "
                        "its roofline; step-check: the default step against "
                        "check_finite=False; lean: the default loss_and_grad against the "
                        "lean NumPy/SciPy pipeline; first-call: a new install's first "
                        "calls, cold and warm)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="training runs per implementation (median; default: 3, quick: 1)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads for every library: Numba's parallel backends, "
                             "PyTorch and NumPy's BLAS (threadpoolctl) (default: each "
                             "library's own default)")
    parser.add_argument("--plot", metavar="FILE", default=None,
                        help="bar chart of the ratios (needs matplotlib: optkern[plot])")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the results and the environment as JSON")
    return parser


def _error(msg):
    print(f"optkern bench: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def run(args):
    """Run the benchmarks selected by ``args`` (from ``add_arguments``); exit status."""
    if args.plot is not None and _import_peer("matplotlib") is None:
        return _error("--plot needs matplotlib; pip install 'optkern[plot]'")
    if args.repeats is not None and args.repeats < 1:
        return _error("--repeats must be >= 1")
    if args.threads is not None and args.threads < 1:
        return _error("--threads must be >= 1")
    for path in (args.plot, args.json):
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            return _error(f"{path}: the directory does not exist")
    with contextlib.ExitStack() as stack:
        if args.threads is not None:
            stack.enter_context(_limit_threads(args.threads))
        return _run(args)


@contextlib.contextmanager
def _limit_threads(n):
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch = _import_peer("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    threadpoolctl = _import_peer("threadpoolctl")
    try:
        if threadpoolctl is not None:
            with threadpoolctl.threadpool_limits(n):
                yield
        else:
            yield
    finally:
        numba.set_num_threads(before)
        if torch is not None:
            torch.set_num_threads(torch_before)


def _run(args):
    size_name = args.sizes or ("quick" if args.quick else "full")
    cfg = dict(SIZES[size_name])
    if args.repeats is not None:
        cfg["repeats"] = args.repeats
    set_vars = [v for v in OPENBLAS_VARS if os.environ.get(v)]
    if set_vars:
        print("note: " + ", ".join(f"{v}={os.environ[v]}" for v in set_vars) +
              " set: they slow NumPy's BLAS; unset them for a fair comparison "
              "(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE optkern bench)")
    start = time.perf_counter()
    load_before = os.getloadavg()
    print(f"optkern bench ({size_name} sizes): medians of interleaved samples; speed-up = "
          "this median / optkern's best backend's median", flush=True)
    results = []

    def progress(what):
        print(f"# {time.perf_counter() - start:6.1f} s: {what} ...", file=sys.stderr,
              flush=True)
    if "update" in args.rows:
        for label in _UPDATE_VARIANTS:
            progress(f"update {label}")
            results += bench_update(label, cfg["update_n"], cfg["min_time"], cfg["min_reps"])
    if "gradient" in args.rows:
        progress("gradient")
        results += bench_gradient(*cfg["grad"], cfg["min_time"], cfg["min_reps"])
    if "training" in args.rows:
        progress("training")
        results += bench_training(*cfg["train"], cfg["repeats"], cfg["max_epochs"],
                                  cfg["max_seconds"])
    if "sparse" in args.rows:
        for k in (2, 20):
            progress(f"sparse race, {k} classes")
            results += bench_sparse(*cfg["sparse"], k, cfg["repeats"])
    if "epoch" in args.rows:
        progress("epoch against the roofline")
        results += bench_epoch(*cfg["epoch"], tiny=size_name == "tiny")
    if "step-check" in args.rows:
        for n in STEP_CHECK_SIZES[size_name]:
            for label in _STEP_CHECK_VARIANTS:
                progress(f"step-check {label} {n:.0e}")
                results += bench_step_check(label, n, cfg["min_time"], cfg["min_reps"])
    if "lean" in args.rows:
        for case in LEAN_SIZES[size_name]:
            progress(f"lean {case[0]}")
            results += bench_lean(case, cfg["min_time"], cfg["min_reps"])
    if "first-call" in args.rows:
        for label in FIRST_CALL_ENTRIES:
            progress(f"first call {label}")
            results += bench_first_call(label, cfg["repeats"])
    info = environment()
    info["sizes"] = size_name
    info["threads_option"] = args.threads
    info["load_average_before"] = [round(x, 2) for x in load_before]
    info["seconds"] = round(time.perf_counter() - start, 1)
    print()
    print(format_table(results))
    print()
    print(f"# {info['date']}, {info['machine']}, {info['cpus']} cpus, Python {info['python']}, "
          f"optkern {info['optkern']}, numpy {info['numpy']}, numba {info['numba']} "
          f"({info['numba_threads']} threads), torch {info['torch'] or 'not installed'}"
          + (f" ({info['torch_threads']} threads)" if info.get("torch_threads") else "")
          + f", scikit-learn {info['sklearn'] or 'not installed'}")
    print(f"# took {info['seconds']} s; load average before {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f}, after "
          + " ".join(f"{x:.2f}" for x in info["load_average"]))
    if args.json:
        from optkern.io import atomic_write

        with atomic_write(args.json, "w") as fh:
            json.dump({"environment": info, "results": [r.as_dict() for r in results]}, fh,
                      indent=1)
    if args.plot:
        write_plot(results, args.plot)
        print(f"# plot written to {args.plot}")
    return EXIT_OK


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="optkern bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[0].strip("`: ") +
        ": optkern vs NumPy, PyTorch and scikit-learn in one process.",
        epilog=__doc__.split("\n\n", 2)[2])
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
