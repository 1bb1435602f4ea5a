"""RepVGG ("RepVGG: Making VGG-style ConvNets Great Again", https://arxiv.org/abs/2101.03697), laid out as Birder
lays it out.

A plain stack of 3x3 blocks that train as three parallel branches (3x3 conv + BN, 1x1 conv + BN, BN identity) and
deploy as the single 3x3 conv those branches sum to (``reparameterize_model``). Module names follow Birder's, so its
checkpoints, plain or reparameterised, load strictly.
"""

from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation

from birder_exp.layers.reparam import conv_bn
from birder_exp.layers.reparam import fuse_bn
from birder_exp.layers.reparam import identity_kernel
from birder_exp.layers.reparam import reparameterize_all
from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("width_multipliers", "num_blocks_per_stage", "groups", "use_se")
_WIDTHS = (64, 128, 256, 512)
_GROUPED_LAYER_LIMIT = 27  # Grouped convs only on the even layers below this index (counting the stem as layer 0)


class RepVggBlock(nn.Module):
    """kxk + 1x1 (+ BN identity when shapes allow) branches, or their fused conv; then SE and activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        groups: int,
        use_se: bool,
        reparameterized: bool,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        skip_identity: bool = False,
    ) -> None:
        super().__init__()
        self.reparameterized = reparameterized
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.groups = groups

        self.se: nn.Module = SqueezeExcitation(out_channels, out_channels // 16) if use_se is True else nn.Identity()
        self.activation = act_layer()

        self.reparam_conv: Optional[nn.Conv2d] = None
        self.rbr_identity: Optional[nn.BatchNorm2d] = None
        self.conv_kxk: Optional[nn.Sequential] = None
        self.conv_1x1: Optional[nn.Sequential] = None
        if reparameterized is True:
            self.reparam_conv = self._fused_conv()
        else:
            if skip_identity is False and out_channels == in_channels and stride == 1:
                self.rbr_identity = nn.BatchNorm2d(num_features=in_channels)
            self.conv_kxk = conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups)
            self.conv_1x1 = conv_bn(in_channels, out_channels, 1, stride, 0, groups)

    def _fused_conv(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> nn.Conv2d:
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            kernel_size=(self.kernel_size, self.kernel_size),
            stride=(self.stride, self.stride),
            padding=(self.padding, self.padding),
            groups=self.groups,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.activation(self.se(self.reparam_conv(x)))  # type: ignore[no-any-return]

        assert self.conv_1x1 is not None and self.conv_kxk is not None
        out = self.conv_1x1(x) + self.conv_kxk(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)

        return self.activation(self.se(out))  # type: ignore[no-any-return]

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize(self) -> None:
        """Fold the branches into one biased conv; the branches leave the module (and its state_dict)."""

        if self.reparameterized is True:
            return

        kernel, bias = self._get_kernel_bias()
        self.reparam_conv = self._fused_conv(device=kernel.device, dtype=kernel.dtype)
        self.reparam_conv.weight.copy_(kernel)
        assert self.reparam_conv.bias is not None
        self.reparam_conv.bias.copy_(bias)

        self.conv_kxk = None
        self.conv_1x1 = None
        self.rbr_identity = None
        self.reparameterized = True

    def _get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.conv_1x1 is not None and self.conv_kxk is not None
        kernel, bias = self._fuse_branch(self.conv_kxk)
        kernel_1x1, bias_1x1 = self._fuse_branch(self.conv_1x1)
        pad = self.kernel_size // 2
        kernel = kernel + F.pad(kernel_1x1, [pad, pad, pad, pad])
        bias = bias + bias_1x1
        if self.rbr_identity is not None:
            kernel_id, bias_id = self._fuse_identity(self.rbr_identity)
            kernel = kernel + kernel_id
            bias = bias + bias_id

        return (kernel, bias)

    @staticmethod
    def _fuse_branch(branch: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
        conv = branch.get_submodule("conv")
        bn = branch.get_submodule("bn")
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        return fuse_bn(conv.weight, bn)

    def _fuse_identity(self, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        kernel = identity_kernel(self.in_channels, self.groups, self.kernel_size, bn.weight.dtype, bn.weight.device)
        return fuse_bn(kernel, bn)


class RepVggStage(nn.Sequential):
    """``num_blocks`` 3x3 blocks, the first strided; ``groups`` applies to even layers (global count) below 27."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        num_blocks: int,
        groups: int,
        prev_blocks: int,
        use_se: bool,
        reparameterized: bool,
    ) -> None:
        super().__init__()
        for idx in range(num_blocks):
            layer = prev_blocks + idx
            grouped = layer < _GROUPED_LAYER_LIMIT and layer % 2 == 0
            self.append(
                RepVggBlock(
                    in_channels=in_planes,
                    out_channels=planes,
                    kernel_size=3,
                    stride=2 if idx == 0 else 1,
                    padding=1,
                    groups=groups if grouped else 1,
                    use_se=use_se,
                    reparameterized=reparameterized,
                )
            )
            in_planes = planes


class RepVgg(StagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.(\d+)"

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        config = self.require_config(*_REQUIRED_KEYS)
        width_multipliers: list[float] = list(config["width_multipliers"])
        num_blocks_per_stage: list[int] = list(config["num_blocks_per_stage"])
        groups: int = config["groups"]
        use_se: bool = config["use_se"]
        if not len(width_multipliers) == len(num_blocks_per_stage) == len(_WIDTHS):
            raise ValueError(
                f"{type(self).__name__}: width_multipliers and num_blocks_per_stage need 4 entries each "
                f"(one per stage), got {len(width_multipliers)} and {len(num_blocks_per_stage)}"
            )
        if any(n < 1 for n in num_blocks_per_stage):
            raise ValueError(f"{type(self).__name__}: every stage needs at least one block, got {num_blocks_per_stage}")

        self.reparameterized = False
        stem_width = min(64, int(_WIDTHS[0] * width_multipliers[0]))
        if use_se is True and stem_width < 16:
            raise ValueError(
                f"{type(self).__name__}: use_se squeezes each width by 16, so the stem width "
                f"(min(64, 64 * width_multipliers[0]) = {stem_width}) must be at least 16"
            )
        self.stem = RepVggBlock(
            in_channels=self.input_channels,
            out_channels=stem_width,
            kernel_size=3,
            stride=2,
            padding=1,
            groups=1,
            use_se=use_se,
            reparameterized=self.reparameterized,
        )

        in_planes = stem_width
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        return_channels: list[int] = []
        prev_blocks = 1  # The stem is layer 0
        for idx, num_blocks in enumerate(num_blocks_per_stage):
            out_planes = int(_WIDTHS[idx] * width_multipliers[idx])
            for width in (in_planes, out_planes):
                if groups > 1 and width % groups != 0:
                    raise ValueError(
                        f"{type(self).__name__}: groups ({groups}) must divide every stage width, got {width}"
                    )
            stages[f"stage{idx + 1}"] = RepVggStage(
                in_planes,
                out_planes,
                num_blocks=num_blocks,
                groups=groups,
                prev_blocks=prev_blocks,
                use_se=use_se,
                reparameterized=self.reparameterized,
            )
            return_channels.append(out_planes)
            in_planes = out_planes
            prev_blocks += num_blocks

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = return_channels
        self.embedding_size = int(_WIDTHS[-1] * width_multipliers[3])
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = stem_width
        self.feature_dim = self.embedding_size

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize_model(self) -> None:
        """Fold every block into its inference conv (before loading a reparameterised checkpoint, or to deploy)."""

        if self.reparameterized is True:
            return

        reparameterize_all(self, RepVggBlock)

        self.reparameterized = True
