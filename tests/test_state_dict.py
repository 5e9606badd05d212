"""state_dict / load_state_dict: exact round trips, identical resumed trajectories,
validation before any change."""

import copy
import pickle

import numpy as np
import pytest

import optkern
from conftest import (assert_unchanged, cpu_backends, fixed_cases, make, serial_backends,
                      snapshot)

BACKENDS = ["numpy"] + cpu_backends()


def _params(rng, dtype=np.float64):
    return [rng.standard_normal(9).astype(dtype),
            np.asfortranarray(rng.standard_normal((3, 4)).astype(dtype))]


def _grads(rng, n, dtype=np.float64):
    return [[rng.standard_normal(9).astype(dtype),
             rng.standard_normal((3, 4)).astype(dtype)] for _ in range(n)]


def _assert_sd_equal(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a.get("optkern") == b.get("optkern")
    assert sorted(a["state"]) == sorted(b["state"])
    for idx, entry in a["state"].items():
        other = b["state"][idx]
        assert sorted(entry) == sorted(other), idx
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                assert other[key].dtype == value.dtype and other[key].shape == value.shape
                np.testing.assert_array_equal(other[key], value, err_msg=f"{idx} {key}")
            else:
                assert type(other[key]) is type(value) or isinstance(value, float)
                assert other[key] == value, (idx, key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, kw", fixed_cases())
def test_round_trip_is_exact(name, kw, backend):
    rng = np.random.default_rng(0)
    params = _params(rng)
    opt = make(name, params, backend, average=2, **kw)
    for gs in _grads(rng, 5):
        opt.step(gs)
    sd = opt.state_dict()
    assert all(entry["step"] == 5 for entry in sd["state"].values())
    if name == "nadam":
        assert all(0 < entry["mu_product"] < 1 for entry in sd["state"].values())
    assert all("average" in entry for entry in sd["state"].values())
    # state arrays are copies shaped like the params, not views of live state
    assert sd["state"][1]["average"].shape == (3, 4)
    fresh_params = [np.zeros_like(p) for p in params]
    fresh = make(name, fresh_params, backend, average=2, **kw)
    fresh.load_state_dict(copy.deepcopy(sd))
    _assert_sd_equal(fresh.state_dict(), sd)
    # pickling (saving to disk) keeps it exact as well
    fresh2 = make(name, [np.zeros_like(p) for p in params], backend, average=2, **kw)
    fresh2.load_state_dict(pickle.loads(pickle.dumps(sd)))
    _assert_sd_equal(fresh2.state_dict(), sd)
    np.testing.assert_array_equal(fresh.averaged_params()[1], opt.averaged_params()[1])


def test_state_dict_is_a_copy():
    p = np.zeros(4)
    opt = optkern.Adam([p], lr=0.1, backend="numba")
    opt.step([np.ones(4)])
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"][:] = 123.0
    opt2 = optkern.Adam([np.zeros(4)], lr=0.1, backend="numba")
    opt.step([np.ones(4)])
    assert not np.any(opt.state_dict()["state"][0]["exp_avg"] == 123.0)
    del opt2


def test_seed_travels_with_the_state():
    p = np.zeros(10)
    opt = optkern.SGLD([p], lr=0.1, seed=31337, backend="numba")
    opt.step([np.zeros(10)])
    sd = opt.state_dict()
    assert sd["optkern"]["seed"] == 31337
    fresh = optkern.SGLD([p.copy()], lr=0.1, seed=1, backend="numba")
    fresh.load_state_dict(sd)
    assert fresh.state_dict()["optkern"]["seed"] == 31337


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, kw", fixed_cases())
def test_resume_gives_identical_trajectory(name, kw, backend):
    rng = np.random.default_rng(1)
    params0 = _params(rng)
    grads = _grads(rng, 12)
    # uninterrupted, with a schedule applied through lr
    full = [p.copy(order="K") for p in params0]
    if name in ("sgd", "sgld"):
        kw = dict({"seed": 7}, **kw)  # both runs draw the same noise; the state dict carries it
    opt = make(name, full, backend, average=True, **kw)
    for t, gs in enumerate(grads):
        opt.lr = kw.get("lr", 1.0) * (0.9 ** t)
        opt.step(gs)
    # interrupted after 5 steps, resumed into a fresh optimizer (and fresh arrays
    # holding the saved parameter values, as after loading a checkpoint)
    part = [p.copy(order="K") for p in params0]
    first = make(name, part, backend, average=True, **kw)
    for t, gs in enumerate(grads[:5]):
        first.lr = kw.get("lr", 1.0) * (0.9 ** t)
        first.step(gs)
    sd = pickle.loads(pickle.dumps(first.state_dict()))
    saved = [p.copy(order="K") for p in part]
    del first
    resumed_params = [p.copy(order="K") for p in saved]
    # built with different seed / hyperparameters: the state dict restores them
    extra = {"seed": 999} if name in ("sgd", "sgld") else {}
    resumed = make(name, resumed_params, backend, average=True, **dict(kw, **extra))
    resumed.load_state_dict(sd)
    for t, gs in enumerate(grads[5:], start=5):
        resumed.lr = kw.get("lr", 1.0) * (0.9 ** t)
        resumed.step(gs)
    for a, b in zip(resumed_params, full):
        if backend in serial_backends() or backend == "numba-parallel":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    _assert_sd_equal(resumed.state_dict(), opt.state_dict())


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_between_backends(backend):
    """A state saved on one backend resumes on another (arrays are plain NumPy)."""
    rng = np.random.default_rng(2)
    params0 = _params(rng)
    grads = _grads(rng, 8)
    a = [p.copy(order="K") for p in params0]
    oa = optkern.NAdam(a, lr=0.01, backend="numpy")
    for gs in grads[:4]:
        oa.step(gs)
    b = [p.copy(order="K") for p in a]
    ob = optkern.NAdam(b, lr=0.01, backend=backend)
    ob.load_state_dict(oa.state_dict())
    for gs in grads[4:]:
        oa.step(gs)
        ob.step(gs)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------- validation
def _opt_with_state(backend, **kw):
    rng = np.random.default_rng(3)
    params = _params(rng)
    opt = optkern.Adam(params, lr=0.01, amsgrad=True, backend=backend, **kw)
    for gs in _grads(rng, 3):
        opt.step(gs)
    return opt, params


def _bad_dicts(sd):
    """(label, mutated state dict, message pattern)."""
    out = []

    def variant(label, pattern, fn):
        d = copy.deepcopy(sd)
        fn(d)
        out.append(pytest.param(d, pattern, id=label))

    def set_(idx, key, value):
        def fn(d):
            d["state"][idx][key] = value
        return fn

    # the first entries are valid for param 0: the bad one is the LAST thing
    # checked, so nothing may have been applied before the error
    variant("wrong-shape", r"state\[1\]\['exp_avg'\].*shape", set_(1, "exp_avg", np.zeros((4, 3))))
    variant("wrong-dtype", r"state\[1\]\['exp_avg_sq'\].*dtype",
            set_(1, "exp_avg_sq", np.zeros((3, 4), np.float32)))
    variant("missing-state", r"max_exp_avg_sq", set_(1, "max_exp_avg_sq", None))
    variant("unequal-steps", "step", set_(1, "step", int(sd["state"][1]["step"]) + 1))
    variant("missing-entry", "state", lambda d: d["state"].pop(1))
    variant("too-many-params", "params", lambda d: d["param_groups"][0]["params"].append(2))
    variant("bad-lr", "lr", lambda d: d["param_groups"][0].__setitem__("lr", -1.0))
    variant("option-needs-other-state", "state",
            lambda d: d["param_groups"][0].__setitem__("amsgrad", False))
    variant("other-optimizer", "Adam|optimizer",
            lambda d: d["optkern"].__setitem__("optimizer", "SGD"))
    variant("two-groups", "group",
            lambda d: d["param_groups"].append(copy.deepcopy(d["param_groups"][0])))
    variant("not-a-state-dict", "state_dict", lambda d: d.pop("state"))
    return out


_REFERENCE_SD = None


def _reference_sd():
    global _REFERENCE_SD
    if _REFERENCE_SD is None:
        opt, _ = _opt_with_state("numpy")
        # a state dict of the same structure but different numbers
        rng = np.random.default_rng(99)
        for gs in _grads(rng, 4):
            opt.step(gs)
        _REFERENCE_SD = opt.state_dict()
    return _REFERENCE_SD


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad, pattern", _bad_dicts(_reference_sd()))
def test_load_validates_before_changing_anything(backend, bad, pattern):
    opt, params = _opt_with_state(backend)
    snap = snapshot(opt, params)
    with pytest.raises((ValueError, TypeError, KeyError), match=pattern):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, snap)
    # and it still steps normally afterwards
    opt.step([np.ones(9), np.ones((3, 4))])


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_with_different_average_setting_rejected(backend):
    opt, params = _opt_with_state(backend, average=True)
    sd = opt.state_dict()
    other, oparams = _opt_with_state(backend)
    snap = snapshot(other, oparams)
    with pytest.raises(ValueError, match="average"):
        other.load_state_dict(sd)
    assert_unchanged(other, oparams, snap)


def test_zero_state_restarts_the_optimizer():
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(4)]
    p = p0.copy()
    opt = optkern.Adagrad([p], lr=0.1, initial_accumulator_value=0.5, backend="numba")
    for g in grads:
        opt.step([g])
    opt.zero_state()
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 0
    np.testing.assert_array_equal(sd["state"][0]["sum"], 0.5)
    p[...] = p0
    for g in grads:
        opt.step([g])
    q = p0.copy()
    ref = optkern.Adagrad([q], lr=0.1, initial_accumulator_value=0.5, backend="numba")
    for g in grads:
        ref.step([g])
    np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("build", [
    lambda p: optkern.Adam(p, lr=0.01, amsgrad=True, average=True),
    lambda p: optkern.NAdam(p, lr=0.01),
    lambda p: optkern.SGD(p, lr=0.01, momentum=0.9, average=1),
])
def test_snapshot_restore_puts_back_the_optimizer_state(build):
    """The estimators' cheap checkpoint of the last good epoch: after
    _restore the state (arrays, step, scalar states, averages) is exactly
    the snapshot's, so the next steps repeat bit for bit."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 3))
    b = rng.standard_normal(3)
    opt = build([W, b])
    grads = [[rng.standard_normal((5, 3)), rng.standard_normal(3)] for _ in range(6)]
    for g in grads[:2]:
        opt.step(g)
    snap = opt._snapshot()
    before = opt.state_dict()
    W0, b0 = W.copy(), b.copy()
    for g in grads[2:4]:
        opt.step(g)
    assert opt.state_dict()["state"][0]["step"] != before["state"][0]["step"]
    opt._restore(snap)
    W[...], b[...] = W0, b0
    after = opt.state_dict()
    for i, entry in before["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(after["state"][i][key], value)
    assert after["param_groups"] == before["param_groups"]
    for g in grads[4:]:
        opt.step(g)
    W1, b1 = W.copy(), b.copy()
    # the same two steps from the same state, on a fresh optimizer loaded
    # from the dict taken at snapshot time
    W[...], b[...] = W0, b0
    fresh = build([W, b])
    fresh.load_state_dict(before)
    for g in grads[4:]:
        fresh.step(g)
    np.testing.assert_array_equal(W, W1)
    np.testing.assert_array_equal(b, b1)
