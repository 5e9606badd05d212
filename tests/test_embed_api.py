"""The embedding API (issue 17 item 6): public .pxd headers, the prepare layer
in C and @njit against the Python prepare the optimizer classes run, checked
scratch sizes, and a cache key that follows optkern's version.

The example downstream package (examples/embed) is built and tested by
.ci/run against a non-editable install."""
import importlib.util
import os
import sys

import numpy as np
import pytest

import optkern
import optkern.kernels as K
from optkern.kernels.rules import RULES

cython_prepare = pytest.importorskip("optkern.kernels.cython.prepare")
cython_updates = pytest.importorskip("optkern.kernels.cython._updates")

_FLAGS = {"amsgrad", "maximize", "nesterov", "bias_correction", "decoupled", "centered",
          "momentum_decay_flag"}


def _user_values(rng, spec):
    out = []
    for name in spec.user_hyper[1:]:
        if name in _FLAGS:
            out.append(float(rng.integers(0, 2)))
        elif name.startswith("beta") or name in ("alpha", "rho", "momentum", "dampening"):
            out.append(float(rng.uniform(0.0, 0.999)))
        elif name == "lr_power":
            out.append(float(-rng.uniform(0.1, 1.0)))
        else:
            out.append(float(10 ** rng.uniform(-8, 0)))
    return out


@pytest.mark.parametrize("name", sorted(RULES))
def test_prepare_in_c_and_njit_equals_the_python_prepare(name):
    spec = RULES[name]
    rng = np.random.default_rng(sorted(RULES).index(name))
    njit_prepare = getattr(K, f"{name}_prepare")
    for _ in range(8):
        step = int(rng.integers(1, 5000))
        lr = float(10 ** rng.uniform(-5, 0))
        user = _user_values(rng, spec)
        scalars = tuple(float(v) * float(rng.uniform(0.5, 1.0)) for _, v in spec.scalar_states)
        want = spec.prepare(step, scalars, lr, *user)
        got_c = cython_prepare.prepare(name, step, scalars, lr, user)
        got_nb = njit_prepare(step, scalars, lr, *user)
        # the same twin in the extension a Cython step runs (its host prepare)
        got_u = cython_updates.prepare(name, step, scalars, lr, user)
        for got in (got_c, got_nb, got_u):
            np.testing.assert_array_equal(np.array(got[0], float), np.array(want[0], float))
            np.testing.assert_array_equal(np.array(got[1], float), np.array(want[1], float))


@pytest.mark.parametrize("name", ["adam", "nadam", "ftrl"])
def test_a_cython_step_runs_the_c_prepare(name, monkeypatch):
    """backend="cython" takes its hyperparameters from the C twin: with the
    Python prepare broken it still steps, and equals the Numba step."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(3)]
    want = p0.copy()
    cls = getattr(optkern, RULES[name].classes[0].name)
    opt = cls(want, backend="numba")
    for g in grads:
        opt.step(g)

    def broken(*args):
        raise AssertionError("the Python prepare ran")
    got = p0.copy()
    opt = cls(got, backend="cython")
    monkeypatch.setattr(opt, "_spec", opt._spec._replace(prepare=broken))
    for g in grads:
        opt.step(g)
    np.testing.assert_array_equal(got, want)
    opt = cls(p0.copy(), backend="numba")     # the same patch reaches a Numba step
    monkeypatch.setattr(opt, "_spec", opt._spec._replace(prepare=broken))
    with pytest.raises(AssertionError, match="Python prepare ran"):
        opt.step(grads[0])


def test_prepare_rejects_wrong_arity():
    with pytest.raises(ValueError, match="adam: user takes 8 values"):
        cython_prepare.prepare("adam", 1, (), 0.1, (0.9,))
    with pytest.raises(ValueError, match="unknown rule"):
        K.prepare_kernel("nope")


def test_public_pxd_headers_carry_version_and_stability():
    import optkern.kernels.cython as C

    root = os.path.join(C.get_include(), "optkern", "kernels", "cython")
    for name in ("updates", "prepare", "losses"):
        with open(os.path.join(root, f"{name}.pxd")) as fh:
            head = fh.read(2000)
        assert f"optkern {optkern.__version__}, C-level API version" in head, name
        assert "Stability:" in head, name
    assert cython_prepare.OPTKERN_VERSION == optkern.__version__


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_loss_buffers_names_the_buffer(dtype):
    d, k = 5, 3
    need = K.loss_scratch_size(2, d, k)
    dW, db, scratch = np.empty((d, k), dtype), np.empty(k, dtype), np.empty(need, dtype)
    K.check_loss_buffers(d, k, True, dW, db, scratch, 2)  # fits: no error
    with pytest.raises(ValueError, match=f"scratch is too small.*{need}.*got {need - 1}"):
        K.check_loss_buffers(d, k, True, dW, db, scratch[:need - 1], 2)
    with pytest.raises(ValueError, match="dW has the wrong shape"):
        K.check_loss_buffers(d, k, True, np.empty((d, k + 1), dtype), db, scratch, 2)
    with pytest.raises(ValueError, match="db is too small"):
        K.check_loss_buffers(d, k, True, dW, db[:1], scratch, 2)
    K.check_loss_buffers(d, k, False, dW, db[:1], scratch, 2)  # no intercept: db unused
    with pytest.raises(ValueError, match="n_chunks must be at least 1"):
        K.check_loss_buffers(d, k, True, dW, db, scratch, 0)


_USER_MODULE = """
from numba import njit
import optkern_fake_kernels as K   # stands in for optkern.kernels


@njit(cache=True)
def tagged(x, _optkern=K.CACHE_TAG):
    return K.scale(x)


@njit(cache=True)
def untagged(x):
    return K.scale(x)
"""


def test_cache_tag_as_default_argument_changes_the_cache_key(tmp_path, monkeypatch):
    # The user's file never changes; the library under it is "upgraded" (its
    # kernel and its CACHE_TAG change).  Numba keys the user's cache on the
    # user's file only: the untagged function keeps serving the old kernel,
    # the tagged one compiles afresh.
    import importlib

    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "optkern_user_code.py").write_text(_USER_MODULE)

    def load(tag, factor):
        (tmp_path / "optkern_fake_kernels.py").write_text(
            f"from numba import njit\nCACHE_TAG = {tag!r}\n\n"
            f"@njit(cache=True)\ndef scale(x):\n    return x * {factor}\n")
        for name in ("optkern_user_code", "optkern_fake_kernels"):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        mod = importlib.import_module("optkern_user_code")
        out = mod.tagged(1.0), mod.untagged(1.0)
        hits = sum(mod.tagged.stats.cache_hits.values())
        return out, hits

    with monkeypatch.context() as m:
        m.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
        from numba.core import config

        m.setattr(config, "CACHE_DIR", str(tmp_path / "cache"))
        assert load("1.0+aaaa", 2.0) == ((2.0, 2.0), 0)
        assert load("1.0+aaaa", 2.0) == ((2.0, 2.0), 1)       # cached, as it should be
        (tagged, untagged), hits = load("1.1+bbbb", 3.0)     # the upgrade
        assert untagged == 2.0   # stale: the old kernel, from the user's cache
        assert (tagged, hits) == (3.0, 0)
    for name in ("optkern_user_code", "optkern_fake_kernels"):
        sys.modules.pop(name, None)


def test_cache_tag_follows_the_version():
    assert K.CACHE_TAG.startswith(optkern.__version__ + "+")
    assert K.OPTKERN_VERSION == optkern.__version__
