"""``python -m optkern.kernels show NAME --target TARGET``: the code that runs.

NAME is an optimizer rule (``adam``), ``loss:NAME`` (``loss:softmax``) or
``epoch[:LOSS:RULE:LAYOUT]`` (the minibatch epoch, kernels/epoch_rules.py, as
the epoch of that combination runs it; softmax, adam, dense by default) or
``sparse_epoch[:LOSS:RULE:MODE]`` (the sparse epochs of wide CSR data,
kernels/sparse_epoch_rules.py, MODE ``rows`` (lazy, linear) or ``scaled``;
softmax, adagrad, rows by default; scaled runs sgd only).
TARGET is ``numba``, ``numba-parallel``, ``cuda`` or ``cython``.

For the Numba targets the text is taken from the generated module itself
(kernels/_generated/..., written here if missing): the rule's source (inlined
into the loops) and the generated functions that the target runs, each headed
by its file and line so a Numba traceback can be matched.  For ``cython`` it
is taken from the .pyx files of the build (kernels/cython/_updates.pyx,
_losses.pyx): every top-level function whose name contains the rule's name.
"""

import argparse
import ast
import inspect
import os
import re
import sys

TARGETS = ("numba", "numba-parallel", "cuda", "cython")

# the generated functions each target runs, per kind of module
_UPDATE_FUNCTIONS = {
    "numba": ("_loop_serial", "serial", "serial_checked", "functional"),
    "numba-parallel": ("_loop_parallel", "parallel", "parallel_checked"),
    "cuda": ("make_cuda_kernel",),
}
_LOSS_FUNCTIONS = {
    "numba": ("row", "_dense_chunk", "dense_serial", "_csr_chunk", "csr_serial", "dense_blas",
              "_dense_rows", "_csr_rows", "_block_rule", "_dense_chunk_lanes",
              "_csr_chunk_lanes", "_rule_lanes_py", "_csr_chunk_k1", "_k1_in_range",
              "_k1_scores", "_k1_rules_scatter"),
    "numba-parallel": ("row", "_dense_chunk", "dense_parallel", "_csr_chunk", "csr_parallel",
                       "_dense_rows", "_csr_rows", "_block_rule", "_dense_chunk_lanes",
                       "_csr_chunk_lanes", "_rule_lanes_py", "_csr_chunk_k1", "_k1_in_range",
                       "_k1_scores", "_k1_rules_scatter", "_csr_parallel_k1"),
    "cuda": ("make_cuda_kernels",),
}


def _functions(path, names):
    """(name, first line, text) of each top-level function ``names`` in the
    file at ``path`` (decorators included), in the file's order."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    lines = text.split("\n")
    out = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out.append((node.name, first, "\n".join(lines[first - 1:node.end_lineno])))
    return out


def _source_of(fn):
    return inspect.getsourcefile(fn), inspect.getsourcelines(fn)[1], inspect.getsource(fn)


def _epoch_name(name):
    """(loss, rule, layout) of ``epoch[:LOSS:RULE:LAYOUT]``."""
    parts = name.split(":")[1:]
    if len(parts) not in (0, 3):
        raise SystemExit(f"expected epoch or epoch:LOSS:RULE:LAYOUT, got {name!r}")
    return tuple(parts) or ("softmax", "adam", "dense")


def _epoch_written():
    from . import epoch_rules
    return _source_of(epoch_rules.minibatch_epoch)


def _sparse_epoch_name(name):
    """(loss, rule, mode) of ``sparse_epoch[:LOSS:RULE:MODE]``."""
    parts = name.split(":")[1:]
    if len(parts) not in (0, 3) or parts and parts[2] not in ("rows", "scaled"):
        raise SystemExit(f"expected sparse_epoch or sparse_epoch:LOSS:RULE:MODE (MODE rows or "
                         f"scaled), got {name!r}")
    return tuple(parts) or ("softmax", "adagrad", "rows")


def _sparse_written():
    from . import sparse_epoch_rules
    return _source_of(sparse_epoch_rules.sparse_epoch)


def _numba_text(name, target):
    if name == "sparse_epoch" or name.startswith("sparse_epoch:"):
        from . import sparse_epoch_drivers
        if target == "cuda":
            raise SystemExit("the sparse epochs have no cuda target")
        loss, rule, mode = _sparse_epoch_name(name)
        mod = sparse_epoch_drivers.module_for(loss, rule)
        pieces = [_sparse_written()]
        # (numba-parallel runs the same serial epochs)
        wanted = (f"epoch_{mode}", f"epoch_{mode}_k1")
    elif name == "epoch" or name.startswith("epoch:"):
        from . import epoch_drivers
        if target == "cuda":
            raise SystemExit("the minibatch epoch has no cuda target")
        mod = epoch_drivers.module_for(*_epoch_name(name))
        pieces = [_epoch_written()]
        wanted = ("epoch_serial",) if target == "numba" else ("epoch_parallel",)
    elif name.startswith("loss:"):
        from . import loss_drivers, loss_rules
        loss = name[len("loss:"):]
        if loss not in loss_rules.LOSS_RULES:
            raise SystemExit(f"unknown loss {loss!r}; known: {', '.join(loss_rules.LOSS_RULES)}")
        mod = loss_drivers.module_for(loss)
        pieces = [_source_of(loss_rules.LOSS_RULES[loss].rule)]
        wanted = _LOSS_FUNCTIONS[target]
    else:
        from . import drivers, rules
        if name not in rules.RULES:
            raise SystemExit(f"unknown rule {name!r}; known: {', '.join(rules.RULES)}")
        spec = rules.RULES[name]
        mod = drivers.module_for(name)
        # the rule as it runs: its declared prologue shown in front of its body
        from .rulelang import source_text
        pieces = [source_text(spec.prepare), source_text(spec.rule)]
        wanted = _UPDATE_FUNCTIONS[target]
    out = []
    for path, line, text in pieces:
        out.append(f"# ---- {path}:{line} (inlined)\n{text.rstrip()}")
    for fname, line, text in _functions(mod.__file__, wanted):
        out.append(f"# ---- {mod.__file__}:{line} ({fname})\n{text}")
    return "\n\n".join(out) + "\n"


def _cython_blocks(path, name):
    """Top-level blocks of the .pyx at ``path`` defining a function whose name
    holds ``name`` as a whole ``_``-separated part (adam: adam_loop_f32, adam;
    not adamax)."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    head = re.compile(r"^(?:cdef|cpdef|def)\b[^(]*?\b(?:\w*_)?%s(?:_\w*)?\s*\(" % re.escape(name))
    blocks, i = [], 0
    while i < len(lines):
        if head.match(lines[i]):
            j = i + 1
            while j < len(lines) and (not lines[j] or lines[j][0] in " \t)"):
                j += 1
            while j > i + 1 and not lines[j - 1].strip():
                j -= 1
            blocks.append((i + 1, "\n".join(lines[i:j])))
            i = j
        else:
            i += 1
    return blocks


def _cython_text(name):
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cython")
    if name == "sparse_epoch" or name.startswith("sparse_epoch:"):
        mode = _sparse_epoch_name(name)[2]
        path = os.path.join(here, "_sparse_epochs.pyx")
        if not os.path.exists(path):
            raise SystemExit(f"{path} does not exist: the Cython kernels are not built here")
        written, line, text = _sparse_written()
        fn = "rows_f64_i64" if mode == "rows" else "scaled_sgd_f64_i64"
        blocks = [(ln, t) for ln, t in _cython_blocks(path, fn)]
        return (f"# ---- {written}:{line} (translated)\n{text.rstrip()}\n\n"
                + "\n\n".join(f"# ---- {path}:{ln}\n{t}" for ln, t in blocks) + "\n")
    if name == "epoch" or name.startswith("epoch:"):
        layout = _epoch_name(name)[2]
        path = os.path.join(here, "_epochs.pyx")
        if not os.path.exists(path):
            raise SystemExit(f"{path} does not exist: the Cython kernels are not built here")
        written, line, text = _epoch_written()
        blocks = [(ln, t) for ln, t in _cython_blocks(path, f"epoch_f64_{layout}")]
        return (f"# ---- {written}:{line} (translated)\n{text.rstrip()}\n\n"
                + "\n\n".join(f"# ---- {path}:{ln}\n{t}" for ln, t in blocks) + "\n")
    if name.startswith("loss:"):
        fname, name = "_losses.pyx", name[len("loss:"):]
    else:
        fname = "_updates.pyx"
    path = os.path.join(here, fname)
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist: the Cython kernels are not built here")
    blocks = _cython_blocks(path, name)
    if not blocks:
        raise SystemExit(f"no function for {name!r} in {path}")
    return "\n\n".join(f"# ---- {path}:{line}\n{text}" for line, text in blocks) + "\n"


def show(name, target):
    """The text ``show`` prints for ``name`` on ``target``."""
    if target not in TARGETS:
        raise SystemExit(f"--target: expected one of {', '.join(TARGETS)}, got {target!r}")
    if target == "cython":
        return _cython_text(name)
    return _numba_text(name, target)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m optkern.kernels",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="print the exact code that runs for a rule or loss")
    p.add_argument("name", help="an optimizer rule (adam), loss:NAME (loss:softmax), "
                   "epoch[:LOSS:RULE:LAYOUT] or sparse_epoch[:LOSS:RULE:MODE]")
    p.add_argument("--target", default="numba", choices=TARGETS)
    args = parser.parse_args(argv)
    sys.stdout.write(show(args.name, args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
