"""MobileOne ("MobileOne: An Improved One millisecond Mobile Backbone", https://arxiv.org/abs/2206.04861), laid out
as Birder lays it out.

A stride-2 stem block, then four stages of (depthwise 3x3, pointwise 1x1) MobileOne block pairs, the last blocks of
a stage optionally with squeeze-excitation. ``reparameterize_model`` folds each block's branches into one conv for
inference. Module and parameter names follow Birder's, so its checkpoints (plain or reparameterised) load strictly.
"""

from collections import OrderedDict
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn

from birder_exp.layers.mobileone_block import MobileOneBlock
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_REQUIRED_KEYS = ("width_multipliers", "num_conv_branches", "num_se_blocks")
_NUM_BLOCKS_PER_STAGE = (2, 8, 10, 1)  # Fixed by the architecture
_WIDTHS = (64, 128, 256, 512)


class MobileOneStage(nn.Sequential):
    """``num_blocks`` (depthwise, pointwise) pairs, the first depthwise strided; SE on the last ``num_se_blocks``."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        num_blocks: int,
        num_se_blocks: int,
        num_conv_branches: int,
        reparameterized: bool,
    ) -> None:
        super().__init__()
        if num_se_blocks > num_blocks:
            raise ValueError(
                f"MobileOne: num_se_blocks ({num_se_blocks}) cannot exceed the stage's blocks ({num_blocks})"
            )

        for idx in range(num_blocks):
            use_se = idx >= num_blocks - num_se_blocks
            self.append(
                MobileOneBlock(
                    in_channels=in_planes,
                    out_channels=in_planes,
                    kernel_size=3,
                    stride=2 if idx == 0 else 1,
                    padding=1,
                    groups=in_planes,
                    use_se=use_se,
                    use_act=True,
                    use_scale_branch=True,
                    num_conv_branches=num_conv_branches,
                    reparameterized=reparameterized,
                )
            )
            self.append(
                MobileOneBlock(
                    in_channels=in_planes,
                    out_channels=planes,
                    kernel_size=1,
                    stride=1,
                    padding=0,
                    groups=1,
                    use_se=use_se,
                    use_act=True,
                    use_scale_branch=True,
                    num_conv_branches=num_conv_branches,
                    reparameterized=reparameterized,
                )
            )
            in_planes = planes


class MobileOne(MaskedStagedConvNet):
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
        num_conv_branches: int = config["num_conv_branches"]
        num_se_blocks: list[int] = list(config["num_se_blocks"])
        if not len(width_multipliers) == len(num_se_blocks) == len(_WIDTHS):
            raise ValueError(
                f"{type(self).__name__}: width_multipliers and num_se_blocks need 4 entries each (one per stage), "
                f"got {len(width_multipliers)} and {len(num_se_blocks)}"
            )

        self.reparameterized = False
        stem_width = min(64, int(_WIDTHS[0] * width_multipliers[0]))
        self.stem = MobileOneBlock(
            in_channels=self.input_channels,
            out_channels=stem_width,
            kernel_size=3,
            stride=2,
            padding=1,
            groups=1,
            use_se=False,
            use_act=True,
            use_scale_branch=True,
            num_conv_branches=1,
            reparameterized=self.reparameterized,
        )

        in_planes = stem_width
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        return_channels: list[int] = []
        for idx, num_blocks in enumerate(_NUM_BLOCKS_PER_STAGE):
            out_planes = int(_WIDTHS[idx] * width_multipliers[idx])
            stages[f"stage{idx + 1}"] = MobileOneStage(
                in_planes,
                out_planes,
                num_blocks,
                num_se_blocks=num_se_blocks[idx],
                num_conv_branches=num_conv_branches,
                reparameterized=self.reparameterized,
            )
            return_channels.append(out_planes)
            in_planes = out_planes

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = return_channels
        self.embedding_size = return_channels[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = stem_width
        self.feature_dim = return_channels[-1]

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize_model(self) -> None:
        """Fold every block into its inference conv (before loading a reparameterised checkpoint, or to deploy)."""

        if self.reparameterized is True:
            return

        for module in self.modules():
            if isinstance(module, MobileOneBlock):
                module.reparameterize()

        self.reparameterized = True
