"""Issue 16 item 7: the smaller problems -- each a clear error naming the file,
line or argument, or correct handling."""

import bz2
import errno
import gzip
import os
import warnings

import numpy as np
import pytest

import optkern
from optkern import io
from optkern.cli import main


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


FAST = ["--backend", "numpy", "-q", "--epochs", "2"]


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    X = np.round(rng.normal(size=(30, 3)), 3)
    return X, (X[:, 0] > 0).astype(int)


def _svm_text(X, y):
    return "".join(f"{l} " + " ".join(f"{j + 1}:{v}" for j, v in enumerate(r)) + "\n"
                   for r, l in zip(X, y))


def test_a_huge_bad_token_is_not_echoed_whole(tmp_path, capsys):
    path = tmp_path / "bad.svm"
    path.write_text("1 1:0.5\n" + "x" * 10_000_000 + " 1:1\n")
    rc, _, err = run(["train", path, "-q"], capsys)
    assert rc == 1 and "line 2" in err and "10000000 characters" in err
    assert len(err) < 500


@pytest.mark.parametrize("fmt", ["svm", "csv"])
def test_utf8_bom_is_stripped(tmp_path, xy, fmt):
    X, y = xy
    if fmt == "svm":
        text = _svm_text(X, y)
    else:
        text = "a,b,c,label\n" + "".join(f"{r[0]},{r[1]},{r[2]},{l}\n" for r, l in zip(X, y))
    plain, bom = tmp_path / f"plain.{fmt}", tmp_path / f"bom.{fmt}"
    plain.write_bytes(text.encode())
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    Xp, yp, ip = io.load_data(plain)
    Xb, yb, ib = io.load_data(bom)
    assert ip == ib                                          # header 'a', not '\ufeffa'
    np.testing.assert_array_equal(np.asarray(yp), np.asarray(yb))
    np.testing.assert_array_equal(Xp.toarray() if fmt == "svm" else Xp,
                                  Xb.toarray() if fmt == "svm" else Xb)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress], ids=["gzip", "bz2"])
@pytest.mark.parametrize("name", ["data.svm", "data.txt", "data.csv"])
def test_compression_detected_by_magic_bytes(tmp_path, xy, compress, name):
    X, y = xy
    text = _svm_text(X, y) if not name.endswith(".csv") else \
        "".join(f"{r[0]},{r[1]},{r[2]},{l}\n" for r, l in zip(X, y))
    path = tmp_path / name
    path.write_bytes(compress(text.encode()))
    Xl, yl, _ = io.load_data(path)
    np.testing.assert_allclose(Xl.toarray() if hasattr(Xl, "toarray") else Xl, X)
    np.testing.assert_array_equal(yl, y)


def test_proba_header_is_csv_quoted(tmp_path, xy, capsys):
    import csv
    X, y = xy
    labels = np.array(['a,"b"', "plain"])[y]
    np.savez(tmp_path / "d.npz", X=X, y=labels)               # a string y in an npz
    rc, _, err = run(["train", tmp_path / "d.npz", "-o", tmp_path / "m.npz"] + FAST, capsys)
    assert rc == 0, err
    rc, out, err = run(["predict", tmp_path / "m.npz", tmp_path / "d.npz", "--proba"], capsys)
    assert rc == 0, err
    rows = list(csv.reader(out.splitlines()))
    assert rows[0] == ['a,"b"', "plain"]
    assert all(len(r) == 2 for r in rows[1:]) and len(rows) == 31


def test_complex_features_are_refused(tmp_path, xy, capsys):
    X, y = xy
    np.savez(tmp_path / "c.npz", X=X + 1j, y=y)
    rc, _, err = run(["train", tmp_path / "c.npz"] + FAST, capsys)
    assert rc == 1 and "complex" in err and "c.npz" in err
    with pytest.raises(ValueError, match="[Cc]omplex"):
        optkern.LinearClassifier(backend="numpy").fit(X + 1j, y)


def test_divergence_names_the_penalty_when_alpha_is_the_cause(xy):
    X, y = xy
    with pytest.raises(FloatingPointError, match=r"alpha=1e\+300.*lower alpha"):
        optkern.LinearClassifier(alpha=1e300, backend="numpy", max_epochs=3).fit(X, y)
    with pytest.raises(FloatingPointError, match="lower learning rate"):
        optkern.LinearRegressor(lr=1e6, optimizer="sgd", penalty=None, backend="numpy",
                                max_epochs=5).fit(X, X[:, 0] * 1e3)


@pytest.mark.parametrize("backend", ["numpy", "numba", "cython"])
def test_adam_second_moment_overflow_warns(xy, backend):
    X, y = xy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optkern.LinearClassifier(optimizer="adam", backend=backend, max_epochs=3,
                                 tol=None).fit(X * 1e300, y)
    assert any("exp_avg_sq overflowed" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optkern.LinearClassifier(optimizer="adam", backend=backend, max_epochs=3,
                                 tol=None).fit(X, y)
    assert not any("overflowed" in str(w.message) for w in caught)


@pytest.mark.parametrize("argv,needle", [
    (["--width", "200000"], "--width"), (["--height", "10001"], "--height"),
    (["--start", "nan", "nan"], "--start"), (["--start", "0", "inf"], "--start")])
def test_trajectories_bounds(tmp_path, capsys, argv, needle):
    rc, _, err = run(["trajectories", "-o", tmp_path / "t.png"] + argv, capsys)
    assert rc == 2 and needle in err
    assert not (tmp_path / "t.png").exists()


def test_npz_with_unusable_labels(tmp_path, xy, capsys):
    X, y = xy
    np.savez(tmp_path / "b.npz", X=X, y=np.array([b"x"] * 30, dtype="V1"))
    rc, _, err = run(["train", tmp_path / "b.npz"] + FAST, capsys)
    assert rc == 1 and "b.npz" in err


def test_disk_full_during_save(tmp_path, xy, capsys, monkeypatch):
    X, y = xy
    (tmp_path / "d.svm").write_text(_svm_text(X, y))
    model = tmp_path / "m.npz"
    model.write_bytes(b"the old model")
    good = tmp_path / "good.npz"
    assert main(["train", str(tmp_path / "d.svm"), "-o", str(good)] + FAST) == 0
    (tmp_path / "p.txt").write_text("old predictions")
    capsys.readouterr()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rc, _, err = run(["train", tmp_path / "d.svm", "-o", model] + FAST, capsys)
    assert rc == 1 and "No space left on device" in err and "was not changed" in err
    rc, _, err = run(["predict", good, tmp_path / "d.svm", "-o", tmp_path / "p.txt"], capsys)
    assert rc == 1 and "No space left on device" in err and "was not changed" in err
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert model.read_bytes() == b"the old model"
    assert (tmp_path / "p.txt").read_text() == "old predictions"
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
