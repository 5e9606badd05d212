"""Model save/load without pickle, and data-file reading with line-numbered errors."""

import json
import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import optkern
from optkern import io
from optkern import schedules as S


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(y))[:90]
    X = (X[idx] - X.mean(0)) / X.std(0)
    return X, y[idx]


def _quiet_fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def _params_equal(a, b):
    pa, pb = a.get_params(), b.get_params()
    assert pa.keys() == pb.keys()
    for k in pa:
        if isinstance(pa[k], optkern.Optimizer):
            assert type(pa[k]) is type(pb[k])
            ga = {n: v for n, v in pa[k].param_groups[0].items() if n != "params"}
            gb = {n: v for n, v in pb[k].param_groups[0].items() if n != "params"}
            assert ga == gb
        else:
            assert pa[k] == pb[k], k
            assert type(pa[k]) is type(pb[k]), k


def _roundtrip(est, tmp_path, name="m.npz"):
    path = tmp_path / name
    io.save(est, path)
    return optkern.load(path)


def test_classifier_roundtrip_is_exact(iris, tmp_path):
    X, y = iris
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    est = optkern.LinearClassifier(
        max_epochs=3, random_state=0, backend="numpy",
        schedule=S.Warmup(S.Cosine(total_steps=50, final_factor=0.1), warmup_steps=5),
        optimizer_params={"betas": (0.8, 0.99)})
    _quiet_fit(est, X, labels)
    back = _roundtrip(est, tmp_path)
    assert type(back) is optkern.LinearClassifier
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    np.testing.assert_array_equal(back.decision_function(X), est.decision_function(X))
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(back.classes_, est.classes_)
    assert back.classes_.dtype == est.classes_.dtype
    assert back.coef_.dtype == est.coef_.dtype
    _params_equal(est, back)
    assert back.n_iter_ == est.n_iter_ and back.n_features_in_ == est.n_features_in_
    assert back.history_ == est.history_
    assert back.score(X, labels) == est.score(X, labels)


@pytest.mark.parametrize("kw", [
    dict(loss="hinge", average=True, schedule="invscaling"),
    dict(loss="log", penalty="elasticnet", fit_intercept=False),
    dict(loss="modified_huber", optimizer="sgld", schedule=S.ReduceOnPlateau(patience=2)),
])
def test_classifier_variants_roundtrip(iris, tmp_path, kw):
    X, y = iris
    est = _quiet_fit(optkern.LinearClassifier(max_epochs=2, random_state=1, backend="numpy",
                                              **kw), X, y)
    back = _roundtrip(est, tmp_path)
    np.testing.assert_array_equal(back.decision_function(X), est.decision_function(X))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    _params_equal(est, back)


def test_optimizer_instance_template_roundtrips(iris, tmp_path):
    X, y = iris
    template = optkern.SGD(np.zeros(1), lr=0.05, momentum=0.5, nesterov=True)
    est = _quiet_fit(optkern.LinearClassifier(optimizer=template, max_epochs=2,
                                              random_state=0, backend="numpy"), X, y)
    back = _roundtrip(est, tmp_path)
    _params_equal(est, back)
    np.testing.assert_array_equal(back.predict(X), est.predict(X))


@pytest.mark.parametrize("two_d", [False, True])
def test_regressor_roundtrip_is_exact(iris, tmp_path, two_d):
    X, _ = iris
    y = np.column_stack([X[:, 0] * 2 + 1, X[:, 1]]) if two_d else X[:, 0] * 2 + 1
    est = _quiet_fit(optkern.LinearRegressor(loss="huber", max_epochs=3, random_state=0,
                                             backend="numpy", early_stopping=True), X[:, 1:], y)
    back = _roundtrip(est, tmp_path)
    assert type(back) is optkern.LinearRegressor
    np.testing.assert_array_equal(back.predict(X[:, 1:]), est.predict(X[:, 1:]))
    assert back.coef_.shape == est.coef_.shape
    _params_equal(est, back)


def test_float32_model_roundtrip(iris, tmp_path):
    X, y = iris
    X32 = X.astype(np.float32)
    est = _quiet_fit(optkern.LinearClassifier(max_epochs=2, random_state=0, backend="numpy"),
                     X32, y)
    back = _roundtrip(est, tmp_path)
    assert back.coef_.dtype == est.coef_.dtype
    np.testing.assert_array_equal(back.decision_function(X32), est.decision_function(X32))


def test_partial_fit_after_load_continues_exactly(iris, tmp_path):
    X, y = iris
    est = _quiet_fit(optkern.LinearClassifier(max_epochs=2, random_state=0, backend="numpy",
                                              average=True), X, y)
    back = _roundtrip(est, tmp_path)
    est.partial_fit(X, y)
    back.partial_fit(X, y)
    np.testing.assert_array_equal(back.coef_, est.coef_)
    np.testing.assert_array_equal(back.intercept_, est.intercept_)


def test_file_holds_no_pickle(iris, tmp_path):
    X, y = iris
    est = _quiet_fit(optkern.LinearClassifier(max_epochs=1, random_state=0, backend="numpy"),
                     X, np.array(["a", "b", "c"])[y])
    path = tmp_path / "m.npz"
    io.save(est, path)
    with np.load(path, allow_pickle=False) as data:
        for k in data.files:
            assert data[k].dtype != object
        meta = json.loads(data[io.META_KEY].tobytes().decode())
    assert meta["format"] == "optkern-model"
    assert meta["format_version"] == io.FORMAT_VERSION
    assert meta["estimator"] == "LinearClassifier"
    assert meta["optkern_version"] == optkern.__version__
    assert meta["params"]["loss"] == "softmax"
    assert "coef_" in meta["attributes"] and "classes_" in meta["attributes"]


def test_save_method_delegates(iris, tmp_path):
    X, y = iris
    est = _quiet_fit(optkern.LinearClassifier(max_epochs=1, random_state=0, backend="numpy"),
                     X, y)
    est.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(optkern.load(tmp_path / "m.npz").coef_, est.coef_)


def test_save_refuses_unfitted_and_foreign_objects(tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        io.save(optkern.LinearClassifier(), tmp_path / "m.npz")
    from sklearn.linear_model import SGDClassifier
    with pytest.raises(TypeError, match="LinearClassifier or LinearRegressor"):
        io.save(SGDClassifier(), tmp_path / "m.npz")
    assert not os.listdir(tmp_path)


def test_unsavable_params(iris, tmp_path):
    X, y = iris

    class MySchedule(S.Constant):
        pass

    est = _quiet_fit(optkern.LinearClassifier(max_epochs=1, random_state=0, backend="numpy",
                                              schedule=MySchedule()), X, y)
    with pytest.raises(TypeError, match="MySchedule.*built-in schedule"):
        io.save(est, tmp_path / "m.npz")
    assert not os.listdir(tmp_path)  # nothing written, no temporary left behind
    est.set_params(schedule=None, callbacks=[lambda row: None],
                   random_state=np.random.RandomState(0))
    with pytest.warns(UserWarning) as record:
        io.save(est, tmp_path / "m.npz")
    messages = " ".join(str(w.message) for w in record)
    assert "callbacks" in messages and "random_state" in messages
    back = optkern.load(tmp_path / "m.npz")
    assert back.callbacks is None and back.random_state is None


def test_failed_save_leaves_the_old_file(iris, tmp_path, monkeypatch):
    X, y = iris
    est = _quiet_fit(optkern.LinearClassifier(max_epochs=1, random_state=0, backend="numpy"),
                     X, y)
    path = tmp_path / "m.npz"
    path.write_bytes(b"old content")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save(est, path)
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["m.npz"]


# ----------------------------------------------------------- refusing bad files
@pytest.fixture()
def model_file(iris, tmp_path):
    X, y = iris
    est = _quiet_fit(optkern.LinearClassifier(max_epochs=1, random_state=0, backend="numpy"),
                     X, y)
    path = tmp_path / "model.npz"
    io.save(est, path)
    return path


def _rewrite(path, meta_fn=None, drop=(), add=None):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k not in drop}
    meta = json.loads(arrays[io.META_KEY].tobytes().decode())
    if meta_fn:
        meta_fn(meta)
    arrays[io.META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays.update(add or {})
    np.savez(path, **arrays)


def test_load_refuses_newer_format(model_file):
    _rewrite(model_file, lambda m: m.update(format_version=io.FORMAT_VERSION + 1,
                                            optkern_version="9.0"))
    with pytest.raises(io.ModelFileError, match="newer optkern.*format version 2.*upgrade"):
        optkern.load(model_file)


def test_load_refuses_missing_and_wrong_kind(tmp_path, model_file):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        optkern.load(tmp_path / "nope.npz")
    text = tmp_path / "data.svm"
    text.write_text("1 1:0.5\n")
    with pytest.raises(io.ModelFileError, match="not an optkern model file"):
        optkern.load(text)
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(io.ModelFileError, match="single .npy array"):
        optkern.load(npy)
    npz = tmp_path / "data.npz"
    np.savez(npz, X=np.ones((2, 2)), y=np.ones(2))
    with pytest.raises(io.ModelFileError, match="not an optkern model file"):
        optkern.load(npz)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(io.ModelFileError, match="empty"):
        optkern.load(empty)
    with pytest.raises(io.ModelFileError, match="directory"):
        optkern.load(tmp_path)


def test_load_refuses_corrupt_files(tmp_path, model_file):
    raw = model_file.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(io.ModelFileError, match="corrupt"):
        optkern.load(trunc)
    flipped = bytearray(raw)
    mid = len(raw) // 3
    flipped[mid:mid + 20] = bytes(20)
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(io.ModelFileError):
        optkern.load(bad)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(format="something-else"), "not an optkern model file"),
    (lambda m: m.update(format_version="one"), "corrupt"),
    (lambda m: m.update(estimator="Pipeline"), "unknown estimator"),
    (lambda m: m["params"].update(not_a_param=1), "not parameters"),
    (lambda m: m["attributes"].update(n_features_in_=99), "corrupt.*features"),
    (lambda m: m["attributes"]["coef_"].update(__array__="missing"), "corrupt"),
])
def test_load_refuses_inconsistent_metadata(model_file, edit, match):
    _rewrite(model_file, edit)
    with pytest.raises(io.ModelFileError, match=match):
        optkern.load(model_file)


def test_load_refuses_non_json_metadata(model_file):
    with np.load(model_file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[io.META_KEY] = np.frombuffer(b"{not json", dtype=np.uint8)
    np.savez(model_file, **arrays)
    with pytest.raises(io.ModelFileError, match="not valid JSON"):
        optkern.load(model_file)


def test_read_metadata_extra(iris, tmp_path):
    X, y = iris
    est = _quiet_fit(optkern.LinearClassifier(max_epochs=1, random_state=0, backend="numpy"),
                     X, y)
    io.save(est, tmp_path / "m.npz", extra={"data": {"format": "svmlight", "zero_based": True}})
    meta = io.read_metadata(tmp_path / "m.npz")
    assert meta["extra"] == {"data": {"format": "svmlight", "zero_based": True}}


# ------------------------------------------------------------------- data files
def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_svmlight_stays_sparse_and_detects_index_base(tmp_path):
    p = _write(tmp_path, "a.svm", "# comment\n1 1:0.5 3:2\n-1 2:1.5 # tail\n\n1 qid:3 1:1\n")
    X, y, info = io.load_data(p)
    assert sp.issparse(X) and X.format == "csr"
    assert X.shape == (3, 3)
    np.testing.assert_array_equal(X.toarray(), [[0.5, 0, 2], [0, 1.5, 0], [1, 0, 0]])
    np.testing.assert_array_equal(y, [1, -1, 1])
    assert info == {"format": "svmlight", "zero_based": False}
    p0 = _write(tmp_path, "b.libsvm", "1 0:0.5 2:2\n0 1:1\n")
    X0, _, info0 = io.load_data(p0)
    assert info0["zero_based"] is True and X0.shape == (2, 3)
    # a test file read like the training file: same base, padded to n_features
    X1, _, _ = io.load_data(_write(tmp_path, "c.svm", "1 1:3\n"), zero_based=True,
                            n_features=3)
    np.testing.assert_array_equal(X1.toarray(), [[0, 3, 0]])


@pytest.mark.parametrize("text, line, what", [
    ("1 1:0.5\n1 2:abc\n", 2, "not a number"),
    ("1 1:0.5\n\n# c\n1 x:1\n", 4, "not an integer"),
    ("1 1:0.5\nfoo 1:1\n", 2, "label 'foo'"),
    ("1 1:0.5 2\n", 1, "index:value"),
    ("1 1:1\n1 3:1 2:1\n", 2, "increasing"),
    ("1 1:1\n1:1 2:1\n", 2, "not a number|not with a label"),
])
def test_malformed_svmlight_names_file_and_line(tmp_path, text, line, what):
    p = _write(tmp_path, "bad.svm", text)
    with pytest.raises(io.DataFileError, match=rf"bad\.svm, line {line}: .*({what})"):
        io.load_data(p)


def test_svmlight_explicit_one_based_refuses_index_zero(tmp_path):
    p = _write(tmp_path, "z.svm", "1 0:1 2:1\n")
    with pytest.raises(io.DataFileError, match="index 0.*--zero-based"):
        io.load_data(p, zero_based=False)
    X, _, info = io.load_data(p, zero_based=True)
    assert X.shape == (1, 3) and info["zero_based"] is True


def test_svmlight_more_features_than_the_model(tmp_path):
    p = _write(tmp_path, "t.svm", "1 1:1 5:2\n")
    with pytest.raises(io.DataFileError, match="t.svm"):
        io.load_data(p, n_features=3, zero_based=False)


def test_csv_header_label_column_and_text_labels(tmp_path):
    p = _write(tmp_path, "d.csv", "a, b ,label,c\n1,2,cat,3\n4,5,dog,6\n\n")
    X, y, info = io.load_data(p, label_column="label")
    np.testing.assert_array_equal(X, [[1, 2, 3], [4, 5, 6]])
    assert y.tolist() == ["cat", "dog"] and y.dtype == object
    assert info["label_column"] == "label" and info["header"]
    X, y, _ = io.load_data(_write(tmp_path, "e.csv", "1,2,0\n3,4,1\n"))
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [0, 1])  # default: last column
    X, y, _ = io.load_data(_write(tmp_path, "f.csv", "0,1,2\n1,3,4\n"), label_column=0)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    X, y, _ = io.load_data(_write(tmp_path, "g.tsv", "1\t2\t0\n3\t4\t1\n"))
    assert X.shape == (2, 2)
    # exactly n_features columns: no labels
    X, y, _ = io.load_data(_write(tmp_path, "h.csv", "1,2\n3,4\n"), n_features=2)
    assert y is None and X.shape == (2, 2)


@pytest.mark.parametrize("text, kw, match", [
    ("a,b,y\n1,2,0\n1,2\n", {}, r"line 3: 2 fields, expected 3"),
    ("a,b,y\n1,2,0\n1,zz,1\n", {}, r"line 3: column 2 \('b'\) holds 'zz'"),
    ("1,2,0\n", {"label_column": "y"}, "no column named 'y'"),
    ("1,2,0\n", {"label_column": "7"}, "out of range"),
    ("a,b\n", {}, "no data rows"),
    ("1,nan,0\n", {}, "NaN or infinity"),
])
def test_malformed_csv(tmp_path, text, kw, match):
    p = _write(tmp_path, "bad.csv", text)
    with pytest.raises(io.DataFileError, match=match):
        io.load_data(p, **kw)


def test_npz_and_npy(tmp_path):
    X = np.arange(12.0).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X2, y2, info = io.load_data(tmp_path / "d.npz")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    sp.save_npz(tmp_path / "s.npz", sp.csr_matrix(X))
    Xs, ys, _ = io.load_data(tmp_path / "s.npz")
    assert sp.issparse(Xs) and ys is None
    np.save(tmp_path / "d.npy", np.column_stack([X, y]))
    X3, y3, _ = io.load_data(tmp_path / "d.npy")
    np.testing.assert_array_equal(X3, X)
    np.testing.assert_array_equal(y3, y)
    np.savez(tmp_path / "w.npz", features=X)
    with pytest.raises(io.DataFileError, match="no 'X' entry"):
        io.load_data(tmp_path / "w.npz")
    np.savez(tmp_path / "m.npz", X=X, y=y[:2])
    with pytest.raises(io.DataFileError, match="y has shape"):
        io.load_data(tmp_path / "m.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(io.DataFileError, match="junk.npz"):
        io.load_data(tmp_path / "junk.npz")


def test_format_detection(tmp_path):
    assert io.detect_format(_write(tmp_path, "a.txt", "# c\n1 1:2\n")) == "svmlight"
    assert io.detect_format(_write(tmp_path, "a.dat", "1,2,3\n")) == "csv"
    import gzip
    with gzip.open(tmp_path / "z.svm.gz", "wt") as fh:
        fh.write("1 1:2\n0 2:1\n")
    X, y, info = io.load_data(tmp_path / "z.svm.gz")
    assert X.shape == (2, 2) and info["format"] == "svmlight"
    with pytest.raises(io.DataFileError, match="--format"):
        io.detect_format(_write(tmp_path, "empty.bin", ""))
    with pytest.raises(FileNotFoundError):
        io.load_data(tmp_path / "missing.csv")


def test_atomic_write_cleans_up(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("keep")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target, "w") as fh:
            fh.write("partial")
            raise RuntimeError("fail")
    assert target.read_text() == "keep"
    assert os.listdir(tmp_path) == ["out.txt"]
    with io.atomic_write(target, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new"
    with pytest.raises(FileNotFoundError):
        with io.atomic_write(tmp_path / "nodir" / "x", "w"):
            pass
