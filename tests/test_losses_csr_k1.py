"""The CSR kernels' one-output loop (templates/loss_row_scalar.py ``_csr_chunk_k1``).

At k = 1 the scalar-rule losses run a loop that keeps four rows' scores in
scalar registers instead of the general row loop (kernels/_simd.py).  It must
give the same bits: each row's score summed in nonzero order with the same
fused multiply-adds, the rules, intercept terms and scatters in row order.
The general loop at k = 2 computes column 0 exactly as it computes the only
column at k = 1 (lane 0 of the same vector code), so column 0 of a k = 2 call
whose first column is the k = 1 problem is the reference, bit for bit.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from optkern.kernels import loss_drivers as drv
from optkern.kernels import loss_reference as ref
from optkern.losses import LOSSES, loss_and_grad

# the losses with a scalar rule (one output at a time): the k = 1 loop's
SCALAR = sorted(n for n, s in LOSSES.items() if s.kind == "scalar")


def csr_problem(n, d, dtype, seed, max_row, empty_every=0):
    """Rows of 0..max_row nonzeros at sorted distinct columns (canonical)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, min(max_row, d) + 1, n)
    if empty_every:
        counts[::empty_every] = 0
    cols = [np.sort(rng.choice(d, c, replace=False)) for c in counts]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    indices = (np.concatenate(cols) if n else np.zeros(0)).astype(np.int32)
    data = rng.standard_normal(indices.shape[0]).astype(dtype)
    X = sp.csr_matrix((data, indices, indptr), shape=(n, d))
    assert X.has_canonical_format
    return X, rng


def targets(loss, rng, n, dtype):
    if LOSSES[loss].target == "binary":
        return rng.integers(0, 2, n).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def run(mod, X, Y, sw, W, b, alpha, chunks):
    d, k = W.shape
    dW = np.full_like(W, np.nan)
    db = None if b is None else np.full_like(b, np.nan)
    scratch = np.empty(drv.scratch_size(chunks, d, k), W.dtype)
    args = (X.data, X.indices, X.indptr, Y, sw, W, b, alpha, 0.15, 0.1, dW, db, scratch)
    if chunks == 1:
        v = mod.csr_serial(*args)
    else:
        v = mod.csr_parallel(*args, chunks)
    return v, dW, db


@settings(deadline=None, max_examples=40)
@given(loss=st.sampled_from(SCALAR), dtype=st.sampled_from([np.float32, np.float64]),
       n=st.integers(1, 41), d=st.integers(1, 30), max_row=st.integers(0, 30),
       empty_every=st.sampled_from([0, 3]), chunks=st.sampled_from([1, 2, 3]),
       weights=st.booleans(), intercept=st.booleans(),
       alpha=st.sampled_from([0.0, 0.05]), seed=st.integers(0, 2 ** 16))
def test_k1_loop_is_the_general_loop_bit_for_bit(loss, dtype, n, d, max_row, empty_every,
                                                 chunks, weights, intercept, alpha, seed):
    """csr_serial / csr_parallel at k = 1 (the k = 1 loop) against column 0 of
    the same call at k = 2 (the general loop): dW and db the same bits; the
    loss against the NumPy reference."""
    X, rng = csr_problem(n, d, dtype, seed, max_row, empty_every)
    chunks = min(chunks, n)
    mod = drv.module_for(loss)
    y = targets(loss, rng, n, dtype)
    W = rng.standard_normal((d, 1)).astype(dtype)
    b = rng.standard_normal(1).astype(dtype) if intercept else None
    sw = rng.uniform(0.1, 2.0, n).astype(dtype) if weights else None
    v1, dW1, db1 = run(mod, X, y[:, None].copy(), sw, W, b, alpha, chunks)
    W2 = np.hstack([W, rng.standard_normal((d, 1)).astype(dtype)])
    Y2 = np.stack([y, targets(loss, rng, n, dtype)], axis=1)
    b2 = None if b is None else np.concatenate([b, rng.standard_normal(1).astype(dtype)])
    v2, dW2, db2 = run(mod, X, Y2, sw, W2, b2, alpha, chunks)
    np.testing.assert_array_equal(dW1[:, 0], dW2[:, 0])
    if b is not None:
        np.testing.assert_array_equal(db1[0], db2[0])
    want, _, _ = ref.loss_and_grad(X, y[:, None], W, b, loss, alpha, 0.15, sw, 0.1)
    t = 1e-10 if dtype == np.float64 else 2e-4
    assert v1 == pytest.approx(float(want), rel=t, abs=t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["log", "squared", "hinge"])
def test_k1_chunk_called_directly_equals_the_kernel(loss, dtype):
    """The k = 1 loop by itself (forced: ``_csr_chunk_k1``) gives what
    csr_serial gives, and csr_parallel with two and three chunks agrees with
    them to the order of the partial sums (the parallel kernel's documented
    reduction order)."""
    X, rng = csr_problem(203, 500, dtype, 7, 60, empty_every=17)
    n, d = X.shape
    mod = drv.module_for(loss)
    Y = targets(loss, rng, n, dtype)[:, None].copy()
    W = rng.standard_normal((d, 1)).astype(dtype)
    b = rng.standard_normal(1).astype(dtype)
    sw = rng.uniform(0.1, 2.0, n).astype(dtype)
    inv_w = drv.inverse_weight(sw, n)
    acc = np.zeros((d, 1), dtype)
    accb = np.full(1, np.nan, dtype)
    total = mod._csr_chunk_k1(X.data, X.indices, X.indptr, Y, sw, W, b, 0.1, inv_w, acc,
                              accb, 0, n)
    v, dW, db = run(mod, X, Y, sw, W, b, 0.0, 1)
    np.testing.assert_array_equal(acc, dW)
    np.testing.assert_array_equal(accb, db)
    assert total * inv_w == v
    for chunks in (2, 3):
        vp, dWp, dbp = run(mod, X, Y, sw, W, b, 0.0, chunks)
        t = 1e-12 if dtype == np.float64 else 1e-5
        assert vp == pytest.approx(v, rel=t)
        np.testing.assert_allclose(dWp, dW, rtol=t, atol=t * np.abs(dW).max())
        np.testing.assert_allclose(dbp, db, rtol=t, atol=t)


@pytest.mark.parametrize("backend", ["numba", "numba-parallel", "auto"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k1_through_loss_and_grad_agrees_with_numpy(backend, dtype):
    """The issue-13 problem's shape in small (binary log loss, one output,
    many features, ~20 nonzeros a row), default arguments."""
    X, rng = csr_problem(301, 4096, dtype, 3, 40)
    y = rng.integers(0, 2, 301)
    W = (0.1 * rng.standard_normal((4096, 1))).astype(dtype)
    b = np.zeros(1, dtype)
    got = loss_and_grad(X, y, W, b, loss="log", alpha=1e-4, backend=backend)
    want = loss_and_grad(X, y, W, b, loss="log", alpha=1e-4, backend="numpy")
    t = 1e-10 if dtype == np.float64 else 2e-4
    assert got[0] == pytest.approx(want[0], rel=t)
    np.testing.assert_allclose(got[1], want[1], rtol=t, atol=t * np.abs(want[1]).max())
    np.testing.assert_allclose(got[2], want[2], rtol=t, atol=t)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("layout", ["C", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduce_chunks_adds_the_partials_in_chunk_order(k, layout, dtype):
    """csr_parallel's reduction: dW += the partials of chunks 1, 2, ... in
    that order, element by element (the flat loop for C-contiguous dW, the
    plain (d, k) loop otherwise: the same additions, the same bits), db the
    partial sums in chunk order, the loss the slots' sum."""
    d, chunks = 1001, 3
    rng = np.random.default_rng(k)
    scratch = rng.standard_normal(drv.scratch_size(chunks, d, k)).astype(dtype)
    start = rng.standard_normal((d, 2 * k)).astype(dtype)
    dW = start.copy()[:, ::2] if layout == "strided" else start[:, :k].copy()
    want = dW.copy()
    db = np.full(k, np.nan, dtype)
    want_b = np.zeros(k, dtype)
    want_total = 0.0
    for c in range(chunks):
        acc, accb, _, _, slot = drv._chunk_views(scratch, c, d, k)
        if c > 0:
            want += acc.reshape(d, k)
        want_b = accb.copy() if c == 0 else want_b + accb
        want_total += float(slot[0])
    total = drv.reduce_chunks(scratch, chunks, dW, db)
    np.testing.assert_array_equal(dW, want)
    np.testing.assert_array_equal(db, want_b)
    assert total == want_total


def _broken(X, pos, value):
    bad = X.copy()
    bad.indices = bad.indices.copy()
    bad.indices[pos] = value
    return bad


@pytest.mark.parametrize("check_input", [True, False])
@pytest.mark.parametrize("backend", ["numba", "numba-parallel", "auto"])
@pytest.mark.parametrize("loss", ["log", "squared"])
def test_k1_out_of_range_indices_raise_before_out_is_written(loss, backend, check_input):
    """Column indices outside [0, d) at one output (the one-output loop's
    calls): ValueError before anything is written, default call or not."""
    X, rng = csr_problem(7, 5, np.float64, 11, 4)
    X = X[np.diff(X.indptr) > 0]            # every row holds a nonzero
    n = X.shape[0]
    y = targets(loss, rng, n, np.float64)
    W = rng.standard_normal((5, 1))
    b = np.zeros(1)
    for pos in (0, X.nnz // 2, X.nnz - 1):
        for value in (5, 9, -1, np.iinfo(np.int32).max, np.iinfo(np.int32).min):
            bad = _broken(X, pos, value)
            dW = np.full((5, 1), 7.0)
            db = np.full(1, 7.0)
            with pytest.raises(ValueError, match="column indices outside"):
                loss_and_grad(bad, y, W, b, loss=loss, backend=backend, out=(dW, db),
                              check_input=check_input)
            assert np.all(dW == 7.0) and np.all(db == 7.0)
            with pytest.raises(ValueError, match="column indices outside"):
                loss_and_grad(bad, y, W, b, loss=loss, backend=backend,
                              check_input=check_input)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k1_loop_with_a_decreasing_indptr_matches_the_general_loop(dtype):
    """A row whose indptr entry decreases (a malformed matrix whose cached
    canonical flag says otherwise, called past loss_and_grad's checks) is
    empty in both loops: the one-output loop's common row length is taken
    from signed differences, never a huge unsigned one."""
    rng = np.random.default_rng(3)
    d, n = 20, 9
    indptr = np.array([0, 3, 1, 4, 6, 6, 2, 8, 9, 12], np.int32)
    indices = rng.integers(0, d, 12).astype(np.int32)
    data = rng.standard_normal(12).astype(dtype)
    X = sp.csr_matrix((data, indices, np.arange(10, dtype=np.int32) * 0 + indptr[:10]),
                      shape=(n, d))
    X.indptr = indptr
    mod = drv.module_for("log")
    y = rng.integers(0, 2, n).astype(dtype)
    W = rng.standard_normal((d, 1)).astype(dtype)
    b = rng.standard_normal(1).astype(dtype)
    v1, dW1, db1 = run(mod, X, y[:, None].copy(), None, W, b, 0.0, 1)
    W2 = np.hstack([W, W])
    v2, dW2, db2 = run(mod, X, np.stack([y, y], axis=1), None, W2, np.concatenate([b, b]),
                       0.0, 1)
    np.testing.assert_array_equal(dW1[:, 0], dW2[:, 0])
    np.testing.assert_array_equal(db1[0], db2[0])
    assert 2 * v1 == pytest.approx(v2, rel=1e-6)


# ------------------------------------------ the two-pass one-output kernels
#
# csr_serial / csr_parallel at k = 1 run every row's score first, then the
# rules and scatters (when the scores fit the scratch: drv.k1_room), and
# check the column indices in the first pass.  The fused one-output loop
# (``_csr_chunk_k1``, per chunk, added as csr_parallel adds its chunks) is the
# reference, bit for bit: the kernels before the change.


def fused_reference(mod, X, Y, sw, W, b, alpha, chunks):
    """csr_serial / csr_parallel as they ran before the two passes: the
    penalty's gradient into dW, chunk 0's rows added into dW by the fused
    loop, chunks 1.. into zeroed partials added after in chunk order, db and
    the loss the chunks' sums in chunk order."""
    d = W.shape[0]
    n = Y.shape[0]
    inv_w = drv.inverse_weight(sw, n)
    dW = np.full_like(W, np.nan)
    pen = drv.penalty_set(W, dW, alpha, 0.15)
    total = 0.0
    gb = None
    for c in range(chunks):
        acc = dW if c == 0 else np.zeros_like(W)
        accb = np.full(1, np.nan, W.dtype)
        part = mod._csr_chunk_k1(X.data, X.indices, X.indptr, Y, sw, W, b, 0.1, inv_w,
                                 acc, accb, c * n // chunks, (c + 1) * n // chunks)
        # csr_parallel keeps a chunk's sum in its slot of the scratch (X's dtype)
        total += part if chunks == 1 else float(W.dtype.type(part))
        if c > 0:
            dW += acc
        gb = accb.copy() if c == 0 else gb + accb
    return total * inv_w + pen, dW, (None if b is None else gb)


@settings(deadline=None, max_examples=60)
@given(loss=st.sampled_from(SCALAR), dtype=st.sampled_from([np.float32, np.float64]),
       n=st.integers(1, 70), d=st.integers(1, 40), max_row=st.integers(0, 30),
       empty_every=st.sampled_from([0, 2, 5]), chunks=st.sampled_from([1, 2, 3]),
       weights=st.booleans(), intercept=st.booleans(),
       alpha=st.sampled_from([0.0, 0.05]), seed=st.integers(0, 2 ** 16))
def test_two_pass_kernels_are_the_fused_loop_bit_for_bit(loss, dtype, n, d, max_row,
                                                         empty_every, chunks, weights,
                                                         intercept, alpha, seed):
    """Both of the kernels' one-output branches (two passes when n <=
    k1_room(d), else the fused loop after a scan of the indices: both occur
    here) give the fused loop's bits, serial and in 2-3 chunks; the loss
    and the gradient agree with the NumPy reference."""
    X, rng = csr_problem(n, d, dtype, seed, max_row, empty_every)
    chunks = min(chunks, n)
    mod = drv.module_for(loss)
    Y = targets(loss, rng, n, dtype)[:, None].copy()
    W = rng.standard_normal((d, 1)).astype(dtype)
    b = rng.standard_normal(1).astype(dtype) if intercept else None
    sw = rng.uniform(0.1, 2.0, n).astype(dtype) if weights else None
    v, dW, db = run(mod, X, Y, sw, W, b, alpha, chunks)
    vr, dWr, dbr = fused_reference(mod, X, Y, sw, W, b, alpha, chunks)
    np.testing.assert_array_equal(dW, dWr)
    if b is not None:
        np.testing.assert_array_equal(db, dbr)
    assert v == vr
    want, gW, gb = ref.loss_and_grad(X, Y, W, b, loss, alpha, 0.15, sw, 0.1)
    t = 1e-10 if dtype == np.float64 else 2e-4
    assert v == pytest.approx(float(want), rel=t, abs=t)
    np.testing.assert_allclose(dW, gW, rtol=t, atol=t * max(1.0, np.abs(gW).max()))


@pytest.mark.parametrize("chunks", [1, 2, 3])
@pytest.mark.parametrize("many_rows", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_return_nan_and_write_nothing_for_an_index_out_of_range(dtype, many_rows,
                                                                         chunks):
    """The one-output kernels check the column indices themselves (in the
    score pass, or in a scan before the fused loop when the scores do not
    fit the scratch): NaN, and dW, db untouched, for an index outside
    [0, d) anywhere -- first row, a group of four, the leftover rows."""
    d = 6
    n = drv.k1_room(d) + 9 if many_rows else 19
    X, rng = csr_problem(n, d, dtype, 5, 4)
    assert (n > drv.k1_room(d)) == many_rows
    mod = drv.module_for("log")
    Y = targets("log", rng, n, dtype)[:, None].copy()
    W = rng.standard_normal((d, 1)).astype(dtype)
    b = np.zeros(1, dtype)
    scratch = np.empty(drv.scratch_size(chunks, d, 1), dtype)
    for pos in (0, X.nnz // 2, X.nnz - 1):
        for value in (d, d + 100, -1, np.iinfo(np.int32).max, np.iinfo(np.int32).min):
            bad = _broken(X, pos, value)
            dW = np.full((d, 1), 7, dtype)
            db = np.full(1, 7, dtype)
            args = (bad.data, bad.indices, bad.indptr, Y, None, W, b, 0.01, 0.15, 0.1, dW, db,
                    scratch)
            v = mod.csr_serial(*args) if chunks == 1 else mod.csr_parallel(*args, chunks)
            assert np.isnan(v)
            assert np.all(dW == 7) and np.all(db == 7)


@pytest.mark.parametrize("check_input", [True, False])
@pytest.mark.parametrize("backend", ["numba", "numba-parallel", "auto", "cython"])
@pytest.mark.parametrize("many_rows", [False, True])
def test_out_of_range_through_loss_and_grad_on_both_k1_branches(many_rows, backend,
                                                                 check_input):
    """loss_and_grad skips its scan of the indices when the Numba kernel
    checks them: the same ValueError before ``out`` is written, on the
    two-pass branch and the fused one, and on the backends that scan."""
    d = 6
    n = drv.k1_room(d) + 9 if many_rows else 19
    X, rng = csr_problem(n, d, np.float32, 8, 4)
    y = rng.integers(0, 2, n)
    W = rng.standard_normal((d, 1)).astype(np.float32)
    b = np.zeros(1, np.float32)
    for pos in (0, X.nnz - 1):
        bad = _broken(X, pos, d + 3)
        dW = np.full((d, 1), 7, np.float32)
        db = np.full(1, 7, np.float32)
        with pytest.raises(ValueError, match="column indices outside"):
            loss_and_grad(bad, y, W, b, loss="log", backend=backend, out=(dW, db),
                          check_input=check_input)
        assert np.all(dW == 7) and np.all(db == 7)


@pytest.mark.parametrize("mode", ["aot", "sync"])
def test_out_of_range_when_the_twin_serves(mode):
    """backend "auto" with the Cython twin serving (the Numba kernel not
    ready: forced with OPTKERN_JIT=aot) scans the indices itself."""
    from optkern import _jit
    X, rng = csr_problem(40, 9, np.float64, 2, 5)
    y = rng.integers(0, 2, 40)
    W = rng.standard_normal((9, 1))
    b = np.zeros(1)
    bad = _broken(X, X.nnz // 2, 9)
    old = _jit.set_mode(mode)
    _jit.forget()
    try:
        dW = np.full((9, 1), 7.0)
        db = np.full(1, 7.0)
        for check_input in (True, False):
            with pytest.raises(ValueError, match="column indices outside"):
                loss_and_grad(bad, y, W, b, loss="log", out=(dW, db), check_input=check_input)
            assert np.all(dW == 7.0) and np.all(db == 7.0)
        got = loss_and_grad(X, y, W, b, loss="log")
    finally:
        _jit.set_mode(old)
        _jit.forget()
    want = loss_and_grad(X, y, W, b, loss="log", backend="numpy")
    assert got[0] == pytest.approx(want[0], rel=1e-10)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("backend", ["numba", "numba-parallel", "auto"])
@pytest.mark.parametrize("many_rows", [False, True])
def test_non_finite_X_raises_before_out_on_both_k1_branches(many_rows, backend, bad):
    """NaN/inf in X's data at one output, default arguments: the ValueError
    naming X, before ``out`` is written; with check_input=False the
    non-finite result comes back (no index error: the NaN was not one)."""
    d = 6
    n = drv.k1_room(d) + 9 if many_rows else 19
    X, rng = csr_problem(n, d, np.float64, 4, 4)
    y = rng.integers(0, 2, n)
    W = rng.standard_normal((d, 1))
    b = np.zeros(1)
    for pos in (0, X.nnz - 1):
        Xb = X.copy()
        Xb.data[pos] = bad
        dW = np.full((d, 1), 7.0)
        db = np.full(1, 7.0)
        with pytest.raises(ValueError, match="NaN or infinity"):
            loss_and_grad(Xb, y, W, b, loss="log", backend=backend, out=(dW, db))
        assert np.all(dW == 7.0) and np.all(db == 7.0)
        value, gW, _ = loss_and_grad(Xb, y, W, b, loss="log", backend=backend,
                                     check_input=False)
        assert not (np.isfinite(value) and np.isfinite(gW).all())
