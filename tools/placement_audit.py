"""Audit: do optkern.loss_and_grad's results depend on where its arrays lie?

A Numba loop compiled with ``reassoc`` that stores into one array and sums
into a scalar vectorises behind a run-time overlap check, and runs the scalar
loop (another order of the sum, other last bits) when the stored array lies
within a few vectors after a loaded one (docs/losses.md, "Precision").  This
script places W in one large buffer and then each of dW (``out``), db, b, X
(dense; X.data for CSR) and the float targets at 40 offsets right after W and
once far, and compares the loss, dW and db bits of every call: dense fused,
dense BLAS and CSR, serial and parallel, float32 and float64, k in 1, 2, 8,
10, 16 (binary losses: 1).  It prints every case whose bits moved and the
number of placements tried.

    python tools/placement_audit.py [loss ...]

(about 15 minutes for the default losses on two cores; the epochs' own
placement test is tests/test_epoch_placement.py)
"""
import sys, numpy as np, scipy.sparse as sp
import optkern
from optkern.kernels import loss_rules
def problem(loss, dtype, k, n, d, rng):
    spec = loss_rules.LOSS_RULES[loss]
    X = rng.standard_normal((n, d)).astype(dtype)
    X[rng.random((n, d)) < 0.4] = 0
    if spec.target == "multiclass":
        y = rng.integers(0, k, n).astype(np.int64)
    elif spec.target == "binary":
        y = rng.integers(0, 2, (n, k)).astype(dtype)
    else:
        y = rng.standard_normal((n, k)).astype(dtype)
    W = rng.standard_normal((d, k)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    return X, y, W, b
def run(loss, dtype, k, layout, method, backend="numba", n=13, d=7):
    rng = np.random.default_rng(k)
    X0, y0, W0, b0 = problem(loss, dtype, k, n, d, rng)
    spec = loss_rules.LOSS_RULES[loss]
    if spec.target == "binary" and k == 1:
        y0 = y0[:, 0]
    size = 6 * (n * d + n * k + 3 * d * k) + 1200
    buf = np.zeros(size, dtype)
    res = {}
    tried = 0
    w_at = 64
    win = list(range(0, 40)) + [200]
    # which array moves: the others sit at fixed far places
    for mover in ("dW", "db", "b", "X", "y"):
        if mover == "y" and spec.target == "multiclass":
            continue
        for o in win:
            buf[:] = 0
            W = buf[w_at:w_at + d * k].reshape(d, k); W[:] = W0
            base = w_at + d * k
            slots = {"dW": d * k, "db": k, "b": k, "X": n * d, "y": y0.size}
            at = {}
            far = base + 300
            for name in ("dW", "db", "b", "X", "y"):
                if name == mover:
                    at[name] = base + o
                else:
                    at[name] = far
                    far += slots[name] + 37
            # the mover must not overlap the others: skip if so
            spans = sorted((at[nm], at[nm] + slots[nm]) for nm in at)
            spans.append((w_at, w_at + d * k))
            spans.sort()
            if any(spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1)):
                continue
            dW = buf[at["dW"]:at["dW"] + d * k].reshape(d, k)
            db = buf[at["db"]:at["db"] + k]
            b = buf[at["b"]:at["b"] + k]; b[:] = b0
            Xd = buf[at["X"]:at["X"] + n * d].reshape(n, d); Xd[:] = X0
            if spec.target == "multiclass":
                y = y0
            else:
                y = buf[at["y"]:at["y"] + y0.size].reshape(y0.shape); y[:] = y0
            X = sp.csr_matrix(Xd) if layout == "csr" else Xd
            if layout == "csr" and mover == "X":
                # CSR: place X.data itself
                Xc = sp.csr_matrix(X0)
                data = buf[at["X"]:at["X"] + Xc.nnz]; data[:] = Xc.data
                X = sp.csr_matrix((data, Xc.indices, Xc.indptr), shape=X0.shape, copy=False)
            v, _, _ = optkern.loss_and_grad(X, y, W, b, loss=loss, alpha=0.01, backend=backend,
                                            out=(dW, db), method=method if layout == "dense" else "auto")
            tried += 1
            res.setdefault((np.float64(v).tobytes(), dW.tobytes(), db.tobytes()), []).append((mover, o))
    return tried, res
if __name__ == "__main__":
    total = 0; moved = []
    losses = sys.argv[1:] or ["softmax", "multiclass_hinge", "squared", "huber", "hinge", "log", "modified_huber"]
    for loss in losses:
        for dt in (np.float32, np.float64):
            for k in (1, 2, 8, 10, 16):
                if loss_rules.LOSS_RULES[loss].target == "multiclass" and k == 1:
                    continue
                if loss_rules.LOSS_RULES[loss].target == "binary" and k != 1:
                    continue
                for layout, method in (("dense", "fused"), ("dense", "blas"), ("csr", "auto")):
                    for backend in ("numba", "numba-parallel"):
                        tried, res = run(loss, dt, k, layout, method, backend)
                        total += tried
                        if len(res) > 1:
                            moved.append((loss, np.dtype(dt).name, k, layout, method, backend, len(res),
                                          [v[:3] for v in res.values()]))
                            print("MOVED", moved[-1], flush=True)
        print(loss, "done, placements so far", total, flush=True)
    print("total placements", total, "configs moved", len(moved))
