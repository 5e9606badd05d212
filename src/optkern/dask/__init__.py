"""Training beyond one machine, on Dask (``pip install "optkern[dask]"``).

``optkern.dask.LinearClassifier`` and ``LinearRegressor`` take the in-memory
estimators' parameters (mirrored from their signatures, so a parameter added
there appears here) plus ``client=None`` (the current ``dask.distributed``
client) and ``local_epochs=1``.  They train on data the workers hold: dask
arrays (dense blocks or scipy.sparse CSR blocks), dask DataFrames, or data
files the workers read themselves (a list of paths or ``DataFiles``).

The data is read once per fit, checked partition by partition (shapes,
dtypes, finiteness, labels: classes are gathered from every partition before
training), and concatenated into one shard per worker, kept in the worker's
memory for the fit.  Then, by ``solver``:

* ``"lbfgs"``: each L-BFGS-B iteration broadcasts the weights, every worker
  computes the compiled loss and gradient of its shard (the in-memory
  estimator's own), the client sums them weighted by the shards' weight
  sums, adds the penalty once and runs scipy's L-BFGS-B: the in-memory
  ``solver="lbfgs"`` fit of the concatenated data, to the solver's tolerance.
* ``"sgd"``: rounds; each round broadcasts the model and optimizer state,
  every worker runs ``local_epochs`` compiled epochs of the in-memory
  ``partial_fit`` on its shard, and the client averages the weights and the
  optimizer's state arrays weighted by rows (step counters add up, so
  schedules advance by one pass over the data per round, as per epoch in
  memory).  ``tol`` / ``n_iter_no_change``, the adaptive rate,
  ``early_stopping`` (each shard holds out ``validation_fraction`` of its
  rows), callbacks and the divergence rules act per round as they do per
  epoch in memory; ``history_`` has one row per round.

A worker lost during a round (its process killed, its machine gone) costs
the round, not the fit: Dask recomputes the lost shard from its lineage on a
surviving worker, the round is run again from the last averaged weights,
and the fit finishes with a ``RuntimeWarning`` naming the round.  The
shuffling of each shard in each round is a function of ``random_state``, the
round and the shard alone, so a retried round (and a whole fit, for the same
partitioning and number of workers) repeats exactly.

``predict``, ``predict_proba``, ``decision_function`` return dask arrays,
lazily, block by block (``score`` computes block-wise sums; ``compute=False``
returns it as a 0-d dask array).  ``to_local()`` gives the fitted in-memory
estimator; ``save`` writes the same no-pickle model file
(``optkern.load`` reads it back as the in-memory estimator).

docs/dask.md has the design, the cost model and the measurements.
"""

try:
    import dask  # noqa: F401
    import distributed
except ImportError as exc:     # pragma: no cover - exercised without the extra
    raise ImportError("optkern.dask needs Dask: pip install 'optkern[dask]' "
                      f"(dask[distributed]); {exc}") from exc

import copy
import inspect
import math
import numbers
import time
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils import check_random_state

from optkern import estimators as _est
from optkern import schedules as _sched
from optkern._progress import progress_bar
from optkern.dask import _data, _worker
from optkern.dask._data import DataFiles

__all__ = ["LinearClassifier", "LinearRegressor", "DataFiles", "get_client", "check_workers",
           "WorkerFailure", "MAX_ROUND_RETRIES"]

# a round (an L-BFGS function evaluation or an SGD round) is run again at most
# this many times when workers are lost during it
MAX_ROUND_RETRIES = 3

# what the scheduler or the network raise when a worker dies under a task
_FAULTS = (distributed.scheduler.KilledWorker, distributed.client.FutureCancelledError,
           distributed.comm.core.CommClosedError, OSError, TimeoutError)


class WorkerFailure(RuntimeError):
    """A round failed on every retry because workers kept being lost."""


def get_client(client=None):
    """``client``, or the current dask.distributed client, or a clear error."""
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise ValueError(
            "optkern.dask needs a running dask.distributed client and found none. Start "
            "one first, e.g. on this machine:\n"
            "    from distributed import Client, LocalCluster\n"
            "    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))\n"
            "or connect to a cluster with Client('tcp://scheduler:8786'), then fit again "
            "(or pass client=...)") from None


def check_workers(client):
    """Every worker must import optkern: an ImportError names the workers that
    cannot.  Returns {address: version}; warns when versions differ."""
    from importlib import metadata

    found = client.run(metadata.version, _worker.REQUIRED_PACKAGE, on_error="return")
    if not found:
        raise ValueError("the dask cluster has no workers: start some (LocalCluster(n_workers=2)"
                         " or dask worker SCHEDULER_ADDRESS)")
    missing = sorted(w for w, v in found.items() if isinstance(v, BaseException))
    if missing:
        raise ImportError(
            f"the dask worker(s) {', '.join(missing)} cannot import "
            f"{_worker.REQUIRED_PACKAGE!r} ({found[missing[0]]!r}): install it in the "
            f"workers' environment (pip install 'optkern[dask]') and restart them")
    mine = metadata.version(_worker.REQUIRED_PACKAGE)
    other = {w: v for w, v in found.items() if v != mine}
    if other:
        warnings.warn(f"workers run {_worker.REQUIRED_PACKAGE} {sorted(set(other.values()))}, "
                      f"the client {mine}: results may differ", RuntimeWarning, stacklevel=3)
    return found


# ------------------------------------------------------------ the signature
_OWN_PARAMS = (("client", None), ("local_epochs", 1))


def _mirror_init(local_cls):
    """An ``__init__`` with the in-memory estimator's parameters plus ours,
    and the signature scikit-learn's get_params/clone read."""
    base = inspect.signature(local_cls.__init__)
    params = list(base.parameters.values()) + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in _OWN_PARAMS]
    sig = base.replace(parameters=params)

    def __init__(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    __init__.__signature__ = sig
    __init__.__doc__ = f"Parameters of optkern.{local_cls.__name__}, plus client and local_epochs."
    return __init__


def _finite_state(state):
    for k in ("_W", "_b", "coef_", "intercept_"):
        v = state.get(k)
        if isinstance(v, np.ndarray) and not np.all(np.isfinite(v)):
            return False
    return True


def _sparse_wide(ds):
    """optkern.estimators.sparse_wide on the whole distributed data set."""
    return bool(ds.sparse and ds.n and ds.d >= _est.SPARSE_WIDE_MIN_FEATURES
                and ds.nnz <= _est.SPARSE_WIDE_MAX_DENSITY * ds.n * ds.d)


class _DaskLinear(BaseEstimator):
    _local_cls = None
    _classify = False

    # ----------------------------------------------------------- helpers
    def _local_params(self):
        return {k: v for k, v in self.get_params(deep=False).items()
                if k not in dict(_OWN_PARAMS)}

    def _validated_local(self):
        local = self._local_cls(**self._local_params())
        local._validate_params()
        _data.check_positive_int("local_epochs", self.local_epochs)
        if self.solver == "sgd" and self.backend == "cuda":
            raise ValueError("backend='cuda' is not supported by optkern.dask (workers train on "
                             "the CPU backends)")
        return local

    def _k(self, ds):
        if self._classify:
            return 1 if len(ds.classes) == 2 else len(ds.classes)
        return 1 if ds.y_cols is None else ds.y_cols

    def _base_state(self, ds):
        state = {"n_features_in_": ds.d}
        if self._classify:
            state["classes_"] = ds.classes
        else:
            state["_y_ndim"] = 1 if ds.y_cols is None else 2
            state["_k"] = self._k(ds)
        return state

    def _resolved_params(self, ds):
        """The in-memory parameters with the data-dependent "auto" defaults
        resolved on the whole data set, as the in-memory estimator resolves
        them on the concatenated data (optimizer, alpha = 1/n_samples on
        sparse wide data, and the sparse-wide rate, batch size and schedule);
        a worker resolving them on its own shard would use its shard's rows."""
        p = self._local_params()
        wide = _sparse_wide(ds)
        defaults = _est.SPARSE_WIDE_DEFAULTS
        if p["alpha"] == "auto":
            p["alpha"] = 1.0 / ds.n if wide else _est.DENSE_DEFAULT_ALPHA
        if p["optimizer"] == "auto":
            p["optimizer"] = defaults["optimizer"] if wide else _est.DENSE_DEFAULT_OPTIMIZER
            if wide and p["lr"] is None and "lr" not in (p["optimizer_params"] or {}):
                p["lr"] = defaults["lr"]
        if wide:
            if p["batch_size"] == "auto":
                p["batch_size"] = defaults["batch_size"]
            if p["schedule"] is None:
                p["schedule"] = defaults["schedule"]
        return p

    def _worker_params(self, ds, lr=None):
        """The in-memory parameters the workers train with: class weights are
        already in the shards' sample weights, callbacks and progress run on
        the client, and the learning rate carries the adaptive factor."""
        p = self._resolved_params(ds)
        # a worker's divergence is reported to the client, which applies the
        # user's on_divergence to the round
        p.update(callbacks=None, verbose=0, warm_start=True, early_stopping=False,
                 on_divergence="raise")
        if self._classify:
            p["class_weight"] = None
        if lr is not None:
            p["lr"] = lr
        if p["optimizer"] == "sgld":
            op = dict(p.get("optimizer_params") or {})
            op.setdefault("noise_scale", 0.1 / math.sqrt(max(ds.n, 1)))
            p["optimizer_params"] = op
        return p

    def _base_lr(self, ds):
        p = self._resolved_params(ds)
        if p["lr"] is not None:
            return float(p["lr"])
        op = p["optimizer_params"] or {}
        if isinstance(p["optimizer"], str):
            return float(op.get("lr", _est.OPTIMIZER_NAMES[p["optimizer"]][1]))
        return float(op.get("lr", p["optimizer"].param_groups[0]["lr"]))

    # --------------------------------------------------------------- rounds
    def _workers(self, client):
        return set(client.scheduler_info(n_workers=-1)["workers"])

    def _round(self, client, submit, what, placement=None):
        """Gather one round's tasks; a worker lost during it (an error from the
        scheduler, or a worker gone from the cluster) reruns the round from
        the same broadcast state, and warns naming the round.

        ``placement(results)``: the workers that ran the shards' tasks; while
        it does not change, the cluster is not asked for its workers (a round
        trip to the scheduler per round)."""
        for attempt in range(MAX_ROUND_RETRIES + 1):
            seen = self._seen_workers
            futures = []
            try:
                futures = submit()
                results = client.gather(futures)
                failure = None
            except _FAULTS as exc:
                failure = f"{type(exc).__name__}: {exc}"
            where = placement(results) if (failure is None and placement) else None
            if where is not None and where == self._placement:
                return results
            self._placement = where
            now = self._workers(client)
            lost = sorted(seen - now)
            self._seen_workers = now
            if failure is None and not lost:
                return results
            if failure is None:
                # Dask already recomputed the lost tasks from the same inputs:
                # the results are those of the round run again
                self._fault_warning(f"{what}: worker(s) {', '.join(lost)} were lost; their "
                                    "shards were recomputed on the remaining workers and the "
                                    "round was run again from the last averaged weights")
                return results
            self._fault_warning(f"{what}: {failure}"
                                + (f" (lost worker(s) {', '.join(lost)})" if lost else "")
                                + f"; retrying {what} from the last averaged weights")
            for f in futures:
                f.release()
        raise WorkerFailure(f"{what} failed {MAX_ROUND_RETRIES + 1} times as workers were "
                            "lost; the model was not changed")

    def _fault_warning(self, msg):
        warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def _broadcast_and_submit(self, client, ds, fn, broadcast, *args, reduce=None):
        """The round's tasks: ``broadcast`` scattered to the workers (Dask
        copies it along a tree), then one task per shard, where the shard
        lives.  ``reduce(client, futures, broadcast_future)`` turns them into
        the futures the client gathers (default: all of them)."""
        def submit():
            b = _share(client, broadcast)
            futures = [client.submit(fn, s, b, *(a[j] if isinstance(a, _PerShard) else a
                                                 for a in args), pure=False)
                       for j, s in enumerate(ds.shards)]
            return futures if reduce is None else reduce(client, futures, b)
        return submit

    def _shard_objective(self, client, ds, model, theta, what):
        def tree_sum(client, futures, b):
            return [_tree(client, _worker.add_objective, futures)]

        (wl, grad, wsum, _), = self._round(client, self._broadcast_and_submit(
            client, ds, _worker.shard_loss_grad, (model, theta), reduce=tree_sum), what,
            placement=lambda res: res[0][3])
        return wl / wsum, grad / wsum

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, sample_weight=None):
        """Train on the workers' data: a dask array/DataFrame (X, y and an
        optional sample_weight with the same partitions) or data files (y=None)."""
        client = get_client(self.client)
        local = self._validated_local()
        check_workers(client)
        self._seen_workers = self._workers(client)
        self._placement = None
        ds = _data.prepare(client, X, y, sample_weight, self._classify)
        self._check_fit_memory(ds)
        cw = None
        if self._classify:
            cw = _data.class_weight_factors(self.class_weight, ds.classes, ds.counts)
        # the seed of every shard's shuffling and validation split
        seed = _est._derived_seed(int(self.random_state)) \
            if isinstance(self.random_state, numbers.Integral) else \
            int(check_random_state(self.random_state).randint(0, 2 ** 31 - 1))
        spec = {"d": ds.d, "classes": ds.classes, "class_weight": cw, "classify": self._classify,
                "validation_fraction": (float(self.validation_fraction)
                                        if self.early_stopping and self.solver == "sgd" else None),
                "seed": seed}
        ds = _data.build_shards(client, ds, spec)
        try:
            if self.solver == "lbfgs":
                state = self._fit_lbfgs(client, ds, local)
            else:
                state = self._fit_sgd(client, ds, seed)
        finally:
            client.cancel(ds.shards)
        self._adopt(state, ds)
        return self

    def _check_fit_memory(self, ds):
        """ModelTooLargeError on the client, from the partitions' metadata alone,
        before any shard is built or any worker allocates a model: the client
        holds the model, the round's averaged state and (L-BFGS) scipy's
        vectors; each worker's partial_fit checks its own memory again."""
        from optkern import _memory

        _memory.check_fit_memory(ds.d, self._k(ds), ds.dtype,
                                 _est._n_states(self._resolved_params(ds)["optimizer"]),
                                 solver=self.solver, average=self.average,
                                 intercept=bool(self.fit_intercept),
                                 what=f"optkern.dask.{type(self).__name__}.fit")

    def _warm(self, ds, k):
        """The previous fit's weights, when warm_start and they fit this data."""
        prev = getattr(self, "_local", None)
        if not (self.warm_start and prev is not None):
            return None
        W = getattr(prev, "_W", None)
        if W is None or W.shape != (ds.d, k) or W.dtype != ds.dtype or \
                (prev._b is not None) != bool(self.fit_intercept):
            return None
        return prev

    def _fit_lbfgs(self, client, ds, local):
        from scipy.optimize import minimize

        d, k, fi = ds.d, self._k(ds), bool(self.fit_intercept)
        n_w = d * k
        alpha = 0.0 if self.penalty is None else float(self._resolved_params(ds)["alpha"])
        base = self._base_state(ds)
        model = (type(local).__name__, self._worker_params(ds), base, (d, k, fi))
        history, t0, calls = [], time.perf_counter(), [0]

        def fun(theta):
            calls[0] += 1
            loss, grad = self._shard_objective(client, ds, model, theta,
                                               f"L-BFGS evaluation {calls[0]}")
            Wd = theta[:n_w].astype(ds.dtype).astype(np.float64)
            return loss + 0.5 * alpha * float(Wd @ Wd), grad + np.concatenate(
                [alpha * Wd, np.zeros(theta.shape[0] - n_w)])

        def callback(intermediate_result):
            history.append({"epoch": len(history) + 1, "loss": float(intermediate_result.fun),
                            "val_score": None, "lr": None, "time": time.perf_counter() - t0})
            if _est._run_callbacks(self.callbacks, history[-1]):
                raise StopIteration  # scipy >= 1.11: ends the minimisation at this iterate

        prev = self._warm(ds, k)
        W0 = prev._W if prev is not None else np.zeros((d, k), ds.dtype)
        b0 = (prev._b if prev is not None else np.zeros(k, ds.dtype)) if fi else None
        theta0 = np.concatenate([W0.ravel(), b0 if fi else []]).astype(np.float64)
        res = minimize(fun, theta0, jac=True, method="L-BFGS-B", callback=callback,
                       options=_est.lbfgs_options(self.tol, self.max_epochs))
        if not np.isfinite(res.fun):
            raise _est.TrainingDiverged("L-BFGS produced a non-finite loss; the model was not "
                                        "changed")
        W, b = _worker._unflatten(res.x, (d, k, fi), ds.dtype)
        state = dict(base, **_coef_state(W, b, base.get("_y_ndim", 2)),
                     _W=W, _b=b, n_iter_=int(res.nit), history_=history, t_=int(res.nit),
                     _opt_state=None)
        if not res.success and res.nit >= self.max_epochs:
            warnings.warn(f"L-BFGS did not converge in {self.max_epochs} iterations",
                          ConvergenceWarning, stacklevel=3)
        return state

    def _fit_sgd(self, client, ds, seed):
        d, k, fi = ds.d, self._k(ds), bool(self.fit_intercept)
        cls_name = self._local_cls.__name__
        base = self._base_state(ds)
        prev = self._warm(ds, k)
        state = dict(base)
        if prev is not None:    # as in memory: the weights continue, the optimizer restarts
            state.update({k_: copy.deepcopy(v) for k_, v in _worker.fitted_state(prev).items()
                          if k_ in ("coef_", "intercept_", "_W", "_b", "_y_ndim", "_k")})
        first_kwargs = {"classes": ds.classes} if self._classify else {}
        sched_param = self._resolved_params(ds)["schedule"]
        schedule = _sched.get_schedule(None if sched_param == "adaptive" else sched_param)
        schedule = copy.deepcopy(schedule)
        if isinstance(schedule, _sched.ReduceOnPlateau):
            schedule.reset()
        adaptive = sched_param is None or sched_param == "adaptive"
        base_lr = self._base_lr(ds)
        plateau = 1.0
        # a loss above this counts as diverged: 1e4 times the starting objective
        theta0 = np.zeros(d * k + (k if fi else 0))
        if prev is not None:
            theta0 = np.concatenate([prev._W.ravel(), prev._b if fi else []]).astype(np.float64)
        model0 = (cls_name, self._worker_params(ds), base, (d, k, fi))
        start, _ = self._shard_objective(client, ds, model0, theta0, "the starting loss")
        limit = 1e4 * max(float(start), 1e-3)
        history, good = [], None
        stall = _est._Stall(self.tol, self.n_iter_no_change)
        converged = False
        callbacks = self.callbacks or ()
        progress = self._progress()
        try:
            for r in range(self.max_epochs):
                what = f"round {r + 1}"
                t_now = state.get("_t", 0)
                lr_now = base_lr * schedule.factor(t_now) * plateau
                model = (cls_name, self._worker_params(ds, lr=base_lr * plateau), state,
                         (d, k, fi))
                t0 = time.perf_counter()
                seeds = _PerShard([seed, r, j] for j in range(len(ds.shards)))
                out, = self._round(client, self._broadcast_and_submit(
                    client, ds, _worker.shard_round_terms, model, seeds, self.local_epochs,
                    first_kwargs, reduce=_average_on_workers), what,
                    placement=lambda res: [x["worker"] for x in res[0]["summaries"]])
                results, avg = out["summaries"], out["state"]
                ok = [x for x in results if x["rows"] > 0]
                diverged = [x for x in ok if x["diverged"]]
                new = None
                if not diverged:
                    w = np.array([x["rows"] for x in ok], dtype=np.float64)
                    w /= w.sum()
                    if "coef_" not in avg:
                        avg.update(_coef_state(avg["_W"], avg["_b"], base.get("_y_ndim", 2)))
                    new = dict(state, **avg)
                    loss = float(np.dot(w, [x["loss"] for x in ok]))
                else:
                    loss = float("nan")
                if new is None or not math.isfinite(loss) or loss > limit or \
                        not _finite_state(new):
                    msg = (f"training diverged at round {r + 1}: the loss became {loss} "
                           f"(lr={lr_now:g}); the weights of round {r} were kept. Try a lower "
                           "learning rate (lr=...).")
                    if good is None:
                        if self.on_divergence == "warn":
                            warnings.warn(msg, RuntimeWarning, stacklevel=3)
                            return self._zero_state(base, d, k, fi, ds.dtype, history)
                        raise _est.TrainingDiverged(msg + " The model is not fitted.")
                    if self.on_divergence == "warn":
                        warnings.warn(msg, RuntimeWarning, stacklevel=3)
                        break
                    self._adopt(self._finished(good, history, seed, r), ds)
                    raise _est.TrainingDiverged(msg)
                state = good = new
                row = {"epoch": r + 1, "loss": loss, "val_score": None, "lr": float(lr_now),
                       "time": time.perf_counter() - t0}
                if _early_stopping(self):
                    terms = self._round(client, self._broadcast_and_submit(
                        client, ds, _worker.shard_validation_terms,
                        (cls_name, self._worker_params(ds), state, (d, k, fi))),
                        f"{what} (validation)")
                    row["val_score"] = _worker.combine_score(terms, self._classify)
                history.append(row)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.4g}")
                if isinstance(schedule, _sched.ReduceOnPlateau):
                    plateau = schedule.update(-row["val_score"] if _early_stopping(self) else loss)
                stop = _est._run_callbacks(callbacks, row)
                if self.tol is not None and stall.stalled(
                        loss, row["val_score"] if _early_stopping(self) else None):
                    if adaptive and base_lr * plateau > _est.ADAPTIVE_MIN_LR:
                        plateau /= 5.0
                    else:
                        converged = True
                        break
                if stop:
                    converged = True
                    break
        finally:
            if progress is not None:
                progress.close()
        if not (converged or self.tol is None) and len(history) == self.max_epochs:
            warnings.warn(f"maximum number of rounds ({self.max_epochs}) reached before "
                          "convergence; consider raising max_epochs", ConvergenceWarning,
                          stacklevel=3)
        return self._finished(good, history, seed, len(history))

    def _finished(self, state, history, seed, rounds):
        state = dict(state)
        state.update(history_=list(history), n_iter_=int(rounds),
                     _rng=np.random.default_rng([seed, rounds]))
        return state

    def _zero_state(self, base, d, k, fi, dtype, history):
        W = np.zeros((d, k), dtype)
        b = np.zeros(k, dtype) if fi else None
        return dict(base, **_coef_state(W, b, base.get("_y_ndim", 2)), _W=W, _b=b,
                    n_iter_=0, history_=list(history), t_=0, _t=0)

    def _progress(self):
        if not self.verbose:
            return None
        return progress_bar(total=self.max_epochs, desc=f"{type(self).__name__}({self.optimizer})",
                            unit="round", warn_missing=True)

    def _adopt(self, state, ds):
        """Become the fitted model: an in-memory estimator with the user's
        parameters and ``state``; its public fitted attributes are mirrored
        here."""
        local = self._local_cls(**self._local_params())
        _worker.restore_state(local, state)
        if getattr(ds, "n", None):   # the "auto" defaults partial_fit would continue with
            local._sparse_wide_fit, local._fit_rows = _sparse_wide(ds), ds.n
        if ds.feature_names is not None:
            local.feature_names_in_ = np.asarray(ds.feature_names, dtype=object)
        for k in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, k)
        for k, v in vars(local).items():
            if k.endswith("_") and not k.startswith("_") and not k.endswith("__"):
                setattr(self, k, v)
        self._local = local

    # ------------------------------------------------------------ results
    def _fitted(self):
        if getattr(self, "_local", None) is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")
        return self._local

    def to_local(self):
        """The fitted model as the in-memory estimator (a copy)."""
        return copy.deepcopy(self._fitted())

    @classmethod
    def from_local(cls, estimator, client=None):
        """A distributed estimator holding a fitted in-memory one (e.g. from
        ``optkern.load``), to predict on dask data."""
        if not isinstance(estimator, cls._local_cls) or not hasattr(estimator, "coef_"):
            raise TypeError(f"from_local expects a fitted optkern.{cls._local_cls.__name__}")
        out = cls(**estimator.get_params(deep=False), client=client)
        out._adopt(_worker.fitted_state(estimator), _data.Dataset(
            feature_names=getattr(estimator, "feature_names_in_", None)))
        return out

    def save(self, path):
        """The same no-pickle model file as the in-memory estimator's
        (``optkern.load`` returns the in-memory estimator)."""
        from optkern.io import save

        return save(self._fitted(), path)

    def _map(self, X, method):
        import dask
        import dask.array as da

        model = self._fitted()
        tail = _worker._output_tail(model, method)
        dtype = model.classes_.dtype if (method == "predict" and self._classify) else None
        files = _data.as_files(X)
        if files is not None or _data._is_dask_frame(X):
            mdl = dask.delayed(model, pure=True)
            if files is not None:
                blocks = [dask.delayed(_worker.predict_file, pure=True)(p, files.options, mdl,
                                                                        method)
                          for p in files.paths]
                dt = dtype or np.dtype(files.options["dtype"])
            else:
                blocks = [dask.delayed(_worker.predict_block, pure=True)(b, mdl, method)
                          for b in X.to_delayed()]
                dt = dtype or _frame_dtype(X)
            return da.concatenate([da.from_delayed(b, shape=(np.nan,) + tail, dtype=dt)
                                   for b in blocks])
        if not _data._is_dask_array(X):
            return getattr(model, method)(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got {X.ndim}-D")
        if X.shape[1] != model.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} was "
                             f"fitted with {model.n_features_in_}")
        if X.numblocks[1] > 1:
            X = X.rechunk({1: -1})
        dt = dtype or (X.dtype if X.dtype in (np.float32, np.float64) else np.float64)
        mdl = dask.delayed(model, pure=True)
        if tail:
            return X.map_blocks(_worker.predict_block, mdl, method, dtype=dt,
                                chunks=(X.chunks[0], tail), meta=np.empty((0, 0), dt))
        return X.map_blocks(_worker.predict_block, mdl, method, dtype=dt, drop_axis=1,
                            meta=np.empty((0,), dt))

    def predict(self, X):
        """Predictions; a dask array (lazy, block by block) for dask input."""
        return self._map(X, "predict")

    def score(self, X, y=None, sample_weight=None, compute=True):
        """Accuracy (classifiers) or R^2 (regressors), from block-wise sums;
        ``compute=False`` returns a 0-d dask array."""
        import dask
        import dask.array as da

        model = self._fitted()
        files = _data.as_files(X)
        if files is None and not (_data._is_dask_array(X) or _data._is_dask_frame(X)):
            return model.score(X, y, sample_weight=sample_weight)
        mdl = dask.delayed(model, pure=True)
        if files is not None:
            terms = [dask.delayed(_worker.file_score_terms, pure=True)(p, files.options, mdl)
                     for p in files.paths]
        else:
            if y is None:
                raise ValueError("score needs y")
            xs, ys, ws = _score_blocks(X, y, sample_weight)
            terms = [dask.delayed(_worker.score_terms, pure=True)(xb, yb, mdl, wb)
                     for xb, yb, wb in zip(xs, ys, ws)]
        total = dask.delayed(_worker.combine_score, pure=True)(terms, self._classify)
        if compute:
            return float(get_client(self.client).compute(total).result())
        return da.from_delayed(total, shape=(), dtype=np.float64)


def _tree(client, fn, futures):
    """Reduce ``futures`` with ``fn`` pairwise on the workers, in a binary tree
    fixed by their order (log2 M steps; the client receives one result)."""
    level = list(futures)
    while len(level) > 1:
        nxt = [client.submit(fn, a, b, pure=False) for a, b in zip(level[::2], level[1::2])]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _average_on_workers(client, futures, model):
    """An SGD round's one gathered future: the shards' terms added in a tree
    and averaged on a worker, with every shard's summary (rows, loss,
    divergence, worker)."""
    return [client.submit(_worker.mean_state, _tree(client, _worker.add_terms, futures), model,
                          pure=False)]


# a broadcast object smaller than this travels inside the tasks (one message
# per task); larger ones are scattered once and copied along a tree
INLINE_BYTES = 1 << 18


def _share(client, obj):
    from dask.sizeof import sizeof

    if sizeof(obj) < INLINE_BYTES:
        return obj
    return client.scatter(obj, broadcast=True, hash=False)


class _PerShard(list):
    """An argument with one value per shard."""


def _early_stopping(est):
    return bool(est.early_stopping)


def _frame_dtype(X):
    kinds = {np.dtype(t) for t in X.dtypes}
    return np.float32 if kinds == {np.dtype(np.float32)} else np.float64


def _score_blocks(X, y, sw):
    if _data._is_dask_array(X) and X.numblocks[1] > 1:
        X = X.rechunk({1: -1})
    xs = list(X.to_delayed()[:, 0]) if _data._is_dask_array(X) else X.to_delayed()
    out = []
    for name, v in (("y", y), ("sample_weight", sw)):
        if v is None:
            out.append([None] * len(xs))
            continue
        if _data._is_dask_array(v):
            if _data._is_dask_array(X) and v.chunks[0] != X.chunks[0]:
                v = v.rechunk({0: X.chunks[0]})
            vs = list(v.to_delayed().reshape(v.numblocks[0], -1)[:, 0])
        elif _data._is_dask_frame(v):
            vs = v.to_delayed()
        else:
            raise TypeError(f"{name} must be a dask array or Series like X")
        if len(vs) != len(xs):
            raise ValueError(f"mismatched partitions: X has {len(xs)} partitions, {name} "
                             f"has {len(vs)}")
        out.append(vs)
    return xs, out[0], out[1]


def _coef_state(W, b, y_ndim):
    """coef_ / intercept_ from the kernels' (W, b), as the in-memory estimators
    expose them (a 1-D coef_ for a one-output regressor)."""
    coef = np.ascontiguousarray(W.T)
    if y_ndim == 1:
        coef = coef[0].copy()
    intercept = b.copy() if b is not None else np.zeros(W.shape[1], dtype=W.dtype)
    return {"coef_": coef, "intercept_": intercept}


class LinearClassifier(ClassifierMixin, _DaskLinear):
    """optkern.LinearClassifier trained on a Dask cluster (see the module
    docstring): the same parameters plus ``client`` and ``local_epochs``."""

    _local_cls = _est.LinearClassifier
    _classify = True
    __init__ = _mirror_init(_est.LinearClassifier)
    score = _DaskLinear.score      # before ClassifierMixin's in-memory score

    def decision_function(self, X):
        return self._map(X, "decision_function")

    def predict_proba(self, X):
        if not self._fitted()._has_proba():
            raise AttributeError(f"predict_proba is not available for loss={self.loss!r}")
        return self._map(X, "predict_proba")


class LinearRegressor(RegressorMixin, _DaskLinear):
    """optkern.LinearRegressor trained on a Dask cluster (see the module
    docstring): the same parameters plus ``client`` and ``local_epochs``."""

    _local_cls = _est.LinearRegressor
    __init__ = _mirror_init(_est.LinearRegressor)
    score = _DaskLinear.score      # before RegressorMixin's in-memory score
