"""The optkern command line end to end, on small files the tests write.

Most runs use ``--backend numpy`` (the reference loop: no JIT compilation, so
the tests stay fast); one checks the compiled default backend.
"""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import optkern
from optkern import cli, io
from optkern.cli import main

FAST = ["--backend", "numpy", "-q"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sklearn.datasets import dump_svmlight_file, load_iris

    d = tmp_path_factory.mktemp("data")
    X, y = load_iris(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(y))
    X = np.round((X[idx] - X.mean(0)) / X.std(0), 4)
    y = y[idx]
    Xtr, ytr, Xte, yte = X[:90], y[:90], X[90:130], y[90:130]
    dump_svmlight_file(Xtr, ytr, str(d / "train.svm"), zero_based=False)
    dump_svmlight_file(Xte, yte, str(d / "test.svm"), zero_based=False)
    names = np.array(["setosa", "versicolor", "virginica"])
    with open(d / "train.csv", "w") as fh:
        fh.write("sepal_l,sepal_w,species,petal_l,petal_w\n")
        for row, label in zip(Xtr, names[ytr]):
            fh.write(f"{row[0]},{row[1]},{label},{row[2]},{row[3]}\n")
    np.savetxt(d / "test_nolabel.csv", Xte, delimiter=",")
    np.savez(d / "train.npz", X=Xtr, y=ytr)
    np.savez(d / "test.npz", X=Xte, y=yte)
    rng = np.random.default_rng(1)
    Xr = rng.normal(size=(60, 3))
    yr = Xr @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.01 * rng.normal(size=60)
    np.savez(d / "reg.npz", X=Xr, y=yr)
    # test labels the training data never had
    dump_svmlight_file(Xte[:5], np.array([0, 1, 7, 2, 9]), str(d / "unseen.svm"), zero_based=False)
    return {"dir": d, "Xtr": Xtr, "ytr": ytr, "Xte": Xte, "yte": yte, "Xr": Xr, "yr": yr,
            **{p.name: str(p) for p in d.iterdir()}}


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def _fit_like_cli(X, y, epochs, cls=None, **kw):
    cls = cls or optkern.LinearClassifier
    params = dict(max_epochs=epochs, random_state=0, backend="numpy")
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**params).fit(X, y)


# ------------------------------------------------------------------ happy paths
def test_train_predict_svmlight_matches_python_api(files, tmp_path, capsys):
    model = tmp_path / "m.npz"
    rc, out, err = run(["train", files["train.svm"], "--test", files["test.svm"], "-o", model,
                        "--epochs", 4, "--backend", "numpy"], capsys)
    assert rc == 0, err
    assert "epoch    1  loss" in err  # per-epoch progress
    assert "train: accuracy" in out and "test:  accuracy" in out and "model saved" in out
    rc, out, err = run(["predict", model, files["test.svm"]], capsys)
    assert rc == 0, err
    cli_pred = np.array([float(v) for v in out.split()])
    from sklearn.datasets import load_svmlight_file
    Xtr, ytr = load_svmlight_file(files["train.svm"])
    Xte, _ = load_svmlight_file(files["test.svm"], n_features=Xtr.shape[1])
    api = _fit_like_cli(Xtr, ytr, epochs=4)
    np.testing.assert_array_equal(cli_pred, api.predict(Xte))
    loaded = optkern.load(model)
    np.testing.assert_array_equal(loaded.coef_, api.coef_)
    assert loaded.get_params()["callbacks"] is None


def test_predict_proba_and_output_file(files, tmp_path, capsys):
    model = tmp_path / "m.npz"
    assert run(["train", files["train.npz"], "-o", model, "--epochs", 3, *FAST], capsys)[0] == 0
    out_file = tmp_path / "proba.csv"
    rc, out, err = run(["predict", model, files["test.npz"], "--proba", "-o", out_file],
                       capsys)
    assert rc == 0 and out == ""
    lines = out_file.read_text().splitlines()
    assert lines[0] == "0,1,2"
    proba = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])
    est = optkern.load(model)
    np.testing.assert_array_equal(proba, est.predict_proba(files["Xte"]))
    np.testing.assert_allclose(proba.sum(1), 1.0)


def test_csv_with_text_labels_and_named_label_column(files, tmp_path, capsys):
    model = tmp_path / "m.npz"
    rc, out, err = run(["train", files["train.csv"], "--label-column", "species", "-o", model,
                        "--epochs", 3, *FAST], capsys)
    assert rc == 0, err
    assert "classification (3 classes)" in out
    # a CSV without the label column: every column is a feature
    rc, out, err = run(["predict", model, files["test_nolabel.csv"]], capsys)
    assert rc == 0, err
    pred = out.split()
    assert len(pred) == len(files["yte"]) and set(pred) <= {"setosa", "versicolor", "virginica"}
    X = files["Xtr"]
    names = np.array(["setosa", "versicolor", "virginica"])
    api = _fit_like_cli(X, names[files["ytr"]], epochs=3)
    assert pred == api.predict(files["Xte"]).tolist()
    # evaluating on the training CSV reads its label column the same way
    rc, out, err = run(["evaluate", model, files["train.csv"]], capsys)
    assert rc == 0, err
    assert f"{api.score(X, names[files['ytr']]):.6f}" in out


def test_evaluate_classifier_json(files, tmp_path, capsys):
    model = tmp_path / "m.npz"
    assert run(["train", files["train.npz"], "-o", model, "--epochs", 3, *FAST], capsys)[0] == 0
    rc, out, err = run(["evaluate", model, files["test.npz"], "--json"], capsys)
    assert rc == 0, err
    m = json.loads(out)
    est = optkern.load(model)
    assert m["accuracy"] == est.score(files["Xte"], files["yte"])
    assert m["n_samples"] == len(files["yte"]) and m["log_loss"] > 0


def test_regression_train_predict_evaluate(files, tmp_path, capsys):
    model = tmp_path / "r.npz"
    rc, out, err = run(["train", files["reg.npz"], "-o", model, "--epochs", 30, "--lr", 0.05,
                        "--optimizer", "adam", *FAST], capsys)
    assert rc == 0, err
    assert "task: regression" in out and "r2" in out
    rc, out, err = run(["predict", model, files["reg.npz"]], capsys)
    pred = np.array([float(v) for v in out.split()])
    api = _fit_like_cli(files["Xr"], files["yr"], 30, cls=optkern.LinearRegressor, lr=0.05)
    np.testing.assert_array_equal(pred, api.predict(files["Xr"]))
    rc, out, err = run(["evaluate", model, files["reg.npz"], "--json"], capsys)
    m = json.loads(out)
    assert set(m) == {"n_samples", "r2", "rmse", "mae"} and m["r2"] > 0.5


def test_train_options(files, tmp_path, capsys):
    model = tmp_path / "m.npz"
    rc, out, err = run(["train", files["train.npz"], "-o", model, "--epochs", 4,
                        "--optimizer", "momentum", "--lr", 0.02, "--schedule",
                        "invscaling:power=0.5", "--batch-size", 16, "--loss", "hinge",
                        "--validation-fraction", 0.2, "--seed", 3, "--optimizer-param",
                        "momentum=0.8", "--penalty", "none", *FAST], capsys)
    assert rc == 0, err
    est = optkern.load(model)
    p = est.get_params()
    assert p["optimizer"] == "momentum" and p["lr"] == 0.02 and p["loss"] == "hinge"
    assert p["batch_size"] == 16 and p["early_stopping"] and p["validation_fraction"] == 0.2
    assert p["optimizer_params"] == {"momentum": 0.8} and p["penalty"] is None
    assert p["schedule"] == optkern.schedules.InverseScaling(power=0.5)
    assert p["random_state"] == 3
    assert est.history_[-1]["val_score"] is not None


def test_compiled_backend_end_to_end(files, tmp_path, capsys):
    model = tmp_path / "m.npz"
    rc, out, err = run(["train", files["train.npz"], "-o", model, "--epochs", 2,
                        "--backend", "numba", "-q"], capsys)
    assert rc == 0, err
    rc, out, err = run(["predict", model, files["test.npz"]], capsys)
    assert rc == 0 and len(out.split()) == len(files["yte"])


def test_demo(tmp_path, capsys):
    plot = tmp_path / "curves.png"
    rc, out, err = run(["demo", "--optimizers", "sgd", "adam", "--epochs", 2, "--backend",
                        "numpy", "--plot", plot, "-q"], capsys)
    assert rc == 0, err
    assert "optimizer" in out and "test accuracy" in out and "train time" in out
    for name in ("sgd", "adam", "SGDClassifier", "LogisticRegression"):
        assert name in out
    import matplotlib.image as mpimg
    img = mpimg.imread(str(plot))
    assert img.shape[:2] == (500, 800) and img[..., :3].std() > 0.05


def test_lr_sweep(files, tmp_path, capsys):
    plot = tmp_path / "sweep.png"
    rc, out, err = run(["lr-sweep", files["train.npz"], "--optimizer", "sgd", "adam", "--num",
                        3, "--epochs", 2, "--lr-min", 1e-3, "--lr-max", 0.1, "-o", plot,
                        *FAST], capsys)
    assert rc == 0, err
    assert "best lr for sgd" in out and "best lr for adam" in out
    assert len([ln for ln in out.splitlines() if ln.startswith(("0.001", "0.01", "0.1"))]) == 3
    import matplotlib.image as mpimg
    assert mpimg.imread(str(plot))[..., :3].std() > 0.05


def test_lr_sweep_marks_divergence(files, capsys):
    rc, out, err = run(["lr-sweep", files["reg.npz"], "--optimizer", "sgd", "--num", 2,
                        "--epochs", 10, "--lr-min", 1e-3, "--lr-max", 1e6, *FAST], capsys)
    assert rc == 0, err
    assert "diverged" in out


def test_help_on_every_subcommand(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for cmd in ("demo", "train", "predict", "evaluate", "trajectories", "lr-sweep", "race",
                "bench"):
        assert cmd in top
        assert main([cmd, "--help"]) == 0
        assert "usage: optkern " + cmd in capsys.readouterr().out
    assert main([]) == 2


def test_race_still_runs(capsys):
    rc, out, err = run(["race", "--size", 10, "--max-steps", 20, "--backends", "numpy"],
                       capsys)
    assert rc == 0 and "Adam" in out
    assert run(["race", "--backends", "numpi"], capsys)[0] == 2


def test_python_dash_m_and_exit_codes(capsys):
    assert main(["--version"]) == 0
    assert optkern.__version__ in capsys.readouterr().out
    r = subprocess.run([sys.executable, "-m", "optkern", "train", "missing.svm"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "missing.svm: no such data file" in r.stderr and "Traceback" not in r.stderr


def test_svmlight_index_base_is_remembered(tmp_path, capsys):
    # training file 0-based; a test file without index 0 must not be re-read 1-based
    train = tmp_path / "train.svm"
    train.write_text("0 0:1 1:0.5\n1 0:-1 2:0.5\n0 0:1.2\n1 0:-0.8 1:0.1\n")
    test = tmp_path / "test.svm"
    test.write_text("0 2:1\n1 1:1\n")
    model = tmp_path / "m.npz"
    assert run(["train", train, "-o", model, "--epochs", 2, *FAST], capsys)[0] == 0
    assert io.read_metadata(model)["extra"]["data"]["zero_based"] is True
    rc, out, err = run(["predict", model, test], capsys)
    assert rc == 0, err
    from sklearn.datasets import load_svmlight_file
    Xt, _ = load_svmlight_file(str(test), zero_based=True, n_features=3)
    expected = [cli.format_label(v) for v in optkern.load(model).predict(Xt)]
    assert out.split() == expected
    wide = tmp_path / "wide.svm"
    wide.write_text("0 7:1\n")
    rc, out, err = run(["predict", model, wide], capsys)
    assert rc == 1 and "feature index 7" in err


def test_names_match_the_estimators():
    from optkern import estimators

    assert cli.OPTIMIZER_NAMES is estimators.OPTIMIZER_NAMES   # one copy, from the registry
    assert cli.CLASSIFIER_LOSSES == tuple(estimators.CLASSIFIER_LOSSES)
    assert cli.REGRESSOR_LOSSES == tuple(estimators.REGRESSOR_LOSSES)


# -------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, needle", [
    (["--optimizer", "adamm"], "did you mean 'adam'"),
    (["--loss", "hinje"], "did you mean 'hinge'"),
    (["--backend", "numbaa"], "did you mean 'numba'"),
    (["--schedule", "cosin"], "did you mean 'cosine'"),
    (["--lr", "-1"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--validation-fraction", "1.5"], "--validation-fraction"),
    (["--optimizer-param", "momentum"], "KEY=VALUE"),
    (["--schedule", "step:gamma=2"], "step"),
])
def test_bad_options_are_usage_errors(files, capsys, argv, needle):
    rc, out, err = run(["train", files["train.npz"], *argv], capsys)
    assert rc == 2
    assert needle in err
    if "did you mean" in needle:
        assert "choose from" in err


def test_loss_of_the_wrong_task(files, capsys):
    rc, out, err = run(["train", files["reg.npz"], "--task", "regression", "--loss", "hinge",
                        *FAST], capsys)
    assert rc == 2 and "classification loss" in err


def test_missing_files_are_usage_errors(files, tmp_path, capsys):
    assert run(["train", tmp_path / "nope.svm"], capsys)[0] == 2
    rc, _, err = run(["predict", tmp_path / "nope.npz", files["test.svm"]], capsys)
    assert rc == 2 and "no such model file" in err
    rc, _, err = run(["train", files["train.npz"], "-o", tmp_path / "nodir" / "m.npz"], capsys)
    assert rc == 2 and "does not exist" in err


@pytest.mark.parametrize("name, text, needle", [
    ("bad.svm", "1 1:0.5 2:0.1\n0 1:0.2\n1 1:0.3 2:oops\n", "bad.svm, line 3"),
    ("bad2.svm", "1 1:0.5\n0 1:0.2 x\n", "bad2.svm, line 2"),
    ("bad.csv", "a,b,y\n1,2,0\n3,4,1\n5,6\n", "bad.csv, line 4"),
    ("bad2.csv", "1,2,0\n3,four,1\n", "bad2.csv, line 2"),
    ("one.csv", "1,2,0\n3,4,0\n", "at least 2 classes"),
])
def test_malformed_data_is_a_data_error(tmp_path, capsys, name, text, needle):
    p = tmp_path / name
    p.write_text(text)
    model = tmp_path / "m.npz"
    model.write_bytes(b"previous model")
    rc, out, err = run(["train", p, "-o", model, *FAST], capsys)
    assert rc == 1
    assert needle in err
    assert model.read_bytes() == b"previous model"  # nothing overwritten


def test_unseen_test_labels(files, tmp_path, capsys):
    model = tmp_path / "m.npz"
    rc, out, err = run(["train", files["train.svm"], "--test", files["unseen.svm"], "-o", model,
                        *FAST], capsys)
    assert rc == 1 and "labels 7, 9 were" in err and "not seen in training" in err
    assert not model.exists()  # refused before training
    assert run(["train", files["train.svm"], "-o", model, "--epochs", 2, *FAST], capsys)[0] == 0
    rc, out, err = run(["evaluate", model, files["unseen.svm"]], capsys)
    assert rc == 1 and "not seen in training" in err


def test_wrong_kind_of_model_file(files, tmp_path, capsys):
    rc, _, err = run(["predict", files["train.npz"], files["test.npz"]], capsys)
    assert rc == 1 and "not an optkern model file" in err
    rc, _, err = run(["evaluate", files["train.svm"], files["test.svm"]], capsys)
    assert rc == 1 and "not an optkern model file" in err
    model = tmp_path / "m.npz"
    assert run(["train", files["train.npz"], "-o", model, "--epochs", 1, *FAST], capsys)[0] == 0
    meta = io.read_metadata(model)
    with np.load(model, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta.pop("extra")
    meta["format_version"] = 99
    arrays[io.META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    newer = tmp_path / "newer.npz"
    np.savez(newer, **arrays)
    rc, _, err = run(["predict", newer, files["test.npz"]], capsys)
    assert rc == 1 and "newer optkern" in err


def test_predict_feature_mismatch_and_proba_without_probabilities(files, tmp_path, capsys):
    model = tmp_path / "m.npz"
    assert run(["train", files["train.npz"], "-o", model, "--epochs", 1, "--loss", "hinge",
                *FAST], capsys)[0] == 0
    rc, _, err = run(["predict", model, files["test.npz"], "--proba"], capsys)
    assert rc == 2 and "no probabilities" in err
    rc, _, err = run(["predict", model, files["reg.npz"]], capsys)
    assert rc == 1 and "3 features, but the model takes 4" in err
    out_file = tmp_path / "pred.txt"
    out_file.write_text("old predictions")
    rc, _, err = run(["predict", model, files["reg.npz"], "-o", out_file], capsys)
    assert rc == 1 and out_file.read_text() == "old predictions"


def test_divergence_is_a_data_error_and_keeps_the_old_model(files, tmp_path, capsys):
    model = tmp_path / "m.npz"
    model.write_bytes(b"previous model")
    rc, out, err = run(["train", files["reg.npz"], "--optimizer", "sgd", "--lr", 1e6,
                        "--epochs", 20, "-o", model, *FAST], capsys)
    assert rc == 1 and "diverged" in err
    assert model.read_bytes() == b"previous model"


def test_plot_options_without_matplotlib(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    for argv in (["demo", "--plot", tmp_path / "c.png"],
                 ["trajectories", "-o", tmp_path / "t.png"],
                 ["lr-sweep", files["train.npz"], "-o", tmp_path / "s.png"]):
        rc, out, err = run(argv, capsys)
        assert rc == 2
        assert "pip install 'optkern[plot]'" in err
    assert not any(tmp_path.iterdir())


def test_bad_plot_file_name(tmp_path, capsys):
    rc, _, err = run(["demo", "--plot", tmp_path / "curves.xyz"], capsys)
    assert rc == 2 and "unsupported picture format" in err
