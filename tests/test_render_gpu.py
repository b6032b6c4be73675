"""GPU tests of ayg.render: the gsplat and torch backends agree on images and gradients
(shared and per-camera means, SH and RGB colours, a background, saturated pixels), and the
torch backend gives the same on CUDA as on the CPU. Run on the accelerator machine:

    pytest -m gpu tests/test_render_gpu.py
"""

from __future__ import annotations

import importlib

import pytest
import torch

from ayg.cameras import Stage2CameraSampler, look_at_cameras
from ayg.render import gaussian_visibility, gsplat_available, rasterize

render_module = importlib.import_module("ayg.render")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
needs_gsplat = pytest.mark.skipif(
    not (torch.cuda.is_available() and gsplat_available()), reason="needs gsplat==1.5.3 on CUDA"
)
DEV = torch.device("cuda")


def scene(n, cams, per_camera, sh_degree, seed=0, opaque=0.1, anisotropic=True):
    """An object of radius ~0.5 at the origin; a fraction `opaque` of near-opaque Gaussians."""
    g = torch.Generator().manual_seed(seed)
    C = len(cams)
    r = 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3)
    d = torch.randn(n, 3, generator=g)
    means = r * d / d.norm(dim=-1, keepdim=True)
    if per_camera:
        means = means[None] + 0.03 * torch.randn(C, n, 3, generator=g)
    scales = torch.exp(torch.empty(n, 3 if anisotropic else 1).uniform_(-5.0, -3.0, generator=g))
    scales = scales.expand(n, 3).clone()
    quats = torch.randn(n, 4, generator=g) if anisotropic else None
    opacity = torch.empty(n).uniform_(0.05, 0.95, generator=g)
    opacity[: int(opaque * n)] = 0.995
    if sh_degree is None:
        colors = torch.rand(C, n, 3, generator=g) if per_camera else torch.rand(n, 3, generator=g)
    else:
        colors = 0.3 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g)
    out = dict(means=means, scales=scales, quats=quats, opacity=opacity, colors=colors)
    return {k: None if v is None else v.to(DEV) for k, v in out.items()}


def render_both(sc, cams, sh_degree, background=None):
    """Renders with both backends from the same leaves; returns outputs and gradients of a
    random linear loss w.r.t. every input (and means2d)."""
    g = torch.Generator().manual_seed(1)
    H, W, C = cams.height, cams.width, len(cams)
    wr = torch.randn(C, 3, H, W, generator=g).to(DEV)
    wa = torch.randn(C, 1, H, W, generator=g).to(DEV)
    wd = torch.randn(C, 1, H, W, generator=g).to(DEV)
    results = {}
    for backend in ("gsplat", "torch"):
        leaves = {k: v.clone().requires_grad_() for k, v in sc.items() if v is not None}
        args = {k: leaves.get(k) for k in sc}
        out = rasterize(
            **args, cameras=cams, sh_degree=sh_degree, background=background, backend=backend
        )
        out.means2d.retain_grad()
        loss = (out.rgb * wr).sum() + (out.alpha * wa).sum() + 0.1 * (out.depth * wd).sum()
        loss.backward()
        grads = {k: v.grad for k, v in leaves.items()}
        grads["means2d"] = out.means2d.grad
        results[backend] = (out, grads)
    return results


def assert_images_agree(a, b, name):
    """Equal to float32 precision, allowing a handful of pixels where one (pixel, Gaussian)
    pair sits on the α = 1/255 threshold and the backends' exp() round it differently."""
    d = (a - b).abs()
    assert d.mean() < 2e-6, f"{name}: mean |diff| {d.mean():.3g}"
    assert (d > 1e-4).float().mean() < 1e-3, (
        f"{name}: {(d > 1e-4).float().mean():.3g} of pixels differ"
    )
    assert d.max() < 0.02, f"{name}: max |diff| {d.max():.3g}"


def assert_grads_agree(ga, gb, vis):
    for k in gb:
        a, b = ga[k], gb[k]
        if k == "means2d":  # entries of culled Gaussians are unspecified
            a, b = a[vis], b[vis]
        rel = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        assert rel < 2e-3, f"grad {k}: relative L2 error {rel:.3g}"
        torch.testing.assert_close(
            a, b, atol=2e-3 * b.abs().max().item(), rtol=5e-2, msg=f"grad {k}"
        )


def compare(sc, cams, sh_degree, background=None):
    res = render_both(sc, cams, sh_degree, background)
    (og, gg), (ot, gt) = res["gsplat"], res["torch"]
    for k in ("rgb", "alpha", "depth"):
        assert_images_agree(getattr(og, k), getattr(ot, k), k)
    vis = (og.radii > 0) & (ot.radii > 0)
    # the screen boxes agree up to a pixel of rounding (float32 vs fast-math ceil)
    assert ((og.radii - ot.radii).abs() <= 1).all()
    assert ((og.radii > 0) != (ot.radii > 0)).float().mean() < 1e-3
    torch.testing.assert_close(og.means2d[vis], ot.means2d[vis], atol=1e-3, rtol=1e-5)
    assert_grads_agree(gg, gt, vis)
    return og, ot


@needs_gsplat
def test_gsplat_and_torch_agree_shared_means_sh():
    cams = look_at_cameras(
        [10.0, 20.0, 30.0, -5.0], [0.0, 90.0, 200.0, 300.0], 2.5, 40.0, 96, 64, DEV
    )
    sc = scene(3000, cams, per_camera=False, sh_degree=2)
    bg = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.5, 0.9], [1.0, 0.0, 0.0]], device=DEV
    )
    og, _ = compare(sc, cams, 2, background=bg)
    assert (og.alpha > 0.999 - 1e-6).any()  # saturated pixels: the T < 1e-4 stop is exercised


@needs_gsplat
def test_gsplat_and_torch_agree_per_camera_means_rgb():
    cams = Stage2CameraSampler(frames=4, width=256, height=160).sample(
        2, torch.Generator().manual_seed(3), DEV
    )
    sc = scene(5000, cams, per_camera=True, sh_degree=None)
    compare(sc, cams, None)


@needs_gsplat
def test_gsplat_and_torch_agree_per_camera_means_isotropic_sh3():
    cams = Stage2CameraSampler(frames=4, width=128, height=80).sample(
        1, torch.Generator().manual_seed(4), DEV
    )
    sc = scene(2000, cams, per_camera=True, sh_degree=3, anisotropic=False, opaque=0.3)
    compare(sc, cams, 3, background=0.5)


@needs_gsplat
def test_auto_picks_gsplat_on_cuda():
    means = torch.zeros(1, 3, device=DEV)
    assert render_module._choose_backend("auto", means) == "gsplat"
    assert render_module._choose_backend("auto", means.double()) == "torch"
    assert render_module._choose_backend("auto", means.cpu()) == "torch"


def test_torch_backend_same_on_cuda_and_cpu():
    cams = look_at_cameras([15.0, 30.0], [45.0, 250.0], 2.5, 50.0, 72, 40, DEV)
    sc = scene(1500, cams, per_camera=True, sh_degree=1)
    outs, grads = [], []
    for device in (DEV, torch.device("cpu")):
        leaves = {k: v.to(device).clone().requires_grad_() for k, v in sc.items() if v is not None}
        out = rasterize(
            **{k: leaves.get(k) for k in sc}, cameras=cams.to(device), sh_degree=1, backend="torch"
        )
        (out.rgb.square().sum() + out.depth.mean()).backward()
        outs.append(out)
        grads.append({k: v.grad.cpu() for k, v in leaves.items()})
    for k in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(
            getattr(outs[0], k).cpu(), getattr(outs[1], k), atol=1e-5, rtol=1e-4
        )
    for k in grads[1]:
        b = grads[1][k]
        torch.testing.assert_close(grads[0][k], b, atol=1e-4 * b.abs().max().item(), rtol=1e-3)
    vis_gpu = gaussian_visibility(sc["means"], sc["scales"], sc["quats"], sc["opacity"], cams)
    vis_cpu = gaussian_visibility(
        *(sc[k].cpu() for k in ("means", "scales", "quats", "opacity")), cams.to("cpu")
    )
    torch.testing.assert_close(vis_gpu.cpu(), vis_cpu, atol=1e-5, rtol=1e-4)
