"""Sparse updates: which optimizer admits which mode, and the closed forms.

On CSR data a minibatch's loss gradient is zero on every row of W whose
feature occurs in none of the batch's rows.  ``sparse_updates`` says what a
step does with those *untouched* rows (docs/sparse.md has the table):

``"dense"``
    today's step: every row gets the rule, with the penalty's gradient as its
    whole gradient.  The reference.
``"exact"``
    the touched rows get the dense step; the untouched ones are brought up to
    date in closed form when they are next touched (and at the end of each
    epoch), so that the weights agree with ``"dense"`` to rounding.  It
    exists where an untouched step has a closed form (``exact_kind``):

    * ``"scaled"``: plain SGD (no momentum, no noise, no averaging) with any
      penalty and any schedule.  The L2 part (penalty and ``weight_decay``)
      shrinks every weight by the same factor c_t = 1 - lr_t*lambda each
      step: W = s V with one scalar s (Bottou's svmsgd, scikit-learn's
      ``wscale``), so an untouched row costs nothing.  The step is affine,
      p' = c_t p + a_t g, with both coefficients read off the rule once a
      step (c_t = rule(1, 0), a_t = rule(0, 1)), so a touched weight costs
      one multiply-add: V' = V + (a_t / s') g.  The L1 part is the
      cumulative penalty of Tsuruoka, Tsujii and Ananiadou (ACL 2009, as
      scikit-learn's SGD): u = the L1 amount every weight should have
      received so far, q_i = what weight i received; when weight i is
      touched, it moves towards 0 by what it is owed, and stops at 0.  That
      clipping is *not* the dense path's subgradient step (which crosses 0 and
      oscillates around it): with L1, "exact" is exact against the same
      algorithm run on every weight every step (``kernels/sparse_reference.py``,
      ``cumulative_l1_epoch``), whose amounts applied earlier shrink with the
      L2 decay (u and q live in V's units), and it gives exact zeros.
    * ``"linear"``: an untouched step is linear in the row's parameter and
      states, x <- M x (x = (p, state_1, ...)); M is read off the update rule
      itself (``untouched_matrix``: the rule evaluated on unit vectors with
      the penalty's L2 gradient), so no formula is written twice.  k skipped
      steps are M^k, computed from M^(2^j) tables (``power_tables``).  This
      covers SGD with momentum or Nesterov (with an L2 penalty; no L1), and,
      without any penalty or weight decay, Adagrad (M = I), RMSprop (its
      averages decay by alpha^k) and Adadelta (rho^k).  M must stay the same
      over the epoch: rules whose M holds the learning rate (SGD, RMSprop with
      momentum) need a schedule that is constant within an epoch (None,
      "adaptive", Constant, ReduceOnPlateau).  With Polyak averaging the
      tables also hold sum_{t<=2^j} M^t, so the skipped iterates enter the
      average exactly.
    * FTRL: a zero gradient changes nothing (the rule says so), so lazy,
      exact and dense coincide.

    The Adam family (Adam, AdamW, Adamax, NAdam, RAdam) has no closed form:
    an untouched row keeps moving with its first moment, through a
    denominator that changes every step.
``"lazy"``
    the semantics of torch's ``SparseAdam`` and TF's ``LazyAdam``: untouched
    rows keep their weights and state.  The estimators' penalty is applied to
    touched rows only, its gradient divided by the probability pi_f that row f
    is touched in a minibatch (``touch_probabilities``): each step's
    gradient is then an unbiased estimate of the dense objective's gradient
    (E[1{f touched}/pi_f] = 1), so lazy SGD minimises the same objective;
    features that never occur in the training data (pi_f = 0) are never
    updated.  The rule's own ``weight_decay`` applies to touched rows only,
    unscaled (as LazyAdam).  Noise (perturbed SGD, SGLD) is drawn for touched
    elements only (the same draws the dense step gives them).  The Polyak
    average of a row counts its value at every step (it stays constant while
    the row is untouched).
``"auto"``
    exact where it exists, lazy otherwise; dense for dense X.

Everything here is plain Python and NumPy, run once per fit or per epoch on
the host; the compiled epochs (``kernels/sparse_epoch_drivers.py``) take the
tables and the probabilities as arrays.
"""

import numpy as np

from .penalty import l1_strength, l2_strength
from .rules import RULES, state_names

MODES = ("auto", "exact", "lazy", "dense")

# below this scale, W = s V is multiplied out (s -> 1), as scikit-learn does
MIN_SCALE = 1e-9


def exact_kind(rule, user, alpha, l1_ratio, averaging, lr_constant):
    """("scaled" | "linear", None) when "exact" exists, else (None, why not).

    ``user``: the rule's user hyperparameters (a dict), ``alpha``/``l1_ratio``
    the penalty of the gradient, ``averaging`` whether Polyak averaging is on,
    ``lr_constant`` whether the learning rate stays the same within an epoch.
    """
    l1 = l1_strength(alpha, l1_ratio)
    l2 = l2_strength(alpha, l1_ratio)
    wd = user.get("weight_decay", 0.0)
    if rule == "ftrl":
        return "linear", None
    if rule == "sgld" or user.get("noise", 0.0) > 0:
        return None, "noise has no closed form for the skipped steps"
    if user.get("maximize", 0.0):
        return None, "maximize=True turns the penalty's shrinkage around"
    if rule == "sgd":
        if user["momentum"] == 0 and not averaging:
            return "scaled", None
        if l1 > 0:
            return None, "L1 with momentum or averaging has no closed form"
        if not lr_constant:
            return None, ("momentum (or averaging) needs a learning rate that is "
                          "constant within an epoch")
        return "linear", None
    if rule in ("adagrad", "adadelta", "rmsprop"):
        if l1 > 0 or l2 > 0 or wd > 0:
            return None, (f"{rule} with a penalty or weight decay has no closed form "
                          "for the skipped steps")
        if rule == "rmsprop" and user["momentum"] > 0 and not lr_constant:
            return None, ("RMSprop with momentum needs a learning rate that is "
                          "constant within an epoch")
        return "linear", None
    return None, (f"{rule}: an untouched row keeps moving with its moments through a "
                  "denominator that changes every step; no closed form")


def resolve(mode, rule, user, alpha, l1_ratio, averaging, lr_constant):
    """The mode a fit runs: ("lazy" | "dense" | "scaled" | "linear").

    ``mode`` is the user's ``sparse_updates`` ("auto", "exact", "lazy",
    "dense"); "exact" that does not exist raises ValueError saying why.
    """
    if mode in ("lazy", "dense"):
        return mode
    kind, why = exact_kind(rule, user, alpha, l1_ratio, averaging, lr_constant)
    if kind is None:
        if mode == "exact":
            raise ValueError(f"sparse_updates='exact' is not available here: {why}; "
                             "use 'lazy' (or 'auto', which falls back to it) or 'dense'")
        return "lazy"
    return kind


def untouched_matrix(rule, hyper, l2, present):
    """M (m x m, m = 1 + number of states) of one untouched step x <- M x.

    Read off the rule: column j is the rule's response to a change of x_j,
    with the gradient l2 * p (the L2 penalty's) and no noise, around a valid
    point x0 (the state after two steps of gradient 1 from zero: a centred
    RMSprop needs square_avg >= grad_avg^2 under its square root, even where a
    zero gradient makes the root irrelevant).  ``present`` says which states
    exist; absent ones get zero rows and columns (they stay 0).  Only
    meaningful where ``exact_kind`` says "linear" (tests/test_sparse.py checks
    linearity on random points).
    """
    spec = RULES[rule]
    m = 1 + len(state_names(spec))
    hyper = [float(h) for h in hyper]
    live = np.array([True] + [bool(x) for x in present])

    def step(x, g):
        return np.array(spec.rule(x[0], g, *x[1:], *hyper, 0.0), dtype=np.float64) * live

    x0 = np.zeros(m)
    x0[0] = 1.0
    for _ in range(2):
        x0 = step(x0, 1.0)
    f0 = step(x0, l2 * x0[0])
    M = np.zeros((m, m))
    for j in range(m):
        if not live[j]:
            continue
        h = 0.5 * max(abs(x0[j]), 1e-3)
        x = x0.copy()
        x[j] += h
        M[:, j] = (step(x, l2 * x[0]) - f0) / h
    return M


def power_tables(M, max_gap):
    """(P, S) with P[j] = M^(2^j) and S[j] = sum_{t=1}^{2^j} M^t, j < bits of max_gap.

    M^g and sum_{t<=g} M^t follow from the set bits of g (the powers of one M
    commute): A <- A P[j], S_sum <- S_sum + A S[j], bit by bit from the lowest.
    """
    m = M.shape[0]
    J = max(1, int(max_gap).bit_length())
    P = np.empty((J, m, m))
    S = np.empty((J, m, m))
    P[0] = M
    S[0] = M
    for j in range(1, J):
        S[j] = S[j - 1] + P[j - 1] @ S[j - 1]
        P[j] = P[j - 1] @ P[j - 1]
    return P, S


# touch_probabilities: the product form up to this batch size, log-gammas above
PRODUCT_MAX_BATCH = 64


def touch_probabilities(counts, n, batch, sampling):
    """pi_f: the probability that a minibatch of ``batch`` of the ``n`` rows
    holds a row with feature f, which ``counts[f]`` rows hold.

    "replacement": 1 - (1 - c/n)^B; otherwise (a shuffled or sequential
    epoch, rows without replacement): 1 - C(n - c, B) / C(n, B).
    """
    seen, p = _seen_probabilities(counts, n, batch, sampling)
    pi = np.zeros(np.shape(counts), dtype=np.float64)
    pi[seen] = p
    return pi


def _seen_probabilities(counts, n, batch, sampling):
    """(the features that occur, their pi_f): a feature in no row has pi_f = 0
    (as the formulas give).  Only those are computed: on hashed or wide data
    most features never occur, and each pass over all n_features allocated
    and faulted in an n_features-long temporary (at 2^22 features 2.3 s of a
    fit's first epoch on this machine, whose transparent huge pages compact
    memory on such faults); the values are those of the passes over all."""
    counts = np.asarray(counts)
    seen = np.flatnonzero(counts)
    c = counts[seen].astype(np.float64)
    B = float(min(batch, n))
    if sampling == "replacement":
        # (a feature in every row, c == n, gives log1p(-1) = -inf: probability 1)
        with np.errstate(divide="ignore"):
            return seen, -np.expm1(B * np.log1p(-c / n))
    # a feature in more than n - B rows is in every batch
    p = np.ones_like(c)
    ok = np.flatnonzero(c <= n - B)
    cc = c[ok]
    if B <= PRODUCT_MAX_BATCH:
        # C(n - c, B) / C(n, B) = prod_{i < B} (1 - c / (n - i)), B passes over
        # the features (about the log-gammas' time at B = 16): exact to a few
        # ulps, where the difference of four log-gammas of ~n loses ~1e-10
        # absolutely, so 1/pi_f of a feature in one row of 192,000 was 2.4e-6
        # off (relative); in place, one temporary
        m = np.ones_like(cc)
        t = np.empty_like(cc)
        for i in range(int(B)):
            np.divide(cc, n - i, out=t)
            np.subtract(1.0, t, out=t)
            m *= t
    else:
        from scipy.special import gammaln

        m = np.exp(gammaln(n - cc + 1) - gammaln(n - cc - B + 1)
                   - gammaln(n + 1) + gammaln(n - B + 1))
    p[ok] = 1.0 - m
    return seen, p


def lazy_scales(counts, n, batch, sampling, dtype):
    """1/pi_f as the lazy penalty's per-row factor (0 for features never seen)."""
    seen, p = _seen_probabilities(counts, n, batch, sampling)
    out = np.zeros(np.shape(counts), dtype=dtype)
    pos = p > 0
    out[seen[pos]] = 1.0 / p[pos]
    return out


def shrink_factor(rule, hyper):
    """c of the scaled mode: the rule's p after one step from p = 1 with a zero
    gradient (1 - lr * weight_decay for SGD)."""
    spec = RULES[rule]
    ns = len(state_names(spec))
    return float(spec.rule(1.0, 0.0, *([0.0] * ns), *[float(h) for h in hyper], 0.0)[0])


def first_step_dense(rule, user):
    """Whether the first step of a fresh optimizer differs from the later
    untouched steps (SGD's momentum buffer starts as the gradient): "linear"
    then runs that step on every row."""
    return rule == "sgd" and user.get("momentum", 0.0) > 0


def cumulative_l1(v, q, u):
    """Tsuruoka et al.'s clip of one weight (in V's units): move v towards 0
    by what it is owed (u minus what it got, -q for v > 0), never past 0.
    Returns (v, q).  The compiled twin is in sparse_epoch_drivers."""
    z = v
    if v > 0:
        v = max(0.0, v - (u + q))
    elif v < 0:
        v = min(0.0, v + (u - q))
    return v, q + (v - z)


def lr_constant_within_epoch(schedule):
    """Whether the schedule's factor is the same for every step of an epoch."""
    from optkern import schedules as S
    return schedule is None or isinstance(schedule, (S.Constant, S.ReduceOnPlateau))


__all__ = ["MODES", "exact_kind", "resolve", "untouched_matrix", "power_tables",
           "touch_probabilities", "lazy_scales", "shrink_factor", "first_step_dense",
           "cumulative_l1", "lr_constant_within_epoch", "MIN_SCALE"]
