"""Peak memory of a fit on 1,000,000 x 2^20 CSR rows with 50 nonzeros each (issue 12).

    python asv_benchmarks/sparse_memory.py [--rows 1000000] [--epochs 2]

Builds X (float32 values, int32 indices: about 600 MB), then fits the default
LinearClassifier (2 classes) and reports the process's peak resident memory
above what it held once X existed (ru_maxrss), and tracemalloc's peak of the
fit's own allocations (NumPy arrays are traced).  The issue's bound: below twice
the CSR's size plus the model and optimizer state.
"""

import argparse
import resource
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=2 ** 20)
    p.add_argument("--nnz", type=int, default=50)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--classes", type=int, default=2,
                   help="> 2: labels drawn at random (a memory measurement, not a fit "
                        "quality one), n_classes outputs")
    p.add_argument("--no-tracemalloc", action="store_true",
                   help="peak RSS only (tracemalloc slows a fit on huge models)")
    args = p.parse_args(argv)
    import optkern

    n, d, m = args.rows, args.features, args.nnz
    # warm the compiled epoch first (its code is not part of the fit's data)
    rng = np.random.default_rng(0)
    # (built from its arrays: sp.random(200, 2^22, ...) samples cell ids from a
    # 200 x 2^22 range with an array of that size, GBs that would set ru_maxrss)
    # (a narrow one: the compiled code does not depend on n_features, and a
    # warm-up at 2^22 x 100 outputs would itself set the peak)
    dw = min(d, 2 ** 13)
    small = sp.csr_matrix((rng.random(200 * m, dtype=np.float32),
                           rng.integers(0, dw, 200 * m, dtype=np.int32),
                           np.arange(0, 200 * m + 1, m)), shape=(200, dw))
    optkern.LinearClassifier(max_epochs=1).fit(small, rng.integers(0, args.classes, 200))
    indptr = np.arange(0, n * m + 1, m, dtype=np.int32 if n * m < 2 ** 31 else np.int64)
    X = sp.csr_matrix((rng.random(n * m, dtype=np.float32),
                       rng.integers(0, d, n * m, dtype=np.int32), indptr), shape=(n, d))
    if args.classes == 2:
        w = rng.standard_normal(d).astype(np.float32)
        y = (X @ w > 0).astype(np.int64)
        del w
    else:
        y = rng.integers(0, args.classes, n)
    size = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2 ** 20
    base = rss_mb()
    print(f"X: {n} x {d}, {X.nnz} nonzeros, CSR {size:.0f} MB (data {X.data.dtype}, "
          f"indices {X.indices.dtype}); peak RSS before the fit {base:.0f} MB")
    if not args.no_tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    clf = optkern.LinearClassifier(max_epochs=args.epochs, tol=None, random_state=0).fit(X, y)
    dt = time.perf_counter() - t0
    peak = 0
    if not args.no_tracemalloc:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    model = clf.coef_.nbytes / 2 ** 20
    print(f"fit: {dt:.1f} s for {clf.n_iter_} epochs ({clf._optimizer_name()}, "
          f"batch {clf._batch_size(n)}), train accuracy {clf.score(X[:100000], y[:100000]):.3f}")
    print(f"tracemalloc peak of the fit: {peak / 2 ** 20:.0f} MB; peak RSS {rss_mb():.0f} MB "
          f"(+{rss_mb() - base:.0f} MB over before the fit); model {model:.1f} MB per copy")
    state = sum(a.nbytes for g in clf._opt_state["state"].values() for a in g.values()
                if isinstance(a, np.ndarray)) / 2 ** 20
    print(f"optimizer state {state:.0f} MB; bound (2 x CSR + model + state): "
          f"{2 * size + model + state:.0f} MB; "
          f"RSS after X / CSR = {rss_mb() / size:.2f}")


if __name__ == "__main__":
    main()
