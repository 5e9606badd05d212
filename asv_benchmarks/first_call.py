"""First call against warm call of every public entry point (issue 13).

Each entry point runs in a fresh interpreter whose Numba cache and
generated-driver directory (NUMBA_CACHE_DIR, OPTKERN_CACHE_DIR) point at an
empty temporary directory: the first call there is what a new user meets
after ``pip install``.  The same process then times the call again (the
"second" column: everything loaded).  A second fresh process on the now
populated cache times the first call again ("warm first": a user's next run).

Only the call is timed (imports and data set-up are not).  With the JIT
service (``optkern._jit``) a cold call is served by the ahead-of-time Cython
kernel while a compile-server process fills the cache; ``--settle`` waits,
after the timed calls, for those compiles to finish before the process exits,
so that the warm process sees the cache a longer-running program would have
left (without it a short program leaves the compiles running detached, and
the warm column shows whatever they finished by then).

    python asv_benchmarks/first_call.py [--only NAME ...] [--demo] [--settle] [--repeat R]
    python asv_benchmarks/first_call.py --step-check [--repeat R]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_benchmarks/first_call.py --lean

prints a Markdown table (median over R cold processes; the load average is
printed with it).  ``--demo`` adds ``optkern demo`` (a whole process, timed
from outside: start-up included, cold and warm).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from optkern.first_calls import ENTRIES, cache_env as _env, run_child


def _run_child(name, cache, settle):
    setup, call, _ = ENTRIES[name]
    return run_child(setup, call, cache, settle=settle, timeout=600)


def _run_demo(cache):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "optkern", "demo"], env=_env(cache), check=True,
                   capture_output=True, timeout=1800)
    return time.perf_counter() - t0


def _fmt(t):
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


DEFAULT_CALL_SHAPES = ((4096, 784, 10), (512, 1000, 1000), (1024, 4096, 100))


def default_call(repeat=30):
    """Item 2 of issue 13: ``loss_and_grad`` with default arguments against
    the same call with ``check_input=False`` (float32 softmax, alpha=1e-4,
    out= given to both), interleaved, medians; warm kernels."""
    import numpy as np

    import optkern
    rows = []
    for n, d, k in DEFAULT_CALL_SHAPES:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n, d)).astype(np.float32)
        y = rng.integers(0, k, n)
        W = (0.01 * rng.standard_normal((d, k))).astype(np.float32)
        b = np.zeros(k, np.float32)
        out = (np.empty_like(W), np.empty_like(b))
        calls = {"default": lambda: optkern.loss_and_grad(X, y, W, b, alpha=1e-4, out=out),
                 "check_input=False": lambda: optkern.loss_and_grad(
                     X, y, W, b, alpha=1e-4, out=out, check_input=False)}
        for f in calls.values():        # compile / load, outside the timing
            f()
        from optkern import _jit
        _jit.wait(900)                  # the Numba kernels, not their twins
        for f in calls.values():
            f()
        times = {name: [] for name in calls}
        for _ in range(repeat):
            for name, f in calls.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) for name, v in times.items()}
        rows.append(((n, d, k), med["default"], med["check_input=False"]))
    print("| (n, d, k) float32 softmax | default | check_input=False | ratio |")
    print("|---|---|---|---|")
    for shape, a, c in rows:
        print(f"| {shape} | {a * 1e3:.3f} ms | {c * 1e3:.3f} ms | {a / c:.2f} |")


# issue 13 item 3: what a user writes, with NumPy/SciPy (softmax, mean loss);
# shared with ``optkern bench --rows lean``
from optkern.bench import (LEAN_CASES, lean_log, lean_problem, lean_softmax,  # noqa: E402
                           settled_blocks)


STEP_CHECK_SIZES = (1_000, 10_000_000)


def step_check(repeat=15):
    """The optimizers' default step (check_finite=True: the NaN/inf scan inside
    the update kernel's call) against check_finite=False, float32, Adam and
    SGD, per compiled CPU backend, interleaved (the order alternates each
    round), medians of ``repeat`` rounds."""
    import numpy as np

    import optkern
    backends = [b for b in ("numba", "numba-parallel", "cython")
                if b in optkern.available_backends("updates")]
    print("| optimizer | backend | elements | check_finite=False | default | ratio |")
    print("|---|---|---|---|---|---|")
    for n in STEP_CHECK_SIZES:
        for label, cls, kw in (("Adam", optkern.Adam, {}), ("SGD", optkern.SGD, {})):
            for backend in backends:
                rng = np.random.default_rng(0)
                g = (1e-3 * rng.standard_normal(n)).astype(np.float32)
                opts = [cls([rng.standard_normal(n).astype(np.float32)], lr=1e-6,
                            backend=backend, check_finite=check, **kw)
                        for check in (False, True)]
                for o in opts:
                    o.step([g])
                t0 = time.perf_counter()
                opts[0].step([g])
                # ~5 ms a sample (an oversubscribed parallel step can take 30 ms)
                calls_per = max(1, min(2000, int(5e-3 / (time.perf_counter() - t0))))
                times = [[], []]
                for r in range(repeat):
                    for j in ((0, 1) if r % 2 == 0 else (1, 0)):
                        o = opts[j]
                        t0 = time.perf_counter()
                        for _ in range(calls_per):
                            o.step([g])
                        times[j].append((time.perf_counter() - t0) / calls_per)
                off, on = (statistics.median(t) for t in times)
                print(f"| {label} | {backend} | {n:.0e} | {off * 1e6:.1f} us | "
                      f"{on * 1e6:.1f} us | {on / off:.3f} |", flush=True)


def lean_ratio(n, d, k, density, loss, repeat=15):
    """(median optkern default call, median lean pipeline), seconds, interleaved,
    both warm (the Numba kernels compiled: _jit.wait)."""
    import numpy as np
    import optkern
    from optkern import _jit
    X, y, W, b = lean_problem(n, d, k, density, loss)
    lean = lean_softmax if loss == "softmax" else lean_log
    yl = y.astype(np.float32) if loss == "log" else y
    calls = {"optkern": lambda: optkern.loss_and_grad(X, y, W, b, loss=loss),
             "lean": lambda: lean(X, yl, W, b)}
    ref, got = calls["lean"](), calls["optkern"]()
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-3)     # the same objective
    _jit.wait(900)
    # alternating blocks, each after 0.1 s of untimed calls: call by call,
    # OpenBLAS's workers still spin after a lean call and take the second core
    # from optkern's parallel kernel (optkern.bench.settled_blocks)
    optk, lean_t = settled_blocks([calls["optkern"], calls["lean"]], 0.05 * repeat, repeat)
    return statistics.median(optk), statistics.median(lean_t)


def lean_table(repeat=15):
    import numpy as np
    np.ones((4, 4)) @ np.ones((4, 4))      # NumPy's BLAS loaded before threadpoolctl looks
    try:
        import threadpoolctl
        blas = [(p.get("internal_api"), p.get("architecture"), p.get("num_threads"))
                for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    except ImportError:
        blas = "threadpoolctl not installed"
    print(f"NumPy BLAS (threadpoolctl): {blas}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE')}, OPENBLAS_L2_SIZE="
          f"{os.environ.get('OPENBLAS_L2_SIZE')}")
    print("| problem (float32) | optkern `loss_and_grad`, default arguments | lean NumPy/SciPy "
          "| ratio (lean / optkern) |")
    print("|---|---|---|---|")
    for label, n, d, k, density, loss in LEAN_CASES:
        a, c = lean_ratio(n, d, k, density, loss, repeat)
        print(f"| {label} {loss} | {a * 1e3:.3f} ms | {c * 1e3:.3f} ms | {c / a:.2f}x |",
              flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="entry names: " + ", ".join(ENTRIES))
    ap.add_argument("--demo", action="store_true", help="also time `optkern demo`")
    ap.add_argument("--settle", action="store_true",
                    help="let background compiles finish before the cold process exits")
    ap.add_argument("--repeat", type=int, default=1, help="cold processes per entry (median)")
    ap.add_argument("--default-call", action="store_true",
                    help="instead: the default loss_and_grad against check_input=False")
    ap.add_argument("--step-check", action="store_true",
                    help="instead: the optimizers' default step against check_finite=False")
    ap.add_argument("--lean", action="store_true",
                    help="instead: the default loss_and_grad against the lean NumPy/SciPy "
                         "pipeline a user writes (issue 13 item 3); run it with "
                         "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE")
    args = ap.parse_args(argv)
    if args.step_check:
        print(f"load average before: {os.getloadavg()}", flush=True)
        step_check(args.repeat if args.repeat > 1 else 15)
        print(f"load average after: {os.getloadavg()}")
        return
    if args.lean:
        print(f"load average before: {os.getloadavg()}", flush=True)
        lean_table(args.repeat if args.repeat > 1 else 15)
        print(f"load average after: {os.getloadavg()}")
        return
    if args.default_call:
        print(f"load average before: {os.getloadavg()}", flush=True)
        default_call()
        print(f"load average after: {os.getloadavg()}")
        return
    names = args.only or list(ENTRIES)
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows = []
    for name in names:
        firsts, seconds, warms, served = [], [], [], None
        for _ in range(args.repeat):
            cache = tempfile.mkdtemp(prefix="optkern-first-call-")
            try:
                cold = _run_child(name, cache, args.settle)
                warm = _run_child(name, cache, False)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            firsts.append(cold["first"])
            seconds.append(cold["second"])
            warms.append(warm["first"])
            served = cold["served"]
        row = (ENTRIES[name][2], statistics.median(firsts), statistics.median(warms),
               statistics.median(seconds), served)
        rows.append(row)
        print(f"{name}: cold first {_fmt(row[1])}, warm first {_fmt(row[2])}, "
              f"second {_fmt(row[3])}, served {served}", flush=True)
    if args.demo:
        cache = tempfile.mkdtemp(prefix="optkern-first-call-")
        try:
            cold = _run_demo(cache)
            warm = _run_demo(cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        rows.append(("`optkern demo` (whole process)", cold, warm, float("nan"), None))
    print(f"\nload average after: {os.getloadavg()}\n")
    print("| entry point | first call, empty cache | first call, warm cache | second call |")
    print("|---|---|---|---|")
    for label, cold, warm, second, _ in rows:
        sec = "" if second != second else _fmt(second)
        print(f"| {label} | {_fmt(cold)} | {_fmt(warm)} | {sec} |")


if __name__ == "__main__":
    main()
