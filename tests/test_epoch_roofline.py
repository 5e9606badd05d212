"""The epoch roofline (optkern._epoch_roofline) and its ``optkern bench`` row.

Not a measurement: the arithmetic of the limit, and that the row reports
every compiled backend against it at tiny sizes.
"""

import numpy as np
import pytest

from optkern import _epoch_roofline as R
from optkern import bench


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roofline_is_the_slower_of_memory_and_arithmetic(dtype):
    n, d, k = 1000, 64, 8
    item = np.dtype(dtype).itemsize
    # bandwidth such that reading X takes 1 s; FMA rate such that 2ndk takes 2 s
    bw = n * d * item / 1.0
    fma = 2 * n * d * k / 2.0
    assert R.roofline_seconds(n, d, k, dtype, bw, fma) == pytest.approx((2.0, "arithmetic"))
    assert R.roofline_seconds(n, d, k, dtype, bw / 4, fma) == pytest.approx((4.0, "memory"))
    assert R.epoch_bytes(n, d, dtype) == n * d * item
    assert R.epoch_fmas(n, d, k) == 2 * n * d * k


def test_bench_epoch_row_reports_each_backend_and_the_roofline():
    rows = bench.bench_epoch(600, 8, 3, 32, tiny=True)
    probe = [r for r in rows if r.kind == "probe"]
    ours = [r for r in rows if r.kind == "optkern"]
    assert len(probe) == 1 and ours
    assert {r.impl for r in ours} == {f"optkern {b}" for b in bench._available_compiled("epochs")}
    for r in ours:
        assert 0 < r.best_s <= r.median_s
        frac = probe[0].median_s / r.median_s
        assert f"{frac:.3f} of the roofline" in r.detail
    best = min(ours, key=lambda r: r.median_s)
    assert best.best_backend and probe[0].speedup == pytest.approx(probe[0].median_s / best.median_s)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_stage_runs_on_the_last_minibatch_gradient(dtype):
    # the stage breakdown's optimizer loop ran on a zero gradient, which let
    # Adam's moments go subnormal and made that stage slower than the epoch
    d, k, bs, w_mean = 5, 3, 16, 0.5
    dWT = np.arange(1, d * k + 1, dtype=dtype).reshape(k, d)   # the pass writes dW^T
    dWp = dWT.reshape(1, d, k).copy()
    dbp = np.array([[2.0, -4.0, 8.0]], dtype)
    G, db = R.last_gradient(dWp, dbp, bs, w_mean)
    assert G.dtype == dtype and db.dtype == dtype and G.flags.c_contiguous
    np.testing.assert_allclose(G, dWT.T / (bs * w_mean), rtol=1e-6)
    np.testing.assert_allclose(db, dbp[0] / (bs * w_mean), rtol=1e-6)
    # and from a real fit's scratch: a gradient, not zeros
    X, y = R.problem(600, d, k, np.dtype(dtype))
    _, args, _, _ = R._captured_epoch_args(X, y, bs, "adam", 1)
    G, db = R.last_gradient(args[8], args[9], bs, args[-1])
    assert G.shape == (d, k) and np.all(np.isfinite(G)) and np.any(G != 0)


def test_stage_breakdown_runs_and_its_stages_add_up():
    # `epoch_roofline.py --breakdown` called stage_seconds, which raised a
    # NameError after the epoch's arguments became named records; every
    # stage must come back as a time, and the split must cover the epoch
    X, y = R.problem(600, 8, 3, np.dtype(np.float32))
    out = R.stage_seconds(X, y, 32, epochs=1, repeats=1)
    for stage in ("epoch", "epoch (fit)", "scores", "batch passes", "rule (alone)",
                  "optimizer", "bookkeeping", "order (NumPy permutation)"):
        assert np.isfinite(out[stage]) and out[stage] > 0, stage
    assert out["rest"] == pytest.approx(out["epoch"] - out["batch passes"] - out["optimizer"]
                                        - out["bookkeeping"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shuffled_read_probe_reads_every_row_once(dtype):
    # the shuffled-row floor's loop must read exactly the rows of the order
    # (a probe that skipped rows would report a floor too low)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((257, 19)).astype(dtype)
    order = rng.permutation(257).astype(np.int64)
    for dist in R.ROW_PREFETCH_DISTANCES:
        assert R._read_rows(X, order, dist) == pytest.approx(float(X.sum(dtype=np.float64)),
                                                             rel=1e-4)
        half = order[:100]
        assert R._read_rows(X, half, dist) == pytest.approx(
            float(X[half].sum(dtype=np.float64)), rel=1e-4)
        assert R._read_rows_parallel(X, order, dist, 3) == pytest.approx(
            float(X.sum(dtype=np.float64)), rel=1e-4)
    sec, dist = R.shuffled_read_seconds(X, repeats=1)
    assert 0 < sec < np.inf and dist in R.ROW_PREFETCH_DISTANCES
