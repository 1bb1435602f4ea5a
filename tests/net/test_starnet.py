"""StarNet: Birder-exact on its fixtures, every name built, the star operation, the detector interface."""

from typing import Any

import pytest
import torch
from cnn_checks import check_adjust_size
from cnn_checks import check_bad_config
from cnn_checks import check_classifier_and_embedding
from cnn_checks import check_custom_variant
from cnn_checks import check_detection_features
from cnn_checks import check_meta_build
from cnn_checks import check_scriptable
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_meta_builds_without_fixture
from family_checks import meta_build
from staged_checks import check_freeze_stages
from staged_checks import check_no_grad_checkpointing

from birder_exp.model_registry import registry
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.starnet import StarNet
from birder_exp.net.starnet import StarNetBlock

FAMILY = "starnet"
TINY: dict[str, Any] = {"base_dim": 8, "depths": [1, 1, 2, 1], "mlp_ratio": 2.0, "drop_path_rate": 0.0}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("starnet_test_tiny", StarNet, config=TINY)
    return "starnet_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, StarNet, 7)
    assert not issubclass(StarNet, PreTrainEncoder)  # As in Birder: no masked pre-training interface


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 5
    s4 = meta_build("starnet_s4")
    assert [len(stage.blocks) for stage in s4.body.children()] == [3, 3, 12, 5]
    assert s4.return_channels == [32, 64, 128, 256]
    assert s4.body.stage4.blocks[0].f1.out_channels == 4 * 256


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(StarNet, "starnet_test_custom", TINY, expected_dim=64)


def test_bad_config() -> None:
    check_bad_config(StarNet)
    with pytest.raises(ValueError, match=r"StarNet: needs a positive base_dim .* got base_dim=0"):
        StarNet(3, 10, config={**TINY, "base_dim": 0})


def test_star_operation() -> None:
    torch.manual_seed(0)
    block = StarNetBlock(4, mlp_ratio=2.0, drop_path=0.0).eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.inference_mode():
        y = block.dwconv1(x)
        star = torch.clamp(block.f1(y), 0.0, 6.0) * block.f2(y)
        torch.testing.assert_close(block(x), x + block.dwconv2(block.g(star)))
    assert block.f1.out_channels == 8 and block.dwconv1[0].bias is None  # No bias before a BatchNorm


def test_detection_features(small: str) -> None:
    check_detection_features(small)


def test_adjust_size(small: str) -> None:
    check_adjust_size(small)


def test_classifier_and_embedding(small: str) -> None:
    check_classifier_and_embedding(small)


def test_freeze(small: str) -> None:
    check_freeze_stages(small, 2)
    check_no_grad_checkpointing(small)


def test_meta_build(small: str) -> None:
    check_meta_build(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
