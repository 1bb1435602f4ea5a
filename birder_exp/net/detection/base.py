from typing import Any
from typing import ClassVar
from typing import Optional
from typing import TypedDict

import torch
from torch import nn

from birder_exp.model_registry import Task
from birder_exp.net.base import DataShapeType
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import recompute_non_persistent_buffers
from birder_exp.net.task_base import check_size
from birder_exp.net.task_base import merge_config

DetectionSignatureType = TypedDict(
    "DetectionSignatureType",
    {"dynamic": bool, "inputs": list[DataShapeType], "outputs": Any, "num_labels": int},
)


def get_detection_signature(input_shape: tuple[int, ...], num_outputs: int, dynamic: bool) -> DetectionSignatureType:
    return {
        "dynamic": dynamic,
        "inputs": [{"data_shape": [0, *input_shape[1:]]}],
        "outputs": ([{"boxes": [0, 4], "labels": [0], "scores": [0]}], {}),
        "num_labels": num_outputs,
    }


class DetectionBaseNet(nn.Module):
    """A detector over a DetectorBackbone; ``num_classes + 1`` outputs with background at index 0."""

    default_size: ClassVar[tuple[int, int]]
    auto_register: ClassVar[bool] = False
    scriptable: ClassVar[bool] = True
    exportable: ClassVar[bool] = True
    task: ClassVar[str] = str(Task.OBJECT_DETECTION)
    config: Optional[dict[str, Any]]

    def __init__(
        self,
        num_classes: int,
        backbone: DetectorBackbone,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
        export_mode: bool = False,
    ) -> None:
        super().__init__()
        self.input_channels = backbone.input_channels
        self.num_classes = num_classes + 1
        self.backbone = backbone
        self.backbone.strip_for_detection_features()
        merge_config(self, config)
        self.size = check_size(type(self).__name__, size if size is not None else self.default_size)
        self.export_mode = export_mode
        self.dynamic_size = False

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        self.size = new_size
        self.backbone.adjust_size(new_size)

    def adjust_input_channels(self, input_channels: int) -> None:
        self.backbone.adjust_input_channels(input_channels)
        self.input_channels = self.backbone.input_channels

    def set_dynamic_size(self, dynamic_size: bool = True) -> None:
        self.backbone.set_dynamic_size(dynamic_size)
        self.dynamic_size = dynamic_size

    def recompute_buffers(self, device: Optional[torch.device] = None) -> None:
        recompute_non_persistent_buffers(self, device)
