"""PointCLIP-style depth projection and the shapes-3d primitives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpg.data.pointcloud import (
    _VIEW_BASES,
    MIN_BRIGHTNESS,
    VIEW_NAMES,
    default_splat_radius,
    depth_to_rgb,
    foreground_box,
    normalise_cloud,
    project_depth_maps,
)
from vpg.data.shapes.primitives3d import PRIMITIVES_3D, make_point_cloud, random_rotation, sample_surface


def _loop_reference(points: torch.Tensor, image_size: int, radius: int) -> torch.Tensor:
    """Point-by-point z-buffer, written as plainly as possible."""
    pts = normalise_cloud(points.float())
    fill = max(1 - 2 * radius / (image_size - 1), 0.0)
    depth = torch.zeros(len(VIEW_NAMES), image_size, image_size)
    for v, name in enumerate(VIEW_NAMES):
        right, down, towards = (torch.tensor(axis, dtype=torch.float32) for axis in _VIEW_BASES[name])
        for p in pts:
            col = min(
                max(int(np.floor(((p @ right).item() * fill + 1) / 2 * (image_size - 1) + 0.5)), 0),
                image_size - 1,
            )
            row = min(
                max(int(np.floor(((p @ down).item() * fill + 1) / 2 * (image_size - 1) + 0.5)), 0),
                image_size - 1,
            )
            value = MIN_BRIGHTNESS + (1 - MIN_BRIGHTNESS) * min(max(((p @ towards).item() + 1) / 2, 0.0), 1.0)
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    if dy * dy + dx * dx > radius * radius:
                        continue
                    r = min(max(row + dy, 0), image_size - 1)
                    c = min(max(col + dx, 0), image_size - 1)
                    depth[v, r, c] = max(depth[v, r, c].item(), value)
    return depth


def test_vectorised_projection_equals_loop_reference():
    points = torch.from_numpy(np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32))
    for radius in (0, 1, 2):
        depth, foreground = project_depth_maps(points, 24, splat_radius=radius)
        expected = _loop_reference(points, 24, radius)
        assert torch.allclose(depth, expected, atol=1e-6)
        assert torch.equal(foreground, expected > 0)


def test_cube_front_view_is_square_and_values_in_range():
    cube = torch.from_numpy(
        sample_surface("cube", 8192, np.random.default_rng(1)).astype(np.float32)
    )  # dense: solid faces
    depth, foreground = project_depth_maps(cube, 64)
    assert depth.shape == foreground.shape == (6, 64, 64)
    assert depth.dtype == torch.float32 and foreground.dtype == torch.bool
    assert depth.min() >= 0 and depth.max() <= 1
    assert torch.all(depth[foreground] >= MIN_BRIGHTNESS) and torch.all(depth[~foreground] == 0)
    for v in range(6):  # an axis-aligned cube looks like a filled square from every side
        x1, y1, x2, y2 = foreground_box(foreground[v]).tolist()
        w, h = x2 - x1, y2 - y1
        assert 0.9 <= w / h <= 1.1 and w >= 0.8 * 64
        assert foreground[v, int(y1) : int(y2), int(x1) : int(x2)].float().mean() > 0.9
    # from the front the front face (z = +1) is nearest, so most hit pixels are at full brightness
    assert depth[0][foreground[0]].median() > 0.95


def test_nearer_points_are_brighter_and_views_are_oriented():
    points = torch.tensor([[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    depth, _ = project_depth_maps(points, 32, splat_radius=0)
    front = depth[VIEW_NAMES.index("front")]
    left_px, right_px = front[16, 0].item(), front[16, 31].item()  # x = -1 near, x = +1 far
    assert left_px == pytest.approx(1.0) and right_px == pytest.approx(MIN_BRIGHTNESS)
    top = depth[VIEW_NAMES.index("top")]
    assert top[16, 16] == pytest.approx(1.0)  # the y = +1 point faces the top camera
    assert top[31, 0] > 0  # the front (z = +1) point sits at the bottom of the top view


def test_batched_projection_matches_single_and_view_selection():
    clouds = torch.stack(
        [torch.from_numpy(make_point_cloud(k, np.random.default_rng(2), 300)) for k in PRIMITIVES_3D[:3]]
    )
    depth, foreground = project_depth_maps(clouds, 48)
    assert depth.shape == (3, 6, 48, 48)
    for b in range(3):
        single, single_fg = project_depth_maps(clouds[b], 48)
        assert torch.equal(depth[b], single) and torch.equal(foreground[b], single_fg)
    top, _ = project_depth_maps(clouds[0], 48, views=["top"])
    assert torch.equal(top[0], depth[0, VIEW_NAMES.index("top")])
    assert project_depth_maps(clouds[0], 48, views=2)[0].shape == (2, 48, 48)
    with pytest.raises(ValueError):
        project_depth_maps(clouds[0], 48, views=["diagonal"])


def test_depth_to_rgb_and_foreground_box():
    depth = torch.rand(6, 10, 12)
    rgb = depth_to_rgb(depth)
    assert rgb.shape == (6, 3, 10, 12) and torch.equal(rgb[:, 0], depth) and torch.equal(rgb[:, 2], depth)
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2:5, 3:9] = True
    assert foreground_box(mask).tolist() == [3.0, 2.0, 9.0, 5.0]
    assert foreground_box(torch.zeros(4, 4, dtype=torch.bool)).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert [default_splat_radius(s) for s in (32, 96, 224)] == [1, 3, 7]


def test_primitives_are_normalised_deterministic_and_rotations_proper():
    for kind in PRIMITIVES_3D:
        a = make_point_cloud(kind, np.random.default_rng(3), 512)
        b = make_point_cloud(kind, np.random.default_rng(3), 512)
        assert a.shape == (512, 3) and a.dtype == np.float32 and np.array_equal(a, b)
        assert 0.9 < np.linalg.norm(a, axis=1).max() < 1.1
    rotation = random_rotation(np.random.default_rng(4))
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-9) and np.linalg.det(
        rotation
    ) == pytest.approx(1.0)
