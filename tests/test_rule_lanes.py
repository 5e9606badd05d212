"""kernels/rule_lanes.py: the lane form of a row rule (a block of rows at a
time, generated from the rule's text) against the row form it comes from."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from optkern.kernels import rule_lanes
from optkern.kernels._helpers import exp_fast, log_fast
from optkern.kernels.loss_drivers import LANE_ROWS
from optkern.kernels.loss_rules import LOSS_RULES

ROW_RULES = [name for name, spec in LOSS_RULES.items() if spec.kind == "row"]


_COMPILED = {}


def _compiled(name):
    """(row form, lane form) of a rule, compiled once per test session."""
    if name not in _COMPILED:
        rule = LOSS_RULES[name].rule
        ns = {"math": math, "exp_fast": exp_fast, "log_fast": log_fast}
        exec(rule_lanes.lane_source(rule, "lanes"), ns)
        _COMPILED[name] = njit(rule), njit(ns["lanes"])
    return _COMPILED[name]


def test_softmax_has_a_lane_form():
    # the fast path of the fused and CSR kernels at k < 16: losing it to a
    # rule edit would only show as a slowdown
    rule = LOSS_RULES["softmax"].rule
    assert "def lanes(" in rule_lanes.lane_source(rule, "lanes")
    assert rule_lanes.lane_slots(rule) == (4, 0)


def test_rules_the_translator_refuses_say_why():
    with pytest.raises(rule_lanes.NotLaneable, match="Return inside a row-dependent branch"):
        rule_lanes.lane_source(LOSS_RULES["multiclass_hinge"].rule, "lanes")

    def loop_in_branch(z, y, epsilon, dz):
        t = 0.0
        if z[y] > 0.0:
            for j in range(z.shape[0]):
                t = t + z[j]
        return t
    with pytest.raises(rule_lanes.NotLaneable, match="For inside a row-dependent branch"):
        rule_lanes.lane_source(loop_in_branch, "lanes")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_lane_form_matches_the_row_form(data):
    laneable = [n for n in ROW_RULES if _laneable(LOSS_RULES[n].rule)]
    name = data.draw(st.sampled_from(laneable))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    k = data.draw(st.integers(2, 20))
    n = data.draw(st.integers(1, LANE_ROWS))
    scale = data.draw(st.sampled_from([1.0, 30.0, 1e4]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    rule = LOSS_RULES[name].rule
    Z = (rng.standard_normal((n, k)) * scale).astype(dtype)
    y = rng.integers(0, k, n).astype(np.int64)
    row, lanes = _compiled(name)
    D_row = np.empty_like(Z)
    L_row = np.array([row(Z[r], y[r], dtype(0.1), D_row[r]) for r in range(n)])
    ZT = np.zeros((k, LANE_ROWS), dtype)
    ZT[:, :n] = Z.T
    DT = np.empty((k, LANE_ROWS), dtype)
    loss = np.empty(LANE_ROWS)
    n_real, n_int = rule_lanes.lane_slots(rule)
    lanes(ZT, y, dtype(0.1), DT, loss, n, np.empty((max(n_real, 1), LANE_ROWS), dtype),
          np.empty((max(n_int, 1), LANE_ROWS), np.int64))
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(DT[:, :n].T, D_row, rtol=tol, atol=tol)
    np.testing.assert_allclose(loss[:n], L_row, rtol=tol, atol=tol * max(1.0, scale))
    assert np.all(np.isfinite(loss[:n]))


def _laneable(rule):
    try:
        rule_lanes.lane_source(rule, "lanes")
        return True
    except rule_lanes.NotLaneable:
        return False
