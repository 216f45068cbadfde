"""Datasets (uint8 tensors or files) and batched views on the device.

``load_dataset(spec, root, split)`` turns a data SPEC (DESIGN.md) into an ``ArrayDataset``.
"""

from __future__ import annotations

from selfsup.data.base import ArrayDataset

__all__ = ["ArrayDataset", "load_dataset"]


def load_dataset(spec: str, root: str | None = None, split: str = "train") -> ArrayDataset:
    """Load a split ('train', 'test', and for STL-10 'unlabeled' / 'train+unlabeled') of a data SPEC."""
    if spec == "digits":
        from selfsup.data.digits import load_digits

        return load_digits(split)
    raise ValueError(f"unknown dataset '{spec}'; use digits, cifar10, cifar100, stl10 or folder:PATH")
