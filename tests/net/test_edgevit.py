"""EdgeViT: Birder-exact on its fixtures, every name built, sparse global attention, the detector interface."""

from typing import Any

import pytest
import torch
from cnn_checks import build
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
from family_checks import check_stage_freeze
from family_checks import meta_build
from staged_checks import check_no_grad_checkpointing

from birder_exp.model_registry import registry
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.edgevit import EdgeViT
from birder_exp.net.edgevit import GlobalSparseAttn

FAMILY = "edgevit"
TINY: dict[str, Any] = {"depth": [1, 1, 2, 1], "embed_dim": [8, 16, 24, 32], "head_dim": 8}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("edgevit_test_tiny", EdgeViT, config=TINY)
    return "edgevit_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, EdgeViT, 3)
    assert not issubclass(EdgeViT, PreTrainEncoder)


def test_every_other_name_builds_on_meta() -> None:
    assert check_meta_builds_without_fixture(FAMILY) == ["edgevit_s"]
    net = meta_build("edgevit_s")
    assert [len(stage.blocks) for stage in net.body.children()] == [1, 2, 5, 3]
    assert isinstance(net.body.stage4.blocks[0].local_agg, torch.nn.Identity)  # sr_ratio 1: global only
    assert net.body.stage3.blocks[0].self_attn.attn.num_heads == 240 // 48
    assert net.classifier.bias is None  # Birder's default: no classifier bias


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(EdgeViT, "edgevit_test_custom", TINY, expected_dim=32)
    assert registry.net_factory("edgevit_test_custom", 5).classifier.bias is None
    assert registry.net_factory("edgevit_test_custom", 5, config={"head_bias": True}).classifier.bias is not None


def test_bad_config() -> None:
    check_bad_config(EdgeViT)
    with pytest.raises(ValueError, match=r"EdgeViT: depth and embed_dim need one entry per stage"):
        EdgeViT(3, 10, config={**TINY, "depth": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"EdgeViT: every embed_dim needs at least one head .* head_dim=12"):
        EdgeViT(3, 10, config={**TINY, "head_dim": 12})


def test_sparse_attention_propagates_back_to_every_pixel() -> None:
    torch.manual_seed(0)
    attn = GlobalSparseAttn(8, num_heads=2, sr_ratio=2).eval()
    x = torch.randn(1, 4 * 6, 8)
    with torch.inference_mode():
        out = attn(x, 4, 6)
        assert out.shape == (1, 24, 8)
        # Only the subsampled pixels (every other row and column) are attended: changing the others does nothing
        grid = x.reshape(1, 4, 6, 8).clone()
        grid[:, 1::2] += 5.0
        grid[:, :, 1::2] += 5.0
        torch.testing.assert_close(attn(grid.reshape(1, 24, 8), 4, 6), out)


def test_detection_features(small: str) -> None:
    check_detection_features(small)


def test_adjust_size(small: str) -> None:
    check_adjust_size(small)


def test_classifier_and_embedding(small: str) -> None:
    check_classifier_and_embedding(small)


def test_freeze(small: str) -> None:
    check_stage_freeze(small, ("body.stage1.", "body.stage2."))  # No stem: each stage embeds its own patches
    net = build(small)
    net.freeze_stages(0)  # The first patch embedding is the stem, as in Birder
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in net.named_parameters() if n.startswith("body.stage1.patch_embed.")}
    check_no_grad_checkpointing(small)


def test_meta_build(small: str) -> None:
    check_meta_build(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
