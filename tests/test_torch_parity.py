"""Number for number against torch.optim (float64): same initial parameters and
gradient sequence, 50 steps, every step compared to ~1e-10 relative."""

import numpy as np
import pytest

import optkern
from optkern import _backend

torch = pytest.importorskip("torch")

N_STEPS = 50
RTOL = 1e-10

# (torch class name, optkern class name, kwargs valid for both)
CASES = [
    ("SGD", "sgd", dict(lr=0.05)),
    ("SGD", "sgd", dict(lr=0.05, momentum=0.9)),
    ("SGD", "sgd", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", "sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", "sgd", dict(lr=0.05, weight_decay=0.1)),
    ("SGD", "sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05,
                        maximize=True)),
    ("Adagrad", "adagrad", dict(lr=0.1)),
    ("Adagrad", "adagrad", dict(lr=0.1, lr_decay=0.05)),
    ("Adagrad", "adagrad", dict(lr=0.1, initial_accumulator_value=0.3, eps=1e-6)),
    ("Adagrad", "adagrad", dict(lr=0.1, weight_decay=0.1, maximize=True)),
    ("RMSprop", "rmsprop", dict(lr=0.01)),
    ("RMSprop", "rmsprop", dict(lr=0.01, alpha=0.9, centered=True)),
    ("RMSprop", "rmsprop", dict(lr=0.01, momentum=0.7)),
    ("RMSprop", "rmsprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.05,
                                maximize=True)),
    ("Adadelta", "adadelta", dict()),
    ("Adadelta", "adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1)),
    ("Adadelta", "adadelta", dict(maximize=True)),
    ("Adam", "adam", dict(lr=0.01)),
    ("Adam", "adam", dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True)),
    ("Adam", "adam", dict(lr=0.01, maximize=True, weight_decay=0.1)),
    ("Adam", "adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", "adamw", dict(lr=0.01)),
    ("AdamW", "adamw", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("Adamax", "adamax", dict(lr=0.01)),
    ("Adamax", "adamax", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, maximize=True)),
    ("NAdam", "nadam", dict(lr=0.01)),
    ("NAdam", "nadam", dict(lr=0.01, momentum_decay=0.01, weight_decay=0.1)),
    ("NAdam", "nadam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("NAdam", "nadam", dict(lr=0.01, maximize=True)),
    ("RAdam", "radam", dict(lr=0.01)),
    ("RAdam", "radam", dict(lr=0.01, weight_decay=0.1)),
    ("RAdam", "radam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", "radam", dict(lr=0.01, betas=(0.5, 0.9), maximize=True)),
]

BACKENDS = ["numpy", "numba"] + (["cython"] if _backend.cython_module() is not None else [])


def _case_id(case):
    tname, _, kw = case
    opts = "-".join(f"{k}={v}" for k, v in kw.items()) or "defaults"
    return f"{tname}-{opts}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("torch_name, name, kw", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_torch_optim(torch_name, name, kw, backend):
    rng = np.random.default_rng(2024)
    shapes = [(7,), (3, 4)]
    params0 = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(N_STEPS)]

    t_params = [torch.tensor(p.copy(), dtype=torch.float64, requires_grad=True)
                for p in params0]
    extra = {"foreach": False}  # the single-tensor reference implementation
    t_opt = getattr(torch.optim, torch_name)(t_params, **kw, **extra)

    params = [p.copy() for p in params0]
    opt = optkern.OPTIMIZERS[name](params, backend=backend, **kw)

    for t, gs in enumerate(grads, start=1):
        for tp, g in zip(t_params, gs):
            tp.grad = torch.from_numpy(g.copy())
        t_opt.step()
        opt.step(gs)
        for k, (p, tp) in enumerate(zip(params, t_params)):
            expected = tp.detach().numpy()
            scale = max(float(np.max(np.abs(expected))), 1e-3)
            np.testing.assert_allclose(
                p, expected, rtol=RTOL, atol=RTOL * scale,
                err_msg=f"{torch_name}{kw} on {backend}: params[{k}] differ at step {t}")
    # the states agree as well (same names as torch's state dict)
    t_state = t_opt.state_dict()["state"]
    ours = opt.state_dict()["state"]
    for k in range(len(params)):
        assert ours[k]["step"] == N_STEPS
        theirs = t_state.get(k, {})
        if "step" in theirs:  # torch's SGD keeps no step count
            assert ours[k]["step"] == int(theirs["step"])
        for key, value in theirs.items():
            if key == "step" or not torch.is_tensor(value) or value.ndim == 0:
                continue
            if key == "momentum_buffer" and value is None:
                continue
            assert key in ours[k], f"torch state {key!r} missing from optkern's state"
            np.testing.assert_allclose(ours[k][key], value.numpy(), rtol=1e-9,
                                       atol=RTOL * max(1e-3, float(value.abs().max())),
                                       err_msg=f"{torch_name} state {key!r}")
        if "mu_product" in theirs:
            assert ours[k]["mu_product"] == pytest.approx(float(theirs["mu_product"]),
                                                          rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("torch_name, name, kw", [
    ("SGD", "sgd", dict(lr=0.05, momentum=0.9)),
    ("Adam", "adam", dict(lr=0.01, amsgrad=True)),
    ("Adagrad", "adagrad", dict(lr=0.1, lr_decay=0.01)),
], ids=["SGD-momentum", "Adam-amsgrad", "Adagrad-lr_decay"])
def test_matches_torch_with_lr_changed_every_step(torch_name, name, kw, backend):
    """A schedule written into param_groups[0]['lr'] (torch's way) on both sides."""
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(10)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    t_opt = getattr(torch.optim, torch_name)([tp], foreach=False, **kw)
    p = p0.copy()
    opt = optkern.OPTIMIZERS[name]([p], backend=backend, **kw)
    for t in range(1, 31):
        lr = kw["lr"] * (0.95 ** t)
        t_opt.param_groups[0]["lr"] = lr
        opt.param_groups[0]["lr"] = lr
        g = rng.standard_normal(10)
        tp.grad = torch.from_numpy(g.copy())
        t_opt.step()
        opt.step([g])
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=RTOL,
                                   atol=RTOL * max(1e-3, float(np.max(np.abs(p)))),
                                   err_msg=f"step {t}")
