"""Cython emitters: an optimizer's update rule as a ``cdef inline`` function
per C type (UpdateEmitter, for kernels/cython/generate.py), and a loss rule
over the fused type ``floating`` (loss_to_cython, for generate_losses.py).
The language: docs/rules.md."""

import ast
import textwrap

from .frontend import Rule, RuleError, check, function_of, is_index, sign_expansion
from .tables import BINOPS, CMPOPS, CYTHON_LOSS, CYTHON_SYNTAX, CYTHON_UPDATE

# Cython keywords and names the generated code itself uses: a rule variable
# with one of these names gets a trailing underscore.
RESERVED = frozenset("""
    cdef cpdef ctypedef cimport include inline nogil gil noexcept extern public api
    readonly struct union enum fused const volatile signed unsigned short long int
    char float double bint object sizeof NULL new namespace cppclass except DEF IF
    ELIF ELSE by sqrt sqrtf fabs fabsf pow powf log cos real_t uint64_t int64_t
    max_f32 max_f64 min_f32 min_f64 normal mix64
""".split())


class CythonSyntax:
    """What every Cython emitter spells the same way, fully parenthesised (so
    the evaluation order is the rule's, operation for operation, as in
    Numba): operators, comparisons, conditionals, assignments, ``if``.  A
    subclass says how names, constants, powers, calls and returns become
    text (``name_text``, ``target_text``, ``const_text``, ``power``, ``call``,
    ``ret``; ``leaf`` for what only it reads).  What Cython and plain C
    spell differently is the table ``SYNTAX`` (tables.py), which the C
    subclass replaces (c.CHostEmitter)."""

    SYNTAX = CYTHON_SYNTAX

    def cast(self, ctype, text):
        return self.SYNTAX["cast"].format(ctype=ctype, text=text)

    def err(self, node, what):
        return self.rule.error(node, what)

    def leaf(self, node):
        raise self.err(node, f"the expression {type(node).__name__}")

    def binop(self, node):
        return f"({self.expr(node.left)} {BINOPS[type(node.op)]} {self.expr(node.right)})"

    def expr(self, node):
        e = self.expr
        if isinstance(node, ast.Name):
            return self.name_text(node)
        if isinstance(node, ast.Constant):
            return self.const_text(node.value)
        if isinstance(node, ast.BinOp):
            return self.power(node) if isinstance(node.op, ast.Pow) else self.binop(node)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return f"(-{e(node.operand)})"
            if isinstance(node.op, ast.UAdd):
                return e(node.operand)
            return self.SYNTAX["not"].format(e(node.operand))
        if isinstance(node, ast.BoolOp):
            op = self.SYNTAX["and" if isinstance(node.op, ast.And) else "or"]
            return "(" + op.join(e(v) for v in node.values) + ")"
        if isinstance(node, ast.Compare):
            parts = []
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                parts.append(f"({e(left)} {CMPOPS[type(op)]} {e(right)})")
                left = right
            return parts[0] if len(parts) == 1 else "(" + self.SYNTAX["and"].join(parts) + ")"
        if isinstance(node, ast.IfExp):
            return self.SYNTAX["ifexp"].format(body=e(node.body), test=e(node.test),
                                               orelse=e(node.orelse))
        if isinstance(node, ast.Call):
            return self.call(node)
        return self.leaf(node)

    def call(self, node):
        """A call of the language's functions: ``sign`` as its conditional
        expression, ``min``/``max`` as a chain of the target's two-argument
        form (Python's rule: the first of equal values), the others as the
        target's ``function`` says."""
        name = function_of(node)
        if name == "sign":
            return self.expr(sign_expansion(node.args[0]))
        args = [self.expr(a) for a in node.args]
        if name in ("min", "max"):
            out = args[0]
            for a in args[1:]:
                out = self.minmax(name, out, a)
            return out
        return self.function(node, name, args)

    def stmts(self, body, indent):
        out = []
        for st in body:
            out.extend(self.stmt(st, indent))
        return out or [" " * indent + self.SYNTAX["pass"]]

    def tuple_assignment(self, targets, values, pad):
        lhs = ", ".join(self.target_text(x.id) for x in targets)
        rhs = ", ".join(self.expr(v) for v in values)
        return [f"{pad}{lhs} = {rhs}"]

    def stmt(self, st, indent):
        pad = " " * indent
        syntax, end = self.SYNTAX, self.SYNTAX["end"]
        if isinstance(st, ast.Assign):
            t = st.targets[0]
            if isinstance(t, ast.Name):
                return [f"{pad}{self.target_text(t.id)} = {self.expr(st.value)}{end}"]
            if isinstance(t, ast.Tuple):
                return self.tuple_assignment(t.elts, st.value.elts, pad)
            raise self.err(st, "this assignment target")
        if isinstance(st, ast.AugAssign):
            if not isinstance(st.target, ast.Name):
                raise self.err(st, "this augmented assignment")
            n = self.target_text(st.target.id)
            return [f"{pad}{n} = ({n} {BINOPS[type(st.op)]} {self.expr(st.value)}){end}"]
        if isinstance(st, ast.If):
            out = [pad + syntax["if"].format(self.expr(st.test))]
            out += self.stmts(st.body, indent + 4)
            if st.orelse:
                out.append(pad + syntax["else"])
                out += self.stmts(st.orelse, indent + 4)
            return out + ([pad + syntax["endif"]] if syntax["endif"] else [])
        if isinstance(st, ast.Return):
            return [pad + x for x in self.ret(st)]
        if isinstance(st, ast.Pass):
            return [pad + syntax["pass"]]
        return []  # a docstring (check() let nothing else through)


class UpdateEmitter(CythonSyntax):
    """One update rule as Cython text for one C type (kernels/cython/generate.py)."""

    def __init__(self, fn, spec, ctype, suffix, libm):
        self.fn = fn
        self.spec = spec
        self.ctype = ctype
        self.suffix = suffix
        self.libm = dict(CYTHON_UPDATE[ctype], **libm)
        rule = Rule(fn, spec.name)
        self.rule = rule
        self.fdef = rule.fdef
        self.where = rule.where
        self.params = rule.params
        expected = 2 + len(spec.states) + len(spec.kernel_hyper) + 1
        if len(self.params) != expected:
            raise RuleError(
                f"{self.where}: takes {len(self.params)} parameters, expected "
                f"{expected} (p, g, {len(spec.states)} states, "
                f"{len(spec.kernel_hyper)} kernel hyperparameters, z)")
        check(rule, "update")
        self.z = self.params[-1]
        self.locals = rule.locals
        self.uses_z = any(isinstance(n, ast.Name) and n.id == self.z
                          and isinstance(n.ctx, ast.Load) for n in ast.walk(self.fdef))

    @staticmethod
    def name(n):
        return n + "_" if n in RESERVED else n

    def name_text(self, node):
        return self.name(node.id)

    target_text = name

    def const(self, value):
        f = repr(float(value))
        return f if self.ctype == "double" else f"(<float>{f})"

    const_text = const

    def power(self, node):  # a real power (FTRL's n ** -lr_power)
        return f"{self.libm['pow']}({self.expr(node.left)}, {self.expr(node.right)})"

    def minmax(self, name, a, b):
        return f"{name}_{self.suffix}({a}, {b})"

    def function(self, node, name, args):
        if name in self.libm:
            return f"{self.libm[name]}({args[0]})"
        raise self.err(node, f"the call {ast.unparse(node)!r}")

    def ret(self, st):
        nout = 1 + len(self.spec.states)
        v = st.value
        elts = v.elts if isinstance(v, ast.Tuple) else [v]
        if len(elts) != nout:
            raise self.err(st, f"a return of other than {nout} values (p and the states)")
        return ["return " + ", ".join(self.expr(x) for x in elts)]

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


class LossToCython(ast.NodeTransformer):
    """A loss rule's statements in Cython spelling (then ast.unparse): the
    functions by CYTHON_LOSS, ``z.shape[0]`` as ``k``, and a scalar rule's
    ``return loss, d`` as ``dout[0] = d; return loss``."""

    def __init__(self, kind):
        self.kind = kind

    def visit_Call(self, node):
        name = function_of(node)
        if name == "sign":
            return self.visit(sign_expansion(node.args[0]))
        self.generic_visit(node)
        if name is not None:
            node.func = ast.Name(CYTHON_LOSS[name], ast.Load())
        return node

    def visit_Subscript(self, node):
        self.generic_visit(node)
        v = node.value
        if isinstance(v, ast.Attribute) and v.attr == "shape":
            return ast.Name("k", ast.Load())
        return node

    def visit_Return(self, node):
        self.generic_visit(node)
        if self.kind == "scalar" and isinstance(node.value, ast.Tuple):
            loss, deriv = node.value.elts
            store = ast.Assign(
                targets=[ast.Subscript(ast.Name("dout", ast.Load()), ast.Constant(0),
                                       ast.Store())],
                value=deriv, lineno=0)
            return [store, ast.Return(loss)]
        return node


def loss_to_cython(spec):
    """The loss rule ``spec.rule`` as a ``cdef inline`` function over
    ``floating`` (``j*`` locals Py_ssize_t, the others floating)."""
    rule = Rule(spec.rule, spec.name)
    check(rule, spec.kind)
    fn = rule.fdef
    args = rule.params
    if spec.kind == "scalar" and len(args) != 3 or spec.kind == "row" and len(args) != 4:
        raise RuleError(f"{rule.where}: a {spec.kind} rule takes "
                        + ("(z, y, epsilon)" if spec.kind == "scalar" else "(z, y, epsilon, dz)"))
    local_names = sorted(set(rule.locals))
    body = [LossToCython(spec.kind).visit(stmt) for stmt in fn.body]
    flat = []
    for stmt in body:
        flat.extend(stmt if isinstance(stmt, list) else [stmt])
    fn.body = flat
    ast.fix_missing_locations(fn)
    body_src = "\n".join(ast.unparse(s) for s in fn.body)
    z, y, eps = args[:3]
    if spec.kind == "scalar":
        header = (f"cdef inline floating {fn.name}(floating {z}, floating {y}, "
                  f"floating {eps}, floating* dout) noexcept nogil:")
    else:
        dz = args[3]
        header = (f"cdef inline floating {fn.name}(const floating* {z}, Py_ssize_t {y}, "
                  f"floating {eps}, floating* {dz}, Py_ssize_t k) noexcept nogil:")
    decls = []
    ints = [n for n in local_names if is_index(n)]
    reals = [n for n in local_names if not is_index(n)]
    if ints:
        decls.append("cdef Py_ssize_t " + ", ".join(ints))
    if reals:
        decls.append("cdef floating " + ", ".join(reals))
    lines = [header] + ["    " + line for line in decls]
    lines += textwrap.indent(body_src, "    ").splitlines()
    return "\n".join(lines) + "\n"
