"""C emitters: a host function (``prepare``, ``schedule_factor``) as Cython
C code (HostEmitter), and the Numba lane form's Python text as a C function
(LaneToC), for kernels/cython/generate_epochs.py: both translate expressions
through rulelang.cython.CythonSyntax with C's spellings (tables.C_SYNTAX,
C_FUNCTIONS), so C has one expression translator.  The language:
docs/rules.md."""

import ast

from .frontend import Rule, RuleError, check
from .cython import CythonSyntax
from .tables import (BINOPS, C_FUNCTIONS, C_HOST, C_LANES, C_SYNTAX, LANE_ARRAYS1,
                     LANE_ARRAYS2, LANE_NAMES, MATH_CONSTANTS, NUMBA_LANES)


class HostEmitter(CythonSyntax):
    """One host function (a rule's ``prepare``, ``schedule_factor``) as Cython
    C code; names become ``v_<name>``.  Every value is a C double except the
    integer ones (``int_first``: the first parameter, the step; integer
    constants and globals, sums and products of integers, math.floor): those
    stay int64_t, so that ``x ** n`` with an integer ``n`` is Numba's binary
    exponentiation (_ipow) and ``x ** y`` otherwise is pow(), as in the Numba
    epoch.  Fully parenthesised: the evaluation order is the Python text's."""

    def __init__(self, fn, int_first, globals_):
        self.fn = fn
        self.globals = {k: v for k, v in globals_.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.rule = check(Rule(fn), "host", self.globals)
        self.fdef = self.rule.fdef
        self.where = self.rule.where
        self.params = self.rule.params
        self.ints = set(self.params[:1] if int_first else ())
        self.locals = self.rule.locals
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

    def name_text(self, node):
        if node.id in self.params or node.id in self.locals:
            return self.var(node.id)
        return repr(self.globals[node.id])

    target_text = var

    def const_text(self, v):
        if isinstance(v, bool):
            return "1" if v else "0"
        return f"{v}" if isinstance(v, int) else repr(v)

    def leaf(self, node):
        if isinstance(node, ast.Attribute):  # math.pi, math.e
            return MATH_CONSTANTS[node.attr]
        if isinstance(node, ast.Subscript):  # a parameter at a constant index
            return f"{self.var(node.value.id)}[{node.slice.value}]"
        return super().leaf(node)

    def power(self, node):
        if self.is_int(node.right):
            return (f"_ipow({self.cast('double', self.expr(node.left))}, "
                    f"{self.cast('int64_t', self.expr(node.right))})")
        return (f"pow({self.cast('double', self.expr(node.left))}, "
                f"{self.cast('double', self.expr(node.right))})")

    def binop(self, node):
        left = self.expr(node.left)
        if isinstance(node.op, ast.Div) and self.is_int(node.left) and self.is_int(node.right):
            left = self.cast("double", left)  # true division
        return f"({left} {BINOPS[type(node.op)]} {self.expr(node.right)})"

    def minmax(self, name, a, b):
        return f"{C_HOST[name]}({self.cast('double', a)}, {self.cast('double', b)})"

    def function(self, node, name, args):
        if name in ("floor", "ceil"):  # Numba: math.floor(float) -> int64
            return f"({self.cast('int64_t', C_HOST[name] + '(' + self.cast('double', args[0]) + ')')})"
        if name == "float":
            return f"({self.cast('double', args[0])})"
        if name in C_HOST:
            return f"{C_HOST[name]}({self.cast('double', args[0])})"
        raise self.err(node, f"the call {ast.unparse(node)!r}")

    def stmts(self, body, indent, ret=None):
        """``ret(self, return_node)``: the lines a ``return`` becomes."""
        if ret is not None:
            self._ret = ret
        return super().stmts(body, indent)

    def ret(self, st):
        return self._ret(self, st)

    def local_decls(self):
        ints = [self.var(n) for n in self.locals if n in self.ints]
        reals = [self.var(n) for n in self.locals if n not in self.ints]
        out = []
        decl, end = self.SYNTAX["decl"], self.SYNTAX["end"]
        if ints:
            out.append(f"    {decl}int64_t " + ", ".join(ints) + end)
        if reals:
            out.append(f"    {decl}double " + ", ".join(reals) + end)
        return out


class CHostEmitter(HostEmitter):
    """A host function as plain C (the dense epoch's C block,
    templates/_epochs_dense.c.tp): HostEmitter with C's spellings.  The C
    block defines none of the epoch module's helpers (``_ipow``, ``_pymin``,
    ``_pymax``): a function that needs one does not compile there."""

    SYNTAX = C_SYNTAX

    def tuple_assignment(self, targets, values, pad):
        # every value before any assignment, as Python's
        tmp = [f"okx_t{i}" for i in range(len(targets))]
        out = [f"{pad}{{"]
        out += [f"{pad}    const {'int64_t' if self.is_int(v) else 'double'} {n} = "
                f"{self.expr(v)};" for n, v in zip(tmp, values)]
        out += [f"{pad}    {self.target_text(x.id)} = {n};" for x, n in zip(targets, tmp)]
        return out + [f"{pad}}}"]


# the lane form's Python spelling of a call (NUMBA_LANES' values: "exp_fast",
# "math.sqrt") -> the language's function ("exp", "sqrt")
_LANE_FUNCTIONS = {v: k for k, v in NUMBA_LANES.items() if v is not None}


class LaneToC(CythonSyntax):
    """The lane form of a row rule (kernels/rule_lanes.py's Python text, the
    one the Numba epoch compiles) as a C function for one C type.  Inside the
    loop over the lanes an ``if`` becomes selects (each assignment keeps its
    old value where the condition is false, the condition evaluated once),
    so that every lane loop vectorises.

    Expressions go through the host emitters' CythonSyntax with C's
    spellings (C_SYNTAX: operators, comparisons, conditionals, the libm
    functions of C_FUNCTIONS); what only the lane form has (its arrays,
    ``dt()``, ``exp_fast``/``log_fast``, min/max as selects) is the table
    C_LANES.  Fully parenthesised: the evaluation order is the Python text's."""

    SYNTAX = C_SYNTAX

    def __init__(self, ct, sfx, lvl):
        self.ct, self.sfx, self.lvl = ct, sfx, lvl
        self.n_cond = 0

    def err(self, node, what):
        return RuleError(f"lane form: {what}")

    def name_text(self, node):
        if node.id in LANE_NAMES or node.id.startswith("j"):
            return node.id
        raise self.err(node, f"the name {node.id!r}")

    def const_text(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(None, repr(v))
        return repr(v) if isinstance(v, float) else f"{v}"

    def leaf(self, node):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            arr = node.value.id
            if arr in LANE_ARRAYS2 and isinstance(node.slice, ast.Tuple) \
                    and len(node.slice.elts) == 2:
                i, r = node.slice.elts
                return C_LANES["array2"].format(arr=arr, i=self.expr(i), r=self.expr(r))
            if arr in LANE_ARRAYS1:
                return C_LANES["array1"].format(arr=arr, i=self.expr(node.slice))
            raise self.err(node, f"the subscript of {arr!r}")
        raise self.err(node, repr(ast.unparse(node)))

    def binop(self, node):
        if type(node.op) not in BINOPS:
            raise self.err(node, repr(ast.unparse(node)))
        return super().binop(node)

    def power(self, node):
        return f"pow({self.expr(node.left)}, {self.expr(node.right)})"

    def call(self, node):
        """A call of the lane form's Python text: ``dt()``, or one of the
        language's functions as NUMBA_LANES spells it (read back to its name,
        then CythonSyntax.call: min/max through ``minmax``, the others
        through ``function``)."""
        if node.keywords:
            raise self.err(node, repr(ast.unparse(node)))
        f = ast.unparse(node.func)
        if f == "dt" and len(node.args) == 1:
            return C_LANES["dt"].format(ct=self.ct, x=self.expr(node.args[0]))
        name = _LANE_FUNCTIONS.get(f)
        if name in ("min", "max") and len(node.args) >= 2:
            return super().call(ast.Call(ast.Name(name, ast.Load()), node.args, []))
        if name is not None and name not in ("min", "max") and len(node.args) == 1:
            return self.function(node, name, [self.expr(node.args[0])])
        raise self.err(node, repr(ast.unparse(node)))

    def minmax(self, name, a, b):
        return C_LANES[name].format(a=a, b=b)

    def function(self, node, name, args):
        if name in C_LANES:
            return C_LANES[name].format(ct=self.ct, sfx=self.sfx, lvl=self.lvl, x=args[0])
        if name in C_FUNCTIONS:
            return f"{C_FUNCTIONS[name]}({args[0]})"
        raise self.err(node, repr(ast.unparse(node)))

    def lane(self, stmts, cond, pad):
        """Statements for one lane under the condition ``cond`` (C text or None)."""
        out = []
        for st in stmts:
            if isinstance(st, ast.Assign) and len(st.targets) == 1:
                t, v = self.expr(st.targets[0]), self.expr(st.value)
                out.append(f"{pad}{t} = {v};" if cond is None else
                           pad + C_LANES["select"].format(target=t, cond=cond, value=v))
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
                raise RuleError(f"lane form: the statement {ast.unparse(st)!r}")
        return out

    def stmts(self, stmts, pad):
        out = []
        for st in stmts:
            if isinstance(st, ast.For) and isinstance(st.target, ast.Name) \
                    and isinstance(st.iter, ast.Call) and st.iter.func.id == "range":
                a = [self.expr(x) for x in st.iter.args]
                lo, hi = ("0", a[0]) if len(a) == 1 else (a[0], a[1])
                if len(a) > 2:
                    raise RuleError("lane form: range with a step")
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
                raise RuleError(f"lane form: the statement {ast.unparse(st)!r}")
        return out
