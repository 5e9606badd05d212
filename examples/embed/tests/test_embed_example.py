"""The example package's kernels give optkern's own numbers, bit for bit."""
import numpy as np
import pytest
import scipy.sparse as sp

import optkern
from optkern.losses import loss_and_grad
from optkern.optimizers import Adam

from optkern_embed_example import _cy, jitted

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cython_adam_matches_the_optimizer_class(dtype, seed):
    rng = np.random.default_rng(seed)
    n, steps = int(rng.integers(1, 40)), int(rng.integers(1, 12))
    hyper = dict(lr=float(rng.uniform(1e-3, 0.5)), betas=(float(rng.uniform(0.5, 0.95)),
                                                          float(rng.uniform(0.9, 0.9999))),
                 eps=float(10 ** rng.uniform(-9, -3)),
                 weight_decay=float(rng.choice([0.0, rng.uniform(0, 0.1)])))
    p0 = rng.standard_normal(n).astype(dtype)
    grads = rng.standard_normal((steps, n)).astype(dtype)
    for backend in ("numpy", "cython"):
        p_ref = p0.copy()
        opt = Adam([p_ref], backend=backend, **hyper)
        for g in grads:
            opt.step([g])
        p, m, v = p0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
        last = _cy.adam_steps(p, grads, m, v, hyper["lr"], *hyper["betas"], hyper["eps"],
                              hyper["weight_decay"])
        assert last == steps
        if backend == "cython":
            np.testing.assert_array_equal(p, p_ref)
        else:  # the NumPy reference rounds in its own order
            np.testing.assert_allclose(p, p_ref, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                       atol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_njit_adam_matches_the_optimizer_class(dtype):
    rng = np.random.default_rng(3)
    n, steps = 17, 6
    p0 = rng.standard_normal(n).astype(dtype)
    grads = rng.standard_normal((steps, n)).astype(dtype)
    p_ref = p0.copy()
    opt = Adam([p_ref], lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01,
               backend="numba")
    for g in grads:
        opt.step([g])
    p, m, v = p0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
    hyper = jitted.adam_steps(p, grads, m, v, 0.05, 0.8, 0.99, 1e-6, 0.01)
    np.testing.assert_array_equal(p, p_ref)
    # the prepare layer: step 6's bias-corrected step size, as the rule defines it
    assert hyper[0] == pytest.approx(0.05 / (1 - 0.8 ** steps), rel=1e-15)


def _problem(rng, loss, dtype, sparse):
    n, d, k = int(rng.integers(1, 60)), int(rng.integers(1, 9)), int(rng.integers(1, 5))
    X = rng.standard_normal((n, d)).astype(dtype)
    if sparse:
        X[rng.random((n, d)) < 0.6] = 0
        X = sp.csr_matrix(X)
    if loss == "softmax":
        k = max(k, 2)
        y = rng.integers(0, k, n).astype(np.int64)
    else:
        y = rng.standard_normal((n, k)).astype(dtype)
    W = rng.standard_normal((d, k)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    return X, y, W, b


@pytest.mark.parametrize("loss", ["squared", "softmax"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_cython_loss_grad_matches_loss_and_grad(loss, dtype, sparse, seed):
    rng = np.random.default_rng(seed)
    X, y, W, b = _problem(rng, loss, dtype, sparse)
    alpha = float(rng.uniform(0, 0.1))
    f_ref, dW_ref, db_ref = loss_and_grad(X, y, W, b, loss=loss, alpha=alpha, penalty="l2",
                                          backend="cython", method="fused")
    dW, db = np.empty_like(W), np.empty_like(b)
    if sparse:
        f = _cy.csr_loss_grad(loss, X.data, X.indices.astype(np.int32),
                              X.indptr.astype(np.int32), X.shape[1], y, W, b, alpha, dW, db)
    else:
        f = _cy.dense_loss_grad(loss, X, y, W, b, alpha, dW, db)
    assert f == f_ref
    np.testing.assert_array_equal(dW, dW_ref)
    np.testing.assert_array_equal(db, db_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_njit_loss_grad_matches_loss_and_grad(dtype):
    rng = np.random.default_rng(5)
    X, y, W, b = _problem(rng, "softmax", dtype, False)
    f_ref, dW_ref, db_ref = loss_and_grad(X, y, W, b, loss="softmax", alpha=0.01,
                                          penalty="l2", backend="numba", method="fused")
    dW, db = np.empty_like(W), np.empty_like(b)
    f = jitted.softmax_loss_grad(X, y, W, b, 0.01, dW, db,
                                 jitted.scratch_for(X.shape[1], W.shape[1], dtype))
    assert f == f_ref
    np.testing.assert_array_equal(dW, dW_ref)
    np.testing.assert_array_equal(db, db_ref)


def test_njit_scratch_too_small_is_named():
    rng = np.random.default_rng(6)
    X, y, W, b = _problem(rng, "softmax", np.float64, False)
    dW, db = np.empty_like(W), np.empty_like(b)
    small = np.empty(3)
    with pytest.raises(ValueError, match="scratch is too small"):
        jitted.softmax_loss_grad(X, y, W, b, 0.0, dW, db, small)
    with pytest.raises(ValueError, match="dW has the wrong shape"):
        jitted.softmax_loss_grad(X, y, W, b, 0.0, np.empty((W.shape[0] + 1, W.shape[1])), db,
                                 jitted.scratch_for(X.shape[1], W.shape[1], np.float64))


def test_built_against_this_optkern():
    import optkern.kernels as K

    assert _cy.API_VERSION >= 1
    assert K.CACHE_TAG.startswith(optkern.__version__)
