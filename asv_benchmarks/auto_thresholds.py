"""Side-by-side step timings behind backend="auto"'s thresholds.

    cd asv_benchmarks && python auto_thresholds.py [--optimizer adam] [--rounds 7]

For each dtype and size, one Python-level ``opt.step`` (check_finite off) on
each CPU backend, interleaved round by round so that a neighbour's load hits
every backend alike; prints the median microseconds per step and which backend
is fastest.  src/optkern/_backend.py's CYTHON_MAX_SIZE and PARALLEL_MIN_SIZE
are read off this table (README, "Backends").
"""

import argparse
import os
import statistics
import time

import numpy as np

import optkern

BACKENDS = ("numba", "numba-parallel", "cython")


def _time_calls(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def measure(name, dtype, n, rounds):
    kw = {"lr": 1e-3} if name == "sgld" else {}
    steps = {}
    for be in BACKENDS:
        if be not in optkern.available_backends():
            continue
        p = np.zeros(n, dtype)
        g = np.full(n, 0.1, dtype)
        opt = optkern.OPTIMIZERS[name]([p], backend=be, check_finite=False, **kw)
        opt.step([g])  # compile / load from the cache before timing
        steps[be] = (lambda o=opt, g=g: o.step([g]))
    reps = max(3, int(2e6 // n))
    samples = {be: [] for be in steps}
    for _ in range(rounds):
        for be, fn in steps.items():
            samples[be].append(_time_calls(fn, reps))
    return {be: statistics.median(v) * 1e6 for be, v in samples.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizer", default="adam", choices=sorted(optkern.OPTIMIZERS))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", type=int, nargs="+",
                    default=[1_000, 4_000, 16_000, 64_000, 200_000, 1_000_000])
    args = ap.parse_args(argv)
    print(f"# {args.optimizer} step, median us over {args.rounds} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print("| dtype | elements | " + " | ".join(BACKENDS) + " | fastest |")
    print("|---|---:|" + "---:|" * len(BACKENDS) + "---|")
    for dtype in (np.float32, np.float64):
        for n in args.sizes:
            res = measure(args.optimizer, dtype, n, args.rounds)
            cells = [f"{res[b]:.1f}" if b in res else "n/a" for b in BACKENDS]
            best = min(res, key=res.get)
            print(f"| {np.dtype(dtype).name} | {n} | " + " | ".join(cells) + f" | {best} |")
    print(f"# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
