"""Stepping of an ``Optimizer``: kernel choice and the dense step.

``Stepping`` is the part of ``optkern.optimizers.Optimizer`` that resolves
the backend, picks each group's compiled multi-tensor kernel (with its
Cython twin serving first calls under backend="auto", ``_ServedStep``),
validates the gradients, builds the per-step hyperparameter tuple, checks
for NaN/inf (``check_finite``) and calls the kernel: one compiled call per
group per step.  The sparse ``rows=`` step is ``optkern._optim_sparse``, the
CUDA paths ``optkern._optim_cuda``.
"""

import numpy as np

from optkern import _backend, _jit
from optkern.kernels import _helpers, drivers, reference
from optkern.kernels.rules import allocated_states


# [the C prepare of the Cython extension (``_updates.prepare``) or None], once
# looked up (``Stepping._host_prepare``)
_C_PREPARE = []


class _ServedStep:
    """A group's step for backend="auto" on a Numba kernel: its Cython twin
    (the same rule, checked equal in tests/test_jit.py) serves the steps
    until ``optkern._jit`` reports the Numba kernel compiled, then Numba."""

    __slots__ = ("numba_fn", "cython_fn", "name", "parallel", "group", "ready")

    def __init__(self, numba_fn, cython_fn, name, parallel, group):
        self.numba_fn, self.cython_fn = numba_fn, cython_fn
        self.name, self.parallel, self.group = name, parallel, group
        self.ready = {}

    def __call__(self, *args):
        # the signature varies only with averaging (avg None or not) and noise
        # (key None or not); the rest is fixed for the group
        variant = (args[-5] is None, args[-2] is None)
        if variant in self.ready:
            return self.numba_fn(*args)
        g = self.group
        key = ("step", self.name, self.parallel, g.dtype.char, len(g.flat),
               tuple(s is None for s in g.state_list), variant,
               all(a.flags.writeable for a in args[1]))
        if _jit.ready(key, self.numba_fn, args):
            self.ready[variant] = True
            return self.numba_fn(*args)
        return self.cython_fn(*args)


class Stepping:
    """Mixin of ``Optimizer``: backend and kernel choice, the dense step."""

    # ----------------------------------------------------------------- kernel
    def _resolve_backend(self, g):
        requested = self.backend_requested
        if requested == "auto":
            choice = _backend.choose_auto(g.size, on_device=g.device)
            if choice == "cython" and not self._has_cython_twin():
                choice = "numba"    # a rule registered at run time: no Cython twin
            return choice
        _backend.require(requested)
        if requested == "cython" and not self._has_cython_twin():
            raise ValueError(
                f"backend='cython' cannot run rule {self._spec.name!r}: the ahead-of-time "
                "Cython kernels are compiled when optkern is built, from the rules in "
                "kernels/rules.py then; a rule registered at run time runs on 'numpy', "
                "'numba', 'numba-parallel' and 'cuda' ('auto' chooses among them)")
        if g.device and requested != "cuda":
            raise ValueError(f"backend={requested!r} cannot update device arrays; "
                             "use backend='cuda' or 'auto'")
        return requested

    def _has_cython_twin(self):
        """Whether the ahead-of-time Cython kernels hold this rule (not for a
        rule registered at run time: they are compiled when optkern is built)."""
        mod = _backend.cython_module()
        return mod is not None and callable(getattr(mod, self._spec.name, None))

    def _kernel_for(self, g, checked=False):
        """The compiled multi-tensor step for this group (None: numpy/cuda paths).

        ``checked``: the default-step kernel, which scans every gradient for
        NaN/inf in the same compiled call before it updates anything and
        returns the index of the first bad tensor (else -1)."""
        backend = self.backend
        if backend in ("numba", "numba-parallel"):
            mod = drivers.module_for(self._spec.name)
            if checked:
                fn = mod.parallel_checked if backend == "numba-parallel" \
                    else mod.serial_checked
            else:
                fn = mod.parallel if backend == "numba-parallel" else mod.serial
            if self.backend_requested == "auto" and self._has_cython_twin():
                # the Cython twin serves the steps until the Numba kernel is
                # compiled (optkern._jit): no compile stall on a first step
                return _ServedStep(fn, self._cython_step(g, checked),
                                   self._spec.name + ("+checked" if checked else ""),
                                   backend == "numba-parallel", g)
            return fn
        if backend == "cython":
            return self._cython_step(g, checked)
        return None

    def _cython_step(self, g, checked=False):
        fn = getattr(_backend.cython_module(), self._spec.name)
        parallel = g.size >= _backend.PARALLEL_MIN_SIZE

        def cython_step(*args):
            return fn(*args, parallel, checked)
        return cython_step

    # -------------------------------------------------------------------- step
    def step(self, grads, rows=None, sparse_updates="auto"):
        """Update every parameter in place from ``grads`` (same order and shapes).

        ``rows`` (a sparse step): one entry per parameter, None for a dense
        update of that parameter or a 1-D array of distinct row indices of a
        C-contiguous 2-D (or 1-D) parameter whose gradient is then the
        ``(len(rows), n_columns)`` array of those rows (a single parameter may
        take the array itself).  ``sparse_updates``: "lazy" updates the given
        rows only (untouched rows keep weights and state, as torch's
        SparseAdam); "exact" also requires that a zero-gradient step change
        nothing (FTRL; plain SGD, Adagrad without weight decay or noise), where
        lazy is exact; "dense" applies the dense step with zero gradients
        outside ``rows`` (the reference, O(size)); "auto" is exact where it
        holds, else lazy.  With Polyak averaging the average of every row is
        updated (O(size)).

        Returns None.  Raises before touching anything when the gradients or
        the (possibly changed) hyperparameters are invalid.
        """
        if rows is not None:
            return self._sparse_step(grads, rows, sparse_updates)
        flat_grads = self._grads_for(grads)
        hypers = [self._prepared_hyper(gi, g) for gi, g in enumerate(self._groups)]
        if self.check_finite:
            g = self._groups[0]
            if len(self._groups) == 1 and g.kernel is not None:
                # the fused default step: the kernel scans the gradients and
                # updates only if all are finite, in one compiled call
                if g.checked_kernel is None:
                    g.checked_kernel = self._kernel_for(g, checked=True)
                self._step_group(g, flat_grads[0], hypers[0], g.checked_kernel)
                return
            self._check_finite(flat_grads)
        for g, fg, user in zip(self._groups, flat_grads, hypers):
            self._step_group(g, fg, user)

    def _grads_for(self, grads):
        """Split ``grads`` like the params and validate; no side effects."""
        items = (grads,) if isinstance(grads, np.ndarray) or _backend.is_cuda_array(grads) \
            else grads
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"grads must be an array or a list of arrays, got "
                            f"{type(grads).__name__}")
        if len(items) != self._n_params:
            raise ValueError(f"grads has {len(items)} arrays but the optimizer has "
                             f"{self._n_params} parameters")
        flat_grads = []
        pos = 0
        for g in self._groups:
            out = []
            device = g.device or self.backend == "cuda"
            for i, shape in enumerate(g.shapes):
                gr = items[pos]
                self._check_grad_disjoint(gr, pos)
                if device:
                    out.append(self._cuda_grad(g, i, gr, f"grads[{pos}]"))
                elif not isinstance(gr, np.ndarray):
                    raise TypeError(f"grads[{pos}] must be a NumPy array, got "
                                    f"{type(gr).__name__}")
                elif gr.shape != shape:
                    raise ValueError(f"grads[{pos}] has shape {gr.shape} but params[{pos}] "
                                     f"has shape {shape}")
                elif gr.dtype != g.dtype:
                    raise TypeError(f"grads[{pos}] has dtype {gr.dtype} but params[{pos}] "
                                    f"has dtype {g.dtype}")
                elif g.orders[i] == "C":
                    out.append(gr.reshape(-1) if gr.flags.c_contiguous else gr.ravel())
                else:
                    out.append(gr.reshape(-1, order="F") if gr.flags.f_contiguous
                               else gr.ravel(order="F"))
                pos += 1
            flat_grads.append(tuple(out))
        return flat_grads

    def _prepared_hyper(self, gi, g):
        group = self.param_groups[gi]
        current = self._hyper_tuple(group)
        if current != g.validated:
            self._validate_hyper(group, f"param_groups[{gi}]")
            user = dict(zip(self._spec.user_hyper, current))
            want = set(allocated_states(self._spec, user))
            have = {k for k, v in g.states.items() if v is not None}
            if not want <= have:
                raise ValueError(
                    f"param_groups[{gi}]: the new options need state {sorted(want - have)} "
                    "that was not allocated at construction; create a new optimizer")
            g.validated = current
            g.user = tuple(float(v) for v in current)
        return g.user

    def _check_finite(self, flat_grads):
        from optkern.kernels import finite
        pos = 0
        for g, fg in zip(self._groups, flat_grads):
            if g.device or self.backend == "cuda":
                bad = finite.first_nonfinite_cuda(fg)
            elif g.finite_ready or _jit.ready(
                    ("first_nonfinite", g.dtype.char, len(fg),
                     all(a.flags.writeable for a in fg)), finite.first_nonfinite, (fg,)):
                g.finite_ready = True
                bad = finite.first_nonfinite(fg)
            else:   # NumPy while the compiled scan is not loaded (optkern._jit)
                bad = next((i for i, a in enumerate(fg) if not np.isfinite(a).all()), -1)
            if bad >= 0:
                raise FloatingPointError(
                    f"grads[{pos + bad}] contains NaN or inf; parameters and optimizer "
                    "state are unchanged (pass check_finite=False to skip this check)")
            pos += len(fg)

    def _step_group(self, g, flat_grads, user, checked_kernel=None):
        step = g.step + 1
        spec = self._spec
        averaging = self.average_start is not None and step > self.average_start
        avg_weight = 1.0 / (g.avg_count + 1) if averaging else 0.0
        avg = g.avg if averaging else None
        key = None
        if self._noisy and self._noise_on(user):
            key = _helpers.step_key(self.seed, step)
        if checked_kernel is not None:
            hyper, new_scalars = self._host_prepare(step, g.scalars, user)
            bad = checked_kernel(g.flat, flat_grads, *g.state_list, avg, hyper, avg_weight,
                                 key, g.offsets)
            if bad >= 0:   # nothing was written
                raise FloatingPointError(
                    f"grads[{bad}] contains NaN or inf; parameters and optimizer "
                    "state are unchanged (pass check_finite=False to skip this check)")
        elif g.kernel is not None:
            hyper, new_scalars = self._host_prepare(step, g.scalars, user)
            g.kernel(g.flat, flat_grads, *g.state_list, avg, hyper, avg_weight, key,
                     g.offsets)
        elif self.backend == "numpy":
            states = {k: list(v) for k, v in g.states.items() if v is not None}
            new_scalars = reference.step(
                spec.name, g.flat, flat_grads, states, None if avg is None else list(avg),
                avg_weight, dict(zip(spec.user_hyper, g.validated)), step, g.scalars, key,
                g.offsets)
        else:
            hyper, new_scalars = self._host_prepare(step, g.scalars, user)
            self._cuda_step(g, flat_grads, g.state_list, avg, hyper, avg_weight, key)
        g.scalars = new_scalars
        g.step = step
        if averaging:
            g.avg_count += 1

    def _host_prepare(self, step, scalars, user):
        """(kernel hyperparameters, new scalar states) for ``step``: the
        rule's prepare (rules.py).  A Cython step calls its C twin in the
        extension it steps with (``_updates.prepare``, generated from the same
        prepare with Python's arithmetic, equal bit for bit: tests/
        test_embed_api.py), which spares its first step building the Python
        prepare from its cached code (kernels/rules.py ``_build_prepare``,
        hashing its sources: 0.53 of a warm first Cython step's 0.58 ms)."""
        if self.backend == "cython":
            if not _C_PREPARE:      # looked up once a process
                _C_PREPARE.append(getattr(_backend.cython_module(), "prepare", None))
            twin = _C_PREPARE[0]
            if twin is not None:    # (an extension built before it had one: Python's)
                return twin(self._spec.name, step, scalars, user[0], user[1:])
        return self._spec.prepare(step, scalars, *user)

    def _noise_on(self, user):
        """Whether this step draws noise: the registry entry's ``noise`` option > 0."""
        return user[self._noise_index] > 0
