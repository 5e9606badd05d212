"""Bad input to loss_and_grad / predict_scores: a clear error naming the
argument, raised before any output buffer is written."""

import numpy as np
import pytest
import scipy.sparse as sp

from optkern.losses import loss_and_grad, predict_scores


def problem(k=3, n=6, d=4, dtype=np.float64):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(dtype)
    W = rng.standard_normal((d, k)).astype(dtype)
    b = np.zeros(k, dtype)
    y = rng.integers(0, k, n)
    return X, y, W, b


def call_keeps_out(match, exc=ValueError, X=None, y=None, W=None, b="same", **kw):
    X0, y0, W0, b0 = problem()
    X = X0 if X is None else X
    y = y0 if y is None else y
    W = W0 if W is None else W
    b = b0 if isinstance(b, str) else b
    dW = np.full(W.shape, 7.0, W.dtype) if isinstance(W, np.ndarray) and W.ndim == 2 \
        else np.full(W0.shape, 7.0)
    db = None if b is None else np.full(np.shape(b), 7.0, getattr(b, "dtype", np.float64))
    out = kw.pop("out", (dW, db))
    with pytest.raises(exc, match=match):
        loss_and_grad(X, y, W, b, out=out, **kw)
    assert np.all(dW == 7.0), "dW was written before the error"
    if db is not None:
        assert np.all(db == 7.0), "db was written before the error"


@pytest.mark.parametrize("backend", ["numpy", "numba", "numba-parallel", "auto"])
def test_labels_out_of_range(backend):
    call_keeps_out(r"y must hold class indices in \[0, 3\)", y=np.array([0, 1, 2, 3, 0, 1]),
                   backend=backend)
    call_keeps_out(r"y must hold class indices", y=np.array([0, -1, 2, 1, 0, 1]),
                   backend=backend)


def test_labels_of_wrong_kind():
    call_keeps_out("integer class indices", y=np.array([0, 1.5, 2, 1, 0, 1]))
    call_keeps_out("numeric", TypeError, y=np.array(list("abcabc")))
    X, y, W, b = problem(k=1)
    # three classes given to a binary loss
    with pytest.raises(ValueError, match="0/1 labels"):
        loss_and_grad(X, np.array([0, 1, 2, 0, 1, 2]), W, b, loss="log")
    # a binary loss with several output columns
    X, y, W, b = problem(k=3)
    with pytest.raises(ValueError, match="n_outputs == 1"):
        loss_and_grad(X, y, W, b, loss="hinge")


def test_y_wrong_length_or_shape():
    call_keeps_out("y has 5 rows but X has 6", y=np.zeros(5, int))
    call_keeps_out(r"y must have shape \(6, 3\)", y=np.zeros(6), loss="squared")
    call_keeps_out("1-D class indices", y=np.zeros((6, 2), int))


@pytest.mark.parametrize("where", ["X", "y"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_inputs_checked_by_default(where, value):
    X, y, W, b = problem()
    if where == "X":
        X = X.copy()
        X[2, 1] = value
        call_keeps_out("X contains NaN or infinity", X=X)
        with pytest.raises(ValueError, match="X contains NaN"):
            loss_and_grad(sp.csr_matrix(X), y, W, b)
        # the check can be switched off: then the result is simply non-finite
        loss, dW, db = loss_and_grad(X, y, W, b, check_input=False, backend="numba")
        assert not np.isfinite(loss) or not np.all(np.isfinite(dW))
    else:
        yr = np.zeros((6, 3))
        yr[0, 0] = value
        call_keeps_out("y contains NaN or infinity", y=yr, loss="squared")
        if np.isnan(value):
            call_keeps_out("integer class indices", y=np.array([0, 1, value, 1, 0, 1]))


def test_shape_mismatches():
    X, y, W, b = problem()
    call_keeps_out("W has 5 rows but X has 4 features", W=np.zeros((5, 3)))
    call_keeps_out(r"b must have shape \(3,\)", b=np.zeros(2))
    call_keeps_out("W must be 2-D", W=np.zeros(4), out=None)
    call_keeps_out("X must be 2-D", X=np.zeros(6), out=None)
    with pytest.raises(ValueError, match=r"out\[0\] \(dW\) must be a float64 array of shape"):
        loss_and_grad(X, y, W, b, out=(np.zeros((3, 4)), np.zeros(3)))
    with pytest.raises(ValueError, match=r"out\[1\] \(db\)"):
        loss_and_grad(X, y, W, b, out=(np.zeros((4, 3)), np.zeros(2)))
    with pytest.raises(ValueError, match="C-contiguous"):
        loss_and_grad(X, y, W, b, out=(np.zeros((4, 3), order="F"), np.zeros(3)))


def test_dtype_mismatch():
    X, y, W, b = problem()
    call_keeps_out("W has dtype float32 but X has float64", TypeError,
                   W=W.astype(np.float32), b=b)
    call_keeps_out("b has dtype float32 but X has float64", TypeError, b=b.astype(np.float32))
    with pytest.raises(ValueError, match=r"out\[0\] \(dW\) must be a float64"):
        loss_and_grad(X, y, W, b, out=(np.zeros((4, 3), np.float32), np.zeros(3)))
    with pytest.raises(TypeError, match="float32 or float64"):
        loss_and_grad(X.astype(np.int64), y, W, b)


def test_csr_problems():
    X, y, W, b = problem()
    Xs = sp.csr_matrix(X)
    # unsorted indices
    bad = Xs.copy()
    row = slice(bad.indptr[0], bad.indptr[1])
    bad.indices[row] = bad.indices[row][::-1].copy()
    bad.data[row] = bad.data[row][::-1].copy()
    bad.has_sorted_indices = False
    call_keeps_out("unsorted or duplicate", X=bad)
    # duplicates
    dup = sp.csr_matrix((np.ones(3), np.array([0, 0, 1]), np.array([0, 2, 3, 3, 3, 3, 3])),
                        shape=(6, 4))
    dup.has_canonical_format = False
    call_keeps_out("unsorted or duplicate", X=dup)
    # wrong shape: more columns than W has rows
    call_keeps_out("W has 4 rows but X has 5 features",
                   X=sp.csr_matrix(np.hstack([X, X[:, :1]])))
    # a CSR structure that does not fit its declared shape
    broken = sp.csr_matrix(X)
    broken.indices = broken.indices.copy()
    broken.indices[0] = 9
    call_keeps_out("column indices outside", X=broken)


def test_bad_sample_weights():
    for sw, match in [(-np.ones(6), "non-negative"), (np.full(6, np.nan), "NaN or infinity"),
                      (np.full(6, np.inf), "NaN or infinity"), (np.ones(5), r"shape \(6,\)")]:
        call_keeps_out(match, sample_weight=sw)


def test_bad_options():
    call_keeps_out("loss='sofmax' is not a loss.*did you mean 'softmax'", loss="sofmax")
    call_keeps_out("penalty='l3'", penalty="l3")
    call_keeps_out("alpha must be a finite number", alpha=-1.0)
    call_keeps_out("l1_ratio must be a finite number", l1_ratio=1.5)
    call_keeps_out("backend='numbaa' is not a backend", backend="numbaa")
    call_keeps_out("method='fast'", method="fast")
    call_keeps_out("epsilon must be a finite number", loss="squared", y=np.zeros((6, 3)),
                   epsilon=-0.1)


def test_predict_scores_bad_input():
    X, y, W, b = problem()
    with pytest.raises(TypeError, match="W has dtype float32"):
        predict_scores(X, W.astype(np.float32), None)
    with pytest.raises(ValueError, match="W has 5 rows"):
        predict_scores(X, np.zeros((5, 3)), None)
    with pytest.raises(ValueError, match="out must be a float64 array of shape"):
        predict_scores(X, W, b, out=np.zeros((6, 2)))
