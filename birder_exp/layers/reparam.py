"""Folding helpers for re-parameterisable blocks (RepVGG, RepGhost): every train-time branch becomes a conv kernel
and bias, and the branches' kernels and biases add up to the single inference conv."""

from typing import Any
from typing import cast

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, groups: int
) -> nn.Sequential:
    """A train-time branch: bias-free conv (``conv``) then BatchNorm (``bn``), the names Birder's checkpoints use."""

    branch = nn.Sequential()
    branch.add_module(
        "conv",
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=(kernel_size, kernel_size),
            stride=(stride, stride),
            padding=(padding, padding),
            groups=groups,
            bias=False,
        ),
    )
    branch.add_module("bn", nn.BatchNorm2d(num_features=out_channels))
    return branch


def fuse_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free conv kernel followed by ``bn`` (eval statistics) as one conv's (weight, bias), detached."""

    assert bn.running_mean is not None and bn.running_var is not None
    weight, bias = fuse_conv_bn_weights(kernel, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return (weight.detach(), bias.detach())


def folded_conv(template: Any, kernel: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """The inference conv of a folded block: ``template``'s channels, kernel size, stride, padding and groups, holding
    ``kernel`` and ``bias`` (on their device and dtype)."""

    conv = nn.Conv2d(
        template.in_channels,
        template.out_channels,
        kernel_size=template.kernel_size,
        stride=template.stride,
        padding=template.padding,
        groups=template.groups,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(kernel)
        assert conv.bias is not None
        conv.bias.copy_(bias)

    return conv


def identity_kernel(
    channels: int, groups: int, kernel_size: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The (grouped) ``kernel_size`` conv kernel that maps a tensor to itself: a 1 at each channel's centre tap."""

    input_dim = channels // groups
    kernel = torch.zeros((channels, input_dim, kernel_size, kernel_size), dtype=dtype, device=device)
    centre = kernel_size // 2
    for i in range(channels):
        kernel[i, i % input_dim, centre, centre] = 1

    return kernel


def reparameterize_all(net: nn.Module, block_type: type[nn.Module]) -> None:
    """Call ``reparameterize()`` on every ``block_type`` module of ``net``."""

    for module in net.modules():
        if isinstance(module, block_type):
            cast(Any, module).reparameterize()
