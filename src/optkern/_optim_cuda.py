"""The CUDA paths of an ``Optimizer``: device copies of the params, device
gradients and the per-tensor CUDA kernel launches."""

import numpy as np

from optkern import _backend
from optkern.kernels import drivers


class CudaArrays:
    """Mixin of ``Optimizer``: params, gradients and steps on a CUDA device."""

    def _setup_cuda_group(self, g):
        from numba import cuda
        g.flat = []
        g.orders = []
        self._host_arrays = getattr(self, "_host_arrays", {})
        for i, a in enumerate(g.arrays):
            if _backend.is_cuda_array(a):
                d = _backend.as_device_array(a)
                if not (d.is_c_contiguous() or d.is_f_contiguous()):
                    raise ValueError(f"params[{i}] (device array) is not contiguous")
                order = "C" if d.is_c_contiguous() else "F"
                flat = d.reshape(d.size, order=order) if d.ndim != 1 else d
            else:
                order = "C" if a.flags.c_contiguous else "F"
                flat = cuda.to_device(a.reshape(-1, order=order))
            g.flat.append(flat)
            g.orders.append(order)
        g.flat = tuple(g.flat)
        g.orders = tuple(g.orders)

    def _cuda_grad(self, g, i, gr, name):
        from numba import cuda
        p = g.arrays[i]
        if tuple(gr.shape) != tuple(p.shape):
            raise ValueError(f"{name} has shape {tuple(gr.shape)} but the parameter has "
                             f"shape {tuple(p.shape)}")
        if np.dtype(gr.dtype) != g.dtype:
            raise TypeError(f"{name} has dtype {gr.dtype} but the parameter has {g.dtype}")
        if _backend.is_cuda_array(gr):
            d = _backend.as_device_array(gr)
            if d.ndim == 1:
                return d
            if (g.orders[i] == "C" and d.is_c_contiguous()) or \
                    (g.orders[i] == "F" and d.is_f_contiguous()):
                return d.reshape(d.size, order=g.orders[i])
            raise ValueError(f"{name} (device array) must have the parameter's memory order")
        if not isinstance(gr, np.ndarray):
            raise TypeError(f"{name} must be an array, got {type(gr).__name__}")
        return cuda.to_device(np.ravel(gr, order=g.orders[i]))

    def _cuda_step(self, g, flat_grads, states, avg, hyper, avg_weight, key):
        kern = drivers.cuda_kernel(self._spec.name)
        cast = g.dtype.type
        hyper_c = tuple(cast(h) for h in hyper)
        threads = 256
        for k, (p, gr) in enumerate(zip(g.flat, flat_grads)):
            n = p.shape[0]
            blocks = min(1024, max(1, (n + threads - 1) // threads))
            kern[blocks, threads](p, gr, *[None if s is None else s[k] for s in states],
                                  None if avg is None else avg[k], hyper_c, cast(0),
                                  cast(avg_weight), key, int(g.offsets[k]))
        for k, a in enumerate(g.arrays):
            if not _backend.is_cuda_array(a):  # host param: copy the result back
                host = g.flat[k].copy_to_host()
                a.reshape(-1, order=g.orders[k])[...] = host
