"""EfficientFormer v2: Birder-exact on its fixture, every name built, where attention sits, the distillation head,
attention biases tied to the input size (non-persistent index tables), the detector interface."""

from typing import Any

import pytest
import torch
from cnn_checks import SIZE
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_classifier_and_embedding
from cnn_checks import check_detection_features
from cnn_checks import check_meta_build
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_meta_builds_without_fixture
from family_checks import meta_build
from staged_checks import check_freeze_stages
from staged_checks import check_no_grad_checkpointing

from birder_exp.layers.attention_bias import relative_position_index
from birder_exp.model_registry import registry
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.efficientformer_v2 import Attention2d
from birder_exp.net.efficientformer_v2 import Attention2dDownsample
from birder_exp.net.efficientformer_v2 import EfficientFormer_v2

FAMILY = "efficientformer_v2"
TINY: dict[str, Any] = {
    "embed_dims": [8, 16, 24, 32],
    "depths": [1, 1, 2, 2],
    "num_vit": 1,
    "mlp_ratios": [[2], [2], [2, 3], [3, 2]],
    "drop_path_rate": 0.0,
}


@pytest.fixture
def small(clean_registry: None) -> str:
    # The attention biases are laid out for the configured size: the checks' images are SIZE
    sized = type("EfficientFormerV2AtTestSize", (EfficientFormer_v2,), {"default_size": SIZE})
    registry.register_model_config("efficientformer_v2_test_tiny", sized, config=TINY)
    return "efficientformer_v2_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, EfficientFormer_v2, 4)
    assert not issubclass(EfficientFormer_v2, PreTrainEncoder)


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 3
    large = meta_build("efficientformer_v2_l")
    attends = [[block.token_mixer is not None for block in stage.blocks] for stage in large.body.children()]
    assert attends == [[False] * 5, [False] * 5, [False] * 9 + [True] * 6, [False] * 4 + [True] * 6]
    assert large.body.stage3.blocks[-1].token_mixer.resolution == (7, 7)  # 14x14 attended at stride 2
    assert isinstance(large.body.stage4.downsample_block.attn, Attention2dDownsample)
    assert large.body.stage3.downsample_block.attn is None
    # Non-persistent index tables are real numbers after a meta build and recompute_buffers
    large.to_empty(device="cpu")
    large.recompute_buffers(torch.device("cpu"))
    assert torch.equal(large.body.stage4.blocks[-1].token_mixer.attention_bias_idxs, relative_position_index((7, 7)))


def test_custom_variant(small: str) -> None:
    net = registry.net_factory(small, 5).eval()
    assert net.size == SIZE and net.embedding_size == 32
    with torch.inference_mode():
        assert net(image()).shape == (2, 5)
    other = registry.net_factory(small, 5, config={"head_bias": False})
    assert other.classifier.bias is None and other.dist_classifier.bias is None
    assert "head_bias" not in registry.get_spec(small).config


def test_bad_config() -> None:
    check_bad_config(EfficientFormer_v2)
    with pytest.raises(ValueError, match=r"EfficientFormer_v2: embed_dims, depths and mlp_ratios need one entry"):
        EfficientFormer_v2(3, 10, config={**TINY, "depths": [1, 1, 2]})
    with pytest.raises(ValueError, match=r"EfficientFormer_v2: mlp_ratios needs one ratio per block .* \[1, 1, 2, 1\]"):
        EfficientFormer_v2(3, 10, config={**TINY, "mlp_ratios": [[2], [2], [2, 3], [3]]})
    with pytest.raises(ValueError, match=r"EfficientFormer_v2: dynamic size is not supported"):
        EfficientFormer_v2(3, 10, config=TINY).set_dynamic_size()


def test_downsampling_attention_index() -> None:
    attn = Attention2dDownsample(8, key_dim=4, out_dim=16, num_heads=2, attn_ratio=2.0, resolution=(4, 6))
    assert "attention_bias_idxs" not in attn.state_dict()
    idx = attn.attention_bias_idxs
    assert idx.shape == (2 * 3, 4 * 6)
    # Query 1 sits at (0, 2) of the full grid; key (3, 5) is |3| * 6 + |3| away
    assert idx[1, 3 * 6 + 5].item() == 3 * 6 + 3
    x = torch.randn(2, 8, 4, 6)
    assert attn(x).shape == (2, 16, 2, 3)


def test_strided_attention_keeps_the_map_size() -> None:
    attn = Attention2d(8, key_dim=4, num_heads=2, attn_ratio=2.0, resolution=(4, 6), stride=2)
    assert attn.resolution == (2, 3) and attn.attention_biases.shape == (2, 6)
    assert attn(torch.randn(1, 8, 4, 6)).shape == (1, 8, 4, 6)


def test_distillation_head(small: str) -> None:
    net = build(small).eval()
    x = image()
    with torch.inference_mode():
        embedding = net.embedding(x)
        torch.testing.assert_close(net(x), (net.classifier(embedding) + net.dist_classifier(embedding)) / 2)

    net.train()
    net.set_distillation_output()
    with torch.no_grad():
        assert net(x).shape == (2, 2, 10)


def test_adjust_size(small: str) -> None:
    net = build(small).eval()
    net.adjust_size((96, 128))
    assert net.size == (96, 128)
    assert net.body.stage3.blocks[-1].token_mixer.resolution == (3, 4)
    assert net.body.stage4.downsample_block.attn.resolution == (6, 8)
    assert net.body.stage4.blocks[-1].token_mixer.attention_biases.shape == (8, 12)
    with torch.inference_mode():
        assert net(image(size=(96, 128))).shape == (2, 10)


def test_detection_features(small: str) -> None:
    check_detection_features(small)


def test_classifier_and_embedding(small: str) -> None:
    check_classifier_and_embedding(small)


def test_freeze(small: str) -> None:
    net = build(small)
    net.freeze(freeze_classifier=False)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if n.startswith(("classifier.", "dist_classifier."))}
    check_freeze_stages(small, 2)
    check_no_grad_checkpointing(small)


def test_meta_build(small: str) -> None:
    check_meta_build(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
