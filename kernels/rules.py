"""The elementwise optimizer update rules, each written once.

A *rule* is a plain scalar function::

    rule(p, g, <state...>, <kernel hyperparameters...>, z) -> (p, <state...>)

It takes one parameter element ``p``, its gradient ``g``, the element's
optimizer state, the per-step kernel hyperparameters and one standard normal
draw ``z`` (zero unless the optimizer injects noise), and returns the new
parameter and state.  Nothing else: no arrays, no loops, no NumPy.

The same text is compiled into every target:

* ``kernels/drivers.py`` generates Numba serial (``range``), parallel
  (``prange``) and CUDA (grid-stride) loops around each rule;
* ``kernels/cython/generate.py`` turns each rule into a ``cdef inline``
  C function (float and double) inside the ahead-of-time Cython kernels.

Weights like ``1 - beta`` come precomputed by ``prepare`` (in double, then
cast to the dtype): computed inside a float32 rule from float32(beta) they
lose digits (1 - float32(0.999) is 1.0000467e-3), where NumPy and torch
round the double ``1 - beta`` once.

So a rule is written in the rule language, described once in
``kernels/rulelang/__init__.py`` and docs/rules.md (arithmetic, comparisons,
conditional expressions, ``if`` statements and ``sign``, ``floor``,
``log1p``, ``exp``, ``log``, ``sqrt``, ``abs``, ``min``, ``max`` on every
target); hyperparameters arrive already cast to the parameter's dtype, flags
as 0 or 1.

A *prepare* function turns the user-facing hyperparameters and the step number
into the kernel hyperparameters, once per step, on the host (bias corrections,
decayed learning rates, ...).  It is ordinary Python, also written once, and
numba-compilable so that the functional kernels can run it in nopython mode.

An optional state (``"max_exp_avg_sq?amsgrad"``) is only allocated when the
named user option is non-zero; the drivers pass 0 for an absent state and discard what the rule
returns for it, so a rule reads it only under the flag that allocates it.

A rule writes only its own update: the gradient's prologue that torch.optim
runs in front of every method (``maximize`` flips the gradient, the decoupled
weight decay scales the parameter, the coupled one adds ``weight_decay * p``
to the gradient) is declared in the registry entry (``prologue``) and put in
front of the rule's body by the rule language's front end
(``rulelang.prologue.PROLOGUE``), for every target: the rule here is
replaced by the function with its prologue (``rulelang.with_prologue``),
which is what Python, Numba and the sparse closed forms call.  That function
is built on the rule's first use (``RuleSpec.rule``, or the module attribute
a generated driver imports), so ``import optkern`` parses no rule; its code
is cached on disk (``_built_code``), so a later process loads no front end
at all.  The decoupled decay's factor (``1 - lr*weight_decay``, or 1) is
computed on the host once, in front of ``prepare``, by the same declaration
(``rulelang.prepare_with_prologue``; ``RuleSpec.prepare``): Adam's, NAdam's
and RAdam's prepares return the other kernel hyperparameters only.

This module imports nothing but ``math`` and the rule language's declaration
of the prologue (rulelang/prologue.py, which imports nothing; the front end
when a rule is first used) so that the Cython build can read it without
Numba installed.

Relation to the course notation (documented in README): torch's forms are
used.  RMSprop/Adam put ``eps`` outside the square root (Adadelta inside, as
torch); heavy ball ``v = rho*v - lr*g; x += v`` is SGD(momentum=rho,
dampening=0) with ``b = -v/lr`` when lr is constant; ``Adam(bias_correction=
False)`` is the course's uncorrected Adam.
"""

import math
from collections import namedtuple

if __package__:
    from .rulelang import prologue as _prologue

    def _frontend():
        from .rulelang import frontend
        return frontend
else:  # loaded by path (the Cython generators at build time): kernels/_files.py finds it
    import os as _os
    import runpy as _runpy

    _files = _runpy.run_path(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)),
                                           "_files.py"))
    _rulelang = _files["rulelang"]()
    _prologue = _rulelang.prologue

    def _frontend():
        return _rulelang.frontend

_RuleSpecFields = namedtuple(
    "RuleSpec",
    "name rule prepare states kernel_hyper user_hyper scalar_states "
    "options classes estimator_names requires noise zero_grad_identity prologue",
    defaults=((), (), (), (), None, None, ()),
)


class RuleSpec(_RuleSpecFields):
    __slots__ = ()

    @property
    def rule(self):
        """The rule as it runs: the function as written with its declared
        prologue in front (``rulelang.with_prologue``), built on first use."""
        return _running(tuple.__getitem__(self, 1), self.prologue)

    @property
    def written(self):
        """The rule as its author wrote it: the core update, no prologue."""
        return _written(tuple.__getitem__(self, 1))

    @property
    def written_prepare(self):
        """The prepare as its author wrote it (``prepare`` is the one that runs)."""
        return _written(self.prepare)

    def __reduce__(self):
        # pickled with the function that runs (the module holds it by name;
        # the function as written is not reachable by its name)
        return _unpickle_spec, ((self.name, self.rule) + tuple(self)[2:],)


def _unpickle_spec(fields):
    spec = RuleSpec._make(fields)
    return spec._replace(rule=spec.written)


RuleSpec.__doc__ = """Everything the drivers and the Python API need to know about one rule.

The kernel side (read by every target):

name          registry key (also the name of the functional kernel)
rule          the scalar update function, as written; reading ``spec.rule``
              gives the function that runs (the declared ``prologue`` in
              front, built on first use), ``spec.written`` the one given
prepare       prepare(step, scalar_state_tuple, *user_hyper) ->
                  (kernel_hyper_tuple, new_scalar_state_tuple); as written it
              leaves out the kernel hyperparameters the declared prologue
              computes (``decay_factor``), and ``register`` puts the function
              that runs (with them) here, ``spec.written_prepare`` the one given
states        per-element state names; 'name?flag' is optional, allocated
              only when the user option 'flag' is non-zero
kernel_hyper  names of the kernel hyperparameters the rule takes after its states
user_hyper    names of the user-facing hyperparameters prepare takes
scalar_states names of per-tensor scalar states (NAdam's mu_product) with
              their initial values, as ((name, initial), ...)

The API side (read by optkern.optimizers, the estimators, the command line,
the trajectories and the tests; docs/adding_an_optimizer.md):

options       the optimizer class's options, in signature order (``real``,
              ``flag``, ``unit_pair``): default, constraint, which user_hyper
              names each feeds (``into``) or which state it initialises
classes       the named optimizer classes on this rule (``OptimizerClass``):
              the first is the rule's own; more may fix or re-default options
              (AdamW is Adam with decoupled_weight_decay fixed True)
estimator_names  the estimators' and command line's names on this rule
              (``EstimatorName``: class, default learning rate, fixed options)
requires      cross-option constraints (``Requires``), checked after each option's own
noise         the user option whose value > 0 turns the noise draw on (None: never)
zero_grad_identity  f(user_hyper dict) -> whether a zero gradient changes
              nothing (the sparse step's "exact" mode); None: never
prologue      the statements put in front of the rule's body, by name, in the
              order they run (``rulelang.prologue.PROLOGUE``): "maximize"
              (``if maximize: g = -g``), "decoupled_weight_decay"
              (``p = p * decay_factor``, the factor ``1 - lr*weight_decay``
              -- or 1, the coupled weight_decay 0 when ``decoupled`` -- put in
              front of ``prepare`` by the front end), "weight_decay"
              (``g = g + weight_decay * p``); each needs the kernel
              hyperparameter it reads, and the NumPy reference applies the
              same items from the user hyperparameters (reference.prologue_for)
"""


class _Required:
    """The default of an option the caller must give (SGLD's lr)."""

    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()

Option = namedtuple("Option", "name default kind lo lo_open hi hi_open into init_state "
                              "keyword_only")
Option.__doc__ = """One option of an optimizer class.

kind        "real" (a finite real number within [lo, hi], ends open when
            lo_open/hi_open), "flag" (a bool) or "unit_pair" (a pair, each
            element in [0, 1): betas)
into        the user_hyper names it feeds (a unit_pair feeds two); () when it
            only initialises a state (``init_state``)
keyword_only  after the ``*`` in the class signature
"""


def real(name, default, *, lo=None, lo_open=False, hi=None, hi_open=False, into=None,
         init_state=None, keyword_only=False):
    """A real-valued option; ``lo``/``hi`` bound it (open ends when ``*_open``)."""
    if into is None:
        into = () if init_state else (name,)
    return Option(name, default, "real", lo, lo_open, hi, hi_open, tuple(into), init_state,
                  keyword_only)


def flag(name, default=False, *, into=None, keyword_only=False):
    """A bool option (the kernels receive it as 0 or 1)."""
    return Option(name, default, "flag", None, False, None, False,
                  (name,) if into is None else tuple(into), None, keyword_only)


def unit_pair(name, default, into):
    """A pair of reals each in [0, 1) feeding two user hyperparameters (betas)."""
    return Option(name, tuple(default), "unit_pair", 0.0, False, 1.0, True, tuple(into),
                  None, False)


OptimizerClass = namedtuple("OptimizerClass", "name defaults fixed doc",
                            defaults=({}, {}, None))
OptimizerClass.__doc__ = """A named optimizer class on a rule.

defaults  options whose default differs from the rule's ``options``
fixed     options set to a value and left out of the class signature
doc       the class docstring when the class is built from the registry
"""

EstimatorName = namedtuple("EstimatorName", "name class_name lr fixed", defaults=({},))
EstimatorName.__doc__ = """A name the estimators and the command line accept.

class_name  one of the rule's ``classes``
lr          the estimators' default learning rate (chosen on standardised data so
            that every name trains a good model without tuning)
fixed       options the name sets (``momentum``: SGD with momentum=0.9)
"""

Requires = namedtuple("Requires", "holds message")
Requires.__doc__ = """A constraint between options: ``holds(options dict)`` must be true,
else ValueError("<where>: <message>")."""


def check_api(spec):
    """The API side agrees with the kernel side, by name: every user_hyper is
    fed by exactly one option, every class, name and flag refers to something
    that exists.  Raises ValueError naming the mismatch."""
    where = f"rule {spec.name!r}"
    fed = [n for o in spec.options for n in o.into]
    if sorted(fed) != sorted(spec.user_hyper):
        raise ValueError(f"{where}: options feed {sorted(fed)} but prepare takes user_hyper "
                         f"{sorted(spec.user_hyper)}")
    if spec.user_hyper[:1] != ("lr",):
        raise ValueError(f"{where}: the first user_hyper must be 'lr' (schedules set it)")
    names = [o.name for o in spec.options]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: an option is declared twice in {names}")
    for o in spec.options:
        if o.kind not in ("real", "flag", "unit_pair"):
            raise ValueError(f"{where}: option {o.name!r} has unknown kind {o.kind!r}")
        if o.init_state and o.init_state not in state_names(spec):
            raise ValueError(f"{where}: option {o.name!r} initialises unknown state "
                             f"{o.init_state!r}")
    if not spec.classes:
        raise ValueError(f"{where}: declare at least one OptimizerClass")
    classes = {c.name for c in spec.classes}
    for c in spec.classes:
        unknown = (set(c.defaults) | set(c.fixed)) - set(names)
        if unknown:
            raise ValueError(f"{where}: class {c.name} sets unknown options {sorted(unknown)}")
    for e in spec.estimator_names:
        if e.class_name not in classes:
            raise ValueError(f"{where}: estimator name {e.name!r} uses class "
                             f"{e.class_name!r}, not one of {sorted(classes)}")
        unknown = set(e.fixed) - set(names)
        if unknown:
            raise ValueError(f"{where}: estimator name {e.name!r} fixes unknown options "
                             f"{sorted(unknown)}")
    if spec.noise is not None and spec.noise not in spec.user_hyper:
        raise ValueError(f"{where}: noise option {spec.noise!r} is not a user_hyper")
    _prologue.check_prologue(spec.prologue, spec.kernel_hyper, spec.user_hyper, where)
    _check_signatures(spec, where)


def _arguments(fn):
    code = fn.__code__
    return code.co_varnames[:code.co_argcount]


def _check_signatures(spec, where):
    """The positional contracts between a rule, its prepare and the entry,
    checked by name and length once at registration: the rule takes
    (p, g, <one per state>, <kernel_hyper by name>, z); prepare takes
    (step, scalars, <user_hyper by name>) and returns as many kernel
    hyperparameters and scalar states as the entry declares."""
    args = _arguments(spec.written)
    n_states = len(spec.states)
    want = len(spec.kernel_hyper) + n_states + 3
    if len(args) != want or args[-1] != "z":
        raise ValueError(f"{where}: the rule takes {args}; expected p, g, {n_states} states, "
                         f"the kernel_hyper {spec.kernel_hyper} and z")
    if tuple(args[2 + n_states:-1]) != tuple(spec.kernel_hyper):
        raise ValueError(f"{where}: the rule's hyperparameters {args[2 + n_states:-1]} are "
                         f"not the entry's kernel_hyper {spec.kernel_hyper}")
    pargs = _arguments(spec.written_prepare)
    if tuple(pargs[2:]) != tuple(spec.user_hyper) or len(pargs) != len(spec.user_hyper) + 2:
        raise ValueError(f"{where}: prepare takes {pargs}; expected (step, scalars, "
                         f"{', '.join(spec.user_hyper)})")
    # one dry run of prepare at the defaults: the tuple lengths line up
    user = {}
    for o in spec.options:
        default = 0.01 if o.default is REQUIRED else o.default
        values = tuple(default) if o.kind == "unit_pair" else (default,) * len(o.into)
        user.update(zip(o.into, (float(v) for v in values)))
    # (the prepare as written: the kernel hyperparameters its declared
    # prologue computes are put in by the front end, on first use)
    hyper, scalars = spec.written_prepare(1, tuple(v for _, v in spec.scalar_states),
                                          *(user[n] for n in spec.user_hyper))
    provided = _prologue.prepare_provides(spec.prologue)
    if (len(hyper) + len(provided) != len(spec.kernel_hyper)
            or len(scalars) != len(spec.scalar_states)):
        but = f" but {', '.join(provided)} (its prologue computes them)" if provided else ""
        raise ValueError(f"{where}: prepare returned {len(hyper)} kernel hyperparameters and "
                         f"{len(scalars)} scalar states; the entry declares "
                         f"{len(spec.kernel_hyper)}{but} and {len(spec.scalar_states)}")


RULES = {}

# The rules as they run, built on first use (``RuleSpec.rule``, or the
# module's ``__getattr__`` for the name a generated driver imports): parsing
# and compiling the nine rules with their prologues took 13 ms of CPU on every
# ``import optkern``, which needs none of them.  _RUNNING maps (function as
# written, prologue) to the function that runs; _PENDING holds, by name, the
# rules of this module whose running function is not built yet (their names
# leave the module's namespace at the end of this file, so that
# ``from optkern.kernels.rules import adam_rule`` comes through ``__getattr__``).
_RUNNING = {}
_PENDING = {}
_LOADING = True
# The prepares likewise, but a registered entry holds its prepare as it runs
# from the start (a compiled step reads ``spec.prepare`` every step: a
# property would cost it ~0.2 us): for a prepare the prologue adds to, that is
# a function made at ``register`` whose code, until first use, builds the
# real one and takes its code (``_lazy_prepare``).  _PREPARE_KEYS maps a
# registered prepare as written to what its running function is built from,
# _PREPARED to that function; _PENDING_PREPARES holds, by name, the prepares
# of this module not built yet.
_PREPARE_KEYS = {}
_PREPARED = {}
_PENDING_PREPARES = {}


def _written(fn):
    """The function as its author wrote it (``fn`` or, for a function that
    runs with a prologue, the one it wraps)."""
    if hasattr(fn, "__rule_prologue__") or hasattr(fn, "__prepare_prologue__"):
        return fn.__wrapped__
    return fn


# The code of this module's functions that run with a prologue, cached on
# disk beside the generated drivers (``drivers.generated_dir()``): building
# one loads the rule language's front end (4-5 ms the first time in a
# process) and parses the function (1-2 ms), which was most of a first Adam
# step on the Cython backend.  A file holds one function's code (``marshal``)
# under a header naming everything it was built from (``_built_key``); a
# file that is missing, stale, truncated or corrupt, or a directory that
# cannot be read or written, means building it in memory as before.  The
# function made from cached code is the one the front end makes (same code,
# name, globals, file and lines, ``__wrapped__`` and prologue attribute).


def _built_sources():
    """(files, package directory): every source the built code depends on,
    this module and the files of the rule language (its front end, which
    imports nothing else of the package, and the prologue's declaration)."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    lang = os.path.join(here, "rulelang")
    return ([os.path.abspath(__file__)] + [os.path.join(lang, f) for f in
                                           sorted(os.listdir(lang)) if f.endswith(".py")],
            here)


def _sources_digest():
    """The digest of ``_built_sources`` (``_files.source_digest`` of exactly
    those files: its scan of import lines would take in this module's lazy
    imports, drivers.py and what it imports, ~1.5 ms more on a first step)."""
    from . import _files
    files, here = _built_sources()
    return _files.source_digest(files, here, follow_imports=False)


def _built_key(kind, written, key):
    """The cache key of ``kind``'s ("rule", "prepare") built code for
    ``written`` under ``key`` (its prologue, or its prepare's prologue key):
    the digest of its sources (``_sources_digest``), the bytecode's version
    (marshal is specific to it), the function as written (file, line,
    bytecode: they also tie the key to the function in memory) and ``key``."""
    import hashlib
    import importlib.util
    code = written.__code__
    h = hashlib.sha256()
    for part in (_sources_digest(), importlib.util.MAGIC_NUMBER.hex(), kind,
                 written.__qualname__, code.co_filename, str(code.co_firstlineno), repr(key)):
        h.update(part.encode() + b"\0")
    h.update(code.co_code)
    return h.hexdigest()[:32]


_BUILT_TAG = b"optkern-built-code"


def _built_file(kind, written):
    import os
    from . import drivers
    return os.path.join(drivers.generated_dir(), f"optkern_{kind}_{written.__name__}.bin")


def _load_built(kind, written, key):
    """(cached code or None, what ``_store_built`` needs to write it); both
    None for a function this module does not cache (one written elsewhere and
    registered at run time, or this file loaded by path at build time)."""
    if not __package__ or written.__globals__ is not globals():
        return None, None
    import hashlib
    import marshal
    import types
    try:
        where = _built_file(kind, written), _built_key(kind, written, key)
    except (OSError, ValueError):       # no cache directory, a source unreadable
        return None, None
    try:
        with open(where[0], "rb") as fh:
            header, _, payload = fh.read().partition(b"\n")
        tag, file_key, check = header.split(b" ")
        if (tag == _BUILT_TAG and file_key.decode() == where[1]
                and check.decode() == hashlib.sha256(payload).hexdigest()):
            code = marshal.loads(payload)
            if isinstance(code, types.CodeType) and code.co_name == written.__name__:
                return code, None
    except (OSError, ValueError, EOFError, TypeError):  # missing, truncated, corrupt
        pass
    return None, where


def _store_built(where, code):
    """Write ``code`` where ``_load_built`` looks for it (atomically:
    ``_files.write_if_changed``); a directory that cannot be written to is
    left alone (the code was built in memory)."""
    if where is None:
        return
    import hashlib
    import marshal
    from . import _files
    payload = marshal.dumps(code)
    header = b" ".join([_BUILT_TAG, where[1].encode(),
                        hashlib.sha256(payload).hexdigest().encode()])
    try:
        _files.write_if_changed(where[0], header + b"\n" + payload)
    except OSError:
        pass


def _built_code(kind, written, key, build):
    """(code, function) of the function that runs for ``written`` under
    ``key``: the code from its cache file, function None; or, when the file
    does not hold it, ``build()`` (the front end) and its code, written to
    the file for the next process."""
    code, where = _load_built(kind, written, key)
    if code is not None:
        return code, None
    built = build()
    _store_built(where, built.__code__)
    return built.__code__, built


def _rule_of_code(code, fn, prologue):
    """The function ``rulelang.with_prologue(fn, prologue)`` makes, from its
    (cached) ``code``: the same attributes (frontend ``_compiled``)."""
    import types
    full = types.FunctionType(code, fn.__globals__, fn.__name__)
    full.__module__ = fn.__module__
    full.__qualname__ = fn.__qualname__
    full.__doc__ = fn.__doc__
    full.__wrapped__ = fn
    full.__rule_prologue__ = prologue
    return full


def _lazy_prepare(written, key):
    """The prepare that runs for ``written`` under ``key`` (its prologue's
    prepare items, kernel_hyper), to be built on first use: a function of
    the same name, globals, file and line whose first call (or
    ``_build_prepare``) builds the real one (``rulelang.prepare_with_prologue``)
    and takes its code, so it *is* the running prepare from then on and
    nothing is parsed at import.  It carries ``__wrapped__`` and
    ``__prepare_prologue__`` from the start (what the C emitter reads)."""
    import types
    args = ", ".join(_arguments(written))
    name = written.__name__
    code = compile(f"def {name}({args}):\n    return _build_prepare({name!r})({args})\n",
                   written.__code__.co_filename, "exec")
    code = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    code = code.replace(co_firstlineno=written.__code__.co_firstlineno)
    lazy = types.FunctionType(code, written.__globals__, name)
    lazy.__module__, lazy.__qualname__ = written.__module__, written.__qualname__
    lazy.__doc__, lazy.__wrapped__, lazy.__prepare_prologue__ = written.__doc__, written, key
    return lazy


def _build_prepare(name):
    """Build the pending prepare ``name`` (``_lazy_prepare``): its function
    takes the built code and this module holds it under its name."""
    lazy = _PREPARED[_PENDING_PREPARES[name]] if name in _PENDING_PREPARES else globals()[name]
    written = lazy.__wrapped__
    if getattr(lazy, "__built__", False):
        return lazy
    key = lazy.__prepare_prologue__
    lazy.__code__ = _built_code("prepare", written, key,
                                lambda: _frontend().prepare_with_prologue(written, *key))[0]
    lazy.__built__ = True
    globals()[name] = lazy              # before it leaves the pending ones: always reachable
    _PENDING_PREPARES.pop(name, None)
    return lazy


def _running(fn, prologue):
    """The function that runs for rule ``fn`` with ``prologue``: built once,
    and put in this module under its name when that name waits for it."""
    key = _written(fn), tuple(prologue)
    full = _RUNNING.get(key)
    if full is None:
        built = key[0]
        if key[1]:
            code, built = _built_code("rule", *key, lambda: _frontend().with_prologue(*key))
            built = built or _rule_of_code(code, *key)
        # setdefault: one function per rule even if two threads build it
        full = _RUNNING.setdefault(key, built)
        name = key[0].__name__
        if _PENDING.get(name) == key:
            globals()[name] = full          # before it leaves _PENDING: always reachable
            _PENDING.pop(name, None)
    return full


def __getattr__(name):
    if name in _PENDING:
        return _running(*_PENDING[name])
    if name in _PENDING_PREPARES:
        return _build_prepare(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _held(name):
    """(function as written, prologue) of the rule this module holds under
    ``name``, built or not, or None."""
    if name in _PENDING:
        return _PENDING[name]
    fn = globals().get(name)
    if fn is None:
        return None
    return _written(fn), getattr(fn, "__rule_prologue__", ())


def register(spec):
    """Add a rule to the registry; every backend and test picks it up.

    A rule registered at run time is built with its prologue here (so its
    errors surface here); this module's own are built on first use."""
    if spec.name in RULES:
        raise ValueError(f"rule {spec.name!r} is registered twice")
    check_api(spec)
    written, prologue = _written(tuple.__getitem__(spec, 1)), tuple(spec.prologue)
    spec = spec._replace(rule=written, prologue=prologue)
    # the generated drivers import the rule and prepare from this module by
    # name: a rule written elsewhere (registered at run time) is put here
    held = _held(written.__name__)
    if held is not None and held[0] is not written:
        raise ValueError(f"rule {spec.name!r}: another function named {written.__name__!r} "
                         "is already in optkern.kernels.rules; rename it")
    for other in RULES.values():
        if other.written is written and other.prologue != prologue:
            raise ValueError(f"rule {spec.name!r}: its function {written.__name__!r} is rule "
                             f"{other.name!r}'s, which declares the prologue {other.prologue}, "
                             f"not {prologue}; one function runs under one name")
    prepare = _written(spec.prepare)
    prepare_key = (_prologue.prepare_items(prologue), tuple(spec.kernel_hyper))
    if _PREPARE_KEYS.get(prepare, prepare_key) != prepare_key:
        raise ValueError(f"rule {spec.name!r}: its prepare {prepare.__name__!r} is another "
                         "rule's, under another prologue or kernel_hyper; one function runs "
                         "under one name")
    here = globals().get(prepare.__name__, _PREPARED.get(_PENDING_PREPARES.get(
        prepare.__name__)))
    if here is not None and _written(here) is not prepare:
        raise ValueError(f"rule {spec.name!r}: another function named "
                         f"{prepare.__name__!r} is already in optkern.kernels.rules; "
                         "rename it")
    running = _PREPARED.get(prepare)
    if running is None:
        if not prepare_key[0]:
            running = prepare
        elif _LOADING:
            running = _lazy_prepare(prepare, prepare_key)
        else:   # built now: its errors surface here, before any change
            running = _frontend().prepare_with_prologue(prepare, *prepare_key)
    spec = spec._replace(prepare=running)
    if _LOADING and prologue:
        _PENDING[written.__name__] = (written, prologue)
    else:
        globals()[written.__name__] = _running(written, prologue)
    _PREPARE_KEYS[prepare] = prepare_key
    _PREPARED[prepare] = running
    if running.__code__ is not prepare.__code__ and _LOADING:
        _PENDING_PREPARES[prepare.__name__] = prepare
    else:
        globals()[prepare.__name__] = running
    RULES[spec.name] = spec
    return spec


def unregister(name):
    """Remove a rule registered at run time (tests)."""
    spec = RULES.pop(name)
    written = spec.written
    if not any(s.written is written for s in RULES.values()) \
            and _held(written.__name__) == (written, spec.prologue):
        _PENDING.pop(written.__name__, None)
        globals().pop(written.__name__, None)
    _RUNNING.pop((written, spec.prologue), None)
    prepare = spec.written_prepare
    if not any(s.written_prepare is prepare for s in RULES.values()):
        running = _PREPARED.pop(prepare, prepare)
        _PREPARE_KEYS.pop(prepare, None)
        if _PENDING_PREPARES.get(prepare.__name__) is prepare:
            del _PENDING_PREPARES[prepare.__name__]
        if globals().get(prepare.__name__) in (prepare, running):
            del globals()[prepare.__name__]
    return spec


def state_names(spec):
    return tuple(s.partition("?")[0] for s in spec.states)


def allocated_states(spec, user_hyper):
    """The state names allocated for these user hyperparameters (a dict).

    ``"name?flag"`` is allocated only when ``user_hyper[flag]`` is non-zero;
    a flag the optimizer does not have counts as zero.
    """
    out = []
    for s in spec.states:
        name, optional, flag = s.partition("?")
        if not optional or user_hyper.get(flag, 0):
            out.append(name)
    return tuple(out)


# ---------------------------------------------------------------------------
# SGD: plain, heavy-ball momentum, Nesterov, perturbed (noise), and SGLD.
# torch.optim.SGD:  g <- -g if maximize;  g <- g + wd*p;
#   b <- g at the first step, else momentum*b + (1 - dampening)*g;
#   g <- g + momentum*b if nesterov else b;   p <- p - lr*g
# Perturbed SGD / SGLD add sigma*z with z ~ N(0, 1).
# ---------------------------------------------------------------------------


def sgd_rule(p, g, momentum_buffer, lr, momentum, keep, weight_decay,
             nesterov, maximize, first, sigma, z):
    if momentum != 0:
        if first:
            momentum_buffer = g
        else:
            momentum_buffer = momentum * momentum_buffer + keep * g
        if nesterov:
            g = g + momentum * momentum_buffer
        else:
            g = momentum_buffer
    p = p - lr * g + sigma * z
    return p, momentum_buffer


def sgd_prepare(step, scalars, lr, momentum, dampening, weight_decay,
                nesterov, maximize, noise):
    first = 1.0 if step == 1 else 0.0
    return ((lr, momentum, 1.0 - dampening, weight_decay, nesterov, maximize,
             first, noise), scalars)


register(RuleSpec(
    name="sgd", rule=sgd_rule, prepare=sgd_prepare,
    prologue=("maximize", "weight_decay"),
    states=("momentum_buffer?momentum",),
    kernel_hyper=("lr", "momentum", "keep", "weight_decay", "nesterov",
                  "maximize", "first", "sigma"),
    user_hyper=("lr", "momentum", "dampening", "weight_decay", "nesterov",
                "maximize", "noise"),
    scalar_states=(),
    options=(real("lr", 1e-3, lo=0.0), real("momentum", 0.0, lo=0.0), real("dampening", 0.0),
             real("weight_decay", 0.0, lo=0.0), flag("nesterov"), flag("maximize"),
             real("noise", 0.0, lo=0.0)),
    classes=(OptimizerClass("SGD"),),
    estimator_names=(EstimatorName("sgd", "SGD", 0.05),
                     EstimatorName("momentum", "SGD", 0.01, {"momentum": 0.9}),
                     EstimatorName("nesterov", "SGD", 0.01, {"momentum": 0.9, "nesterov": True})),
    requires=(Requires(lambda o: not o["nesterov"] or (o["momentum"] > 0 and o["dampening"] == 0),
                       "nesterov=True requires momentum > 0 and dampening == 0 "
                       "(as torch.optim.SGD)"),),
    noise="noise",
    zero_grad_identity=lambda u: u["momentum"] == 0 and u["weight_decay"] == 0 and u["noise"] == 0,
))


def sgld_prepare(step, scalars, lr, noise_scale, weight_decay, maximize):
    # Langevin dynamics discretised with step lr: p <- p - lr*g + sqrt(2*lr)*z
    # (temperature noise_scale**2).  It is SGD without momentum plus noise.
    sigma = noise_scale * math.sqrt(2.0 * lr)
    return ((lr, 0.0, 1.0, weight_decay, 0.0, maximize, 0.0, sigma), scalars)


register(RuleSpec(
    name="sgld", rule=sgd_rule, prepare=sgld_prepare,
    prologue=("maximize", "weight_decay"),
    states=("momentum_buffer?momentum",),  # never allocated: SGLD has no momentum
    kernel_hyper=("lr", "momentum", "keep", "weight_decay", "nesterov",
                  "maximize", "first", "sigma"),
    user_hyper=("lr", "noise_scale", "weight_decay", "maximize"),
    scalar_states=(),
    options=(real("lr", REQUIRED, lo=0.0), real("noise_scale", 1.0, lo=0.0),
             real("weight_decay", 0.0, lo=0.0), flag("maximize")),
    classes=(OptimizerClass("SGLD"),),
    estimator_names=(EstimatorName("sgld", "SGLD", 0.02),),
    noise="noise_scale",
))


# ---------------------------------------------------------------------------
# Adagrad.  torch.optim.Adagrad:
#   clr = lr / (1 + (t-1)*lr_decay);  sum <- sum + g^2;
#   p <- p - clr * g / (sqrt(sum) + eps)
# ---------------------------------------------------------------------------


def adagrad_rule(p, g, state_sum, clr, weight_decay, eps, maximize, z):
    state_sum = state_sum + g * g
    p = p - clr * g / (math.sqrt(state_sum) + eps)
    return p, state_sum


def adagrad_prepare(step, scalars, lr, lr_decay, weight_decay, eps, maximize):
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return (clr, weight_decay, eps, maximize), scalars


register(RuleSpec(
    name="adagrad", rule=adagrad_rule, prepare=adagrad_prepare,
    prologue=("maximize", "weight_decay"),
    states=("sum",),
    kernel_hyper=("clr", "weight_decay", "eps", "maximize"),
    user_hyper=("lr", "lr_decay", "weight_decay", "eps", "maximize"),
    scalar_states=(),
    options=(real("lr", 1e-2, lo=0.0), real("lr_decay", 0.0, lo=0.0),
             real("weight_decay", 0.0, lo=0.0),
             real("initial_accumulator_value", 0.0, lo=0.0, init_state="sum"),
             real("eps", 1e-10, lo=0.0, lo_open=True), flag("maximize")),
    classes=(OptimizerClass("Adagrad"),),
    estimator_names=(EstimatorName("adagrad", "Adagrad", 0.1),),
    zero_grad_identity=lambda u: u["weight_decay"] == 0,
))


# ---------------------------------------------------------------------------
# RMSprop.  torch.optim.RMSprop:
#   v <- alpha*v + (1-alpha)*g^2
#   centered: ga <- alpha*ga + (1-alpha)*g;  denom = sqrt(v - ga^2) + eps
#   else denom = sqrt(v) + eps
#   momentum > 0: b <- momentum*b + g/denom; p <- p - lr*b
#   else p <- p - lr*g/denom
# ---------------------------------------------------------------------------


def rmsprop_rule(p, g, square_avg, grad_avg, momentum_buffer, lr, alpha, one_minus_alpha,
                 eps, weight_decay, momentum, centered, maximize, z):
    square_avg = alpha * square_avg + one_minus_alpha * g * g
    if centered:
        grad_avg = alpha * grad_avg + one_minus_alpha * g
        denom = math.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        denom = math.sqrt(square_avg) + eps
    if momentum > 0:
        momentum_buffer = momentum * momentum_buffer + g / denom
        p = p - lr * momentum_buffer
    else:
        p = p - lr * g / denom
    return p, square_avg, grad_avg, momentum_buffer


def rmsprop_prepare(step, scalars, lr, alpha, eps, weight_decay, momentum,
                    centered, maximize):
    return (lr, alpha, 1.0 - alpha, eps, weight_decay, momentum, centered,
            maximize), scalars


register(RuleSpec(
    name="rmsprop", rule=rmsprop_rule, prepare=rmsprop_prepare,
    prologue=("maximize", "weight_decay"),
    states=("square_avg", "grad_avg?centered", "momentum_buffer?momentum"),
    kernel_hyper=("lr", "alpha", "one_minus_alpha", "eps", "weight_decay", "momentum",
                  "centered", "maximize"),
    user_hyper=("lr", "alpha", "eps", "weight_decay", "momentum", "centered",
                "maximize"),
    scalar_states=(),
    options=(real("lr", 1e-2, lo=0.0), real("alpha", 0.99, lo=0.0, hi=1.0),
             real("eps", 1e-8, lo=0.0, lo_open=True), real("weight_decay", 0.0, lo=0.0),
             real("momentum", 0.0, lo=0.0), flag("centered"), flag("maximize")),
    classes=(OptimizerClass("RMSprop"),),
    estimator_names=(EstimatorName("rmsprop", "RMSprop", 0.01),),
))


# ---------------------------------------------------------------------------
# Adadelta.  torch.optim.Adadelta (eps inside the square roots):
#   v <- rho*v + (1-rho)*g^2;  delta = sqrt(u + eps)/sqrt(v + eps) * g
#   u <- rho*u + (1-rho)*delta^2;  p <- p - lr*delta
# ---------------------------------------------------------------------------


def adadelta_rule(p, g, square_avg, acc_delta, lr, rho, one_minus_rho, eps,
                  weight_decay, maximize, z):
    square_avg = rho * square_avg + one_minus_rho * g * g
    delta = math.sqrt(acc_delta + eps) / math.sqrt(square_avg + eps) * g
    acc_delta = rho * acc_delta + one_minus_rho * delta * delta
    p = p - lr * delta
    return p, square_avg, acc_delta


def adadelta_prepare(step, scalars, lr, rho, eps, weight_decay, maximize):
    return (lr, rho, 1.0 - rho, eps, weight_decay, maximize), scalars


register(RuleSpec(
    name="adadelta", rule=adadelta_rule, prepare=adadelta_prepare,
    prologue=("maximize", "weight_decay"),
    states=("square_avg", "acc_delta"),
    kernel_hyper=("lr", "rho", "one_minus_rho", "eps", "weight_decay", "maximize"),
    user_hyper=("lr", "rho", "eps", "weight_decay", "maximize"),
    scalar_states=(),
    options=(real("lr", 1.0, lo=0.0), real("rho", 0.9, lo=0.0, hi=1.0),
             real("eps", 1e-6, lo=0.0, lo_open=True), real("weight_decay", 0.0, lo=0.0),
             flag("maximize")),
    classes=(OptimizerClass("Adadelta"),),
    estimator_names=(EstimatorName("adadelta", "Adadelta", 1.0),),
))


# ---------------------------------------------------------------------------
# Adam and AdamW.  torch.optim.Adam / AdamW:
#   AdamW: p <- p*(1 - lr*wd) (decoupled); Adam: g <- g + wd*p
#   m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2
#   amsgrad: vmax <- max(vmax, v), use vmax for v
#   p <- p - (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
#   with bc1 = 1 - b1^t, bc2 = 1 - b2^t (both 1 when bias_correction=False)
# ---------------------------------------------------------------------------


def adam_rule(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, beta1,
              beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay,
              decay_factor, bc2_sqrt, amsgrad, maximize, z):
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    if amsgrad:
        max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)
        denom = math.sqrt(max_exp_avg_sq) / bc2_sqrt + eps
    else:
        denom = math.sqrt(exp_avg_sq) / bc2_sqrt + eps
    p = p - step_size * exp_avg / denom
    return p, exp_avg, exp_avg_sq, max_exp_avg_sq


def adam_prepare(step, scalars, lr, beta1, beta2, eps, weight_decay, amsgrad,
                 maximize, bias_correction, decoupled):
    if bias_correction:
        bc1 = 1.0 - beta1 ** step
        bc2 = 1.0 - beta2 ** step
    else:
        bc1 = 1.0
        bc2 = 1.0
    # (decay_factor, and weight_decay 0 when decoupled: the declared prologue)
    return ((lr / bc1, beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps, weight_decay,
             math.sqrt(bc2), amsgrad, maximize), scalars)


_ADAM_KERNEL_HYPER = ("step_size", "beta1", "beta2", "one_minus_beta1",
                      "one_minus_beta2", "eps", "weight_decay", "decay_factor",
                      "bc2_sqrt", "amsgrad", "maximize")

register(RuleSpec(
    name="adam", rule=adam_rule, prepare=adam_prepare,
    prologue=("maximize", "decoupled_weight_decay", "weight_decay"),
    states=("exp_avg", "exp_avg_sq", "max_exp_avg_sq?amsgrad"),
    kernel_hyper=_ADAM_KERNEL_HYPER,
    user_hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad",
                "maximize", "bias_correction", "decoupled"),
    scalar_states=(),
    options=(real("lr", 1e-3, lo=0.0), unit_pair("betas", (0.9, 0.999), ("beta1", "beta2")),
             real("eps", 1e-8, lo=0.0, lo_open=True), real("weight_decay", 0.0, lo=0.0),
             flag("amsgrad"), flag("maximize"), flag("bias_correction", True),
             flag("decoupled_weight_decay", into=("decoupled",))),
    classes=(OptimizerClass("Adam"),
             OptimizerClass("AdamW", defaults={"weight_decay": 1e-2},
                            fixed={"decoupled_weight_decay": True})),
    estimator_names=(EstimatorName("adam", "Adam", 0.01),
                     EstimatorName("adamw", "AdamW", 0.01, {"weight_decay": 0.0})),
))


# ---------------------------------------------------------------------------
# Adamax.  torch.optim.Adamax:
#   m <- b1*m + (1-b1)*g;  u <- max(b2*u, |g| + eps)
#   p <- p - lr/(1 - b1^t) * m / u
# ---------------------------------------------------------------------------


def adamax_rule(p, g, exp_avg, exp_inf, clr, beta1, one_minus_beta1, beta2, eps,
                weight_decay, maximize, z):
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_inf = max(beta2 * exp_inf, abs(g) + eps)
    p = p - clr * exp_avg / exp_inf
    return p, exp_avg, exp_inf


def adamax_prepare(step, scalars, lr, beta1, beta2, eps, weight_decay,
                   maximize):
    clr = lr / (1.0 - beta1 ** step)
    return (clr, beta1, 1.0 - beta1, beta2, eps, weight_decay, maximize), scalars


register(RuleSpec(
    name="adamax", rule=adamax_rule, prepare=adamax_prepare,
    prologue=("maximize", "weight_decay"),
    states=("exp_avg", "exp_inf"),
    kernel_hyper=("clr", "beta1", "one_minus_beta1", "beta2", "eps", "weight_decay",
                  "maximize"),
    user_hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "maximize"),
    scalar_states=(),
    options=(real("lr", 2e-3, lo=0.0), unit_pair("betas", (0.9, 0.999), ("beta1", "beta2")),
             real("eps", 1e-8, lo=0.0, lo_open=True), real("weight_decay", 0.0, lo=0.0),
             flag("maximize")),
    classes=(OptimizerClass("Adamax"),),
    estimator_names=(EstimatorName("adamax", "Adamax", 0.02),),
))


# ---------------------------------------------------------------------------
# NAdam.  torch.optim.NAdam (Dozat's momentum schedule):
#   mu_t = b1*(1 - 0.5*0.96^(t*psi)),  mu_{t+1} likewise,  prod <- prod*mu_t
#   m, v as Adam;  denom = sqrt(v/bc2) + eps
#   p <- p - lr*(1-mu_t)/(1-prod) * g/denom
#          - lr*mu_{t+1}/(1 - prod*mu_{t+1}) * m/denom
# ---------------------------------------------------------------------------


def nadam_rule(p, g, exp_avg, exp_avg_sq, grad_coef, avg_coef, beta1, beta2,
               one_minus_beta1, one_minus_beta2, eps, weight_decay, decay_factor, bc2,
               maximize, z):
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    denom = math.sqrt(exp_avg_sq / bc2) + eps
    p = p - grad_coef * g / denom - avg_coef * exp_avg / denom
    return p, exp_avg, exp_avg_sq


def nadam_prepare(step, scalars, lr, beta1, beta2, eps, weight_decay,
                  momentum_decay, maximize, decoupled):
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    mu_product = scalars[0] * mu
    bc2 = 1.0 - beta2 ** step
    grad_coef = lr * (1.0 - mu) / (1.0 - mu_product)
    avg_coef = lr * mu_next / (1.0 - mu_product * mu_next)
    return ((grad_coef, avg_coef, beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps,
             weight_decay, bc2, maximize), (mu_product,))


register(RuleSpec(
    name="nadam", rule=nadam_rule, prepare=nadam_prepare,
    prologue=("maximize", "decoupled_weight_decay", "weight_decay"),
    states=("exp_avg", "exp_avg_sq"),
    kernel_hyper=("grad_coef", "avg_coef", "beta1", "beta2", "one_minus_beta1",
                  "one_minus_beta2", "eps", "weight_decay", "decay_factor", "bc2",
                  "maximize"),
    user_hyper=("lr", "beta1", "beta2", "eps", "weight_decay",
                "momentum_decay", "maximize", "decoupled"),
    scalar_states=(("mu_product", 1.0),),
    options=(real("lr", 2e-3, lo=0.0), unit_pair("betas", (0.9, 0.999), ("beta1", "beta2")),
             real("eps", 1e-8, lo=0.0, lo_open=True), real("weight_decay", 0.0, lo=0.0),
             real("momentum_decay", 4e-3, lo=0.0),
             flag("decoupled_weight_decay", into=("decoupled",)), flag("maximize")),
    classes=(OptimizerClass("NAdam"),),
    estimator_names=(EstimatorName("nadam", "NAdam", 0.01),),
))


# ---------------------------------------------------------------------------
# RAdam.  torch.optim.RAdam:
#   rho_inf = 2/(1-b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
#   rho_t > 5: p <- p - lr * m/bc1 * rect * sqrt(bc2)/(sqrt(v) + eps)
#   else:      p <- p - lr * m/bc1
# ---------------------------------------------------------------------------


def radam_rule(p, g, exp_avg, exp_avg_sq, step_size, beta1, beta2, one_minus_beta1,
               one_minus_beta2, eps, weight_decay, decay_factor, adaptive, bc2_sqrt,
               maximize, z):
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    if adaptive:
        p = p - step_size * exp_avg * (bc2_sqrt / (math.sqrt(exp_avg_sq) + eps))
    else:
        p = p - step_size * exp_avg
    return p, exp_avg, exp_avg_sq


def radam_prepare(step, scalars, lr, beta1, beta2, eps, weight_decay,
                  maximize, decoupled):
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * (beta2 ** step) / bc2
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                         / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        adaptive = 1.0
    else:
        rect = 1.0
        adaptive = 0.0
    return ((lr * rect / bc1, beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps, weight_decay,
             adaptive, math.sqrt(bc2), maximize), scalars)


register(RuleSpec(
    name="radam", rule=radam_rule, prepare=radam_prepare,
    prologue=("maximize", "decoupled_weight_decay", "weight_decay"),
    states=("exp_avg", "exp_avg_sq"),
    kernel_hyper=("step_size", "beta1", "beta2", "one_minus_beta1", "one_minus_beta2",
                  "eps", "weight_decay", "decay_factor", "adaptive", "bc2_sqrt",
                  "maximize"),
    user_hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "maximize",
                "decoupled"),
    scalar_states=(),
    options=(real("lr", 1e-3, lo=0.0), unit_pair("betas", (0.9, 0.999), ("beta1", "beta2")),
             real("eps", 1e-8, lo=0.0, lo_open=True), real("weight_decay", 0.0, lo=0.0),
             flag("decoupled_weight_decay", into=("decoupled",)), flag("maximize")),
    classes=(OptimizerClass("RAdam"),),
    estimator_names=(EstimatorName("radam", "RAdam", 0.01),),
))


# ---------------------------------------------------------------------------
# FTRL-Proximal (McMahan et al., "Ad Click Prediction: a View from the
# Trenches", KDD 2013, Algorithm 1), per coordinate, with n = accumulator and
# z = linear, alpha = lr and the paper's square root generalised by lr_power
# (-0.5 is the paper):
#   sigma = (n_new^(-lr_power) - n^(-lr_power)) / lr,   n_new = n + g^2
#   z <- z + g - sigma * w;   n <- n_new
#   w = 0                                           if |z| <= l1
#     = -(z - sign(z) l1) / ((beta + n^(-lr_power)) / lr + l2)   otherwise
# The paper updates only the coordinates of the example's nonzero features;
# here a zero gradient leaves the coordinate (w, z, n) as it is, which is the
# same for those coordinates, and makes a lazy sparse step, the exact one and
# the dense one coincide.  The weights are recomputed right after each update
# (the paper recomputes them at the start of the next round: the same numbers
# while lr and l1/l2 stay the same).  TF's l2 is half the paper's.
# ``l1_per_step``/``l2_per_step`` add step*l1_per_step to l1 (and so for l2):
# the penalty of a composite objective sum_s (f_s(w) + r(w)), as regularized
# dual averaging applies it; the estimators map their ``alpha`` onto them.
# ---------------------------------------------------------------------------


def ftrl_rule(p, g, linear, accumulator, lr, lr_power, beta, l1, l2, z):
    if g != 0:
        n_new = accumulator + g * g
        if lr_power == -0.5:
            root_new = math.sqrt(n_new)
            sigma = (root_new - math.sqrt(accumulator)) / lr
        else:
            root_new = n_new ** (-lr_power)
            sigma = (root_new - accumulator ** (-lr_power)) / lr
        linear = linear + g - sigma * p
        accumulator = n_new
        if abs(linear) <= l1:
            p = l1 - l1  # an exact zero of the parameter's type
        else:
            shrunk = linear - l1 if linear > 0 else linear + l1
            p = -shrunk / ((beta + root_new) / lr + l2)
    return p, linear, accumulator


def ftrl_prepare(step, scalars, lr, lr_power, beta, l1, l2, l1_per_step, l2_per_step):
    return (lr, lr_power, beta, l1 + l1_per_step * step, l2 + l2_per_step * step), scalars


register(RuleSpec(
    name="ftrl", rule=ftrl_rule, prepare=ftrl_prepare,
    states=("linear", "accumulator"),
    kernel_hyper=("lr", "lr_power", "beta", "l1", "l2"),
    user_hyper=("lr", "lr_power", "beta", "l1", "l2", "l1_per_step", "l2_per_step"),
    scalar_states=(),
    options=(real("lr", 0.1, lo=0.0, lo_open=True), real("lr_power", -0.5, hi=0.0),
             real("beta", 1.0, lo=0.0), real("l1", 0.0, lo=0.0), real("l2", 0.0, lo=0.0),
             real("initial_accumulator_value", 0.0, lo=0.0, init_state="accumulator"),
             real("l1_per_step", 0.0, lo=0.0, keyword_only=True),
             real("l2_per_step", 0.0, lo=0.0, keyword_only=True)),
    classes=(OptimizerClass("FTRL"),),
    estimator_names=(EstimatorName("ftrl", "FTRL", 0.1),),
    zero_grad_identity=lambda u: True,
))


def _end_of_loading():
    """From here on this module's rules with a prologue are reached through
    ``__getattr__`` (their function that runs is built on first use), and a
    rule registered at run time is built at once."""
    global _LOADING
    for name in list(_PENDING) + list(_PENDING_PREPARES):
        del globals()[name]
    _LOADING = False


_end_of_loading()
