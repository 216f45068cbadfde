"""Slow, literal loop-over-pairs implementations of the contrastive losses, as written in the papers.

Each works element by element (scalars, Python loops) so that it shares no vectorisation trick with
the library; autograd through them gives the reference gradients. Use float64 inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def dot(u: Tensor, v: Tensor) -> Tensor:
    return sum(u[i] * v[i] for i in range(len(u)))


def cosine(u: Tensor, v: Tensor) -> Tensor:
    return dot(u, v) / (dot(u, u).sqrt() * dot(v, v).sqrt())


def squared_distance(u: Tensor, v: Tensor) -> Tensor:
    return sum((u[i] - v[i]) ** 2 for i in range(len(u)))


def mean(values: list[Tensor]) -> Tensor:
    return sum(values) / len(values)


def info_nce(query, positive, negatives=None, temperature=0.07, normalize=True):
    score = (lambda u, v: cosine(u, v) / temperature) if normalize else (lambda u, v: dot(u, v) / temperature)
    losses = []
    for i in range(len(query)):
        if negatives is None:
            others = [positive[j] for j in range(len(positive)) if j != i]
        elif negatives.dim() == 2:
            others = list(negatives)
        else:
            others = list(negatives[i])
        numerator = torch.exp(score(query[i], positive[i]))
        denominator = numerator + sum(torch.exp(score(query[i], n)) for n in others)
        losses.append(-torch.log(numerator / denominator))
    return mean(losses)


def nt_xent(z1, z2, temperature=0.5):
    z = [v for pair in zip(z1, z2) for v in pair]  # z_{2k-1}, z_{2k} are the views of sample k

    def l(i, j):
        numerator = torch.exp(cosine(z[i], z[j]) / temperature)
        denominator = sum(torch.exp(cosine(z[i], z[k]) / temperature) for k in range(len(z)) if k != i)
        return -torch.log(numerator / denominator)

    return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(len(z1))) / len(z)


def supcon(features, labels=None, temperature=0.1):
    batch, views, _ = features.shape
    if labels is None:
        labels = torch.arange(batch)
    z = [features[b, v] / dot(features[b, v], features[b, v]).sqrt() for b in range(batch) for v in range(views)]
    y = [int(labels[b]) for b in range(batch) for _ in range(views)]
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if y[p] == y[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(dot(z[i], z[a]) / temperature) for a in others)
        terms = [torch.log(torch.exp(dot(z[i], z[p]) / temperature) / denominator) for p in positives]
        losses.append(-sum(terms) / len(positives))
    return mean(losses)


def nce(scores_data, scores_noise, noise_prob, k):
    losses = []
    for b in range(len(scores_data)):
        p = torch.exp(scores_data[b])
        h = p / (p + k * noise_prob)
        noise = []
        for s in scores_noise[b]:
            p_noise = torch.exp(s)
            noise.append(torch.log(1 - p_noise / (p_noise + k * noise_prob)))
        losses.append(-torch.log(h) - k * mean(noise))
    return mean(losses)


def cpc(context, future_latents, weights):
    batch, length, _ = context.shape
    per_step = []
    for k, w in enumerate(weights, start=1):
        targets = [(b, t) for b in range(batch) for t in range(k, length)]
        losses = []
        for b in range(batch):
            for t in range(length - k):
                prediction = w @ context[b, t]
                f = {bt: torch.exp(dot(future_latents[bt[0], bt[1]], prediction)) for bt in targets}
                losses.append(-torch.log(f[(b, t + k)] / sum(f.values())))
        per_step.append(mean(losses))
    return mean(per_step)


def deep_infomax(local, global_, estimator="jsd"):
    """local: [B, N, D] (locations listed), global_: [B, D]."""
    batch, locations, _ = local.shape
    softplus = lambda x: torch.log(1 + torch.exp(x))  # noqa: E731
    if estimator == "jsd":
        positive = [softplus(-dot(local[b, n], global_[b])) for b in range(batch) for n in range(locations)]
        negative = [
            softplus(dot(local[c, n], global_[b]))
            for b in range(batch)
            for c in range(batch)
            if c != b
            for n in range(locations)
        ]
        return mean(positive) + mean(negative)
    losses = []
    for b in range(batch):
        negatives = sum(
            torch.exp(dot(local[c, n], global_[b])) for c in range(batch) if c != b for n in range(locations)
        )
        for n in range(locations):
            positive = torch.exp(dot(local[b, n], global_[b]))
            losses.append(-torch.log(positive / (positive + negatives)))
    return mean(losses)


def contrastive_margin(x1, x2, same, margin=1.0):
    losses = []
    for i in range(len(x1)):
        d = squared_distance(x1[i], x2[i]).sqrt()
        if same[i]:
            losses.append(d**2 / 2)
        else:
            losses.append(max(torch.zeros((), dtype=x1.dtype), margin - d) ** 2 / 2)
    return mean(losses)


def triplet(anchor, positive, negative, margin=0.2):
    hinge = [
        torch.clamp(squared_distance(a, p) - squared_distance(a, n) + margin, min=0)
        for a, p, n in zip(anchor, positive, negative)
    ]
    return mean(hinge)


def batch_triplet(embeddings, labels, margin=0.2, mining="all"):
    x, y, size = embeddings, [int(v) for v in labels], len(labels)
    d = {(i, j): squared_distance(x[i], x[j]) for i in range(size) for j in range(size)}
    hinge = lambda a, p, n: torch.clamp(d[a, p] - d[a, n] + margin, min=0)  # noqa: E731
    losses = []
    for a in range(size):
        positives = [p for p in range(size) if p != a and y[p] == y[a]]
        negatives = [n for n in range(size) if y[n] != y[a]]
        if not positives or not negatives:
            continue
        if mining == "all":
            losses += [hinge(a, p, n) for p in positives for n in negatives]
        elif mining == "hard":
            p = max(positives, key=lambda j: d[a, j].item())
            n = min(negatives, key=lambda j: d[a, j].item())
            losses.append(hinge(a, p, n))
        else:
            for p in positives:
                semihard = [n for n in negatives if d[a, n].item() > d[a, p].item()]
                if semihard:
                    n = min(semihard, key=lambda j: d[a, j].item())
                else:
                    n = max(negatives, key=lambda j: d[a, j].item())
                losses.append(hinge(a, p, n))
    return mean(losses)


def alignment(x, y, alpha=2):
    return mean([squared_distance(u, v).sqrt() ** alpha for u, v in zip(x, y)])


def uniformity(x, t=2):
    terms = [torch.exp(-t * squared_distance(x[i], x[j])) for i in range(len(x)) for j in range(i + 1, len(x))]
    return torch.log(mean(terms))


def gaussian_mutual_information(rho: float, dims: int) -> float:
    """I(X; Y) of `dims` independent pairs of unit Gaussians with correlation rho."""
    return -dims / 2 * math.log(1 - rho**2)
