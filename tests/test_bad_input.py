"""The issue's "Bad input" section: every case raises an error that names the
argument, before anything is touched."""

import re

import numpy as np
import pytest

import optkern
from conftest import (FIXED_OPTIONS, assert_unchanged, cpu_backends, fixed_cases, make,
                      snapshot)

BACKENDS = ["numpy"] + cpu_backends()
NAMES = sorted(optkern.OPTIMIZERS)


def _kw(name):
    return dict(FIXED_OPTIONS[name][0])


def _stepped(name, backend, kw=None, steps=3):
    """An optimizer with non-trivial state over two params of different shapes."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(7), np.asfortranarray(rng.standard_normal((3, 4)))]
    opt = make(name, params, backend, **(kw if kw is not None else _kw(name)))
    for _ in range(steps):
        opt.step([rng.standard_normal(7), rng.standard_normal((3, 4))])
    return opt, params


# ---------------------------------------------------------------- params and grads
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_grad_shape_mismatch(name, backend):
    opt, params = _stepped(name, backend)
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"grads\[1\].*shape"):
        opt.step([np.ones(7), np.ones((4, 3))])
    with pytest.raises(ValueError, match=r"grads\[0\].*shape"):
        opt.step([np.ones(8), np.ones((3, 4))])
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_grad_dtype_mismatch(name, backend):
    opt, params = _stepped(name, backend)
    snap = snapshot(opt, params)
    with pytest.raises(TypeError, match=r"grads\[1\].*dtype"):
        opt.step([np.ones(7), np.ones((3, 4), np.float32)])
    with pytest.raises(TypeError, match=r"grads\[0\].*dtype"):
        opt.step([np.ones(7, np.int64), np.ones((3, 4))])
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([np.array([None] * 7, dtype=object), np.ones((3, 4))])
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_not_arrays(backend):
    opt, params = _stepped("adam", backend)
    snap = snapshot(opt, params)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([[1.0] * 7, np.ones((3, 4))])
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [0, 1, 3])
def test_wrong_number_of_grads(backend, n):
    opt, params = _stepped("sgd", backend)
    snap = snapshot(opt, params)
    grads = [np.ones(7), np.ones((3, 4)), np.ones(2)][:n]
    with pytest.raises(ValueError, match=r"grads has %d arrays.*2" % n):
        opt.step(grads)
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex128, object,
                                   np.float16])
@pytest.mark.parametrize("name", NAMES)
def test_non_float_params_rejected(name, dtype):
    p = np.zeros(5, dtype=dtype)
    with pytest.raises(TypeError, match=r"params\[0\].*dtype"):
        make(name, [p], "numba", **_kw(name))


def test_params_of_mixed_dtypes_rejected():
    with pytest.raises(TypeError, match=r"params\[1\].*dtype"):
        optkern.Adam([np.zeros(3), np.zeros(3, np.float32)], backend="numba")


def test_params_not_arrays_rejected():
    with pytest.raises(TypeError, match=r"params\[0\]"):
        optkern.SGD([[0.0, 1.0]], lr=0.1, backend="numba")
    with pytest.raises(ValueError, match="params"):
        optkern.SGD([], lr=0.1, backend="numba")


@pytest.mark.parametrize("name", NAMES)
def test_read_only_params_rejected(name):
    p = np.zeros(5)
    p.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\].*read-only"):
        make(name, [p], "numba", **_kw(name))
    q = np.zeros(5)
    with pytest.raises(ValueError, match=r"params\[1\].*read-only"):
        make(name, [q, p], "numba", **_kw(name))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("view", ["strided", "transposed-slice", "column"])
def test_non_contiguous_params_rejected(backend, view):
    base = np.zeros((6, 8))
    p = {"strided": base[::2], "transposed-slice": base.T[::2], "column": base[:, 1]}[view]
    assert not (p.flags.c_contiguous or p.flags.f_contiguous)
    with pytest.raises(ValueError, match=r"params\[0\].*contiguous"):
        optkern.SGD([p], lr=0.1, backend=backend)
    np.testing.assert_array_equal(base, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_grads_are_read_correctly(backend):
    """Gradients are only read, so any layout works and gives the same result."""
    rng = np.random.default_rng(1)
    p0 = np.asfortranarray(rng.standard_normal((4, 5)))
    big = rng.standard_normal((8, 10))
    g_view = big[::2, ::2]
    a, b = p0.copy(order="K"), p0.copy(order="K")
    optkern.Adam([a], lr=0.1, backend=backend).step([g_view])
    optkern.Adam([b], lr=0.1, backend=backend).step([np.ascontiguousarray(g_view)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, p0)


def test_same_array_twice_rejected():
    p = np.zeros(3)
    with pytest.raises(ValueError, match="twice|more than one"):
        optkern.SGD([p, p], lr=0.1, backend="numba")


# ------------------------------------------------------------------ hyperparameters
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lr", [-1e-3, -1.0, float("nan"), float("inf")])
def test_bad_lr(name, lr):
    kw = dict(_kw(name), lr=lr)
    with pytest.raises(ValueError, match=r"\blr\b"):
        make(name, [np.zeros(3)], "numba", **kw)


@pytest.mark.parametrize("name", ["adam", "adamw", "adamax", "nadam", "radam"])
@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999), (0.9, -0.5),
                                   (0.9, 1.5)])
def test_betas_outside_unit_interval(name, betas):
    with pytest.raises(ValueError, match=r"betas\[%d\]" % (0 if not 0 <= betas[0] < 1 else 1)):
        make(name, [np.zeros(3)], "numba", lr=0.01, betas=betas)


@pytest.mark.parametrize("name", ["adam", "nadam"])
def test_betas_not_a_pair(name):
    with pytest.raises((TypeError, ValueError), match="betas"):
        make(name, [np.zeros(3)], "numba", lr=0.01, betas=(0.9,))


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adadelta", "adam", "adamw",
                                  "adamax", "nadam", "radam"])
@pytest.mark.parametrize("eps", [0.0, -1e-8])
def test_eps_must_be_positive(name, eps):
    with pytest.raises(ValueError, match=r"\beps\b"):
        make(name, [np.zeros(3)], "numba", eps=eps)


@pytest.mark.parametrize("kw, arg", [
    (dict(momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (dict(momentum=0.0, nesterov=True), "nesterov"),
    (dict(momentum=-0.5), "momentum"),
    (dict(weight_decay=-1e-3), "weight_decay"),
    (dict(noise=-0.1), "noise"),
], ids=["nesterov-dampening", "nesterov-no-momentum", "momentum", "weight_decay", "noise"])
def test_sgd_bad_options(kw, arg):
    with pytest.raises(ValueError, match=arg):
        optkern.SGD([np.zeros(3)], lr=0.1, backend="numba", **kw)


@pytest.mark.parametrize("name, kw, arg", [
    ("rmsprop", dict(alpha=1.5), "alpha"),
    ("rmsprop", dict(alpha=-0.1), "alpha"),
    ("rmsprop", dict(momentum=-0.1), "momentum"),
    ("adadelta", dict(rho=1.1), "rho"),
    ("adagrad", dict(lr_decay=-1.0), "lr_decay"),
    ("adagrad", dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    ("nadam", dict(momentum_decay=-1.0), "momentum_decay"),
    ("sgld", dict(lr=0.1, noise_scale=-1.0), "noise_scale"),
    ("adam", dict(weight_decay=-0.1), "weight_decay"),
])
def test_other_out_of_range_options(name, kw, arg):
    with pytest.raises(ValueError, match=arg):
        make(name, [np.zeros(3)], "numba", **kw)


@pytest.mark.parametrize("name, kw, arg", [
    ("sgd", dict(lr="0.1"), "lr"),
    ("sgd", dict(nesterov=1, momentum=0.9), "nesterov"),
    ("adam", dict(amsgrad="yes"), "amsgrad"),
    ("adam", dict(maximize=None), "maximize"),
    ("rmsprop", dict(centered=1), "centered"),
])
def test_wrong_types_of_options(name, kw, arg):
    with pytest.raises(TypeError, match=arg):
        make(name, [np.zeros(3)], "numba", **kw)


@pytest.mark.parametrize("bad, suggestion", [("numbaa", "numba"), ("cpython", "cython"),
                                             ("numba_parallel", "numba-parallel"),
                                             ("nympy", "numpy")])
def test_unknown_backend_suggests_closest(bad, suggestion):
    with pytest.raises(ValueError, match=r"backend.*" + re.escape(repr(suggestion))):
        optkern.Adam([np.zeros(3)], backend=bad)


def test_backend_not_a_string():
    with pytest.raises(TypeError, match="backend"):
        optkern.Adam([np.zeros(3)], backend=None)


@pytest.mark.parametrize("seed", [-1, 1.5, "7"])
def test_bad_seed(seed):
    with pytest.raises((ValueError, TypeError), match="seed"):
        optkern.SGLD([np.zeros(3)], lr=0.1, seed=seed, backend="numba")


@pytest.mark.parametrize("average", [-1, 1.5, "yes"])
def test_bad_average(average):
    with pytest.raises((ValueError, TypeError), match="average"):
        optkern.SGD([np.zeros(3)], lr=0.1, average=average, backend="numba")


def test_check_finite_must_be_bool():
    with pytest.raises(TypeError, match="check_finite"):
        optkern.SGD([np.zeros(3)], lr=0.1, check_finite="no", backend="numba")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_option_set_in_param_group_after_construction(backend):
    opt, params = _stepped("adam", backend, dict(lr=0.01))
    snap = snapshot(opt, params)
    opt.param_groups[0]["betas"] = (0.9, 1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        opt.step([np.ones(7), np.ones((3, 4))])
    opt.param_groups[0]["betas"] = (0.9, 0.999)
    assert_unchanged(opt, params, snap)


# -------------------------------------------------------------------- non-finite
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, kw", fixed_cases())
def test_non_finite_gradient_changes_nothing(name, kw, backend):
    opt, params = _stepped(name, backend, kw)
    snap = snapshot(opt, params)
    for bad in (np.nan, np.inf, -np.inf):
        g0, g1 = np.ones(7), np.ones((3, 4))
        g1[2, 3] = bad  # in the LAST tensor: the first must not have been updated either
        with pytest.raises(FloatingPointError, match=r"grads\[1\]"):
            opt.step([g0, g1])
        assert_unchanged(opt, params, snap)
        g0[0] = bad
        with pytest.raises(FloatingPointError, match=r"grads\[0\]"):
            opt.step([g0, np.ones((3, 4))])
        assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_check_finite_false_skips_the_check(backend, dtype):
    p = np.zeros(5, dtype)
    opt = optkern.SGD([p], lr=0.1, check_finite=False, backend=backend)
    g = np.ones(5, dtype)
    g[1] = np.nan
    g[3] = np.inf
    opt.step([g])  # no error: the caller opted out
    assert np.isnan(p[1]) and np.isinf(p[3])
    np.testing.assert_array_equal(p[[0, 2, 4]], dtype(-0.1))
