"""Optimizers at work on 2-D test functions: the course's trajectory pictures.

Each test function has an analytic gradient, a start point, a plotting window
and, per optimizer, a learning rate that shows the optimizer's character on
that surface.  A path is recorded by stepping the real optkern optimizer
class (the same compiled update kernels the estimators use) on a 2-element
float64 parameter array::

    from optkern import trajectories as tr
    path = tr.optimizer_path("rosenbrock", "adam", steps=500)   # (501, 2)
    tr.plot_paths("rosenbrock", {"adam": path}, "adam.png")     # needs matplotlib

``optkern trajectories`` is the command-line front end.
"""

import difflib
import math

import numpy as np

from optkern import optimizers as _opt

__all__ = ["FUNCTIONS", "OPTIMIZERS", "DEFAULT_OPTIMIZERS", "TestFunction", "get_function",
           "optimizer_path", "paths", "plot_paths", "animate_paths"]


class _Rates(dict):
    """A function's learning rates by optimizer name: the rates tuned for the
    picture, else the registry's estimator default for that name (a new
    optimizer draws with its estimator rate until someone tunes one)."""

    def __missing__(self, name):
        return _opt.OPTIMIZER_NAMES[name][1]

    def get(self, name, default=None):
        if name in self or name in _opt.OPTIMIZER_NAMES:
            return self[name]
        return default


class TestFunction:
    """A 2-D surface: value (vectorised over grids), gradient, and plot defaults."""

    def __init__(self, name, value, grad, start, xlim, ylim, minimum, lrs, steps,
                 log_contours, formula):
        self.name = name
        self._value = value
        self._grad = grad
        self.start = tuple(float(s) for s in start)
        self.xlim = xlim
        self.ylim = ylim
        self.minimum = minimum  # (x, y) of the global minimum, or None (unbounded)
        self.lrs = _Rates(lrs)
        self.steps = int(steps)
        self.log_contours = log_contours
        self.formula = formula

    def __call__(self, x, y):
        return self._value(x, y)

    def grad(self, p, out=None):
        """The gradient at p = [x, y], written into ``out`` (float64[2])."""
        out = np.empty(2) if out is None else out
        gx, gy = self._grad(float(p[0]), float(p[1]))
        out[0] = gx
        out[1] = gy
        return out

    def __repr__(self):
        return f"TestFunction({self.name!r}: {self.formula})"


# Ill-conditioned bowl, condition number 20: plain gradient descent zig-zags
# across the narrow axis; momentum and the adaptive methods do not.
_QA, _QB = 1.0, 20.0


def _beale_value(x, y):
    return ((1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2
            + (2.625 - x + x * y ** 3) ** 2)


def _beale_grad(x, y):
    t1 = 1.5 - x + x * y
    t2 = 2.25 - x + x * y ** 2
    t3 = 2.625 - x + x * y ** 3
    gx = 2 * t1 * (y - 1) + 2 * t2 * (y ** 2 - 1) + 2 * t3 * (y ** 3 - 1)
    gy = 2 * t1 * x + 2 * t2 * 2 * x * y + 2 * t3 * 3 * x * y ** 2
    return gx, gy


FUNCTIONS = {
    "quadratic": TestFunction(
        "quadratic",
        lambda x, y: 0.5 * (_QA * x ** 2 + _QB * y ** 2),
        lambda x, y: (_QA * x, _QB * y),
        start=(-4.0, 1.5), xlim=(-4.5, 1.5), ylim=(-2.0, 2.0), minimum=(0.0, 0.0),
        lrs={"sgd": 0.09, "momentum": 0.01, "nesterov": 0.01, "adagrad": 1.0,
             "rmsprop": 0.05, "adadelta": 10.0, "adam": 0.2, "adamw": 0.2, "adamax": 0.3,
             "nadam": 0.2, "radam": 0.3, "sgld": 0.05},
        steps=200, log_contours=False, formula="0.5 (x^2 + 20 y^2)"),
    "rosenbrock": TestFunction(
        "rosenbrock",
        lambda x, y: (1 - x) ** 2 + 100 * (y - x ** 2) ** 2,
        lambda x, y: (-2 * (1 - x) - 400 * x * (y - x ** 2), 200 * (y - x ** 2)),
        start=(-1.5, 2.0), xlim=(-2.0, 2.0), ylim=(-1.0, 3.0), minimum=(1.0, 1.0),
        lrs={"sgd": 2e-3, "momentum": 1e-3, "nesterov": 1e-3, "adagrad": 1.0,
             "rmsprop": 0.01, "adadelta": 1.0, "adam": 0.05, "adamw": 0.05, "adamax": 0.5,
             "nadam": 0.02, "radam": 0.01, "sgld": 2e-3},
        steps=1000, log_contours=True, formula="(1 - x)^2 + 100 (y - x^2)^2"),
    "saddle": TestFunction(
        "saddle",
        lambda x, y: x ** 2 - y ** 2,
        lambda x, y: (2 * x, -2 * y),
        start=(-1.8, 1e-3), xlim=(-2.0, 2.0), ylim=(-2.0, 2.0), minimum=None,
        lrs={"sgd": 0.05, "momentum": 0.02, "nesterov": 0.02, "adagrad": 0.2,
             "rmsprop": 0.02, "adadelta": 1.0, "adam": 0.05, "adamw": 0.05,
             "adamax": 0.05, "nadam": 0.05, "radam": 0.05, "sgld": 0.01},
        steps=150, log_contours=False, formula="x^2 - y^2"),
    "monkey-saddle": TestFunction(
        "monkey-saddle",
        lambda x, y: x ** 3 - 3 * x * y ** 2,
        lambda x, y: (3 * x ** 2 - 3 * y ** 2, -6 * x * y),
        start=(1.2, 0.1), xlim=(-2.0, 2.0), ylim=(-2.0, 2.0), minimum=None,
        lrs={"sgd": 0.02, "momentum": 0.005, "nesterov": 0.005, "adagrad": 0.2,
             "rmsprop": 0.02, "adadelta": 1.0, "adam": 0.05, "adamw": 0.05,
             "adamax": 0.05, "nadam": 0.05, "radam": 0.05, "sgld": 0.01},
        steps=150, log_contours=False, formula="x^3 - 3 x y^2"),
    "beale": TestFunction(
        "beale", _beale_value, _beale_grad,
        start=(1.0, 1.4), xlim=(-0.5, 4.5), ylim=(-1.5, 2.0), minimum=(3.0, 0.5),
        lrs={"sgd": 0.01, "momentum": 2e-3, "nesterov": 2e-3, "adagrad": 0.5,
             "rmsprop": 0.01, "adadelta": 1.0, "adam": 0.05, "adamw": 0.05,
             "adamax": 0.3, "nadam": 0.05, "radam": 0.01, "sgld": 5e-3},
        steps=1000, log_contours=True,
        formula="(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2"),
}

# Options the pictures fix on top of a name's own (a visible but small noise).
_PICTURE_OPTIONS = {"sgld": {"noise_scale": 0.05}}

# The names of optkern.estimators.OPTIMIZER_NAMES (the registry's
# estimator_names, a rule registered at run time included):
# name -> (class, fixed options).
OPTIMIZERS = _opt._RegistryView(
    lambda: {name: (cls, {**fixed, **_PICTURE_OPTIONS.get(name, {})})
             for name, (cls, _lr, fixed) in _opt.OPTIMIZER_NAMES.items()},
    "trajectory optimizer names -> (class, fixed options)")

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")


def _unknown(kind, name, valid):
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown {kind} {name!r}; choose from {', '.join(valid)}{hint}")


def get_function(name):
    """The TestFunction called ``name`` (or ``name`` itself if it is one)."""
    if isinstance(name, TestFunction):
        return name
    try:
        return FUNCTIONS[name]
    except (KeyError, TypeError):
        raise _unknown("function", name, FUNCTIONS) from None


def optimizer_path(function, optimizer, *, lr=None, steps=None, start=None, backend="numba",
                   seed=0, escape=10.0, **params):
    """The iterates of ``optimizer`` on ``function``: an array (n_steps + 1, 2).

    ``optimizer`` is a name from ``OPTIMIZERS``; ``lr=None`` takes the
    function's default for it; ``params`` go to the optimizer class.  The path
    stops early when it leaves the plotting window by more than ``escape``
    window sizes (the saddles are unbounded below) or stops being finite.
    """
    fn = get_function(function)
    try:
        cls, fixed = OPTIMIZERS[optimizer]
    except (KeyError, TypeError):
        raise _unknown("optimizer", optimizer, OPTIMIZERS) from None
    steps = fn.steps if steps is None else int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    kwargs = dict(fixed)
    kwargs.update(params)
    if cls._noisy:
        kwargs.setdefault("seed", seed)
    p = np.array(fn.start if start is None else start, dtype=np.float64)
    if p.shape != (2,):
        raise ValueError(f"start must be a pair (x, y), got {start!r}")
    rate = fn.lrs[optimizer] if lr is None else float(lr)
    opt = cls(p, lr=rate, backend=backend, **kwargs)
    span = max(fn.xlim[1] - fn.xlim[0], fn.ylim[1] - fn.ylim[0])
    cx, cy = 0.5 * (fn.xlim[0] + fn.xlim[1]), 0.5 * (fn.ylim[0] + fn.ylim[1])
    limit = escape * span
    out = np.empty((steps + 1, 2))
    out[0] = p
    g = np.empty(2)
    n = 1
    for _ in range(steps):
        fn.grad(p, out=g)
        if not np.all(np.isfinite(g)):
            break
        opt.step(g)
        if not (np.all(np.isfinite(p)) and abs(p[0] - cx) < limit and abs(p[1] - cy) < limit):
            break
        out[n] = p
        n += 1
    return out[:n].copy()


def paths(function, optimizers=DEFAULT_OPTIMIZERS, *, lrs=None, steps=None, start=None,
          backend="numba", seed=0):
    """{name: path} for several optimizers; ``lrs`` maps names to rates."""
    lrs = lrs or {}
    return {name: optimizer_path(function, name, lr=lrs.get(name), steps=steps, start=start,
                                 backend=backend, seed=seed)
            for name in optimizers}


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'optkern[plot]'") from None


def _figure(fn, path_dict, lrs, figsize, dpi, grid=300, legend_loc="best"):
    _require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib import colors as mcolors

    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot()
    xs = np.linspace(fn.xlim[0], fn.xlim[1], grid)
    ys = np.linspace(fn.ylim[0], fn.ylim[1], grid)
    X, Y = np.meshgrid(xs, ys)
    Z = fn(X, Y)
    if fn.log_contours:
        zmin = max(float(Z.min()), 1e-3)
        levels = np.logspace(math.log10(zmin), math.log10(float(Z.max())), 25)
        norm = mcolors.LogNorm(vmin=levels[0], vmax=levels[-1])
        ax.contourf(X, Y, np.maximum(Z, levels[0]), levels=levels, norm=norm, cmap="Greys_r",
                    alpha=0.6)
        ax.contour(X, Y, np.maximum(Z, levels[0]), levels=levels, norm=norm, colors="grey",
                   linewidths=0.5)
    else:
        ax.contourf(X, Y, Z, levels=30, cmap="Greys_r", alpha=0.6)
        ax.contour(X, Y, Z, levels=30, colors="grey", linewidths=0.5)
    if fn.minimum is not None:
        ax.plot(*fn.minimum, marker="*", markersize=16, color="gold", markeredgecolor="black",
                linestyle="none", zorder=5, label="minimum")
    ax.plot(*fn.start, marker="o", markersize=8, color="black", linestyle="none", zorder=5)
    palette = _palette(len(path_dict))
    lines = {}
    for i, ((name, path), colour) in enumerate(zip(path_dict.items(), palette)):
        end = path[-1]
        label = f"{name} (lr={lrs.get(name, fn.lrs.get(name)):g}, f={fn(end[0], end[1]):.3g})"
        (line,) = ax.plot(path[:, 0], path[:, 1], color=colour, linewidth=2,
                          linestyle="-" if i < 10 else "--",  # tab10 has ten colours
                          marker="o", markersize=2, label=label, zorder=4)
        lines[name] = line
    ax.set_xlim(*fn.xlim)
    ax.set_ylim(*fn.ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"{fn.name}: f(x, y) = {fn.formula}")
    ax.legend(loc=legend_loc, fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return fig, lines


def _palette(n):
    import matplotlib

    base = list(matplotlib.colormaps["tab10"].colors)
    if n > len(base):
        base += list(matplotlib.colormaps["Dark2"].colors)
    return [base[i % len(base)] for i in range(n)]


def plot_paths(function, path_dict, out, *, lrs=None, figsize=(8, 6), dpi=100):
    """Contour plot of ``function`` with each path in its own colour, saved to ``out``
    (a file name or a binary file object; PNG unless the name says otherwise)."""
    fn = get_function(function)
    fig, _ = _figure(fn, path_dict, lrs or {}, figsize, dpi)
    fig.savefig(out, dpi=dpi, format=None if isinstance(out, str) else "png")
    return fig


def animate_paths(function, path_dict, out, *, lrs=None, figsize=(8, 6), dpi=80, fps=12,
                  frames=40):
    """An animated GIF of the paths being drawn, ``frames`` frames at ``fps``.

    The contours are drawn once and each frame blits only the paths (a full
    redraw per frame, as matplotlib's PillowWriter does, is ~20x slower); the
    frames are written by Pillow exactly as PillowWriter writes them.
    """
    fn = get_function(function)
    fig, lines = _figure(fn, path_dict, lrs or {}, figsize, dpi, grid=200)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    for line in lines.values():
        line.set_animated(True)  # left out of the background
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    ax = fig.axes[0]
    longest = max((len(p) for p in path_dict.values()), default=1)
    ends = np.unique(np.linspace(1, longest, max(2, int(frames))).astype(int))
    images = []
    for end in ends:
        canvas.restore_region(background)
        for name, line in lines.items():
            path = path_dict[name][:end]
            line.set_data(path[:, 0], path[:, 1])
            ax.draw_artist(line)
        images.append(Image.frombuffer("RGBA", canvas.get_width_height(),
                                       bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1)
                      .convert("RGB"))
    images += [images[-1]] * int(fps)  # hold the final picture for a second
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(1000 / fps), loop=0)
    return len(ends)
