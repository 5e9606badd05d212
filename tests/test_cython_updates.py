"""The Cython twin of the update kernels (optkern.kernels.cython._updates).

It is generated at build time from the same rule source as the Numba drivers
(kernels/cython/generate.py reads kernels/rules.py), so every rule in RULES is
checked here against the Numba ``serial`` driver: both dtypes, random sizes,
hyperparameters (through each rule's ``prepare``), present/absent optional
states, averaging and noise on/off, 1 and 3 tensors, and serial against OpenMP
parallel (bit for bit).  Plus the Python-level argument checks, the generator
itself, and a tiny external .pyx that ``cimport``s the C-level API.

Numba compiles one specialisation per argument-type combination (~2 s each on
a cold cache), so the Numba side is always called the same way: one tensor per
call, every state and the average present.  An absent state is emulated
exactly by a fresh zero array whose output is dropped (what the kernels do),
an absent average by a scratch array; the Numba key is None for rules that
never read their noise draw ``z``.
"""

import ast
import importlib
import importlib.util
import inspect
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from optkern.kernels import drivers, reference, rules
from optkern.kernels._helpers import step_key
from optkern.kernels.cython import _updates as U

CYTHON_DIR = os.path.dirname(os.path.abspath(U.__file__))
GENERATE_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(rules.__file__))),
                           "kernels", "cython", "generate.py")
DTYPES = [np.float64, np.float32]
RTOL = {np.float64: 1e-12, np.float32: 1e-5}
SIZES = [1, 2, 3, 7, 16, 31, 100, 257, 1000]
N_STEPS = 3

flags = st.sampled_from([0.0, 1.0])
# Ranges where float32 stays well conditioned (cf. conftest.OPTION_SETS); a
# rule with a new user hyperparameter gets the fallback until listed here.
USER_HYPER = {
    "lr": st.floats(1e-4, 0.1),
    "momentum": st.one_of(st.just(0.0), st.floats(0.05, 0.95)),
    "dampening": st.floats(0.0, 0.9),
    "weight_decay": st.one_of(st.just(0.0), st.floats(1e-4, 0.1)),
    "nesterov": flags, "maximize": flags, "centered": flags, "amsgrad": flags,
    "bias_correction": flags, "decoupled": flags,
    "noise": st.one_of(st.just(0.0), st.floats(1e-3, 0.1)),
    "noise_scale": st.floats(0.01, 1.0),
    "lr_decay": st.floats(0.0, 0.1),
    "eps": st.sampled_from([1e-8, 1e-6, 1e-3]),
    "alpha": st.floats(0.8, 0.999),
    "rho": st.floats(0.5, 0.99),
    "beta1": st.floats(0.0, 0.95),
    "beta2": st.floats(0.9, 0.9999),
    "momentum_decay": st.floats(1e-3, 1e-2),
}
FALLBACK_HYPER = st.floats(0.0, 0.1)


def _load_generate():
    spec = importlib.util.spec_from_file_location("_optkern_generate_under_test", GENERATE_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rule_reads_z(spec):
    """Does the rule read its last parameter (the noise draw)?"""
    fdef = ast.parse(textwrap.dedent(inspect.getsource(spec.rule))).body[0]
    z = fdef.args.args[-1].arg
    return any(isinstance(n, ast.Name) and n.id == z and isinstance(n.ctx, ast.Load)
               for n in ast.walk(fdef))


def _assert_close(actual, expected, dtype, what):
    rtol = RTOL[dtype]
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-6),
                               err_msg=what)


# ------------------------------------------------------------------ module API

def test_module_constants():
    assert isinstance(U.HAVE_OPENMP, bool)
    assert tuple(U.RULE_NAMES) == tuple(rules.RULES)
    for name in rules.RULES:
        assert callable(getattr(U, name)), name


def test_built_from_current_rules():
    gen = _load_generate()
    assert U.SOURCE_HASH == gen.source_hash(), (
        "the Cython extension was not built from the current kernels/rules.py; "
        "rebuild it: pip install -e . --no-build-isolation")


def test_generator_imports_neither_numba_nor_optkern(tmp_path):
    code = textwrap.dedent(f"""
        import sys, importlib.util
        sys.modules["numba"] = None      # importing either would now fail
        sys.modules["optkern"] = None
        spec = importlib.util.spec_from_file_location("gen", {GENERATE_PY!r})
        gen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gen)
        print(gen.write_sources({str(tmp_path)!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "('_updates', " in out.stdout
    for fname in ("_updates.pyx", "_updates.pxd"):
        text = (tmp_path / fname).read_text()
        installed = os.path.join(CYTHON_DIR, fname)
        if os.path.exists(installed):  # editable install: the built sources are current
            with open(installed) as fh:
                assert fh.read() == text, f"{fname} is stale; rebuild"


def _fake_spec(rule, nstates, nhyper):
    return rules.RuleSpec(name="fake", rule=rule, prepare=None,
                          states=tuple(f"s{j}" for j in range(nstates)),
                          kernel_hyper=tuple(f"h{j}" for j in range(nhyper)),
                          user_hyper=(), scalar_states=())


def _rule_with_tan(p, g, s0, h0, z):
    # math.exp is in the rule language (kernels/rulelang); math.tan is not
    s0 = math.tan(g)
    return p - h0 * s0, s0


def _rule_with_loop(p, g, s0, h0, z):
    for _ in range(2):
        p = p - h0 * g
    return p, s0


def _rule_with_floordiv(p, g, s0, h0, z):
    return p - h0 * g // 2, s0


_SCALE = 2.0


def _rule_with_global(p, g, s0, h0, z):
    return p - _SCALE * h0 * g, s0


@pytest.mark.parametrize("rule, what", [(_rule_with_tan, "math.tan"),
                                        (_rule_with_loop, "For"),
                                        (_rule_with_floordiv, "FloorDiv"),
                                        (_rule_with_global, "global name '_SCALE'")])
def test_generator_rejects_what_it_cannot_translate(rule, what):
    gen = _load_generate()
    with pytest.raises(gen.RuleError, match=what):
        gen._Rule(rules, _fake_spec(rule, 1, 1))


def test_generator_checks_the_rule_signature():
    gen = _load_generate()
    with pytest.raises(gen.RuleError, match="parameters"):
        gen._Rule(rules, _fake_spec(_rule_with_floordiv, 2, 1))


# A stand-in rules.py with constructs the real rules do not (yet) use: no
# state, elif, conditional expressions, and/or/not, a chained comparison,
# min/max of three, augmented and tuple assignment, a docstring, a Cython
# keyword as a variable name, a float constant.
_TOY_RULES = '''
import math
from collections import namedtuple

RuleSpec = namedtuple("RuleSpec", "name rule prepare states kernel_hyper user_hyper scalar_states")
RULES = {}


def state_names(spec):
    return tuple(s.partition("?")[0] for s in spec.states)


def clipped_rule(p, g, lr, clip, z):
    """A clipped step: no state."""
    step = lr * g
    if step > clip:
        step = clip
    elif step < -clip:
        step = -clip
    else:
        pass
    p -= step
    return p,


def fancy_rule(p, g, include, acc, a, b, z):
    include = abs(g) if a > 0 and not b else -g
    acc += min(g * g, a, 1.5) + max(include, 0, -p)
    lo, hi = -a, a
    if lo < p < hi or b:
        p = p - 0.5 * g / math.sqrt(acc + 1)
    return p + b * z, include, acc


RULES["clipped"] = RuleSpec("clipped", clipped_rule, None, (), ("lr", "clip"), (), ())
RULES["fancy"] = RuleSpec("fancy", fancy_rule, None, ("inc?b", "acc"), ("a", "b"), (), ())
'''

_TOY_SETUP = '''
import numpy as np
from setuptools import Extension, setup
from Cython.Build import cythonize
# -O0: this checks the translation, and compiles in a third of the time
setup(ext_modules=cythonize([Extension("_updates", ["_updates.pyx"],
                                       include_dirs=[np.get_include()],
                                       extra_compile_args=["-O0"])], quiet=True))
'''


def test_generator_translates_other_rules_faithfully(tmp_path, monkeypatch):
    gen = _load_generate()
    (tmp_path / "toy_rules.py").write_text(_TOY_RULES)
    assert gen.write_sources(str(tmp_path), str(tmp_path / "toy_rules.py")) == [
        ("_updates", str(tmp_path / "_updates.pyx"))]
    (tmp_path / "setup.py").write_text(_TOY_SETUP)
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("toy_rules", tmp_path / "toy_rules.py")
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    monkeypatch.delitem(sys.modules, "_updates", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("_updates")
    assert mod.RULE_NAMES == ("clipped", "fancy")

    rng = np.random.default_rng(3)
    n = 64
    key = step_key(1, 1)
    z = _draws(key, 0, n, "cython")
    for dtype in DTYPES:
        p0 = rng.standard_normal(n).astype(dtype)
        g = rng.standard_normal(n).astype(dtype)
        cases = [("clipped", (0.3, 0.05), []), ("fancy", (0.8, 0.0), [None, "acc"]),
                 ("fancy", (0.5, 1.0), ["inc", "acc"])]
        for name, hyper, states in cases:
            p = p0.copy()
            S = [None if s is None else (np.full(n, 0.25, dtype),) for s in states]
            getattr(mod, name)((p,), (g,), *S, None, hyper, 0.0, key, np.zeros(1, np.int64))
            rule = toy.RULES[name].rule
            for i in range(n):  # the Python rule on NumPy scalars of the dtype
                s_in = [dtype(0.0) if s is None else dtype(0.25) for s in states]
                h = [dtype(x) for x in hyper]
                want = rule(p0[i], g[i], *s_in, *h, dtype(z[i]))
                got = [p[i]] + [S[j][0][i] for j in range(len(states)) if S[j] is not None]
                want = [want[0]] + [want[1 + j] for j in range(len(states)) if S[j] is not None]
                np.testing.assert_allclose(np.array(got, dtype), np.array(want, dtype),
                                           rtol=RTOL[dtype] / 10, err_msg=f"{name} {i}")


# ------------------------------------------------------- Cython against Numba

def _numba_step(name, P, G, S, A, hyper, w, key, offsets):
    """drivers.module_for(name).serial, always with the same argument types."""
    serial = drivers.module_for(name).serial
    for k, (p, g) in enumerate(zip(P, G)):
        states = [(np.zeros_like(p) if s is None else s[k],) for s in S]
        avg = (np.empty_like(p),) if A is None else (A[k],)
        serial((p,), (g,), *states, avg, hyper, w, key, offsets[k:k + 1])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(rules.RULES))
@settings(deadline=None)
@given(data=st.data())
def test_cython_matches_numba_serial_and_parallel_is_identical(name, dtype, data):
    spec = rules.RULES[name]
    snames = rules.state_names(spec)
    user = {u: data.draw(USER_HYPER.get(u, FALLBACK_HYPER), label=u) for u in spec.user_hyper}
    allocated = set(rules.allocated_states(spec, user))
    # optional states allocated although their flag is off must pass through
    extra = data.draw(st.booleans(), label="also allocate unused optional states")
    present = [s in allocated or extra for s in snames]
    n_tensors = data.draw(st.sampled_from([1, 3]), label="tensors")
    sizes = data.draw(st.lists(st.sampled_from(SIZES), min_size=n_tensors,
                               max_size=n_tensors), label="sizes")
    averaging = data.draw(st.booleans(), label="averaging")
    noise = data.draw(st.booleans(), label="noise")
    key_as_int = data.draw(st.booleans(), label="key as Python int")
    start = data.draw(st.integers(1, 30), label="first step")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")

    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = tuple(rng.standard_normal(n).astype(dtype) for n in sizes)
    offsets = rng.integers(0, 2**40, n_tensors).astype(np.int64)
    reads_z = _rule_reads_z(spec)

    def fresh():
        P = tuple(p.copy() for p in p0)
        S = [tuple(np.zeros(n, dtype) for n in sizes) if on else None for on in present]
        A = tuple(p.copy() for p in p0) if averaging else None
        return P, S, A

    runs = {"serial": fresh(), "parallel": fresh(), "numba": fresh()}
    scalars = tuple(v for _, v in spec.scalar_states)
    fn = getattr(U, name)
    for t in range(start, start + N_STEPS):
        hyper, scalars = spec.prepare(t, scalars, *(user[u] for u in spec.user_hyper))
        hyper = tuple(float(h) for h in hyper)
        w = 1.0 / (t - start + 1)
        key = step_key(seed, t) if noise else None
        ckey = int(key) if key is not None and key_as_int else key
        for kind in ("serial", "parallel"):
            P, S, A = runs[kind]
            fn(P, grads, *S, A, hyper, w, ckey, offsets, kind == "parallel")
        P, S, A = runs["numba"]
        _numba_step(name, P, grads, S, A, hyper, w, key if reads_z else None, offsets)

    for part, j in [("params", None), ("avg", None)] + [(s, j) for j, s in enumerate(snames)]:
        got = {}
        for kind, (P, S, A) in runs.items():
            got[kind] = P if part == "params" else A if part == "avg" else S[j]
        if got["serial"] is None:
            continue
        for k in range(n_tensors):
            what = f"{name} {np.dtype(dtype).name} {part}[{k}]"
            np.testing.assert_array_equal(got["parallel"][k], got["serial"][k],
                                          err_msg=what + ": parallel != serial")
            _assert_close(got["serial"][k], got["numba"][k], dtype, what + " vs numba")


def _draws(key, offset, n, backend):
    """The noise draws z: SGD with lr = 0 and sigma = 1 sets p = 0 + z exactly."""
    hyper, _ = rules.RULES["sgd"].prepare(1, (), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    hyper = tuple(map(float, hyper))
    p = np.zeros(n)
    args = ((p,), (np.zeros(n),), (np.zeros(n),), (np.empty(n),), hyper, 0.0, key,
            np.array([offset], np.int64))
    if backend == "numba":
        drivers.module_for("sgd").serial(*args)
    else:
        U.sgd(*args, backend == "cython-parallel")
    return p


def test_noise_draws_are_the_numba_draws():
    key = step_key(123, 4)
    n, offset = 1001, 2**33 + 5
    z = _draws(key, offset, n, "cython-parallel")
    np.testing.assert_array_equal(z, _draws(key, offset, n, "numba"))
    # NumPy's vectorised log/cos may differ from libm's in the last bit
    np.testing.assert_allclose(z, reference.normal(key, offset, n), rtol=1e-14, atol=1e-15)


# ------------------------------------------------------ Python-level checks

def _adam_args(n=5, dtype=np.float64):
    P = (np.ones(n, dtype),)
    G = (np.ones(n, dtype),)
    M = (np.zeros(n, dtype),)
    V = (np.zeros(n, dtype),)
    hyper, _ = rules.RULES["adam"].prepare(1, (), 1e-3, 0.9, 0.999, 1e-8, 0.0, 0, 0, 1, 0)
    return [P, G, M, V, None, None, tuple(map(float, hyper)), 0.0, None,
            np.zeros(1, np.int64)]


def _bad(i, value):
    def edit(args):
        args[i] = value
    return edit


@pytest.mark.parametrize("edit, exc, match", [
    (_bad(1, (np.ones(5, np.float32),)), TypeError, r"grads\[0\] has dtype float32"),
    (_bad(1, (np.ones(4),)), ValueError, r"grads\[0\] has 4 elements"),
    (_bad(1, (np.ones(10)[::2],)), ValueError, "not C-contiguous"),
    (_bad(1, ([1.0] * 5,)), TypeError, "expected a NumPy array"),
    (_bad(2, None), ValueError, "state 'exp_avg' is required"),
    (_bad(3, (np.zeros(5), np.zeros(5))), ValueError, "expected 1 arrays"),
    (_bad(6, (0.1,) * 3), ValueError,
     f"hyper must hold {len(rules.RULES['adam'].kernel_hyper)}"),
    (_bad(9, np.zeros(0, np.int64)), ValueError, "offsets"),
    (_bad(0, (np.ones(5, np.int64),)), TypeError, "float32 or float64"),
])
def test_bad_arguments_raise_and_change_nothing(edit, exc, match):
    args = _adam_args()
    edit(args)
    before = [a.copy() for group in args[:4] if group is not None for a in group
              if isinstance(a, np.ndarray)]
    with pytest.raises(exc, match=match):
        U.adam(*args)
    after = [a for group in args[:4] if group is not None for a in group
             if isinstance(a, np.ndarray)]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


def test_read_only_state_is_refused_before_any_tensor_changes():
    args = _adam_args()
    args[0] = args[0] + (np.ones(5),)
    args[1] = args[1] + (np.ones(5),)
    args[2] = args[2] + (np.zeros(5),)
    ro = np.zeros(5)
    ro.flags.writeable = False
    args[3] = args[3] + (ro,)
    args[9] = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match=r"exp_avg_sq\[1\] is read-only"):
        U.adam(*args)
    np.testing.assert_array_equal(args[0][0], np.ones(5))


@pytest.mark.parametrize("where", ["avg is params", "grads view into state"])
def test_overlapping_arrays_are_refused(where):
    args = _adam_args(n=6)
    if where == "avg is params":
        args[5] = args[0]
    else:
        big = np.zeros(12)
        args[1] = (big[:6],)
        args[2] = (big[3:9],)
    before = args[0][0].copy()
    with pytest.raises(ValueError, match="overlap"):
        U.adam(*args)
    np.testing.assert_array_equal(args[0][0], before)


def test_lists_and_empty_groups_are_accepted():
    args = _adam_args()
    ref = _adam_args()
    U.adam(*ref)
    args[0], args[1] = list(args[0]), list(args[1])
    args[9] = [0]
    U.adam(*args)
    np.testing.assert_array_equal(args[0][0], ref[0][0])
    U.adam((), (), (), (), None, None, args[6], 0.0, None, np.zeros(0, np.int64))


# ------------------------------------------------- cimport from another package

_EXTERNAL_PYX = '''
# cython: language_level=3
from libc.stdint cimport int64_t, uint64_t
cimport optkern.kernels.cython._updates as U


def adam_f64(size_t p, size_t g, size_t m, size_t v, Py_ssize_t n, tuple hyper):
    cdef double h[U.ADAM_NHYPER]
    cdef int j
    for j in range(U.ADAM_NHYPER):
        h[j] = hyper[j]
    with nogil:
        U.adam_loop_f64(<double*>p, <const double*>g, <double*>m, <double*>v, NULL,
                        NULL, n, h, 0.0, False, 0, 0, False)


def sgd_fused_f32(size_t p, size_t g, Py_ssize_t n, tuple hyper, uint64_t key,
                  int64_t offset):
    cdef double h[U.SGD_NHYPER]
    cdef int j
    for j in range(U.SGD_NHYPER):
        h[j] = hyper[j]
    with nogil:
        U.sgd_loop[float](<float*>p, <const float*>g, NULL, NULL, n, h, 0.0, True, key,
                          offset, True)


def adamax_rule(double p, double g, double m, double u, double clr, double beta1,
                double one_minus_beta1, double beta2, double eps, double weight_decay,
                double maximize):
    return U.adamax_rule_f64(p, g, m, u, clr, beta1, one_minus_beta1, beta2, eps,
                             weight_decay, maximize, 0.0)


def normal(uint64_t key, uint64_t counter):
    return U.normal(key, counter)
'''

_EXTERNAL_SETUP = '''
from setuptools import Extension, setup
from Cython.Build import cythonize
setup(ext_modules=cythonize([Extension("{mod}", ["{mod}.pyx"])],
                            include_path=[{inc!r}], quiet=True))
'''


def test_external_pyx_can_cimport_the_c_api(tmp_path, monkeypatch):
    # Mirror the installed .pxd as <inc>/optkern/kernels/cython/_updates.pxd: in an
    # editable install optkern.kernels lives in kernels/, not under optkern/.
    inc = tmp_path / "include"
    pkg = inc / "optkern" / "kernels" / "cython"
    pkg.mkdir(parents=True)
    for d in (inc / "optkern", inc / "optkern" / "kernels", pkg):
        (d / "__init__.pxd").write_text("")
    with open(os.path.join(CYTHON_DIR, "_updates.pxd")) as fh:
        (pkg / "_updates.pxd").write_text(fh.read())
    mod = "optkern_cimport_probe"
    (tmp_path / f"{mod}.pyx").write_text(_EXTERNAL_PYX)
    (tmp_path / "setup.py").write_text(_EXTERNAL_SETUP.format(mod=mod, inc=str(inc)))
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    monkeypatch.syspath_prepend(str(tmp_path))
    ext = importlib.import_module(mod)

    # the C-level Adam loop gives the Python entry point's numbers exactly
    n = 33
    rng = np.random.default_rng(5)
    p, g = rng.standard_normal(n), rng.standard_normal(n)
    m, v = np.zeros(n), np.zeros(n)
    ref = [a.copy() for a in (p, m, v)]
    for t in (1, 2, 3):
        hyper, _ = rules.RULES["adam"].prepare(t, (), 0.01, 0.9, 0.999, 1e-8, 0.01,
                                               0, 1, 1, 0)
        hyper = tuple(map(float, hyper))
        ext.adam_f64(p.ctypes.data, g.ctypes.data, m.ctypes.data, v.ctypes.data, n, hyper)
        U.adam((ref[0],), (g,), (ref[1],), (ref[2],), None, None, hyper, 0.0, None,
               np.zeros(1, np.int64))
    for a, b in zip((p, m, v), ref):
        np.testing.assert_array_equal(a, b)

    # the fused dispatcher (float32, noise on, OpenMP) matches too
    p32, g32 = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    ref32 = p32.copy()
    hyper, _ = rules.RULES["sgd"].prepare(1, (), 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05)
    hyper = tuple(map(float, hyper))
    key = step_key(9, 1)
    ext.sgd_fused_f32(p32.ctypes.data, g32.ctypes.data, n, hyper, int(key), 7)
    U.sgd((ref32,), (g32,), None, None, hyper, 0.0, key, np.array([7], np.int64))
    np.testing.assert_array_equal(p32, ref32)

    # the inline scalar rule is the Python rule, and the noise is the reference's
    hyper = (0.01, 0.9, 0.1, 0.999, 1e-8, 0.0, 0.0)
    assert ext.adamax_rule(0.5, -0.2, 0.1, 0.3, *hyper) == rules.adamax_rule(
        0.5, -0.2, 0.1, 0.3, *hyper, 0.0)
    assert ext.normal(int(key), 12) == _draws(key, 12, 1, "cython")[0]
