"""The compact references of benchmarks/learning.py run: one epoch at width 4 on digits."""

import math

import pytest
import torch

from benchmarks.reference import train_reference
from benchmarks.reference.common import encode, knn_scores
from selfsup.data.digits import load_digits
from selfsup.nn.convnet import convnet


@pytest.fixture(scope="session")
def digits():
    return load_digits("train"), load_digits("test")


@pytest.mark.parametrize("name", ["simclr", "byol", "moco", "swav"])
def test_reference_trains_one_epoch(name, digits):
    train, test = digits
    torch.manual_seed(0)
    trained = train_reference(name, convnet(4, 1, 8), train.data, train.labels, train.mean, train.std, epochs=1)
    assert len(trained.losses) == 1 and math.isfinite(trained.losses[0])
    features = [encode(trained.encoder, d.data, train.mean, train.std) for d in (train, test)]
    top1 = knn_scores(features[0], train.labels, features[1], test.labels, [20], 0.1)[20]
    assert 0 < top1 <= 1
