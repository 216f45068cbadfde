"""Vision Transformer (Dosovitskiy et al. 2021) in the DeiT sizes (Touvron et al. 2021), with MoCo v3's options.

    ViT-Tiny:  192 wide, 12 blocks, 3 heads        ViT-Small: 384 wide, 12 blocks, 6 heads
    (MoCo v3 (Chen, Xie & He 2021) trains its ViT-S with 12 heads: ``num_heads=12``.)

Pre-norm blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` with MLP ratio 4, GELU and LayerNorm eps 1e-6;
attention is ``torch.nn.functional.scaled_dot_product_attention``. The position embedding is
MoCo v3's fixed 2-D sin-cos embedding (zero for the CLS token), computed for the patch grid of each
input, so any image whose sides are multiples of the patch size works. ``frozen_patch_embed=True``
keeps the random patch projection fixed (MoCo v3, Sec. 5.1), which stabilises training.
The representation is the CLS token after the final LayerNorm (``out_dim`` = embedding width).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STANDARD_WIDTH = 64  # backbone.width of the standard model (the ResNet convention); other values scale embed_dim


def sincos_2d(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sin-cos position embedding [grid_h * grid_w, dim] in row-major patch order.

    A quarter of the channels each: sin(w * omega), cos(w * omega), sin(h * omega), cos(h * omega)
    with omega_k = temperature^(-k / (dim / 4)).
    """
    if dim % 4 != 0:
        raise ValueError(f"the sin-cos position embedding needs an embedding width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = temperature ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    angle_w = cols.reshape(-1, 1) * omega
    angle_h = rows.reshape(-1, 1) * omega
    return torch.cat([angle_w.sin(), angle_w.cos(), angle_h.sin(), angle_h.cos()], dim=1).float()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Images [B, C, H, W] -> CLS representation [B, embed_dim]."""

    def __init__(
        self,
        in_channels: int = 3,
        input_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        frozen_patch_embed: bool = False,
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if input_size % patch_size != 0:
            raise ValueError(
                f"input_size ({input_size}) must be a multiple of patch_size ({patch_size}); set backbone.patch_size"
            )
        self.patch_size = patch_size
        self.out_dim = embed_dim
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        grid = input_size // patch_size
        self.register_buffer("pos_embed", sincos_2d(grid, grid, embed_dim), persistent=False)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()
        if frozen_patch_embed:
            self.patch_embed.requires_grad_(False)

    def _init_weights(self) -> None:
        """MoCo v3's initialisation: Xavier-uniform linears (q, k, v as separate matrices), tiny CLS token."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                fan_out = module.weight.shape[0] // 3 if name.endswith("qkv") else module.weight.shape[0]
                bound = math.sqrt(6.0 / (fan_out + module.weight.shape[1]))
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)
        weight = self.patch_embed.weight
        bound = math.sqrt(6.0 / (weight.shape[0] + weight[0].numel()))
        nn.init.uniform_(weight, -bound, bound)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=1e-6)

    def _position(self, grid_h: int, grid_w: int, like: Tensor) -> Tensor:
        if grid_h * grid_w == self.pos_embed.shape[0] and grid_h == grid_w:
            return self.pos_embed.to(like.dtype)
        return sincos_2d(grid_h, grid_w, self.out_dim).to(device=like.device, dtype=like.dtype)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """All output tokens after the final norm [B, 1 + patches, embed_dim]; index 0 is CLS."""
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the ViT patch size {self.patch_size}; "
                f"resize the views or set backbone.patch_size"
            )
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        patches = patches + self._position(height // self.patch_size, width // self.patch_size, patches)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1).to(patches.dtype), patches], dim=1)
        return self.norm(self.blocks(tokens))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_tokens(x)[:, 0]


def default_patch_size(input_size: int) -> int:
    """16 for ImageNet-size images, 4 for CIFAR-size ones (32 px), 2 below 16 px (digits)."""
    if input_size > 64:
        return 16
    return 4 if input_size >= 16 else 2


def _scaled_dim(base_dim: int, num_heads: int, width: int) -> int:
    """``base_dim * width / 64`` rounded to a multiple of lcm(4, num_heads) (heads and sin-cos need it)."""
    step = math.lcm(4, num_heads)
    return max(step, round(base_dim * width / STANDARD_WIDTH / step) * step)


def _vit(
    base_dim: int,
    base_heads: int,
    in_channels: int,
    input_size: int,
    patch_size: int | None,
    width: int,
    stem: str | None,
    **kw,
) -> VisionTransformer:
    del stem  # a ResNet option; accepted so that one config can switch between backbones
    num_heads = kw.pop("num_heads", base_heads)
    embed_dim = kw.pop("embed_dim", _scaled_dim(base_dim, num_heads, width))
    patch = patch_size or default_patch_size(input_size)
    return VisionTransformer(in_channels, input_size, patch, embed_dim, num_heads=num_heads, **kw)


def vit_tiny(
    in_channels: int = 3,
    input_size: int = 224,
    patch_size: int | None = None,
    width: int = STANDARD_WIDTH,
    stem: str | None = None,
    **kw,
) -> VisionTransformer:
    """ViT-Tiny (DeiT): 192 wide, 12 blocks, 3 heads. ``width`` (64 standard) scales the embedding width;
    ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``frozen_patch_embed`` override."""
    return _vit(192, 3, in_channels, input_size, patch_size, width, stem, **kw)


def vit_small(
    in_channels: int = 3,
    input_size: int = 224,
    patch_size: int | None = None,
    width: int = STANDARD_WIDTH,
    stem: str | None = None,
    **kw,
) -> VisionTransformer:
    """ViT-Small (DeiT): 384 wide, 12 blocks, 6 heads. ``width`` (64 standard) scales the embedding width;
    ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``frozen_patch_embed`` override."""
    return _vit(384, 6, in_channels, input_size, patch_size, width, stem, **kw)
