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

The code of both files is in the Tempita templates ``templates/_updates.pxd.tp``
and ``templates/_updates.pyx.tp``; this file translates the rules and computes
the values of the templates' holes (``_templates.render``).

This file must import neither numba nor optkern: the build environment only
has Cython, NumPy and setuptools.  It loads ``rules.py`` by file path.
"""

import ast
import importlib.util
import inspect
import keyword
import os
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
RULES_PATH = os.path.normpath(os.path.join(HERE, os.pardir, "rules.py"))


def _load_files_helper():
    spec = importlib.util.spec_from_file_location(
        "_optkern_files", os.path.join(HERE, os.pardir, "_files.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_write_if_changed = _load_files_helper().write_if_changed
MODULE = "_updates"

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
    spec = importlib.util.spec_from_file_location("_optkern_rules_for_cython", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
# Per-rule values for the templates' holes (templates/_updates.pxd.tp and
# templates/_updates.pyx.tp hold the code)
# --------------------------------------------------------------------------

class _Loop:
    """One C type's elementwise loop of a rule (or an alias of another rule's)."""

    def __init__(self, signature, sfx, ctype, alias):
        self.signature, self.sfx, self.ctype, self.alias = signature, sfx, ctype, alias


class _Case:
    """One combination of present optional states, averaging and noise: the
    loop gets one branch-free body per combination."""

    def __init__(self, index, present, avg, noise):
        self.index, self.present, self.avg, self.noise = index, present, avg, noise


class _Rule:
    def __init__(self, rules, spec):
        self.spec = spec
        self.name = spec.name
        self.rule_fn = spec.rule.__name__
        self.states = list(rules.state_names(spec))
        self.states_doc = ", ".join(spec.states) or "(none)"
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
        # Each combination of (present optional states, averaging, noise) gets
        # its own loop, so that the loops carry no per-element branches; bit b
        # of the case number is flag b.
        flags = [(f"{self.states[j]} != NULL", ("state", j)) for j in self.optional]
        flags.append(("avg != NULL", ("avg", None)))
        if self.uses_z:
            flags.append(("has_key", ("noise", None)))
        self.case_flags = [cond for cond, _ in flags]
        self.cases = []
        for case in range(1 << len(flags)):
            present = [True] * len(self.states)
            has_avg = noise = False
            for bit, (_, (kind, j)) in enumerate(flags):
                on = bool(case >> bit & 1)
                if kind == "state":
                    present[j] = on
                elif kind == "avg":
                    has_avg = on
                else:
                    noise = on
            self.cases.append(_Case(case, present, has_avg, noise))
        self.loops = [_Loop(self.loop_signature(sfx, ct), sfx, ct, None)
                      for sfx, ct, _, _ in CTYPES]

    def loop_signature(self, suffix, ctype):
        out_t, in_t = f"{suffix}_out", f"{suffix}_in"
        states = "".join(f"{out_t} {s}, " for s in self.states)
        return (f"void {self.name}_loop_{suffix}({out_t} p, {in_t} g, {states}"
                f"{out_t} avg, Py_ssize_t n, const double* hyper, double avg_weight, "
                f"bint has_key, uint64_t key, int64_t offset, bint parallel) noexcept nogil")


def _mark_aliases(specs):
    """A rule registered under a second name with the same function, states
    and kernel hyperparameters (SGLD = SGD's rule) reuses the first's loops."""
    compiled = {}
    for r in specs:
        same = compiled.setdefault((r.spec.rule, tuple(r.spec.states), tuple(r.hyper)), r)
        if same is not r:
            for lp in r.loops:
                lp.alias = same.name
    return specs


# --------------------------------------------------------------------------

_templates = _load_files_helper().load_by_path("_optkern_cython_templates",
                                               os.path.join(HERE, "_templates.py"))
TEMPLATES = (f"{MODULE}.pxd.tp", f"{MODULE}.pyx.tp")


def _render(rules, specs, digest):
    holes = dict(rules=specs, rule_names=tuple(r.name for r in specs), digest=digest,
                 ctypes=[(sfx, ct) for sfx, ct, _, _ in CTYPES],
                 typenums={sfx: tn for sfx, _, tn, _ in CTYPES})
    return {tp[:-3]: _templates.render(tp, **holes) for tp in TEMPLATES}


def _generate(rules_path):
    rules = load_rules(rules_path)
    specs = _mark_aliases([_Rule(rules, spec) for spec in rules.RULES.values()])
    # SOURCE_HASH, compiled into the module, covers every source of its text
    # (templates, this generator, the renderer, the rules) and the text itself,
    # so a build older than any of them is detectable.
    sources = [__file__, _templates.__file__, rules_path,
               *(_templates.template_path(tp) for tp in TEMPLATES)]
    digest = _templates.source_digest(sources, _render(rules, specs, "").values())
    return _render(rules, specs, digest), digest


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
