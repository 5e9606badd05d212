"""The NumPy reference backend: the executable specification of every update.

Each function follows torch.optim's documented algorithm in plain vectorised
NumPy, from the user-facing hyperparameters and the step number, for ONE
tensor.  It deliberately does not reuse ``rules.py``/``prepare``: it is the
independent oracle the compiled backends are tested against.

All arithmetic happens in the parameter's dtype (Python-float hyperparameters
are "weak" scalars under NumPy 2, so float32 stays float32), like torch.

The gradient's prologue that torch.optim runs in front of every method
(maximize, decoupled and coupled weight decay) is written once, in
``prologue_for``, from the user-facing hyperparameters; which items an optimizer
has is what its registry entry declares (``RuleSpec.prologue``, the same
declaration the rule language injects into the compiled rules).  Each
function below is the method's own update and ``UPDATES`` holds it with the
prologue in front (``with_prologue``): callers get the whole step.
"""

import math

import numpy as np

from . import rules as _rules

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def normal(key, offset, n):
    """Draws offset .. offset+n-1 of the counter-based Gaussian stream ``key``.

    Same splitmix64 + Box-Muller recipe as ``_helpers.normal`` (uint64 wraps).
    """
    golden = np.uint64(0x9E3779B97F4A7C15)
    c = np.arange(offset, offset + n, dtype=np.uint64)
    key = np.uint64(key)
    a = _mix64(key + golden * (np.uint64(2) * c + np.uint64(1)))
    b = _mix64(key + golden * (np.uint64(2) * c + np.uint64(2)))
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53
    u2 = (b >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


def prologue_for(items):
    """The declared prologue ``items`` (names of ``rulelang.prologue.PROLOGUE``)
    as one function ``apply(p, g, user) -> g`` on one tensor, from the user
    hyperparameters ``user``, in torch's order: ``maximize`` negates the
    gradient; ``decoupled_weight_decay`` (when the user's ``decoupled`` is
    set) scales p in place by 1 - lr*weight_decay; otherwise
    ``weight_decay`` adds weight_decay*p to the gradient.  ``apply`` returns
    the gradient the method's own update sees.  None when nothing is
    declared.  Made once per rule (``plan``): a step runs only the tests of
    what its rule declares."""
    flip = "maximize" in items
    decoupled = "decoupled_weight_decay" in items
    coupled = "weight_decay" in items
    if not (flip or decoupled or coupled):
        return None

    def apply(p, g, user):
        if flip and user["maximize"]:
            g = -g
        if decoupled and user["decoupled"]:
            p *= 1 - user["lr"] * user["weight_decay"]
        elif coupled and user["weight_decay"] != 0:
            g = g + user["weight_decay"] * p
        return g

    def active(user):
        """Whether ``apply`` changes anything under these hyperparameters
        (``step`` then calls it; otherwise the call per tensor is skipped)."""
        return bool((flip and user["maximize"]) or (decoupled and user["decoupled"])
                    or (coupled and user["weight_decay"] != 0))

    apply.active = active
    return apply


# UPDATES entry -> (the method's own update, its prologue from prologue_for)
_PLANS = {}


def plan(name):
    """(the method's own update, ``apply`` of its declared prologue or None)
    of the reference ``UPDATES[name]``: resolved from the rule's registry
    entry at its first step and kept for that entry, so a step looks up
    nothing else."""
    full = UPDATES[name]
    resolved = _PLANS.get(full)
    if resolved is None:
        spec = _rules.RULES.get(name)
        resolved = _PLANS[full] = (full.__wrapped__,
                                   prologue_for(() if spec is None else spec.prologue))
    return resolved


def with_prologue(name, update):
    """``update`` (the method's own step) with rule ``name``'s declared
    prologue in front, as ``UPDATES`` holds it."""
    def full(p, g, state, step, **user):
        own, apply = plan(name)
        return own(p, g if apply is None else apply(p, g, user), state, step, **user)

    full.__name__ = full.__qualname__ = update.__name__
    full.__doc__ = update.__doc__
    full.__wrapped__ = update
    return full


def sgd(p, g, state, step, *, lr, momentum, dampening, weight_decay, nesterov,
        maximize, noise, z=None):
    if momentum != 0:
        buf = state["momentum_buffer"]
        if step == 1:
            buf[...] = g
        else:
            buf *= momentum
            buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g
    if z is not None:
        p += (noise * z).astype(p.dtype)


def sgld(p, g, state, step, *, lr, noise_scale, weight_decay, maximize, z=None):
    p -= lr * g
    if z is not None:
        p += (noise_scale * math.sqrt(2.0 * lr) * z).astype(p.dtype)


def adagrad(p, g, state, step, *, lr, lr_decay, weight_decay, eps, maximize):
    clr = lr / (1 + (step - 1) * lr_decay)
    state["sum"] += g * g
    p -= clr * g / (np.sqrt(state["sum"]) + eps)


def rmsprop(p, g, state, step, *, lr, alpha, eps, weight_decay, momentum,
            centered, maximize):
    sq = state["square_avg"]
    sq *= alpha
    sq += (1 - alpha) * g * g
    if centered:
        ga = state["grad_avg"]
        ga *= alpha
        ga += (1 - alpha) * g
        avg = np.sqrt(sq - ga * ga) + eps
    else:
        avg = np.sqrt(sq) + eps
    if momentum > 0:
        buf = state["momentum_buffer"]
        buf *= momentum
        buf += g / avg
        p -= lr * buf
    else:
        p -= lr * g / avg


def adadelta(p, g, state, step, *, lr, rho, eps, weight_decay, maximize):
    sq, acc = state["square_avg"], state["acc_delta"]
    sq *= rho
    sq += (1 - rho) * g * g
    delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
    acc *= rho
    acc += (1 - rho) * delta * delta
    p -= lr * delta


def adam(p, g, state, step, *, lr, beta1, beta2, eps, weight_decay, amsgrad,
         maximize, bias_correction, decoupled):
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    bc1 = 1 - beta1 ** step if bias_correction else 1.0
    bc2 = 1 - beta2 ** step if bias_correction else 1.0
    if amsgrad:
        vmax = state["max_exp_avg_sq"]
        np.maximum(vmax, v, out=vmax)
        v = vmax
    denom = np.sqrt(v) / math.sqrt(bc2) + eps
    p -= (lr / bc1) * m / denom


def adamax(p, g, state, step, *, lr, beta1, beta2, eps, weight_decay, maximize):
    m, u = state["exp_avg"], state["exp_inf"]
    m *= beta1
    m += (1 - beta1) * g
    np.maximum(beta2 * u, np.abs(g) + eps, out=u)
    p -= lr / (1 - beta1 ** step) * m / u


def nadam(p, g, state, step, *, lr, beta1, beta2, eps, weight_decay,
          momentum_decay, maximize, decoupled, mu_product):
    """Returns the new mu_product (torch keeps it in the state)."""
    mu = beta1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    mu_product = mu_product * mu
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    denom = np.sqrt(v / (1 - beta2 ** step)) + eps
    p -= lr * (1 - mu) / (1 - mu_product) * g / denom
    p -= lr * mu_next / (1 - mu_product * mu_next) * m / denom
    return mu_product


def radam(p, g, state, step, *, lr, beta1, beta2, eps, weight_decay, maximize,
          decoupled):
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    m_hat = m / bc1
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2 ** step / bc2
    if rho_t > 5:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                         / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        adaptive_lr = math.sqrt(bc2) / (np.sqrt(v) + eps)
        p -= m_hat * lr * adaptive_lr * rect
    else:
        p -= m_hat * lr


def ftrl(p, g, state, step, *, lr, lr_power, beta, l1, l2, l1_per_step, l2_per_step):
    """McMahan et al. (KDD 2013), Algorithm 1, for the coordinates i with g_i != 0
    (the features present in the example); the others keep w, z and n."""
    l1 = l1 + l1_per_step * step
    l2 = l2 + l2_per_step * step
    z, n = state["linear"], state["accumulator"]
    i = np.flatnonzero(g)
    g_i, w_i, n_i = g[i], p[i], n[i]
    sigma = ((n_i + g_i * g_i) ** -lr_power - n_i ** -lr_power) / lr
    z[i] += g_i - sigma * w_i
    n[i] += g_i * g_i
    z_i, n_i = z[i], n[i]
    w_new = -(z_i - np.sign(z_i) * l1) / ((beta + n_i ** -lr_power) / lr + l2)
    p[i] = np.where(np.abs(z_i) <= l1, 0, w_new)


# the whole reference step of each rule: its own update with its declared prologue
UPDATES = {name: with_prologue(name, update) for name, update in {
    "sgd": sgd, "sgld": sgld, "adagrad": adagrad, "rmsprop": rmsprop,
    "adadelta": adadelta, "adam": adam, "adamax": adamax, "nadam": nadam,
    "radam": radam, "ftrl": ftrl,
}.items()}
NOISY = ("sgd", "sgld")


def register(name, update):
    """Add the NumPy reference of a rule registered at run time:
    ``update(p, g, state, step, **user_hyper)`` updates one flat tensor in place
    (``state`` maps the rule's state names to arrays).  It is the method's own
    update: the prologue the rule's entry declares (``prologue``) is applied
    in front of it here, as for every built-in reference."""
    if name in UPDATES:
        raise ValueError(f"a reference for {name!r} is registered twice")
    UPDATES[name] = with_prologue(name, update)
    return update


def step(name, params, grads, states, avg, avg_weight, user_hyper, step,
         scalar_state, key, offsets):
    """One reference step over a list of flat tensors, in place.

    ``states`` maps state name -> list of arrays (one per tensor); ``avg`` is a
    list of Polyak averages or None; ``user_hyper`` a dict of the rule's user
    hyperparameters; ``key`` the step's noise key or None.  Returns the new
    scalar-state tuple.
    """
    # the method's own update, its prologue applied here: calling UPDATES[name]
    # would pass the keyword arguments through one more call per tensor
    fn, apply = _PLANS.get(UPDATES[name]) or plan(name)
    if apply is not None and not apply.active(user_hyper):
        apply = None    # (a call per tensor that changes nothing: ~0.5 us at 1e3)
    new_scalars = scalar_state
    for k, (p, g) in enumerate(zip(params, grads)):
        st = {s: arrs[k] for s, arrs in states.items()}
        kwargs = dict(user_hyper)
        if apply is not None:
            g = apply(p, g, kwargs)
        if name in NOISY and key is not None:
            kwargs["z"] = normal(key, int(offsets[k]), p.size)
        if name == "nadam":
            new_scalars = (fn(p, g, st, step, mu_product=scalar_state[0], **kwargs),)
        else:
            fn(p, g, st, step, **kwargs)
        if avg is not None:
            avg[k] += avg_weight * (p - avg[k])
    return new_scalars
