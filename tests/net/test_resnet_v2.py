"""ResNet v2 (pre-activation, with SE option): Birder-exact on its fixture, every name builds, and the behaviour
Birder's class offers."""

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

from birder_exp.model_registry import registry
from birder_exp.net.resnet_v2 import ResNet_v2

FIXTURES = fixture_names("resnet_v2")
TINY_CONFIG = {"bottle_neck": True, "filter_list": [16, 32, 32, 48, 64], "units": [1, 2, 1, 1]}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("resnet_v2_test_tiny", ResNet_v2, config={**TINY_CONFIG, "squeeze_excitation": True})
    return "resnet_v2_test_tiny"


def test_catalogue() -> None:
    names = check_family_catalogue("resnet_v2", "ResNet_v2", 14, pretrain_encoder=True)
    assert sum(name.startswith("se_") for name in names) == 7


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("resnet_v2") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=True)


def test_pre_activation_units(tiny: str) -> None:
    """A projecting unit's shortcut takes the pre-activated input; an identity unit's takes the raw input."""

    net = build(tiny).eval()
    projecting, identity = net.body.stage2[0], net.body.stage2[1]
    assert projecting.use_projection is True and identity.use_projection is False
    x = torch.randn(2, 32, 8, 8)
    with torch.inference_mode():
        pre = torch.relu(projecting.block1[0](x))
        torch.testing.assert_close(projecting(x), projecting.se(projecting.block1[2:](pre)) + projecting.block2(pre))
        y = projecting(x)
        torch.testing.assert_close(identity(y), identity.se(identity.block1(y)) + y)
    # The stem is a bare convolution; the head normalises and activates the last unit's output
    assert isinstance(net.stem[0], nn.Conv2d) and isinstance(net.features[0], nn.BatchNorm2d)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(ResNet_v2, "resnet_v2_test_custom", {**TINY_CONFIG, "bottle_neck": False}, 64)


def test_bad_config() -> None:
    check_bad_config(ResNet_v2)
    with pytest.raises(ValueError, match="filter_list needs one entry more than units"):
        ResNet_v2(3, 10, config={"bottle_neck": False, "filter_list": [8, 16], "units": [1, 1]})


def test_input_channels_not_adjustable(tiny: str) -> None:
    with pytest.raises(RuntimeError, match="does not support input channel adjustment"):
        build(tiny).adjust_input_channels(1)


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2, masked=True)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
