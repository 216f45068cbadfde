"""The CPC sequence encoder (van den Oord et al. 2018, Sec. 3.1): strided 1-D convolutions + a GRU.

    z_t = g_enc(x)_t      strided conv stack, one latent per ``prod(strides)`` input samples
    c_t = g_ar(z_<=t)     GRU over the latents, the context summarising the past

The audio encoder of the paper has five layers with strides (5, 4, 2, 2, 2), kernels
(10, 8, 4, 4, 4) and 512 channels (downsampling 160: one latent per 10 ms at 16 kHz) and a
256-unit GRU. For short UCR series use smaller strides (the ``sequence`` preset of ``cpc``).

The representation users keep (``forward``) pools the contexts over time: ``pool="mean"``
(default; the mean of c_t, as the time-series SSL literature pools per-step features into one
instance vector, e.g. TS2Vec's pooling over all timestamps) or ``pool="last"`` (c_T, the
context after the whole sequence, what CPC's downstream linear classifiers read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

AUDIO_STRIDES = (5, 4, 2, 2, 2)
AUDIO_KERNELS = (10, 8, 4, 4, 4)
AUDIO_WIDTH = 512
AUDIO_CONTEXT = 256


class ConvGRU(nn.Module):
    """Input ``[B, C, T]`` -> latents ``[B, T', width]`` -> contexts ``[B, T', context_dim]`` -> ``[B, out_dim]``."""

    def __init__(
        self,
        in_channels: int = 1,
        width: int = AUDIO_WIDTH,
        context_dim: int = AUDIO_CONTEXT,
        strides: Sequence[int] = AUDIO_STRIDES,
        kernels: Sequence[int] = AUDIO_KERNELS,
        norm: str = "none",
        pool: str = "mean",
    ):
        super().__init__()
        if len(strides) != len(kernels) or not strides:
            raise ValueError(
                f"backbone.strides {list(strides)} and backbone.kernels {list(kernels)} need the same non-zero length"
            )
        if any(k < s for k, s in zip(kernels, strides)):
            raise ValueError(f"each kernel must be at least its stride, got kernels {list(kernels)} strides {list(strides)}")
        if pool not in ("mean", "last"):
            raise ValueError(f"backbone.pool must be 'mean' or 'last', got '{pool}'")
        layers: list[nn.Module] = []
        channels = in_channels
        for kernel, stride in zip(kernels, strides):
            padding = (kernel - stride + 1) // 2  # length T -> T // stride
            layers += [nn.Conv1d(channels, width, kernel, stride, padding), _norm(norm, width), nn.ReLU()]
            channels = width
        self.conv = nn.Sequential(*layers)
        self.gru = nn.GRU(width, context_dim, batch_first=True)
        self.downsampling = math.prod(strides)
        self.latent_dim = width
        self.context_dim = context_dim
        self.out_dim = context_dim
        self.pool = pool

    def latents(self, x: Tensor) -> Tensor:
        """z_t for every step: ``[B, T // downsampling, width]``."""
        return self.conv(x).transpose(1, 2)

    def contexts(self, z: Tensor) -> Tensor:
        """c_t = GRU(z_1..z_t) for every step: ``[B, T', context_dim]``."""
        c, _ = self.gru(z)
        return c

    def pool_contexts(self, c: Tensor) -> Tensor:
        """The representation ``[B, context_dim]`` from the contexts: their mean over time or the last one."""
        return c.mean(dim=1) if self.pool == "mean" else c[:, -1]

    def forward(self, x: Tensor) -> Tensor:
        return self.pool_contexts(self.contexts(self.latents(x)))


class StepLayerNorm(nn.LayerNorm):
    """LayerNorm over channels at each time step (``[B, C, T]``): no statistics shared across time or samples."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "layer":
        return StepLayerNorm(channels)
    raise ValueError(f"backbone.norm must be 'none', 'batch' or 'layer', got '{kind}'")


def conv_gru(
    in_channels: int = 1,
    width: int = AUDIO_WIDTH,
    context_dim: int = AUDIO_CONTEXT,
    strides: Sequence[int] = AUDIO_STRIDES,
    kernels: Sequence[int] = AUDIO_KERNELS,
    norm: str = "none",
    pool: str = "mean",
    input_size: int | None = None,
) -> ConvGRU:
    """The CPC encoder; ``input_size`` (sequence length) is checked to leave at least two latent steps."""
    encoder = ConvGRU(in_channels, width, context_dim, strides, kernels, norm, pool)
    if input_size is not None and input_size // encoder.downsampling < 2:
        raise ValueError(
            f"sequences of length {input_size} give fewer than 2 CPC steps with total stride {encoder.downsampling}; "
            "use smaller backbone.strides (e.g. --set backbone.strides=[2,2,1])"
        )
    return encoder
