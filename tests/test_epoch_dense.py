"""The fused dense epoch pass (kernels/epoch_drivers.py, _BATCH_DENSE_LANES):
rows read in place in shuffled order, blocks of DENSE_LANE_ROWS rows, the
tiles' 6-row and 2/4-output edges, sample weights, against the NumPy
reference epoch.

Shapes and batch sizes are drawn so that minibatches end inside a block,
inside a 6-row tile and on block boundaries, and k crosses the tiles'
output widths (1 left over after pairs, 1-3 after fours).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optkern
from optkern.kernels.epoch_drivers import DENSE_LANE_ROWS


@settings(max_examples=12, deadline=None)
@given(n=st.integers(7, 3 * DENSE_LANE_ROWS + 11), d=st.integers(1, 19),
       k=st.integers(2, 11), batch=st.sampled_from([1, 5, 6, 7, 47, 48, 49, 100, 1000]),
       weighted=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2 ** 31 - 1))
def test_fused_dense_softmax_epoch_matches_the_reference(n, d, k, batch, weighted, dtype, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = np.arange(n) % k          # every class present
    rng.shuffle(y)
    sw = rng.uniform(0.2, 3.0, n) if weighted else None
    # plain SGD: Adam's normalised steps turn float32 rounding on a near-zero
    # gradient (random labels, a handful of rows) into differences of 1e-2
    # on main as here; the pass under test does not depend on the optimizer
    kw = dict(loss="softmax", optimizer="sgd", lr=0.05, alpha=1e-3, max_epochs=3, tol=None,
              random_state=seed % 1000, batch_size=batch)
    ref = optkern.LinearClassifier(backend="numpy", **kw).fit(X, y, sample_weight=sw)
    got = optkern.LinearClassifier(backend="numba", **kw).fit(X, y, sample_weight=sw)
    rtol = 1e-9 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=rtol, atol=rtol * 10)
    np.testing.assert_allclose(got.intercept_, ref.intercept_, rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_dense_pass_is_the_generated_one(dtype):
    # the softmax epoch runs the fused pass (a change that sent it back to the
    # gathered copy would still pass the parity test above)
    from optkern.kernels import epoch_drivers

    src = epoch_drivers._source("softmax", "adam", "dense")
    assert "gathered_scores_lanes(X, order" in src and "xb[q, :] = X[i]" not in src
    src = epoch_drivers._source("hinge", "adam", "dense")
    assert "xb[q, :] = X[i]" in src
