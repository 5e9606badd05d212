"""The gradient's prologue an update rule's registry entry may declare
(``RuleSpec.prologue``), and ``register``'s check of that declaration.

Kept apart from the front end (frontend.py, which puts the statements in front
of a rule's body) and free of imports, so that kernels/rules.py checks every
entry on ``import optkern`` without loading the front end: the rules are
parsed and given their prologue on first use (``rules.RuleSpec.rule``).
"""

from .errors import RuleError

# The statements torch.optim runs on the gradient before every method's own
# update, written here once and put in front of the rule's body by
# ``frontend.Rule``, so that every target (Numba, CUDA, Cython) and the Python
# function itself (``frontend.with_prologue``) run them and a rule writes only
# its core update.
# name -> (the kernel hyperparameter it reads, the user hyperparameters the
# NumPy reference reads, the statements with ``p``/``g`` for the rule's first
# two parameters).  Declared items run in this order (torch's): the flip, the
# decoupled decay of the parameter, the coupled decay of the gradient.
PROLOGUE = {
    "maximize": ("maximize", ("maximize",),
                 "if maximize:\n    g = -g"),
    "decoupled_weight_decay": ("decay_factor", ("lr", "weight_decay", "decoupled"),
                               "p = p * decay_factor"),
    "weight_decay": ("weight_decay", ("weight_decay",),
                     "g = g + weight_decay * p"),
}


def check_prologue(items, kernel_hyper, user_hyper, where):
    """Raise RuleError unless ``items`` (a registry entry's ``prologue``) are
    known names of ``PROLOGUE``, each once, in its order, and the entry has
    the hyperparameters they read: the kernel one (the rule's parameter) and
    the user ones (the NumPy reference's)."""
    items = tuple(items)
    unknown = [i for i in items if i not in PROLOGUE]
    if unknown:
        raise RuleError(f"{where}: prologue {unknown[0]!r} is not one of "
                        f"{', '.join(PROLOGUE)}")
    ordered = tuple(i for i in PROLOGUE if i in items)
    if items != ordered:
        raise RuleError(f"{where}: prologue {items} must name each item once, in the "
                        f"order they run: {ordered}")
    for item in items:
        kernel, user, _ = PROLOGUE[item]
        if kernel not in kernel_hyper:
            raise RuleError(f"{where}: prologue {item!r} reads the kernel hyperparameter "
                            f"{kernel!r}, which kernel_hyper {tuple(kernel_hyper)} lacks")
        missing = [u for u in user if u not in user_hyper]
        if missing:
            raise RuleError(f"{where}: prologue {item!r} needs the user hyperparameters "
                            f"{missing} (the NumPy reference reads them), which user_hyper "
                            f"{tuple(user_hyper)} lacks")
