"""Minibatch loss and gradient of linear and softmax models.

``loss_and_grad(X, y, W, b, loss="softmax", ...) -> (loss, dW, db)`` computes
the objective ::

    sum_i w_i L(x_i W + b, y_i) / sum_i w_i  +  penalty(W)

and its gradient with respect to W (n_features, n_outputs) and b (n_outputs,)
in one compiled call.  ``predict_scores(X, W, b)`` returns the decision
values X W + b.  ``check_grad(...)`` compares the analytic gradient with
central finite differences.  docs/losses.md has the formulas, the backends,
the fused-vs-BLAS choice and the measurements.

Losses (``LOSSES``; each is one rule in ``optkern.kernels.loss_rules``):

* regression, y real of shape (n,) (one output) or (n, n_outputs):
  ``squared``, ``huber``, ``epsilon_insensitive``, ``absolute``
  (``epsilon`` is Huber's and epsilon-insensitive's width, default 0.1);
* binary, one output, y in {0, 1}: ``log``, ``hinge``, ``squared_hinge``,
  ``modified_huber``;
* multiclass, y an integer class index in 0..n_outputs-1: ``softmax``,
  ``multiclass_hinge`` (Crammer-Singer).

Penalties: ``l2`` = 0.5*alpha*||W||^2, ``l1`` = alpha*||W||_1 (subgradient
sign(W), 0 at W = 0), ``elasticnet`` = alpha*(l1_ratio*||W||_1 +
0.5*(1-l1_ratio)*||W||^2), ``None`` = no penalty.  b is not penalised.

Data: dense float32/float64 arrays in C or Fortran order, or scipy.sparse CSR
(other sparse formats are converted to CSR on every call, with a
SparseEfficiencyWarning: convert once yourself).  X's dtype is the compute
dtype: W, b, and the ``out`` buffers must have it.  float32 data computes in
float32 (dot products are accumulated in float32; per-row losses are summed in
float64 and returned as a Python float).

Everything is validated before any output buffer is written: a failed call
leaves ``out`` untouched.
"""

import difflib
import math
import numbers
import threading
import warnings

import numpy as np
import scipy.sparse as sp

from optkern import _backend, _jit
from optkern.kernels import loss_rules as _rules
from optkern.kernels.penalty import l1_ratio_of

__all__ = ["loss_and_grad", "predict_scores", "check_grad", "LOSSES", "PENALTIES"]

LOSSES = dict(_rules.LOSS_RULES)
PENALTIES = ("l2", "l1", "elasticnet", None)

# The fused single-pass kernel keeps W^T and the partial dW^T in cache while it
# streams the rows; beyond these sizes the BLAS path (Z = X W, rule per row,
# dW = X^T dZ) wins.  Measured single-threaded on the project's 2-core machine,
# float32, softmax (docs/losses.md, "Fused or BLAS"): fused wins at k = 10 up to
# d = 3072; BLAS wins from k = 16 (d = 784) and at (2048, 32).
# backend="auto" on CSR runs the parallel kernel only when the rows hold at
# least this many nonzeros per feature and thread: each thread zeroes and
# hands back its own (d, k) partial gradient, which costs about what
# 1 nonzero per feature costs (docs/losses.md, "Choosing the kernel").
# Below, the serial kernel is as fast or nearly (1% density, batch 256,
# (4096, 100): serial 0.51 ms, parallel 0.43 ms in a quiet spell and 1.1 ms
# in a busy one on the 2-core project machine; at 20 nonzeros per feature
# and thread the parallel kernel is 1.8x the serial one).
CSR_PARALLEL_NNZ_PER_FEATURE = 4
FUSED_MAX_OUTPUTS = 12
FUSED_MAX_WEIGHTS = 65_536          # n_features * n_outputs

_METHODS = ("auto", "fused", "blas")
_INT64 = np.dtype(np.int64)
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_local = threading.local()


# ------------------------------------------------------------------ checks


_KERNEL_MODULES = {}
_CSR_TYPES = tuple(t for t in (getattr(sp, "csr_matrix", None), getattr(sp, "csr_array", None))
                   if t is not None)


def _kernels(name):
    """optkern.kernels.<name>, imported on first use (compiled modules load
    lazily; an import statement per call cost 0.3 us)."""
    mod = _KERNEL_MODULES.get(name)
    if mod is None:
        import importlib
        mod = _KERNEL_MODULES[name] = importlib.import_module(f"optkern.kernels.{name}")
    return mod


def _suggest(value, choices):
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_loss(loss):
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not a loss; choose one of {sorted(LOSSES)}"
                         + _suggest(loss, LOSSES))
    return LOSSES[loss]


def _real(name, value, lo=0.0, hi=None):
    if type(value) is float and lo <= value and (hi is None or value <= hi) \
            and value != math.inf:
        return value            # the common case, without the ABC check (NaN fails lo <= value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be a finite number {rng}, got {value!r}")
    return value


def _penalty_ratio(penalty, alpha, l1_ratio):
    """(alpha, l1_ratio) of the kernels' elastic-net form."""
    if penalty not in PENALTIES:
        raise ValueError(f"penalty={penalty!r} is not valid; choose one of {list(PENALTIES)}"
                         + _suggest(penalty, [p for p in PENALTIES if p]))
    alpha = _real("alpha", alpha)
    l1_ratio = _real("l1_ratio", l1_ratio, 0.0, 1.0)
    if penalty is None:
        return 0.0, 0.0
    return alpha, l1_ratio_of(penalty, l1_ratio)


# Below this many elements a scan with an exact NumPy form runs in NumPy until
# Numba has started in this process (_jit.numba_warm): at 2^24 NumPy's form
# costs ~10 ms more than the compiled one, Numba's start-up 100-600 ms.
_NUMPY_SCAN_MAX = 1 << 24


def _compiled_scan(key, fn, args, size):
    """Whether the compiled scan ``fn(*args)`` serves (see _NUMPY_SCAN_MAX)."""
    if size < _NUMPY_SCAN_MAX and not _jit.numba_warm():
        return False
    return _jit.ready(key, fn, args)


def _int_range(a):
    """(min, max) of a non-empty 1-D integer array, one compiled pass (NumPy's
    two reductions while the compiled scan is not loaded yet, or Numba has
    not started in this process: optkern._jit)."""
    fn = _kernels("finite").int_range
    if _compiled_scan(("int_range", a.dtype.char, a.flags.writeable), fn, (a,), a.size):
        return fn(a)
    return a.min(), a.max()


def _all_finite(a):
    finite = _kernels("finite")
    if a.size == 0:
        return True
    flat = a.ravel(order="K")
    if not flat.flags.c_contiguous:
        flat = np.ascontiguousarray(flat)
    args = ((flat,),)
    if _compiled_scan(("first_nonfinite", flat.dtype.char, flat.flags.writeable),
                      finite.first_nonfinite, args, flat.size):
        return finite.first_nonfinite(*args) < 0
    return bool(np.isfinite(flat).all())


def _check_indices(X):
    """ValueError when a CSR X has a column index outside [0, n_features)."""
    indices = X.indices
    lo, hi = _int_range(indices) if indices.shape[0] else (0, -1)
    if lo < 0 or hi >= X.shape[1]:
        raise ValueError(f"X has column indices outside [0, {X.shape[1]}): wrong shape "
                         "for its CSR structure")


def _check_X(X, check_input, indices=True):
    """(kind, X) with kind "dense" or "csr"; X validated (not yet against W).

    ``indices=False``: a CSR X's column indices are not scanned (the caller
    scans them, or runs a kernel that checks them in its own pass:
    ``_csr_kernel_checks``); an index outside [0, d) is still reported
    before an unsorted row (the scan runs when the canonical check fails)."""
    exact = type(X) in _CSR_TYPES
    if exact or sp.issparse(X):
        if not exact and X.format != "csr":
            warnings.warn(f"X is a scipy.sparse {X.format.upper()} matrix; it is converted "
                          "to CSR on every call: convert it once with X.tocsr()",
                          sp.SparseEfficiencyWarning, stacklevel=3)
            X = X.tocsr()
        shape = X.shape
        if len(shape) != 2:
            raise ValueError(f"X must be 2-D, got shape {shape}")
        data, indptr = X.data, X.indptr
        if data.dtype.char not in "fd":
            raise TypeError(f"X must hold float32 or float64 values, got {X.dtype}")
        nnz = X.indices.shape[0]
        if indptr.shape[0] != shape[0] + 1 or indptr.ndim != 1 or indptr[-1] != nnz \
                or data.shape != X.indices.shape:
            raise ValueError(f"X is a malformed CSR matrix for shape {shape}: indptr has "
                             f"{indptr.shape[0]} entries, indices {nnz}, "
                             f"data {data.shape[0]}")
        if X.indices.dtype.kind not in "iu":
            raise TypeError(f"X has column indices of dtype {X.indices.dtype}; "
                            "expected integers")
        if indices:
            _check_indices(X)
        if not X.has_canonical_format:
            if not indices:
                _check_indices(X)
            raise ValueError("X is a CSR matrix with unsorted or duplicate column indices; "
                             "call X.sum_duplicates() (which also sorts) first")
        if check_input and not _all_finite(data):
            raise ValueError("X contains NaN or infinity (pass check_input=False to skip "
                             "this check)")
        return "csr", X
    if not isinstance(X, np.ndarray):
        X = np.asarray(X)
    dt = X.dtype
    if dt is not _FLOAT32 and dt is not _FLOAT64 and dt not in (np.float32, np.float64):
        raise TypeError(f"X must be a float32 or float64 array, got dtype {X.dtype} "
                        "(convert it with X.astype(np.float32) or np.float64)")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if check_input and not _all_finite(X):
        raise ValueError("X contains NaN or infinity (pass check_input=False to skip "
                         "this check)")
    return "dense", X


def _check_params(X, W, b, n_features, dt=None):
    """(W, b) C-contiguous, checked against X (of dtype dt: X.dtype)."""
    if dt is None:
        dt = X.dtype
    if type(W) is not np.ndarray and not isinstance(W, np.ndarray):
        raise TypeError(f"W must be a numpy array, got {type(W).__name__}")
    if not _same(W.dtype, dt):
        raise TypeError(f"W has dtype {W.dtype} but X has {dt}: they must match "
                        f"(X's dtype is the compute dtype)")
    shape = W.shape
    if len(shape) != 2:
        raise ValueError(f"W must be 2-D (n_features, n_outputs), got shape {shape}")
    if shape[0] != n_features:
        raise ValueError(f"W has {shape[0]} rows but X has {n_features} features "
                         f"(W must be (n_features, n_outputs), got {shape})")
    k = shape[1]
    if k < 1:
        raise ValueError("W must have at least one output column")
    if b is not None:
        if type(b) is not np.ndarray and not isinstance(b, np.ndarray):
            raise TypeError(f"b must be a numpy array or None, got {type(b).__name__}")
        if not _same(b.dtype, dt):
            raise TypeError(f"b has dtype {b.dtype} but X has {dt}: they must match")
        if b.shape != (k,):
            raise ValueError(f"b must have shape ({k},) to match W {W.shape}, got {b.shape}")
    if not W.flags.c_contiguous:
        W = np.ascontiguousarray(W)
    if b is not None and not b.flags.c_contiguous:
        b = np.ascontiguousarray(b)
    return W, b


def _check_y(spec, y, n, k, dt, check_input):
    """y in kernel form: (n, k) reals for per-output losses, (n,) int64 for multiclass."""
    if spec.target == "multiclass" and type(y) is np.ndarray and y.dtype.kind in "iu" \
            and y.shape == (n,) and n:
        # the common case (class indices from an encoder), in one compiled pass
        lo, hi = _int_range(y)
        if lo < 0 or hi >= k:
            _check_class_range(lo, hi, k)
        return y if _same(y.dtype, _INT64) and y.flags.c_contiguous \
            else np.ascontiguousarray(y, dtype=np.int64)
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"y must be numeric, got dtype {y.dtype}")
    if y.ndim == 0 or y.shape[0] != n:
        raise ValueError(f"y has {0 if y.ndim == 0 else y.shape[0]} rows but X has {n}")
    if spec.target == "regression":
        if y.ndim == 1:
            if k != 1:
                raise ValueError(f"y must have shape ({n}, {k}) for a {k}-output regression "
                                 f"loss, got {y.shape}")
            y = y.reshape(n, 1)
        elif y.shape != (n, k):
            raise ValueError(f"y must have shape ({n}, {k}) (or ({n},) with one output), "
                             f"got {y.shape}")
        y = np.ascontiguousarray(y, dtype=dt)
        if check_input and not _all_finite(y):
            raise ValueError("y contains NaN or infinity (pass check_input=False to skip "
                             "this check)")
        return y
    if spec.target == "binary":
        if k != 1:
            raise ValueError(f"loss={spec.name!r} is binary: W must have one output column "
                             f"(n_outputs == 1), got {k}; use 'softmax' or "
                             "'multiclass_hinge' for several classes")
        if not (y.ndim == 1 or y.shape == (n, 1)):
            raise ValueError(f"y must have shape ({n},) for a binary loss, got {y.shape}")
        yf = y.reshape(n)
        bad = (yf != 0) & (yf != 1)
        if bad.any():
            vals = np.unique(yf[bad])[:5]
            raise ValueError(f"y must hold 0/1 labels for the binary loss {spec.name!r}, "
                             f"found {vals.tolist()}"
                             + (" (NaN)" if np.isnan(vals.astype(float)).any() else ""))
        return np.ascontiguousarray(yf.reshape(n, 1), dtype=dt)
    # multiclass
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D class indices of shape ({n},) for loss "
                         f"{spec.name!r}, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"y must hold integer class indices for loss {spec.name!r}; "
                             "found non-integer or non-finite values")
    elif y.dtype.kind not in "iub":
        raise TypeError(f"y must hold integer class indices, got dtype {y.dtype}")
    if n:
        _check_class_range(y.min(), y.max(), k)
    return np.ascontiguousarray(y, dtype=np.int64)


def _check_class_range(lo, hi, k):
    if lo < 0 or hi >= k:
        raise ValueError(f"y must hold class indices in [0, {k}) (W has {k} output columns); "
                         f"found values in [{lo}, {hi}]")


def _check_sample_weight(sample_weight, n, dt):
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight)
    if sw.ndim == 0:
        sw = np.full(n, sw)
    if not (np.issubdtype(sw.dtype, np.number) or sw.dtype == bool) or sw.dtype.kind == "c":
        raise TypeError(f"sample_weight must be real numbers, got dtype {sw.dtype}")
    if sw.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {sw.shape}")
    sw = np.ascontiguousarray(sw, dtype=dt)
    if not np.all(np.isfinite(sw)):
        raise ValueError("sample_weight contains NaN or infinity")
    if np.any(sw < 0):
        raise ValueError("sample_weight must be non-negative")
    return sw


def _overlap(a, b, a_flags, b_flags):
    """Whether a and b share memory.  Two different arrays that own their
    data are two allocations (the common case, np.empty_like buffers: 0.05
    against 0.28 us for NumPy's bounds test); else NumPy's bounds test, then
    the exact one (microseconds even when apart)."""
    if a is not b and a_flags.owndata and b_flags.owndata:
        return False
    return np.may_share_memory(a, b) and np.shares_memory(a, b)


def _same(a, b):
    # dtypes: identity first (NumPy's builtin dtypes are singletons), == after
    return a is b or a == b


def _writeable_c(flags):
    return flags.c_contiguous and flags.writeable


def _check_out(out, W, b, others=()):
    dt = W.dtype
    if out is None:
        return None, None
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError("out must be a tuple (dW, db)")
    dW, db = out
    if not isinstance(dW, np.ndarray) or not _same(dW.dtype, dt) or dW.shape != W.shape:
        raise ValueError(f"out[0] (dW) must be a {dt} array of shape {W.shape}, got "
                         + (f"{dW.dtype} {dW.shape}" if isinstance(dW, np.ndarray)
                            else type(dW).__name__))
    dW_flags = dW.flags
    if not _writeable_c(dW_flags):
        raise ValueError("out[0] (dW) must be C-contiguous and writeable")
    if b is None:
        if db is not None:
            raise ValueError("out[1] (db) must be None when b is None (no intercept)")
    else:
        if not isinstance(db, np.ndarray) or not _same(db.dtype, dt) or db.shape != b.shape:
            raise ValueError(f"out[1] (db) must be a {dt} array of shape {b.shape}")
        db_flags = db.flags
        if not _writeable_c(db_flags):
            raise ValueError("out[1] (db) must be C-contiguous and writeable")
    W_flags = W.flags
    if _overlap(dW, W, dW_flags, W_flags) or (db is not None
                                             and _overlap(db, W, db_flags, W_flags)):
        raise ValueError("out buffers must not share memory with W")
    # every other input, and the two buffers with each other (issue 16: out=(dW,
    # dW[0]) returned a wrong dW); bounds first, the exact test only on a hit
    bufs = [("out[0] (dW)", dW, dW_flags)] + \
        ([] if db is None else [("out[1] (db)", db, db_flags)])
    if db is not None and _overlap(dW, db, dW_flags, db_flags):
        raise ValueError("out[0] (dW) and out[1] (db) share memory; give separate buffers")
    for what, arr in others:
        if not isinstance(arr, np.ndarray):
            continue
        flags = arr.flags
        for name, buf, buf_flags in bufs:
            if _overlap(buf, arr, buf_flags, flags):
                raise ValueError(f"{name} shares memory with {what}; the output buffers "
                                 "must be separate from every input")
    return dW, db


# -------------------------------------------------------------- dispatch


def _n_chunks(n):
    import numba
    return max(1, min(numba.get_num_threads(), n))


def _aligned_empty(size, dt, align=64):
    """np.empty(size, dt) starting on an ``align``-byte line (NumPy's own
    allocations start 16 bytes into one): the kernels' scratch pieces are laid
    out on lines from its start (loss_drivers.SCRATCH_ALIGN)."""
    dt = np.dtype(dt)
    raw = np.empty(size * dt.itemsize + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + size * dt.itemsize].view(dt)


def _buffer(name, shape, dt):
    """A per-thread reusable work buffer (no allocation on repeated calls)."""
    try:
        views = _local.views
    except AttributeError:
        views = _local.views = {}
        _local.buffers = {}
    view = views.get((name, shape, dt))
    if view is not None:
        return view
    if len(views) > 64:         # many batch sizes: keep the cache small
        views.clear()
    size = math.prod(shape)
    key = (name, np.dtype(dt).str)
    buf = _local.buffers.get(key)
    if buf is None or buf.size < size:
        buf = _local.buffers[key] = _aligned_empty(max(size, 1), dt)
        views.clear()           # the old views belong to the old buffers
    view = views[(name, shape, dt)] = buf[:size].reshape(shape)
    return view


_SCRATCH_SIZES = {}


def _scratch_size(n_chunks, d, k):
    key = (n_chunks, d, k)
    size = _SCRATCH_SIZES.get(key)
    if size is None:
        if len(_SCRATCH_SIZES) > 256:
            _SCRATCH_SIZES.clear()
        size = _SCRATCH_SIZES[key] = _kernels("loss_drivers").scratch_size(n_chunks, d, k)
    return size


def choose_method(kind, X, n_outputs, method="auto"):
    """"fused" or "blas" for this problem (CSR always runs the CSR kernel)."""
    if method not in _METHODS:
        raise ValueError(f"method={method!r}: choose one of {list(_METHODS)}")
    if kind == "csr":
        return "fused"
    if method != "auto":
        return method
    if not X.flags.c_contiguous:
        return "blas"          # the fused kernel streams rows: C order only
    if n_outputs > FUSED_MAX_OUTPUTS or X.shape[1] * n_outputs > FUSED_MAX_WEIGHTS:
        return "blas"
    return "fused"


def _work(kind, X, k, passes=2):
    """The multiply-adds "auto" weighs (against LOSS_PARALLEL_MIN_SIZE):
    ``passes`` x (n d, or the nonzeros of a CSR X) x k; 2 passes for a loss
    and its gradient (scores, then dW), 1 for predictions."""
    nnz = X.indices.shape[0] if kind == "csr" else 0    # X.nnz recounts
    return passes * (nnz if kind == "csr" else X.size) * k


def _resolve_backend(backend, kind, X, k, passes=2):
    """The backend of a loss (``passes`` 2) or prediction (1) call."""
    if backend != "auto":
        return _backend.require(backend, kind="losses")
    nnz = X.indices.shape[0] if kind == "csr" else 0
    work = _work(kind, X, k, passes)
    chosen = _backend.choose_auto(work, kind="losses")
    if kind == "csr" and chosen == "cython":
        # CSR stays on the serial Numba kernels even when small: the Cython CSR
        # loss kernel took 2.3-2.6x the Numba one at digits size, 1% density,
        # and the Cython CSR predict (OpenMP threads on every call) 2.3x
        # (docs/benchmarks.md, '"auto" under load').  The Cython twin still
        # serves while the Numba kernel is not compiled (_twin_serves,
        # _predict_server).
        chosen = "numba"
    if kind == "csr" and chosen == "numba-parallel" \
            and nnz < CSR_PARALLEL_NNZ_PER_FEATURE * _n_chunks(X.shape[0]) * X.shape[1]:
        chosen = "numba"
    return chosen


def _jit_key(what, spec, kind, parallel, X, y, sw, W, b):
    """A cheap name for a loss kernel's Numba signature (optkern._jit)."""
    xs = X.data if kind == "csr" else X
    return (what, spec.name, kind, parallel, xs.dtype.char, xs.flags.writeable,
            X.indices.dtype.char if kind == "csr" else X.flags.c_contiguous,
            y.dtype.char, y.flags.writeable, sw is None, b is None, W.flags.writeable)


def _twin_serves(key, fn, args):
    """backend="auto" chose a Numba kernel: whether its Cython twin serves
    this call instead, because the Numba one is not compiled yet."""
    return _backend.cython_module("losses") is not None and not _jit.ready(key, fn, args)


def _inverse_weight(sw, n):
    drv = _kernels("loss_drivers")
    if _jit.ready(("inverse_weight", sw is None), drv.inverse_weight, (sw, n)):
        return drv.inverse_weight(sw, n)
    t = float(n) if sw is None else float(np.sum(sw, dtype=np.float64))
    return 1.0 / t if t > 0 else 0.0


def _penalty_add(W, dW, alpha, l1r):
    """loss_drivers.penalty_add, or the same formula in NumPy while that is
    not compiled (agrees to rounding: the compiled one sums in runs)."""
    drv = _kernels("loss_drivers")
    args = (W, dW, alpha, l1r)
    if _jit.ready(("penalty_add", W.dtype.char, W.flags.writeable), drv.penalty_add, args):
        return drv.penalty_add(*args)
    if alpha == 0:
        return 0.0
    dt = W.dtype.type
    W64 = W.astype(np.float64)
    value = alpha * (l1r * np.abs(W64).sum() + 0.5 * (1.0 - l1r) * np.dot(W64.ravel(),
                                                                          W64.ravel()))
    grad = dt(alpha * (1.0 - l1r)) * W
    if l1r != 0:
        grad += dt(alpha * l1r) * np.sign(W)
    dW += grad
    return float(value)


def _raise_non_finite(X, W, b):
    """A score was not finite: name the argument holding NaN/inf (ValueError);
    returns when none does (finite inputs whose scores overflowed)."""
    _check_params_finite(W, b)
    _check_X(X, True)


def _csr_kernel_checks(spec, kind, backend, k):
    """Whether the kernel serving this call checks a CSR X's column indices
    in its own pass (the Numba CSR kernels at one output, scalar rules:
    templates/loss_row_scalar.py), so that loss_and_grad skips its scan of
    them; it is then run only when the twin serves instead (_cpu_compute)."""
    return kind == "csr" and k == 1 and spec.kind == "scalar" \
        and backend in ("numba", "numba-parallel")


def _cpu_compute(backend, spec, kind, X, y, sw, W, b, alpha, l1r, eps, dW, db, method,
                 auto=False, serial=False, check=False, indices_checked=True):
    """The CPU kernels.  ``check`` (dense BLAS path only): raise ValueError
    naming X, W or b when one holds NaN/inf, before dW and db are written.
    ``indices_checked=False`` (_csr_kernel_checks): a CSR X's column indices
    were not scanned; the Numba kernel returns NaN without writing dW or db
    for one outside [0, d), and the scan then names it (ValueError)."""
    drv = _kernels("loss_drivers")
    dt = W.dtype
    n = X.shape[0]
    d, k = W.shape
    parallel = backend == "numba-parallel"
    cy = _backend.cython_module("losses") if backend == "cython" else None
    if method == "blas":
        tmp = _buffer("row_tmp", (k,), dt)
        if auto and cy is None:
            mod = drv.module_for(spec.name)
            rows_args = (np.empty((1, k), dt), y[:1], None if sw is None else sw[:1], b,
                         dt.type(eps), 1.0, np.empty(1), tmp)
            if _twin_serves(_jit_key("rows_checked", spec, kind, False, X, y, sw, W, b),
                            mod.rows_checked, rows_args):
                cy = _backend.cython_module("losses")
        Z = _buffer("Z", (n, k), dt)
        with np.errstate(invalid="ignore", over="ignore"):
            # as quiet as the compiled kernels: a NaN/inf in X is reported by
            # the caller's check (ValueError), not as a RuntimeWarning first
            np.matmul(X, W, out=Z)
        row_loss = _buffer("row_loss", (n,), np.float64)
        inv_w = _inverse_weight(sw, n)
        # the row pass runs serially even on the parallel backends: right after
        # a multi-threaded BLAS call, BLAS's spinning threads and a second
        # thread pool fight for the cores (measured: 0.5-0.8x of serial on 2
        # cores, docs/losses.md); the row pass is a small part of the call
        if cy is not None:
            bad = check and not (_all_finite(Z) and (b is None or _all_finite(b)))
            total = cy.rows_inplace(spec.name, Z, y, sw, b, eps, inv_w, row_loss, 1)
        else:
            mod = drv.module_for(spec.name)
            total, bad = mod.rows_checked(Z, y, sw, b, dt.type(eps), inv_w, row_loss, tmp)
            bad = check and bad != 0
        if bad:
            _raise_non_finite(X, W, b)
        with np.errstate(invalid="ignore", over="ignore"):
            np.matmul(X.T, Z, out=dW)
        if db is not None:
            np.sum(Z, axis=0, out=db)
        return total * inv_w + _penalty_add(W, dW, alpha, l1r)
    if cy is not None:
        import numba
        # OpenMP threads only for work the parallel Numba kernels would get
        # too: a tiny call (auto sends everything below 16,384 multiply-adds
        # here) waited up to milliseconds for a second thread, against 40 us
        # on one (the estimators' divergence threshold, 128 x 1 x 10)
        threads = max(1, min(numba.get_num_threads(), n)) if cy.OPENMP and not serial \
            and _work(kind, X, k) >= _backend.LOSS_PARALLEL_MIN_SIZE else 1
        scratch = _buffer("scratch", (_scratch_size(threads, d, k),), dt)
        if kind == "csr":
            return cy.csr_loss_grad(spec.name, X.data, X.indices, X.indptr, y, sw, W, b,
                                    alpha, l1r, eps, dW, db, scratch, threads)
        return cy.dense_loss_grad(spec.name, X, y, sw, W, b, alpha, l1r, eps, dW, db,
                                  scratch, threads)
    mod = drv.module_for(spec.name)
    chunks = _n_chunks(n) if parallel else 1
    scratch = _buffer("scratch", (_scratch_size(chunks, d, k),), dt)
    # epsilon goes as the Python float it is: the kernels convert it to X's
    # dtype, and Numba types a float faster than a NumPy scalar (0.15 us)
    if kind == "csr":
        if parallel:
            fn, args = mod.csr_parallel, (X.data, X.indices, X.indptr, y, sw, W, b, alpha,
                                          l1r, eps, dW, db, scratch, chunks)
        else:
            fn, args = mod.csr_serial, (X.data, X.indices, X.indptr, y, sw, W, b, alpha, l1r,
                                        eps, dW, db, scratch)
    elif parallel:
        fn, args = mod.dense_parallel, (X, y, sw, W, b, alpha, l1r, eps, dW, db, scratch,
                                        chunks)
    else:
        fn, args = mod.dense_serial, (X, y, sw, W, b, alpha, l1r, eps, dW, db, scratch)
    if auto and _twin_serves(_jit_key("fused", spec, kind, parallel, X, y, sw, W, b),
                             fn, args):
        # the same rule, ahead of time: no compile stall (optkern._jit); on
        # one thread, as the serial Numba kernel would run, and because the
        # compile server holds a core (an OpenMP barrier waiting for a
        # descheduled thread cost 14 ms a call on digits, against 1 ms)
        if not indices_checked:
            _check_indices(X)
        return _cpu_compute("cython", spec, kind, X, y, sw, W, b, alpha, l1r, eps, dW, db,
                            method, serial=True)
    value = fn(*args)
    if not indices_checked and value != value:
        _check_indices(X)       # raises when the NaN was an index outside [0, d)
    return value


def _launch(n):
    threads = 64
    return max(1, min(256, (n + threads - 1) // threads)), threads


def _cuda_compute(spec, kind, X, y, sw, W, b, alpha, l1r, eps, dW, db):
    from numba import cuda

    from optkern.kernels import loss_drivers as drv
    rows_dense, rows_csr, grad_dense, grad_csr = drv.cuda_kernels(spec.name)
    dt = W.dtype
    n = X.shape[0]
    d, k = W.shape
    inv_w = drv.inverse_weight(sw, n)
    empty = np.zeros(0, dt)
    d_W = cuda.to_device(W)
    d_b = cuda.to_device(empty if b is None else b)
    d_sw = cuda.to_device(empty if sw is None else sw)
    d_y = cuda.to_device(y)
    d_G = cuda.device_array((n, k), dt)
    d_loss = cuda.device_array(n, np.float64)
    d_dW = cuda.device_array((d, k), dt)
    d_db = cuda.device_array(k if b is not None else 0, dt)
    blocks, threads = _launch(n)
    if kind == "csr":
        Xt = X.T.tocsr()          # X^T as CSR: column f's nonzeros in row order
        Xt.sort_indices()
        rows_csr[blocks, threads](cuda.to_device(X.data), cuda.to_device(X.indices),
                                  cuda.to_device(X.indptr), d_y, d_sw, d_W, d_b,
                                  dt.type(eps), dt.type(inv_w), d_G, d_loss)
        gb, gt = _launch(d * k + k)
        grad_csr[gb, gt](cuda.to_device(Xt.data), cuda.to_device(Xt.indices),
                         cuda.to_device(Xt.indptr), d_G, d_dW, d_db)
    else:
        d_X = cuda.to_device(np.ascontiguousarray(X))
        rows_dense[blocks, threads](d_X, d_y, d_sw, d_W, d_b, dt.type(eps), dt.type(inv_w),
                                    d_G, d_loss)
        gb, gt = _launch(d * k + k)
        grad_dense[gb, gt](d_X, d_G, d_dW, d_db)
    total = float(np.sum(d_loss.copy_to_host()))
    d_dW.copy_to_host(dW)
    if db is not None:
        d_db.copy_to_host(db)
    return total * inv_w + drv.penalty_add(W, dW, alpha, l1r)


def loss_and_grad(X, y, W, b, loss="softmax", alpha=0.0, penalty="l2", l1_ratio=0.15,
                  sample_weight=None, backend="auto", out=None, check_input=True, *,
                  epsilon=None, method="auto"):
    """Objective and gradient of a linear model on one minibatch.

    Parameters
    ----------
    X : (n_samples, n_features) float32/float64 array (C or F order) or CSR matrix
    y : targets: (n,) or (n, n_outputs) reals (regression), (n,) of 0/1 (binary),
        (n,) integer class indices (multiclass)
    W : (n_features, n_outputs) array of X's dtype
    b : (n_outputs,) array of X's dtype, or None for no intercept
    loss : a name in ``LOSSES``
    alpha, penalty, l1_ratio : the penalty (see the module docstring)
    sample_weight : (n,) non-negative weights, or None
    backend : "numpy", "numba", "numba-parallel", "cython", "cuda" or "auto"
    out : optional (dW, db) C-contiguous buffers to write into (db None when b is None)
    check_input : check X and y for NaN/inf (costs one extra pass over X)
    epsilon : the loss parameter of huber / epsilon_insensitive (default 0.1)
    method : "auto", "fused" (single-pass kernel) or "blas" (dense CPU backends)

    Returns
    -------
    (loss, dW, db): a Python float, and arrays of X's dtype (db is None when b is).
    """
    spec = _check_loss(loss)
    alpha, l1r = _penalty_ratio(penalty, alpha, l1_ratio)
    eps = spec.default_epsilon if epsilon is None else _real("epsilon", epsilon)
    if check_input is not False and check_input is not True \
            and not isinstance(check_input, np.bool_):
        raise TypeError(f"check_input must be a bool, got {check_input!r}")
    _backend.validate_name(backend)
    if method not in _METHODS:
        raise ValueError(f"method={method!r}: choose one of {list(_METHODS)}")
    # On the CPU kernels the NaN/inf check of X rides on the kernel's
    # own pass: a non-finite input makes the loss or the gradient non-finite
    # (IEEE: nan*w and inf*0 are NaN, and no kernel skips a stored entry or
    # a zero-weight row), so the kernel writes into a private buffer, and
    # only a non-finite result pays for the scans that name the argument
    # (before ``out`` is written).  A separate scan of X cost more than the
    # fused kernel itself (issue 13: 2.3-5.2 ms against 0.93 ms).
    probe = bool(check_input) and backend != "numpy" and backend != "cuda"
    kind, X = _check_X(X, check_input and not probe, indices=False)
    n, d = X.shape
    if n == 0:
        raise ValueError("X has 0 samples")
    dt = X.data.dtype if kind == "csr" else X.dtype
    W, b = _check_params(X, W, b, d, dt)
    k = W.shape[1]
    # the dense BLAS path checks X, W and b in its row pass (every score of
    # X W + b finite, or a scan names the argument: _cpu_compute)
    zcheck = probe and kind == "dense" and choose_method(kind, X, k, method) == "blas"
    if check_input and not zcheck:
        # W and b are scanned apart: n times smaller than X, and a NaN in a
        # column of W that no stored entry of a CSR X reaches would not
        # show in the result
        _check_params_finite(W, b)
    y = _check_y(spec, y, n, k, dt, check_input)
    sw = _check_sample_weight(sample_weight, n, dt)
    xs = (("X.data", X.data), ("X.indices", X.indices), ("X.indptr", X.indptr)) \
        if kind == "csr" else (("X", X),)
    dW, db = _check_out(out, W, b, xs + (("y", y), ("sample_weight", sw), ("b", b)))
    auto = backend == "auto"
    backend = _resolve_backend(backend, kind, X, k)
    indices_checked = not _csr_kernel_checks(spec, kind, backend, k)
    if kind == "csr" and indices_checked:
        _check_indices(X)
    # ---- validated: from here on the output buffers are written
    if dW is None:
        dW = np.empty_like(W)
        db = None if b is None else np.empty_like(b)
    if backend == "numpy":
        from optkern.kernels import loss_reference as ref
        value, rdW, rdb = ref.loss_and_grad(X, y if spec.target != "multiclass" else y,
                                            W, b, spec.name, alpha, l1r, sw, eps)
        dW[...] = rdW
        if db is not None:
            db[...] = rdb
        return float(value), dW, db
    if backend == "cuda":
        value = _cuda_compute(spec, kind, X, y, sw, W, b, alpha, l1r, eps, dW, db)
        return float(value), dW, db
    m = choose_method(kind, X, k, method)
    if not probe or zcheck:
        value = _cpu_compute(backend, spec, kind, X, y, sw, W, b, alpha, l1r, eps, dW, db,
                             m, auto, check=zcheck, indices_checked=indices_checked)
        return float(value), dW, db
    if out is None:
        pdW, pdb = dW, db           # our own arrays: nothing to protect
    else:
        pdW = _buffer("probe_dW", W.shape, dt)
        pdb = None if db is None else _buffer("probe_db", (k,), dt)
    value = _cpu_compute(backend, spec, kind, X, y, sw, W, b, alpha, l1r, eps, pdW, pdb, m,
                         auto, indices_checked=indices_checked)
    if not (math.isfinite(value) and _all_finite(pdW) and (pdb is None or _all_finite(pdb))):
        # name the argument, as the scan before the call did; finite inputs
        # that overflow return their non-finite result, as before
        _check_X(X, True)
    if pdW is not dW:
        np.copyto(dW, pdW)
        if db is not None:
            np.copyto(db, pdb)
    return float(value), dW, db


def _check_params_finite(W, b):
    if not (_all_finite(W) and (b is None or _all_finite(b))):
        raise ValueError("W or b contains NaN or infinity")


class CSRObjective:
    """``loss_and_grad`` on one CSR matrix, validated once, for full-batch
    solvers (the estimators' ``solver="lbfgs"``).

    ``obj(W, b, dW, db) -> loss`` is one call of the compiled CSR kernel: one
    pass over the nonzeros (scores, the loss rule, the gradient scatter), no
    scan of X for validation, no allocation.  ``T`` is in kernel form: (n, k)
    float targets for per-output losses (k binary one-vs-rest columns in one
    pass), (n,) int64 class indices for multiclass ones.  The parallel kernel
    (from CSR_PARALLEL_NNZ_PER_FEATURE nonzeros per feature and thread) keeps
    a (d, k) partial per thread, added once at the end of the call.
    """

    def __init__(self, X, T, sw, W, loss, alpha, l1_ratio, epsilon, backend="auto"):
        spec = _check_loss(loss)
        kind, X = _check_X(X, True)
        if kind != "csr":
            raise TypeError("CSRObjective takes a CSR matrix")
        self.X, self.T, self.sw = X, T, sw
        self.alpha, self.l1_ratio = float(alpha), float(l1_ratio)
        self.eps = spec.default_epsilon if epsilon is None else float(epsilon)
        d, k = W.shape
        auto = backend == "auto"
        backend = _resolve_backend(backend, kind, X, k)
        if backend not in ("numba", "numba-parallel"):
            backend = "numba"
        self.mod = _kernels("loss_drivers").module_for(spec.name)
        self.parallel = backend == "numba-parallel"
        self.chunks = _n_chunks(X.shape[0]) if self.parallel else 1
        self.scratch = _aligned_empty(max(_scratch_size(self.chunks, d, k), 1), W.dtype)
        self.name = spec.name
        # the Cython twin serves while the Numba kernel compiles (optkern._jit);
        # decided on the first call and kept for the whole solve
        self.twin = None if auto else False

    def __call__(self, W, b, dW, db):
        X = self.X
        if self.twin is None:
            fn = self.mod.csr_parallel if self.parallel else self.mod.csr_serial
            args = (X.data, X.indices, X.indptr, self.T, self.sw, W, b, self.alpha,
                    self.l1_ratio, self.eps, dW, db, self.scratch) + \
                ((self.chunks,) if self.parallel else ())
            key = ("csr_objective", self.name, self.parallel, X.data.dtype.char,
                   X.indices.dtype.char, self.T.dtype.char, self.sw is None, b is None)
            self.twin = _backend.cython_module("losses") is not None and \
                not _jit.ready(key, fn, args)
        if self.twin:
            cy = _backend.cython_module("losses")
            return cy.csr_loss_grad(self.name, X.data, X.indices, X.indptr, self.T, self.sw,
                                    W, b, self.alpha, self.l1_ratio, self.eps, dW, db,
                                    self.scratch, 1)
        if self.parallel:
            return self.mod.csr_parallel(X.data, X.indices, X.indptr, self.T, self.sw, W, b,
                                         self.alpha, self.l1_ratio, self.eps, dW, db,
                                         self.scratch, self.chunks)
        return self.mod.csr_serial(X.data, X.indices, X.indptr, self.T, self.sw, W, b,
                                   self.alpha, self.l1_ratio, self.eps, dW, db, self.scratch)


def predict_scores(X, W, b=None, backend="auto", out=None, check_input=True):
    """Decision values X W + b, shape (n_samples, n_outputs), X's dtype."""
    if not isinstance(check_input, (bool, np.bool_)):
        raise TypeError(f"check_input must be a bool, got {check_input!r}")
    _backend.validate_name(backend)
    kind, X = _check_X(X, check_input)
    n, d = X.shape
    W, b = _check_params(X, W, b, d)
    k = W.shape[1]
    if out is not None:
        if not isinstance(out, np.ndarray) or out.dtype != W.dtype or out.shape != (n, k):
            raise ValueError(f"out must be a {W.dtype} array of shape ({n}, {k})")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be C-contiguous and writeable")
    auto = backend == "auto"
    backend = _resolve_backend(backend, kind, X, k, passes=1)
    if out is None:
        out = np.empty((n, k), W.dtype)
    if n == 0:
        return out
    if auto and backend in ("numba", "numba-parallel") and \
            _backend.cython_module("losses") is not None:
        backend = _predict_server(backend, kind, X, W, b, out)
    if backend == "numpy" or backend == "cuda":
        # CUDA: scores are one BLAS-shaped product; the host computes them
        from optkern.kernels import loss_reference as ref
        out[...] = ref.scores(X, W, b)
        return out
    from optkern.kernels import loss_drivers as drv
    if backend == "cython":
        cy = _backend.cython_module("losses")
        if kind == "csr":
            cy.predict_csr(X.data, X.indices, X.indptr, W, b, out)
        else:
            if not X.flags.c_contiguous or choose_method(kind, X, k) == "blas":
                np.matmul(X, W, out=out)
                if b is not None:
                    out += b
            else:
                cy.predict_dense(X, W, b, out)
        return out
    parallel = backend == "numba-parallel"
    if kind == "csr":
        (drv.predict_csr_parallel if parallel else drv.predict_csr)(
            X.data, X.indices, X.indptr, W, b, out)
        return out
    if choose_method(kind, X, k) == "blas":
        np.matmul(X, W, out=out)
        if b is not None:
            out += b
        return out
    WT = _buffer("WT", (k, d), W.dtype)
    (drv.predict_dense_parallel if parallel else drv.predict_dense)(X, W, b, out, WT)
    return out


def _predict_server(backend, kind, X, W, b, out):
    """backend="auto": "cython" while the Numba predict kernel is not compiled."""
    from optkern.kernels import loss_drivers as drv
    parallel = backend == "numba-parallel"
    k = W.shape[1]
    if kind == "csr":
        fn = drv.predict_csr_parallel if parallel else drv.predict_csr
        args = (X.data, X.indices, X.indptr, W, b, out)
        xs = X.data
    elif choose_method(kind, X, k) == "blas":
        return backend           # BLAS, nothing to compile
    else:
        fn = drv.predict_dense_parallel if parallel else drv.predict_dense
        args = (X, W, b, out, _buffer("WT", (k, X.shape[1]), W.dtype))
        xs = X
    key = ("predict", kind, parallel, xs.dtype.char, xs.flags.writeable,
           X.indices.dtype.char if kind == "csr" else X.flags.c_contiguous,
           b is None, W.flags.writeable)
    return backend if _jit.ready(key, fn, args) else "cython"


def check_grad(X, y, W, b, loss="softmax", alpha=0.0, penalty="l2", l1_ratio=0.15,
               sample_weight=None, backend="numpy", epsilon=None, h=1e-6):
    """Max relative error between the analytic gradient and central differences.

    The analytic gradient comes from ``loss_and_grad(..., backend=backend)`` in
    float64; the numerical one perturbs every entry of W and b by +-h and
    evaluates the objective with the NumPy reference.  The error of an entry
    is |a - n| / max(|a|, |n|, 1e-8); the maximum over W and b is returned.
    A correct gradient gives ~1e-7 or less for the smooth losses; the
    non-smooth ones agree as long as no score sits within h of a kink.
    """
    if sp.issparse(X):
        X = X.astype(np.float64)
    else:
        X = np.asarray(X, dtype=np.float64)
    W = np.array(W, dtype=np.float64)
    b = None if b is None else np.array(b, dtype=np.float64)
    kw = dict(loss=loss, alpha=alpha, penalty=penalty, l1_ratio=l1_ratio,
              sample_weight=sample_weight, epsilon=epsilon)
    _, dW, db = loss_and_grad(X, y, W, b, backend=backend, **kw)
    analytic = [dW.ravel()] + ([] if b is None else [db.ravel()])
    numeric = []
    for p in [W] + ([] if b is None else [b]):
        flat = p.reshape(-1)
        g = np.empty(flat.size)
        for e in range(flat.size):
            old = flat[e]
            flat[e] = old + h
            fp = loss_and_grad(X, y, W, b, backend="numpy", **kw)[0]
            flat[e] = old - h
            fm = loss_and_grad(X, y, W, b, backend="numpy", **kw)[0]
            flat[e] = old
            g[e] = (fp - fm) / (2 * h)
        numeric.append(g)
    a = np.concatenate(analytic)
    num = np.concatenate(numeric)
    denom = np.maximum(np.maximum(np.abs(a), np.abs(num)), 1e-8)
    return float(np.max(np.abs(a - num) / denom))
