"""Row rules across rows: the lane form of a loss rule, generated from its text.

A row rule (``loss_rules.py``) works on one row of k scores; its loops run
over the k outputs.  With k = 10 those loops are shorter than the vectors the
compiler turns them into, so they run scalar: the softmax rule took 5.2-5.8
ns per score (float32), its 10 ``exp`` calls most of it, a fifth of the
fused dense kernel at (4096, 784, 10) and two fifths of the CSR one.  The
lane form runs the same statements for a block of rows at once, each
statement inside a loop over the block's rows (the lanes), so they become
vector code whatever k is::

    rule(z, y, epsilon, dz) -> loss                    (one row)
    rule_lanes(ZT, Y, epsilon, DT, LOSS, n, S, SI)     (rows 0..n-1 of a block)

``ZT``/``DT`` are the block's scores and derivatives transposed, (k, R) with
row r in column r; ``Y`` the block's labels; ``LOSS[r]`` receives row r's
loss; ``S`` (the data's dtype) and ``SI`` (int64), each (slots, R), hold the
rule's local variables, one slot per name (``lane_slots``).  Locals follow
the rules' convention (as the Cython twin types them): names starting with
``j`` are integer indices, every other local is a real of the data's dtype;
``math.exp`` and ``math.log`` become ``_helpers.exp_fast`` and
``log_fast``, which vectorise (libm's are a call per lane).  Results agree
with the row form to rounding, not bit for bit (the row form lets Numba
carry some locals in float64).

The rule language (what a rule may contain, for every target) is described
once, in kernels/rulelang/__init__.py and docs/rules.md; the emitter is
kernels/rulelang/lanes.py.  What the lane form adds: a loop's bounds may not
depend on the row, and inside an ``if`` whose condition does, only
assignments and further ``if``.  With ``returns=True`` (the dense epoch's
fused pass) a ``return`` inside an ``if`` is taken when the statements after
that ``if`` can become its ``else`` ("if c: ...; return a" followed by more
statements is the same as "if c: ...; return a / else: <the rest>"), so
every path ends in its own ``return`` (multiclass_hinge).  Anything else
raises ``NotLaneable``, and the kernels keep calling the row form.

Scalar rules (``rule(z, y, epsilon) -> (loss, derivative)``, one output)
get a lane form too (``scalar_lane_source``): the same signature as a row
rule's lane form, with ``Y`` the block's targets in lane form, (k, R) like
``ZT``; each output's loss is added into ``LOSS[r]``, its derivative goes to
``DT[j, r]``; ``math.log1p`` becomes ``log1p_lanes`` (kernels/epoch_drivers.py,
which vectorises), so the module needs that name too.

The drivers take a lane form through ``lane_form`` (source and slots at once,
None for a refusal), which keeps what it built on disk beside the generated
modules: a process whose generated modules are warm imports neither the
emitters nor the front end (``lane_source`` and the others build every time).
"""

# The emitters (kernels/rulelang/lanes.py, with the front end and the tables)
# are imported when a lane form is built, not when this module is: the
# drivers import it on every fit, and a process whose generated modules are
# warm reads the lane forms they need from the cache (``lane_form``).
if __package__:
    from . import _files as _files_mod

    def _emitters():
        from .rulelang import lanes
        return lanes
else:  # loaded by path (the Cython generators at build time): kernels/_files.py finds it
    import os as _os
    import runpy as _runpy
    import types as _types

    _files_mod = _types.SimpleNamespace(**_runpy.run_path(
        _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "_files.py")))

    def _emitters():
        return _files_mod.rulelang().lanes

# this module's names for the emitters' classes (NotLaneable, the translators)
_LAZY = {"NotLaneable": "NotLaneable", "_Translator": "LaneEmitter",
         "_ScalarTranslator": "ScalarLaneEmitter"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(_emitters(), _LAZY[name])
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def scalar_lane_source(rule, name):
    """Source of the lane form of the scalar rule ``rule`` (module docstring),
    as a function ``name``; raises NotLaneable."""
    return _emitters().ScalarLaneEmitter(rule).source(name)


def scalar_lane_slots(rule):
    """(real slots, integer slots) of a scalar rule's lane form."""
    t = _emitters().ScalarLaneEmitter(rule)
    return len(t.real), len(t.ints)


def lane_source(rule, name, returns=False):
    """Source of the lane form of the row rule ``rule``, as a function ``name``
    (its module needs ``math``, ``exp_fast`` and ``log_fast``); raises
    NotLaneable.  ``returns``: take returns inside row-dependent branches
    (``_returns_to_else``; the dense epoch's fused pass does, the loss
    kernels of loss_drivers.py keep the row form of such rules)."""
    return _emitters().LaneEmitter(rule, returns).source(name)


def lane_slots(rule, returns=False):
    """(real slots, integer slots) of the lane form's ``S`` and ``SI``."""
    t = _emitters().LaneEmitter(rule, returns)
    return len(t.real), len(t.ints)


# --------------------------------------------------------------------------
# The lane forms the drivers use, cached on disk beside the generated modules
# (``drivers.generated_dir()``): a generated module's text is made again in
# every process that loads it (kernels/_files.py ``load_generated`` compares
# it with the file), and building a lane form loads the front end (parse,
# check) and the emitters, ~5-10 ms of imports a warm fit does not need.  A
# file holds one lane form (or the translator's refusal) under a key naming
# everything it was built from (``_form_key``); a missing, stale or damaged
# file, a rule whose source file cannot be read, or a directory that cannot
# be written means building it as before.
# --------------------------------------------------------------------------

_FORM_TAG = "optkern-lane-form"


def _form_key(rule, name, returns, scalar):
    """The digest of the lane form's sources (this module, the rule language's
    files, the rule's own file) and of what names the form (the rule's place
    in its file, the function's name, ``returns``, ``scalar``); raises
    OSError/ValueError when a source cannot be read."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    code = rule.__code__
    files = [os.path.abspath(__file__), os.path.abspath(code.co_filename)]
    files += _files_mod.rulelang_files()
    extra = "\0".join([_FORM_TAG, rule.__qualname__, code.co_filename,
                        str(code.co_firstlineno), name, repr(bool(returns)),
                        repr(bool(scalar))])
    return _files_mod.source_digest(files, here, extra, follow_imports=False)


def _form_file(rule, name, returns, scalar):
    import os
    from . import drivers
    kind = "scalar" if scalar else "returns" if returns else "row"
    return os.path.join(drivers.generated_dir(),
                        f"optkern_lanes_{rule.__name__}_{name}_{kind}.json")


def _valid_form(form):
    return form is None or (isinstance(form, list) and len(form) == 3
                            and isinstance(form[0], str) and isinstance(form[1], int)
                            and isinstance(form[2], int))


def lane_form(rule, name, returns=False, scalar=False):
    """(source, real slots, integer slots) of the lane form of ``rule`` as a
    function ``name`` (``scalar``: a scalar rule's, ``scalar_lane_source``;
    otherwise a row rule's, ``lane_source`` with ``returns``), or None when
    the translator refuses the rule (NotLaneable).  Read from the cache when
    it holds it: then the front end and the emitters are not imported."""
    def build():
        lanes = _emitters()
        try:
            t = lanes.ScalarLaneEmitter(rule) if scalar else lanes.LaneEmitter(rule, returns)
            return [t.source(name), len(t.real), len(t.ints)]
        except lanes.NotLaneable:
            return None

    try:
        if not __package__:    # loaded by path at build time: nothing cached
            raise ValueError
        where = _form_file(rule, name, returns, scalar), _form_key(rule, name, returns, scalar)
    except (OSError, ValueError, TypeError):    # a rule whose source cannot be read
        form = build()
    else:
        form = _files_mod.cached_json(*where, build, _valid_form)
    return None if form is None else tuple(form)
