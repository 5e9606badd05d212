"""Every fenced Python and shell example in README.md and docs/*.md runs as written.

Each Python block is a complete program: it is written to a fresh folder and
run in a new interpreter (so a block cannot lean on another's names or on the
test session's state).  Each ```bash block runs with ``bash -e`` in a fresh
temporary folder, with this interpreter's bin directory first on PATH (so
``optkern`` and ``python`` are the ones under test); a block that needs data
makes it itself (``optkern make-data ...``).  A block fails the test with its
own output.

A shell block that cannot run here says so in the line just above its fence::

    <!-- docs-test: skip: the reason -->

(installs into a new virtualenv, asv runs of hours, benchmarks of minutes).
Those are listed as skipped tests with their reason, never silently dropped.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!-- docs-test: skip: (.+?) -->\s*\Z")


def _blocks(lang):
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) != lang:
                continue
            line = text[:m.start()].count("\n") + 1
            marks = ()
            skip = SKIP.search(text[:m.start()])
            if skip:
                marks = (pytest.mark.skip(reason=f"docs-test: skip: {skip.group(1)}"),)
            out.append(pytest.param(m.group(2), id=f"{path.relative_to(ROOT)}:{line}",
                                    marks=marks))
    return out


BLOCKS = _blocks("python")
SHELL_BLOCKS = _blocks("bash")


def test_the_docs_have_examples():
    # the extraction itself: a change of fence style must not silently empty the suite
    assert len(BLOCKS) >= 10
    assert len(SHELL_BLOCKS) >= 10
    runnable = [p for p in SHELL_BLOCKS if not p.marks]
    assert len(runnable) >= 4, "most shell blocks are marked skip"


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.mark.xdist_group("docs")
@pytest.mark.parametrize("code", BLOCKS)
def test_example_runs_as_written(code, tmp_path):
    (tmp_path / "example.py").write_text(code)
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"the example failed:\n{code}\n--- stderr ---\n{r.stderr[-4000:]}"


@pytest.mark.xdist_group("docs")
@pytest.mark.parametrize("code", SHELL_BLOCKS)
def test_shell_example_runs_as_written(code, tmp_path):
    (tmp_path / "example.sh").write_text(code)
    r = subprocess.run(["bash", "-e", "example.sh"], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (f"the shell example failed:\n{code}\n--- stdout ---\n"
                               f"{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}")
