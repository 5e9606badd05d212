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

``Optimizer`` is put together from one mixin per concern, each in its own
module: ``_optim_groups.ParamGroups`` (params and param groups, their
validation, the options read from the registry entry),
``_optim_state.OptimizerState`` (state arrays, averaging, state dicts,
snapshots), ``_optim_step.Stepping`` (backend and kernel choice, the dense
step with its NaN/inf check), ``_optim_sparse.SparseStepping`` (the
``rows=`` step) and ``_optim_cuda.CudaArrays`` (device arrays).  They share
the instance attributes ``__init__`` sets (``_spec``, ``param_groups``,
``_groups`` of ``_Group`` records, ``backend``, ``check_finite``,
``average_start``, ``seed``).  This module keeps the class, the registry-built
signatures and the named subclasses.
"""

import inspect
import numbers
from collections.abc import Mapping

import numpy as np

from optkern import _backend
from optkern._optim_cuda import CudaArrays
from optkern._optim_groups import ParamGroups, _hyper_getter
from optkern._optim_overlap import arrays_overlap  # noqa: F401  (public here)
from optkern._optim_sparse import SparseStepping
from optkern._optim_state import OptimizerState
from optkern._optim_step import Stepping
from optkern.kernels.rules import REQUIRED, RULES

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam",
           "AdamW", "Adamax", "NAdam", "RAdam", "SGLD", "FTRL", "OPTIMIZERS",
           "OPTIMIZER_NAMES", "optimizer_class"]


class Optimizer(ParamGroups, OptimizerState, Stepping, SparseStepping, CudaArrays):
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
            self._add_group(group, defaults_checked=True)

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


def _binder(sig):
    """A fast ``sig.bind(self, *args, **kwargs)`` + ``apply_defaults`` for a
    call that binds without error: the arguments by name, or None for any
    other call (``inspect.Signature.bind`` then runs and words the error).
    ``Signature.bind`` took 13 us of a 47 us constructor, 20 us on a first
    call (asv FirstCall)."""
    P = inspect.Parameter
    params = list(sig.parameters.values())[1:]          # (not self)
    positional = tuple(p.name for p in params if p.kind == P.POSITIONAL_OR_KEYWORD)
    defaults = {p.name: p.default for p in params if p.default is not P.empty}
    names = frozenset(p.name for p in params)
    required = tuple(p.name for p in params if p.default is P.empty)

    def bind(args, kwargs):
        if len(args) > len(positional) or not names.issuperset(kwargs):
            return None
        given = dict(zip(positional, args))
        if len(given) + len(kwargs) != len({**given, **kwargs}):
            return None                     # a value by position and by name
        for name in required:
            if name not in given and name not in kwargs:
                return None
        return {**defaults, **given, **kwargs}
    return bind


def _install_api(cls, spec, decl):
    """Give ``cls`` the ``__init__`` its registry entry describes."""
    sig = _signature(spec, decl)
    fast_bind = _binder(sig)

    def __init__(self, *args, **kwargs):
        given = fast_bind(args, kwargs)
        if given is None:
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
