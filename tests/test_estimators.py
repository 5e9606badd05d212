"""LinearClassifier / LinearRegressor: scikit-learn conformance and quality."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import (load_breast_cancer, load_diabetes, load_digits, load_iris,
                              load_wine, make_classification, make_regression)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import optkern
from optkern.estimators import OPTIMIZER_NAMES, TrainingDiverged

SERIAL_BACKENDS = [b for b in ("numba", "cython") if b in optkern.available_backends()]


def _split(loader):
    X, y = loader(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0,
                                          stratify=y if loader is not load_diabetes else None)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


_REFERENCE = {}


def _reference_score(loader):
    if loader not in _REFERENCE:
        Xtr, Xte, ytr, yte = _split(loader)
        model = Ridge() if loader is load_diabetes else LogisticRegression(max_iter=5000)
        _REFERENCE[loader] = model.fit(Xtr, ytr).score(Xte, yte)
    return _REFERENCE[loader]


# ----------------------------------------------------------- scikit-learn API

# Checks that SGD-style training cannot meet exactly, as for scikit-learn's own
# SGDClassifier/SGDRegressor: with minibatches drawn in a shuffled order, a
# weight of 2 is not the same trajectory as a duplicated row.
EXPECTED_FAILED = {
    "check_sample_weight_equivalence_on_dense_data":
        "minibatch SGD: weight 2 and a duplicated row give different trajectories",
    "check_sample_weight_equivalence_on_sparse_data":
        "minibatch SGD: weight 2 and a duplicated row give different trajectories",
}


@pytest.mark.parametrize("Est", [optkern.LinearClassifier, optkern.LinearRegressor])
def test_check_estimator(Est):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_estimator(Est(random_state=0),
                        expected_failed_checks=EXPECTED_FAILED)


def test_full_batch_deterministic_fit_respects_sample_weight_equivalence():
    # with full batches and sequential order, weights equal duplicated rows
    X, y = make_classification(60, 5, random_state=0)
    Xd = np.vstack([X, X[:10]])
    yd = np.concatenate([y, y[:10]])
    sw = np.ones(60)
    sw[:10] = 2
    kw = dict(batch_size=None, sampling="sequential", max_epochs=50, tol=None,
              optimizer="sgd", random_state=0, backend="numpy")
    a = optkern.LinearClassifier(**kw).fit(X, y, sample_weight=sw)
    b = optkern.LinearClassifier(**kw).fit(Xd, yd)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-10, atol=1e-12)


def test_pipeline_and_grid_search():
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), optkern.LinearClassifier(random_state=0))
    grid = GridSearchCV(pipe, {"linearclassifier__alpha": [1e-4, 1e-2]}, cv=3)
    grid.fit(X, y)
    assert grid.best_score_ > 0.9
    assert grid.predict(X).shape == (150,)


# ------------------------------------------- quality with default settings

@pytest.mark.parametrize("loader", [load_digits, load_breast_cancer, load_iris, load_wine])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_NAMES))
def test_default_classifier_matches_logistic_regression(loader, optimizer):
    Xtr, Xte, ytr, yte = _split(loader)
    model = optkern.LinearClassifier(optimizer=optimizer, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # defaults must converge
        model.fit(Xtr, ytr)
    acc = model.score(Xte, yte)
    assert acc >= _reference_score(loader) - 0.01, (optimizer, acc, _reference_score(loader))


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_NAMES))
def test_default_regressor_matches_ridge(optimizer):
    Xtr, Xte, ytr, yte = _split(load_diabetes)
    scale = ytr.std()
    model = optkern.LinearRegressor(optimizer=optimizer, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.fit(Xtr, (ytr - ytr.mean()) / scale)
    r2 = model.score(Xte, (yte - ytr.mean()) / scale)
    # FTRL-proximal's constant rate 0.1 (the one the classifiers need: 0.03
    # costs iris 13 points) leaves its last iterate 0.010-0.011 below Ridge's
    # 0.358 here on every seed tried (0.347-0.350 over random_state 0-7; lr=0.03
    # would give 0.361): an honest gap of the method, held to 0.015
    gap = 0.015 if optimizer == "ftrl" else 0.01
    assert r2 >= _reference_score(load_diabetes) - gap, (optimizer, r2)


def test_large_data_default_fit():
    X, y = make_classification(20_000, 40, n_informative=20, n_classes=5, random_state=0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
    sc = StandardScaler().fit(Xtr)
    ref = LogisticRegression(max_iter=2000).fit(sc.transform(Xtr), ytr).score(sc.transform(Xte), yte)
    model = optkern.LinearClassifier(random_state=0).fit(sc.transform(Xtr), ytr)
    assert model.score(sc.transform(Xte), yte) >= ref - 0.01


# ------------------------------------------------------- training mechanics

def _small_problem(n=120, d=6, k=3, seed=0, dtype=np.float64):
    X, y = make_classification(n, d, n_informative=4, n_classes=k, random_state=seed)
    return StandardScaler().fit_transform(X).astype(dtype), y


def _logreg_train_accuracy(X, y):
    return LogisticRegression(max_iter=5000).fit(X, y).score(X, y)


# every loss and each of three optimizer families, without compiling the full
# cross product (each combination is a separate compiled epoch)
LOSS_OPTIMIZER_PAIRS = [("softmax", "adam"), ("log", "sgd"), ("hinge", "rmsprop"),
                        ("modified_huber", "adam"), ("multiclass_hinge", "sgd"),
                        ("squared_hinge", "rmsprop")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss, optimizer", LOSS_OPTIMIZER_PAIRS)
def test_backends_train_the_same_model(dtype, loss, optimizer):
    X, y = _small_problem(dtype=dtype)
    kw = dict(loss=loss, optimizer=optimizer, max_epochs=5, tol=None, random_state=3,
              batch_size=16, average=2)
    ref = optkern.LinearClassifier(backend="numpy", **kw).fit(X, y)
    rtol = 1e-9 if dtype == np.float64 else 2e-4
    for backend in [b for b in optkern.available_backends() if b not in ("numpy", "cuda")]:
        got = optkern.LinearClassifier(backend=backend, **kw).fit(X, y)
        np.testing.assert_allclose(got.coef_, ref.coef_, rtol=rtol, atol=rtol * 10,
                                   err_msg=backend)
        np.testing.assert_allclose(got.intercept_, ref.intercept_, rtol=rtol, atol=rtol * 10)
        assert got.coef_.dtype == dtype


@pytest.mark.parametrize("backend", SERIAL_BACKENDS + ["numpy"])
def test_seeded_fit_is_reproducible_bit_for_bit(backend):
    X, y = _small_problem()
    kw = dict(optimizer="sgld", max_epochs=4, tol=None, random_state=7, backend=backend)
    a = optkern.LinearClassifier(**kw).fit(X, y)
    b = optkern.LinearClassifier(**kw).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_)
    c = optkern.LinearClassifier(**{**kw, "random_state": 8}).fit(X, y)
    assert not np.array_equal(a.coef_, c.coef_)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_partial_fit_over_chunks_equals_fit(backend):
    X, y = _small_problem(n=96)
    kw = dict(optimizer="adam", batch_size=8, sampling="sequential", random_state=0,
              backend=backend, tol=None)
    full = optkern.LinearClassifier(max_epochs=1, **kw).fit(X, y)
    part = optkern.LinearClassifier(**kw)
    for start in range(0, 96, 24):
        part.partial_fit(X[start:start + 24], y[start:start + 24], classes=np.unique(y))
    np.testing.assert_allclose(part.coef_, full.coef_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(part.intercept_, full.intercept_, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("batch_size", [1, None])
def test_per_example_and_full_batch_modes(batch_size):
    X, y = _small_problem()
    model = optkern.LinearClassifier(batch_size=batch_size, optimizer="sgd", random_state=0,
                                     max_epochs=300).fit(X, y)
    assert model.score(X, y) >= _logreg_train_accuracy(X, y) - 0.03
    steps_per_epoch = X.shape[0] if batch_size == 1 else 1
    assert model.t_ == steps_per_epoch * model.n_iter_


def test_full_batch_gd_decreases_the_loss_monotonically():
    X, y = _small_problem()
    model = optkern.LinearClassifier(batch_size=None, optimizer="sgd", lr=0.1, tol=None,
                                     max_epochs=50, backend="numba").fit(X, y)
    losses = [h["loss"] for h in model.history_]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))


@pytest.mark.parametrize("sampling", ["epoch", "replacement", "sequential"])
def test_sampling_modes_train(sampling):
    X, y = _small_problem()
    model = optkern.LinearClassifier(sampling=sampling, random_state=0).fit(X, y)
    assert model.score(X, y) >= _logreg_train_accuracy(X, y) - 0.03


def test_schedule_inside_fit_follows_its_formula():
    X, y = _small_problem(n=64)
    sched = optkern.schedules.StepDecay(step_size=4, gamma=0.5)
    model = optkern.LinearClassifier(optimizer="sgd", lr=0.2, schedule=sched, batch_size=16,
                                     max_epochs=6, tol=None, backend="numba").fit(X, y)
    lrs = [h["lr"] for h in model.history_]
    # 4 steps per epoch: the rate at the start of epoch e is 0.2 * 0.5^e
    np.testing.assert_allclose(lrs, [0.2 * 0.5 ** e for e in range(6)])


def test_lbfgs_matches_logistic_regression_objective():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    C = 1.0
    alpha = 1.0 / (C * X.shape[0])
    ours = optkern.LinearClassifier(solver="lbfgs", alpha=alpha, tol=1e-8,
                                    max_epochs=2000).fit(X, y)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=2e-4)


def test_divergence_raises_and_keeps_finite_weights():
    X, y = _small_problem()
    model = optkern.LinearRegressor(optimizer="sgd", lr=1e6, max_epochs=50, random_state=0)
    yr = X @ np.arange(X.shape[1]) + 1.0
    with pytest.raises(TrainingDiverged, match=r"epoch \d+.*lower learning rate"):
        model.fit(X, yr)
    assert np.all(np.isfinite(model.coef_)) and np.all(np.isfinite(model.intercept_))
    with pytest.warns(RuntimeWarning, match="diverged"):
        model.set_params(on_divergence="warn").fit(X, yr)
    assert np.all(np.isfinite(model.coef_))


def test_keyboard_interrupt_keeps_the_last_completed_epoch():
    X, y = _small_problem()
    seen = []

    def interrupt(row):
        seen.append(row["epoch"])
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    model = optkern.LinearClassifier(callbacks=[interrupt], tol=None, max_epochs=10,
                                     random_state=0)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        model.fit(X, y)
    assert model.n_iter_ == 3
    assert model.predict(X).shape == (X.shape[0],)


def test_callback_can_stop_training():
    X, y = _small_problem()
    # README: "return False to stop"
    model = optkern.LinearClassifier(callbacks=[lambda row: row["epoch"] < 2], tol=None,
                                     max_epochs=100).fit(X, y)
    assert model.n_iter_ == 2 and len(model.history_) == 2
    assert set(model.history_[0]) == {"epoch", "loss", "val_score", "lr", "time"}


def test_early_stopping_records_validation_scores():
    X, y = _small_problem(n=300)
    model = optkern.LinearClassifier(early_stopping=True, random_state=0).fit(X, y)
    assert all(0 <= h["val_score"] <= 1 for h in model.history_)
    assert model.n_iter_ < 1000


def test_sparse_csr_trains_like_dense():
    X, y = _small_problem()
    X[np.abs(X) < 0.8] = 0.0
    # sparse_updates="dense": the dense step on CSR (lazy Adam differs by design,
    # tests/test_sparse.py)
    kw = dict(optimizer="adam", max_epochs=5, tol=None, random_state=0, backend="numba",
              sparse_updates="dense")
    dense = optkern.LinearClassifier(**kw).fit(X, y)
    sparse = optkern.LinearClassifier(**kw).fit(sp.csr_matrix(X), y)
    np.testing.assert_allclose(sparse.coef_, dense.coef_, rtol=1e-9, atol=1e-12)


def test_polyak_averaging_changes_the_reported_weights():
    X, y = _small_problem()
    kw = dict(optimizer="sgd", max_epochs=5, tol=None, random_state=0)
    plain = optkern.LinearClassifier(**kw).fit(X, y)
    avg = optkern.LinearClassifier(average=True, **kw).fit(X, y)
    assert not np.allclose(plain.coef_, avg.coef_)
    assert avg.score(X, y) >= _logreg_train_accuracy(X, y) - 0.05


def test_class_weight_balanced_shifts_the_boundary():
    X, y = make_classification(300, 4, weights=[0.9, 0.1], random_state=0)
    plain = optkern.LinearClassifier(random_state=0).fit(X, y)
    bal = optkern.LinearClassifier(class_weight="balanced", random_state=0).fit(X, y)
    assert (bal.predict(X) == 1).sum() > (plain.predict(X) == 1).sum()


@pytest.mark.parametrize("loss", ["softmax", "log", "modified_huber"])
def test_predict_proba_is_a_distribution(loss):
    X, y = _small_problem()
    model = optkern.LinearClassifier(loss=loss, random_state=0).fit(X, y)
    P = model.predict_proba(X)
    assert P.shape == (X.shape[0], 3)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    assert np.all(P >= 0)
    if loss == "softmax":
        np.testing.assert_allclose(np.exp(model.predict_log_proba(X)), P, rtol=1e-10)


def test_predict_proba_absent_for_hinge():
    model = optkern.LinearClassifier(loss="hinge")
    assert not hasattr(model, "predict_proba")


def test_regressor_multi_output_and_losses():
    X, Y = make_regression(200, 5, n_targets=2, noise=0.1, random_state=0)
    Y = (Y - Y.mean(0)) / Y.std(0)
    for loss in ["squared", "huber", "epsilon_insensitive", "absolute"]:
        model = optkern.LinearRegressor(loss=loss, random_state=0).fit(X, Y)
        assert model.coef_.shape == (2, 5)
        assert model.score(X, Y) > 0.95, loss


@pytest.mark.parametrize("kwargs, match", [
    (dict(loss="sofmax"), "did you mean 'softmax'"),
    (dict(optimizer="adamm"), "optimizer"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(max_epochs=0), "max_epochs"),
    (dict(sampling="shuffle"), "sampling"),
    (dict(backend="gpu"), "backend"),
    (dict(solver="lbfgs", loss="hinge"), "smooth"),
    (dict(optimizer_params={"momentum": 0.9}, optimizer="adam"), "optimizer_params"),
])
def test_bad_parameters_raise_naming_the_argument(kwargs, match):
    X, y = _small_problem()
    with pytest.raises((ValueError, TypeError), match=match):
        optkern.LinearClassifier(**kwargs).fit(X, y)


def test_bad_data_raises():
    X, y = _small_problem()
    model = optkern.LinearClassifier()
    with pytest.raises(ValueError, match="class"):
        model.fit(X, np.zeros(len(y)))
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(Xn, y)
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="classes"):
        optkern.LinearClassifier().partial_fit(X, y)


def test_auto_trains_small_models_on_the_numba_epoch(monkeypatch):
    """backend="auto" picks the Numba epoch (vectorised W^T loops) over the
    Cython twin for small models, and the parallel one for large models (on a
    quiet 2-core machine; a busy one stays serial: tests/test_auto_rule.py)."""
    import os
    from optkern import _backend
    monkeypatch.setattr(_backend, "_CORES", 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    est = optkern.LinearClassifier()
    assert est._optimizer_backend(640) == "numba"
    assert est._optimizer_backend(_backend.PARALLEL_MIN_SIZE) == "numba-parallel"
    assert optkern.LinearClassifier(backend="cython")._optimizer_backend(640) == "cython"
