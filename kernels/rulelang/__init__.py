"""The rule language: one front end, one emitter per target.

A *rule* is a small Python function written once (kernels/rules.py: an
optimizer's elementwise update and its ``prepare``; kernels/loss_rules.py: a
loss; kernels/schedule_rules.py: the learning-rate schedule) and translated
from its text (``inspect.getsource`` + ``ast``) into every target.  This is
the one description of what a rule may contain; docs/rules.md is the short
version.

Kinds of rule (``frontend.check(rule, kind)``)
    ``update``  ``rule(p, g, <states>, <kernel hyper>, z) -> (p, <states>)``
    ``scalar``  ``rule(z, y, epsilon) -> (loss, derivative)``, one output
    ``row``     ``rule(z, y, epsilon, dz) -> loss``, one row of k scores
    ``host``    ``prepare(step, scalars, lr, ...)`` and ``schedule_factor``
    ``epoch``   the minibatch epoch (kernels/epoch_rules.py): a host function
                with ``for``/``while`` loops, ``continue``, early returns and
                calls of the primitives each target binds (epoch.py)

Statements
    assignment to a local (``x = e``; tuple ``a, b = e1, e2``), augmented
    assignment with ``+ - * /``; ``if``/``elif``/``else``; ``return``;
    ``pass``; a docstring.  Row rules also: assignment to ``dz[i]`` and
    ``for j in range(stop)`` / ``range(start, stop)``.

Expressions
    numbers (int, float, True/False); the rule's parameters and locals
    (host functions also the module's numeric constants and ``math.pi``,
    ``math.e``); ``+ - * / **``, unary ``-``/``+``/``not``; comparisons
    ``< <= > >= == !=`` (chained too); ``and``/``or``; ``a if c else b``;
    row rules: ``z[i]``, ``dz[i]``, ``z.shape[0]`` (the row length ``k``);
    host functions: ``scalars[0]`` (a parameter indexed by a constant).

Functions, in every target
    ``sign(x)``  (or ``np.sign``; 1.0 if x > 0, -1.0 if x < 0, else x: a zero
    keeps its sign, NaN stays NaN -- NumPy's ``sign``; the rule's module binds
    ``sign`` to ``numpy.sign`` so Python and Numba run it as written),
    ``math.floor``, ``math.log1p``, ``math.exp``, ``math.log``, ``math.sqrt``,
    ``abs`` (or ``math.fabs``), ``min``, ``max`` (two or more arguments,
    Python's rule: the first of equal or unordered values; the Numba vector
    form of a row rule computes a two-float ``max`` as ``llvm.maxnum``,
    which skips a NaN first argument: docs/rules.md).  Host functions
    may also call ``math.cos``, ``math.sin``, ``math.ceil`` and ``float``.

Types
    In update and loss rules every value is a real of the data's dtype,
    except locals whose names start with ``j`` in loss rules: those are
    integer indices (``frontend.is_index``).  In host functions values are
    C doubles except integer ones (the step, integer constants, sums and
    products of integers, ``math.floor``/``math.ceil``), so ``x ** n`` with an
    integer ``n`` is Numba's binary exponentiation.

The prologue of an update rule
    A registry entry declares what torch.optim does to the gradient before
    the method's own step (``RuleSpec.prologue``: "maximize",
    "decoupled_weight_decay", "weight_decay", in that order); ``Rule`` puts
    their statements (``prologue.PROLOGUE``) in front of the rule's body, so
    every emitter translates them and the rule holds only its core update.
    An item may also compute its kernel hyperparameter on the host
    (``PROLOGUE[item].prepare``: AdamW's decay factor, and the coupled
    weight decay 0 when decoupled): ``prepare_with_prologue`` puts those
    statements in front of the rule's ``prepare`` and the value in its place
    of ``kernel_hyper`` in the prepare's return, for Python, Numba and the C
    twin alike.
    ``with_prologue`` compiles the same tree into the Python function that
    runs in place of the rule (what Numba and Python call; ``rules`` builds
    it on a rule's first use); ``check_prologue`` is ``register``'s check of
    the declaration (prologue.py, which imports nothing, so registering the
    rules on ``import optkern`` loads no front end).

Anything else raises ``RuleError`` (a ValueError) naming the rule, the line
and the construct.  A target may refuse a construct of the language that it
cannot place (the lane form: a loop inside a row-dependent ``if``); it then
raises a subclass (``lanes.NotLaneable``) and its caller falls back.

Emitters, each driven by the tables in ``tables.py`` (operators, and which
name each function becomes on each target)
    ``lanes.LaneEmitter``/``ScalarLaneEmitter``  Numba lane form (rule_lanes.py)
    ``cython.UpdateEmitter``   update rule -> Cython, float and double
    ``cython.loss_to_cython``  loss rule -> Cython over ``floating``
    ``c.HostEmitter``          prepare/schedule -> Cython C code (doubles)
    ``c.LaneToC``              the lane form's Python text -> C (SIMD epoch),
                               through the host emitters' CythonSyntax and C_SYNTAX
    ``epoch.numba_text``       the epoch -> the body of the Numba epoch
    ``epoch.CythonEpochEmitter``  the epoch -> the loop of the Cython epoch

The package imports neither numba nor optkern: the Cython generators load it
by file path at build time.
"""

__all__ = ["FUNCTIONS", "PROLOGUE", "Rule", "RuleError", "c", "check", "check_prologue",
           "cython", "epoch", "function_of", "is_index", "lanes", "parse", "prepare_with_prologue",
           "source_text", "with_prologue", "written_of"]

# where each name lives; a module is imported when one of its names is first
# used: kernels/rules.py imports this package for the prologue's declaration
# (prologue.py, errors.py) on every ``import optkern``, and the front end and
# the emitters are needed only when a rule is translated
_HOME = {"FUNCTIONS": "tables", "PROLOGUE": "prologue", "check_prologue": "prologue",
         "RuleError": "errors", "Rule": "frontend", "check": "frontend",
         "function_of": "frontend", "is_index": "frontend", "parse": "frontend",
         "source_text": "frontend", "with_prologue": "frontend",
         "prepare_with_prologue": "frontend", "written_of": "frontend"}
_MODULES = ("c", "cython", "epoch", "lanes", "frontend", "tables", "prologue", "errors")


def __getattr__(name):
    import importlib
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
