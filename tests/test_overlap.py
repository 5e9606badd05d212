"""Issue 16 item 6: overlapping arrays are refused on every backend, with a
ValueError before anything is modified (parameters, optimizer state, output
buffers).  "cuda" runs in Numba's CUDA simulator (conftest)."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import optkern
from optkern import _backend
from optkern.losses import loss_and_grad
from optkern.optimizers import arrays_overlap

BACKENDS = [b for b in ("numpy", "numba", "numba-parallel", "cython", "cuda")
            if b in _backend.BACKENDS and (b != "cuda" or _backend.cuda_available())]
DTYPES = [np.float64, np.float32]


def _unchanged(opt, before_params, before_state):
    after = opt.state_dict()
    assert after["state"].keys() == before_state["state"].keys()
    for k, entry in before_state["state"].items():
        for name, v in entry.items():
            np.testing.assert_array_equal(after["state"][k][name], v)
    for p, b in zip((p for g in opt.param_groups for p in g["params"]), before_params):
        np.testing.assert_array_equal(p, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [optkern.SGD, optkern.Adam, optkern.RMSprop])
def test_gradient_overlapping_its_parameter(backend, dtype, cls):
    buf = np.arange(1, 12, dtype=dtype)
    p, g = buf[1:], buf[:-1]
    opt = cls([p], lr=0.1, backend=backend)
    opt.step([np.ones_like(p)])                   # some state to keep
    params, state = [p.copy()], opt.state_dict()
    broadcast = np.lib.stride_tricks.as_strided(buf[5:], shape=p.shape, strides=(0,))
    for grad in (g, p, broadcast):
        with pytest.raises(ValueError, match=r"grads\[0\] shares memory with params\[0\]"):
            opt.step([grad])
        _unchanged(opt, params, state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_parameters_are_refused(backend):
    buf = np.zeros(12)
    with pytest.raises(ValueError, match=r"params\[1\] shares memory with params\[0\]"):
        optkern.Adam([buf[:7], buf[5:]], backend=backend)
    opt = optkern.Adam([buf[:6]], backend=backend)
    with pytest.raises(ValueError, match=r"shares memory with params\[0\]"):
        opt.add_param_group({"params": [buf[4:10]]})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [buf[6:]]})    # disjoint views of one buffer are fine


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_disjoint_views_of_one_buffer_match_the_reference(backend, dtype):
    """Adjacent parameter views and interleaved gradient views (grads[::2],
    grads[1::2]) of one buffer: accepted, and the same numbers as separate
    arrays on the NumPy reference."""
    rng = np.random.default_rng(0)
    buf = rng.normal(size=24).astype(dtype)
    grads = rng.normal(size=24).astype(dtype)
    params = [buf[0:6], buf[6:12], buf[12:]]
    ref = [a.copy() for a in params]
    opt = optkern.Adam(params, lr=0.1, backend=backend)
    refopt = optkern.Adam(ref, lr=0.1, backend="numpy")
    gs = [grads[0:12:2], grads[1:12:2], grads[12:]]
    for _ in range(3):
        opt.step(gs)
        refopt.step(gs)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    for a, r in zip(params, ref):
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "cuda"])
def test_sparse_step_gradient_overlap(backend):
    W = np.zeros((6, 3))
    opt = optkern.Adagrad([W], lr=0.1, backend=backend)
    with pytest.raises(ValueError, match="shares memory"):
        opt.step([W[:2]], rows=[np.array([0, 1])])
    assert not W.any()


@settings(max_examples=60, deadline=None)
@given(a=st.integers(0, 39), b=st.integers(0, 39), sb=st.integers(1, 3),
       length=st.integers(1, 12),
       backend=st.sampled_from([b for b in BACKENDS if b != "cuda"]))
def test_overlap_is_refused_exactly_when_memory_is_shared(a, b, sb, length, backend):
    buf = np.arange(64, dtype=np.float64)
    p = buf[a:a + length]
    g = buf[b:b + sb * length:sb][:length]
    if p.shape != g.shape or p.size == 0:
        return
    shared = np.shares_memory(p, g)
    before = buf.copy()
    opt = optkern.SGD([p], lr=0.5, backend=backend)
    if shared:
        with pytest.raises(ValueError, match="shares memory"):
            opt.step([g])
        np.testing.assert_array_equal(buf, before)
    else:
        expected = p - 0.5 * g
        opt.step([g])
        np.testing.assert_array_equal(p, expected)


def test_device_arrays_overlap():
    if "cuda" not in BACKENDS:
        pytest.skip("the cuda backend is not available (no GPU, simulator off)")
    from numba import cuda
    d = cuda.to_device(np.arange(10.0))
    assert arrays_overlap(d[1:], d[:-1])
    assert not arrays_overlap(d[:5], d[5:])
    opt = optkern.SGD([d[5:]], lr=0.1, backend="cuda")
    with pytest.raises(ValueError, match="shares memory"):
        opt.step([d[3:8]])
    np.testing.assert_array_equal(d.copy_to_host(), np.arange(10.0))
    with pytest.raises(ValueError, match="shares memory"):
        optkern.SGD([d[:6], d[4:]], backend="cuda")


class _DeviceView:
    """Only a __cuda_array_interface__ (as a real GPU's arrays, which the
    simulator's host-backed arrays are not), made from a host view's layout
    at a made-up device address, so arrays_overlap must decide from the
    interface alone."""

    BASE = 0x7F0000000000

    def __init__(self, view, base):
        ptr = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        self.__cuda_array_interface__ = {
            "data": (self.BASE + ptr, False), "shape": view.shape, "typestr": view.dtype.str,
            "strides": None if view.flags.c_contiguous else view.strides, "version": 3}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 7),
       a=st.tuples(st.integers(-45, 45), st.integers(-45, 45), st.sampled_from([1, 2, 3, -1, -2])),
       b=st.tuples(st.integers(-45, 45), st.integers(-45, 45), st.sampled_from([1, 2, 3, -1, -2])),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_device_overlap_is_exact_from_the_interface(n, m, a, b, dtype):
    """Strided device views (2-D, negative steps, interleaved such as d[::2]
    and d[1::2]) are judged as NumPy judges the same host views: disjoint
    views are accepted, not refused by their bounds."""
    host = np.zeros((n, m), dtype)
    va, vb = host[slice(*a)], host[slice(*b)][:, ::-1]
    expected = bool(np.shares_memory(va, vb))
    assert arrays_overlap(_DeviceView(va, host), _DeviceView(vb, host)) == expected
    flat = host.ravel()
    assert not arrays_overlap(_DeviceView(flat[::2], flat), _DeviceView(flat[1::2], flat))
    if flat.size > 1:
        assert arrays_overlap(_DeviceView(flat[::2], flat), _DeviceView(flat[:2], flat))


# ---------------------------------------------------------------------------
# loss_and_grad's out buffers
# ---------------------------------------------------------------------------
def _loss_problem(dtype, sparse=False):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(8, 3)).astype(dtype)
    y = rng.integers(0, 3, 8)
    W = rng.normal(size=(3, 3)).astype(dtype)
    b = rng.normal(size=3).astype(dtype)
    return (sp.csr_matrix(X) if sparse else X), y, W, b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_buffers_overlapping_each_other(backend, dtype):
    X, y, W, b = _loss_problem(dtype)
    big = np.zeros(12, dtype)
    dW = big[:9].reshape(3, 3)
    for db in (dW[0], big[8:11]):
        with pytest.raises(ValueError, match=r"out\[0\] \(dW\) and out\[1\] \(db\) share"):
            loss_and_grad(X, y, W, b, out=(dW, db), backend=backend)
        assert not big.any()
    # separate views of one buffer are fine and agree with the reference
    v, gW, gb = loss_and_grad(X, y, W, b, out=(dW, big[9:12]), backend=backend)
    rv, rW, rb = loss_and_grad(X, y, W, b, backend="numpy")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(gW, rW, rtol=tol, atol=tol)
    np.testing.assert_allclose(gb, rb, rtol=tol, atol=tol)
    np.testing.assert_allclose(v, rv, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_out_buffers_overlapping_inputs(backend, sparse):
    dtype = np.float64
    X, y, W, b = _loss_problem(dtype, sparse)
    sw = np.ones(8, dtype)
    Xd = X.data if sparse else X
    # dW over X's values (X.data for CSR), db over b and over sample_weight
    cases = {"X": Xd[:9].reshape(3, 3) if sparse else Xd.reshape(-1)[:9].reshape(3, 3),
             "b": b, "sample_weight": sw[:3]}
    keep = [a.copy() for a in (Xd, W, b, sw)]
    for name, clash in cases.items():
        if name == "X":
            out = (clash, np.empty(3, dtype))
        else:
            out = (np.empty((3, 3), dtype), clash)
        needle = name
        with pytest.raises(ValueError, match=f"shares memory with {needle}"):
            loss_and_grad(X, y, W, b, sample_weight=sw, out=out, backend=backend)
        for a, k in zip((Xd, W, b, sw), keep):
            np.testing.assert_array_equal(a, k)
