"""The elastic-net penalty, written once for the host and the kernels.

    penalty(W)  = alpha * (l1_ratio * |W|_1 + 0.5 * (1 - l1_ratio) * |W|^2)
    gradient(w) = alpha * (l1_ratio * sign(w) + (1 - l1_ratio) * w)

with sign(0) = 0 (the subgradient at 0).  ``penalty="l2"`` is l1_ratio 0,
``"l1"`` is 1, ``"elasticnet"`` takes the estimator's ``l1_ratio``
(``l1_ratio_of``).

The scalar functions below are in the rule language's host subset
(docs/rules.md): Python runs them as written (the host: ``l1_ratio_of``
and the strengths), Numba compiles these functions themselves, inlined
(``loss_drivers``' penalty loops, whose penalty the Numba epochs import;
``sparse_epoch_drivers.penalty_grad``/``penalty_value``), and the compiled
kernels hold C twins translated from this text: Cython ones by
``rulelang.c.HostEmitter`` (``_templates.penalty_twins`` in kernels/cython,
into ``templates/penalty_twin.pyx.tp``, included by ``_losses.pyx.tp``,
``_epochs.pyx.tp`` and ``_sparse_epochs.pyx.tp``), plain C ones of
``C_FUNCTIONS`` by ``rulelang.c.CHostEmitter`` (the dense epoch's C pass,
``templates/_epochs_dense.c.tp``).  Where a kernel sums the penalty over W
in its own order (runs, vector lanes, W's dtype, weight by weight) it keeps
that loop and takes the pieces from here: the two strengths, the per-weight
gradient and share (``penalty_per_alpha``), the value from the two sums.

The NumPy reference (``loss_reference.penalty``) is written separately on
purpose: it is the oracle these are tested against.
"""

# the l1 share of the named penalties ("elasticnet" takes l1_ratio)
L1_RATIO = {"l2": 0.0, "l1": 1.0}


def l1_ratio_of(penalty, l1_ratio):
    """The l1 share of ``penalty`` (a name of ``L1_RATIO``, else the
    estimator's ``l1_ratio``) as a float."""
    return L1_RATIO.get(penalty, float(l1_ratio))


def l1_strength(alpha, l1_ratio):
    """The L1 part's strength: the gradient's coefficient of sign(w)."""
    return alpha * l1_ratio


def l2_strength(alpha, l1_ratio):
    """The L2 part's strength: the gradient's coefficient of w."""
    return alpha * (1.0 - l1_ratio)


def penalty_grad(w, alpha, l1_ratio):
    """The penalty's (sub)gradient at the weight ``w`` (sign(0) = 0)."""
    sgn = 1.0 if w > 0 else (-1.0 if w < 0 else 0.0)
    return alpha * (l1_ratio * sgn + (1.0 - l1_ratio) * w)


def penalty_of_sums(alpha, l1_ratio, l1, l2):
    """The penalty's value from l1 = sum |w| and l2 = sum w^2."""
    return alpha * (l1_ratio * l1 + 0.5 * (1.0 - l1_ratio) * l2)


def penalty_per_alpha(w, l1_ratio):
    """One weight's share of the penalty divided by alpha: alpha times its
    sum over W is the penalty (the CSR epoch sums it weight by weight)."""
    return l1_ratio * abs(w) + 0.5 * (1.0 - l1_ratio) * w * w


# what the Cython kernels hold a C twin of, in this order
KERNEL_FUNCTIONS = ("l1_strength", "l2_strength", "penalty_grad", "penalty_of_sums",
                    "penalty_per_alpha")
# what the dense epoch's C code (templates/_epochs_dense.c.tp) holds a C twin of
C_FUNCTIONS = ("l1_strength", "l2_strength", "penalty_of_sums")
