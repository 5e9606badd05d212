"""Write the public C-level API of optkern's kernels: the ``.pxd`` files other
packages ``cimport`` (and the one small module they need at run time).

Run by ``setup.py`` at build time (``write_sources``).  The underscore modules
(``_updates``, ``_losses``, ``_epochs``) are optkern's own and change with it;
the files written here are the *public* names, each with optkern's version
and the stability policy in its header:

``updates.pxd``   the update rules (``<rule>_rule_f32/_f64``), the loops over
                  ``n`` contiguous elements (``<rule>_loop_f32/_f64`` and the
                  fused ``<rule>_loop``), ``<RULE>_NHYPER``, ``normal``
                  (re-exported from ``_updates``, the same symbols optkern
                  itself calls).
``prepare.pxd``   ``<rule>_prepare(step, scalars, lr, user, hyper, scalars_out)``:
   + prepare.pyx  the per-step kernel hyperparameters from the user's
                  hyperparameters, the learning rate and the step, plus
                  ``<RULE>_NUSER``/``_NSCALARS`` (C twins of ``rules.<rule>_prepare``,
                  translated as the compiled epoch's, with Python's ``x ** n``).
``losses.pxd``    the row rules (``row_<loss>``) and the minibatch loss and
                  gradient, ``dense_<loss>`` and ``csr_<loss>``, with
                  ``scratch_size`` (re-exported from ``_losses``).

The compiled epoch is not declared at C level yet: its loop is being
restructured, and a declaration here would be a promise.  Its Python-level
entry ``optkern.kernels.cython._epochs.epoch_for`` stays as documented in
docs/embedding.md.

The files' text is in the Tempita templates ``templates/updates.pxd.tp``,
``prepare.pxd.tp``, ``prepare.pyx.tp`` and ``losses.pxd.tp`` (with the shared
``api_header.pxd.tp`` and ``api_enum.pxd.tp``); this file computes the values
of their holes.

This file must import neither numba nor optkern (it runs before optkern
exists); it loads rules.py, loss_rules.py and generate_epochs.py by path.
"""

import os
import re
import runpy
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.dirname(HERE)
ROOT = os.path.dirname(KERNELS)

#: bump when a declaration in a public .pxd changes incompatibly (a removed
#: name, a changed signature or argument order); adding names does not bump it
API_VERSION = 1


_files = types.SimpleNamespace(**runpy.run_path(os.path.join(KERNELS, "_files.py")))
_load = _files.load_by_path


def optkern_version():
    """optkern's version, read from pyproject.toml (optkern is not importable here)."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as fh:
        text = fh.read()
    m = re.search(r'^\[project\].*?^version\s*=\s*"([^"]+)"', text, re.S | re.M)
    if not m:
        raise RuntimeError("pyproject.toml: no [project] version")
    return m.group(1)


_templates = _load("_optkern_cython_templates", os.path.join(HERE, "_templates.py"))
# updates.pxd, prepare.pxd and losses.pxd open with api_header.pxd.tp and
# api_enum.pxd.tp (the version and the stability policy)
TEMPLATES = ("updates.pxd.tp", "prepare.pxd.tp", "prepare.pyx.tp", "losses.pxd.tp")


def _version_number(part):
    return int(re.match(r"[0-9]+", part).group())


def generate():
    """{file name: text} of the public API files."""
    version = optkern_version()
    rules = _load("_optkern_rules_for_api", os.path.join(KERNELS, "rules.py"))
    losses = _load("_optkern_loss_rules_for_api", os.path.join(KERNELS, "loss_rules.py"))
    gen_epochs = _load("_optkern_generate_epochs_for_api", os.path.join(HERE, "generate_epochs.py"))
    major, minor = (version.split(".") + ["0", "0"])[:2]
    holes = dict(version=version, API_VERSION=API_VERSION,
                 version_major=_version_number(major), version_minor=_version_number(minor),
                 rules=list(rules.RULES.values()), losses=list(losses.LOSS_RULES.values()),
                 prepares=gen_epochs.prepare_functions(rules))
    return {tp[:-3]: _templates.render(tp, **holes) for tp in TEMPLATES}


def write_sources(out_dir=HERE):
    """Write the public .pxd files and prepare.pyx; return [(module, pyx path)]."""
    for fname, text in generate().items():
        _files.write_if_changed(os.path.join(out_dir, fname), text)
    return [("prepare", os.path.join(out_dir, "prepare.pyx"))]


if __name__ == "__main__":
    for mod, path in write_sources(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
