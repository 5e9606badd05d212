"""Optimizer classes: torch.optim's names, arguments, defaults and algorithms.

An optimizer validates its inputs once, owns its state arrays, picks a kernel
and calls it: one compiled call per step updates every tensor of a parameter
group ("multi-tensor" step).  The update formulas live in
``optkern.kernels.rules`` (compiled targets) and ``optkern.kernels.reference``
(the NumPy oracle); nothing here loops over elements.

Guarantees:

* Bad input (shapes, dtypes, read-only or non-contiguous params, out-of-range
  hyperparameters, unknown backend) raises ValueError/TypeError naming the
  argument, before any array is touched.
* With ``check_finite=True`` (default) a gradient containing NaN/inf raises
  FloatingPointError and leaves parameters and state unchanged.
* Hyperparameters may be changed between steps through ``param_groups`` (as in
  torch) or the ``lr`` property; they are re-validated at the next step.
* ``state_dict()``/``load_state_dict()`` round-trip exactly (step counts, noise
  seed, Polyak averages), so a resumed run follows the identical trajectory.
"""

import inspect
import math
import numbers
from collections.abc import Mapping

import numpy as np

from optkern import _backend, _jit
from optkern.kernels import _helpers, drivers, reference
from optkern.kernels.rules import REQUIRED, RULES, allocated_states, state_names

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam",
           "AdamW", "Adamax", "NAdam", "RAdam", "SGLD", "FTRL", "OPTIMIZERS",
           "OPTIMIZER_NAMES", "optimizer_class"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_list(params):
    if isinstance(params, (list, tuple)):
        return list(params)
    return [params]


def _flat_view(a, argname):
    """A 1-D view of a contiguous array in its memory order (never a copy)."""
    if a.flags.c_contiguous:
        return a.reshape(-1), "C"
    if a.flags.f_contiguous:
        return a.reshape(-1, order="F"), "F"
    raise ValueError(
        f"{argname} is not contiguous (strides {a.strides}); optkern updates "
        "parameters in place and never copies them silently: pass a C- or "
        "F-contiguous array (e.g. np.ascontiguousarray) that you keep")


class _Group:
    """Per param-group bookkeeping that is not part of torch's group dict."""

    __slots__ = ("arrays", "flat", "orders", "states", "state_list", "avg", "offsets",
                 "step", "avg_count", "scalars", "validated", "user", "device", "size",
                 "dtype", "shapes", "kernel", "finite_ready", "checked_kernel")


class _ServedStep:
    """A group's step for backend="auto" on a Numba kernel: its Cython twin
    (the same rule, checked equal in tests/test_jit.py) serves the steps
    until ``optkern._jit`` reports the Numba kernel compiled, then Numba."""

    __slots__ = ("numba_fn", "cython_fn", "name", "parallel", "group", "ready")

    def __init__(self, numba_fn, cython_fn, name, parallel, group):
        self.numba_fn, self.cython_fn = numba_fn, cython_fn
        self.name, self.parallel, self.group = name, parallel, group
        self.ready = {}

    def __call__(self, *args):
        # the signature varies only with averaging (avg None or not) and noise
        # (key None or not); the rest is fixed for the group
        variant = (args[-5] is None, args[-2] is None)
        if variant in self.ready:
            return self.numba_fn(*args)
        g = self.group
        key = ("step", self.name, self.parallel, g.dtype.char, len(g.flat),
               tuple(s is None for s in g.state_list), variant,
               all(a.flags.writeable for a in args[1]))
        if _jit.ready(key, self.numba_fn, args):
            self.ready[variant] = True
            return self.numba_fn(*args)
        return self.cython_fn(*args)


def _host_view(a):
    """The NumPy array behind ``a``: itself, or the one numba's CUDA simulator keeps."""
    if isinstance(a, np.ndarray):
        return a
    ary = getattr(a, "_ary", None)
    return ary if isinstance(ary, np.ndarray) else None


def _device_layout(a):
    """(pointer, shape, byte strides, dtype) of a CUDA array, from its
    __cuda_array_interface__, or None for anything else."""
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is None:
        return None
    ptr, shape = int(iface["data"][0]), tuple(int(n) for n in iface["shape"])
    dtype = np.dtype(iface["typestr"])
    strides = iface.get("strides")
    if strides is None:
        strides, acc = [], dtype.itemsize
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= n
    return ptr, shape, tuple(int(s) for s in strides), dtype


def _device_bounds(layout):
    """[lo, hi) byte addresses a device array's elements occupy."""
    ptr, shape, strides, dtype = layout
    if any(n == 0 for n in shape):
        return ptr, ptr
    lo = ptr + sum(min(0, (n - 1) * st) for n, st in zip(shape, strides))
    hi = ptr + sum(max(0, (n - 1) * st) for n, st in zip(shape, strides)) + dtype.itemsize
    return lo, hi


def _device_overlap(la, lb):
    """Whether two device arrays share memory, exactly: bounds first, then
    NumPy's exact test on host views with the same offsets and strides into
    one anonymous mapping spanning both (address space only: its pages are
    never touched, so nothing is allocated), which tells interleaved views
    such as d[::2] and d[1::2] apart."""
    (alo, ahi), (blo, bhi) = _device_bounds(la), _device_bounds(lb)
    if not (alo < bhi and blo < ahi):
        return False
    lo, hi = min(alo, blo), max(ahi, bhi)
    try:
        import mmap

        span = mmap.mmap(-1, hi - lo)
        views = [np.ndarray(shape, dtype, buffer=span, offset=ptr - lo, strides=strides)
                 for ptr, shape, strides, dtype in (la, lb)]
    except (OSError, ValueError, OverflowError):
        return True     # cannot tell: overlapping bounds count as overlap
    return _shares_memory(*views)


def _shares_memory(a, b):
    """NumPy's exact test; too hard to decide counts as overlap."""
    try:
        return bool(np.shares_memory(a, b, max_work=10 ** 6))
    except getattr(np, "exceptions", np).TooHardError:
        return True


def arrays_overlap(a, b):
    """Whether two arrays (host, or CUDA device arrays) share memory.  Bounds
    first; NumPy's exact test only when the bounds overlap (and two different
    arrays that each own their data are two allocations: no test at all)."""
    if a is b:
        return True
    ha, hb = _host_view(a), _host_view(b)
    if ha is not None and hb is not None:
        if ha is not hb and ha.flags.owndata and hb.flags.owndata:
            return False
        return np.may_share_memory(ha, hb) and _shares_memory(ha, hb)
    la, lb = _device_layout(a), _device_layout(b)
    if la is None or lb is None:
        return False
    return _device_overlap(la, lb)


class Optimizer:
    """Base class.  A subclass sets ``_rule`` (a key of ``optkern.kernels.RULES``);
    a subclass named like one of that rule's ``classes`` gets its signature,
    defaults and validation from the registry entry (``__init_subclass__``)."""

    _rule = None
    _noisy = False
    _fixed_options = {}
    _option_names = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        spec = RULES.get(cls._rule)
        decl = None if spec is None else next(
            (c for c in spec.classes if c.name == cls.__name__), None)
        if decl is not None and "__init__" not in cls.__dict__:
            _install_api(cls, spec, decl)

    def __init__(self, params, defaults, *, backend="auto", check_finite=True,
                 average=False, seed=None):
        _backend.validate_name(backend)
        if not isinstance(check_finite, (bool, np.bool_)):
            raise TypeError(f"check_finite must be a bool, got {check_finite!r}")
        if isinstance(average, (bool, np.bool_)):
            average_start = 0 if average else None
        elif isinstance(average, numbers.Integral) and average >= 0:
            average_start = int(average)
        else:
            raise ValueError(
                "average must be False, True, or a non-negative int (the number "
                f"of steps after which averaging starts); got {average!r}")
        self._spec = RULES[self._rule]
        self.defaults = dict(defaults)
        self._validate_hyper(self.defaults, "defaults")
        self.check_finite = bool(check_finite)
        self.average_start = average_start
        if seed is None:
            # fresh entropy only where there is noise to draw; elsewhere a fixed
            # seed keeps state dicts of identical runs identical
            seed = int(np.random.SeedSequence().entropy % (1 << 63)) if self._noisy else 0
        elif not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.seed = int(seed)
        self.backend_requested = backend
        self.param_groups = []
        self._groups = []
        self._next_offset = 0
        self.backend = None
        for group in self._normalise_groups(params):
            self.add_param_group(group)

    # ------------------------------------------------------------------ setup
    def _normalise_groups(self, params):
        if isinstance(params, dict):
            params = [params]
        items = _as_list(params)
        if not items:
            raise ValueError("params is empty: give at least one array")
        if all(isinstance(x, dict) for x in items):
            return items
        if any(isinstance(x, dict) for x in items):
            raise TypeError("params must be arrays or dicts of param groups, not a mix")
        return [{"params": items}]

    def add_param_group(self, param_group):
        """Add a group (a dict with "params" and optional hyperparameters)."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError("param_group must be a dict with a 'params' entry")
        gi = len(self.param_groups)
        group = dict(self.defaults)
        group.update({k: v for k, v in param_group.items() if k != "params"})
        unknown = set(group) - set(self.defaults)
        if unknown:
            raise ValueError(f"param_groups[{gi}] has unknown options {sorted(unknown)}; "
                             f"{type(self).__name__} takes {sorted(self.defaults)}")
        self._validate_hyper(group, f"param_groups[{gi}]")
        arrays = _as_list(param_group["params"])
        if not arrays:
            raise ValueError(f"param_groups[{gi}]['params'] is empty")
        device = [_backend.is_cuda_array(a) for a in arrays]
        if any(device) and not all(device):
            raise TypeError(f"param_groups[{gi}]: mix of host and device arrays")
        g = _Group()
        g.finite_ready = False
        g.checked_kernel = None
        g.device = all(device)
        seen = {id(a) for grp in self._groups for a in grp.arrays}
        if g.device:
            self._check_device_params(arrays, gi)
        else:
            self._check_host_params(arrays, gi, seen)
        self._check_params_disjoint(arrays, gi)
        g.dtype = np.dtype(arrays[0].dtype)
        g.arrays = arrays
        g.size = int(sum(int(np.prod(a.shape)) for a in arrays))
        backend = self._resolve_backend(g)
        if self.backend is not None and backend != self.backend:
            raise ValueError(f"param_groups[{gi}] would need backend {backend!r} but "
                             f"the optimizer runs on {self.backend!r}")
        self.backend = backend
        if g.device or backend == "cuda":
            self._setup_cuda_group(g)
        else:
            flats = [_flat_view(a, f"params[{i}]") for i, a in enumerate(arrays)]
            g.flat = tuple(f for f, _ in flats)
            g.orders = tuple(o for _, o in flats)
        g.step = 0
        g.avg_count = 0
        g.scalars = tuple(v for _, v in self._spec.scalar_states)
        g.states = self._allocate_states(g, group)
        g.avg = None
        if self.average_start is not None:
            g.avg = tuple(self._copy_like(f) for f in g.flat)
        sizes = np.array([int(np.prod(a.shape)) for a in arrays], dtype=np.int64)
        g.offsets = self._next_offset + np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        self._next_offset += int(sizes.sum())
        g.state_list = [g.states[name] for name in state_names(self._spec)]
        g.shapes = tuple(a.shape for a in arrays)
        g.validated = self._hyper_tuple(group)
        g.user = tuple(float(v) for v in g.validated)
        g.kernel = self._kernel_for(g)
        group["params"] = arrays
        self.param_groups.append(group)
        self._groups.append(g)
        self._n_params = sum(len(x.arrays) for x in self._groups)

    def _kernel_for(self, g, checked=False):
        """The compiled multi-tensor step for this group (None: numpy/cuda paths).

        ``checked``: the default-step kernel, which scans every gradient for
        NaN/inf in the same compiled call before it updates anything and
        returns the index of the first bad tensor (else -1)."""
        backend = self.backend
        if backend in ("numba", "numba-parallel"):
            mod = drivers.module_for(self._spec.name)
            if checked:
                fn = mod.parallel_checked if backend == "numba-parallel" \
                    else mod.serial_checked
            else:
                fn = mod.parallel if backend == "numba-parallel" else mod.serial
            if self.backend_requested == "auto" and self._has_cython_twin():
                # the Cython twin serves the steps until the Numba kernel is
                # compiled (optkern._jit): no compile stall on a first step
                return _ServedStep(fn, self._cython_step(g, checked),
                                   self._spec.name + ("+checked" if checked else ""),
                                   backend == "numba-parallel", g)
            return fn
        if backend == "cython":
            return self._cython_step(g, checked)
        return None

    def _cython_step(self, g, checked=False):
        fn = getattr(_backend.cython_module(), self._spec.name)
        parallel = g.size >= _backend.PARALLEL_MIN_SIZE

        def cython_step(*args):
            return fn(*args, parallel, checked)
        return cython_step

    def _check_host_params(self, arrays, gi, seen):
        dtype = None
        for i, a in enumerate(arrays):
            name = f"params[{i}]" if gi == 0 else f"param_groups[{gi}]['params'][{i}]"
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name} must be a NumPy array (or a CUDA device array), "
                                f"got {type(a).__name__}")
            if a.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"{name} has dtype {a.dtype}; optimizers update float32 "
                                "or float64 arrays")
            if dtype is None:
                dtype = a.dtype
            elif a.dtype != dtype:
                raise TypeError(f"{name} has dtype {a.dtype} but params[0] has {dtype}; "
                                "put arrays of different dtypes in separate optimizers")
            if not a.flags.writeable:
                raise ValueError(f"{name} is read-only; the optimizer updates it in place")
            if a.size == 0:
                raise ValueError(f"{name} is empty")
            if id(a) in seen:
                raise ValueError(f"{name} appears in more than one parameter group")
            seen.add(id(a))
            _flat_view(a, name)
        if len({id(a) for a in arrays}) != len(arrays):
            raise ValueError(f"param_groups[{gi}] lists the same array twice")

    def _param_names(self):
        for gi, grp in enumerate(self._groups):
            for i, a in enumerate(grp.arrays):
                yield (f"params[{i}]" if gi == 0 else
                       f"param_groups[{gi}]['params'][{i}]"), a

    def _check_params_disjoint(self, arrays, gi):
        """Overlapping views as two parameters would be updated twice: refused."""
        def name(i):
            return f"params[{i}]" if gi == 0 else f"param_groups[{gi}]['params'][{i}]"
        earlier = list(self._param_names())
        for i, a in enumerate(arrays):
            for other, b in earlier + [(name(j), arrays[j]) for j in range(i)]:
                if a is not b and arrays_overlap(a, b):
                    raise ValueError(f"{name(i)} shares memory with {other} (overlapping "
                                     "views); every parameter must be separate memory")

    def _check_grad_disjoint(self, gr, pos):
        """A gradient that overlaps a parameter changes while it is read."""
        for other, p in self._param_names():
            if arrays_overlap(gr, p):
                raise ValueError(f"grads[{pos}] shares memory with {other}; pass a gradient "
                                 "in its own memory (the parameters are updated in place)")

    def _check_device_params(self, arrays, gi):
        dtypes = {np.dtype(a.dtype) for a in arrays}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _FLOAT_DTYPES:
            raise TypeError(f"param_groups[{gi}]: device params must all be float32 "
                            f"or all float64, got {sorted(map(str, dtypes))}")

    def _has_cython_twin(self):
        """Whether the ahead-of-time Cython kernels hold this rule (not for a
        rule registered at run time: they are compiled when optkern is built)."""
        mod = _backend.cython_module()
        return mod is not None and callable(getattr(mod, self._spec.name, None))

    def _resolve_backend(self, g):
        requested = self.backend_requested
        if requested == "auto":
            choice = _backend.choose_auto(g.size, on_device=g.device)
            if choice == "cython" and not self._has_cython_twin():
                choice = "numba"    # a rule registered at run time: no Cython twin
            return choice
        _backend.require(requested)
        if requested == "cython" and not self._has_cython_twin():
            raise ValueError(
                f"backend='cython' cannot run rule {self._spec.name!r}: the ahead-of-time "
                "Cython kernels are compiled when optkern is built, from the rules in "
                "kernels/rules.py then; a rule registered at run time runs on 'numpy', "
                "'numba', 'numba-parallel' and 'cuda' ('auto' chooses among them)")
        if g.device and requested != "cuda":
            raise ValueError(f"backend={requested!r} cannot update device arrays; "
                             "use backend='cuda' or 'auto'")
        return requested

    def _copy_like(self, flat):
        if self.backend == "cuda":
            from numba import cuda
            return cuda.to_device(np.array(flat.copy_to_host() if hasattr(flat, "copy_to_host") else flat))
        return flat.copy()

    def _allocate_states(self, g, group):
        user = dict(zip(self._spec.user_hyper, self._hyper_tuple(group)))
        present = allocated_states(self._spec, user)
        init = self._state_init(group)
        states = {}
        for name in state_names(self._spec):
            if name not in present:
                states[name] = None
                continue
            value = init.get(name, 0.0)
            if self.backend == "cuda":
                from numba import cuda
                states[name] = tuple(cuda.to_device(np.full(f.shape[0], value, g.dtype))
                                     for f in g.flat)
            else:
                states[name] = tuple(np.full(f.shape[0], value, g.dtype) for f in g.flat)
        return states

    def _state_init(self, group):
        """Initial values of the states an option initialises (Adagrad's
        initial_accumulator_value), by the registry entry's ``init_state``."""
        return {o.init_state: group[o.name] for o in self._spec.options if o.init_state}

    # --------------------------------------------------------- hyperparameters
    def _hyper_tuple(self, group):
        """The rule's user hyperparameters, in ``spec.user_hyper`` order
        (each fed by the option the registry entry names in ``into``)."""
        return _hyper_getter(self._spec)(group)

    def _validate_hyper(self, group, where):
        """Each option's own constraint (registry ``options``), then the
        constraints between options (``requires``)."""
        spec = self._spec
        for o in spec.options:
            if o.kind == "flag":
                self._check_flag(group, o.name, where)
            elif o.kind == "unit_pair":
                self._check_pair(group, o, where)
            else:
                self._check_number(group, o.name, where, lo=o.lo, lo_open=o.lo_open,
                                   hi=o.hi, hi_open=o.hi_open)
        for r in spec.requires:
            if not r.holds(group):
                raise ValueError(f"{where}: {r.message}")

    @staticmethod
    def _check_number(group, key, where, lo=None, lo_open=False, hi=None, hi_open=False):
        value = group[key]
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where}: {key} must be a real number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where}: {key} must be finite, got {value!r}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise ValueError(f"{where}: {key} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
        if hi is not None and (value >= hi if hi_open else value > hi):
            raise ValueError(f"{where}: {key} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
        return value

    @staticmethod
    def _check_flag(group, key, where):
        value = group[key]
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{where}: {key} must be a bool, got {value!r}")
        return bool(value)

    @staticmethod
    def _check_pair(group, option, where):
        key = option.name
        pair = group[key]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{where}: {key} must be a pair ({', '.join(option.into)}), "
                            f"got {pair!r}")
        for j, b in enumerate(pair):
            if isinstance(b, bool) or not isinstance(b, numbers.Real) or not 0.0 <= b < 1.0:
                raise ValueError(f"{where}: {key}[{j}] must be in [0, 1), got {b!r}")

    @property
    def lr(self):
        """The learning rate of the first parameter group (schedules set it)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        for group in self.param_groups:
            group["lr"] = value

    # -------------------------------------------------------------------- step
    def _grads_for(self, grads):
        """Split ``grads`` like the params and validate; no side effects."""
        items = (grads,) if isinstance(grads, np.ndarray) or _backend.is_cuda_array(grads) \
            else grads
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"grads must be an array or a list of arrays, got "
                            f"{type(grads).__name__}")
        if len(items) != self._n_params:
            raise ValueError(f"grads has {len(items)} arrays but the optimizer has "
                             f"{self._n_params} parameters")
        flat_grads = []
        pos = 0
        for g in self._groups:
            out = []
            device = g.device or self.backend == "cuda"
            for i, shape in enumerate(g.shapes):
                gr = items[pos]
                self._check_grad_disjoint(gr, pos)
                if device:
                    out.append(self._cuda_grad(g, i, gr, f"grads[{pos}]"))
                elif not isinstance(gr, np.ndarray):
                    raise TypeError(f"grads[{pos}] must be a NumPy array, got "
                                    f"{type(gr).__name__}")
                elif gr.shape != shape:
                    raise ValueError(f"grads[{pos}] has shape {gr.shape} but params[{pos}] "
                                     f"has shape {shape}")
                elif gr.dtype != g.dtype:
                    raise TypeError(f"grads[{pos}] has dtype {gr.dtype} but params[{pos}] "
                                    f"has dtype {g.dtype}")
                elif g.orders[i] == "C":
                    out.append(gr.reshape(-1) if gr.flags.c_contiguous else gr.ravel())
                else:
                    out.append(gr.reshape(-1, order="F") if gr.flags.f_contiguous
                               else gr.ravel(order="F"))
                pos += 1
            flat_grads.append(tuple(out))
        return flat_grads

    def _prepared_hyper(self, gi, g):
        group = self.param_groups[gi]
        current = self._hyper_tuple(group)
        if current != g.validated:
            self._validate_hyper(group, f"param_groups[{gi}]")
            user = dict(zip(self._spec.user_hyper, current))
            want = set(allocated_states(self._spec, user))
            have = {k for k, v in g.states.items() if v is not None}
            if not want <= have:
                raise ValueError(
                    f"param_groups[{gi}]: the new options need state {sorted(want - have)} "
                    "that was not allocated at construction; create a new optimizer")
            g.validated = current
            g.user = tuple(float(v) for v in current)
        return g.user

    def step(self, grads, rows=None, sparse_updates="auto"):
        """Update every parameter in place from ``grads`` (same order and shapes).

        ``rows`` (a sparse step): one entry per parameter, None for a dense
        update of that parameter or a 1-D array of distinct row indices of a
        C-contiguous 2-D (or 1-D) parameter whose gradient is then the
        ``(len(rows), n_columns)`` array of those rows (a single parameter may
        take the array itself).  ``sparse_updates``: "lazy" updates the given
        rows only (untouched rows keep weights and state, as torch's
        SparseAdam); "exact" also requires that a zero-gradient step change
        nothing (FTRL; plain SGD, Adagrad without weight decay or noise), where
        lazy is exact; "dense" applies the dense step with zero gradients
        outside ``rows`` (the reference, O(size)); "auto" is exact where it
        holds, else lazy.  With Polyak averaging the average of every row is
        updated (O(size)).

        Returns None.  Raises before touching anything when the gradients or
        the (possibly changed) hyperparameters are invalid.
        """
        if rows is not None:
            return self._sparse_step(grads, rows, sparse_updates)
        flat_grads = self._grads_for(grads)
        hypers = [self._prepared_hyper(gi, g) for gi, g in enumerate(self._groups)]
        if self.check_finite:
            g = self._groups[0]
            if len(self._groups) == 1 and g.kernel is not None:
                # the fused default step: the kernel scans the gradients and
                # updates only if all are finite, in one compiled call
                if g.checked_kernel is None:
                    g.checked_kernel = self._kernel_for(g, checked=True)
                self._step_group(g, flat_grads[0], hypers[0], g.checked_kernel)
                return
            self._check_finite(flat_grads)
        for g, fg, user in zip(self._groups, flat_grads, hypers):
            self._step_group(g, fg, user)

    # ------------------------------------------------------------ sparse step
    def _zero_step_is_identity(self, user):
        """Whether a zero gradient leaves parameter and state unchanged (the
        registry entry's ``zero_grad_identity``)."""
        holds = self._spec.zero_grad_identity
        return bool(holds is not None and holds(dict(zip(self._spec.user_hyper, user))))

    def _sparse_args(self, grads, rows):
        """[(group, index in group, flat param, rows or None, grad)] validated."""
        items = (grads,) if isinstance(grads, np.ndarray) or _backend.is_cuda_array(grads) \
            else grads
        if not isinstance(items, (list, tuple)) or len(items) != self._n_params:
            raise ValueError(f"grads must hold {self._n_params} arrays (one per parameter)")
        if isinstance(rows, np.ndarray) or (isinstance(rows, (list, tuple)) and
                                            self._n_params == 1 and len(rows) and
                                            not isinstance(rows[0], (np.ndarray, type(None)))):
            rows = [rows]
        if not isinstance(rows, (list, tuple)) or len(rows) != self._n_params:
            raise ValueError(f"rows must hold {self._n_params} entries (one per parameter, "
                             "None for a dense update)")
        out = []
        pos = 0
        for g in self._groups:
            for i, a in enumerate(g.arrays):
                r, gr = rows[pos], items[pos]
                name = f"rows[{pos}]"
                self._check_grad_disjoint(gr, pos)
                if r is None:
                    out.append((g, i, None, gr, pos))
                    pos += 1
                    continue
                if g.device:
                    raise ValueError(f"{name}: a sparse step on device parameters takes "
                                     "host rows and gradients of a host parameter; use "
                                     "backend='cuda' with host arrays")
                if a.ndim not in (1, 2) or not a.flags.c_contiguous:
                    raise ValueError(f"{name}: a sparse step needs a C-contiguous 1-D or 2-D "
                                     f"parameter, params[{pos}] has shape {a.shape}")
                r = np.asarray(r)
                if r.ndim != 1 or r.dtype.kind not in "iu":
                    raise TypeError(f"{name} must be a 1-D integer array of row indices")
                r = r.astype(np.int64, copy=False)
                d = a.shape[0]
                k = 1 if a.ndim == 1 else a.shape[1]
                if r.size and (r.min() < 0 or r.max() >= d):
                    raise ValueError(f"{name} holds indices outside [0, {d})")
                if np.unique(r).size != r.size:
                    raise ValueError(f"{name} repeats a row: add the gradients of a row "
                                     "into one")
                if not isinstance(gr, np.ndarray):
                    raise TypeError(f"grads[{pos}] must be a NumPy array")
                if gr.dtype != g.dtype:
                    raise TypeError(f"grads[{pos}] has dtype {gr.dtype} but params[{pos}] "
                                    f"has dtype {g.dtype}")
                if gr.size != r.size * k or (gr.ndim == 2 and gr.shape != (r.size, k)):
                    raise ValueError(f"grads[{pos}] must have shape ({r.size}, {k}) (the "
                                     f"rows' gradients), got {gr.shape}")
                out.append((g, i, r, np.ascontiguousarray(gr).reshape(r.size, k), pos))
                pos += 1
        return out

    def _sparse_step(self, grads, rows, mode):
        if mode not in ("auto", "lazy", "exact", "dense"):
            raise ValueError(f"sparse_updates={mode!r}: choose one of 'auto', 'lazy', "
                             "'exact', 'dense'")
        args = self._sparse_args(grads, rows)
        hypers = [self._prepared_hyper(gi, g) for gi, g in enumerate(self._groups)]
        if mode in ("exact", "auto"):
            ident = all(self._zero_step_is_identity(u) for u in hypers)
            if mode == "exact" and not ident:
                raise ValueError(
                    f"sparse_updates='exact': a zero-gradient {type(self).__name__} step "
                    "with these options changes the untouched rows (momentum, weight "
                    "decay, noise or moments): the estimators' compiled epochs catch them "
                    "up in closed form; here use 'lazy' or 'dense'")
        if mode == "dense":
            dense = []
            for g, i, r, gr, pos in args:
                if r is None:
                    dense.append(gr)
                else:
                    full = np.zeros(g.arrays[i].shape, g.dtype)
                    full.reshape(full.shape[0], -1)[r] = gr
                    dense.append(full)
            return self.step(dense)
        if self.check_finite:
            from optkern.kernels import finite
            for g, i, r, gr, pos in args:
                arr = gr if isinstance(gr, np.ndarray) else None
                if arr is not None and finite.first_nonfinite(
                        (np.ascontiguousarray(arr).reshape(-1),)) >= 0:
                    raise FloatingPointError(
                        f"grads[{pos}] contains NaN or inf; parameters and optimizer state "
                        "are unchanged (pass check_finite=False to skip this check)")
        for gi, (g, user) in enumerate(zip(self._groups, hypers)):
            self._sparse_step_group(g, [a for a in args if a[0] is g], user)

    def _sparse_step_group(self, g, args, user):
        from optkern.kernels import sparse_drivers
        spec = self._spec
        step = g.step + 1
        averaging = self.average_start is not None and step > self.average_start
        avg_weight = 1.0 / (g.avg_count + 1) if averaging else 0.0
        key = _helpers.step_key(self.seed, step) if (self._noisy and self._noise_on(user)) \
            else None
        hyper, new_scalars = spec.prepare(step, g.scalars, *user)
        for _, i, r, gr, _pos in args:
            flat = g.flat[i]
            states = [None if s is None else s[i] for s in g.state_list]
            off = int(g.offsets[i])
            if r is None:
                self._dense_tensor_step(g, i, gr, step, hyper, key, averaging, avg_weight)
                continue
            k = gr.shape[1]
            if self.backend == "numpy":
                self._reference_rows(g, i, r, gr, step, key)
            elif self.backend == "cuda":
                self._cuda_rows(g, i, r, gr, hyper, key)
            else:
                sparse_drivers.module_for(spec.name).rows_serial(
                    flat, gr, r, k, *states, None, hyper, 0.0, key, off)
            if averaging:
                avg = g.avg[i]
                if hasattr(avg, "copy_to_host"):
                    host = avg.copy_to_host()
                    p = flat.copy_to_host() if hasattr(flat, "copy_to_host") else flat
                    host += avg_weight * (p - host)
                    avg.copy_to_device(host)
                else:
                    avg += g.dtype.type(avg_weight) * (flat - avg)
        g.scalars = new_scalars
        g.step = step
        if averaging:
            g.avg_count += 1

    def _dense_tensor_step(self, g, i, gr, step, hyper, key, averaging, avg_weight):
        """One tensor of a group, densely, inside a sparse step."""
        flat_g = np.ravel(gr, order=g.orders[i]) if isinstance(gr, np.ndarray) else gr
        avg = (g.avg[i],) if averaging else None
        if g.kernel is not None:
            g.kernel((g.flat[i],), (flat_g,), *[None if s is None else (s[i],)
                                                for s in g.state_list],
                     avg, hyper, avg_weight, key, g.offsets[i:i + 1])
        elif self.backend == "numpy":
            states = {k: [v[i]] for k, v in g.states.items() if v is not None}
            reference.step(self._spec.name, [g.flat[i]], [flat_g], states,
                           None if avg is None else list(avg), avg_weight,
                           dict(zip(self._spec.user_hyper, g.validated)), step, g.scalars,
                           key, g.offsets[i:i + 1])
        else:
            from numba import cuda
            kern = drivers.cuda_kernel(self._spec.name)
            cast = g.dtype.type
            p = g.flat[i]
            dg = flat_g if _backend.is_cuda_array(flat_g) else cuda.to_device(flat_g)
            n = p.shape[0]
            kern[max(1, min(1024, (n + 255) // 256)), 256](
                p, dg, *[None if s is None else s[i] for s in g.state_list],
                None if avg is None else avg[0], tuple(cast(h) for h in hyper), cast(0),
                cast(avg_weight), key, int(g.offsets[i]))
            self._copy_back(g, i)

    def _reference_rows(self, g, i, r, gr, step, key):
        k = gr.shape[1]
        idx = (r[:, None] * k + np.arange(k)).ravel()
        p = g.flat[i][idx]
        states = {name: arrs[i][idx] for name, arrs in g.states.items() if arrs is not None}
        hyper = dict(zip(self._spec.user_hyper, g.validated))
        fn = reference.UPDATES[self._spec.name]
        if key is not None:
            hyper["z"] = reference.normal(key, int(g.offsets[i]), g.flat[i].shape[0])[idx]
        if self._spec.name == "nadam":
            fn(p, gr.reshape(-1), states, step, mu_product=g.scalars[0], **hyper)
        else:
            fn(p, gr.reshape(-1), states, step, **hyper)
        g.flat[i][idx] = p
        for name, arr in states.items():
            g.states[name][i][idx] = arr

    def _cuda_rows(self, g, i, r, gr, hyper, key):
        from numba import cuda
        from optkern.kernels import sparse_drivers
        kern = sparse_drivers.cuda_kernel(self._spec.name)
        cast = g.dtype.type
        k = gr.shape[1]
        n = r.size * k
        kern[max(1, min(1024, (n + 255) // 256)), 256](
            g.flat[i], cuda.to_device(gr), cuda.to_device(r), k,
            *[None if s is None else s[i] for s in g.state_list], None,
            tuple(cast(h) for h in hyper), cast(0), cast(0.0), key, int(g.offsets[i]))
        self._copy_back(g, i)

    def _copy_back(self, g, i):
        a = g.arrays[i]
        if not _backend.is_cuda_array(a):
            a.reshape(-1, order=g.orders[i])[...] = g.flat[i].copy_to_host()

    def _check_finite(self, flat_grads):
        from optkern.kernels import finite
        pos = 0
        for g, fg in zip(self._groups, flat_grads):
            if g.device or self.backend == "cuda":
                bad = finite.first_nonfinite_cuda(fg)
            elif g.finite_ready or _jit.ready(
                    ("first_nonfinite", g.dtype.char, len(fg),
                     all(a.flags.writeable for a in fg)), finite.first_nonfinite, (fg,)):
                g.finite_ready = True
                bad = finite.first_nonfinite(fg)
            else:   # NumPy while the compiled scan is not loaded (optkern._jit)
                bad = next((i for i, a in enumerate(fg) if not np.isfinite(a).all()), -1)
            if bad >= 0:
                raise FloatingPointError(
                    f"grads[{pos + bad}] contains NaN or inf; parameters and optimizer "
                    "state are unchanged (pass check_finite=False to skip this check)")
            pos += len(fg)

    def _step_group(self, g, flat_grads, user, checked_kernel=None):
        step = g.step + 1
        spec = self._spec
        averaging = self.average_start is not None and step > self.average_start
        avg_weight = 1.0 / (g.avg_count + 1) if averaging else 0.0
        avg = g.avg if averaging else None
        key = None
        if self._noisy and self._noise_on(user):
            key = _helpers.step_key(self.seed, step)
        if checked_kernel is not None:
            hyper, new_scalars = spec.prepare(step, g.scalars, *user)
            bad = checked_kernel(g.flat, flat_grads, *g.state_list, avg, hyper, avg_weight,
                                 key, g.offsets)
            if bad >= 0:   # nothing was written
                raise FloatingPointError(
                    f"grads[{bad}] contains NaN or inf; parameters and optimizer "
                    "state are unchanged (pass check_finite=False to skip this check)")
        elif g.kernel is not None:
            hyper, new_scalars = spec.prepare(step, g.scalars, *user)
            g.kernel(g.flat, flat_grads, *g.state_list, avg, hyper, avg_weight, key,
                     g.offsets)
        elif self.backend == "numpy":
            states = {k: list(v) for k, v in g.states.items() if v is not None}
            new_scalars = reference.step(
                spec.name, g.flat, flat_grads, states, None if avg is None else list(avg),
                avg_weight, dict(zip(spec.user_hyper, g.validated)), step, g.scalars, key,
                g.offsets)
        else:
            hyper, new_scalars = spec.prepare(step, g.scalars, *user)
            self._cuda_step(g, flat_grads, g.state_list, avg, hyper, avg_weight, key)
        g.scalars = new_scalars
        g.step = step
        if averaging:
            g.avg_count += 1

    def _noise_on(self, user):
        """Whether this step draws noise: the registry entry's ``noise`` option > 0."""
        return user[self._noise_index] > 0

    # -------------------------------------------------------------------- CUDA
    def _setup_cuda_group(self, g):
        from numba import cuda
        g.flat = []
        g.orders = []
        self._host_arrays = getattr(self, "_host_arrays", {})
        for i, a in enumerate(g.arrays):
            if _backend.is_cuda_array(a):
                d = _backend.as_device_array(a)
                if not (d.is_c_contiguous() or d.is_f_contiguous()):
                    raise ValueError(f"params[{i}] (device array) is not contiguous")
                order = "C" if d.is_c_contiguous() else "F"
                flat = d.reshape(d.size, order=order) if d.ndim != 1 else d
            else:
                order = "C" if a.flags.c_contiguous else "F"
                flat = cuda.to_device(a.reshape(-1, order=order))
            g.flat.append(flat)
            g.orders.append(order)
        g.flat = tuple(g.flat)
        g.orders = tuple(g.orders)

    def _cuda_grad(self, g, i, gr, name):
        from numba import cuda
        p = g.arrays[i]
        if tuple(gr.shape) != tuple(p.shape):
            raise ValueError(f"{name} has shape {tuple(gr.shape)} but the parameter has "
                             f"shape {tuple(p.shape)}")
        if np.dtype(gr.dtype) != g.dtype:
            raise TypeError(f"{name} has dtype {gr.dtype} but the parameter has {g.dtype}")
        if _backend.is_cuda_array(gr):
            d = _backend.as_device_array(gr)
            if d.ndim == 1:
                return d
            if (g.orders[i] == "C" and d.is_c_contiguous()) or \
                    (g.orders[i] == "F" and d.is_f_contiguous()):
                return d.reshape(d.size, order=g.orders[i])
            raise ValueError(f"{name} (device array) must have the parameter's memory order")
        if not isinstance(gr, np.ndarray):
            raise TypeError(f"{name} must be an array, got {type(gr).__name__}")
        return cuda.to_device(np.ravel(gr, order=g.orders[i]))

    def _cuda_step(self, g, flat_grads, states, avg, hyper, avg_weight, key):
        kern = drivers.cuda_kernel(self._spec.name)
        cast = g.dtype.type
        hyper_c = tuple(cast(h) for h in hyper)
        threads = 256
        for k, (p, gr) in enumerate(zip(g.flat, flat_grads)):
            n = p.shape[0]
            blocks = min(1024, max(1, (n + threads - 1) // threads))
            kern[blocks, threads](p, gr, *[None if s is None else s[k] for s in states],
                                  None if avg is None else avg[k], hyper_c, cast(0),
                                  cast(avg_weight), key, int(g.offsets[k]))
        for k, a in enumerate(g.arrays):
            if not _backend.is_cuda_array(a):  # host param: copy the result back
                host = g.flat[k].copy_to_host()
                a.reshape(-1, order=g.orders[k])[...] = host

    # ------------------------------------------------------------- averaging
    def averaged_params(self):
        """The Polyak averages of the parameters (arrays shaped like the params).

        Before averaging starts (``average=k``: after k steps) they equal the
        parameters' values when the optimizer was built.
        """
        if self.average_start is None:
            raise ValueError("this optimizer was built with average=False")
        out = []
        for g in self._groups:
            for a, f, order in zip(g.arrays, g.avg, g.orders):
                host = f.copy_to_host() if hasattr(f, "copy_to_host") else f
                out.append(host.reshape(a.shape, order=order))
        return out

    def swap_averaged(self):
        """Swap parameter values with their averages in place (call again to undo)."""
        if self.average_start is None:
            raise ValueError("this optimizer was built with average=False")
        if self.backend == "cuda":
            raise NotImplementedError("swap_averaged on the cuda backend: copy "
                                      "averaged_params() instead")
        for g in self._groups:
            for f, av in zip(g.flat, g.avg):
                tmp = f.copy()
                f[...] = av
                av[...] = tmp

    # ------------------------------------------------------------ state dict
    def _snapshot(self):
        """Copies of the mutable state, for ``_restore`` (what the estimators
        keep of the last good epoch).  ``state_dict`` builds the torch-style
        dict, ~10 us for two groups: a tenth of a small epoch."""
        if self.backend == "cuda" or any(g.device for g in self._groups):
            return ("dict", self.state_dict())
        return ("host", [(tuple(None if arrs is None else tuple(a.copy() for a in arrs)
                                for arrs in g.state_list),
                          None if g.avg is None else tuple(a.copy() for a in g.avg),
                          g.step, g.avg_count, g.scalars) for g in self._groups])

    def _restore(self, snap):
        """Put back a ``_snapshot`` of this optimizer, in place."""
        kind, data = snap
        if kind == "dict":
            self.load_state_dict(data)
            return
        for g, (states, avg, step, avg_count, scalars) in zip(self._groups, data):
            for arrs, saved in zip(g.state_list, states):
                if arrs is not None:
                    for a, v in zip(arrs, saved):
                        a[...] = v
            if g.avg is not None:
                for a, v in zip(g.avg, avg):
                    a[...] = v
            g.step, g.avg_count, g.scalars = step, avg_count, scalars

    def state_dict(self):
        """A torch-style dict: {"state": {index: {...}}, "param_groups": [...]}.

        Arrays are copies shaped like the params; "step" is per parameter (as
        torch); optkern's extras (noise seed, averaging) sit under "optkern".
        """
        state = {}
        groups = []
        idx = 0
        for group, g in zip(self.param_groups, self._groups):
            ids = []
            for k, a in enumerate(g.arrays):
                entry = {"step": g.step}
                for name, arrs in g.states.items():
                    if arrs is not None:
                        entry[name] = self._export(arrs[k], a.shape, g.orders[k])
                for (name, _), value in zip(self._spec.scalar_states, g.scalars):
                    entry[name] = value
                if g.avg is not None:
                    entry["average"] = self._export(g.avg[k], a.shape, g.orders[k])
                state[idx] = entry
                ids.append(idx)
                idx += 1
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = ids
            saved["avg_count"] = g.avg_count
            groups.append(saved)
        return {"state": state, "param_groups": groups,
                "optkern": {"optimizer": type(self).__name__, "seed": self.seed,
                            "average_start": self.average_start}}

    @staticmethod
    def _export(flat, shape, order):
        host = flat.copy_to_host() if hasattr(flat, "copy_to_host") else flat.copy()
        return host.reshape(shape, order=order)

    def load_state_dict(self, state_dict):
        """Restore a state from ``state_dict()``; validated fully before any change."""
        if not isinstance(state_dict, dict) or "state" not in state_dict \
                or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        extra = state_dict.get("optkern", {})
        if extra.get("optimizer", type(self).__name__) != type(self).__name__:
            raise ValueError(f"state_dict is from {extra['optimizer']}, not "
                             f"{type(self).__name__}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups, "
                             f"optimizer has {len(self.param_groups)}")
        if extra.get("average_start", self.average_start) != self.average_start:
            raise ValueError("state_dict was saved with a different 'average' setting")
        plan = []
        new_groups = []
        for gi, (saved, group, g) in enumerate(zip(saved_groups, self.param_groups,
                                                   self._groups)):
            if len(saved["params"]) != len(g.arrays):
                raise ValueError(f"state_dict param_groups[{gi}] has {len(saved['params'])} "
                                 f"params, optimizer has {len(g.arrays)}")
            new_group = dict(group)
            new_group.update({k: v for k, v in saved.items()
                              if k not in ("params", "avg_count")})
            self._validate_hyper(new_group, f"state_dict param_groups[{gi}]")
            user = dict(zip(self._spec.user_hyper, self._hyper_tuple(new_group)))
            want = set(allocated_states(self._spec, user))
            have = {k for k, v in g.states.items() if v is not None}
            if want != have:
                raise ValueError(f"state_dict param_groups[{gi}] options need states "
                                 f"{sorted(want)}, optimizer holds {sorted(have)}")
            steps = set()
            scalars = None
            for k, pid in enumerate(saved["params"]):
                entry = state_dict["state"].get(pid, state_dict["state"].get(str(pid)))
                if entry is None:
                    raise ValueError(f"state_dict has no state for param {pid}")
                steps.add(int(entry["step"]))
                shape = tuple(g.arrays[k].shape)
                for name in sorted(have) + (["average"] if g.avg is not None else []):
                    arr = np.asarray(entry.get(name))
                    if arr.shape != shape or arr.dtype != g.dtype:
                        raise ValueError(f"state_dict state[{pid}][{name!r}] must have "
                                         f"shape {shape} and dtype {g.dtype}")
                    target = g.avg[k] if name == "average" else g.states[name][k]
                    plan.append((target, np.ravel(arr, order=g.orders[k])))
                scalars = tuple(float(entry[n]) for n, _ in self._spec.scalar_states)
            if len(steps) != 1:
                raise ValueError(f"state_dict param_groups[{gi}] has unequal step counts")
            new_groups.append((new_group, steps.pop(), scalars,
                               int(saved.get("avg_count", 0))))
        # everything validated: now apply
        for target, src in plan:
            if hasattr(target, "copy_to_device"):
                target.copy_to_device(np.ascontiguousarray(src))
            else:
                target[...] = src
        for (new_group, step, scalars, avg_count), group, g in zip(
                new_groups, self.param_groups, self._groups):
            group.update({k: v for k, v in new_group.items() if k != "params"})
            g.step = step
            g.scalars = scalars
            g.avg_count = avg_count
            g.validated = self._hyper_tuple(group)
        if "seed" in extra:
            self.seed = int(extra["seed"])

    def zero_state(self):
        """Reset steps and state to their initial values (keep the parameters)."""
        for group, g in zip(self.param_groups, self._groups):
            init = self._state_init(group)
            for name, arrs in g.states.items():
                if arrs is not None:
                    for a in arrs:
                        a[...] = init.get(name, 0.0)
            g.step = 0
            g.avg_count = 0
            g.scalars = tuple(v for _, v in self._spec.scalar_states)

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[0].items()
                         if k != "params")
        n = sum(len(g.arrays) for g in self._groups)
        return f"{type(self).__name__}({n} params, {opts}, backend={self.backend!r})"


# ---------------------------------------------------------------------------
# The optimizer classes, from the registry (kernels/rules.py): an entry's
# ``options`` give the signature, defaults and validation, its ``classes`` the
# names.  The classes below are thin named subclasses (docs, pickling,
# isinstance); a rule registered at run time gets its classes from
# ``optimizer_class``.
# ---------------------------------------------------------------------------

_RUNTIME = ("backend", "check_finite", "average")


def _signature(spec, decl):
    """The class's signature: params, the options not fixed (keyword-only ones
    after ``*``), then seed (noisy rules), backend, check_finite, average."""
    P = inspect.Parameter
    params = [P("self", P.POSITIONAL_OR_KEYWORD), P("params", P.POSITIONAL_OR_KEYWORD)]
    keyword = []
    for o in spec.options:
        if o.name in decl.fixed:
            continue
        default = decl.defaults.get(o.name, o.default)
        kind = P.KEYWORD_ONLY if o.keyword_only else P.POSITIONAL_OR_KEYWORD
        p = P(o.name, kind, default=P.empty if default is REQUIRED else default)
        (keyword if o.keyword_only else params).append(p)
    if spec.noise is not None:
        keyword.append(P("seed", P.KEYWORD_ONLY, default=None))
    keyword += [P("backend", P.KEYWORD_ONLY, default="auto"),
                P("check_finite", P.KEYWORD_ONLY, default=True),
                P("average", P.KEYWORD_ONLY, default=False)]
    return inspect.Signature(params + keyword)


def _install_api(cls, spec, decl):
    """Give ``cls`` the ``__init__`` its registry entry describes."""
    sig = _signature(spec, decl)

    def __init__(self, *args, **kwargs):
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}(): {exc}") from None
        bound.apply_defaults()
        given = bound.arguments
        options = {}
        for o in spec.options:
            value = decl.fixed[o.name] if o.name in decl.fixed else given[o.name]
            if o.kind == "unit_pair" and isinstance(value, list):
                value = tuple(value)
            options[o.name] = value
        Optimizer.__init__(self, given["params"], options, seed=given.get("seed"),
                           **{k: given[k] for k in _RUNTIME})

    __init__.__signature__ = sig
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = f"Options and defaults from the registry entry of rule {spec.name!r}."
    cls.__init__ = __init__
    cls._noisy = spec.noise is not None
    cls._noise_index = spec.user_hyper.index(spec.noise) if cls._noisy else None
    cls._fixed_options = dict(decl.fixed)
    cls._option_names = tuple(o.name for o in spec.options)
    # every step reads the group's hyperparameters: the generated reader
    # itself, not a method that looks it up
    cls._hyper_tuple = staticmethod(_hyper_getter(spec))


_GETTERS = {}


def _hyper_getter(spec):
    """group dict -> user_hyper tuple, built once per rule from the options'
    ``into`` names: a one-line function reading the group's entries in
    user_hyper order (a pair such as betas by index), as fast as the
    hand-written tuples it replaces (it runs at every step)."""
    getter = _GETTERS.get(id(spec))
    if getter is not None and getter[0] is spec:
        return getter[1]
    source = {}
    for o in spec.options:
        for j, name in enumerate(o.into):
            source[name] = (o.name, j if o.kind == "unit_pair" else None)
    items = "".join(f"group[{k!r}], " if j is None else f"group[{k!r}][{j}], "
                    for k, j in (source[name] for name in spec.user_hyper))
    fn = eval(f"lambda group: ({items})")   # keys are repr()s of option names
    _GETTERS[id(spec)] = (spec, fn)
    return fn


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov, and optional noise.

    torch.optim.SGD's algorithm; ``noise`` > 0 adds N(0, noise^2) to every
    element after each update (perturbed SGD), seeded by ``seed``.
    """

    _rule = "sgd"


class SGLD(Optimizer):
    """Stochastic gradient Langevin dynamics (Welling & Teh, 2011).

    p <- p - lr*g + noise_scale*sqrt(2*lr)*z,  z ~ N(0, 1) per element, i.e. the
    Euler-Maruyama step of Langevin dynamics at temperature noise_scale**2.
    """

    _rule = "sgld"


class Adagrad(Optimizer):
    """torch.optim.Adagrad."""

    _rule = "adagrad"


class RMSprop(Optimizer):
    """torch.optim.RMSprop (eps outside the square root; centered variant)."""

    _rule = "rmsprop"


class Adadelta(Optimizer):
    """torch.optim.Adadelta (eps inside the square roots)."""

    _rule = "adadelta"


class Adam(Optimizer):
    """torch.optim.Adam; ``bias_correction=False`` gives the course's uncorrected Adam.

    ``decoupled_weight_decay=True`` is AdamW (as torch >= 2.5's Adam option).
    """

    _rule = "adam"


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""


class Adamax(Optimizer):
    """torch.optim.Adamax (infinity-norm Adam)."""

    _rule = "adamax"


class NAdam(Optimizer):
    """torch.optim.NAdam (Nesterov-accelerated Adam with momentum decay)."""

    _rule = "nadam"


class RAdam(Optimizer):
    """torch.optim.RAdam (variance-rectified Adam)."""

    _rule = "radam"


class FTRL(Optimizer):
    """FTRL-Proximal (McMahan et al., KDD 2013, Algorithm 1), per coordinate.

    ``lr`` is the paper's alpha, ``beta`` its beta, ``l1``/``l2`` its lambda_1
    and lambda_2 (TensorFlow's l2 is half of it); ``lr_power=-0.5`` is the
    paper's square root (other values <= 0 generalise it, as in TensorFlow).
    The weights are a function of the per-coordinate state (``linear`` = z,
    ``accumulator`` = n, which starts at ``initial_accumulator_value``):
    where the L1 term holds a weight, it is exactly 0.  A coordinate whose
    gradient is 0 keeps its weight and state, as the paper's loop over the
    example's nonzero features does, so FTRL's sparse step (``rows=``) is
    exact.  ``l1_per_step``/``l2_per_step`` (keyword-only, default 0) add
    ``step * l1_per_step`` to l1 (and so for l2): the penalty of a composite
    objective, which the estimators use for their ``alpha``.
    """

    _rule = "ftrl"


def optimizer_class(class_name):
    """The optimizer class called ``class_name`` in the registry: a class of
    this module, or one built (and kept here, so it pickles) for a rule
    registered at run time."""
    cls = globals().get(class_name)
    if isinstance(cls, type) and issubclass(cls, Optimizer) and cls is not Optimizer:
        return cls
    for spec in RULES.values():
        for k, decl in enumerate(spec.classes):
            if decl.name == class_name:
                base = Optimizer if k == 0 else optimizer_class(spec.classes[0].name)
                cls = type(class_name, (base,), {
                    "_rule": spec.name, "__module__": __name__,
                    "__doc__": decl.doc or f"The {spec.name!r} rule (registered at run time)."})
                globals()[class_name] = cls
                return cls
    raise KeyError(f"no optimizer class {class_name!r} in the registry")


class _RegistryView(Mapping):
    """A read-only mapping computed from the registry, recomputed when a rule
    is registered (so a rule added at run time shows up everywhere)."""

    def __init__(self, build, doc):
        self._build, self.__doc__ = build, doc
        self._key, self._data = None, {}

    def _current(self):
        key = tuple(map(id, RULES.values()))
        if key != self._key:
            self._data, self._key = self._build(), key
        return self._data

    def __getitem__(self, name):
        return self._current()[name]

    def __iter__(self):
        return iter(self._current())

    def __len__(self):
        return len(self._current())

    def __repr__(self):
        return repr(self._current())


def _class_table():
    return {decl.name.lower(): optimizer_class(decl.name)
            for spec in RULES.values() for decl in spec.classes}


def _name_table():
    return {e.name: (optimizer_class(e.class_name), e.lr, dict(e.fixed))
            for spec in RULES.values() for e in spec.estimator_names}


OPTIMIZERS = _RegistryView(_class_table, "class name in lower case -> optimizer class")
OPTIMIZER_NAMES = _RegistryView(
    _name_table, "the estimators' and command line's optimizer names -> (class, default "
                 "learning rate, fixed options), from the registry's estimator_names")
