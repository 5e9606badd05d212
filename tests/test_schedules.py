"""Learning-rate schedules follow their formulas, in Python and compiled."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

import optkern
from optkern import schedules as S
from optkern.kernels.schedule_rules import schedule_factor

compiled_factor = njit(cache=True)(schedule_factor)

ts = st.integers(min_value=0, max_value=10_000)


@given(t=ts, decay=st.floats(0, 10), power=st.floats(0, 3))
def test_inverse_scaling_formula(t, decay, power):
    s = S.InverseScaling(decay=decay, power=power)
    assert s.factor(t) == pytest.approx(1.0 / (1.0 + decay * t) ** power, rel=1e-12)


def test_course_one_over_t():
    s = S.InverseScaling(decay=1.0, power=1.0)
    assert [s.lr(1.0, t) for t in range(4)] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4])
    s = S.InverseScaling(decay=1.0, power=0.5)
    assert s.lr(2.0, 3) == pytest.approx(2.0 / math.sqrt(4.0))


@given(t=ts, step=st.integers(1, 500), gamma=st.floats(0.01, 1.0))
def test_step_decay_is_a_staircase(t, step, gamma):
    s = S.StepDecay(step_size=step, gamma=gamma)
    assert s.factor(t) == pytest.approx(gamma ** (t // step), rel=1e-12)
    # constant within a stair
    assert s.factor((t // step) * step) == s.factor((t // step) * step + step - 1)


@given(t=ts, gamma=st.floats(0.5, 1.0))
def test_exponential(t, gamma):
    assert S.Exponential(gamma).factor(t) == pytest.approx(gamma ** t, rel=1e-9)


@given(t=ts, total=st.integers(1, 5000), final=st.floats(0, 1))
def test_cosine(t, total, final):
    s = S.Cosine(total_steps=total, final_factor=final)
    tt = min(t, total)
    expect = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * tt / total))
    assert s.factor(t) == pytest.approx(expect, rel=1e-12, abs=1e-15)
    assert s.factor(0) == pytest.approx(1.0)
    assert s.factor(total) == pytest.approx(final, abs=1e-12)


@given(t=ts, warm=st.integers(1, 300), start=st.floats(0, 1), gamma=st.floats(0.5, 1))
def test_warmup_composes(t, warm, start, gamma):
    base = S.Exponential(gamma)
    s = S.Warmup(base, warmup_steps=warm, start_factor=start)
    if t < warm:
        assert s.factor(t) == pytest.approx(start + (1 - start) * t / warm, rel=1e-12)
    else:
        assert s.factor(t) == pytest.approx(base.factor(t - warm), rel=1e-12)
    assert s.factor(0) == pytest.approx(start)


@settings(max_examples=50, deadline=None)
@given(t=ts, which=st.integers(0, 4), warm=st.integers(0, 50))
def test_compiled_equals_python(t, which, warm):
    sched = [S.Constant(), S.InverseScaling(0.01, 0.75), S.StepDecay(30, 0.5),
             S.Exponential(0.999), S.Cosine(2000, 0.1)][which]
    if warm:
        sched = S.Warmup(sched, warmup_steps=warm, start_factor=0.1)
    kind, a, b, c, w, start = sched.encode()
    assert compiled_factor(kind, float(t), a, b, c, w, start) == pytest.approx(
        sched.factor(t), rel=1e-12)


def test_reduce_on_plateau():
    s = S.ReduceOnPlateau(factor=0.5, patience=2, threshold=0.0)
    values = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85]
    factors = [s.update(v) for v in values]
    # improvement at 0.9; three epochs without improvement (> patience=2) -> halve
    assert factors == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_lr_scheduler_drives_an_optimizer():
    p = np.ones(3)
    opt = optkern.SGD(p, lr=0.1, backend="numpy")
    sched = S.LRScheduler(opt, S.StepDecay(step_size=2, gamma=0.5))
    lrs = []
    for _ in range(5):
        lrs.append(opt.lr)
        opt.step(np.ones(3))
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    # the parameter moved by exactly the sum of the rates
    np.testing.assert_allclose(p, 1 - sum(lrs))


@pytest.mark.parametrize("bad, match", [
    (lambda: S.StepDecay(0), "step_size"),
    (lambda: S.StepDecay(10, gamma=0), "gamma"),
    (lambda: S.InverseScaling(decay=-1), "decay"),
    (lambda: S.Cosine(0), "total_steps"),
    (lambda: S.Warmup(S.Constant(), warmup_steps=0), "warmup_steps"),
    (lambda: S.Warmup("cosine"), "schedule"),
    (lambda: S.ReduceOnPlateau(factor=1.5), "factor"),
    (lambda: S.get_schedule("cosin"), "did you mean 'cosine'"),
])
def test_bad_arguments_name_themselves(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad()
