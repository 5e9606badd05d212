"""The Numba lane form of a loss rule: the same statements for a block of
rows at once (kernels/rule_lanes.py describes the form and its calling
convention; docs/rules.md the language)."""

import ast

from .frontend import Rule, RuleError, check, function_of, is_index, sign_expansion
from .tables import BINOPS, CMPOPS, NUMBA_LANES, NUMBA_SCALAR_LANES


class NotLaneable(RuleError):
    """The rule is in the language, but the lane form does not translate
    this construct (the kernels keep calling the row form)."""


_PARAMS = ("z", "y", "epsilon", "dz")
_OPS = {**BINOPS, **CMPOPS}
_OPS[ast.Pow] = "**"


def _op(op):
    try:
        return _OPS[type(op)]
    except KeyError:
        raise NotLaneable(f"operator {type(op).__name__}") from None


def _indent(lines):
    return ["    " + ln for ln in lines]


def _always_returns(body):
    """Every path through the statement list ``body`` ends in a return."""
    if not body:
        return False
    last = body[-1]
    if isinstance(last, ast.Return):
        return True
    if isinstance(last, ast.If):
        return _always_returns(last.body) and _always_returns(last.orelse)
    return False


def _returns_to_else(body):
    """``body`` with every "if c: <...; return>" that is followed by more
    statements turned into "if c: <...; return> else: <those statements>"
    (the same control flow), recursively; a new list, the nodes shared."""
    out = []
    for i, node in enumerate(body):
        if isinstance(node, ast.If):
            node = ast.If(test=node.test, body=_returns_to_else(node.body),
                          orelse=_returns_to_else(node.orelse))
            rest = body[i + 1:]
            if rest and _always_returns(node.body):
                node.orelse = _returns_to_else(node.orelse + rest)
                out.append(node)
                return out
            if rest and node.orelse and _always_returns(node.orelse):
                node.body = _returns_to_else(node.body + rest)
                out.append(node)
                return out
        elif isinstance(node, ast.For):
            node = ast.For(target=node.target, iter=node.iter,
                           body=_returns_to_else(node.body), orelse=node.orelse,
                           type_comment=None)
        out.append(node)
    return out


class LaneEmitter:
    """A row rule's lane form (kernels/rule_lanes.py), Python text for Numba."""
    n_params = 4
    functions = NUMBA_LANES

    def __init__(self, fn, returns=False):
        rule = Rule(fn)
        self.fn = rule.fdef
        self.rule_name = fn.__name__
        args = [a.arg for a in self.fn.args.args]
        if len(args) != self.n_params:
            raise NotLaneable(f"{fn.__name__}: a {'row' if self.n_params == 4 else 'scalar'} "
                              f"rule takes ({', '.join(_PARAMS[:self.n_params])})")
        check(rule, "row" if self.n_params == 4 else "scalar")
        self.returns = returns
        if returns:
            self.fn.body = _returns_to_else(self.fn.body)
        self.roles = dict(zip(args, _PARAMS))
        self.loop_vars = set()
        self.real = {}
        self.ints = {}
        for node in ast.walk(self.fn):
            if isinstance(node, ast.For):
                if not isinstance(node.target, ast.Name):
                    raise NotLaneable("for over something other than one name")
                self.loop_vars.add(node.target.id)
        for node in ast.walk(self.fn):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign):
                targets = [node.target]
            else:
                continue
            for t in targets:
                if isinstance(t, ast.Name) and t.id not in self.loop_vars:
                    if t.id in self.roles:
                        raise NotLaneable(f"assignment to the parameter {t.id!r}")
                    table = self.ints if is_index(t.id) else self.real
                    table.setdefault(t.id, len(table))

    # ------------------------------------------------------------ expressions
    def _row_length(self, node):
        """``z.shape[0]`` (or dz's): the row length, the same for every row."""
        return (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "shape" and isinstance(node.value.value, ast.Name)
                and self.roles.get(node.value.value.id) in ("z", "dz")
                and isinstance(node.slice, ast.Constant) and node.slice.value == 0)

    def lane_dependent(self, node):
        if self._row_length(node):
            return False
        if isinstance(node, ast.Name):
            return (node.id in self.real or node.id in self.ints
                    or self.roles.get(node.id) in ("z", "y", "dz"))
        return any(self.lane_dependent(c) for c in ast.iter_child_nodes(node))

    def expr(self, node):
        if self._row_length(node):
            return "k"
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise NotLaneable(f"constant {node.value!r}")
            return repr(node.value)
        if isinstance(node, ast.Name):
            role = self.roles.get(node.id)
            if role == "y":
                return "Y[r]"
            if role == "epsilon":
                return "epsilon"
            if role in ("z", "dz"):
                raise NotLaneable(f"{node.id} used as a whole row")
            if node.id in self.loop_vars:
                return node.id
            if node.id in self.real:
                return f"S[{self.real[node.id]}, r]"
            if node.id in self.ints:
                return f"SI[{self.ints[node.id]}, r]"
            raise NotLaneable(f"unknown name {node.id!r}")
        if isinstance(node, ast.Subscript):
            base = node.value
            if isinstance(base, ast.Name) and self.roles.get(base.id) in ("z", "dz"):
                arr = "ZT" if self.roles[base.id] == "z" else "DT"
                return f"{arr}[{self.expr(node.slice)}, r]"
            raise NotLaneable("subscript of something other than z or dz")
        if isinstance(node, ast.BinOp):
            return f"({self.expr(node.left)} {_op(node.op)} {self.expr(node.right)})"
        if isinstance(node, ast.UnaryOp):
            ops = {ast.USub: "-", ast.UAdd: "+", ast.Not: "not "}
            if type(node.op) not in ops:
                raise NotLaneable("unary operator")
            return f"({ops[type(node.op)]}{self.expr(node.operand)})"
        if isinstance(node, ast.Compare):
            parts = [self.expr(node.left)]
            for op, right in zip(node.ops, node.comparators):
                parts += [_op(op), self.expr(right)]
            return "(" + " ".join(parts) + ")"
        if isinstance(node, ast.BoolOp):
            word = " and " if isinstance(node.op, ast.And) else " or "
            return "(" + word.join(self.expr(v) for v in node.values) + ")"
        if isinstance(node, ast.IfExp):
            return (f"({self.expr(node.body)} if {self.expr(node.test)} "
                    f"else {self.expr(node.orelse)})")
        if isinstance(node, ast.Call):
            if node.keywords:
                raise NotLaneable("keyword arguments")
            name = function_of(node)
            if name == "sign":
                return self.expr(sign_expansion(node.args[0]))
            if name not in self.functions:
                raise NotLaneable(f"the call {ast.unparse(node)!r}")
            args = ", ".join(self.expr(a) for a in node.args)
            return f"{self.functions[name]}({args})"
        raise NotLaneable(f"expression {type(node).__name__}")

    # ------------------------------------------------------------- statements
    def target(self, node):
        if isinstance(node, ast.Name) and node.id not in self.loop_vars:
            return self.expr(node)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
                self.roles.get(node.value.id) == "dz":
            return self.expr(node)
        raise NotLaneable("assignment to something other than a local or dz[...]")

    def assignment(self, target, value):
        t = self.target(target)
        v = self.expr(value)
        if t.startswith("S[") or t.startswith("DT["):
            # stored in the data's dtype, as the rules' convention types it
            v = f"dt({v})"
        return [f"{t} = {v}"]

    def lane_stmt(self, node):
        """One statement for one lane (already inside ``for r``)."""
        if isinstance(node, ast.Assign):
            if len(node.targets) != 1:
                raise NotLaneable("chained assignment")
            return self.assignment(node.targets[0], node.value)
        if isinstance(node, ast.AugAssign):
            return self.assignment(node.target, ast.BinOp(node.target, node.op, node.value))
        if isinstance(node, ast.If):
            out = [f"if {self.expr(node.test)}:"]
            out += _indent(self.lane_block(node.body))
            if node.orelse:
                out.append("else:")
                out += _indent(self.lane_block(node.orelse))
            return out
        if isinstance(node, ast.Pass):
            return ["pass"]
        if isinstance(node, ast.Return) and node.value is not None and self.returns:
            # the end of this lane's path (_returns_to_else put every return
            # last in its branch; block() checks it)
            return self.lane_return(node.value)
        raise NotLaneable(f"{type(node).__name__} inside a row-dependent branch")

    def lane_return(self, value):
        return [f"LOSS[r] = {self.expr(value)}"]

    def lane_block(self, stmts):
        for node in stmts[:-1]:
            if isinstance(node, ast.Return):
                raise NotLaneable("a return before the end of its branch")
        return sum((self.lane_stmt(s) for s in stmts), [])

    def stmt(self, node, last):
        if isinstance(node, ast.For):
            it = node.iter
            if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name)
                    and it.func.id == "range" and not node.orelse):
                raise NotLaneable("for over something other than range")
            if any(self.lane_dependent(a) for a in it.args):
                raise NotLaneable("a loop whose bounds depend on the row")
            bounds = ", ".join(self.expr(a) for a in it.args)
            body = sum((self.stmt(s, False) for s in node.body), [])
            return [f"for {node.target.id} in range({bounds}):"] + _indent(body or ["pass"])
        if isinstance(node, ast.If) and not self.lane_dependent(node.test):
            out = [f"if {self.expr(node.test)}:"]
            out += _indent(sum((self.stmt(s, False) for s in node.body), []) or ["pass"])
            if node.orelse:
                out.append("else:")
                out += _indent(sum((self.stmt(s, False) for s in node.orelse), []) or ["pass"])
            return out
        if isinstance(node, ast.Return):
            if not last or node.value is None:
                raise NotLaneable("a return before the end of the rule")
            return ["for r in range(n):", f"    LOSS[r] = {self.expr(node.value)}"]
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return []                                   # a docstring
        return ["for r in range(n):"] + _indent(self.lane_stmt(node))

    def source(self, name):
        body = self.fn.body
        if not _always_returns(body):
            raise NotLaneable("the rule must end with its return")
        if isinstance(body[-1], ast.If) and not self.lane_dependent(body[-1].test):
            raise NotLaneable("a return under a condition that does not depend on the row")
        lines = ["k = ZT.shape[0]", "dt = ZT.dtype.type"]
        for i, node in enumerate(body):
            lines += self.stmt(node, i == len(body) - 1)
        head = f"def {name}(ZT, Y, epsilon, DT, LOSS, n, S, SI):"
        doc = (f'    """The lane form of {self.rule_name}: rows 0..n-1 of a block '
               '(kernels/rule_lanes.py)."""')
        return "\n".join([head, doc] + _indent(lines)) + "\n"


class ScalarLaneEmitter(LaneEmitter):
    """A scalar rule (z, y, epsilon) -> (loss, derivative) on output j of
    every lane: z is ZT[j, r], y is Y[j, r]; the whole rule runs inside one
    loop over the lanes (it has no loops of its own)."""
    n_params = 3
    functions = NUMBA_SCALAR_LANES

    def __init__(self, fn):
        super().__init__(fn, returns=True)

    def _scalar_expr(self, node):
        if isinstance(node, ast.Name) and self.roles.get(node.id) in ("z", "y"):
            return "ZT[j, r]" if self.roles[node.id] == "z" else "Y[j, r]"
        if isinstance(node, ast.Name) and node.id == "j":
            raise NotLaneable("a local named j")
        return super().expr(node)

    def expr(self, node):  # noqa: F811
        return self._scalar_expr(node)

    def lane_return(self, value):
        if not (isinstance(value, ast.Tuple) and len(value.elts) == 2):
            raise NotLaneable("a scalar rule returns (loss, derivative)")
        return [f"LOSS[r] += {self.expr(value.elts[0])}",
                f"DT[j, r] = dt({self.expr(value.elts[1])})"]

    def source(self, name):
        body = self.fn.body
        if not _always_returns(body):
            raise NotLaneable("the rule must end with its return")
        if self.loop_vars:
            raise NotLaneable("a loop in a scalar rule")
        stmts = [s for s in body
                 if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        lines = ["k = ZT.shape[0]", "dt = ZT.dtype.type",
                 "for r in range(n):", "    LOSS[r] = 0.0",
                 "for j in range(k):", "    for r in range(n):"]
        lines += _indent(_indent(self.lane_block(stmts)))
        head = f"def {name}(ZT, Y, epsilon, DT, LOSS, n, S, SI):"
        doc = (f'    """The lane form of the scalar rule {self.rule_name}: outputs 0..k-1 of '
               'rows 0..n-1 of a block (kernels/rule_lanes.py)."""')
        return "\n".join([head, doc] + _indent(lines)) + "\n"
