"""Compact reference implementations of every image method, written from the papers' pseudo-code.

``REFERENCES`` maps a library method name to ``module:Class``; each module also defines ``RECIPE``.
``train_reference(name, backbone, images, labels, mean, std, epochs)`` pre-trains one of them.
"""

from __future__ import annotations

import importlib
from typing import Sequence

from torch import Tensor, nn

from .common import Trained, train

REFERENCES = {
    "simclr": "simclr:SimCLR",
    "supcon": "supcon:SupCon",
    "moco": "moco:MoCoV2",
    "mocov1": "moco:MoCoV1",
    "mocov3": "mocov3:MoCoV3",
    "instdisc": "instdisc:InstDisc",
    "adco": "adco:AdCo",
    "cpc": "cpc:CPC",
    "dim": "dim:DeepInfoMax",
    "swav": "swav:SwAV",
    "deepclusterv2": "deepclusterv2:DeepClusterV2",
    "byol": "byol:BYOL",
    "simsiam": "simsiam:SimSiam",
    "barlow_twins": "barlow_twins:BarlowTwins",
    "wmse": "wmse:WMSE",
    "vicreg": "vicreg:VICReg",
}


def load(name: str):
    """(class, recipe) of the reference for ``name``; a module may give a class its own ``RECIPE``."""
    module_name, class_name = REFERENCES[name].split(":")
    module = importlib.import_module(f".{module_name}", __package__)
    cls = getattr(module, class_name)
    return cls, getattr(cls, "recipe", None) or module.RECIPE


def train_reference(
    name: str, backbone: nn.Module, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float],
    epochs: int, seed: int = 0,
) -> Trained:
    cls, recipe = load(name)
    return train(cls, recipe, backbone, images, labels, mean, std, epochs, seed)
