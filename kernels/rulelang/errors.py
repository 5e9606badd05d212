"""The rule language's one error (its own module, light enough for
kernels/rules.py to import on every ``import optkern``)."""


class RuleError(ValueError):
    """A rule uses a construct outside the rule language (docs/rules.md), or
    one its target does not translate.  The message names the rule, the line
    and the construct."""
