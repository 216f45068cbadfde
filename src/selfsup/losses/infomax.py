"""Information-maximisation losses: the embedding dimensions are decorrelated or whitened over the batch.

Two views of the same images are pulled together while a constraint on the batch statistics
(cross-correlation near the identity, variance above a floor, whitened covariance) makes the
constant embedding a bad or impossible solution.

With ``gather=True`` (Barlow Twins, VICReg) every batch statistic is a sum over all ranks, so every
rank computes the loss of one process holding the whole batch. Those sums go through
:class:`_SumOverRanks`, whose backward sums the gradients over ranks as :func:`selfsup.distributed.gather`
does; with DDP averaging the parameter gradients, training equals one process with the whole batch.

Half-precision inputs are computed in float32 with autocast off; float64 inputs stay float64.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed

__all__ = ["barlow_twins", "vicreg", "wmse", "whiten"]

_RIDGE_FLOOR = 1e-12  # keeps the Cholesky defined for an all-zero covariance


class _SumOverRanks(torch.autograd.Function):
    """Element-wise sum over ranks; every rank's loss is the same function of it, so backward sums too."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return distributed.all_reduce_sum(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return distributed.all_reduce_sum(grad.contiguous())


def _sum_over_ranks(x: Tensor, gather: bool) -> Tensor:
    return _SumOverRanks.apply(x) if gather and distributed.is_distributed() else x


def _exact(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _full_precision(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off: batch statistics and D x D matrices are computed in float32 or better."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _check_pair(name: str, z1: Tensor, z2: Tensor, gather: bool) -> int:
    """Validate two [N, D] views; return the number of samples over all ranks (equal batches per rank)."""
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"{name}: z1 and z2 must both be [batch, dim]; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    total = z1.shape[0] * (distributed.world_size() if gather else 1)
    if total < 2:
        raise ValueError(f"{name} needs batch statistics, so at least 2 samples; got {total}")
    return total


def _centred(z: Tensor, total: int, gather: bool) -> Tensor:
    return z - _sum_over_ranks(z.sum(0), gather) / total


def _off_diagonal_squares(matrix: Tensor) -> Tensor:
    return matrix.pow(2).sum() - torch.diagonal(matrix).pow(2).sum()


def barlow_twins(
    z1: Tensor, z2: Tensor, lambda_offdiag: float = 5e-3, gather: bool = False, eps: float = 1e-5, scale: float = 1.0
) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, Eq. 1-2): the cross-correlation of the two views -> identity.

        z_hat = (z - mean_b z) / sqrt(var_b z + eps)            per dimension, biased variance (BatchNorm, no affine)
        C_ij  = 1/N sum_b z1_hat[b, i] z2_hat[b, j]
        L     = sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2

    The first term makes each dimension invariant to the augmentation, the second decorrelates
    dimensions (redundancy reduction). ``gather=True``: means, variances and C over all ranks.
    ``scale`` multiplies L (solo-learn's ``scale_loss`` for CIFAR).
    """
    total = _check_pair("barlow_twins", z1, z2, gather)
    with _full_precision(z1):
        a, b = _exact(z1), _exact(z2)
        standardized = []
        for z in (a, b):
            centred = _centred(z, total, gather)
            variance = _sum_over_ranks(centred.pow(2).sum(0), gather) / total
            standardized.append(centred / torch.sqrt(variance + eps))
        c = _sum_over_ranks(standardized[0].T @ standardized[1], gather) / total
        on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
        return scale * (on_diagonal + lambda_offdiag * _off_diagonal_squares(c))


def vicreg(
    z1: Tensor,
    z2: Tensor,
    sim: float = 25.0,
    var: float = 25.0,
    cov: float = 1.0,
    gather: bool = False,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg (Bardes, Ponce & LeCun 2022, Sec. 3): invariance + variance + covariance.

        s(Z, Z') = 1/(N d) sum_b ||z_b - z'_b||^2                                  invariance (MSE)
        v(Z)     = 1/d sum_j max(0, 1 - sqrt(Var(z_j) + eps))                      variance hinge, unbiased Var
        c(Z)     = 1/d sum_{i != j} Cov(Z)_ij^2,  Cov(Z) = (Z - mean)^T (Z - mean) / (N - 1)
        L        = sim s + var (v(Z) + v(Z')) / 2 + cov (c(Z) + c(Z'))

    The variance term is averaged over the two views as in the authors' released code, with
    which the 25/25/1 coefficients were tuned. ``gather=True``: every term over all ranks.
    """
    total = _check_pair("vicreg", z1, z2, gather)
    with _full_precision(z1):
        a, b = _exact(z1), _exact(z2)
        dim = a.shape[1]
        invariance = _sum_over_ranks((a - b).pow(2).sum(), gather) / (total * dim)
        variance_term, covariance_term = a.new_zeros(()), a.new_zeros(())
        for z in (a, b):
            centred = _centred(z, total, gather)
            covariance = _sum_over_ranks(centred.T @ centred, gather) / (total - 1)
            std = torch.sqrt(torch.diagonal(covariance) + eps)
            variance_term = variance_term + F.relu(1 - std).mean() / 2
            covariance_term = covariance_term + _off_diagonal_squares(covariance) / dim
        return sim * invariance + var * variance_term + cov * covariance_term


def whiten(x: Tensor, shrinkage: float = 1e-5) -> Tensor:
    """W-MSE's whitening (Ermolov et al. 2021, Sec. 3.1) of a batch x [..., N, D] along N.

        Sigma = (x - mean)^T (x - mean) / (N - 1)
        Sigma_s = (1 - shrinkage) Sigma + (shrinkage tr(Sigma) / D + 1e-12) I      Ledoit-Wolf-style shrinkage
        W = L^-1 with L L^T = Sigma_s (Cholesky)
        whiten(x) = (x - mean) W^T          its covariance is (near) the identity

    Computed in float64 with the gradient through the Cholesky factor, as in the paper. The
    shrinkage keeps it finite when Sigma is singular (N <= D, constant or zero vectors); with
    ``shrinkage=0`` it is the paper's exact whitening (up to the 1e-12 ridge). Returns float32
    (float64 for float64 input).
    """
    if x.shape[-2] < 2:
        raise ValueError(f"whiten needs at least 2 samples to estimate a covariance; got {x.shape[-2]}")
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with _full_precision(x):
        x64 = x.double()
        centred = x64 - x64.mean(-2, keepdim=True)
        n, d = centred.shape[-2], centred.shape[-1]
        covariance = centred.mT @ centred / (n - 1)
        trace = torch.diagonal(covariance, dim1=-2, dim2=-1).sum(-1)
        ridge = shrinkage * trace / d + _RIDGE_FLOOR
        eye = torch.eye(d, dtype=torch.float64, device=x.device)
        shrunk = (1 - shrinkage) * covariance + ridge[..., None, None] * eye
        cholesky = torch.linalg.cholesky_ex(shrunk).L  # positive definite by the ridge; no host sync
        white = torch.linalg.solve_triangular(cholesky, centred.mT, upper=False).mT
    return white.to(out_dtype)


def wmse(
    z1: Tensor,
    z2: Tensor,
    w_size: int = 128,
    w_iter: int = 1,
    shrinkage: float = 1e-5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """W-MSE (Ermolov et al. 2021, Sec. 3 and Algorithm 1): MSE of L2-normalised whitened views.

    Each of ``w_iter`` iterations splits the batch by a random permutation into sub-batches of
    ``w_size``; each view's sub-batch is whitened separately (:func:`whiten`), and

        L = 1/w_iter sum_iter 1/N sum_b || v1_b / ||v1_b|| - v2_b / ||v2_b|| ||^2
          = 1/w_iter sum_iter (2 - 2 mean_b cos(v1_b, v2_b))

    Whitening scatters the batch (its covariance is the identity), so collapse is impossible.
    The batch must be a multiple of ``w_size``, and ``w_size`` should exceed the embedding size.
    """
    batch = z1.shape[0]
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"wmse: z1 and z2 must both be [batch, dim]; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if w_size < 2 or batch % w_size != 0:
        raise ValueError(
            f"wmse: the batch ({batch}) must be a multiple of loss.w_size ({w_size}) and w_size >= 2; "
            f"set --set loss.w_size=... to a divisor of the batch size"
        )
    total = z1.new_zeros((), dtype=torch.float64 if z1.dtype == torch.float64 else torch.float32)
    for _ in range(w_iter):
        order = torch.randperm(batch, generator=generator, device=generator.device if generator else z1.device)
        order = order.to(z1.device)
        v1 = whiten(z1[order].view(-1, w_size, z1.shape[1]), shrinkage)
        v2 = whiten(z2[order].view(-1, w_size, z2.shape[1]), shrinkage)
        total = total + (2 - 2 * F.cosine_similarity(v1, v2, dim=-1, eps=1e-12).mean())
    return total / w_iter
