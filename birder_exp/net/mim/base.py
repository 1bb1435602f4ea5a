from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn

from birder_exp.model_registry import Task
from birder_exp.net.base import DataShapeType
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import recompute_non_persistent_buffers
from birder_exp.net.task_base import check_size
from birder_exp.net.task_base import merge_config


def get_mim_signature(input_shape: tuple[int, ...]) -> dict[str, list[DataShapeType]]:
    return {
        "inputs": [{"data_shape": [0, *input_shape[1:]]}],
        "outputs": [{"data_shape": [0, *input_shape[1:]]}],
    }


class MIMBaseNet(nn.Module):
    """A masked-image-modeling method around a PreTrainEncoder."""

    default_size: ClassVar[tuple[int, int]] = (224, 224)
    default_mask_ratio: ClassVar[float] = 0.75
    auto_register: ClassVar[bool] = True
    task: ClassVar[str] = str(Task.MASKED_IMAGE_MODELING)
    config: Optional[dict[str, Any]]

    def __init__(
        self,
        encoder: PreTrainEncoder,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
        mask_ratio: Optional[float] = None,
        min_mask_size: int = 1,
    ) -> None:
        super().__init__()
        self.input_channels = encoder.input_channels
        self.encoder = encoder
        self.mask_ratio = float(mask_ratio if mask_ratio is not None else self.default_mask_ratio)
        self.min_mask_size = min_mask_size
        merge_config(self, config)
        self.size = check_size(type(self).__name__, size if size is not None else self.default_size)

    def recompute_buffers(self, device: Optional[torch.device] = None) -> None:
        recompute_non_persistent_buffers(self, device)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError
