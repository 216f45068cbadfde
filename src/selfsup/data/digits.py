"""scikit-learn's handwritten digits (1,797 8x8 grayscale images, 10 classes), embedded with the library."""

from __future__ import annotations

import numpy as np
import torch

from selfsup.data.base import ArrayDataset

TEST_FRACTION = 0.3
SPLIT_SEED = 0


def load_digits(split: str = "train") -> ArrayDataset:
    """A fixed stratified split: 70% train (also the pretraining split), 30% test (held out)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("pretrain", "train", "test"):
        raise ValueError(f"digits has splits 'pretrain', 'train' and 'test', not '{split}'")
    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=TEST_FRACTION, stratify=bunch.target, random_state=SPLIT_SEED
    )
    idx = idx_test if split == "test" else idx_train
    return ArrayDataset(
        data=torch.from_numpy(images[idx]),
        labels=torch.from_numpy(bunch.target[idx].astype(np.int64)),
        classes=[str(c) for c in range(10)],
        name="digits",
        mean=(float(images[idx_train].mean() / 255.0),),
        std=(float(images[idx_train].std() / 255.0),),
    )
