"""``ayg export ASSET --format web --out DIR``: a web player that needs no server. ``DIR/
index.html`` is one self-contained page (viser's static client with the animation embedded):
open it from disk (file://) or any static file server, offline. It shows the asset with
viser's WebGL splat renderer (the same as ``ayg view``'s default), orbit / pan / zoom with
the mouse, and viser's playback bar: play / pause, a time slider, playback speed, and the
animation loops.

The animation is a viser scene recording (``ViserServer.get_scene_serializer``): the splats at
τ = 0, then one message per frame that moves their centres (only centres move in AYG: the
deformation field displaces the means, sec. 3.1), ``1 / fps`` seconds apart, so that the
recording's clock runs from 0 to ``seconds`` while the asset's time runs from 0 to its
duration. viser stores each Gaussian in 32 bytes (centre float32 × 3, covariance float16 × 6,
RGBA uint8 × 4), removes repeated buffers and compresses the whole recording with zstd; the
size per second of animation is reported.

The recording server listens on 127.0.0.1 on a free port while the recording is made and is
stopped before ``export_web`` returns; nothing is fetched from the network, at export or at
view time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ayg.asset import Asset
from ayg.config import OutputConfig
from ayg.export import ExportError
from ayg.io_utils import write_text
from ayg.viewer import (
    DEFAULT_VIEW,
    _import_viser,
    centers_at,
    set_default_camera,
    splat_attributes,
    start_server,
    stop_server,
)

PLAYER_FILE = "index.html"


def default_seconds(asset: Asset) -> float:
    """Playback length of the whole animation: the run's preview length (frames / fps of its
    output config) when the asset carries one, else the default preview's."""
    out = (asset.header.get("config") or {}).get("output") or {}
    default = OutputConfig()
    frames = out.get("preview_frames", default.preview_frames)
    fps = out.get("preview_fps", default.preview_fps)
    try:
        seconds = float(frames) / float(fps)
    except (TypeError, ValueError, ZeroDivisionError):
        seconds = default.preview_frames / default.preview_fps
    return seconds if math.isfinite(seconds) and seconds > 0 else 4.0


def export_web(
    asset: Asset,
    out_dir: str | os.PathLike,
    fps: float = 12.0,
    seconds: float | None = None,
    view=DEFAULT_VIEW,
) -> dict:
    """Write ``out_dir/index.html``. ``fps``: frames per second of the animation; ``seconds``:
    how long one pass over [0, duration] plays (default ``default_seconds``); ``view``:
    (elevation, azimuth, distance, fov) of the opening camera, ``ayg render``'s default.
    Returns {path, frames, fps, seconds, bytes, player_bytes, animation_bytes,
    bytes_per_second} (``animation_bytes``: the embedded recording, base64 included)."""
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and math.isfinite(fps)):
        raise ExportError(f"fps must be a positive number, got {fps!r}")
    if fps <= 0:
        raise ExportError(f"fps must be a positive number, got {fps!r}")
    seconds = default_seconds(asset) if seconds is None else seconds
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ExportError(f"seconds must be a positive number, got {seconds!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    viser = _import_viser()
    frames = max(2, round(seconds * fps) + 1) if asset.duration > 0 else 1
    attrs = splat_attributes(asset)

    server = start_server(viser, "127.0.0.1", 0)
    try:
        server.scene.set_up_direction("+z")  # ayg's world is z up
        set_default_camera(server.initial_camera, view)
        recording = server.get_scene_serializer()
        splats = server.scene.add_gaussian_splats(
            "/asset", centers_at(asset, 0.0), attrs["covariances"], attrs["rgbs"],
            attrs["opacities"],
        )  # fmt: skip
        for k in range(1, frames):
            recording.insert_sleep(1.0 / fps)
            splats.centers = centers_at(asset, asset.duration * k / (frames - 1))
        if frames > 1:
            recording.insert_sleep(1.0 / fps)  # the last pose shows for one frame, then loops
        html = recording.as_html()
    finally:
        stop_server(server)

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PLAYER_FILE
    write_text(path, html)
    total = path.stat().st_size
    client = Path(viser.__file__).parent / "client" / "build" / "index.html"
    player = client.stat().st_size if client.exists() else 0
    animation = max(total - player, 0)
    playback = frames / fps
    return {
        "path": path,
        "frames": frames,
        "fps": float(fps),
        "seconds": playback,
        "bytes": total,
        "player_bytes": player,
        "animation_bytes": animation,
        "bytes_per_second": animation / playback,
    }


__all__ = ["PLAYER_FILE", "default_seconds", "export_web"]
