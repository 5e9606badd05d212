"""kernels/rulelang: the rule language's front end (one error naming rule,
line and construct) and every emitter, each function and operator of the
language run through every target and checked against NumPy.

The targets: the Numba forms (the scalar rule as the drivers compile it, its
lane form, the row rule's lane form), the Cython update rule (float and
double), the Cython loss rules (scalar and row, fused), the C host code
(prepare/schedule, doubles) and the C text of the lane form.  The Cython and C
forms of every case are compiled once per session into one small extension.
"""

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
from numba import njit

from optkern.kernels import rule_lanes, rulelang
from optkern.kernels._helpers import exp_fast, log_fast
from optkern.kernels.epoch_drivers import log1p_lanes
from optkern.kernels.rulelang import RuleError

# ------------------------------------------------------------------ errors


def _update_while(p, g, z):
    while p > 0.0:
        p = p - g
    return p


def _update_for(p, g, z):
    for _ in range(2):
        p = p - g
    return p


def _update_floordiv(p, g, z):
    return p // g


def _update_mod(p, g, z):
    return p % g


_SCALE = 2.0


def _update_global(p, g, z):
    return p - _SCALE * g


def _update_string(p, g, z):
    return p - len("ab") * g


def _update_tan(p, g, z):
    return p - math.tan(g)


def _update_keyword(p, g, z):
    return p - max(g, 0.0, key=abs)


def _update_lambda(p, g, z):
    return (lambda q: q)(p)


def _update_subscript(p, g, z):
    return p - g[0]


def _update_chained(p, g, z):
    a = b = g
    return p - a * b


def _update_is(p, g, z):
    return p if g is None else p - g


def _update_bitor(p, g, z):
    return p | g


def _update_attribute(p, g, z):
    return p - math.pi * g


def _update_min_one_arg(p, g, z):
    return min(p)


def _row_step_range(z, y, epsilon, dz):
    for j in range(0, z.shape[0], 2):
        dz[j] = 0.0
    return 0.0


def _row_store_into_z(z, y, epsilon, dz):
    z[0] = 1.0
    return 0.0


def _scalar_pow_augmented(z, y, epsilon):
    r = z
    r **= 2.0
    return r, z


ERRORS = [
    (_update_while, "update", "the statement While"),
    (_update_for, "update", "the statement For"),
    (_update_floordiv, "update", "the operator FloorDiv"),
    (_update_mod, "update", "the operator Mod"),
    (_update_global, "update", "the global name '_SCALE'"),
    (_update_string, "update", "len('ab')"),
    (_update_tan, "update", "the call 'math.tan(g)'"),
    (_update_keyword, "update", "a call with keyword arguments"),
    (_update_lambda, "update", "the call"),
    (_update_subscript, "update", "the subscript 'g[0]'"),
    (_update_chained, "update", "chained assignment"),
    (_update_is, "update", "the comparison Is"),
    (_update_bitor, "update", "the operator BitOr"),
    (_update_attribute, "update", "the attribute 'math.pi'"),
    (_update_min_one_arg, "update", "min with 1 arguments"),
    (_row_step_range, "row", "a for other than"),
    (_row_store_into_z, "row", "the assignment target 'z[0]'"),
    (_scalar_pow_augmented, "scalar", "the augmented operator Pow"),
]


@pytest.mark.parametrize("fn, kind, construct", ERRORS, ids=[e[0].__name__ for e in ERRORS])
def test_the_front_end_names_rule_line_and_construct(fn, kind, construct):
    # every rule above has its offending construct on the line after its
    # def (the last one: two lines after); the message names that line
    bad = inspect.getsourcelines(fn)[1] + (2 if fn is _scalar_pow_augmented else 1)
    with pytest.raises(RuleError) as info:
        rulelang.parse(fn, kind)
    msg = str(info.value)
    assert f"rule {fn.__name__!r}" in msg
    assert f"line {bad}:" in msg
    assert construct in msg
    assert "is not in the rule language" in msg


def test_every_emitter_raises_the_front_ends_error():
    spec = type("Spec", (), {"name": "tan", "states": (), "kernel_hyper": ()})
    with pytest.raises(RuleError, match=r"line \d+: the call 'math.tan\(g\)'"):
        rulelang.cython.UpdateEmitter(_update_tan, spec, "double", "f64", {})
    with pytest.raises(RuleError, match=r"line \d+: the global name '_SCALE'"):
        rulelang.c.HostEmitter(_update_global, int_first=False, globals_={})
    # a lane form refuses the same rule as the language does, not as a
    # target limitation (NotLaneable is the target's own, narrower error)
    with pytest.raises(RuleError, match="the statement While") as info:
        rule_lanes.lane_source(_row_while, "lanes")
    assert not isinstance(info.value, rule_lanes.NotLaneable)
    assert issubclass(rule_lanes.NotLaneable, RuleError)


def _row_while(z, y, epsilon, dz):
    while z[0] > 0.0:
        dz[0] = 0.0
    return 0.0


def test_the_language_has_the_nine_functions():
    assert set(rulelang.FUNCTIONS) == {"sign", "floor", "log1p", "exp", "log", "sqrt",
                                       "abs", "min", "max"}


# ------------------------------------- one expression translator per target language

def _two_reals(epsilon, r):
    """A host function whose parameters have the lane form's names of reals
    (the expressions below are translated in its scope, never called)."""
    return epsilon


def _c_translators():
    from optkern.kernels.rulelang import c
    host = c.CHostEmitter(_two_reals, int_first=False, globals_={})
    return host, c.LaneToC("float", "f32", 1)


def _host_c(host, text):
    """The host's C with its own naming undone (``v_<name>``, real arguments
    cast to double): what is left is spelled by the shared tables."""
    import re
    out = host.expr(__import__("ast").parse(text, mode="eval").body)
    return re.sub(r"\(\(double\)(v_\w+)\)", r"\1", out).replace("v_", "")


def _operator_texts():
    """Every operator of the tables (BINOPS, CMPOPS, single and chained,
    ``**``), and/or/not, unary minus and plus, the conditional expression."""
    import ast
    from optkern.kernels.rulelang import tables

    a, b = ast.Name("epsilon", ast.Load()), ast.Name("r", ast.Load())
    texts = [ast.unparse(ast.BinOp(a, op(), b)) for op in (*tables.BINOPS, ast.Pow)]
    for op in tables.CMPOPS:
        texts.append(ast.unparse(ast.Compare(a, [op()], [b])))
        texts.append(ast.unparse(ast.Compare(a, [op(), op()], [b, a])))
    return texts + ["epsilon < r and r < epsilon", "epsilon < r or r < epsilon",
                    "not epsilon < r", "-epsilon", "+r", "epsilon if epsilon < r else r",
                    "(epsilon + 1.5) * 2 - r / 3.0"]


@pytest.mark.parametrize("text", _operator_texts())
def test_the_host_and_lane_translators_spell_every_operator_alike(text):
    """c.LaneToC and c.CHostEmitter translate expressions through the same
    CythonSyntax with C_SYNTAX: every operator of the tables comes out the
    same text (the host's own naming aside), so the two cannot drift."""
    host, lane = _c_translators()
    assert lane.expr(__import__("ast").parse(text, mode="eval").body) == _host_c(host, text)


@pytest.mark.parametrize("name", [f for f in rulelang.FUNCTIONS if f != "sign"])
def test_the_host_and_lane_translators_call_the_same_c_functions(name):
    """Every function of the language: the lane translator calls the C
    function the host does (C_FUNCTIONS), unless the lane table C_LANES
    declares the lane form's own spelling (exp_fast, log_fast, min/max as
    selects).  sign never reaches C as a call (frontend.sign_expansion)."""
    import ast
    import re
    from optkern.kernels.rulelang import tables

    host, lane = _c_translators()
    args = "epsilon, r" if name in ("min", "max") else "epsilon"
    lane_call = f"{tables.NUMBA_LANES[name]}({args})"          # as the lane form writes it
    host_call = ("math." if name not in ("abs", "min", "max") else "") + f"{name}({args})"
    got = lane.expr(ast.parse(lane_call, mode="eval").body)
    if name in tables.C_LANES:
        assert got == tables.C_LANES[name].format(ct="float", sfx="f32", lvl=1, x="epsilon",
                                                  a="epsilon", b="r")
        return
    called = re.findall(r"(\w+)\(epsilon\)", _host_c(host, host_call))
    assert called == [tables.C_FUNCTIONS[name]] == [tables.C_HOST[name]]
    assert got == f"{tables.C_FUNCTIONS[name]}(epsilon)"


# ------------------------------------------- every function through every target

# case -> (expression of x and w, domain of x and w).  Domains are what each
# function takes on every target: floor's result is an int64 on Numba and the
# host (as Python's math.floor), exp stays finite in float32.
BIG = 1e30
CASES = {
    "sign": ("sign({x})", (-BIG, BIG)),
    "floor": ("math.floor({x})", (-1e15, 1e15)),
    "log1p": ("math.log1p({x})", (-0.999, BIG)),
    "exp": ("math.exp({x})", (-80.0, 80.0)),
    "log": ("math.log({x})", (1e-30, BIG)),
    "sqrt": ("math.sqrt({x})", (0.0, BIG)),
    "abs": ("abs({x})", (-BIG, BIG)),
    "min": ("min({x}, {w}, 0.5)", (-BIG, BIG)),
    "max": ("max({x}, {w})", (-BIG, BIG)),
    "arith": ("({x} + {w}) * ({x} - {w}) / ({w} * {w} + 1.0)", (-1e15, 1e15)),
    "power": ("abs({x}) ** 1.5 + {w} ** 2.0", (-1e15, 1e15)),
    "logic": ("({x} if ({x} > {w} and not {w} <= -1.0) or {x} == {w} else -{w})",
              (-BIG, BIG)),
    "compare": ("(1.0 if -1.0 < {x} < {w} or {x} != {x} or {x} >= {w} * 2.0 else 0.0)",
                (-BIG, BIG)),
    "unary": ("-{x} + +{w}", (-BIG, BIG)),
}


def _source(case):
    e = CASES[case][0].format
    return textwrap.dedent(f'''
    def update_{case}(p, g, z):
        return {e(x="p", w="g")}


    def scalar_{case}(z, y, epsilon):
        a = {e(x="z", w="y")}
        return a, {e(x="y", w="z")}


    def row_{case}(z, y, epsilon, dz):
        dz[0] = {e(x="z[0]", w="z[1]")}
        return {e(x="z[1]", w="z[0]")}


    def host_{case}(t, x, w):
        v = {e(x="x", w="w")}
        return v


    ''')


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    """The rules of every case as a real module (the emitters read source)."""
    d = tmp_path_factory.mktemp("rulelang_cases")
    path = d / "rulelang_cases.py"
    path.write_text("import math\n\nfrom numpy import sign\n\n"
                    + "".join(_source(c) for c in CASES))
    spec = importlib.util.spec_from_file_location("rulelang_cases", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class _Spec:
    def __init__(self, name, rule, kind=None):
        self.name, self.rule, self.kind = name, rule, kind
        self.states, self.kernel_hyper = (), ()


_PYX_HEAD = '''\
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
from libc.stdint cimport int64_t
from libc.math cimport (exp, expf, log, logf, log1p, log1pf, sqrt, sqrtf, floor, floorf,
                        ceil, fabs, fabsf, pow, powf, cos, sin)
ctypedef fused floating:
    float
    double

# the helpers the emitted code calls (kernels/rulelang/tables.py): Python's
# min/max rule, the first of equal or unordered values
cdef inline float min_f32(float a, float b) noexcept nogil:
    return b if b < a else a
cdef inline float max_f32(float a, float b) noexcept nogil:
    return b if b > a else a
cdef inline double min_f64(double a, double b) noexcept nogil:
    return b if b < a else a
cdef inline double max_f64(double a, double b) noexcept nogil:
    return b if b > a else a
cdef inline double _pymin(double a, double b) noexcept nogil:
    return b if b < a else a
cdef inline double _pymax(double a, double b) noexcept nogil:
    return b if b > a else a

cdef extern from *:
    """
#include <math.h>
#include <stdint.h>
#define OKX_NOTRAP
#define OKX_RESTRICT
/* the C lane form's exp: libm's here (the epoch's own okx_exp is
   kernels/cython/generate_epochs.py's, checked by the epoch tests) */
static inline double okx_exp_f64_0(double x) { return exp(x); }
static inline float okx_exp_f32_0(float x) { return expf(x); }
@LANES@
    """
@LANE_DECLS@
'''


def _lane_c(fn, name, ct, sfx):
    lane_py = rule_lanes.lane_source(fn, "_lanes")
    fdef = __import__("ast").parse(lane_py).body[0]
    body = rulelang.c.LaneToC(ct, sfx, 0).stmts(fdef.body, "    ")
    head = (f"static void lanes_{name}_{sfx}(const {ct}* ZT, const int64_t* Y, {ct} epsilon, "
            f"{ct}* DT, double* LOSS, int64_t n, {ct}* S, int64_t* SI, int64_t k, int64_t R) {{")
    return "\n".join([head, "    (void)epsilon; (void)S; (void)SI; (void)Y;"] + body + ["}"])


def _module_text(mod):
    pyx, lanes, decls = [], [], []
    for case in CASES:
        upd = getattr(mod, f"update_{case}")
        spec = _Spec(case, upd)
        for ct, sfx in (("float", "f32"), ("double", "f64")):
            pyx.append(rulelang.cython.UpdateEmitter(upd, spec, ct, sfx, {}).render())
            pyx.append(f"def call_update_{case}_{sfx}({ct} p, {ct} g):\n"
                       f"    return {case}_rule_{sfx}(p, g, 0)\n")
            lanes.append(_lane_c(getattr(mod, f"row_{case}"), case, ct, sfx))
            decls.append(f"    void lanes_{case}_{sfx}(const {ct}*, const int64_t*, {ct}, {ct}*, "
                         "double*, int64_t, {ct}*, int64_t*, int64_t, int64_t)".replace("{ct}", ct))
            pyx.append(f"def call_lanes_{case}_{sfx}({ct}[:, ::1] ZT, {ct}[:, ::1] DT, "
                       f"double[::1] LOSS, {ct}[:, ::1] S, int64_t[:, ::1] SI, "
                       "int64_t[::1] Y, int64_t n):\n"
                       f"    lanes_{case}_{sfx}(&ZT[0, 0], &Y[0], 0.1, &DT[0, 0], &LOSS[0], n, "
                       "&S[0, 0], &SI[0, 0], ZT.shape[0], ZT.shape[1])\n")
        sca = getattr(mod, f"scalar_{case}")
        pyx.append(rulelang.cython.loss_to_cython(_Spec(case, sca, "scalar")))
        row = getattr(mod, f"row_{case}")
        pyx.append(rulelang.cython.loss_to_cython(_Spec(case, row, "row")))
        for ct, sfx in (("float", "f32"), ("double", "f64")):
            pyx.append(f"def call_scalar_{case}_{sfx}({ct} z, {ct} y):\n"
                       f"    cdef {ct} d\n    cdef {ct} a = scalar_{case}(z, y, 0.1, &d)\n"
                       "    return a, d\n")
            pyx.append(f"def call_row_{case}_{sfx}({ct}[::1] z, {ct}[::1] dz):\n"
                       f"    return row_{case}(&z[0], 0, 0.1, &dz[0], z.shape[0])\n")
        host = rulelang.c.HostEmitter(getattr(mod, f"host_{case}"), int_first=False,
                                      globals_=vars(mod))
        lines = [f"cdef double host_{case}(double v_t, double v_x, double v_w) noexcept nogil:"]
        lines += host.local_decls()
        lines += host.stmts(host.fdef.body, 4,
                            lambda t, s: [f"return <double>{t.expr(s.value)}"])
        pyx.append("\n".join(lines) + "\n")
        pyx.append(f"def call_host_{case}(double x, double w):\n"
                   f"    return host_{case}(0.0, x, w)\n")
    head = _PYX_HEAD.replace("@LANES@", "\n".join(lanes).replace("\\", "\\\\")).replace(
        "@LANE_DECLS@", "\n".join(decls))
    return head + "\n\n" + "\n\n".join(pyx)


_SETUP = '''
import numpy as np
from setuptools import Extension, setup
from Cython.Build import cythonize
setup(ext_modules=cythonize([Extension("_rulelang_cases", ["_rulelang_cases.pyx"],
                                       include_dirs=[np.get_include()],
                                       extra_compile_args=["-O0"])], quiet=True))
'''


@pytest.fixture(scope="session")
def compiled(cases, tmp_path_factory):
    """Every case's Cython and C forms, one extension for the session."""
    d = tmp_path_factory.mktemp("rulelang_ext")
    (d / "_rulelang_cases.pyx").write_text(_module_text(cases))
    (d / "setup.py").write_text(_SETUP)
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                         cwd=d, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    so = next(p for p in os.listdir(d) if p.startswith("_rulelang_cases") and p.endswith(".so"))
    spec = importlib.util.spec_from_file_location("_rulelang_cases", d / so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _NumpyMath:
    """``math`` as NumPy's elementwise functions: the reference (no
    exceptions, float64 throughout)."""
    exp, log, log1p, sqrt, floor = np.exp, np.log, np.log1p, np.sqrt, np.floor


def _reference(case, x, w):
    env = {"math": _NumpyMath, "sign": np.sign, "x": np.float64(x), "w": np.float64(w)}
    return float(eval(CASES[case][0].format(x="x", w="w"), env))


_NUMBA = {}


def _numba(case, mod):
    """(scalar rule as the drivers compile it, its lane form, the row rule's
    lane form), compiled once per session."""
    if case not in _NUMBA:
        ns = {"math": math, "exp_fast": exp_fast, "log_fast": log_fast,
              "log1p_lanes": log1p_lanes}
        exec(rule_lanes.scalar_lane_source(getattr(mod, f"scalar_{case}"), "scalar_lanes"), ns)
        exec(rule_lanes.lane_source(getattr(mod, f"row_{case}"), "row_lanes"), ns)
        _NUMBA[case] = (njit(getattr(mod, f"scalar_{case}")), njit(ns["scalar_lanes"]),
                        njit(ns["row_lanes"]))
    return _NUMBA[case]


def _close(got, want, dtype, what):
    tol = 4e-6 if dtype == np.float32 else 1e-12
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    # absolutely: what underflows in the dtype (the reference is float64)
    atol = 4 * float(np.finfo(dtype).tiny)
    assert np.allclose(got, want, rtol=tol, atol=atol, equal_nan=True), (what, got, want)


def _bounds(case):
    """The case's domain, rounded inwards to float32 (hypothesis's width=32)."""
    lo, hi = (np.float32(b) for b in CASES[case][1])
    lo = lo if lo >= CASES[case][1][0] else np.nextafter(lo, np.float32(np.inf))
    hi = hi if hi <= CASES[case][1][1] else np.nextafter(hi, np.float32(-np.inf))
    return float(lo), float(hi)


def _values(case):
    lo, hi = _bounds(case)
    return st.lists(st.tuples(st.floats(lo, hi, width=32), st.floats(lo, hi, width=32)),
                    min_size=1, max_size=8)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_every_target_computes_what_numpy_computes(cases, compiled, case, dtype, data):
    # drawn values, the domain's ends (large, negative) and zeros of both signs
    lo, hi = _bounds(case)
    pairs = data.draw(_values(case)) + [(lo, hi), (hi, lo)]
    if lo <= 0.0 <= hi:
        pairs += [(0.0, -0.0), (-0.0, 0.0)]
    x = np.array([p[0] for p in pairs], dtype)
    w = np.array([p[1] for p in pairs], dtype)
    n = len(x)
    want_xw = [_reference(case, a, b) for a, b in zip(x, w)]
    want_wx = [_reference(case, b, a) for a, b in zip(x, w)]
    sfx = "f32" if dtype == np.float32 else "f64"
    # Numba: the scalar rule itself, its lane form, the row rule's lane form
    row_form, scalar_lanes, row_lanes = _numba(case, cases)
    got = [row_form(a, b, dtype(0.1)) for a, b in zip(x, w)]
    _close([g[0] for g in got], want_xw, dtype, "numba scalar rule")
    _close([g[1] for g in got], want_wx, dtype, "numba scalar rule, derivative")
    R = 8 * ((n + 7) // 8)
    ZT = np.zeros((1, R), dtype)
    ZT[0, :n] = x
    Y = np.zeros((1, R), dtype)
    Y[0, :n] = w
    DT, LOSS = np.zeros((1, R), dtype), np.zeros(R)
    scalar_lanes(ZT, Y, dtype(0.1), DT, LOSS, n, np.zeros((4, R), dtype),
                 np.zeros((1, R), np.int64))
    _close(LOSS[:n], want_xw, dtype, "numba scalar lane form")
    _close(DT[0, :n], want_wx, dtype, "numba scalar lane form, derivative")
    ZT2 = np.zeros((2, R), dtype)
    ZT2[0, :n], ZT2[1, :n] = x, w
    labels = np.zeros(R, np.int64)
    for lane_call in (lambda *a: row_lanes(*a),
                      lambda ZT_, Y_, eps, DT_, L_, n_, S_, SI_:
                      getattr(compiled, f"call_lanes_{case}_{sfx}")(ZT_, DT_, L_, S_, SI_, Y_, n_)):
        DT2, LOSS2 = np.zeros((2, R), dtype), np.zeros(R)
        lane_call(ZT2, labels, dtype(0.1), DT2, LOSS2, n, np.zeros((4, R), dtype),
                  np.zeros((1, R), np.int64))
        _close(DT2[0, :n], want_xw, dtype, "row lane form (Numba / C)")
        _close(LOSS2[:n], want_wx, dtype, "row lane form (Numba / C), loss")
    # Cython: the update rule per C type, the fused loss rules
    update = getattr(compiled, f"call_update_{case}_{sfx}")
    _close([update(a, b) for a, b in zip(x, w)], want_xw, dtype, "cython update rule")
    got = [getattr(compiled, f"call_scalar_{case}_{sfx}")(a, b) for a, b in zip(x, w)]
    _close([g[0] for g in got], want_xw, dtype, "cython scalar loss rule")
    _close([g[1] for g in got], want_wx, dtype, "cython scalar loss rule, derivative")
    for i in range(n):
        z = np.array([x[i], w[i]], dtype)
        dz = np.zeros(2, dtype)
        loss = getattr(compiled, f"call_row_{case}_{sfx}")(z, dz)
        _close(dz[0], want_xw[i], dtype, "cython row loss rule")
        _close(loss, want_wx[i], dtype, "cython row loss rule, loss")
    # C host code: doubles, whatever the data's dtype
    host = getattr(compiled, f"call_host_{case}")
    _close([host(float(a), float(b)) for a, b in zip(x, w)], want_xw, np.float64,
           "C host code")
