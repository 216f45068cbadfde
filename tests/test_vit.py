"""ViT-Tiny/Small: sizes, patch sizes, sin-cos positions, attention, frozen patch projection, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.nn.backbones import build_backbone
from selfsup.nn.vit import Attention, sincos_2d, vit_small, vit_tiny


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_deit_sizes_at_224_px():
    """DeiT-Ti 5.72M and DeiT-S 22.05M parameters, less the 1000-class head and the learned positions."""
    tiny, small = vit_tiny(), vit_small()
    assert (tiny.out_dim, len(tiny.blocks), tiny.blocks[0].attn.num_heads, tiny.patch_size) == (192, 12, 3, 16)
    assert (small.out_dim, len(small.blocks), small.blocks[0].attn.num_heads, small.patch_size) == (384, 12, 6, 16)
    assert parameters(tiny) == pytest.approx(5_717_416 - (192 * 1000 + 1000) - 197 * 192, rel=1e-6)
    assert parameters(small) == pytest.approx(22_050_664 - (384 * 1000 + 1000) - 197 * 384, rel=1e-6)


@pytest.mark.parametrize(
    "input_size, patch_size, expected_patch",
    [(32, None, 4), (224, None, 16), (8, None, 2), (32, 8, 8)],
)
def test_output_and_token_shapes(input_size, patch_size, expected_patch):
    model = vit_tiny(in_channels=1, input_size=input_size, patch_size=patch_size, depth=2)
    x = torch.randn(2, 1, input_size, input_size)
    assert model.patch_size == expected_patch
    assert model(x).shape == (2, 192)
    assert model.forward_tokens(x).shape == (2, 1 + (input_size // expected_patch) ** 2, 192)


def test_other_image_sizes_get_their_own_positions():
    model = vit_small(input_size=32, depth=1, embed_dim=48, num_heads=3)
    assert model(torch.randn(2, 3, 48, 32)).shape == (2, 48)
    with pytest.raises(ValueError, match="not a multiple of the ViT patch size"):
        model(torch.randn(2, 3, 30, 32))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        vit_tiny(input_size=30, patch_size=4)


def test_sincos_position_embedding_formula():
    """Row p = (row r, column c): [sin(c w_k), cos(c w_k), sin(r w_k), cos(r w_k)], w_k = 10000^(-k / (D/4))."""
    grid_h, grid_w, dim = 3, 5, 16
    table = sincos_2d(grid_h, grid_w, dim)
    quarter = dim // 4
    for r in range(grid_h):
        for c in range(grid_w):
            omega = [10000 ** (-k / quarter) for k in range(quarter)]
            expected = (
                [math.sin(c * w) for w in omega]
                + [math.cos(c * w) for w in omega]
                + [math.sin(r * w) for w in omega]
                + [math.cos(r * w) for w in omega]
            )
            torch.testing.assert_close(table[r * grid_w + c], torch.tensor(expected, dtype=torch.float32))
    assert torch.cdist(table, table).add(torch.eye(15)).min() > 0.1  # every patch position is distinct
    model = vit_tiny(input_size=16, patch_size=4, depth=1)
    assert not any("pos" in name for name, _ in model.named_parameters())  # fixed, not learned


def test_attention_equals_explicit_softmax_attention():
    torch.manual_seed(0)
    attention = Attention(dim=12, num_heads=3)
    x = torch.randn(2, 5, 12)
    q, k, v = attention.qkv(x).split(12, dim=-1)
    heads = [slice(h * 4, (h + 1) * 4) for h in range(3)]
    outputs = []
    for s in heads:
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), dim=-1)
        outputs.append(weights @ v[..., s])
    torch.testing.assert_close(attention(x), attention.proj(torch.cat(outputs, dim=-1)), rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter_and_the_frozen_patch_projection_stays_fixed():
    torch.manual_seed(0)
    model = vit_tiny(input_size=16, patch_size=4, depth=2)
    model(torch.randn(4, 3, 16, 16)).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []

    frozen = vit_tiny(input_size=16, patch_size=4, depth=2, frozen_patch_embed=True)
    before = frozen.patch_embed.weight.clone()
    optimizer = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=0.1)
    frozen(torch.randn(4, 3, 16, 16)).pow(2).sum().backward()
    optimizer.step()
    assert frozen.patch_embed.weight.grad is None and not frozen.patch_embed.weight.requires_grad
    assert torch.equal(frozen.patch_embed.weight, before)
    assert frozen.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_width_scales_the_embedding_and_resnet_options_are_accepted_from_configs():
    model = build_backbone({"name": "vit_tiny", "width": 64, "stem": "cifar", "depth": 1}, in_channels=3, input_size=32)
    assert (model.out_dim, model.patch_size) == (192, 4)
    assert vit_tiny(width=16, depth=1).out_dim == 48
    assert vit_small(width=16, depth=1).out_dim == 96
    assert vit_small(num_heads=12, depth=1).out_dim == 384  # MoCo v3's ViT-S
