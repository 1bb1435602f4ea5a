"""ClassAttention: the class token's update over the whole sequence (CaiT, XCiT)."""

import pytest
import torch

from birder_exp.layers.class_attention import ClassAttention


def test_class_attention_reads_but_keeps_patch_tokens() -> None:
    torch.manual_seed(0)
    layer = ClassAttention(16, num_heads=2, qkv_bias=True, proj_drop=0.0)
    x = torch.randn(2, 5, 16)
    out = layer(x)
    assert out.shape == (2, 1, 16)
    y = x.clone()
    y[:, 3] += 1.0  # A patch token changes the class token's update
    assert not torch.allclose(layer(y), out)
    with pytest.raises(ValueError, match="divisible"):
        ClassAttention(10, num_heads=3, qkv_bias=True, proj_drop=0.0)


def test_class_attention_matches_softmax_attention_of_the_first_query() -> None:
    torch.manual_seed(1)
    layer = ClassAttention(8, num_heads=2, qkv_bias=False, proj_drop=0.0)
    x = torch.randn(3, 6, 8)
    q = layer.q(x[:, :1]).reshape(3, 1, 2, 4).transpose(1, 2)
    k = layer.k(x).reshape(3, 6, 2, 4).transpose(1, 2)
    v = layer.v(x).reshape(3, 6, 2, 4).transpose(1, 2)
    weights = (q @ k.transpose(-2, -1) / 2.0).softmax(dim=-1)  # head_dim 4: scale 1/2
    expected = layer.proj((weights @ v).transpose(1, 2).reshape(3, 1, 8))
    torch.testing.assert_close(layer(x), expected)
