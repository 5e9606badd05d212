"""The Numba driver templates (kernels/templates/), the golden snapshot of one
rule's generated code, and ``python -m optkern.kernels show``.

Golden snapshot: tests/golden/adam_numba.py is the module kernels/drivers.py
generates for Adam, with its digest line masked (the digest moves with every
source edit; the code is what review should see change).  A change to the
generated code fails ``test_adam_numba_matches_the_golden_snapshot`` and shows
as a diff of that file.  To change it on purpose, regenerate it with
``python tests/test_templates.py`` and commit the diff with the change.
"""

import ast
import importlib
import os
import shutil
import subprocess
import sys

import pytest

from optkern.kernels import drivers, loss_drivers, rules, templates
from optkern.kernels import __main__ as kernels_main

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "adam_numba.py")
TEMPLATE_NAMES = sorted(f[:-3] for f in os.listdir(templates.DIRECTORY)
                        if f.endswith(".py") and f != "__init__.py")


def _masked(text):
    lines = text.split("\n")
    assert lines[1].startswith("# sources digest: ")
    lines[1] = "# sources digest: (masked: changes with every source edit)"
    return "\n".join(lines)


def golden_text():
    return _masked(drivers._source(rules.RULES["adam"]))


def test_adam_numba_matches_the_golden_snapshot():
    with open(GOLDEN, encoding="utf-8") as fh:
        expected = fh.read()
    assert golden_text() == expected, (
        "the generated Numba code of adam changed; if on purpose, run "
        "`python tests/test_templates.py` and commit tests/golden/adam_numba.py")


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_template_parses_and_imports(name):
    with open(templates.path(name), encoding="utf-8") as fh:
        ast.parse(fh.read())
    importlib.import_module(f"optkern.kernels.templates.{name}")


@pytest.mark.parametrize("name", sorted(rules.RULES))
def test_filled_templates_parse_and_leave_no_hole(name):
    from optkern.kernels import sparse_drivers
    for text in (drivers._source(rules.RULES[name]), sparse_drivers._source(rules.RULES[name])):
        ast.parse(text)
        assert "HOLE_" not in text and "template-only" not in text


def _epoch_cases():
    from optkern.kernels import loss_rules
    losses = sorted(loss_rules.LOSS_RULES)
    return ([(loss, "adam") for loss in losses]
            + [(losses[0], name) for name in sorted(rules.RULES) if name != "adam"])


@pytest.mark.parametrize("loss,rule", _epoch_cases())
def test_filled_epoch_templates_parse_and_leave_no_hole(loss, rule):
    from optkern.kernels import epoch_drivers, sparse_epoch_drivers
    for text in (epoch_drivers._source(loss, rule, "dense"),
                 epoch_drivers._source(loss, rule, "csr"),
                 sparse_epoch_drivers._source(loss, rule)):
        ast.parse(text.replace(", ,", ","))   # (a rule without states: _files.load_generated)
        assert "HOLE_" not in text and "template-only" not in text


# which of (dense epoch, CSR epoch, sparse epoch) each epoch template is read by
_EPOCH_TEMPLATES = {
    "epoch": (True, True, False), "epoch_parts": (True, True, True),
    "epoch_batch_csr": (True, True, False), "epoch_batch_dense": (True, True, False),
    "epoch_lanes": (True, True, False), "sparse_epoch": (False, False, True),
    "sparse_epoch_parts": (False, False, True), "sparse_epoch_rows": (False, False, True),
    "sparse_epoch_scaled": (False, False, True),
}


@pytest.mark.parametrize("template", sorted(_EPOCH_TEMPLATES))
def test_the_epoch_digests_cover_their_templates(template, tmp_path, monkeypatch):
    """Editing an epoch template gives the generated epochs that read it a new
    digest (the cache key), and leaves the others' alone."""
    from optkern.kernels import epoch_drivers, sparse_epoch_drivers

    def digests():
        return [text.split("\n")[1] for text in (
            epoch_drivers._source("softmax", "adam", "dense"),
            epoch_drivers._source("log", "sgd", "csr"),
            sparse_epoch_drivers._source("log", "sgd"))]

    copy = tmp_path / "templates"    # (a file's path is hashed too: compare copies)
    shutil.copytree(templates.DIRECTORY, copy)
    monkeypatch.setattr(templates, "DIRECTORY", str(copy))
    before = digests()
    with open(copy / f"{template}.py", "a", encoding="utf-8") as fh:
        fh.write("# an edit\n")
    after = digests()
    assert tuple(a != b for a, b in zip(after, before)) == _EPOCH_TEMPLATES[template]


def test_snippets_parse_a_template_once_and_see_an_edit(tmp_path, monkeypatch):
    """A process makes a module's text from many snippets of one template:
    the template is parsed once, and an edited template (new size or mtime)
    is read and parsed again."""
    copy = tmp_path / "templates"
    shutil.copytree(templates.DIRECTORY, copy)
    monkeypatch.setattr(templates, "DIRECTORY", str(copy))
    parses = []
    real_parse = ast.parse
    monkeypatch.setattr(templates.ast, "parse",
                        lambda text, *a, **kw: parses.append(1) or real_parse(text, *a, **kw))
    first = templates.snippet("epoch_parts", "scalar_loss")
    assert templates.snippet("epoch_parts", "row_loss") != first
    assert templates.snippet("epoch_parts", "scalar_loss") == first
    assert len(parses) == 1
    with pytest.raises(KeyError, match="no function 'nothing' in template 'epoch_parts'"):
        templates.snippet("epoch_parts", "nothing")
    path = copy / "epoch_parts.py"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("def scalar_loss():\n",
                                 "def scalar_loss():\n    edited = 1\n", 1), encoding="utf-8")
    assert templates.snippet("epoch_parts", "scalar_loss") == "edited = 1\n" + first
    assert len(parses) == 2


def test_fill_refuses_a_missing_or_an_unused_hole():
    text = "def f(a, HOLE_ARGS):\n    HOLE_BODY\n"
    assert templates.substitute(text, {"args": "b, c", "body": "x = 1\ny = 2"}) == (
        "def f(a, b, c):\n    x = 1\n    y = 2\n")
    with pytest.raises(KeyError, match="HOLE_BODY"):
        templates.substitute(text, {"args": "b"})
    with pytest.raises(KeyError, match="extra"):
        templates.substitute(text, {"args": "b", "body": "pass", "extra": "1"})


@pytest.mark.parametrize("target,present,absent", [
    ("numba", ["def adam_rule(", "def adam_prepare(", "def _loop_serial(", "def serial(",
               "def serial_checked(", "def functional("], ["def parallel(", "cuda.jit"]),
    ("numba-parallel", ["def adam_rule(", "def _loop_parallel(", "def parallel(",
                        "def parallel_checked(", "prange"], ["def serial(", "cuda.jit"]),
    ("cuda", ["def adam_rule(", "def make_cuda_kernel(", "cuda.grid(1)"], ["def serial("]),
])
def test_show_prints_the_generated_functions_of_a_target(target, present, absent):
    text = kernels_main.show("adam", target)
    for needle in present:
        assert needle in text, needle
    for needle in absent:
        assert needle not in text, needle
    # every generated block shown is the generated file's text, verbatim
    generated = drivers.module_for("adam").__file__
    with open(generated, encoding="utf-8") as fh:
        source = fh.read()
    blocks = text.split("# ---- ")[1:]
    shown = [b.split("\n", 1)[1].rstrip("\n") for b in blocks if b.startswith(generated)]
    assert shown and all(block in source for block in shown)


def test_show_a_loss():
    text = kernels_main.show("loss:softmax", "numba")
    assert "def dense_serial(" in text and "def csr_serial(" in text
    assert "def dense_parallel(" not in text
    with open(loss_drivers.module_for("softmax").__file__, encoding="utf-8") as fh:
        assert text.split("(dense_serial)\n", 1)[1].split("\n\n# ---- ")[0] in fh.read()


def test_show_cython_takes_the_rules_functions_from_the_built_pyx():
    pyx = os.path.join(os.path.dirname(drivers.__file__), "cython", "_updates.pyx")
    if not os.path.exists(pyx):
        pytest.skip("the Cython kernels are not built in this checkout")
    text = kernels_main.show("adam", "cython")
    assert "adam_loop_f32(" in text and "adam_loop_f64(" in text and "\ndef adam(" in text
    assert "adamax" not in text and "nadam" not in text
    with open(pyx, encoding="utf-8") as fh:
        source = fh.read()
    for block in text.split("# ---- ")[1:]:
        assert block.split("\n", 1)[1].rstrip("\n") in source


def test_show_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "optkern.kernels", "show", "sgd",
                          "--target", "numba"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "def sgd_rule(" in out.stdout and "def _loop_serial(" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "optkern.kernels", "show", "nosuchrule"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown rule 'nosuchrule'" in bad.stderr


if __name__ == "__main__":
    with open(GOLDEN, "w", encoding="utf-8") as fh:
        fh.write(golden_text())
    print(f"wrote {GOLDEN}")
