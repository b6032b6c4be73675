"""A real browser: Debian's ``chromium`` (installed by ``.ci/run``; nothing is installed at
test time) driven by Playwright opens the exported web player (from file://) and ``ayg view``
(client-side splats and server rendering) on a toy asset, a red ball that moves 0.45 to −y
between τ = 0 and τ = 1. Through the time slider (keyboard Home / End on it) it takes
screenshots at τ = 0 and τ = 1 and checks that

  (a) the object is visible: red pixels at the centre of the object's box;
  (b) the screenshots differ where the object moves: its red region's centroid moves by
      more than 40 px to the left (the camera looks from +x, so −y is on the left);
  (c) each screenshot matches ``ayg render`` of the same camera (ayg render's default
      look-at camera, the viewer's opening view) and time at the canvas size: the red masks
      overlap with IoU ≥ 0.85 and the mean absolute colour difference in the object's box is
      ≤ 0.05 (measured: IoU 0.97-0.98, difference 0.001-0.01).

WebGL runs on SwiftShader (software), so the test needs no GPU. Set AYG_SCREENSHOTS=DIR to
keep the screenshots (docs/screenshots holds the committed ones).
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ayg.asset import Asset
from ayg.cameras import look_at_cameras
from ayg.deformation import DeformationConfig, DeformationField, Motion, Segment
from ayg.gaussians import GaussianCloud, rgb_to_sh_dc

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the browser tests (.ci/run installs it)")
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
pytest.importorskip("viser")

# headless Chromium as root without a GPU, without any network traffic of its own; WebGL
# on SwiftShader (ANGLE's software Vulkan)
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]  # fmt: skip
VIEWPORT = {"width": 960, "height": 400}
SHIFT = -0.45  # world y displacement of the ball at τ = 1
MIN_IOU, MAX_DIFF, MIN_MOVE = 0.85, 0.05, 40.0


def red_ball(n: int = 300) -> Asset:
    """An opaque red ball of radius 0.25 whose deformation field moves every Gaussian by
    (0, SHIFT, 0)·ξ(τ): the last layer's weights are zero and its bias is set so that the
    soft clamp gives SHIFT."""
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * 0.25 * torch.rand(n, 1, generator=g).pow(1 / 3)
    rgb = torch.tensor([0.85, 0.1, 0.1]).expand(n, 3)
    cloud = GaussianCloud(
        means, torch.full((n, 1), math.log(0.05)), None, torch.full((n,), 4.0),
        rgb_to_sh_dc(rgb), torch.zeros(n, 3, 3), requires_grad=False,
    )  # fmt: skip
    field = DeformationField(DeformationConfig(hidden=8))
    with torch.no_grad():
        last = field.mlp[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[1] = 0.5 * math.atanh(SHIFT / 0.5)
    for p in field.parameters():
        p.requires_grad_(False)
    motion = Motion([Segment(field, "base", "a red ball moving")])
    return Asset.from_cloud(cloud, motion, prompts="a red ball moving")


def red(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.int32)
    return (x[..., 0] > 120) & (x[..., 0] - np.maximum(x[..., 1], x[..., 2]) > 60)


def canvas_shot(page) -> np.ndarray:
    from PIL import Image

    png = page.locator("canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def reference(asset: Asset, t: float, width: int, height: int) -> np.ndarray:
    cams = look_at_cameras(15.0, 0.0, 3.0, 40.0, width, height)
    with torch.no_grad():
        rgb = asset.render(cams, torch.tensor([t]), background=torch.ones(3), backend="torch").rgb
    return (rgb[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport=VIEWPORT)
    outside: list[str] = []

    def on_request(request):
        u = request.url
        if not u.startswith(("file:", "data:", "blob:", "http://127.0.0.1", "ws://127.0.0.1")):
            outside.append(u)

    page.on("request", on_request)
    page.goto(url)
    page.wait_for_selector("canvas", timeout=30_000)
    return page, outside


def wait_for_red(page, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if red(canvas_shot(page)).sum() > 200:
            return
        page.wait_for_timeout(250)
    raise AssertionError("the splats never appeared")


def close_notifications(page) -> None:
    # viser says "Software WebGL rendering detected" over the top-left corner
    for button in page.locator(".mantine-Notification-closeButton").all():
        button.click()
    page.wait_for_timeout(300)


def seek(page, slider, key: str, settle_ms: int = 1200) -> np.ndarray:
    slider.focus()
    page.keyboard.press(key)
    page.wait_for_timeout(settle_ms)
    return canvas_shot(page)


def keep_page(page, name: str) -> None:
    """With AYG_SCREENSHOTS set, the whole page (controls included) for the README."""
    keep = os.environ.get("AYG_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(keep) / f"{name}_page.png"))


def half(img: np.ndarray) -> np.ndarray:
    """2×2 box filter: the comparison runs at half the canvas size (4× cheaper renders)."""
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    x = img[:h, :w].astype(np.float64)
    return (
        ((x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4)
        .round()
        .astype(np.uint8)
    )


def check_pair(asset: Asset, shots: dict[float, np.ndarray], name: str) -> None:
    centroids = {}
    for t, full in shots.items():
        img = half(full)
        h, w = img.shape[:2]
        ref = reference(asset, t, w, h)  # same vertical fov: the same view at half the pixels
        m, m_ref = red(img), red(ref)
        assert m_ref.sum() > 200, "the reference render shows no object"
        rows, cols = np.nonzero(m_ref)
        r0, r1 = max(rows.min() - 10, 0), min(rows.max() + 10, h)
        c0, c1 = max(cols.min() - 10, 0), min(cols.max() + 10, w)
        # (a) visible: the centre of the object's box is the object's colour
        cy, cx = (r0 + r1) // 2, (c0 + c1) // 2
        assert m[cy - 2 : cy + 3, cx - 2 : cx + 3].mean() > 0.9, f"{name} τ={t}: no object"
        # (c) matches ayg render
        box, box_ref = m[r0:r1, c0:c1], m_ref[r0:r1, c0:c1]
        iou = (box & box_ref).sum() / max((box | box_ref).sum(), 1)
        diff = np.abs(img[r0:r1, c0:c1].astype(float) - ref[r0:r1, c0:c1]).mean() / 255
        assert iou >= MIN_IOU, f"{name} τ={t}: IoU {iou:.3f} with ayg render < {MIN_IOU}"
        assert diff <= MAX_DIFF, f"{name} τ={t}: colour difference {diff:.3f} > {MAX_DIFF}"
        centroids[t] = np.nonzero(m)[1].mean()
    # (b) the two screenshots differ where the object moves (centroids at half size)
    assert 2 * (centroids[0.0] - centroids[1.0]) > MIN_MOVE, f"{name}: moved {centroids}"
    keep = os.environ.get("AYG_SCREENSHOTS")
    if keep:
        from PIL import Image

        Path(keep).mkdir(parents=True, exist_ok=True)
        for t, full in shots.items():
            Image.fromarray(full).save(Path(keep) / f"{name}_tau{t:g}.png")


def test_web_player_in_chromium(browser, tmp_path):
    from ayg.webplayer import export_web

    asset = red_ball()
    info = export_web(asset, tmp_path / "web", fps=4, seconds=1)
    page, outside = open_page(browser, info["path"].resolve().as_uri())
    try:
        wait_for_red(page)
        close_notifications(page)
        slider = page.locator(".mantine-Slider-root").first  # the playback bar's time slider
        shots = {0.0: seek(page, slider, "Home"), 1.0: seek(page, slider, "End")}
        keep_page(page, "web_player")
    finally:
        page.close()
    check_pair(asset, shots, "web_player")
    assert outside == [], f"the player fetched {outside}"


@pytest.mark.parametrize("mode", ["splats", "server"])
def test_ayg_view_in_chromium(browser, mode):
    from ayg.viewer import view

    asset = red_ball()
    viewer = view(asset, port=0, mode=mode, block=False, resolution=1024, backend="torch")
    try:
        assert viewer.url.startswith("http://127.0.0.1:") and not viewer.url.endswith(":0")
        page, outside = open_page(browser, viewer.url)
        try:
            wait_for_red(page)
            close_notifications(page)
            # the GUI's "time" slider: its <label for=...> names the slider's id
            slider_id = page.locator("label", has_text=re.compile("^time$")).get_attribute("for")
            thumb = page.locator(f'[id="{slider_id}"] [role=slider]')
            settle = 1200 if mode == "splats" else 3000
            shots = {
                0.0: seek(page, thumb, "Home", settle),
                1.0: seek(page, thumb, "End", settle),
            }
            keep_page(page, f"view_{mode}")
        finally:
            page.close()
    finally:
        viewer.stop()
    check_pair(asset, shots, f"view_{mode}")
    assert outside == [], f"the viewer fetched {outside}"
