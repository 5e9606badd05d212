"""backend="auto" against every backend, with and without a load generator.

    cd asv_benchmarks && python auto_under_load.py            # under load
    cd asv_benchmarks && python auto_under_load.py --no-load  # no load generator

For each public call -- an optimizer step (Adam, SGD; 1e3 to 1e7 float32
elements), ``loss_and_grad`` and ``predict_scores`` (softmax, float32; dense
and CSR at 1% density), one ``LinearClassifier.partial_fit`` epoch (dense and
CSR) -- every available CPU backend and "auto" are warmed (Numba compiles or
loads every kernel from its cache first), then timed round-robin: each round
times a few calls of every contender, in a rotating order, so a neighbour's
load hits all of them alike.  The table gives the median seconds per call,
the fastest backend, the backend "auto" resolved to, auto's time over the best
one's (issue 17: at most 1.5x), and the chosen backend's own time (called by
name) over the best one's, which separates the rule's quality from the noise of
a loaded machine.

The load generator is one process per usable core, each spinning a
pure-Python loop (``--load-kind numpy`` spins on NumPy element-wise work
instead), started after the warm-up and stopped before the script exits.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np
import scipy.sparse as sp

import optkern
from optkern import _backend, losses

CPU_BACKENDS = ("numpy", "numba", "numba-parallel", "cython")


# ----------------------------------------------------------- load generator


def _spin(stop, kind):
    if kind == "numpy":
        a = np.ones(50_000)
        while not stop.is_set():
            for _ in range(50):
                np.sqrt(a * 1.0001, out=a)
    else:
        x = 0
        while not stop.is_set():
            for i in range(100_000):
                x = (x + i) % 1_000_003


class LoadGenerator:
    """``n`` busy processes until ``stop()`` (or the ``with`` block ends)."""

    def __init__(self, n, kind="python"):
        self.n, self.kind = n, kind
        self.procs = []

    def __enter__(self):
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self.procs = [ctx.Process(target=_spin, args=(self.stop_event, self.kind),
                                  daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(1.0)          # let them reach their loops
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()


# ----------------------------------------------------------------- cases


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def optimizer_case(name, n, backends):
    rng = np.random.default_rng(0)
    g = rng.standard_normal(n).astype(np.float32) * 1e-3
    fns, choice = {}, None
    for be in backends + ("auto",):
        p = np.zeros(n, np.float32)
        opt = optkern.OPTIMIZERS[name]([p], backend=be, check_finite=False,
                                       **({"lr": 1e-3} if name == "sgd" else {}))
        fns[be] = (lambda o=opt: o.step([g]))
        if be == "auto":
            choice = opt.backend
    return fns, (lambda: choice)


def _loss_data(n, d, k, fmt, seed=0):
    rng = np.random.default_rng(seed)
    if fmt == "csr":
        X = sp.random(n, d, density=0.01, format="csr", dtype=np.float32, random_state=seed)
    else:
        X = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    W = (rng.standard_normal((d, k)) * 0.01).astype(np.float32)
    b = np.zeros(k, np.float32)
    return X, y, W, b


def loss_case(n, d, k, fmt, backends):
    X, y, W, b = _loss_data(n, d, k, fmt)
    kind = "csr" if fmt == "csr" else "dense"
    fns = {be: (lambda be=be: losses.loss_and_grad(X, y, W, b, backend=be))
           for be in backends + ("auto",)}
    return fns, (lambda: losses._resolve_backend("auto", kind, X, k))


def predict_case(n, d, k, fmt, backends):
    X, y, W, b = _loss_data(n, d, k, fmt)
    kind = "csr" if fmt == "csr" else "dense"
    out = np.empty((n, k), np.float32)
    fns = {be: (lambda be=be: losses.predict_scores(X, W, b, backend=be, out=out))
           for be in backends + ("auto",)}
    return fns, (lambda: losses._resolve_backend("auto", kind, X, k))


def _epoch_data(which, fmt):
    if which == "digits":
        from sklearn.datasets import load_digits
        X, y = load_digits(return_X_y=True)
        X = (X / 16.0)[:1347]
        y = y[:1347]
    else:
        rng = np.random.default_rng(0)
        n, d, k = 240_000, 64, 8
        X = rng.standard_normal((n, d))
        if fmt == "csr":
            X[rng.random((n, d)) > 0.1] = 0.0       # 10% density
        y = rng.integers(0, k, n)
    if fmt == "csr":
        X = sp.csr_matrix(X)
    return X, y


def epoch_case(which, fmt, backends):
    X, y = _epoch_data(which, fmt)
    classes = np.unique(y)
    fns, models = {}, {}
    for be in backends + ("auto",):
        m = optkern.LinearClassifier(optimizer="adam", backend=be, tol=None, random_state=0)
        m.partial_fit(X, y, classes=classes)
        models[be] = m
        fns[be] = (lambda m=m: m.partial_fit(X, y))
    d, k = X.shape[1], len(classes)
    return fns, (lambda: models["auto"]._optimizer_backend(d * k))


def cases(args):
    upd = _backend.available_backends()
    lb = _backend.available_backends("losses")
    eb = tuple(b for b in _backend.available_backends("epochs") if b != "cuda")
    upd = tuple(b for b in upd if b in CPU_BACKENDS)
    lb = tuple(b for b in lb if b in CPU_BACKENDS)
    out = []
    if "step" in args.calls:
        for name in ("adam", "sgd"):
            for n in args.sizes:
                out.append(("step " + name, f"{n:.0e}", lambda name=name, n=n:
                            optimizer_case(name, n, upd)))
    shapes = [(1347, 64, 10), (4096, 784, 10), (512, 1000, 1000)]
    for call, maker in (("loss_and_grad", loss_case), ("predict_scores", predict_case)):
        if call not in args.calls:
            continue
        for fmt in ("dense", "csr"):
            for (n, d, k) in shapes:
                out.append((f"{call} {fmt}", f"{n}x{d}x{k}",
                            lambda n=n, d=d, k=k, fmt=fmt, maker=maker: maker(n, d, k, fmt, lb)))
    if "epoch" in args.calls:
        for fmt in ("dense", "csr"):
            for which, shape in (("digits", "1347x64x10"), ("synthetic", "240000x64x8")):
                out.append((f"epoch {fmt}", shape, lambda which=which, fmt=fmt:
                            epoch_case(which, fmt, eb)))
    return out


# ---------------------------------------------------------------- timing


def _per_call(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def measure(fns, rounds, sample_s):
    names = list(fns)
    reps = {}
    slow = False
    for be in names:                       # warm twice (compile/load, then caches)
        fns[be]()
        t = _per_call(fns[be], 1)
        slow = slow or t > 1.0
        reps[be] = max(1, min(1000, int(sample_s / max(t, 1e-7))))
    if slow:
        rounds = min(rounds, 3)            # the reference epoch at 240,000 rows: seconds
    samples = {be: [] for be in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for be in order:
            samples[be].append(_per_call(fns[be], reps[be]))
    return {be: statistics.median(v) for be, v in samples.items()}


def _fmt_t(s):
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Time backend='auto' against every backend, under a load generator "
                    "(one busy process per usable core) or without it.",
        epilog="Prints a markdown table: call, shape, best backend and its median time, "
               "auto's choice and its median time, auto/best.")
    ap.add_argument("--no-load", action="store_true",
                    help="do not start the load generator")
    ap.add_argument("--load-procs", type=int, default=None,
                    help="busy processes in the load generator (default: one per usable core)")
    ap.add_argument("--load-kind", choices=("python", "numpy"), default="python",
                    help="what the busy processes spin on (default: a pure-Python loop)")
    ap.add_argument("--rounds", type=int, default=9,
                    help="interleaved rounds per case; medians over them (default 9; "
                         "3 for a case with a call over 1 s)")
    ap.add_argument("--sample-ms", type=float, default=5.0,
                    help="target milliseconds per timed sample (calls are repeated up to it)")
    ap.add_argument("--calls", nargs="+", default=["step", "loss_and_grad", "predict_scores",
                                                   "epoch"],
                    choices=["step", "loss_and_grad", "predict_scores", "epoch"],
                    help="which public calls to time (default: all)")
    ap.add_argument("--sizes", type=int, nargs="+",
                    default=[1_000, 100_000, 1_000_000, 10_000_000],
                    help="optimizer step sizes in elements (default 1e3 1e5 1e6 1e7)")
    args = ap.parse_args(argv)

    import numba
    cores = _usable_cores()
    nload = 0 if args.no_load else (args.load_procs or cores)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cores} usable cores, "
          f"numba {numba.__version__} ({numba.get_num_threads()} threads, layer "
          f"{numba.config.THREADING_LAYER}), optkern {optkern.__version__} "
          f"from {os.path.dirname(optkern.__file__)}")
    print(f"# command: {' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}")
    print(f"# OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')} "
          f"busy={getattr(_backend, 'machine_busy', lambda: 'n/a')()} "
          f"(the rule's view of the machine when this process started)")
    todo = cases(args)
    built = []
    t0 = time.time()
    for call, shape, make in todo:         # build and warm everything before the load
        fns, choice = make()
        for fn in fns.values():
            fn()
            fn()
        built.append((call, shape, fns, choice))
    print(f"# warm-up {time.time() - t0:.1f} s; load generator: "
          f"{f'{nload} x {args.load_kind} spinner' if nload else 'none'}")
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rows = []

    def run():
        for call, shape, fns, choice in built:
            med = measure(fns, args.rounds, args.sample_ms / 1e3)
            chosen = choice()           # after the timing: the load average is current
            backends = {be: t for be, t in med.items() if be != "auto"}
            best = min(backends, key=backends.get)
            ratio = med["auto"] / backends[best]
            # the chosen backend's own (explicit) time over the best: the rule's
            # quality without the auto call's share of the noise
            cratio = backends.get(chosen, float("nan")) / backends[best]
            rows.append((call, shape, best, backends[best], chosen, med["auto"], ratio, med,
                         cratio))
            print(f"| {call} | {shape} | {best} | {_fmt_t(backends[best])} | {chosen} | "
                  f"{_fmt_t(med['auto'])} | {ratio:.2f}{' **>1.5**' if ratio > 1.5 else ''} | "
                  f"{cratio:.2f} | "
                  + " ".join(f"{be} {_fmt_t(t)};" for be, t in backends.items()) + " |",
                  flush=True)

    print("\n| call | shape | best | best time | auto's choice | auto time | auto/best "
          "| choice/best | all backends |")
    print("|---|---|---|---:|---|---:|---:|---:|---|")
    t0 = time.time()
    if nload:
        with LoadGenerator(nload, args.load_kind):
            run()
            after = os.getloadavg()
    else:
        run()
        after = os.getloadavg()
    print(f"\n# took {time.time() - t0:.1f} s; load average at end: "
          f"{' '.join(f'{v:.2f}' for v in after)}")
    worst = max(rows, key=lambda r: r[6])
    print(f"# worst auto/best: {worst[6]:.2f} ({worst[0]} {worst[1]}); "
          f"{sum(r[6] > 1.5 for r in rows)} of {len(rows)} rows above 1.5; the chosen "
          f"backend's own time above 1.5x the best in {sum(r[8] > 1.5 for r in rows)}")
    return rows


if __name__ == "__main__":
    main()
