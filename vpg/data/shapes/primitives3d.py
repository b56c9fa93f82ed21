"""3D primitives for shapes-3d: surface point clouds, a stand-in for ModelNet40 / ScanObjectNN.

Each cloud is sampled uniformly by area on the surface of a canonical primitive (about unit
size), stretched by a random per-axis (anisotropic) scale in [0.75, 1.25], rotated by a
uniformly random 3D rotation, centred, scaled to unit max norm and jittered with Gaussian
noise (sigma 0.01 by default).
"""

from __future__ import annotations

import math

import numpy as np

PRIMITIVES_3D = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "prism")


def _sample_triangles(triangles: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform surface samples of a triangle mesh; triangles (T, 3, 3) -> points (N, 3)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]  # (T, 3) each
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)  # (T,)
    tri = rng.choice(len(triangles), size=num_points, p=areas / areas.sum())  # (N,)
    u, v = rng.random(num_points), rng.random(num_points)  # (N,) each
    flip = u + v > 1  # fold the unit square onto the triangle
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[tri] + u[:, None] * (b[tri] - a[tri]) + v[:, None] * (c[tri] - a[tri])  # (N, 3)


def _quads_to_triangles(
    quads: list[list[tuple[float, float, float]]],
) -> list[list[tuple[float, float, float]]]:
    return [t for q in quads for t in ([q[0], q[1], q[2]], [q[0], q[2], q[3]])]


def _mesh(kind: str) -> np.ndarray:
    """Triangles (T, 3, 3) of the polyhedral primitives."""
    if kind == "cube":
        quads = []
        for axis in range(3):
            for sign in (-1.0, 1.0):
                corners = []
                for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                    p = [0.0, 0.0, 0.0]
                    p[axis] = sign
                    p[(axis + 1) % 3], p[(axis + 2) % 3] = float(s), float(t)
                    corners.append(tuple(p))
                quads.append(corners)
        return np.array(_quads_to_triangles(quads))
    if kind == "pyramid":  # square base at y = -1, apex at y = +1
        apex = (0.0, 1.0, 0.0)
        base = [(-1.0, -1.0, -1.0), (1.0, -1.0, -1.0), (1.0, -1.0, 1.0), (-1.0, -1.0, 1.0)]
        sides = [[base[k], base[(k + 1) % 4], apex] for k in range(4)]
        return np.array(sides + _quads_to_triangles([base]))
    if kind == "prism":  # equilateral triangle (circumradius 1) extruded along z
        corners = [
            (math.cos(a), math.sin(a))
            for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
        ]
        front = [(x, y, 1.0) for x, y in corners]
        back = [(x, y, -1.0) for x, y in corners]
        sides = [[front[k], front[(k + 1) % 3], back[(k + 1) % 3], back[k]] for k in range(3)]
        return np.array([front, back[::-1]] + _quads_to_triangles(sides))
    raise ValueError(kind)


def sample_surface(kind: str, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """Points (N, 3) uniformly on the surface of a canonical primitive (y is the up axis)."""
    if kind == "sphere":
        p = rng.normal(size=(num_points, 3))  # (N, 3)
        return p / np.linalg.norm(p, axis=1, keepdims=True)
    if kind in ("cylinder", "cone"):
        radius, height = (0.8, 2.0) if kind == "cylinder" else (1.0, 2.0)
        if kind == "cylinder":
            side_area, cap_area = 2 * math.pi * radius * height, 2 * math.pi * radius**2
        else:
            side_area, cap_area = math.pi * radius * math.hypot(radius, height), math.pi * radius**2
        on_side = rng.random(num_points) < side_area / (side_area + cap_area)  # (N,)
        theta = rng.uniform(0, 2 * math.pi, num_points)  # (N,)
        t = rng.random(num_points)  # (N,)
        if kind == "cylinder":
            r = np.where(on_side, radius, radius * np.sqrt(t))  # caps: uniform on a disk
            y = np.where(
                on_side, height * (t - 0.5), np.where(rng.random(num_points) < 0.5, -1.0, 1.0) * height / 2
            )
        else:
            frac = np.sqrt(t)  # distance from the apex; sqrt makes the lateral density uniform
            r = radius * frac
            y = np.where(on_side, height / 2 - height * frac, -height / 2)
        return np.stack([r * np.cos(theta), y, r * np.sin(theta)], axis=1)  # (N, 3)
    if kind == "torus":
        major, minor = 1.0, 0.35
        parts = []
        got = 0
        while got < num_points:  # rejection: tube angle density proportional to (R + r cos phi)
            phi = rng.uniform(0, 2 * math.pi, 2 * num_points)  # (2N,)
            keep = rng.random(2 * num_points) < (major + minor * np.cos(phi)) / (major + minor)
            phi = phi[keep]
            parts.append(phi)
            got += len(phi)
        phi = np.concatenate(parts)[:num_points]  # (N,)
        theta = rng.uniform(0, 2 * math.pi, num_points)  # (N,)
        ring = major + minor * np.cos(phi)
        return np.stack([ring * np.cos(theta), minor * np.sin(phi), ring * np.sin(theta)], axis=1)  # (N, 3)
    return _sample_triangles(_mesh(kind), num_points, rng)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform 3D rotation (3, 3) from a normalised Gaussian quaternion (no LAPACK, so it is
    bit-identical across machines)."""
    w, x, y, z = rng.normal(size=4)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def make_point_cloud(
    kind: str,
    rng: np.random.Generator,
    num_points: int = 1024,
    noise: float = 0.01,
    anisotropy: tuple[float, float] = (0.75, 1.25),
    rotate: bool = True,
) -> np.ndarray:
    """A normalised, augmented surface cloud (N, 3) float32 of primitive ``kind``."""
    points = sample_surface(kind, num_points, rng)  # (N, 3)
    points = points * rng.uniform(anisotropy[0], anisotropy[1], size=3)  # (N, 3) per-axis stretch
    if rotate:
        points = points @ random_rotation(rng).T  # (N, 3)
    points = points - points.mean(axis=0)
    points = points / np.linalg.norm(points, axis=1).max()  # unit max norm, as ModelNet loaders do
    points = points + rng.normal(0.0, noise, size=points.shape)  # (N, 3)
    return points.astype(np.float32)
