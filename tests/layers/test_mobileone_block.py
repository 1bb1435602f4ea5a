"""MobileOneBlock: the branch sum and its re-parameterisation into one conv (MobileOne, FastViT)."""

import pytest
import torch
from torch import nn

from birder_exp.layers.mobileone_block import MobileOneBlock


def _randomise_bn(block: nn.Module) -> None:
    """Non-trivial BN statistics, so that folding them is actually exercised."""

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "kernel", "stride", "groups", "branches", "use_se"),
    [
        (8, 8, 3, 1, 8, 4, False),  # Depthwise with identity and scale branches
        (8, 16, 1, 1, 1, 2, True),  # Pointwise, no scale branch (k = 1), SE
        (8, 8, 3, 2, 1, 1, False),  # Strided: no identity branch
    ],
)
def test_reparameterize_keeps_the_function(
    in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, branches: int, use_se: bool
) -> None:
    torch.manual_seed(0)
    block = MobileOneBlock(
        in_ch,
        out_ch,
        kernel_size=kernel,
        stride=stride,
        padding=kernel // 2,
        groups=groups,
        use_se=use_se,
        use_act=True,
        use_scale_branch=True,
        num_conv_branches=branches,
        reparameterized=False,
    ).eval()
    _randomise_bn(block)
    assert (block.rbr_skip is not None) is (in_ch == out_ch and stride == 1)
    assert (block.rbr_scale is not None) is (kernel > 1)
    assert len(block.rbr_conv) == branches

    x = torch.randn(2, in_ch, 9, 10)
    with torch.inference_mode():
        expected = block(x)
    block.reparameterize()
    assert block.reparameterized is True and block.reparam_conv is not None
    assert all(k.startswith(("reparam_conv.", "se.")) for k in block.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)

    # A block built reparameterised has exactly that layout
    built = MobileOneBlock(in_ch, out_ch, kernel, stride, kernel // 2, groups, use_se, True, True, branches, True)
    assert [(k, v.shape) for k, v in built.state_dict().items()] == [
        (k, v.shape) for k, v in block.state_dict().items()
    ]


def test_branch_sum_order_matches_the_definition() -> None:
    torch.manual_seed(0)
    block = MobileOneBlock(4, 4, 3, 1, 1, 4, False, False, True, 2, False).eval()
    _randomise_bn(block)
    x = torch.randn(1, 4, 5, 5)
    with torch.inference_mode():
        expected = block.rbr_scale(x) + block.rbr_skip(x) + block.rbr_conv[0](x) + block.rbr_conv[1](x)
        torch.testing.assert_close(block(x), expected)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable_before_and_after_reparameterize() -> None:
    torch.manual_seed(0)
    block = MobileOneBlock(32, 32, 3, 1, 1, 32, True, True, True, 2, False).eval()
    x = torch.randn(1, 32, 6, 6)
    with torch.inference_mode():
        torch.testing.assert_close(torch.jit.script(block)(x), block(x))
    block.reparameterize()
    with torch.inference_mode():
        torch.testing.assert_close(torch.jit.script(block)(x), block(x))
