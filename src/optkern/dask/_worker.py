"""What runs on the Dask workers: reading partitions, building shards, and the
two units of distributed work (a shard's loss and gradient; a shard's local
epochs).

Nothing here imports dask: a worker unpickles these functions, and they use
only NumPy, SciPy and the in-memory estimators.  The in-memory estimators are
driven through two interfaces only:

* the model-file state (``fitted_state`` / ``restore_state`` below, on
  ``optkern.io``'s list of what a saved model carries: weights, optimizer
  ``state_dict``, step count), which is what ``partial_fit`` continues from;
* the estimator's own ``partial_fit`` (the compiled epoch) and
  ``_batch_loss_grad`` (the compiled loss and gradient the in-memory L-BFGS
  uses), so a worker trains exactly as the in-memory estimator would on its
  rows.  ``tests/test_dask.py`` checks both against the in-memory fit.
"""

import math
import numbers
import os

import numpy as np
import scipy.sparse as sp

from optkern import io as _io

# The package a worker must be able to import (the tests point this at a
# missing name to check the error that names the worker).
REQUIRED_PACKAGE = "optkern"


def installed_version(package=None):
    """The version of ``package`` installed here (run on every worker)."""
    from importlib import metadata

    return metadata.version(package or REQUIRED_PACKAGE)


def worker_address():
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "<client>"


def fitted_state(est):
    """The fitted state of an in-memory estimator: what its model file holds
    (``optkern.io.save``), so ``partial_fit`` / ``warm_start`` continue exactly."""
    import copy

    return copy.deepcopy(_io._fitted_attributes(est))


def restore_state(est, state):
    """Put a ``fitted_state`` onto an unfitted estimator (as ``optkern.load`` does)."""
    for k, v in state.items():
        setattr(est, k, v)
    return est


# ---------------------------------------------------------------- partitions
class Part:
    """One partition of the training data as a worker holds it.

    ``X``: C-contiguous float32/float64 ndarray or canonical CSR; ``y``: 1-D
    labels or targets (2-D for multi-output regression), None until checked;
    ``sw``: the user's sample weights or None; ``source``: how to name it in
    an error message ("partition 3", "file shard-03.svm").
    """

    __slots__ = ("X", "y", "sw", "source")

    def __init__(self, X, y, sw, source):
        self.X, self.y, self.sw, self.source = X, y, sw, source

    def __sizeof__(self):
        # what dask counts for memory and transfer decisions
        return _nbytes(self.X) + _nbytes(self.y) + _nbytes(self.sw)


def _nbytes(a):
    if a is None:
        return 0
    if sp.issparse(a):
        return a.data.nbytes + a.indices.nbytes + a.indptr.nbytes
    return int(getattr(a, "nbytes", 0))


def _as_features(X, source):
    """Features as the estimators take them (validate_data's dtype rule:
    float32 stays, anything else numeric becomes float64)."""
    if hasattr(X, "to_numpy") and hasattr(X, "dtypes"):      # a pandas DataFrame
        bad = [str(c) for c, t in X.dtypes.items() if t.kind not in "biuf"]
        if bad:
            raise TypeError(f"{source}: columns {bad[:5]} are not numeric")
        X = X.to_numpy()
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        if not X.has_canonical_format:
            X = X.copy()
            X.sum_duplicates()
        return X
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{source}: X must be 2-D, got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{source}: X has dtype {X.dtype}, not numbers")
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(X, dtype=dtype)


def _as_vector(v, source, name):
    if v is None:
        return None
    if hasattr(v, "to_numpy"):                              # pandas Series/DataFrame
        v = v.to_numpy()
    if sp.issparse(v):
        v = v.toarray()
    v = np.asarray(v)
    if v.ndim == 2 and v.shape[1] == 1 and name == "sample_weight":
        v = v[:, 0]
    return v


def make_part(X, y, sw, source):
    """A partition from one block of X, y and sample_weight."""
    return Part(_as_features(X, source), _as_vector(y, source, "y"),
                _as_vector(sw, source, "sample_weight"), source)


def read_file(path, options, source):
    """A partition read by the worker from a data file (svmlight, CSV, npz):
    the data never passes through the client."""
    X, y, info = _io.load_data(path, **options)
    if y is None:
        raise ValueError(f"{source}: no labels in the file (CSV: pass label_column=; "
                         "npz: an entry 'y')")
    part = Part(_as_features(X, source), np.asarray(y), None, source)
    return part, dict(info)


def part_meta(part, classify):
    """What the client checks before training: shapes, dtypes, finiteness,
    and (classifiers) the labels with their counts, gathered before training
    so that partitions lacking a class are handled."""
    X, y, sw, src = part.X, part.y, part.sw, part.source
    n, d = X.shape
    meta = {"source": src, "n": int(n), "d": int(d), "dtype": str(X.dtype),
            "sparse": bool(sp.issparse(X)), "nbytes": part.__sizeof__(),
            "nnz": int(X.nnz) if sp.issparse(X) else int(n) * int(d),
            "y_n": None if y is None else int(y.shape[0]),
            "y_ndim": None if y is None else int(y.ndim),
            "y_cols": None if y is None or y.ndim == 1 else int(y.shape[1]),
            "sw_n": None if sw is None else int(sw.shape[0]),
            "problem": None}
    values = X.data if sp.issparse(X) else X
    if n and not math.isfinite(float(np.sum(values, dtype=np.float64))) \
            and not np.all(np.isfinite(values)):
        meta["problem"] = "X contains NaN or infinity"
    if sw is not None and sw.size and (sw.ndim != 1 or not np.all(np.isfinite(sw))
                                       or np.any(sw < 0)):
        meta["problem"] = "sample_weight must be 1-D, finite and non-negative"
    if y is not None and y.size:
        if classify:
            if y.ndim != 1:
                meta["problem"] = f"y must be 1-D for a classifier, got shape {y.shape}"
            else:
                labels, counts = np.unique(y, return_counts=True)
                meta["labels"], meta["counts"] = labels, counts
        elif y.dtype.kind not in "biuf":
            meta["problem"] = f"y has dtype {y.dtype}; a regressor needs numbers"
        elif not np.all(np.isfinite(y)):
            meta["problem"] = "y contains NaN or infinity"
    return meta


# -------------------------------------------------------------------- shards
class Shard:
    """The rows one worker trains on: its partitions concatenated once, the
    training weights (the user's times the global class weights) and, with
    early stopping, a held-out validation part."""

    __slots__ = ("index", "X", "y", "sw", "n", "X_val", "y_val", "wsum")

    def __sizeof__(self):
        return sum(_nbytes(getattr(self, k)) for k in ("X", "y", "sw", "X_val", "y_val"))


def _stack(blocks, d):
    if sp.issparse(blocks[0]):
        # svmlight files infer their width from the largest index: widen to d
        blocks = [sp.csr_matrix((B.data, B.indices, B.indptr), shape=(B.shape[0], d))
                  for B in blocks]
        return blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def make_shard(index, spec, *parts):
    """Concatenate ``parts`` (already checked by the client) into a Shard.

    ``spec``: ``d``, ``classes`` (None for regressors), ``class_weight`` (one
    factor per class, or None), ``validation_fraction`` and ``seed`` (early
    stopping), ``classify``.
    """
    parts = [p for p in parts if p.X.shape[0]]
    s = Shard()
    s.index = index
    X = _stack([p.X for p in parts], spec["d"])
    y = np.concatenate([p.y for p in parts])
    sw = None
    if any(p.sw is not None for p in parts):
        sw = np.concatenate([p.sw if p.sw is not None else np.ones(p.X.shape[0])
                             for p in parts]).astype(X.dtype)
    if spec["class_weight"] is not None:
        factors = spec["class_weight"][np.searchsorted(spec["classes"], y)].astype(X.dtype)
        sw = factors if sw is None else sw * factors
    s.X_val = s.y_val = None
    if spec["validation_fraction"] is not None and X.shape[0] >= 2:
        X, s.X_val, y, s.y_val, sw = _split(X, y, sw, spec)
    s.X, s.y, s.sw = X, y, (None if sw is None else np.ascontiguousarray(sw))
    s.n = int(X.shape[0])
    s.wsum = float(s.n if sw is None else np.sum(sw, dtype=np.float64))
    return s


def _split(X, y, sw, spec):
    from sklearn.model_selection import train_test_split

    rng = np.random.RandomState(list(spec["seed"]) + [1])
    idx = np.arange(X.shape[0])
    try:
        tr, va = train_test_split(idx, test_size=spec["validation_fraction"],
                                  random_state=rng, stratify=y if spec["classify"] else None)
    except ValueError:          # a class with one row in this shard
        tr, va = train_test_split(idx, test_size=spec["validation_fraction"],
                                  random_state=rng)
    tr.sort()
    va.sort()
    return X[tr], X[va], y[tr], y[va], None if sw is None else sw[tr]


def shard_rows(shard):
    return shard.n


# ------------------------------------------------------------ the estimators
def estimator_from_state(cls_name, params, state):
    """An in-memory estimator with ``params`` and the fitted ``state``
    (``fitted_state`` of another estimator, or {})."""
    from optkern import estimators

    est = getattr(estimators, cls_name)(**params)
    restore_state(est, state)
    return est


def _sample_weight(shard):
    if shard.sw is None:
        return np.ones(shard.n, dtype=shard.X.dtype)
    return shard.sw


def shard_loss_grad(shard, model_theta):
    """The shard's share of the full-batch objective at ``theta`` (W and b
    flattened, float64): weighted sums sum_i w_i L_i and sum_i w_i dL_i/dW,
    without the penalty (the client adds it once), and sum_i w_i.

    ``model``: (class name, params, state) of the template estimator (classes_,
    n_features_in_, outputs); the loss and gradient are the estimator's own
    ``_batch_loss_grad``, as its in-memory L-BFGS calls it.
    """
    model, theta = model_theta
    est = _template(model)
    W, b = _unflatten(theta, model[3], shard.X.dtype)
    if shard.n == 0 or shard.wsum <= 0:
        return 0.0, np.zeros_like(theta), 0.0, [worker_address()]
    backend = "numpy" if est.backend == "numpy" else (
        est.backend if est.backend in ("numba", "numba-parallel") else "auto")
    y = _encoded(est, shard)
    loss, dW, db = est._batch_loss_grad(shard.X, y, _sample_weight(shard), W, b, backend,
                                        penalize=False)
    grad = np.concatenate([dW.ravel(), db if b is not None else []]).astype(np.float64)
    return float(loss) * shard.wsum, grad * shard.wsum, shard.wsum, [worker_address()]


def add_objective(a, b):
    """Two shards' (weighted loss, weighted gradient, weight) summed; the
    workers that computed them listed in shard order."""
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]


def _template(model):
    cls_name, params, state, _ = model
    return estimator_from_state(cls_name, params, state)


def _encoded(est, shard):
    if hasattr(est, "classes_"):
        return est._encode_y(np.searchsorted(est.classes_, shard.y), shard.X.dtype)
    return np.ascontiguousarray(shard.y, dtype=shard.X.dtype)


def _unflatten(theta, shape, dtype):
    d, k, intercept = shape
    W = np.ascontiguousarray(theta[:d * k].reshape(d, k), dtype=dtype)
    b = np.ascontiguousarray(theta[d * k:], dtype=dtype) if intercept else None
    return W, b


def shard_round(shard, model, seed, local_epochs, first_call_kwargs):
    """``local_epochs`` epochs of the estimator's own ``partial_fit`` on this
    shard, from the broadcast state; returns the new state, the rows, the
    loss of the last local epoch, or ``diverged`` with the loss.

    ``seed`` fixes this shard's shuffling for this round (a function of the
    fit's random_state, the round and the shard index only, so a retried
    round repeats exactly).
    """
    cls_name, params, state, _ = model
    est = estimator_from_state(cls_name, params, state)
    est._rng = np.random.default_rng(seed)
    out = {"rows": shard.n, "worker": worker_address(), "diverged": False, "loss": None,
           "pid": os.getpid()}
    if shard.n == 0:
        return out
    kwargs = dict(first_call_kwargs) if not hasattr(est, "coef_") else {}
    try:
        for _ in range(local_epochs):
            est.partial_fit(shard.X, shard.y, sample_weight=shard.sw, **kwargs)
            kwargs = {}
    except FloatingPointError as exc:      # TrainingDiverged: est kept its last good epoch
        out["diverged"] = True
        out["loss"] = float("nan")
        out["message"] = str(exc)
        return out
    out["loss"] = float(est.history_[-1]["loss"])
    # without Polyak averaging coef_/intercept_ are _W/_b transposed: not sent
    keep = AVERAGED if est.average is not False else AVERAGED[2:]
    out["state"] = {k: v for k, v in _io._fitted_attributes(est).items() if k in keep}
    return out


# what a round's shards average (row-weighted)
AVERAGED = ("coef_", "intercept_", "_W", "_b", "_t", "t_", "_opt_state")


def round_summary(result):
    """The small part of a round's result the client reads."""
    return {k: v for k, v in result.items() if k != "state"}


# ------------------------------------------------ averaging, as a tree of tasks
# A round's states are averaged on the workers, pairwise in a fixed binary
# tree over the shard indices: the client receives one state whatever the
# number of workers, and the order of the sums (so every bit of the result)
# depends only on the number of shards.
_COUNTERS = ("step", "avg_count", "_t", "t_")


class _Sum:
    """A running weighted sum of arrays or floats (float64), and the dtype to
    return."""

    __slots__ = ("total", "dtype")

    def __init__(self, total, dtype):
        self.total, self.dtype = total, dtype


class _Count:
    """A step counter's increments over the round's starting value."""

    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n


def _weigh(v, w, base, key=None):
    if isinstance(v, dict):
        return {k: _weigh(x, w, base.get(k) if isinstance(base, dict) else None, k)
                for k, x in v.items()}
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return _Sum(w * v.astype(np.float64), v.dtype)
    if key in _COUNTERS and isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return _Count(int(v) - (int(base) if isinstance(base, numbers.Integral) else 0))
    if isinstance(v, float):
        return _Sum(w * v, None)
    return v        # hyperparameters, seeds, flags: the first shard's


def _add(a, b):
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) for k in a}
    if isinstance(a, _Sum):
        return _Sum(a.total + b.total, a.dtype)
    if isinstance(a, _Count):
        return _Count(a.n + b.n)
    return a


def _mean(a, wsum, base, key=None):
    if isinstance(a, dict):
        return {k: _mean(x, wsum, base.get(k) if isinstance(base, dict) else None, k)
                for k, x in a.items()}
    if isinstance(a, _Sum):
        return (a.total / wsum).astype(a.dtype) if a.dtype is not None else \
            float(a.total / wsum)
    if isinstance(a, _Count):
        return (int(base) if isinstance(base, numbers.Integral) else 0) + a.n
    return a


def shard_round_terms(shard, model, seed, local_epochs, first_call_kwargs):
    """``shard_round``, its state turned into terms of the row-weighted
    average, with its summary: what the reduction tree adds up."""
    result = shard_round(shard, model, seed, local_epochs, first_call_kwargs)
    rows = float(result["rows"])
    terms = _weigh(result["state"], rows, model[2]) if "state" in result else None
    return {"rows": rows, "terms": terms, "summaries": [round_summary(result)]}


def add_terms(a, b):
    """Two subtrees' terms added (None, a shard that diverged, poisons the
    sum: such a round is discarded); summaries kept in shard order."""
    terms = None if a["terms"] is None or b["terms"] is None else _add(a["terms"], b["terms"])
    return {"rows": a["rows"] + b["rows"], "terms": terms,
            "summaries": a["summaries"] + b["summaries"]}


def mean_state(acc, model):
    """The averaged state: arrays and floats weighted by rows, step counters
    advanced by the sum of every shard's steps (so schedules and bias
    corrections see one pass over the data per round, as one epoch in
    memory), anything else from the first shard; and the shards' summaries."""
    state = None if acc["terms"] is None else _mean(acc["terms"], acc["rows"], model[2])
    return {"summaries": acc["summaries"], "state": state}


def average_states(states, rows, base):
    """The same average for states already in one process (tests)."""
    acc = None
    for st, r in zip(states, rows):
        t = {"rows": float(r), "terms": _weigh(st, float(r), base), "summaries": []}
        acc = t if acc is None else add_terms(acc, t)
    return _mean(acc["terms"], acc["rows"], base)


# ------------------------------------------------------------------- scoring
def score_terms(X, y, model, sample_weight=None):
    """Sums from which the client assembles ``score`` over many blocks:
    classifiers (weighted correct, weight); regressors per output
    (sum w r^2, sum w y, sum w y^2, weight) for R^2 = 1 - SS_res / SS_tot."""
    est = model if not isinstance(model, tuple) else _template(model)
    if not hasattr(X, "columns"):
        X = _as_features(X, "block")
    y = _as_vector(y, "block", "y")
    w = np.ones(X.shape[0]) if sample_weight is None else \
        np.asarray(_as_vector(sample_weight, "block", "sample_weight"), dtype=np.float64)
    if X.shape[0] == 0:
        return None
    pred = est.predict(X)
    if hasattr(est, "classes_"):
        return np.array([float(np.sum(w * (pred == y))), float(np.sum(w))])
    y = np.asarray(y, dtype=np.float64).reshape(X.shape[0], -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(X.shape[0], -1)
    wc = w[:, None]
    return np.stack([np.sum(wc * (y - pred) ** 2, axis=0), np.sum(wc * y, axis=0),
                     np.sum(wc * y ** 2, axis=0), np.full(y.shape[1], np.sum(w))])


def shard_validation_terms(shard, model):
    """score_terms on the shard's held-out rows (early stopping)."""
    if shard.X_val is None or shard.X_val.shape[0] == 0:
        return None
    return score_terms(shard.X_val, shard.y_val, model)


def combine_score(terms, classify):
    """The score from summed ``score_terms`` (scikit-learn's accuracy / R^2,
    uniform average over outputs, a constant target scoring 1 if predicted
    exactly and 0 otherwise)."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return float("nan")
    T = np.sum(terms, axis=0)
    if classify:
        return float(T[0] / T[1]) if T[1] > 0 else float("nan")
    ss_res, sy, syy, w = T
    ss_tot = syy - sy ** 2 / w
    ss_tot = np.maximum(ss_tot, 0.0)
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0),
                  np.where(ss_res == 0, 1.0, 0.0))
    return float(np.mean(r2))


# --------------------------------------------------------------- prediction
def predict_block(X, model, method):
    """``method`` ("predict", "predict_proba", "decision_function") of the
    in-memory model on one block."""
    if not hasattr(X, "columns"):       # a DataFrame keeps its feature names
        X = _as_features(X, "block")
    if X.shape[0] == 0:
        return np.empty((0,) + _output_tail(model, method))
    return getattr(model, method)(X)


def _output_tail(model, method):
    if method == "predict":
        y_ndim = getattr(model, "_y_ndim", 1)
        return () if y_ndim == 1 else (model._k,)
    k = len(model.classes_)
    if method == "predict_proba" or k > 2:
        return (k,)
    return ()


def predict_file(path, options, model, method):
    X, _, _ = _io.load_data(path, **options)
    return predict_block(X, model, method)


def file_score_terms(path, options, model):
    X, y, _ = _io.load_data(path, **options)
    if y is None:
        raise ValueError(f"file {path}: no labels to score against")
    return score_terms(X, y, model)
