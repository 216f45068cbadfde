"""Linear probe: a softmax classifier on frozen, standardised features.

Full-batch L-BFGS on the multinomial logistic loss with a small L2 penalty, so the
result is deterministic and needs no learning-rate tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_probe_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    iterations: int = 100,
    weight_decay: float = 1e-4,
) -> float:
    """Top-1 accuracy on the test set of a linear classifier fit on the training features."""
    train_x = train_features.float()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x = (train_x - mean) / std
    test_x = (test_features.float() - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight = torch.zeros(train_x.shape[1], num_classes, device=train_x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=train_x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_labels) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (test_x @ weight + bias).argmax(1)
    return (predicted == test_labels.to(predicted.device)).float().mean().item()
