"""The "cuda" backend agrees with the NumPy reference, with host arrays and with
numba.cuda device arrays.  Runs in Numba's CUDA simulator (conftest sets
NUMBA_ENABLE_CUDASIM=1): pure Python, so tiny sizes and a few steps."""

import os

import numpy as np
import pytest

import optkern
from optkern import _backend
from conftest import assert_close, assert_states_close, fixed_cases, make

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
N_STEPS = 3

pytestmark = pytest.mark.skipif(not _backend.cuda_available(),
                                reason="no GPU and the simulator is off")


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params0 = [rng.standard_normal(5).astype(dtype),
               np.asfortranarray(rng.standard_normal((2, 3)).astype(dtype))]
    grads = [[rng.standard_normal(5).astype(dtype), rng.standard_normal((2, 3)).astype(dtype)]
             for _ in range(N_STEPS)]
    return params0, grads


def _reference(name, kw, params0, grads, **extra):
    ref = [p.copy(order="K") for p in params0]
    opt = make(name, ref, "numpy", **kw, **extra)
    for gs in grads:
        opt.step(gs)
    return ref, opt


def test_simulator_is_on_in_tests():
    """conftest turns the simulator on unless the caller chose otherwise."""
    import numba
    if SIMULATOR:
        assert numba.config.ENABLE_CUDASIM  # set before numba was first imported
    assert "cuda" in optkern.available_backends()


def test_minimal_cuda_sgd_step_on_host_array():
    """Smallest end-to-end use of the cuda backend: one SGD step, 4 elements."""
    p = np.zeros(4)
    optkern.SGD([p], lr=0.5, backend="cuda").step([np.ones(4)])
    np.testing.assert_array_equal(p, -0.5)


def test_device_arrays_are_recognised():
    """numba.cuda device arrays (real or simulated) count as device arrays."""
    from numba import cuda
    assert _backend.is_cuda_array(cuda.to_device(np.zeros(3)))
    assert not _backend.is_cuda_array(np.zeros(3))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name, kw", fixed_cases())
def test_cuda_host_arrays_agree_with_reference(name, kw, dtype):
    params0, grads = _problem(dtype)
    ref, ref_opt = _reference(name, kw, params0, grads)
    params = [p.copy(order="K") for p in params0]
    opt = make(name, params, "cuda", **kw)
    assert opt.backend == "cuda"
    for gs in grads:
        opt.step(gs)
    for k, (a, b) in enumerate(zip(params, ref)):
        assert a.flags.f_contiguous == params0[k].flags.f_contiguous
        assert_close(a, b, dtype, f"{name} params[{k}]")
    assert_states_close(opt.state_dict(), ref_opt.state_dict(), dtype, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name, kw", fixed_cases())
def test_cuda_device_arrays_agree_with_reference(name, kw, dtype, grads_on="device"):
    from numba import cuda
    params0, grads = _problem(dtype, seed=1)
    ref, ref_opt = _reference(name, kw, params0, grads)
    d_params = [cuda.to_device(p) for p in params0]
    opt = make(name, d_params, "auto", **kw)
    assert opt.backend == "cuda"  # "auto" keeps device arrays on the device
    for gs in grads:
        if grads_on == "device":  # in the parameter's memory order (see below)
            gs = [cuda.to_device(np.array(g, order="F" if p.flags.f_contiguous else "C"))
                  for g, p in zip(gs, params0)]
        opt.step(gs)
    for k, (d, b) in enumerate(zip(d_params, ref)):
        host = d.copy_to_host()
        assert host.shape == b.shape
        assert_close(host, b, dtype, f"{name} params[{k}] (device)")
    assert_states_close(opt.state_dict(), ref_opt.state_dict(), dtype, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_cuda_noise_matches_cpu_backends(dtype):
    """The counter-based noise draws the same numbers on the device."""
    params0, grads = _problem(dtype, seed=2)
    kw = dict(lr=0.05, noise_scale=0.7)
    ref, _ = _reference("sgld", kw, params0, grads, seed=77)
    params = [p.copy(order="K") for p in params0]
    opt = optkern.SGLD(params, backend="cuda", seed=77, **kw)
    for gs in grads:
        opt.step(gs)
    for a, b in zip(params, ref):
        assert_close(a, b, dtype, "sgld on cuda")


def test_cuda_polyak_average():
    params0, grads = _problem(np.float64, seed=3)
    ref, ref_opt = _reference("adam", dict(lr=0.1), params0, grads, average=True)
    params = [p.copy(order="K") for p in params0]
    opt = optkern.Adam(params, lr=0.1, average=True, backend="cuda")
    for gs in grads:
        opt.step(gs)
    for a, b in zip(opt.averaged_params(), ref_opt.averaged_params()):
        assert_close(a, b, np.float64, "average")


def test_cuda_non_finite_gradient_changes_nothing():
    from numba import cuda
    params0, grads = _problem(np.float64, seed=4)
    d_params = [cuda.to_device(p) for p in params0]
    opt = optkern.Adam(d_params, lr=0.1, backend="cuda")
    opt.step(grads[0])
    before = [d.copy_to_host() for d in d_params]
    sd = opt.state_dict()
    bad = [g.copy() for g in grads[1]]
    bad[1][1, 2] = np.nan
    with pytest.raises(FloatingPointError, match=r"grads\[1\]"):
        opt.step([cuda.to_device(bad[0]), cuda.to_device(np.asfortranarray(bad[1]))])
    for d, b in zip(d_params, before):
        np.testing.assert_array_equal(d.copy_to_host(), b)
    after = opt.state_dict()
    for idx in sd["state"]:
        for key, value in sd["state"][idx].items():
            np.testing.assert_array_equal(after["state"][idx][key], value)


def test_cuda_rejects_mismatched_grads():
    from numba import cuda
    d = cuda.to_device(np.zeros(5))
    opt = optkern.SGD([d], lr=0.1, backend="cuda")
    with pytest.raises(ValueError, match=r"grads\[0\].*shape"):
        opt.step([np.zeros(6)])
    with pytest.raises(TypeError, match=r"grads\[0\].*dtype"):
        opt.step([cuda.to_device(np.zeros(5, np.float32))])
    np.testing.assert_array_equal(d.copy_to_host(), 0.0)


@pytest.mark.parametrize("name, kw", [("adam", dict(lr=0.1, amsgrad=True)),
                                      ("sgd", dict(lr=0.1, momentum=0.9))], ids=["adam", "sgd"])
def test_cuda_device_params_with_host_grads(name, kw):
    test_cuda_device_arrays_agree_with_reference(name, kw, np.float64, grads_on="host")


def test_cuda_device_grad_in_other_memory_order_rejected():
    """A device gradient cannot be reordered without a copy: rejected, named."""
    from numba import cuda
    d = cuda.to_device(np.asfortranarray(np.zeros((2, 3))))
    opt = optkern.SGD([d], lr=0.1, backend="cuda")
    with pytest.raises(ValueError, match=r"grads\[0\].*order"):
        opt.step([cuda.to_device(np.ones((2, 3)))])
    np.testing.assert_array_equal(d.copy_to_host(), 0.0)


def test_cpu_backend_refuses_device_arrays():
    from numba import cuda
    d = cuda.to_device(np.zeros(5))
    with pytest.raises(ValueError, match="backend"):
        optkern.SGD([d], lr=0.1, backend="numba")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_real_gpu_large_adam_agrees_with_reference(dtype):
    """On a real GPU: many blocks, 50 steps, 1e5 elements."""
    from numba import cuda
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(100_000).astype(dtype)
    ref = p0.copy()
    d = cuda.to_device(p0)
    opt = optkern.Adam([d], lr=1e-2, amsgrad=True, backend="cuda")
    ropt = optkern.Adam([ref], lr=1e-2, amsgrad=True, backend="numpy")
    for _ in range(50):
        g = rng.standard_normal(100_000).astype(dtype)
        opt.step([cuda.to_device(g)])
        ropt.step([g])
    assert_close(d.copy_to_host(), ref, dtype, "adam on gpu")
