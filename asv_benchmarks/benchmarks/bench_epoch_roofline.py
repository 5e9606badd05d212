"""A dense compiled epoch against the machine's limit (issue 18).

EpochRoofline.track_fraction_of_roofline
    roofline time / epoch time (1 = at the limit) of one compiled epoch of
    LinearClassifier(softmax, Adam) per shape and backend: the roofline is
    the larger of bytes of X / streaming-read bandwidth and 2 n d k
    multiply-adds / multiply-add rate, both measured by compiled probes in
    the same process (``optkern._epoch_roofline``); the epoch time is the
    median over epochs 2..5 of one fit (the estimator's own per-epoch time).
EpochRoofline.track_epoch_ms
    that epoch time, in milliseconds.

Shapes (rows x features x classes, batch, dtype): the issue's headline
240,000 x 64 x 8 batch 256 float32, and corners of its grid (d in {32, 784},
k in {2, 100}, batch 32 and 4096, float64), X about 60 MB each (the full
grid is ``python asv_benchmarks/epoch_roofline.py --grid``).  With
OPTKERN_BENCH_SMOKE=1 the shapes and probes are tiny.  Older commits without
``optkern._epoch_roofline`` are skipped (NotImplementedError).
"""

import os

import numpy as np

SMOKE = os.environ.get("OPTKERN_BENCH_SMOKE") == "1"
SHAPES = ["600x8x3b32f32"] if SMOKE else [
    "240000x64x8b256f32", "240000x64x8b256f64", "240000x32x2b32f32",
    "20000x784x10b256f32", "20000x784x100b4096f32", "60000x256x10b4096f64"]
BACKENDS = ["numba", "numba-parallel", "cython"]
EPOCHS = 2 if SMOKE else 5


def _parse(shape):
    dims, rest = shape.split("b")
    n, d, k = (int(v) for v in dims.split("x"))
    batch, dt = rest.split("f")
    return n, d, k, int(batch), {"32": "float32", "64": "float64"}[dt]


def _module():
    try:
        from optkern import _epoch_roofline
    except ImportError:
        raise NotImplementedError("this optkern has no epoch roofline") from None
    return _epoch_roofline


class EpochRoofline:
    params = [SHAPES, BACKENDS]
    param_names = ["shape", "backend"]
    timeout = 600

    def setup_cache(self):
        R = _module()
        p = R.Probes(repeats=2, read_bytes=2 ** 20, fma_reps=1000) if SMOKE else R.Probes()
        return {"bytes_per_s": p.bytes_per_s,
                "fma": {dt: p.fmas_per_s(dt) for dt in ("float32", "float64")}}

    def setup(self, rates, shape, backend):
        import optkern

        R = _module()
        if backend not in optkern.available_backends():
            raise NotImplementedError(f"backend {backend!r} is not available here")
        n, d, k, batch, dt = _parse(shape)
        X, y = R.problem(n, d, k, np.dtype(dt))
        self.epoch_s, _ = R.epoch_seconds(X, y, batch, backend, EPOCHS)
        self.limit_s, _ = R.roofline_seconds(n, d, k, dt, rates["bytes_per_s"],
                                             rates["fma"][dt])

    def track_fraction_of_roofline(self, rates, shape, backend):
        return self.limit_s / self.epoch_s
    track_fraction_of_roofline.unit = "fraction"

    def track_epoch_ms(self, rates, shape, backend):
        return self.epoch_s * 1e3
    track_epoch_ms.unit = "ms"
