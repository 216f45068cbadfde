"""Frozen-encoder features for evaluation: normalised inputs, eval mode, no augmentation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.data.base import ArrayDataset, iterate_batches


def normalize_batch(batch: Tensor, dataset: ArrayDataset) -> Tensor:
    """uint8 images -> float in [0, 1] minus mean over std; float sequences -> (x - mean) / std, per channel."""
    shape = (1, -1) + (1,) * (batch.ndim - 2)
    mean = torch.tensor(dataset.mean, device=batch.device).view(shape)
    std = torch.tensor(dataset.std, device=batch.device).view(shape)
    x = batch.float()
    if batch.dtype == torch.uint8:
        x = x / 255.0
    return (x - mean) / std


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: ArrayDataset,
    device: torch.device,
    batch_size: int = 512,
    bf16: bool = False,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The encoder's representation of every sample of ``dataset``, [N, D] float32 on ``device``."""
    was_training = encoder.training
    encoder.eval()
    outputs = []
    for batch in iterate_batches(dataset.data, torch.arange(len(dataset)).split(batch_size), device):
        x = normalize_batch(batch, dataset).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs.append(encoder(x).to(dtype))
    encoder.train(was_training)
    return torch.cat(outputs)
