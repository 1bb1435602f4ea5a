"""EfficientNet v1: Birder-exact on its fixtures, every name builds, and the behaviour Birder's class offers."""

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
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.efficientnet_v1 import EfficientNet_v1

FIXTURES = fixture_names("efficientnet_v1")
TINY_CONFIG = {"width_coefficient": 0.25, "depth_coefficient": 0.34, "dropout_rate": 0.1}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    """Widths 8/16/32/80, stages of 1/1/1/4/3 blocks."""

    registry.register_model_config("efficientnet_v1_test_tiny", EfficientNet_v1, config=TINY_CONFIG)
    return "efficientnet_v1_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("efficientnet_v1", "EfficientNet_v1", 8, pretrain_encoder=True)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("efficientnet_v1") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=True)


def test_layout_and_drop_path(tiny: str) -> None:
    net = build(tiny)
    assert list(dict(net.body.named_children())) == ["stage0", "stage1", "stage2", "stage3", "stage4"]
    assert [len(stage) for stage in net.body] == [1, 1, 1, 4, 3]
    assert net.return_channels == [8, 16, 32, 80]
    assert (net.stem_width, net.feature_dim, net.embedding_size) == (8, 80, 320)
    blocks = [block for stage in net.body for block in stage]
    # Drop path rises linearly from 0 to 0.2 (default), endpoint excluded
    torch.testing.assert_close(
        torch.tensor([block.stochastic_depth.p for block in blocks]), torch.arange(10) * 0.02, rtol=0, atol=1e-6
    )
    assert all(isinstance(block.block[-2], SqueezeExcitation) for block in blocks)
    # SE squeezes to a quarter of the block input, not of the expanded width
    se = net.body.stage3[0].block[2]
    assert (se.fc1.in_channels, se.fc1.out_channels) == (96, 4)
    assert net.features[-1].p == 0.1

    custom = registry.net_factory(tiny, 10, config={"drop_path_rate": 0.0})
    assert all(block.stochastic_depth.p == 0.0 for stage in custom.body for block in stage)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(EfficientNet_v1, "efficientnet_v1_test_custom", TINY_CONFIG, 320)


def test_bad_config() -> None:
    check_bad_config(EfficientNet_v1)


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2, checkpoint_segments=4, masked=True)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
