"""Learning-rate schedules: small objects usable with any optimizer.

A schedule maps the optimizer step ``t`` (0-based) to a multiplier of the base
learning rate.  The formula for every schedule is one scalar function,
``optkern.kernels.schedule_rules.schedule_factor``, which the compiled training
epochs call between minibatches; the objects here validate the arguments and
encode them for it.

With the optimizer classes, drive a schedule with :class:`LRScheduler`::

    opt = optkern.SGD(params, lr=0.1)
    sched = optkern.schedules.LRScheduler(opt, optkern.schedules.Cosine(total_steps=1000))
    for batch in batches:
        opt.step(grads)
        sched.step()

Course notation: the "1/t" schedule lr_t = lr/(1 + t) is
``InverseScaling(decay=1, power=1)``; "1/t^p" is ``power=p``; the staircase is
``StepDecay``.  :class:`ReduceOnPlateau` works per epoch on a monitored value.
"""

import math
import numbers

from optkern.kernels import schedule_rules as _rules

__all__ = ["Schedule", "Constant", "InverseScaling", "StepDecay", "Exponential",
           "Cosine", "Warmup", "ReduceOnPlateau", "LRScheduler", "get_schedule"]


def _real(name, value, lo=None, lo_open=False, hi=None, hi_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return value


class Schedule:
    """Base class: ``factor(t)`` and its encoding for the compiled epoch."""

    kind = _rules.CONSTANT
    warmup = 0
    start = 0.0

    def _abc(self):
        return (0.0, 1.0, 0.0)

    def encode(self):
        """(kind, a, b, c, warmup, start) for ``schedule_factor``."""
        a, b, c = self._abc()
        return (self.kind, float(a), float(b), float(c), float(self.warmup),
                float(self.start))

    def factor(self, t):
        return _rules.schedule_factor(*self._with_t(t))

    def _with_t(self, t):
        kind, a, b, c, warmup, start = self.encode()
        return kind, float(t), a, b, c, warmup, start

    def lr(self, base_lr, t):
        """The learning rate at step ``t`` for a base rate ``base_lr``."""
        return base_lr * self.factor(t)

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """lr_t = lr."""


class InverseScaling(Schedule):
    """lr_t = lr / (1 + decay*t)^power (course: 1/t with decay=power=1; 1/t^p).

    t counts optimizer steps (minibatches).  The default power 0.25 is
    scikit-learn's ``power_t`` for its "invscaling" rate: with power=1 the
    rate of a fit of a few thousand steps per epoch has fallen by 1000x
    within the first epoch, and the model stops learning (a Huber regression
    on diabetes reached R^2 = -4.7 with the old default)."""

    kind = _rules.INVERSE_SCALING

    def __init__(self, decay=1.0, power=0.25):
        self.decay = _real("decay", decay, lo=0.0)
        self.power = _real("power", power, lo=0.0)

    def _abc(self):
        return (self.decay, self.power, 0.0)


class StepDecay(Schedule):
    """Staircase: lr_t = lr * gamma^floor(t / step_size)."""

    kind = _rules.STEP

    def __init__(self, step_size, gamma=0.1):
        if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) \
                or step_size < 1:
            raise ValueError(f"step_size must be an int >= 1, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _real("gamma", gamma, lo=0.0, lo_open=True, hi=1.0)

    def _abc(self):
        return (self.gamma, float(self.step_size), 0.0)


class Exponential(Schedule):
    """lr_t = lr * gamma^t."""

    kind = _rules.EXPONENTIAL

    def __init__(self, gamma=0.99):
        self.gamma = _real("gamma", gamma, lo=0.0, lo_open=True, hi=1.0)

    def _abc(self):
        return (self.gamma, 1.0, 0.0)


class Cosine(Schedule):
    """Cosine annealing from lr to final_factor*lr over total_steps, then flat."""

    kind = _rules.COSINE

    def __init__(self, total_steps, final_factor=0.0):
        if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) \
                or total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
        self.total_steps = int(total_steps)
        self.final_factor = _real("final_factor", final_factor, lo=0.0, hi=1.0)

    def _abc(self):
        return (0.0, float(self.total_steps), self.final_factor)


class Warmup(Schedule):
    """Linear warm-up over ``warmup_steps`` from start_factor*lr, then ``schedule``."""

    def __init__(self, schedule=None, warmup_steps=100, start_factor=0.0):
        schedule = Constant() if schedule is None else schedule
        if not isinstance(schedule, Schedule) or isinstance(schedule, (Warmup, ReduceOnPlateau)):
            raise TypeError("schedule must be a non-warm-up Schedule (Constant, "
                            f"InverseScaling, StepDecay, Exponential, Cosine), got {schedule!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) \
                or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.start_factor = _real("start_factor", start_factor, lo=0.0, hi=1.0)

    def encode(self):
        kind, a, b, c, _, _ = self.schedule.encode()
        return (kind, a, b, c, float(self.warmup_steps), self.start_factor)


class ReduceOnPlateau(Schedule):
    """Per epoch: multiply the rate by ``factor`` when the monitored value has
    not improved by more than ``threshold`` (relative) for ``patience`` epochs.

    Inside an epoch the rate is constant.  ``update(value)`` is called once per
    epoch by the estimators (or by you) and returns the current multiplier.
    """

    def __init__(self, factor=0.1, patience=5, threshold=1e-4, min_factor=0.0,
                 mode="min"):
        self.factor_reduce = _real("factor", factor, lo=0.0, lo_open=True, hi=1.0, hi_open=True)
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) \
                or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        self.patience = int(patience)
        self.threshold = _real("threshold", threshold, lo=0.0)
        self.min_factor = _real("min_factor", min_factor, lo=0.0, hi=1.0)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.reset()

    def reset(self):
        self.current = 1.0
        self.best = None
        self.bad_epochs = 0

    def update(self, value):
        value = float(value)
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * value < sign * self.best - self.threshold * abs(self.best):
            self.best = value
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.current = max(self.current * self.factor_reduce, self.min_factor)
                self.bad_epochs = 0
        return self.current

    def encode(self):
        return (_rules.CONSTANT, 0.0, 1.0, 0.0, 0.0, 0.0)

    def factor(self, t):
        return self.current

    def __eq__(self, other):
        return (type(self) is type(other) and
                (self.factor_reduce, self.patience, self.threshold, self.min_factor, self.mode)
                == (other.factor_reduce, other.patience, other.threshold,
                    other.min_factor, other.mode))

    __hash__ = Schedule.__hash__

    def __repr__(self):
        return (f"ReduceOnPlateau(factor={self.factor_reduce!r}, patience={self.patience!r}, "
                f"threshold={self.threshold!r}, min_factor={self.min_factor!r}, "
                f"mode={self.mode!r})")


class LRScheduler:
    """Drives an optimizer's learning rate from a schedule, one call per step.

    The base rate is each parameter group's ``lr`` when the scheduler is made;
    ``step()`` moves to the next step and sets ``lr = base * factor(t)``.
    """

    def __init__(self, optimizer, schedule):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be an optkern Schedule, got {schedule!r}")
        self.optimizer = optimizer
        self.schedule = schedule
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.t = 0
        self._apply()

    def _apply(self):
        f = self.schedule.factor(self.t)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self):
        self.t += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]


_NAMES = {
    "constant": Constant, "invscaling": InverseScaling, "inverse_scaling": InverseScaling,
    "step": StepDecay, "exponential": Exponential, "cosine": Cosine,
    "plateau": ReduceOnPlateau,
}


def get_schedule(spec):
    """A Schedule from an instance, None (constant) or a name with defaults."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        try:
            cls = _NAMES[spec]
        except KeyError:
            import difflib
            close = difflib.get_close_matches(spec, _NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"schedule={spec!r} is unknown; choose one of "
                             f"{sorted(_NAMES)} or pass a Schedule{hint}") from None
        if cls in (StepDecay, Cosine):
            raise ValueError(f"schedule={spec!r} needs arguments: pass "
                             f"optkern.schedules.{cls.__name__}(...)")
        return cls()
    raise TypeError(f"schedule must be None, a name or a Schedule, got {spec!r}")
