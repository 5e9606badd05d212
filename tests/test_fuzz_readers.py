"""Issue 16: fuzz the svmlight and CSV readers with hypothesis.

Every outcome is a result (X, y, info with matching rows) or a DataFileError
(a ValueError naming the file), within a time bound and a memory bound
measured with tracemalloc -- never another exception, never a huge
allocation.  Inputs: random bytes, random well-formed-ish lines with huge,
negative and non-integer indices, BOMs, compression, long lines.
"""

import bz2
import gzip
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optkern import io


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory):
    """Imports (scikit-learn's reader) and first calls outside the bounds."""
    d = tmp_path_factory.mktemp("warm")
    (d / "w.svm").write_text("1 1:1\n0 2:1\n")
    (d / "w.csv").write_text("1,2\n3,4\n")
    io.load_data(d / "w.svm")
    io.load_data(d / "w.csv")


MEMORY_BOUND = 64 * 2 ** 20
TIME_BOUND = 5.0
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow])

numbers = st.one_of(st.integers(-10 ** 30, 10 ** 30).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "", "1,2", "١"]))
indices = st.one_of(st.integers(-5, 40), st.integers(2 ** 31 - 3, 2 ** 31 + 3),
                    st.integers(10 ** 10, 10 ** 30), st.just(99999999999)).map(str) | \
    st.sampled_from(["qid", "a", "1.5", "", "-0", "9" * 6000])
svm_tokens = st.tuples(indices, numbers).map(lambda t: f"{t[0]}:{t[1]}") | \
    st.text(max_size=12) | st.just("#")
svm_lines = st.tuples(numbers, st.lists(svm_tokens, max_size=6)).map(
    lambda t: " ".join([t[0]] + t[1]))
csv_lines = st.lists(numbers | st.text(max_size=8) | st.just('"a,b"'), min_size=1,
                     max_size=5).map(",".join)


def _wrap(data, draw_bom, compress):
    if draw_bom:
        data = b"\xef\xbb\xbf" + data
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "bz2":
        data = bz2.compress(data)
    return data


def _check(path, **kw):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        try:
            X, y, info = io.load_data(path, **kw)
        except io.DataFileError as exc:
            assert str(path) in str(exc)
            assert len(str(exc)) < 2000, len(str(exc))
        else:
            assert X.shape[0] >= 1
            assert y is None or len(y) == X.shape[0]
            values = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else X
            assert np.all(np.isfinite(values))
        took = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert took < TIME_BOUND and peak < MEMORY_BOUND, (took, peak)


@settings(max_examples=120, **SETTINGS)
@given(lines=st.lists(svm_lines, min_size=0, max_size=6), bom=st.booleans(),
       compress=st.sampled_from([None, "gz", "bz2"]), name=st.sampled_from(["f.svm", "f.txt"]),
       zero_based=st.sampled_from(["auto", True, False]))
def test_fuzz_svmlight(tmp_path, lines, bom, compress, name, zero_based):
    path = tmp_path / name
    path.write_bytes(_wrap("\n".join(lines).encode("utf-8", "surrogatepass"), bom, compress))
    _check(path, fmt="svmlight", zero_based=zero_based)


@settings(max_examples=120, **SETTINGS)
@given(lines=st.lists(csv_lines, min_size=0, max_size=6), bom=st.booleans(),
       compress=st.sampled_from([None, "gz"]), label=st.sampled_from([None, 0, -1, "5", "x"]))
def test_fuzz_csv(tmp_path, lines, bom, compress, label):
    path = tmp_path / "f.csv"
    path.write_bytes(_wrap("\n".join(lines).encode("utf-8", "surrogatepass"), bom, compress))
    _check(path, fmt="csv", label_column=label)


@settings(max_examples=80, **SETTINGS)
@given(data=st.binary(max_size=400), fmt=st.sampled_from(["svmlight", "csv", "npz", "npy",
                                                          None]))
def test_fuzz_random_bytes(tmp_path, data, fmt):
    path = tmp_path / "f.dat"
    path.write_bytes(data)
    if fmt is None:
        try:
            io.detect_format(path)
        except io.DataFileError:
            return
    _check(path, fmt=fmt)


@pytest.mark.parametrize("fmt,text", [
    ("svmlight", "1 " + " ".join(f"{i}:1" for i in range(1, 20_000)) + "\n0 1:1\n"),
    ("csv", ",".join(["1.5"] * 20_000) + "\n" + ",".join(["2"] * 20_000) + "\n"),
    ("svmlight", "1 1:" + "9" * 1_000_000 + "\n"),
    ("csv", "a" * 2_000_000 + "\n1\n"),
])
def test_long_lines(tmp_path, fmt, text):
    path = tmp_path / "long.dat"
    path.write_text(text)
    _check(path, fmt=fmt)
