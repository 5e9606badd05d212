"""The first call of each public entry point in a fresh process on an empty
cache: the entry points and the child process, shared by ``optkern bench
--rows first-call`` and ``asv_benchmarks/first_call.py``.

Each call runs in a new interpreter whose Numba cache and generated-driver
directory (NUMBA_CACHE_DIR, OPTKERN_CACHE_DIR) point at ``cache``; only the
call is timed (imports and data set-up are not), then the same call again in
that process.  ``settle`` waits, after the timed calls, for the compiles the
JIT service started to land in the cache before the process exits.
"""

import json
import os
import subprocess
import sys
import textwrap

_DIGITS = """
from sklearn.datasets import load_digits
_d = load_digits()
X = (_d.data / 16.0).astype(np.float32)
y = _d.target.astype(np.int64)
"""

# name -> (set-up code, the call, the table's label)
ENTRIES = {
    "loss_and_grad": (_DIGITS + """
W = np.zeros((64, 10), np.float32); b = np.zeros(10, np.float32)
""", "optkern.loss_and_grad(X, y, W, b, loss='softmax', alpha=1e-4)",
        "`loss_and_grad` softmax, digits float32"),
    "loss_and_grad_csr": (_DIGITS + """
import scipy.sparse as sp
Xs = sp.csr_matrix(X)
W = np.zeros((64, 10), np.float32); b = np.zeros(10, np.float32)
""", "optkern.loss_and_grad(Xs, y, W, b, loss='softmax', alpha=1e-4)",
        "`loss_and_grad` softmax, digits CSR float32"),
    "predict_scores": (_DIGITS + """
W = np.ones((64, 10), np.float32); b = np.zeros(10, np.float32)
""", "optkern.predict_scores(X, W, b)", "`predict_scores`, digits float32"),
    "fit_default": (_DIGITS, "optkern.LinearClassifier(random_state=0).fit(X, y)",
                    "`LinearClassifier().fit`, digits"),
    "fit_lbfgs": (_DIGITS, "optkern.LinearClassifier(solver='lbfgs', random_state=0).fit(X, y)",
                  "`LinearClassifier(solver='lbfgs').fit`, digits"),
    "fit_rmsprop_csr": (_DIGITS + """
import scipy.sparse as sp
Xs = sp.csr_matrix(X)
""", "optkern.LinearClassifier(optimizer='rmsprop', random_state=0).fit(Xs, y)",
        "`LinearClassifier(optimizer='rmsprop').fit`, digits CSR"),
    "fit_sgd_csr": (_DIGITS + """
import scipy.sparse as sp
Xs = sp.csr_matrix(X)
""", "optkern.LinearClassifier(loss='hinge', optimizer='sgd', random_state=0).fit(Xs, y)",
        "`LinearClassifier(loss='hinge', optimizer='sgd').fit`, digits CSR"),
    "fit_hinge_sgd": (_DIGITS,
                      "optkern.LinearClassifier(loss='hinge', optimizer='sgd', "
                      "random_state=0).fit(X, y)",
                      "`LinearClassifier(loss='hinge', optimizer='sgd').fit`, digits"),
    "fit_huber": ("""
from sklearn.datasets import load_diabetes
_d = load_diabetes()
X = _d.data.astype(np.float64); y = (_d.target - _d.target.mean()) / _d.target.std()
""", "optkern.LinearRegressor(loss='huber', random_state=0).fit(X, y)",
        "`LinearRegressor(loss='huber').fit`, diabetes"),
    "adam_step": ("""
p = np.zeros(1_000_000, np.float32); g = np.full(1_000_000, 1e-3, np.float32)
opt = optkern.Adam([p], lr=1e-3)
""", "opt.step([g])", "`Adam(...).step`, 1e6 float32"),
}


_CHILD = """
import json, time
import numpy as np
import optkern
{setup}
t0 = time.perf_counter()
{call}
t1 = time.perf_counter()
{call}
t2 = time.perf_counter()
served = None
try:
    from optkern import _jit
    served = _jit.stats()
    if {settle}:
        _jit.wait(timeout={timeout})
except ImportError:   # an optkern from before the JIT service (a "before" run)
    pass
print("RESULT " + json.dumps({{"first": t1 - t0, "second": t2 - t1, "served": served}}))
"""


def cache_env(cache):
    """The environment of a process whose caches live in ``cache``."""
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = os.path.join(cache, "numba")
    env["OPTKERN_CACHE_DIR"] = os.path.join(cache, "generated")
    return env


def run_child(setup, call, cache, settle=True, timeout=1800):
    """{"first": s, "second": s, "served": the JIT service's counts} of one
    fresh process running ``setup`` then ``call`` twice on ``cache``."""
    code = _CHILD.format(setup=textwrap.dedent(setup), call=call, settle=bool(settle),
                         timeout=timeout)
    out = subprocess.run([sys.executable, "-c", code], env=cache_env(cache),
                         capture_output=True, text=True, timeout=timeout + 300)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"first-call child failed:\n{out.stderr[-3000:]}")
