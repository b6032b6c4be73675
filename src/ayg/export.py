"""Outputs users expect: frame sequences for splat viewers (one file per time, in the Inria PLY,
antimatter15 ``.splat``, PlayCanvas compressed PLY or Niantic SPZ format, with a
``frames.json`` manifest), tracks (the 3D trajectory of every Gaussian and its 2D projection
with visibility: the paper's "exact tracking labels for free", sec. 6), a preview video (orbit
camera while time runs, ``+faststart`` so a browser plays it while it loads) and a turntable
grid at chosen times. Every file is written atomically (temp file, then rename).

Frame sequences (``export_frames``). The asset's world is z up (ayg's convention). ``up="y"``
writes the files turned by +90° about x, (x, y, z) → (x, −z, y), so that up is −y in the file:
the orientation of Inria / COLMAP captures, which SuperSplat (the PlayCanvas viewer: it rolls
every splat 180° about z into its y-up world) and the antimatter15 viewer show upright.
``up="z"`` keeps ayg's world. Writers: the PLY frames are ayg's own Inria writer (``save_ply``,
every field exact in float32), ``.splat`` is gsplat's ``export_splats`` (the only maintained
writer of that format), compressed PLY and SPZ are gsply's (the same quantisation as gsplat's
compressed PLY at 1/25 of its time on 50,000 Gaussians, every Gaussian kept, and the only SPZ
writer on PyPI that installs without a Rust toolchain). ``.splat`` and compressed PLY store
the Gaussians in the writer's spatial (Morton) order; PLY and SPZ keep the asset's order.

Tracks file (``export_tracks``, a ``.npz`` readable with ``numpy.load``):

    times       (T,)        float32  global times g
    positions   (T, N, 3)   float32  world positions of every Gaussian (all objects, in order)
    object_ids  (N,)        int64    which object of the asset each Gaussian belongs to
  and when cameras are given (C cameras, the pinhole camera of docs/ARCHITECTURE.md: OpenCV camera space, pixel
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

from ayg.asset import Asset, AssetObject, Placement
from ayg.cameras import Cameras, look_at_cameras, orbit_cameras
from ayg.gaussians import GaussianCloud, save_ply
from ayg.io_utils import atomic_path, atomic_write, write_bytes, write_json, write_numpy_npz
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
# frame sequences: one file per time and a frames.json manifest

FRAME_FORMATS = ("ply-frames", "splat", "ply-compressed", "spz")
FRAME_SUFFIX = {
    "ply-frames": ".ply",
    "splat": ".splat",
    "ply-compressed": ".compressed.ply",
    "spz": ".spz",
}
KEEPS_ORDER = {"ply-frames": True, "splat": False, "ply-compressed": False, "spz": True}
UP_AXES = ("y", "z")
# (3, 3) rotation from ayg's z-up world to the file's axes, per --up
UP_ROTATION = {
    "y": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),  # +90° about x: up is −y
    "z": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
}
_UP_PLACEMENT = {"y": Placement.from_euler_degrees(90.0, 0.0, 0.0), "z": Placement()}
MANIFEST = "frames.json"
MANIFEST_VERSION = 1


def oriented(asset: Asset, up: str) -> Asset:
    """The asset with every object turned from ayg's z-up world into the ``up`` convention
    (``UP_ROTATION``): the turn is composed into each placement, so positions, Gaussian
    rotations and SH coefficients all follow it. ``up="z"`` returns the asset itself."""
    if up not in UP_AXES:
        raise ExportError(f"up must be one of {', '.join(UP_AXES)}, got {up!r}")
    if up == "z":
        return asset
    turn = _UP_PLACEMENT[up]
    objects = [
        AssetObject(o.cloud, o.motion, turn.compose(o.placement), o.name) for o in asset.objects
    ]
    return Asset(objects, dict(asset.header))


def splat_arrays(cloud: GaussianCloud) -> dict[str, np.ndarray]:
    """The Inria parameters of a cloud as float32 arrays: means (N, 3), log_scales (N, 3),
    quats (N, 4) unit wxyz, opacity_logits (N,), sh0 (N, 3), shN (N, K−1, 3)."""

    def cpu(t: Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())

    n = cloud.num
    return {
        "means": cpu(cloud.means),
        "log_scales": cpu(cloud.log_scales.expand(n, 3)),
        "quats": cpu(cloud.rotations),
        "opacity_logits": cpu(cloud.opacity_logits),
        "sh0": cpu(cloud.sh_dc),
        "shN": cpu(cloud.sh_rest),
    }


def _import(module: str, extra: str = "export"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        name = module.split(".")[0]
        raise ExportError(f'this format needs {name}: pip install "ayg[{extra}]"') from None


def _write_frame(cloud: GaussianCloud, path: Path, fmt: str) -> None:
    if fmt == "ply-frames":
        save_ply(cloud, path)  # atomic
        return
    a = splat_arrays(cloud)
    if fmt == "splat":
        export_splats = _import("gsplat.exporter").export_splats
        data = export_splats(
            torch.from_numpy(a["means"]),
            torch.from_numpy(a["log_scales"]),
            torch.from_numpy(a["quats"]),
            torch.from_numpy(a["opacity_logits"]),
            torch.from_numpy(a["sh0"])[:, None],  # (N, 1, 3)
            torch.from_numpy(a["shN"]),
            format="splat",
        )
        write_bytes(path, data)
        return
    gsply = _import("gsply")
    data = gsply.GSData(
        means=a["means"],
        scales=a["log_scales"],
        quats=a["quats"],
        opacities=a["opacity_logits"],
        sh0=a["sh0"],
        shN=a["shN"] if a["shN"].shape[1] else None,
    )
    if fmt == "ply-compressed":
        write_bytes(path, gsply.compress_to_bytes(data))
    else:  # spz
        with atomic_path(path) as tmp:
            gsply.write_spz(tmp, data)


def export_frames(
    asset: Asset,
    out_dir: str | os.PathLike,
    times,
    fmt: str = "ply-frames",
    up: str = "y",
    fps: float = 12.0,
    prefix: str = "frame_",
) -> dict:
    """One file per time in ``fmt`` (one of ``FRAME_FORMATS``), the Gaussians moved to their
    world positions at that time and turned to the ``up`` convention, and ``frames.json``
    beside them. ``fps`` is the rate the sequence is meant to play at. Returns the manifest:

        format, version      the frame format and the manifest version (1)
        files                frame file names in time order, relative to the folder
        times                the asset's global time of each frame
        fps, duration        playback rate and the asset's duration (global time units)
        num_gaussians        Gaussians per frame (every format keeps all of them)
        keeps_order          whether Gaussian i of every file is Gaussian i of the asset
        coordinates          up ("y" | "z"), up_vector in the file, handedness ("right"),
                             from_ayg_world: (3, 3) rotation applied to ayg's z-up world
        objects              per object: name, first, count (its Gaussians in the asset's
                             order), placement (as in the .ayg header, in ayg's world)
        bytes, bytes_per_second   total size of the frames and per second of playback
    """
    if fmt not in FRAME_FORMATS:
        raise ExportError(f"format must be one of {', '.join(FRAME_FORMATS)}, got {fmt!r}")
    t = _times(times)
    if isinstance(fps, bool) or not (
        isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0
    ):
        raise ExportError(f"fps must be a positive number, got {fps!r}")
    turned = oriented(asset, up)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    with torch.no_grad():
        for i, g in enumerate(t.tolist()):
            path = out_dir / f"{prefix}{i:04d}{FRAME_SUFFIX[fmt]}"
            _write_frame(turned.cloud_at(g), path, fmt)
            files.append(path.name)
    total = sum((out_dir / f).stat().st_size for f in files)
    objects, first = [], 0
    for o in asset.objects:
        objects.append(
            {
                "name": o.name,
                "first": first,
                "count": o.num_gaussians,
                "placement": o.placement.to_dict(),
            }
        )
        first += o.num_gaussians
    seconds = len(files) / float(fps)
    manifest = {
        "format": fmt,
        "version": MANIFEST_VERSION,
        "files": files,
        "times": [float(g) for g in t.tolist()],
        "fps": float(fps),
        "duration": float(asset.duration),
        "num_gaussians": asset.num_gaussians,
        "keeps_order": KEEPS_ORDER[fmt],
        "coordinates": {
            "up": up,
            "up_vector": [0.0, -1.0, 0.0] if up == "y" else [0.0, 0.0, 1.0],
            "handedness": "right",
            "from_ayg_world": [list(r) for r in UP_ROTATION[up]],
        },
        "objects": objects,
        "bytes": total,
        "bytes_per_second": total / seconds,
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def export_ply_frames(
    asset: Asset, out_dir: str | os.PathLike, times, prefix: str = "frame_", up: str = "z"
) -> list[Path]:
    """One Inria-format PLY per time, with the Gaussians moved to their world positions at
    that time: ``out_dir/frame_0000.ply``, ... (and ``frames.json``). Isotropic assets stay
    isotropic (the same log-scale three times, identity rotation); anisotropic Gaussians keep
    their rotations (composed with the placement). Returns the paths in time order."""
    manifest = export_frames(asset, out_dir, times, "ply-frames", up=up, prefix=prefix)
    return [Path(out_dir) / f for f in manifest["files"]]


# ----------------------------------------------------------------------------------------------
# tracks


def project(points: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """World points (..., N, 3) seen by C cameras -> uv (C, ..., N, 2) pixels and depth
    (C, ..., N). Same maths as the renderer's projection of the centres (docs/ARCHITECTURE.md, Conventions)."""
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
    """(F, H, W, 3) uint8 -> H.264 mp4 at ``fps``, written atomically, with the index (moov)
    at the front (``+faststart``)."""
    import imageio.v2 as imageio

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(
            tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
            pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"],  # moov before mdat: plays while loading
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
    "FRAME_FORMATS",
    "ExportError",
    "compute_tracks",
    "export_frames",
    "export_ply_frames",
    "export_tracks",
    "export_turntable",
    "export_video",
    "oriented",
    "project",
    "save_png",
    "splat_arrays",
    "to_uint8",
    "turntable_grid",
    "write_mp4",
]
