"""GhostNet v1: Birder-exact on its fixture, every name builds, and the behaviour Birder's class offers."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import check_outputs
from conformance import fixture_names
from ghost_checks import check_ghost_meta_layout
from staged_checks import check_family_catalogue
from staged_checks import check_staged_behaviour
from staged_checks import family_names
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.ghostnet_v1 import GhostModule
from birder_exp.net.ghostnet_v1 import GhostNet_v1

FIXTURES = fixture_names("ghostnet_v1")


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("ghostnet_v1_test_tiny", GhostNet_v1, config={"width": 0.25})
    return "ghostnet_v1_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("ghostnet_v1", "GhostNet_v1", 3, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", family_names("ghostnet_v1"))
def test_meta_layout(name: str) -> None:
    check_ghost_meta_layout(name)


def test_ghost_module() -> None:
    """Half the channels from the primary conv, the rest from the cheap depthwise conv on those; odd widths trim."""

    module = GhostModule(8, 7, kernel_size=(1, 1), stride=(1, 1), ratio=2, dw_size=(3, 3), use_act=True).eval()
    assert module.primary_conv[0].out_channels == 4 and module.cheap_operation[0].groups == 4
    x = torch.randn(2, 8, 5, 5)
    with torch.inference_mode():
        primary = module.primary_conv(x)
        expected = torch.concat([primary, module.cheap_operation(primary)], dim=1)[:, :7]
        torch.testing.assert_close(module(x), expected)


def test_se_blocks(tiny: str) -> None:
    net = build(tiny)
    blocks = [block for stage in net.body for block in stage if hasattr(block, "se")]
    assert [isinstance(block.se, SqueezeExcitation) for block in blocks] == [
        ratio > 0 for ratio in (0, 0, 0, 0.25, 0.25, 0, 0, 0, 0, 0.25, 0.25, 0.25, 0, 0.25, 0, 0.25)
    ]


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(GhostNet_v1, "ghostnet_v1_test_custom", {"width": 0.3}, 1280)


def test_bad_config() -> None:
    check_bad_config(GhostNet_v1)
    with pytest.raises(ValueError, match="width must be a positive multiplier"):
        GhostNet_v1(3, 10, config={"width": 0})


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
