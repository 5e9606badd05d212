"""The "cuda" loss kernels agree with the NumPy reference.  Numba's CUDA
simulator (conftest sets NUMBA_ENABLE_CUDASIM=1) is pure Python: tiny sizes."""

import numpy as np
import pytest
import scipy.sparse as sp

from optkern import _backend
from optkern.losses import LOSSES, loss_and_grad

pytestmark = pytest.mark.skipif(not _backend.cuda_available(),
                                reason="no GPU and the simulator is off")


def _problem(loss, layout, dtype, n=4, d=3, k=3, seed=1):
    rng = np.random.default_rng(seed)
    target = LOSSES[loss].target
    k = 1 if target == "binary" else k
    X = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.7)
    X = sp.csr_matrix(X.astype(dtype)) if layout == "csr" else X.astype(dtype)
    W = rng.standard_normal((d, k)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    if target == "regression":
        y = rng.standard_normal((n, k))
    elif target == "binary":
        y = rng.integers(0, 2, n)
    else:
        y = rng.integers(0, k, n)
    return X, y, W, b, rng.uniform(0.5, 2, n)


@pytest.mark.parametrize("layout", ["dense", "csr"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_cuda_agrees_with_reference(loss, layout):
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        X, y, W, b, sw = _problem(loss, layout, dtype)
        kw = dict(loss=loss, alpha=0.1, penalty="elasticnet", sample_weight=sw)
        want = loss_and_grad(X, y, W, b, backend="numpy", **kw)
        got = loss_and_grad(X, y, W, b, backend="cuda", **kw)
        assert got[0] == pytest.approx(want[0], rel=tol, abs=tol)
        np.testing.assert_allclose(got[1], want[1], rtol=tol, atol=tol)
        np.testing.assert_allclose(got[2], want[2], rtol=tol, atol=tol)


def test_cuda_without_intercept_or_weights():
    X, y, W, b, sw = _problem("softmax", "dense", np.float64)
    want = loss_and_grad(X, y, W, None, backend="numpy")
    got = loss_and_grad(X, y, W, None, backend="cuda")
    assert got[2] is None
    assert got[0] == pytest.approx(want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-12)
