"""Parameter groups of an ``Optimizer``: what a group holds and how it is checked.

``ParamGroups`` is the part of ``optkern.optimizers.Optimizer`` that takes
the params (arrays or torch-style group dicts), validates them (dtype,
contiguity, writeability, no array twice, no overlapping memory) and the
options of each group against the rule's registry entry (``options``,
``requires``), and builds each group's ``_Group`` record.  The record's
states come from ``optkern._optim_state``, its kernel from
``optkern._optim_step``.
"""

import math
import numbers

import numpy as np

from optkern import _backend
from optkern._optim_overlap import arrays_overlap
from optkern.kernels.rules import state_names

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


class ParamGroups:
    """Mixin of ``Optimizer``: param groups, their validation and options."""

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
        self._add_group(param_group)

    def _add_group(self, param_group, defaults_checked=False):
        """``add_param_group``; ``defaults_checked``: the constructor has just
        validated ``self.defaults``, so a group that sets no option of its own
        is not validated a second time (15 us of a first optimizer)."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError("param_group must be a dict with a 'params' entry")
        gi = len(self.param_groups)
        group = dict(self.defaults)
        group.update({k: v for k, v in param_group.items() if k != "params"})
        unknown = set(group) - set(self.defaults)
        if unknown:
            raise ValueError(f"param_groups[{gi}] has unknown options {sorted(unknown)}; "
                             f"{type(self).__name__} takes {sorted(self.defaults)}")
        if not (defaults_checked and len(param_group) == 1):
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

    def _check_device_params(self, arrays, gi):
        dtypes = {np.dtype(a.dtype) for a in arrays}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _FLOAT_DTYPES:
            raise TypeError(f"param_groups[{gi}]: device params must all be float32 "
                            f"or all float64, got {sorted(map(str, dtypes))}")

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
        """A gradient that overlaps a parameter changes while it is read.
        (Every step asks: the parameters' names are spelt only for the error.)"""
        for gi, grp in enumerate(self._groups):
            for i, p in enumerate(grp.arrays):
                if arrays_overlap(gr, p):
                    other = f"params[{i}]" if gi == 0 else f"param_groups[{gi}]['params'][{i}]"
                    raise ValueError(f"grads[{pos}] shares memory with {other}; pass a "
                                     "gradient in its own memory (the parameters are "
                                     "updated in place)")

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
