"""Backbone registry: names in ``config.yaml`` -> modules with an ``out_dim``; ``timm:NAME`` and
``torchvision:NAME`` for a library's models.

Any ``nn.Module`` mapping inputs to [B, D] may be used instead (``train.Trainer(encoder=...)``);
its output size is then found by one forward pass. Such a run's ``config.yaml`` records ``backbone: {name: custom,
class: MODULE.CLASS}`` (``run/custom_encoder.py``), which names the class but cannot rebuild it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import nn

from selfsup.nn.external import build_external, is_external

# name -> "module:function"; each function takes (in_channels=..., **backbone config) and returns a module with out_dim.
BACKBONES: dict[str, str] = {
    "resnet18": "selfsup.nn.resnet:resnet18",
    "resnet50": "selfsup.nn.resnet:resnet50",
    "convnet": "selfsup.nn.convnet:convnet",
    "vit_tiny": "selfsup.nn.vit:vit_tiny",
    "vit_small": "selfsup.nn.vit:vit_small",
    "conv_gru": "selfsup.nn.sequence:conv_gru",
}
CUSTOM = "custom"  # backbone.name of a run trained with a user's own module (fit(..., encoder=...))


def build_backbone(cfg: dict[str, Any], in_channels: int, input_size: int) -> nn.Module:
    """Build the backbone named ``cfg['name']``; the remaining keys are its keyword arguments.

    ``timm:NAME`` and ``torchvision:NAME`` are a library's model without its classifier (``nn/external.py``).
    """
    name = cfg.get("name")
    if name == CUSTOM:
        raise ValueError(f"backbone 'custom' is a user's own module ({cfg.get('class', 'class not recorded')}), which "
                         "selfsup cannot build from config.yaml: pass it from Python, fit(..., encoder=MODULE)")
    if "class" in cfg:
        raise ValueError(f"backbone.class names the class of a custom encoder (backbone.name: custom), not an option "
                         f"of {name}: remove it")
    if is_external(name):
        return build_external(name, cfg, in_channels, input_size)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}, timm:NAME or "
                         "torchvision:NAME")
    if cfg.get("pretrained"):
        raise ValueError(f"backbone.pretrained: selfsup's own {name} has no pretrained weights; use a library's "
                         "model (timm:NAME or torchvision:NAME) for those")
    module_name, fn_name = BACKBONES[name].split(":")
    fn = getattr(importlib.import_module(module_name), fn_name)
    kwargs = {k: v for k, v in cfg.items() if k not in ("name", "pretrained") and v is not None}
    if "input_size" in inspect.signature(fn).parameters:
        kwargs["input_size"] = input_size
    return fn(in_channels=in_channels, **kwargs)


@torch.no_grad()
def output_dim(encoder: nn.Module, example: torch.Tensor) -> int:
    """The representation size of any encoder: its ``out_dim`` or one forward pass on ``example``."""
    if hasattr(encoder, "out_dim"):
        return int(encoder.out_dim)
    was_training = encoder.training
    encoder.eval()
    out = encoder(example[:2])
    encoder.train(was_training)
    if out.ndim != 2:
        raise ValueError(f"the encoder must return [batch, features]; it returned shape {tuple(out.shape)}")
    return out.shape[1]
