"""Optimizers: LARS (You et al. 2017) with SimCLR/BYOL's exclusions, SGD and AdamW (fused kernels on CUDA).

Learning rates in the config are per 256 images (Goyal et al. 2017's linear scaling)
when ``optim.scale_lr`` is true: lr = lr_config * batch_size / 256.
"""

from __future__ import annotations

from typing import Any

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio.

    For each parameter w with gradient g (weight decay wd folded into g):
        g <- g + wd * w
        ratio = eta * ||w|| / ||g||   (1 where either norm is 0, or for excluded groups)
        v <- momentum * v + lr * ratio * g;  w <- w - v
    Groups with ``lars_exclude=True`` (biases, norm parameters, the probe) get neither
    weight decay nor adaptation, as in SimCLR and BYOL.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02):
        if lr < 0:
            raise ValueError(f"learning rate must be non-negative, got {lr}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                if group["weight_decay"]:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                w_norms = torch.stack(torch._foreach_norm(params))
                g_norms = torch.stack(torch._foreach_norm(grads))
                trusted = (w_norms > 0) & (g_norms > 0)
                ratios = torch.where(trusted, group["eta"] * w_norms / g_norms.clamp_min(1e-30), 1.0)
                grads = torch._foreach_mul(grads, list(ratios.unbind()))
            buffers = []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss


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
        return LARS(param_groups, lr=cfg["lr"], momentum=cfg["momentum"], eta=cfg.get("lars_eta", 0.02))
    fused = all(p.is_cuda for g in param_groups for p in g["params"])
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg["lr"], momentum=cfg["momentum"], fused=fused or None)
    if name == "adamw":
        betas = tuple(cfg.get("betas", (0.9, 0.999)))
        return torch.optim.AdamW(param_groups, lr=cfg["lr"], betas=betas, fused=fused or None)
    raise ValueError(f"unknown optimizer '{name}'; use optim.name=lars, sgd or adamw")
