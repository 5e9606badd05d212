"""The Cython generators' templates (kernels/cython/templates/*.tp) and the
SOURCE_HASH that marks a build stale when any of its sources changes."""
import importlib.util
import os
import shutil
import sys

import pytest

pytest.importorskip("Cython")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels")


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def templates(tmp_path, monkeypatch):
    mod = _load(os.path.join(KERNELS, "cython", "_templates.py"), "_optkern_templates_under_test")
    monkeypatch.setattr(mod, "TEMPLATES", str(tmp_path))
    return mod


def test_directive_lines_vanish_and_blank_lines_stay(templates, tmp_path):
    (tmp_path / "t.tp").write_text(
        "head\n\n{{for x in xs}}\n    {{# a comment line}}\n    line {{x}}\n\n{{endfor}}\n{{if flag}}\n\nyes\n{{endif}}\n\ntail\n")
    assert templates.render("t.tp", xs=[1, 2], flag=True) == (
        "head\n\n    line 1\n\n    line 2\n\n\nyes\n\ntail\n")
    assert templates.render("t.tp", xs=[], flag=False) == "head\n\n\ntail\n"


def test_include_stands_for_the_other_templates_lines(templates, tmp_path):
    (tmp_path / "part.tp").write_text("part {{name}} {{more}}\nsecond\n")
    (tmp_path / "whole.tp").write_text("a\n{{include('part.tp', more=2)}}\nb\n")
    assert templates.render("whole.tp", name="x") == "a\npart x 2\nsecond\nb\n"


def test_digest_depends_on_files_and_text(tmp_path, templates):
    f = tmp_path / "src.py"
    f.write_text("one")
    d1 = templates.source_digest([str(f)], ["text"])
    assert d1 == templates.source_digest([str(f)], ["text"])
    assert d1 != templates.source_digest([str(f)], ["other text"])
    f.write_text("two")
    assert d1 != templates.source_digest([str(f)], ["text"])


def _copy_kernels(tmp_path):
    dst = tmp_path / "kernels"
    shutil.copytree(KERNELS, dst, ignore=shutil.ignore_patterns(
        "*.so", "*.c", "*.html", "__pycache__", "_generated", "_*.pyx", "_*.pxd",
        "updates.pxd", "prepare.pxd", "prepare.pyx", "losses.pxd"))
    return dst


@pytest.mark.parametrize("generator, source_hash_args", [
    ("generate.py", ()), ("generate_epochs.py", ()), ("generate_sparse_epochs.py", ())])
def test_source_hash_changes_with_any_source_not_only_the_text(tmp_path, generator,
                                                               source_hash_args):
    # an edit that leaves the generated text as it was (a comment in the
    # generator, in a template's trailing Tempita-free line, in a rule file)
    # still changes the hash: the hash is of the sources, not of a hand-bumped
    # version number
    dst = _copy_kernels(tmp_path)
    gen_path = dst / "cython" / generator

    def state(tag):
        mod = _load(str(gen_path), f"_optkern_{generator[:-3]}_{tag}")
        texts = mod.generate()
        digest = mod.source_hash(*source_hash_args)
        return {k: v.replace(digest, "") for k, v in texts.items()}, digest

    texts0, digest0 = state("before")
    with open(gen_path, "a", encoding="utf-8") as fh:
        fh.write("\n# an edit that changes no generated text\n")
    texts1, digest1 = state("generator_edited")
    assert texts1 == texts0 and digest1 != digest0
    with open(dst / "rules.py", "a", encoding="utf-8") as fh:
        fh.write("\n# a comment in the rules\n")
    texts2, digest2 = state("rules_edited")
    assert texts2 == texts0 and digest2 not in (digest0, digest1)
    with open(dst / "cython" / "templates" / "prepare_twin.pyx.tp", "a",
              encoding="utf-8") as fh:
        fh.write("{{py: unused = 0}}\n")   # a directive line: no output
    texts3, digest3 = state("template_edited")
    # (every module includes this template: the update module for its host prepare)
    assert texts3 == texts0 and digest3 not in (digest0, digest1, digest2)


def _libc_math_names(text):
    """The names of every ``from libc.math cimport ...`` statement of a text."""
    import re

    names = set()
    for m in re.finditer(r"from libc\.math cimport (\([^)]*\)|[^\n#]*)", text):
        names.update(n.strip() for n in m.group(1).strip("()").replace("\n", " ").split(","))
    return names - {""}


def test_the_kernels_cimport_every_libc_function_the_language_maps_to():
    """A rule may use any of the language's functions (docs/rules.md); the
    ahead-of-time modules must cimport the libc names the emitters write for
    them, or a new rule using one would not compile at build time."""
    from optkern.kernels.rulelang import tables

    gen = _load(os.path.join(KERNELS, "cython", "generate.py"), "_optkern_gen_cimports")
    pxd = gen.generate()["_updates.pxd"]
    wanted = {v for family in tables.CYTHON_UPDATE.values() for v in family.values()}
    assert wanted <= _libc_math_names(pxd), wanted - _libc_math_names(pxd)
    gl = _load(os.path.join(KERNELS, "cython", "generate_losses.py"), "_optkern_genl_cimports")
    loss_pxd, loss_pyx = gl.sources()
    wanted = {v for k, v in tables.CYTHON_LOSS.items()
              if v is not None and k not in ("min", "max")}
    for text in (loss_pxd, loss_pyx):
        assert wanted <= _libc_math_names(text), wanted - _libc_math_names(text)
