"""The Cython dense epoch's scores of small k: vectors across the outputs
(``_epochs.set_scores_across(True)``, the default) against the dot-product
tiles (``False``), and the whole epoch against Numba's (docs/epochs.md,
"Ninth round: vectors across the outputs").

    python asv_benchmarks/epoch_across.py [--stage] [--epoch] [--rounds 3]
        [--shapes D,K,BATCH,DTYPE;...]

Interleaved per shape and round (dot, across[, numba]); medians over the
rounds.  The stage: ``_epochs.scores_pass`` over one shuffled epoch (best of
3 calls a round).  The epoch: ``_epoch_roofline.epoch_seconds`` (median of
epochs 2..3 of a fit).  Rows per shape as the roofline grid:
min(240,000, 60 MiB / (4 d)).
"""
import argparse
import itertools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from epoch_roofline import _grid_rows  # noqa: E402

from optkern._epoch_roofline import epoch_seconds, problem  # noqa: E402
from optkern.kernels.cython import _epochs as E  # noqa: E402

DEFAULT = [(64, 8, 256, "float32")] + [
    (d, k, bs, dt) for dt, d, k, bs in itertools.product(
        ("float32", "float64"), (32, 64, 256, 784), (2, 8, 10), (32, 256))]


def _best(fn, reps=3):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", action="store_true")
    ap.add_argument("--epoch", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shapes", default=None)
    a = ap.parse_args()
    if not (a.stage or a.epoch):
        a.stage = a.epoch = True
    shapes = DEFAULT if a.shapes is None else [
        (int(s.split(",")[0]), int(s.split(",")[1]), int(s.split(",")[2]), s.split(",")[3])
        for s in a.shapes.split(";")]
    print(f"# load {os.getloadavg()[0]:.2f}; simd level {E.simd_level()}", flush=True)
    cols = (["stage dot", "stage across"] if a.stage else []) + (
        ["epoch dot", "epoch across", "epoch numba"] if a.epoch else [])
    print("n,d,k,batch,dtype," + ",".join(c.replace(" ", "_") + "_ms" for c in cols)
          + ",across/dot(stage),across/numba(epoch)", flush=True)
    for d, k, bs, dt in shapes:
        n = _grid_rows(d)
        X, y = problem(n, d, k, np.dtype(dt))
        order = np.random.default_rng(2).permutation(n).astype(np.int64)
        rng = np.random.default_rng(3)
        W = (0.1 * rng.standard_normal((d, k))).astype(dt)
        b = (0.1 * rng.standard_normal(k)).astype(dt)
        res = {c: [] for c in cols}
        for _ in range(a.rounds):
            for across in (False, True):
                E.set_scores_across(across)
                name = "across" if across else "dot"
                if a.stage:
                    res["stage " + name].append(
                        _best(lambda: E.scores_pass(X, order, W, b, bs)))
                if a.epoch:
                    res["epoch " + name].append(epoch_seconds(X, y, bs, "cython", 3)[0])
            if a.epoch:
                res["epoch numba"].append(epoch_seconds(X, y, bs, "numba", 3)[0])
        E.set_scores_across(True)
        med = {c: 1e3 * float(np.median(v)) for c, v in res.items()}
        ratios = []
        ratios.append(f"{med['stage across'] / med['stage dot']:.2f}" if a.stage else "")
        ratios.append(f"{med['epoch across'] / med['epoch numba']:.2f}" if a.epoch else "")
        print(f"{n},{d},{k},{bs},{dt}," + ",".join(f"{med[c]:.1f}" for c in cols)
              + "," + ",".join(ratios), flush=True)
    print(f"# load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
