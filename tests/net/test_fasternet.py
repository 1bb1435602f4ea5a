"""FasterNet: Birder-exact on its fixtures, every name built, the partial convolution, the detector interface."""

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
from birder_exp.net.fasternet import FasterNet
from birder_exp.net.fasternet import PartialConv
from birder_exp.net.fasternet import PatchMerging

FAMILY = "fasternet"
TINY: dict[str, Any] = {"depths": [1, 1, 2, 1], "embed_dim": 8, "act_layer_name": "gelu", "drop_path_rate": 0.0}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("fasternet_test_tiny", FasterNet, config=TINY)
    return "fasternet_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, FasterNet, 6)
    assert not issubclass(FasterNet, PreTrainEncoder)  # As in Birder: no masked pre-training interface


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 4
    large = meta_build("fasternet_l")
    assert [len(stage[-1].blocks) for stage in large.body.children()] == [3, 4, 18, 3]
    assert isinstance(large.body.stage2[0], PatchMerging) and len(large.body.stage1) == 1
    assert large.return_channels == [192, 384, 768, 1536] and large.embedding_size == 1280
    assert isinstance(large.features[2], torch.nn.ReLU)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(FasterNet, "fasternet_test_custom", TINY, expected_dim=1280)


def test_bad_config() -> None:
    check_bad_config(FasterNet)
    with pytest.raises(ValueError, match=r"FasterNet: needs a positive embed_dim .* got embed_dim=0"):
        FasterNet(3, 10, config={**TINY, "embed_dim": 0})
    with pytest.raises(ValueError, match=r"unknown activation 'swishy'"):
        FasterNet(3, 10, config={**TINY, "act_layer_name": "swishy"})


def test_partial_conv_leaves_three_quarters_untouched() -> None:
    torch.manual_seed(0)
    conv = PartialConv(8, 4)
    x = torch.randn(2, 8, 6, 6)
    y = conv(x)
    assert torch.equal(y[:, 2:], x[:, 2:])
    torch.testing.assert_close(y[:, :2], conv.partial_conv3(x[:, :2]))


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
