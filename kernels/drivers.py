"""Generic drivers: compile each scalar rule into serial, parallel and CUDA loops.

For every rule in ``rules.RULES`` this module writes one small Python source
file (the template kernels/templates/update.py, its holes filled from the
rule's registry entry) and imports it.  The file holds:

``serial(params, grads, <states>, avg, hyper, avg_weight, key, offsets)``
    multi-tensor step: ``params`` etc. are tuples of 1-D arrays (one per
    tensor), an absent optional state is ``None``; one compiled call.
``parallel(...)``
    the same with ``prange`` over elements (updates are elementwise, so the
    result is bit-identical to ``serial``).
``serial_checked(...)``, ``parallel_checked(...)``
    the default ``check_finite=True`` step: the same arguments; a read-only
    scan of every gradient (``finite.any_nonfinite``) in front of the
    update, in the same compiled call; returns the index of the first tensor
    whose gradient holds NaN/inf (and writes nothing), else -1.
``cuda_step(...)``
    a grid-stride CUDA kernel for one tensor (lazily compiled, see below).
``functional(param, grad, <states>, step, <user hyperparameters>, ...)``
    the plain function exported as ``optkern.kernels.<name>``: runs the rule's
    ``prepare`` and the serial loop; callable from Python and from ``@njit``.

Why source files and not closures: Numba caches compiled code on disk only for
functions that live in a real file, and a closure over a jitted rule pickles
differently in every process, so it would recompile every time.  The file is
rewritten only when its text changes.  The text carries a digest of every
source behind it (``digest``: this driver, its templates, the rules and every
kernels module they import), so editing any of them gives a new file and a
recompile even though Numba itself does not track dependencies across files.
"""

import os
import tempfile

from . import _files
from . import rules as _rules
from . import templates as _templates


def digest(driver, *templates):
    """The digest of every kernels source behind a generated module: its
    ``driver`` (a path), its ``templates`` (names under kernels/templates/)
    and whatever they import (kernels/_files.py, ``source_digest``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return _files.source_digest(
        [driver, os.path.join(_templates.DIRECTORY, "__init__.py")]
        + [_templates.path(name) for name in templates], here)


def _source(spec):
    """The text of rule ``spec``'s driver module: templates/update.py filled."""
    states = _rules.state_names(spec)
    hyper = spec.kernel_hyper
    common = dict(
        state_outs=", ".join(f"{s}_i" for s in states),
        state_loads=", ".join(f"load({s}, i, zero)" for s in states),
        hyper_args=", ".join(hyper),
        state_stores="\n".join(f"store({s}, i, {s}_i)" for s in states),
    )
    elements = _templates.snippet("update_elements", "elements")

    def loop(range_fn):
        return _templates.substitute(elements, dict(
            common, range=range_fn,
            unpack="\n".join(f"{h} = dt(hyper[{j}])" for j, h in enumerate(hyper))))

    def indented(text):
        return "\n".join("    " + line if line else line for line in text.split("\n"))

    # a tensor's loop in the parallel drivers: threaded from the grain
    # (kernels/_helpers.parallel_grain), the serial loop below it
    threaded = (f"if p.shape[0] < parallel_grain(key):\n{indented(loop('range'))}\n"
                f"else:\n{indented(loop('prange'))}")

    return _templates.fill("update", dict(
        common,
        name=spec.name, name_repr=repr(spec.name),
        digest=digest(__file__, "update", "update_elements"),
        rule_import=(f"from optkern.kernels.rules import {spec.rule.__name__} as _rule_py, "
                     f"{spec.prepare.__name__} as _prepare_py"),
        state_args=", ".join(states),
        state_args_t=", ".join(f"{s}_t" for s in states),
        state_picks=", ".join(f"pick({s}, k)" for s in states),
        pick_t="\n".join(f"{s} = pick({s}_t, k)" for s in states),
        state_flat=", ".join(f"None if {s} is None else {s}.reshape(n)" for s in states),
        state_specs=", ".join(spec.states),
        serial_elements=loop("range"), threaded_elements=threaded,
        user_args=", ".join(spec.user_hyper),
        scalar_default=repr(tuple(v for _, v in spec.scalar_states)),
        unpack_cuda="\n".join(f"{h} = hyper[{j}]" for j, h in enumerate(hyper)),
    ))


def generated_dir():
    """Where generated driver files live (and, beside them, Numba's cache).

    ``$OPTKERN_CACHE_DIR`` if set; otherwise ``_generated/`` inside the
    installed package when writable; otherwise ``~/.cache/optkern``.
    """
    env = os.environ.get("OPTKERN_CACHE_DIR")
    candidates = [env] if env else []
    candidates += [
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "_generated"),
        os.path.join(os.path.expanduser("~"), ".cache", "optkern", "generated"),
    ]
    for path in candidates:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    return tempfile.mkdtemp(prefix="optkern-generated-")


_MODULES = {}


def module_for(name):
    """Import (generating if needed) the driver module of rule ``name``."""
    if name not in _MODULES and name not in _rules.RULES:
        raise ValueError(
            f"unknown rule {name!r}; known: {sorted(_rules.RULES)}")
    return _files.load_generated(
        _MODULES, name, generated_dir, f"optkern_{name}_drivers.py",
        f"optkern.kernels._generated_{name}", lambda: _source(_rules.RULES[name]))


_CUDA_KERNELS = {}


def cuda_kernel(name):
    kern = _CUDA_KERNELS.get(name)
    if kern is None:
        kern = _CUDA_KERNELS[name] = module_for(name).make_cuda_kernel()
    return kern
