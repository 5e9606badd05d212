"""optkern's ahead-of-time (Cython) kernels and their public C-level API.

Public ``.pxd`` modules (docs/embedding.md): ``updates`` (update rules and
loops), ``prepare`` (per-step hyperparameters), ``losses`` (row losses and the
minibatch loss and gradient).  Underscore modules are internal.
"""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_include():
    """A directory for Cython's include path in which ``cimport
    optkern.kernels.cython.updates`` (and ``prepare``, ``losses``) resolves.

    With a normal install that is the site-packages directory holding
    ``optkern/`` (where Cython looks anyway); with an editable install of a
    source checkout, the ``.pxd`` files are not under any ``sys.path`` entry,
    and this returns the mirror ``build/cython_include`` that optkern's
    setup.py writes.  Pass it to ``cythonize(..., include_path=[...])``.
    """
    site = os.path.dirname(os.path.dirname(_HERE))
    if os.path.basename(os.path.dirname(_HERE)) == "kernels" \
            and os.path.basename(site) == "optkern" \
            and os.path.exists(os.path.join(_HERE, "updates.pxd")):
        return os.path.dirname(site)
    mirror = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "build", "cython_include")
    if os.path.exists(os.path.join(mirror, "optkern", "kernels", "cython", "updates.pxd")):
        return mirror
    raise RuntimeError(
        "optkern's .pxd files were not found (looked beside this module and in "
        f"{mirror}); rebuild optkern (pip install .) so setup.py writes them")
