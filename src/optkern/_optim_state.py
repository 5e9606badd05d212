"""The state of an ``Optimizer``: allocation, reset, averaging, state dicts.

``OptimizerState`` is the part of ``optkern.optimizers.Optimizer`` that
allocates each group's state arrays (only those the options need, by the
registry entry), resets them, keeps Polyak averages, and saves and restores
everything: ``state_dict``/``load_state_dict`` (torch-style, validated fully
before any change) and ``_snapshot``/``_restore`` (the estimators' cheap copy
of the last good epoch).
"""

import numpy as np

from optkern.kernels.rules import allocated_states, state_names


class OptimizerState:
    """Mixin of ``Optimizer``: state arrays, averages, state dicts."""

    def _copy_like(self, flat):
        if self.backend == "cuda":
            from numba import cuda
            return cuda.to_device(np.array(flat.copy_to_host() if hasattr(flat, "copy_to_host") else flat))
        return flat.copy()

    def _allocate_states(self, g, group):
        user = dict(zip(self._spec.user_hyper, self._hyper_tuple(group)))
        present = allocated_states(self._spec, user)
        init = self._state_init(group)
        states = {}
        for name in state_names(self._spec):
            if name not in present:
                states[name] = None
                continue
            value = init.get(name, 0.0)
            if self.backend == "cuda":
                from numba import cuda
                states[name] = tuple(cuda.to_device(np.full(f.shape[0], value, g.dtype))
                                     for f in g.flat)
            else:
                states[name] = tuple(np.full(f.shape[0], value, g.dtype) for f in g.flat)
        return states

    def _state_init(self, group):
        """Initial values of the states an option initialises (Adagrad's
        initial_accumulator_value), by the registry entry's ``init_state``."""
        return {o.init_state: group[o.name] for o in self._spec.options if o.init_state}

    def zero_state(self):
        """Reset steps and state to their initial values (keep the parameters)."""
        for group, g in zip(self.param_groups, self._groups):
            init = self._state_init(group)
            for name, arrs in g.states.items():
                if arrs is not None:
                    for a in arrs:
                        a[...] = init.get(name, 0.0)
            g.step = 0
            g.avg_count = 0
            g.scalars = tuple(v for _, v in self._spec.scalar_states)

    # ------------------------------------------------------------- averaging
    def averaged_params(self):
        """The Polyak averages of the parameters (arrays shaped like the params).

        Before averaging starts (``average=k``: after k steps) they equal the
        parameters' values when the optimizer was built.
        """
        if self.average_start is None:
            raise ValueError("this optimizer was built with average=False")
        out = []
        for g in self._groups:
            for a, f, order in zip(g.arrays, g.avg, g.orders):
                host = f.copy_to_host() if hasattr(f, "copy_to_host") else f
                out.append(host.reshape(a.shape, order=order))
        return out

    def swap_averaged(self):
        """Swap parameter values with their averages in place (call again to undo)."""
        if self.average_start is None:
            raise ValueError("this optimizer was built with average=False")
        if self.backend == "cuda":
            raise NotImplementedError("swap_averaged on the cuda backend: copy "
                                      "averaged_params() instead")
        for g in self._groups:
            for f, av in zip(g.flat, g.avg):
                tmp = f.copy()
                f[...] = av
                av[...] = tmp

    # ------------------------------------------------------------ state dict
    def _snapshot(self):
        """Copies of the mutable state, for ``_restore`` (what the estimators
        keep of the last good epoch).  ``state_dict`` builds the torch-style
        dict, ~10 us for two groups: a tenth of a small epoch."""
        if self.backend == "cuda" or any(g.device for g in self._groups):
            return ("dict", self.state_dict())
        return ("host", [(tuple(None if arrs is None else tuple(a.copy() for a in arrs)
                                for arrs in g.state_list),
                          None if g.avg is None else tuple(a.copy() for a in g.avg),
                          g.step, g.avg_count, g.scalars) for g in self._groups])

    def _restore(self, snap):
        """Put back a ``_snapshot`` of this optimizer, in place."""
        kind, data = snap
        if kind == "dict":
            self.load_state_dict(data)
            return
        for g, (states, avg, step, avg_count, scalars) in zip(self._groups, data):
            for arrs, saved in zip(g.state_list, states):
                if arrs is not None:
                    for a, v in zip(arrs, saved):
                        a[...] = v
            if g.avg is not None:
                for a, v in zip(g.avg, avg):
                    a[...] = v
            g.step, g.avg_count, g.scalars = step, avg_count, scalars

    def state_dict(self):
        """A torch-style dict: {"state": {index: {...}}, "param_groups": [...]}.

        Arrays are copies shaped like the params; "step" is per parameter (as
        torch); optkern's extras (noise seed, averaging) sit under "optkern".
        """
        state = {}
        groups = []
        idx = 0
        for group, g in zip(self.param_groups, self._groups):
            ids = []
            for k, a in enumerate(g.arrays):
                entry = {"step": g.step}
                for name, arrs in g.states.items():
                    if arrs is not None:
                        entry[name] = self._export(arrs[k], a.shape, g.orders[k])
                for (name, _), value in zip(self._spec.scalar_states, g.scalars):
                    entry[name] = value
                if g.avg is not None:
                    entry["average"] = self._export(g.avg[k], a.shape, g.orders[k])
                state[idx] = entry
                ids.append(idx)
                idx += 1
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = ids
            saved["avg_count"] = g.avg_count
            groups.append(saved)
        return {"state": state, "param_groups": groups,
                "optkern": {"optimizer": type(self).__name__, "seed": self.seed,
                            "average_start": self.average_start}}

    @staticmethod
    def _export(flat, shape, order):
        host = flat.copy_to_host() if hasattr(flat, "copy_to_host") else flat.copy()
        return host.reshape(shape, order=order)

    def load_state_dict(self, state_dict):
        """Restore a state from ``state_dict()``; validated fully before any change."""
        if not isinstance(state_dict, dict) or "state" not in state_dict \
                or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        extra = state_dict.get("optkern", {})
        if extra.get("optimizer", type(self).__name__) != type(self).__name__:
            raise ValueError(f"state_dict is from {extra['optimizer']}, not "
                             f"{type(self).__name__}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups, "
                             f"optimizer has {len(self.param_groups)}")
        if extra.get("average_start", self.average_start) != self.average_start:
            raise ValueError("state_dict was saved with a different 'average' setting")
        plan = []
        new_groups = []
        for gi, (saved, group, g) in enumerate(zip(saved_groups, self.param_groups,
                                                   self._groups)):
            if len(saved["params"]) != len(g.arrays):
                raise ValueError(f"state_dict param_groups[{gi}] has {len(saved['params'])} "
                                 f"params, optimizer has {len(g.arrays)}")
            new_group = dict(group)
            new_group.update({k: v for k, v in saved.items()
                              if k not in ("params", "avg_count")})
            self._validate_hyper(new_group, f"state_dict param_groups[{gi}]")
            user = dict(zip(self._spec.user_hyper, self._hyper_tuple(new_group)))
            want = set(allocated_states(self._spec, user))
            have = {k for k, v in g.states.items() if v is not None}
            if want != have:
                raise ValueError(f"state_dict param_groups[{gi}] options need states "
                                 f"{sorted(want)}, optimizer holds {sorted(have)}")
            steps = set()
            scalars = None
            for k, pid in enumerate(saved["params"]):
                entry = state_dict["state"].get(pid, state_dict["state"].get(str(pid)))
                if entry is None:
                    raise ValueError(f"state_dict has no state for param {pid}")
                steps.add(int(entry["step"]))
                shape = tuple(g.arrays[k].shape)
                for name in sorted(have) + (["average"] if g.avg is not None else []):
                    arr = np.asarray(entry.get(name))
                    if arr.shape != shape or arr.dtype != g.dtype:
                        raise ValueError(f"state_dict state[{pid}][{name!r}] must have "
                                         f"shape {shape} and dtype {g.dtype}")
                    target = g.avg[k] if name == "average" else g.states[name][k]
                    plan.append((target, np.ravel(arr, order=g.orders[k])))
                scalars = tuple(float(entry[n]) for n, _ in self._spec.scalar_states)
            if len(steps) != 1:
                raise ValueError(f"state_dict param_groups[{gi}] has unequal step counts")
            new_groups.append((new_group, steps.pop(), scalars,
                               int(saved.get("avg_count", 0))))
        # everything validated: now apply
        for target, src in plan:
            if hasattr(target, "copy_to_device"):
                target.copy_to_device(np.ascontiguousarray(src))
            else:
                target[...] = src
        for (new_group, step, scalars, avg_count), group, g in zip(
                new_groups, self.param_groups, self._groups):
            group.update({k: v for k, v in new_group.items() if k != "params"})
            g.step = step
            g.scalars = scalars
            g.avg_count = avg_count
            g.validated = self._hyper_tuple(group)
        if "seed" in extra:
            self.seed = int(extra["seed"])
