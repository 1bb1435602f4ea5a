"""Small networks of the weights tests' own, one per task, so loading is tested apart from any built-in family.

The classifier owns a non-persistent buffer that depends on its size (recomputed after a meta-device build and
by adjust_size) and a BatchNorm (integer buffer), so the fast loading path has something to get wrong.
"""

from typing import Any
from typing import Optional

import torch
from torch import nn

from birder_exp.model_registry import ModelRegistry
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.detection.base import DetectionBaseNet
from birder_exp.net.mim.base import MIMBaseNet
from birder_exp.net.ssl.base import SSLBaseNet


class PositionTable(nn.Module):
    """A size-dependent table kept out of the state_dict (like RoPE frequencies)."""

    def __init__(self, channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.channels = channels
        self.size = size
        self.compute_buffers(None)

    def compute_buffers(self, device: Optional[torch.device]) -> None:
        h, w = self.size
        steps = torch.arange(self.channels * h * w, device=device, dtype=torch.float32)
        self.register_buffer("table", torch.sin(steps * 0.01).reshape(1, self.channels, h, w), persistent=False)


class TinyClassifier(DetectorBackbone, PreTrainEncoder):
    default_size = (16, 16)

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        assert self.config is not None
        width: int = self.config["width"]
        self.stem = nn.Conv2d(input_channels, width, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(width)
        self.pos = PositionTable(width, self.size)
        self.body = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
        self.return_stages = ["stage1"]
        self.return_channels = [width]
        self.stem_stride = 1
        self.stem_width = width
        self.max_stride = 2
        self.embedding_size = width
        self.classifier = self.create_classifier()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.stem(x))) + self.pos.table
        return torch.relu(self.body(x))

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"stage1": self.forward_features(x)}

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        super().adjust_size(new_size)
        self.pos.size = self.size
        self.pos.compute_buffers(self.stem.weight.device)


class TinyDetector(DetectionBaseNet):
    default_size = (16, 16)

    def __init__(
        self,
        num_classes: int,
        backbone: DetectorBackbone,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
        export_mode: bool = False,
    ) -> None:
        super().__init__(num_classes, backbone, config=config, size=size, export_mode=export_mode)
        hidden = 4 if self.config is None else int(self.config.get("hidden", 4))
        self.neck = nn.Conv2d(backbone.return_channels[-1], hidden, kernel_size=1)
        self.head = nn.Conv2d(hidden, self.num_classes + 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.detection_features(x)["stage1"]
        return self.head(torch.relu(self.neck(features)))  # type: ignore[no-any-return]


class TinyMIM(MIMBaseNet):
    default_size = (16, 16)

    def __init__(
        self,
        encoder: PreTrainEncoder,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
        mask_ratio: Optional[float] = None,
        min_mask_size: int = 1,
    ) -> None:
        super().__init__(encoder, config=config, size=size, mask_ratio=mask_ratio, min_mask_size=min_mask_size)
        self.mask_token = nn.Parameter(torch.zeros(1, encoder.embedding_size, 1, 1))
        self.decoder = nn.Conv2d(encoder.embedding_size, encoder.input_channels * 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"pred": self.decoder(self.encoder.forward_features(x) + self.mask_token)}


class TinySSL(SSLBaseNet):
    default_size = (16, 16)

    def __init__(
        self,
        backbone: Any,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(backbone, config=config, size=size)
        out_dim = 8 if self.config is None else int(self.config.get("out_dim", 8))
        self.head = nn.Linear(backbone.embedding_size, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.embedding(x))  # type: ignore[no-any-return]


def register_tiny_networks(registry: ModelRegistry) -> None:
    """Names the tests build: two classifier widths, and one network per other task."""

    registry.register_model_config("tiny_w8", TinyClassifier, config={"width": 8})
    registry.register_model_config("tiny_w16", TinyClassifier, config={"width": 16})
    registry.register_model_config("tiny_det", TinyDetector, config={"hidden": 4})
    registry.register_model_config("tiny_mim", TinyMIM, config=None)
    registry.register_model_config("tiny_ssl", TinySSL, config={"out_dim": 8})


def seeded(net: nn.Module, seed: int) -> nn.Module:
    """Give every floating tensor in the state_dict seeded random values (BatchNorm stats included)."""

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in net.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=g) + 0.5 if key.endswith("running_var") else None
                tensor.copy_(values if values is not None else torch.randn(tensor.shape, generator=g) * 0.2)
            else:
                tensor.fill_(seed % 7)

    return net
