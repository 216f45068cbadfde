"""The dataset every source is turned into, and the one way batches are read from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor


@dataclass
class ArrayDataset:
    """A whole split as tensors, ready to be moved to the training device once.

    data: uint8 [N, C, H, W] for images, float32 [N, C, T] for sequences; for a streamed folder an
    ``ImageFiles`` (``selfsup.data.stream``) with the same ``shape`` that decodes batches on demand.
    labels: int64 [N], -1 where unknown (unlabeled splits).
    mean, std: per-channel normalisation in [0, 1] pixel units (images) or raw units (sequences).
    """

    data: Tensor | Any
    labels: Tensor
    classes: list[str]
    name: str
    kind: str = "image"
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if len(self.data) == 0:
            raise ValueError(f"dataset '{self.name}' is empty: check the path or split")
        if len(self.data) != len(self.labels):
            raise ValueError(f"dataset '{self.name}': {len(self.data)} samples but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.data)

    @property
    def channels(self) -> int:
        return int(self.data.shape[1])

    @property
    def input_size(self) -> int:
        """Image side (square images) or sequence length."""
        return int(self.data.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def preprocessing(self) -> dict[str, Any]:
        """What an encoder trained on this data takes: the input's kind and shape, and its normalisation."""
        if self.kind == "image":
            shape = [None, self.channels, self.input_size, self.input_size]
            spec = {"image_size": self.input_size, "normalise": "(pixels / 255 - mean) / std, per channel"}
        else:
            shape = [None, self.channels, self.input_size]
            spec = {"length": self.input_size, "normalise": "(x - mean) / std, per channel"}
        return {"kind": self.kind, "input_shape": shape, "channels": self.channels, **spec,
                "mean": list(self.mean), "std": list(self.std)}

    def to(self, device: torch.device | str) -> "ArrayDataset":
        self.data = self.data.to(device)
        self.labels = self.labels.to(device)
        return self



@dataclass
class Datasets:
    """The three splits of a run's data, all normalised with the statistics of the split the encoder trains on.

    A split's own mean and std would make the held-out numbers transductive (the test split would tell its
    own normalisation); every split takes ``pretrain``'s, as CIFAR's and digits' published statistics do.
    """

    pretrain: ArrayDataset  # what the self-supervised objective trains on
    train: ArrayDataset  # labelled training split for kNN / linear evaluation
    test: ArrayDataset  # held-out split

    def __post_init__(self) -> None:
        for split in (self.train, self.test):
            split.mean, split.std = self.pretrain.mean, self.pretrain.std


def is_colourless(dataset: ArrayDataset) -> bool:
    """True for in-memory RGB images whose three channels are equal everywhere (grayscale files decoded as RGB)."""
    data = dataset.data
    if dataset.kind != "image" or not isinstance(data, Tensor) or data.shape[1] != 3:
        return False
    return all(
        bool((chunk[:, 0] == chunk[:, 1]).all() and (chunk[:, 0] == chunk[:, 2]).all())
        for chunk in data.split(4096)
    )


def single_channel(dataset: ArrayDataset) -> ArrayDataset:
    """The dataset with only its first channel (of a colourless one: the gray image)."""
    return ArrayDataset(
        dataset.data[:, :1].contiguous(), dataset.labels, dataset.classes, dataset.name, dataset.kind,
        dataset.mean[:1], dataset.std[:1],
    )


def iterate_batches(data: Tensor | Any, batches: Sequence[Tensor], device: torch.device) -> Iterator[Tensor]:
    """``data[indices]`` on ``device`` for each index tensor of ``batches``, in order.

    In-memory data is indexed where it lives (on the device once moved there); streamed files are
    decoded by DataLoader workers, a few batches ahead of the consumer.
    """
    if not isinstance(data, Tensor):
        yield from data.stream(batches, device)
        return
    for indices in batches:
        yield data[indices.to(data.device)].to(device, non_blocking=True)
