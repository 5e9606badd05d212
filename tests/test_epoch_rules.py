"""The minibatch epoch written once (kernels/epoch_rules.py, issue 14 item 4):
the rule language's "epoch" kind, its two emitters (rulelang/epoch.py), the
golden snapshot of the generated Cython loop, and that no template writes
the loop a second time.

Golden snapshot: tests/golden/epoch_cython_dense_f64.pyx is the loop the
Cython generator emits for the dense float64 epoch.  Regenerate it with
``python tests/test_epoch_rules.py`` after an intended change and commit it.
"""

import ast
import math  # noqa: F401 (the epochs below read math.isfinite, math.nan)
import os
import re

import pytest

from optkern.kernels import epoch_rules, rulelang
from optkern.kernels.rulelang import epoch as E
from optkern.kernels.rulelang.tables import CYTHON_EPOCH, EPOCH_BLOCKS, NUMBA_EPOCH

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(os.path.dirname(HERE), "kernels")
GOLDEN = os.path.join(HERE, "golden", "epoch_cython_dense_f64.pyx")

# stand-ins, for the names of the small epochs below
batch_pass = finish_gradients = prepare_w = update_w = prepare_b = update_b = None
schedule_factor = noise_key = has_intercept = None

SECTIONS = {name: f"{name}_code()" for name in EPOCH_BLOCKS}
SECTIONS["epoch_return"] = "out({1}, {2})\nreturn {0}"


def small(n, batch_size, step0, w_mean):
    step = step0
    total = 0.0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        lsum, wsum = batch_pass(start, stop)
        if wsum <= 0.0:
            continue
        j = 0
        while j < 2:
            j += 1
        inv = 1.0 / ((stop - start) * w_mean)
        if not math.isfinite(lsum * inv):
            return math.nan, step - step0, 0
        total += lsum * inv
        step += 1
    return total, step - step0, 0


def test_cython_emitter_translates_loops_continue_returns_and_primitives():
    em = E.CythonEpochEmitter(small, SECTIONS)
    assert em.decls() == ["    cdef int64_t step, start, stop, j",
                          "    cdef double total, inv, lsum, wsum"]
    assert em.body() == [
        "    step = step0",
        "    total = 0.0",
        "    start = 0",
        "    while start < n:",
        "        stop = (n if n < (start + batch_size) else (start + batch_size))",
        "        batch_pass_code()",
        "        if (wsum <= 0.0):",
        # the stepped range's continue steps first
        "            start = start + batch_size",
        "            continue",
        "        j = 0",
        "        while (j < 2):",
        "            j = (j + 1)",
        "        inv = (1.0 / ((stop - start) * w_mean))",
        "        if (not isfinite((lsum * inv))):",
        "            out((step - step0), 0)",
        "            return NAN",
        "        total = (total + (lsum * inv))",
        "        step = (step + 1)",
        "        start = start + batch_size",
        "    out((step - step0), 0)",
        "    return total",
    ]


def test_numba_text_is_the_epoch_as_written_with_its_primitives_bound():
    table = dict(NUMBA_EPOCH, batch_pass="bp")
    text = E.numba_text(small, {"bp": "lsum = 1.0\nwsum = 2.0"}, table)
    lines = text.split("\n")
    assert lines[0] == "step = step0"
    assert "for start in range(0, n, batch_size):" in lines
    i = lines.index("    lsum = 1.0")
    assert lines[i + 1] == "    wsum = 2.0"
    assert "        return math.nan, step - step0, 0, scalarsW, scalarsB" in lines
    assert lines[-1] == "return total, step - step0, 0, scalarsW, scalarsB"
    ast.parse(text)


def test_the_real_epoch_binds_every_primitive_on_both_targets():
    body = E.numba_text(epoch_rules.minibatch_epoch, {n: f"pass  # {n}" for n in EPOCH_BLOCKS})
    for name in list(EPOCH_BLOCKS) + ["schedule_factor", "noise_key", "has_intercept"]:
        assert not re.search(rf"\b{name}\(", body), name
    assert "_schedule(sched[0], float(step)" in body and "noise_key_jit(seed, step)" in body
    sections = dict(SECTIONS)
    em = E.CythonEpochEmitter(epoch_rules.minibatch_epoch, sections)
    text = "\n".join(em.body())
    assert "_schedule_factor(sched[0], (<double>step)" in text
    assert "(_step_key(seed, step) if has_seed else 0)" in text
    assert "if (b != NULL):" in text
    assert em.types["key"] == "key" and em.types["averaging"] == "bool"
    assert set(CYTHON_EPOCH) >= set(EPOCH_BLOCKS) | {"return"}


def _error(fn):
    with pytest.raises(rulelang.RuleError) as err:
        E.CythonEpochEmitter(fn, SECTIONS).body()
    return str(err.value)


def bad_break(n, batch_size):
    for start in range(0, n, batch_size):
        break
    return 0.0, 0, 0


def bad_primitive_arguments(n, batch_size):
    for start in range(0, n, batch_size):
        stop = start + 1
        lsum, wsum = batch_pass(stop, start)
    return 0.0, 0, 0


def bad_primitive_in_expression(n):
    x = 1.0 + finish_gradients(n)
    return x, 0, 0


def bad_return(n):
    return 0.0, n


def bad_loop_variable(n, batch_size):
    for start in range(0, n, batch_size):
        start = 3
    return 0.0, 0, 0


def bad_parameter(n, data):
    return 0.0, 0, 0


def bad_stop(n, batch_size):
    m = n
    for start in range(0, m, batch_size):
        pass
    return 0.0, 0, 0


@pytest.mark.parametrize("fn, message", [
    (bad_break, "line {}: the statement Break is not in the rule language (docs/rules.md)"),
    (bad_primitive_arguments,
     "line {}: a call of the primitive batch_pass other than "
     "'lsum, wsum = batch_pass(start, stop)' is not in the rule language"),
    (bad_primitive_in_expression, "line {}: the primitive finish_gradients inside an expression"),
    (bad_return, "line {}: a return of other than (mean loss, steps, averaging count)"),
    (bad_loop_variable, "line {}: an assignment to the loop variable 'start' in its loop"),
    (bad_stop, "line {}: a stepped range's stop or step other than a parameter or a constant"),
])
def test_constructs_outside_the_epoch_subset_raise_one_clear_error(fn, message):
    import inspect
    lines, first = inspect.getsourcelines(fn)
    # the offending line, counted from the def
    at = {"bad_primitive_arguments": 3, "bad_break": 2, "bad_stop": 2}.get(fn.__name__, 1)
    got = _error(fn)
    assert f"rule {fn.__name__!r}" in got
    assert message.format(first + at) in got, got


def test_an_epoch_takes_only_the_epochs_parameters():
    assert "the parameters ['data'] are not an epoch's" in _error(bad_parameter)


def test_other_kinds_still_refuse_loops_and_continue():
    def host(step, lr):
        while step > 0:
            step = step - 1
        return lr
    with pytest.raises(rulelang.RuleError, match="the statement While is not in the rule"):
        rulelang.parse(host, "host")


def _generated_loop():
    import runpy
    gen = runpy.run_path(os.path.join(KERNELS, "cython", "generate_epochs.py"))
    decls, loops = gen["epoch_loops"](epoch_rules.minibatch_epoch)
    return "\n".join(decls["dense", "f64"] + [""] + loops["dense", "f64"]) + "\n"


def test_cython_epoch_loop_matches_the_golden_snapshot():
    with open(GOLDEN, encoding="utf-8") as fh:
        expected = fh.read()
    assert _generated_loop() == expected, (
        "the generated Cython epoch loop changed: if intended, run "
        "`python tests/test_epoch_rules.py` and commit tests/golden/epoch_cython_dense_f64.pyx")


def test_the_cython_epoch_keeps_the_written_comments():
    # every comment of the epoch's body as written stands in the Cython loop,
    # in order, with the statement it precedes after it
    import inspect
    body = inspect.getsource(epoch_rules.minibatch_epoch).splitlines()
    comments = [line.strip() for line in body if line.strip().startswith("#")]
    assert len(comments) >= 4
    loop = [line.strip() for line in _generated_loop().splitlines()]
    at = [loop.index(c) for c in comments]
    assert at == sorted(at)
    estimate = loop.index(comments[0])
    assert loop[estimate + 3].startswith("inv = ")


def _read(*parts):
    with open(os.path.join(KERNELS, *parts), encoding="utf-8") as fh:
        return fh.read()


def test_no_template_writes_the_minibatch_loop_again():
    # what only the epoch's loop does: the batch loss's finite check, the
    # running mean, the averaging weight, the step count
    loop = re.compile(r"\bbatch_loss\s*=|isfinite\(batch_loss|\bw_avg\s*=|"
                      r"\btotal\s*(\+)?=|\bstep\s*(\+=|=\s*step\s*\+)|for\s+start\s+in")
    for parts in (("cython", "templates", "_epochs.pyx.tp"),
                  ("cython", "templates", "epoch_primitives.pyx.tp"),
                  ("templates", "epoch_parts.py"), ("templates", "epoch.py"),
                  ("epoch_drivers.py",), ("cython", "generate_epochs.py")):
        assert not loop.search(_read(*parts)), parts
    # the one definition
    assert loop.search(_read("epoch_rules.py"))


def test_the_built_cython_epoch_holds_the_generated_loop():
    path = os.path.join(KERNELS, "cython", "_epochs.pyx")
    if not os.path.exists(path):
        pytest.skip("the Cython kernels are not built here")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert _generated_loop().split("\n\n", 1)[1] in text


if __name__ == "__main__":
    with open(GOLDEN, "w", encoding="utf-8") as fh:
        fh.write(_generated_loop())
    print(f"wrote {GOLDEN}")
