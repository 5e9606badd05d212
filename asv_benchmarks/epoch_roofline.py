"""How far a dense compiled epoch is from the machine's limit, and where its time goes.

    python asv_benchmarks/epoch_roofline.py                 # the issue's headline shape
    python asv_benchmarks/epoch_roofline.py --grid          # d x k x batch x dtype grid
    python asv_benchmarks/epoch_roofline.py --grid-subset   # 8 shapes covering each value
    python asv_benchmarks/epoch_roofline.py --breakdown     # + the per-stage breakdown
    python asv_benchmarks/epoch_roofline.py --breakdown --breakdown-shape 240000,32,8,32,float32
    python asv_benchmarks/epoch_roofline.py --json out.json
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        python asv_benchmarks/epoch_roofline.py --e2e --backends numba   # vs the peers

Per shape: one compiled epoch of LinearClassifier(softmax, Adam) on n x d
rows (median over epochs 2..5 of a fit, per backend), its roofline (the
larger of bytes of X / streaming-read bandwidth and 2 n d k multiply-adds /
multiply-add rate, both rates measured by compiled probes in this run,
``optkern._epoch_roofline``) and the fraction roofline / epoch (1 = at the
limit).  The probes run before and after the shapes; the table uses the
larger rate of the two runs.  Beside it, the shuffled-row floor: X's rows read
once in a random order (``R.shuffled_read_seconds``, the best of one core and
all cores and of a few prefetch distances), which no epoch that keeps the
fixed row order can beat.  docs/epochs.md has the results.
"""

import argparse
import itertools
import json
import os
import sys

import numpy as np

from optkern import _epoch_roofline as R

HEADLINE = (240_000, 64, 8, 256, "float32")
GRID_D = (32, 64, 256, 784)
GRID_K = (2, 8, 10, 100)
GRID_BATCH = (32, 256, 4096)
GRID_DTYPES = ("float32", "float64")
# grid rows: X near 60 MB (float32) at every d, capped so a shape takes seconds
GRID_BYTES = 60 * 2 ** 20


# --grid-subset: 8 shapes of the grid holding every d, k, batch size and dtype
# of it at least twice (the full grid is 96 shapes: about an hour per backend
# on a loaded 2-core machine)
GRID_SUBSET = ((32, 2, 32, "float32"), (32, 100, 4096, "float64"),
               (64, 8, 256, "float32"), (64, 10, 32, "float64"),
               (256, 10, 4096, "float32"), (256, 2, 256, "float64"),
               (784, 100, 256, "float32"), (784, 8, 4096, "float64"))


def _grid_rows(d):
    return min(240_000, GRID_BYTES // (4 * d))


def _shapes(args):
    if args.grid_subset:
        return [(_grid_rows(d), d, k, bs, dt) for d, k, bs, dt in GRID_SUBSET]
    if not args.grid:
        return [HEADLINE]
    out = []
    for d, k, bs, dt in itertools.product(GRID_D, GRID_K, GRID_BATCH, GRID_DTYPES):
        out.append((_grid_rows(d), d, k, bs, dt))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", action="store_true", help="the issue's d x k x batch x dtype grid")
    ap.add_argument("--grid-subset", action="store_true",
                    help="8 shapes of the grid covering each d, k, batch and dtype twice")
    ap.add_argument("--breakdown", action="store_true", help="per-stage times (serial epoch)")
    ap.add_argument("--breakdown-shape", default=None, metavar="N,D,K,BATCH,DTYPE",
                    help="the shape --breakdown splits (default: the headline "
                         "240000,64,8,256,float32), e.g. 240000,32,8,32,float32")
    ap.add_argument("--backends", default="numba,numba-parallel,cython")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--e2e", action="store_true", help="end to end against the peers")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's own)")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]

    print(f"load average: {os.getloadavg()}", flush=True)
    if args.e2e:
        return end_to_end(backends, args.repeats, args.json, args.torch_threads)
    probes = R.Probes()
    rows = []
    for n, d, k, bs, dt in _shapes(args):
        X, y = R.problem(n, d, k, np.dtype(dt))
        limit, bound = probes.roofline(n, d, k, dt)
        # the shuffled-row floor: X's rows read once in a random order
        floor, dist = R.shuffled_read_seconds(X)
        print(f"{n:>7} x {d:>3} {dt:<7} reading the rows shuffled: {floor * 1e3:8.2f} ms "
              f"(prefetch distance {dist}), {floor / limit:.1f}x the roofline", flush=True)
        # (the BLAS pair below runs after the epochs: OpenBLAS's worker threads
        # spin for ~0.1 s after a call, holding the core the Cython epoch's
        # helper thread would use)
        fits = []
        for be in backends:
            halves = _helper_halves()
            try:
                sec, _ = R.epoch_seconds(X, y, bs, be, args.epochs)
            except (ValueError, ImportError) as exc:   # backend not available here
                print(f"  {be}: skipped ({exc})")
                continue
            # the Cython epoch's second halves run by its helper thread in this fit
            halves = _helper_halves() - halves
            fits.append(dict(n=n, d=d, k=k, batch=bs, dtype=dt, backend=be, epoch_s=sec,
                             roofline_s=limit, bound=bound, fraction=limit / sec,
                             shuffled_read_s=floor, helper_halves=halves,
                             load=os.getloadavg()[0]))
        # the same multiply-adds as the BLAS runs them best: two whole-X GEMMs
        blas = R.blas_pair_seconds(X, k)
        print(f"{n:>7} x {d:>3} x {k:>3} {dt:<7} the BLAS pair (X @ W, X.T @ P): "
              f"{blas * 1e3:8.2f} ms, {blas / limit:.1f}x the roofline", flush=True)
        for r in fits:
            r["blas_pair_s"] = blas
            sec = r["epoch_s"]
            print(f"{n:>7} x {d:>3} x {k:>3} batch {bs:>4} {dt:<7} {r['backend']:<14} "
                  f"epoch {sec * 1e3:8.2f} ms  roofline {limit * 1e3:6.2f} ms ({bound})  "
                  f"fraction {limit / sec:.3f} ({sec / limit:.1f}x), "
                  f"{sec / blas:.1f}x the BLAS pair; helper halves {r['helper_halves']}",
                  flush=True)
        rows.extend(fits)
    again = R.Probes()
    # the limit is the best either probe run saw; the lines above used the first
    bw = max(probes.bytes_per_s, again.bytes_per_s)
    fma = {dt: max(probes.fmas_per_s(dt), again.fmas_per_s(dt)) for dt in GRID_DTYPES}
    for r in rows:
        r["roofline_s"], r["bound"] = R.roofline_seconds(r["n"], r["d"], r["k"], r["dtype"],
                                                         bw, fma[r["dtype"]])
        r["fraction"] = r["roofline_s"] / r["epoch_s"]
    probe_info = dict(read_GBps=[probes.bytes_per_s / 1e9, again.bytes_per_s / 1e9],
                      fma_G_per_s={dt: [probes.fmas_per_s(dt) / 1e9, again.fmas_per_s(dt) / 1e9]
                                   for dt in ("float32", "float64")})
    print("probes (first run, second run):", json.dumps(probe_info))
    stages = None
    if args.breakdown:
        n, d, k, bs, dt = HEADLINE
        if args.breakdown_shape:
            n, d, k, bs, dt = args.breakdown_shape.split(",")
            n, d, k, bs = int(n), int(d), int(k), int(bs)
        X, y = R.problem(n, d, k, np.dtype(dt))
        stages = R.stage_seconds(X, y, bs, epochs=args.epochs)
        print(f"stages of one serial epoch, {n} x {d} x {k} batch {bs} {dt} (ms):")
        for name, sec in stages.items():
            print(f"  {name:<28} {sec * 1e3:8.2f}")
    print("fractions with the larger probe rates:")
    for r in rows:
        print(f"  {r['n']:>7} x {r['d']:>3} x {r['k']:>3} batch {r['batch']:>4} {r['dtype']:<7} "
              f"{r['backend']:<14} roofline {r['roofline_s'] * 1e3:6.2f} ms ({r['bound']})  "
              f"fraction {r['fraction']:.3f} ({1 / r['fraction']:.1f}x); shuffled read "
              f"{r['shuffled_read_s'] / r['roofline_s']:.1f}x the roofline, epoch "
              f"{r['epoch_s'] / r['shuffled_read_s']:.1f}x the shuffled read; BLAS pair "
              f"{r['blas_pair_s'] / r['roofline_s']:.1f}x the roofline, epoch "
              f"{r['epoch_s'] / r['blas_pair_s']:.1f}x the BLAS pair")
    _summary(rows)
    print(f"load average: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dict(rows=rows, probes=probe_info, stages=stages,
                           load=os.getloadavg()), fh, indent=1)
    return 0


def _helper_halves():
    try:
        from optkern.kernels.cython import _epochs
        return _epochs.helper_stats()["helper"]
    except (ImportError, AttributeError):
        return 0


def _summary(rows):
    """Per backend: how many shapes are within 3x of the roofline and of the
    BLAS pair, and the medians (the issue's target is 3x of the roofline)."""
    for be in sorted({r["backend"] for r in rows}):
        rs = [r for r in rows if r["backend"] == be]
        over = np.array([r["epoch_s"] / r["roofline_s"] for r in rs])
        over_blas = np.array([r["epoch_s"] / r["blas_pair_s"] for r in rs])
        blas = np.array([r["blas_pair_s"] / r["roofline_s"] for r in rs])
        print(f"{be}: {len(rs)} shapes; epoch / roofline median {np.median(over):.1f}x, "
              f"{int((over <= 3).sum())} within 3x; epoch / BLAS pair median "
              f"{np.median(over_blas):.1f}x, {int((over_blas <= 3).sum())} within 3x; "
              f"the BLAS pair itself / roofline median {np.median(blas):.1f}x, "
              f"{int((blas > 3).sum())} shapes where it is above 3x")


def _torch_fit(torch, X, y, k, epochs, batch, lr, alpha, seed=0):
    torch.manual_seed(seed)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    model = torch.nn.Linear(X.shape[1], k)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.Adam([{"params": [model.weight], "weight_decay": alpha},
                            {"params": [model.bias], "weight_decay": 0.0}], lr=lr, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    n = X.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(Xt[idx]), yt[idx]).backward()
            opt.step()
    return model


def end_to_end(backends, repeats, json_path, torch_threads=None):
    import time

    import optkern
    from sklearn.linear_model import SGDClassifier

    n, d, k, bs, _ = HEADLINE
    X, y = R.problem(n + 60_000, d, k, np.float32, seed=0)
    Xtr, ytr, Xte, yte = X[:n], y[:n], X[n:], y[n:]
    epochs, lr, alpha = 5, 1e-3, 1e-4
    calls = {}
    for be in backends:
        def fit(be=be):
            m = optkern.LinearClassifier(optimizer="adam", lr=lr, alpha=alpha, batch_size=bs,
                                         max_epochs=epochs, tol=None, random_state=0,
                                         backend=be).fit(Xtr, ytr)
            return lambda: m.score(Xte, yte)
        calls[f"optkern {be}"] = fit
    def sk():
        m = SGDClassifier(loss="log_loss", max_iter=epochs, tol=None, alpha=alpha,
                          random_state=0).fit(Xtr, ytr)
        return lambda: m.score(Xte, yte)
    calls["sklearn SGDClassifier(log_loss, max_iter=5, tol=None)"] = sk
    try:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)

        def tfit():
            m = _torch_fit(torch, Xtr, ytr, k, epochs, bs, lr, alpha)
            with torch.no_grad():
                pred = m(torch.from_numpy(Xte)).argmax(1).numpy()
            return lambda: float(np.mean(pred == yte))
        calls[f"PyTorch {torch.__version__} loop, Adam(fused=True), "
              f"{torch.get_num_threads()} threads"] = tfit
    except ImportError:
        print("torch not installed: its row is skipped")
    for name, fn in calls.items():   # warm-up: compile / load every kernel
        t0 = time.perf_counter()
        fn()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.2f} s", flush=True)
    times = {name: [] for name in calls}
    accs = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            score = fn()
            times[name].append(time.perf_counter() - t0)
            accs[name].append(score())
            print(f"  {name}: {times[name][-1]:.3f} s, accuracy {accs[name][-1]:.4f}",
                  flush=True)
    ours = min(np.median(times[f"optkern {be}"]) for be in backends)
    print(f"{n} x {d} x {k} float32, {epochs} epochs, batch {bs}, Adam lr {lr}, "
          f"alpha {alpha}; medians of {repeats} interleaved runs")
    print("| implementation | median fit | test accuracy | time / optkern's best |")
    print("|---|---:|---:|---:|")
    rows = []
    for name in calls:
        med = float(np.median(times[name]))
        acc = float(np.median(accs[name]))
        rows.append(dict(name=name, median_s=med, accuracy=acc, ratio=med / ours))
        print(f"| {name} | {med:.3f} s | {acc:.4f} | {med / ours:.1f}x |")
    print(f"load average: {os.getloadavg()}")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(dict(e2e=rows, load=os.getloadavg()), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
