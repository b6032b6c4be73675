"""Outputs users expect (DESIGN §5): per-frame PLYs for standard splat viewers, tracks (the
3D trajectory of every Gaussian and its 2D projection with visibility: the paper's "exact
tracking labels for free", sec. 6), a preview video (orbit camera while time runs) and a
turntable grid at chosen times. Every file is written atomically (temp file, then rename).

Tracks file (``export_tracks``, a ``.npz`` readable with ``numpy.load``):

    times       (T,)        float32  global times g
    positions   (T, N, 3)   float32  world positions of every Gaussian (all objects, in order)
    object_ids  (N,)        int64    which object of the asset each Gaussian belongs to
  and when cameras are given (C cameras, DESIGN §4 pinhole: OpenCV camera space, pixel
  centres at +0.5, so pixel (row i, col j) spans u ∈ [j, j+1), v ∈ [i, i+1)):
    uv          (C, T, N, 2) float32 pixel coordinates (u right, v down) of each centre —
                                     exactly the renderer's ``means2d``; NaN where depth <= 0
    depth       (C, T, N)   float32  camera-space z (distance along the optical axis)
    visible     (C, T, N)   bool     transmittance in front of the centre > 0.5 (i.e. not
                                     occluded, from ``render.gaussian_visibility``), depth >
                                     NEAR and uv inside the image
    K           (C, 3, 3)   float32  intrinsics
    viewmats    (C, 4, 4)   float32  world → camera
    width, height           int64    image size in pixels
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ayg.asset import Asset
from ayg.cameras import Cameras, look_at_cameras, orbit_cameras
from ayg.gaussians import save_ply
from ayg.io_utils import atomic_path, atomic_write, write_numpy_npz
from ayg.render import NEAR_PLANE, gaussian_visibility

NEAR = (
    NEAR_PLANE  # camera-space depth below which a Gaussian counts as not visible (renderer culls)
)
VISIBLE_TRANSMITTANCE = 0.5


class ExportError(ValueError):
    """A bad argument of an export function (one line)."""


# ----------------------------------------------------------------------------------------------
# helpers


def _times(times, what: str = "times") -> Tensor:
    try:
        t = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ExportError(f"{what} must be a list of numbers, got {times!r}") from None
    if t.numel() == 0:
        raise ExportError(f"{what} must not be empty")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ExportError(f"{what} must be finite numbers >= 0, got {t.tolist()}")
    return t


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ExportError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _background(background, device) -> Tensor:
    """None → white; a float → grey; a sequence / tensor of 3 floats in [0, 1]."""
    if background is None:
        background = (1.0, 1.0, 1.0)
    bg = torch.as_tensor(background, dtype=torch.float32)
    if bg.ndim == 0:
        bg = bg.expand(3)
    if bg.shape != (3,) or not torch.isfinite(bg).all():
        raise ExportError(f"background must be 3 numbers in [0, 1], got {background!r}")
    return bg.clamp(0.0, 1.0).to(device)


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) floats in [0, 1] -> (B, H, W, 3) / (H, W, 3) uint8."""
    x = images.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()


def save_png(image, path: str | os.PathLike) -> Path:
    """Write one image atomically: a (3, H, W) float tensor in [0, 1], or an (H, W, 3) uint8
    array."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ExportError(f"save_png needs a (3, H, W) image, got {tuple(image.shape)}")
        image = to_uint8(image)
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ExportError(f"save_png needs (H, W, 3) uint8, got {image.shape} {image.dtype}")
    path = Path(path)
    with atomic_write(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")
    return path


def _render_rgb(
    asset: Asset, cameras: Cameras, times: Tensor, background: Tensor, backend: str, batch: int
) -> Tensor:
    """(C, 3, H, W) on the CPU, camera c at time times[c], rendered in batches."""
    out = []
    with torch.no_grad():
        for i in range(0, len(cameras), batch):
            r = asset.render(
                cameras[i : i + batch], times[i : i + batch], background=background, backend=backend
            )
            out.append(r.rgb.float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# per-frame PLY


def export_ply_frames(
    asset: Asset, out_dir: str | os.PathLike, times, prefix: str = "frame_"
) -> list[Path]:
    """One Inria-format PLY per time, with the Gaussians moved to their world positions at
    that time: ``out_dir/frame_0000.ply``, ... Isotropic assets stay isotropic (the same
    log-scale three times, identity rotation); anisotropic Gaussians keep their rotations
    (composed with the placement). Returns the paths in time order."""
    t = _times(times)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with torch.no_grad():
        for i, g in enumerate(t.tolist()):
            cloud = asset.cloud_at(g)
            path = out_dir / f"{prefix}{i:04d}.ply"
            save_ply(cloud, path)  # atomic (temp file, then rename)
            paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# tracks


def project(points: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """World points (..., N, 3) seen by C cameras -> uv (C, ..., N, 2) pixels and depth
    (C, ..., N). Same maths as the renderer's projection of the centres (DESIGN §4)."""
    viewmats = cameras.viewmats.to(points)  # (C, 4, 4)
    K = cameras.K.to(points)  # (C, 3, 3)
    R, tr = viewmats[:, :3, :3], viewmats[:, :3, 3]
    shape = (len(cameras),) + (1,) * (points.ndim - 1)
    pc = torch.einsum("cij,...j->c...i", R, points) + tr.view(*shape, 3)  # (C, ..., N, 3)
    z = pc[..., 2]
    safe = torch.where(z > 0, z, torch.ones_like(z))
    fx, fy = K[:, 0, 0].view(shape), K[:, 1, 1].view(shape)
    cx, cy = K[:, 0, 2].view(shape), K[:, 1, 2].view(shape)
    u = fx * pc[..., 0] / safe + cx
    v = fy * pc[..., 1] / safe + cy
    uv = torch.stack([u, v], dim=-1)
    uv = torch.where((z > 0)[..., None], uv, torch.full_like(uv, float("nan")))
    return uv, z


def compute_tracks(
    asset: Asset, times, cameras: Cameras | None = None, backend: str = "auto"
) -> dict[str, np.ndarray]:
    """The arrays of a tracks file (see the module docstring) as numpy arrays."""
    t = _times(times)
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        positions = asset.positions(t.to(asset.device))  # (T, N, 3)
        out["times"] = t.numpy().astype(np.float32)
        out["positions"] = positions.float().cpu().numpy()
        out["object_ids"] = asset.object_ids().numpy()
        if cameras is None:
            return out
        if not isinstance(cameras, Cameras):
            raise ExportError(f"cameras must be ayg.cameras.Cameras, got {type(cameras).__name__}")
        cams = cameras.to(asset.device)
        attrs = asset.attributes()
        uvs, depths, visible = [], [], []
        W, H = cams.width, cams.height
        for ti in range(positions.shape[0]):
            means = positions[ti]  # (N, 3)
            uv, z = project(means, cams)  # (C, N, 2), (C, N)
            trans = gaussian_visibility(
                means,
                attrs["scales"],
                attrs["quats"],
                attrs["opacity"],
                cams,
                backend=backend,
            )  # (C, N)
            inside = (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
            vis = (trans > VISIBLE_TRANSMITTANCE) & (z > NEAR) & inside
            uvs.append(uv)
            depths.append(z)
            visible.append(vis)
        out["uv"] = torch.stack(uvs, dim=1).float().cpu().numpy()  # (C, T, N, 2)
        out["depth"] = torch.stack(depths, dim=1).float().cpu().numpy()  # (C, T, N)
        out["visible"] = torch.stack(visible, dim=1).cpu().numpy()  # (C, T, N) bool
        out["K"] = cams.K.float().cpu().numpy()
        out["viewmats"] = cams.viewmats.float().cpu().numpy()
        out["width"] = np.int64(W)
        out["height"] = np.int64(H)
    return out


def export_tracks(
    asset: Asset,
    path: str | os.PathLike,
    times,
    cameras: Cameras | None = None,
    backend: str = "auto",
) -> Path:
    """Write the tracks ``.npz`` (keys in the module docstring) atomically."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory; give a file name ending in .npz")
    arrays = compute_tracks(asset, times, cameras, backend)
    write_numpy_npz(path, **arrays)
    return path


# ----------------------------------------------------------------------------------------------
# video and turntable


def export_video(
    asset: Asset,
    path: str | os.PathLike,
    frames: int = 48,
    fps: int = 12,
    elevation: float = 15.0,
    distance: float = 3.0,
    fov: float = 40.0,
    width: int = 256,
    height: int = 256,
    background=None,
    time: float | None = None,
    start_azimuth: float = 0.0,
    device: torch.device | str | None = None,
    backend: str = "auto",
    batch: int = 8,
) -> Path:
    """Preview video (mp4, H.264): one orbit of the camera while time runs from 0 to the
    asset's duration (or stays at ``time`` when given). ``background``: None (white) or 3
    floats. ``device``: move the asset there first (in place). Returns the path."""
    frames = _positive_int(frames, "frames")
    fps = _positive_int(fps, "fps")
    width = _positive_int(width, "width")
    height = _positive_int(height, "height")
    if width % 2 or height % 2:
        raise ExportError(f"mp4 (yuv420p) needs an even width and height, got {width}x{height}")
    if not (math.isfinite(distance) and distance > 0):
        raise ExportError(f"distance must be > 0, got {distance}")
    if not 0 < fov < 180:
        raise ExportError(f"fov must be in (0, 180) degrees, got {fov}")
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ExportError(f"the video path must end in .mp4, got '{path.name}'")
    if time is not None and not (math.isfinite(time) and time >= 0):
        raise ExportError(f"time must be a number >= 0, got {time}")
    if device is not None:
        asset.to(device)
    dev = asset.device
    if time is None:
        times = torch.linspace(0.0, asset.duration, frames) if frames > 1 else torch.zeros(1)
    else:
        times = torch.full((frames,), float(time))
    cams = orbit_cameras(frames, elevation, distance, fov, width, height, start_azimuth, dev)
    rgb = _render_rgb(asset, cams, times.to(dev), _background(background, dev), backend, batch)
    write_mp4(path, to_uint8(rgb), fps)
    return path


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> Path:
    """(F, H, W, 3) uint8 -> H.264 mp4 at ``fps``, written atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(
            tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
            pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
        )  # fmt: skip
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def turntable_grid(
    asset: Asset,
    times,
    n_views: int = 8,
    elevation: float = 15.0,
    distance: float = 3.0,
    fov: float = 40.0,
    width: int = 256,
    height: int = 256,
    background=None,
    backend: str = "auto",
    batch: int = 8,
) -> np.ndarray:
    """(T·H, V·W, 3) uint8: row r shows time times[r] from ``n_views`` azimuths 0, 360/V, ..."""
    t = _times(times)
    n_views = _positive_int(n_views, "n_views")
    width = _positive_int(width, "width")
    height = _positive_int(height, "height")
    dev = asset.device
    azim = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    T = t.shape[0]
    cams = look_at_cameras(
        elevation, azim.repeat(T), distance, fov, width, height, dev
    )  # time-major
    rgb = _render_rgb(
        asset,
        cams,
        t.repeat_interleave(n_views).to(dev),
        _background(background, dev),
        backend,
        batch,
    )
    img = to_uint8(rgb)  # (T·V, H, W, 3)
    return (
        img.reshape(T, n_views, height, width, 3)
        .transpose(0, 2, 1, 3, 4)
        .reshape(T * height, n_views * width, 3)
    )


def export_turntable(
    asset: Asset,
    path: str | os.PathLike,
    times,
    n_views: int = 8,
    elevation: float = 15.0,
    distance: float = 3.0,
    fov: float = 40.0,
    width: int = 256,
    height: int = 256,
    background=None,
    backend: str = "auto",
) -> Path:
    """A PNG grid: one row per time, one column per view (see ``turntable_grid``)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ExportError(f"the turntable path must end in .png, got '{path.name}'")
    grid = turntable_grid(
        asset, times, n_views, elevation, distance, fov, width, height, background, backend
    )
    return save_png(grid, path)


__all__ = [
    "ExportError",
    "compute_tracks",
    "export_ply_frames",
    "export_tracks",
    "export_turntable",
    "export_video",
    "project",
    "save_png",
    "to_uint8",
    "turntable_grid",
    "write_mp4",
]
