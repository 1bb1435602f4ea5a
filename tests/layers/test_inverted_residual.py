"""The shared inverted residual block: which layers it holds, where the residual goes, drop path."""

from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from birder_exp.layers.inverted_residual import InvertedResidual
from birder_exp.layers.inverted_residual import same_padding


def make(in_channels: int, expanded: int, out_channels: int, **kwargs: Any) -> InvertedResidual:
    torch.manual_seed(0)
    options: dict[str, Any] = {
        "kernel_size": (3, 3),
        "stride": (1, 1),
        "padding": (1, 1),
        "activation_layer": nn.ReLU6,
        "shortcut": True,
    }
    options.update(kwargs)
    return InvertedResidual(in_channels, out_channels, expanded_channels=expanded, **options)


def test_expansion_is_left_out_at_width_one() -> None:
    plain = make(8, 8, 8)
    assert [m[0].kernel_size for m in plain.block] == [(3, 3), (1, 1)]
    assert plain.block[0][0].groups == 8 and len(plain.block[1]) == 2  # Linear projection: conv + norm only

    expanded = make(8, 32, 8, se=SqueezeExcitation(32, 8))
    assert [type(m).__name__ for m in expanded.block] == [
        "Conv2dNormActivation",
        "Conv2dNormActivation",
        "SqueezeExcitation",
        "Conv2dNormActivation",
    ]
    assert list(expanded.state_dict())[:2] == ["block.0.0.weight", "block.0.1.weight"]


def test_residual_only_when_asked() -> None:
    x = torch.randn(2, 8, 6, 6)
    with_residual = make(8, 16, 8).eval()
    without = make(8, 16, 8, shortcut=False).eval()
    with torch.inference_mode():
        torch.testing.assert_close(with_residual(x), x + with_residual.block(x))
        torch.testing.assert_close(without(x), without.block(x))


def test_strided_block_and_norm_layer() -> None:
    block = make(8, 16, 12, stride=(2, 2), shortcut=False, norm_layer=partial(nn.BatchNorm2d, momentum=0.01))
    assert block(torch.randn(2, 8, 6, 6)).shape == (2, 12, 3, 3)
    assert all(m.momentum == 0.01 for m in block.modules() if isinstance(m, nn.BatchNorm2d))
    assert same_padding((5, 5)) == (2, 2) and same_padding((3, 1)) == (1, 0)


def test_stochastic_depth_drops_the_branch_in_training() -> None:
    block = make(8, 16, 8, stochastic_depth_prob=1.0).train()
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(block(x), x)
    block.eval()
    with torch.inference_mode():
        torch.testing.assert_close(block(x), x + block.block(x))
