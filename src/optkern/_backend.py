"""Backend names, availability, and the "auto" choice.

Backends are named strings (DESIGN.md):

numpy           the readable vectorised reference, the oracle of every test
numba           Numba, serial loop (bit-reproducible)
numba-parallel  Numba, prange over elements / rows
cython          ahead-of-time Cython kernels (OpenMP when built with it)
cuda            numba.cuda grid-stride kernels (a GPU, or NUMBA_ENABLE_CUDASIM=1)
auto            chosen by size and availability, see ``choose_auto``
"""

import contextlib
import difflib
import math
import os
import threading
import time

BACKENDS = ("numpy", "numba", "numba-parallel", "cython", "cuda", "auto")

# "auto" thresholds, in elements updated per call.  Measured on the project's
# 2-core machine with asv_benchmarks (update kernels, float32), see README
# "Choosing a backend": below PARALLEL_MIN_SIZE the thread start-up of a
# parallel loop costs more than it saves.
PARALLEL_MIN_SIZE = int(os.environ.get("OPTKERN_PARALLEL_MIN_SIZE", 200_000))
# The loss and prediction kernels go parallel from LOSS_PARALLEL_MIN_SIZE
# multiply-adds (2 n d k for a loss and its gradient, n d k for predictions;
# nonzeros for n d with CSR): with passive OpenMP waits a parallel region's
# wake-up costs ~70-80 us on a quiet 2-core VM.  Measured there,
# loss_and_grad parallel / serial: 1.5-2.1x at 2 n d k = 0.6-1.0 M, 1.07x at
# 1.3 M, 0.92-1.0x at 1.7-2 M, 0.55x from 20 M; predict_scores serial was
# 1.75x faster at n d k = 0.86 M (docs/benchmarks.md, "The threading grain").
# The optimizer steps keep PARALLEL_MIN_SIZE: their parallel kernels thread a
# tensor only from kernels/_helpers.PARALLEL_GRAIN elements.
LOSS_PARALLEL_MIN_SIZE = int(os.environ.get("OPTKERN_LOSS_PARALLEL_MIN_SIZE", 1_500_000))
# Below CYTHON_MAX_SIZE the ahead-of-time kernels cost the same per call as
# the serial Numba loop and need no JIT warm-up; above it they fall behind
# (built for a generic x86-64, without the AVX-512 code Numba emits for the
# machine it runs on: Adam float32 at 1e5 elements 95 us vs 49 us, at 1e6
# 3.2 ms vs 0.41 ms; python /tmp/bk.py-style side-by-side medians, README).
CYTHON_MAX_SIZE = int(os.environ.get("OPTKERN_CYTHON_MAX_SIZE", 16_384))
# A parallel loop is worth its threads only when the machine has a core to
# spare: with another process keeping every core busy, a parallel region waits
# for a descheduled thread (a scheduler time slice, milliseconds) and at best
# splits the same core time two ways.  "auto" therefore stays serial while the
# 1-minute load average, less this process's own share (own_load), exceeds
# the usable cores minus BUSY_MARGIN; os.getloadavg() costs ~0.4 us and is read only
# for calls at or above PARALLEL_MIN_SIZE.  docs/benchmarks.md, '"auto" under
# load' (asv_benchmarks/auto_under_load.py).
BUSY_MARGIN = float(os.environ.get("OPTKERN_BUSY_MARGIN", 0.5))

# Numba's parallel loops (its "omp" threading layer) and the Cython OpenMP
# kernels run on GNU OpenMP, whose threads spin for ~300,000 iterations at
# every barrier before they sleep.  On a busy machine the spinning thread
# holds a core its partner needs: an Adam step on 1e3 elements took 1.0-1.4 ms
# on numba-parallel against 11 us with OMP_WAIT_POLICY=passive (2-core
# machine, load average 6).  Unless the user chose a policy, optkern asks for
# passive waiting before the OpenMP runtime loads (it reads the variable
# once, when loaded: an OpenMP library loaded before optkern keeps its own).
# GOMP_SPINCOUNT=300000 restores libgomp's default spinning.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "passive"


def usable_cores():
    """CPUs this process may run on (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_CORES = usable_cores()


_decided = threading.local()

# This process's own share of the load average: its CPU time per second of
# wall time, averaged as the kernel averages the 1-minute load (exponentially,
# 60 s), updated at each reading.  The load average counts this process's
# running threads too, so without it a process that trains with two threads
# for minutes reads a load of ~2 and "auto" turns its own threads off
# (docs/epochs.md, "Thirteenth round").
_OWN = {"t": time.monotonic(), "cpu": time.process_time(), "rate": 0.0}
_OWN_LOCK = threading.Lock()


def own_load():
    """This process's contribution to the 1-minute load average (estimated)."""
    with _OWN_LOCK:
        now, cpu = time.monotonic(), time.process_time()
        dt = now - _OWN["t"]
        if dt > 0:
            a = math.exp(-dt / 60.0)
            _OWN["rate"] = a * _OWN["rate"] + (1.0 - a) * max(0.0, cpu - _OWN["cpu"]) / dt
            _OWN["t"], _OWN["cpu"] = now, cpu
        return _OWN["rate"]


def _measured_load():
    """The load "auto" weighs (machine_busy's ``load``): the other processes'
    share of the 1-minute load average (it less own_load()), or None without
    a load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return max(0.0, load - own_load())


def _load_average():
    frozen = getattr(_decided, "load", None)
    if frozen is not None:
        return frozen
    return _measured_load()


@contextlib.contextmanager
def decide_once():
    """Within the block (in this thread), every "auto" choice sees the load
    average read on entry, so one fit, an L-BFGS run's hundreds of loss calls
    included, uses one kernel throughout: its result does not depend on how
    the machine's load moved while it ran.  Nested blocks keep the outer
    reading."""
    if getattr(_decided, "load", None) is not None:
        yield
        return
    load = _measured_load()
    if load is None:
        load = -1.0                       # no load average: never "busy"
    _decided.load = load
    try:
        yield
    finally:
        _decided.load = None


def machine_busy(load=None, cores=None):
    """True when other processes leave no core to spare for a second thread:
    their share of the 1-minute load average (``load``, by default
    _measured_load: the load average less this process's own) above
    ``cores - BUSY_MARGIN``."""
    if cores is None:
        cores = _CORES
    if cores < 2:
        return True
    if load is None:
        load = _load_average()
        if load is None:
            return False
    return load > cores - BUSY_MARGIN


def parallel_pays(work, load=None, cores=None, min_size=None):
    """Whether a parallel kernel pays for its threads on ``work`` elements (or
    multiply-adds): at least ``min_size`` of it (PARALLEL_MIN_SIZE unless
    given), and a core to spare."""
    if min_size is None:
        min_size = PARALLEL_MIN_SIZE
    return work >= min_size and not machine_busy(load, cores)


def validate_name(backend, argname="backend"):
    if not isinstance(backend, str):
        raise TypeError(f"{argname} must be a string, one of {list(BACKENDS)}; "
                        f"got {type(backend).__name__}")
    if backend not in BACKENDS:
        close = difflib.get_close_matches(backend, BACKENDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{argname}={backend!r} is not a backend; "
                         f"choose one of {list(BACKENDS)}{hint}")
    return backend


def cython_module(kind="updates"):
    """The compiled Cython extension, or None when it was not built."""
    try:
        if kind == "updates":
            from optkern.kernels.cython import _updates as mod
        else:
            import importlib
            mod = importlib.import_module(f"optkern.kernels.cython._{kind}")
    except ImportError:
        return None
    return mod


def cuda_available():
    """True with a usable GPU, or under the CUDA simulator."""
    if _simulating():
        return True
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # numba.cuda may fail to import without a driver
        return False


def _simulating():
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def is_cuda_array(x):
    """A device array: anything exposing ``__cuda_array_interface__`` (numba,
    CuPy, torch CUDA tensors), or a simulated device array under the CUDA
    simulator (which has no such interface)."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    if _simulating() and type(x).__module__.startswith("numba.cuda.simulator"):
        from numba.cuda.simulator.cudadrv.devicearray import is_cuda_ndarray
        return bool(is_cuda_ndarray(x))
    return False


def as_device_array(x):
    """A numba.cuda view of a device array (no copy)."""
    from numba import cuda
    if _simulating() and not hasattr(x, "__cuda_array_interface__"):
        return x  # already a simulated device array; the simulator has no as_cuda_array
    return cuda.as_cuda_array(x)


def available(backend, kind="updates"):
    if backend in ("numpy", "numba", "numba-parallel", "auto"):
        return True
    if backend == "cython":
        return cython_module(kind) is not None
    if backend == "cuda":
        return cuda_available()
    return False


def available_backends(kind="updates"):
    return tuple(b for b in BACKENDS if b != "auto" and available(b, kind))


def require(backend, kind="updates", argname="backend"):
    """Validate the name and check the backend can run here; return it."""
    validate_name(backend, argname)
    if backend == "cython" and cython_module(kind) is None:
        raise ImportError(
            f"{argname}='cython': the Cython extension optkern.kernels.cython._{kind} "
            "is not built; reinstall optkern with a C compiler (pip install .)")
    if backend == "cuda" and not cuda_available():
        raise RuntimeError(
            f"{argname}='cuda': no CUDA GPU is available (set NUMBA_ENABLE_CUDASIM=1 "
            "to run the CUDA kernels in Numba's simulator)")
    return backend


# The dense serial epoch of backend="auto" runs the Cython twin (not only
# while Numba's is cold) where its C kernels measured faster than the Numba
# epoch: one thread -- the scores of small k with vectors across the outputs
# -- at d <= 64 features and up to 10 outputs in float32 (8 in float64),
# minibatches of at most 4096 rows (asv_benchmarks/epoch_across.py,
# docs/epochs.md "Ninth round": 0.59-0.96x the Numba epoch at d 32-64, k 2-10,
# batch 32-4096; at d 256 and 784 with k 8-10 it was not faster); and
# wherever it runs a helper thread (cython_epoch_threads, below: 0.47-0.94x
# the Numba epoch at every d, k and batch 64-4096 measured, docs/epochs.md
# "Thirteenth round").  The whole fit runs one kernel.
CYTHON_DENSE_EPOCH_MAX_D = 64
CYTHON_DENSE_EPOCH_MAX_K = {"float32": 10, "float64": 8}
CYTHON_DENSE_EPOCH_MAX_BATCH = 4096


def cython_dense_epoch_pays(d, k, batch_size, dtype, load=None, cores=None):
    """Whether backend="auto"'s serial dense epoch of a (d, k) model in
    ``dtype`` at this minibatch size runs the Cython twin (measured faster
    than the Numba epoch there); False when the twin runs the dot-product
    score tiles (``_epochs.set_scores_across(False)``)."""
    import numpy as np

    mod = cython_module("epochs")
    if mod is None or not bool(getattr(mod, "scores_across", lambda: False)()):
        return False
    max_k = CYTHON_DENSE_EPOCH_MAX_K.get(np.dtype(dtype).name)
    if max_k is not None and d <= CYTHON_DENSE_EPOCH_MAX_D and k <= max_k \
            and batch_size <= CYTHON_DENSE_EPOCH_MAX_BATCH:
        return True
    return cython_epoch_threads(d, k, batch_size, load, cores) == 2


# The Cython dense epoch runs the second half of each minibatch's rows on a
# helper thread (kernels/cython/templates/_epochs_dense.c.tp, okx_pool; the
# same arithmetic as one thread) when a minibatch holds more than one block
# of rows (DENSE_ROWS: smaller ones are not split) and at least
# CYTHON_EPOCH_THREAD_MIN_WORK of work, counted as batch x (d k +
# CYTHON_EPOCH_ROW_WORK): a row costs about as much as 64 multiply-adds
# besides its scores (its gather, label, loss rule).  Measured, 2 threads /
# 1 (docs/epochs.md, "Thirteenth round"): 0.93-1.01 at 20,000-25,000
# (d 32, k 10, batch 64; d 32, k 2, batch 96), 0.82 at 36,864 (d 64, k 8,
# batch 64), 0.56-0.66 from batch 128.  The threads hand work over by
# spinning, not sleeping; with the machine busy the epoch stays serial.
CYTHON_EPOCH_THREAD_MIN_WORK = int(os.environ.get("OPTKERN_EPOCH_THREAD_MIN_WORK", 32_768))
CYTHON_EPOCH_ROW_WORK = 64
CYTHON_EPOCH_BLOCK_ROWS = 48   # kernels/cython/generate_epochs.py DENSE_ROWS


def cython_epoch_threads(d, k, batch_size, load=None, cores=None):
    """The threads (1 or 2) the Cython dense epoch runs a minibatch on."""
    if batch_size <= CYTHON_EPOCH_BLOCK_ROWS:
        return 1
    work = int(batch_size) * (int(d) * int(k) + CYTHON_EPOCH_ROW_WORK)
    if work < CYTHON_EPOCH_THREAD_MIN_WORK:
        return 1
    return 1 if machine_busy(load, cores) else 2


def choose_auto(n_elements, on_device=False, kind="updates", load=None, cores=None):
    """The backend "auto" resolves to for a call touching ``n_elements``.

    Device arrays stay on the device ("cuda").  Small problems go to the
    Cython extension when built (as cheap a call as Numba's, no JIT warm-up),
    medium ones to the serial Numba loop (vectorised for this CPU), large ones
    to the multi-threaded Numba loop, which measured fastest at 1e7 elements
    on 2 cores (README, "Backends") -- unless the machine is busy
    (``machine_busy``), when they stay on the serial loop.  ``load`` and
    ``cores`` override the load average and the usable cores (tests).
    """
    if on_device:
        return "cuda"
    if n_elements < CYTHON_MAX_SIZE and cython_module(kind) is not None:
        return "cython"
    min_size = LOSS_PARALLEL_MIN_SIZE if kind == "losses" else PARALLEL_MIN_SIZE
    if not parallel_pays(n_elements, load, cores, min_size):
        return "numba"
    return "numba-parallel"
