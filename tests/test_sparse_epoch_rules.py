"""The sparse epochs written once (kernels/sparse_epoch_rules.py, issue 14
item 4): the lazy/linear ("rows") and scaled modes' loop in the rule
language's "epoch" kind with the tables rulelang.epoch.SPARSE, both targets
generated from it, the golden snapshot of one generated Cython loop, and that
no template writes the sparse minibatch loop by hand any more.

Golden snapshot: tests/golden/sparse_epoch_cython_rows_f64_i64.pyx is the
loop the Cython generator emits for the rows epoch (float64, int64 indices).
Regenerate it with ``python tests/test_sparse_epoch_rules.py`` after an
intended change and commit it.
"""

import os
import re
import runpy

import pytest

from optkern.kernels import rulelang, sparse_epoch_rules
from optkern.kernels.rulelang import epoch as E
from optkern.kernels.rulelang.tables import (CYTHON_SPARSE_EPOCH, NUMBA_SPARSE_EPOCH,
                                             SPARSE_EPOCH_BLOCKS)

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(os.path.dirname(HERE), "kernels")
GOLDEN = os.path.join(HERE, "golden", "sparse_epoch_cython_rows_f64_i64.pyx")

# stand-ins, for the names of the small epochs below
begin_block = collect_touched = update_touched = None

SECTIONS = {name: f"{name}_code()" for name in SPARSE_EPOCH_BLOCKS}
SECTIONS["epoch_return"] = "out({1}, {2})\nreturn {0}"


def _generator():
    # (the generator imports its sibling generate_epochs by name: leave no
    # such module behind for the tests that load a copy of the generators)
    import sys
    before = sys.modules.get("generate_epochs")
    try:
        return runpy.run_path(os.path.join(KERNELS, "cython", "generate_sparse_epochs.py"))
    finally:
        if before is None:
            sys.modules.pop("generate_epochs", None)
        else:
            sys.modules["generate_epochs"] = before


def _generated_loop(kind="rows"):
    gen = _generator()
    rules = gen["_ge"]._load("_optkern_rules_for_sparse_golden", "rules.py")
    decls, loops = gen["epoch_loops"](sparse_epoch_rules.sparse_epoch, rules)
    return "\n".join(decls[kind, "f64", "i64"] + [""] + loops[kind, "f64", "i64"]) + "\n"


def test_the_sparse_epoch_binds_every_primitive_on_both_targets():
    body = E.numba_text(sparse_epoch_rules.sparse_epoch,
                        {n: f"pass  # {n}" for n in SPARSE_EPOCH_BLOCKS}, epoch=E.SPARSE)
    for name in list(SPARSE_EPOCH_BLOCKS) + ["schedule_factor", "noise_key", "has_intercept"]:
        assert not re.search(rf"\b{name}\(", body), name
    assert "for r0 in range(start, stop, batch_size):" in body
    assert "return math.nan, step - step0, avg_count, scalarsW, scalarsB" in body
    em = E.CythonEpochEmitter(sparse_epoch_rules.sparse_epoch, SECTIONS, epoch=E.SPARSE)
    text = "\n".join(em.body())
    # the block's rows as a while whose continue steps first
    assert "    r0 = start\n    while r0 < stop:" in text
    assert "            r0 = r0 + batch_size\n            continue" in text
    assert "(_step_key(seed, step) if has_seed else 0)" in text
    assert em.types["r0"] == em.types["step"] == "int" and em.types["pen"] == "real"
    assert set(CYTHON_SPARSE_EPOCH) >= set(SPARSE_EPOCH_BLOCKS) | {"return"}
    assert set(NUMBA_SPARSE_EPOCH) >= set(SPARSE_EPOCH_BLOCKS) | {"return"}


def bad_sparse_primitive(start, stop, batch_size):
    for r0 in range(start, stop, batch_size):
        collect_touched(r0, stop)
    return 0.0, 0, 0


def bad_dense_parameter(start, stop, batch_size, data):
    return 0.0, 0, 0


def test_constructs_outside_the_sparse_subset_raise_one_clear_error():
    import inspect
    first = inspect.getsourcelines(bad_sparse_primitive)[1]
    with pytest.raises(rulelang.RuleError) as err:
        E.CythonEpochEmitter(bad_sparse_primitive, SECTIONS, epoch=E.SPARSE)
    assert (f"line {first + 2}: a call of the primitive collect_touched other than "
            "'collect_touched(r0, r1)' is not in the rule language") in str(err.value)
    with pytest.raises(rulelang.RuleError, match=r"the parameters \['data'\] are not an "
                       r"epoch's \(tables.SPARSE_EPOCH_PARAMS"):
        E.numba_text(bad_dense_parameter, {}, epoch=E.SPARSE)
    # the dense epoch's tables know none of the sparse primitives
    with pytest.raises(rulelang.RuleError, match="line 49: the statement Expr"):
        E.parse(sparse_epoch_rules.sparse_epoch)


def test_sparse_cython_loop_matches_the_golden_snapshot():
    with open(GOLDEN, encoding="utf-8") as fh:
        expected = fh.read()
    assert _generated_loop() == expected, (
        "the generated Cython sparse epoch loop changed: if intended, run "
        "`python tests/test_sparse_epoch_rules.py` and commit "
        "tests/golden/sparse_epoch_cython_rows_f64_i64.pyx")


def test_the_built_cython_sparse_epochs_hold_the_generated_loops():
    path = os.path.join(KERNELS, "cython", "_sparse_epochs.pyx")
    if not os.path.exists(path):
        pytest.skip("the Cython kernels are not built here")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    for kind in ("rows", "scaled"):
        assert _generated_loop(kind).split("\n\n", 1)[1] in text, kind


def _read(*parts):
    with open(os.path.join(KERNELS, *parts), encoding="utf-8") as fh:
        return fh.read()


def test_no_template_writes_the_sparse_minibatch_loop_by_hand():
    # what only the epoch's loop does: the batch loss and its finite check,
    # the running mean, the averaging weight, the step count, the minibatch
    # range
    loop = re.compile(r"\bbatch_loss\s*=|isfinite\(batch_loss|\bw_avg\s*=|"
                      r"\btotal\s*(\+)?=|\bstep\s*(\+=|=\s*step\s*\+)|"
                      r"for\s+r0\s+in\s+range\(|\bavg_count\s*\+=|"
                      r"while\s+bstart\b|noise_key_jit\(|_step_key\(seed")
    for parts in (("cython", "templates", "_sparse_epochs.pyx.tp"),
                  ("cython", "templates", "sparse_epoch_primitives.pyx.tp"),
                  ("cython", "generate_sparse_epochs.py"),
                  ("templates", "sparse_epoch.py"), ("templates", "sparse_epoch_rows.py"),
                  ("templates", "sparse_epoch_scaled.py"), ("templates", "sparse_epoch_parts.py"),
                  ("sparse_epoch_drivers.py",)):
        assert not loop.search(_read(*parts)), (parts, loop.search(_read(*parts)))
    # the one definition
    assert loop.search(_read("sparse_epoch_rules.py"))


def test_the_numba_sparse_epochs_paste_the_written_loop():
    from optkern.kernels import sparse_epoch_drivers
    text = sparse_epoch_drivers._source("log", "sgd")
    assert "HOLE_" not in text
    # rows, rows_k1, scaled (general and per example), scaled_k1 (both)
    assert text.count("for r0 in range(start, stop, batch_size):") == 6
    assert text.count("if not math.isfinite(batch_loss):") == 6


def test_show_prints_the_sparse_epoch():
    from optkern.kernels.__main__ import show
    text = show("sparse_epoch:log:sgd:scaled", "numba")
    assert "def sparse_epoch(" in text and "def epoch_scaled(" in text
    assert "def epoch_scaled_k1(" in text
    if os.path.exists(os.path.join(KERNELS, "cython", "_sparse_epochs.pyx")):
        text = show("sparse_epoch", "cython")
        assert "def sparse_epoch(" in text and "cdef double _rows_f64_i64(" in text
    with pytest.raises(SystemExit, match="MODE rows or scaled"):
        show("sparse_epoch:log:sgd:dense", "numba")


if __name__ == "__main__":
    with open(GOLDEN, "w", encoding="utf-8") as fh:
        fh.write(_generated_loop())
    print(f"wrote {GOLDEN}")
