"""Folding helpers: a fused conv + BN equals the pair, the identity kernel is the identity (grouped too)."""

import torch
import torch.nn.functional as F
from torch import nn

from birder_exp.layers.reparam import conv_bn
from birder_exp.layers.reparam import fuse_bn
from birder_exp.layers.reparam import identity_kernel
from birder_exp.layers.reparam import reparameterize_all


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).eval()
    torch.manual_seed(0)
    bn.running_mean.normal_()  # type: ignore[union-attr]
    bn.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    return bn


def test_fuse_bn_matches_conv_then_bn() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    bn = _bn(6)
    x = torch.randn(2, 4, 5, 5)
    weight, bias = fuse_bn(conv.weight, bn)
    assert not weight.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_identity_kernel_is_identity() -> None:
    x = torch.randn(2, 8, 5, 5)
    for groups in (1, 2, 8):
        kernel = identity_kernel(8, groups, 3, x.dtype, x.device)
        assert kernel.shape == (8, 8 // groups, 3, 3)
        torch.testing.assert_close(F.conv2d(x, kernel, padding=1, groups=groups), x)


def test_reparameterize_all_calls_every_block() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.done = False

        def reparameterize(self) -> None:
            self.done = True

    net = nn.Sequential(Block(), nn.Sequential(Block(), nn.ReLU()))
    reparameterize_all(net, Block)
    assert all(m.done for m in net.modules() if isinstance(m, Block))


def test_conv_bn_branch_names() -> None:
    branch = conv_bn(4, 8, 3, 2, 1, 2)
    assert list(branch.state_dict())[:2] == ["conv.weight", "bn.weight"]
    assert branch.conv.bias is None and branch.conv.groups == 2 and branch.conv.stride == (2, 2)
    assert branch(torch.randn(1, 4, 6, 6)).shape == (1, 8, 3, 3)
