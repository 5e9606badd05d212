"""Generate the ahead-of-time Cython update kernels from ``kernels/rules.py``.

Run by ``setup.py`` at build time (``write_sources``) and by hand with
``python kernels/cython/generate.py``.  It reads each registered rule's *source*
(``inspect.getsource`` + ``ast``) and translates it into Cython, so the update
formulas exist only once, in ``rules.py``; nothing here is hand-copied.

Output, per rule ``name`` and per C type (``f32`` = float, ``f64`` = double):

``_updates.pxd``  (the C-level API other packages ``cimport``)
    ``name_rule_f32/_f64``  the rule as a ``cdef inline`` function returning a
                           ctuple ``(p, *states)``;
    ``name_loop_f32/_f64``  the elementwise loop over raw pointers (declared);
    ``name_loop``           a fused-type (``real_t``) convenience dispatcher;
    ``normal``              the counter-based Gaussian (C twin of
                           ``kernels/_helpers.normal``);
    enum ``NAME_NHYPER``    the number of kernel hyperparameters.
``_updates.pyx``  (the implementation and the Python entry points)
    the loops (one branch-free loop body per combination of present optional
    states, averaging and noise; OpenMP ``prange`` when ``parallel``) and
    ``def name(params, grads, *states, avg, hyper, avg_weight, key, offsets,
    parallel=False)`` with the calling convention of the Numba ``serial``
    driver.

This file must import neither numba nor optkern: the build environment only
has Cython, NumPy and setuptools.  It loads ``rules.py`` by file path.
"""

import ast
import hashlib
import inspect
import keyword
import os
import runpy
import sys
import textwrap
import types

HERE = os.path.dirname(os.path.abspath(__file__))
RULES_PATH = os.path.normpath(os.path.join(HERE, os.pardir, "rules.py"))


_files = types.SimpleNamespace(**runpy.run_path(os.path.join(HERE, os.pardir, "_files.py")))
_write_if_changed = _files.write_if_changed
MODULE = "_updates"
TEMPLATE_VERSION = "2"

# (suffix, C type, NumPy type number name, libc function for each math call)
CTYPES = (
    ("f32", "float", "NPY_FLOAT32", {"sqrt": "sqrtf", "fabs": "fabsf", "pow": "powf"}),
    ("f64", "double", "NPY_FLOAT64", {"sqrt": "sqrt", "fabs": "fabs", "pow": "pow"}),
)

# Cython keywords and names the generated code itself uses: a rule variable
# with one of these names gets a trailing underscore.
_RESERVED = frozenset("""
    cdef cpdef ctypedef cimport include inline nogil gil noexcept extern public api
    readonly struct union enum fused const volatile signed unsigned short long int
    char float double bint object sizeof NULL new namespace cppclass except DEF IF
    ELIF ELSE by sqrt sqrtf fabs fabsf pow powf log cos real_t uint64_t int64_t
    max_f32 max_f64 min_f32 min_f64 normal mix64
""".split())

# names the generated loops and Python entry points use for their own
# parameters and locals (a state may not be called any of these)
_LOOP_NAMES = frozenset(
    "p g avg n hyper avg_weight has_key key offset parallel i _case _w _z _p "
    "params grads offsets P G A h k nt typenum ukey off off_arr pp gp ap ptrs".split()
    + [f"{c}{j}" for c in ("s", "S", "_s") for j in range(64)])


class RuleError(ValueError):
    """A rule uses a construct the Cython translation does not support."""


def load_rules(path=RULES_PATH):
    """Import kernels/rules.py by file path (no optkern, no numba)."""
    return _files.load_by_path("_optkern_rules_for_cython", path)


# --------------------------------------------------------------------------
# Translating one rule: Python AST -> Cython text (fully parenthesised, so the
# evaluation order is the rule's, operation for operation, as in Numba).
# --------------------------------------------------------------------------

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
           ast.NotEq: "!="}
_MATH_CALLS = {"sqrt": "sqrt", "fabs": "fabs"}  # math.<name> -> libc family


class _Translator:
    def __init__(self, fn, spec, ctype, suffix, libm):
        self.fn = fn
        self.spec = spec
        self.ctype = ctype
        self.suffix = suffix
        self.libm = libm
        src = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(src)
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
            raise RuleError(f"{spec.name}: the rule must be a plain def")
        self.fdef = tree.body[0]
        self.where = f"rule {spec.name!r} ({fn.__name__}, {inspect.getsourcefile(fn)})"
        a = self.fdef.args
        if (a.vararg or a.kwarg or a.kwonlyargs or a.defaults or a.kw_defaults
                or a.posonlyargs or self.fdef.decorator_list):
            raise RuleError(f"{self.where}: only plain positional parameters are allowed")
        self.params = [x.arg for x in a.args]
        expected = 2 + len(spec.states) + len(spec.kernel_hyper) + 1
        if len(self.params) != expected:
            raise RuleError(
                f"{self.where}: takes {len(self.params)} parameters, expected "
                f"{expected} (p, g, {len(spec.states)} states, "
                f"{len(spec.kernel_hyper)} kernel hyperparameters, z)")
        self.z = self.params[-1]
        stores = []
        for node in ast.walk(self.fdef):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                stores.append(node.id)
        self.locals = [n for n in dict.fromkeys(stores) if n not in self.params]
        self.uses_z = any(isinstance(n, ast.Name) and n.id == self.z
                          and isinstance(n.ctx, ast.Load) for n in ast.walk(self.fdef))

    def err(self, node, what):
        line = self.fn.__code__.co_firstlineno + getattr(node, "lineno", 1) - 1
        return RuleError(f"{self.where}, line {line}: {what} is not supported in a rule "
                         "(allowed: arithmetic + - * / **, comparisons, and/or/not, "
                         "conditional expressions, if statements, abs, min, max, "
                         "math.sqrt)")

    @staticmethod
    def name(n):
        return n + "_" if n in _RESERVED else n

    # ---------------------------------------------------------- expressions
    def const(self, value):
        f = repr(float(value))
        return f if self.ctype == "double" else f"(<float>{f})"

    def expr(self, node):
        e = self.expr
        if isinstance(node, ast.Name):
            if node.id not in self.params and node.id not in self.locals:
                raise self.err(node, f"the global name {node.id!r}")
            return self.name(node.id)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (bool, int, float)):
                return self.const(node.value)
            raise self.err(node, f"the constant {node.value!r}")
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):  # a real power (FTRL's n ** -lr_power)
                return f"{self.libm['pow']}({e(node.left)}, {e(node.right)})"
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.err(node, f"the operator {type(node.op).__name__}")
            return f"({e(node.left)} {op} {e(node.right)})"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return f"(-{e(node.operand)})"
            if isinstance(node.op, ast.UAdd):
                return e(node.operand)
            if isinstance(node.op, ast.Not):
                return f"(not {e(node.operand)})"
            raise self.err(node, f"the operator {type(node.op).__name__}")
        if isinstance(node, ast.BoolOp):
            op = " and " if isinstance(node.op, ast.And) else " or "
            return "(" + op.join(e(v) for v in node.values) + ")"
        if isinstance(node, ast.Compare):
            parts = []
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                sym = _CMPOPS.get(type(op))
                if sym is None:
                    raise self.err(node, f"the comparison {type(op).__name__}")
                parts.append(f"({e(left)} {sym} {e(right)})")
                left = right
            return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"
        if isinstance(node, ast.IfExp):
            return f"({e(node.body)} if {e(node.test)} else {e(node.orelse)})"
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.err(node, f"the expression {type(node).__name__}")

    def call(self, node):
        if node.keywords:
            raise self.err(node, "a call with keyword arguments")
        args = [self.expr(a) for a in node.args]
        f = node.func
        if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                and f.value.id == "math" and f.attr in _MATH_CALLS):
            if len(args) != 1:
                raise self.err(node, f"math.{f.attr} with {len(args)} arguments")
            return f"{self.libm[_MATH_CALLS[f.attr]]}({args[0]})"
        if isinstance(f, ast.Name) and f.id not in self.params and f.id not in self.locals:
            if f.id == "abs" and len(args) == 1:
                return f"{self.libm['fabs']}({args[0]})"
            if f.id in ("min", "max") and len(args) >= 2:
                # Python's min/max keep the first of equal (or unordered) values
                out = args[0]
                for a in args[1:]:
                    out = f"{f.id}_{self.suffix}({out}, {a})"
                return out
        raise self.err(node, f"the call {ast.unparse(node)!r}")

    # ----------------------------------------------------------- statements
    def stmts(self, body, indent):
        out = []
        for st in body:
            out.extend(self.stmt(st, indent))
        return out or [" " * indent + "pass"]

    def stmt(self, st, indent):
        pad = " " * indent
        if isinstance(st, ast.Assign):
            if len(st.targets) != 1:
                raise self.err(st, "chained assignment")
            t = st.targets[0]
            if isinstance(t, ast.Name):
                return [f"{pad}{self.name(t.id)} = {self.expr(st.value)}"]
            if (isinstance(t, ast.Tuple) and isinstance(st.value, ast.Tuple)
                    and len(t.elts) == len(st.value.elts)
                    and all(isinstance(x, ast.Name) for x in t.elts)):
                lhs = ", ".join(self.name(x.id) for x in t.elts)
                rhs = ", ".join(self.expr(v) for v in st.value.elts)
                return [f"{pad}{lhs} = {rhs}"]
            raise self.err(st, "this assignment target")
        if isinstance(st, ast.AugAssign):
            op = _BINOPS.get(type(st.op))
            if op is None or not isinstance(st.target, ast.Name):
                raise self.err(st, "this augmented assignment")
            n = self.name(st.target.id)
            return [f"{pad}{n} = ({n} {op} {self.expr(st.value)})"]
        if isinstance(st, ast.If):
            out = [f"{pad}if {self.expr(st.test)}:"]
            out += self.stmts(st.body, indent + 4)
            if st.orelse:
                out.append(f"{pad}else:")
                out += self.stmts(st.orelse, indent + 4)
            return out
        if isinstance(st, ast.Return):
            nout = 1 + len(self.spec.states)
            v = st.value
            elts = v.elts if isinstance(v, ast.Tuple) else [v]
            if v is None or len(elts) != nout:
                raise self.err(st, f"a return of other than {nout} values (p and the states)")
            return [f"{pad}return " + ", ".join(self.expr(x) for x in elts)]
        if isinstance(st, ast.Pass):
            return [f"{pad}pass"]
        if (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant)
                and isinstance(st.value.value, str)):
            return []  # docstring
        raise self.err(st, f"the statement {type(st).__name__}")

    def render(self):
        t = self.ctype
        nout = 1 + len(self.spec.states)
        ret = t if nout == 1 else "(" + ", ".join([t] * nout) + ")"
        fname = f"{self.spec.name}_rule_{self.suffix}"
        args = ", ".join(f"{t} {self.name(p)}" for p in self.params)
        lines = [f"cdef inline {ret} {fname}({args}) noexcept nogil:"]
        if self.locals:
            lines.append(f"    cdef {t} " + ", ".join(self.name(n) for n in self.locals))
        lines += self.stmts(self.fdef.body, 4)
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Per-rule metadata shared by the .pxd and .pyx writers
# --------------------------------------------------------------------------

class _Rule:
    def __init__(self, rules, spec):
        self.spec = spec
        self.name = spec.name
        self.states = list(rules.state_names(spec))
        self.optional = [i for i, s in enumerate(spec.states) if "?" in s]
        self.hyper = list(spec.kernel_hyper)
        self.translators = [_Translator(spec.rule, spec, ct, sfx, libm)
                            for sfx, ct, _, libm in CTYPES]
        self.uses_z = self.translators[0].uses_z
        # translate now, so an unsupported construct fails on registration
        self.rule_texts = [tr.render() for tr in self.translators]
        clash = {s for s in self.states
                 if s in _LOOP_NAMES or s in _RESERVED or keyword.iskeyword(s)
                 or not s.isidentifier()}
        if clash or len(set(self.states)) != len(self.states):
            raise RuleError(f"rule {spec.name!r}: state names {sorted(clash) or self.states} "
                            "clash with the generated loop's own names")
        if not self.name.isidentifier() or self.name in _RESERVED:
            raise RuleError(f"rule name {self.name!r} cannot name a Cython function")

    def loop_signature(self, suffix, ctype):
        out_t, in_t = f"{suffix}_out", f"{suffix}_in"
        states = "".join(f"{out_t} {s}, " for s in self.states)
        return (f"void {self.name}_loop_{suffix}({out_t} p, {in_t} g, {states}"
                f"{out_t} avg, Py_ssize_t n, const double* hyper, double avg_weight, "
                f"bint has_key, uint64_t key, int64_t offset, bint parallel) noexcept nogil")


# --------------------------------------------------------------------------
# The .pxd
# --------------------------------------------------------------------------

_PXD_HEAD = '''\
# cython: language_level=3, infer_types=True, cdivision=True, boundscheck=False
# cython: wraparound=False
# Generated by kernels/cython/generate.py from kernels/rules.py; do not edit.
# generated source hash: {digest}  template version: {version}
"""C-level API of optkern's ahead-of-time update kernels.

``cimport optkern.kernels.cython._updates as U`` and call, without the GIL:

* ``U.<rule>_rule_f32/_f64(p, g, *states, *kernel_hyper, z)`` -> ctuple
  ``(p, *states)``: one element's update (inline; hyperparameters already in
  the element's type, flags as 0/1);
* ``U.<rule>_loop_f32/_f64(p, g, *states, avg, n, hyper, avg_weight, has_key,
  key, offset, parallel)``: the update of ``n`` contiguous elements in place.
  ``hyper`` points at ``U.<RULE>_NHYPER`` doubles, the rule's kernel
  hyperparameters (order: see each declaration below); each is cast to the
  element type once.  A NULL optional state is absent (the rule sees 0 and its
  output is dropped); required states must not be NULL.  ``avg`` NULL disables
  Polyak averaging, else ``avg[i] += avg_weight*(p_new - avg[i])``.  With
  ``has_key`` the rule's ``z`` for element ``i`` is ``normal(key, offset + i)``
  cast to the element type, else 0.  ``parallel`` splits the loop over OpenMP
  threads (static schedule; identical results) when built with OpenMP.
  Arrays must not overlap (they are declared restrict).
* ``U.<rule>_loop(...)``: the same for a fused ``U.real_t`` pointer.

``.pyx`` callers get the same numbers as the Numba drivers, whose rules are
the same source (kernels/rules.py).
"""

from libc.stdint cimport int64_t, uint64_t
from libc.math cimport sqrt, sqrtf, fabs, fabsf, pow, powf, log, cos

cdef extern from *:
    """
    #if defined(_MSC_VER)
    #define OPTKERN_RESTRICT __restrict
    #else
    #define OPTKERN_RESTRICT __restrict__
    #endif
    """
    ctypedef float* f32_out "float * OPTKERN_RESTRICT"
    ctypedef const float* f32_in "const float * OPTKERN_RESTRICT"
    ctypedef double* f64_out "double * OPTKERN_RESTRICT"
    ctypedef const double* f64_in "const double * OPTKERN_RESTRICT"

ctypedef fused real_t:
    float
    double


# ---- counter-based standard normal (twin of kernels/_helpers.normal) ----

cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline double normal(uint64_t key, uint64_t counter) noexcept nogil:
    """Draw number ``counter`` of stream ``key`` (splitmix64 + Box-Muller)."""
    cdef uint64_t a = mix64(key + 0x9E3779B97F4A7C15ULL * (2 * counter + 1))
    cdef uint64_t b = mix64(key + 0x9E3779B97F4A7C15ULL * (2 * counter + 2))
    cdef double u1 = (<double>(a >> 11) + 1.0) * (1.0 / 9007199254740992.0)
    cdef double u2 = <double>(b >> 11) * (1.0 / 9007199254740992.0)
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)


# ---- Python's max/min on two values: the first unless the second is strictly
# larger/smaller (so NaN handling follows the rule as written in Python) ----
'''


def _render_minmax():
    out = []
    for sfx, t, _, _ in CTYPES:
        out.append(f"cdef inline {t} max_{sfx}({t} a, {t} b) noexcept nogil:\n"
                   f"    return b if b > a else a\n")
        out.append(f"cdef inline {t} min_{sfx}({t} a, {t} b) noexcept nogil:\n"
                   f"    return b if b < a else a\n")
    return "\n".join(out)


def _render_fused_loop(r):
    states = "".join(f"real_t* {s}, " for s in r.states)
    sig = (f"cdef inline void {r.name}_loop(real_t* p, const real_t* g, {states}"
           "real_t* avg, Py_ssize_t n, const double* hyper, double avg_weight, "
           "bint has_key, uint64_t key, int64_t offset, bint parallel) noexcept nogil:")
    call = ("(p, g, " + "".join(f"{s}, " for s in r.states)
            + "avg, n, hyper, avg_weight, has_key, key, offset, parallel)")
    return (f"{sig}\n"
            f"    if real_t is float:\n"
            f"        {r.name}_loop_f32{call}\n"
            f"    else:\n"
            f"        {r.name}_loop_f64{call}\n")


def render_pxd(rules, specs, digest):
    parts = [_PXD_HEAD.format(digest=digest, version=TEMPLATE_VERSION), _render_minmax()]
    for r in specs:
        hyper_doc = ", ".join(f"{j}: {h}" for j, h in enumerate(r.hyper))
        states_doc = ", ".join(r.spec.states) or "(none)"
        parts.append(
            f"\n# ---- {r.name}  (rules.{r.spec.rule.__name__}) ----\n"
            f"# states: {states_doc}\n"
            f"# hyper[{len(r.hyper)}]: {hyper_doc}\n"
            f"cdef enum:\n    {r.name.upper()}_NHYPER = {len(r.hyper)}\n\n")
        for text in r.rule_texts:
            parts.append(text + "\n\n")
        for sfx, t, _, _ in CTYPES:
            parts.append(f"cdef {r.loop_signature(sfx, t)}\n")
        parts.append("\n" + _render_fused_loop(r))
    return "".join(parts)


# --------------------------------------------------------------------------
# The .pyx
# --------------------------------------------------------------------------

# The finite scan of one gradient, for each float type (rendered into _PYX_HEAD).
_FINITE_SCAN = '''\
cdef inline bint _any_nonfinite_{sfx}(const {ctype}* g, Py_ssize_t n) noexcept nogil:
    cdef {ctype} s[8]
    cdef {ctype} x, t = 0
    cdef Py_ssize_t i, j, m = n - n % 8
    for j in range(8):
        s[j] = 0
    for i in range(0, m, 8):
        for j in range(8):
            x = g[i + j]
            s[j] += x - x
    for i in range(m, n):
        x = g[i]
        t += x - x
    for j in range(8):
        t += s[j]
    return t != 0


cdef Py_ssize_t _nonfinite_{sfx}(const {ctype}* g, Py_ssize_t n, bint parallel) noexcept nogil:
    cdef Py_ssize_t c, bad = 0, nchunks = (n + 65535) // 65536
    # below 4 chunks a second parallel region costs more than the scan
    if parallel and OPTKERN_HAVE_OPENMP and nchunks >= 4:
        for c in prange(nchunks, schedule="static"):
            bad += _any_nonfinite_{sfx}(g + c * 65536, min(<Py_ssize_t>65536, n - c * 65536))
        return bad
    return _any_nonfinite_{sfx}(g, n)
'''


_PYX_HEAD = '''\
# cython: language_level=3, infer_types=True, cdivision=True, boundscheck=False
# cython: wraparound=False, initializedcheck=False, embedsignature=True
# distutils: extra_compile_args = -fno-math-errno -fno-trapping-math -ffp-contract=off
# Generated by kernels/cython/generate.py from kernels/rules.py; do not edit.
# generated source hash: {digest}  template version: {version}
"""Ahead-of-time Cython twin of optkern's update kernels (see ``_updates.pxd``).

Every ``def <rule>(params, grads, *states, avg, hyper, avg_weight, key,
offsets, parallel=False)`` has the positional calling convention of the Numba
``serial`` driver (kernels/drivers.py): ``params``, ``grads``, each state and
``avg`` are tuples of C-contiguous arrays (one per tensor, all float32 or all
float64; an absent optional state or no averaging is ``None``), ``hyper`` the
rule's kernel hyperparameters (Python floats), ``key`` None or the uint64 noise
key, ``offsets`` the int64 per-tensor noise offsets.  Arrays are updated in
place, the GIL is released around each tensor's loop, and nothing is updated
unless every argument is valid.

Compiler flags (``# distutils`` line above): sqrt sets no errno and floating
point is assumed not to trap (as in Numba/LLVM), so the loops, flags and all,
vectorise; no FMA contraction, so the arithmetic is the rule's, operation for
operation, like the Numba drivers' (bit-identical in float64).
"""

cimport numpy as cnp
from cython.parallel cimport prange
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM
from libc.stdint cimport int64_t, uint64_t

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #define OPTKERN_HAVE_OPENMP 1
    #else
    #define OPTKERN_HAVE_OPENMP 0
    #endif
    """
    const int OPTKERN_HAVE_OPENMP

HAVE_OPENMP = bool(OPTKERN_HAVE_OPENMP)
RULE_NAMES = {rule_names!r}
SOURCE_HASH = {digest!r}


# ---------------------------------------------------------------- validation
# Cheap C-level checks so that a bad call raises instead of crashing; the
# optimizer classes validate user input in full before they get here.

cdef inline tuple _as_tuple(object seq, str what):
    if type(seq) is tuple:
        return <tuple>seq
    if seq is None:
        raise TypeError(f"{{what}}: expected a tuple of arrays, got None")
    return tuple(seq)


cdef int _check_arrays(tuple arrs, str what, tuple params, int typenum,
                       bint writable) except -1:
    cdef Py_ssize_t k, nt = PyTuple_GET_SIZE(params)
    if PyTuple_GET_SIZE(arrs) != nt:
        raise ValueError(f"{{what}}: expected {{nt}} arrays (one per parameter tensor), "
                         f"got {{PyTuple_GET_SIZE(arrs)}}")
    for k in range(nt):
        a = <object>PyTuple_GET_ITEM(arrs, k)
        if not cnp.PyArray_Check(a):
            raise TypeError(f"{{what}}[{{k}}]: expected a NumPy array, got {{type(a).__name__}}")
        if cnp.PyArray_TYPE(<cnp.ndarray>a) != typenum:
            want = "float32" if typenum == cnp.NPY_FLOAT32 else "float64"
            raise TypeError(f"{{what}}[{{k}}] has dtype {{a.dtype}}, expected {{want}} "
                            "like params[0]")
        if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a):
            raise ValueError(f"{{what}}[{{k}}] is not C-contiguous")
        if writable and not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a):
            raise ValueError(f"{{what}}[{{k}}] is read-only")
        if cnp.PyArray_SIZE(<cnp.ndarray>a) != cnp.PyArray_SIZE(
                <cnp.ndarray>PyTuple_GET_ITEM(params, k)):
            raise ValueError(f"{{what}}[{{k}}] has {{cnp.PyArray_SIZE(<cnp.ndarray>a)}} "
                             f"elements but params[{{k}}] has "
                             f"{{cnp.PyArray_SIZE(<cnp.ndarray>PyTuple_GET_ITEM(params, k))}}")
    return 0


cdef inline int _params_type(tuple params) except -1:
    cdef int typenum
    a = <object>PyTuple_GET_ITEM(params, 0)
    if not cnp.PyArray_Check(a):
        raise TypeError(f"params[0]: expected a NumPy array, got {{type(a).__name__}}")
    typenum = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"params[0] has dtype {{a.dtype}}, expected float32 or float64")
    return typenum


cdef inline tuple _state(object arrs, str what, tuple params, int typenum,
                         bint required, str rule):
    if arrs is None:
        if required:
            raise ValueError(f"{{rule}}: state {{what!r}} is required, got None")
        return None
    cdef tuple t = _as_tuple(arrs, what)
    _check_arrays(t, what, params, typenum, True)
    return t


cdef int _fill_hyper(object hyper, double* out, Py_ssize_t nh, str rule) except -1:
    cdef tuple h = _as_tuple(hyper, "hyper")
    cdef Py_ssize_t j
    if PyTuple_GET_SIZE(h) != nh:
        raise ValueError(f"{{rule}}: hyper must hold {{nh}} kernel hyperparameters, "
                         f"got {{PyTuple_GET_SIZE(h)}}")
    for j in range(nh):
        out[j] = <double>(<object>PyTuple_GET_ITEM(h, j))
    return 0


cdef inline cnp.ndarray _offsets(object offsets, Py_ssize_t nt):
    if not (cnp.PyArray_Check(offsets)
            and cnp.PyArray_TYPE(<cnp.ndarray>offsets) == cnp.NPY_INT64
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>offsets)):
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if cnp.PyArray_SIZE(<cnp.ndarray>offsets) < nt:
        raise ValueError(f"offsets: expected {{nt}} noise offsets (one per tensor), "
                         f"got {{cnp.PyArray_SIZE(<cnp.ndarray>offsets)}}")
    return <cnp.ndarray>offsets


cdef inline void* _data(tuple arrs, Py_ssize_t k) noexcept:
    if arrs is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>PyTuple_GET_ITEM(arrs, k))


cdef int _check_disjoint(void** ptrs, int m, Py_ssize_t nbytes, Py_ssize_t k,
                         str rule) except -1:
    # The loops declare their pointers restrict (that is what lets them
    # vectorise), so one tensor's params, grads, states and avg must not share
    # memory.  All have the same byte length, so two overlap iff their starts
    # are closer than that.
    cdef int a, b
    cdef char* pa
    cdef char* pb
    for a in range(m):
        for b in range(a + 1, m):
            pa = <char*>ptrs[a]
            pb = <char*>ptrs[b]
            if pa != NULL and pb != NULL and nbytes > 0 and (
                    (pa <= pb and pb - pa < nbytes) or (pb < pa and pa - pb < nbytes)):
                raise ValueError(f"{{rule}}: the arrays of tensor {{k}} overlap; params, "
                                 "grads, each state and avg must be separate memory")
    return 0


# ---------------------------------------------------------------- finite scan
# The default check_finite=True step: a read-only pass over every gradient
# before any tensor is updated, inside the same call (kernels/finite.py's
# any_nonfinite in C).  x - x is 0 for a finite x and NaN for NaN/inf, and a
# sum of those is 0 or NaN in any order; eight independent partial sums let
# gcc vectorise the loop without -ffast-math (which would fold x - x to 0).

{finite_scan}

cdef Py_ssize_t _first_nonfinite(tuple G, int typenum, bint parallel):
    """Index of the first gradient tensor holding NaN or inf, else -1."""
    cdef Py_ssize_t k, n, bad
    cdef void* gp
    for k in range(PyTuple_GET_SIZE(G)):
        n = cnp.PyArray_SIZE(<cnp.ndarray>PyTuple_GET_ITEM(G, k))
        gp = cnp.PyArray_DATA(<cnp.ndarray>PyTuple_GET_ITEM(G, k))
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                bad = _nonfinite_f32(<const float*>gp, n, parallel)
            else:
                bad = _nonfinite_f64(<const double*>gp, n, parallel)
        if bad != 0:
            return k
    return -1
'''


def _loop_body(r, tr, present, has_avg, noise, indent):
    """One loop iteration for one combination of present optional states."""
    pad = " " * indent
    ctype = tr.ctype
    lines = []
    if noise:
        lines.append(f"_z = <{ctype}>normal(key, <uint64_t>(offset + i))")
    loads = [f"{s}[i]" if present[j] else "0" for j, s in enumerate(r.states)]
    hyper = [f"h_{h}" for h in r.hyper]
    outs = ["_p"] + [f"_s{j}" for j in range(len(r.states))]
    args = ", ".join(["p[i]", "g[i]"] + loads + hyper + ["_z" if noise else "0"])
    lines.append(f"{', '.join(outs)} = {r.name}_rule_{tr.suffix}({args})")
    for j, s in enumerate(r.states):
        if present[j]:
            lines.append(f"{s}[i] = _s{j}")
    if has_avg:
        lines.append("avg[i] = avg[i] + _w * (_p - avg[i])")
    lines.append("p[i] = _p")
    return [pad + x for x in lines]


def _render_loop(r, tr):
    sfx, ctype = tr.suffix, tr.ctype
    nstates = len(r.states)
    lines = [f"cdef {r.loop_signature(sfx, ctype)}:"]
    lines.append("    cdef Py_ssize_t i")
    lines.append(f"    cdef {ctype} _p, _z = 0, _w = <{ctype}>avg_weight")
    if nstates:
        lines.append(f"    cdef {ctype} " + ", ".join(f"_s{j}" for j in range(nstates)))
    for j, h in enumerate(r.hyper):
        lines.append(f"    cdef {ctype} h_{h} = <{ctype}>hyper[{j}]")
    # Each combination of (present optional states, averaging, noise) gets its
    # own loop so that the loops carry no per-element branches.
    flags = [(f"{r.states[j]} != NULL", ("state", j)) for j in r.optional]
    flags.append(("avg != NULL", ("avg", None)))
    if r.uses_z:
        flags.append(("has_key", ("noise", None)))
    lines.append("    cdef int _case = 0")
    for bit, (cond, _) in enumerate(flags):
        lines.append(f"    if {cond}:")
        lines.append(f"        _case = _case | {1 << bit}")
    for case in range(1 << len(flags)):
        present = [True] * nstates
        has_avg = noise = False
        for bit, (_, (kind, j)) in enumerate(flags):
            on = bool(case >> bit & 1)
            if kind == "state":
                present[j] = on
            elif kind == "avg":
                has_avg = on
            else:
                noise = on
        kw = "if" if case == 0 else "elif"
        lines.append(f"    {kw} _case == {case}:")
        lines.append("        if parallel:")
        lines.append("            for i in prange(n, schedule='static'):")
        lines += _loop_body(r, tr, present, has_avg, noise, 16)
        lines.append("        else:")
        lines.append("            for i in range(n):")
        lines += _loop_body(r, tr, present, has_avg, noise, 16)
    return "\n".join(lines) + "\n"


def _render_def(r):
    name = r.name
    nh = len(r.hyper)
    state_args = "".join(f"{s}, " for s in r.states)
    req = set(range(len(r.states))) - set(r.optional)
    states_doc = ", ".join(r.spec.states) or "(none)"
    doc = (f'    """{name} step on tuples of 1-D arrays, in place '
           f"(rules.{r.spec.rule.__name__}).\n\n"
           f"    States: {states_doc} (an optional '?' state may be None).\n"
           f"    hyper: ({', '.join(r.hyper)}), e.g. from rules.RULES[{name!r}].prepare.\n"
           f"    Same positional arguments as the Numba driver\n"
           f"    drivers.module_for({name!r}).serial, plus ``parallel`` (OpenMP) and\n"
           f"    ``check_finite`` (scan every gradient first; on NaN/inf update nothing).\n"
           f"    Returns the index of the first gradient tensor holding NaN/inf\n"
           f"    (only with check_finite; nothing written), else -1.\n"
           '    """')
    lines = [
        f"def {name}(params, grads, {state_args}avg, hyper, double avg_weight, key, offsets,",
        "        bint parallel=False, bint check_finite=False):",
        doc,
        '    cdef tuple P = _as_tuple(params, "params")',
        "    cdef Py_ssize_t k, n, nt = PyTuple_GET_SIZE(P)",
        "    if nt == 0:",
        "        return -1",
        "    cdef int typenum = _params_type(P)",
        '    _check_arrays(P, "params", P, typenum, True)',
        '    cdef tuple G = _as_tuple(grads, "grads")',
        '    _check_arrays(G, "grads", P, typenum, False)',
    ]
    for j, s in enumerate(r.states):
        lines.append(f"    cdef tuple S{j} = _state({s}, {s!r}, P, typenum, "
                     f"{j in req}, {name!r})")
    lines += [
        '    cdef tuple A = _state(avg, "avg", P, typenum, False, "")',
        f"    cdef double h[{max(nh, 1)}]",
        f"    _fill_hyper(hyper, h, {nh}, {name!r})",
        "    cdef bint has_key = key is not None",
        "    cdef uint64_t ukey = key if has_key else 0",
        "    cdef cnp.ndarray off_arr = _offsets(offsets, nt)",
        "    cdef const int64_t* off = <const int64_t*>cnp.PyArray_DATA(off_arr)",
        "    cdef void* pp",
        "    cdef void* gp",
        "    cdef void* ap",
    ]
    for j in range(len(r.states)):
        lines.append(f"    cdef void* s{j}")
    nptr = 3 + len(r.states)
    lines += [
        f"    cdef void* ptrs[{nptr}]",
        "    for k in range(nt):  # all checks before any tensor is updated",
        "        ptrs[0] = cnp.PyArray_DATA(<cnp.ndarray>PyTuple_GET_ITEM(P, k))",
        "        ptrs[1] = cnp.PyArray_DATA(<cnp.ndarray>PyTuple_GET_ITEM(G, k))",
        "        ptrs[2] = _data(A, k)",
    ]
    for j in range(len(r.states)):
        lines.append(f"        ptrs[{3 + j}] = _data(S{j}, k)")
    lines += [
        f"        _check_disjoint(ptrs, {nptr}, cnp.PyArray_NBYTES("
        f"<cnp.ndarray>PyTuple_GET_ITEM(P, k)), k, {name!r})",
        "    if check_finite:  # then every gradient finite, before any tensor is updated",
        "        k = _first_nonfinite(G, typenum, parallel)",
        "        if k >= 0:",
        "            return k",
        "    for k in range(nt):",
        "        n = cnp.PyArray_SIZE(<cnp.ndarray>PyTuple_GET_ITEM(P, k))",
        "        pp = cnp.PyArray_DATA(<cnp.ndarray>PyTuple_GET_ITEM(P, k))",
        "        gp = cnp.PyArray_DATA(<cnp.ndarray>PyTuple_GET_ITEM(G, k))",
        "        ap = _data(A, k)",
    ]
    for j in range(len(r.states)):
        lines.append(f"        s{j} = _data(S{j}, k)")
    for sfx, ctype, typenum, _ in CTYPES:
        kw = "if" if sfx == CTYPES[0][0] else "else"
        cond = f" typenum == cnp.{typenum}" if kw == "if" else ""
        lines.append(f"        {kw}{cond}:")
        lines.append("            with nogil:")
        states = "".join(f"<{ctype}*>s{j}, " for j in range(len(r.states)))
        lines.append(f"                {name}_loop_{sfx}(<{ctype}*>pp, <const {ctype}*>gp, "
                     f"{states}<{ctype}*>ap, n, h, avg_weight, has_key, ukey, off[k], "
                     "parallel)")
    lines.append("    return -1")
    return "\n".join(lines) + "\n"


def render_pyx(rules, specs, digest):
    parts = [_PYX_HEAD.format(digest=digest, version=TEMPLATE_VERSION,
                              rule_names=tuple(r.name for r in specs),
                              finite_scan="\n\n".join(
                                  _FINITE_SCAN.format(ctype=ctype, sfx=sfx)
                                  for ctype, sfx in (("float", "f32"), ("double", "f64"))))]
    compiled = {}
    for r in specs:
        parts.append(f"\n\n# {'-' * 66} {r.name}\n\n")
        # A rule registered under a second name with the same function, states
        # and kernel hyperparameters (SGLD = SGD's rule) reuses the first loops.
        same = compiled.setdefault((r.spec.rule, tuple(r.spec.states), tuple(r.hyper)), r)
        for tr in r.translators:
            if same is r:
                parts.append(_render_loop(r, tr) + "\n\n")
            else:
                parts.append(_render_alias_loop(r, same, tr) + "\n\n")
        parts.append(_render_def(r))
    return "".join(parts)


def _render_alias_loop(r, same, tr):
    args = ", ".join(["p", "g", *r.states, "avg", "n", "hyper", "avg_weight", "has_key",
                      "key", "offset", "parallel"])
    return (f"cdef {r.loop_signature(tr.suffix, tr.ctype)}:\n"
            f"    {same.name}_loop_{tr.suffix}({args})\n")


# --------------------------------------------------------------------------

_DIGEST_SLOT = "@@SOURCE_HASH@@"


def _generate(rules_path):
    rules = load_rules(rules_path)
    specs = [_Rule(rules, spec) for spec in rules.RULES.values()]
    texts = {f"{MODULE}.pxd": render_pxd(rules, specs, _DIGEST_SLOT),
             f"{MODULE}.pyx": render_pyx(rules, specs, _DIGEST_SLOT)}
    # The hash of the generated text is compiled into the module (SOURCE_HASH),
    # so a build older than the rules it should have been made from is detectable.
    digest = hashlib.sha256("".join(texts.values()).encode()).hexdigest()[:16]
    return {k: v.replace(_DIGEST_SLOT, digest) for k, v in texts.items()}, digest


def generate(rules_path=RULES_PATH):
    """Return {"_updates.pxd": text, "_updates.pyx": text}."""
    return _generate(rules_path)[0]


def source_hash(rules_path=RULES_PATH):
    """The SOURCE_HASH a module built from the current rules would carry."""
    return _generate(rules_path)[1]


def write_sources(out_dir=HERE, rules_path=RULES_PATH):
    """Write _updates.pxd/.pyx into out_dir; return [(module_name, pyx_path)]."""
    os.makedirs(out_dir, exist_ok=True)
    for fname, text in generate(rules_path).items():
        _write_if_changed(os.path.join(out_dir, fname), text)
    return [(MODULE, os.path.join(out_dir, f"{MODULE}.pyx"))]


if __name__ == "__main__":
    for mod, path in write_sources(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(f"wrote {path} (and .pxd)")
