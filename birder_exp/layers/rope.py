"""2D rotary position embeddings (RoPE) for patch tokens, Birder's variants.

Three table styles:
- ``default``: per-axis frequency bands, the (y, x) or (x, y) angles pairwise interleaved (timm / EVA style),
  with optional grid offset and a pre-training grid size that positions are rescaled to;
- ``axial``: x angles then y angles, pairwise interleaved (needs the ``interleaved`` rotation);
- ``centered_separate``: patch centres mapped to [-1, 1] and angles ``2*pi*coord*band`` (DINOv3 style), with
  optional shift / jitter / rescale augmentation of the coordinates while training (``standard`` rotation).

A table is ``concat(sin, cos)`` along the last dim, shape (H*W, 2 * head_dim), so a single tensor can be passed
through blocks and gathered per token for masked encoding.
"""

import math
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import Optional

import torch
from torch import nn

RoPEStyleType = Literal["default", "axial", "centered_separate"]
RoPERotationType = Literal["standard", "interleaved"]

ROPE_STYLES = ("default", "axial", "centered_separate")
ROPE_ROTATION_TYPES = ("standard", "interleaved")
GRID_INDEXINGS = ("ij", "xy")


def _frequency_bands(dim: int, temperature: float, device: Optional[torch.device] = None) -> torch.Tensor:
    """dim // 4 inverse frequencies ``temperature ** (-i / (dim // 4))``: each spatial axis gets half the pairs."""

    if dim % 4 != 0:
        raise ValueError(f"RoPE dim must be divisible by 4 (two axes, sin/cos pairs), got {dim}")

    num_bands = dim // 4
    exponent = torch.arange(0, num_bands, 1, device=device) / num_bands
    return 1.0 / (temperature**exponent)


def _default_tables_from_coords(coords: torch.Tensor, bands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # coords (..., 2) -> angles (..., 2, B) -> (..., 2B), every angle repeated for its (even, odd) pair
    angles = (coords.unsqueeze(-1) * bands).flatten(-2)
    return (angles.sin().repeat_interleave(2, dim=-1), angles.cos().repeat_interleave(2, dim=-1))


def _default_tables(
    dim: int,
    temperature: float,
    grid_size: tuple[int, int],
    grid_indexing: str,
    grid_offset: int,
    pt_grid_size: Optional[tuple[int, int]],
    device: Optional[torch.device] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    bands = _frequency_bands(dim, temperature, device=device)
    if grid_indexing == "xy":
        # meshgrid(indexing="xy") swaps the first two axes, so feed it (W, H) to keep a row-major token order
        grid_size = (grid_size[1], grid_size[0])
        if pt_grid_size is not None:
            pt_grid_size = (pt_grid_size[1], pt_grid_size[0])

    if pt_grid_size is None:
        pt_grid_size = grid_size

    axes = [(torch.arange(n, device=device) + grid_offset) / n * pt for n, pt in zip(grid_size, pt_grid_size)]
    coords = torch.stack(torch.meshgrid(axes, indexing=grid_indexing), dim=-1).reshape(-1, 2)
    return _default_tables_from_coords(coords, bands)


def _axial_tables_from_coords(
    coords_x: torch.Tensor, coords_y: torch.Tensor, bands: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.concat((coords_x.unsqueeze(-1) * bands, coords_y.unsqueeze(-1) * bands), dim=-1)
    return (angles.sin().repeat_interleave(2, dim=-1), angles.cos().repeat_interleave(2, dim=-1))


def _axial_tables(
    dim: int, temperature: float, grid_size: tuple[int, int], device: Optional[torch.device] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    bands = _frequency_bands(dim, temperature, device=device)
    H, W = grid_size
    rows = torch.arange(H, device=device, dtype=bands.dtype).view(H, 1).expand(H, W).reshape(-1)
    cols = torch.arange(W, device=device, dtype=bands.dtype).view(1, W).expand(H, W).reshape(-1)
    return _axial_tables_from_coords(cols, rows, bands)


def _centered_separate_tables_from_coords(
    coords: torch.Tensor,
    bands: torch.Tensor,
    shift_coords: Optional[float] = None,
    jitter_coords: Optional[float] = None,
    rescale_coords: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """coords (..., 2) in [0, 1] -> [-1, 1], optionally augmented, then ``2*pi*coord*band`` angles."""

    coords = 2.0 * coords - 1.0
    if shift_coords is not None:
        # Each axis shifted by its own uniform draw in [-shift, shift]
        coords += torch.empty(2, device=coords.device, dtype=bands.dtype).uniform_(-shift_coords, shift_coords)
    if jitter_coords is not None:
        # Each axis scaled by its own log-uniform draw in [1 / jitter, jitter]
        log_jitter = math.log(jitter_coords)
        coords *= torch.empty(2, device=coords.device, dtype=bands.dtype).uniform_(-log_jitter, log_jitter).exp()
    if rescale_coords is not None:
        # Both axes scaled by one log-uniform draw in [1 / rescale, rescale]
        log_rescale = math.log(rescale_coords)
        coords *= torch.empty(1, device=coords.device, dtype=bands.dtype).uniform_(-log_rescale, log_rescale).exp()

    angles = ((2.0 * math.pi * coords.unsqueeze(-1)) * bands).flatten(-2).tile(2)
    return (angles.sin(), angles.cos())


def _centered_separate_tables(
    dim: int,
    temperature: float,
    grid_size: tuple[int, int],
    shift_coords: Optional[float] = None,
    jitter_coords: Optional[float] = None,
    rescale_coords: Optional[float] = None,
    device: Optional[torch.device] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    bands = _frequency_bands(dim, temperature, device=device)
    H, W = grid_size
    centres_h = (torch.arange(H, device=device, dtype=bands.dtype) + 0.5) / H
    centres_w = (torch.arange(W, device=device, dtype=bands.dtype) + 0.5) / W
    coords = torch.stack(torch.meshgrid(centres_h, centres_w, indexing="ij"), dim=-1).reshape(-1, 2)
    return _centered_separate_tables_from_coords(
        coords, bands, shift_coords=shift_coords, jitter_coords=jitter_coords, rescale_coords=rescale_coords
    )


def validate_rope_config(
    rope_style: str,
    rope_rot_type: str,
    grid_indexing: str,
    grid_offset: int,
    pt_grid_size: Optional[tuple[int, int]],
    shift_coords: Optional[float] = None,
    jitter_coords: Optional[float] = None,
    rescale_coords: Optional[float] = None,
) -> None:
    """Reject option combinations a style cannot honour, one line naming the option and what is valid."""

    if rope_style not in ROPE_STYLES:
        raise ValueError(f"Unknown rope_style '{rope_style}' (valid: {', '.join(ROPE_STYLES)})")
    if rope_rot_type not in ROPE_ROTATION_TYPES:
        raise ValueError(f"Unknown rope_rot_type '{rope_rot_type}' (valid: {', '.join(ROPE_ROTATION_TYPES)})")
    if grid_indexing not in GRID_INDEXINGS:
        raise ValueError(f"Unknown rope_grid_indexing '{grid_indexing}' (valid: {', '.join(GRID_INDEXINGS)})")

    for option, value, minimum in (
        ("shift_coords", shift_coords, 0.0),
        ("jitter_coords", jitter_coords, 1.0),
        ("rescale_coords", rescale_coords, 1.0),
    ):
        if value is None:
            continue
        if rope_style != "centered_separate":
            raise ValueError(f"{option} is only supported for rope_style='centered_separate', got '{rope_style}'")
        if value < minimum:
            raise ValueError(f"{option} must be greater than or equal to {minimum:g}, got {value}")

    if rope_style == "default":
        return

    if grid_indexing != "ij":
        raise ValueError(f"rope_style='{rope_style}' requires rope_grid_indexing='ij', got '{grid_indexing}'")
    if grid_offset != 0:
        raise ValueError(f"rope_style='{rope_style}' requires rope_grid_offset=0, got {grid_offset}")
    if pt_grid_size is not None:
        raise ValueError(f"rope_style='{rope_style}' does not support pt_grid_size (got {pt_grid_size}), use None")

    required_rot_type = "interleaved" if rope_style == "axial" else "standard"
    if rope_rot_type != required_rot_type:
        raise ValueError(
            f"rope_style='{rope_style}' requires rope_rot_type='{required_rot_type}', got '{rope_rot_type}'"
        )


def build_rotary_pos_embed(
    dim: int,
    temperature: float,
    grid_size: tuple[int, int],
    grid_indexing: str,
    grid_offset: int,
    pt_grid_size: Optional[tuple[int, int]],
    rope_style: str = "default",
    shift_coords: Optional[float] = None,
    jitter_coords: Optional[float] = None,
    rescale_coords: Optional[float] = None,
    device: Optional[torch.device] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos) tables of shape (H*W, dim) for a row-major patch grid."""

    if rope_style == "default":
        return _default_tables(dim, temperature, grid_size, grid_indexing, grid_offset, pt_grid_size, device=device)
    if rope_style == "axial":
        return _axial_tables(dim, temperature, grid_size, device=device)
    if rope_style == "centered_separate":
        return _centered_separate_tables(
            dim,
            temperature,
            grid_size,
            shift_coords=shift_coords,
            jitter_coords=jitter_coords,
            rescale_coords=rescale_coords,
            device=device,
        )

    raise ValueError(f"Unknown rope_style '{rope_style}' (valid: {', '.join(ROPE_STYLES)})")


def build_batched_rotary_pos_embed(
    dim: int,
    temperature: float,
    grid_sizes: torch.Tensor,
    max_seq_len: int,
    grid_indexing: str,
    grid_offset: int,
    pt_grid_size: Optional[tuple[int, int]],
    rope_style: str = "default",
    shift_coords: Optional[float] = None,
    jitter_coords: Optional[float] = None,
    rescale_coords: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos) tables of shape (B, max_seq_len, dim), one grid (h, w) per sample, for packed variable sizes."""

    bands = _frequency_bands(dim, temperature, device=grid_sizes.device)
    token_idx = torch.arange(max_seq_len, device=grid_sizes.device).unsqueeze(0)
    grid_h = grid_sizes[:, 0].unsqueeze(1)
    grid_w = grid_sizes[:, 1].unsqueeze(1)
    row = torch.div(token_idx, grid_w, rounding_mode="floor")
    col = torch.remainder(token_idx, grid_w)

    if rope_style == "default":
        pt_h: torch.Tensor | int = grid_h if pt_grid_size is None else pt_grid_size[0]
        pt_w: torch.Tensor | int = grid_w if pt_grid_size is None else pt_grid_size[1]
        coords_y = (row + grid_offset) / grid_h * pt_h
        coords_x = (col + grid_offset) / grid_w * pt_w
        if grid_indexing == "ij":
            coords = torch.stack((coords_y, coords_x), dim=-1)
        elif grid_indexing == "xy":
            coords = torch.stack((coords_x, coords_y), dim=-1)
        else:
            raise ValueError(f"Unknown rope_grid_indexing '{grid_indexing}' (valid: {', '.join(GRID_INDEXINGS)})")

        return _default_tables_from_coords(coords, bands)

    if rope_style == "axial":
        return _axial_tables_from_coords(col.to(dtype=bands.dtype), row.to(dtype=bands.dtype), bands)

    if rope_style == "centered_separate":
        coords_y = (row.to(dtype=bands.dtype) + 0.5) / grid_h
        coords_x = (col.to(dtype=bands.dtype) + 0.5) / grid_w
        return _centered_separate_tables_from_coords(
            torch.stack((coords_y, coords_x), dim=-1),
            bands,
            shift_coords=shift_coords,
            jitter_coords=jitter_coords,
            rescale_coords=rescale_coords,
        )

    raise ValueError(f"Unknown rope_style '{rope_style}' (valid: {', '.join(ROPE_STYLES)})")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim (GPT-NeoX / "standard" pairing)."""

    x1, x2 = x.chunk(2, dim=-1)
    return torch.concat((-x2, x1), dim=-1)


def rotate_half_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): pairs are adjacent channels (GPT-J / EVA pairing)."""

    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.size())


def _apply_with(rotate: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    sin_emb, cos_emb = embed.tensor_split(2, dim=-1)
    if cos_emb.ndim == 3:
        # Per-sample tables (B, N, D) against (B, heads, N, D)
        return x * cos_emb.unsqueeze(1).expand_as(x) + rotate(x) * sin_emb.unsqueeze(1).expand_as(x)

    return x * cos_emb + rotate(x) * sin_emb


def apply_rotary_pos_embed(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    return _apply_with(rotate_half, x, embed)


def apply_interleaved_rotary_pos_embed(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    return _apply_with(rotate_half_interleaved, x, embed)


def get_rope_apply_fn(rope_rot_type: RoPERotationType | str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if rope_rot_type == "standard":
        return apply_rotary_pos_embed
    if rope_rot_type == "interleaved":
        return apply_interleaved_rotary_pos_embed

    raise ValueError(f"Unknown rope_rot_type '{rope_rot_type}' (valid: {', '.join(ROPE_ROTATION_TYPES)})")


class RoPE(nn.Module):
    """Holds the table of the current grid as a non-persistent buffer, ``pos_embed`` (H*W, 2 * dim).

    The table is rebuilt by ``compute_buffers`` (construction, and after a meta-device build), by
    ``set_grid_size`` (resolution change) and, per call, for another grid or when coordinate augmentation is on
    while training.
    """

    pos_embed: torch.Tensor

    def __init__(
        self,
        dim: int,
        temperature: float,
        grid_size: tuple[int, int],
        grid_indexing: Literal["ij", "xy"],
        grid_offset: int,
        pt_grid_size: Optional[tuple[int, int]] = None,
        rope_style: RoPEStyleType = "default",
        rope_rot_type: RoPERotationType = "standard",
        shift_coords: Optional[float] = None,
        jitter_coords: Optional[float] = None,
        rescale_coords: Optional[float] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if pt_grid_size is not None:
            pt_grid_size = (pt_grid_size[0], pt_grid_size[1])  # A JSON config gives a list

        validate_rope_config(
            rope_style,
            rope_rot_type,
            grid_indexing,
            grid_offset,
            pt_grid_size,
            shift_coords,
            jitter_coords,
            rescale_coords,
        )
        self.apply_fn = get_rope_apply_fn(rope_rot_type)
        self.dim = dim
        self.temperature = temperature
        self.grid_size = (grid_size[0], grid_size[1])
        self.grid_indexing = grid_indexing
        self.grid_offset = grid_offset
        self.pt_grid_size = pt_grid_size
        self.rope_style = rope_style
        self.rope_rot_type = rope_rot_type
        self.shift_coords = shift_coords
        self.jitter_coords = jitter_coords
        self.rescale_coords = rescale_coords

        self.compute_buffers(device)

    def compute_buffers(self, device: Optional[torch.device] = None) -> None:
        """(Re)build ``pos_embed`` for the current grid, keeping the buffer's dtype if it already has one."""

        table = self._build_pos_embed(self.grid_size, device=device)
        if "pos_embed" in self._buffers and self._buffers["pos_embed"] is not None:
            self.pos_embed = table.to(dtype=self._buffers["pos_embed"].dtype)
        else:
            self.register_buffer("pos_embed", table, persistent=False)

    @property
    def _augmenting(self) -> bool:
        return self.training is True and (
            self.shift_coords is not None or self.jitter_coords is not None or self.rescale_coords is not None
        )

    def _table_options(self, augment: bool) -> dict[str, Any]:
        """Keyword arguments of the table builders: the grid options, plus coordinate augmentation if asked."""

        options: dict[str, Any] = {
            "grid_indexing": self.grid_indexing,
            "grid_offset": self.grid_offset,
            "pt_grid_size": self.pt_grid_size,
            "rope_style": self.rope_style,
        }
        if augment is True:
            options["shift_coords"] = self.shift_coords
            options["jitter_coords"] = self.jitter_coords
            options["rescale_coords"] = self.rescale_coords

        return options

    def _build_pos_embed(
        self, grid_size: tuple[int, int], augment: bool = False, device: Optional[torch.device] = None
    ) -> torch.Tensor:
        sin_emb, cos_emb = build_rotary_pos_embed(
            self.dim, self.temperature, grid_size=grid_size, device=device, **self._table_options(augment)
        )
        return torch.concat((sin_emb, cos_emb), dim=-1)

    def get_pos_embed(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """The table for ``grid_size``: the cached buffer when it fits and no augmentation applies."""

        augment = self._augmenting
        if augment is False and tuple(grid_size) == self.grid_size:
            return self.pos_embed

        table = self._build_pos_embed(grid_size, augment=augment, device=self.pos_embed.device)
        return table.to(dtype=self.pos_embed.dtype)

    def get_batched_pos_embed(self, grid_sizes: torch.Tensor, max_seq_len: int) -> torch.Tensor:
        sin_emb, cos_emb = build_batched_rotary_pos_embed(
            self.dim, self.temperature, grid_sizes, max_seq_len, **self._table_options(self._augmenting)
        )
        return torch.concat((sin_emb, cos_emb), dim=-1).to(dtype=self.pos_embed.dtype)

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        grid_size = (grid_size[0], grid_size[1])
        if grid_size == self.grid_size:
            return

        self.grid_size = grid_size
        self.compute_buffers(self.pos_embed.device)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos_embed = self.get_pos_embed(self.grid_size)
        return (self.apply_fn(q, pos_embed), self.apply_fn(k, pos_embed))
