"""The asv benchmarks never rot: import every module under asv_benchmarks/benchmarks/
and run every benchmark once, at its smallest sizes.

Not a measurement.  For each benchmark class, parameter axes whose values are
all numbers (sizes) are reduced to their smallest value; every value of the
other axes (optimizer, backend, ...) is covered at least once, with the other
axes at their first value.  ``setup`` raising NotImplementedError is asv's
"skip" and is honoured.  ``track_*`` results must be finite and positive.
OPTKERN_BENCH_SMOKE=1 shortens the benchmarks' own sampling loops.

``timeraw_*`` benchmarks (bench_startup) return code: it is run once in a
fresh interpreter, as asv does.  The regression gate (asv_benchmarks/gate.py)
is checked without asv: its command line, its reading of asv's output and its
exit statuses.
"""

import importlib
import inspect
import itertools
import math
import numbers
import os
import pkgutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASV_DIR = os.path.join(ROOT, "asv_benchmarks")
BENCH_DIR = os.path.join(ASV_DIR, "benchmarks")

PREFIXES = ("time_", "timeraw_", "track_", "mem_", "peakmem_")

os.environ["OPTKERN_BENCH_SMOKE"] = "1"
if ASV_DIR not in sys.path:
    sys.path.insert(0, ASV_DIR)


def _module_names():
    return sorted(m.name for m in pkgutil.iter_modules([BENCH_DIR]))


def _import(name):
    return importlib.import_module(f"benchmarks.{name}")


def _axes(params):
    """asv's ``params``: a list of lists (one per axis) or one plain list."""
    if not params:
        return []
    if all(isinstance(p, (list, tuple)) for p in params):
        return [list(p) for p in params]
    return [list(params)]


def _is_size_axis(values):
    return all(isinstance(v, numbers.Number) and not isinstance(v, bool)
               for v in values)


def _combinations(params):
    """A small covering set of parameter combinations (see module docstring)."""
    axes = _axes(params)
    if not axes:
        return [()]
    axes = [[min(ax)] if _is_size_axis(ax) else ax for ax in axes]
    first = [ax[0] for ax in axes]
    combos = [tuple(first)]
    for i, ax in enumerate(axes):
        for v in ax[1:]:
            c = list(first)
            c[i] = v
            combos.append(tuple(c))
    return list(dict.fromkeys(combos))


def _benchmark_names(obj):
    return [n for n in dir(obj) if n.startswith(PREFIXES) and callable(getattr(obj, n))]


def _cases():
    cases = []
    for modname in _module_names():
        mod = _import(modname)
        for name, obj in vars(mod).items():
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj) and _benchmark_names(obj):
                for combo in _combinations(getattr(obj, "params", [])):
                    cases.append(pytest.param(modname, name, combo,
                                              id=f"{modname}.{name}{list(combo)}"))
            elif inspect.isfunction(obj) and name.startswith(PREFIXES):
                for combo in _combinations(getattr(obj, "params", [])):
                    cases.append(pytest.param(modname, name, combo,
                                              id=f"{modname}.{name}{list(combo)}"))
    return cases


def test_every_module_imports():
    names = _module_names()
    assert {"bench_updates", "bench_losses", "bench_epochs", "bench_startup",
            "probes"} <= set(names)
    for name in names:
        _import(name)


def _check_result(label, value):
    assert isinstance(value, numbers.Real) and not isinstance(value, bool), \
        f"{label} returned {value!r}, not a number"
    assert math.isfinite(value) and value > 0, f"{label} returned {value!r}"


def _run(label, fn, args, cache_args):
    result = fn(*cache_args, *args)
    if label.rsplit(".", 1)[-1].startswith("timeraw_"):
        # asv runs the returned code in a fresh interpreter
        code = result if isinstance(result, str) else result[0]
        setup_code = "" if isinstance(result, str) else result[1]
        proc = subprocess.run([sys.executable, "-c", setup_code + "\n" + code],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": ASV_DIR})
        assert proc.returncode == 0, proc.stderr
    elif label.rsplit(".", 1)[-1].startswith("track_"):
        _check_result(label, result)


@pytest.mark.parametrize("modname, name, combo", _cases())
def test_benchmark_runs_once(modname, name, combo):
    mod = _import(modname)
    obj = getattr(mod, name)
    if inspect.isfunction(obj):
        if hasattr(mod, "setup"):
            try:
                mod.setup(*combo)
            except NotImplementedError as exc:
                pytest.skip(f"setup skipped: {exc}")
        _run(f"{modname}.{name}", obj, combo, ())
        if hasattr(mod, "teardown"):
            mod.teardown(*combo)
        return
    cache_args = ()
    if hasattr(obj, "setup_cache"):
        cache_args = (obj().setup_cache(),)
    ran = 0
    for method in _benchmark_names(obj):
        bench = obj()  # asv runs each benchmark in its own instance (and process)
        if hasattr(bench, "setup"):
            try:
                bench.setup(*cache_args, *combo)
            except NotImplementedError as exc:
                pytest.skip(f"setup skipped: {exc}")
        try:
            _run(f"{modname}.{name}.{method}", getattr(bench, method), combo, cache_args)
            ran += 1
        finally:
            if hasattr(bench, "teardown"):
                bench.teardown(*cache_args, *combo)
    assert ran


def test_params_are_well_formed():
    """param_names matches params, and parameter values have distinct reprs
    (asv keys results by repr)."""
    for modname in _module_names():
        mod = _import(modname)
        for name, obj in vars(mod).items():
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            params = getattr(obj, "params", None)
            if not params:
                continue
            axes = _axes(params)
            names = getattr(obj, "param_names", None)
            if names is not None:
                assert len(names) == len(axes), f"{modname}.{name}: param_names/params"
            for ax in axes:
                reprs = [repr(v) for v in ax]
                assert len(set(reprs)) == len(reprs), f"{modname}.{name}: {ax}"


def test_combinations_cover_every_value():
    combos = _combinations([["a", "b"], ["x", "y", "z"], [10, 1, 100]])
    assert len(combos) == 4
    assert {c[0] for c in combos} == {"a", "b"}
    assert {c[1] for c in combos} == {"x", "y", "z"}
    assert {c[2] for c in combos} == {1}
    assert list(itertools.chain(_combinations([]))) == [()]


def _gate():
    return importlib.import_module("gate")


def test_gate_builds_asv_continuous_command():
    gate = _gate()
    cmd = gate.build_command(["asv"], "aaa", "bbb", 1.1, ["UpdateStep", "Fit"], True)
    assert cmd[:2] == ["asv", "continuous"]
    assert cmd[cmd.index("--factor") + 1] == "1.1"
    assert cmd[-2:] == ["aaa", "bbb"]
    assert cmd.count("--bench") == 2 and "--quick" in cmd


ASV_SLOWER = """\
| Change   | Before [a224c713] <main~9>   | After [0a18581e] <main~10>   | Ratio   | Benchmark (Parameter)                                  |
|----------|------------------------------|------------------------------|---------|--------------------------------------------------------|
| +        | 6.72\u00b10.1\u03bcs                   | 9.34\u00b10.5\u03bcs                   | 1.39    | bench_updates.UpdateStep.time_step('adam', 'numba', 1000) |
|          | n/a                          | n/a                          | n/a     | bench_updates.UpdateStep.time_step('sgd', 'numba', 1000) |

SOME BENCHMARKS HAVE CHANGED SIGNIFICANTLY.
PERFORMANCE DECREASED.
"""


def test_gate_verdict_and_filter():
    gate = _gate()
    assert gate.verdict(ASV_SLOWER, 1) == gate.EXIT_SLOWER == 1
    same = ASV_SLOWER.replace("| +  ", "|    ").rsplit("SOME", 1)[0] + \
        "BENCHMARKS NOT SIGNIFICANTLY CHANGED.\n"
    assert gate.verdict(same, 0) == gate.EXIT_OK == 0
    assert gate.verdict("Error: no benchmarks selected\n", 1) == gate.EXIT_ERROR == 2
    lines = ASV_SLOWER.splitlines()
    assert [gate.not_run(line) for line in lines[2:4]] == [False, True]
    # a row of asv's per-benchmark parameter table (as printed by asv 0.6.6)
    pad = " " * 18
    assert gate.not_run(pad + "sgd            numpy           1000         n/a     ")
    assert not gate.not_run(pad + "adam           numba          100000     48.8\u00b10.5\u03bcs ")


def test_gate_command_line(monkeypatch, capsys):
    gate = _gate()
    monkeypatch.setattr(gate, "_asv_command", lambda: ["asv"])
    assert gate.main(["HEAD", "HEAD", "--dry-run", "--bench", "Fit"]) == 0
    out = capsys.readouterr().out
    assert "asv continuous --factor 1.1" in out and "--bench Fit" in out
    assert gate.main(["no-such-revision-xyz", "HEAD", "--dry-run"]) == 2
    assert "unknown git revision" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gate.main(["--factor", "0.9"])
    monkeypatch.setattr(gate, "_asv_command", lambda: None)
    assert gate.main(["HEAD", "HEAD", "--dry-run"]) == 2
    assert "optkern[bench]" in capsys.readouterr().err
