"""Optimizer ``step`` throughput: every optimizer x backend x size, float32.

Metrics (docs/benchmarks.md explains how to read them):

time_step                      asv timing of ``opt.step(grad)``, check_finite=False
time_step_checked              the same with check_finite=True (headline optimizers)
track_elements_per_s           parameter elements updated per second
track_gb_per_s                 bytes moved per second: per element the params,
                               the grad and every state array are read once, the
                               params and every state written once
track_fraction_of_probe        step GB/s / the streaming probe's GB/s for the same
                               traffic pattern (probes.py), both measured in this
                               process, interleaved: the median of the paired
                               probe-time / step-time ratios
track_python_step_overhead_us  median wall time of one ``opt.step`` at 1e3
                               elements, in microseconds: at that size the
                               elementwise work is ~0.1-0.5 us, the rest is the
                               Python API and the call into the compiled kernel

Backends that cannot run here (e.g. "cython" before the extension is built)
are skipped by raising NotImplementedError in ``setup``, asv's convention.
"""

import functools
import inspect
import os

import numpy as np

import optkern
try:
    from optkern.optimizers import OPTIMIZER_NAMES
except ImportError:
    # commits before the registry drove the names (the gate's base for issue 14,
    # de393fe, kept them in estimators.py): same names, same classes
    from optkern.estimators import OPTIMIZER_NAMES

from . import probes

SIZES = [1_000, 100_000, 10_000_000]
BACKENDS = ["numpy", "numba", "numba-parallel", "cython"]
DTYPE = np.float32

# label -> (optimizer class, constructor options), derived from the registry
# (kernels/rules.py) as the estimators and the command line are: every name of
# OPTIMIZER_NAMES (the rule entries' ``estimator_names``) -- a name that is an
# optimizer class's (optkern.OPTIMIZERS, the entries' ``classes``) with that
# class's defaults, any other ("momentum", "nesterov") with its fixed options --
# then any class no name reaches, with its defaults; lr=1e-3 where the class has
# no default.  A rule registered later is benchmarked too.  "momentum" keeps
# its label "sgd-momentum": asv keys the recorded results (and the gate's
# before/after pairs) by it.
_LABELS = {"momentum": "sgd-momentum"}
_VARIANTS = {}
for _name, (_cls, _lr, _fixed) in OPTIMIZER_NAMES.items():
    _VARIANTS[_LABELS.get(_name, _name)] = (
        (_cls, {}) if optkern.OPTIMIZERS.get(_name) is _cls else (_cls, dict(_fixed)))
for _name, _cls in optkern.OPTIMIZERS.items():
    _VARIANTS.setdefault(_name, (_cls, {}))
for _cls, _options in _VARIANTS.values():
    if inspect.signature(_cls).parameters["lr"].default is inspect.Parameter.empty:
        _options.setdefault("lr", 1e-3)
OPTIMIZERS = list(_VARIANTS)

# The targets are stated for these.
HEADLINE = ["adam", "sgd-momentum", "rmsprop"]

SMOKE = os.environ.get("OPTKERN_BENCH_SMOKE") == "1"
MIN_TIME = 0.02 if SMOKE else 0.4       # seconds of sampling per track_ metric
MIN_REPS = 2 if SMOKE else 7


def make_optimizer(label, backend, n, dtype=DTYPE, check_finite=False, seed=0):
    """(optimizer, grad) for ``label`` on ``backend`` over ``n`` elements.

    Raises NotImplementedError when the backend is not available here.
    """
    if backend not in optkern.available_backends():
        raise NotImplementedError(f"backend {backend!r} is not available here")
    cls, options = _VARIANTS[label]
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(n, dtype=np.float32).astype(dtype, copy=False)
    grad = (rng.standard_normal(n, dtype=np.float32) * 1e-2).astype(dtype, copy=False)
    opt = cls(params, backend=backend, check_finite=check_finite, **options)
    return opt, grad


@functools.lru_cache(maxsize=None)
def n_states(label):
    """Per-element state arrays the optimizer keeps (after its first step)."""
    opt, grad = make_optimizer(label, "numpy", 8)
    opt.step(grad)
    entry = opt.state_dict()["state"][0]
    return sum(isinstance(v, np.ndarray) for k, v in entry.items() if k != "average")


def bytes_per_element(label, dtype=DTYPE):
    return probes.bytes_per_element(n_states(label), np.dtype(dtype).itemsize)


class _Probe:
    """The streaming probe at this benchmark's size and traffic pattern."""

    def __init__(self, n, states, dtype=DTYPE, parallel=True):
        self.p = np.zeros(n, dtype)
        self.g = np.ones(n, dtype)
        self.states = [np.zeros(n, dtype) for _ in range(min(states, 3))]
        self.parallel = parallel
        self.sign = 1.0

    def __call__(self):
        self.sign = -self.sign
        probes.stream_rw(self.p, self.g, self.states, parallel=self.parallel,
                         sign=self.sign)


def measure_step(opt, grad, n, label, dtype=DTYPE, parallel_probe=True):
    """Interleaved step / probe measurement (probes.measure).

    Returns a dict: step_s and probe_s (medians), bytes_per_element, gb_per_s
    and probe_gb_per_s (from the medians), fraction (median of the paired
    probe/step time ratios, with the probe pattern scaled to the optimizer's
    traffic) and fraction_best (ratio of the best-of times).
    """
    k = n_states(label)
    probe = _Probe(n, k, dtype, parallel=parallel_probe)
    r = probes.measure(lambda: opt.step(grad), probe, min_time=MIN_TIME,
                       min_reps=MIN_REPS, full=True)
    itemsize = np.dtype(dtype).itemsize
    bpe = probes.bytes_per_element(k, itemsize)
    probe_bpe = probes.bytes_per_element(len(probe.states), itemsize)
    scale = bpe / probe_bpe  # 1 unless the optimizer keeps more than 3 states
    return {"step_s": r["step_s"], "probe_s": r["probe_s"], "bytes_per_element": bpe,
            "gb_per_s": n * bpe / r["step_s"] / 1e9,
            "probe_gb_per_s": n * probe_bpe / r["probe_s"] / 1e9,
            "fraction": r["paired_ratio"] * scale,
            "fraction_best": r["probe_best_s"] / r["step_best_s"] * scale,
            "step_best_s": r["step_best_s"], "probe_best_s": r["probe_best_s"]}


class UpdateStep:
    """``opt.step(grad)`` on one float32 array, check_finite=False."""

    params = [OPTIMIZERS, BACKENDS, SIZES]
    param_names = ["optimizer", "backend", "n_elements"]
    timeout = 180  # 1e7 elements on the NumPy backend, on a busy 2-core host

    def setup(self, label, backend, n):
        self.opt, self.grad = make_optimizer(label, backend, n)
        # The first call compiles (or loads Numba's on-disk cache); the second
        # runs the steady-state path (SGD's momentum buffer exists from step 2).
        self.opt.step(self.grad)
        self.opt.step(self.grad)
        self.label, self.n = label, n
        self._result = None

    def _measured(self):
        if self._result is None:
            self._result = measure_step(self.opt, self.grad, self.n, self.label)
        return self._result

    def time_step(self, label, backend, n):
        self.opt.step(self.grad)

    def track_elements_per_s(self, label, backend, n):
        return self.n / self._measured()["step_s"]
    track_elements_per_s.unit = "elements/s"

    def track_gb_per_s(self, label, backend, n):
        return self._measured()["gb_per_s"]
    track_gb_per_s.unit = "GB/s"

    def track_fraction_of_probe(self, label, backend, n):
        return self._measured()["fraction"]
    track_fraction_of_probe.unit = "fraction"


class UpdateStepChecked:
    """The headline optimizers with the default check_finite=True: the cost of
    scanning the gradient for NaN/inf before the update."""

    params = [HEADLINE, BACKENDS, SIZES]
    param_names = ["optimizer", "backend", "n_elements"]
    timeout = 180

    def setup(self, label, backend, n):
        self.opt, self.grad = make_optimizer(label, backend, n, check_finite=True)
        self.opt.step(self.grad)
        self.opt.step(self.grad)

    def time_step_checked(self, label, backend, n):
        self.opt.step(self.grad)


def step_overhead_us(opt, grad):
    """Median microseconds of one ``opt.step(grad)`` (batches of calls)."""
    return 1e6 * probes.median_seconds(lambda: opt.step(grad), min_time=MIN_TIME,
                                       min_reps=MIN_REPS)


class StepOverhead:
    """What one Python-level ``step`` costs when the arrays are tiny (1e3)."""

    params = [OPTIMIZERS, BACKENDS, [False, True]]
    param_names = ["optimizer", "backend", "check_finite"]
    n = 1_000

    def setup(self, label, backend, check_finite):
        self.opt, self.grad = make_optimizer(label, backend, self.n,
                                             check_finite=check_finite)
        self.opt.step(self.grad)
        self.opt.step(self.grad)

    def track_python_step_overhead_us(self, label, backend, check_finite):
        return step_overhead_us(self.opt, self.grad)
    track_python_step_overhead_us.unit = "us"
