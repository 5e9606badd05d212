# Fragment of epoch.py (HOLE_LANES): the loss rule's lane form (kernels/rule_lanes.py), compiled.  # template-only
from numba import njit  # template-only
from optkern.kernels.templates.standins import *  # noqa: F401,F403  # template-only
HOLE_LANE_SOURCE

_loss_lanes = njit(error_model="numpy")(_loss_lanes_py)
