"""Frames per second of ``ayg view`` in a real browser (Debian's chromium, headless, driven by
Playwright) while the animation plays: client-side splats against server rendering, and the
exported web player.

    python benchmarks/viewer_fps.py --device cpu  [--gaussians 400,20000] [--json out.json]
    python benchmarks/viewer_fps.py --device cuda [--gaussians 400,20000,100000]
    python benchmarks/viewer_fps.py --asset runs/cone/asset.ayg --screenshots docs/screenshots
    python benchmarks/viewer_fps.py --device cuda --no-browser [--json out.json]

For each asset and each way of drawing it, the page plays for --seconds and two rates are
counted:

* ``drawn_fps``: animation frames in which the page issued WebGL draw calls (a counter in
  ``requestAnimationFrame`` around the draw functions): how often the browser repaints;
* ``updates_fps``: new time steps that reached the browser: centre buffers sent (splats) or
  images rendered and sent (server), counted by the viewer; for the web player, the
  recording's frame rate.

What a user sees move is the smaller of the two (``fps``). The server renders with ayg's
rasterizer on --device (gsplat's CUDA kernels on a GPU, the torch backend on a CPU); the
browser draws with WebGL, on SwiftShader (software, on the CPU) here since headless Chromium
on a machine without a GPU has no other. The asset is a ball of N isotropic Gaussians moved by
a deformation field of the paper's size (C.2: 5 layers of width 128), or --asset. Prints one
line per case and writes the figures to --json. Asserts nothing.

``--no-browser`` (a machine without chromium, such as a GPU server) measures the server's side
alone: for each mode, the new time steps a second the server can produce on --device, the
ceiling on ``updates_fps`` (``server_fps``). Splats: the deformed centres of a new time step,
copied to host memory (``ayg.viewer.centers_at``, what the viewer sends). Server rendering: one
800×600-aspect image at --resolution rendered (``ayg.viewer.render_view``) and JPEG-encoded as
viser encodes background images. Each is the mean over --seconds after one warm-up; the time
steps differ from call to call, as they do while the animation plays.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from ayg.asset import Asset
from ayg.deformation import DeformationField, Motion, Segment
from ayg.gaussians import GaussianCloud, rgb_to_sh_dc
from ayg.io_utils import write_json

FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]  # fmt: skip

# counts requestAnimationFrame ticks and the ticks in which WebGL drew something
COUNTER = """
window.__ayg = {ticks: 0, drawn: 0};
(() => {
  let drew = false;
  for (const C of [window.WebGL2RenderingContext, window.WebGLRenderingContext]) {
    if (!C) continue;
    for (const f of ["drawArrays", "drawElements", "drawArraysInstanced",
                     "drawElementsInstanced"]) {
      const orig = C.prototype[f];
      if (orig) C.prototype[f] = function (...a) { drew = true; return orig.apply(this, a); };
    }
  }
  const tick = () => {
    window.__ayg.ticks++;
    if (drew) { window.__ayg.drawn++; drew = false; }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})();
"""


def moving_ball(n: int, seed: int = 0) -> Asset:
    """n isotropic Gaussians in a ball of radius 0.4, blue, moved by a random deformation
    field of the paper's size (its last layer scaled up so that the ball visibly deforms)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * 0.4 * torch.rand(n, 1, generator=g).pow(1 / 3)
    scale = 0.4 * 1.2 / n ** (1 / 3)  # about the spacing of the centres
    rgb = torch.tensor([0.2, 0.35, 0.85]) + 0.1 * torch.rand(n, 3, generator=g)
    cloud = GaussianCloud(
        means, torch.full((n, 1), math.log(scale)), None, torch.full((n,), 3.0),
        rgb_to_sh_dc(rgb.clamp(0, 1)), torch.zeros(n, 3, 3), requires_grad=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    field = DeformationField()
    with torch.no_grad():
        field.mlp[-1].weight.normal_(0.0, 0.05)
    for p in field.parameters():
        p.requires_grad_(False)
    motion = Motion([Segment(field, "base", "a ball wobbling")])
    return Asset.from_cloud(cloud, motion, prompts=f"a ball of {n} Gaussians wobbling")


def measure(page, seconds: float) -> dict:
    start = page.evaluate("({...window.__ayg})")
    t0 = time.perf_counter()
    page.wait_for_timeout(seconds * 1000)
    end = page.evaluate("({...window.__ayg})")
    dt = time.perf_counter() - t0
    return {
        "raf_fps": (end["ticks"] - start["ticks"]) / dt,
        "drawn_fps": (end["drawn"] - start["drawn"]) / dt,
        "seconds": dt,
    }


def open_page(browser, url: str, viewport):
    page = browser.new_page(viewport=viewport)
    page.add_init_script(COUNTER)
    page.goto(url)
    page.wait_for_selector("canvas", timeout=60_000)
    page.wait_for_timeout(3000)  # first upload, sorting, notifications
    for button in page.locator(".mantine-Notification-closeButton").all():
        button.click()
    return page


def run_view(browser, asset, mode, args, shots: Path | None, name: str) -> dict:
    from ayg.viewer import view

    viewer = view(
        asset, port=0, mode=mode, block=False, playing=True, speed=0.25,
        resolution=args.resolution, device=args.device,
    )  # fmt: skip
    try:
        page = open_page(browser, viewer.url, args.viewport)
        try:
            n0, t0 = viewer.updates, time.perf_counter()
            m = measure(page, args.seconds)
            m["updates_fps"] = (viewer.updates - n0) / (time.perf_counter() - t0)
            if shots is not None:
                page.screenshot(path=str(shots / f"{name}_view_{mode}.png"))
        finally:
            page.close()
    finally:
        viewer.stop()
    return m


def run_web(browser, asset, args, tmp: Path, shots: Path | None, name: str) -> dict:
    from ayg.webplayer import export_web

    info = export_web(asset, tmp / name, fps=args.fps, seconds=4.0)
    page = open_page(browser, info["path"].resolve().as_uri(), args.viewport)
    try:
        m = measure(page, args.seconds)
        m["updates_fps"] = float(args.fps)
        m["player_bytes"] = info["bytes"]
        m["bytes_per_second"] = info["bytes_per_second"]
        if shots is not None:
            page.screenshot(path=str(shots / f"{name}_web_player.png"))
    finally:
        page.close()
    return m


def jpeg_encoder():
    """viser's background-image encoder when viser is installed, else OpenCV's (viser's own
    first choice), else Pillow's; returns (name, encode(image uint8 HxWx3) -> bytes)."""
    try:
        from viser._scene_api import _encode_image_binary

        return "viser", lambda im: _encode_image_binary(im, "jpeg")[1]
    except ImportError:
        pass
    try:
        import cv2

        return "opencv", lambda im: cv2.imencode(".jpg", im[:, :, ::-1])[1].tobytes()
    except ImportError:
        import io

        from PIL import Image

        def pil(im):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="JPEG", quality=75)
            return buf.getvalue()

        return "pillow", pil


def server_rates(asset, args) -> list[dict]:
    """--no-browser: the time steps a second the server produces for each mode."""
    from ayg.cameras import look_at_cameras
    from ayg.viewer import DEFAULT_VIEW, centers_at, image_size, render_view

    asset.to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    encoder, encode = jpeg_encoder()
    w, h = image_size(args.width / args.height, args.resolution)
    elevation, azimuth, distance, fov = DEFAULT_VIEW
    cams = look_at_cameras(elevation, azimuth, distance, fov, w, h, device=args.device)
    duration = float(asset.duration) or 1.0
    work = {
        "splats": lambda t: centers_at(asset, t),
        "server": lambda t: encode(render_view(asset, cams, t)),
    }
    out = []
    for mode in [m for m in args.modes.split(",") if m in work]:
        fn = work[mode]
        fn(0.0)  # warm-up: kernels built, caches filled
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            fn((0.013 + n * 0.0371) % duration)
            n += 1
        sync()
        dt = time.perf_counter() - t0
        row = {"mode": mode, "server_fps": n / dt, "calls": n, "seconds": dt}
        if mode == "server":
            row.update(width=w, height=h, jpeg=encoder)
        out.append(row)
    return out


def main_no_browser(args, assets) -> int:
    results = []
    for name, asset in assets:
        for m in server_rates(asset, args):
            m.update(asset=name, gaussians=asset.num_gaussians)
            results.append(m)
            size = f" at {m['width']}x{m['height']}" if "width" in m else ""
            print(
                f"{name:>12} {m['mode']:>7}: server produces {m['server_fps']:7.1f} time steps/s"
                f"{size} ({m['calls']} in {m['seconds']:.1f} s)",
                flush=True,
            )
    device_name = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else platform.processor() or "cpu"
    )
    return write_report(args, results, device_name=device_name, browser=None)


def write_report(args, results: list[dict], **extra) -> int:
    """The machine, the settings and ``results`` to --json (when given); returns 0."""
    if args.json:
        report = {
            "device": args.device,
            **extra,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "resolution": args.resolution,
            "results": results,
        }
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="where the server renders: cpu or cuda")
    ap.add_argument("--gaussians", default="400,20000", help="comma list of ball sizes")
    ap.add_argument("--asset", default=None, help="measure this asset instead of the balls")
    ap.add_argument("--modes", default="splats,server,web")
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per case")
    ap.add_argument("--resolution", type=int, default=512, help="server rendering: longer side")
    ap.add_argument("--fps", type=float, default=12.0, help="web player: recording frame rate")
    ap.add_argument("--width", type=int, default=800)
    ap.add_argument("--height", type=int, default=600)
    ap.add_argument("--chromium", default=shutil.which("chromium"))
    ap.add_argument("--screenshots", default=None, help="save a screenshot of each case here")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument(
        "--no-browser", action="store_true", help="the server's side alone (no chromium needed)"
    )
    args = ap.parse_args(argv)
    if args.chromium is None and not args.no_browser:
        print("viewer_fps: needs chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("viewer_fps: --device cuda but no CUDA device", file=sys.stderr)
        return 2
    args.viewport = {"width": args.width, "height": args.height}
    modes = args.modes.split(",")
    if args.asset:
        from ayg.asset import load

        assets = [(Path(args.asset).stem, load(args.asset))]
    else:
        assets = [(f"ball{n}", moving_ball(int(n))) for n in args.gaussians.split(",")]
    if args.no_browser:
        return main_no_browser(args, assets)
    shots = Path(args.screenshots) if args.screenshots else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    import tempfile

    from playwright.sync_api import sync_playwright

    results = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS, headless=True)
        probe = browser.new_page()
        renderer = probe.evaluate(
            "(() => { const g = document.createElement('canvas').getContext('webgl2');"
            " const e = g && g.getExtension('WEBGL_debug_renderer_info');"
            " return e ? g.getParameter(e.UNMASKED_RENDERER_WEBGL) : String(!!g); })()"
        )
        probe.close()
        for name, asset in assets:
            for mode in modes:
                if mode == "web":
                    m = run_web(browser, asset, args, Path(tmp), shots, name)
                else:
                    m = run_view(browser, asset, mode, args, shots, name)
                m.update(
                    asset=name, gaussians=asset.num_gaussians, mode=mode,
                    fps=min(m["drawn_fps"], m["updates_fps"]),
                )  # fmt: skip
                results.append(m)
                print(
                    f"{name:>12} {mode:>7}: {m['fps']:5.1f} fps seen "
                    f"(browser draws {m['drawn_fps']:5.1f}/s of {m['raf_fps']:5.1f} rAF/s, "
                    f"new time steps {m['updates_fps']:5.1f}/s)",
                    flush=True,
                )
        browser.close()
    return write_report(args, results, browser_webgl=renderer, viewport=args.viewport)


if __name__ == "__main__":
    sys.exit(main())
