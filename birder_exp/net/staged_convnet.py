"""The skeleton Birder's mobile and RegNet-style convnets share: ``stem`` -> ``body`` (named stages) -> ``features``
(pooling head) -> ``classifier``.

Birder writes detection features, stage freezing, masked encoding and gradient checkpointing out in every such
family; here they are written once and each family module only builds its stem, stages and head.
"""

import logging
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Optional

import torch
from torch import nn

from birder_exp.layers.masking import mask_tensor
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import StagedBackbone
from birder_exp.net.base import TokenRetentionResultType

logger = logging.getLogger(__name__)


class StagedConvNet(StagedBackbone, DetectorBackbone):
    """A detector backbone whose ``body`` is an ``nn.Sequential`` of stages named ``stageN``.

    Subclasses set ``stem``, ``body``, ``features`` and ``classifier``. Families that Birder lets checkpoint
    set ``grad_checkpointing_supported`` (the others refuse, as Birder's do).
    """

    grad_checkpointing_supported: ClassVar[bool] = False
    if TYPE_CHECKING:  # Not class annotations at runtime: TorchScript would read them as attribute types
        stem: nn.Module
        body: nn.Sequential

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        self._init_grad_checkpointing()
        self._has_grad_checkpointing = self.grad_checkpointing_supported  # The others refuse, as Birder's do
        self._grad_checkpointing_blocks: tuple[nn.Module, ...] = ()

    def checkpoint_blocks(self) -> Iterator[nn.Module]:
        """The blocks checkpointed one by one (or in segments): every block of every stage."""

        for stage in self.body:
            yield from stage.children()

    def _grad_checkpointing_changed(self) -> None:
        self._grad_checkpointing_blocks = tuple(self.checkpoint_blocks()) if self.grad_checkpointing is True else ()

    def run_body(self, x: torch.Tensor) -> torch.Tensor:
        """All stages; checkpointed when enabled and gradients are on."""

        if self.grad_checkpointing is True and torch.is_grad_enabled() is True and not torch.jit.is_scripting():
            return self._run_checkpointed(self._grad_checkpointing_blocks, x)

        out: torch.Tensor = self.body(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.run_body(x)

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(features)
        return out


class MaskedStagedConvNet(StagedConvNet, PreTrainEncoder, MaskedTokenRetentionMixin):
    """A staged convnet that FCMAE / SimMIM can pre-train: the stem output is masked per max-stride cell."""

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        x = self.stem(x)
        x = mask_tensor(x, mask, patch_factor=self.max_stride // self.stem_stride, mask_token=mask_token)
        x = self.run_body(x)

        result: TokenRetentionResultType = {}
        if return_keys in ("all", "features"):
            result["features"] = x
        if return_keys in ("all", "embedding"):
            result["embedding"] = self.features(x)

        return result


def split_at_strides(
    blocks: list[tuple[nn.Module, tuple[int, int], int]], in_channels: int
) -> tuple[nn.Sequential, list[int]]:
    """Birder's stage split for the mobile nets: every strided block opens a new stage.

    ``blocks`` holds (block, stride, output channels). ``stage0`` gets the blocks before the first stride (it may be
    empty, as in MobileNet v3 small); returns the body and each stage's output channels (the caller keeps [1:5]).
    """

    stages: OrderedDict[str, nn.Module] = OrderedDict()
    channels: list[int] = []
    current: list[nn.Module] = []
    width = in_channels
    for block, stride, out_channels in blocks:
        if stride != (1, 1):
            stages[f"stage{len(stages)}"] = nn.Sequential(*current)
            channels.append(width)
            current = []
        current.append(block)
        width = out_channels

    stages[f"stage{len(stages)}"] = nn.Sequential(*current)
    channels.append(width)
    return nn.Sequential(stages), channels


def init_mobile_weights(net: nn.Module, linear_init: Callable[[torch.Tensor], Any]) -> None:
    """He-normal (fan-out) convs, unit norms, zero biases; each family picks its linear init."""

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            linear_init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
