"""The gradient's prologue an update rule's registry entry may declare
(``RuleSpec.prologue``), and ``register``'s check of that declaration.

Kept apart from the front end (frontend.py, which puts the statements in front
of a rule's body and of its ``prepare``) and free of imports (namedtuple
aside), so that kernels/rules.py checks every entry on ``import optkern``
without loading the front end: the rules and prepares are parsed and given
their prologue on first use (``rules.RuleSpec.rule``, ``.prepare``).
"""

from collections import namedtuple

from .errors import RuleError

# The statements torch.optim runs on the gradient before every method's own
# update, written here once and put in front of the rule's body by
# ``frontend.Rule``, so that every target (Numba, CUDA, Cython) and the Python
# function itself (``frontend.with_prologue``) run them and a rule writes only
# its core update.
# name -> Item: the kernel hyperparameter it reads, the user hyperparameters
# the NumPy reference reads, the statements with ``p``/``g`` for the rule's
# first two parameters, and the statements (or None) put in front of the
# rule's ``prepare`` that compute that kernel hyperparameter from the user
# ones (``frontend.prepare_with_prologue``: the prepare as written returns the
# kernel hyperparameters without it, and the front end puts it in its place).
# Declared items run in this order (torch's): the flip, the decoupled decay of
# the parameter, the coupled decay of the gradient.
Item = namedtuple("Item", "kernel user statements prepare")

PROLOGUE = {
    "maximize": Item("maximize", ("maximize",),
                     "if maximize:\n    g = -g", None),
    # AdamW's decay: the factor in double on the host (rounded once, as torch),
    # and no coupled decay of the gradient then
    "decoupled_weight_decay": Item(
        "decay_factor", ("lr", "weight_decay", "decoupled"),
        "p = p * decay_factor",
        "if decoupled:\n"
        "    decay_factor = 1.0 - lr * weight_decay\n"
        "    weight_decay = 0.0\n"
        "else:\n"
        "    decay_factor = 1.0"),
    "weight_decay": Item("weight_decay", ("weight_decay",),
                         "g = g + weight_decay * p", None),
}


def prepare_items(items):
    """The declared ``items`` that put statements in front of ``prepare``."""
    return tuple(item for item in items if PROLOGUE[item].prepare is not None)


def prepare_provides(items):
    """The kernel hyperparameters the prologue ``items`` compute in front of
    ``prepare`` (so the prepare as written does not return them)."""
    return tuple(PROLOGUE[item].kernel for item in prepare_items(items))


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
        kernel, user = PROLOGUE[item].kernel, PROLOGUE[item].user
        if kernel not in kernel_hyper:
            raise RuleError(f"{where}: prologue {item!r} reads the kernel hyperparameter "
                            f"{kernel!r}, which kernel_hyper {tuple(kernel_hyper)} lacks")
        missing = [u for u in user if u not in user_hyper]
        if missing:
            raise RuleError(f"{where}: prologue {item!r} needs the user hyperparameters "
                            f"{missing} (the NumPy reference reads them), which user_hyper "
                            f"{tuple(user_hyper)} lacks")
