"""Minibatch loss-and-gradient throughput (issue 3), float32, softmax.

Benchmarks (asv):

LossGrad.time_loss_and_grad      asv timing of one ``loss_and_grad`` call
LossGrad.track_samples_per_s     rows per second (median of the timed repeats)
LossGrad.track_speedup_vs_numpy  the NumPy/BLAS reference pipeline's median time
                                 divided by this implementation's, both measured
                                 in this process in alternating blocks
                                 (interleaved_times says why blocks)
CSRRowLoops.track_ns_per_nonzero the CSR kernel's two row loops alone (the
                                 scores z = b + sum x_v W[f_v], the scatter
                                 dW[f_v] += x_v dz; kernels/_simd.py), ns per
                                 nonzero over 4096 rows at 1% density, k outputs
LossGradVsGemm.track_gflops      dense gradient flop rate (4*batch*d*k flops)
LossGradVsGemm.track_fraction_of_gemm
                                 the GEMM probe's median time (NumPy doing the
                                 gradient's two products, probes.gemm_pair) divided
                                 by this implementation's: the fraction of the
                                 BLAS roofline

over batch sizes 256 and 4096, (n_features, n_outputs) in (784, 10),
(4096, 100), (512, 1000), dense (C order) and CSR at 1% density, and the
implementations "numpy" (the reference: X @ W, vectorised loss, X.T @ dZ),
"numba", "numba-parallel", "cython", "auto".  All calls pass
check_input=False (the NaN scan is a separate pass over X).

The README targets are measured side by side in one process by running this
file as a script (unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which slow
NumPy's BLAS on the project machine, for that one command)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_benchmarks/benchmarks/bench_losses.py

It prints medians and the ratios of the three targets (docs/losses.md).
"""

import os
import time

import numpy as np
import scipy.sparse as sp

import optkern
from optkern import _backend
try:
    from optkern.bench import settled_blocks
except ImportError:     # a commit before it (the gate's base for issue 14, de393fe):
    settled_blocks = None   # the time_ benchmarks still run; the ratios are skipped

try:
    from . import probes
except ImportError:  # run as a script (see above)
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import probes

try:
    from optkern.losses import loss_and_grad
except ImportError:  # a commit before the loss kernels (asv continuous on old commits)
    loss_and_grad = None

SMOKE = os.environ.get("OPTKERN_BENCH_SMOKE") == "1"
MIN_TIME = 0.02 if SMOKE else 0.5
MIN_REPS = 2 if SMOKE else 9

SHAPES = {"784x10": (784, 10), "4096x100": (4096, 100), "512x1000": (512, 1000)}
IMPLS = ["numpy", "numba", "numba-parallel", "cython", "auto"]


def make_data(batch, n_features, n_outputs, fmt, density=0.01, seed=0):
    rng = np.random.default_rng(seed)
    if fmt == "csr":
        X = sp.random(batch, n_features, density=density, format="csr", dtype=np.float32,
                      random_state=seed, data_rvs=lambda m: rng.standard_normal(m))
        X.sum_duplicates()
    else:
        X = rng.standard_normal((batch, n_features), dtype=np.float32)
    W = (rng.standard_normal((n_features, n_outputs), dtype=np.float32)
         / np.float32(np.sqrt(n_features)))
    b = np.zeros(n_outputs, np.float32)
    y = rng.integers(0, n_outputs, batch)
    return X, y, W, b


def make_call(impl, X, y, W, b):
    if loss_and_grad is None:
        raise NotImplementedError("this optkern has no loss_and_grad")
    if impl == "cython" and _backend.cython_module("losses") is None:
        raise NotImplementedError("the Cython loss extension is not built")
    out = (np.empty_like(W), np.empty_like(b))

    def call():
        return loss_and_grad(X, y, W, b, loss="softmax", alpha=1e-4, backend=impl,
                             out=out, check_input=False)
    call()   # compile / warm up
    return call


SETTLE = 0.0 if SMOKE else 0.1
BLOCK = 0.0 if SMOKE else 0.05


def interleaved_times(calls, min_time=MIN_TIME, min_reps=MIN_REPS, settle=SETTLE,
                      block=BLOCK):
    """Seconds of every timed repeat of each callable, in alternating blocks
    (optkern.bench.settled_blocks: ``settle`` seconds untimed, then ``block``
    seconds timed; its docstring says why blocks)."""
    if settled_blocks is None:
        raise NotImplementedError("this optkern has no optkern.bench.settled_blocks")
    return settled_blocks(calls, min_time, min_reps, settle, block)


def interleaved_medians(calls, min_time=MIN_TIME, min_reps=MIN_REPS):
    """Median seconds of each callable, measured round-robin (same machine state)."""
    return [float(np.median(t)) for t in interleaved_times(calls, min_time, min_reps)]


class LossGrad:
    params = ([256, 4096], list(SHAPES), ["dense", "csr"], IMPLS)
    param_names = ["batch", "shape", "format", "impl"]
    timeout = 600

    def setup(self, batch, shape, fmt, impl):
        d, k = SHAPES[shape]
        self.X, self.y, self.W, self.b = make_data(batch, d, k, fmt)
        self.call = make_call(impl, self.X, self.y, self.W, self.b)
        self.batch = batch
        self.impl = impl

    def time_loss_and_grad(self, batch, shape, fmt, impl):
        self.call()

    def track_samples_per_s(self, batch, shape, fmt, impl):
        (t,) = interleaved_medians([self.call])
        return batch / t
    track_samples_per_s.unit = "samples/s"

    def track_speedup_vs_numpy(self, batch, shape, fmt, impl):
        ref = make_call("numpy", self.X, self.y, self.W, self.b)
        t_ref, t = interleaved_medians([ref, self.call])
        return t_ref / t
    track_speedup_vs_numpy.unit = "x"


class DenseVsCSR:
    """The same problem (1% density) dense and CSR, same backend ("auto")."""
    params = ([256, 4096], list(SHAPES))
    param_names = ["batch", "shape"]
    timeout = 600

    def setup(self, batch, shape):
        d, k = SHAPES[shape]
        Xs, y, W, b = make_data(batch, d, k, "csr")
        self.csr = make_call("auto", Xs, y, W, b)
        self.dense = make_call("auto", Xs.toarray(), y, W, b)

    def track_csr_speedup(self, batch, shape):
        t_dense, t_csr = interleaved_medians([self.dense, self.csr])
        return t_dense / t_csr
    track_csr_speedup.unit = "x"


class CSRRowLoops:
    """ns per nonzero of the CSR row loops, each alone, float32.  loop
    "scores" fills Z = X W + b row by row, "scatter" adds X^T D into dW;
    "plain" compiles the functions' own text: Numba's loop over the k outputs
    (what they compile to for layouts the vector loops do not take, and what
    the CSR kernels ran before kernels/_simd.py)."""
    params = ([1, 4, 10, 16, 100], ["scores", "scatter"], ["vector", "plain"])
    param_names = ["n_outputs", "loop", "code"]
    timeout = 300

    def setup(self, k, loop, code):
        try:
            from optkern.kernels import _simd
        except ImportError:
            raise NotImplementedError("this optkern has no kernels._simd")
        from numba import njit
        n, d = (256, 784) if SMOKE else (4096, 784)
        X, _, W, b = make_data(n, d, k, "csr")
        rng = np.random.default_rng(1)
        D = rng.standard_normal((n, k), dtype=np.float32)
        Z = np.empty((n, k), np.float32)
        dW = np.zeros((d, k), np.float32)
        fn = _simd.csr_row_scores if loop == "scores" else _simd.csr_row_scatter
        if code == "plain":
            fn = njit(inline="always")(fn)

        if loop == "scores":
            @njit
            def run(data, indices, indptr, W, b, Z, D, dW):
                for i in range(Z.shape[0]):
                    fn(data, indices, indptr[i], indptr[i + 1], W, b, Z[i])
        else:
            @njit
            def run(data, indices, indptr, W, b, Z, D, dW):
                for i in range(D.shape[0]):
                    fn(data, indices, indptr[i], indptr[i + 1], D[i], dW)
        args = (X.data, X.indices, X.indptr, W, b, Z, D, dW)
        run(*args)
        self.call = lambda: run(*args)
        self.nnz = X.nnz

    def time_loop(self, k, loop, code):
        self.call()

    def track_ns_per_nonzero(self, k, loop, code):
        (t,) = interleaved_medians([self.call])
        return t / self.nnz * 1e9
    track_ns_per_nonzero.unit = "ns"


class LossGradVsGemm:
    """Dense softmax gradient against the GEMM probe (probes.gemm_pair): NumPy's
    BLAS doing the gradient's two products, X @ W and X.T @ dZ, on arrays of
    the same shapes, measured in this process, interleaved.

    track_gflops              the gradient's flop rate, counting 4*batch*d*k
                              (the two products; the softmax is O(batch*k))
    track_fraction_of_gemm    GEMM probe's median time / this implementation's:
                              1.0 means the whole gradient costs what the two
                              BLAS products alone cost
    """
    params = ([256, 4096], list(SHAPES), IMPLS)
    param_names = ["batch", "shape", "impl"]
    timeout = 600

    def setup(self, batch, shape, impl):
        d, k = SHAPES[shape]
        X, y, W, b = make_data(batch, d, k, "dense")
        self.call = make_call(impl, X, y, W, b)
        self.gemm = probes.gemm_pair(batch, d, k, X.dtype)
        self.gemm()
        self.flops = probes.gemm_flops(batch, d, k)

    def track_gflops(self, batch, shape, impl):
        (t,) = interleaved_medians([self.call])
        return self.flops / t / 1e9
    track_gflops.unit = "GFLOP/s"

    def track_fraction_of_gemm(self, batch, shape, impl):
        t_gemm, t = interleaved_medians([self.gemm, self.call])
        return t_gemm / t
    track_fraction_of_gemm.unit = "fraction"


def side_by_side(batches=(256, 4096), shapes=tuple(SHAPES), impls=tuple(IMPLS)):
    """Print the table and the README targets: medians, and (in brackets) the
    fastest repeat, which is what a call costs when no other process takes the
    cores (the project machine is shared: medians of multi-threaded calls
    include waiting for descheduled threads).  Returns {key: (median, min)}."""
    import numba
    print(f"optkern {optkern.__version__}, numba threads {numba.get_num_threads()}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("time per call: median [min] ms, and numpy/impl ratio of medians [of mins]")
    res = {}
    for batch in batches:
        for shape in shapes:
            d, k = SHAPES[shape]
            for fmt in ("dense", "csr"):
                X, y, W, b = make_data(batch, d, k, fmt)
                avail = [i for i in impls
                         if i != "cython" or _backend.cython_module("losses") is not None]
                calls = [make_call(i, X, y, W, b) for i in avail]
                times = interleaved_times(calls)
                for i, t in zip(avail, times):
                    res[(batch, shape, fmt, i)] = (float(np.median(t)), float(np.min(t)))
                rmed, rmin = res[(batch, shape, fmt, "numpy")]
                row = "  ".join(
                    f"{i}={res[(batch, shape, fmt, i)][0] * 1e3:.3f} "
                    f"[{res[(batch, shape, fmt, i)][1] * 1e3:.3f}]ms "
                    f"({rmed / res[(batch, shape, fmt, i)][0]:.2f}x "
                    f"[{rmin / res[(batch, shape, fmt, i)][1]:.2f}x])" for i in avail)
                print(f"batch={batch:5d} {shape:9s} {fmt:5s}  {row}", flush=True)
    print()

    def ratio(a, b):
        return f"{a[0] / b[0]:.2f}x median [{a[1] / b[1]:.2f}x min]"

    def ms(a):
        return f"{a[0] * 1e3:.3f} [{a[1] * 1e3:.3f}] ms"

    key = (4096, "784x10", "dense")
    if key + ("numpy",) in res:
        ref = res[key + ("numpy",)]
        for impl in ("auto", "numba", "numba-parallel"):
            if key + (impl,) in res:
                t = res[key + (impl,)]
                print(f"target 1: softmax (4096, 784, 10) dense, {impl}: numpy {ms(ref)}, "
                      f"{impl} {ms(t)} -> {ratio(ref, t)} (target >= 2.5x)")
    for batch in batches:
        key = (batch, "512x1000", "dense")
        if key + ("auto",) in res:
            ref, t = res[key + ("numpy",)], res[key + ("auto",)]
            print(f"target 2: (batch {batch}, 512, 1000) dense, auto: numpy {ms(ref)}, "
                  f"auto {ms(t)} -> {ratio(ref, t)} (target >= 0.95x)")
    for batch in batches:
        for shape in shapes:
            d, k = SHAPES[shape]
            Xs, y, W, b = make_data(batch, d, k, "csr")
            td, tc = interleaved_times([make_call("auto", Xs.toarray(), y, W, b),
                                        make_call("auto", Xs, y, W, b)])
            td = (float(np.median(td)), float(np.min(td)))
            tc = (float(np.median(tc)), float(np.min(tc)))
            res[(batch, shape, "dense-1%", "auto")] = td
            res[(batch, shape, "csr-1%", "auto")] = tc
            print(f"target 3: batch {batch} {shape} 1% density, auto: dense {ms(td)}, "
                  f"CSR {ms(tc)} -> {ratio(td, tc)} (target >= 5x)", flush=True)
    return res


if __name__ == "__main__":
    side_by_side()
