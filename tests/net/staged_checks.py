"""Checks for the staged convnets (birder_exp.net.staged_convnet): RegNet, MobileNet, MNASNet, EfficientNet.

Complements cnn_checks (imported, not changed): catalogue tables where only some names have fixtures, every
name built and run on the meta device, freezing with Birder's ``stage0``, gradient checkpointing.
"""

import json
from pathlib import Path
from typing import Optional

import torch
from cnn_checks import build
from cnn_checks import check_classifier_and_embedding
from cnn_checks import check_detection_features
from cnn_checks import check_meta_build
from cnn_checks import image
from conformance import fixture_names
from conformance import load_fixture

from birder_exp.model_registry import registry
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder

CATALOGUE = Path(__file__).parents[2] / "birder_exp" / "model_registry" / "catalogue"


def family_names(family: str) -> list[str]:
    with open(CATALOGUE / f"{family}.json", encoding="utf-8") as handle:
        return list(json.load(handle)["architectures"])


def check_family_catalogue(family: str, class_name: str, count: int, pretrain_encoder: bool) -> list[str]:
    """The table lists ``count`` names of one class; fixture names carry the fixture's config and size."""

    with open(CATALOGUE / f"{family}.json", encoding="utf-8") as handle:
        table = json.load(handle)
    assert (table["family"], table["class"], table["task"]) == (family, class_name, "image_classification")
    names = list(table["architectures"])
    assert len(names) == count
    listed = [name for name, spec in registry.specs.items() if spec.family == family and spec.builtin]
    assert listed == names

    fixtures = fixture_names(family)
    assert len(fixtures) > 0 and set(fixtures) <= set(names)
    for name in names:
        spec = registry.get_spec(name)
        assert spec.detector_backbone is True and spec.pretrain_encoder is pretrain_encoder, name
        assert registry.get_default_size(name) == (224, 224)
        if name in fixtures:
            fixture = load_fixture(name)
            assert spec.config == fixture["config"], name
            assert list(spec.default_size) == fixture["default_size"], name

    return names


def check_meta_layout(name: str, pretrain_encoder: bool) -> None:
    """Build on the meta device (a forward there is too slow to run per name): the contract's classes, four
    detection stages whose declared channels are what each stage's last layer produces, and a head that takes
    the embedding size."""

    with torch.device("meta"):
        net = registry.net_factory(name, 10)

    assert isinstance(net, DetectorBackbone)
    assert isinstance(net, PreTrainEncoder) is pretrain_encoder
    assert isinstance(net, MaskedTokenRetentionMixin) is pretrain_encoder
    stages = dict(net.body.named_children())
    assert set(net.return_stages) <= set(stages)
    assert len(net.return_channels) == 4
    for stage, channels in zip(net.return_stages, net.return_channels):
        convs = [m for m in stages[stage].modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs[-1].out_channels == channels, (name, stage)

    last_conv = [m for m in net.body.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert last_conv.out_channels == net.feature_dim
    linears = [m for m in net.classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == net.embedding_size and linears[-1].out_features == 10


def check_freeze_stages(name: str, up_to_stage: int) -> None:
    """The stem and the first ``up_to_stage`` children of body freeze (Birder counts a ``stage0``)."""

    net = build(name)
    net.freeze_stages(up_to_stage)
    frozen_stages = tuple(f"body.{stage}." for stage, _ in list(net.body.named_children())[:up_to_stage])
    for param_name, param in net.named_parameters():
        frozen = param_name.startswith(("stem.", *frozen_stages))
        assert param.requires_grad is not frozen, param_name


def check_freeze(name: str) -> None:
    net = build(name)
    net.freeze()
    assert not any(p.requires_grad for p in net.parameters())

    net = build(name)
    net.freeze(freeze_classifier=False, unfreeze_features=True)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if n.startswith(("classifier.", "features."))}


def check_grad_checkpointing(name: str, segments: int) -> None:
    """Checkpointed training gives the plain gradients, whole-block or in segments; disabling restores."""

    net = build(name).train()
    for module in net.modules():  # Dropout and drop path off: the two runs must see the same function
        if isinstance(module, torch.nn.Dropout) or type(module).__name__ == "StochasticDepth":
            module.p = 0.0
    x = image()

    def grads() -> dict[str, torch.Tensor]:
        net.zero_grad()
        net(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    plain = grads()
    for seg in (None, segments):
        net.set_grad_checkpointing(segments=seg)
        assert net.grad_checkpointing is True and len(net._grad_checkpointing_blocks) > 0
        got = grads()
        assert got.keys() == plain.keys()
        for key, value in plain.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6)

    net.set_grad_checkpointing(False)
    assert net.grad_checkpointing is False and net._grad_checkpointing_blocks == ()


def check_no_grad_checkpointing(name: str) -> None:
    net = build(name)
    try:
        net.set_grad_checkpointing()
    except RuntimeError as err:
        assert "does not support gradient checkpointing" in str(err)
    else:
        raise AssertionError(f"{name} accepted gradient checkpointing, which Birder's class does not offer")


def check_masked_encoding_own_init(name: str) -> None:
    """cnn_checks.check_masked_encoding on the family's own initialisation, compared relative to the feature scale.

    After fill v1 (weights of scale 0.02) a deep stack without residuals ends at its BatchNorm shifts whatever the
    input, so masking cannot be seen in float32; with the family's He init (eval statistics untrained) the signal
    shrinks by orders of magnitude but stays input-dependent, so differences are measured against its own scale.
    """

    torch.manual_seed(0)
    net = registry.net_factory(name, 10).eval()
    x = image()
    grid = (x.shape[2] // net.max_stride, x.shape[3] // net.max_stride)
    cells = grid[0] * grid[1]

    def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool((a - b).abs().max() > 1e-3 * b.abs().max())

    with torch.inference_mode():
        unmasked = net.masked_encoding_retention(x, torch.zeros(2, cells), return_keys="all")
        features = unmasked["features"]
        assert features.shape == (2, net.feature_dim, *grid)
        assert torch.equal(features, net.forward_features(x))
        torch.testing.assert_close(unmasked["embedding"], net.embedding(x))

        mask = torch.zeros(2, cells)
        mask[:, ::2] = 1.0
        masked = net.masked_encoding_retention(x, mask)
        assert list(masked) == ["features"]
        assert differs(masked["features"], features)
        token = torch.randn(1, 1, 1, net.stem_width)
        with_token = net.masked_encoding_retention(x, mask, mask_token=token, return_keys="all")
        assert differs(with_token["features"], masked["features"])

        ones = torch.ones(2, cells)
        a = net.masked_encoding_retention(x, ones)["features"]
        b = net.masked_encoding_retention(image(seed=7), ones)["features"]
        assert torch.equal(a, b)  # The stem output is all zeros either way


def check_staged_behaviour(
    name: str, frozen_stages: int, checkpoint_segments: Optional[int] = None, masked: bool = False
) -> None:
    """What every staged convnet offers, on one small name: detection features, classifier and embedding,
    freezing, gradient checkpointing (``checkpoint_segments``) or Birder's refusal of it, masked encoding for the
    pre-trainable families, and the meta-device build."""

    check_detection_features(name)
    check_classifier_and_embedding(name)
    check_freeze(name)
    check_freeze_stages(name, frozen_stages)
    if checkpoint_segments is None:
        check_no_grad_checkpointing(name)
    else:
        check_grad_checkpointing(name, checkpoint_segments)
    if masked is True:
        check_masked_encoding_own_init(name)
    check_meta_build(name)
