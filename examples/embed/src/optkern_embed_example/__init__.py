"""Example downstream package: optkern's kernels embedded from Cython and @njit.

``_cy`` (Cython) cimports optkern.kernels.cython.{updates, prepare, losses};
``jitted`` calls optkern.kernels from its own ``@njit(cache=True)`` code.
"""
