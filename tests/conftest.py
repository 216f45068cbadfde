"""Test-wide settings: one intra-op thread (the models here are tiny; thread hand-off costs more than it gains)."""

import torch

torch.set_num_threads(1)
