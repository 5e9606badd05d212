"""Whether two arrays share memory (host arrays, CUDA device arrays).

``Optimizer`` refuses parameters that overlap each other and gradients that
overlap a parameter (``optkern._optim_groups``); ``arrays_overlap`` is
public through ``optkern.optimizers``.
"""

import numpy as np


def _host_view(a):
    """The NumPy array behind ``a``: itself, or the one numba's CUDA simulator keeps."""
    if isinstance(a, np.ndarray):
        return a
    ary = getattr(a, "_ary", None)
    return ary if isinstance(ary, np.ndarray) else None


def _device_layout(a):
    """(pointer, shape, byte strides, dtype) of a CUDA array, from its
    __cuda_array_interface__, or None for anything else."""
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is None:
        return None
    ptr, shape = int(iface["data"][0]), tuple(int(n) for n in iface["shape"])
    dtype = np.dtype(iface["typestr"])
    strides = iface.get("strides")
    if strides is None:
        strides, acc = [], dtype.itemsize
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= n
    return ptr, shape, tuple(int(s) for s in strides), dtype


def _device_bounds(layout):
    """[lo, hi) byte addresses a device array's elements occupy."""
    ptr, shape, strides, dtype = layout
    if any(n == 0 for n in shape):
        return ptr, ptr
    lo = ptr + sum(min(0, (n - 1) * st) for n, st in zip(shape, strides))
    hi = ptr + sum(max(0, (n - 1) * st) for n, st in zip(shape, strides)) + dtype.itemsize
    return lo, hi


def _device_overlap(la, lb):
    """Whether two device arrays share memory, exactly: bounds first, then
    NumPy's exact test on host views with the same offsets and strides into
    one anonymous mapping spanning both (address space only: its pages are
    never touched, so nothing is allocated), which tells interleaved views
    such as d[::2] and d[1::2] apart."""
    (alo, ahi), (blo, bhi) = _device_bounds(la), _device_bounds(lb)
    if not (alo < bhi and blo < ahi):
        return False
    lo, hi = min(alo, blo), max(ahi, bhi)
    try:
        import mmap

        span = mmap.mmap(-1, hi - lo)
        views = [np.ndarray(shape, dtype, buffer=span, offset=ptr - lo, strides=strides)
                 for ptr, shape, strides, dtype in (la, lb)]
    except (OSError, ValueError, OverflowError):
        return True     # cannot tell: overlapping bounds count as overlap
    return _shares_memory(*views)


def _shares_memory(a, b):
    """NumPy's exact test; too hard to decide counts as overlap."""
    try:
        return bool(np.shares_memory(a, b, max_work=10 ** 6))
    except getattr(np, "exceptions", np).TooHardError:
        return True


def arrays_overlap(a, b):
    """Whether two arrays (host, or CUDA device arrays) share memory.  Bounds
    first; NumPy's exact test only when the bounds overlap (and two different
    arrays that each own their data are two allocations: no test at all)."""
    if a is b:
        return True
    ha, hb = _host_view(a), _host_view(b)
    if ha is not None and hb is not None:
        if ha is not hb and ha.flags.owndata and hb.flags.owndata:
            return False
        return np.may_share_memory(ha, hb) and _shares_memory(ha, hb)
    la, lb = _device_layout(a), _device_layout(b)
    if la is None or lb is None:
        return False
    return _device_overlap(la, lb)
