"""The fused dense epoch pass (kernels/epoch_drivers.py, _BATCH_DENSE_LANES):
rows read in place in shuffled order, blocks of DENSE_LANE_ROWS rows, the
tiles' 6-row and 2/4-output edges, sample weights, against the NumPy
reference epoch, for every loss rule (softmax, the multiclass hinge, the
per-output binary and regression losses), and the lane forms it compiles
against the rules they come from.

Shapes and batch sizes are drawn so that minibatches end inside a block,
inside a 6-row tile and on block boundaries, and k crosses the tiles'
output widths (1 left over after pairs, 1-3 after fours).
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import optkern
from optkern.kernels import rule_lanes
from optkern.kernels._helpers import exp_fast, log_fast
from optkern.kernels.epoch_drivers import DENSE_LANE_ROWS, log1p_lanes
from optkern.kernels.loss_rules import LOSS_RULES


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


@pytest.mark.parametrize("loss", sorted(LOSS_RULES))
def test_fused_dense_pass_is_the_generated_one(loss):
    # every built-in rule runs the fused pass (a change that sent one back to
    # the gathered copy would still pass the parity tests)
    from optkern.kernels import epoch_drivers

    src = epoch_drivers._source(loss, "adam", "dense")
    assert "gathered_scores_lanes(X, order" in src and "xb[q, :] = X[i]" not in src


def _fit_pair(est, X, y, sw, **kw):
    ref = est(backend="numpy", **kw).fit(X, y, sample_weight=sw)
    got = est(backend="numba", **kw).fit(X, y, sample_weight=sw)
    return ref, got


def _assert_same(ref, got, dtype):
    rtol = 1e-9 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=rtol, atol=rtol * 10)
    np.testing.assert_allclose(got.intercept_, ref.intercept_, rtol=rtol, atol=rtol * 10)
    lr = [h["loss"] for h in ref.history_]
    lg = [h["loss"] for h in got.history_]
    np.testing.assert_allclose(lg, lr, rtol=rtol, atol=rtol)


@settings(max_examples=16, deadline=None)
@given(n=st.integers(7, 2 * DENSE_LANE_ROWS + 11), d=st.integers(1, 13),
       n_classes=st.integers(2, 7),
       loss=st.sampled_from(["log", "hinge", "squared_hinge", "modified_huber",
                             "multiclass_hinge"]),
       batch=st.sampled_from([1, 5, 6, 7, 47, 48, 49, 1000]), weighted=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 31 - 1))
def test_fused_dense_classifier_losses_match_the_reference(n, d, n_classes, loss, batch,
                                                          weighted, dtype, seed):
    # the per-output binary losses (one output for two classes, one-vs-rest
    # outputs for more) and the multiclass hinge in the lane form of the fused
    # pass (kernels/rule_lanes.py: scalar_lane_source, returns=True)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    sw = rng.uniform(0.2, 3.0, n) if weighted else None
    kw = dict(loss=loss, optimizer="sgd", lr=0.05, alpha=1e-3, max_epochs=3, tol=None,
              random_state=seed % 1000, batch_size=batch)
    _assert_same(*_fit_pair(optkern.LinearClassifier, X, y, sw, **kw), dtype)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(7, 2 * DENSE_LANE_ROWS + 11), d=st.integers(1, 13),
       outputs=st.integers(0, 5),
       loss=st.sampled_from(["squared", "huber", "epsilon_insensitive", "absolute"]),
       batch=st.sampled_from([1, 6, 7, 48, 49, 1000]), weighted=st.booleans(),
       scale=st.sampled_from([0.01, 1.0, 100.0]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 31 - 1))
def test_fused_dense_regressor_losses_match_the_reference(n, d, outputs, loss, batch, weighted,
                                                         scale, dtype, seed):
    # targets of every scale (huber's and epsilon_insensitive's branches all
    # taken), one output (outputs = 0: 1-D y) or several
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    shape = (d,) if outputs == 0 else (d, outputs)
    y = (X @ rng.standard_normal(shape) + rng.standard_normal(shape[1:] and (n, outputs)
                                                             or (n,))) * scale
    sw = rng.uniform(0.2, 3.0, n) if weighted else None
    kw = dict(loss=loss, optimizer="sgd", lr=0.01, alpha=1e-3, max_epochs=2, tol=None,
              random_state=seed % 1000, batch_size=batch)
    ref, got = _fit_pair(optkern.LinearRegressor, X, y.astype(dtype), sw, **kw)
    _assert_same(ref, got, dtype)


_LANES = {}


def _lanes(name):
    """(rule, its lane form) compiled once: scalar rules by scalar_lane_source,
    row rules by lane_source(returns=True), as the epoch compiles them."""
    if name not in _LANES:
        spec = LOSS_RULES[name]
        ns = {"math": math, "exp_fast": exp_fast, "log_fast": log_fast,
              "log1p_lanes": log1p_lanes}
        if spec.kind == "scalar":
            src = rule_lanes.scalar_lane_source(spec.rule, "lanes")
            slots = rule_lanes.scalar_lane_slots(spec.rule)
        else:
            src = rule_lanes.lane_source(spec.rule, "lanes", returns=True)
            slots = rule_lanes.lane_slots(spec.rule, returns=True)
        exec(src, ns)
        _LANES[name] = njit(spec.rule), njit(ns["lanes"]), slots
    return _LANES[name]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_lane_forms_match_their_rules(data):
    # the lane forms the fused pass compiles against the rules they come from,
    # with ties (repeated scores: the multiclass hinge's best other class, a
    # margin of exactly 1), every branch of the scalar rules, one lane to a
    # whole block
    name = data.draw(st.sampled_from(sorted(LOSS_RULES)))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    spec = LOSS_RULES[name]
    k = data.draw(st.integers(1 if spec.kind == "scalar" else 2, 12))
    n = data.draw(st.integers(1, DENSE_LANE_ROWS))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    Z = rng.choice(np.array([-2.0, -1.0, -0.5, 0.0, 0.05, 0.5, 1.0, 3.0]), (n, k)) \
        if data.draw(st.booleans()) else rng.standard_normal((n, k)) * 3
    Z = Z.astype(dtype)
    eps = dtype(0.1)
    rule, lanes, (n_real, n_int) = _lanes(name)
    ZT = np.zeros((k, DENSE_LANE_ROWS), dtype)
    ZT[:, :n] = Z.T
    DT = np.full((k, DENSE_LANE_ROWS), np.nan, dtype)
    loss = np.empty(DENSE_LANE_ROWS)
    S = np.empty((max(n_real, 1), DENSE_LANE_ROWS), dtype)
    SI = np.empty((max(n_int, 1), DENSE_LANE_ROWS), np.int64)
    D_row = np.empty((n, k), dtype)
    if spec.kind == "scalar":
        T = (rng.integers(0, 2, (n, k)) if spec.target == "binary"
             else rng.standard_normal((n, k)) * 2).astype(dtype)
        L_row = np.zeros(n)
        for r in range(n):
            for j in range(k):
                lj, D_row[r, j] = rule(Z[r, j], T[r, j], eps)
                L_row[r] += lj
        Y = np.zeros((k, DENSE_LANE_ROWS), dtype)
        Y[:, :n] = T.T
    else:
        y = rng.integers(0, k, n).astype(np.int64)
        L_row = np.array([rule(Z[r], y[r], eps, D_row[r]) for r in range(n)])
        Y = y
    lanes(ZT, Y, eps, DT, loss, n, S, SI)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(DT[:, :n].T, D_row, rtol=tol, atol=tol)
    np.testing.assert_allclose(loss[:n], L_row, rtol=tol, atol=tol * 10)


@settings(max_examples=40, deadline=None)
@given(x=st.one_of(st.floats(0.0, 1.0), st.floats(1e-300, 1e-6), st.sampled_from(
    [0.0, 5e-324, 1e-17, 2.0 ** -53, 2.0 ** -52, 1e-8, 0.5, 1.0])),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_log1p_lanes_is_log1p(x, dtype):
    # the log loss's lane form takes log1p of exp(-|m|), in (0, 1]: tiny
    # arguments (1 + x rounds to 1) included
    x = dtype(x)
    got = _log1p_jit(x)
    want = math.log1p(float(x))
    assert abs(got - want) <= 4e-16 * abs(want) + 1e-320


_log1p_jit = njit(lambda x: log1p_lanes(x))


def test_early_returns_are_taken_only_when_asked():
    # the loss kernels (loss_drivers) call lane_source without returns=True and
    # keep the multiclass hinge's row form; the epoch takes its lane form
    rule = LOSS_RULES["multiclass_hinge"].rule
    with pytest.raises(rule_lanes.NotLaneable):
        rule_lanes.lane_source(rule, "lanes")
    src = rule_lanes.lane_source(rule, "lanes", returns=True)
    assert src.count("LOSS[r] =") == 3 and "else:" in src

    def no_return_on_a_path(z, y, epsilon, dz):
        t = 0.0
        if z[y] > 0.0:
            return t
        t = 1.0
    with pytest.raises(rule_lanes.NotLaneable, match="must end with its return"):
        rule_lanes.lane_source(no_return_on_a_path, "lanes", returns=True)

    def scalar_without_pair(z, y, epsilon):
        return z - y
    with pytest.raises(rule_lanes.NotLaneable, match="returns \\(loss, derivative\\)"):
        rule_lanes.scalar_lane_source(scalar_without_pair, "lanes")
