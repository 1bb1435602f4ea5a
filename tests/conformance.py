"""Birder-exactness checks against tests/data/conformance (copied from Birder 0.8.4 reference outputs).

A network is Birder-exact when, built under the same name, its state_dict layout equals the fixture's and,
after fill v1 on the fixture's seeded input, its outputs match within the stated tolerance.
"""

import json
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import torch

from birder_exp.model_registry import registry

FIXTURES = Path(__file__).parent / "data" / "conformance"


@cache
def load_fixture(name: str) -> dict[str, Any]:
    with open(FIXTURES / f"{name}.json", encoding="utf-8") as handle:
        return json.load(handle)  # type: ignore[no-any-return]


@cache
def _family_index() -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for path in sorted(FIXTURES.glob("*.json")):
        index.setdefault(load_fixture(path.stem)["family"], []).append(path.stem)

    return index


def fixture_names(family: str) -> list[str]:
    return list(_family_index().get(family, []))


def fill_v1(net: torch.nn.Module) -> None:
    """The conformance fill: every state_dict entry, sorted keys, one generator per key."""

    state = net.state_dict(keep_vars=True)
    with torch.no_grad():
        for key in sorted(state.keys()):
            tensor = state[key]
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            if not tensor.is_floating_point():
                tensor.zero_()
            elif key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            elif tensor.ndim == 1 and key.endswith("weight"):
                tensor.copy_(1.0 + 0.02 * torch.randn(tensor.shape, generator=g))
            else:
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=g))


def build_filled(name: str, num_classes: int = 10) -> torch.nn.Module:
    """Build on the meta device, materialise, fill v1, recompute non-persistent buffers; eval mode."""

    with torch.device("meta"):
        net = registry.net_factory(name, num_classes)
    net.to_empty(device="cpu")
    fill_v1(net)
    net.recompute_buffers(torch.device("cpu"))  # type: ignore[operator]
    return net.eval()


def state_dict_layout(net: torch.nn.Module) -> list[list[Any]]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in net.state_dict().items()]


def check_layout(name: str) -> None:
    fixture = load_fixture(name)
    with torch.device("meta"):
        net = registry.net_factory(name, 10)
    expected = fixture["state_dict"]
    got = state_dict_layout(net)
    if got != expected:
        exp_keys = [e[0] for e in expected]
        got_keys = [g[0] for g in got]
        missing = [k for k in exp_keys if k not in got_keys]
        unexpected = [k for k in got_keys if k not in exp_keys]
        mismatched = [(e, g) for e, g in zip(expected, got) if e != g][:5]
        raise AssertionError(
            f"{name}: state_dict layout differs: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}, first mismatches {mismatched}"
        )


def _close(name: str, what: str, ours: torch.Tensor, ref: list[float]) -> None:
    ref_t = torch.tensor(ref, dtype=torch.float64)
    ours = ours.detach().to(torch.float64).flatten()
    assert ours.shape == ref_t.shape, f"{name}: {what} shape {tuple(ours.shape)} != {tuple(ref_t.shape)}"
    tol = 1e-4 * max(1.0, ref_t.abs().max().item())
    err = (ours - ref_t).abs().max().item()
    assert err <= tol, f"{name}: {what} max error {err:.3e} > tolerance {tol:.3e}"


def check_outputs(name: str) -> None:
    """Layout, then outputs and detector stages against the fixture (fixtures with outputs only)."""

    check_layout(name)
    fixture = load_fixture(name)
    net = build_filled(name)
    spec = fixture["input"]
    x = torch.randn(spec["shape"], generator=torch.Generator().manual_seed(spec["seed"]))
    outputs = fixture["outputs"]
    with torch.inference_mode():
        if fixture["split_forward"] is True:
            features = net.forward_features(x)  # type: ignore[operator]
            assert list(features.shape) == outputs["forward_features_shape"], f"{name}: forward_features shape"
            embedding = net.embedding_from_features(features)  # type: ignore[operator]
            logits = net.classify(embedding)  # type: ignore[operator]
        else:
            embedding = net.embedding(x)  # type: ignore[operator]
            logits = net(x)

        _close(name, "embedding", embedding[0], outputs["embedding"])
        _close(name, "logits", logits[0], outputs["logits"])

        if fixture.get("is_detector_backbone") is True and fixture.get("detection_features") is not None:
            stages = net.detection_features(x)  # type: ignore[operator]
            for stage, ref in fixture["detection_features"].items():
                assert stage in stages, f"{name}: detection stage {stage} missing (have {list(stages)})"
                out = stages[stage].to(torch.float64)
                assert list(out.shape) == ref["shape"], f"{name}: {stage} shape {list(out.shape)} != {ref['shape']}"
                total = out.sum().item()
                tol = 1e-3 * max(1.0, abs(ref["sum"]))
                assert abs(total - ref["sum"]) <= tol, f"{name}: {stage} sum {total} != {ref['sum']}"


def has_outputs(name: str) -> bool:
    return "outputs" in load_fixture(name)
