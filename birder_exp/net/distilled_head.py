"""The DeiT-style two-head classifier that Birder's EfficientFormer v1 and v2 share.

``classifier`` and ``dist_classifier`` read the same embedding; their logits are averaged, or stacked (B, 2, K)
when training with distillation output on. Everything that touches the classifier handles both heads.
"""

import torch
from torch import nn

from birder_exp.net.base import BaseNet


class DistilledHeadNet(BaseNet):
    """Mix in before the network's base class; call ``create_heads()`` once ``embedding_size`` is set."""

    def create_heads(self) -> None:
        self.dist_classifier = self.create_classifier()
        self.classifier = self.create_classifier()
        self.distillation_output = False

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.create_heads()

    def freeze(self, freeze_classifier: bool = True, unfreeze_features: bool = False) -> None:
        """As the base, with the distillation classifier following the classifier."""

        super().freeze(freeze_classifier=freeze_classifier, unfreeze_features=unfreeze_features)
        if freeze_classifier is False:
            for param in self.dist_classifier.parameters():
                param.requires_grad_(True)

    def strip_for_forward_features(self) -> None:
        super().strip_for_forward_features()
        self.dist_classifier = nn.Identity()

    def strip_for_detection_features(self) -> None:
        self.strip_for_forward_features()

    def set_distillation_output(self, enable: bool = True) -> None:
        self.distillation_output = enable

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Both heads stacked when training with distillation output, their average otherwise."""

        x_cls = self.classifier(x)
        x_dist = self.dist_classifier(x)
        if self.training is True and self.distillation_output is True:
            return torch.stack([x_cls, x_dist], dim=1)

        return (x_cls + x_dist) / 2

    def set_dynamic_size(self, dynamic_size: bool = True) -> None:
        if dynamic_size is True:
            raise ValueError(f"{type(self).__name__}: dynamic size is not supported (attention biases are per grid)")

        super().set_dynamic_size(dynamic_size)
