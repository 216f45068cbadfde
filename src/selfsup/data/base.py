"""The dataset every source is turned into, and the one way batches are read from it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    paths: each sample's file, relative to ``source`` (image folders); None for data without files.
    source: the folder or archive the files are in, printable ('' for named datasets).
    split_rule: how selfsup chose this split of a source that has no split of its own ('' when it has one).
    unlabelled: why a source has no labels, after its name: "has no class folders" ('' when labelled).
    """

    data: Tensor | Any
    labels: Tensor
    classes: list[str]
    name: str
    kind: str = "image"
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)
    paths: list[str] | None = None
    source: str = ""
    split_rule: str = ""
    unlabelled: str = ""

    def __post_init__(self) -> None:
        if len(self.data) == 0:
            raise ValueError(f"dataset '{self.name}' is empty: check the path or split")
        if len(self.data) != len(self.labels):
            raise ValueError(f"dataset '{self.name}': {len(self.data)} samples but {len(self.labels)} labels")
        if self.paths is not None and len(self.paths) != len(self.labels):
            raise ValueError(f"dataset '{self.name}': {len(self.labels)} samples but {len(self.paths)} file paths")

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

    def sample_names(self, split: str) -> list[str]:
        """What names each sample: its file's relative path, or ``split/index`` for data without files."""
        return list(self.paths) if self.paths is not None else [f"{split}/{i}" for i in range(len(self))]



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
    return replace(dataset, data=dataset.data[:, :1].contiguous(), mean=dataset.mean[:1], std=dataset.std[:1])


def concatenate(splits: dict[str, ArrayDataset]) -> ArrayDataset:
    """The in-memory ``splits`` one after the other (the 'all' of data stored as train and test): samples named by
    their files or ``split/index``, labels by class name over the union of the classes, the first's statistics."""
    parts = list(splits.values())
    if not all(isinstance(part.data, Tensor) for part in parts):
        raise ValueError(f"'{parts[0].name}' is streamed from files and cannot be joined in memory: embed its splits "
                         "one at a time (--split train, --split test)")
    classes = list(dict.fromkeys(c for part in parts for c in part.classes))
    labels = []
    for part in parts:
        mapping = torch.tensor([classes.index(c) for c in part.classes] + [-1], dtype=torch.long)
        labels.append(mapping[part.labels.cpu().long().where(part.labels.cpu() >= 0, len(part.classes))])
    first = parts[0]
    return replace(
        first, data=torch.cat([part.data.cpu() for part in parts]), labels=torch.cat(labels), classes=classes,
        paths=[name for split, part in splits.items() for name in part.sample_names(split)], split_rule="",
        unlabelled="" if classes else first.unlabelled,
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
