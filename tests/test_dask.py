"""optkern.dask on a LocalCluster (processes, 2 workers, 1 thread each).

One cluster serves the whole module (the xdist group keeps the module on one
test process).  The distributed fits are checked against the in-memory
estimators on the concatenated data: L-BFGS to the solver's tolerance, SGD
rounds within half a point of accuracy; the worker-side units (a shard's
loss and gradient, a shard's round) against the in-memory estimator without
a cluster, so a change of the estimators' internals shows here first.
"""

import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import optkern  # noqa: E402
import optkern.dask as okd  # noqa: E402
from optkern.dask import _worker  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, make_classification  # noqa: E402,E501
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

pytestmark = pytest.mark.xdist_group("dask")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _scaled(X):
    return StandardScaler().fit_transform(X)


def _split(X, y, seed=0):
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), sc.transform(Xte), ytr, yte


def _dask(X, y, parts=2):
    n = X.shape[0]
    rows = -(-n // parts)
    if sp.issparse(X):
        Xd = da.from_array(X, chunks=(rows, X.shape[1]), asarray=False)
    else:
        Xd = da.from_array(X, chunks=(rows, X.shape[1]))
    return Xd, da.from_array(y, chunks=rows)


def _close(a, b, rtol, atol):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------- worker-side units
def test_shard_loss_grad_is_the_in_memory_objective():
    """The shard objective the workers sum is the estimator's own weighted
    loss and gradient (without the penalty)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 7))
    y = rng.integers(0, 3, 300)
    sw = rng.uniform(0.5, 2.0, 300)
    est = optkern.LinearClassifier(alpha=0.0)
    state = {"n_features_in_": 7, "classes_": np.arange(3)}
    part = _worker.make_part(X, y, sw, "p")
    shard = _worker.make_shard(0, {"d": 7, "classes": np.arange(3), "class_weight": None,
                                   "validation_fraction": None, "seed": None,
                                   "classify": True}, part)
    theta = rng.standard_normal(7 * 3 + 3)
    model = ("LinearClassifier", est.get_params(), state, (7, 3, True))
    wl, wg, wsum, _ = _worker.shard_loss_grad(shard, (model, theta))
    loss, dW, db = optkern.loss_and_grad(X, y, theta[:21].reshape(7, 3), theta[21:],
                                         loss="softmax", sample_weight=sw)
    assert wsum == pytest.approx(sw.sum())
    assert wl / wsum == pytest.approx(loss, rel=1e-10)
    _close(wg / wsum, np.concatenate([dW.ravel(), db]), 1e-9, 1e-12)


def test_shard_round_is_the_in_memory_partial_fit():
    """One shard, one local epoch: exactly the in-memory partial_fit with the
    same generator (the state travels as the model file's attributes)."""
    X, y = load_breast_cancer(return_X_y=True)
    X = _scaled(X)
    params = dict(backend="cython", random_state=0, optimizer="adam")
    shard = _worker.make_shard(0, {"d": 30, "classes": np.array([0, 1]), "class_weight": None,
                                   "validation_fraction": None, "seed": None, "classify": True},
                               _worker.make_part(X, y, None, "p"))
    model = ("LinearClassifier", dict(params, warm_start=True), {}, (30, 1, True))
    out = _worker.shard_round(shard, model, [5, 0, 0], 2, {"classes": np.array([0, 1])})
    ref = optkern.LinearClassifier(**params)
    ref._rng = np.random.default_rng([5, 0, 0])
    ref.partial_fit(X, y, classes=[0, 1])
    ref.partial_fit(X, y)
    assert out["loss"] == ref.history_[-1]["loss"]
    np.testing.assert_array_equal(out["state"]["_W"], ref._W)
    assert "coef_" not in out["state"]           # W^T: not sent without averaging
    assert out["state"]["_opt_state"]["state"][0]["step"] == ref._opt_state["state"][0]["step"]
    # and a second round continues from that state like a third partial_fit
    model2 = ("LinearClassifier", dict(params, warm_start=True),
              dict(out["state"], classes_=np.array([0, 1]), n_features_in_=30,
                   **okd._coef_state(out["state"]["_W"], out["state"]["_b"], 2)),
              (30, 1, True))
    out2 = _worker.shard_round(shard, model2, [5, 1, 0], 1, {})
    ref._rng = np.random.default_rng([5, 1, 0])
    ref.partial_fit(X, y)
    np.testing.assert_array_equal(out2["state"]["_W"], ref._W)


def test_average_weights_arrays_and_adds_step_counters():
    base = {"_t": 10, "_opt_state": {"state": {0: {"step": 10}}}}
    a = {"_t": 14, "_W": np.array([1.0, 3.0]), "_opt_state": {"state": {0: {"step": 14,
                                                                              "m": np.ones(2)}}}}
    b = {"_t": 12, "_W": np.array([3.0, 5.0]), "_opt_state": {"state": {0: {"step": 12,
                                                                              "m": np.zeros(2)}}}}
    avg = _worker.average_states([a, b], [3, 1], base)
    _close(avg["_W"], [1.5, 3.5], 0, 1e-15)
    assert avg["_t"] == 16 and avg["_opt_state"]["state"][0]["step"] == 16
    _close(avg["_opt_state"]["state"][0]["m"], [0.75, 0.75], 0, 1e-15)


def test_mirrored_parameters():
    """Every in-memory parameter, plus client and local_epochs."""
    for dist, mem in ((okd.LinearClassifier, optkern.LinearClassifier),
                      (okd.LinearRegressor, optkern.LinearRegressor)):
        p = dist().get_params()
        assert set(p) == set(mem().get_params()) | {"client", "local_epochs"}
        assert dist(alpha=0.5, local_epochs=3).get_params()["alpha"] == 0.5


def test_no_client_says_how_to_start_one():
    code = ("import dask.array as da, optkern.dask as o\n"
            "try:\n    o.LinearClassifier().fit(da.ones((4, 2)), da.ones(4))\n"
            "except ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert "LocalCluster(n_workers=2" in out.stdout and "Client(" in out.stdout, out


# ------------------------------------------------------------------ lbfgs
def test_lbfgs_equals_in_memory_fit(client):
    X, y = load_breast_cancer(return_X_y=True)
    X = _scaled(X)
    Xd, yd = _dask(X, y, parts=3)
    m = okd.LinearClassifier(solver="lbfgs", alpha=1e-3).fit(Xd, yd)
    ref = optkern.LinearClassifier(solver="lbfgs", alpha=1e-3).fit(X, y)
    _close(m.coef_, ref.coef_, 1e-6, 1e-8)
    _close(m.intercept_, ref.intercept_, 1e-6, 1e-8)
    assert m.n_iter_ == ref.n_iter_ and len(m.history_) == len(ref.history_)


def test_lbfgs_multiclass_csr_float32_with_weights(client):
    X, y = load_digits(return_X_y=True)
    X = sp.csr_matrix((X / 16.0).astype(np.float32))
    w = np.random.default_rng(1).uniform(0.5, 1.5, X.shape[0])
    Xd, yd = _dask(X, y)
    wd = da.from_array(w, chunks=yd.chunks)
    m = okd.LinearClassifier(solver="lbfgs", alpha=1e-2, class_weight="balanced")
    m.fit(Xd, yd, sample_weight=wd)
    ref = optkern.LinearClassifier(solver="lbfgs", alpha=1e-2, class_weight="balanced")
    ref.fit(X, y, sample_weight=w)
    assert m.coef_.dtype == np.float32 and m.coef_.shape == (10, 64)
    # float32 kernels summed in a different order: the solver's tolerance
    _close(m.coef_, ref.coef_, 2e-3, 2e-3)
    assert m.score(Xd, yd) == pytest.approx(ref.score(X, y), abs=0.003)


def test_auto_defaults_resolved_on_the_whole_data(client):
    """alpha="auto" and optimizer="auto" resolve as the in-memory estimator
    resolves them on the concatenated data: on sparse, wide data alpha is
    1/n_samples of all shards (not of one), and the sparse-wide optimizer,
    rate, batch size and schedule apply; L-BFGS then finds the same model."""
    rng = np.random.default_rng(3)
    n, d = 600, 8192
    X = sp.random(n, d, density=0.002, format="csr", random_state=3, dtype=np.float64)
    y = (X @ rng.standard_normal(d) > 0).astype(int)
    Xd, yd = _dask(X, y, parts=3)
    m = okd.LinearClassifier(solver="lbfgs").fit(Xd, yd)
    ref = optkern.LinearClassifier(solver="lbfgs").fit(X, y)
    _close(m.coef_, ref.coef_, 1e-3, 1e-4)
    from optkern.dask import _data
    ds = _data.Dataset(n=n, d=d, sparse=True, nnz=X.nnz)
    p = okd.LinearClassifier()._resolved_params(ds)
    wide = optkern.estimators.SPARSE_WIDE_DEFAULTS
    assert p["alpha"] == pytest.approx(1.0 / n)
    assert (p["optimizer"], p["lr"], p["batch_size"], p["schedule"]) == (
        wide["optimizer"], wide["lr"], wide["batch_size"], wide["schedule"])
    dense = okd.LinearClassifier(lr=0.05)._resolved_params(
        _data.Dataset(n=n, d=20, sparse=False, nnz=n * 20))
    assert (dense["alpha"], dense["optimizer"], dense["lr"], dense["batch_size"]) == (
        optkern.estimators.DENSE_DEFAULT_ALPHA, optkern.estimators.DENSE_DEFAULT_OPTIMIZER,
        0.05, "auto")


def test_model_too_large_refused_on_the_client_before_any_work(client, monkeypatch):
    """A huge feature count (one wild svmlight index) is refused from the
    partitions' metadata, before any shard is built: ModelTooLargeError naming
    the dask estimator and the sizes; a fitted model stays as it was."""
    from optkern._memory import ModelTooLargeError

    rng = np.random.default_rng(4)
    X = sp.random(200, 50, density=0.1, format="csr", random_state=4)
    y = (rng.random(200) > 0.5).astype(int)
    m = okd.LinearClassifier(solver="lbfgs", max_epochs=5).fit(*_dask(X, y))
    coef = m.coef_.copy()
    wide = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(200, 2 ** 20))
    monkeypatch.setenv("OPTKERN_MEMORY_LIMIT", "4M")
    held = {k for keys in client.has_what().values() for k in keys}
    for solver in ("lbfgs", "sgd"):
        m.set_params(solver=solver)
        with pytest.raises(ModelTooLargeError,
                           match=r"optkern\.dask\.LinearClassifier\.fit needs about .* "
                                 r"1048576 features x 1 output .*4\.0 MiB"):
            m.fit(*_dask(wide, y))
        np.testing.assert_array_equal(m.coef_, coef)
    # the refused fits built no shard (the partitions' metadata only)
    assert not [k for keys in client.has_what().values() for k in keys
                if str(k).startswith("make_shard") and k not in held]


def test_lbfgs_regressor_dataframe(client):
    dd = pytest.importorskip("dask.dataframe")
    import pandas as pd

    X, y = load_diabetes(return_X_y=True)
    X = _scaled(X)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(10)])
    ddf = dd.from_pandas(df, npartitions=2)
    ys = dd.from_pandas(pd.Series(y), npartitions=2)
    m = okd.LinearRegressor(solver="lbfgs", alpha=1e-3).fit(ddf, ys)
    ref = optkern.LinearRegressor(solver="lbfgs", alpha=1e-3).fit(X, y)
    _close(m.coef_, ref.coef_, 1e-6, 1e-6)
    assert list(m.feature_names_in_) == list(df.columns)
    pred = m.predict(ddf)
    assert isinstance(pred, da.Array)
    _close(pred.compute(), ref.predict(X), 1e-6, 1e-6)
    assert m.score(ddf, ys) == pytest.approx(ref.score(X, y), abs=1e-6)


def test_labels_missing_from_partitions_and_empty_partitions(client):
    """Partition 0 lacks class 2, partition 2 lacks class 0, partition 1 is
    empty: classes are gathered first and the fit is the in-memory one."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((240, 5))
    y = np.r_[rng.integers(0, 2, 120), rng.integers(1, 3, 120)]
    X[np.arange(240), y] += 2.0
    blocks = [X[:120], X[:0], X[120:]]
    labels = [y[:120], y[:0], y[120:]]
    Xd = da.concatenate([da.from_array(b, chunks=b.shape) for b in blocks])
    yd = da.concatenate([da.from_array(b, chunks=b.shape) for b in labels])
    m = okd.LinearClassifier(solver="lbfgs").fit(Xd, yd)
    ref = optkern.LinearClassifier(solver="lbfgs").fit(X, y)
    np.testing.assert_array_equal(m.classes_, [0, 1, 2])
    _close(m.coef_, ref.coef_, 1e-6, 1e-8)
    s = okd.LinearClassifier(backend="cython", random_state=0, max_epochs=5, tol=None)
    s.fit(Xd, yd)
    assert s.coef_.shape == (3, 5) and s.n_iter_ == 5


# -------------------------------------------------------------------- sgd
def _accuracy_pair(client, X, y, sparse=False, **params):
    Xtr, Xte, ytr, yte = _split(X, y)
    if sparse:
        Xtr, Xte = sp.csr_matrix(Xtr), sp.csr_matrix(Xte)
    params = dict(dict(backend="cython", random_state=0), **params)
    m = okd.LinearClassifier(**params).fit(*_dask(Xtr, ytr))
    ref = optkern.LinearClassifier(**params).fit(Xtr, ytr)
    Xte_d, yte_d = _dask(Xte, yte)
    return m, m.score(Xte_d, yte_d), ref.score(Xte, yte)


@pytest.mark.parametrize("name", ["breast_cancer", "digits"])
def test_sgd_reaches_in_memory_accuracy_bundled(client, name):
    X, y = (load_breast_cancer if name == "breast_cancer" else load_digits)(return_X_y=True)
    m, acc, ref = _accuracy_pair(client, X.astype(np.float64), y)
    assert acc >= ref - 0.005, (acc, ref)
    assert m.history_[-1]["epoch"] == m.n_iter_


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_sgd_reaches_in_memory_accuracy_100k(client, sparse):
    X, y = make_classification(100_000, 20, n_informative=12, n_redundant=4, n_classes=3,
                               n_clusters_per_class=1, class_sep=1.0, random_state=0)
    X = X.astype(np.float32)
    m, acc, ref = _accuracy_pair(client, X, y, sparse=sparse, max_epochs=30)
    assert acc >= ref - 0.005, (acc, ref)


def test_sgd_regressor_and_early_stopping(client):
    X, y = load_diabetes(return_X_y=True)
    y = (y - y.mean()) / y.std()
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
    sc = StandardScaler().fit(Xtr)
    Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
    params = dict(backend="cython", random_state=0, early_stopping=True,
                  validation_fraction=0.2, max_epochs=200)
    m = okd.LinearRegressor(**params).fit(*_dask(Xtr, ytr))
    ref = optkern.LinearRegressor(**params).fit(Xtr, ytr)
    assert all(r["val_score"] is not None for r in m.history_)
    assert m.n_iter_ < 200                     # stopped on the validation score
    assert m.score(*_dask(Xte, yte)) >= ref.score(Xte, yte) - 0.02


def test_divergence_per_round(client):
    X, y = load_breast_cancer(return_X_y=True)
    Xd, yd = _dask(X * 1e3, y)          # unscaled and huge: sgd explodes
    m = okd.LinearClassifier(backend="cython", optimizer="sgd", lr=1e6, random_state=0,
                             max_epochs=20, schedule="constant", penalty=None)
    with pytest.raises(FloatingPointError, match="round 1"):
        m.fit(Xd, yd)
    assert not hasattr(m, "coef_")      # nothing half-trained is left as if fitted
    m.set_params(on_divergence="warn")
    with pytest.warns(RuntimeWarning, match="diverged at round"):
        m.fit(Xd, yd)
    assert np.all(np.isfinite(m.coef_))


# --------------------------------------------------------- files and models
def test_file_shards_read_by_workers(client, tmp_path):
    from sklearn.datasets import dump_svmlight_file

    X, y = load_breast_cancer(return_X_y=True)
    X = _scaled(X)
    paths = []
    for i, rows in enumerate(np.array_split(np.arange(X.shape[0]), 3)):
        p = tmp_path / f"shard{i}.svm"
        dump_svmlight_file(X[rows], y[rows], str(p), zero_based=True)
        paths.append(str(p))
    opts = dict(zero_based=True)
    m = okd.LinearClassifier(solver="lbfgs").fit(okd.DataFiles(paths, **opts))
    ref = optkern.LinearClassifier(solver="lbfgs").fit(X, y.astype(np.float64))
    _close(m.coef_, ref.coef_, 1e-5, 1e-6)
    assert m.score(okd.DataFiles(paths, **opts)) == pytest.approx(ref.score(X, y))
    pred = m.predict(okd.DataFiles(paths, **opts))
    np.testing.assert_array_equal(pred.compute(), ref.predict(X))
    # CSV shards with a different column count are refused, naming both files
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    np.savetxt(a, np.c_[y[:50], X[:50]], delimiter=",")
    np.savetxt(b, np.c_[y[50:100], X[50:100, :20]], delimiter=",")
    with pytest.raises(ValueError, match="different feature counts.*a.csv.*b.csv"):
        okd.LinearClassifier().fit(okd.DataFiles([str(a), str(b)], label_column=0))


def test_save_load_to_local(client, tmp_path):
    X, y = load_breast_cancer(return_X_y=True)
    X = _scaled(X)
    Xd, yd = _dask(X, y)
    m = okd.LinearClassifier(backend="cython", random_state=0, max_epochs=5, tol=None)
    m.fit(Xd, yd)
    path = tmp_path / "m.npz"
    m.save(path)
    loaded = optkern.load(path)
    assert type(loaded) is optkern.LinearClassifier
    np.testing.assert_array_equal(loaded.predict_proba(X), m.predict_proba(Xd).compute())
    np.testing.assert_array_equal(m.to_local().decision_function(X), loaded.decision_function(X))
    back = okd.LinearClassifier.from_local(loaded)
    np.testing.assert_array_equal(back.predict(Xd).compute(), loaded.predict(X))
    # the in-memory model continues training where the distributed fit ended
    loc = m.to_local()
    loc.partial_fit(X, y)
    assert loc.n_iter_ == 6


# ---------------------------------------------------------------- bad input
def test_bad_input(client, monkeypatch):
    X, y = load_breast_cancer(return_X_y=True)
    Xd, yd = _dask(X, y)
    with pytest.raises(TypeError, match="in-memory ndarray"):
        okd.LinearClassifier().fit(X, y)
    with pytest.raises(ValueError, match="mismatched partitions"):
        okd.LinearClassifier().fit(da.from_array(X, chunks=(100, 30)),
                                   da.from_array(y, chunks=(300,)).rechunk(300)[:500])
    Xbad = X.copy()
    Xbad[400, 3] = np.nan
    m = okd.LinearClassifier(solver="lbfgs").fit(Xd, yd)
    coef = m.coef_.copy()
    with pytest.raises(ValueError, match="partition 1: X contains NaN"):
        m.fit(*_dask(Xbad, y))
    np.testing.assert_array_equal(m.coef_, coef)        # the earlier model is untouched
    import dask

    d32 = dask.delayed(lambda: X[:200].astype(np.float32))()
    d64 = dask.delayed(lambda: X[200:])()
    mixed = da.concatenate([da.from_delayed(d32, (200, 30), np.float64),
                            da.from_delayed(d64, (X.shape[0] - 200, 30), np.float64)])
    with pytest.raises(ValueError, match="different dtypes.*partition 0: float32"):
        okd.LinearClassifier().fit(mixed, da.from_array(y, chunks=((200, X.shape[0] - 200),)))
    with pytest.raises(ValueError, match="1 class"):
        okd.LinearClassifier().fit(Xd, da.zeros_like(yd))
    monkeypatch.setattr(_worker, "REQUIRED_PACKAGE", "optkern-not-installed-anywhere")
    with pytest.raises(ImportError, match=r"worker\(s\) tcp://.*optkern-not-installed"):
        okd.LinearClassifier().fit(Xd, yd)


# ------------------------------------------------------ dask-ml Incremental
def test_partial_fit_under_dask_ml_incremental(client):
    wrappers = pytest.importorskip("dask_ml.wrappers")
    X, y = load_breast_cancer(return_X_y=True)
    X = _scaled(X)
    Xd, yd = _dask(X, y, parts=4)
    est = optkern.LinearClassifier(backend="cython", random_state=0)
    inc = wrappers.Incremental(est, scoring="accuracy", shuffle_blocks=False).fit(Xd, yd, classes=[0, 1])
    ref = optkern.LinearClassifier(backend="cython", random_state=0)
    start = 0
    for size in Xd.chunks[0]:
        ref.partial_fit(X[start:start + size], y[start:start + size], classes=[0, 1])
        start += size
    np.testing.assert_array_equal(inc.estimator_.coef_, ref.coef_)
    assert inc.score(Xd, yd) == pytest.approx(ref.score(X, y))


# ------------------------------------------------- determinism and faults
def test_worker_killed_mid_fit_retries_the_round(client):
    """Kill a worker process after round 2 (from a callback, so the moment is
    fixed): the fit completes, warns naming round 3, and equals the fit that
    lost nothing (the shuffles depend on random_state, round and shard only)."""
    X, y = make_classification(20_000, 20, n_informative=10, n_classes=3, random_state=1)
    X = _scaled(X)
    Xd, yd = _dask(X, y)
    params = dict(backend="cython", random_state=7, max_epochs=6, tol=None)
    a = okd.LinearClassifier(**params).fit(Xd, yd)
    b = okd.LinearClassifier(**params).fit(Xd, yd)
    np.testing.assert_array_equal(a.coef_, b.coef_)              # determinism

    pids = client.run(os.getpid)

    def kill_after_round_2(row):
        if row["epoch"] == 2:
            os.kill(next(iter(pids.values())), signal.SIGKILL)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = okd.LinearClassifier(callbacks=[kill_after_round_2], **params).fit(Xd, yd)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("round 3" in m for m in msgs), msgs
    assert c.n_iter_ == 6
    np.testing.assert_array_equal(c.coef_, a.coef_)
    client.wait_for_workers(2, timeout=60)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_callback_false_stops_and_every_callback_runs(client, solver):
    # issue 16: README "return False to stop"; one callback never skips another
    X, y = load_breast_cancer(return_X_y=True)
    seen = {"a": [], "b": []}

    def a(row):
        seen["a"].append(row["epoch"])
        return True

    def b(row):
        seen["b"].append(row["epoch"])
        return row["epoch"] != 2

    m = okd.LinearClassifier(callbacks=[a, b], max_epochs=10 ** 9, tol=None, solver=solver,
                             backend="numpy", random_state=0).fit(*_dask(_scaled(X), y))
    assert seen == {"a": [1, 2], "b": [1, 2]}
    assert m.n_iter_ == 2
