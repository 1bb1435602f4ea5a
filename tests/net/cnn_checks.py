"""Behaviour checks shared by the convnet families' tests (convnext_v1, convnext_v2, resnet_v1).

Each check takes a registered architecture name and builds small inputs so the whole set stays fast.
``STANDARD_CHECKS`` are the ones every such family runs on its small names (parametrize a test over them).
"""

import copy
from collections.abc import Callable
from typing import Any
from typing import Optional

import torch
from conformance import check_layout
from conformance import check_outputs
from conformance import fill_v1
from conformance import fixture_names
from conformance import has_outputs
from conformance import load_fixture
from torch import nn

from birder_exp.model_registry import registry

SIZE = (64, 96)  # Non-square, multiple of 32
HIERA_SMALL: dict[str, Any] = {  # A small Hiera (its tests, and HieraDet's loading of Hiera weights)
    "depths": [1, 2, 2, 1],
    "embed_dim": 16,
    "num_heads": 1,
    "abs_win_pos_embed": False,
    "drop_path_rate": 0.0,
}


def build(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    net = registry.net_factory(name, num_classes, **kwargs)
    fill_v1(net)
    return net


def image(batch: int = 2, channels: int = 3, size: tuple[int, int] = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


def check_catalogue(family: str, names: list[str], count: Optional[int] = None) -> None:
    """Every fixture of the family is registered with the reference config and size, and nothing else is.

    ``count``: how many fixtures the family must have (they cover every name of it).
    """

    if count is not None:
        assert len(names) == count
    listed = [name for name, spec in registry.specs.items() if spec.family == family and spec.builtin]
    assert sorted(listed) == sorted(names)
    for name in names:
        fixture = load_fixture(name)
        spec = registry.get_spec(name)
        assert spec.config == fixture["config"], name
        assert list(spec.default_size) == fixture["default_size"], name
        assert spec.detector_backbone is True and spec.pretrain_encoder is True, name
        assert registry.get_default_size(name) == tuple(fixture["default_size"])


def check_listed(family: str, count: int, name: str) -> Any:
    """The family's fixtures (``count`` of them) are listed; ``name``'s spec is a 224 px detector / pre-train
    encoder with a config. Returns that spec for family-specific checks."""

    names = registry.list_models(include_filter=f"{family}_*")
    assert set(fixture_names(family)) <= set(names)
    assert len(fixture_names(family)) == count
    spec = registry.get_spec(name)
    assert spec.config is not None
    assert spec.default_size == (224, 224) and spec.detector_backbone is True and spec.pretrain_encoder is True
    return spec


def check_custom_variant(net_type: type, name: str, config: dict[str, Any], expected_dim: int) -> None:
    registry.register_model_config(name, net_type, config=config)
    assert name in registry.list_models(net_type=net_type)
    net = registry.net_factory(name, 5, size=SIZE).eval()
    assert isinstance(net, net_type)
    assert net.embedding_size == expected_dim
    with torch.inference_mode():
        assert net(image()).shape == (2, 5)

    # A caller's config updates the registered one without mutating it
    other = registry.net_factory(name, 5, config={"head_bias": False})
    assert other.classifier.bias is None
    assert "head_bias" not in registry.get_spec(name).config


def check_detection_features(name: str) -> None:
    net = build(name).eval()
    x = image()
    with torch.inference_mode():
        stages = net.detection_features(x)
        assert list(stages) == ["stage1", "stage2", "stage3", "stage4"]
        for (stage, out), channels, stride in zip(stages.items(), net.return_channels, (4, 8, 16, 32)):
            assert out.shape == (2, channels, SIZE[0] // stride, SIZE[1] // stride), stage
        # The last stage is what forward_features returns
        torch.testing.assert_close(stages["stage4"], net.forward_features(x))

        net.return_stages = ["stage2", "stage4"]
        assert list(net.detection_features(x)) == ["stage2", "stage4"]


def check_masked_encoding(name: str) -> None:
    """masked_encoding_retention as FCMAE / SimMIM call it: mask per 32x32 cell, features and embedding back."""

    net = build(name).eval()
    x = image()
    cells = (SIZE[0] // net.max_stride) * (SIZE[1] // net.max_stride)
    grid = (SIZE[0] // net.max_stride, SIZE[1] // net.max_stride)
    with torch.inference_mode():
        unmasked = net.masked_encoding_retention(x, torch.zeros(2, cells), return_keys="all")
        assert set(unmasked) == {"features", "embedding"}
        assert unmasked["features"].shape == (2, net.feature_dim, *grid)
        assert unmasked["embedding"].shape == (2, net.embedding_size)
        torch.testing.assert_close(unmasked["features"], net.forward_features(x))
        torch.testing.assert_close(unmasked["embedding"], net.embedding(x))

        mask = torch.zeros(2, cells)
        mask[:, ::2] = 1.0
        assert list(net.masked_encoding_retention(x, mask)) == ["features"]
        assert list(net.masked_encoding_retention(x, mask, return_keys="embedding")) == ["embedding"]
        masked = net.masked_encoding_retention(x, mask)["features"]
        assert not torch.allclose(masked, unmasked["features"])

        # Fully masked without a token: the stem output is zeroed, so the input no longer matters
        ones = torch.ones(2, cells)
        a = net.masked_encoding_retention(x, ones)["features"]
        b = net.masked_encoding_retention(image(seed=7), ones)["features"]
        torch.testing.assert_close(a, b)

        # SimMIM passes a channels-last token of the stem width
        token = torch.randn(1, 1, 1, net.stem_width)
        with_token = net.masked_encoding_retention(x, mask, mask_token=token)["features"]
        assert with_token.shape == masked.shape
        assert not torch.allclose(with_token, masked)


def check_adjust_size(name: str) -> None:
    net = build(name).eval()
    net.adjust_size((96, 64))
    assert net.size == (96, 64)
    with torch.inference_mode():
        assert net(image(size=(96, 64))).shape == (2, 10)


def check_adjust_input_channels(name: str) -> None:
    """A one-channel net sums the RGB kernels: its output on g equals the RGB net's on (g, g, g)."""

    net = build(name).eval()
    gray = image(channels=1)
    with torch.inference_mode():
        expected = net(gray.repeat(1, 3, 1, 1))
    net.adjust_input_channels(1)
    assert net.input_channels == 1
    with torch.inference_mode():
        torch.testing.assert_close(net(gray), expected, rtol=1e-4, atol=1e-5)

    net = build(name).eval()
    net.adjust_input_channels(4)
    with torch.inference_mode():
        assert net(image(channels=4)).shape == (2, 10)


def check_classifier_and_embedding(name: str) -> None:
    net = build(name).eval()
    x = image()
    with torch.inference_mode():
        embedding = net.embedding(x)
        assert embedding.shape == (2, net.embedding_size)
        torch.testing.assert_close(net.classify(embedding), net(x))

    net.reset_classifier(7)
    assert net.num_classes == 7
    with torch.inference_mode():
        assert net(x).shape == (2, 7)

    net.reset_classifier(0)
    assert isinstance(net.classifier, nn.Identity)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), embedding)

    mlp = registry.net_factory(name, 3, config={"mlp_head": True})
    assert isinstance(mlp.classifier, nn.Sequential)
    assert mlp.classifier[0].in_features == net.embedding_size


def check_freeze(name: str) -> None:
    net = build(name)
    net.freeze()
    assert not any(p.requires_grad for p in net.parameters())

    net = build(name)
    net.freeze(freeze_classifier=False)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if n.startswith("classifier.")}

    net = build(name)
    net.freeze(freeze_classifier=False, unfreeze_features=True)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    expected = {n for n, _ in net.named_parameters() if n.startswith(("classifier.", "features."))}
    assert trainable == expected

    net = build(name)
    net.freeze_stages(2)
    for param_name, param in net.named_parameters():
        frozen = param_name.startswith(("stem.", "body.stage1.", "body.stage2."))
        assert param.requires_grad is not frozen, param_name


def check_meta_build(name: str) -> None:
    """Meta build + load_state_dict(assign=True) + recompute_buffers == normal build + load."""

    reference = build(name).eval()
    state = copy.deepcopy(reference.state_dict())
    with torch.device("meta"):
        meta_net = registry.net_factory(name, 10)
    meta_net.load_state_dict(state, assign=True)
    meta_net.recompute_buffers()
    meta_net.eval()
    assert all(t.device.type == "cpu" for t in meta_net.state_dict().values())

    normal = registry.net_factory(name, 10)
    normal.load_state_dict(state)
    normal.eval()
    x = image()
    with torch.inference_mode():
        torch.testing.assert_close(meta_net(x), reference(x))
        torch.testing.assert_close(normal(x), reference(x))


def check_bad_config(net_type: type) -> None:
    try:
        net_type(3, 10, config={"unrelated": 1})
    except ValueError as err:
        assert net_type.__name__ in str(err) and "config" in str(err)
    else:
        raise AssertionError(f"{net_type.__name__} accepted a config without its required keys")


def check_scriptable(name: str) -> None:
    net = build(name).eval()
    scripted = torch.jit.script(net)
    x = image()
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), net(x))


def check_grad_checkpointing(net: nn.Module, segments: int | None) -> None:
    """A checkpointed training step gives the plain step's outputs and gradients; switching off restores it."""

    x = image()
    net.train()
    plain = net(x)
    plain.sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()

    net.set_grad_checkpointing(segments=segments)
    assert net.grad_checkpointing is True
    ckpt = net(x)
    ckpt.sum().backward()
    torch.testing.assert_close(ckpt, plain)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)

    net.set_grad_checkpointing(False)
    assert net.grad_checkpointing is False


def check_gray_input(net: nn.Module, gray: torch.Tensor) -> None:
    """``net`` (eval) adjusted to one input channel gives on ``gray`` what it gave on (gray, gray, gray)."""

    rgb_out = net(gray.expand(-1, 3, -1, -1))
    net.adjust_input_channels(1)
    assert net.input_channels == 1 and net._get_input_conv().in_channels == 1
    assert torch.allclose(net(gray), rgb_out, atol=1e-5)


def check_loads_into(net: nn.Module, fresh: nn.Module, x: torch.Tensor) -> None:
    """``fresh`` (built for the size ``net`` was adjusted to) takes ``net``'s weights and gives its output."""

    fresh.load_state_dict(net.state_dict())
    assert torch.allclose(fresh(x), net(x))


def check_reset_classifier(net: nn.Module, x: torch.Tensor) -> None:
    """forward == classify(embedding); a new head changes the output width; no head returns the embedding."""

    assert torch.allclose(net(x), net.classify(net.embedding(x)))
    assert net.embedding(x).shape == (x.size(0), net.embedding_size)
    net.reset_classifier(3)
    assert net(x).shape == (x.size(0), 3)
    net.reset_classifier(0)
    assert torch.equal(net(x), net.embedding(x))


def check_checkpointed_copy(plain: nn.Module, x: torch.Tensor, segments: int | None = None) -> nn.Module:
    """A checkpointed copy of ``plain`` (train mode) matches its training step; returns the copy, still on."""

    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True, segments=segments)
    for net in (plain, ckpt):
        net(x).square().sum().backward()

    assert torch.allclose(plain(x), ckpt(x), atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and q.grad is not None, name
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name

    return ckpt


def check_meta_build_exact(name: str, size: tuple[int, int]) -> None:
    """Meta build + assign-load + recompute_buffers gives exactly the normally built net's output."""

    torch.manual_seed(0)
    reference = registry.net_factory(name, 10, size=size).eval()
    state = copy.deepcopy(reference.state_dict())
    with torch.device("meta"):
        net = registry.net_factory(name, 10, size=size)
    net.load_state_dict(state, assign=True)
    net.recompute_buffers(torch.device("cpu"))
    net.eval()
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
    x = image(size=size)
    assert torch.equal(net(x), reference(x))


def check_fixture(name: str) -> None:
    """Birder-exactness of one fixture: outputs where recorded, the layout only for structure-only giants."""

    if has_outputs(name) is True:
        check_outputs(name)
    else:
        check_layout(name)


STANDARD_CHECKS: dict[str, Callable[[str], None]] = {
    "detection_features": check_detection_features,
    "masked_encoding": check_masked_encoding,
    "adjust_size": check_adjust_size,
    "adjust_input_channels": check_adjust_input_channels,
    "classifier_and_embedding": check_classifier_and_embedding,
    "freeze": check_freeze,
    "meta_build": check_meta_build,
}
