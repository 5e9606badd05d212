"""Issue 16 item 4: Ctrl-C and SIGTERM during `optkern train`, in a subprocess.

SIGINT during an epoch keeps an existing -o file byte for byte, saves the
partial model only to --save-interrupted's path, exits 130; SIGINT or SIGTERM
during the save removes the temporary file (130 / 143).  The save is slowed
down by a wrapper that announces it, so the signal lands inside it every time.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import optkern
import optkern.cli
import optkern.io

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

WRAPPER = r"""
import signal, sys, time
import numpy as np
# as from a terminal: a process started in the background by a shell without
# job control (nohup ... &, a CI runner) inherits SIGINT ignored, and Python
# then keeps it ignored; these tests press Ctrl-C
signal.signal(signal.SIGINT, signal.default_int_handler)
if sys.argv[1] == "slow-save":
    real = np.savez
    def slow(fh, **arrays):
        fh.write(b"partial bytes of a model being written")
        fh.flush()
        print("SAVING", file=sys.stderr, flush=True)
        time.sleep(60)
        real(fh, **arrays)
    np.savez = slow
from optkern.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _start(tmp_path, mode, argv):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(script), mode] + [str(a) for a in argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)


def _wait_for(proc, needle, timeout=120):
    """Read stderr lines until one contains ``needle``; return the lines."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"never saw {needle!r}; stderr: {''.join(lines)[-2000:]}")


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4_000, 20))
    y = np.argmax(X[:, :4] + 0.5 * rng.normal(size=(4_000, 4)), axis=1)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    model = tmp_path / "model.npz"
    assert optkern.cli.main(["train", str(tmp_path / "d.npz"), "-o", str(model), "-q",
                             "--backend", "numpy", "--epochs", "1"]) == 0
    return tmp_path / "d.npz", model


def _leftovers(tmp_path):
    return sorted(f for f in os.listdir(tmp_path) if f.startswith(".") and f.endswith(".tmp"))


@pytest.mark.parametrize("backend,save", [("cython", True), ("numba", False), ("numpy", True)])
def test_sigint_during_an_epoch(tmp_path, data, backend, save):
    path, model = data
    before = _digest(model)
    argv = ["train", path, "-o", model, "--backend", backend, "--epochs", "100000",
            "--tol", "none", "--batch-size", "8"] + (["--save-interrupted"] if save else [])
    proc = _start(tmp_path, "plain", argv)
    _wait_for(proc, "epoch    2")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _digest(model) == before                   # -o as it was, byte for byte
    partial = tmp_path / "model.interrupted.npz"
    assert f"{model} was not touched" in err
    if save:
        assert str(partial) in err and partial.exists()
        est = optkern.load(partial)
        assert est.n_iter_ >= 2
        assert optkern.io.read_metadata(partial)["extra"]["interrupted_after_epochs"] == \
            est.n_iter_
    else:
        assert not partial.exists() and "--save-interrupted" in err and str(partial) in err
    assert _leftovers(tmp_path) == []
    assert took < 10, took                            # answered promptly (loaded CI: slack)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_the_save_leaves_no_temporary_file(tmp_path, data, sig, code):
    path, model = data
    before = _digest(model)
    proc = _start(tmp_path, "slow-save", ["train", path, "-o", model, "--backend", "numpy",
                                          "--epochs", "1", "-q"])
    _wait_for(proc, "SAVING")
    assert len(_leftovers(tmp_path)) == 1             # the save is under way
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and ("interrupted" in err or "terminated" in err)
    assert _digest(model) == before
    assert _leftovers(tmp_path) == []


def test_sigterm_during_training(tmp_path, data):
    path, model = data
    before = _digest(model)
    proc = _start(tmp_path, "plain", ["train", path, "-o", model, "--backend", "cython",
                                      "--epochs", "100000", "--tol", "none",
                                      "--save-interrupted"])
    _wait_for(proc, "epoch    1")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert _digest(model) == before
    assert not (tmp_path / "model.interrupted.npz").exists()   # SIGTERM: nothing saved
    assert _leftovers(tmp_path) == []


def test_save_interrupted_needs_a_path_or_output(tmp_path, data, capsys):
    path, model = data
    rc = optkern.cli.main(["train", str(path), "--save-interrupted", "-q"])
    assert rc == 2 and "needs -o" in capsys.readouterr().err
    rc = optkern.cli.main(["train", str(path), "-o", str(model), "--save-interrupted",
                           str(model), "-q"])
    assert rc == 2 and "same file" in capsys.readouterr().err
