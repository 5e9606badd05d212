"""The compiled epochs' results do not depend on where NumPy put the arrays.

A loop compiled with the ``reassoc`` fast-math flag that stores into one array
and sums into a scalar vectorises with a run-time overlap check: when the
stored array lies within a few vectors after a loaded one, the scalar loop
runs, and its in-order sum gives other last bits than the vector form's
partial sums (docs/losses.md, "Precision"; the penalty kernels had it,
tests/test_losses.py::test_penalty_bits_do_not_depend_on_where_the_arrays_lie).
"""

import numpy as np
import pytest
import scipy.sparse as sp

from optkern.kernels import epoch_drivers, loss_rules

SCALAR_LOSSES = [name for name, spec in loss_rules.LOSS_RULES.items() if spec.kind == "scalar"]


def _csr_problem(loss, dtype, k, n=12, d=9):
    rng = np.random.default_rng(k)
    X = sp.random(n, d, density=0.5, random_state=k, format="csr", dtype=dtype)
    binary = loss_rules.LOSS_RULES[loss].target == "binary"
    T = (rng.integers(0, 2, (n, k)) if binary else rng.standard_normal((n, k))).astype(dtype)
    W = rng.standard_normal((d, k)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    return X, T, W, b


@pytest.mark.parametrize("k", [4, 8, 10])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", SCALAR_LOSSES)
def test_csr_epoch_loss_bits_do_not_depend_on_where_the_arrays_lie(loss, dtype, k):
    """The CSR epoch's batch pass (templates/epoch_parts.py ``batch_csr``,
    reassociated) gives the same loss, dW and db bits wherever its row
    buffers Z (scores) and D (derivatives) lie relative to each other and
    to the targets T.  With the rule's derivative stores and the row's loss
    sum in one loop (``scalar_loss``), a D lying 0-15 elements after Z or
    after T's last row ran the scalar loop: a row's loss moved in its last
    bits (squared, huber, hinge, ... from 4 outputs).  Each row is its own
    batch, so that no larger sum absorbs a last-bit difference."""
    X, T0, W, b = _csr_problem(loss, dtype, k)
    n, d = X.shape
    mod = epoch_drivers.module_for(loss, "sgd", "csr")
    data, indices, indptr = X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)
    sw = np.ones(n, dtype)
    order = np.arange(n, dtype=np.int64)
    dWp = np.zeros((1, d, k), dtype)
    dbp = np.zeros((1, k), dtype)
    lossp = np.zeros(1)
    wsump = np.zeros(1)
    buf = np.zeros(4 * n * k + 600, dtype)
    t_at = 8
    z_at = t_at + n * k + 300
    # D right after Z at every offset of a vector width x interleave window,
    # right after T's last row likewise, far from both
    places = [z_at + o for o in range(k, k + 24)] + \
        [t_at + n * k + o for o in range(24)] + [buf.shape[0] - k]
    results = set()
    for at in places:
        buf[:] = 0
        T = buf[t_at:t_at + n * k].reshape(n, k)
        T[:] = T0
        Z = buf[z_at:z_at + k].reshape(1, k)
        D = buf[at:at + k].reshape(1, k)
        bits = []
        for i in range(n):
            mod._batch_serial(data, indices, indptr, T, sw, order, i, i + 1, 1, W, b, dWp, dbp,
                              Z, D, lossp, wsump, dtype(0.1))
            bits.append((lossp.tobytes(), dWp.tobytes(), dbp.tobytes()))
        results.add(tuple(bits))
    assert len(results) == 1
