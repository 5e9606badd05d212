"""``python -m optkern`` / ``optkern``: the command line.

``optkern race`` (the default for now) races every optimizer on an
ill-conditioned quadratic bowl on every available backend and prints the
steps each needs to converge, and the time per step.  The same optimizer
takes the same number of steps on every backend: the backends agree.
"""

import argparse
import sys
import time

import numpy as np


def _race_settings():
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


def race(n=10_000, tol=1e-6, max_steps=5_000, backends=None, dtype="float64", out=sys.stdout):
    """Steps for f(x)/f(x0) < tol on f = 0.5 x^T diag(a) x, condition number 100."""
    import optkern

    dt = np.dtype(dtype)
    a = np.logspace(0, 2, n).astype(dt)
    backends = list(backends or [b for b in optkern.available_backends() if b != "cuda"])
    f0 = 0.5 * float(np.dot(a, np.ones(n, dt)))
    rows = []
    for label, cls, kw in _race_settings():
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="optkern", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    p_race = sub.add_parser("race", help="race every optimizer on an ill-conditioned quadratic")
    p_race.add_argument("--size", type=int, default=10_000, help="number of parameters")
    p_race.add_argument("--tol", type=float, default=1e-6)
    p_race.add_argument("--max-steps", type=int, default=5_000)
    p_race.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p_race.add_argument("--backends", nargs="+", default=None,
                        help="backends to race (default: every available one but cuda)")
    args = parser.parse_args(argv)
    if args.command in (None, "race"):
        if args.command is None:
            args = p_race.parse_args([])
        if args.size < 1 or args.max_steps < 1 or not args.tol > 0:
            parser.error("--size and --max-steps must be >= 1 and --tol > 0")
        if args.backends:
            import optkern
            for be in args.backends:
                if be not in optkern.available_backends():
                    parser.error(f"--backends: {be!r} is not available here; choose from "
                                 f"{list(optkern.available_backends())}")
        race(n=args.size, tol=args.tol, max_steps=args.max_steps, backends=args.backends,
             dtype=args.dtype)
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
