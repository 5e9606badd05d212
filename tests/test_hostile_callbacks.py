"""Issue 16 item 3: callbacks do what the README says -- a callback returning
False stops training, and every callback is called every epoch."""

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression

import optkern


def _problem(kind, seed=0):
    if kind == "classifier":
        X, y = make_classification(80, 5, n_informative=3, n_classes=3, random_state=seed)
        return optkern.LinearClassifier, X, y
    X, y = make_regression(80, 5, noise=0.1, random_state=seed)
    return optkern.LinearRegressor, X, y / np.std(y)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("solver,backend", [("sgd", "numpy"), ("sgd", "numba"),
                                            ("lbfgs", "numpy")])
@pytest.mark.parametrize("false", [False, np.False_], ids=["False", "np.False_"])
def test_false_stops_and_every_callback_runs(kind, solver, backend, false):
    cls, X, y = _problem(kind)
    stop_at = 3
    calls = {"first": [], "second": [], "third": []}

    def first(row):          # True never stopped anything in the README; it continues
        calls["first"].append(row["epoch"])
        return True

    def second(row):
        calls["second"].append(row["epoch"])
        return false if row["epoch"] == stop_at else None

    def third(row):
        calls["third"].append(row["epoch"])
        row["epoch"] = -1    # a callback's copy: later callbacks and history_ unaffected

    model = cls(callbacks=[first, second, third], max_epochs=10 ** 9, tol=None,
                solver=solver, backend=backend, random_state=0).fit(X, y)
    expected = list(range(1, stop_at + 1))
    assert calls == {"first": expected, "second": expected, "third": expected}
    assert model.n_iter_ == stop_at
    assert [h["epoch"] for h in model.history_] == expected


def test_none_and_truthy_values_continue_to_max_epochs():
    cls, X, y = _problem("classifier")
    seen = []
    model = cls(callbacks=[lambda r: seen.append(r["epoch"]), lambda r: 1],
                max_epochs=4, tol=None, backend="numpy").fit(X, y)
    assert model.n_iter_ == 4 and seen == [1, 2, 3, 4]


def test_partial_fit_calls_callbacks_once():
    cls, X, y = _problem("classifier")
    seen = []
    model = cls(callbacks=[lambda r: seen.append(r["epoch"]) or False], backend="numpy")
    model.partial_fit(X, y, classes=np.unique(y))
    model.partial_fit(X, y)
    assert seen == [1, 2]
