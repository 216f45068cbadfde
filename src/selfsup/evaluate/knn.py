"""Weighted k-nearest-neighbour classification (Wu et al. 2018, InstDisc, Sec. 3.4).

Each test feature votes with its k most cosine-similar training features; neighbour i
adds exp(s_i / t) to the score of its class, and the class with the largest score wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Predicted class of every test feature, [M] int64."""
    if len(train_features) == 0:
        raise ValueError("kNN needs at least one training feature")
    num_classes = int(num_classes or int(train_labels.max()) + 1)
    k = min(k, len(train_features))
    train = F.normalize(train_features.float(), dim=1)
    predictions = []
    for start in range(0, len(test_features), chunk_size):
        query = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        similarity, neighbours = (query @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(len(query), num_classes, device=query.device)
        votes.scatter_add_(1, train_labels[neighbours], weights)
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def knn_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy of the weighted kNN classifier, in [0, 1]."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    predicted = knn_predict(train_features, train_labels, test_features, k, temperature, num_classes)
    return (predicted == test_labels.to(predicted.device)).float().mean().item()
