"""Facts from the course material, as tests.  Expected values are computed from
the formulas; the only literal is the course's documented "about 3.16 * lr"."""

import math

import numpy as np
import pytest

import optkern
from conftest import FIXED_OPTIONS, cpu_backends, make, registry_lr

BACKENDS = ["numpy"] + cpu_backends()


@pytest.mark.parametrize("backend", BACKENDS)
def test_adagrad_step_shrinks_like_one_over_sqrt_t(backend):
    g = np.array([0.5, -2.0, 3.0, 1e-2])
    p = np.zeros(4)
    opt = optkern.Adagrad([p], lr=0.1, eps=1e-10, backend=backend)
    steps = []
    for _ in range(400):
        before = p.copy()
        opt.step([g])
        steps.append(np.abs(p - before))
    steps = np.array(steps)
    t = np.arange(1, 401)[:, None]
    # step_t * sqrt(t) is constant (= lr per element, |g| >> eps)
    np.testing.assert_allclose(steps * np.sqrt(t), np.broadcast_to(steps[:1], steps.shape),
                               rtol=1e-6)
    np.testing.assert_allclose(steps[0], 0.1, rtol=1e-6)
    # and the log-log slope of the step size against t is -1/2
    slope = np.polyfit(np.log(t[:, 0]), np.log(steps[:, 1]), 1)[0]
    assert slope == pytest.approx(-0.5, abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_first_bias_corrected_step_is_lr_sign_g(backend, dtype):
    rng = np.random.default_rng(0)
    g = (rng.uniform(0.1, 10.0, 50) * rng.choice([-1.0, 1.0], 50)).astype(dtype)
    p0 = rng.standard_normal(50).astype(dtype)
    p = p0.copy()
    lr = 0.01
    optkern.Adam([p], lr=lr, backend=backend).step([g])
    rtol = 1e-6 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(p - p0, -lr * np.sign(g), rtol=rtol, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_without_bias_correction_first_step_is_about_3_16_lr(backend):
    g = np.array([0.3, -1.0, 5.0, -40.0])
    p = np.zeros(4)
    lr, b1, b2 = 1e-3, 0.9, 0.999
    optkern.Adam([p], lr=lr, betas=(b1, b2), bias_correction=False,
                 backend=backend).step([g])
    eps = 1e-8
    expected = lr * (1 - b1) / math.sqrt(1 - b2)
    # exactly: lr (1-b1)|g| / (sqrt(1-b2)|g| + eps), -> expected for |g| >> eps
    np.testing.assert_allclose(
        np.abs(p), lr * (1 - b1) * np.abs(g) / (math.sqrt(1 - b2) * np.abs(g) + eps), rtol=1e-12)
    np.testing.assert_allclose(np.abs(p), expected, rtol=1e-5)
    np.testing.assert_array_equal(np.sign(p), -np.sign(g))
    assert np.abs(p) / lr == pytest.approx(3.16, abs=0.01)  # the course's number
    # with bias correction, the same first step is lr
    q = np.zeros(4)
    optkern.Adam([q], lr=lr, betas=(b1, b2), backend=backend).step([g])
    np.testing.assert_allclose(np.abs(q), lr, rtol=1e-6)


# ---------------------------------------------------------------- quadratics
def _ill_conditioned(kappa=100.0, d=10, seed=0):
    """f(x) = 1/2 x^T A x with eigenvalues spread over [1, kappa], rotated."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eig = np.logspace(0, math.log10(kappa), d)
    a = (q * eig) @ q.T
    return a, eig


def _steps_to_tolerance(opt, x, a, tol, max_steps):
    f0 = 0.5 * x @ a @ x
    for t in range(1, max_steps + 1):
        opt.step([a @ x])
        if 0.5 * x @ a @ x <= tol * f0:
            return t
    return max_steps + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_momentum_and_nesterov_beat_plain_sgd_on_ill_conditioned_quadratic(backend):
    a, eig = _ill_conditioned(kappa=100.0)
    kappa = eig.max() / eig.min()
    assert kappa == pytest.approx(100.0)
    lr = 1.0 / eig.max()
    x0 = np.ones(len(eig))
    counts = {}
    for label, kw in [("plain", {}), ("momentum", dict(momentum=0.9)),
                      ("nesterov", dict(momentum=0.9, nesterov=True))]:
        x = x0.copy()
        counts[label] = _steps_to_tolerance(optkern.SGD([x], lr=lr, backend=backend, **kw),
                                            x, a, 1e-8, 20000)
    assert counts["plain"] <= 20000, counts  # plain SGD does converge, slowly
    assert counts["momentum"] < counts["plain"] / 2, counts
    assert counts["nesterov"] < counts["plain"] / 2, counts


# per optimizer: options that converge on a bowl with eigenvalues in [1, 10]
BOWL = {
    "sgd": dict(lr=0.1, momentum=0.5),
    "adagrad": dict(lr=0.5),
    "rmsprop": dict(lr=0.01),
    "adadelta": dict(lr=0.1, rho=0.9, eps=1e-3),  # lr=1 overshoots near the optimum (lambda_max = 10)
    "adam": dict(lr=0.05),
    "adamw": dict(lr=0.05, weight_decay=1e-3),
    "adamax": dict(lr=0.05),
    "nadam": dict(lr=0.05),
    "radam": dict(lr=0.05),
    "sgld": dict(lr=0.05, noise_scale=1e-4, seed=0),
    "ftrl": dict(lr=0.5),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(optkern.OPTIMIZERS))
def test_every_optimizer_converges_on_convex_quadratic_bowl(name, backend):
    a, _ = _ill_conditioned(kappa=10.0, d=8, seed=1)
    x = np.random.default_rng(2).standard_normal(8)
    f0 = 0.5 * x @ a @ x
    # an optimizer without tuned options here runs at its registry learning rate
    opt = make(name, [x], backend, **BOWL.get(name, dict(lr=registry_lr(name))))
    for _ in range(3000):
        opt.step([a @ x])
    f = 0.5 * x @ a @ x
    assert f < 1e-4 * f0, (name, f, f0)
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sgd_with_zero_momentum_is_plain_sgd(backend, dtype):
    rng = np.random.default_rng(4)
    p = rng.standard_normal((6, 7)).astype(dtype)
    opt = optkern.SGD([p], lr=0.03, momentum=0.0, backend=backend)
    for _ in range(5):
        g = rng.standard_normal((6, 7)).astype(dtype)
        expected = p - dtype(0.03) * g
        opt.step([g])
        if dtype == np.float64:
            np.testing.assert_array_equal(p, expected)
        else:
            np.testing.assert_allclose(p, expected, rtol=1e-6, atol=1e-7)
    assert "momentum_buffer" not in opt.state_dict()["state"][0]


def test_heavy_ball_relation_to_course_notation():
    """Course: v <- rho*v - lr*g; x <- x + v.  torch's SGD(momentum=rho) gives the
    same iterates for a constant lr (README, 'Relation to the course notation')."""
    rng = np.random.default_rng(6)
    a, _ = _ill_conditioned(kappa=20.0, d=5, seed=3)
    x = rng.standard_normal(5)
    y = x.copy()
    v = np.zeros(5)
    lr, rho = 0.04, 0.8
    opt = optkern.SGD([x], lr=lr, momentum=rho, backend="numba")
    for _ in range(50):
        opt.step([a @ x])
        v = rho * v - lr * (a @ y)
        y = y + v
    np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_sgld_stationary_variance_on_1d_quadratic(backend):
    """f(x) = a x^2 / 2 at temperature T = noise_scale^2: stationary variance T / a
    (exactly T / (a (1 - lr a / 2)) for the discretised chain).  Each element of
    the array is an independent chain."""
    a, s, lr = 4.0, 0.5, 0.0125
    chains = 4000
    x = np.full(chains, 3.0)
    opt = optkern.SGLD([x], lr=lr, noise_scale=s, seed=2024, backend=backend)
    for _ in range(300):  # burn-in: (1 - lr a)^300 ~ 2e-7
        opt.step([a * x])
    samples = []
    for t in range(200):
        opt.step([a * x])
        if t % 10 == 0:
            samples.append(x.copy())
    samples = np.array(samples)
    exact = s * s / (a * (1 - lr * a / 2))
    assert abs(samples.mean()) < 0.05 * math.sqrt(exact)
    assert samples.var() == pytest.approx(exact, rel=0.05)
    assert samples.var() == pytest.approx(s * s / a, rel=0.1)  # the continuous-time answer
