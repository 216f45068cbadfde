"""Loss functions, one file per family; pure functions of tensors with the formula and paper in each docstring."""

from selfsup.losses.clustering import *  # noqa: F401,F403
from selfsup.losses.contrastive import *  # noqa: F401,F403
from selfsup.losses.distillation import *  # noqa: F401,F403
from selfsup.losses.infomax import *  # noqa: F401,F403
