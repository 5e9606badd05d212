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
    args = p.parse_args(argv)
    import optkern

    n, d, m = args.rows, args.features, args.nnz
    # warm the compiled epoch first (its code is not part of the fit's data)
    rng = np.random.default_rng(0)
    small = sp.random(200, d, density=m / d, format="csr", dtype=np.float32, random_state=0)
    optkern.LinearClassifier(max_epochs=1).fit(small, rng.integers(0, 2, 200))
    indptr = np.arange(0, n * m + 1, m, dtype=np.int32 if n * m < 2 ** 31 else np.int64)
    X = sp.csr_matrix((rng.random(n * m, dtype=np.float32),
                       rng.integers(0, d, n * m, dtype=np.int32), indptr), shape=(n, d))
    w = rng.standard_normal(d).astype(np.float32)
    y = (X @ w > 0).astype(np.int64)
    size = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2 ** 20
    base = rss_mb()
    print(f"X: {n} x {d}, {X.nnz} nonzeros, CSR {size:.0f} MB (data {X.data.dtype}, "
          f"indices {X.indices.dtype}); peak RSS before the fit {base:.0f} MB")
    tracemalloc.start()
    t0 = time.perf_counter()
    clf = optkern.LinearClassifier(max_epochs=args.epochs, tol=None, random_state=0).fit(X, y)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    model = clf.coef_.nbytes / 2 ** 20
    print(f"fit: {dt:.1f} s for {clf.n_iter_} epochs ({clf._optimizer_name()}, "
          f"batch {clf._batch_size(n)}), train accuracy {clf.score(X[:100000], y[:100000]):.3f}")
    print(f"tracemalloc peak of the fit: {peak / 2 ** 20:.0f} MB; peak RSS {rss_mb():.0f} MB "
          f"(+{rss_mb() - base:.0f} MB over before the fit); model {model:.1f} MB per copy")
    print(f"bound (2 x CSR + model + state): {2 * size + 4 * model:.0f} MB; "
          f"RSS after X / CSR = {rss_mb() / size:.2f}")


if __name__ == "__main__":
    main()
