"""Optimizers: LARS (You et al. 2017) in BYOL's and solo-learn's forms, SGD, Adam and AdamW (fused kernels on CUDA).

Learning rates in the config are per 256 images (Goyal et al. 2017's linear scaling)
when ``optim.scale_lr`` is true: lr = lr_config * batch_size / 256.
"""

from __future__ import annotations

from typing import Any

import torch

SOLO_LEARN_EPS = 1e-8  # solo/utils/lars.py: eps of the trust ratio's denominator


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio, as BYOL or (``clip=True``) as solo-learn.

    BYOL's LARS (deepmind-research byol/utils/optimizers.py; MoCo v3's moco/optimizer.py and
    Barlow Twins' are the same), for each parameter w with gradient g:
        g <- g + wd * w
        r = eta * ||w|| / ||g||          (1 where either norm is 0)
        v <- momentum * v + r * g;   w <- w - lr * v
    solo-learn's (solo/utils/lars.py with ``clip_lr: True``, the clip mode of NVIDIA's LARC), set by
    ``optim.lars_clip: true`` in the presets taken from solo-learn:
        r = eta * ||w|| / (||g|| + wd * ||w|| + 1e-8)     (g without weight decay)
        r <- min(r / lr, 1)                                so the layer's step size is min(eta ||w|| / (...), lr)
        v <- momentum * v + r * (g + wd * w);   w <- w - lr * v
        (where ||w|| or ||g|| is 0: v <- momentum * v + g, without weight decay)
    SimCLR's LARS (google-research/simclr lars_optimizer.py) is BYOL's with the lr inside the
    momentum (v <- momentum * v + lr * r * g; w <- w - v): the same steps while the lr is constant,
    and within a factor lr_t / lr_{t-k} on the k-step-old momentum when the schedule moves it.
    Groups with ``lars_exclude=True`` (biases, norm parameters, the probe) get neither weight decay
    nor adaptation, as BYOL's and SimCLR's filters and solo-learn's ``exclude_bias_n_norm`` do.
    """

    def __init__(
        self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
        clip: bool = False,
    ):
        if lr < 0:
            raise ValueError(f"learning rate must be non-negative, got {lr}")
        defaults = {
            "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "clip": clip,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # optimizer states saved before the clipped variant existed
            group.setdefault("clip", False)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                adapt = self._clipped if group["clip"] else self._unclipped
                grads = adapt(params, grads, group)
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss

    @staticmethod
    def _unclipped(params: list, grads: list, group: dict[str, Any]) -> list:
        """BYOL's r * (g + wd w) with r = eta ||w|| / ||g + wd w||."""
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        w_norms = torch.stack(torch._foreach_norm(params))
        g_norms = torch.stack(torch._foreach_norm(grads))
        trusted = (w_norms > 0) & (g_norms > 0)
        ratios = torch.where(trusted, group["eta"] * w_norms / g_norms.clamp_min(1e-30), 1.0)
        return torch._foreach_mul(grads, list(ratios.unbind()))

    @staticmethod
    def _clipped(params: list, grads: list, group: dict[str, Any]) -> list:
        """solo-learn's min(r / lr, 1) * (g + wd w) with r = eta ||w|| / (||g|| + wd ||w|| + eps)."""
        wd = group["weight_decay"]
        w_norms = torch.stack(torch._foreach_norm(params))
        g_norms = torch.stack(torch._foreach_norm(grads))
        ratios = group["eta"] * w_norms / (g_norms + wd * w_norms + SOLO_LEARN_EPS)
        ratios = (ratios / group["lr"]).clamp(max=1.0) if group["lr"] > 0 else torch.ones_like(ratios)
        trusted = (w_norms > 0) & (g_norms > 0)
        scales = torch.where(trusted, ratios, 1.0)
        decays = torch.where(trusted, wd * ratios, 0.0)
        scaled = torch._foreach_mul(grads, list(scales.unbind()))
        torch._foreach_add_(scaled, torch._foreach_mul(params, list(decays.unbind())))
        return scaled


def build_optimizer(groups: list[dict[str, Any]], cfg: dict[str, Any], batch_size: int) -> torch.optim.Optimizer:
    """The optimizer named ``cfg['name']``; each group's ``base_lr`` is set for the scheduler."""
    name = cfg["name"]
    scale = batch_size / 256 if cfg.get("scale_lr", True) else 1.0
    param_groups = []
    for group in groups:
        g = dict(group)
        base = g.pop("lr", cfg["probe_lr"] if g.get("name") == "probe" else cfg["lr"])
        g["base_lr"] = base * scale if not g.get("fixed_lr") and g.get("name") != "probe" else base
        g["lr"] = g["base_lr"]
        g.setdefault("weight_decay", cfg["weight_decay"])
        if name != "lars":
            g.pop("lars_exclude", None)
        param_groups.append(g)
    if name == "lars":
        clip = cfg.get("lars_clip", False)
        if not isinstance(clip, bool):
            raise ValueError(f"optim.lars_clip must be true or false, got {clip!r}")
        return LARS(param_groups, lr=cfg["lr"], momentum=cfg["momentum"], eta=cfg.get("lars_eta", 0.02), clip=clip)
    fused = all(p.is_cuda for g in param_groups for p in g["params"])
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg["lr"], momentum=cfg["momentum"], fused=fused or None)
    betas = tuple(cfg.get("betas", (0.9, 0.999)))
    if name == "adam":  # weight decay as an L2 term in the gradient (torch.optim.Adam), not decoupled
        return torch.optim.Adam(param_groups, lr=cfg["lr"], betas=betas, fused=fused or None)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg["lr"], betas=betas, fused=fused or None)
    raise ValueError(f"unknown optimizer '{name}'; use optim.name=lars, sgd, adam or adamw")


def apply_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> float:
    """Set every scheduled group's lr to base_lr * multiplier; returns the first group's lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] if group.get("fixed_lr") else group["base_lr"] * multiplier
    return optimizer.param_groups[0]["lr"]
