"""SqueezeNet v1.1: Birder-exact on its fixture, fixed architecture, convolutional classifier."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import image
from conformance import check_outputs
from fixed_checks import check_fixed_behaviour
from fixed_checks import check_fixed_catalogue
from torch import nn

from birder_exp.net.squeezenet import SqueezeNet


def test_birder_exact() -> None:
    check_outputs("squeezenet")


def test_catalogue() -> None:
    check_fixed_catalogue("squeezenet", SqueezeNet)
    assert SqueezeNet.default_size == (227, 227)


def test_behaviour() -> None:
    check_fixed_behaviour("squeezenet", SqueezeNet)


def test_embedding_is_the_feature_map() -> None:
    """As in Birder: the embedding is unpooled and the classifier pools after its 1x1 convolution and ReLU."""

    net = build("squeezenet").eval()
    x = image()
    with torch.inference_mode():
        features = net.forward_features(x)
        assert features.shape == (2, 512, 3, 5)
        assert torch.equal(net.embedding(x), features)
        logits = net(x)
    assert (logits >= 0).all()
    assert isinstance(net.classifier[1], nn.Conv2d)

    net.reset_classifier(0)
    assert isinstance(net.classifier, nn.Identity)
    with pytest.raises(ValueError, match="head_bias and mlp_head must be None"):
        net.create_classifier(head_bias=False)
