"""EfficientNet-Lite: Birder-exact on its fixture, every name builds, and the behaviour Birder's class offers."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import check_outputs
from conformance import fixture_names
from staged_checks import check_family_catalogue
from staged_checks import check_meta_layout
from staged_checks import check_staged_behaviour
from staged_checks import family_names
from torch import nn
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.efficientnet_lite import EfficientNet_Lite

FIXTURES = fixture_names("efficientnet_lite")
TINY_CONFIG = {"width_coefficient": 0.25, "depth_coefficient": 0.34, "dropout_rate": 0.1}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("efficientnet_lite_test_tiny", EfficientNet_Lite, config=TINY_CONFIG)
    return "efficientnet_lite_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("efficientnet_lite", "EfficientNet_Lite", 5, pretrain_encoder=True)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("efficientnet_lite") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=True)


def test_fixed_stem_ends_and_head() -> None:
    """Unlike v1, the stem width, the first and last groups' depths and the head width do not scale."""

    with torch.device("meta"):
        net = registry.net_factory("efficientnet_lite4", 10)
    assert (net.stem_width, net.feature_dim, net.embedding_size) == (32, 448, 1280)
    assert [len(stage) for stage in net.body] == [1, 4, 4, 12, 9]
    assert net.body.stage4[-1].block[-1][0].out_channels == 448


def test_relu6_without_se(tiny: str) -> None:
    net = build(tiny)
    assert not any(isinstance(m, SqueezeExcitation) for m in net.modules())
    activations = {type(m) for m in net.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish))}
    assert activations == {nn.ReLU6}
    assert net.return_channels == [8, 16, 32, 80]


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(EfficientNet_Lite, "efficientnet_lite_test_custom", TINY_CONFIG, 1280)


def test_bad_config() -> None:
    check_bad_config(EfficientNet_Lite)


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2, masked=True)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
