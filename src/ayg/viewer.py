"""``ayg view ASSET``: an interactive viewer in the browser (viser) with a time slider,
play / pause and speed. Two ways to draw (the "rendering" control switches between them):

* ``splats`` (default): the Gaussians are sent once to the browser, which draws them itself
  with viser's WebGL splat renderer (``add_gaussian_splats``); each time step sends only the
  new centres. Orbiting costs the server nothing. Colours are the view-independent degree-0
  part (the splat renderer has no SH).
* ``server``: each view is drawn on the server by ayg's own rasterizer, with the full
  view-dependent SH colour, so what you see is exactly what ``ayg render`` gives, and sent
  as a JPEG background image.

``benchmarks/viewer_fps.py`` measures the frames per second of both. The server listens on
127.0.0.1 (this machine only) unless ``host`` says otherwise; it has no authentication, so
``host="0.0.0.0"`` lets anyone on the network watch and drive it. ``check_address`` rejects a
bad port or an address that is not this machine's before anything starts, and the printed URL
has the port actually bound (viser moves to the next free port when the one asked for is
taken).

viser is an optional dependency (``pip install "ayg[viewer]"``) and is imported only when the
viewer starts. viser's camera follows the OpenCV convention (look along +z, up = −y; ayg's
cameras use the same camera space), ``wxyz`` is the camera-to-world rotation, ``position`` the
camera centre and ``fov`` the vertical field of view in radians: ``camera_from_viser``
turns that into ``ayg.cameras.Cameras``.
"""

from __future__ import annotations

import contextlib
import io
import math
import socket
import threading
import time as _time
from collections.abc import Sequence

import numpy as np
import torch

from ayg.asset import Asset
from ayg.cameras import Cameras
from ayg.gaussians import quat_to_rotmat

VIEWER_INSTALL_HINT = 'the viewer needs viser: pip install "ayg[viewer]"'
MODES = ("splats", "server")
# the camera the viewer opens with: ``ayg render``'s default (elevation, azimuth, distance, fov)
DEFAULT_VIEW = (15.0, 0.0, 3.0, 40.0)


class ViewerError(ValueError):
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
    c2w[:3, :3] = quat_to_rotmat(q)
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


def start_server(viser, host: str, port: int):
    """A ``viser.ViserServer``; viser prints a panel of URLs on start and a line on stop, which
    are dropped here: ayg prints one line with the port actually bound instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        return viser.ViserServer(host=host, port=port, verbose=False)


def stop_server(server) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        server.stop()


def check_address(host: str, port: int) -> None:
    """Raise ``ViewerError`` (one line) unless ``port`` is in 0..65535 (0: any free port) and
    ``host`` is an address this machine can listen on. Runs before the server starts, which
    otherwise retries a bad address forever."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ViewerError(f"--port must be an integer in 0..65535 (0: any free port), got {port!r}")
    if not isinstance(host, str) or not host.strip():
        raise ViewerError(f"--host must be an address such as 127.0.0.1 or 0.0.0.0, got {host!r}")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ViewerError(f"--host {host!r} is not a known address ({reason})") from None
    family, _, _, _, sockaddr = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((sockaddr[0], 0))  # any port: only "is this address ours?" is asked here
    except OSError as e:
        raise ViewerError(
            f"--host {host!r} ({sockaddr[0]}) is not an address of this machine ({e.strerror or e})"
        ) from None


def splat_attributes(asset: Asset) -> dict[str, np.ndarray]:
    """What viser's splat renderer needs besides the centres, from the asset's world-space
    attributes: covariances (N, 3, 3) = R S² Rᵀ, rgbs (N, 3) the degree-0 colour
    clamp(0.5 + C0·sh_dc, 0, 1), opacities (N, 1). Time-independent (only centres move)."""
    from ayg.gaussians import quat_to_rotmat, sh_dc_to_rgb

    with torch.no_grad():
        a = asset.attributes()
        s = a["scales"].float()  # (N, 3)
        n = s.shape[0]
        rot = torch.eye(3).expand(n, 3, 3) if a["quats"] is None else quat_to_rotmat(a["quats"])
        rot = rot.float().to(s.device)
        cov = rot @ torch.diag_embed(s * s) @ rot.transpose(1, 2)  # (N, 3, 3)
        rgb = sh_dc_to_rgb(a["sh"][:, 0]).clamp(0.0, 1.0)
        return {
            "covariances": cov.cpu().numpy().astype(np.float32),
            "rgbs": rgb.float().cpu().numpy(),
            "opacities": a["opacity"].float().cpu().numpy()[:, None],
        }


def centers_at(asset: Asset, time: float) -> np.ndarray:
    """(N, 3) float32 world centres at global time ``time``."""
    with torch.no_grad():
        return asset.positions([float(time)])[0].float().cpu().numpy()


def set_default_camera(camera, view=DEFAULT_VIEW) -> None:
    """Point viser's initial camera (``server.initial_camera``) like ``ayg render``'s
    look-at camera: (elevation, azimuth, distance, fov) in degrees, up +z."""
    elevation, azimuth, distance, fov = view
    e, a = math.radians(elevation), math.radians(azimuth)
    camera.position = (
        distance * math.cos(e) * math.cos(a),
        distance * math.cos(e) * math.sin(a),
        distance * math.sin(e),
    )
    camera.look_at = (0.0, 0.0, 0.0)
    camera.up = (0.0, 0.0, 1.0)
    camera.fov = math.radians(fov)


def _gui(server):
    """viser >= 0.2 has ``server.gui``; older versions put the methods on the server."""
    return getattr(server, "gui", server)


def _set_background(client, image: np.ndarray | None) -> None:
    scene = getattr(client, "scene", client)
    if image is None:
        scene.set_background_image(None)
    else:
        scene.set_background_image(image, format="jpeg")


class Viewer:
    """A running viewer: ``server`` (viser), ``url``, ``updates`` (time steps or images sent
    to browsers so far, for measurements) and ``stop()``."""

    def __init__(self, server, url: str, state: dict) -> None:
        self.server = server
        self.url = url
        self._state = state

    @property
    def updates(self) -> int:
        return int(self._state["updates"])

    def stop(self) -> None:
        self._state["stop"] = True
        loop = self._state.get("thread")
        if loop is not None and loop is not threading.current_thread():
            loop.join(timeout=5.0)  # let the update loop finish what it is sending
        stop_server(self.server)


def view(
    asset: Asset,
    host: str = "127.0.0.1",
    port: int = 8080,
    mode: str = "splats",
    resolution: int = 512,
    device: torch.device | str | None = None,
    backend: str = "auto",
    background=(1.0, 1.0, 1.0),
    block: bool = True,
    playing: bool = False,
    speed: float = 0.5,
) -> Viewer:
    """Serve the asset at http://host:port (the port actually bound is in the returned
    ``Viewer.url`` and printed). GUI: time slider over [0, duration], play / pause, playback
    speed (asset time units per second), rendering (``MODES``) and, for server rendering, the
    resolution. Blocks until Ctrl-C unless ``block=False`` (then the update loop runs in a
    daemon thread)."""
    if mode not in MODES:
        raise ViewerError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_address(host, port)
    viser = _import_viser()
    if device is not None:
        asset.to(device)
    server = start_server(viser, host, port)
    bound = server.get_port()
    server.scene.set_up_direction("+z")  # ayg's world is z up
    set_default_camera(server.initial_camera)

    duration = float(asset.duration)
    step = duration / 200
    gui = _gui(server)
    time_slider = gui.add_slider("time", min=0.0, max=duration, step=step, initial_value=0.0)
    play = gui.add_checkbox("play", initial_value=bool(playing))
    speed_slider = gui.add_slider("speed", min=0.05, max=2.0, step=0.05, initial_value=float(speed))
    rendering = gui.add_dropdown("rendering", MODES, initial_value=mode)
    res = gui.add_slider("resolution", min=64, max=2048, step=32, initial_value=int(resolution))
    gui.add_markdown(
        f"**{', '.join(asset.prompts) or 'asset'}**: {asset.num_gaussians} Gaussians, "
        f"duration {duration:g}"
    )

    attrs = splat_attributes(asset)
    cache: dict[int, np.ndarray] = {}

    def centers(t: float) -> np.ndarray:
        key = round(t / step) if step > 0 else 0
        if key not in cache:
            if len(cache) > 512:
                cache.clear()
            cache[key] = centers_at(asset, key * step)
        return cache[key]

    lock = threading.Lock()
    dirty: set[int] = set()
    state = {"updates": 0, "stop": False, "splats": None, "shown": None}

    def mark_all(_=None) -> None:
        with lock:
            dirty.update(server.get_clients().keys())

    def on_connect(client) -> None:
        @client.camera.on_update
        def _(_camera) -> None:
            if rendering.value == "server":
                with lock:
                    dirty.add(client.client_id)

        with lock:
            dirty.add(client.client_id)

    server.on_client_connect(on_connect)
    res.on_update(mark_all)

    def show_splats(t: float) -> None:
        """Add the splats (first time) or move their centres to time t."""
        key = round(t / step) if step > 0 else 0
        if state["splats"] is None:
            state["splats"] = server.scene.add_gaussian_splats(
                "/asset", centers(t), attrs["covariances"], attrs["rgbs"], attrs["opacities"]
            )
        elif state["shown"] != key:
            state["splats"].centers = centers(t)
        else:
            return
        state["shown"] = key
        state["updates"] += 1

    def on_rendering(_=None) -> None:
        if rendering.value == "splats":
            for client in server.get_clients().values():
                _set_background(client, None)
            res.visible = False
            show_splats(float(time_slider.value))
        else:
            if state["splats"] is not None:
                state["splats"].remove()
                state["splats"], state["shown"] = None, None
            res.visible = True
            mark_all()

    rendering.on_update(on_rendering)
    time_slider.on_update(lambda _: mark_all() if rendering.value == "server" else None)

    def render_client(client) -> None:
        cam = client.camera
        aspect = getattr(cam, "aspect", 1.0)
        w, h = image_size(aspect, int(res.value))
        cams = camera_from_viser(cam.position, cam.wxyz, cam.fov, w, h, asset.device)
        image = render_view(asset, cams, float(time_slider.value), background, backend)
        _set_background(client, image)
        state["updates"] += 1

    on_rendering()

    def loop() -> None:
        last = _time.perf_counter()
        while not state["stop"]:
            now = _time.perf_counter()
            if play.value and duration > 0:
                t = (float(time_slider.value) + (now - last) * float(speed_slider.value)) % duration
                time_slider.value = t
            last = now
            if rendering.value == "splats":
                show_splats(float(time_slider.value))
                _time.sleep(1 / 60)
                continue
            if play.value:
                mark_all()
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
            _time.sleep(0.005 if todo else 0.03)

    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{bound}"
    viewer = Viewer(server, url, state)
    moved = f" (port {port} was taken)" if port not in (0, bound) else ""
    reach = (
        "only this machine can connect"
        if host in ("127.0.0.1", "localhost", "::1")
        else "reachable from the network, without authentication"
    )
    print(f"ayg view: serving on {url}{moved}; {reach}", flush=True)
    if not block:
        state["thread"] = threading.Thread(target=loop, daemon=True)
        state["thread"].start()
        return viewer
    print("ayg view: Ctrl-C to stop", flush=True)
    try:
        loop()
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    return viewer
