"""The compiled epochs' arguments, by name.

The compiled training epochs take about 40 positional arguments, in the order
of their generated signatures: ``epoch_serial``/``epoch_parallel`` of
kernels/epoch_drivers.py (template kernels/templates/epoch.py; the Cython
twin ``optkern.kernels.cython._epochs`` takes the same) and ``epoch_rows``/
``epoch_scaled`` of kernels/sparse_epoch_drivers.py (templates
sparse_epoch_rows.py and sparse_epoch_scaled.py; twin
``optkern.kernels.cython._sparse_epochs``).  The Python side names them
instead: the glue (``optkern.epochs``, ``optkern.sparse_epochs``) fills
these records field by field, and each record's ``positional()`` is the one
place that lays them out in the signature's order.  The field names are the
signatures' own (tests/test_epoch_args.py checks both against the generated
functions for every rule).

A record is built once per compiled call (not per minibatch), and a tiny
fit's epoch call is tens of microseconds, so the records cost what a tuple
costs: slotted dataclasses without ``__init__``, created empty and filled by
attribute (a call with 20 keyword arguments costs several microseconds, an
attribute store tens of nanoseconds).  A field left unset fails loudly in
``positional()`` (AttributeError), and tests/test_epoch_args.py checks each
``positional()`` against the generated signatures.

``OptimizerArgs``
    what every epoch takes about the optimizer, the schedule and the
    penalty, from the W group's states to ``offB``: the same run of
    arguments in the dense and the sparse signatures (each record below
    lays it out in its own ``positional()``: one tuple per call).
``DenseEpochArgs``
    the whole call of ``epoch_serial``/``epoch_parallel`` (dense or CSR
    layout: ``data`` is ``(X,)`` or ``(data, indices, indptr)``).
``SparseEpochArgs``
    the whole call of ``epoch_rows``/``epoch_scaled`` (and their one-output
    twins); ``mode`` is a ``RowsModeArgs`` or ``ScaledModeArgs``.
``EpochScratch``, ``RowsModeArgs``, ``ScaledModeArgs``
    runs of arguments inside those: the dense epoch's scratch, the tails
    of the two sparse epochs.
"""

import reprlib
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np


class _Compared:
    """``__eq__`` and ``__repr__`` as a dataclass writes them (the fields in
    order, compared as a tuple with an object of the same class; shown as
    ``Name(field=value, ...)``), written once here: ``dataclass`` writes and
    compiles both for each class, ~2-3 ms at import for these six records,
    on a warm process's first fit.  Defining ``__eq__`` makes the records
    unhashable, as ``dataclass(eq=True)`` does."""

    __slots__ = ()

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            names = self.__dataclass_fields__
            return (tuple(getattr(self, n) for n in names)
                    == tuple(getattr(other, n) for n in names))
        return NotImplemented

    @reprlib.recursive_repr()
    def __repr__(self):
        return (self.__class__.__qualname__ + "(" + ", ".join(
            f"{n}={getattr(self, n)!r}" for n in self.__dataclass_fields__) + ")")


def _record(cls):
    """A slotted dataclass without __init__ (see the module's docstring);
    ``cls`` derives from ``_Compared`` for its ``__eq__`` and ``__repr__``."""
    return dataclass(slots=True, init=False, eq=False, repr=False)(cls)


@_record
class OptimizerArgs(_Compared):
    """The optimizer's, schedule's and penalty's arguments of an epoch."""

    sW: list                    # the W group's state arrays (None: not allocated)
    sB: list                    # the intercept group's (None without an intercept)
    avgW: Optional[Any]         # Polyak averages of W / b, or None
    avgB: Optional[Any]
    userW: Tuple[float, ...]    # the rule's user hyperparameters, prepared (lr first)
    userB: Tuple[float, ...]
    scalarsW: Tuple[float, ...]  # the rule's per-group scalars (e.g. NAdam's mu_product)
    scalarsB: Tuple[float, ...]
    step0: int                  # steps taken before this call
    avg_start: int              # the step averaging starts at; -1: no averaging
    avg_count0: int
    sched: Tuple[float, ...]    # the schedule, encoded (schedules.Schedule.encode)
    base_lr: float
    plateau: float              # the rate's multiplier from "adaptive"/ReduceOnPlateau
    alpha: float                # the penalty's strength and l1 share
    l1_ratio: float
    epsilon: float              # the epsilon of huber/epsilon_insensitive/modified_huber
    seed: Optional[Any]         # np.uint64 noise seed, None: no noise
    offW: int                   # the groups' offsets in the noise stream
    offB: int


def optimizer_args(ctx, gW, gB, userW, alpha, l1_ratio, epsilon):
    """``OptimizerArgs`` of the fit ``ctx`` (optkern._lin_fit._Context) as it
    stands, for the optimizer groups ``gW`` and ``gB`` (None without an
    intercept) and the W group's prepared hyperparameters ``userW``."""
    opt = ctx.opt
    o = OptimizerArgs()
    o.userW = userW
    o.userB = opt._prepared_hyper(1, gB) if gB is not None else userW
    o.sW = [None if s is None else s[0] for s in gW.state_list]
    o.sB = [None if (gB is None or s is None) else s[0]
            for s in (gB.state_list if gB is not None else gW.state_list)]
    o.avg_start = -1 if opt.average_start is None else opt.average_start
    o.avgW = gW.avg[0] if gW.avg is not None else None
    o.avgB = gB.avg[0] if (gB is not None and gB.avg is not None) else None
    o.seed = np.uint64(opt.seed) if (opt._noisy and opt._noise_on(userW)) else None
    sched = ctx.schedule.encode()
    o.scalarsW = gW.scalars
    o.scalarsB = gB.scalars if gB is not None else gW.scalars
    o.step0 = gW.step
    o.avg_count0 = gW.avg_count
    o.sched = (float(sched[0]),) + tuple(float(v) for v in sched[1:])
    o.base_lr = float(ctx.base_lr)
    o.plateau = float(ctx.plateau)
    o.alpha = alpha
    o.l1_ratio = l1_ratio
    o.epsilon = epsilon
    o.offW = int(gW.offsets[0])
    o.offB = int(gB.offsets[0]) if gB is not None else 0
    return o


@_record
class EpochScratch(_Compared):
    """The dense epoch's scratch, allocated once per fit (n_chunks partial sums)."""

    dWp: Any      # (n_chunks, d, k)
    dbp: Any      # (n_chunks, k)
    Z: Any        # (n_chunks, k)
    D: Any        # (n_chunks, k)
    lossp: Any    # (n_chunks,)
    wsump: Any    # (n_chunks,)

    def positional(self):
        return (self.dWp, self.dbp, self.Z, self.D, self.lossp, self.wsump)


def epoch_scratch(n_chunks, d, k, dtype):
    """Zeroed ``EpochScratch`` for ``n_chunks`` chunks of a (d, k) model."""
    s = EpochScratch()
    s.dWp = np.zeros((n_chunks, d, k), dtype)
    s.dbp = np.zeros((n_chunks, k), dtype)
    s.Z = np.zeros((n_chunks, k), dtype)
    s.D = np.zeros((n_chunks, k), dtype)
    s.lossp = np.zeros(n_chunks)
    s.wsump = np.zeros(n_chunks)
    return s


@_record
class DenseEpochArgs(_Compared):
    """A call of ``epoch_serial``/``epoch_parallel`` (kernels/epoch_drivers.py)."""

    data: tuple             # (X,) dense; (data, indices, indptr) CSR
    T: Any                  # targets: (n, k) float, or (n,) int64 class indices
    sw: Any                 # sample weights
    order: Any              # the rows of this call, int64
    batch_size: int
    n_chunks: int
    W: Any
    b: Optional[Any]
    scratch: EpochScratch
    opt: OptimizerArgs
    par_work: int           # epochs.PARALLEL_MIN_WORK
    w_mean: float           # mean sample weight of the whole fit

    def positional(self):
        """The call's arguments in the signature's order (one tuple, no
        intermediate ones: this runs once per compiled call)."""
        s, o = self.scratch, self.opt
        return (*self.data, self.T, self.sw, self.order, self.batch_size, self.n_chunks,
                self.W, self.b, s.dWp, s.dbp, s.Z, s.D, s.lossp, s.wsump, *o.sW, *o.sB,
                o.avgW, o.avgB, o.userW, o.userB, o.scalarsW, o.scalarsB, o.step0,
                o.avg_start, o.avg_count0, o.sched, o.base_lr, o.plateau, o.alpha,
                o.l1_ratio, o.epsilon, o.seed, o.offW, o.offB, self.par_work, self.w_mean)

    @classmethod
    def from_positional(cls, args, n_data, n_states):
        """The record of a captured positional call (``n_data`` 1 dense, 3 CSR;
        ``n_states`` per group): ``positional()`` read backwards."""
        a, s, o = cls(), EpochScratch(), OptimizerArgs()
        a.data, rest = tuple(args[:n_data]), iter(args[n_data:])
        for name in ("T", "sw", "order", "batch_size", "n_chunks", "W", "b"):
            setattr(a, name, next(rest))
        for name in ("dWp", "dbp", "Z", "D", "lossp", "wsump"):
            setattr(s, name, next(rest))
        o.sW = [next(rest) for _ in range(n_states)]
        o.sB = [next(rest) for _ in range(n_states)]
        for name in ("avgW", "avgB", "userW", "userB", "scalarsW", "scalarsB", "step0",
                     "avg_start", "avg_count0", "sched", "base_lr", "plateau", "alpha",
                     "l1_ratio", "epsilon", "seed", "offW", "offB"):
            setattr(o, name, next(rest))
        a.scratch, a.opt = s, o
        a.par_work, a.w_mean = rest
        return a


@_record
class RowsModeArgs(_Compared):
    """The tail of ``epoch_rows`` (the "lazy" and "linear" modes)."""

    inv_p: Optional[Any]    # the lazy penalty's 1/pi_f of each nonzero's feature; None: exact
    tscale: Any             # (scratch) inv_p of each touched row of a minibatch
    P: Optional[Any]        # the untouched steps' power tables; None: nothing to catch up
    S: Optional[Any]
    last: Any               # the step each row of W is current at
    A: Any                  # (m, m) scratch of the catch-up
    Ssum: Any
    tmp: Any
    x: Any                  # (m,) scratch
    y: Any

    def positional(self):
        return (self.inv_p, self.tscale, self.P, self.S, self.last, self.A, self.Ssum, self.tmp, self.x,
                self.y)


@_record
class ScaledModeArgs(_Compared):
    """The tail of ``epoch_scaled`` (plain SGD's "scaled" mode)."""

    l1: float               # the L1 penalty's strength (alpha * l1_ratio)
    q: Any                  # the L1 amount each weight has received
    carry: Any              # (s, u) between the blocks of an epoch

    def positional(self):
        return (self.l1, self.q, self.carry)


@_record
class SparseEpochArgs(_Compared):
    """A call of ``epoch_rows``/``epoch_scaled`` (kernels/sparse_epoch_drivers.py)."""

    data: tuple             # CSR data, indices, indptr
    T: Any
    sw: Any
    order: Any
    start: int              # this call trains on order[start:stop]
    stop: int
    batch_size: int
    W: Any
    b: Optional[Any]
    opt: OptimizerArgs
    w_mean: float
    slot: Any               # (H, 2) table: feature (-1: free), its row of G (sparse_epoch_drivers)
    touched: Any            # (2, cap): the batch's touched features, their rows of slot
    G: Any                  # the compact gradient of the touched rows
    z: Any                  # (k,) scratch: a row's scores,
    dz: Any                 # their derivatives,
    db: Any                 # the intercept's gradient
    unique_rows: bool       # canonical CSR: a row's nonzeros are distinct features
    mode: Any               # RowsModeArgs or ScaledModeArgs

    def positional(self):
        """The call's arguments in the signature's order (one tuple but the
        mode's tail)."""
        o = self.opt
        return (*self.data, self.T, self.sw, self.order, self.start, self.stop,
                self.batch_size, self.W, self.b, *o.sW, *o.sB, o.avgW, o.avgB, o.userW,
                o.userB, o.scalarsW, o.scalarsB, o.step0, o.avg_start, o.avg_count0, o.sched,
                o.base_lr, o.plateau, o.alpha, o.l1_ratio, o.epsilon, o.seed, o.offW, o.offB,
                self.w_mean, self.slot, self.touched, self.G, self.z, self.dz, self.db,
                self.unique_rows, *self.mode.positional())
