"""The minibatch epoch (kernels/epoch_rules.py, kind "epoch") for each target.

An epoch is a host function with more statements than ``prepare`` needs:
``for <name> in range(...)`` (with a step too), ``while``, ``continue``,
early ``return``s of (mean loss, steps done, averaging count), and calls of
the primitives whose code each target writes its own way (the batch pass,
the gradient's finish with the penalty, the update calls).  The front end
checks the subset (``frontend.check(rule, "epoch")``, one RuleError naming
the line and the construct); the tables (tables.py: EPOCH_BLOCKS,
EPOCH_FUNCTIONS, NUMBA_EPOCH, CYTHON_EPOCH) say what the primitives read and
write and how each target spells them.

``numba_text``  the epoch's text as written, its primitives replaced by the
                Numba code of kernels/templates/epoch_parts.py (epoch_drivers)
``CythonEpochEmitter``  the epoch as Cython (generate_epochs): typed locals,
                the stepped range as a ``while`` whose ``continue`` steps
                first, the return through the out-parameters; the comments
                written between statements kept, above the statement they
                precede (the reasons a reader of the generated .pyx needs)

Each written epoch has its tables, an ``Epoch`` record: ``DENSE`` the
dense/CSR minibatch epoch (kernels/epoch_rules.py), ``SPARSE`` the sparse
epochs of wide CSR data (kernels/sparse_epoch_rules.py: the lazy/linear and
the scaled modes, one loop, the modes' steps primitives).
"""

import ast
import inspect
import textwrap
from typing import NamedTuple

from .c import HostEmitter
from .frontend import Rule, RuleError, check
from .tables import (CYTHON_EPOCH, CYTHON_EPOCH_TYPES, CYTHON_SPARSE_EPOCH, EPOCH_BLOCKS,
                     EPOCH_FUNCTIONS, EPOCH_PARAMS, EPOCH_RETURN, NUMBA_EPOCH,
                     NUMBA_SPARSE_EPOCH, SPARSE_EPOCH_BLOCKS, SPARSE_EPOCH_FUNCTIONS,
                     SPARSE_EPOCH_PARAMS)


class Epoch(NamedTuple):
    """The tables of one written epoch: its parameters' types, its block and
    function primitives, and each target's spelling of them."""
    name: str
    params: dict
    blocks: dict
    functions: dict
    numba: dict
    cython: dict


DENSE = Epoch("EPOCH", EPOCH_PARAMS, EPOCH_BLOCKS, EPOCH_FUNCTIONS, NUMBA_EPOCH, CYTHON_EPOCH)
SPARSE = Epoch("SPARSE_EPOCH", SPARSE_EPOCH_PARAMS, SPARSE_EPOCH_BLOCKS, SPARSE_EPOCH_FUNCTIONS,
               NUMBA_SPARSE_EPOCH, CYTHON_SPARSE_EPOCH)


def parse(fn, epoch=DENSE):
    """``fn`` checked as an epoch: its Rule; the parameters must be the
    epoch's (tables.EPOCH_PARAMS, or ``epoch``'s) and every return three
    values."""
    rule = check(Rule(fn), "epoch", primitives=(epoch.blocks, epoch.functions))
    unknown = [p for p in rule.params if p not in epoch.params]
    if unknown:
        raise RuleError(f"{rule.where}: the parameters {unknown} are not an epoch's "
                        f"(tables.{epoch.name}_PARAMS: {', '.join(epoch.params)})")
    for node in ast.walk(rule.fdef):
        if isinstance(node, ast.Return) and not (
                isinstance(node.value, ast.Tuple) and len(node.value.elts) == len(EPOCH_RETURN)):
            raise rule.error(node, "a return of other than (mean loss, steps, averaging count)")
    return rule


def _is_block(st, blocks=EPOCH_BLOCKS):
    """The block primitive a statement calls, or None."""
    if isinstance(st, (ast.Assign, ast.Expr)) and isinstance(st.value, ast.Call) \
            and isinstance(st.value.func, ast.Name) and st.value.func.id in blocks:
        return st.value.func.id
    return None


# ---------------------------------------------------------------- Numba

def numba_text(fn, blocks, table=None, epoch=DENSE):
    """The body of the epoch ``fn`` as Numba compiles it: its text as written
    (comments kept), dedented, with each block primitive's statement replaced
    by ``blocks[table[name]]`` (text, indented like the statement), each
    function primitive's call by ``table[name]`` formatted with its
    arguments' text, and each return's values followed as ``table["return"]``
    says.  ``epoch``: the written epoch's tables (``table`` its Numba
    spelling unless given)."""
    table = epoch.numba if table is None else table
    rule = parse(fn, epoch)
    lines, _ = inspect.getsourcelines(rule.written)
    source = textwrap.dedent("".join(lines))
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def at(lineno, col):
        return starts[lineno - 1] + len(source.splitlines(keepends=True)[lineno - 1]
                                        .encode()[:col].decode())

    edits = []   # (start, end, text)
    for node in ast.walk(rule.fdef):
        name = _is_block(node, epoch.blocks)
        if name is not None:
            pad = " " * node.col_offset
            text = textwrap.dedent(blocks[table[name]]).strip("\n")
            text = "\n".join(pad + x if x else x for x in text.split("\n"))
            edits.append((starts[node.lineno - 1], starts[node.end_lineno] - 1,
                          text))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in epoch.functions:
            # the arguments' text as written (line breaks kept)
            args = source[at(node.args[0].lineno, node.args[0].col_offset):
                          at(node.args[-1].end_lineno, node.args[-1].end_col_offset)] \
                if node.args else ""
            edits.append((at(node.lineno, node.col_offset),
                          at(node.end_lineno, node.end_col_offset),
                          table[node.func.id].format(args)))
        elif isinstance(node, ast.Return):
            before, after = table["return"].split("{}")
            v = node.value
            edits.append((at(node.lineno, node.col_offset), at(v.lineno, v.col_offset), before))
            end = at(v.end_lineno, v.end_col_offset)
            edits.append((end, end, after))
    edits.sort(key=lambda e: (e[0], e[1]))
    for (s0, e0, _), (s1, _, _) in zip(edits, edits[1:]):
        if s1 < e0:
            raise RuleError(f"{rule.where}: a primitive inside another's call")
    # the body's first line (after a docstring): the edits are all below it
    # (the text is not parsed again: an empty hole of a primitive's argument
    # list, ", ,", is load_generated's to mend)
    body = rule.fdef.body[1:] if _docstring(rule.fdef) else rule.fdef.body
    head = starts[body[0].lineno - 1]
    for s, e, text in reversed(edits):
        source = source[:s] + text + source[e:]
    return textwrap.dedent(source[head:].rstrip("\n"))


# ---------------------------------------------------------------- Cython

class CythonEpochEmitter(HostEmitter):
    """The epoch as Cython statements for the body of ``_epoch_<sfx>_<layout>``
    (kernels/cython/templates/_epochs.pyx.tp): ``decls()`` the ``cdef`` of
    its locals, ``body()`` its statements.  Names are the epoch's own (the
    template's function has parameters of those names).  Types: the
    parameters' from tables.EPOCH_PARAMS; a local is an int64 when every
    value given to it is an integer (the loop variables too), a bint when
    every one is a truth value, the noise key's uint64 for noise_key, else a
    double.  ``sections``: the Cython text of each block primitive and of
    the return (kernels/cython/templates/epoch_primitives.pyx.tp, rendered
    for one layout and C type).  ``epoch``: the written epoch's tables
    (``table`` its Cython spelling unless given)."""

    def __init__(self, fn, sections, table=None, epoch=DENSE):
        self.fn = fn
        self.epoch = epoch
        table = epoch.cython if table is None else table
        self.rule = parse(fn, epoch)
        self.fdef = self.rule.fdef
        self.where = self.rule.where
        self.params = self.rule.params
        self.locals = self.rule.locals
        self.globals = {}
        self.sections = sections
        self.table = table
        self.loops = []
        self.types = {p: epoch.params[p] for p in self.params}
        self._infer()
        self.ints = {n for n, t in self.types.items() if t == "int"}
        # the text the front end parsed (its line numbers are the nodes'), for
        # the comments between statements; the last line emitted so far: the
        # docstring's, else the signature's (a comment above the first
        # statement is carried, a docstring line is not)
        self._lines = textwrap.dedent(inspect.getsource(self.rule.written)).splitlines()
        first = self.fdef.body[0]
        self._done = first.end_lineno if _docstring(self.fdef) else \
            max([self.fdef.lineno] + [a.end_lineno for a in self.fdef.args.args])

    # ---- types

    def type_of(self, node):
        t = self.types
        if isinstance(node, ast.Name):
            return t.get(node.id)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                return "bool"
            return "int" if isinstance(node.value, int) else "real"
        if isinstance(node, ast.BinOp):
            a, b = self.type_of(node.left), self.type_of(node.right)
            if a is None or b is None:
                return None
            if isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)) and a == b == "int":
                return "int"
            return "real"
        if isinstance(node, ast.UnaryOp):
            return "bool" if isinstance(node.op, ast.Not) else self.type_of(node.operand)
        if isinstance(node, (ast.Compare, ast.BoolOp)):
            return "bool"
        if isinstance(node, ast.IfExp):
            a, b = self.type_of(node.body), self.type_of(node.orelse)
            return None if a is None or b is None else a if a == b else "real"
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in self.epoch.functions:
                return self.epoch.functions[f.id][1]
            if isinstance(f, ast.Name) and f.id in ("min", "max"):
                ts = [self.type_of(a) for a in node.args]
                return None if None in ts else "int" if set(ts) == {"int"} else "real"
            if isinstance(f, ast.Attribute) and f.attr == "isfinite":
                return "bool"
            if isinstance(f, ast.Attribute) and f.attr in ("floor", "ceil"):
                return "int"
            return "real"
        return "real"      # sched[i], math.nan

    def _infer(self):
        """Every local's type, from every value given to it (to a fixed point)."""
        values = {}
        for node in ast.walk(self.fdef):
            block = _is_block(node, self.epoch.blocks)
            if block:
                for r in self.epoch.blocks[block][1]:
                    values.setdefault(r, []).append(ast.Constant(0.0))
            elif isinstance(node, ast.Assign):
                t = node.targets[0]
                pairs = zip(t.elts, node.value.elts) if isinstance(t, ast.Tuple) else [(t, node.value)]
                for x, v in pairs:
                    values.setdefault(x.id, []).append(v)
            elif isinstance(node, ast.AugAssign):
                values.setdefault(node.target.id, []).append(
                    ast.BinOp(ast.Name(node.target.id, ast.Load()), node.op, node.value))
            elif isinstance(node, ast.For):
                values.setdefault(node.target.id, []).append(ast.Constant(0))
        for _ in range(len(values) + 2):
            changed = False
            for name, vs in values.items():
                ts = [self.type_of(v) for v in vs]
                known = [x for x in ts if x is not None]
                if not known:
                    continue
                new = known[0] if len(set(known)) == 1 else "real"
                if "key" in known or "bool" in known and len(set(known)) > 1:
                    new = known[0] if len(set(known)) == 1 else None
                    if new is None:
                        raise RuleError(f"{self.where}: {name!r} holds values of types "
                                        f"{sorted(set(known))}")
                if self.types.get(name) != new:
                    self.types[name] = new
                    changed = True
            if not changed:
                break
        missing = [n for n in self.locals if n not in self.types]
        if missing:
            raise RuleError(f"{self.where}: no type for {missing}")

    def is_int(self, node):
        return self.type_of(node) == "int"

    # ---- names and leaves

    @staticmethod
    def var(name):
        return name

    target_text = var

    def name_text(self, node):
        return node.id

    def leaf(self, node):
        if isinstance(node, ast.Attribute):     # math.nan
            return self.table[node.attr]
        if isinstance(node, ast.Subscript):     # sched[0]
            return f"{node.value.id}[{node.slice.value}]"
        return super().leaf(node)

    def minmax(self, name, a, b):
        raise AssertionError("call() handles min and max")

    def call(self, node):
        f = node.func
        args = [self.expr(a) for a in node.args]
        if isinstance(f, ast.Name) and f.id in self.epoch.functions:
            return self.table[f.id].format(", ".join(args))
        if isinstance(f, ast.Attribute) and f.attr == "isfinite":
            return self.table["isfinite"].format(args[0])
        if isinstance(f, ast.Name) and f.id in ("min", "max"):
            # Python's rule: the first of equal values, a later one only if
            # strictly smaller (larger)
            if all(self.is_int(a) for a in node.args):
                out = args[0]
                cmp = "<" if f.id == "min" else ">"
                for a in args[1:]:
                    out = f"({a} if {a} {cmp} {out} else {out})"
                return out
            out = args[0]
            for a in args[1:]:
                out = super().minmax(f.id, out, a)
            return out
        return super().call(node)

    # ---- statements

    def stmts(self, body, indent):
        out = []
        for st in body:
            out += self._comments_before(st, indent)
            out += self.stmt(st, indent)
            self._done = max(self._done, st.end_lineno)
        return out or [" " * indent + self.SYNTAX["pass"]]

    def _comments_before(self, st, indent):
        """The comment lines written between the last statement emitted and
        ``st``, at ``st``'s indentation (blank lines and a comment after code
        on its line are not carried)."""
        out = []
        for line in self._lines[self._done:st.lineno - 1]:
            if line.strip().startswith("#"):
                out.append(" " * indent + line.strip())
        self._done = max(self._done, st.lineno - 1)
        return out

    def stmt(self, st, indent):
        pad = " " * indent
        block = _is_block(st, self.epoch.blocks)
        if block is not None:
            return self._section(self.table[block], indent)
        if isinstance(st, ast.For):
            return self._for(st, indent)
        if isinstance(st, ast.While):
            self.loops.append([])
            out = [f"{pad}while {self.expr(st.test)}:"] + self.stmts(st.body, indent + 4)
            self.loops.pop()
            return out
        if isinstance(st, ast.Continue):
            return [pad + x for x in self.loops[-1]] + [pad + "continue"]
        if isinstance(st, ast.Return):
            values = [self.expr(v) for v in st.value.elts]
            return self._section(self.table["return"], indent, values)
        return super().stmt(st, indent)

    def _section(self, name, indent, values=()):
        text = textwrap.dedent(self.sections[name]).strip("\n")
        if values:
            text = text.format(*values)
        return [" " * indent + x if x.strip() else "" for x in text.split("\n")]

    def _for(self, st, indent):
        pad = " " * indent
        v = st.target.id
        args = [self.expr(a) for a in st.iter.args]
        if len(args) < 3:
            self.loops.append([])
            out = [f"{pad}for {v} in range({', '.join(args)}):"] + self.stmts(st.body, indent + 4)
            self.loops.pop()
            return out
        # Cython compiles a range with a step of unknown sign only through
        # Python objects: a while (counting up, the step must be > 0) whose
        # continue steps first; the bounds are read on every pass, so they
        # must be parameters or constants (Python reads them once)
        for a in st.iter.args[1:]:
            if not (isinstance(a, ast.Constant) or isinstance(a, ast.Name) and a.id in self.params):
                raise self.rule.error(a, "a stepped range's stop or step other than a "
                                         "parameter or a constant")
        step = [f"{v} = {v} + {args[2]}"]
        self.loops.append(step)
        out = [f"{pad}{v} = {args[0]}", f"{pad}while {v} < {args[1]}:"]
        out += self.stmts(st.body, indent + 4)
        out += [pad + "    " + step[0]]
        self.loops.pop()
        return out

    def decls(self, indent=4):
        """The ``cdef`` lines of the epoch's locals, by type."""
        pad = " " * indent
        out = []
        for kind in ("int", "real", "bool", "key"):
            names = [n for n in self.locals if self.types[n] == kind]
            if names:
                out.append(f"{pad}cdef {CYTHON_EPOCH_TYPES[kind]} " + ", ".join(names))
        return out

    def body(self, indent=4):
        return self.stmts(self.fdef.body[1:] if _docstring(self.fdef) else self.fdef.body,
                          indent)


def _docstring(fdef):
    st = fdef.body[0]
    return isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant) \
        and isinstance(st.value.value, str)
