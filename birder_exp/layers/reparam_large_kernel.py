"""A large-kernel conv with a parallel small-kernel branch, each followed by BN, foldable into one conv
(RepLKNet, https://arxiv.org/abs/2203.06717); FastViT's patch embeddings use it.
"""

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import SqueezeExcitation

from birder_exp.layers.reparam import folded_conv


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> nn.Sequential:
    branch = nn.Sequential()
    branch.add_module(
        "conv",
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
    )
    branch.add_module("bn", nn.BatchNorm2d(out_channels))
    return branch


class ReparamLargeKernelConv(nn.Module):
    """kxk conv + BN (plus an optional small-kernel conv + BN), then SE and activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int,
        small_kernel: Optional[int],
        use_se: bool,
        reparameterized: bool,
        activation_layer: Optional[Callable[..., nn.Module]] = nn.GELU,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ReparamLargeKernelConv: kernel_size must be odd, got {kernel_size}")
        if small_kernel is not None and (small_kernel % 2 != 1 or small_kernel > kernel_size):
            raise ValueError(
                f"ReparamLargeKernelConv: small_kernel must be odd and at most kernel_size ({kernel_size}), "
                f"got {small_kernel}"
            )

        self.reparameterized = reparameterized
        self.stride = stride
        self.groups = groups
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        self.padding = kernel_size // 2

        self.lkb_reparam: Optional[nn.Conv2d] = None
        self.small_conv: Optional[nn.Sequential] = None
        if reparameterized is True:
            self.lkb_reparam = nn.Conv2d(
                in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=self.padding, groups=groups
            )
        else:
            self.lkb_origin = _conv_bn(in_channels, out_channels, kernel_size, stride, groups)
            if small_kernel is not None:
                self.small_conv = _conv_bn(in_channels, out_channels, small_kernel, stride, groups)

        self.se: nn.Module = SqueezeExcitation(out_channels, out_channels // 4) if use_se is True else nn.Identity()
        self.activation: nn.Module = activation_layer() if activation_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lkb_reparam is not None:
            x = self.lkb_reparam(x)
        else:
            x_large = self.lkb_origin(x)
            if self.small_conv is not None:
                x_large = x_large + self.small_conv(x)
            x = x_large

        return self.activation(self.se(x))  # type: ignore[no-any-return]

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize(self) -> None:
        """Fold both branches into one biased kxk conv (the small kernel zero-padded to k)."""

        if self.reparameterized is True:
            return

        kernel, bias = self._get_kernel_bias(self.lkb_origin)
        if self.small_conv is not None and self.small_kernel is not None:
            small_kernel, small_bias = self._get_kernel_bias(self.small_conv)
            pad = (self.kernel_size - self.small_kernel) // 2
            kernel = kernel + F.pad(small_kernel, [pad, pad, pad, pad])
            bias = bias + small_bias

        self.lkb_reparam = folded_conv(self, kernel, bias)

        del self.lkb_origin
        self.small_conv = None
        self.reparameterized = True

    @staticmethod
    def _get_kernel_bias(branch: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
        conv = branch.get_submodule("conv")
        bn = branch.get_submodule("bn")
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        return (weight.detach(), bias.detach())
