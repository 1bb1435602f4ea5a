"""MobileOne's re-parameterisable conv block ("MobileOne: An Improved One millisecond Mobile Backbone",
https://arxiv.org/abs/2206.04861); MobileOne stacks it and FastViT builds its stem and patch embeddings from it.

At training time the block sums several conv + BN branches (kxk convs, a 1x1 "scale" conv, a BN-only identity);
``reparameterize`` folds them into the single conv they add up to (RepVGG's trick), which is what inference
checkpoints hold.
"""

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import SqueezeExcitation

from birder_exp.layers.reparam import folded_conv


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, groups: int
) -> nn.Sequential:
    branch = nn.Sequential()
    branch.add_module(
        "conv",
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=False,
        ),
    )
    branch.add_module("bn", nn.BatchNorm2d(num_features=out_channels))
    return branch


class MobileOneBlock(nn.Module):
    """Sum of conv + BN branches (or their fused conv), then squeeze-excitation and activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        groups: int,
        use_se: bool,
        use_act: bool,
        use_scale_branch: bool,
        num_conv_branches: int,
        reparameterized: bool,
        activation_layer: Callable[..., nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.reparameterized = reparameterized
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.groups = groups
        self.num_conv_branches = num_conv_branches
        self.id_tensor: Optional[torch.Tensor] = None  # The identity branch's kernel, once fused (RepMixer reads it)

        self.se: nn.Module = SqueezeExcitation(out_channels, out_channels // 16) if use_se is True else nn.Identity()
        self.activation: nn.Module = activation_layer() if use_act is True else nn.Identity()

        # Registration order is Birder's (it fixes the state_dict order): skip, conv branches, scale
        self.reparam_conv: Optional[nn.Conv2d] = None
        self.rbr_skip: Optional[nn.BatchNorm2d] = None
        if reparameterized is True:
            self.reparam_conv = nn.Conv2d(
                in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding, groups=groups
            )
        elif out_channels == in_channels and stride == 1:
            self.rbr_skip = nn.BatchNorm2d(num_features=in_channels)

        self.rbr_conv = nn.ModuleList()
        self.rbr_scale: Optional[nn.Sequential] = None
        if reparameterized is False:
            for _ in range(num_conv_branches):
                self.rbr_conv.append(_conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups))
            if kernel_size > 1 and use_scale_branch is True:
                self.rbr_scale = _conv_bn(in_channels, out_channels, 1, stride, 0, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.activation(self.se(self.reparam_conv(x)))  # type: ignore[no-any-return]

        # Summed in Birder's order: scale, identity, then each conv branch
        out: Optional[torch.Tensor] = None
        if self.rbr_scale is not None:
            out = self.rbr_scale(x)
        if self.rbr_skip is not None:
            skip = self.rbr_skip(x)
            out = skip if out is None else out + skip
        for conv in self.rbr_conv:
            branch = conv(x)
            out = branch if out is None else out + branch

        assert out is not None, "MobileOneBlock has no branch"
        return self.activation(self.se(out))  # type: ignore[no-any-return]

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize(self) -> None:
        """Fold every branch into one biased conv; the branches leave the module (and its state_dict)."""

        if self.reparameterized is True:
            return

        kernel, bias = self._get_kernel_bias()
        self.reparam_conv = folded_conv(self, kernel, bias)

        self.rbr_conv = nn.ModuleList()
        self.rbr_scale = None
        self.rbr_skip = None
        self.reparameterized = True

    def _get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for branch in self.rbr_conv:
            parts.append(self._fuse_bn_tensor(branch))
        if self.rbr_scale is not None:
            scale_kernel, scale_bias = self._fuse_bn_tensor(self.rbr_scale)
            pad = self.kernel_size // 2
            parts.append((F.pad(scale_kernel, [pad, pad, pad, pad]), scale_bias))
        if self.rbr_skip is not None:
            parts.append(self._fuse_bn_tensor(self.rbr_skip))

        kernel, bias = parts[0]
        for part_kernel, part_bias in parts[1:]:
            kernel = kernel + part_kernel
            bias = bias + part_bias

        return (kernel, bias)

    def _fuse_bn_tensor(self, branch: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """A conv + BN branch, or a BN-only identity (as a centre-tap kernel), as one conv's weight and bias."""

        bn: nn.Module
        kernel: torch.Tensor
        if isinstance(branch, nn.Sequential):
            conv = branch.get_submodule("conv")
            assert isinstance(conv, nn.Conv2d)
            kernel = conv.weight
            bn = branch.get_submodule("bn")
        else:
            assert isinstance(branch, nn.BatchNorm2d)
            input_dim = self.in_channels // self.groups
            kernel = torch.zeros(
                (self.in_channels, input_dim, self.kernel_size, self.kernel_size),
                dtype=branch.weight.dtype,
                device=branch.weight.device,
            )
            centre = self.kernel_size // 2
            for i in range(self.in_channels):
                kernel[i, i % input_dim, centre, centre] = 1
            self.id_tensor = kernel
            bn = branch

        assert isinstance(bn, nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        fused_weight, fused_bias = fuse_conv_bn_weights(
            kernel, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        return (fused_weight.detach(), fused_bias.detach())
