"""SHViT: Birder-exact on its fixture, every name built, single-head partial attention, reparameterization, the
three-stage detector interface, Birder's fixed head."""

from typing import Any

import pytest
import torch
from cnn_checks import SIZE
from cnn_checks import build
from cnn_checks import check_adjust_size
from cnn_checks import check_bad_config
from cnn_checks import check_meta_build
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_meta_builds_without_fixture
from family_checks import meta_build
from staged_checks import check_freeze
from staged_checks import check_freeze_stages
from staged_checks import check_no_grad_checkpointing

from birder_exp.model_registry import registry
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.shvit import SHSA
from birder_exp.net.shvit import NormLinear
from birder_exp.net.shvit import SHViT

FAMILY = "shvit"
TINY: dict[str, Any] = {"embed_dims": [16, 24, 32], "depths": [1, 1, 2], "partial_dims": [8, 8, 8]}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("shvit_test_tiny", SHViT, config=TINY)
    return "shvit_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, SHViT, 4)
    assert not issubclass(SHViT, PreTrainEncoder)


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 3
    net = meta_build("shvit_s4")
    assert [len(stage.blocks) for stage in net.body.children()] == [4, 7, 6]
    assert isinstance(net.body.stage1.blocks[0].mixer, torch.nn.Identity)  # No attention in the first stage
    assert net.body.stage3.blocks[0].mixer.m.partial_dim == 96
    assert net.return_stages == ["stage1", "stage2", "stage3"] and net.max_stride == 64


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    registry.register_model_config("shvit_test_custom", SHViT, config=TINY)
    net = registry.net_factory("shvit_test_custom", 5, size=SIZE).eval()
    assert net.embedding_size == 32 and isinstance(net.classifier, NormLinear)
    with torch.inference_mode():
        assert net(image()).shape == (2, 5)


def test_bad_config() -> None:
    check_bad_config(SHViT)
    with pytest.raises(ValueError, match=r"SHViT: embed_dims, depths and partial_dims need 3 entries each"):
        SHViT(3, 10, config={**TINY, "depths": [1, 1]})
    with pytest.raises(ValueError, match=r"SHViT: head_bias customization is not supported"):
        SHViT(3, 10, config={**TINY, "head_bias": False})
    with pytest.raises(ValueError, match=r"SHViT: mlp_head customization is not supported"):
        SHViT(3, 10, config={**TINY, "mlp_head": True})


def test_single_head_attention_leaves_the_other_channels_to_the_projection() -> None:
    torch.manual_seed(0)
    attn = SHSA(12, qk_dim=4, partial_dim=4, reparameterized=False).eval()
    x = torch.randn(2, 12, 3, 5)
    with torch.inference_mode():
        x1 = attn.pre_norm(x[:, :4])
        q, k, v = torch.split(attn.qkv(x1), [4, 4, 4], dim=1)
        weights = (q.flatten(2).transpose(1, 2) @ k.flatten(2) * 0.5).softmax(dim=-1)  # One head, scale 4 ** -0.5
        mixed = (v.flatten(2) @ weights.transpose(1, 2)).reshape(2, 4, 3, 5)
        torch.testing.assert_close(attn(x), attn.proj(torch.concat([mixed, x[:, 4:]], dim=1)))


def test_reparameterize(small: str) -> None:
    net = build(small).eval()
    x = image()
    with torch.inference_mode():
        before = net(x)
    net.reparameterize_model()
    assert net.reparameterized is True
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)) for m in net.modules())
    assert "body.stage1.blocks.0.conv.m.weight" in net.state_dict()  # Residual conv folded into one kernel
    with torch.inference_mode():
        torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-5)
    net.reparameterize_model()  # A second call changes nothing


def test_detection_features(small: str) -> None:
    net = build(small).eval()
    x = image()
    with torch.inference_mode():
        stages = net.detection_features(x)
        assert list(stages) == ["stage1", "stage2", "stage3"]
        assert [tuple(s.shape) for s in stages.values()] == [(2, 16, 4, 6), (2, 24, 2, 3), (2, 32, 1, 2)]
        torch.testing.assert_close(stages["stage3"], net.forward_features(x))


def test_classifier_and_embedding(small: str) -> None:
    net = build(small).eval()
    x = image()
    with torch.inference_mode():
        embedding = net.embedding(x)
        torch.testing.assert_close(net.classify(embedding), net(x))
    net.reset_classifier(7)
    assert isinstance(net.classifier, NormLinear) and net.classifier.li.out_features == 7
    net.reset_classifier(0)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), embedding)


def test_adjust_size(small: str) -> None:
    check_adjust_size(small)


def test_freeze(small: str) -> None:
    check_freeze(small)
    check_freeze_stages(small, 2)
    check_no_grad_checkpointing(small)


def test_meta_build(small: str) -> None:
    check_meta_build(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
