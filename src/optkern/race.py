"""The optimizer race: steps and time per step of every optimizer on
f(x) = 0.5 x^T diag(a) x with condition number 100 (``optkern race``)."""

import sys
import time

import numpy as np


def race_settings():
    # learning rates chosen for f(x) = 0.5 * sum(a_i x_i^2), a_i in [1, 100]
    import optkern

    return [
        ("SGD", optkern.SGD, dict(lr=0.019)),
        ("SGD momentum", optkern.SGD, dict(lr=0.01, momentum=0.9)),
        ("SGD nesterov", optkern.SGD, dict(lr=0.01, momentum=0.9, nesterov=True)),
        ("Adagrad", optkern.Adagrad, dict(lr=0.5)),
        ("RMSprop", optkern.RMSprop, dict(lr=0.01)),
        ("Adadelta", optkern.Adadelta, dict(lr=1.0, rho=0.9, eps=1e-4)),
        ("Adam", optkern.Adam, dict(lr=0.05)),
        ("AdamW", optkern.AdamW, dict(lr=0.05, weight_decay=0.0)),
        ("Adamax", optkern.Adamax, dict(lr=0.05)),
        ("NAdam", optkern.NAdam, dict(lr=0.05)),
        ("RAdam", optkern.RAdam, dict(lr=0.05)),
    ]


def race(n=10_000, tol=1e-6, max_steps=5_000, backends=None, dtype="float64", out=None):
    """Steps for f(x)/f(x0) < tol on f = 0.5 x^T diag(a) x, condition number 100."""
    import optkern

    out = sys.stdout if out is None else out
    dt = np.dtype(dtype)
    a = np.logspace(0, 2, n).astype(dt)
    backends = list(backends or [b for b in optkern.available_backends() if b != "cuda"])
    f0 = 0.5 * float(np.dot(a, np.ones(n, dt)))
    rows = []
    for label, cls, kw in race_settings():
        row = [label]
        for be in backends:
            warm = np.ones(n, dtype=dt)  # first call compiles: keep it out of the timing
            cls(warm, backend=be, **kw).step(a * warm)
            x = np.ones(n, dtype=dt)
            g = np.empty_like(x)
            opt = cls(x, backend=be, **kw)
            steps, elapsed = max_steps, 0.0
            for t in range(1, max_steps + 1):
                np.multiply(a, x, out=g)
                t0 = time.perf_counter()
                opt.step(g)
                elapsed += time.perf_counter() - t0
                if 0.5 * float(np.dot(a * x, x)) < tol * f0:
                    steps = t
                    break
            conv = str(steps) if steps < max_steps else f">{max_steps}"
            row.append(f"{conv:>6} {1e6 * elapsed / t:8.1f}us")
        rows.append(row)
    header = ["optimizer"] + [f"{b} (steps, per step)" for b in backends]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print(f"Race on an ill-conditioned quadratic: n={n}, condition number 100, "
          f"{dt.name}, stop at f(x)/f(x0) < {tol:g}", file=out)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)), file=out)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)
    return rows
