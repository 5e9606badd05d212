"""Shared test configuration and helpers.

The CUDA backend runs in Numba's simulator unless the caller says otherwise:
this must happen before numba is imported anywhere, hence the top of this file.
Tests marked ``gpu`` need a real GPU (simulator off and
``numba.cuda.is_available()``) and are skipped otherwise.

Helpers here are imported by the test modules (``from conftest import ...``):
the option sets every optimizer is tested with, array builders, and the
tolerance used to compare a backend with the NumPy reference.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
# backend="auto" compiles in the foreground in the suite: in the default
# "background" mode a cold call is served by the Cython twin until the compile
# server has the Numba kernel, and the twins agree with Numba to rounding, not
# bit for bit, so tests that compare two "auto" runs exactly (determinism,
# save/load, partial_fit continuation) would depend on the server's timing.
# tests/test_jit.py sets each mode itself and covers the background path.
os.environ.setdefault("OPTKERN_JIT", "sync")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings, strategies as st  # noqa: E402

import optkern  # noqa: E402
from optkern import _backend  # noqa: E402

# --------------------------------------------------------------------- hypothesis
# "ci" keeps the whole suite within its time budget on 2 cores; "thorough" is for
# local bug hunting (HYPOTHESIS_PROFILE=thorough).
settings.register_profile(
    "ci", deadline=None, max_examples=5, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", deadline=None, max_examples=100, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ------------------------------------------------------------------------ gpu marker
def real_gpu_present():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        return False
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a real CUDA GPU (skipped when none is present)")


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items):
        return
    if real_gpu_present():
        return
    skip = pytest.mark.skip(reason="needs a real CUDA GPU (NUMBA_ENABLE_CUDASIM=0 and "
                                   "numba.cuda.is_available())")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------------- backends
def cpu_backends():
    """Compiled CPU backends available here, plus "auto" (cuda has its own file)."""
    return [b for b in optkern.available_backends() if b not in ("numpy", "cuda")] + ["auto"]


def serial_backends():
    """Backends whose results are bit-reproducible run to run."""
    out = ["numpy", "numba"]
    if _backend.cython_module() is not None:
        out.append("cython")
    return out


# ---------------------------------------------------------------------- option sets
# Each option set fixes the flags that decide which state arrays exist (so the
# number of compiled signatures stays bounded) and lets hypothesis draw the
# continuous hyperparameters.
lrs = st.floats(1e-4, 0.1)
small_lrs = st.floats(1e-4, 1e-2)
momenta = st.floats(0.05, 0.99)
decays = st.floats(1e-4, 0.1)
beta1s = st.floats(0.0, 0.95)
beta2s = st.floats(0.9, 0.9999)
betas = st.tuples(beta1s, beta2s)
epss = st.sampled_from([1e-8, 1e-6, 1e-3])
seeds = st.integers(0, 2**40)


def _d(**kw):
    return st.fixed_dictionaries({k: (v if isinstance(v, st.SearchStrategy) else st.just(v))
                                  for k, v in kw.items()})


OPTION_SETS = {
    "sgd-plain": ("sgd", _d(lr=lrs)),
    "sgd-momentum-dampening": ("sgd", _d(lr=lrs, momentum=momenta, dampening=st.floats(0, 0.9))),
    "sgd-nesterov": ("sgd", _d(lr=lrs, momentum=momenta, nesterov=True)),
    "sgd-wd-maximize": ("sgd", _d(lr=lrs, momentum=momenta, weight_decay=decays, maximize=True)),
    "sgd-noise": ("sgd", _d(lr=lrs, noise=st.floats(1e-3, 0.1), seed=seeds)),
    "sgld": ("sgld", _d(lr=small_lrs, noise_scale=st.floats(0.01, 1.0), weight_decay=decays,
                        seed=seeds)),
    "adagrad-plain": ("adagrad", _d(lr=lrs, eps=epss)),
    "adagrad-lr-decay-init-acc": ("adagrad", _d(lr=lrs, lr_decay=st.floats(0, 0.1),
                                                initial_accumulator_value=st.floats(0, 1))),
    "adagrad-wd-maximize": ("adagrad", _d(lr=lrs, weight_decay=decays, maximize=True)),
    "rmsprop-plain": ("rmsprop", _d(lr=small_lrs, alpha=st.floats(0.8, 0.999), eps=epss)),
    "rmsprop-centered": ("rmsprop", _d(lr=small_lrs, alpha=st.floats(0.8, 0.999), centered=True)),
    "rmsprop-momentum": ("rmsprop", _d(lr=small_lrs, momentum=st.floats(0.05, 0.9))),
    "rmsprop-centered-momentum-wd-maximize": (
        "rmsprop", _d(lr=small_lrs, momentum=st.floats(0.05, 0.9), centered=True,
                      weight_decay=decays, maximize=True)),
    "adadelta-plain": ("adadelta", _d(lr=st.floats(0.1, 1.0), rho=st.floats(0.5, 0.99))),
    "adadelta-wd-maximize": ("adadelta", _d(lr=st.floats(0.1, 1.0), weight_decay=decays,
                                            maximize=True, eps=epss)),
    "adam-plain": ("adam", _d(lr=lrs, betas=betas, eps=epss)),
    "adam-amsgrad": ("adam", _d(lr=lrs, betas=betas, amsgrad=True)),
    "adam-wd-maximize": ("adam", _d(lr=lrs, weight_decay=decays, maximize=True)),
    "adam-no-bias-correction": ("adam", _d(lr=lrs, betas=betas, bias_correction=False)),
    "adam-decoupled": ("adam", _d(lr=lrs, weight_decay=decays, decoupled_weight_decay=True)),
    "adamw-plain": ("adamw", _d(lr=lrs, betas=betas, weight_decay=decays)),
    "adamw-amsgrad-maximize": ("adamw", _d(lr=lrs, weight_decay=decays, amsgrad=True,
                                           maximize=True)),
    "adamax-plain": ("adamax", _d(lr=lrs, betas=betas, eps=epss)),
    "adamax-wd-maximize": ("adamax", _d(lr=lrs, weight_decay=decays, maximize=True)),
    "nadam-plain": ("nadam", _d(lr=lrs, betas=betas, momentum_decay=st.floats(1e-3, 1e-2))),
    "nadam-coupled-wd": ("nadam", _d(lr=lrs, weight_decay=decays, maximize=True)),
    "nadam-decoupled-wd": ("nadam", _d(lr=lrs, weight_decay=decays,
                                       decoupled_weight_decay=True)),
    "radam-plain": ("radam", _d(lr=lrs, betas=betas, eps=epss)),
    "radam-coupled-wd": ("radam", _d(lr=lrs, weight_decay=decays, maximize=True)),
    "radam-decoupled-wd": ("radam", _d(lr=lrs, weight_decay=decays,
                                       decoupled_weight_decay=True)),
    "ftrl-plain": ("ftrl", _d(lr=st.floats(0.01, 1.0), beta=st.floats(0.0, 2.0))),
    "ftrl-l1-l2": ("ftrl", _d(lr=st.floats(0.01, 1.0), l1=st.floats(0.0, 0.5),
                              l2=st.floats(0.0, 1.0),
                              initial_accumulator_value=st.floats(0.0, 1.0))),
    "ftrl-lr-power": ("ftrl", _d(lr=st.floats(0.01, 1.0), lr_power=st.floats(-1.0, -0.1),
                                 initial_accumulator_value=st.floats(0.1, 1.0),
                                 l1_per_step=st.floats(0.0, 0.01))),
}

# One fixed, representative option set per optimizer (for tests that do not
# need hypothesis: bad input, state dicts, functional kernels, CUDA).
FIXED_OPTIONS = {
    "sgd": [dict(lr=0.05), dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
            dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True),
            dict(lr=0.05, noise=0.01, seed=7)],
    "adagrad": [dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01)],
    "rmsprop": [dict(lr=0.01), dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.01)],
    "adadelta": [dict(lr=1.0, rho=0.8, weight_decay=0.01)],
    "adam": [dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.01, maximize=True),
             dict(lr=0.01, bias_correction=False)],
    "adamw": [dict(lr=0.01, weight_decay=0.05, amsgrad=True)],
    "adamax": [dict(lr=0.01, weight_decay=0.01)],
    "nadam": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.02, decoupled_weight_decay=True)],
    "radam": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.02, decoupled_weight_decay=True)],
    "sgld": [dict(lr=0.01, noise_scale=0.5, seed=11)],
    "ftrl": [dict(lr=0.2, l1=0.05, l2=0.1, beta=0.5),
             dict(lr=0.2, lr_power=-0.7, initial_accumulator_value=0.1, l2_per_step=0.01)],
}


def registry_lr(name):
    """The estimators' default learning rate of optimizer class ``name`` (lower
    case), from its registry entry (kernels/rules.py: estimator_names)."""
    cls = optkern.OPTIMIZERS[name]
    return next(lr for c, lr, _ in optkern.OPTIMIZER_NAMES.values() if c is cls)


# Every optimizer class in the registry is tested: one without hand-picked
# option sets above gets its defaults with the registry's learning rate (and
# hypothesis over the rate), so a new registry entry is in every test that
# iterates these tables without editing this file.
for _name, _cls in optkern.OPTIMIZERS.items():
    if _name not in FIXED_OPTIONS:
        FIXED_OPTIONS[_name] = [dict(lr=registry_lr(_name))]
    if not any(n == _name for n, _ in OPTION_SETS.values()):
        OPTION_SETS[f"{_name}-defaults"] = (_name, _d(lr=st.floats(registry_lr(_name) / 10,
                                                                  registry_lr(_name))))


def fixed_cases():
    """(id, optimizer name, kwargs) for every fixed option set."""
    out = []
    for name, sets in FIXED_OPTIONS.items():
        for j, kw in enumerate(sets):
            out.append(pytest.param(name, kw, id=f"{name}-{j}"))
    return out


def make(name, params, backend, **kw):
    return optkern.OPTIMIZERS[name](params, backend=backend, **kw)


# --------------------------------------------------------------------------- arrays
def layouts(rng, dtype, shapes_orders):
    """Random arrays with the given (shape, order) list."""
    out = []
    for shape, order in shapes_orders:
        a = np.asarray(rng.standard_normal(shape), dtype=dtype)
        out.append(np.asfortranarray(a) if order == "F" else np.ascontiguousarray(a))
    return out


def copies(arrays):
    return [np.array(a, copy=True, order="K") for a in arrays]


def tolerance(dtype):
    return 1e-12 if np.dtype(dtype) == np.float64 else 1e-5


def assert_close(actual, expected, dtype, what=""):
    """Relative agreement with an absolute floor scaled to the values' size."""
    rtol = tolerance(dtype)
    expected = np.asarray(expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol,
                               atol=rtol * max(scale, 1e-3), err_msg=what)


def assert_states_close(sd_actual, sd_expected, dtype, what=""):
    """Compare the 'state' parts of two state_dicts entry by entry."""
    sa, se = sd_actual["state"], sd_expected["state"]
    assert sorted(sa) == sorted(se), what
    for idx in se:
        assert sorted(sa[idx]) == sorted(se[idx]), f"{what} state[{idx}] keys"
        for key, ref in se[idx].items():
            got = sa[idx][key]
            if isinstance(ref, np.ndarray):
                assert got.shape == ref.shape and got.dtype == ref.dtype, (what, idx, key)
                assert_close(got, ref, dtype, f"{what} state[{idx}][{key!r}]")
            elif key == "step":
                assert got == ref, (what, idx, key)
            else:
                assert got == pytest.approx(ref, rel=tolerance(dtype)), (what, idx, key)


def snapshot(opt, params):
    """Deep copies of the parameters and the full state dict (for unchanged-checks)."""
    return copies(params), opt.state_dict()


def assert_unchanged(opt, params, snap):
    before_params, before_sd = snap
    for a, b in zip(params, before_params):
        np.testing.assert_array_equal(a, b)
    after = opt.state_dict()
    assert after["param_groups"] == before_sd["param_groups"]
    assert sorted(after["state"]) == sorted(before_sd["state"])
    for idx, entry in before_sd["state"].items():
        assert sorted(after["state"][idx]) == sorted(entry)
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(after["state"][idx][key], value,
                                              err_msg=f"state[{idx}][{key!r}] changed")
            else:
                assert after["state"][idx][key] == value, f"state[{idx}][{key!r}] changed"
