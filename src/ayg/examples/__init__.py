"""Bundled example assets.

``example_cloud()`` builds a small static 3DGS object without any randomness: a two-toned cone
(lower half blue, upper half yellow, z up, inside radius 0.5 as in docs/ARCHITECTURE.md), made of isotropic
Gaussians laid out on its surface with golden-angle spirals. ``example.ply`` next to this file
is that cloud in the Inria PLY layout (``write_example_ply`` regenerates it), so that
``ayg render`` / ``ayg animate`` have something to work on before any generation::

    python -c "from ayg.examples import write_example_ply; write_example_ply()"
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ayg.gaussians import GaussianCloud, rgb_to_sh_dc, save_ply

NUM_GAUSSIANS = 1700  # 164 bytes each at SH degree 2: the PLY stays under 300 KB
BLUE = (0.12, 0.32, 0.90)
YELLOW = (0.98, 0.84, 0.12)
_APEX_Z, _BASE_Z, _BASE_RADIUS = 0.35, -0.35, 0.30  # base rim at distance 0.46 from the origin
_OPACITY = 0.9


def _spiral(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n points of a golden-angle spiral: (u in (0, 1) uniform, azimuth in radians)."""
    i = np.arange(n, dtype=np.float64)
    return (i + 0.5) / n, i * math.pi * (3.0 - math.sqrt(5.0))


def example_cloud(sh_degree: int = 2) -> GaussianCloud:
    """The example cone: ~1,700 isotropic Gaussians, higher SH bands zero. Deterministic."""
    if sh_degree < 0:
        raise ValueError(f"sh_degree must be >= 0, got {sh_degree}")
    height = _APEX_Z - _BASE_Z
    lateral = math.pi * _BASE_RADIUS * math.hypot(_BASE_RADIUS, height)
    base = math.pi * _BASE_RADIUS**2
    n_lat = round(NUM_GAUSSIANS * lateral / (lateral + base))
    n_base = NUM_GAUSSIANS - n_lat

    # lateral surface: the area element grows with the distance s from the apex, so s = sqrt(u)
    u, phi = _spiral(n_lat)
    s = np.sqrt(u)
    lat = np.stack(
        [_BASE_RADIUS * s * np.cos(phi), _BASE_RADIUS * s * np.sin(phi), _APEX_Z - height * s], 1
    )
    # base disk: sunflower pattern
    u, phi = _spiral(n_base)
    r = _BASE_RADIUS * np.sqrt(u)
    disk = np.stack([r * np.cos(phi), r * np.sin(phi), np.full(n_base, _BASE_Z)], 1)
    means = np.concatenate([lat, disk]).astype(np.float32)  # (N, 3)

    spacing = math.sqrt((lateral + base) / NUM_GAUSSIANS)
    rgb = np.where(means[:, 2:3] < 0.0, np.float32(BLUE), np.float32(YELLOW))  # (N, 3)
    n = means.shape[0]
    return GaussianCloud(
        torch.from_numpy(means),
        torch.full((n, 1), math.log(0.6 * spacing)),  # overlapping splats: a closed surface
        None,
        torch.full((n,), math.log(_OPACITY / (1.0 - _OPACITY))),
        rgb_to_sh_dc(torch.from_numpy(rgb)),
        torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3),
    )


def example_ply_path() -> Path:
    """Path of the bundled ``example.ply`` (the cloud of ``example_cloud()``)."""
    return Path(__file__).with_name("example.ply")


def write_example_ply(path: str | os.PathLike | None = None) -> Path:
    """(Re)generate ``example.ply`` (by default the bundled one). Returns the path."""
    return save_ply(example_cloud(), example_ply_path() if path is None else path)


__all__ = ["example_cloud", "example_ply_path", "write_example_ply"]
