"""Row-indexed update kernels: the rule applied to given rows of a 2-D parameter.

For every rule in ``rules.RULES`` this module writes one small source file
(kernels/templates/rows.py filled; the mechanism and reasons of
``drivers.py``) holding

``rows_serial(p, g, rows, k, <states>, avg, hyper, avg_weight, key, offset)``
    ``p`` and the states are the flat (d*k) arrays of a C-contiguous (d, k)
    parameter, ``g`` the (r, k) gradient of rows ``rows``: element
    ``rows[u]*k + j`` gets the rule with ``g[u, j]``; the rest is untouched
    ("lazy", kernels/sparse_rules.py).  Noise draws use the element's flat
    index, so they are the draws a dense step gives those elements.
``functional(param, grad, rows, <states>, step, <user hyperparameters>, ...)``
    exported as ``optkern.kernels.<name>_rows``: ``prepare`` then the loop.
``make_cuda_kernel()``
    the grid-stride CUDA twin (one thread per element of the given rows).

The optimizer classes' ``step(grads, rows=...)`` call these.
"""

from . import _files
from . import drivers as _drivers
from . import rules as _rules
from . import templates as _templates


def _source(spec):
    """The text of rule ``spec``'s row-kernel module: templates/rows.py filled."""
    states = _rules.state_names(spec)
    hyper = spec.kernel_hyper
    return _templates.fill("rows", dict(
        name=spec.name, name_repr=repr(spec.name),
        digest=_drivers.digest(__file__, "rows"),
        rule_import=(f"from optkern.kernels.rules import {spec.rule.__name__} as _rule_py, "
                     f"{spec.prepare.__name__} as _prepare_py"),
        state_args=", ".join(states),
        state_outs=", ".join(f"{s}_i" for s in states),
        state_loads=", ".join(f"load({s}, i, dt(0.0))" for s in states),
        state_loads_cuda=", ".join(f"load({s}, i, zero)" for s in states),
        state_stores="\n".join(f"store({s}, i, {s}_i)" for s in states),
        state_flat=", ".join(f"None if {s} is None else {s}.reshape(n)" for s in states),
        state_specs=", ".join(spec.states),
        unpack="\n".join(f"{h} = dt(hyper[{j}])" for j, h in enumerate(hyper)),
        unpack_cuda="\n".join(f"{h} = hyper[{j}]" for j, h in enumerate(hyper)),
        hyper_args=", ".join(hyper), user_args=", ".join(spec.user_hyper),
        scalar_default=repr(tuple(v for _, v in spec.scalar_states))))


_MODULES = {}
_CUDA = {}


def module_for(name):
    """Import (generating if needed) the row-kernel module of rule ``name``."""
    return _files.load_generated(
        _MODULES, name, _drivers.generated_dir, f"optkern_{name}_rows.py",
        f"optkern.kernels._generated_{name}_rows", lambda: _source(_rules.RULES[name]))


def cuda_kernel(name):
    kern = _CUDA.get(name)
    if kern is None:
        kern = _CUDA[name] = module_for(name).make_cuda_kernel()
    return kern
