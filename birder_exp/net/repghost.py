"""RepGhost ("RepGhost: A Hardware-Efficient Ghost Module via Re-parameterization", https://arxiv.org/abs/2211.06088),
laid out as Birder lays it out.

GhostNet's layout (stride-split stages, 1x1 conv closing the last stage, 1280-wide head) with half the expansion
widths, and a ghost module that adds its cheap depthwise branch to a BN of the primary output instead of
concatenating them. That sum folds into one biased depthwise conv (``reparameterize_model``). Module names follow
Birder's, so its checkpoints, plain or reparameterised, load strictly.
"""

from typing import Any
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from birder_exp.layers.reparam import fuse_bn
from birder_exp.layers.reparam import reparameterize_all
from birder_exp.net.base import make_divisible
from birder_exp.net.ghostnet_v1 import GhostBottleneck
from birder_exp.net.ghostnet_v1 import finish_ghost_layout
from birder_exp.net.staged_convnet import StagedConvNet

# Kernel, expansion width, output width, SE ratio, stride (widths before the width multiplier)
BLOCK_SETTINGS: tuple[tuple[int, int, int, float, int], ...] = (
    (3, 8, 16, 0, 1),
    (3, 24, 24, 0, 2),
    (3, 36, 24, 0, 1),
    (5, 36, 40, 0.25, 2),
    (5, 60, 40, 0.25, 1),
    (3, 120, 80, 0, 2),
    (3, 100, 80, 0, 1),
    (3, 120, 80, 0, 1),
    (3, 120, 80, 0, 1),
    (3, 240, 112, 0.25, 1),
    (3, 336, 112, 0.25, 1),
    (5, 336, 160, 0.25, 2),
    (5, 480, 160, 0, 1),
    (5, 480, 160, 0.25, 1),
    (5, 480, 160, 0, 1),
    (5, 480, 160, 0.25, 1),
)


class RepGhostModule(nn.Module):
    """Primary conv, then cheap depthwise conv + BN summed with a BN of the primary output (or their fused conv)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dw_size: int,
        stride: int,
        relu: bool,
        reparameterized: bool,
    ) -> None:
        super().__init__()
        self.reparameterized = reparameterized
        self.out_channels = out_channels
        self.dw_size = dw_size
        self.primary_conv = nn.Sequential(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size=(kernel_size, kernel_size),
                stride=(stride, stride),
                padding=(kernel_size // 2, kernel_size // 2),
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )

        self.fusion_bn: Optional[nn.BatchNorm2d] = None
        self.cheap_operation: nn.Module
        if reparameterized is True:
            self.cheap_operation = self._fused_conv()
        else:
            self.fusion_bn = nn.BatchNorm2d(out_channels)
            self.cheap_operation = nn.Sequential(
                nn.Conv2d(
                    out_channels,
                    out_channels,
                    kernel_size=(dw_size, dw_size),
                    stride=(1, 1),
                    padding=(dw_size // 2, dw_size // 2),
                    groups=out_channels,
                    bias=False,
                ),
                nn.BatchNorm2d(out_channels),
            )
        self.relu: nn.Module = nn.ReLU() if relu else nn.Identity()

    def _fused_conv(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> nn.Conv2d:
        return nn.Conv2d(
            self.out_channels,
            self.out_channels,
            kernel_size=(self.dw_size, self.dw_size),
            stride=(1, 1),
            padding=(self.dw_size // 2, self.dw_size // 2),
            groups=self.out_channels,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        if self.fusion_bn is not None:
            x2 = x2 + self.fusion_bn(x1)

        return self.relu(x2)  # type: ignore[no-any-return]

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize(self) -> None:
        """Fold the cheap branch and the fusion BN into one biased depthwise conv."""

        if self.reparameterized is True:
            return

        assert isinstance(self.cheap_operation, nn.Sequential) and self.fusion_bn is not None
        conv, bn = self.cheap_operation[0], self.cheap_operation[1]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        kernel, bias = fuse_bn(conv.weight, bn)

        # The fusion BN is a per-channel 1x1 identity, centred in the depthwise kernel
        identity = torch.ones(self.out_channels, 1, 1, 1, device=kernel.device, dtype=kernel.dtype)
        kernel_id, bias_id = fuse_bn(identity, self.fusion_bn)
        pad_h = (kernel.shape[2] - 1) // 2
        pad_w = (kernel.shape[3] - 1) // 2
        kernel = kernel + F.pad(kernel_id, [pad_w, pad_w, pad_h, pad_h])
        bias = bias + bias_id

        fused = self._fused_conv(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        assert fused.bias is not None
        fused.bias.copy_(bias)
        self.cheap_operation = fused
        self.fusion_bn = None
        self.reparameterized = True


class RepGhostBottleneck(GhostBottleneck):
    """GhostNet's bottleneck (depthwise conv when strided, hard-sigmoid SE, shortcut) with re-parameterisable
    ghost modules for the expansion and the projection."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        dw_size: tuple[int, int],
        stride: tuple[int, int],
        se_ratio: float,
        reparameterized: bool,
    ) -> None:
        ghost1 = RepGhostModule(
            in_channels, mid_channels, kernel_size=1, dw_size=3, stride=1, relu=True, reparameterized=reparameterized
        )
        super().__init__(in_channels, mid_channels, out_channels, dw_size, stride, se_ratio, ghost1=ghost1)
        # Same slot (and state_dict position) as GhostNet's projection
        self.ghost2 = RepGhostModule(  # type: ignore[assignment]
            mid_channels, out_channels, kernel_size=1, dw_size=3, stride=1, relu=False, reparameterized=reparameterized
        )


class RepGhost(StagedConvNet):
    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        width: float = self.require_config("width")["width"]
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"{type(self).__name__}: width must be a positive multiplier, got width={width!r}")

        self.reparameterized = False
        stem_channels = make_divisible(16 * width, 4)
        self.stem = Conv2dNormActivation(
            self.input_channels, stem_channels, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False
        )

        blocks: list[tuple[nn.Module, tuple[int, int], int]] = []
        prev_channels = stem_channels
        for k, expansion, c, se_ratio, s in BLOCK_SETTINGS:
            out_channels = make_divisible(c * width, 4)
            mid_channels = make_divisible(expansion * width, 4)
            block = RepGhostBottleneck(
                prev_channels,
                mid_channels,
                out_channels,
                (k, k),
                (s, s),
                se_ratio=se_ratio,
                reparameterized=self.reparameterized,
            )
            blocks.append((block, (s, s), out_channels))
            prev_channels = out_channels

        last_channels = make_divisible(BLOCK_SETTINGS[-1][1] * width * 2, 4)
        finish_ghost_layout(self, blocks, prev_channels, last_channels, stem_channels)

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize_model(self) -> None:
        """Fold every ghost module's cheap branch (before loading a reparameterised checkpoint, or to deploy)."""

        if self.reparameterized is True:
            return

        reparameterize_all(self, RepGhostModule)

        self.reparameterized = True
