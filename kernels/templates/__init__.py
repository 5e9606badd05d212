"""Templates of the generated Numba driver modules: real Python files.

Each module here is the text of a generated module (kernels/_generated/...)
with holes.  It parses, imports and lints like any module, so an editor, a
linter and a reader see the code that runs.

One mechanism names the holes: a **placeholder identifier** spelled
``HOLE_<NAME>`` (upper case).  ``fill(name, holes)`` replaces each by
``holes["<name>"]`` (the lower-case name, a string):

* a placeholder alone on its line is a *block* hole: the line becomes the
  value's lines, each indented like the placeholder (empty lines stay empty;
  an empty value removes the line);
* anywhere else (an argument list, a call, a comment) the placeholder is
  replaced in place.

Every placeholder of a template must be given a value and every value must be
used, so a renamed hole fails loudly.  Lines ending in ``# template-only``
are dropped: they import stand-ins (``standins.py``) for the names only the
filled text defines, which is what lets the template itself import.

``snippet(name, function)`` returns the body of one function of a template,
dedented: a piece pasted into other templates' block holes (e.g. the element
loop that ``update.py`` runs in four places).  ``fragment(name)`` returns a
whole template (without its ``# template-only`` lines and its leading and
trailing blank lines): one of the alternatives a block hole takes (e.g.
loss.py's ``HOLE_ROW_FORM`` is loss_row_scalar.py or loss_row_row.py).
"""

import ast
import os
import re
import textwrap

DIRECTORY = os.path.dirname(os.path.abspath(__file__))

_HOLE = re.compile(r"\bHOLE_([A-Z0-9_]+)\b")
_BLOCK = re.compile(r"^([ ]*)HOLE_([A-Z0-9_]+)$")


def path(name):
    """The file of template ``name`` (without ``.py``)."""
    return os.path.join(DIRECTORY, name + ".py")


# per template file: (mtime, size), its text without the template-only lines,
# and the lines its functions' bodies span (parsed on the first ``snippet``).
# A module's text is made again in every process (_files.load_generated) from
# ~25 snippets of a few templates: parsing each template once per process and
# not once per snippet took a warm dense epoch module's text from 94 to ~25 ms.
# An edited template (a new mtime or size) is read again.
_READ = {}


def _read(name):
    p = path(name)
    st = os.stat(p)
    stamp = (st.st_mtime_ns, st.st_size)
    entry = _READ.get(p)
    if entry is None or entry[0] != stamp:
        with open(p, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        text = "\n".join(line for line in lines if not line.endswith("# template-only"))
        entry = _READ[p] = [stamp, text, None]
    return entry


def _text(name):
    return _read(name)[1]


def substitute(text, holes):
    """Fill the placeholders of ``text`` (see the module docstring)."""
    used = set()

    def value(key):
        try:
            v = holes[key.lower()]
        except KeyError:
            raise KeyError(f"no value for hole HOLE_{key}") from None
        used.add(key.lower())
        return v

    out = []
    for line in text.split("\n"):
        block = _BLOCK.match(line)
        if block:
            pad = block.group(1)
            text = value(block.group(2))
            if text:
                out.extend(pad + v if v else v for v in text.split("\n"))
        else:
            out.append(_HOLE.sub(lambda m: value(m.group(1)), line))
    unused = set(holes) - used
    if unused:
        raise KeyError(f"holes given but not in the template: {sorted(unused)}")
    return "\n".join(out)


def fill(name, holes):
    """Template ``name`` with its holes filled."""
    return substitute(_text(name), holes)


def snippet(name, function):
    """The dedented body of ``function`` in template ``name`` (holes unfilled)."""
    entry = _read(name)
    if entry[2] is None:
        entry[2] = {node.name: (node.body[0].lineno - 1, node.end_lineno)
                    for node in ast.parse(entry[1]).body
                    if isinstance(node, ast.FunctionDef)}
    try:
        first, last = entry[2][function]
    except KeyError:
        raise KeyError(f"no function {function!r} in template {name!r}") from None
    return textwrap.dedent("\n".join(entry[1].split("\n")[first:last]))


def fragment(name):
    """Template ``name`` whole, unfilled, without its leading and trailing
    blank lines (a value for another template's block hole)."""
    return _text(name).strip("\n")
