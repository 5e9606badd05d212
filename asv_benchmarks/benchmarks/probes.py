"""The hardware-limit probes the ``track_fraction_*`` metrics use.

The code lives in the package, ``optkern._probes`` (``optkern bench`` needs it
from an installed package); this module re-exports it for the benchmarks.
See that module's docstring for what the streaming and GEMM probes measure.

asv also builds and benchmarks commits older than ``optkern._probes`` (e.g.
the base commit of ``asv continuous``): for those, the same file is loaded
from this checkout's source tree (``src/optkern/_probes.py``), so every commit
is judged by the same probe.
"""

import importlib.util
import os

try:
    from optkern import _probes as _impl
except ImportError:  # a commit built before optkern._probes existed
    _path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                         "src", "optkern", "_probes.py")
    _spec = importlib.util.spec_from_file_location("optkern_bench_probes",
                                                   os.path.normpath(_path))
    _impl = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_impl)

__all__ = list(_impl.__all__)
globals().update({name: getattr(_impl, name) for name in __all__})
