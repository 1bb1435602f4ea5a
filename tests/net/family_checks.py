"""Checks for families whose names are only partly covered by fixtures (metaformer, xcit, cait, pvt_v2, ...).

cnn_checks.check_catalogue expects a fixture for every name; here the catalogue table is the list of names, the
fixtures pin the config of the ones they cover, and every other name is built on the meta device.
"""

import copy
import json
from pathlib import Path
from typing import Any

import torch
from cnn_checks import build
from cnn_checks import image
from conformance import check_layout
from conformance import check_outputs
from conformance import fixture_names
from conformance import has_outputs
from conformance import load_fixture
from torch import nn

from birder_exp.model_registry import registry

CATALOGUE = Path(__file__).parents[2] / "birder_exp" / "model_registry" / "catalogue"


def catalogue_names(family: str) -> list[str]:
    with open(CATALOGUE / f"{family}.json", encoding="utf-8") as handle:
        table: dict[str, Any] = json.load(handle)

    return list(table["architectures"])


def check_family_listing(family: str, net_type: type, count: int) -> None:
    """The registry lists exactly the table's names for the family, each of the class, fixtures agreeing."""

    names = catalogue_names(family)
    assert len(names) == count
    listed = [name for name, spec in registry.specs.items() if spec.family == family and spec.builtin]
    assert sorted(listed) == sorted(names)
    assert sorted(registry.list_models(net_type=net_type)) == sorted(names)
    fixtures = fixture_names(family)
    assert len(fixtures) > 0 and set(fixtures) <= set(names)
    for name in fixtures:
        fixture = load_fixture(name)
        spec = registry.get_spec(name)
        assert spec.config == fixture["config"], name
        assert list(spec.default_size) == fixture["default_size"], name
        assert spec.detector_backbone is fixture["is_detector_backbone"], name


def meta_build(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    with torch.device("meta"):
        net = registry.net_factory(name, num_classes, **kwargs)

    assert all(t.device.type == "meta" for t in net.state_dict().values()), name
    return net


def check_meta_builds_without_fixture(family: str) -> list[str]:
    """Every name without a fixture builds on the meta device; returns those names."""

    covered = set(fixture_names(family))
    others = [name for name in catalogue_names(family) if name not in covered]
    for name in others:
        net = meta_build(name)
        assert sum(p.numel() for p in net.parameters()) > 0, name

    return others


def check_token_masked_encoding(net: nn.Module, x: torch.Tensor) -> None:
    """masked_encoding_retention of a class-token transformer: features are the patch tokens as a map."""

    B, _, H, W = x.size()
    grid = (H // net.max_stride, W // net.max_stride)
    cells = grid[0] * grid[1]
    with torch.inference_mode():
        unmasked = net.masked_encoding_retention(x, torch.zeros(B, cells), return_keys="all")
        assert set(unmasked) == {"features", "embedding"}
        tokens = net.forward_features(x)
        patch_map = tokens[:, net.num_special_tokens :].permute(0, 2, 1).reshape(B, -1, *grid)
        torch.testing.assert_close(unmasked["features"], patch_map)
        torch.testing.assert_close(unmasked["embedding"], net.embedding(x))

        mask = torch.zeros(B, cells)
        mask[:, ::2] = 1.0
        masked = net.masked_encoding_retention(x, mask, return_keys="all")
        assert not torch.allclose(masked["features"], unmasked["features"])
        other = torch.randn(x.shape, generator=torch.Generator().manual_seed(99))
        ones = torch.ones(B, cells)
        a = net.masked_encoding_retention(x, ones, return_keys="embedding")["embedding"]
        b = net.masked_encoding_retention(other, ones, return_keys="embedding")["embedding"]
        torch.testing.assert_close(a, b)  # Everything masked: the input no longer matters

        token = torch.randn(1, 1, 1, net.stem_width)
        with_token = net.masked_encoding_retention(x, mask, mask_token=token)["features"]
        assert not torch.allclose(with_token, masked["features"])


def check_map_masked_encoding(net: nn.Module, x: torch.Tensor) -> None:
    """masked_encoding_retention of a convnet on a net with its own init (fill v1 can wash the input out of deep
    BN nets): features equal forward_features unmasked, change when masked, ignore the input when all masked."""

    B, _, H, W = x.size()
    cells = (H // net.max_stride) * (W // net.max_stride)
    with torch.inference_mode():
        unmasked = net.masked_encoding_retention(x, torch.zeros(B, cells), return_keys="all")
        torch.testing.assert_close(unmasked["features"], net.forward_features(x))
        torch.testing.assert_close(unmasked["embedding"], net.embedding(x))

        mask = torch.zeros(B, cells)
        mask[:, ::2] = 1.0
        masked = net.masked_encoding_retention(x, mask)["features"]
        scale = unmasked["features"].abs().mean()
        assert (masked - unmasked["features"]).abs().mean() > 1e-3 * scale

        other = torch.randn(x.shape, generator=torch.Generator().manual_seed(99))
        ones = torch.ones(B, cells)
        a = net.masked_encoding_retention(x, ones)["features"]
        b = net.masked_encoding_retention(other, ones)["features"]
        torch.testing.assert_close(a, b)

        token = torch.randn(1, 1, 1, net.stem_width)
        with_token = net.masked_encoding_retention(x, mask, mask_token=token)["features"]
        assert (with_token - masked).abs().mean() > 1e-3 * scale


def check_birder_exact(name: str) -> None:
    """Outputs against the fixture where it has them, the state_dict layout otherwise."""

    if has_outputs(name) is True:
        check_outputs(name)
    else:
        check_layout(name)


def check_stage_freeze(name: str, frozen_prefixes: tuple[str, ...]) -> None:
    """freeze() keeps only the head trainable; freeze_stages(2) freezes exactly ``frozen_prefixes``."""

    net = build(name)
    net.freeze(freeze_classifier=False)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {
        n for n, _ in net.named_parameters() if n.startswith("classifier.")
    }

    net = build(name)
    net.freeze_stages(2)
    for param_name, param in net.named_parameters():
        assert param.requires_grad is not param_name.startswith(frozen_prefixes), param_name


def check_reparameterize_model(
    net: nn.Module, name: str, x: torch.Tensor, forbidden_parts: tuple[str, ...], rtol: float, atol: float
) -> None:
    """Folding (twice: it must be idempotent) keeps the outputs and drops every training-time branch key; the
    loader's path (meta build, fold, assign-load) then reproduces the folded net."""

    with torch.inference_mode():
        expected = net(x)
    net.reparameterize_model()
    net.reparameterize_model()
    assert not any(part in key for key in net.state_dict() for part in forbidden_parts)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), expected, rtol=rtol, atol=atol)

    state = copy.deepcopy(net.state_dict())
    with torch.device("meta"):
        fresh = registry.net_factory(name, 10)
    fresh.reparameterize_model()
    fresh.load_state_dict(state, assign=True)
    fresh.eval()
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), net(x))


def check_class_token_features(name: str, num_patches: int, dim: int) -> None:
    """Features are [cls, patches]; the embedding is the class token and flattening can drop it."""

    net = build(name).eval()
    x = image()
    with torch.inference_mode():
        features = net.forward_features(x)
        assert features.shape == (2, 1 + num_patches, dim)
        torch.testing.assert_close(net.embedding(x), features[:, 0])
        assert net.flatten_features(features, include_special_tokens=False).shape == (2, num_patches, dim)


def check_head_only_trainable(name: str, head_prefixes: tuple[str, ...]) -> nn.Module:
    """After ``freeze(freeze_classifier=False, unfreeze_features=True)`` only the head parameters train."""

    net = build(name)
    net.freeze(freeze_classifier=False, unfreeze_features=True)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if n.startswith(head_prefixes)}
    return net
