"""AlexNet: Birder-exact on its fixture, fixed architecture, MLP head as the embedding."""

import torch
from cnn_checks import build
from cnn_checks import image
from conformance import check_outputs
from fixed_checks import check_fixed_behaviour
from fixed_checks import check_fixed_catalogue

from birder_exp.net.alexnet import AlexNet


def test_birder_exact() -> None:
    check_outputs("alexnet")


def test_catalogue() -> None:
    check_fixed_catalogue("alexnet", AlexNet)


def test_behaviour() -> None:
    check_fixed_behaviour("alexnet", AlexNet)


def test_any_input_size_pools_to_6x6() -> None:
    net = build("alexnet").eval()
    with torch.inference_mode():
        assert net.forward_features(image(size=(64, 96))).shape == (2, 256, 6, 6)
        assert net.embedding(image(size=(128, 128))).shape == (2, 4096)
    assert net.embedding_size == 4096 and net.feature_dim == 256
