"""Stand-ins that let a template import (see ``templates/__init__.py``).

A template's ``from optkern.kernels.templates.standins import *`` line (marked
``# template-only``, so absent from the generated text) defines every
``HOLE_*`` placeholder of every template (as ``None``, or a value of the
right kind where the template's module level uses it) and the names that only
a filled hole defines, such as the rule a driver imports.
"""

import os
import re


def _rule_py(*args):
    """Stands for the rule a filled template imports."""
    raise NotImplementedError("a template's stand-in rule: fill the template")


_prepare_py = _loss_py = _rule = _prepare = _rule_lanes_py = _rule_py
# the epochs' (epoch.py): the loss rule's lane form, the update module's loops
_loss_lanes_py = _loop_serial = _loop_parallel = _rule_py

_here = os.path.dirname(os.path.abspath(__file__))
_names = set()
for _fname in sorted(os.listdir(_here)):
    if _fname.endswith(".py") and _fname not in ("__init__.py", "standins.py"):
        with open(os.path.join(_here, _fname), encoding="utf-8") as _fh:
            _names.update(re.findall(r"\bHOLE_[A-Z0-9_]+\b", _fh.read()))
for _name in _names:
    globals()[_name] = None
HOLE_SCALAR_DEFAULT = ()

__all__ = sorted(_names) + ["_rule_py", "_prepare_py", "_loss_py", "_rule", "_prepare", "_rule_lanes_py",
                           "_loss_lanes_py", "_loop_serial", "_loop_parallel"]
