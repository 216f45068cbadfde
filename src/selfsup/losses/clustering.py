"""Clustering losses: predict a balanced assignment of samples to prototypes (SwAV, DeepCluster v2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed

__all__ = ["sinkhorn_knopp", "swav", "deepcluster_v2"]


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iters: int = 3, gather: bool = False) -> Tensor:
    """SwAV's codes: an approximately equipartitioned soft assignment of B samples to K prototypes.

    Caron et al. 2020, Sec. 3.1 and Algorithm 1: Q = exp(scores^T / epsilon) is scaled
    alternately so that the prototypes' marginal is uniform (each row of Q sums to 1/K)
    and the samples' marginal is uniform (each column sums to 1/B); the result is
    returned as codes [B, K], B * Q^T, so that every sample's code sums to 1 and,
    at convergence, every prototype receives B/K. The sample marginal is exact after
    any number of ``iters`` (it is normalised last); the prototype marginal becomes
    exact as ``iters`` grows.

    With ``gather=True`` the B samples are those of all ranks: the sums over samples
    are all-reduced, as in SwAV's distributed version. A global shift by the largest
    score (which the first normalisation cancels) and float64 keep exp() finite.
    No gradient flows through the codes.
    """
    reduce = distributed.all_reduce_sum if gather else (lambda x: x)
    largest = distributed.gather_no_grad(scores.max().reshape(1)).max() if gather else scores.max()
    q = torch.exp((scores.double() - largest.double()) / epsilon).T
    num_prototypes = q.shape[0]
    batch = reduce(q.new_full((), float(q.shape[1])))  # a fill on the device, not a copy from the host
    q /= reduce(q.sum())
    for _ in range(iters):
        q /= reduce(q.sum(dim=1, keepdim=True))
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    return (q * batch).T.to(torch.promote_types(scores.dtype, torch.float32))


def swav(
    scores1: Tensor,
    scores2: Tensor,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iters: int = 3,
    small_crop_scores: Sequence[Tensor] = (),
    queue_scores: tuple[Tensor, Tensor] | None = None,
    gather: bool = False,
) -> Tensor:
    """SwAV's swapped prediction with multi-crop (Caron et al. 2020, Eq. 2-3 and Sec. 3.2).

    ``scores1``, ``scores2``: [B, K] scores z^T c of the two global crops against the
    prototypes; ``small_crop_scores``: the same for any number of extra (small) crops.
    The codes q_i = sinkhorn_knopp(scores_i) of each global crop i are predicted by every
    other crop v with p_v = softmax(scores_v / temperature):

        L = 1/2 sum_{i in {1,2}} 1/(V-1) sum_{v != i} -1/B sum_b sum_k q_i[b,k] log p_v[b,k]

    ``queue_scores``: optional pair ([Q, K], [Q, K]) of scores of earlier batches' features
    for each global crop; they join the Sinkhorn problem (more samples to balance over)
    but only the batch's own codes are used. Codes carry no gradient.
    """
    crops = [scores1, scores2, *small_crop_scores]
    batch = scores1.shape[0]
    per_code = []
    for i in (0, 1):
        problem = crops[i].detach()
        if queue_scores is not None:
            problem = torch.cat([queue_scores[i].detach().to(problem.dtype), problem])
        codes = sinkhorn_knopp(problem, epsilon, sinkhorn_iters, gather)[-batch:]
        predictors = [scores for v, scores in enumerate(crops) if v != i]
        cross_entropies = [
            -(codes * F.log_softmax(_at_least_float32(scores) / temperature, dim=1)).sum(dim=1).mean()
            for scores in predictors
        ]
        per_code.append(torch.stack(cross_entropies).mean())
    return (per_code[0] + per_code[1]) / 2


def deepcluster_v2(scores: Sequence[Tensor], assignments: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    """DeepCluster v2's prototype cross-entropy (Caron et al. 2020, Sec. 4.2 and Appendix B.1).

    For each head h with prototypes C_h (the k-means centroids of the previous epoch's
    memory) and k-means assignments a_h:

        L = 1/H sum_h mean_{i: a_h(i) >= 0} -log softmax(scores_h[i] / temperature)[a_h(i)]

    ``scores``: one [N, K_h] tensor per head; ``assignments``: one [N] integer tensor per
    head, negative where a sample has no assignment yet (ignored; a batch without any
    assignment gives 0 with a zero gradient, never NaN).
    """
    if len(scores) != len(assignments):
        raise ValueError(
            f"deepcluster_v2 needs one assignment per head: got {len(scores)} scores, {len(assignments)} assignments"
        )
    losses = []
    for head_scores, head_assignments in zip(scores, assignments):
        known = head_assignments >= 0
        targets = torch.where(known, head_assignments, torch.full_like(head_assignments, -100))
        logits = _at_least_float32(head_scores) / temperature
        summed = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        losses.append(summed / known.sum().clamp_min(1))
    return torch.stack(losses).mean()
