"""``optkern trajectories``: optimizer paths on the 2-D test functions."""

import math

import numpy as np

from optkern.cli._common import (EXIT_OK, UsageError, _check_plot_file,
                                 _refuse_overwriting_inputs, _save_figure, _table)


def cmd_trajectories(args):
    from optkern import trajectories as tr

    if args.output is None and args.animate is None:
        raise UsageError("give -o FILE.png and/or --animate FILE.gif")
    _check_plot_file(args.output, "-o/--output")
    _check_plot_file(args.animate, "--animate", allowed=["gif"])
    _refuse_overwriting_inputs([("-o/--output", args.output), ("--animate", args.animate)], [])
    fn = tr.get_function(args.function)
    lrs = dict(args.lr)
    for name in lrs:
        if name not in args.optimizers:
            raise UsageError(f"--lr {name}=...: {name!r} is not among --optimizers "
                             f"({', '.join(args.optimizers)})")
    paths = {}
    rows = []
    for name in args.optimizers:
        try:
            path = tr.optimizer_path(fn, name, lr=lrs.get(name), steps=args.steps,
                                     start=args.start, backend=args.backend, seed=args.seed)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{name}: {exc}") from None
        paths[name] = path
        end = path[-1]
        dist = "-" if fn.minimum is None else f"{math.hypot(*(end - np.array(fn.minimum))):.3g}"
        rows.append([name, f"{lrs.get(name, fn.lrs[name]):g}", len(path) - 1,
                     f"({end[0]:.4g}, {end[1]:.4g})", f"{fn(end[0], end[1]):.4g}", dist])
    x0, y0 = next(iter(paths.values()))[0] if paths else fn.start
    print(f"{fn.name}: f(x, y) = {fn.formula}, start ({x0:g}, {y0:g}), backend {args.backend}")
    print(_table(["optimizer", "lr", "steps", "end point", "f(end)", "distance to minimum"],
                 rows))
    shown_lrs = {n: lrs.get(n, fn.lrs[n]) for n in args.optimizers}
    if args.output:
        fig, _ = tr._figure(fn, paths, shown_lrs, (args.width / args.dpi,
                                                   args.height / args.dpi), args.dpi)
        _save_figure(fig, args.output)
        print(f"picture saved to {args.output}")
    if args.animate:
        from optkern.io import atomic_write
        with atomic_write(args.animate) as fh:
            tr.animate_paths(fn, paths, fh, lrs=shown_lrs, frames=args.frames, fps=args.fps,
                             figsize=(args.width / args.dpi, args.height / args.dpi),
                             dpi=args.dpi)
        print(f"animation saved to {args.animate}")
    return EXIT_OK
