"""HGNet v1: Birder-exact on its fixture, every name builds, and the behaviour Birder's class offers."""

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
from birder_exp.net.hgnet_v1 import EseModule
from birder_exp.net.hgnet_v1 import HGNet_v1
from birder_exp.net.hgnet_v1 import LearnableAffineBlock
from birder_exp.net.hgnet_v1 import LightConvBNAct

FIXTURES = fixture_names("hgnet_v1")
TINY_CONFIG = {
    "stem_channels": [8, 8, 16],
    "stage1": [16, 8, 24, 1, False, False, 3, 2],
    "stage2": [24, 8, 32, 2, True, False, 3, 2],
    "stage3": [32, 16, 48, 1, True, True, 5, 2],
    "stage4": [48, 16, 64, 1, True, False, 3, 2],
    "drop_path_rate": 0.1,
}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("hgnet_v1_test_tiny", HGNet_v1, config=TINY_CONFIG)
    return "hgnet_v1_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("hgnet_v1", "HGNet_v1", 3, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("hgnet_v1") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=False)


def test_layout(tiny: str) -> None:
    """ESE after every aggregation, no learnable affines, light blocks where the stage asks, depthwise downsampling,
    residuals on all but a stage's first block, drop path rising linearly over all blocks."""

    net = build(tiny)
    assert not any(isinstance(m, LearnableAffineBlock) for m in net.modules())
    blocks = [block for stage in net.body for block in stage.blocks]
    assert all(isinstance(block.aggregation[1], EseModule) for block in blocks)
    assert [block.residual for block in blocks] == [False, False, True, False, False]
    assert [block.drop_path.p for block in blocks] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert isinstance(net.body.stage3.blocks[0].layers[0], LightConvBNAct)
    assert isinstance(net.body.stage1.downsample, nn.Identity)
    assert net.body.stage2.downsample.conv.groups == 24
    assert isinstance(net.features[3], nn.Identity) and net.embedding_size == 2048


def test_residual_block(tiny: str) -> None:
    block = build(tiny).eval().body.stage2.blocks[1]
    x = torch.randn(2, 32, 4, 4)
    with torch.inference_mode():
        a = block.layers[0](x)
        b = block.layers[1](a)
        torch.testing.assert_close(block(x), block.aggregation(torch.concat([x, a, b], dim=1)) + x)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(HGNet_v1, "hgnet_v1_test_custom", TINY_CONFIG, 2048)


def test_bad_config() -> None:
    check_bad_config(HGNet_v1)
    with pytest.raises(ValueError, match=r"each of stage1\.\.stage4 must be"):
        HGNet_v1(3, 10, config={**TINY_CONFIG, "stage2": [24, 8, 32, 2, True]})


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
