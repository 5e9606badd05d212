"""Issue 16: the command line under hostile use -- outputs never replace inputs."""

import hashlib
import os

import numpy as np
import pytest

from optkern.cli import main

FAST = ["--backend", "numpy", "-q", "--epochs", "2"]


def _digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    X = np.round(rng.normal(size=(40, 3)), 3)
    y = (X[:, 0] > 0).astype(int)
    path = tmp_path / "data.svm"
    with open(path, "w") as fh:
        for row, label in zip(X, y):
            fh.write(f"{label} " + " ".join(f"{j + 1}:{v}" for j, v in enumerate(row)) + "\n")
    model = tmp_path / "model.npz"
    assert main(["train", str(path), "-o", str(model)] + FAST) == 0
    return tmp_path, path, model


def _links(tmp_path, target, how):
    if how == "same":
        return target
    link = tmp_path / f"{how}-{target.name}"
    if how == "symlink":
        os.symlink(target, link)
    elif how == "relative":
        return os.path.relpath(target)
    else:
        os.link(target, link)
    return link


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "relative"])
@pytest.mark.parametrize("case", ["train-data", "train-test", "predict-data", "predict-model"])
def test_an_output_never_replaces_an_input(data, capsys, how, case, monkeypatch):
    tmp_path, path, model = data
    monkeypatch.chdir(tmp_path)
    before = {p: _digest(p) for p in (path, model)}
    victim = {"train-data": path, "train-test": path, "predict-data": path,
              "predict-model": model}[case]
    out = _links(tmp_path, victim, how)
    if case == "train-data":
        argv = ["train", path, "-o", out] + FAST
    elif case == "train-test":
        other = tmp_path / "other.svm"
        other.write_bytes(path.read_bytes())
        argv = ["train", other, "--test", path, "-o", out] + FAST
    else:
        argv = ["predict", model, path, "-o", out]
    rc, stdout, err = run(argv, capsys)
    assert rc == 2, err
    assert "same file" in err and str(out) in err
    assert stdout == ""                      # refused before any work (no "data: ..." line)
    assert {p: _digest(p) for p in (path, model)} == before
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith(".")) == []


def test_distinct_outputs_are_still_written(data, capsys):
    tmp_path, path, model = data
    rc, _, err = run(["predict", model, path, "-o", tmp_path / "pred.txt"], capsys)
    assert rc == 0, err
    assert len((tmp_path / "pred.txt").read_text().splitlines()) == 40
    # overwriting an earlier *output* is fine: it is not an input of this command
    rc, _, err = run(["train", path, "-o", model] + FAST, capsys)
    assert rc == 0, err


def test_two_outputs_of_one_command_must_differ(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc, _, err = run(["trajectories", "-o", tmp_path / "a.gif", "--animate",
                      tmp_path / "a.gif", "--steps", "3"], capsys)
    assert rc == 2 and "same file" in err
