"""VoVNet v1: Birder-exact on its fixture, every name builds, and the behaviour Birder's class offers."""

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

from birder_exp.model_registry import registry
from birder_exp.net.vovnet_v1 import VoVNet_v1

FIXTURES = fixture_names("vovnet_v1")
TINY_CONFIG = {
    "stem_channels": [8, 8, 16],
    "stage_conv_channels": [8, 8, 16, 16],
    "stage_out_channels": [16, 24, 32, 48],
    "blocks_per_stage": [1, 1, 2, 1],
    "layers_per_block": 2,
}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("vovnet_v1_test_tiny", VoVNet_v1, config=TINY_CONFIG)
    return "vovnet_v1_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("vovnet_v1", "VoVNet_v1", 3, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("vovnet_v1") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=False)


def test_one_shot_aggregation(tiny: str) -> None:
    """The 1x1 fuses the input and every intermediate output, concatenated once; later stages open with pooling."""

    net = build(tiny).eval()
    block = net.body.stage3.blocks[1]
    assert isinstance(net.body.stage3.blocks[0], torch.nn.MaxPool2d)
    assert not isinstance(net.body.stage1.blocks[0], torch.nn.MaxPool2d)
    x = torch.randn(2, 24, 4, 4)
    with torch.inference_mode():
        first = block.layers[0](x)
        second = block.layers[1](first)
        torch.testing.assert_close(block(x), block.concat_conv(torch.concat((x, first, second), dim=1)))


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(VoVNet_v1, "vovnet_v1_test_custom", TINY_CONFIG, 48)


def test_bad_config() -> None:
    check_bad_config(VoVNet_v1)
    with pytest.raises(ValueError, match="needs 3 stem_channels, 4 stage_conv_channels"):
        VoVNet_v1(3, 10, config={**TINY_CONFIG, "blocks_per_stage": [1, 1, 1]})


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
