"""The issue's two performance targets, measured side by side in one process.

    cd asv_benchmarks && python headline.py            # ~1-2 minutes
    cd asv_benchmarks && python headline.py --quick    # fewer repeats

1. Bandwidth: at 1e7 float32 elements, for Adam, SGD-momentum and RMSprop,
   the best backend's GB/s vs the streaming probe's GB/s (same traffic
   pattern, measured interleaved with the step; target >= 90%).  The serial
   probe is printed too: it is the ceiling of the one-thread backends.
2. Python-level step cost: at 1e3 elements, the median wall time of one
   ``opt.step(grad)`` per backend (target <= 5 us), with check_finite off and
   on, beside the bare compiled-kernel call (the Numba driver or Cython
   function called directly with prepared arguments) to show where the time
   goes.

Uses the same helpers as the asv suite (benchmarks/bench_updates.py,
benchmarks/probes.py).  docs/benchmarks.md records the latest output.
"""

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import optkern  # noqa: E402
from optkern import _backend  # noqa: E402
from optkern.kernels import drivers  # noqa: E402
from optkern.kernels.rules import state_names  # noqa: E402

from benchmarks import bench_updates as bu  # noqa: E402
from benchmarks import probes  # noqa: E402

BANDWIDTH_TARGET = 0.90
OVERHEAD_TARGET_US = 5.0


def cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bare_kernel_call(opt, grad):
    """A zero-argument callable running only the compiled update, with the
    arguments ``opt.step`` would prepare, or None (NumPy backend, or the
    optimizer's internals changed).  Private API: for diagnosis only."""
    if opt.backend == "numpy":
        return None
    try:
        g = opt._groups[0]
        spec = opt._spec
        user = opt._hyper_tuple(opt.param_groups[0])
        hyper, _ = spec.prepare(g.step + 1, g.scalars, *user)
        flat_grads = (grad.reshape(-1),)
        kernel = getattr(g, "kernel", None)
        states = getattr(g, "state_list", None)
        if states is None:
            states = [g.states[name] for name in state_names(spec)]
        if kernel is None:
            if opt.backend == "cython":
                fn = getattr(_backend.cython_module(), spec.name)
                parallel = g.size >= _backend.PARALLEL_MIN_SIZE

                def kernel(*args):
                    return fn(*args, parallel)
            else:
                mod = drivers.module_for(spec.name)
                kernel = mod.parallel if opt.backend == "numba-parallel" else mod.serial
        call = (lambda: kernel(g.flat, flat_grads, *states, None, hyper, 0.0, None,
                               g.offsets))
        call()
        return call
    except Exception as exc:  # internals moved on: report, do not fail
        print(f"# bare kernel call unavailable for {opt.backend}: {exc!r}")
        return None


def bandwidth_table(n, labels, backends, min_time, rounds):
    """Per (optimizer, backend): ``rounds`` interleaved step/probe measurements
    (parallel probe), one against the serial probe; medians and spread."""
    rows = []
    old = bu.MIN_TIME
    bu.MIN_TIME = min_time
    try:
        for label in labels:
            for backend in backends:
                opt, grad = bu.make_optimizer(label, backend, n)
                opt.step(grad)
                opt.step(grad)
                par = [bu.measure_step(opt, grad, n, label, parallel_probe=True)
                       for _ in range(rounds)]
                ser = bu.measure_step(opt, grad, n, label, parallel_probe=False)
                fracs = [r["fraction"] for r in par]
                rows.append(dict(
                    label=label, backend=backend,
                    ms=1e3 * float(np.median([r["step_s"] for r in par])),
                    gbs=float(np.median([r["gb_per_s"] for r in par])),
                    probe=float(np.median([r["probe_gb_per_s"] for r in par])),
                    frac=float(np.median(fracs)), frac_lo=min(fracs), frac_hi=max(fracs),
                    frac_best=(min(r["probe_best_s"] for r in par)
                               / min(r["step_best_s"] for r in par)
                               * par[0]["fraction_best"] * par[0]["step_best_s"]
                               / par[0]["probe_best_s"]),
                    probe_serial=ser["probe_gb_per_s"],
                    frac_serial=ser["fraction"],
                    bpe=par[0]["bytes_per_element"]))
                del opt, grad
    finally:
        bu.MIN_TIME = old
    return rows


def overhead_table(labels, backends, min_time):
    rows = []
    n = 1_000
    for label in labels:
        for backend in backends:
            row = dict(label=label, backend=backend)
            for check in (False, True):
                opt, grad = bu.make_optimizer(label, backend, n, check_finite=check)
                opt.step(grad)
                opt.step(grad)
                row["checked" if check else "unchecked"] = 1e6 * probes.median_seconds(
                    lambda: opt.step(grad), min_time=min_time, min_reps=20)
                if not check:
                    bare = bare_kernel_call(opt, grad)
                    row["kernel"] = (float("nan") if bare is None else 1e6 *
                                     probes.median_seconds(bare, min_time=min_time,
                                                           min_reps=20))
            rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter sampling")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved step/probe rounds per row (default 5, --quick 2)")
    ap.add_argument("--size", type=int, default=10_000_000,
                    help="elements for the bandwidth table (default 1e7)")
    args = ap.parse_args(argv)
    min_time = 0.3 if args.quick else 0.5
    rounds = args.rounds or (2 if args.quick else 5)

    backends = [b for b in bu.BACKENDS if b in optkern.available_backends()]
    labels = bu.HEADLINE
    cmd = "cd asv_benchmarks && python " + " ".join(["headline.py"] + sys.argv[1:])
    print(f"# optkern headline benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# command: {cmd}")
    print(f"# machine: {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}, numba {__import__('numba').__version__}, "
          f"optkern {optkern.__version__}")
    print(f"# backends available: {', '.join(backends)}; NUMBA_NUM_THREADS="
          f"{__import__('numba').config.NUMBA_NUM_THREADS}")
    blas = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}
    if blas:
        print(f"# note: {blas} are set; they slow NumPy's BLAS but not the "
              "elementwise update kernels measured here")
    probes.warm_up()

    t0 = time.perf_counter()
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = bandwidth_table(args.size, labels, backends, min_time, rounds)
    print(f"\n## Bandwidth at {args.size:.0e} float32 elements "
          f"(target: best backend >= {BANDWIDTH_TARGET:.0%} of probe)\n")
    print("| optimizer | backend | B/elem | step ms | GB/s | probe GB/s | % of probe "
          "(min-max over rounds) | best-of % | serial probe GB/s | % of serial probe |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['backend']} | {r['bpe']} | {r['ms']:.2f} | "
              f"{r['gbs']:.1f} | {r['probe']:.1f} | {100 * r['frac']:.0f}% "
              f"({100 * r['frac_lo']:.0f}-{100 * r['frac_hi']:.0f}) | "
              f"{100 * r['frac_best']:.0f}% | "
              f"{r['probe_serial']:.1f} | {100 * r['frac_serial']:.0f}% |")
    print("\n| optimizer | best backend | % of probe | target met |")
    print("|---|---|---:|---|")
    for label in labels:
        best = max((r for r in rows if r["label"] == label), key=lambda r: r["frac"])
        ok = best["frac"] >= BANDWIDTH_TARGET
        print(f"| {label} | {best['backend']} | {100 * best['frac']:.0f}% | "
              f"{'yes' if ok else 'NO'} |")

    orows = overhead_table(labels, backends, min_time / 2)
    print(f"\n## Python-level step cost at 1e3 float32 elements, microseconds "
          f"(target <= {OVERHEAD_TARGET_US:g} us)\n")
    print("| optimizer | backend | step, check_finite=False | step, check_finite=True "
          "| bare kernel call | API share |")
    print("|---|---|---:|---:|---:|---:|")
    for r in orows:
        share = ("n/a" if not np.isfinite(r["kernel"])
                 else f"{r['unchecked'] - r['kernel']:.1f}")
        print(f"| {r['label']} | {r['backend']} | {r['unchecked']:.1f} | "
              f"{r['checked']:.1f} | "
              f"{'n/a' if not np.isfinite(r['kernel']) else format(r['kernel'], '.1f')} | "
              f"{share} |")
    best = min(orows, key=lambda r: r["unchecked"])
    print(f"\nfastest step at 1e3: {best['label']} on {best['backend']}, "
          f"{best['unchecked']:.1f} us (check_finite=False); target "
          f"{'met' if best['unchecked'] <= OVERHEAD_TARGET_US else 'NOT met'}")
    print(f"# took {time.perf_counter() - t0:.0f} s; load average at end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
