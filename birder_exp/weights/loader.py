"""``load_pretrained_model`` and ``load_model``: a verified file in, a ready network out.

The fast path builds the network on the meta device (no memory, no init kernels), takes the checkpoint's
tensors as the network's own (``load_state_dict(assign=True)`` over a memory-mapped ``.pt`` or a safetensors
file read tensor by tensor), then recomputes the non-persistent buffers. Each tensor is moved and cast once,
to its final device and dtype, before it is assigned. A network that cannot be built or completed on the meta
device falls back to the ordinary build + ``load_state_dict``, which gives the same result more slowly.
"""

import logging
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import NamedTuple
from typing import Optional

import torch
from torch import nn

from birder_exp.model_registry import Task
from birder_exp.model_registry import registry
from birder_exp.net.base import recompute_non_persistent_buffers
from birder_exp.net.meta import meta_build
from birder_exp.weights.checkpoint import Checkpoint
from birder_exp.weights.checkpoint import read_checkpoint
from birder_exp.weights.download import LOADABLE_FORMATS
from birder_exp.weights.download import download_weights
from birder_exp.weights.errors import CheckpointFormatError
from birder_exp.weights.errors import CheckpointMismatchError
from birder_exp.weights.errors import NetworkUnavailableError
from birder_exp.weights.errors import UnsupportedFormatError

logger = logging.getLogger(__name__)

_SHOWN = 3  # Keys named in a mismatch message


class ModelInfo(NamedTuple):
    class_to_idx: dict[str, int]
    signature: dict[str, Any]
    rgb_stats: dict[str, Any]
    custom_config: Optional[dict[str, Any]] = None


class DetectionModelInfo(NamedTuple):
    class_to_idx: dict[str, int]
    signature: dict[str, Any]
    rgb_stats: dict[str, Any]
    custom_config: Optional[dict[str, Any]] = None
    backbone_custom_config: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class BuildPlan:
    """Everything needed to construct the network a checkpoint belongs to."""

    task: Task
    network: str
    signature: Mapping[str, Any]
    backbone: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    backbone_config: Optional[dict[str, Any]] = None
    reparameterized: bool = False
    backbone_reparameterized: bool = False

    @property
    def input_channels(self) -> int:
        return int(self.signature["inputs"][0]["data_shape"][1])

    @property
    def size(self) -> tuple[int, int]:
        shape = self.signature["inputs"][0]["data_shape"]
        return (int(shape[2]), int(shape[3]))

    @property
    def num_labels(self) -> int:
        if "num_labels" in self.signature:
            return int(self.signature["num_labels"])

        return int(self.signature["outputs"][0]["data_shape"][1])

    def build(self) -> nn.Module:
        channels = self.input_channels
        size = self.size
        net: Any
        if self.task == Task.IMAGE_CLASSIFICATION:
            net = registry.net_factory(self.network, self.num_labels, channels, config=self.config, size=size)
        else:
            assert self.backbone is not None
            num_classes = self.num_labels if self.task == Task.OBJECT_DETECTION else 0
            inner: Any = registry.net_factory(
                self.backbone, num_classes, channels, config=self.backbone_config, size=size
            )
            if self.backbone_reparameterized is True:
                inner.reparameterize_model()

            if self.task == Task.OBJECT_DETECTION:
                net = registry.detection_net_factory(self.network, num_classes, inner, config=self.config, size=size)
            elif self.task == Task.MASKED_IMAGE_MODELING:
                net = registry.mim_net_factory(self.network, inner, config=self.config, size=size)
            else:
                net = registry.ssl_net_factory(self.network, inner, config=self.config, size=size)

        if self.reparameterized is True:
            net.reparameterize_model()

        return net  # type: ignore[no-any-return]


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown}, ..." if len(keys) > _SHOWN else shown


def check_fit(net: nn.Module, state: Mapping[str, torch.Tensor], label: str, network: str) -> None:
    """One line when the checkpoint's tensors do not match the network's state_dict (keys or shapes)."""

    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape)]
    if len(missing) == 0 and len(unexpected) == 0 and len(shapes) == 0:
        return

    parts = [
        f"{len(missing)} missing keys" + (f" ({_named(missing)})" if missing else ""),
        f"{len(unexpected)} unexpected keys" + (f" ({_named(unexpected)})" if unexpected else ""),
    ]
    if len(shapes) > 0:
        shown = [
            f"{k}: {list(state[k].shape)} in the checkpoint, {list(expected[k].shape)} in the network"
            for k in shapes[:_SHOWN]
        ]
        parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shown)}{', ...' if len(shapes) > _SHOWN else ''})")

    raise CheckpointMismatchError(f"{label} does not fit network '{network}': {', '.join(parts)}")


def _prepared(
    net: nn.Module, state: Mapping[str, torch.Tensor], device: torch.device, dtype: Optional[torch.dtype]
) -> dict[str, torch.Tensor]:
    """Each tensor on its final device, in the dtype the network (or ``dtype``) wants: one move, one cast."""

    reference = net.state_dict()
    out = {}
    for key, tensor in state.items():
        want = reference[key].dtype
        if dtype is not None and reference[key].is_floating_point():
            want = dtype
        if tensor.dtype != want or tensor.device != device:
            tensor = tensor.to(device=device, dtype=want)
        out[key] = tensor

    return out


def _meta_leftovers(net: nn.Module) -> list[str]:
    named = list(net.named_parameters()) + list(net.named_buffers())
    return [name for name, tensor in named if tensor.is_meta]


def materialise(
    build: Callable[[], nn.Module],
    state: Mapping[str, torch.Tensor],
    *,
    label: str,
    network: str,
    device: torch.device,
    dtype: Optional[torch.dtype] = None,
    fast: bool = True,
) -> nn.Module:
    """Build the network and give it ``state``; the fast path first, the ordinary one when it cannot apply."""

    if fast is True:
        try:
            with meta_build():  # Initialisers skipped: the loaded weights replace every tensor (assign=True)
                net: Optional[nn.Module] = build()
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
            logger.info(f"{network} cannot be built on the meta device ({exc}); building it on the CPU")
            net = None

        if net is not None:
            check_fit(net, state, label, network)
            net.load_state_dict(_prepared(net, state, device, dtype), strict=True, assign=True)
            recompute_non_persistent_buffers(net, device)
            leftovers = _meta_leftovers(net)
            if len(leftovers) == 0:
                return net

            logger.warning(
                f"{network}: '{leftovers[0]}' stayed on the meta device (its module needs a compute_buffers "
                "method); loading it the slow way"
            )

    net = build()
    check_fit(net, state, label, network)
    net.load_state_dict(state, strict=True)
    return net.to(device=device, dtype=dtype)


def _merged(loaded: Optional[dict[str, Any]], override: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    merged = {**(loaded or {}), **(override or {})}
    return merged if len(merged) > 0 else None


def _finish(
    net: nn.Module,
    *,
    device: torch.device,
    dtype: Optional[torch.dtype],
    new_size: Optional[tuple[int, int]],
    inference: bool,
) -> nn.Module:
    if new_size is not None:
        net.adjust_size((int(new_size[0]), int(new_size[1])))  # type: ignore[operator]

    net.to(device=device, dtype=dtype)  # No-op for tensors already placed; casts recomputed buffers
    if inference is True:
        net.requires_grad_(False)
        net.eval()

    return net


def _load(
    ckpt: Checkpoint,
    *,
    label: str,
    task: Optional[str],
    network: Optional[str],
    backbone: Optional[str],
    config: Optional[dict[str, Any]],
    backbone_config: Optional[dict[str, Any]],
    reparameterized: bool,
    backbone_reparameterized: bool,
    device: torch.device,
    dtype: Optional[torch.dtype],
    new_size: Optional[tuple[int, int]],
    inference: bool,
    fast: bool,
) -> tuple[nn.Module, ModelInfo | DetectionModelInfo]:
    meta = ckpt.meta
    task_name = task or meta.task or str(Task.IMAGE_CLASSIFICATION)
    try:
        task_value = Task(task_name)
    except ValueError:
        raise CheckpointFormatError(f"{label}: unknown task '{task_name}' (valid: {', '.join(Task)})") from None

    network = network or meta.network
    if network is None:
        raise CheckpointFormatError(f"{label} does not record its network; pass network=<architecture name>")
    backbone = backbone or meta.backbone
    if task_value != Task.IMAGE_CLASSIFICATION and backbone is None:
        kind = "backbone" if task_value in (Task.OBJECT_DETECTION, Task.SELF_SUPERVISED_LEARNING) else "encoder"
        raise CheckpointFormatError(f"{label} is a {task_value} checkpoint that does not record its {kind}; pass it")

    plan = BuildPlan(
        task=task_value,
        network=network,
        signature=meta.signature,
        backbone=backbone,
        config=_merged(meta.config, config),
        backbone_config=_merged(meta.backbone_config, backbone_config),
        reparameterized=reparameterized,
        backbone_reparameterized=backbone_reparameterized,
    )

    # With new_size, adjust_size runs on the CPU at the checkpoint's dtype (as in Birder), then moves once
    early = new_size is None
    net = materialise(
        plan.build,
        ckpt.state,
        label=label,
        network=network,
        device=device if early else torch.device("cpu"),
        dtype=dtype if early else None,
        fast=fast,
    )
    net = _finish(net, device=device, dtype=dtype, new_size=new_size, inference=inference)

    if task_value == Task.OBJECT_DETECTION:
        return (
            net,
            DetectionModelInfo(meta.class_to_idx, meta.signature, meta.rgb_stats, meta.config, meta.backbone_config),
        )

    return (net, ModelInfo(meta.class_to_idx, meta.signature, meta.rgb_stats, meta.config))


def _device(device: Optional[torch.device | str]) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def load_model(
    path: str | Path,
    network: Optional[str] = None,
    *,
    file_format: Optional[str] = None,
    backbone: Optional[str] = None,
    config: Optional[dict[str, Any]] = None,
    backbone_config: Optional[dict[str, Any]] = None,
    task: Optional[str] = None,
    reparameterized: bool = False,
    backbone_reparameterized: bool = False,
    inference: bool = False,
    device: Optional[torch.device | str] = None,
    dtype: Optional[torch.dtype] = None,
    new_size: Optional[tuple[int, int]] = None,
    fast: bool = True,
) -> tuple[nn.Module, ModelInfo | DetectionModelInfo]:
    """Load a local Birder-layout checkpoint (``.pt`` or ``.safetensors``).

    ``network`` / ``backbone`` default to the names the file records (files written by ``save_checkpoint``);
    Birder's own files do not record them, so pass them. ``config`` / ``backbone_config`` update the configs
    stored in the file. ``fast=False`` forces the ordinary build + ``load_state_dict`` (same result, slower).
    """

    target = _device(device)
    early = new_size is None
    ckpt = read_checkpoint(path, file_format, device=target if early else torch.device("cpu"))
    return _load(
        ckpt,
        label=f"checkpoint {ckpt.path}",
        task=task,
        network=network,
        backbone=backbone,
        config=config,
        backbone_config=backbone_config,
        reparameterized=reparameterized,
        backbone_reparameterized=backbone_reparameterized,
        device=target,
        dtype=dtype,
        new_size=new_size,
        inference=inference,
        fast=fast,
    )


def load_pretrained_model(
    weights: str,
    *,
    dst: Optional[str | Path] = None,
    file_format: str = "pt",
    inference: bool = False,
    device: Optional[torch.device | str] = None,
    dtype: Optional[torch.dtype] = None,
    new_size: Optional[tuple[int, int]] = None,
    custom_config: Optional[dict[str, Any]] = None,
    progress_bar: bool = True,
) -> tuple[nn.Module, ModelInfo | DetectionModelInfo]:
    """Load a published (or registered) pretrained entry by name, fetching and verifying it once.

    Same meaning as Birder's: ``dst`` is the file to download to / load from (default: the cache),
    ``inference`` gives eval mode with gradients off, ``device`` / ``dtype`` place the result, ``new_size``
    calls ``adjust_size`` after loading, ``custom_config`` updates the network's config. Detection entries
    return a DetectionModelInfo; MIM and SSL entries load as well (Birder refuses them).

    >>> net, model_info = load_pretrained_model("vit_l14_pn_bioclip-v2", inference=True)
    """

    metadata = registry.get_pretrained_metadata(weights)
    missing = registry.missing_networks(weights)
    if len(missing) > 0:
        noun = "network" if len(missing) == 1 else "networks"
        raise NetworkUnavailableError(
            f"pretrained entry '{weights}' needs {noun} {', '.join(repr(m) for m in missing)} that birder_exp "
            "cannot build yet (registry.list_pretrained_models() lists the loadable entries)"
        )
    if file_format not in LOADABLE_FORMATS:
        raise UnsupportedFormatError(
            f"birder_exp loads {' and '.join(LOADABLE_FORMATS)} files, not '{file_format}' "
            f"(entry '{weights}' publishes: {', '.join(metadata['formats'])})"
        )

    path = download_weights(weights, dst=dst, file_format=file_format, progress_bar=progress_bar)

    target = _device(device)
    early = new_size is None
    ckpt = read_checkpoint(path, file_format, device=target if early else torch.device("cpu"))
    net_ref = metadata["net"]
    inner_ref = metadata.get("backbone") or metadata.get("encoder")
    return _load(
        ckpt,
        label=f"pretrained entry '{weights}'",
        task=metadata.get("task"),
        network=net_ref["network"],
        backbone=inner_ref["network"] if inner_ref is not None else None,
        config=custom_config,
        backbone_config=None,
        reparameterized=bool(net_ref.get("reparameterized", False)),
        backbone_reparameterized=bool(inner_ref.get("reparameterized", False)) if inner_ref is not None else False,
        device=target,
        dtype=dtype,
        new_size=new_size,
        inference=inference,
        fast=True,
    )
