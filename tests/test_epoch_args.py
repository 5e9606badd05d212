"""The compiled epochs' named arguments (optkern._epoch_args) against the
generated signatures they stand for: every field in the signature's order,
for every registered update rule, both dense layouts and both sparse epochs
with their one-output twins.  A record whose every value is its own
parameter name must flatten to exactly the generated function's parameter
names; ``from_positional`` must read a flattened call back into the record.
"""

import dataclasses
import inspect

import pytest

from optkern._epoch_args import (DenseEpochArgs, EpochScratch, OptimizerArgs, RowsModeArgs,
                                 ScaledModeArgs, SparseEpochArgs)
from optkern.kernels import epoch_drivers, sparse_epoch_drivers
from optkern.kernels.rules import RULES, state_names

LOSS = "log"   # the signatures do not depend on the loss (one scalar loss is enough)


def _params(dispatcher):
    return tuple(inspect.signature(dispatcher.py_func).parameters)


def _named(cls, **fixed):
    """A record of ``cls`` whose fields hold their own names, but ``fixed``."""
    rec = cls()
    for f in dataclasses.fields(cls):
        setattr(rec, f.name, fixed.get(f.name, f.name))
    return rec


def _optimizer(rule):
    n = len(state_names(RULES[rule]))
    return _named(OptimizerArgs, sW=[f"sW{j}" for j in range(n)],
                  sB=[f"sB{j}" for j in range(n)])


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_dense_epoch_record_is_the_generated_signature(rule, layout):
    mod = epoch_drivers.module_for(LOSS, rule, layout)
    data = ("X",) if layout == "dense" else ("data", "indices", "indptr")
    rec = _named(DenseEpochArgs, data=data, scratch=_named(EpochScratch),
                 opt=_optimizer(rule))
    flat = rec.positional()
    assert flat == _params(mod.epoch_serial) == _params(mod.epoch_parallel)
    n_states = len(state_names(RULES[rule]))
    assert DenseEpochArgs.from_positional(flat, len(data), n_states) == rec


def test_an_unset_field_is_an_error():
    """A record filled by attribute fails loudly when a field was forgotten."""
    rec = _named(DenseEpochArgs, data=("X",), scratch=_named(EpochScratch),
                 opt=_optimizer("adam"))
    del rec.opt.seed
    with pytest.raises(AttributeError):
        rec.positional()


@pytest.mark.parametrize("rule", sorted(RULES))
def test_sparse_epoch_records_are_the_generated_signatures(rule):
    mod = sparse_epoch_drivers.module_for(LOSS, rule)
    common = dict(data=("data", "indices", "indptr"), opt=_optimizer(rule))
    rows = _named(SparseEpochArgs, mode=_named(RowsModeArgs), **common).positional()
    assert rows == _params(mod.epoch_rows) == _params(mod.epoch_rows_k1)
    scaled = _named(SparseEpochArgs, mode=_named(ScaledModeArgs), **common).positional()
    assert scaled == _params(mod.epoch_scaled) == _params(mod.epoch_scaled_k1)
