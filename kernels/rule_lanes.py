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
"""

if __package__:
    from .rulelang import lanes as _lanes
else:  # loaded by path (the Cython generators at build time): kernels/_files.py finds it
    import os as _os
    import runpy as _runpy

    _files = _runpy.run_path(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)),
                                           "_files.py"))
    _lanes = _files["rulelang"]().lanes

NotLaneable = _lanes.NotLaneable
_Translator = _lanes.LaneEmitter
_ScalarTranslator = _lanes.ScalarLaneEmitter


def scalar_lane_source(rule, name):
    """Source of the lane form of the scalar rule ``rule`` (module docstring),
    as a function ``name``; raises NotLaneable."""
    return _ScalarTranslator(rule).source(name)


def scalar_lane_slots(rule):
    """(real slots, integer slots) of a scalar rule's lane form."""
    t = _ScalarTranslator(rule)
    return len(t.real), len(t.ints)


def lane_source(rule, name, returns=False):
    """Source of the lane form of the row rule ``rule``, as a function ``name``
    (its module needs ``math``, ``exp_fast`` and ``log_fast``); raises
    NotLaneable.  ``returns``: take returns inside row-dependent branches
    (``_returns_to_else``; the dense epoch's fused pass does, the loss
    kernels of loss_drivers.py keep the row form of such rules)."""
    return _Translator(rule, returns).source(name)


def lane_slots(rule, returns=False):
    """(real slots, integer slots) of the lane form's ``S`` and ``SI``."""
    t = _Translator(rule, returns)
    return len(t.real), len(t.ints)
