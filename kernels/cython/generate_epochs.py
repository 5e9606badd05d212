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

The code is in Tempita templates: ``templates/_epochs.pyx.tp`` (the module),
``_epochs_dense.c.tp`` (the dense pass in C), ``epoch_adapters.pyx.tp`` (the
row-loss and update adapters, shared with ``_sparse_epochs.pyx``),
``prepare_twin.pyx.tp`` and ``schedule_twin.pyx.tp`` (around the translated
bodies); this file translates the Python functions and computes the holes'
values.

Run by ``setup.py`` at build time (``write_sources``) and by hand with
``python kernels/cython/generate_epochs.py``.  Imports neither numba nor
optkern: it loads the rule modules by file path.
"""

import ast
import importlib.util
import inspect
import os
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.normpath(os.path.join(HERE, os.pardir))
MODULE = "_epochs"

CTYPES = (("f32", "float"), ("f64", "double"))
LAYOUTS = ("dense", "csr")

# room in the fixed-size C buffers of the epoch loop
MAX_HYPER = 32
MAX_USER = 32
MAX_SCALARS = 8
MAX_STATES = 8


def _load_by_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # namedtuple / inspect want it registered
    spec.loader.exec_module(mod)
    return mod


_files = _load_by_path("_optkern_files", os.path.join(KERNELS, "_files.py"))
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


def _render_prepare(spec, fname=None):
    """C twin of ``spec.prepare`` (named ``fname``, by default
    ``_prepare_<rule>``): fills hyper[] and scalars_out[]."""
    tr = _HostTranslator(spec.prepare, int_first=True,
                         globals_=vars(sys.modules[spec.prepare.__module__]))
    params = tr.params
    nuser = len(spec.user_hyper)
    if len(params) != 2 + nuser:
        raise TranslateError(f"{tr.where}: expected (step, scalars, {', '.join(spec.user_hyper)})")
    nsc = len(spec.scalar_states)
    nh = len(spec.kernel_hyper)
    scalars = params[1]

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

    return _templates.render(
        "prepare_twin.pyx.tp", fname=fname or f"_prepare_{spec.name}",
        fn_name=spec.prepare.__name__, params=params, var=tr.var,
        body=tr.local_decls() + tr.stmts(tr.fdef.body, 4, ret))


def _render_schedule(sched_mod):
    fn = sched_mod.schedule_factor
    tr = _HostTranslator(fn, int_first=False, globals_=vars(sched_mod))

    def ret(t, st):
        return [f"return <double>{t.expr(st.value)}"]

    text = _templates.render("schedule_twin.pyx.tp", params=tr.params, var=tr.var,
                             body=tr.local_decls() + tr.stmts(tr.fdef.body, 4, ret))
    return text, len(tr.params)


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

_SIZE = {"float": 4, "double": 8}


def _hsum_steps(ct, n_elems):
    """A tree sum of a vector of n_elems: halves added down to one element;
    per step (half width, its type, step number, the vector halved)."""
    steps, cur, width, step = [], "a", n_elems, 0
    while width > 1:
        half = width // 2
        steps.append((half, f"okx_h{half}_t{step}" if half > 1 else ct, step, cur))
        cur, width, step = f"s{step}", half, step + 1
    return steps


def _f32_literal(v):
    import struct
    f = struct.unpack("f", struct.pack("f", v))[0]
    return repr(f) + "f"


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


class _Lanes:
    """A row loss's lane form (kernels/rule_lanes.py's Python text, the one the
    Numba epoch compiles) translated to C per (C type, SIMD level)."""

    def __init__(self, spec, lane_py):
        self.name = spec.name
        self.slots = rule_lanes.lane_slots(spec.rule)
        fdef = ast.parse(lane_py).body[0]
        self.body = {(sfx, lvl): "\n".join(_LaneToC(ct, sfx, lvl).stmts(fdef.body, "    "))
                     for sfx, ct in CTYPES for lvl, _, _ in SIMD_LEVELS}


def _lanes(loss_specs):
    out = []
    for ls in loss_specs:
        if ls.kind != "row":
            continue
        try:
            lane_py = rule_lanes.lane_source(ls.rule, "_lanes")
        except rule_lanes.NotLaneable:
            continue
        out.append(_Lanes(ls, lane_py))
    return out


def _c_text(lanes):
    """The dense pass's C code (templates/_epochs_dense.c.tp), for the
    ``cdef extern from *`` block of _epochs.pyx."""
    import math
    text = _templates.render(
        "_epochs_dense.c.tp", simd_levels=SIMD_LEVELS, ctypes=CTYPES, size=_SIZE,
        inv=[1.0 / math.factorial(i) for i in range(14)], f32_literal=_f32_literal,
        hsum_steps={(ct, vbytes): _hsum_steps(ct, vbytes // _SIZE[ct])
                    for _, ct in CTYPES for _, _, vbytes in SIMD_LEVELS},
        lanes=lanes)
    if '"""' in text or "\\" in text:
        raise TranslateError("the C block may not hold triple quotes or backslashes")
    return text[:-1]   # the block's closing quotes follow on the next line


# --------------------------------------------------------------------------
# The module text: templates/_epochs.pyx.tp (with the row-loss and update
# adapters of templates/epoch_adapters.pyx.tp, shared with _sparse_epochs)
# --------------------------------------------------------------------------

DENSE_BUFFERS = ("WT", "dWT", "ZT", "DT", "S", "SI", "LS", "YB")  # freed on every exit


def check_buffers(rules):
    for spec in rules.RULES.values():
        ns = len(rules.state_names(spec))
        if ns > MAX_STATES or len(spec.kernel_hyper) > MAX_HYPER \
                or len(spec.user_hyper) > MAX_USER or len(spec.scalar_states) > MAX_SCALARS:
            raise TranslateError(f"rule {spec.name!r} exceeds the epoch's fixed buffers")


def adapter_holes(rules, losses, sched_mod):
    """The holes epoch_adapters.pyx.tp needs (and both epochs' tables)."""
    rule_specs = list(rules.RULES.values())
    loss_specs = list(losses.LOSS_RULES.values())
    schedule, n_sched = _render_schedule(sched_mod)
    if n_sched != 7:
        raise TranslateError("schedule_factor must take (kind, t, a, b, c, warmup, start)")
    return dict(
        rules=rule_specs, losses=loss_specs, state_names=rules.state_names,
        ctypes=CTYPES, typenums={"f32": "NPY_FLOAT32", "f64": "NPY_FLOAT64"},
        schedule=schedule.rstrip("\n"),
        prepares=[_render_prepare(spec).rstrip("\n") for spec in rule_specs],
        rule_names=tuple(s.name for s in rule_specs),
        loss_names=tuple(s.name for s in loss_specs),
        loss_cimports=", ".join(dict.fromkeys(ls.rule.__name__ for ls in loss_specs)),
        optional=tuple(tuple("?" in s for s in spec.states) for spec in rule_specs),
        scalar_init=tuple(tuple(v for _, v in spec.scalar_states) for spec in rule_specs),
        MAX_HYPER=MAX_HYPER, MAX_USER=MAX_USER, MAX_SCALARS=MAX_SCALARS,
        MAX_STATES=MAX_STATES)


def _render(rules, losses, sched_mod, digest):
    check_buffers(rules)
    holes = adapter_holes(rules, losses, sched_mod)
    lanes = _lanes(holes["losses"])
    return _templates.render(
        f"{MODULE}.pyx.tp", digest=digest, layouts=LAYOUTS, lanes=lanes,
        lane_slots={ln.name: ln.slots for ln in lanes}, c_text=textwrap.indent(_c_text(lanes), "    "),
        DENSE_ROWS=DENSE_ROWS, dense_buffers=DENSE_BUFFERS, **holes)


_templates = _files.load_by_path("_optkern_cython_templates", os.path.join(HERE, "_templates.py"))
TEMPLATES = (f"{MODULE}.pyx.tp", "_epochs_dense.c.tp", "epoch_adapters.pyx.tp",
             "host_minmax.pyx.tp", "prepare_twin.pyx.tp", "schedule_twin.pyx.tp")
RULE_FILES = ("rules.py", "loss_rules.py", "schedule_rules.py", "rule_lanes.py")


def sources_of(module_file, templates, rule_files):
    """Every file a generated epoch module is made from."""
    return ([module_file, __file__, _templates.__file__]
            + [_templates.template_path(t) for t in templates]
            + [os.path.join(KERNELS, f) for f in rule_files])


def _generate():
    rules = _load("_optkern_rules_for_epochs", "rules.py")
    losses = _load("_optkern_loss_rules_for_epochs", "loss_rules.py")
    sched = _load("_optkern_schedule_rules_for_epochs", "schedule_rules.py")
    # SOURCE_HASH covers every source of the text and the text itself
    digest = _templates.source_digest(sources_of(__file__, TEMPLATES, RULE_FILES),
                                      [_render(rules, losses, sched, "")])
    return {f"{MODULE}.pyx": _render(rules, losses, sched, digest)}, digest


def generate():
    """Return {"_epochs.pyx": text}."""
    return _generate()[0]


def source_hash():
    """The SOURCE_HASH a module built from the current sources would carry."""
    return _generate()[1]


def write_sources(out_dir=HERE):
    """Write _epochs.pyx into out_dir; return [(module_name, pyx_path)]."""
    os.makedirs(out_dir, exist_ok=True)
    for fname, text in generate().items():
        _write_if_changed(os.path.join(out_dir, fname), text)
    return [(MODULE, os.path.join(out_dir, f"{MODULE}.pyx"))]


if __name__ == "__main__":
    for mod, path in write_sources(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
