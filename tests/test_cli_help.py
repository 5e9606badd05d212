"""Every option and positional argument of every command says what it is
(issue 17 item 7), and the svmlight options behave as scikit-learn's loader."""
import argparse

import numpy as np
import pytest

from optkern import cli


def _commands():
    parser = cli.build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert subs, "the parser has no sub-commands"
    return parser, sorted(subs[0].choices.items())


def test_every_option_of_every_command_has_help():
    parser, commands = _commands()
    missing = []
    for name, sub in [("optkern", parser)] + commands:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "no help text: " + ", ".join(missing)


def _write_zero_based(path, X, y):
    # zero-based, column 0 all zeros: nothing in the file says index 0 exists
    with open(path, "w") as fh:
        for row, label in zip(X, y):
            items = " ".join(f"{j}:{v:g}" for j, v in enumerate(row) if v != 0)
            fh.write(f"{label} {items}\n")


@pytest.mark.parametrize("flag", ["true", "yes"])
def test_zero_based_true_and_n_features(tmp_path, flag, capsys):
    rng = np.random.default_rng(0)
    n, d = 40, 6
    X = np.round(rng.standard_normal((n, d)), 2)
    X[:, 0] = 0
    y = (X[:, 1] > 0).astype(int)
    path = tmp_path / "zb.svm"
    _write_zero_based(path, X, y)
    model = tmp_path / "m.npz"
    base = ["train", str(path), "-q", "--epochs", "2", "-o", str(model)]
    assert cli.main(base + ["--zero-based", flag]) == 0
    out = capsys.readouterr().out
    # column 0 empty: auto reads it as one-based (d - 1 features); true keeps d
    assert f"{n} samples x {d} features" in out
    assert cli.main(base + ["--zero-based", flag, "--n-features", str(d + 2)]) == 0
    assert f"{n} samples x {d + 2} features" in capsys.readouterr().out
    assert cli.main(base + ["--zero-based", "auto"]) == 0
    assert f"{n} samples x {d - 1} features" in capsys.readouterr().out


def test_n_features_below_the_file_is_refused(tmp_path, capsys):
    path = tmp_path / "a.svm"
    path.write_text("1 1:0.5 7:1\n0 2:1\n")
    code = cli.main(["train", str(path), "-q", "--epochs", "1", "--n-features", "3"])
    assert code != 0
    assert "7" in capsys.readouterr().err


def test_zero_based_false_shifts_indices(tmp_path, capsys):
    path = tmp_path / "b.svm"
    path.write_text("1 1:0.5 4:1\n0 2:1\n1 3:2\n")
    assert cli.main(["train", str(path), "-q", "--epochs", "1", "--zero-based", "false"]) == 0
    assert "3 samples x 4 features" in capsys.readouterr().out


def test_make_data_writes_a_split_the_loader_reads_back(tmp_path, capsys):
    from sklearn.datasets import load_iris

    from optkern.io import load_data

    tr, te = tmp_path / "train.svm", tmp_path / "test.svm"
    assert cli.main(["make-data", "iris", str(tr), str(te), "--seed", "3"]) == 0
    X, y = load_iris(return_X_y=True)
    Xtr, ytr, _ = load_data(str(tr))
    Xte, yte, _ = load_data(str(te), n_features=Xtr.shape[1])
    assert (Xtr.shape[0], Xte.shape[0]) == (112, 38)
    assert Xtr.shape[1] == X.shape[1]
    both = np.vstack([Xtr.toarray(), Xte.toarray()])
    # every sample exactly once, labels with it (rows compared as sorted tuples)
    got = sorted(map(tuple, np.column_stack([both, np.concatenate([ytr, yte])])))
    want = sorted(map(tuple, np.column_stack([X, y])))
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-15)
    assert f"{tr}: 112 samples x 4 features (iris)" in capsys.readouterr().out
    # an existing input is never overwritten by an output of the same path
    assert cli.main(["make-data", "iris", str(tr), str(tr)]) == 2
