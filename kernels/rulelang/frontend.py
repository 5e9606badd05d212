"""The rule language's front end: parse a rule, check it is in the language,
know its names' types.  The language itself is described once, in this
package's docstring (kernels/rulelang/__init__.py) and docs/rules.md."""

import ast
import copy
import inspect
import textwrap
import types

from .errors import RuleError
from .prologue import PROLOGUE, prepare_items
from .tables import (BINOPS, CMPOPS, EPOCH_BLOCKS, EPOCH_FUNCTIONS, EPOCH_MATH, FUNCTIONS,
                     HOST_FUNCTIONS, MATH_CONSTANTS)


KINDS = ("update", "scalar", "row", "host", "epoch")


def function_of(call):
    """The language's name of the function ``call`` calls (``"exp"`` for
    ``math.exp``, ``"sign"`` for ``sign``/``np.sign``), or None."""
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        if f.value.id == "math":
            if f.attr == "fabs":
                return "abs"
            if f.attr in FUNCTIONS and f.attr not in ("abs", "min", "max", "sign"):
                return f.attr
            if f.attr in HOST_FUNCTIONS and f.attr != "float":
                return f.attr
        if f.value.id in ("np", "numpy") and f.attr == "sign":
            return "sign"
        return None
    if isinstance(f, ast.Name) and f.id in ("abs", "min", "max", "sign", "float"):
        return f.id
    return None


def sign_expansion(arg):
    """``sign(x)`` as the language's own conditional expression:
    ``1.0 if x > 0.0 else (-1.0 if x < 0.0 else x)`` -- so a zero keeps its
    sign and a NaN stays NaN, as NumPy's ``sign``; every target translates it
    with its ordinary rules (``x`` is pure, evaluating it again is harmless)."""
    def x():
        return copy.deepcopy(arg)
    zero, one = ast.Constant(0.0), ast.Constant(1.0)
    inner = ast.IfExp(test=ast.Compare(x(), [ast.Lt()], [zero]),
                      body=ast.UnaryOp(ast.USub(), one), orelse=x())
    out = ast.IfExp(test=ast.Compare(x(), [ast.Gt()], [zero]), body=one, orelse=inner)
    return ast.copy_location(out, arg)


def prologue_statements(items, p="p", g="g"):
    """The ``ast`` statements of the declared prologue ``items``, with ``p``
    and ``g`` the rule's parameter and gradient names."""
    out = ast.parse("\n".join(PROLOGUE[item].statements for item in items)).body
    for node in ast.walk(ast.Module(body=out, type_ignores=[])):
        if isinstance(node, ast.Name) and node.id in ("p", "g"):
            node.id = p if node.id == "p" else g
    return out


class Rule:
    """One parsed rule: its ``def`` node, parameters, locals and where it is.

    The ``def`` node holds the declared prologue (``PROLOGUE``) in front of
    the body the author wrote: ``prologue`` names it, or, for a function made
    by ``with_prologue``, the function carries it (``__rule_prologue__``, its
    author's function in ``__wrapped__``).  Every emitter reads this node, so
    none of them sees the rule without its prologue."""

    def __init__(self, fn, label=None, prologue=None, prepare_prologue=None):
        self.fn = fn
        self.name = fn.__name__
        self.label = label or fn.__name__
        if prologue is None:
            prologue = getattr(fn, "__rule_prologue__", ())
        self.prologue = tuple(prologue)
        if prepare_prologue is None:
            prepare_prologue = getattr(fn, "__prepare_prologue__", None)
        self.written = written_of(fn)
        tree = ast.parse(textwrap.dedent(inspect.getsource(self.written)))
        self.fdef = tree.body[0]
        try:
            src = inspect.getsourcefile(self.written)
        except TypeError:
            src = "?"
        who = (f"rule {self.label!r}" if self.label == self.name
               else f"rule {self.label!r} ({self.name}")
        self.where = f"{who}, {src})" if "(" in who else f"{who} ({src})"
        if len(tree.body) != 1 or not isinstance(self.fdef, ast.FunctionDef):
            raise RuleError(f"{self.where}: the rule must be a plain def")
        self.params = [a.arg for a in self.fdef.args.args]
        if self.prologue:
            if len(self.params) < 2:
                raise RuleError(f"{self.where}: a rule with a prologue takes (p, g, ...)")
            # the body as written must not apply the prologue a second time
            applied = {PROLOGUE[item].kernel: item for item in self.prologue}
            for node in ast.walk(self.fdef):
                if isinstance(node, ast.Name) and node.id in applied:
                    raise RuleError(
                        f"{self.where}, line {self.line(node)}: the rule reads "
                        f"{node.id!r}, which its declared prologue "
                        f"{applied[node.id]!r} applies; write only the core update")
            at = _docstring_end(self.fdef)
            self.fdef.body[at:at] = _located(
                prologue_statements(self.prologue, *self.params[:2]), self.fdef)
        if prepare_prologue is not None and prepare_items(prepare_prologue[0]):
            self._put_prepare_prologue(*prepare_prologue)
        stores = [n.id for n in ast.walk(self.fdef)
                  if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        self.locals = [n for n in dict.fromkeys(stores) if n not in self.params]

    def _put_prepare_prologue(self, items, kernel_hyper):
        """The prepare's part of the declared prologue ``items`` (``Item.prepare``)
        in front of its body, and the kernel hyperparameter each computes put in
        its place (``kernel_hyper``) in every ``return ((hyper...), scalars)``:
        the prepare as written returns the others, in order."""
        items = prepare_items(items)
        provided = {PROLOGUE[item].kernel: item for item in items}
        for node in ast.walk(self.fdef):
            if isinstance(node, ast.Name) and node.id in provided:
                raise RuleError(
                    f"{self.where}, line {self.line(node)}: the prepare uses "
                    f"{node.id!r}, which its declared prologue {provided[node.id]!r} "
                    "computes; return the other kernel hyperparameters only")
        missing = [k for k in provided if k not in kernel_hyper]
        if missing:
            raise RuleError(f"{self.where}: the prologue computes {missing}, which "
                            f"kernel_hyper {tuple(kernel_hyper)} lacks")
        places = sorted(list(kernel_hyper).index(k) for k in provided)
        want = len(kernel_hyper) - len(places)
        for node in ast.walk(self.fdef):
            if not isinstance(node, ast.Return):
                continue
            v = node.value
            if not (isinstance(v, ast.Tuple) and len(v.elts) == 2
                    and isinstance(v.elts[0], ast.Tuple) and len(v.elts[0].elts) == want):
                raise RuleError(
                    f"{self.where}, line {self.line(node)}: a prepare with the prologue "
                    f"{items} returns ((the {want} kernel hyperparameters but "
                    f"{', '.join(provided)}), scalars)")
            for at in places:
                name = ast.copy_location(ast.Name(kernel_hyper[at], ast.Load()), node)
                v.elts[0].elts.insert(at, name)
        at = _docstring_end(self.fdef)
        self.fdef.body[at:at] = _located(
            ast.parse("\n".join(PROLOGUE[item].prepare for item in items)).body, self.fdef)

    def line(self, node):
        return self.fn.__code__.co_firstlineno + getattr(node, "lineno", 1) - 1

    def error(self, node, construct, cls=RuleError):
        return cls(f"{self.where}, line {self.line(node)}: {construct} is not in the "
                   "rule language (docs/rules.md)")


def _docstring_end(fdef):
    """Where the statements of a function body begin (after its docstring)."""
    return 1 if fdef.body and _is_docstring(fdef.body[0]) else 0


def _located(statements, fdef):
    """``statements`` placed on the line of ``fdef`` (the ``def`` line: a
    traceback through the prologue names the rule's first line)."""
    for st in statements:
        for node in ast.walk(st):
            if "lineno" in node._attributes:
                node.lineno = node.end_lineno = fdef.lineno
                node.col_offset = node.end_col_offset = fdef.col_offset
    return statements


def written_of(fn):
    """The function its author wrote: ``fn``, or the one a function made by
    ``with_prologue``/``prepare_with_prologue`` wraps."""
    if hasattr(fn, "__rule_prologue__") or hasattr(fn, "__prepare_prologue__"):
        return fn.__wrapped__
    return fn


def _compiled(rule, fn):
    """``rule``'s tree compiled into a function of ``fn``'s name, module,
    globals, file and line numbers (tracebacks point at the text as written),
    carrying ``__wrapped__`` (``fn``)."""
    module = compile(ast.Module(body=[rule.fdef], type_ignores=[]), fn.__code__.co_filename,
                     "exec")
    code = next(c for c in module.co_consts if isinstance(c, types.CodeType))
    # the tree's lines count from the def (line 1); the line table is relative
    # to co_firstlineno, so moving that moves every line to the file's
    code = code.replace(co_firstlineno=fn.__code__.co_firstlineno + code.co_firstlineno - 1)
    full = types.FunctionType(code, fn.__globals__, fn.__name__)
    full.__module__ = fn.__module__
    full.__qualname__ = fn.__qualname__
    full.__doc__ = fn.__doc__
    full.__wrapped__ = fn
    return full


def prepare_with_prologue(fn, prologue, kernel_hyper):
    """The rule's ``prepare`` ``fn`` with its part of the declared ``prologue``
    (``PROLOGUE[item].prepare``: AdamW's decay factor) in front of its body and
    the kernel hyperparameters that part computes put in their places of
    ``kernel_hyper`` in its return: the function Python and Numba run and the C
    emitter translates (``Rule`` reads ``__prepare_prologue__``).  Without such
    an item, ``fn`` itself."""
    fn = written_of(fn)
    items = prepare_items(prologue)
    if not items:
        return fn
    key = (items, tuple(kernel_hyper))
    full = _compiled(Rule(fn, prepare_prologue=key), fn)
    full.__prepare_prologue__ = key
    return full


def with_prologue(fn, prologue):
    """``fn`` with the declared ``prologue`` in front of its body, as a Python
    function of the same name, module and globals (what Numba compiles and
    Python calls): compiled from ``Rule``'s tree, so it runs the same
    statements every emitter translates.  Its code keeps ``fn``'s file and
    line numbers (tracebacks point at the rule as written); it carries
    ``__wrapped__`` (``fn``) and ``__rule_prologue__``.  An empty prologue
    returns ``fn`` itself; a function already made here is unwrapped first."""
    fn = written_of(fn)
    prologue = tuple(prologue)
    if not prologue:
        return fn
    full = _compiled(Rule(fn, prologue=prologue), fn)
    full.__rule_prologue__ = prologue
    return full


def source_text(fn):
    """(file, first line, text) of rule ``fn`` as it runs: the author's source
    with the declared prologue's lines put in front of the body, each marked
    ``# prologue``; a ``prepare`` with its part of the prologue
    (``prepare_with_prologue``), the tree it runs, unparsed.  For
    ``python -m optkern.kernels show``."""
    rule = Rule(fn)
    written = rule.written
    path = inspect.getsourcefile(written)
    lines, first = inspect.getsourcelines(written)
    text = "".join(lines)
    if getattr(fn, "__prepare_prologue__", None):
        text = "# with its declared prologue (comments dropped)\n" + ast.unparse(rule.fdef) + "\n"
    elif rule.prologue:
        written_def = ast.parse(textwrap.dedent(text)).body[0]
        body = written_def.body[_docstring_end(written_def):]
        if not body or body[0].lineno == 1:     # a one-line def: no line to insert before
            text = ast.unparse(rule.fdef) + "\n"
        else:
            at = body[0].lineno - 1
            pad = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
            extra = []
            for st in prologue_statements(rule.prologue, *rule.params[:2]):
                for line in ast.unparse(st).split("\n"):
                    extra.append(f"{pad}{line}  # prologue\n")
            text = "".join(lines[:at] + extra + lines[at:])
    return path, first, text


def is_index(name):
    """The typing convention of loss rules' locals: ``j*`` names are integer
    indices, every other local a real of the data's dtype."""
    return name.startswith("j")


def _is_docstring(st):
    return (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant)
            and isinstance(st.value.value, str))


def check(rule, kind, constants=(), primitives=None):
    """Raise RuleError at the first construct of ``rule`` outside the
    language for its ``kind``: "update" (an optimizer's elementwise rule),
    "scalar"/"row" (a loss rule), "host" (prepare, schedule_factor; these may
    also read the module's numeric ``constants``), "epoch" (the minibatch
    epoch: a host function with loops, ``continue``, early returns and calls
    of the primitives of tables.EPOCH_BLOCKS/EPOCH_FUNCTIONS, or of the
    (blocks, functions) tables ``primitives`` names: another epoch's)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}")
    a = rule.fdef.args
    if (a.vararg or a.kwarg or a.kwonlyargs or a.defaults or a.kw_defaults
            or a.posonlyargs or rule.fdef.decorator_list):
        raise RuleError(f"{rule.where}: only plain positional parameters are allowed")
    known = set(rule.params) | set(rule.locals)
    shadowed = known & {"abs", "min", "max", "sign", "float", "math", "np", "numpy"}
    row_arrays = set(rule.params[:1]) | set(rule.params[3:4]) if kind == "row" else set()
    out_array = rule.params[3] if kind == "row" and len(rule.params) > 3 else None

    blocks, functions = primitives or (EPOCH_BLOCKS, EPOCH_FUNCTIONS)
    host = kind in ("host", "epoch")
    loops = []     # the loops around the statement being checked (epoch: continue)

    def bad(node, what):
        raise rule.error(node, what)

    def stmts(body):
        for st in body:
            stmt(st)

    def block_call(st, value, targets):
        """An epoch's statement calling one of its block primitives
        (tables.EPOCH_BLOCKS): the arguments and results are the epoch's
        own names, the ones the primitive's code reads and writes."""
        name = value.func.id
        args, results = blocks[name]
        got_args = tuple(a.id if isinstance(a, ast.Name) else None for a in value.args)
        if value.keywords or got_args != args or tuple(targets) != results:
            sig = f"{', '.join(results)} = " if results else ""
            bad(st, f"a call of the primitive {name} other than "
                    f"'{sig}{name}({', '.join(args)})'")

    def stmt(st):
        if _is_docstring(st) or isinstance(st, ast.Pass):
            return
        if kind == "epoch" and isinstance(st, (ast.Assign, ast.Expr)) \
                and isinstance(st.value, ast.Call) and isinstance(st.value.func, ast.Name) \
                and st.value.func.id in blocks:
            t = st.targets[0] if isinstance(st, ast.Assign) and len(st.targets) == 1 else None
            names = ([] if isinstance(st, ast.Expr) else
                     [x.id for x in t.elts if isinstance(x, ast.Name)] if isinstance(t, ast.Tuple)
                     else [t.id] if isinstance(t, ast.Name) else [None])
            return block_call(st, st.value, names)
        if isinstance(st, ast.Assign):
            if len(st.targets) != 1:
                bad(st, "chained assignment")
            t = st.targets[0]
            target(t)
            if isinstance(t, ast.Tuple):
                if not (isinstance(st.value, ast.Tuple) and len(st.value.elts) == len(t.elts)):
                    bad(st, "a tuple assignment from other than a tuple of as many values")
                for x in st.value.elts:
                    expr(x)
            else:
                expr(st.value)
        elif isinstance(st, ast.AugAssign):
            if type(st.op) not in BINOPS:
                bad(st, f"the augmented operator {type(st.op).__name__}")
            target(st.target)
            expr(st.value)
        elif isinstance(st, ast.If):
            expr(st.test)
            stmts(st.body)
            stmts(st.orelse)
        elif isinstance(st, ast.For) and kind in ("row", "epoch"):
            it = st.iter
            most = 3 if kind == "epoch" else 2
            if not (isinstance(st.target, ast.Name) and isinstance(it, ast.Call)
                    and isinstance(it.func, ast.Name) and it.func.id == "range"
                    and 1 <= len(it.args) <= most and not it.keywords and not st.orelse):
                bad(st, "a for other than 'for <name> in range(<stop>)' or range(<start>, <stop>)"
                    + (" or range(<start>, <stop>, <step>)" if kind == "epoch" else ""))
            for x in it.args:
                expr(x)
            if kind == "epoch" and any(
                    isinstance(n, ast.Name) and n.id == st.target.id and isinstance(n.ctx, ast.Store)
                    for b in st.body for n in ast.walk(b)):
                bad(st, f"an assignment to the loop variable {st.target.id!r} in its loop")
            loops.append(st)
            stmts(st.body)
            loops.pop()
        elif isinstance(st, ast.While) and kind == "epoch":
            if st.orelse:
                bad(st, "a while with an else")
            expr(st.test)
            loops.append(st)
            stmts(st.body)
            loops.pop()
        elif isinstance(st, ast.Continue) and kind == "epoch" and loops:
            return
        elif isinstance(st, ast.Return):
            if st.value is None:
                bad(st, "a bare return")
            if isinstance(st.value, ast.Tuple):
                for x in st.value.elts:
                    if isinstance(x, ast.Tuple) and host:
                        for y in x.elts:
                            expr(y)
                    else:
                        expr(x)
            else:
                expr(st.value)
        else:
            bad(st, f"the statement {type(st).__name__}")

    def target(t):
        if isinstance(t, ast.Name):
            return
        if isinstance(t, ast.Tuple) and all(isinstance(x, ast.Name) for x in t.elts):
            return
        if (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                and t.value.id == out_array):
            expr(t.slice)
            return
        bad(t, f"the assignment target {ast.unparse(t)!r}")

    def expr(e):
        if isinstance(e, ast.Name):
            if e.id in known or (host and e.id in constants):
                return
            bad(e, f"the global name {e.id!r}")
        elif isinstance(e, ast.Constant):
            if not isinstance(e.value, (bool, int, float)):
                bad(e, f"the constant {e.value!r}")
        elif isinstance(e, ast.BinOp):
            if type(e.op) not in BINOPS and not isinstance(e.op, ast.Pow):
                bad(e, f"the operator {type(e.op).__name__}")
            expr(e.left)
            expr(e.right)
        elif isinstance(e, ast.UnaryOp):
            if not isinstance(e.op, (ast.USub, ast.UAdd, ast.Not)):
                bad(e, f"the operator {type(e.op).__name__}")
            expr(e.operand)
        elif isinstance(e, ast.BoolOp):
            for x in e.values:
                expr(x)
        elif isinstance(e, ast.Compare):
            for op in e.ops:
                if type(op) not in CMPOPS:
                    bad(e, f"the comparison {type(op).__name__}")
            expr(e.left)
            for x in e.comparators:
                expr(x)
        elif isinstance(e, ast.IfExp):
            expr(e.test)
            expr(e.body)
            expr(e.orelse)
        elif isinstance(e, ast.Call):
            call(e)
        elif isinstance(e, ast.Subscript):
            subscript(e)
        elif isinstance(e, ast.Attribute):
            if not (host and isinstance(e.value, ast.Name) and e.value.id == "math"
                    and (e.attr in MATH_CONSTANTS or kind == "epoch" and e.attr == "nan")):
                bad(e, f"the attribute {ast.unparse(e)!r}")
        else:
            bad(e, f"the expression {type(e).__name__}")

    def call(e):
        if e.keywords:
            bad(e, "a call with keyword arguments")
        name = function_of(e)
        f = e.func
        head = f.id if isinstance(f, ast.Name) else getattr(getattr(f, "value", None), "id", None)
        if kind == "epoch" and name is None:
            if isinstance(f, ast.Name) and f.id in functions and f.id not in known:
                if len(e.args) != functions[f.id][0]:
                    bad(e, f"{f.id} with {len(e.args)} arguments")
                for x in e.args:
                    expr(x)
                return
            if isinstance(f, ast.Attribute) and head == "math" and f.attr in EPOCH_MATH:
                name = f.attr
            elif isinstance(f, ast.Name) and f.id in blocks:
                bad(e, f"the primitive {f.id} inside an expression (it is a statement)")
        if name is None or head in shadowed or (name in HOST_FUNCTIONS and not host):
            bad(e, f"the call {ast.unparse(e)!r}")
        n = len(e.args)
        if (name in ("min", "max") and n < 2) or (name not in ("min", "max") and n != 1):
            bad(e, f"{name} with {n} arguments")
        for x in e.args:
            expr(x)

    def subscript(e):
        v = e.value
        if kind == "row":
            if (isinstance(v, ast.Attribute) and v.attr == "shape"
                    and isinstance(v.value, ast.Name) and v.value.id in row_arrays
                    and isinstance(e.slice, ast.Constant) and e.slice.value == 0):
                return
            if isinstance(v, ast.Name) and v.id in row_arrays:
                expr(e.slice)
                return
        if (host and isinstance(v, ast.Name) and v.id in rule.params
                and isinstance(e.slice, ast.Constant) and type(e.slice.value) is int):
            return
        bad(e, f"the subscript {ast.unparse(e)!r}")

    stmts(rule.fdef.body)
    return rule


def parse(fn, kind, label=None, constants=()):
    """Parse and check ``fn`` (module docstring); returns its Rule."""
    return check(Rule(fn, label), kind, constants)
