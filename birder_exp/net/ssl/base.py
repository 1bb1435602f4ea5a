from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn

from birder_exp.model_registry import Task
from birder_exp.net.base import BaseNet
from birder_exp.net.base import DataShapeType
from birder_exp.net.base import recompute_non_persistent_buffers
from birder_exp.net.task_base import check_size
from birder_exp.net.task_base import merge_config


def get_ssl_signature(input_shape: tuple[int, ...]) -> dict[str, list[DataShapeType]]:
    return {
        "inputs": [{"data_shape": [0, *input_shape[1:]]}],
        "outputs": [{"data_shape": [0]}],
    }


class SSLBaseNet(nn.Module):
    """A self-supervised method around a backbone."""

    default_size: ClassVar[tuple[int, int]] = (224, 224)
    auto_register: ClassVar[bool] = True
    square_only: ClassVar[bool] = False
    task: ClassVar[str] = str(Task.SELF_SUPERVISED_LEARNING)
    config: Optional[dict[str, Any]]

    def __init__(
        self,
        backbone: BaseNet,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__()
        self.input_channels = backbone.input_channels
        self.backbone = backbone
        merge_config(self, config)
        self.size = check_size(type(self).__name__, size if size is not None else self.default_size)

    def recompute_buffers(self, device: Optional[torch.device] = None) -> None:
        recompute_non_persistent_buffers(self, device)
