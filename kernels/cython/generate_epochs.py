"""Generate the ahead-of-time Cython training epoch (``_epochs.pyx``).

The Cython twin of ``kernels/epoch_drivers.py``: one compiled call runs every
minibatch of an epoch (scores, the loss rule per row, the rank-1 gradient
accumulation, the penalty, the learning-rate schedule, the noise key, the
optimizer's ``prepare`` and its update loop on W then b, Polyak averaging), in
the same order and with the same arithmetic as the Numba ``epoch_serial``.

Nothing is written per (loss, rule) pair.  The generated module holds

* one epoch loop per (C type, layout) -- float/double x dense/CSR, rendered
  from a single template -- that calls the row loss, the rule's ``prepare``
  and its update loop through function pointers;
* per loss, a C row-loss function (wrapping the scalar/row rule that
  ``generate_losses.py`` translated into ``_losses.pxd``);
* per rule, a C twin of its ``prepare`` translated from the Python source in
  ``rules.py`` (``ast``; the same approach as ``generate.py``) and an adapter
  to the rule's ``<rule>_loop_f32/_f64`` in ``_updates.pxd``;
* the C twins of ``schedule_rules.schedule_factor`` (translated the same way)
  and of ``_helpers.step_key`` (splitmix64, uint64 arithmetic).

Integer powers (``beta1 ** step``, ``a ** math.floor(...)``) follow Numba's
``float ** int`` (binary exponentiation, not ``pow``), so the schedules and
bias corrections agree with the Numba epoch bit for bit.

Run by ``setup.py`` at build time (``write_sources``) and by hand with
``python kernels/cython/generate_epochs.py``.  Imports neither numba nor
optkern: it loads the rule modules by file path.
"""

import ast
import hashlib
import inspect
import os
import runpy
import string as _string
import sys
import textwrap
import types

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.normpath(os.path.join(HERE, os.pardir))
MODULE = "_epochs"
TEMPLATE_VERSION = "2"

CTYPES = (("f32", "float"), ("f64", "double"))
LAYOUTS = ("dense", "csr")

# room in the fixed-size C buffers of the epoch loop
MAX_HYPER = 32
MAX_USER = 32
MAX_SCALARS = 8
MAX_STATES = 8


_files = types.SimpleNamespace(**runpy.run_path(os.path.join(KERNELS, "_files.py")))
_load_by_path = _files.load_by_path
_write_if_changed = _files.write_if_changed


def _load(name, fname):
    return _files.load_by_path(name, os.path.join(KERNELS, fname))


# the lane form of a row rule: the same text the Numba epoch compiles
rule_lanes = _load_by_path("_optkern_rule_lanes_for_epochs", os.path.join(KERNELS, "rule_lanes.py"))


class TranslateError(ValueError):
    """A host function uses a construct the C translation does not support."""


# --------------------------------------------------------------------------
# Host scalar functions (prepare, schedule_factor) -> Cython.  Every value is
# a C double except the integer ones (the step, integer constants, sums and
# products of integers, math.floor): those stay int64_t, so that ``x ** n``
# with an integer ``n`` is Numba's binary exponentiation (_ipow) and ``x ** y``
# otherwise is pow(), as in the Numba epoch.  Fully parenthesised: the
# evaluation order is the Python text's.
# --------------------------------------------------------------------------

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
           ast.NotEq: "!="}
_MATH = {"sqrt": "sqrt", "exp": "exp", "log": "log", "cos": "cos", "sin": "sin",
         "log1p": "log1p", "fabs": "fabs"}
_MATH_CONST = {"pi": repr(3.141592653589793), "e": repr(2.718281828459045)}


class _HostTranslator:
    """Translate one host function; names become ``v_<name>``."""

    def __init__(self, fn, int_first, globals_):
        self.fn = fn
        src = textwrap.dedent(inspect.getsource(fn))
        self.fdef = ast.parse(src).body[0]
        self.where = f"{fn.__name__} ({inspect.getsourcefile(fn)})"
        self.params = [a.arg for a in self.fdef.args.args]
        self.ints = set(self.params[:1] if int_first else ())
        self.globals = {k: v for k, v in globals_.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)}
        stores = [n.id for n in ast.walk(self.fdef)
                  if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        self.locals = [n for n in dict.fromkeys(stores) if n not in self.params]
        # a local is an integer when every assignment to it is an integer expression
        assigned = {}
        for node in ast.walk(self.fdef):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                assigned.setdefault(node.targets[0].id, []).append(node.value)
        changed = True
        while changed:
            changed = False
            for name, values in assigned.items():
                if name not in self.ints and name not in self.params \
                        and all(self.is_int(v) for v in values):
                    self.ints.add(name)
                    changed = True

    def err(self, node, what):
        line = self.fn.__code__.co_firstlineno + getattr(node, "lineno", 1) - 1
        return TranslateError(f"{self.where}, line {line}: {what} is not supported "
                              "(allowed: arithmetic, **, comparisons, conditionals, "
                              "math.sqrt/exp/log/cos/floor, abs, min, max)")

    @staticmethod
    def var(name):
        return "v_" + name

    def is_int(self, node):
        if isinstance(node, ast.Name):
            if node.id in self.globals:
                return isinstance(self.globals[node.id], int)
            return node.id in self.ints
        if isinstance(node, ast.Constant):
            return isinstance(node.value, int) and not isinstance(node.value, bool)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            return self.is_int(node.left) and self.is_int(node.right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return self.is_int(node.operand)
        if isinstance(node, ast.Call):
            f = node.func
            return (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                    and f.value.id == "math" and f.attr in ("floor", "ceil"))
        return False

    def expr(self, node):
        e = self.expr
        if isinstance(node, ast.Name):
            if node.id in self.params or node.id in self.locals:
                return self.var(node.id)
            if node.id in self.globals:
                return repr(self.globals[node.id])
            raise self.err(node, f"the global name {node.id!r}")
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool):
                return "1" if v else "0"
            if isinstance(v, int):
                return f"{v}"
            if isinstance(v, float):
                return repr(v)
            raise self.err(node, f"the constant {v!r}")
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "math" \
                    and node.attr in _MATH_CONST:
                return _MATH_CONST[node.attr]
            raise self.err(node, "this attribute")
        if isinstance(node, ast.Subscript):
            if isinstance(node.value, ast.Name) and node.value.id in self.params \
                    and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int):
                return f"{self.var(node.value.id)}[{node.slice.value}]"
            raise self.err(node, "this subscript")
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                if self.is_int(node.right):
                    return f"_ipow(<double>{e(node.left)}, <int64_t>{e(node.right)})"
                return f"pow(<double>{e(node.left)}, <double>{e(node.right)})"
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.err(node, f"the operator {type(node.op).__name__}")
            left = e(node.left)
            if op == "/" and self.is_int(node.left) and self.is_int(node.right):
                left = f"<double>{left}"  # true division
            return f"({left} {op} {e(node.right)})"
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
            parts, left = [], node.left
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
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and f.value.id == "math" and len(args) == 1:
            if f.attr in _MATH:
                return f"{_MATH[f.attr]}(<double>{args[0]})"
            if f.attr in ("floor", "ceil"):  # Numba: math.floor(float) -> int64
                return f"(<int64_t>{f.attr}(<double>{args[0]}))"
        if isinstance(f, ast.Name) and f.id not in self.params and f.id not in self.locals:
            if f.id == "abs" and len(args) == 1:
                return f"fabs(<double>{args[0]})"
            if f.id == "float" and len(args) == 1:
                return f"(<double>{args[0]})"
            if f.id in ("min", "max") and len(args) >= 2:
                out = args[0]
                for a in args[1:]:
                    out = f"_py{f.id}(<double>{out}, <double>{a})"
                return out
        raise self.err(node, f"the call {ast.unparse(node)!r}")

    def stmts(self, body, indent, ret):
        out = []
        for st in body:
            out.extend(self.stmt(st, indent, ret))
        return out or [" " * indent + "pass"]

    def stmt(self, st, indent, ret):
        pad = " " * indent
        if isinstance(st, ast.Assign):
            t = st.targets[0]
            if len(st.targets) == 1 and isinstance(t, ast.Name):
                return [f"{pad}{self.var(t.id)} = {self.expr(st.value)}"]
            raise self.err(st, "this assignment")
        if isinstance(st, ast.AugAssign) and isinstance(st.target, ast.Name) \
                and type(st.op) in _BINOPS:
            n = self.var(st.target.id)
            return [f"{pad}{n} = ({n} {_BINOPS[type(st.op)]} {self.expr(st.value)})"]
        if isinstance(st, ast.If):
            out = [f"{pad}if {self.expr(st.test)}:"]
            out += self.stmts(st.body, indent + 4, ret)
            if st.orelse:
                out.append(f"{pad}else:")
                out += self.stmts(st.orelse, indent + 4, ret)
            return out
        if isinstance(st, ast.Return):
            return [pad + x for x in ret(self, st)]
        if isinstance(st, ast.Pass):
            return [f"{pad}pass"]
        if isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant) \
                and isinstance(st.value.value, str):
            return []
        raise self.err(st, f"the statement {type(st).__name__}")

    def local_decls(self):
        ints = [self.var(n) for n in self.locals if n in self.ints]
        reals = [self.var(n) for n in self.locals if n not in self.ints]
        out = []
        if ints:
            out.append("    cdef int64_t " + ", ".join(ints))
        if reals:
            out.append("    cdef double " + ", ".join(reals))
        return out


def _render_prepare(spec):
    """C twin of ``spec.prepare``: fills hyper[] and scalars_out[]."""
    tr = _HostTranslator(spec.prepare, int_first=True,
                         globals_=vars(sys.modules[spec.prepare.__module__]))
    params = tr.params
    nuser = len(spec.user_hyper)
    if len(params) != 2 + nuser:
        raise TranslateError(f"{tr.where}: expected (step, scalars, {', '.join(spec.user_hyper)})")
    nsc = len(spec.scalar_states)
    nh = len(spec.kernel_hyper)
    step, scalars, lr = params[0], params[1], params[2]

    def ret(t, st):
        v = st.value
        if not (isinstance(v, ast.Tuple) and len(v.elts) == 2
                and isinstance(v.elts[0], ast.Tuple) and len(v.elts[0].elts) == nh):
            raise t.err(st, f"a return other than ((the {nh} kernel hyperparameters), scalars)")
        lines = [f"hyper[{j}] = <double>{t.expr(x)}" for j, x in enumerate(v.elts[0].elts)]
        s = v.elts[1]
        if isinstance(s, ast.Name) and s.id == scalars:
            lines += [f"scalars_out[{j}] = scalars[{j}]" for j in range(nsc)]
        elif isinstance(s, ast.Tuple) and len(s.elts) == nsc:
            lines += [f"scalars_out[{j}] = <double>{t.expr(x)}" for j, x in enumerate(s.elts)]
        else:
            raise t.err(st, f"a scalar state other than {scalars!r} or a {nsc}-tuple")
        lines.append("return")
        return lines

    lines = [f"cdef void _prepare_{spec.name}(int64_t step, const double* scalars, double lr, "
             "const double* user, double* hyper, double* scalars_out) noexcept nogil:",
             f'    """C twin of rules.{spec.prepare.__name__}; user = user_hyper[1:]."""',
             f"    cdef int64_t {tr.var(step)} = step",
             f"    cdef const double* {tr.var(scalars)} = scalars",
             f"    cdef double {tr.var(lr)} = lr"]
    for j, name in enumerate(params[3:]):
        lines.append(f"    cdef double {tr.var(name)} = user[{j}]")
    lines += tr.local_decls()
    lines += tr.stmts(tr.fdef.body, 4, ret)
    return "\n".join(lines) + "\n"


def _render_schedule(sched_mod):
    fn = sched_mod.schedule_factor
    tr = _HostTranslator(fn, int_first=False, globals_=vars(sched_mod))

    def ret(t, st):
        return [f"return <double>{t.expr(st.value)}"]

    args = ", ".join(f"double {tr.var(p)}" for p in tr.params)
    lines = [f"cdef double _schedule_factor({args}) noexcept nogil:",
             '    """C twin of schedule_rules.schedule_factor."""']
    lines += tr.local_decls()
    lines += tr.stmts(tr.fdef.body, 4, ret)
    return "\n".join(lines) + "\n", len(tr.params)


# --------------------------------------------------------------------------
# The dense pass in C (issue 18, item 2): the structure of the Numba epoch's
# _BATCH_DENSE_LANES -- scores written straight into the lane form from the
# shuffled rows where they lie, the loss rule across the lanes, the rank-m
# update of dW^T from the lane form -- as C functions compiled three times,
# for AVX-512, AVX2+FMA and the baseline ISA, and chosen at import by the
# CPU (__builtin_cpu_supports).  C rather than Cython because a function
# attribute (target) is what lets one portable build use the host's vector
# width; GCC's vector extensions make the register tiles explicit.
# --------------------------------------------------------------------------


# (level, target attribute, vector bytes); level 0 is the build's own ISA
SIMD_LEVELS = ((0, "", 16), (1, 'OKX_TARGET("avx2,fma")', 32),
               (2, 'OKX_TARGET("avx512f,avx512dq,avx2,fma")', 64))
DENSE_ROWS = 48  # rows per block: the Numba epoch's DENSE_LANE_ROWS

_C_PRELUDE = r'''
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define OKX_X86 1
#define OKX_TARGET(t) __attribute__((target(t)))
#else
#define OKX_X86 0
#endif
#if defined(__GNUC__)
#define OKX_VEC 1
#define OKX_INLINE static inline __attribute__((always_inline))
#define OKX_PREFETCH(p) __builtin_prefetch(p)
#define OKX_RESTRICT __restrict__
#else
#define OKX_VEC 0
#define OKX_INLINE static inline
#define OKX_PREFETCH(p) ((void)0)
#define OKX_RESTRICT
#endif
/* the lane loops' selects and clamps vectorise only without trapping maths
   (no result changes: the flag only stops the compiler preserving FP traps) */
#if defined(__GNUC__) && !defined(__clang__)
#define OKX_NOTRAP __attribute__((optimize("no-trapping-math")))
#else
#define OKX_NOTRAP
#endif
#define OKX_LOAD(dst, p) memcpy(&(dst), (p), sizeof(dst))

static int okx_max_level = -1;
static int okx_level_now = 0;

static int okx_detect(void) {
#if OKX_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

/* the level the kernels run at: by default AVX2 where the CPU has it (the
   AVX-512 code was slower on the machine measured, docs/epochs.md: as LLVM,
   which prefers 256-bit vectors on these CPUs), else the baseline; an
   explicit level is capped at what the CPU has */
static int okx_set_level(int level) {
    if (okx_max_level < 0)
        okx_max_level = okx_detect();
    if (level < 0)
        level = okx_max_level < 1 ? okx_max_level : 1;
    if (level > okx_max_level)
        level = okx_max_level;
    okx_level_now = level;
    return level;
}

'''


_C_EXP = r'''
/* exp as kernels/_helpers.py exp_fast (_exp_f64 / _exp_f32): the same
   reduction, polynomial and scaling, so that the lane form's results are the
   Numba ones.  The floor: the vector round instruction where there is one
   (AVX), else through an int32 conversion (SSE2 has no round; the AVX
   targets do not vectorise that form's compare-and-subtract) */
OKX_INLINE @ATTR@ OKX_NOTRAP double okx_exp_f64_@LVL@(double x) {
    double xc = x > -746.0 ? x : -746.0;
    xc = xc < 710.0 ? xc : 710.0;
    double t = xc * 1.4426950408889634 + 0.5;
@FLOOR_F64@
    double r = (xc - nf * 6.93147180369123816490e-01) - nf * 1.90821492927058770002e-10;
    double p = @INV_FACT_13@;
@POLY_F64@
    int32_t h = ni >> 1;
    int64_t b1 = ((int64_t)(h + 1023)) << 52, b2 = ((int64_t)(ni - h + 1023)) << 52;
    double s1, s2;
    memcpy(&s1, &b1, 8);
    memcpy(&s2, &b2, 8);
    double res = p * s1 * s2;
    return x == x ? res : x;
}

OKX_INLINE @ATTR@ OKX_NOTRAP float okx_exp_f32_@LVL@(float x) {
    float xc = x > -104.0f ? x : -104.0f;
    xc = xc < 89.0f ? xc : 89.0f;
    float t = xc * @LOG2E_F@ + 0.5f;
@FLOOR_F32@
    float r = (xc - nf * 0.693359375f) - nf * @LN2_LO_F@;
    float p = @INV_FACT_F_7@;
@POLY_F32@
    int32_t h = ni >> 1;
    int32_t b1 = (h + 127) << 23, b2 = (ni - h + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    float res = p * s1 * s2;
    return x == x ? res : x;
}
'''


def _f32_literal(v):
    import struct
    f = struct.unpack("f", struct.pack("f", v))[0]
    return repr(f) + "f"


def _c_prelude():
    import math
    inv = [1.0 / math.factorial(i) for i in range(14)]
    poly64 = "\n".join(f"    p = p * r + {inv[i]!r};" for i in range(12, -1, -1))
    poly32 = "\n".join(f"    p = p * r + {_f32_literal(inv[i])};" for i in range(6, -1, -1))
    exps = []
    for lvl, attr, _ in SIMD_LEVELS:
        e = _C_EXP.replace("@ATTR@", attr).replace("@LVL@", str(lvl))
        for ct, fl in (("double", "F64"), ("float", "F32")):
            if lvl == 0:
                floor = (f"    int32_t ni = (int32_t)t;\n    ni -= (t < ({ct})ni);\n"
                         f"    {ct} nf = ({ct})ni;")
            else:
                fn = "__builtin_floor" if ct == "double" else "__builtin_floorf"
                floor = f"    {ct} nf = {fn}(t);\n    int32_t ni = (int32_t)nf;"
            e = e.replace(f"@FLOOR_{fl}@", floor)
        exps.append(e if lvl == 0 else f"#if OKX_X86 && OKX_VEC\n{e}\n#endif\n")
    return ((_C_PRELUDE + "".join(exps)).replace("@INV_FACT_13@", repr(inv[13]))
            .replace("@POLY_F64@", poly64).replace("@POLY_F32@", poly32)
            .replace("@INV_FACT_F_7@", _f32_literal(inv[7]))
            .replace("@LOG2E_F@", _f32_literal(1.4426950408889634))
            .replace("@LN2_LO_F@", _f32_literal(-2.12194440054690582e-4)))

# per (C type, level): the score tiles, the dW^T tiles; $vt is a vector of
# $V elements ($ct itself where the compiler has no vector extensions)
_C_KERNELS = _string.Template(r'''
OKX_INLINE $attr $ct okx_hsum_${sfx}_$lvl($vt a) {
$hsum
}

/* ZT[j*R + q] = X[order[q]] . WT[j] + b[j] (q < m): the rows read where they
   lie, tiles of 6 rows x 2 outputs ($V-wide partial sums over the features,
   12 accumulators); the m_next rows of next[] are prefetched first */
static $attr void okx_scores_${sfx}_$lvl(
        const $ct* OKX_RESTRICT X, int64_t d, const int64_t* order, int64_t m,
        const int64_t* next, int64_t m_next, const $ct* OKX_RESTRICT WT,
        const $ct* OKX_RESTRICT b, $ct* OKX_RESTRICT ZT, int64_t k, int64_t R) {
    int64_t t = 0, j, f, q, p;
    const int64_t row_bytes = d * (int64_t)sizeof($ct);
    for (q = 0; q < m_next; q++) {
        const char* row = (const char*)(X + next[q] * d);
        for (p = 0; p < row_bytes; p += 64)
            OKX_PREFETCH(row + p);
    }
    for (; t + 6 <= m; t += 6) {
        const $ct* x0 = X + order[t] * d;
        const $ct* x1 = X + order[t + 1] * d;
        const $ct* x2 = X + order[t + 2] * d;
        const $ct* x3 = X + order[t + 3] * d;
        const $ct* x4 = X + order[t + 4] * d;
        const $ct* x5 = X + order[t + 5] * d;
        for (j = 0; j + 2 <= k; j += 2) {
            const $ct* w = WT + j * d;
            const $ct* v = w + d;
            $vt a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0};
            $vt c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0};
            $vt wf, vf, y;
            for (f = 0; f + $V <= d; f += $V) {
                OKX_LOAD(wf, w + f);
                OKX_LOAD(vf, v + f);
                OKX_LOAD(y, x0 + f); a0 += y * wf; c0 += y * vf;
                OKX_LOAD(y, x1 + f); a1 += y * wf; c1 += y * vf;
                OKX_LOAD(y, x2 + f); a2 += y * wf; c2 += y * vf;
                OKX_LOAD(y, x3 + f); a3 += y * wf; c3 += y * vf;
                OKX_LOAD(y, x4 + f); a4 += y * wf; c4 += y * vf;
                OKX_LOAD(y, x5 + f); a5 += y * wf; c5 += y * vf;
            }
            $ct s0 = okx_hsum_${sfx}_$lvl(a0), s1 = okx_hsum_${sfx}_$lvl(a1);
            $ct s2 = okx_hsum_${sfx}_$lvl(a2), s3 = okx_hsum_${sfx}_$lvl(a3);
            $ct s4 = okx_hsum_${sfx}_$lvl(a4), s5 = okx_hsum_${sfx}_$lvl(a5);
            $ct e0 = okx_hsum_${sfx}_$lvl(c0), e1 = okx_hsum_${sfx}_$lvl(c1);
            $ct e2 = okx_hsum_${sfx}_$lvl(c2), e3 = okx_hsum_${sfx}_$lvl(c3);
            $ct e4 = okx_hsum_${sfx}_$lvl(c4), e5 = okx_hsum_${sfx}_$lvl(c5);
            for (; f < d; f++) {
                $ct ws = w[f], vs = v[f];
                s0 += x0[f] * ws; e0 += x0[f] * vs;
                s1 += x1[f] * ws; e1 += x1[f] * vs;
                s2 += x2[f] * ws; e2 += x2[f] * vs;
                s3 += x3[f] * ws; e3 += x3[f] * vs;
                s4 += x4[f] * ws; e4 += x4[f] * vs;
                s5 += x5[f] * ws; e5 += x5[f] * vs;
            }
            $ct* zj = ZT + j * R + t;
            $ct* zv = zj + R;
            zj[0] = s0; zj[1] = s1; zj[2] = s2; zj[3] = s3; zj[4] = s4; zj[5] = s5;
            zv[0] = e0; zv[1] = e1; zv[2] = e2; zv[3] = e3; zv[4] = e4; zv[5] = e5;
        }
        if (j < k) {
            const $ct* w = WT + j * d;
            $vt a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0};
            $vt wf, y;
            for (f = 0; f + $V <= d; f += $V) {
                OKX_LOAD(wf, w + f);
                OKX_LOAD(y, x0 + f); a0 += y * wf;
                OKX_LOAD(y, x1 + f); a1 += y * wf;
                OKX_LOAD(y, x2 + f); a2 += y * wf;
                OKX_LOAD(y, x3 + f); a3 += y * wf;
                OKX_LOAD(y, x4 + f); a4 += y * wf;
                OKX_LOAD(y, x5 + f); a5 += y * wf;
            }
            $ct s0 = okx_hsum_${sfx}_$lvl(a0), s1 = okx_hsum_${sfx}_$lvl(a1);
            $ct s2 = okx_hsum_${sfx}_$lvl(a2), s3 = okx_hsum_${sfx}_$lvl(a3);
            $ct s4 = okx_hsum_${sfx}_$lvl(a4), s5 = okx_hsum_${sfx}_$lvl(a5);
            for (; f < d; f++) {
                $ct ws = w[f];
                s0 += x0[f] * ws; s1 += x1[f] * ws; s2 += x2[f] * ws;
                s3 += x3[f] * ws; s4 += x4[f] * ws; s5 += x5[f] * ws;
            }
            $ct* zj = ZT + j * R + t;
            zj[0] = s0; zj[1] = s1; zj[2] = s2; zj[3] = s3; zj[4] = s4; zj[5] = s5;
        }
    }
    for (; t < m; t++) {
        const $ct* xr = X + order[t] * d;
        for (j = 0; j < k; j++) {
            const $ct* w = WT + j * d;
            $vt a0 = {0}, wf, y;
            for (f = 0; f + $V <= d; f += $V) {
                OKX_LOAD(wf, w + f);
                OKX_LOAD(y, xr + f);
                a0 += y * wf;
            }
            $ct s0 = okx_hsum_${sfx}_$lvl(a0);
            for (; f < d; f++)
                s0 += xr[f] * w[f];
            ZT[j * R + t] = s0;
        }
    }
    if (b != NULL) {
        for (j = 0; j < k; j++) {
            $ct bj = b[j];
            $ct* zj = ZT + j * R;
            for (q = 0; q < m; q++)
                zj[q] += bj;
        }
    }
}

/* accT[j*d + f] += sum_q DT[j*R + q] X[order[q]*d + f] (q < m): the block's
   rank-m update of dW^T from the lane form, the same rows of X (in cache from
   the score pass); tiles of 6 rows x 4 outputs, vectorised over f */
static $attr void okx_accumulate_${sfx}_$lvl(
        const $ct* OKX_RESTRICT X, int64_t d, const int64_t* order, int64_t m,
        const $ct* OKX_RESTRICT DT, $ct* OKX_RESTRICT accT, int64_t k, int64_t R) {
    int64_t t = 0, j, f;
    for (; t + 6 <= m; t += 6) {
        const $ct* OKX_RESTRICT x0 = X + order[t] * d;
        const $ct* OKX_RESTRICT x1 = X + order[t + 1] * d;
        const $ct* OKX_RESTRICT x2 = X + order[t + 2] * d;
        const $ct* OKX_RESTRICT x3 = X + order[t + 3] * d;
        const $ct* OKX_RESTRICT x4 = X + order[t + 4] * d;
        const $ct* OKX_RESTRICT x5 = X + order[t + 5] * d;
        for (j = 0; j + 4 <= k; j += 4) {
            $ct* OKX_RESTRICT g0 = accT + j * d;
            $ct* OKX_RESTRICT g1 = g0 + d;
            $ct* OKX_RESTRICT g2 = g1 + d;
            $ct* OKX_RESTRICT g3 = g2 + d;
            const $ct* e = DT + j * R + t;
            $ct p0 = e[0], p1 = e[1], p2 = e[2], p3 = e[3], p4 = e[4], p5 = e[5];
            e += R;
            $ct q0 = e[0], q1 = e[1], q2 = e[2], q3 = e[3], q4 = e[4], q5 = e[5];
            e += R;
            $ct s0 = e[0], s1 = e[1], s2 = e[2], s3 = e[3], s4 = e[4], s5 = e[5];
            e += R;
            $ct u0 = e[0], u1 = e[1], u2 = e[2], u3 = e[3], u4 = e[4], u5 = e[5];
            for (f = 0; f < d; f++) {
                $ct y0 = x0[f], y1 = x1[f], y2 = x2[f], y3 = x3[f], y4 = x4[f], y5 = x5[f];
                g0[f] += p0 * y0 + p1 * y1 + p2 * y2 + p3 * y3 + p4 * y4 + p5 * y5;
                g1[f] += q0 * y0 + q1 * y1 + q2 * y2 + q3 * y3 + q4 * y4 + q5 * y5;
                g2[f] += s0 * y0 + s1 * y1 + s2 * y2 + s3 * y3 + s4 * y4 + s5 * y5;
                g3[f] += u0 * y0 + u1 * y1 + u2 * y2 + u3 * y3 + u4 * y4 + u5 * y5;
            }
        }
        for (; j < k; j++) {
            $ct* OKX_RESTRICT g0 = accT + j * d;
            const $ct* e = DT + j * R + t;
            $ct p0 = e[0], p1 = e[1], p2 = e[2], p3 = e[3], p4 = e[4], p5 = e[5];
            for (f = 0; f < d; f++)
                g0[f] += (p0 * x0[f] + p1 * x1[f] + p2 * x2[f] + p3 * x3[f] + p4 * x4[f]
                          + p5 * x5[f]);
        }
    }
    for (; t < m; t++) {
        const $ct* OKX_RESTRICT xr = X + order[t] * d;
        for (j = 0; j < k; j++) {
            $ct* OKX_RESTRICT g = accT + j * d;
            $ct dr = DT[j * R + t];
            for (f = 0; f < d; f++)
                g[f] += dr * xr[f];
        }
    }
}

/* the minibatch's gradient in W's layout, as the Numba epoch forms it:
   dW[f*k + j] = ($ct)(dWT[j*d + f] * inv), then the penalty's (sub)gradient
   a1 sign(w) + a2 w added in W's dtype (loss_drivers.penalty_add: runs of 512
   elements summed in $V-wide partial sums, the run sums in double); returns
   the penalty's value */
static $attr OKX_NOTRAP double okx_grad_${sfx}_$lvl(
        const $ct* OKX_RESTRICT dWT, const $ct* OKX_RESTRICT W, $ct* OKX_RESTRICT dW,
        int64_t d, int64_t k, double inv, double alpha, double l1_ratio) {
    int64_t f, j, i, v, s, e, n = d * k;
    double l1 = 0.0, l2 = 0.0;
    for (f = 0; f < d; f++)
        for (j = 0; j < k; j++)
            dW[f * k + j] = ($ct)(dWT[j * d + f] * inv);
    if (alpha == 0.0)
        return 0.0;
    const $ct a1 = ($ct)(alpha * l1_ratio), a2 = ($ct)(alpha * (1.0 - l1_ratio));
    const $ct zero = 0, one = 1;
    for (s = 0; s < n; s += 512) {
        e = s + 512 < n ? s + 512 : n;
        $ct r1[$V], r2[$V];
        for (v = 0; v < $V; v++) {
            r1[v] = 0;
            r2[v] = 0;
        }
        for (i = s; i + $V <= e; i += $V) {
            for (v = 0; v < $V; v++) {
                $ct w = W[i + v];
                $ct sg = (w > zero ? one : zero) - (w < zero ? one : zero);
                dW[i + v] = dW[i + v] + (a1 * sg + a2 * w);
                r1[v] += w < zero ? -w : w;
                r2[v] += w * w;
            }
        }
        for (; i < e; i++) {
            $ct w = W[i];
            $ct sg = (w > zero ? one : zero) - (w < zero ? one : zero);
            dW[i] = dW[i] + (a1 * sg + a2 * w);
            r1[0] += w < zero ? -w : w;
            r2[0] += w * w;
        }
        for (v = 0; v < $V; v++) {
            l1 += r1[v];
            l2 += r2[v];
        }
    }
    return alpha * (l1_ratio * l1 + 0.5 * (1.0 - l1_ratio) * l2);
}

/* W^T for the score tiles, once per minibatch */
static $attr void okx_transpose_${sfx}_$lvl(const $ct* OKX_RESTRICT W, $ct* OKX_RESTRICT WT,
                                           int64_t d, int64_t k) {
    int64_t f, j;
    for (j = 0; j < k; j++)
        for (f = 0; f < d; f++)
            WT[j * d + f] = W[f * k + j];
}
''')

_C_DISPATCH = _string.Template(r'''
static void okx_scores_${sfx}(const $ct* X, int64_t d, const int64_t* order, int64_t m,
        const int64_t* next, int64_t m_next, const $ct* WT, const $ct* b, $ct* ZT,
        int64_t k, int64_t R) {
#if OKX_X86 && OKX_VEC
    if (okx_level_now == 2) {
        okx_scores_${sfx}_2(X, d, order, m, next, m_next, WT, b, ZT, k, R); return; }
    if (okx_level_now == 1) {
        okx_scores_${sfx}_1(X, d, order, m, next, m_next, WT, b, ZT, k, R); return; }
#endif
    okx_scores_${sfx}_0(X, d, order, m, next, m_next, WT, b, ZT, k, R);
}

static void okx_accumulate_${sfx}(const $ct* X, int64_t d, const int64_t* order, int64_t m,
        const $ct* DT, $ct* accT, int64_t k, int64_t R) {
#if OKX_X86 && OKX_VEC
    if (okx_level_now == 2) {
        okx_accumulate_${sfx}_2(X, d, order, m, DT, accT, k, R); return; }
    if (okx_level_now == 1) {
        okx_accumulate_${sfx}_1(X, d, order, m, DT, accT, k, R); return; }
#endif
    okx_accumulate_${sfx}_0(X, d, order, m, DT, accT, k, R);
}

static double okx_grad_${sfx}(const $ct* dWT, const $ct* W, $ct* dW, int64_t d, int64_t k,
                              double inv, double alpha, double l1_ratio) {
#if OKX_X86 && OKX_VEC
    if (okx_level_now == 2) return okx_grad_${sfx}_2(dWT, W, dW, d, k, inv, alpha, l1_ratio);
    if (okx_level_now == 1) return okx_grad_${sfx}_1(dWT, W, dW, d, k, inv, alpha, l1_ratio);
#endif
    return okx_grad_${sfx}_0(dWT, W, dW, d, k, inv, alpha, l1_ratio);
}

static void okx_transpose_${sfx}(const $ct* W, $ct* WT, int64_t d, int64_t k) {
#if OKX_X86 && OKX_VEC
    if (okx_level_now == 2) { okx_transpose_${sfx}_2(W, WT, d, k); return; }
    if (okx_level_now == 1) { okx_transpose_${sfx}_1(W, WT, d, k); return; }
#endif
    okx_transpose_${sfx}_0(W, WT, d, k);
}
''')


def _hsum(ct, n_elems):
    """A tree sum of a vector of n_elems: halves added down to one element."""
    lines, cur, width, step = [], "a", n_elems, 0
    while width > 1:
        half = width // 2
        ht = f"okx_h{half}_t{step}" if half > 1 else ct
        if half > 1:
            lines.append(f"    typedef {ct} {ht} __attribute__((vector_size({half * _SIZE[ct]})));")
        lines += [f"    {ht} lo{step}, hi{step};",
                  f"    memcpy(&lo{step}, &{cur}, sizeof(lo{step}));",
                  f"    memcpy(&hi{step}, (const char*)&{cur} + sizeof(lo{step}), sizeof(hi{step}));",
                  f"    {ht} s{step} = lo{step} + hi{step};"]
        cur, width, step = f"s{step}", half, step + 1
    lines.append(f"    return {cur};")
    return "\n".join(lines)


_SIZE = {"float": 4, "double": 8}


def _c_kernels(ctypes=(("f32", "float"), ("f64", "double"))):
    parts = []
    for sfx, ct in ctypes:
        for lvl, attr, vbytes in SIMD_LEVELS:
            n_el = vbytes // _SIZE[ct]
            vt = f"okx_v{lvl}_{sfx}"
            guard = lvl > 0
            text = []
            if guard:
                text.append("#if OKX_X86 && OKX_VEC")
            text.append("#if OKX_VEC")
            text.append(f"typedef {ct} {vt} __attribute__((vector_size({vbytes})));")
            text.append(f"#define OKX_V_{sfx}_{lvl} {n_el}")
            text.append("#else")
            text.append(f"typedef {ct} {vt};")
            text.append(f"#define OKX_V_{sfx}_{lvl} 1")
            text.append("#endif")
            body = _C_KERNELS.substitute(ct=ct, sfx=sfx, lvl=lvl, attr=attr, vt=vt,
                                         V=f"OKX_V_{sfx}_{lvl}",
                                         hsum="#if OKX_VEC\n" + _hsum(ct, n_el)
                                         + "\n#else\n    return a;\n#endif")
            text.append(body)
            if guard:
                text.append("#endif")
            parts.append("\n".join(text))
        parts.append(_C_DISPATCH.substitute(ct=ct, sfx=sfx))
    return "\n".join(parts)


class _LaneToC:
    """The lane form of a row rule (kernels/rule_lanes.py's Python text, the
    one the Numba epoch compiles) as a C function for one C type.  Inside the
    loop over the lanes an ``if`` becomes selects (each assignment keeps its
    old value where the condition is false, the condition evaluated once),
    so that every lane loop vectorises."""

    _OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Gt: ">",
            ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<=", ast.Eq: "==", ast.NotEq: "!="}
    _ARR2 = ("ZT", "DT", "S", "SI")

    def __init__(self, ct, sfx, lvl):
        self.ct, self.sfx, self.lvl = ct, sfx, lvl
        self.n_cond = 0

    def expr(self, node):
        e = self.expr
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return repr(float(node.value)) if isinstance(node.value, float) \
                else f"{node.value}"
        if isinstance(node, ast.Name):
            if node.id in ("k", "n", "epsilon", "r") or node.id.startswith("j"):
                return node.id
            raise TranslateError(f"lane form: the name {node.id!r}")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            arr = node.value.id
            if arr in self._ARR2 and isinstance(node.slice, ast.Tuple) \
                    and len(node.slice.elts) == 2:
                i, r = node.slice.elts
                return f"{arr}[({e(i)}) * R + ({e(r)})]"
            if arr in ("Y", "LOSS"):
                return f"{arr}[{e(node.slice)}]"
            raise TranslateError(f"lane form: the subscript of {arr!r}")
        if isinstance(node, ast.BinOp) and type(node.op) in self._OPS:
            return f"({e(node.left)} {self._OPS[type(node.op)]} {e(node.right)})"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return f"(-{e(node.operand)})"
            if isinstance(node.op, ast.Not):
                return f"(!{e(node.operand)})"
            if isinstance(node.op, ast.UAdd):
                return e(node.operand)
        if isinstance(node, ast.Compare):
            parts = []
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                if type(op) not in self._OPS:
                    break
                parts.append(f"({e(left)} {self._OPS[type(op)]} {e(right)})")
                left = right
            else:
                return "(" + " && ".join(parts) + ")"
        if isinstance(node, ast.BoolOp):
            word = " && " if isinstance(node.op, ast.And) else " || "
            return "(" + word.join(e(v) for v in node.values) + ")"
        if isinstance(node, ast.IfExp):
            return f"(({e(node.test)}) ? ({e(node.body)}) : ({e(node.orelse)}))"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and not node.keywords:
            args = [e(a) for a in node.args]
            f = node.func.id
            if f == "dt" and len(args) == 1:
                return f"(({self.ct})({args[0]}))"
            if f == "exp_fast" and len(args) == 1:
                return f"okx_exp_{self.sfx}_{self.lvl}({args[0]})"
            if f == "log_fast" and len(args) == 1:
                # log_fast works in float64 and rounds the result once
                return f"(({self.ct})log((double)({args[0]})))"
            if f == "abs" and len(args) == 1:
                return f"fabs({args[0]})"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "math" \
                and node.func.attr == "log1p" and len(node.args) == 1:
            return f"log1p({e(node.args[0])})"
        raise TranslateError(f"lane form: {ast.unparse(node)!r}")

    def lane(self, stmts, cond, pad):
        """Statements for one lane under the condition ``cond`` (C text or None)."""
        out = []
        for st in stmts:
            if isinstance(st, ast.Assign) and len(st.targets) == 1:
                t, v = self.expr(st.targets[0]), self.expr(st.value)
                out.append(f"{pad}{t} = {v};" if cond is None
                           else f"{pad}{t} = {cond} ? ({v}) : {t};")
            elif isinstance(st, ast.If):
                # both branches' conditions from the test's value before either runs
                test = self.expr(st.test)
                c, nc = f"okx_c{self.n_cond}", f"okx_c{self.n_cond + 1}"
                self.n_cond += 2
                out.append(f"{pad}const int {c} = " + (test if cond is None
                                                     else f"{cond} && {test}") + ";")
                out.append(f"{pad}const int {nc} = " + (f"!{c}" if cond is None
                                                      else f"{cond} && !{c}") + ";")
                out.append(f"{pad}(void){nc};")
                out += self.lane(st.body, c, pad)
                out += self.lane(st.orelse, nc, pad)
            elif isinstance(st, ast.Pass):
                pass
            else:
                raise TranslateError(f"lane form: the statement {ast.unparse(st)!r}")
        return out

    def stmts(self, stmts, pad):
        out = []
        for st in stmts:
            if isinstance(st, ast.For) and isinstance(st.target, ast.Name) \
                    and isinstance(st.iter, ast.Call) and st.iter.func.id == "range":
                a = [self.expr(x) for x in st.iter.args]
                lo, hi = ("0", a[0]) if len(a) == 1 else (a[0], a[1])
                if len(a) > 2:
                    raise TranslateError("lane form: range with a step")
                v = st.target.id
                out.append(f"{pad}for (int64_t {v} = {lo}; {v} < {hi}; {v}++) {{")
                if v == "r":
                    out += self.lane(st.body, None, pad + "    ")
                else:
                    out += self.stmts(st.body, pad + "    ")
                out.append(f"{pad}}}")
            elif isinstance(st, ast.If):
                out.append(f"{pad}if ({self.expr(st.test)}) {{")
                out += self.stmts(st.body, pad + "    ")
                if st.orelse:
                    out.append(f"{pad}}} else {{")
                    out += self.stmts(st.orelse, pad + "    ")
                out.append(f"{pad}}}")
            elif isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant):
                pass
            elif isinstance(st, ast.Assign) and isinstance(st.targets[0], ast.Name) \
                    and st.targets[0].id in ("k", "dt"):
                pass   # k and the dtype are the C function's
            else:
                raise TranslateError(f"lane form: the statement {ast.unparse(st)!r}")
        return out


def _lane_c_function(lane_py, loss_name, ct, sfx, lvl, attr):
    """C text of the lane form (``lane_py``: rule_lanes.lane_source's text)."""
    fdef = ast.parse(lane_py).body[0]
    tr = _LaneToC(ct, sfx, lvl)
    body = tr.stmts(fdef.body, "    ")
    head = (f"static {attr} OKX_NOTRAP void okx_lanes_{loss_name}_{sfx}_{lvl}("
            f"const {ct}* OKX_RESTRICT ZT, const int64_t* OKX_RESTRICT Y, {ct} epsilon, "
            f"{ct}* OKX_RESTRICT DT, double* OKX_RESTRICT LOSS, int64_t n, "
            f"{ct}* OKX_RESTRICT S, int64_t* OKX_RESTRICT SI, int64_t k, int64_t R) {{")
    return "\n".join([head, "    (void)epsilon; (void)S; (void)SI; (void)Y;"] + body + ["}"])


def _lane_c(lane_py, loss_name, ctypes=(("f32", "float"), ("f64", "double"))):
    parts = []
    for sfx, ct in ctypes:
        for lvl, attr, _ in SIMD_LEVELS:
            fn = _lane_c_function(lane_py, loss_name, ct, sfx, lvl, attr)
            parts.append(fn if lvl == 0 else f"#if OKX_X86 && OKX_VEC\n{fn}\n#endif")
        args = "ZT, Y, epsilon, DT, LOSS, n, S, SI, k, R"
        parts.append(f'''
static void okx_lanes_{loss_name}_{sfx}(const {ct}* ZT, const int64_t* Y, {ct} epsilon,
        {ct}* DT, double* LOSS, int64_t n, {ct}* S, int64_t* SI, int64_t k, int64_t R) {{
#if OKX_X86 && OKX_VEC
    if (okx_level_now == 2) {{ okx_lanes_{loss_name}_{sfx}_2({args}); return; }}
    if (okx_level_now == 1) {{ okx_lanes_{loss_name}_{sfx}_1({args}); return; }}
#endif
    okx_lanes_{loss_name}_{sfx}_0({args});
}}''')
    return "\n".join(parts)


# --------------------------------------------------------------------------
# The module text
# --------------------------------------------------------------------------

_HEAD = '''\
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
# Generated by kernels/cython/generate_epochs.py from kernels/rules.py,
# kernels/loss_rules.py and kernels/schedule_rules.py; do not edit.
# generated source hash: @@SOURCE_HASH@@  template version: {version}
"""The ahead-of-time training epoch: every minibatch of an epoch in one nogil call.

``epoch_for(loss, rule, layout)`` returns a callable with the calling
convention of the Numba ``epoch_serial`` (kernels/epoch_drivers.py)::

    epoch(X, T, sw, order, batch_size, n_chunks, W, b, dWp, dbp, Z, D, lossp, wsump,
          *statesW, *statesB, avgW, avgB, userW, userB, scalarsW, scalarsB,
          step0, avg_start, avg_count0, sched, base_lr, plateau, alpha, l1_ratio,
          epsilon, seed, offW, offB, par_work, w_mean)
      -> (mean_loss, steps_done, avg_count, scalarsW, scalarsB)

(CSR: ``data, indices, indptr`` in place of ``X``; int64 indices.)  It
computes the same thing in the same order as the Numba serial epoch; the
epoch runs without the GIL.  Serial: ``n_chunks`` is accepted and only chunk
0 of the scratch arrays is used.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.math cimport sqrt, exp, log, log1p, cos, sin, fabs, pow, floor, ceil, isfinite, NAN
from libc.string cimport memset
from libc.stdlib cimport malloc, free
cimport numpy as cnp
import numpy as np

cimport optkern.kernels.cython._updates as U
from optkern.kernels.cython._losses cimport {loss_cimports}

cnp.import_array()

cdef extern from *:
    """
    #if defined(_MSC_VER)
    #define OPTKERN_EPOCH_RESTRICT __restrict
    #else
    #define OPTKERN_EPOCH_RESTRICT __restrict__
    #endif
    """
    # the epoch's work arrays never overlap (separate scratch rows): saying so
    # lets the compiler vectorise the rank-1 loops without alias checks
    ctypedef float* r_float "float * OPTKERN_EPOCH_RESTRICT"
    ctypedef double* r_double "double * OPTKERN_EPOCH_RESTRICT"

SOURCE_HASH = "@@SOURCE_HASH@@"
RULE_NAMES = {rule_names!r}
LOSS_NAMES = {loss_names!r}

cdef enum:
    MAX_HYPER = {max_hyper}
    MAX_USER = {max_user}
    MAX_SCALARS = {max_scalars}
    MAX_STATES = {max_states}

ctypedef void (*prepare_fn)(int64_t step, const double* scalars, double lr,
                            const double* user, double* hyper,
                            double* scalars_out) noexcept nogil
ctypedef void (*update_f32)(float* p, const float* g, float** states, float* avg,
                            Py_ssize_t n, const double* hyper, double avg_weight,
                            bint has_key, uint64_t key, int64_t offset) noexcept nogil
ctypedef void (*update_f64)(double* p, const double* g, double** states, double* avg,
                            Py_ssize_t n, const double* hyper, double avg_weight,
                            bint has_key, uint64_t key, int64_t offset) noexcept nogil
ctypedef double (*loss_f32)(const float* z, const float* y_i, Py_ssize_t label,
                            float epsilon, float* dz, Py_ssize_t k) noexcept nogil
ctypedef double (*loss_f64)(const double* z, const double* y_i, Py_ssize_t label,
                            double epsilon, double* dz, Py_ssize_t k) noexcept nogil
# a loss rule's lane form over a block (ZT, DT: (k, R) lanes; S, SI: its locals)
ctypedef void (*lanes_f32)(const float* ZT, const int64_t* Y, float epsilon, float* DT,
                           double* LOSS, int64_t n, float* S, int64_t* SI, int64_t k,
                           int64_t R) noexcept nogil
ctypedef void (*lanes_f64)(const double* ZT, const int64_t* Y, double epsilon, double* DT,
                           double* LOSS, int64_t n, double* S, int64_t* SI, int64_t k,
                           int64_t R) noexcept nogil


# ---- host arithmetic as Numba does it ----

cdef inline double _ipow(double a, int64_t b) noexcept nogil:
    """``float ** int`` as Numba compiles it (binary exponentiation)."""
    cdef double r = 1.0
    cdef bint invert = b < 0
    cdef int64_t e = -b if invert else b
    if e > 0x10000:
        return pow(a, <double>b)
    while e != 0:
        if e & 1:
            r = r * a
        e = e >> 1
        a = a * a
    if invert:
        return 1.0 / r
    return r


cdef inline double _pymin(double a, double b) noexcept nogil:
    return b if b < a else a


cdef inline double _pymax(double a, double b) noexcept nogil:
    return b if b > a else a


cdef inline uint64_t _step_key(uint64_t seed, int64_t step) noexcept nogil:
    """C twin of _helpers.step_key (splitmix64 of seed*golden + step, mod 2**64)."""
    return U.mix64(seed * 0x9E3779B97F4A7C15ULL + <uint64_t>step)


def step_key(seed, step):
    """The noise key of ``step`` (bit for bit _helpers.step_key), as np.uint64."""
    return np.uint64(_step_key(<uint64_t>int(seed), <int64_t>int(step)))


'''

_LOSS_SCALAR = '''
cdef double _loss_{name}_{sfx}(const {ct}* z, const {ct}* y_i, Py_ssize_t label,
                              {ct} epsilon, {ct}* dz, Py_ssize_t k) noexcept nogil:
    # the row's loss summed in double, as the Numba epoch (l = 0.0; l += lj)
    cdef double l = 0.0
    cdef {ct} dj
    cdef Py_ssize_t j
    for j in range(k):
        l += {fn}(z[j], y_i[j], epsilon, &dj)
        dz[j] = dj
    return l
'''

_LOSS_ROW = '''
cdef double _loss_{name}_{sfx}(const {ct}* z, const {ct}* y_i, Py_ssize_t label,
                              {ct} epsilon, {ct}* dz, Py_ssize_t k) noexcept nogil:
    return {fn}(z, label, epsilon, dz, k)
'''

_UPDATE = '''
cdef void _update_{name}_{sfx}({ct}* p, const {ct}* g, {ct}** s, {ct}* avg, Py_ssize_t n,
                               const double* hyper, double avg_weight, bint has_key,
                               uint64_t key, int64_t offset) noexcept nogil:
    U.{name}_loop_{sfx}(p, g, {states}avg, n, hyper, avg_weight, has_key, key, offset, False)
'''

_DENSE = dict(
    data_decl="const {ct}* X",
    data_pass="<const {ct}*>cnp.PyArray_DATA(<cnp.ndarray>args[0])",
    scores='''\
            for f in range(d):
                xf = X[i * d + f]
                if xf != 0.0:
                    for j in range(k):
                        z[j] += xf * W[f * k + j]''',
    accum='''\
            for f in range(d):
                xf = X[i * d + f]
                if xf != 0.0:
                    for j in range(k):
                        dW[f * k + j] += xf * dz[j]''')
_CSR = dict(
    data_decl="const {ct}* data, const int64_t* indices, const int64_t* indptr",
    data_pass=("<const {ct}*>cnp.PyArray_DATA(<cnp.ndarray>args[0]), "
               "<const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>args[1]), "
               "<const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>args[2])"),
    scores='''\
            for q in range(indptr[i], indptr[i + 1]):
                f = indices[q]
                xf = data[q]
                for j in range(k):
                    z[j] += xf * W[f * k + j]''',
    accum='''\
            for q in range(indptr[i], indptr[i + 1]):
                f = indices[q]
                xf = data[q]
                for j in range(k):
                    dW[f * k + j] += xf * dz[j]''')

# the CSR layout's pass: row by row (the Numba epoch's _BATCH, chunk 0)
_CSR_BATCH = '''\
        # ---- fused pass over rows order[start:stop] (_batch_serial, chunk 0)
        memset(dW, 0, dk * sizeof({ct}))
        memset(db, 0, k * sizeof({ct}))
        lsum = 0.0
        wsum = 0.0
        for r in range(start, stop):
            i = order[r]
            w = sw[i]
            for j in range(k):
                z[j] = b[j] if b != NULL else 0.0
{scores}
            l = loss(z, Tf + i * k if Tf != NULL else NULL, Ti[i] if Ti != NULL else 0,
                     eps, dz, k)
            lsum += w * l
            wsum += w
            if w != 1.0:
                for j in range(k):
                    dz[j] = dz[j] * w
            for j in range(k):
                db[j] += dz[j]
{accum}
'''

# The dense layout's pass: the structure of the Numba epoch's
# _BATCH_DENSE_LANES (docs/epochs.md, "The Cython epoch").  Per block of
# DENSE_ROWS rows: the scores written in lane form straight from the shuffled
# rows (okx_scores_*, which also prefetches the next block's rows), the loss
# rule across the lanes (its C lane form, generated from the same
# rule_lanes text the Numba epoch compiles) or else row by row, the sample
# weights and db across the lanes, the rank-m update of dW^T from the lane
# form (okx_accumulate_*).  dW^T is turned into dW's layout once per minibatch.
_DENSE_SETUP = '''\
    cdef Py_ssize_t R = DENSE_ROWS, r0, m, m_next
    cdef bint weighted
    cdef {ct} acc_s
    cdef {ct}* WT = <{ct}*>malloc(dk * sizeof({ct}) + 1)
    cdef {ct}* dWT = <{ct}*>malloc(dk * sizeof({ct}) + 1)
    cdef {ct}* ZT = <{ct}*>malloc(k * R * sizeof({ct}))
    cdef {ct}* DT = <{ct}*>malloc(k * R * sizeof({ct}))
    cdef {ct}* S = <{ct}*>malloc((n_real + 1) * R * sizeof({ct}))
    cdef int64_t* SI = <int64_t*>malloc((n_int + 1) * R * sizeof(int64_t))
    cdef double* LS = <double*>malloc(R * sizeof(double))
    cdef int64_t* YB = <int64_t*>malloc(R * sizeof(int64_t))
    if (WT == NULL or dWT == NULL or ZT == NULL or DT == NULL or S == NULL or SI == NULL
            or LS == NULL or YB == NULL):
        # out of memory: reported like a diverged epoch (no step taken)
{cleanup}
        steps_out[0] = 0
        return NAN
'''
_DENSE_CLEANUP = '''\
    free(WT)
    free(dWT)
    free(ZT)
    free(DT)
    free(S)
    free(SI)
    free(LS)
    free(YB)'''
# the gradient and the penalty: the CSR layout's in double, element by element;
# the dense layout's in C from dW^T (okx_grad_*, as the Numba epoch)
_CSR_GRAD = '''\
        pen = 0.0
        for idx in range(dk):
            wv = W[idx]
            g = dW[idx] * inv
            if alpha != 0.0:
                sgn = 0.0
                if wv > 0:
                    sgn = 1.0
                elif wv < 0:
                    sgn = -1.0
                g += alpha * (l1_ratio * sgn + (1.0 - l1_ratio) * wv)
                pen += l1_ratio * fabs(wv) + 0.5 * (1.0 - l1_ratio) * wv * wv
            dW[idx] = <{ct}>g
        pen = alpha * pen'''
_DENSE_GRAD = '''\
        pen = okx_grad_{sfx}(dWT, W, dW, d, k, inv, alpha, l1_ratio)'''
_DENSE_BATCH = '''\
        # ---- the fused pass over rows order[start:stop], in blocks of R rows
        okx_transpose_{sfx}(W, WT, d, k)
        memset(dWT, 0, dk * sizeof({ct}))
        memset(db, 0, k * sizeof({ct}))
        lsum = 0.0
        wsum = 0.0
        r0 = start
        while r0 < stop:
            m = stop - r0
            if m > R:
                m = R
            # the next block's rows, across the minibatch's end
            m_next = n - r0 - m
            if m_next > m:
                m_next = m
            okx_scores_{sfx}(X, d, order + r0, m, order + r0 + m, m_next, WT, b, ZT, k, R)
            if lanes != NULL:
                for q in range(m):
                    YB[q] = Ti[order[r0 + q]]
                lanes(ZT, YB, eps, DT, LS, m, S, SI, k, R)
            else:
                for q in range(m):
                    i = order[r0 + q]
                    for j in range(k):
                        z[j] = ZT[j * R + q]
                    LS[q] = loss(z, Tf + i * k if Tf != NULL else NULL,
                                 Ti[i] if Ti != NULL else 0, eps, dz, k)
                    for j in range(k):
                        DT[j * R + q] = dz[j]
            weighted = False
            for q in range(m):
                w = sw[order[r0 + q]]
                lsum += w * LS[q]
                wsum += w
                if w != 1.0:
                    weighted = True
            if weighted:
                for j in range(k):
                    for q in range(m):
                        DT[j * R + q] = DT[j * R + q] * sw[order[r0 + q]]
            for j in range(k):
                acc_s = db[j]
                for q in range(m):
                    acc_s = acc_s + DT[j * R + q]
                db[j] = acc_s
            okx_accumulate_{sfx}(X, d, order + r0, m, DT, dWT, k, R)
            r0 += m
'''

_EPOCH = '''

cdef double _epoch_{sfx}_{layout}(
        {data_decl}, Py_ssize_t d, Py_ssize_t k,
        const {ct}* Tf, const int64_t* Ti, const {ct}* sw, const int64_t* order, Py_ssize_t n,
        Py_ssize_t batch_size, r_{ct} W, r_{ct} b, r_{ct} dW, r_{ct} db, r_{ct} z, r_{ct} dz,
        {ct}** sW, {ct}** sB, {ct}* avgW, {ct}* avgB,
        const double* userW, const double* userB, double* scalarsW, double* scalarsB,
        int n_scalars, int64_t step0, int64_t avg_start, int64_t* avg_count_io,
        const double* sched, double base_lr, double plateau, double alpha, double l1_ratio,
        double epsilon, bint has_seed, uint64_t seed, int64_t offW, int64_t offB,
        double w_mean, loss_{sfx} loss, lanes_{sfx} lanes, int n_real, int n_int,
        prepare_fn prepare, update_{sfx} update, int64_t* steps_out) noexcept nogil:
    """The Numba epoch_serial's loop (epoch_drivers._EPOCH, one chunk)."""
    cdef {ct} eps = <{ct}>epsilon
    cdef Py_ssize_t dk = d * k
    cdef Py_ssize_t start, stop, r, i, f, j, q, idx
    cdef int s
    cdef int64_t step = step0
    cdef int64_t avg_count = avg_count_io[0]
    cdef double total = 0.0, weight = 0.0
    cdef double lsum, wsum, l, inv, pen, g, sgn, batch_loss, lr, w_avg
    cdef {ct} w, xf, wv
    cdef bint averaging
    cdef uint64_t key = 0
    cdef double hyper[MAX_HYPER]
    cdef double new_scalars[MAX_SCALARS]
{setup}
    start = 0
    while start < n:
        stop = start + batch_size
        if stop > n:
            stop = n
{batch}        if wsum <= 0.0:
            start = stop
            continue
        # unbiased minibatch estimate of sum(w L)/sum(w) over the whole data set
        inv = 1.0 / ((stop - start) * w_mean)
{grad}
        for j in range(k):
            db[j] = <{ct}>(db[j] * inv)
        batch_loss = lsum * inv + pen
        if not isfinite(batch_loss):
            steps_out[0] = step - step0
            avg_count_io[0] = avg_count
{cleanup12}
            return NAN
        total += batch_loss * (stop - start)
        weight += stop - start
        lr = base_lr * _schedule_factor(sched[0], <double>step, sched[1], sched[2], sched[3],
                                        sched[4], sched[5]) * plateau
        step += 1
        if has_seed:
            key = _step_key(seed, step)
        prepare(step, scalarsW, lr, userW, hyper, new_scalars)
        for s in range(n_scalars):
            scalarsW[s] = new_scalars[s]
        averaging = avg_start >= 0 and step > avg_start
        w_avg = 1.0 / (avg_count + 1) if averaging else 0.0
        update(W, dW, sW, avgW, dk, hyper, w_avg, has_seed, key, offW)
        if b != NULL:
            prepare(step, scalarsB, lr, userB, hyper, new_scalars)
            for s in range(n_scalars):
                scalarsB[s] = new_scalars[s]
            update(b, db, sB, avgB, k, hyper, w_avg, has_seed, key, offB)
        if averaging:
            avg_count += 1
        start = stop
    steps_out[0] = step - step0
    avg_count_io[0] = avg_count
{cleanup4}
    return total / weight if weight > 0.0 else 0.0
'''

_PY = '''

# ---- the tables the Python entry point dispatches on ----

cdef struct _RuleEntry:
    prepare_fn prepare
    update_f32 update32
    update_f64 update64
    int n_states
    int n_user
    int n_hyper
    int n_scalars

cdef struct _LossEntry:
    loss_f32 loss32
    loss_f64 loss64
    bint row
    lanes_f32 lanes32
    lanes_f64 lanes64
    int n_real
    int n_int

cdef _RuleEntry _RULES[{n_rules}]
cdef _LossEntry _LOSSES[{n_losses}]
{tables}

# per rule: which states are optional ('name?flag'), in order
_OPTIONAL = {optional!r}
_SCALAR_INIT = {scalar_init!r}


cdef inline cnp.ndarray _arr(object a, str what, int typenum, Py_ssize_t size,
                             bint writable):
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{{what}}: expected a NumPy array, got {{type(a).__name__}}")
    cdef cnp.ndarray x = <cnp.ndarray>a
    if cnp.PyArray_TYPE(x) != typenum:
        raise TypeError(f"{{what}}: dtype {{x.dtype}} does not match the parameters'")
    if not cnp.PyArray_IS_C_CONTIGUOUS(x):
        raise ValueError(f"{{what}} is not C-contiguous")
    if writable and not cnp.PyArray_ISWRITEABLE(x):
        raise ValueError(f"{{what}} is read-only")
    if size >= 0 and cnp.PyArray_SIZE(x) < size:
        raise ValueError(f"{{what}} has {{cnp.PyArray_SIZE(x)}} elements, expected {{size}}")
    return x


cdef tuple _tup(const double* a, Py_ssize_t n):
    return tuple([a[j] for j in range(n)])


cdef inline void* _ptr(object a) noexcept:
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class Epoch:
    """One compiled epoch for a (loss, rule, layout); call it like the Numba
    ``epoch_serial`` of ``epoch_drivers.module_for(loss, rule, layout)``."""

    cdef readonly str loss
    cdef readonly str rule
    cdef readonly str layout
    cdef int li, ri
    cdef bint csr

    def __init__(self, str loss, str rule, str layout):
        if loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {{loss!r}}")
        if rule not in RULE_NAMES:
            raise ValueError(f"unknown update rule {{rule!r}}")
        if layout not in ("dense", "csr"):
            raise ValueError(f"layout must be 'dense' or 'csr', got {{layout!r}}")
        self.loss, self.rule, self.layout = loss, rule, layout
        self.li = LOSS_NAMES.index(loss)
        self.ri = RULE_NAMES.index(rule)
        self.csr = layout == "csr"

    def __repr__(self):
        return (f"<optkern Cython epoch: loss {{self.loss!r}}, rule {{self.rule!r}}, "
                f"{{self.layout}}>")

    def __call__(self, *args):
        cdef _RuleEntry re = _RULES[self.ri]
        cdef _LossEntry le = _LOSSES[self.li]
        cdef Py_ssize_t nd = 3 if self.csr else 1
        cdef Py_ssize_t ns = re.n_states
        cdef Py_ssize_t expected = nd + 13 + 2 * ns + 20
        if len(args) != expected:
            raise TypeError(f"epoch({{self.loss}}, {{self.rule}}, {{self.layout}}) takes "
                            f"{{expected}} arguments, got {{len(args)}}")
        cdef list rest = list(args[nd:])
        (T, sw, order, batch_size, n_chunks, W, b, dWp, dbp, Z, D, lossp,
         wsump) = rest[:13]
        statesW = rest[13:13 + ns]
        statesB = rest[13 + ns:13 + 2 * ns]
        cdef list tail = rest[13 + 2 * ns:]
        (avgW, avgB, userW, userB, scalarsW, scalarsB, step0, avg_start, avg_count0,
         sched, base_lr, plateau, alpha, l1_ratio, epsilon, seed, offW, offB, par_work,
         w_mean) = tail

        if not cnp.PyArray_Check(W) or cnp.PyArray_NDIM(<cnp.ndarray>W) != 2:
            raise TypeError("W: expected a 2-D NumPy array")
        cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>W)
        if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
            raise TypeError(f"W has dtype {{W.dtype}}, expected float32 or float64")
        cdef Py_ssize_t d = W.shape[0], k = W.shape[1], dk = d * k
        _arr(W, "W", typenum, dk, True)
        if b is not None:
            _arr(b, "b", typenum, k, True)
        cdef cnp.ndarray ordr = _arr(order, "order", cnp.NPY_INT64, -1, False)
        cdef Py_ssize_t n = cnp.PyArray_SIZE(ordr)
        cdef Py_ssize_t n_rows
        if self.csr:
            _arr(args[0], "data", typenum, -1, False)
            _arr(args[1], "indices", cnp.NPY_INT64, -1, False)
            _arr(args[2], "indptr", cnp.NPY_INT64, -1, False)
            n_rows = cnp.PyArray_SIZE(<cnp.ndarray>args[2]) - 1
            if n_rows < 0 or (n_rows > 0 and args[2][n_rows] > cnp.PyArray_SIZE(
                    <cnp.ndarray>args[1])) or cnp.PyArray_SIZE(<cnp.ndarray>args[1]) != \\
                    cnp.PyArray_SIZE(<cnp.ndarray>args[0]):
                raise ValueError("indptr/indices/data do not form a CSR matrix")
            if cnp.PyArray_SIZE(<cnp.ndarray>args[1]) and (
                    args[1].min() < 0 or args[1].max() >= d):
                raise ValueError(f"indices must lie in [0, {{d}})")
        else:
            _arr(args[0], "X", typenum, -1, False)
            if cnp.PyArray_NDIM(<cnp.ndarray>args[0]) != 2 or args[0].shape[1] != d:
                raise ValueError(f"X must be 2-D with {{d}} columns")
            n_rows = args[0].shape[0]
        if le.row:
            _arr(T, "T", cnp.NPY_INT64, n_rows, False)
            if n_rows and (T.min() < 0 or T.max() >= k):
                raise ValueError(f"class indices in T must lie in [0, {{k}})")
        else:
            _arr(T, "T", typenum, n_rows * k, False)
        _arr(sw, "sw", typenum, n_rows, False)
        if n and (order.min() < 0 or order.max() >= n_rows):
            raise ValueError(f"order must index rows in [0, {{n_rows}})")
        _arr(dWp, "dWp", typenum, dk, True)
        _arr(dbp, "dbp", typenum, k, True)
        _arr(Z, "Z", typenum, k, True)
        _arr(D, "D", typenum, k, True)
        cdef Py_ssize_t bs = batch_size
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {{bs}}")

        cdef void* pW[MAX_STATES]
        cdef void* pB[MAX_STATES]
        cdef Py_ssize_t j
        opt = _OPTIONAL[self.ri]
        for j in range(ns):
            if statesW[j] is None:
                if not opt[j]:
                    raise ValueError(f"{{self.rule}}: state {{j}} is required, got None")
            else:
                _arr(statesW[j], f"statesW[{{j}}]", typenum, dk, True)
            pW[j] = _ptr(statesW[j])
            if b is not None and statesB[j] is None:
                if not opt[j]:
                    raise ValueError(f"{{self.rule}}: state {{j}} is required, got None")
            elif b is not None:
                _arr(statesB[j], f"statesB[{{j}}]", typenum, k, True)
            pB[j] = _ptr(statesB[j]) if b is not None else NULL
        if avgW is not None:
            _arr(avgW, "avgW", typenum, dk, True)
        if b is not None and avgB is not None:
            _arr(avgB, "avgB", typenum, k, True)

        cdef double uW[MAX_USER]
        cdef double uB[MAX_USER]
        cdef double scW[MAX_SCALARS]
        cdef double scB[MAX_SCALARS]
        cdef double sc[6]
        userW = tuple(userW)
        userB = tuple(userB)
        if len(userW) != re.n_user + 1 or len(userB) != re.n_user + 1:
            raise ValueError(f"{{self.rule}}: userW/userB must hold {{re.n_user + 1}} values")
        for j in range(re.n_user):
            uW[j] = userW[j + 1]
            uB[j] = userB[j + 1]
        scalarsW = tuple(scalarsW)
        scalarsB = tuple(scalarsB)
        if len(scalarsW) != re.n_scalars or len(scalarsB) != re.n_scalars:
            raise ValueError(f"{{self.rule}}: scalar states must hold {{re.n_scalars}} values")
        for j in range(re.n_scalars):
            scW[j] = scalarsW[j]
            scB[j] = scalarsB[j]
        sched = tuple(sched)
        if len(sched) != 6:
            raise ValueError("sched must hold 6 values (kind, a, b, c, warmup, start)")
        for j in range(6):
            sc[j] = sched[j]

        cdef int64_t c_step0 = step0, c_avg_start = avg_start, avg_count = avg_count0
        cdef int64_t steps = 0
        cdef double c_base_lr = base_lr, c_plateau = plateau, c_alpha = alpha
        cdef double c_l1 = l1_ratio, c_eps = epsilon, c_wmean = w_mean
        cdef bint has_seed = seed is not None
        cdef uint64_t c_seed = <uint64_t>int(seed) if has_seed else 0
        cdef int64_t c_offW = offW, c_offB = offB
        cdef double mean = 0.0
        cdef void* Xp0 = _ptr(args[0])
        cdef void* Xp1 = _ptr(args[1]) if self.csr else NULL
        cdef void* Xp2 = _ptr(args[2]) if self.csr else NULL
        cdef void* Tp = _ptr(T)
        cdef void* swp = _ptr(sw)
        cdef const int64_t* op = <const int64_t*>_ptr(order)
        cdef void* Wp = _ptr(W)
        cdef void* bp = _ptr(b)
        cdef void* dWpp = _ptr(dWp)
        cdef void* dbpp = _ptr(dbp)
        cdef void* Zp = _ptr(Z)
        cdef void* Dp = _ptr(D)
        cdef void* aWp = _ptr(avgW)
        cdef void* aBp = _ptr(avgB) if b is not None else NULL
        cdef bint row = le.row
{dispatch}
        return (mean, steps, avg_count, _tup(scW, re.n_scalars), _tup(scB, re.n_scalars))


_CACHE = {{}}


def epoch_for(loss, rule, layout):
    """The compiled epoch for this (loss, update rule, layout)."""
    key = (loss, rule, layout)
    fn = _CACHE.get(key)
    if fn is None:
        fn = _CACHE[key] = Epoch(loss, rule, layout)
    return fn


def prepare(str rule, step, scalars, lr, user):
    """The C twin of RULES[rule].prepare(step, scalars, lr, *user) (for tests)."""
    cdef _RuleEntry re = _RULES[RULE_NAMES.index(rule)]
    cdef double u[MAX_USER]
    cdef double sc[MAX_SCALARS]
    cdef double h[MAX_HYPER]
    cdef double out[MAX_SCALARS]
    cdef Py_ssize_t j
    user = tuple(user)
    scalars = tuple(scalars)
    if len(user) != re.n_user or len(scalars) != re.n_scalars:
        raise ValueError(f"{{rule}}: expected {{re.n_user}} user values and "
                         f"{{re.n_scalars}} scalar states")
    for j in range(re.n_user):
        u[j] = user[j]
    for j in range(re.n_scalars):
        sc[j] = scalars[j]
    re.prepare(<int64_t>step, sc, <double>lr, u, h, out)
    return _tup(h, re.n_hyper), _tup(out, re.n_scalars)


def schedule_factor(kind, t, a, b, c, warmup, start):
    """The C twin of schedule_rules.schedule_factor (for tests)."""
    return _schedule_factor(kind, t, a, b, c, warmup, start)
'''

_C_BLOCK = '''
# ---- the dense pass's kernels in C (generate_epochs.py, "The dense pass in C") ----

cdef extern from *:
    """
@C_TEXT@
    """
    int okx_set_level(int level) nogil
    int okx_level_now
    void okx_scores_f32(const float* X, int64_t d, const int64_t* order, int64_t m,
                        const int64_t* nxt, int64_t m_next, const float* WT, const float* b,
                        float* ZT, int64_t k, int64_t R) nogil
    void okx_scores_f64(const double* X, int64_t d, const int64_t* order, int64_t m,
                        const int64_t* nxt, int64_t m_next, const double* WT,
                        const double* b, double* ZT, int64_t k, int64_t R) nogil
    void okx_accumulate_f32(const float* X, int64_t d, const int64_t* order, int64_t m,
                            const float* DT, float* accT, int64_t k, int64_t R) nogil
    void okx_accumulate_f64(const double* X, int64_t d, const int64_t* order, int64_t m,
                            const double* DT, double* accT, int64_t k, int64_t R) nogil
    double okx_grad_f32(const float* dWT, const float* W, float* dW, int64_t d, int64_t k,
                        double inv, double alpha, double l1_ratio) nogil
    double okx_grad_f64(const double* dWT, const double* W, double* dW, int64_t d, int64_t k,
                        double inv, double alpha, double l1_ratio) nogil
    void okx_transpose_f32(const float* W, float* WT, int64_t d, int64_t k) nogil
    void okx_transpose_f64(const double* W, double* WT, int64_t d, int64_t k) nogil
{decls}

cdef enum:
    DENSE_ROWS = {rows}

okx_set_level(-1)


def simd_level():
    """The vector width the dense pass runs at: 2 AVX-512, 1 AVX2+FMA, 0 the build's own."""
    return okx_level_now


def set_simd_level(level):
    """Run the dense pass at ``level``, capped at what the CPU has (-1: the
    default, AVX2 where there is one).  For tests and benchmarks; returns the
    level now in use."""
    return okx_set_level(int(level))
'''

_DISPATCH_CALL = '''\
        {kw} typenum == cnp.{typenum} and {csr_test}:
            with nogil:
                mean = _epoch_{sfx}_{layout}(
                    {data_args}, d, k,
                    NULL if row else <const {ct}*>Tp, <const int64_t*>Tp if row else NULL,
                    <const {ct}*>swp, op, n, bs, <{ct}*>Wp, <{ct}*>bp, <{ct}*>dWpp,
                    <{ct}*>dbpp, <{ct}*>Zp, <{ct}*>Dp, <{ct}**>pW, <{ct}**>pB, <{ct}*>aWp,
                    <{ct}*>aBp, uW, uB, scW, scB, re.n_scalars, c_step0, c_avg_start,
                    &avg_count, sc, c_base_lr, c_plateau, c_alpha, c_l1, c_eps, has_seed,
                    c_seed, c_offW, c_offB, c_wmean, le.loss{bits}, le.lanes{bits},
                    le.n_real, le.n_int, re.prepare, re.update{bits}, &steps)
'''


def _render(rules, losses, sched_mod):
    rule_specs = list(rules.RULES.values())
    loss_specs = list(losses.LOSS_RULES.values())
    for spec in rule_specs:
        ns = len(rules.state_names(spec))
        if ns > MAX_STATES or len(spec.kernel_hyper) > MAX_HYPER \
                or len(spec.user_hyper) > MAX_USER or len(spec.scalar_states) > MAX_SCALARS:
            raise TranslateError(f"rule {spec.name!r} exceeds the epoch's fixed buffers")
    cimports = []
    for ls in loss_specs:
        cimports.append(ls.rule.__name__)
    parts = [_HEAD.format(version=TEMPLATE_VERSION,
                          loss_cimports=", ".join(dict.fromkeys(cimports)),
                          rule_names=tuple(s.name for s in rule_specs),
                          loss_names=tuple(s.name for s in loss_specs),
                          max_hyper=MAX_HYPER, max_user=MAX_USER,
                          max_scalars=MAX_SCALARS, max_states=MAX_STATES)]
    lane_c, lane_decls, lane_slots = [], [], {}
    for ls in loss_specs:
        if ls.kind != "row":
            continue
        try:
            lane_py = rule_lanes.lane_source(ls.rule, "_lanes")
        except rule_lanes.NotLaneable:
            continue
        lane_c.append(_lane_c(lane_py, ls.name))
        lane_slots[ls.name] = rule_lanes.lane_slots(ls.rule)
        for sfx, ct in CTYPES:
            lane_decls.append(
                f"    void okx_lanes_{ls.name}_{sfx}(const {ct}* ZT, const int64_t* Y, "
                f"{ct} epsilon, {ct}* DT, double* LOSS, int64_t n, {ct}* S, int64_t* SI, "
                "int64_t k, int64_t R) nogil")
    c_text = _c_prelude() + _c_kernels() + "\n".join(lane_c)
    if '"""' in c_text or "\\" in c_text:
        raise TranslateError("the C block may not hold triple quotes or backslashes")
    parts.append(_C_BLOCK.format(rows=DENSE_ROWS, decls="\n".join(lane_decls))
                 .replace("@C_TEXT@", textwrap.indent(c_text, "    ")))
    sched_text, n_sched = _render_schedule(sched_mod)
    if n_sched != 7:
        raise TranslateError("schedule_factor must take (kind, t, a, b, c, warmup, start)")
    parts.append("# ---- the learning-rate schedule ----\n\n" + sched_text)
    parts.append("\n# ---- row losses (kernels/loss_rules.py via _losses.pxd) ----\n")
    for ls in loss_specs:
        for sfx, ct in CTYPES:
            tmpl = _LOSS_SCALAR if ls.kind == "scalar" else _LOSS_ROW
            parts.append(tmpl.format(name=ls.name, sfx=sfx, ct=ct, fn=ls.rule.__name__))
    parts.append("\n\n# ---- update rules: prepare twins and loop adapters ----\n")
    for spec in rule_specs:
        parts.append("\n\n" + _render_prepare(spec))
        ns = len(rules.state_names(spec))
        for sfx, ct in CTYPES:
            states = "".join(f"s[{j}], " for j in range(ns))
            parts.append(_UPDATE.format(name=spec.name, sfx=sfx, ct=ct, states=states))
    parts.append("\n\n# ---- the epoch loops: {float, double} x {dense, CSR} ----\n")
    for layout in LAYOUTS:
        pieces = _DENSE if layout == "dense" else _CSR
        for sfx, ct in CTYPES:
            if layout == "dense":
                clean = _DENSE_CLEANUP.format(ct=ct)
                extra = dict(
                    batch=_DENSE_BATCH.format(ct=ct, sfx=sfx),
                    setup=_DENSE_SETUP.format(ct=ct, cleanup=textwrap.indent(clean, " " * 4)),
                    cleanup12=textwrap.indent(clean, " " * 8),
                    cleanup4=clean, grad=_DENSE_GRAD.format(sfx=sfx))
            else:
                extra = dict(batch=_CSR_BATCH.format(ct=ct, scores=pieces["scores"],
                                                     accum=pieces["accum"]),
                             setup="", cleanup12="", cleanup4="",
                             grad=_CSR_GRAD.format(ct=ct))
            parts.append(_EPOCH.format(sfx=sfx, ct=ct, layout=layout,
                                       data_decl=pieces["data_decl"].format(ct=ct), **extra))
    tables = []
    for r, spec in enumerate(rule_specs):
        tables += [f"_RULES[{r}].prepare = _prepare_{spec.name}",
                   f"_RULES[{r}].update32 = _update_{spec.name}_f32",
                   f"_RULES[{r}].update64 = _update_{spec.name}_f64",
                   f"_RULES[{r}].n_states = {len(rules.state_names(spec))}",
                   f"_RULES[{r}].n_user = {len(spec.user_hyper) - 1}",
                   f"_RULES[{r}].n_hyper = {len(spec.kernel_hyper)}",
                   f"_RULES[{r}].n_scalars = {len(spec.scalar_states)}"]
    for i, ls in enumerate(loss_specs):
        tables += [f"_LOSSES[{i}].loss32 = _loss_{ls.name}_f32",
                   f"_LOSSES[{i}].loss64 = _loss_{ls.name}_f64",
                   f"_LOSSES[{i}].row = {ls.kind == 'row'}"]
        if ls.name in lane_slots:
            tables += [f"_LOSSES[{i}].lanes32 = okx_lanes_{ls.name}_f32",
                       f"_LOSSES[{i}].lanes64 = okx_lanes_{ls.name}_f64",
                       f"_LOSSES[{i}].n_real = {lane_slots[ls.name][0]}",
                       f"_LOSSES[{i}].n_int = {lane_slots[ls.name][1]}"]
        else:
            tables += [f"_LOSSES[{i}].lanes32 = NULL", f"_LOSSES[{i}].lanes64 = NULL",
                       f"_LOSSES[{i}].n_real = 0", f"_LOSSES[{i}].n_int = 0"]
    dispatch = []
    first = True
    for layout in LAYOUTS:
        for sfx, ct in CTYPES:
            typenum = "NPY_FLOAT32" if sfx == "f32" else "NPY_FLOAT64"
            data_args = (f"<const {ct}*>Xp0" if layout == "dense" else
                         f"<const {ct}*>Xp0, <const int64_t*>Xp1, <const int64_t*>Xp2")
            dispatch.append(_DISPATCH_CALL.format(
                kw="if" if first else "elif", typenum=typenum,
                csr_test="self.csr" if layout == "csr" else "not self.csr",
                sfx=sfx, layout=layout, ct=ct, data_args=data_args,
                bits="32" if sfx == "f32" else "64"))
            first = False
    parts.append(_PY.format(
        n_rules=len(rule_specs), n_losses=len(loss_specs), tables="\n".join(tables),
        optional=tuple(tuple("?" in s for s in spec.states) for spec in rule_specs),
        scalar_init=tuple(tuple(v for _, v in spec.scalar_states) for spec in rule_specs),
        dispatch="".join(dispatch).rstrip("\n")))
    return "".join(parts)


_DIGEST_SLOT = "@@SOURCE_HASH@@"


def generate():
    """Return {"_epochs.pyx": text}."""
    rules = _load("_optkern_rules_for_epochs", "rules.py")
    losses = _load("_optkern_loss_rules_for_epochs", "loss_rules.py")
    sched = _load("_optkern_schedule_rules_for_epochs", "schedule_rules.py")
    text = _render(rules, losses, sched)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {f"{MODULE}.pyx": text.replace(_DIGEST_SLOT, digest)}


def source_hash():
    text = generate()[f"{MODULE}.pyx"]
    return text.split("generated source hash: ", 1)[1].split()[0]


def write_sources(out_dir=HERE):
    """Write _epochs.pyx into out_dir; return [(module_name, pyx_path)]."""
    os.makedirs(out_dir, exist_ok=True)
    for fname, text in generate().items():
        _write_if_changed(os.path.join(out_dir, fname), text)
    return [(MODULE, os.path.join(out_dir, f"{MODULE}.pyx"))]


if __name__ == "__main__":
    for mod, path in write_sources(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
