"""The linear estimators' fit: the minibatch loop over epochs.

``FitLoop`` is the part of ``optkern.estimators._BaseLinear`` that runs
``fit`` and ``partial_fit``: it seeds the fit, splits off the validation set,
checks the model fits in memory, starts or continues the weights and the
optimizer (``_make_optimizer``: the named or given optimizer with the
estimator's learning rate and penalty), then runs the epochs
(``optkern._lin_epochs``) under the stopping rules and the divergence check
(``optkern._lin_stopping``) and exposes the fitted attributes (``_finish``).
``solver="lbfgs"`` leaves the loop for ``optkern._lin_lbfgs``.  The state of
one fit travels in a ``_Context``.
"""

import functools
import math
import numbers
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from optkern import _backend
from optkern import optimizers as _opt
from optkern import schedules as _sched
from optkern._lin_defaults import SPARSE_WIDE_DEFAULTS
from optkern._lin_params import OPTIMIZER_NAMES, _check_csr_structure
from optkern._lin_stopping import (ADAPTIVE_MIN_LR, PROGRESSIVE_T, TrainingDiverged, _Stall,
                                   _run_callbacks, _snapshot_into, progressive_trend)
from optkern._progress import progress_bar
from optkern.kernels import penalty as _pen


@functools.lru_cache(maxsize=256)
def _derived_seed(random_state):
    """The first draw of RandomState(random_state): the seed of a fit's
    Generator.  Cached: seeding a RandomState costs ~0.1 ms, a tenth of a
    small fit."""
    return int(np.random.RandomState(random_state).randint(0, 2 ** 31 - 1))



def _n_states(optimizer):
    """State arrays per parameter of an optimizer instance or name (the memory
    check's count: Adam 2, SGD 0, ...)."""
    from optkern.kernels.rules import RULES

    cls = type(optimizer) if isinstance(optimizer, _opt.Optimizer) else \
        OPTIMIZER_NAMES[optimizer][0]
    return len(RULES[cls._rule].states)



class _Context:
    """The mutable state of one fit, shared with the epoch runners."""

    def __init__(self, **kw):
        self.plateau = 1.0
        self.__dict__.update(kw)



class FitLoop:
    """fit and partial_fit: the optimizer, the epochs, the fitted attributes."""

    def fit(self, X, y, sample_weight=None):
        """Train from scratch (or from the last fit with ``warm_start``)."""
        self._validate_params()
        X, y = self._validate_fit_data(X, y, reset=True)
        sw = self._sample_weight(X, y, sample_weight)
        if not (self.warm_start and hasattr(self, "coef_")):
            for attr in ("_opt_state", "_t"):
                if hasattr(self, attr):
                    delattr(self, attr)
        return self._fit(X, y, sw, max_epochs=self.max_epochs, partial=False)

    def partial_fit(self, X, y, sample_weight=None, **kwargs):
        """One epoch over (X, y), continuing the optimizer state of earlier calls."""
        first = not hasattr(self, "coef_")
        self._validate_params()
        X, y = self._validate_fit_data(X, y, reset=first, **kwargs)
        sw = self._sample_weight(X, y, sample_weight)
        return self._fit(X, y, sw, max_epochs=1, partial=True)

    def _fit(self, X, y, sw, max_epochs, partial):
        # every "auto" kernel choice of this fit sees one load reading (an
        # L-BFGS fit calls loss_and_grad hundreds of times): one kernel for
        # the whole fit, whatever the machine's load does meanwhile
        with _backend.decide_once():
            return self._fit_decided(X, y, sw, max_epochs, partial)

    def _fit_decided(self, X, y, sw, max_epochs, partial):
        split = self.early_stopping and not partial
        if partial and hasattr(self, "_rng"):
            rng = self._rng
        elif isinstance(self.random_state, numbers.Integral) and not split:
            rng = np.random.default_rng(_derived_seed(int(self.random_state)))
        else:
            rs = check_random_state(self.random_state)
            rng = np.random.default_rng(rs.randint(0, 2 ** 31 - 1))
        X_val = y_val = None
        if split:   # rs is set: split implies partial=False
            X, X_val, y, y_val, sw, _ = self._split_validation(X, y, sw, rs)
        if sp.issparse(X):
            _check_csr_structure(X)
        self._set_data_defaults(X, partial)
        n, d = X.shape
        dtype = X.dtype
        k = self._n_outputs()
        self._check_fit_memory(X, k)
        keep_state = partial and hasattr(self, "_opt_state")
        reuse = (keep_state or self.warm_start) and hasattr(self, "_W") and \
            self._W.shape == (d, k) and self._W.dtype == dtype and \
            (self._b is not None) == bool(self.fit_intercept)
        if reuse:
            W = self._W.copy()
            b = None if self._b is None else self._b.copy()
        else:
            keep_state = False
            W = np.zeros((d, k), dtype=dtype)
            b = np.zeros(k, dtype=dtype) if self.fit_intercept else None
        if self.solver == "lbfgs":
            return self._fit_lbfgs(X, y, sw, W, b, max_epochs)
        opt, base_lr = self._make_optimizer(W, b, n, int(rng.integers(0, 2 ** 62)))
        if keep_state and self._opt_state is not None:
            opt.load_state_dict(self._opt_state)
        schedule = self.schedule
        if schedule is None and self._wide:
            schedule = SPARSE_WIDE_DEFAULTS["schedule"]
        elif schedule is None and self._uses_ftrl():
            # FTRL's lr scales its weights (w = -z lr / (beta + sqrt(n)) ...), not
            # its steps: "adaptive" division would shrink the model; constant
            schedule = "constant"
        ctx = _Context(X=X, y=y, sw=sw, W=W, b=b, opt=opt, base_lr=base_lr,
                       schedule=_sched.get_schedule(
                           None if schedule == "adaptive" else schedule),
                       t=getattr(self, "_t", 0) if keep_state else 0,
                       backend=opt.backend if self.backend != "numpy" else "numpy")
        if isinstance(ctx.schedule, _sched.ReduceOnPlateau):
            ctx.schedule.reset()
        if sp.issparse(X):
            from optkern import sparse_epochs
            ctx.sparse_mode = sparse_epochs.resolve_mode(self, X, opt, ctx.schedule, ctx.backend)
        else:
            # resolve_mode's answer for dense X, without importing the sparse
            # epochs' machinery a dense fit never runs (sparse_epochs, its
            # compiled drivers: a warm first fit's import time)
            ctx.sparse_mode = "dense"
        adaptive = schedule is None or schedule == "adaptive"
        history = list(self.history_) if (keep_state and hasattr(self, "history_")) else []
        stall = _Stall(self.tol, self._n_iter_no_change(), self._stall_rel_tol())
        marks = self._progressive_marks(ctx, n, partial, reuse, X_val, adaptive)
        self.__dict__.pop("_progressive_t", None)   # set when the rule decides
        good_W, good_b = W.copy(), None if b is None else b.copy()
        good_state = opt._snapshot()
        epoch0 = len(history)
        limit = self._divergence_limit(X, y, sw, W, b)
        progress = self._progress(max_epochs)
        converged = False
        interrupted = False
        try:
            for epoch in range(max_epochs):
                order, bs = self._batches(rng, n)
                t0 = time.perf_counter()
                lr_now = base_lr * ctx.schedule.factor(ctx.t) * ctx.plateau
                try:
                    loss = self._run_epoch(ctx, order, bs, marks if epoch == 0 else None)
                except FloatingPointError:
                    loss = float("nan")
                elapsed = time.perf_counter() - t0
                finite = math.isfinite(loss) and loss <= limit and \
                    np.all(np.isfinite(W)) and (b is None or np.all(np.isfinite(b)))
                if not finite:
                    W[...] = good_W
                    if b is not None:
                        b[...] = good_b
                    opt._restore(good_state)
                    self._finish(W, b, history, ctx, opt, epoch0 + epoch, rng)
                    msg = (f"training diverged at epoch {epoch0 + epoch + 1}: the loss became "
                           f"{loss} (lr={lr_now:g}); the weights of epoch {epoch0 + epoch} "
                           f"were kept. {self._divergence_hint(lr_now)}")
                    if self.on_divergence == "warn":
                        warnings.warn(msg, RuntimeWarning, stacklevel=3)
                        return self
                    raise TrainingDiverged(msg)
                good_W[...] = W
                if b is not None:
                    good_b[...] = b
                good_state = _snapshot_into(opt, good_state)
                row = {"epoch": epoch0 + epoch + 1, "loss": float(loss), "val_score": None,
                       "lr": float(lr_now), "time": elapsed}
                # coef_/intercept_ show this epoch's model to the validation score
                # and to callbacks; nothing else reads them before the fit ends
                # (W.T is a model-sized copy: skipped when no one looks)
                if X_val is not None or self.callbacks:
                    self._finish(W, b, history, ctx, opt, epoch0 + epoch + 1, rng,
                                 final=False)
                if X_val is not None:
                    row["val_score"] = float(self.score(X_val, y_val))
                history.append(row)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.4g}")
                if isinstance(ctx.schedule, _sched.ReduceOnPlateau):
                    ctx.plateau = ctx.schedule.update(
                        -row["val_score"] if X_val is not None else loss)
                stop = _run_callbacks(self.callbacks, row)
                if self.tol is not None and not partial and stall.stalled(
                        loss, row["val_score"] if X_val is not None else None):
                    if adaptive and base_lr * ctx.plateau > ADAPTIVE_MIN_LR:
                        # scikit-learn's "adaptive": a stalled run continues
                        # with a five times smaller rate
                        ctx.plateau /= 5.0
                    else:
                        converged = True
                        break
                if marks is not None and epoch == 0 and not partial:
                    self._progressive_t = progressive_trend(ctx.segments, marks)
                    if self._progressive_t < PROGRESSIVE_T:
                        converged = True
                        break
                if stop:
                    converged = True
                    break
        except KeyboardInterrupt:
            interrupted = True
            W[...] = good_W
            if b is not None:
                b[...] = good_b
            opt._restore(good_state)
            warnings.warn(f"training interrupted; the model of epoch {len(history)} is kept",
                          RuntimeWarning, stacklevel=2)
        finally:
            if progress is not None:
                progress.close()
        self._warn_state_overflow(opt)
        # the last good epoch's copies are dead: free them before _finish makes
        # coef_ and the saved state (model-sized each)
        del good_W, good_b, good_state
        self._finish(W, b, history, ctx, opt, len(history), rng)
        if not (converged or partial or interrupted or self.tol is None):
            warnings.warn(f"maximum number of epochs ({max_epochs}) reached before "
                          "convergence; consider raising max_epochs", ConvergenceWarning,
                          stacklevel=2)
        return self

    def _make_optimizer(self, W, b, n_train, seed):
        params = dict(self.optimizer_params or {})
        if isinstance(self.optimizer, _opt.Optimizer):
            cls = type(self.optimizer)
            template = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
            for fixed in cls._fixed_options:   # AdamW's decoupled_weight_decay
                template.pop(fixed, None)
            template.update(params)
            params = template
            base_lr = params.pop("lr")
        else:
            cls, default_lr, fixed = OPTIMIZER_NAMES[self._optimizer_name()]
            if self._wide and self.optimizer == "auto":
                default_lr = SPARSE_WIDE_DEFAULTS["lr"]
            merged = dict(fixed)
            merged.update(params)
            params = merged
            base_lr = default_lr
            if cls is _opt.SGLD:
                # the gradients are of the mean loss, so temperature 1/n would
                # sample the posterior of the summed loss; 0.01/n (a "cold
                # posterior") keeps the final iterate a good classifier
                params.setdefault("noise_scale", 0.1 / math.sqrt(max(n_train, 1)))
        if self.lr is not None:
            base_lr = float(self.lr)
        if cls._noisy:
            params["seed"] = seed
        if cls is _opt.FTRL:
            # the penalty goes to FTRL's own proximal l1/l2 (exact zeros), growing
            # with the step as the summed gradients do (see _penalty_args)
            alpha, l1r = self._penalty_terms(for_gradient=False)
            params.setdefault("l1_per_step", _pen.l1_strength(alpha, l1r))
            params.setdefault("l2_per_step", _pen.l2_strength(alpha, l1r))
        groups = [{"params": [W]}]
        if b is not None:
            # the intercept is not penalised
            unpenalised = {k: 0.0 for k in ("weight_decay", "l1", "l2", "l1_per_step",
                                            "l2_per_step") if k in cls._option_names}
            groups.append({"params": [b], **unpenalised})
        try:
            opt = cls(groups, lr=base_lr, backend=self._optimizer_backend(W.size),
                      average=self.average, **params)
        except TypeError as exc:
            raise ValueError(f"optimizer_params {sorted(params)} do not fit "
                             f"{cls.__name__}: {exc}") from None
        return opt, base_lr

    def _optimizer_backend(self, size):
        be = self.backend
        if be == "auto":
            # The Numba epoch, not the Cython twin, even for small models: its
            # dense loops run over W^T and vectorise for this CPU (digits,
            # softmax + Adam: 0.45 vs 0.92 ms per epoch); loading it from the
            # disk cache costs ~0.15 s once per process.  backend="cython"
            # trains with no JIT at all.
            be = _backend.choose_auto(size)
            return "numba" if be == "cython" else be
        return be

    def _check_fit_memory(self, X, k):
        """ModelTooLargeError before anything is allocated (optkern._memory)."""
        from optkern import _memory

        n, d = X.shape
        if sp.issparse(X):
            rows = 0
        elif self.solver == "lbfgs":
            rows = n
        else:
            rows = min(n, self._batch_size(n) or n)
        opt = self.optimizer if isinstance(self.optimizer, _opt.Optimizer) else \
            self._optimizer_name()
        _memory.check_fit_memory(d, k, X.dtype, _n_states(opt),
                                 solver=self.solver, average=self.average,
                                 intercept=bool(self.fit_intercept), batch_rows=rows,
                                 what=f"{type(self).__name__}.fit")

    def _finish(self, W, b, history, ctx, opt, n_epochs, rng, final=True):
        """Expose the fitted attributes (Polyak averages when ``average``)."""
        if self.average is not False and opt.average_start is not None and \
                any(g.avg_count for g in opt._groups):
            avg = opt.averaged_params()
            Wf, bf = avg[0], (avg[1] if b is not None else None)
        else:
            Wf, bf = W, b
        self._set_coef(Wf, bf)
        if final:
            self._W, self._b = W, b
            self.n_iter_ = n_epochs
            self.history_ = history
            self.t_ = ctx.t
            self._t = ctx.t
            self._opt_state = opt.state_dict()
            self._rng = rng

    def _progress(self, total):
        if not self.verbose:
            return None
        return progress_bar(total=total, desc=f"{type(self).__name__}({self._optimizer_name()})",
                            unit="epoch", warn_missing=True)
