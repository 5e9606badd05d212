"""backend="auto"'s decisions (not timings): given the work, the usable cores
and the load average, which backend it picks (optkern._backend.choose_auto;
docs/benchmarks.md, '"auto" under load')."""

import os

import numpy as np
import pytest

from optkern import _backend, losses

BIG = 10 * _backend.PARALLEL_MIN_SIZE
HAVE_CYTHON = _backend.cython_module() is not None


@pytest.fixture(autouse=True)
def _no_own_load(request, monkeypatch):
    """The tests below give the load average as others' load: this test
    process's own share (_backend.own_load, its CPU time per second over the
    last minute -- large once it has run other tests) is taken as none,
    except where it is the subject."""
    if "own_threads" not in request.node.name:
        monkeypatch.setattr(_backend, "own_load", lambda: 0.0)


@pytest.mark.parametrize("cores, load, busy", [
    (2, 0.0, False), (2, 1.0, False), (2, 1.5, False), (2, 1.51, True), (2, 3.0, True),
    (8, 6.0, False), (8, 7.6, True), (64, 40.0, False), (1, 0.0, True),
])
def test_machine_busy(cores, load, busy):
    assert _backend.machine_busy(load=load, cores=cores) is busy


@pytest.mark.parametrize("work, cores, load, expected", [
    (BIG, 2, 0.3, "numba-parallel"),           # quiet: parallel pays
    (BIG, 2, 1.0, "numba-parallel"),           # only this process running
    (BIG, 2, 2.0, "numba"),                    # another process holds a core
    (BIG, 2, 7.0, "numba"),
    (BIG, 16, 7.0, "numba-parallel"),          # busy, but cores to spare
    (BIG, 1, 0.0, "numba"),                    # one usable core
    (_backend.PARALLEL_MIN_SIZE - 1, 8, 0.0, "numba"),
    (_backend.PARALLEL_MIN_SIZE, 8, 0.0, "numba-parallel"),
])
def test_choose_auto_parallel_rule(work, cores, load, expected):
    assert _backend.choose_auto(work, load=load, cores=cores) == expected
    assert _backend.parallel_pays(work, load=load, cores=cores) is (expected == "numba-parallel")


@pytest.mark.parametrize("work, expected", [
    (_backend.LOSS_PARALLEL_MIN_SIZE - 1, "numba"),
    (_backend.LOSS_PARALLEL_MIN_SIZE, "numba-parallel"),
    (_backend.PARALLEL_MIN_SIZE, "numba"),     # a step would go parallel here
])
def test_losses_go_parallel_from_their_own_threshold(work, expected, monkeypatch):
    """The loss and prediction kernels count multiply-adds and go parallel
    from LOSS_PARALLEL_MIN_SIZE (a parallel region's wake-up outweighs less
    work); on a busy machine they stay serial."""
    assert _backend.LOSS_PARALLEL_MIN_SIZE > _backend.PARALLEL_MIN_SIZE
    assert _backend.choose_auto(work, kind="losses", load=0.0, cores=2) == expected
    assert _backend.choose_auto(work, kind="losses", load=9.0, cores=2) == "numba"
    # loss_and_grad counts two passes (scores, dW), predict_scores one
    monkeypatch.setattr(_backend, "_CORES", 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    Xd = np.zeros((-(-work // 20), 2))           # 2 n d k >= work
    assert losses._resolve_backend("auto", "dense", Xd, 10) == \
        ("numba-parallel" if 2 * Xd.size * 10 >= _backend.LOSS_PARALLEL_MIN_SIZE else "numba")
    assert losses._resolve_backend("auto", "dense", Xd, 10, passes=1) == \
        ("numba-parallel" if Xd.size * 10 >= _backend.LOSS_PARALLEL_MIN_SIZE else "numba")


@pytest.mark.skipif(not HAVE_CYTHON, reason="the Cython extension is not built")
@pytest.mark.parametrize("load", [0.0, 50.0])
def test_small_work_goes_to_cython_whatever_the_load(load):
    assert _backend.choose_auto(100, load=load, cores=2) == "cython"


@pytest.mark.parametrize("load", [0.0, 50.0])
def test_small_csr_stays_on_numba(load, monkeypatch):
    """CSR below CYTHON_MAX_SIZE: the serial Numba kernel (loss and predict),
    dense: the Cython one when built."""
    import scipy.sparse as sp
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    X = sp.random(1347, 64, density=0.01, format="csr", random_state=0)
    assert losses._resolve_backend("auto", "csr", X, 10) == "numba"
    Xd = np.zeros((10, 64))
    assert losses._resolve_backend("auto", "dense", Xd, 10) == \
        ("cython" if HAVE_CYTHON else "numba")


def test_device_arrays_stay_on_device():
    assert _backend.choose_auto(10, on_device=True, load=99.0, cores=2) == "cuda"


def test_choose_auto_reads_the_load_average(monkeypatch):
    """Without overrides the rule reads os.getloadavg() at call time."""
    monkeypatch.setattr(_backend, "_CORES", 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.9, 0.0, 0.0))
    assert _backend.choose_auto(BIG) == "numba"
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 5.0, 5.0))
    assert _backend.choose_auto(BIG) == "numba-parallel"


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_losses_follow_the_rule(monkeypatch, fmt):
    """loss_and_grad / predict_scores's auto: (4096, 784, 10) is parallel on a
    quiet 2-core machine, serial on a busy one; results agree either way
    (CSR at 5% density: 1.6 M multiply-adds, above LOSS_PARALLEL_MIN_SIZE)."""
    import scipy.sparse as sp
    monkeypatch.setattr(_backend, "_CORES", 2)
    rng = np.random.default_rng(0)
    n, d, k = 4096, 784, 10
    X = sp.random(n, d, density=0.05, format="csr", dtype=np.float64, random_state=0) \
        if fmt == "csr" else rng.standard_normal((n, d))
    y = rng.integers(0, k, n)
    W = rng.standard_normal((d, k)) * 0.01
    b = np.zeros(k)
    kind = "csr" if fmt == "csr" else "dense"
    results = {}
    for load, expected in ((0.5, "numba-parallel"), (3.0, "numba")):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert losses._resolve_backend("auto", kind, X, k) == expected
        results[expected] = losses.loss_and_grad(X, y, W, b, backend="auto")
    ref = losses.loss_and_grad(X, y, W, b, backend="numpy")
    for loss, dW, db in results.values():
        np.testing.assert_allclose(loss, ref[0], rtol=1e-10)
        np.testing.assert_allclose(dW, ref[1], rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(db, ref[2], rtol=1e-8, atol=1e-12)


def test_optimizer_auto_follows_the_rule(monkeypatch):
    """An optimizer resolves "auto" when its parameters are added."""
    import optkern
    monkeypatch.setattr(_backend, "_CORES", 2)
    for load, expected in ((0.5, "numba-parallel"), (3.0, "numba")):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        opt = optkern.Adam([np.zeros(BIG, np.float32)], backend="auto")
        assert opt.backend == expected


def test_passive_wait_policy_unless_the_user_chose():
    """optkern asks GNU OpenMP for passive waiting unless OMP_WAIT_POLICY or
    GOMP_SPINCOUNT was set (the test process imports optkern with neither
    set, or with the user's value, which must be left alone)."""
    import subprocess
    import sys
    code = "import os, optkern; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "passive"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "active"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "active"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "1000"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "None"


def test_one_fit_decides_once(monkeypatch):
    """Inside decide_once (every fit), the load average is read once, on entry:
    a load that moves during an L-BFGS fit does not switch its loss kernel
    between the serial and the parallel one (their sums differ in the last
    bits).  Outside it, every call reads the load again."""
    loads = iter([0.2, 9.0, 9.0, 9.0, 0.2, 9.0])
    reads = []

    def getloadavg():
        reads.append(1)
        return (next(loads), 0.0, 0.0)

    monkeypatch.setattr(os, "getloadavg", getloadavg)
    monkeypatch.setattr(_backend, "_CORES", 2)
    with _backend.decide_once():                  # reads 0.2
        assert _backend.choose_auto(BIG) == "numba-parallel"
        assert _backend.choose_auto(BIG) == "numba-parallel"
        with _backend.decide_once():              # nested: the outer reading
            assert _backend.choose_auto(BIG) == "numba-parallel"
    assert len(reads) == 1
    assert _backend.choose_auto(BIG) == "numba"   # 9.0, read per call again
    assert len(reads) == 2


@pytest.mark.filterwarnings("ignore:L-BFGS did not converge")
def test_lbfgs_fit_reads_the_load_once(monkeypatch):
    """An L-BFGS fit's loss calls all see the load read when the fit began."""
    import optkern
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    calls = []
    real = os.getloadavg

    def getloadavg():
        calls.append(1)
        return real()

    monkeypatch.setattr(os, "getloadavg", getloadavg)
    clf = optkern.LinearClassifier(solver="lbfgs", max_epochs=30).fit(X / 16.0, y)
    assert clf.n_iter_ > 5                        # many loss calls ...
    assert len(calls) == 1                        # ... one reading


def test_the_load_leaves_out_this_process_own_threads(monkeypatch):
    """The 1-minute load average counts this process's threads too: a process
    that has trained with two threads for minutes reads ~2 on a quiet 2-core
    machine and must not take that for a busy neighbour (own_load: its CPU
    time per second, averaged over a minute as the kernel averages the load);
    a neighbour's load on top still makes the machine busy."""
    clock = {"t": 1000.0, "cpu": 50.0}
    monkeypatch.setattr(_backend.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(_backend.time, "process_time", lambda: clock["cpu"])
    monkeypatch.setitem(_backend._OWN, "t", clock["t"])
    monkeypatch.setitem(_backend._OWN, "cpu", clock["cpu"])
    monkeypatch.setitem(_backend._OWN, "rate", 0.0)
    monkeypatch.setattr(_backend, "_CORES", 2)
    for _ in range(300):                       # 5 minutes at two busy threads
        clock["t"] += 1.0
        clock["cpu"] += 2.0
        _backend.own_load()
    assert _backend.own_load() == pytest.approx(2.0, rel=1e-2)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.05, 2.0, 2.0))   # ours alone
    assert _backend._measured_load() == pytest.approx(0.05, abs=0.05)
    assert not _backend.machine_busy()
    assert _backend.choose_auto(BIG) == "numba-parallel"
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 4.0, 4.0))    # plus two neighbours
    assert _backend.machine_busy()
    assert _backend.choose_auto(BIG) == "numba"
    # an idle process reads the whole load average as the others'
    for _ in range(600):
        clock["t"] += 1.0
        _backend.own_load()
    assert _backend.own_load() < 0.01
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 1.6, 1.6))
    assert _backend._measured_load() == pytest.approx(1.6, abs=0.02)
    assert _backend.machine_busy()
