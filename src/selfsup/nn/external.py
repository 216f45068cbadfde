"""Backbones from the libraries users already have: ``timm:NAME`` and ``torchvision:NAME``, imported lazily.

Neither library is imported before such a name is asked for (torchvision cannot be imported at all on a
machine whose torchvision build needs CUDA libraries it lacks, and timm imports torchvision).

- ``timm:NAME``: ``timm.create_model(NAME, pretrained=..., num_classes=0, in_chans=C)``; timm's
  ``num_classes=0`` replaces the classifier by the pooled features, ``num_features`` is their size.
- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights="DEFAULT" if pretrained else None)``
  with its last ``nn.Linear`` (the classifier: ``fc``, ``heads.head``, ``classifier[-1]``) replaced by the
  identity; the features are what that classifier read, ``in_features`` wide. One-channel images are fed as
  three equal channels (torchvision's models take RGB).

``backbone.pretrained: true`` loads the library's weights (downloaded by the library on first use).
``backbone.stem``, a ResNet setting of selfsup's that presets name, is ignored (as the ViTs do); a
``backbone.width`` other than the standard 64 is refused: a library's model has its own.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import torch
from torch import Tensor, nn

LIBRARIES = ("timm", "torchvision")
STANDARD_WIDTH = 64


class ExternalBackbone(nn.Module):
    """A library's model without its classifier: input [B, C, H, W] -> pooled features [B, out_dim]."""

    def __init__(self, model: nn.Module, out_dim: int, repeat_channels: int = 1):
        super().__init__()
        self.model = model
        self.out_dim = out_dim
        self.repeat_channels = repeat_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.repeat_channels > 1:
            x = x.expand(-1, self.repeat_channels, -1, -1)
        return self.model(x).flatten(1)


def is_external(name: Any) -> bool:
    return isinstance(name, str) and ":" in name


def build_external(name: str, cfg: dict[str, Any], in_channels: int, input_size: int) -> ExternalBackbone:
    """The backbone ``LIBRARY:MODEL`` for images of ``in_channels`` x ``input_size``; one line (``ValueError``)
    if the library is missing, the model unknown, a setting is selfsup's own, or the model rejects such images."""
    library, _, model_name = name.partition(":")
    if library not in LIBRARIES or not model_name:
        raise ValueError(f"unknown backbone '{name}'; a library's model is timm:NAME or torchvision:NAME")
    width = cfg.get("width")
    if width is not None and width != STANDARD_WIDTH:
        raise ValueError(f"backbone.width is a setting of selfsup's own backbones; {name} has its own width: "
                         "choose a wider or narrower model by name instead")
    pretrained = bool(cfg.get("pretrained", False))
    if library == "timm":
        backbone = _timm(_import("timm", name), model_name, pretrained, in_channels)
    else:
        backbone = _torchvision(_import("torchvision.models", name), name, model_name, pretrained, in_channels)
    _check_input(backbone, name, in_channels, input_size)
    return backbone


def _import(module: str, name: str):
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ValueError(f"backbone {name} needs the {package} package: pip install {package}") from None
    except Exception as error:  # installed but broken, e.g. a torchvision built for CUDA libraries not here
        raise ValueError(
            f"backbone {name}: {package} is installed but cannot be imported ({error.__class__.__name__}: "
            f"{' '.join(str(error).split())[:160]}): reinstall it to match torch {torch.__version__}"
        ) from None


def _unknown(name: str, model_name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(model_name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown backbone '{name}': the library has no model '{model_name}'{hint}")


def _timm(timm, model_name: str, pretrained: bool, in_channels: int) -> ExternalBackbone:
    if not timm.is_model(model_name):  # also NAME.TAG, a model with named pretrained weights
        raise _unknown(f"timm:{model_name}", model_name, timm.list_models())
    model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, in_chans=in_channels)
    return ExternalBackbone(model, int(model.num_features))


def _torchvision(models, name: str, model_name: str, pretrained: bool, in_channels: int) -> ExternalBackbone:
    if model_name not in models.list_models():
        raise _unknown(name, model_name, models.list_models())
    if in_channels not in (1, 3):
        raise ValueError(f"backbone {name} takes RGB images; the data has {in_channels} channels")
    model = models.get_model(model_name, weights="DEFAULT" if pretrained else None)
    classifier = _last_linear(model)
    if classifier is None:
        raise ValueError(f"backbone {name} has no linear classifier to replace by its pooled features: choose "
                         "another model")
    parent_name, _, attribute = classifier.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    out_dim = int(getattr(parent, attribute).in_features)
    setattr(parent, attribute, nn.Identity())
    return ExternalBackbone(model, out_dim, repeat_channels=3 if in_channels == 1 else 1)


def _last_linear(model: nn.Module) -> str | None:
    """The dotted name of the last ``nn.Linear`` registered in ``model`` (torchvision's classifier), or None."""
    return next((n for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)


@torch.no_grad()
def _check_input(backbone: ExternalBackbone, name: str, in_channels: int, input_size: int) -> None:
    """One forward pass of two blank images: a model that cannot take this size says so now, in one line."""
    was_training = backbone.training
    backbone.eval()
    try:
        out = backbone(torch.zeros(2, in_channels, input_size, input_size))
    except Exception as error:
        raise ValueError(
            f"backbone {name} cannot take {in_channels}x{input_size}x{input_size} images "
            f"({' '.join(str(error).split())[:160]}): choose a model for this size or set data.image_size"
        ) from None
    finally:
        backbone.train(was_training)
    if out.shape != (2, backbone.out_dim):
        raise ValueError(f"backbone {name} returns features of shape {tuple(out.shape[1:])}, not "
                         f"({backbone.out_dim},): it is not a classifier whose head can be removed")
