"""Issue 16 item 2: memory is checked before it is allocated; parser overflows
are clean errors naming the file and line."""

import os
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

import optkern
from optkern import _memory
from optkern.cli import main


def _huge_csr(d=2 ** 31 - 1):
    return sp.csr_matrix((np.ones(2), np.array([d - 1, 0], dtype=np.int64),
                          np.array([0, 1, 2])), shape=(2, d))


@pytest.mark.parametrize("cls", [optkern.LinearClassifier, optkern.LinearRegressor])
@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_a_huge_model_is_refused_before_allocation(cls, solver):
    X, y = _huge_csr(), np.array([0.0, 1.0])
    est = cls(solver=solver)
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError) as info:
            est.fit(X, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(info.value, ValueError)          # also a ValueError
    msg = str(info.value)
    assert "2147483647 features" in msg and "GiB" in msg and "FeatureHasher" in msg
    assert _memory.MEMORY_LIMIT_ENV in msg
    assert peak < 64 * 2 ** 20, peak
    assert not hasattr(est, "coef_")


def test_a_refused_refit_leaves_the_fitted_model(monkeypatch):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 2, 30)
    est = optkern.LinearClassifier(backend="numpy", max_epochs=2, tol=None).fit(X, y)
    coef = est.coef_.copy()
    monkeypatch.setenv(_memory.MEMORY_LIMIT_ENV, "100")
    with pytest.raises(MemoryError, match="above the memory limit of 100 B"):
        est.fit(X, y)
    np.testing.assert_array_equal(est.coef_, coef)


@pytest.mark.parametrize("text,kind,value", [("64G", "bytes", 64 * 2 ** 30),
                                             ("512m", "bytes", 512 * 2 ** 20),
                                             ("1000", "bytes", 1000), ("1.5KiB", "bytes", 1536),
                                             ("0.9", "fraction", 0.9),
                                             ("none", "none", None)])
def test_memory_limit_forms(text, kind, value):
    assert _memory.parse_memory_limit(text) == (kind, value)


@pytest.mark.parametrize("text", ["", "-1G", "1.5", "0", "lots", "12Q", "x" * 1000])
def test_bad_memory_limits(text):
    with pytest.raises(ValueError, match="expected a size") as info:
        _memory.parse_memory_limit(text)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("optimizer,dtype", [("adam", np.float64), ("sgd", np.float32),
                                             ("momentum", np.float64)])
def test_the_estimate_bounds_what_a_fit_allocates(optimizer, dtype):
    """The estimate is an upper bound: the fit's peak traced allocation beyond
    the data stays under it (d x k large enough to dominate the minibatch
    temporaries)."""
    rng = np.random.default_rng(0)
    d, k = 20_000, 4
    X = rng.normal(size=(64, d)).astype(dtype)
    y = rng.integers(0, k, 64)
    est = optkern.LinearClassifier(optimizer=optimizer, backend="numpy", max_epochs=1,
                                   tol=None, batch_size=16)
    est.fit(X[:8], y[:8])                   # imports and first-call set-up outside the trace
    n_states = len(optkern.kernels.rules.RULES[
        optkern.estimators.OPTIMIZER_NAMES[optimizer][0]._rule].states)
    total, _ = _memory.fit_bytes(d, k, dtype, n_states, batch_rows=16)
    tracemalloc.start()
    try:
        est.fit(X, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one = d * k * np.dtype(dtype).itemsize
    assert peak >= 2 * one                 # the trace sees the weight arrays at all
    assert peak <= total + one, (peak, total)


def _cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_cli_21_byte_file_is_refused(tmp_path, capsys):
    path = tmp_path / "f.svm"
    path.write_text("1 2147483647:1\n0 1:1\n")
    assert path.stat().st_size == 21
    tracemalloc.start()
    try:
        rc, _, err = _cli(["train", path, "-o", tmp_path / "m.npz", "-q"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 1
    assert "GiB" in err and "--memory-limit" in err and "FeatureHasher" in err
    assert peak < 256 * 2 ** 20, peak
    assert not (tmp_path / "m.npz").exists()


def test_cli_memory_limit_option(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(_memory.MEMORY_LIMIT_ENV, raising=False)
    path = tmp_path / "d.csv"
    path.write_text("".join(f"{i % 3},{i % 5},{i % 2}\n" for i in range(30)))
    rc, _, err = _cli(["train", path, "--memory-limit", "100", "-q", "--backend", "numpy"],
                      capsys)
    assert rc == 1 and "above the memory limit of 100 B" in err
    assert _memory.MEMORY_LIMIT_ENV not in os.environ      # for that command only
    rc, _, err = _cli(["train", path, "--memory-limit", "none", "-q", "--backend", "numpy",
                       "--epochs", "2"], capsys)
    assert rc == 0, err
    rc, _, err = _cli(["train", path, "--memory-limit", "lots"], capsys)
    assert rc == 2 and "--memory-limit" in err
    assert _memory.MEMORY_LIMIT_ENV not in os.environ


@pytest.mark.parametrize("index", ["99999999999", "2147483648", "9" * 5000])
def test_parser_overflow_names_file_and_line(tmp_path, capsys, index):
    path = tmp_path / "o.svm"
    path.write_text(f"0 1:1\n1 {index}:1\n")
    with pytest.raises(optkern.io.DataFileError) as info:
        optkern.io.load_data(path)
    msg = str(info.value)
    assert str(path) in msg and "line 2" in msg and len(msg) < 400
    rc, _, err = _cli(["train", path, "-q"], capsys)
    assert rc == 1 and "line 2" in err
