"""The sparse step of an ``Optimizer``: ``step(grads, rows=...)``.

``SparseStepping`` is the part of ``optkern.optimizers.Optimizer`` that
updates only the given rows of a parameter ("lazy", "exact", "dense" or
"auto", see ``Optimizer.step``), on every backend.
"""

import numpy as np

from optkern import _backend
from optkern.kernels import _helpers, drivers, reference


class SparseStepping:
    """Mixin of ``Optimizer``: the ``rows=`` step."""

    def _zero_step_is_identity(self, user):
        """Whether a zero gradient leaves parameter and state unchanged (the
        registry entry's ``zero_grad_identity``)."""
        holds = self._spec.zero_grad_identity
        return bool(holds is not None and holds(dict(zip(self._spec.user_hyper, user))))

    def _sparse_args(self, grads, rows):
        """[(group, index in group, flat param, rows or None, grad)] validated."""
        items = (grads,) if isinstance(grads, np.ndarray) or _backend.is_cuda_array(grads) \
            else grads
        if not isinstance(items, (list, tuple)) or len(items) != self._n_params:
            raise ValueError(f"grads must hold {self._n_params} arrays (one per parameter)")
        if isinstance(rows, np.ndarray) or (isinstance(rows, (list, tuple)) and
                                            self._n_params == 1 and len(rows) and
                                            not isinstance(rows[0], (np.ndarray, type(None)))):
            rows = [rows]
        if not isinstance(rows, (list, tuple)) or len(rows) != self._n_params:
            raise ValueError(f"rows must hold {self._n_params} entries (one per parameter, "
                             "None for a dense update)")
        out = []
        pos = 0
        for g in self._groups:
            for i, a in enumerate(g.arrays):
                r, gr = rows[pos], items[pos]
                name = f"rows[{pos}]"
                self._check_grad_disjoint(gr, pos)
                if r is None:
                    out.append((g, i, None, gr, pos))
                    pos += 1
                    continue
                if g.device:
                    raise ValueError(f"{name}: a sparse step on device parameters takes "
                                     "host rows and gradients of a host parameter; use "
                                     "backend='cuda' with host arrays")
                if a.ndim not in (1, 2) or not a.flags.c_contiguous:
                    raise ValueError(f"{name}: a sparse step needs a C-contiguous 1-D or 2-D "
                                     f"parameter, params[{pos}] has shape {a.shape}")
                r = np.asarray(r)
                if r.ndim != 1 or r.dtype.kind not in "iu":
                    raise TypeError(f"{name} must be a 1-D integer array of row indices")
                r = r.astype(np.int64, copy=False)
                d = a.shape[0]
                k = 1 if a.ndim == 1 else a.shape[1]
                if r.size and (r.min() < 0 or r.max() >= d):
                    raise ValueError(f"{name} holds indices outside [0, {d})")
                if np.unique(r).size != r.size:
                    raise ValueError(f"{name} repeats a row: add the gradients of a row "
                                     "into one")
                if not isinstance(gr, np.ndarray):
                    raise TypeError(f"grads[{pos}] must be a NumPy array")
                if gr.dtype != g.dtype:
                    raise TypeError(f"grads[{pos}] has dtype {gr.dtype} but params[{pos}] "
                                    f"has dtype {g.dtype}")
                if gr.size != r.size * k or (gr.ndim == 2 and gr.shape != (r.size, k)):
                    raise ValueError(f"grads[{pos}] must have shape ({r.size}, {k}) (the "
                                     f"rows' gradients), got {gr.shape}")
                out.append((g, i, r, np.ascontiguousarray(gr).reshape(r.size, k), pos))
                pos += 1
        return out

    def _sparse_step(self, grads, rows, mode):
        if mode not in ("auto", "lazy", "exact", "dense"):
            raise ValueError(f"sparse_updates={mode!r}: choose one of 'auto', 'lazy', "
                             "'exact', 'dense'")
        args = self._sparse_args(grads, rows)
        hypers = [self._prepared_hyper(gi, g) for gi, g in enumerate(self._groups)]
        if mode in ("exact", "auto"):
            ident = all(self._zero_step_is_identity(u) for u in hypers)
            if mode == "exact" and not ident:
                raise ValueError(
                    f"sparse_updates='exact': a zero-gradient {type(self).__name__} step "
                    "with these options changes the untouched rows (momentum, weight "
                    "decay, noise or moments): the estimators' compiled epochs catch them "
                    "up in closed form; here use 'lazy' or 'dense'")
        if mode == "dense":
            dense = []
            for g, i, r, gr, pos in args:
                if r is None:
                    dense.append(gr)
                else:
                    full = np.zeros(g.arrays[i].shape, g.dtype)
                    full.reshape(full.shape[0], -1)[r] = gr
                    dense.append(full)
            return self.step(dense)
        if self.check_finite:
            from optkern.kernels import finite
            for g, i, r, gr, pos in args:
                arr = gr if isinstance(gr, np.ndarray) else None
                if arr is not None and finite.first_nonfinite(
                        (np.ascontiguousarray(arr).reshape(-1),)) >= 0:
                    raise FloatingPointError(
                        f"grads[{pos}] contains NaN or inf; parameters and optimizer state "
                        "are unchanged (pass check_finite=False to skip this check)")
        for gi, (g, user) in enumerate(zip(self._groups, hypers)):
            self._sparse_step_group(g, [a for a in args if a[0] is g], user)

    def _sparse_step_group(self, g, args, user):
        from optkern.kernels import sparse_drivers
        spec = self._spec
        step = g.step + 1
        averaging = self.average_start is not None and step > self.average_start
        avg_weight = 1.0 / (g.avg_count + 1) if averaging else 0.0
        key = _helpers.step_key(self.seed, step) if (self._noisy and self._noise_on(user)) \
            else None
        hyper, new_scalars = self._host_prepare(step, g.scalars, user)
        for _, i, r, gr, _pos in args:
            flat = g.flat[i]
            states = [None if s is None else s[i] for s in g.state_list]
            off = int(g.offsets[i])
            if r is None:
                self._dense_tensor_step(g, i, gr, step, hyper, key, averaging, avg_weight)
                continue
            k = gr.shape[1]
            if self.backend == "numpy":
                self._reference_rows(g, i, r, gr, step, key)
            elif self.backend == "cuda":
                self._cuda_rows(g, i, r, gr, hyper, key)
            else:
                sparse_drivers.module_for(spec.name).rows_serial(
                    flat, gr, r, k, *states, None, hyper, 0.0, key, off)
            if averaging:
                avg = g.avg[i]
                if hasattr(avg, "copy_to_host"):
                    host = avg.copy_to_host()
                    p = flat.copy_to_host() if hasattr(flat, "copy_to_host") else flat
                    host += avg_weight * (p - host)
                    avg.copy_to_device(host)
                else:
                    avg += g.dtype.type(avg_weight) * (flat - avg)
        g.scalars = new_scalars
        g.step = step
        if averaging:
            g.avg_count += 1

    def _dense_tensor_step(self, g, i, gr, step, hyper, key, averaging, avg_weight):
        """One tensor of a group, densely, inside a sparse step."""
        flat_g = np.ravel(gr, order=g.orders[i]) if isinstance(gr, np.ndarray) else gr
        avg = (g.avg[i],) if averaging else None
        if g.kernel is not None:
            g.kernel((g.flat[i],), (flat_g,), *[None if s is None else (s[i],)
                                                for s in g.state_list],
                     avg, hyper, avg_weight, key, g.offsets[i:i + 1])
        elif self.backend == "numpy":
            states = {k: [v[i]] for k, v in g.states.items() if v is not None}
            reference.step(self._spec.name, [g.flat[i]], [flat_g], states,
                           None if avg is None else list(avg), avg_weight,
                           dict(zip(self._spec.user_hyper, g.validated)), step, g.scalars,
                           key, g.offsets[i:i + 1])
        else:
            from numba import cuda
            kern = drivers.cuda_kernel(self._spec.name)
            cast = g.dtype.type
            p = g.flat[i]
            dg = flat_g if _backend.is_cuda_array(flat_g) else cuda.to_device(flat_g)
            n = p.shape[0]
            kern[max(1, min(1024, (n + 255) // 256)), 256](
                p, dg, *[None if s is None else s[i] for s in g.state_list],
                None if avg is None else avg[0], tuple(cast(h) for h in hyper), cast(0),
                cast(avg_weight), key, int(g.offsets[i]))
            self._copy_back(g, i)

    def _reference_rows(self, g, i, r, gr, step, key):
        k = gr.shape[1]
        idx = (r[:, None] * k + np.arange(k)).ravel()
        p = g.flat[i][idx]
        states = {name: arrs[i][idx] for name, arrs in g.states.items() if arrs is not None}
        hyper = dict(zip(self._spec.user_hyper, g.validated))
        fn = reference.UPDATES[self._spec.name]
        if key is not None:
            hyper["z"] = reference.normal(key, int(g.offsets[i]), g.flat[i].shape[0])[idx]
        if self._spec.name == "nadam":
            fn(p, gr.reshape(-1), states, step, mu_product=g.scalars[0], **hyper)
        else:
            fn(p, gr.reshape(-1), states, step, **hyper)
        g.flat[i][idx] = p
        for name, arr in states.items():
            g.states[name][i][idx] = arr

    def _cuda_rows(self, g, i, r, gr, hyper, key):
        from numba import cuda
        from optkern.kernels import sparse_drivers
        kern = sparse_drivers.cuda_kernel(self._spec.name)
        cast = g.dtype.type
        k = gr.shape[1]
        n = r.size * k
        kern[max(1, min(1024, (n + 255) // 256)), 256](
            g.flat[i], cuda.to_device(gr), cuda.to_device(r), k,
            *[None if s is None else s[i] for s in g.state_list], None,
            tuple(cast(h) for h in hyper), cast(0), cast(0.0), key, int(g.offsets[i]))
        self._copy_back(g, i)

    def _copy_back(self, g, i):
        a = g.arrays[i]
        if not _backend.is_cuda_array(a):
            a.reshape(-1, order=g.orders[i])[...] = g.flat[i].copy_to_host()
