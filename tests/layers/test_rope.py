import math

import pytest
import torch
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from birder_exp.layers.rope import RoPE
from birder_exp.layers.rope import apply_interleaved_rotary_pos_embed
from birder_exp.layers.rope import apply_rotary_pos_embed
from birder_exp.layers.rope import build_batched_rotary_pos_embed
from birder_exp.layers.rope import build_rotary_pos_embed
from birder_exp.layers.rope import get_rope_apply_fn
from birder_exp.layers.rope import rotate_half
from birder_exp.layers.rope import rotate_half_interleaved
from birder_exp.layers.rope import validate_rope_config

# (style, rotation) pairs each style accepts
STYLES = [
    ("default", "standard"),
    ("default", "interleaved"),
    ("axial", "interleaved"),
    ("centered_separate", "standard"),
]


def _table(style: str, grid: tuple[int, int], dim: int = 16, temperature: float = 100.0, **kw: object) -> torch.Tensor:
    sin, cos = build_rotary_pos_embed(
        dim,
        temperature,
        grid,
        kw.pop("grid_indexing", "ij"),  # type: ignore[arg-type]
        kw.pop("grid_offset", 0),  # type: ignore[arg-type]
        kw.pop("pt_grid_size", None),  # type: ignore[arg-type]
        rope_style=style,
        **kw,  # type: ignore[arg-type]
    )
    return torch.concat((sin, cos), dim=-1)


@pytest.mark.parametrize(("style", "rot"), STYLES)
def test_table_shape_and_unit_circle(style: str, rot: str) -> None:
    table = _table(style, (3, 5), dim=32)
    assert table.shape == (15, 64)
    sin, cos = table.tensor_split(2, dim=-1)
    torch.testing.assert_close(sin.square() + cos.square(), torch.ones(15, 32))


def test_default_table_values() -> None:
    # dim 8 -> 2 bands (1, 1/sqrt(T)); token (r, c) gets angles [r*b0, r*b1, c*b0, c*b1], each repeated twice
    sin, cos = build_rotary_pos_embed(8, 100.0, (2, 3), "ij", 0, None)
    bands = [1.0, 0.1]
    for token in range(6):
        r, c = divmod(token, 3)
        angles = [r * bands[0], r * bands[1], c * bands[0], c * bands[1]]
        expected = torch.tensor([a for a in angles for _ in range(2)])
        torch.testing.assert_close(sin[token], expected.sin())
        torch.testing.assert_close(cos[token], expected.cos())


def test_default_xy_swaps_axis_halves_and_offset_shifts() -> None:
    ij = _table("default", (3, 4), dim=16)
    xy = _table("default", (3, 4), dim=16, grid_indexing="xy")
    # Each of sin / cos is [y-bands | x-bands] (ij) or [x-bands | y-bands] (xy), 8 channels per axis
    for part in range(2):
        block = slice(part * 16, part * 16 + 16)
        torch.testing.assert_close(xy[:, block][:, :8], ij[:, block][:, 8:])
        torch.testing.assert_close(xy[:, block][:, 8:], ij[:, block][:, :8])

    # An offset of 1 on a (3, 4) grid moves every token one row and one column: token (r, c) of the offset
    # table is token (r + 1, c + 1) of a larger table
    shifted = _table("default", (3, 4), dim=16, grid_offset=1)
    larger = _table("default", (4, 5), dim=16)
    for r in range(3):
        for c in range(4):
            torch.testing.assert_close(shifted[r * 4 + c], larger[(r + 1) * 5 + (c + 1)])


def test_pt_grid_size_rescales_positions() -> None:
    same = _table("default", (4, 4), dim=16, pt_grid_size=(4, 4))
    torch.testing.assert_close(same, _table("default", (4, 4), dim=16))

    # An (8, 8) grid mapped onto a (4, 4) pre-training grid: token (2r, 2c) sits at position (r, c)
    rescaled = _table("default", (8, 8), dim=16, pt_grid_size=(4, 4))
    base = _table("default", (4, 4), dim=16)
    for r in range(4):
        for c in range(4):
            torch.testing.assert_close(rescaled[(2 * r) * 8 + 2 * c], base[r * 4 + c])


def test_axial_table_is_x_then_y() -> None:
    sin, _ = build_rotary_pos_embed(8, 100.0, (2, 3), "ij", 0, None, rope_style="axial")
    for token in range(6):
        r, c = divmod(token, 3)
        angles = [c * 1.0, c * 0.1, r * 1.0, r * 0.1]
        torch.testing.assert_close(sin[token], torch.tensor([a for a in angles for _ in range(2)]).sin())


def test_centered_separate_is_symmetric_about_the_centre() -> None:
    sin, cos = build_rotary_pos_embed(16, 100.0, (4, 6), "ij", 0, None, rope_style="centered_separate")
    for token in range(24):
        r, c = divmod(token, 6)
        mirror = (3 - r) * 6 + (5 - c)
        torch.testing.assert_close(cos[token], cos[mirror])
        torch.testing.assert_close(sin[token], -sin[mirror])

    # First token: coords (-1 + 1/H, -1 + 1/W), angle 2*pi*coord*band, [y | x] bands tiled twice
    y, x = -1 + 1 / 4, -1 + 1 / 6
    bands = torch.tensor([1.0, 100.0**-0.25, 100.0**-0.5, 100.0**-0.75])
    expected = (2 * math.pi * torch.concat((y * bands, x * bands))).tile(2)
    torch.testing.assert_close(sin[0], expected.sin())


@pytest.mark.parametrize("style", ["default", "axial", "centered_separate"])
def test_temperature_changes_only_the_frequencies(style: str) -> None:
    low = _table(style, (3, 3), dim=16, temperature=100.0)
    high = _table(style, (3, 3), dim=16, temperature=10000.0)
    assert not torch.allclose(low, high)
    # The first band has frequency 1 whatever the temperature
    torch.testing.assert_close(low[:, 0], high[:, 0])


def test_default_table_with_standard_rotation_formula() -> None:
    # Birder's plain rope_vit configs mix channel i with i + D/2 under angles laid out pairwise: not a rotation,
    # but the formula checkpoints were trained with, kept exactly
    table = _table("default", (2, 2), dim=8)
    sin, cos = table.tensor_split(2, dim=-1)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    expected = x * cos + torch.concat((-x[:, 4:], x[:, :4]), dim=-1) * sin
    torch.testing.assert_close(apply_rotary_pos_embed(x, table), expected)


def test_rotate_half_variants() -> None:
    x = torch.arange(8.0)
    torch.testing.assert_close(rotate_half(x), torch.tensor([-4.0, -5, -6, -7, 0, 1, 2, 3]))
    torch.testing.assert_close(rotate_half_interleaved(x), torch.tensor([-1.0, 0, -3, 2, -5, 4, -7, 6]))


# Styles whose table layout pairs the same angle on the two channels the rotation mixes: a true rotation
PAIRED = [("default", "interleaved"), ("axial", "interleaved"), ("centered_separate", "standard")]


@pytest.mark.parametrize(("style", "rot"), PAIRED)
def test_rotation_keeps_norms(style: str, rot: str) -> None:
    table = _table(style, (3, 4), dim=32)
    q = torch.randn(2, 3, 12, 32, generator=torch.Generator().manual_seed(0))
    rotated = get_rope_apply_fn(rot)(q, table)  # type: ignore[arg-type]
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))


@settings(max_examples=25, deadline=None)
@given(
    rot=st.sampled_from(["standard", "interleaved"]),
    p=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    q_pos=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    shift=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_default_rope_attention_depends_on_relative_position_only(
    rot: str, p: tuple[int, int], q_pos: tuple[int, int], shift: tuple[int, int]
) -> None:
    grid = (8, 8)
    table = _table("default", grid, dim=16)
    if rot == "interleaved":
        # The interleaved rotation pairs adjacent channels, which the default table already duplicates pairwise
        apply = apply_interleaved_rotary_pos_embed
    else:
        # The standard rotation pairs channel i with i + D/2: lay the angles out as [a, a] halves
        sin, cos = table.tensor_split(2, dim=-1)
        table = torch.concat((sin[:, ::2].tile(2), cos[:, ::2].tile(2)), dim=-1)
        apply = apply_rotary_pos_embed

    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)

    def score(a: tuple[int, int], b: tuple[int, int]) -> float:
        ia, ib = a[0] * grid[1] + a[1], b[0] * grid[1] + b[1]
        return float(apply(q, table[ia]) @ apply(k, table[ib]))

    moved_p = (p[0] + shift[0], p[1] + shift[1])
    moved_q = (q_pos[0] + shift[0], q_pos[1] + shift[1])
    assert score(p, q_pos) == pytest.approx(score(moved_p, moved_q), abs=1e-4)


@pytest.mark.parametrize(("style", "rot"), STYLES)
def test_batched_tables_match_per_sample_tables(style: str, rot: str) -> None:
    grids = torch.tensor([[3, 5], [4, 4], [2, 7]])
    sin, cos = build_batched_rotary_pos_embed(16, 100.0, grids, 16, "ij", 0, None, rope_style=style)
    assert sin.shape == cos.shape == (3, 16, 16)
    for i, (h, w) in enumerate(grids.tolist()):
        ref_sin, ref_cos = build_rotary_pos_embed(16, 100.0, (h, w), "ij", 0, None, rope_style=style)
        torch.testing.assert_close(sin[i, : h * w], ref_sin)
        torch.testing.assert_close(cos[i, : h * w], ref_cos)

    # Per-sample tables broadcast over the heads of a (B, heads, N, D) tensor
    x = torch.randn(3, 2, 16, 16)
    out = get_rope_apply_fn(rot)(x, torch.concat((sin, cos), dim=-1))  # type: ignore[arg-type]
    assert out.shape == x.shape


def test_batched_default_options_match() -> None:
    grids = torch.tensor([[3, 4], [2, 2]])
    sin, _ = build_batched_rotary_pos_embed(16, 10000.0, grids, 12, "xy", 1, (6, 6))
    ref_sin, _ = build_rotary_pos_embed(16, 10000.0, (3, 4), "xy", 1, (6, 6))
    torch.testing.assert_close(sin[0], ref_sin)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rope_style": "spiral"}, "Unknown rope_style 'spiral'"),
        ({"rope_rot_type": "sideways"}, "Unknown rope_rot_type 'sideways'"),
        ({"grid_indexing": "ji"}, "Unknown rope_grid_indexing 'ji'"),
        ({"shift_coords": 0.1}, "shift_coords is only supported for rope_style='centered_separate'"),
        ({"rope_style": "centered_separate", "shift_coords": -0.1}, "shift_coords must be greater than or equal"),
        ({"rope_style": "centered_separate", "jitter_coords": 0.5}, "jitter_coords must be greater than or equal"),
        ({"rope_style": "centered_separate", "rescale_coords": 0.9}, "rescale_coords must be greater than or equal"),
        ({"rope_style": "axial", "rope_rot_type": "interleaved", "grid_indexing": "xy"}, "requires rope_grid_indexing"),
        ({"rope_style": "axial", "rope_rot_type": "interleaved", "grid_offset": 1}, "requires rope_grid_offset=0"),
        ({"rope_style": "axial", "rope_rot_type": "interleaved", "pt_grid_size": (4, 4)}, "does not support pt_grid"),
        ({"rope_style": "axial"}, "rope_style='axial' requires rope_rot_type='interleaved'"),
        ({"rope_style": "centered_separate", "rope_rot_type": "interleaved"}, "requires rope_rot_type='standard'"),
    ],
)
def test_invalid_configs_fail_with_one_clear_line(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "rope_style": "default",
        "rope_rot_type": "standard",
        "grid_indexing": "ij",
        "grid_offset": 0,
        "pt_grid_size": None,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        validate_rope_config(**args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        RoPE(16, 100.0, (4, 4), **args)  # type: ignore[arg-type]


def test_apply_fn_and_dim_errors() -> None:
    with pytest.raises(ValueError, match="Unknown rope_rot_type 'other'"):
        get_rope_apply_fn("other")
    with pytest.raises(ValueError, match="divisible by 4"):
        build_rotary_pos_embed(10, 100.0, (2, 2), "ij", 0, None)


def test_rope_module_buffer_is_non_persistent_and_recomputable() -> None:
    rope = RoPE(16, 100.0, (3, 4), "ij", 0)
    assert rope.state_dict() == {}
    assert "pos_embed" in dict(rope.named_buffers())
    torch.testing.assert_close(rope.pos_embed, _table("default", (3, 4)))

    with torch.device("meta"):
        meta_rope = RoPE(16, 100.0, (3, 4), "ij", 0)
    assert meta_rope.pos_embed.is_meta
    meta_rope.to_empty(device="cpu")
    meta_rope.compute_buffers(torch.device("cpu"))
    torch.testing.assert_close(meta_rope.pos_embed, rope.pos_embed)

    half = RoPE(16, 100.0, (3, 4), "ij", 0).to(torch.bfloat16)
    half.compute_buffers(torch.device("cpu"))
    assert half.pos_embed.dtype == torch.bfloat16


def test_rope_module_grids_and_forward() -> None:
    rope = RoPE(16, 100.0, (3, 4), "xy", 1, rope_rot_type="interleaved").eval()
    assert rope.get_pos_embed((3, 4)) is rope.pos_embed
    torch.testing.assert_close(rope.get_pos_embed((5, 2)), _table("default", (5, 2), grid_indexing="xy", grid_offset=1))

    rope.set_grid_size((6, 6))
    assert rope.grid_size == (6, 6)
    torch.testing.assert_close(rope.pos_embed, _table("default", (6, 6), grid_indexing="xy", grid_offset=1))

    q, k = torch.randn(2, 2, 36, 16), torch.randn(2, 2, 36, 16)
    rq, rk = rope(q, k)
    torch.testing.assert_close(rq, apply_interleaved_rotary_pos_embed(q, rope.pos_embed))
    torch.testing.assert_close(rk, apply_interleaved_rotary_pos_embed(k, rope.pos_embed))


def test_coordinate_augmentation_only_while_training() -> None:
    rope = RoPE(16, 100.0, (4, 4), "ij", 0, rope_style="centered_separate", shift_coords=0.2, jitter_coords=1.5)
    rope.eval()
    assert rope.get_pos_embed((4, 4)) is rope.pos_embed

    rope.train()
    first = rope.get_pos_embed((4, 4))
    second = rope.get_pos_embed((4, 4))
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, rope.pos_embed)
    assert first.shape == rope.pos_embed.shape

    plain = RoPE(16, 100.0, (4, 4), "ij", 0, rope_style="centered_separate").train()
    assert plain.get_pos_embed((4, 4)) is plain.pos_embed
