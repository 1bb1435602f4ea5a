"""EfficientFormer v1: Birder-exact on its fixture, every name built, the 4D -> 3D stage layout, distillation head,
attention biases tied to the input size, the detector interface."""

from typing import Any

import pytest
import torch
from cnn_checks import SIZE
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_classifier_and_embedding
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

from birder_exp.model_registry import registry
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.efficientformer_v1 import Attention
from birder_exp.net.efficientformer_v1 import EfficientFormer_v1
from birder_exp.net.efficientformer_v1 import Flat
from birder_exp.net.efficientformer_v1 import MetaBlock1d
from birder_exp.net.efficientformer_v1 import MetaBlock2d

FAMILY = "efficientformer_v1"
TINY: dict[str, Any] = {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 3], "num_vit": 2, "drop_path_rate": 0.0}


@pytest.fixture
def small(clean_registry: None) -> str:
    # The attention biases are laid out for the configured size: the checks' images are SIZE
    sized = type("EfficientFormerV1AtTestSize", (EfficientFormer_v1,), {"default_size": SIZE})
    registry.register_model_config("efficientformer_v1_test_tiny", sized, config=TINY)
    return "efficientformer_v1_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, EfficientFormer_v1, 3)
    assert not issubclass(EfficientFormer_v1, PreTrainEncoder)


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 2
    l7 = meta_build("efficientformer_v1_l7")
    kinds = [type(m) for m in l7.body.stage4.blocks]
    assert kinds == [Flat] + [MetaBlock1d] * 8  # num_vit 8 == depth: every block attends
    l3 = meta_build("efficientformer_v1_l3")
    assert [type(m) for m in l3.body.stage4.blocks] == [MetaBlock2d] * 2 + [Flat] + [MetaBlock1d] * 4
    assert all(type(m) is MetaBlock2d for m in l3.body.stage3.blocks)


def test_custom_variant(small: str) -> None:
    net = registry.net_factory(small, 5).eval()
    assert net.size == SIZE and net.embedding_size == 32
    with torch.inference_mode():
        assert net(image()).shape == (2, 5)
    assert "head_bias" not in registry.get_spec(small).config
    other = registry.net_factory(small, 5, config={"head_bias": False})
    assert other.classifier.bias is None and other.dist_classifier.bias is None


def test_bad_config() -> None:
    check_bad_config(EfficientFormer_v1)
    with pytest.raises(ValueError, match=r"EfficientFormer_v1: embed_dims and depths need one entry per stage"):
        EfficientFormer_v1(3, 10, config={**TINY, "depths": [1, 1]})
    with pytest.raises(ValueError, match=r"EfficientFormer_v1: num_vit counts attention blocks .* got -1"):
        EfficientFormer_v1(3, 10, config={**TINY, "num_vit": -1})
    with pytest.raises(ValueError, match=r"EfficientFormer_v1: dynamic size is not supported"):
        EfficientFormer_v1(3, 10, config=TINY).set_dynamic_size()


def test_attention_bias_by_relative_position() -> None:
    attn = Attention(16, key_dim=4, num_heads=2, attn_ratio=2.0, resolution=(2, 3))
    idx = attn.attention_bias_idxs
    assert idx.shape == (6, 6) and "attention_bias_idxs" in attn.state_dict()  # Persistent, as in Birder
    # (0, 0) -> (1, 2): |dy| = 1, |dx| = 2 -> 1 * 3 + 2
    assert idx[0, 5].item() == 5 and idx[5, 0].item() == 5 and torch.all(idx.diagonal() == 0)


def test_distillation_head(small: str) -> None:
    net = build(small)
    x = image()
    net.eval()
    with torch.inference_mode():
        embedding = net.embedding(x)
        averaged = (net.classifier(embedding) + net.dist_classifier(embedding)) / 2
        torch.testing.assert_close(net(x), averaged)

    net.train()
    net.set_distillation_output()
    with torch.no_grad():
        assert net(x).shape == (2, 2, 10)
    net.set_distillation_output(False)
    with torch.no_grad():
        assert net(x).shape == (2, 10)


def test_adjust_size(small: str) -> None:
    net = build(small).eval()
    before = net.body.stage4.blocks[-1].token_mixer.attention_biases.detach().clone()
    net.adjust_size((96, 128))
    attn = net.body.stage4.blocks[-1].token_mixer
    assert (
        net.size == (96, 128) and attn.attention_biases.shape == (8, 12) and attn.attention_bias_idxs.shape == (12, 12)
    )
    assert before.shape == (8, 6)
    with torch.inference_mode():
        assert net(image(size=(96, 128))).shape == (2, 10)
        stages = net.detection_features(image(size=(96, 128)))
    assert stages["stage4"].shape == (2, 32, 3, 4)


def test_detection_features(small: str) -> None:
    """stage4 ends in tokens: detection folds them back onto the grid (cnn_checks compares with forward_features,
    which here returns the tokens)."""

    net = build(small).eval()
    x = image()
    with torch.inference_mode():
        stages = net.detection_features(x)
        assert list(stages) == ["stage1", "stage2", "stage3", "stage4"]
        for (stage, out), channels, stride in zip(stages.items(), net.return_channels, (4, 8, 16, 32)):
            assert out.shape == (2, channels, SIZE[0] // stride, SIZE[1] // stride), stage
        tokens = net.forward_features(x)
        assert tokens.shape == (2, 6, 32)
        torch.testing.assert_close(stages["stage4"], tokens.transpose(1, 2).reshape(2, 32, 2, 3))
        net.return_stages = ["stage2", "stage4"]
        assert list(net.detection_features(x)) == ["stage2", "stage4"]


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
