"""Every fenced Python example in README.md and docs/*.md runs as written.

Each block is a complete program: it is written to a fresh folder and run in
a new interpreter (so a block cannot lean on another's names or on the test
session's state); a block that quotes a number asserts it.  A block fails
the test with its own traceback.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text[:m.start()].count("\n") + 1
            out.append(pytest.param(m.group(1), id=f"{path.relative_to(ROOT)}:{line}"))
    return out


BLOCKS = _blocks()


def test_the_docs_have_examples():
    # the extraction itself: a change of fence style must not silently empty the suite
    assert len(BLOCKS) >= 10


@pytest.mark.xdist_group("docs")
@pytest.mark.parametrize("code", BLOCKS)
def test_example_runs_as_written(code, tmp_path):
    (tmp_path / "example.py").write_text(code)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"the example failed:\n{code}\n--- stderr ---\n{r.stderr[-4000:]}"
