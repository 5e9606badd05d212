"""The generated modules' cache key covers every source they depend on.

A generated driver module carries a digest of its driver, its templates and
every kernels module they import (kernels/_files.py ``source_digest``); a
hand-written compiled module (loss_drivers.py ...) gets the same digest in
its Numba cache's stamp (kernels/_numba_cache.py); there is no hand-bumped
version.  Here the kernels package is copied to a temporary
directory, a kernel is compiled there twice (the second time from Numba's
disk cache), then a helper the kernel inlines (kernels/_helpers.py) is edited
in the copy: the generated module's digest changes, its file is rewritten and
Numba compiles the kernel again (a cache miss, a new cache entry).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import optkern
import optkern.kernels
from optkern.kernels import _files, drivers, epoch_drivers, loss_drivers, sparse_drivers
from optkern.kernels import sparse_epoch_drivers

_RUN = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import optkern.kernels
    from optkern.kernels import drivers
    assert optkern.kernels.__file__.startswith(sys.argv[1]), optkern.kernels.__file__
    mod = drivers.module_for("adagrad")
    p = np.ones(16)
    g = np.full(16, 0.5)
    s = np.zeros(16)
    mod.functional(p, g, s, 1, 0.1, 0.0, 0.0, 1e-10, False)
    with open(mod.__file__) as fh:
        header = fh.read().split("\\n")[1]
    st = mod.functional.stats
    print(json.dumps(dict(header=header, p0=float(p[0]), hits=sum(st.cache_hits.values()),
                          misses=sum(st.cache_misses.values()))))
""")


def _ignore(directory, names):
    return [n for n in names if n in ("__pycache__", "_generated", ".hypothesis")
            or n.endswith((".tmp", ".c", ".html"))]


def _run(root, cache, script=_RUN):
    env = dict(os.environ, PYTHONPATH=root, OPTKERN_CACHE_DIR=cache)
    env.pop("NUMBA_CACHE_DIR", None)    # the copy's own __pycache__ (a fresh cache)
    out = subprocess.run([sys.executable, "-c", script, root], env=env, capture_output=True,
                         text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _copy_package(tmp_path):
    """A copy of optkern with its kernels (no caches); returns (root, kernels dir)."""
    root = str(tmp_path / "pkg")
    pkg = os.path.join(root, "optkern")
    shutil.copytree(os.path.dirname(optkern.__file__), pkg, ignore=_ignore)
    shutil.rmtree(os.path.join(pkg, "kernels"), ignore_errors=True)
    shutil.copytree(os.path.dirname(optkern.kernels.__file__), os.path.join(pkg, "kernels"),
                    ignore=_ignore)
    return root, os.path.join(pkg, "kernels")


def test_editing_a_helper_recompiles_the_kernel(tmp_path):
    root, _ = _copy_package(tmp_path)
    pkg = os.path.join(root, "optkern")
    cache = str(tmp_path / "cache")
    first = _run(root, cache)
    assert first["misses"] >= 1
    again = _run(root, cache)
    assert again["header"] == first["header"]
    assert again["hits"] >= 1 and again["misses"] == 0, again
    generated = os.path.join(cache, "optkern_adagrad_drivers.py")
    with open(os.path.join(pkg, "kernels", "_helpers.py"), "a", encoding="utf-8") as fh:
        fh.write("\n# an edit: the generated modules that inline this file must recompile\n")
    edit_time = time.time()
    edited = _run(root, cache)
    assert edited["header"] != first["header"]          # a new key ...
    with open(generated, encoding="utf-8") as fh:
        assert fh.read().split("\n")[1] == edited["header"]    # ... in a rewritten file
    assert edited["misses"] >= 1 and edited["hits"] == 0, edited   # ... compiled again
    assert edited["p0"] == first["p0"]
    # and Numba saved the new compile: the index of functional was rewritten
    pycache = os.path.join(cache, "__pycache__")
    index = [n for n in os.listdir(pycache)
             if n.startswith("optkern_adagrad_drivers.functional-") and n.endswith(".nbi")]
    assert index and all(os.path.getmtime(os.path.join(pycache, n)) >= edit_time
                         for n in index), index


_RUN_PENALTY = textwrap.dedent("""
    import json, sys
    import numpy as np
    import optkern.kernels
    assert optkern.kernels.__file__.startswith(sys.argv[1]), optkern.kernels.__file__
    from optkern.kernels import loss_drivers
    W = np.ones((3, 2))
    dW = np.zeros((3, 2))
    value = loss_drivers.penalty_add(W, dW, 1.0, 0.0)
    st = loss_drivers.penalty_add.stats
    print(json.dumps(dict(value=value, dW=float(dW[0, 0]), hits=sum(st.cache_hits.values()),
                          misses=sum(st.cache_misses.values()))))
""")


def test_editing_a_helper_recompiles_a_hand_written_kernel(tmp_path):
    """A hand-written ``@njit(cache=True)`` kernel (loss_drivers.penalty_add)
    compiles in kernels/penalty.py's functions; Numba keys its cache on
    loss_drivers.py alone, so without kernels/_numba_cache.py an edit to
    penalty.py left the old machine code in __pycache__ (the new constant
    was not seen).  Now the edit is a cache miss and the new value shows."""
    root, kernels = _copy_package(tmp_path)
    cache = str(tmp_path / "cache")
    first = _run(root, cache, _RUN_PENALTY)
    assert first["value"] == 3.0 and first["misses"] >= 1      # 0.5 * |W|^2
    again = _run(root, cache, _RUN_PENALTY)
    assert again["value"] == 3.0 and again["hits"] >= 1 and again["misses"] == 0, again
    path = os.path.join(kernels, "penalty.py")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert text.count("0.5 * (1.0 - l1_ratio) * l2") == 1
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text.replace("0.5 * (1.0 - l1_ratio) * l2", "0.25 * (1.0 - l1_ratio) * l2"))
    edited = _run(root, cache, _RUN_PENALTY)
    assert edited["value"] == 1.5, edited                      # the edited constant
    assert edited["misses"] >= 1 and edited["hits"] == 0, edited
    assert edited["dW"] == first["dW"] == 1.0
    once_more = _run(root, cache, _RUN_PENALTY)                # and it was cached again
    assert once_more["value"] == 1.5 and once_more["misses"] == 0, once_more


def test_hand_written_modules_are_keyed_on_their_imports():
    """Every hand-written compiled module of the package gets the locator
    whose stamp covers the kernels sources it imports; other files do not."""
    from optkern.kernels import _numba_cache, finite
    stamp = loss_drivers.penalty_add._cache._cache_file._source_stamp
    assert stamp[1] == _numba_cache.dependency_digest(loss_drivers.__file__)
    assert stamp[1] == _files.source_digest([loss_drivers.__file__],
                                            os.path.dirname(loss_drivers.__file__))
    for fn in (finite.first_nonfinite, epoch_drivers.gathered_scores_lanes,
               sparse_epoch_drivers.penalty_value, loss_drivers.total_weight):
        assert type(fn._cache._impl.locator).__name__.startswith("Optkern"), fn
    assert not _numba_cache._ours(os.path.join(os.path.dirname(loss_drivers.__file__),
                                               "_generated", "x.py"))
    assert not _numba_cache._ours(__file__)


def test_digest_covers_what_the_generated_modules_import():
    """Every kernels module a generated module imports is in its digest."""
    here = os.path.dirname(optkern.kernels.__file__)

    def closure(roots):
        seen, todo = set(), [os.path.abspath(r) for r in roots]
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.add(path)
                todo.extend(os.path.abspath(p) for p in _files._local_imports(path, here))
        return {os.path.relpath(p, here)[:-3].replace(os.sep, ".") for p in seen}

    from optkern.kernels import loss_rules, rules
    cases = [
        (drivers._source(rules.RULES["adam"]), [drivers.__file__] + [
            drivers._templates.path(t) for t in ("update", "update_elements")]),
        (sparse_drivers._source(rules.RULES["adam"]),
         [sparse_drivers.__file__, drivers._templates.path("rows")]),
        (loss_drivers._source(loss_rules.LOSS_RULES["softmax"]), [loss_drivers.__file__]),
        (epoch_drivers._source("log", "adam", "dense"), [epoch_drivers.__file__]),
        (sparse_epoch_drivers._source("log", "adam"), [sparse_epoch_drivers.__file__]),
    ]
    import re
    for text, roots in cases:
        named = set(re.findall(r"optkern\.kernels\.([a-z_]+)", text)) - {"_generated"}
        named = {n for n in named if not n.startswith("_generated_")}
        assert named <= closure(roots), named - closure(roots)


def test_digest_follows_imports_and_contents(tmp_path):
    """source_digest hashes the contents of the roots and of what they import."""
    a = tmp_path / "a.py"
    a.write_text("from . import b\n")
    (tmp_path / "b.py").write_text("x = 1\n")
    (tmp_path / "c.py").write_text("y = 1\n")
    d1 = _files.source_digest([str(a)], str(tmp_path))
    (tmp_path / "c.py").write_text("y = 2\n")        # not imported: same key
    assert _files.source_digest([str(a)], str(tmp_path)) == d1
    (tmp_path / "b.py").write_text("x = 2\n")        # imported: a new key
    assert _files.source_digest([str(a)], str(tmp_path)) != d1
