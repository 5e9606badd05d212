"""The code of the rules and prepares that run with a prologue is cached on disk.

kernels/rules.py builds the function that runs for a rule or a prepare with a
declared prologue on first use, with the rule language's front end (loading it
costs ~4-5 ms, parsing a function 1-2 ms: most of a first Adam step on the
Cython backend).  The built code is written beside the generated drivers
(``drivers.generated_dir()``) under a key naming every source it depends on, so
a process with a warm cache builds nothing and does not import the front end.
Here: the cached function is the front end's (same code, same attributes, the
same results on random hyperparameters); a truncated, corrupt or stale file is
rebuilt; an unwritable directory builds in memory; an edited source, or another
bytecode version, gives a new key; a fresh process with a warm cache takes a
first Adam step without the front end, with the same results as a cold one.
The loss rules' lane forms likewise (kernels/rule_lanes.py ``lane_form``): a
warm process fits without the front end, the emitters or their tables.
"""

import hashlib
import importlib.util
import json
import marshal
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from optkern.kernels import _files, drivers, rulelang, rules

PROLOGUED_RULES = sorted(n for n, s in rules.RULES.items() if s.prologue)
PROLOGUED_PREPARES = sorted(n for n, s in rules.RULES.items()
                            if rules._PREPARE_KEYS[s.written_prepare][0])


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """The generated directory, for this test only."""
    path = tmp_path / "generated"
    path.mkdir()
    monkeypatch.setattr(drivers, "generated_dir", lambda: str(path))
    return path


def _rule_case(name):
    spec = rules.RULES[name]
    return "rule", spec.written, spec.prologue, lambda: rulelang.with_prologue(
        spec.written, spec.prologue)


def _prepare_case(name):
    written = rules.RULES[name].written_prepare
    key = rules._PREPARE_KEYS[written]
    return "prepare", written, key, lambda: rulelang.prepare_with_prologue(written, *key)


def _cached_twice(kind, written, key, build):
    """(code built and written, code read back): the first call misses the
    empty cache and builds, the second reads the file."""
    code, fresh = rules._built_code(kind, written, key, build)
    assert fresh is not None and fresh.__code__ is code
    again, none = rules._built_code(kind, written, key, _no_build)
    assert none is None
    return code, again


def _no_build():
    raise AssertionError("built although the cache holds the code")


def _outcome(fn, args):
    """What ``fn(*args)`` gives, comparable bit for bit (or its error)."""
    try:
        out = fn(*args)
    except Exception as exc:        # noqa: BLE001: both must fail alike
        return ("raised", type(exc).__name__, str(exc))
    flat = []

    def walk(x):
        if isinstance(x, tuple):
            for y in x:
                walk(y)
        else:
            flat.append(np.asarray(x).tobytes() + str(np.asarray(x).dtype).encode())
    walk(out)
    return flat


def _draw(rng, dtype=float):
    """0, 1 (a flag either way) or a value in (0, 1)."""
    u = rng.random()
    return dtype(0 if u < 0.15 else 1 if u < 0.3 else rng.uniform(0.01, 0.99))


@pytest.mark.parametrize("name", PROLOGUED_RULES)
def test_a_cached_rule_is_the_front_ends(cache_dir, name):
    kind, written, prologue, build = _rule_case(name)
    code, again = _cached_twice(kind, written, prologue, build)
    ours, theirs = rules._rule_of_code(again, written, prologue), build()
    assert again == theirs.__code__ == code
    assert again.co_filename == theirs.__code__.co_filename == written.__code__.co_filename
    assert again.co_firstlineno == theirs.__code__.co_firstlineno
    for attr in ("__name__", "__qualname__", "__module__", "__doc__", "__defaults__",
                 "__kwdefaults__", "__closure__", "__rule_prologue__"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.__globals__ is theirs.__globals__ is written.__globals__
    assert ours.__wrapped__ is theirs.__wrapped__ is written
    assert sorted(vars(ours)) == sorted(vars(theirs))
    # the one the module runs is one of the two (whichever built it first)
    assert rules.RULES[name].rule.__code__ == again
    # the same results, bit for bit, on random arguments in both dtypes
    rng = np.random.default_rng(sorted(rules.RULES).index(name))
    n_args = written.__code__.co_argcount
    for dtype in (np.float32, np.float64):
        for _ in range(200):
            args = [_draw(rng, dtype) for _ in range(n_args)]
            with np.errstate(all="ignore"):
                assert _outcome(ours, args) == _outcome(theirs, args), args


@pytest.mark.parametrize("name", PROLOGUED_PREPARES)
def test_a_cached_prepare_is_the_front_ends(cache_dir, name):
    kind, written, key, build = _prepare_case(name)
    code, again = _cached_twice(kind, written, key, build)
    theirs = build()
    assert again == theirs.__code__ == code
    assert again.co_filename == theirs.__code__.co_filename
    running = rules.RULES[name].prepare       # the module's, built from either
    rules._build_prepare(running.__name__)
    assert running.__code__ == again
    assert running.__wrapped__ is theirs.__wrapped__ is written
    assert running.__prepare_prologue__ == theirs.__prepare_prologue__ == key
    for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
        assert getattr(running, attr) == getattr(theirs, attr), attr
    ours = type(running)(again, written.__globals__, written.__name__)
    spec = rules.RULES[name]
    scalars = tuple(v for _, v in spec.scalar_states)
    rng = np.random.default_rng(len(name))
    for _ in range(300):
        args = [int(rng.integers(1, 50)), scalars] + [_draw(rng) for _ in spec.user_hyper]
        with np.errstate(all="ignore"):
            assert _outcome(ours, args) == _outcome(theirs, args), args


def _one_file(cache_dir):
    (path,) = [p for p in cache_dir.iterdir() if p.suffix == ".bin"]
    return path


@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped", "garbage", "header",
                                    "stale", "other code"])
def test_a_damaged_cache_file_is_rebuilt(cache_dir, damage):
    kind, written, key, build = _prepare_case("adam")
    code, _ = _cached_twice(kind, written, key, build)
    path = _one_file(cache_dir)
    data = path.read_bytes()
    header, _, payload = data.partition(b"\n")
    if damage == "truncated":
        data = data[:len(header) + 1 + len(payload) // 2]
    elif damage == "empty":
        data = b""
    elif damage == "flipped":       # still valid marshal (a letter of the file's name):
        at = len(data) - 1 - data[::-1].index(b"rules.py"[::-1])   # the checksum catches it
        data = data[:at] + b"R" + data[at + 1:]
    elif damage == "garbage":
        data = os.urandom(len(data))
    elif damage == "header":
        data = header
    elif damage == "stale":         # a key of other sources
        tag, file_key, check = header.split(b" ")
        data = b" ".join([tag, b"0" * len(file_key), check]) + b"\n" + payload
    else:                           # a valid file of another function's code
        other_payload = marshal.dumps(_prepare_case("nadam")[3]().__code__)
        tag, file_key, _check = header.split(b" ")
        data = b" ".join([tag, file_key, hashlib.sha256(other_payload).hexdigest().encode()]
                         ) + b"\n" + other_payload
    path.write_bytes(data)
    built = []
    again, fresh = rules._built_code(kind, written, key, lambda: built.append(1) or build())
    assert built == [1] and fresh is not None and again == code
    # ... and written back whole: the next read needs no build
    assert rules._built_code(kind, written, key, _no_build)[0] == code


def test_an_unwritable_cache_builds_in_memory(tmp_path, monkeypatch):
    kind, written, key, build = _prepare_case("adam")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(drivers, "generated_dir", lambda: str(blocker / "generated"))
    for _ in range(2):
        code, fresh = rules._built_code(kind, written, key, build)
        assert fresh is not None and code == build().__code__

    def no_directory():
        raise OSError("no cache directory")
    monkeypatch.setattr(drivers, "generated_dir", no_directory)
    code, fresh = rules._built_code(kind, written, key, build)
    assert fresh is not None and code == build().__code__

    writable = tmp_path / "w"
    writable.mkdir()
    monkeypatch.setattr(drivers, "generated_dir", lambda: str(writable))

    def refused(path, text):
        raise PermissionError(13, "read-only", path)
    monkeypatch.setattr(_files, "write_if_changed", refused)
    code, fresh = rules._built_code(kind, written, key, build)
    assert fresh is not None and code == build().__code__
    assert not list(writable.iterdir())


def _copy_sources(tmp_path, name):
    """A copy of what the built code depends on (rules.py, rulelang/), with
    ``_built_sources``'s shape."""
    files, here = rules._built_sources()
    root = tmp_path / name
    for f in files:
        dest = root / os.path.relpath(f, here)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    return [str(root / os.path.relpath(f, here)) for f in files], str(root)


def test_the_key_covers_every_source_and_the_bytecode_version(tmp_path, monkeypatch):
    kind, written, key, _build = _prepare_case("adam")
    original = rules._built_key(kind, written, key)
    same = _copy_sources(tmp_path, "same")
    monkeypatch.setattr(rules, "_built_sources", lambda: same)
    assert rules._built_key(kind, written, key) == original
    seen = {original}
    for edited in ("rules.py", "rulelang/prologue.py", "rulelang/frontend.py",
                   "rulelang/tables.py", "rulelang/c.py"):
        copy = _copy_sources(tmp_path, edited.replace("/", "_"))
        with open(os.path.join(copy[1], edited), "a", encoding="utf-8") as fh:
            fh.write("\n# an edit\n")
        monkeypatch.setattr(rules, "_built_sources", lambda copy=copy: copy)
        new = rules._built_key(kind, written, key)
        assert new not in seen, edited
        seen.add(new)
    monkeypatch.setattr(rules, "_built_sources", lambda: same)
    monkeypatch.setattr(importlib.util, "MAGIC_NUMBER", b"\x00\x00\r\n")
    assert rules._built_key(kind, written, key) not in seen
    monkeypatch.undo()
    # and the function and its prologue: each cached function has its own key
    keys = {rules._built_key(*_rule_case(n)[:3]) for n in PROLOGUED_RULES}
    keys |= {rules._built_key(*_prepare_case(n)[:3]) for n in PROLOGUED_PREPARES}
    distinct = {rules.RULES[n].written for n in PROLOGUED_RULES}
    distinct = len(distinct) + len({rules.RULES[n].written_prepare
                                    for n in PROLOGUED_PREPARES})
    assert len(keys) == distinct


_FIRST_STEPS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import optkern
    from optkern.kernels import rules
    out = {}
    for backend in sys.argv[1].split(","):
        rng = np.random.default_rng(7)
        for dtype in (np.float32, np.float64):
            for cls, kw in ((optkern.Adam, dict(amsgrad=True, maximize=True)),
                            (optkern.Adam, dict(weight_decay=0.3)),
                            (optkern.AdamW, dict(weight_decay=0.3))):
                lr, b1 = rng.uniform(1e-3, 0.2), rng.uniform(0.5, 0.95)
                b2 = rng.uniform(0.9, 0.9999)
                p = rng.standard_normal(257).astype(dtype)
                opt = cls(p, lr=lr, betas=(b1, b2), backend=backend, check_finite=False, **kw)
                for _ in range(3):
                    opt.step(rng.standard_normal(257).astype(dtype))
                out[f"{backend} {dtype.__name__} {cls.__name__} {sorted(kw)}"] = p.tobytes().hex()
    out["front end"] = "optkern.kernels.rulelang.frontend" in sys.modules
    out["built"] = sorted(f.__name__ for f in rules._RUNNING.values()
                          if hasattr(f, "__rule_prologue__"))
    print(json.dumps(out))
""")


def test_a_warm_process_steps_without_the_front_end(tmp_path):
    """A first Adam step (Cython, then Numba) in a fresh process: the cold
    process builds with the front end and writes the cache, the warm one reads
    it and never imports the front end; the results are bit-identical."""
    env = dict(os.environ, OPTKERN_CACHE_DIR=str(tmp_path / "generated"))

    def run():
        out = subprocess.run([sys.executable, "-c", _FIRST_STEPS, "cython,numba"], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold = run()
    assert cold.pop("front end") is True
    names = sorted(p.name for p in (tmp_path / "generated").iterdir() if p.suffix == ".bin")
    assert names == ["optkern_prepare_adam_prepare.bin", "optkern_rule_adam_rule.bin"]
    warm = run()
    assert warm.pop("front end") is False
    assert warm == cold
    assert warm["built"] == ["adam_rule"]     # the Numba driver imports the rule


# A warm fit reads the loss rules' lane forms from the cache too
# (kernels/rule_lanes.py ``lane_form``): with its generated modules and
# Numba's cache warm it imports none of the rule language's front end,
# emitters or tables.
_FITS = textwrap.dedent("""
    import json, sys
    import warnings
    import numpy as np
    import scipy.sparse as sp
    import optkern
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 5)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    out = {}
    for backend in ("numba", "cython"):
        for loss in ("softmax", "log"):
            for layout, data in (("dense", X), ("csr", sp.csr_matrix(X))):
                target = y if loss == "softmax" else (y > 0).astype(np.int64)
                est = optkern.LinearClassifier(loss=loss, backend=backend, max_epochs=2,
                                               random_state=0).fit(data, target)
                out[f"{backend} {loss} {layout}"] = est.coef_.tobytes().hex()
    out["loaded"] = sorted(m for m in ("optkern.kernels.rulelang.frontend",
                                       "optkern.kernels.rulelang.lanes",
                                       "optkern.kernels.rulelang.tables") if m in sys.modules)
    print(json.dumps(out))
""")


def test_a_warm_process_fits_without_the_front_end(tmp_path):
    """Fits (Numba and Cython, softmax and log, dense and CSR) in a fresh
    process: the cold one builds the lane forms with the front end and writes
    them to the cache, the warm one imports none of rulelang.frontend,
    .lanes, .tables; the coefficients are bit-identical."""
    env = dict(os.environ, OPTKERN_CACHE_DIR=str(tmp_path / "generated"))

    def run():
        out = subprocess.run([sys.executable, "-c", _FITS], env=env,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold = run()
    assert cold.pop("loaded") == ["optkern.kernels.rulelang.frontend",
                                  "optkern.kernels.rulelang.lanes",
                                  "optkern.kernels.rulelang.tables"]
    assert any(p.name.startswith("optkern_lanes_") for p in (tmp_path / "generated").iterdir())
    warm = run()
    assert warm.pop("loaded") == []
    assert warm == cold


def _lane_rule(z, y, epsilon, dz):
    total = 0.0
    for j in range(z.shape[0]):
        dz[j] = z[j] - epsilon
        total += dz[j] * dz[j]
    return total


def test_a_cached_lane_form_is_the_emitters(cache_dir):
    """``lane_form`` builds with the emitter and stores; the next call reads the
    file (the emitters not called); a damaged or stale file is rebuilt; a
    refusal is cached as None."""
    from optkern.kernels import loss_rules, rule_lanes

    built = rule_lanes.lane_form(_lane_rule, "lanes")
    assert built == (rule_lanes.lane_source(_lane_rule, "lanes"),
                     *rule_lanes.lane_slots(_lane_rule))
    (path,) = [p for p in cache_dir.iterdir() if p.name.startswith("optkern_lanes_")]
    real = rule_lanes._emitters
    rule_lanes._emitters = _no_build
    try:
        assert rule_lanes.lane_form(_lane_rule, "lanes") == built
    finally:
        rule_lanes._emitters = real
    for damage in (path.read_text()[:20], "{}", path.read_text().replace(
            json.loads(path.read_text())["key"], "0" * 16)):
        path.write_text(damage)
        assert rule_lanes.lane_form(_lane_rule, "lanes") == built
        assert json.loads(path.read_text())["value"] == list(built)
    hinge = loss_rules.LOSS_RULES["multiclass_hinge"].rule
    assert rule_lanes.lane_form(hinge, "lanes") is None        # its early returns
    rule_lanes._emitters = _no_build
    try:
        assert rule_lanes.lane_form(hinge, "lanes") is None
    finally:
        rule_lanes._emitters = real


def test_the_epoch_loop_is_cached_beside_the_generated_modules(cache_dir, monkeypatch):
    """The Numba epoch's loop (epoch_rules.minibatch_epoch with a layout's
    primitives) is the emitter's text, stored on first use and read back
    without the front end; a damaged or stale file, or other primitives, make
    it again."""
    from optkern.kernels import epoch_drivers, epoch_rules
    from optkern.kernels.rulelang import epoch as epoch_lang

    src = epoch_drivers._source("softmax", "adam", "dense")
    (path,) = [p for p in cache_dir.iterdir() if p.name == "optkern_epochloop_adam_dense_serial.json"]
    loop = json.loads(path.read_text())["value"]
    assert textwrap.indent(loop, "    ") in src
    prims = None

    def spy(fn, primitives):
        nonlocal prims
        prims = primitives
        return real(fn, primitives)

    real = epoch_lang.numba_text
    monkeypatch.setattr(epoch_lang, "numba_text", spy)
    path.unlink()
    epoch_drivers._source("softmax", "adam", "dense")
    assert prims is not None and json.loads(path.read_text())["value"] == loop
    assert real(epoch_rules.minibatch_epoch, prims) == loop

    def refuse(fn, primitives):
        raise AssertionError("the loop was made again")

    monkeypatch.setattr(epoch_lang, "numba_text", refuse)
    assert epoch_drivers._source("softmax", "adam", "dense") == src      # read back
    assert epoch_drivers._epoch_loop("adam_dense_serial", prims) == loop
    monkeypatch.setattr(epoch_lang, "numba_text", spy)
    for damage in (path.read_text()[:20], "{}", json.dumps({"key": "0" * 16, "value": "x"})):
        path.write_text(damage)
        assert epoch_drivers._epoch_loop("adam_dense_serial", prims) == loop
    other = dict(prims, update_b=prims["update_b"] + "\n# another intercept update")
    assert "# another intercept update" in epoch_drivers._epoch_loop("adam_dense_serial", other)


def test_cached_json_builds_what_it_cannot_read(tmp_path):
    path = str(tmp_path / "v.json")
    calls = []

    def build():
        calls.append(1)
        return ["text", 3]

    assert _files.cached_json(path, "k1", build) == ["text", 3] and len(calls) == 1
    assert _files.cached_json(path, "k1", build) == ["text", 3] and len(calls) == 1
    assert _files.cached_json(path, "k2", build) == ["text", 3] and len(calls) == 2   # stale
    assert _files.cached_json(path, "k2", build, valid=lambda v: False) == ["text", 3]
    assert len(calls) == 3                                                           # invalid
    with open(path, "w") as fh:
        fh.write('{"key": "k2", "val')                                               # truncated
    assert _files.cached_json(path, "k2", build) == ["text", 3] and len(calls) == 4
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        # an unwritable folder: built every time, nothing raised (root writes anyway)
        assert _files.cached_json(str(ro / "v.json"), "k", build) == ["text", 3]
    finally:
        ro.chmod(0o700)
