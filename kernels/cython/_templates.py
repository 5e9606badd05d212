"""Render the Cython generators' templates (``kernels/cython/templates/``).

The generated ``.pyx``/``.pxd`` code lives in Tempita templates (``*.tp``,
``Cython.Tempita``, which ships with Cython, a build dependency): the code a
reader sees in a template is the code that is compiled, with named holes
``{{name}}`` and Tempita ``for``/``if`` blocks where it differs per rule, loss
or C type.  The generators compute the values for the holes.

Lines are read as a reader expects: a line holding only a directive
(``{{for ...}}``, ``{{if ...}}``, ``{{endfor}}``, ...) or only a comment
(``{{# why ...}}``) produces nothing, every
other line (blank ones included) is output as written.  Tempita itself drops a
blank line that directly precedes a directive line; ``render`` stops that by
giving each blank line an empty expression before Tempita parses the text.

``source_digest`` is the SOURCE_HASH compiled into each generated module: a
hash of every file its text is made from (templates, generator code, rules)
and of the text itself, so an edit to any of them marks an older build stale
(no hand-bumped version numbers).

Loaded by path by the generators (it must import neither numba nor optkern).
"""

import hashlib
import os
import re

from Cython import Tempita

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")


_BLANK_LINE = re.compile(r"(?m)^$")
_COMMENT_LINE = re.compile(r"(?m)^[ \t]*\{\{#[^}]*\}\}[ \t]*\n")


def language_files():
    """The rule language's front end and emitters (kernels/rulelang/*.py):
    every generated module's text depends on them, so its hash covers them."""
    folder = os.path.join(os.path.dirname(HERE), "rulelang")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py"))


PENALTY = os.path.join(os.path.dirname(HERE), "penalty.py")


def penalty_twins(host_emitter, names="KERNEL_FUNCTIONS"):
    """The hole ``penalty`` of templates/penalty_twin.pyx.tp: each of
    kernels/penalty.py's KERNEL_FUNCTIONS translated by ``host_emitter``
    (rulelang.c.HostEmitter: C doubles, Cython), as (name, args, body lines).
    With rulelang.c.CHostEmitter and ``names="C_FUNCTIONS"``: the hole
    ``penalty_c`` of templates/_epochs_dense.c.tp, the same in plain C."""
    import runpy
    import types

    module = runpy.run_path(PENALTY)
    twins = []
    for name in module[names]:
        tr = host_emitter(module[name], int_first=False, globals_=module)

        def ret(t, st):
            return [f"return {t.cast('double', t.expr(st.value))}{t.SYNTAX['end']}"]

        twins.append(types.SimpleNamespace(
            name=name, args=", ".join(f"double {tr.var(p)}" for p in tr.params),
            body=tr.local_decls() + tr.stmts(tr.fdef.body, 4, ret)))
    return twins


def template_path(name):
    return os.path.join(TEMPLATES, name)


def render(name, /, **holes):
    """Fill the template ``templates/<name>`` with ``holes`` (a hole may be
    called ``name`` too: the template's name is positional only).

    A template can insert another one, with the same holes and more:
    ``{{include("other.tp", extra=value)}}`` on a line of its own stands for
    the other template's lines.
    """
    path = template_path(name)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    text = _BLANK_LINE.sub("{{''}}", _COMMENT_LINE.sub("", text))

    def include(other, /, **more):
        out = render(other, **{**holes, **more})
        return out[:-1] if out.endswith("\n") else out

    return Tempita.Template(text, name=path).substitute(include=include, **holes)


def source_digest(paths, texts):
    """16 hex digits of sha256 over the files at ``paths`` (by base name and
    content, so the hash does not depend on where the tree lies) and ``texts``."""
    h = hashlib.sha256()
    for path in sorted(set(os.path.abspath(p) for p in paths)):
        with open(path, "rb") as fh:
            data = fh.read()
        h.update(os.path.basename(path).encode() + b"\0" + data + b"\0")
    for text in texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:16]
