"""EfficientNet-Lite (https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite), lite0-lite4 as
Birder lays them out: EfficientNet's B0 table without squeeze-and-excitation, ReLU6 in place of SiLU, the stem and
the first and last block groups kept at their B0 sizes, and a fixed 1280-wide head.

As in Birder, the blocks before the first stride form a ``stage0`` that detection features do not return.
"""

from functools import partial
from typing import Any
from typing import ClassVar
from typing import Optional

from torch import nn
from torchvision.ops import Conv2dNormActivation

from birder_exp.net.efficientnet_v1 import B0_EXPAND_RATIOS
from birder_exp.net.efficientnet_v1 import B0_IN_CHANNELS
from birder_exp.net.efficientnet_v1 import B0_KERNELS
from birder_exp.net.efficientnet_v1 import B0_OUT_CHANNELS
from birder_exp.net.efficientnet_v1 import B0_REPEATS
from birder_exp.net.efficientnet_v1 import B0_STRIDES
from birder_exp.net.efficientnet_v1 import adjust_channels
from birder_exp.net.efficientnet_v1 import adjust_depth
from birder_exp.net.efficientnet_v1 import efficientnet_blocks
from birder_exp.net.efficientnet_v1 import efficientnet_head
from birder_exp.net.efficientnet_v1 import init_efficientnet_weights
from birder_exp.net.efficientnet_v1 import mbconv
from birder_exp.net.staged_convnet import MaskedStagedConvNet
from birder_exp.net.staged_convnet import split_at_strides

_REQUIRED_KEYS = ("width_coefficient", "depth_coefficient", "dropout_rate")


class EfficientNet_Lite(MaskedStagedConvNet):
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
        width: float = config["width_coefficient"]
        depth: float = config["depth_coefficient"]
        dropout_rate: float = config["dropout_rate"]
        drop_path_rate: float = config.get("drop_path_rate", 0.2)

        last_group = len(B0_REPEATS) - 1
        in_channels = [adjust_channels(ch, width) if i > 0 else ch for i, ch in enumerate(B0_IN_CHANNELS)]
        out_channels = [adjust_channels(ch, width) for ch in B0_OUT_CHANNELS]
        repeats = [adjust_depth(r, depth) if i not in (0, last_group) else r for i, r in enumerate(B0_REPEATS)]

        self.stem = Conv2dNormActivation(
            self.input_channels,
            in_channels[0],
            kernel_size=(3, 3),
            stride=(2, 2),
            padding=(1, 1),
            bias=False,
            activation_layer=nn.ReLU6,
        )
        lite_mbconv = partial(mbconv, activation_layer=nn.ReLU6, squeeze_excitation=False)
        blocks = efficientnet_blocks(
            in_channels,
            out_channels,
            list(B0_KERNELS),
            list(B0_STRIDES),
            list(B0_EXPAND_RATIOS),
            repeats,
            drop_path_rate,
            lambda _: lite_mbconv,
        )
        self.body, stage_channels = split_at_strides(blocks, in_channels[0])
        self.features = efficientnet_head(out_channels[-1], 1280, dropout_rate, nn.ReLU6)  # type: ignore[assignment]
        self.return_channels = stage_channels[1:5]
        self.embedding_size = 1280
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = in_channels[0]
        self.feature_dim = out_channels[-1]

        init_efficientnet_weights(self)
