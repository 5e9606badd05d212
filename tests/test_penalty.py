"""kernels/penalty.py, the elastic-net penalty written once: its pieces
against the NumPy oracle (loss_reference.penalty, written separately on
purpose), and the Cython kernels' C twins translated from its text."""

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from optkern.kernels import penalty as P
from optkern.kernels._files import load_by_path
from optkern.kernels.loss_reference import penalty as reference

KERNELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 12), k=st.integers(1, 4), seed=st.integers(0, 2 ** 32 - 1),
       # (a float32 oracle underflows below ~1e-38: no alpha there)
       alpha=st.one_of(st.just(0.0), st.floats(1e-4, 10.0)), l1_ratio=st.floats(0.0, 1.0),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_the_pieces_are_the_oracles_penalty(d, k, seed, alpha, l1_ratio, dtype):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, k)).astype(dtype)
    W[rng.random((d, k)) < 0.3] = 0       # sign(0) = 0: the subgradient at 0
    value, grad = reference(W, alpha, l1_ratio)
    g = np.array([P.penalty_grad(float(w), alpha, l1_ratio) for w in W.ravel()])
    np.testing.assert_allclose(g.reshape(W.shape), grad, rtol=1e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-12 * max(alpha, 1.0))
    # the strengths' form (the loss kernels': a1 sign(w) + a2 w)
    a1, a2 = P.l1_strength(alpha, l1_ratio), P.l2_strength(alpha, l1_ratio)
    np.testing.assert_allclose(a1 * np.sign(W.astype(np.float64)) + a2 * W.astype(np.float64),
                               grad, rtol=1e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-12 * max(alpha, 1.0))
    W64 = W.astype(np.float64)
    v = P.penalty_of_sums(alpha, l1_ratio, float(np.abs(W64).sum()), float((W64 * W64).sum()))
    assert v == pytest.approx(float(value), rel=1e-6 if dtype == np.float32 else 1e-12, abs=1e-300)


def test_the_named_penalties_l1_share():
    assert P.l1_ratio_of("l2", 0.7) == 0.0
    assert P.l1_ratio_of("l1", 0.7) == 1.0
    assert P.l1_ratio_of("elasticnet", 0.7) == 0.7
    assert type(P.l1_ratio_of("elasticnet", 1)) is float


def test_the_cython_kernels_hold_twins_translated_from_penalty_py():
    pytest.importorskip("Cython")
    gl = load_by_path("_optkern_genl_penalty", os.path.join(KERNELS, "cython", "generate_losses.py"))
    ge = load_by_path("_optkern_gene_penalty", os.path.join(KERNELS, "cython", "generate_epochs.py"))
    texts = {"_losses.pyx": gl.sources()[1], "_epochs.pyx": ge.generate()["_epochs.pyx"]}
    for name in P.KERNEL_FUNCTIONS:
        for module, text in texts.items():
            assert f"cdef inline double _{name}(" in text, (module, name)
            assert f'"""C twin of penalty.{name}."""' in text, (module, name)
    assert "_penalty_of_sums(alpha, l1_ratio, l1, l2)" in texts["_losses.pyx"]
    assert "_penalty_grad(wv, alpha, l1_ratio)" in texts["_epochs.pyx"]
    # the generated epoch's SOURCE_HASH covers penalty.py (an edit there rebuilds it)
    assert os.path.join(KERNELS, "penalty.py") in ge.sources_of(ge.__file__, ge.TEMPLATES,
                                                                 ge.RULE_FILES)
