"""Memory checked before it is allocated.

A fit allocates arrays of n_features x n_outputs: the weights, the optimizer's
state, and the fit's own buffers (gradient, the last finite epoch's weights
and state for the divergence rollback, the public ``coef_``).  One huge
feature index in a 21-byte svmlight file (``1 2147483647:1``) makes
n_features 2**31 and the fit would try to allocate tens of GiB before anything
stopped it.  ``check_fit_memory`` computes those bytes from (n_features,
n_outputs, dtype, optimizer, solver) and raises ``ModelTooLargeError`` -- a
``MemoryError`` and a ``ValueError`` -- naming the sizes and the remedy when
they exceed the limit.

The limit: ``OPTKERN_MEMORY_LIMIT`` (the command line's ``--memory-limit``
sets it) -- a number of bytes with an optional K/M/G/T suffix (``64G``), a
fraction of the available memory (``0.95``), or ``none`` for no limit.  The
default is 80% of the memory available when the fit starts (MemAvailable on
Linux, else the free physical pages); where neither can be read, no limit.
"""

import os
import re

import numpy as np

__all__ = ["ModelTooLargeError", "MEMORY_LIMIT_ENV", "DEFAULT_FRACTION", "memory_limit",
           "parse_memory_limit", "fit_bytes", "check_fit_memory", "format_bytes"]

MEMORY_LIMIT_ENV = "OPTKERN_MEMORY_LIMIT"
DEFAULT_FRACTION = 0.8
_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}
# L-BFGS-B keeps 10 correction pairs (scipy's default maxcor) of float64 vectors
_LBFGS_PAIRS = 10


class ModelTooLargeError(MemoryError, ValueError):
    """The fit would need more memory than the limit allows (nothing was allocated)."""


def format_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def available_memory():
    """Bytes of memory available now, or None when it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def parse_memory_limit(text):
    """``"64G"``/``"512M"``/``"1000000"`` -> ("bytes", n); ``"0.9"`` -> ("fraction", 0.9);
    ``"none"`` -> ("none", None).  ValueError naming the accepted forms otherwise."""
    t = str(text).strip().lower()
    if t in ("none", "off", "unlimited"):
        return "none", None
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", t)
    if m:
        value, unit = float(m.group(1)), m.group(2)
        if not unit and "." in m.group(1):
            if 0 < value <= 1:
                return "fraction", value
        elif value > 0:
            return "bytes", int(value * _UNITS[unit])
    raise ValueError(f"memory limit {str(text)[:80]!r}: expected a size such as 64G, 512M or "
                     "1000000 (bytes), a fraction of the available memory in (0, 1] such "
                     "as 0.9, or none")


def memory_limit():
    """(limit in bytes or None, a phrase saying where it comes from)."""
    raw = os.environ.get(MEMORY_LIMIT_ENV)
    kind, value = parse_memory_limit(raw) if raw else ("fraction", DEFAULT_FRACTION)
    source = f"{MEMORY_LIMIT_ENV}={raw}" if raw else "the default"
    if kind == "none":
        return None, source
    if kind == "bytes":
        return value, source
    avail = available_memory()
    if avail is None:
        return None, source
    return int(value * avail), (f"{value:.0%} of the {format_bytes(avail)} available, "
                                f"{source}")


def fit_bytes(n_features, n_outputs, dtype, n_states, *, solver="sgd", average=False,
              intercept=True, batch_rows=0):
    """An upper bound of the bytes a fit allocates, as (total, parts) where
    parts is a list of (what, bytes).  ``n_states``: the optimizer's state
    arrays per parameter (Adam 2, amsgrad 3; SGD 0, momentum 1); ``batch_rows``:
    rows of a dense minibatch gathered per step (the data itself is the
    caller's and is not counted)."""
    itemsize = np.dtype(dtype).itemsize
    size = int(n_features) * int(n_outputs) + (int(n_outputs) if intercept else 0)
    one = size * itemsize
    if solver == "lbfgs":
        f64 = size * 8
        parts = [("model (weights and coef_)", 2 * one),
                 ("L-BFGS vectors (x, gradient, search direction, float64)", 6 * f64),
                 (f"L-BFGS history ({_LBFGS_PAIRS} pairs, float64)", 2 * _LBFGS_PAIRS * f64)]
    else:
        parts = [("model (weights and coef_)", 2 * one),
                 # the state, its rollback copy, the next epoch's snapshot taken
                 # before the old one is freed, and the state_dict kept at the end
                 (f"optimizer state ({n_states} array{'s' if n_states != 1 else ''}, "
                  "rollback and saved copies)", 4 * n_states * one),
                 ("fit buffers (gradient, rollback weights, step temporaries"
                  f"{', Polyak average' if average is not False else ''})",
                  (6 + (average is not False)) * one)]
    if batch_rows:
        parts.append((f"a gathered minibatch ({int(batch_rows)} rows)",
                      int(batch_rows) * int(n_features) * itemsize))
    return sum(b for _, b in parts), parts


def check_fit_memory(n_features, n_outputs, dtype, n_states, *, solver="sgd", average=False,
                     intercept=True, batch_rows=0, what="the fit"):
    """Raise ModelTooLargeError when ``fit_bytes`` exceeds ``memory_limit()``."""
    total, parts = fit_bytes(n_features, n_outputs, dtype, n_states, solver=solver,
                             average=average, intercept=intercept, batch_rows=batch_rows)
    limit, source = memory_limit()
    if limit is None or total <= limit:
        return total
    detail = "; ".join(f"{w} {format_bytes(b)}" for w, b in parts)
    raise ModelTooLargeError(
        f"{what} needs about {format_bytes(total)} for {n_features} features x "
        f"{n_outputs} output{'s' if n_outputs != 1 else ''} in {np.dtype(dtype).name} "
        f"({detail}), above the memory limit of {format_bytes(limit)} ({source}). "
        "So many features usually come from a huge feature index or raw ids: hash them "
        "into fewer columns (sklearn.feature_extraction.FeatureHasher(n_features=2**20)) "
        "or renumber them; or use float32, or raise the limit with "
        f"{MEMORY_LIMIT_ENV} (command line: --memory-limit), e.g. 64G, 0.95 or none")
