"""Contrastive losses: a positive pair is pulled together while negatives are pushed apart.

Every loss is a pure function of tensors. Losses that take their negatives from the batch accept
``gather=True``: the candidates (negatives) are gathered from all ranks with gradient
(:func:`selfsup.distributed.gather`) while each rank keeps its own anchors, and each rank's loss is
normalised so that the mean of the per-rank losses is the loss of one process holding the whole
batch. Since ``gather``'s backward sums the candidates' gradients over ranks and DDP averages the
parameter gradients over ranks, the gradients then also equal those of one process. Losses that
are not a mean over anchors (``uniformity``, ``batch_triplet``) compute the whole-batch loss on
every rank instead, which gives the same result by the same argument.

Half-precision inputs are computed in float32; float64 inputs stay float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed

__all__ = [
    "info_nce",
    "nt_xent",
    "supcon",
    "nce",
    "cpc",
    "deep_infomax",
    "adco",
    "contrastive_margin",
    "triplet",
    "batch_triplet",
    "alignment",
    "uniformity",
]


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _unit(x: Tensor) -> Tensor:
    """L2-normalised rows; a zero vector stays zero (cosine 0 with everything) instead of NaN."""
    return F.normalize(_upcast(x), dim=-1)


def _candidates(x: Tensor, gather: bool) -> tuple[Tensor, int]:
    """The rows every local anchor is compared with, and where this rank's rows start among them."""
    if not gather:
        return x, 0
    return distributed.gather(x), distributed.rank() * x.shape[0]


def _global_count(count: Tensor, gather: bool) -> Tensor:
    """Number of anchors over all ranks divided by the world size (so that mean over ranks is global)."""
    count = count.to(torch.float64)
    if gather:
        count = distributed.all_reduce_sum(count) / distributed.world_size()
    return count


def _safe_sqrt(squared: Tensor) -> Tensor:
    """sqrt with gradient 0 (not NaN) where the argument is 0."""
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)


def _squared_distances(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances [B, B], exactly zero on the diagonal."""
    x = _upcast(x)
    norms = x.pow(2).sum(1)
    squared = (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)
    return squared.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)


def info_nce(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor | None = None,
    temperature: float = 0.07,
    gather: bool = False,
    normalize: bool = True,
) -> Tensor:
    """InfoNCE (van den Oord et al. 2018) in the MoCo form (He et al. 2020).

        L = -1/B sum_i log exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_n exp(q_i.n / t))

    ``query``, ``positive``: [B, D]. ``negatives``: [K, D] shared by all queries (MoCo's queue),
    [B, K, D] per query, or ``None``: the other queries' positives are the negatives (B-1 each;
    with ``gather=True`` those of all ranks; ``gather`` only matters then). ``normalize=True`` uses cosine similarity;
    ``normalize=False`` uses the raw dot product (CPC's bilinear critic). ``log(N) - L`` with N
    candidates per query is a lower bound on the mutual information between query and positive.
    """
    if query.shape != positive.shape:
        raise ValueError(f"info_nce: query {tuple(query.shape)} and positive {tuple(positive.shape)} must match")
    prepare = _unit if normalize else _upcast
    q, k = prepare(query), prepare(positive)
    if negatives is None:
        keys, offset = _candidates(k, gather)
        logits = q @ keys.T / temperature
        target = torch.arange(len(q), device=q.device) + offset
        return F.cross_entropy(logits, target)
    n = prepare(negatives)
    positive_logit = (q * k).sum(-1, keepdim=True)
    negative_logits = q @ n.T if n.dim() == 2 else torch.einsum("bd,bkd->bk", q, n)
    logits = torch.cat([positive_logit, negative_logits], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: bool = False) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1): 2N anchors, each with its other view as the
    positive and the 2N-2 other embeddings as negatives, cosine similarity sim.

        l(i, j) = -log exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)
        L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]
    """
    if z1.shape != z2.shape:
        raise ValueError(f"nt_xent: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must match")
    z1, z2 = _unit(z1), _unit(z2)
    n = len(z1)
    view1, offset = _candidates(z1, gather)
    view2, _ = _candidates(z2, gather)
    total = len(view1)
    logits = torch.cat([z1, z2]) @ torch.cat([view1, view2]).T / temperature
    local = torch.arange(n, device=z1.device) + offset
    own = torch.cat([local, local + total])
    partner = torch.cat([local + total, local])
    logits = logits.scatter(1, own[:, None], float("-inf"))
    return F.cross_entropy(logits, partner)


def supcon(
    features: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    gather: bool = False,
) -> Tensor:
    """Supervised contrastive loss L^sup_out (Khosla et al. 2020, eq. 2), scaled as in the authors' code.

        L = (t / t_base) mean_{i : |P(i)| > 0}  -1/|P(i)| sum_{p in P(i)} log exp(z_i.z_p / t) / Z_i,
        Z_i = sum_{a in A(i)} exp(z_i.z_a / t)

    ``features``: [B, V, D] (V views per sample, L2-normalised here); ``labels``: [B] or ``None``.
    A(i) is every other view in the batch, P(i) those with the anchor's label. Anchors without a
    positive are excluded (a zero loss, never NaN, when none has one). The factor t / t_base is the
    authors' (HobbitLong/SupContrast losses.py: ``temperature / base_temperature``, base 0.07), not
    the paper's; ``base_temperature=temperature`` gives eq. 2 alone. ``labels=None`` makes each
    sample its own class: then, with V = 2 and t_base = t, this is SimCLR's NT-Xent.
    """
    if features.dim() != 3:
        raise ValueError(f"supcon: features must be [batch, views, dim], got {tuple(features.shape)}")
    batch, views, dim = features.shape
    z = _unit(features)
    candidates, offset = _candidates(z, gather)
    if labels is None:
        labels = torch.arange(batch, device=z.device) + offset
        candidate_labels = torch.arange(len(candidates), device=z.device)
    else:
        candidate_labels = distributed.gather_no_grad(labels) if gather else labels
    anchors = z.reshape(batch * views, dim)
    logits = anchors @ candidates.reshape(-1, dim).T / temperature
    anchor_index = torch.arange(batch * views, device=z.device) + offset * views
    is_self = anchor_index[:, None] == torch.arange(logits.shape[1], device=z.device)[None, :]
    log_prob = logits.masked_fill(is_self, float("-inf")).log_softmax(dim=1)
    is_positive = (labels.repeat_interleave(views)[:, None] == candidate_labels.repeat_interleave(views)[None]) & ~is_self
    positives = is_positive.sum(1)
    per_anchor = -log_prob.masked_fill(~is_positive, 0.0).sum(1) / positives.clamp_min(1)
    anchors_with_positive = _global_count((positives > 0).sum(), gather)
    anchors_with_positive = torch.where(anchors_with_positive > 0, anchors_with_positive, 1.0)
    return (temperature / base_temperature) * per_anchor.sum() / anchors_with_positive.to(per_anchor.dtype)


def nce(scores_data: Tensor, scores_noise: Tensor, noise_prob: float, k: int) -> Tensor:
    """Binary noise-contrastive estimation as in InstDisc (Wu et al. 2018, eq. 5-6).

        h(i, v) = P(i|v) / (P(i|v) + k P_n(i)),   P_n = ``noise_prob`` (1/n for uniform noise)
        L = -E_data[log h(i, v)] - k E_noise[log(1 - h(i, v'))]

    ``scores_data``: [B] log P(i|v) of each sample's own memory entry, i.e. v.f_i / t - log Z;
    ``scores_noise``: [B, m] log P(i|v) of m noise entries (InstDisc draws m = k). Working in logs,
    h = sigmoid(log P - log(k P_n)); the noise expectation is the mean over the m samples.
    """
    shift = math.log(k) + math.log(noise_prob)
    data_term = F.softplus(shift - _upcast(scores_data))
    noise_term = F.softplus(_upcast(scores_noise) - shift).mean(-1)
    return (data_term + k * noise_term).mean()


def _predict(predictor: Callable[[Tensor], Tensor] | Tensor, context: Tensor) -> Tensor:
    if isinstance(predictor, Tensor):
        return context @ _upcast(predictor).T
    return _upcast(predictor(context))


def cpc(
    context: Tensor,
    future_latents: Tensor,
    predictors: Sequence[Callable[[Tensor], Tensor] | Tensor],
    gather: bool = False,
) -> Tensor:
    """Contrastive Predictive Coding (van den Oord et al. 2018, eq. 3-4): k-step InfoNCE over time.

        f_k(z, c_t) = exp(z^T W_k c_t)
        L = 1/K sum_{k=1..K} mean_{b,t} -log f_k(z_{b,t+k}, c_{b,t}) / sum_{(b',t')} f_k(z_{b',t'}, c_{b,t})

    ``context``: [B, T, C]; ``future_latents``: [B, T, D]; ``predictors``: K maps C -> D (modules,
    callables, or weight matrices [D, C] like ``nn.Linear.weight``), the k-th predicting k steps
    ahead. The negatives of a prediction are the latents of every sample and time step that is a
    target of the same step k (with ``gather=True``, on every rank).
    """
    steps, length = len(predictors), context.shape[1]
    if not 1 <= steps < length:
        raise ValueError(f"cpc: need 1 <= number of predictors < sequence length, got {steps} and {length}")
    losses = []
    for k, predictor in enumerate(predictors, start=1):
        prediction = _predict(predictor, _upcast(context[:, :-k]))
        target = _upcast(future_latents[:, k:])
        losses.append(
            info_nce(
                prediction.reshape(-1, prediction.shape[-1]),
                target.reshape(-1, target.shape[-1]),
                temperature=1.0,
                gather=gather,
                normalize=False,
            )
        )
    return torch.stack(losses).mean()


def deep_infomax(local: Tensor, global_: Tensor, estimator: str = "jsd", gather: bool = False) -> Tensor:
    """Local Deep InfoMax (Hjelm et al. 2019): the global feature of an image scores its own local
    features (positives) above those of the other images (negatives), score T = local . global.

        jsd:     L = E_pos[softplus(-T)] + E_neg[softplus(T)]                      (-I_JSD, eq. 4)
        infonce: L = E_pos[-T + log(exp(T) + sum_{other images' locals} exp(T'))]  (-I_NCE, eq. 5)

    ``local``: [B, D, H, W] or [B, N, D]; ``global_``: [B, D], both already projected to D.
    Expectations are over every (image, location) positive and every (image, other image,
    location) negative.
    """
    if estimator not in ("jsd", "infonce"):
        raise ValueError(f"deep_infomax: estimator must be 'jsd' or 'infonce', got {estimator!r}")
    if local.dim() == 4:
        local = local.flatten(2).transpose(1, 2)
    local, global_ = _upcast(local), _upcast(global_)
    batch = len(global_)
    all_local, offset = _candidates(local, gather)
    if len(all_local) < 2:
        raise ValueError("deep_infomax: needs at least 2 images in the batch for negatives")
    scores = torch.einsum("bd,cnd->bcn", global_, all_local)
    image = torch.arange(len(all_local), device=local.device)
    own = (image[None, :] == image[offset : offset + batch, None])[:, :, None]
    rows = torch.arange(batch, device=local.device)
    positive = scores[rows, rows + offset]  # [B, N]: indexed, not masked (a mask's count is read on the host)
    if estimator == "jsd":
        negatives = F.softplus(scores).masked_fill(own, 0.0).sum() / (batch * (len(all_local) - 1) * scores.shape[2])
        return F.softplus(-positive).mean() + negatives
    negative_lse = scores.masked_fill(own, float("-inf")).flatten(1).logsumexp(1, keepdim=True)
    return (torch.logaddexp(positive, negative_lse) - positive).mean()


def adco(
    query: Tensor, key: Tensor, negatives: Tensor, t_pos: float = 0.12, t_neg: float = 0.02,
    batch_keys: bool = False, gather: bool = False,
) -> Tensor:
    """AdCo (Hu et al. 2021, eq. 2-4): negatives are trainable adversaries of the encoder.

        L(theta, N; t) = -1/B sum_i log exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_n exp(q_i.n / t))
        encoder:   theta <- theta - lr grad_theta L(theta, N; t_pos)     (descent)
        negatives: N     <- N     + lr grad_N     L(theta, N; t_neg)     (ascent)

    ``query``, ``key``: [B, D]; ``negatives``: [K, D] (the adversaries, an ``nn.Parameter``).
    ``batch_keys``: the other keys of the (with ``gather``, global) batch are negatives too, as in
    the authors' code (maple-research-lab/AdCo training/train.py: logits [q k^T, q N^T], target the
    own key). Everything is L2-normalised here. Returns a scalar whose value is L(t_pos) and whose
    backward gives the encoder grad L(t_pos) and the negatives -grad_N L(t_neg): the caller descends
    it with ordinary optimisers for both (e.g. SGD on the negatives with AdCo's larger learning rate)
    and thereby ascends on the negatives. No manual gradient negation is needed.
    """
    q, k, n = _unit(query), _unit(key), _unit(negatives)
    if batch_keys:
        keys, offset = _candidates(k.detach(), gather)
        target = torch.arange(len(q), device=q.device) + offset

        def loss(queries: Tensor, adversaries: Tensor, temperature: float) -> Tensor:
            logits = torch.cat([queries @ keys.T, queries @ adversaries.T], dim=1) / temperature
            return F.cross_entropy(logits, target)
    else:
        def loss(queries: Tensor, adversaries: Tensor, temperature: float) -> Tensor:
            return info_nce(queries, k, adversaries, temperature=temperature, normalize=False)

    encoder_loss = loss(q, n.detach(), t_pos)
    adversary_loss = loss(q.detach(), n, t_neg)
    return encoder_loss - (adversary_loss - adversary_loss.detach())


def contrastive_margin(x1: Tensor, x2: Tensor, same: Tensor, margin: float = 1.0) -> Tensor:
    """Contrastive loss of Hadsell, Chopra & LeCun 2006 (eq. 4), D the Euclidean distance.

        L = mean_pairs [ same * D^2 / 2 + (1 - same) * max(0, margin - D)^2 / 2 ]

    ``x1``, ``x2``: [B, D]; ``same``: [B], 1 for similar pairs, 0 for dissimilar ones.
    """
    squared = (_upcast(x1) - _upcast(x2)).pow(2).sum(-1)
    same = same.to(squared.dtype)
    pushed = F.relu(margin - _safe_sqrt(squared)).pow(2)
    return (same * squared / 2 + (1 - same) * pushed / 2).mean()


def triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.2) -> Tensor:
    """Triplet loss (Schroff et al. 2015, FaceNet eq. 1-3), squared Euclidean distances.

        L = mean_i max(0, ||a_i - p_i||^2 - ||a_i - n_i||^2 + margin)

    FaceNet's embeddings are L2-normalised by the network; this function uses them as given.
    """
    a = _upcast(anchor)
    closer = (a - _upcast(positive)).pow(2).sum(-1)
    farther = (a - _upcast(negative)).pow(2).sum(-1)
    return F.relu(closer - farther + margin).mean()


def batch_triplet(
    embeddings: Tensor, labels: Tensor, margin: float = 0.2, mining: str = "all", gather: bool = False
) -> Tensor:
    """Triplet loss over the triplets of a labelled batch (squared Euclidean distances d).

    mining="all":      mean over every valid triplet (a, p, n) of max(0, d_ap - d_an + margin).
    mining="hard":     per anchor, its farthest positive and nearest negative (Hermans et al. 2017).
    mining="semihard": FaceNet (Schroff et al. 2015, sec. 3.2): every anchor-positive pair with the
                       nearest negative farther than the positive (d_an > d_ap); where none is, the
                       farthest negative. Mean over anchor-positive pairs.

    Anchors without a positive or a negative are excluded; a zero loss (not NaN) when nothing
    is valid. ``gather=True`` mines over the batch of all ranks.
    """
    if mining not in ("all", "hard", "semihard"):
        raise ValueError(f"batch_triplet: mining must be 'all', 'hard' or 'semihard', got {mining!r}")
    if gather:
        embeddings, labels = distributed.gather(embeddings), distributed.gather_no_grad(labels)
    d = _squared_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    is_positive = same & ~torch.eye(len(d), dtype=torch.bool, device=d.device)
    is_negative = ~same
    zero = d.sum() * 0
    if mining == "hard":
        valid = is_positive.any(1) & is_negative.any(1)
        hardest_positive = d.masked_fill(~is_positive, float("-inf")).amax(1)
        hardest_negative = d.masked_fill(~is_negative, float("inf")).amin(1)
        losses = F.relu(hardest_positive - hardest_negative + margin)[valid]
        return losses.mean() if len(losses) else zero
    d_ap, d_an = d[:, :, None], d[:, None, :]
    if mining == "all":
        valid = is_positive[:, :, None] & is_negative[:, None, :]
        losses = (d_ap - d_an + margin).relu()[valid]
        return losses.mean() if len(losses) else zero
    negative = is_negative[:, None, :].expand(-1, len(d), -1)
    semihard = negative & (d_an > d_ap)
    nearest_semihard = d_an.expand_as(semihard).masked_fill(~semihard, float("inf")).amin(2)
    farthest = d.masked_fill(~is_negative, float("-inf")).amax(1, keepdim=True).expand_as(nearest_semihard)
    chosen = torch.where(semihard.any(2), nearest_semihard, farthest)
    valid = is_positive & is_negative.any(1, keepdim=True)
    losses = F.relu(d - chosen + margin)[valid]
    return losses.mean() if len(losses) else zero


def alignment(x: Tensor, y: Tensor, alpha: float = 2) -> Tensor:
    """Alignment (Wang & Isola 2020, eq. 4): L_align = E_pairs ||x - y||_2^alpha.

    The paper applies it to L2-normalised features; this function uses them as given.
    """
    squared = (_upcast(x) - _upcast(y)).pow(2).sum(-1)
    if alpha == 2:
        return squared.mean()
    return _safe_sqrt(squared).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2, gather: bool = False) -> Tensor:
    """Uniformity (Wang & Isola 2020, eq. 5): L_unif = log E_{i<j} exp(-t ||x_i - x_j||_2^2).

    ``x``: [B, D], in the paper L2-normalised. Computed as a logsumexp, stable for large t.
    """
    if gather:
        x = distributed.gather(x)
    if len(x) < 2:
        raise ValueError("uniformity: needs at least 2 samples")
    pairs = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
    squared = _squared_distances(x)[pairs[0], pairs[1]]
    return (-t * squared).logsumexp(0) - math.log(len(squared))
