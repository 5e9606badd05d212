"""Every optimizer x option set x backend x dtype agrees with the NumPy reference.

The reference (backend="numpy", kernels/reference.py) is the oracle: it is
written independently of the scalar rules the compiled backends are built from.
"""

import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

import optkern
from optkern import _backend
from conftest import (OPTION_SETS, FIXED_OPTIONS, assert_close, assert_states_close,
                      cpu_backends, layouts, make, serial_backends, tolerance)

N_STEPS = 100
DTYPES = [np.float64, np.float32]

dim = st.integers(1, 8)
vec = st.integers(1, 50)


@st.composite
def layouts_for(draw, n_tensors):
    """(shape, order) per tensor: one 1-D array, or 1-D + 2-D C + 2-D F."""
    if n_tensors == 1:
        kind = draw(st.sampled_from(["1d", "2d-C", "2d-F"]))
        if kind == "1d":
            return [((draw(vec),), "C")]
        return [((draw(dim), draw(dim)), kind[-1])]
    return [((draw(vec),), "C"), ((draw(dim), draw(dim)), "C"),
            ((draw(dim), draw(dim) + 1), "F")]


def _grad_sequence(rng, params, n_steps, c_order_grads):
    """n_steps lists of random gradients; layout either C or the param's."""
    seq = []
    for _ in range(n_steps):
        step = []
        for p in params:
            g = rng.standard_normal(p.shape).astype(p.dtype)
            step.append(np.ascontiguousarray(g) if c_order_grads
                        else np.array(g, order="F" if p.flags.f_contiguous else "C"))
        seq.append(step)
    return seq


def run(name, kw, backend, params0, grads, **extra):
    params = [p.copy(order="K") for p in params0]
    opt = make(name, params, backend, **kw, **extra)
    for gs in grads:
        opt.step(gs)
    return params, opt


@pytest.mark.parametrize("n_tensors", [1, 3], ids=["one", "several"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_backends_agree_with_reference(option_set, dtype, n_tensors):
    """Every compiled backend (and "auto") against one reference run per example;
    all backends are checked and every disagreement is reported together."""
    name, hyper_strategy = OPTION_SETS[option_set]
    backends = cpu_backends()

    @given(kw=hyper_strategy, shapes=layouts_for(n_tensors), data_seed=st.integers(0, 2**32 - 1),
           c_order_grads=st.booleans())
    def check(kw, shapes, data_seed, c_order_grads):
        rng = np.random.default_rng(data_seed)
        params0 = layouts(rng, dtype, shapes)
        grads = _grad_sequence(rng, params0, N_STEPS, c_order_grads)
        ref, ref_opt = run(name, kw, "numpy", params0, grads)
        ref_sd = ref_opt.state_dict()
        failures = []
        for backend in backends:
            got, opt = run(name, kw, backend, params0, grads)
            assert opt.backend != "numpy"
            try:
                for k, (a, b) in enumerate(zip(got, ref)):
                    assert a.flags.f_contiguous == params0[k].flags.f_contiguous
                    assert a.shape == b.shape and a.dtype == b.dtype
                    assert_close(a, b, dtype, f"{option_set} {backend} params[{k}] {kw}")
                assert_states_close(opt.state_dict(), ref_sd, dtype, f"{option_set} {backend}")
            except AssertionError as exc:
                failures.append(f"--- backend {backend!r}:\n{exc}")
        assert not failures, "\n".join(failures)

    check()


def test_cython_extension_is_built():
    """CI builds the Cython extension; a silently missing backend is a failure."""
    assert _backend.cython_module() is not None, (
        "optkern.kernels.cython._updates is not importable: the 'cython' backend is "
        "missing (pip install -e . --no-build-isolation)")
    assert "cython" in optkern.available_backends()


def _all_fixed():
    for name, sets in FIXED_OPTIONS.items():
        for j, kw in enumerate(sets):
            yield pytest.param(name, kw, id=f"{name}-{j}")


def _threaded_layout(kw):
    """One tensor just below and one just above the size from which the
    numba-parallel drivers thread a tensor's update (kernels/_helpers.py:
    PARALLEL_GRAIN, PARALLEL_GRAIN_NOISE with noise); smaller tensors run the
    serial loop inside the same call."""
    from optkern.kernels._helpers import PARALLEL_GRAIN, PARALLEL_GRAIN_NOISE
    noisy = kw.get("noise", 0) > 0 or kw.get("noise_scale", 0) > 0
    grain = PARALLEL_GRAIN_NOISE if noisy else PARALLEL_GRAIN
    return [((grain - 1,), "C"), ((2, (grain + 5) // 2), "F")]


@pytest.mark.parametrize("size", ["small", "threaded"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name, kw", list(_all_fixed()))
def test_numba_parallel_bit_identical_to_serial(name, kw, dtype, size):
    """numba-parallel equals numba bit for bit: small tensors (the serial loop
    inside the parallel driver) and tensors either side of the threading
    grain (the threaded loop above it)."""
    rng = np.random.default_rng(3)
    if size == "small":
        params0 = layouts(rng, dtype, [((37,), "C"), ((5, 6), "C"), ((4, 7), "F")])
        grads = _grad_sequence(rng, params0, 30, False)
    else:
        params0 = layouts(rng, dtype, _threaded_layout(kw))
        grads = _grad_sequence(rng, params0, 3, False)
    a, oa = run(name, kw, "numba", params0, grads)
    b, ob = run(name, kw, "numba-parallel", params0, grads)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    for idx in sa:
        for key, v in sa[idx].items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(v, sb[idx][key], err_msg=f"{name} {key}")
            else:
                assert v == sb[idx][key]


NOISY = [("sgd", dict(lr=0.05, momentum=0.5, noise=0.1)),
         ("sgld", dict(lr=0.01, noise_scale=1.0))]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name, kw", NOISY, ids=[n for n, _ in NOISY])
def test_seeded_noise_same_on_every_backend_and_reproducible(name, kw, dtype):
    rng = np.random.default_rng(5)
    params0 = layouts(rng, dtype, [((40,), "C"), ((3, 5), "F")])
    grads = _grad_sequence(rng, params0, 20, True)
    ref, _ = run(name, kw, "numpy", params0, grads, seed=1234)
    moved = max(float(np.max(np.abs(r - p0))) for r, p0 in zip(ref, params0))
    for backend in ["numpy"] + cpu_backends():
        got, _ = run(name, kw, backend, params0, grads, seed=1234)
        for a, b in zip(got, ref):
            assert_close(a, b, dtype, f"{name} {backend}")
        again, _ = run(name, kw, backend, params0, grads, seed=1234)
        for a, b in zip(got, again):
            if backend in serial_backends() or backend == "numba-parallel":
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {backend} rerun")
    # the noise is really there: another seed moves the parameters differently,
    # by about the noise's size
    other, _ = run(name, kw, "numba", params0, grads, seed=4321)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(other, ref))
    assert diff > 1e-3 * moved
    # and the noiseless run differs from the noisy one
    quiet = dict(kw, **({"noise": 0.0} if name == "sgd" else {"noise_scale": 0.0}))
    q, _ = run(name, quiet, "numba", params0, grads, seed=1234)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(q, ref)) > 1e-3 * moved


def test_noise_stream_is_the_documented_normal():
    """SGLD with a zero gradient and lr=0.5, noise_scale=1 adds exactly z ~ N(0, 1)."""
    p = np.zeros(20000)
    opt = optkern.SGLD([p], lr=0.5, noise_scale=1.0, seed=99, backend="numba")
    opt.step([np.zeros_like(p)])
    assert abs(p.mean()) < 4 / np.sqrt(p.size)
    assert abs(p.var() - 1.0) < 0.05
    # independent across steps
    first = p.copy()
    opt.step([np.zeros_like(p)])
    second = p - first
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.05


# ------------------------------------------------------------------ Polyak averaging
@pytest.mark.parametrize("backend", ["numpy"] + cpu_backends())
@pytest.mark.parametrize("average", [True, 0, 4, 10])
@pytest.mark.parametrize("name, kw", [("sgd", dict(lr=0.1, momentum=0.9)),
                                      ("adam", dict(lr=0.05))], ids=["sgd", "adam"])
def test_polyak_average_is_running_mean_of_iterates(name, kw, average, backend):
    rng = np.random.default_rng(11)
    params0 = layouts(rng, np.float64, [((13,), "C"), ((3, 4), "F")])
    grads = _grad_sequence(rng, params0, 12, False)
    # iterates from a plain (non-averaging) run
    params = [p.copy(order="K") for p in params0]
    plain = make(name, params, "numpy", **kw)
    iterates = []
    for gs in grads:
        plain.step(gs)
        iterates.append([p.copy() for p in params])
    start = 0 if average is True else average
    params = [p.copy(order="K") for p in params0]
    opt = make(name, params, backend, average=average, **kw)
    for t, gs in enumerate(grads, start=1):
        opt.step(gs)
        avg = opt.averaged_params()
        for k in range(len(params)):
            np.testing.assert_allclose(params[k], iterates[t - 1][k], rtol=1e-12, atol=1e-14)
            if t <= start:
                expected = params0[k]
            else:
                expected = np.mean([it[k] for it in iterates[start:t]], axis=0)
            assert avg[k].shape == params0[k].shape
            np.testing.assert_allclose(avg[k], expected, rtol=1e-12, atol=1e-13,
                                       err_msg=f"step {t} tensor {k}")


def test_swap_averaged_swaps_and_swaps_back():
    p = np.arange(6.0)
    opt = optkern.SGD([p], lr=0.1, average=True, backend="numba")
    for _ in range(3):
        opt.step([np.ones_like(p)])
    params_before = p.copy()
    avg_before = opt.averaged_params()[0].copy()
    opt.swap_averaged()
    np.testing.assert_array_equal(p, avg_before)
    np.testing.assert_array_equal(opt.averaged_params()[0], params_before)
    opt.swap_averaged()
    np.testing.assert_array_equal(p, params_before)


def test_average_false_has_no_average():
    opt = optkern.SGD([np.zeros(3)], lr=0.1, backend="numba")
    with pytest.raises(ValueError, match="average"):
        opt.averaged_params()


# ------------------------------------------------------------- changing hyperparameters
@pytest.mark.parametrize("backend", ["numpy"] + cpu_backends())
@pytest.mark.parametrize("how", ["property", "param_groups"])
def test_changing_lr_takes_effect(backend, how):
    rng = np.random.default_rng(2)
    p = rng.standard_normal(17)
    opt = optkern.SGD([p], lr=0.1, backend=backend)
    g = rng.standard_normal(17)
    before = p.copy()
    opt.step([g])
    np.testing.assert_allclose(p, before - 0.1 * g, rtol=1e-15, atol=1e-15)
    if how == "property":
        opt.lr = 0.003
    else:
        opt.param_groups[0]["lr"] = 0.003
    assert opt.lr == 0.003
    before = p.copy()
    opt.step([g])
    np.testing.assert_allclose(p, before - 0.003 * g, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("backend", ["numpy"] + cpu_backends())
@pytest.mark.parametrize("name, kw", [("sgd", dict(lr=0.1, momentum=0.9)),
                                      ("adam", dict(lr=0.01)), ("nadam", dict(lr=0.01))],
                         ids=["sgd", "adam", "nadam"])
def test_schedule_matches_reference(name, kw, backend):
    """An lr changed every step gives the reference's trajectory."""
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal((4, 5))
    grads = [[rng.standard_normal((4, 5))] for _ in range(20)]
    runs = []
    for b in ("numpy", backend):
        p = p0.copy()
        opt = make(name, [p], b, **kw)
        for t, gs in enumerate(grads):
            opt.lr = kw["lr"] / (1 + t)
            opt.step(gs)
        runs.append(p)
    assert_close(runs[1], runs[0], np.float64)


@pytest.mark.parametrize("backend", ["numpy"] + cpu_backends())
@pytest.mark.parametrize("bad", [-0.5, float("nan"), "0.1"])
def test_invalid_new_lr_raises_at_next_step_and_changes_nothing(backend, bad):
    rng = np.random.default_rng(9)
    p = rng.standard_normal(10)
    opt = optkern.Adam([p], lr=0.01, backend=backend)
    g = rng.standard_normal(10)
    opt.step([g])
    p_before = p.copy()
    sd_before = opt.state_dict()
    opt.lr = bad
    with pytest.raises((ValueError, TypeError), match="lr"):
        opt.step([g])
    np.testing.assert_array_equal(p, p_before)
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == sd_before["state"][0]["step"] == 1
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(sd["state"][0][key], sd_before["state"][0][key])
    # a valid lr makes it step again, as if the failed call never happened
    opt.lr = 0.01
    opt.step([g])
    q = p_before.copy()
    ref = optkern.Adam([q], lr=0.01, backend="numpy")
    ref.load_state_dict(sd_before)
    ref.step([g])
    assert_close(p, q, np.float64)


def test_changed_option_needing_new_state_raises():
    """Turning amsgrad on after construction needs an unallocated state: a clear error."""
    p = np.zeros(4)
    opt = optkern.Adam([p], lr=0.01, backend="numba")
    opt.step([np.ones(4)])
    opt.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match="state"):
        opt.step([np.ones(4)])


def test_param_groups_with_different_hyperparameters():
    """Two groups, each with its own lr/weight decay, match two separate optimizers."""
    rng = np.random.default_rng(1)
    a0, b0 = rng.standard_normal(8), rng.standard_normal((2, 3))
    grads = [[rng.standard_normal(8), rng.standard_normal((2, 3))] for _ in range(10)]
    for backend in ["numpy"] + cpu_backends():
        a, b = a0.copy(), b0.copy()
        opt = optkern.Adam([{"params": [a], "weight_decay": 0.1}, {"params": [b], "lr": 0.05}],
                           lr=0.01, backend=backend)
        a2, b2 = a0.copy(), b0.copy()
        oa = optkern.Adam([a2], lr=0.01, weight_decay=0.1, backend="numpy")
        ob = optkern.Adam([b2], lr=0.05, backend="numpy")
        for ga, gb in grads:
            opt.step([ga, gb])
            oa.step([ga])
            ob.step([gb])
        assert_close(a, a2, np.float64, backend)
        assert_close(b, b2, np.float64, backend)


@pytest.mark.parametrize("name", sorted(optkern.OPTIMIZERS))
def test_auto_picks_an_available_compiled_backend(name):
    kw = FIXED_OPTIONS[name][0]
    opt = make(name, [np.zeros(5)], "auto", **kw)
    assert opt.backend in optkern.available_backends()
    assert opt.backend != "numpy"


def test_auto_thresholds_are_the_documented_ones(monkeypatch):
    """README "Backends": Cython below CYTHON_MAX_SIZE (when built), serial Numba
    up to PARALLEL_MIN_SIZE, then the parallel loop; device arrays stay on it.
    On a quiet 2-core machine (a busy one stays serial: tests/test_auto_rule.py)."""
    import os
    from optkern import _backend
    monkeypatch.setattr(_backend, "_CORES", 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    small, medium = _backend.CYTHON_MAX_SIZE - 1, _backend.CYTHON_MAX_SIZE
    large = _backend.PARALLEL_MIN_SIZE
    has_cython = _backend.cython_module() is not None
    assert _backend.choose_auto(small) == ("cython" if has_cython else "numba")
    assert _backend.choose_auto(medium) == "numba"
    assert _backend.choose_auto(large - 1) == "numba"
    assert _backend.choose_auto(large) == "numba-parallel"
    assert _backend.choose_auto(10, on_device=True) == "cuda"
    assert make("adam", [np.zeros(large, np.float32)], "auto").backend == "numba-parallel"


def test_defaults_follow_torch():
    """Defaults named in the issue (torch.optim's)."""
    p = [np.zeros(2)]
    assert optkern.SGD(p).defaults["lr"] == 1e-3
    d = optkern.Adam([np.zeros(2)]).defaults
    assert (d["lr"], tuple(d["betas"]), d["eps"], d["weight_decay"], d["amsgrad"]) == \
        (1e-3, (0.9, 0.999), 1e-8, 0.0, False)
    assert optkern.AdamW([np.zeros(2)]).defaults["weight_decay"] == 1e-2
    d = optkern.RMSprop([np.zeros(2)]).defaults
    assert (d["lr"], d["alpha"], d["eps"], d["centered"]) == (1e-2, 0.99, 1e-8, False)
    d = optkern.Adagrad([np.zeros(2)]).defaults
    assert (d["lr"], d["lr_decay"], d["eps"], d["initial_accumulator_value"]) == \
        (1e-2, 0.0, 1e-10, 0.0)
    d = optkern.Adadelta([np.zeros(2)]).defaults
    assert (d["lr"], d["rho"], d["eps"]) == (1.0, 0.9, 1e-6)


def test_tolerance_helper_is_strict_enough():
    """The comparison helper itself catches a one-ulp-per-step drift of 1e-9."""
    a = np.ones(4)
    with pytest.raises(AssertionError):
        assert_close(a * (1 + 1e-9), a, np.float64)
    assert tolerance(np.float32) == 1e-5


# Options that allocate every state of each optimizer, with torch's default
# betas/alpha/rho: the common case.
ALL_STATES = {
    "sgd": dict(lr=0.01, momentum=0.9, dampening=0.1),
    "adagrad": dict(lr=0.01, initial_accumulator_value=0.1),
    "rmsprop": dict(lr=0.01, centered=True, momentum=0.5),
    "adadelta": dict(),
    "adam": dict(lr=0.01, amsgrad=True),
    "adamw": dict(lr=0.01, amsgrad=True),
    "adamax": dict(lr=0.01),
    "nadam": dict(lr=0.01),
    "radam": dict(lr=0.01),
    "sgld": dict(lr=0.01, seed=3),
}


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("name", sorted(ALL_STATES))
def test_float32_first_steps_match_reference_with_default_hyperparameters(name, backend):
    """Three float32 steps with torch's default betas/alpha/rho agree with the
    float32 reference to the float32 tolerance (1e-5 relative).

    A kernel that rounds beta to float32 *before* forming 1 - beta loses
    digits: float32(0.999) = 0.99900001287..., so 1 - beta is off by 1.3e-5
    relative (1.7e-4 for beta2 = 0.9999) while the reference (and torch) form
    1 - beta in double.
    """
    rng = np.random.default_rng(8)
    p0 = rng.standard_normal(64).astype(np.float32)
    grads = [[rng.standard_normal(64).astype(np.float32)] for _ in range(3)]
    ref, ref_opt = run(name, ALL_STATES[name], "numpy", [p0], grads)
    got, opt = run(name, ALL_STATES[name], backend, [p0], grads)
    assert_close(got[0], ref[0], np.float32, f"{name} params")
    assert_states_close(opt.state_dict(), ref_opt.state_dict(), np.float32, name)


HIGH_DECAY = [
    ("adam", dict(lr=0.01, betas=(0.9, 0.9999)), "exp_avg_sq"),
    ("adamw", dict(lr=0.01, betas=(0.9, 0.9999)), "exp_avg_sq"),
    ("nadam", dict(lr=0.01, betas=(0.9, 0.9999)), "exp_avg_sq"),
    ("radam", dict(lr=0.01, betas=(0.9, 0.9999)), "exp_avg_sq"),
    ("adam", dict(lr=0.01, betas=(0.9999, 0.999)), "exp_avg"),
    ("rmsprop", dict(lr=0.01, alpha=0.9999), "square_avg"),
    ("adadelta", dict(rho=0.9999), "square_avg"),
]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("name, kw, state", HIGH_DECAY,
                         ids=[f"{n}-{s}-{list(k.values())[-1]}" for n, k, s in HIGH_DECAY])
def test_float32_one_minus_beta_keeps_its_digits(name, kw, state, backend):
    """After ONE float32 step the state is (1 - beta)*g (or g^2): elementwise
    within 1e-5 of the reference, which forms 1 - beta in double like torch.

    Rounding beta = 0.9999 to float32 first (0.99989998...) makes 1 - beta
    1.00017e-4: a 1.7e-4 relative error in every element of the state.
    """
    rng = np.random.default_rng(12)
    p0 = rng.standard_normal(16).astype(np.float32)
    grads = [[(rng.uniform(0.5, 2.0, 16) * rng.choice([-1, 1], 16)).astype(np.float32)]]
    _, ref_opt = run(name, kw, "numpy", [p0], grads)
    _, opt = run(name, kw, backend, [p0], grads)
    expected = ref_opt.state_dict()["state"][0][state]
    got = opt.state_dict()["state"][0][state]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0,
                               err_msg=f"{name} {kw} {state} on {backend}")


_RELOAD_SCRIPT = """
import sys
import numpy as np, optkern
params = [np.zeros(9) for _ in range(int(sys.argv[1]))]
opt = optkern.SGD(params, lr=0.5, backend="numba-parallel")
opt.step([np.ones(9) for _ in params])
assert all(np.all(p == -0.5) for p in params)
print("ok")
"""


def test_numba_parallel_survives_loading_from_numba_cache(tmp_path):
    """Three fresh processes sharing one (initially empty) kernel cache: one step
    on 1 tensor, then on 3 tensors (compiles), then on 3 tensors again (loads
    from Numba's disk cache).  All must run: numba-parallel is what "auto" picks
    for large problems and the cache is what every later run of a user uses.

    Observed: the third process segfaults (exit code -11) loading the cached
    multi-tensor ``parallel`` driver, a cached non-parallel @njit function that
    calls a cached parallel=True one (the pattern of numba/numba#8578).
    """
    import subprocess
    import sys
    env = dict(os.environ, OPTKERN_CACHE_DIR=str(tmp_path / "cache"))
    for n_tensors, attempt in ((1, "compile 1"), (3, "compile 3"), (3, "load 3 from cache")):
        proc = subprocess.run([sys.executable, "-c", _RELOAD_SCRIPT, str(n_tensors)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "ok" in proc.stdout, (
            f"{attempt}: exit code {proc.returncode}\n{proc.stderr[-2000:]}")


# ------------------------------------------------- the default step's finite check
def _bits(opt, params):
    """Every parameter and every state entry (arrays as raw bytes: bitwise,
    NaN payloads and signed zeros included)."""
    sd = opt.state_dict()
    out = [(a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()) for a in params]
    for idx in sorted(sd["state"]):
        for key in sorted(sd["state"][idx]):
            v = sd["state"][idx][key]
            out.append((idx, key, np.ascontiguousarray(v).tobytes()
                        if isinstance(v, np.ndarray) else repr(v)))
    out.append(repr(sd["param_groups"]))
    return out


@st.composite
def _bad_gradient_cases(draw):
    name = draw(st.sampled_from(sorted(FIXED_OPTIONS)))
    kw = dict(draw(st.sampled_from(FIXED_OPTIONS[name])))
    sizes = (draw(st.integers(1, 40)), draw(st.integers(1, 3000)))
    tensor = draw(st.integers(0, 1))
    pos = draw(st.integers(0, sizes[tensor] - 1))
    bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    average = draw(st.sampled_from([False, 1]))
    return name, kw, sizes, tensor, pos, bad, average


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["numpy"] + cpu_backends())
@given(case=_bad_gradient_cases(), seed=st.integers(0, 2**16))
def test_non_finite_gradient_leaves_params_and_state_bitwise_unchanged(backend, dtype,
                                                                        case, seed):
    """The default step (check_finite=True) scans the gradients inside the
    update kernel's call: a NaN/inf anywhere in any gradient must raise naming
    that gradient before anything is written; then the next finite step
    proceeds exactly as if the failed one had never been tried."""
    name, kw, sizes, tensor, pos, bad, average = case
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(sizes[0]).astype(dtype),
              rng.standard_normal(sizes[1]).astype(dtype)]
    twin = [p.copy() for p in params]
    opt = make(name, params, backend, average=average, **kw)
    ref = make(name, twin, backend, average=average, **kw)
    for _ in range(2):   # non-trivial state first
        grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
        opt.step(grads)
        ref.step([g.copy() for g in grads])
    before = _bits(opt, params)
    grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
    poisoned = [g.copy() for g in grads]
    poisoned[tensor][pos] = bad
    with pytest.raises(FloatingPointError, match=rf"grads\[{tensor}\]"):
        opt.step(poisoned)
    assert _bits(opt, params) == before
    opt.step(grads)
    ref.step(grads)
    assert _bits(opt, params) == _bits(ref, twin)


@pytest.mark.parametrize("backend", [b for b in cpu_backends()
                                     if b in ("numba-parallel", "cython")])
@pytest.mark.parametrize("where", ["first", "chunk-edge", "last"])
def test_non_finite_gradient_found_by_the_parallel_chunked_scan(backend, where):
    """Large gradients are scanned in parallel chunks of 65536 elements (the
    Cython kernels from 4 chunks, the Numba ones from 4 chunks and
    PARALLEL_GRAIN elements, where the update is threaded too): a bad value in
    any chunk, at a chunk edge too, is found."""
    from optkern.kernels._helpers import PARALLEL_GRAIN
    n = max(4 * 65536, PARALLEL_GRAIN) + 5
    pos = {"first": 0, "chunk-edge": 2 * 65536 - 1, "last": n - 1}[where]
    rng = np.random.default_rng(pos)
    p = rng.standard_normal(n).astype(np.float32)
    opt = optkern.Adam([p], lr=0.01, backend=backend)
    opt.step([rng.standard_normal(n).astype(np.float32)])
    before = _bits(opt, [p])
    g = rng.standard_normal(n).astype(np.float32)
    g[pos] = np.inf
    with pytest.raises(FloatingPointError, match=r"grads\[0\]"):
        opt.step([g])
    assert _bits(opt, [p]) == before


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name, user, noisy", [
    ("adam", (0.01, 0.9, 0.999, 1e-8, 0.01, True, False, True, False), False),
    ("sgld", (0.01, 0.5, 0.0, False), True)], ids=["adam", "sgld"])
def test_epoch_update_loop_parallel_equals_serial_either_side_of_the_grain(
        name, user, noisy, dtype):
    """The compiled epochs' one-tensor update (``_loop_parallel``, threaded
    from the grain on, the serial loop below it) against ``_loop_serial``,
    bit for bit, one size below the grain and one above, with Polyak
    averaging and (SGLD) the noise stream."""
    from optkern.kernels import _helpers, drivers, rules
    spec = rules.RULES[name]
    mod = drivers.module_for(name)
    grain = _helpers.PARALLEL_GRAIN_NOISE if noisy else _helpers.PARALLEL_GRAIN
    hyper, _ = spec.prepare(3, (), *user)
    key = _helpers.step_key(11, 3) if noisy else None
    for n in (grain - 1, grain + 7):
        rng = np.random.default_rng(n)
        p0 = rng.standard_normal(n).astype(dtype)
        g = rng.standard_normal(n).astype(dtype)
        states0 = [np.abs(rng.standard_normal(n)).astype(dtype) for _ in rules.state_names(spec)]
        out = []
        for loop in (mod._loop_serial, mod._loop_parallel):
            p, states, avg = p0.copy(), [s.copy() for s in states0], p0.copy()
            loop(p, g, *states, avg, hyper, 0.25, key, 5)
            out.append([p, avg] + states)
        for a, b in zip(*out):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} n={n}")
        assert not np.array_equal(out[0][0], p0)
