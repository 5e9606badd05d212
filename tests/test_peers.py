"""The race trainers (optkern.peers) stop where they say: at the first epoch
whose test accuracy reaches the target, or at max_epochs, or at the budget.
Regression: optkern's trainer once answered its callback True/False the
wrong way round and stopped every run after epoch 1."""

import math

import numpy as np
import pytest
from sklearn import linear_model

from optkern import peers
from optkern.bench import training_problem

DATA = training_problem(2_000, 10, 3)


def _accuracy_per_epoch(max_epochs):
    """Test accuracy after each epoch of the same fit the trainer runs."""
    import optkern

    accs = []
    holder = {}

    def record(row):
        accs.append(peers.accuracy(holder["m"].predict(DATA[1]), DATA[3]))

    holder["m"] = optkern.LinearClassifier(optimizer="adam", max_epochs=max_epochs, tol=None,
                                           random_state=0, callbacks=[record])
    holder["m"].fit(DATA[0], DATA[2])
    return accs


def test_optkern_trainer_stops_at_the_first_epoch_reaching_the_target():
    accs = _accuracy_per_epoch(8)
    # a target first reached after a later epoch than the first
    target = max(accs[1:])
    first = 1 + next(i for i, a in enumerate(accs) if a >= target)
    assert first > 1
    seconds, epochs, acc, batch = peers.train_optkern(DATA, target, 8)
    assert (epochs, acc) == (first, accs[first - 1])
    assert seconds > 0 and batch >= 1


def test_optkern_trainer_runs_max_epochs_when_the_target_is_out_of_reach():
    _, epochs, acc, _ = peers.train_optkern(DATA, 1.01, 3)
    assert epochs == 3 and acc < 1.01


def test_optkern_trainer_stops_at_the_time_budget():
    _, epochs, _, _ = peers.train_optkern(DATA, 1.01, 50, max_seconds=0.0)
    assert epochs == 1


def test_sgdclassifier_trainer_counts_epochs_to_the_target():
    _, epochs, acc = peers.train_sgdclassifier(linear_model, DATA, 0.0, 5)
    assert epochs == 1 and acc >= 0.0
    _, epochs, acc = peers.train_sgdclassifier(linear_model, DATA, 1.01, 3)
    assert epochs == 3 and acc < 1.01


def test_torch_trainer_restores_threads_and_reaches_a_target():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    _, epochs, acc = peers.train_torch(torch, DATA, 0.5, 20, batch_size=64, lr=0.01,
                                       threads=1)
    assert torch.get_num_threads() == before
    assert acc >= 0.5 and 1 <= epochs < 20
    _, epochs, _ = peers.train_torch(torch, DATA, 1.01, 2, math.inf, batch_size=64, lr=0.01)
    assert epochs == 2


def test_import_peer_answers_none_for_a_missing_module(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "sklearn_hidden_for_test", None)
    assert peers.import_peer("sklearn_hidden_for_test") is None
    assert peers.import_peer("numpy") is np
