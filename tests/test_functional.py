"""The functional kernels in optkern.kernels on caller-owned arrays: called from
Python and from a user's own @njit function, they give the optimizer classes'
numbers."""

import numpy as np
import pytest
from numba import njit

import optkern
import optkern.kernels as K
from optkern.kernels.rules import RULES, allocated_states, state_names
from conftest import FIXED_OPTIONS, assert_close

RULE_OF = {"adamw": "adam"}  # every other optimizer's kernel has its own name


def _cases():
    out = []
    for name, sets in FIXED_OPTIONS.items():
        for j, kw in enumerate(sets):
            out.append(pytest.param(name, kw, id=f"{RULE_OF.get(name, name)}-via-{name}-{j}"))
    return out


def test_every_kernel_is_covered_and_exported():
    covered = {RULE_OF.get(n, n) for n in FIXED_OPTIONS}
    assert covered == set(K.KERNEL_NAMES) == set(RULES)
    for name in K.KERNEL_NAMES:
        fn = getattr(K, name)
        assert callable(fn)
        assert name in dir(K)
        assert "not check" in (fn.__doc__ or ""), name  # documented: no validation


def _user_hyper(name, opt):
    """The kernel's positional hyperparameters from the optimizer's (public) options."""
    group = dict(opt.param_groups[0])
    if "betas" in group:
        group["beta1"], group["beta2"] = group["betas"]
    group["decoupled"] = group.get("decoupled_weight_decay", name == "adamw")
    rule = RULES[RULE_OF.get(name, name)]
    return tuple(group[h] for h in rule.user_hyper)


def _noisy(name, kw):
    return (name == "sgd" and kw.get("noise", 0) > 0) or name == "sgld"


def _setup(name, kw, dtype, shape, n_steps=15, average=False):
    rng = np.random.default_rng(21)
    p0 = rng.standard_normal(shape).astype(dtype)
    grads = rng.standard_normal((n_steps,) + shape).astype(dtype)
    p_class = p0.copy()
    opt = optkern.OPTIMIZERS[name]([p_class], backend="numba", average=average, **kw)
    for g in grads:
        opt.step([g])
    rule = RULES[RULE_OF.get(name, name)]
    hyper = _user_hyper(name, opt)
    present = allocated_states(rule, dict(zip(rule.user_hyper, hyper)))
    init = opt._state_init(opt.param_groups[0])   # initial_accumulator_value and the like
    states = tuple(np.full(shape, init.get(s, 0.0), dtype) if s in present else None
                   for s in state_names(rule))
    keys = None
    if _noisy(name, kw):
        keys = np.array([K.noise_key(opt.seed, t) for t in range(1, n_steps + 1)],
                        dtype=np.uint64)
    return p0, grads, opt, p_class, rule, hyper, states, keys


def _compare_states(opt, states, rule, dtype):
    sd = opt.state_dict()["state"][0]
    for s, arr in zip(state_names(rule), states):
        if arr is None:
            assert s not in sd
        else:
            assert_close(arr, sd[s], dtype, s)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name, kw", _cases())
def test_functional_from_python_equals_class(name, kw, dtype):
    shape = (4, 6)
    p0, grads, opt, p_class, rule, hyper, states, keys = _setup(name, kw, dtype, shape)
    fn = getattr(K, rule.name)
    p = p0.copy()
    scalars = tuple(v for _, v in rule.scalar_states)
    for t, g in enumerate(grads, start=1):
        extra = {} if keys is None else dict(noise_key=keys[t - 1], noise_offset=0)
        scalars = fn(p, g, *states, t, *hyper, scalar_state=scalars, **extra)
    assert_close(p, p_class, dtype, f"{name} params")
    _compare_states(opt, states, rule, dtype)
    if rule.scalar_states:
        assert scalars[0] == pytest.approx(opt.state_dict()["state"][0]["mu_product"],
                                           rel=1e-14)
    else:
        assert scalars == ()


@njit
def _user_loop(kernel, p, grads, states, hyper, scalars):
    """A user's own compiled training loop calling an optkern kernel."""
    for t in range(grads.shape[0]):
        # (numba takes *args but not together with keywords: all positional)
        scalars = kernel(p, grads[t], *states, t + 1, *hyper, scalars)
    return scalars


@njit
def _user_loop_noisy(kernel, p, grads, states, hyper, scalars, keys):
    for t in range(grads.shape[0]):
        scalars = kernel(p, grads[t], *states, t + 1, *hyper, scalars, None, 0.0, keys[t], 0)
    return scalars


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name, kw", _cases())
def test_functional_from_user_njit_equals_python_call_and_class(name, kw, dtype):
    shape = (17,)
    p0, grads, opt, p_class, rule, hyper, states, keys = _setup(name, kw, dtype, shape)
    fn = getattr(K, rule.name)
    scalars0 = tuple(v for _, v in rule.scalar_states)
    # from Python
    p_py = p0.copy()
    states_py = tuple(None if s is None else s.copy() for s in states)
    scalars_py = scalars0
    for t, g in enumerate(grads, start=1):
        extra = {} if keys is None else dict(noise_key=keys[t - 1], noise_offset=0)
        scalars_py = fn(p_py, g, *states_py, t, *hyper, scalar_state=scalars_py, **extra)
    # from the user's @njit loop
    p = p0.copy()
    if keys is None:
        scalars = _user_loop(fn, p, grads, states, hyper, scalars0)
    else:
        scalars = _user_loop_noisy(fn, p, grads, states, hyper, scalars0, keys)
    np.testing.assert_array_equal(p, p_py)
    for a, b in zip(states, states_py):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert tuple(scalars) == tuple(scalars_py)
    assert_close(p, p_class, dtype, f"{name} params")
    _compare_states(opt, states, rule, dtype)


def test_functional_polyak_average_equals_class():
    name, kw = "adam", dict(lr=0.05)
    p0, grads, opt, p_class, rule, hyper, states, _ = _setup(name, kw, np.float64, (9,),
                                                            average=True)
    p = p0.copy()
    avg = p0.copy()
    for t, g in enumerate(grads, start=1):
        K.adam(p, g, *states, t, *hyper, average=avg, average_weight=1.0 / t)
    np.testing.assert_allclose(p, p_class, rtol=1e-12)
    np.testing.assert_allclose(avg, opt.averaged_params()[0], rtol=1e-12)


def test_readme_example_runs():
    """The README's functional example, as written (float32, own @njit loop)."""
    p = np.ones(1000, np.float32)
    g = np.full(1000, 0.1, np.float32)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    K.adam(p, g, m, v, None, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, True, False)
    np.testing.assert_allclose(p, 1 - 1e-3, rtol=1e-5)
    adam = K.adam

    @njit
    def train(p, m, v, steps):
        for t in range(1, steps + 1):
            g = 2.0 * p
            adam(p, g, m, v, None, t, 1e-2, 0.9, 0.999, 1e-8, 0.0, False, False, True, False)

    m[:] = 0
    v[:] = 0
    before = float(np.sum(p.astype(np.float64) ** 2))
    train(p, m, v, 100)
    assert float(np.sum(p.astype(np.float64) ** 2)) < before
    assert p.dtype == np.float32
