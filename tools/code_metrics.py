"""Code-shape numbers for issue 14's closing notes (run from the repo root).

    python tools/code_metrics.py [--top 20] [--units PATH ...] [PATH ...]

Issue 14's "Measure" asks for the lines of code inside string literals under
``kernels/`` and the 20 longest functions and classes.  For the Python files
under PATH (default ``kernels``; ``_generated`` and build outputs excluded)
this prints the total lines, the lines inside string literals that are not
docstrings (code kept in strings: templates a linter cannot see) and the
files holding most of them.  The longest functions and classes are counted
over ``--units`` (default ``src/optkern kernels``: the API and the kernels,
where the issue's large units -- ``Optimizer``, ``_BaseLinear``, the command
line -- live); a method counts inside its class too.  A template's function
named ``HOLE_...`` is one whose name the generator fills in.
"""

import argparse
import ast
import os
import sys


def _docstring_nodes(tree):
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                ids.add(id(body[0].value))
    return ids


def string_lines(tree):
    """Lines covered by non-docstring string literals spanning two or more lines."""
    docs = _docstring_nodes(tree)
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and id(node) not in docs \
                and (isinstance(node, ast.JoinedStr) or isinstance(node.value, str)) \
                and node.end_lineno > node.lineno:
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def units(tree, path):
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            out.append((node.end_lineno - node.lineno + 1, f"{kind} {node.name}", path))
    return out


def python_files(paths):
    for root in paths:
        if os.path.isfile(root):
            yield root
            continue
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x not in ("_generated", "__pycache__", "build"))
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.join(d, f)


def _read(path):
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return text, ast.parse(text, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=["kernels"],
                    help="where to count code in string literals (default: kernels)")
    ap.add_argument("--units", nargs="+", default=["src/optkern", "kernels"],
                    help="where to rank functions and classes (default: src/optkern kernels)")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    total = in_strings = 0
    per_file, all_units = [], []
    for path in python_files(args.paths):
        text, tree = _read(path)
        n, s = text.count("\n"), len(string_lines(tree))
        total, in_strings = total + n, in_strings + s
        per_file.append((s, n, path))
    for path in python_files(args.units):
        all_units += units(_read(path)[1], path)
    where = " ".join(args.paths)
    print(f"{where}: {total} lines, {in_strings} inside non-docstring string literals "
          f"({100.0 * in_strings / max(total, 1):.0f}%)")
    print("\nfiles with most code in strings:")
    for s, n, path in sorted(per_file, reverse=True)[:10]:
        if s:
            print(f"  {s:5d} of {n:5d}  {path}")
    print(f"\nthe {args.top} longest functions and classes in {' '.join(args.units)}:")
    for n, name, path in sorted(all_units, reverse=True)[:args.top]:
        print(f"  {n:5d}  {name}  ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
