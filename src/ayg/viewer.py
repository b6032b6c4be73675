"""``ayg view ASSET``: an interactive viewer in the browser (viser) with a time slider and
play / pause. Every client's view is rendered by ayg's own rasterizer (so what you see is what
``ayg render`` gives) and sent to the browser as the background image.

viser is an optional dependency (``pip install "ayg[viewer]"``) and is imported only when the
viewer starts. viser's camera follows the OpenCV convention (look along +z, up = −y; DESIGN
§4 uses the same camera space), ``wxyz`` is the camera-to-world rotation, ``position`` the
camera centre and ``fov`` the vertical field of view in radians: ``camera_from_viser``
turns that into ``ayg.cameras.Cameras``.
"""

from __future__ import annotations

import math
import threading
import time as _time
from collections.abc import Sequence

import numpy as np
import torch

from ayg.asset import Asset, quat_to_matrix
from ayg.cameras import Cameras

VIEWER_INSTALL_HINT = 'the viewer needs viser: pip install "ayg[viewer]"'


class ViewerError(RuntimeError):
    """The viewer cannot start (one line)."""


def camera_from_viser(
    position: Sequence[float],
    wxyz: Sequence[float],
    fov: float,
    width: int,
    height: int,
    device: torch.device | str = "cpu",
) -> Cameras:
    """One ``Cameras`` from viser's camera state: position (3,) world camera centre, wxyz (4,)
    camera-to-world rotation (OpenCV axes), fov vertical in *radians*, image size in pixels."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0.0 < fov < math.pi:
        raise ValueError(f"viser fov must be in (0, π) radians, got {fov}")
    q = torch.as_tensor(np.asarray(wxyz, dtype=np.float64))
    if q.shape != (4,) or float(q.norm()) < 1e-12:
        raise ValueError(f"wxyz must be a non-zero quaternion of 4 numbers, got {wxyz!r}")
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = quat_to_matrix(q)
    c2w[:3, 3] = torch.as_tensor(np.asarray(position, dtype=np.float64))
    fov_deg = torch.tensor([math.degrees(fov)], dtype=torch.float32)
    return Cameras(c2w[None].float(), fov_deg, int(width), int(height)).to(device)


def image_size(aspect: float, resolution: int) -> tuple[int, int]:
    """(width, height) for a viewport of the given aspect (width / height) whose longer side
    is ``resolution`` pixels."""
    aspect = aspect if math.isfinite(aspect) and aspect > 0 else 1.0
    if aspect >= 1.0:
        return resolution, max(1, round(resolution / aspect))
    return max(1, round(resolution * aspect)), resolution


def render_view(
    asset: Asset, cameras: Cameras, time: float, background=(1.0, 1.0, 1.0), backend: str = "auto"
) -> np.ndarray:
    """(H, W, 3) uint8 image of one camera at global time ``time``."""
    from ayg.export import to_uint8

    bg = torch.as_tensor(background, dtype=torch.float32, device=asset.device)
    with torch.no_grad():
        out = asset.render(
            cameras.to(asset.device), torch.tensor([float(time)]), background=bg, backend=backend
        )
    return to_uint8(out.rgb[0])


def _import_viser():
    try:
        import viser  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError:
        raise ViewerError(VIEWER_INSTALL_HINT) from None
    return viser


def _gui(server):
    """viser >= 0.2 has ``server.gui``; older versions put the methods on the server."""
    return getattr(server, "gui", server)


def _add(gui, name: str, *args, **kwargs):
    fn = getattr(gui, name, None) or getattr(gui, name.replace("add_", "add_gui_"))
    return fn(*args, **kwargs)


def _set_background(client, image: np.ndarray) -> None:
    scene = getattr(client, "scene", client)
    scene.set_background_image(image, format="jpeg")


def view(
    asset: Asset,
    host: str = "127.0.0.1",
    port: int = 8080,
    resolution: int = 512,
    device: torch.device | str | None = None,
    backend: str = "auto",
    background=(1.0, 1.0, 1.0),
    block: bool = True,
):
    """Serve the asset at http://host:port. GUI: time slider over [0, duration], play / pause,
    playback speed (asset time units per second) and resolution. Blocks until Ctrl-C unless
    ``block=False`` (then returns the server; the render loop runs in a daemon thread)."""
    viser = _import_viser()
    if device is not None:
        asset.to(device)
    server = viser.ViserServer(host=host, port=port)
    scene = getattr(server, "scene", server)
    if hasattr(scene, "set_up_direction"):
        scene.set_up_direction("+z")  # DESIGN §4: z up

    duration = float(asset.duration)
    gui = _gui(server)
    time_slider = _add(
        gui, "add_slider", "time", min=0.0, max=duration, step=duration / 200, initial_value=0.0
    )
    playing = _add(gui, "add_checkbox", "play", initial_value=False)
    speed = _add(gui, "add_slider", "speed", min=0.05, max=2.0, step=0.05, initial_value=0.5)
    res = _add(
        gui, "add_slider", "resolution", min=64, max=2048, step=32, initial_value=int(resolution)
    )
    _add(
        gui,
        "add_markdown",
        f"**{', '.join(asset.prompts) or 'asset'}** — {asset.num_gaussians} Gaussians, duration {duration:g}",
    )

    lock = threading.Lock()
    dirty: set[int] = set()

    def mark_all(_=None) -> None:
        with lock:
            dirty.update(server.get_clients().keys())

    def on_connect(client) -> None:
        @client.camera.on_update
        def _(_camera) -> None:
            with lock:
                dirty.add(client.client_id)

        with lock:
            dirty.add(client.client_id)

    server.on_client_connect(on_connect)
    time_slider.on_update(mark_all)
    res.on_update(mark_all)

    def render_client(client) -> None:
        cam = client.camera
        aspect = getattr(cam, "aspect", 1.0)
        w, h = image_size(aspect, int(res.value))
        cams = camera_from_viser(cam.position, cam.wxyz, cam.fov, w, h, asset.device)
        _set_background(
            client, render_view(asset, cams, float(time_slider.value), background, backend)
        )

    def loop() -> None:
        last = _time.perf_counter()
        while True:
            now = _time.perf_counter()
            if playing.value and duration > 0:
                t = (float(time_slider.value) + (now - last) * float(speed.value)) % duration
                time_slider.value = t  # on_update marks every client dirty
                mark_all()
            last = now
            with lock:
                todo = list(dirty)
                dirty.clear()
            clients = server.get_clients()
            for cid in todo:
                client = clients.get(cid)
                if client is not None:
                    try:
                        render_client(client)
                    except Exception as e:  # a client may disconnect mid-render; keep serving
                        print(f"ayg view: render failed for client {cid}: {e}")
            _time.sleep(0.01 if todo else 0.03)

    if not block:
        threading.Thread(target=loop, daemon=True).start()
        return server
    print(f"ayg view: serving on http://{host}:{port} (Ctrl-C to stop)")
    try:
        loop()
    except KeyboardInterrupt:
        pass
    finally:
        if hasattr(server, "stop"):
            server.stop()
    return server
