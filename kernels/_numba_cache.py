"""Numba's disk cache keyed on every kernels source a function compiles in.

``@njit(cache=True)`` keys a function's cached machine code on its own
bytecode and a stamp of its own file (a hash of ``loss_drivers.py``), not of
the files whose functions it calls and inlines: after an edit to
``penalty.py`` or ``_helpers.py``, ``loss_drivers``' kernels would load the
old machine code from ``__pycache__``.  The generated modules carry a digest
of their sources in their text (``_files.source_digest``); the hand-written
compiled modules (loss_drivers.py, epoch_drivers.py, sparse_epoch_drivers.py,
embed.py, finite.py, order.py, optkern/_epoch_roofline.py ...) get the same
digest through their cache's stamp here: ``install`` puts locators in front
of Numba's own which, for a file of the optkern package, stamp the cache with
Numba's stamp of the file *and* the digest of every kernels module it imports,
transitively.  A changed dependency then reads as a stale index: Numba
compiles again and rewrites it.  Files outside the package keep Numba's
locators untouched.

The digest is computed once per file and process (the first ``@njit`` of a
module asks for it; its other functions reuse it).
"""

import os
import sys

from numba.core import caching as _caching

from . import _files

KERNELS = os.path.dirname(os.path.abspath(__file__))


def _roots():
    """kernels/ and the package's Python side (src/optkern in a checkout,
    optkern/ in an install: its compiled helpers import kernels modules too)."""
    roots = [KERNELS]
    top = getattr(sys.modules.get(__package__.rpartition(".")[0] or "optkern"), "__file__", None)
    if top:
        roots.append(os.path.dirname(os.path.abspath(top)))
    return tuple(roots)


_ROOTS = _roots()
_DIGESTS = {}


def _ours(py_file):
    """A hand-written source file of the package (the generated modules,
    under ``_generated``, carry their digest in their text)."""
    path = os.path.abspath(py_file)
    return (path.endswith(".py") and any(path.startswith(r + os.sep) for r in _ROOTS)
            and os.sep + "_generated" + os.sep not in path)


def dependency_digest(py_file):
    """The digest of ``py_file`` and every kernels module it imports (cached
    per process)."""
    path = os.path.abspath(py_file)
    digest = _DIGESTS.get(path)
    if digest is None:
        digest = _DIGESTS[path] = _files.source_digest([path], KERNELS)
    return digest


def _with_dependencies(base):
    """A locator like Numba's ``base`` for the package's files, whose stamp
    also covers the files they import."""

    class Locator(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            if not _ours(py_file):
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return (super().get_source_stamp(), dependency_digest(self._py_file))

    Locator.__name__ = Locator.__qualname__ = "Optkern" + base.__name__
    return Locator


_LOCATORS = tuple(_with_dependencies(base) for base in (
    _caching.UserProvidedCacheLocator, _caching.InTreeCacheLocator,
    _caching.UserWideCacheLocator))


def install():
    """Put the package's locators in front of Numba's (once)."""
    classes = _caching.CacheImpl._locator_classes
    if classes[:len(_LOCATORS)] != list(_LOCATORS):
        classes[:0] = _LOCATORS


install()
