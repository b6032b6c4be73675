"""Tests of ayg.render on the CPU: camera convention (docs/ARCHITECTURE.md, Conventions), footprint, compositing order,
background, depth, the torch backend against a naive dense reference (outputs and gradients)
and against finite differences, visibility, SH, input validation."""

from __future__ import annotations

import importlib
import math
from types import SimpleNamespace

import pytest
import torch

from ayg.cameras import look_at_cameras
from ayg.render import (
    ALPHA_MAX,
    ALPHA_MIN,
    EPS2D,
    T_MIN,
    eval_sh,
    gaussian_visibility,
    rasterize,
    render_gaussians,
)

render_module = importlib.import_module("ayg.render")  # ayg.render is also a function name

# --------------------------------------------------------------------------------------------
# Naive dense reference: every pixel × every Gaussian, sorted by depth, plain cumprod.
# The projection is written out independently of render.py from docs/ARCHITECTURE.md and the paper's eq. 1.


def _rotmat(q: torch.Tensor) -> torch.Tensor:
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)  # (N, 3, 3)


def reference_project(means, scales, quats, cams):
    """-> means2d (C, N, 2), inverse 2D covariances (C, N, 2, 2), camera z (C, N)."""
    C, H, W = len(cams), cams.height, cams.width
    dtype = means.dtype
    N = means.shape[-2]
    means_c = means if means.ndim == 3 else means.expand(C, N, 3)
    rot = torch.eye(3, dtype=dtype).expand(N, 3, 3) if quats is None else _rotmat(quats)
    sigma3 = rot @ torch.diag_embed(scales**2) @ rot.transpose(1, 2)  # (N, 3, 3)
    viewmats, Ks = cams.viewmats.to(dtype), cams.K.to(dtype)
    m2d, conics, zs = [], [], []
    for c in range(C):
        Rw = viewmats[c, :3, :3]
        x, y, z = (means_c[c] @ Rw.T + viewmats[c, :3, 3]).unbind(-1)
        f, cx, cy = Ks[c, 0, 0], Ks[c, 0, 2], Ks[c, 1, 2]
        tan_x, tan_y = W / (2 * f), H / (2 * f)
        xz = (x / z).clamp(-1.3 * tan_x, 1.3 * tan_x)
        yz = (y / z).clamp(-1.3 * tan_y, 1.3 * tan_y)
        zero = torch.zeros_like(z)
        J = torch.stack(
            [
                torch.stack([f / z, zero, -f * xz / z], -1),
                torch.stack([zero, f / z, -f * yz / z], -1),
            ],
            -2,
        )  # (N, 2, 3)
        cov2 = J @ Rw @ sigma3 @ Rw.T @ J.transpose(1, 2) + EPS2D * torch.eye(2, dtype=dtype)
        m2d.append(torch.stack([f * x / z + cx, f * y / z + cy], -1))
        conics.append(torch.linalg.inv(cov2))
        zs.append(z)
    return torch.stack(m2d), torch.stack(conics), torch.stack(zs)


def reference_alpha(opacity, conic, mean2d, z, points):
    """alpha (P, N) of N Gaussians at points (P, 2) with the renderer's clamp/skip/near rules."""
    d = points[:, None, :] - mean2d[None]  # (P, N, 2)
    alpha = opacity[None] * torch.exp(-0.5 * torch.einsum("pni,nij,pnj->pn", d, conic, d))
    alpha = torch.where(alpha < ALPHA_MIN, torch.zeros_like(alpha), alpha.clamp(max=ALPHA_MAX))
    return alpha * (z >= 0.01)[None]


def reference_render(means, scales, quats, opacity, colors, cams, sh_degree=None, background=None):
    C, H, W = len(cams), cams.height, cams.width
    dtype = means.dtype
    N = means.shape[-2]
    means_c = means if means.ndim == 3 else means.expand(C, N, 3)
    campos = cams.positions.to(dtype)
    means2d, conics, zs = reference_project(means, scales, quats, cams)
    jj, ii = torch.meshgrid(
        torch.arange(W, dtype=dtype), torch.arange(H, dtype=dtype), indexing="xy"
    )
    pix = torch.stack([jj.reshape(-1) + 0.5, ii.reshape(-1) + 0.5], -1)  # (HW, 2)
    rgbs, alphas, depths = [], [], []
    for c in range(C):
        z = zs[c]
        alpha = reference_alpha(opacity, conics[c], means2d[c], z, pix)  # (HW, N)
        if sh_degree is None:
            col = colors if colors.ndim == 2 else colors[c]
        else:
            sh = colors if colors.ndim == 3 else colors[c]
            col = (eval_sh(sh_degree, sh, means_c[c] - campos[c]) + 0.5).clamp_min(0)
        order = torch.argsort(z.detach())
        a = alpha[:, order]
        t_incl = torch.cumprod(1 - a, dim=1)
        t_excl = torch.cat([torch.ones_like(a[:, :1]), t_incl[:, :-1]], 1)
        w = a * t_excl * (t_incl > T_MIN)  # (HW, N)
        acc = w.sum(1)
        rgbs.append((w @ col[order]).T.reshape(3, H, W))
        alphas.append(acc.reshape(1, H, W))
        depths.append(((w @ z[order]) / acc.clamp_min(1e-8)).reshape(1, H, W))
    rgb, alpha = torch.stack(rgbs), torch.stack(alphas)
    if background is not None:
        rgb = rgb + (1 - alpha) * torch.as_tensor(background, dtype=dtype).reshape(-1, 3, 1, 1)
    return SimpleNamespace(rgb=rgb, alpha=alpha, depth=torch.stack(depths), means2d=means2d)


# --------------------------------------------------------------------------------------------
# scenes


def random_scene(n, n_cams, per_camera=False, sh_degree=2, dtype=torch.float64, seed=0, opaque=0.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.25
    if per_camera:  # 4D: each camera sees the Gaussians at another time
        means = means + 0.05 * torch.randn(n_cams, n, 3, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.08 + 0.02
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    opacity = torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.1
    if opaque > 0:  # some near-opaque Gaussians so that pixels hit the T < 1e-4 stop
        k = int(opaque * n)
        opacity[:k] = 0.995
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g, dtype=dtype)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.3
    cams = look_at_cameras(
        torch.rand(n_cams, generator=g) * 60 - 15,
        torch.rand(n_cams, generator=g) * 360,
        2.0 + torch.rand(n_cams, generator=g),
        40.0,
        40,
        24,
    )
    return dict(
        means=means,
        scales=scales,
        quats=quats,
        opacity=opacity,
        colors=colors,
        cameras=cams,
        sh_degree=sh_degree,
    )


def one_gaussian(pos, sigma=0.05, opacity=0.5, color=(1.0, 1.0, 1.0), dtype=torch.float64):
    return dict(
        means=torch.tensor([pos], dtype=dtype),
        scales=torch.full((1, 3), sigma, dtype=dtype),
        quats=None,
        opacity=torch.tensor([opacity], dtype=dtype),
        colors=torch.tensor([color], dtype=dtype),
    )


def front_camera(width=64, height=48, distance=3.0, fov=40.0, azimuth=0.0, elevation=0.0):
    return look_at_cameras(elevation, azimuth, distance, fov, width, height)


def centroid(img: torch.Tensor) -> tuple[float, float]:
    """Alpha-weighted centre (u, v) of a (H, W) image in pixel coordinates."""
    H, W = img.shape
    v = (torch.arange(H, dtype=img.dtype) + 0.5)[:, None]
    u = (torch.arange(W, dtype=img.dtype) + 0.5)[None, :]
    return float((img * u).sum() / img.sum()), float((img * v).sum() / img.sum())


# --------------------------------------------------------------------------------------------
# camera convention and footprint


@pytest.mark.parametrize(
    "pos, du, dv",
    [
        ((0.0, 0.0, 0.0), 0, 0),
        ((0.0, 0.1, 0.0), 1, 0),
        ((0.0, 0.0, 0.1), 0, -1),
        ((0.0, -0.1, 0.0), -1, 0),
    ],
)
def test_single_gaussian_lands_where_the_convention_says(pos, du, dv):
    cams = front_camera()  # azimuth 0: camera on +x, looking at the origin, z up
    W, H, d = cams.width, cams.height, 3.0
    f = H / (2 * math.tan(math.radians(40.0) / 2))
    out = rasterize(**one_gaussian(pos), cameras=cams, backend="torch")
    u_exp, v_exp = W / 2 + du * f * 0.1 / d, H / 2 + dv * f * 0.1 / d
    torch.testing.assert_close(out.means2d[0, 0], torch.tensor([u_exp, v_exp], dtype=torch.float64))
    u, v = centroid(out.alpha[0, 0])
    assert abs(u - u_exp) < 0.02 and abs(v - v_exp) < 0.02, (u, v, u_exp, v_exp)
    assert out.radii[0, 0] > 0


def test_footprint_width_is_focal_times_sigma_over_depth():
    cams = front_camera(width=96, height=64)
    sigma, d = 0.06, 3.0
    f = 64 / (2 * math.tan(math.radians(40.0) / 2))
    out = rasterize(
        **one_gaussian((0.0, 0.0, 0.0), sigma=sigma, opacity=0.9), cameras=cams, backend="torch"
    )
    # fit log alpha = c - (u - u0)² / (2 var) along the row just above the centre
    row = out.alpha[0, 0, 31]
    u = torch.arange(96, dtype=torch.float64) + 0.5 - 48.0
    keep = row > 2 * ALPHA_MIN
    A = torch.stack([torch.ones_like(u), u**2], -1)[keep]
    coef = torch.linalg.lstsq(A, row[keep].log()[:, None]).solution[:, 0]
    var = -1.0 / (2.0 * coef[1])
    expected = (f * sigma / d) ** 2 + EPS2D
    assert abs(float(var) - expected) < 1e-6 * expected, (float(var), expected)
    # and the peak (between four pixel centres) matches the opacity
    assert abs(float(coef[0].exp()) * math.exp(0.25 / (2 * var)) - 0.9) < 1e-9
    # radii: the opacity-aware 3-sigma box, ceil(min(3.33, sqrt(2 ln(255 o))) · std)
    k = min(3.33, math.sqrt(2 * math.log(255 * 0.9)))
    assert int(out.radii[0, 0]) == math.ceil(k * math.sqrt(expected))


def test_compositing_is_front_to_back():
    # red at +x (near the azimuth-0 camera), blue at -x; the azimuth-180 camera sees them swapped
    means = torch.tensor([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]], dtype=torch.float64)
    scales = torch.full((2, 3), 0.2, dtype=torch.float64)
    opacity = torch.tensor([0.98, 0.98], dtype=torch.float64)
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    cams = look_at_cameras(0.0, [0.0, 180.0], 3.0, 40.0, 32, 32)
    out = rasterize(means, scales, None, opacity, colors, cams, backend="torch")
    front = out.rgb[0, :, 15, 15]
    back = out.rgb[1, :, 15, 15]
    assert front[0] > 0.95 and front[2] < 0.05, front
    assert back[2] > 0.95 and back[0] < 0.05, back
    ref = reference_render(means, scales, None, opacity, colors, cams)
    torch.testing.assert_close(out.rgb, ref.rgb)


def test_depth_of_a_single_opaque_gaussian_is_its_z():
    cams = front_camera(width=33, height=33, distance=2.5)  # a pixel centre on the axis
    out = rasterize(
        **one_gaussian((0.3, 0.0, 0.0), sigma=0.1, opacity=1.0), cameras=cams, backend="torch"
    )
    assert abs(float(out.depth[0, 0, 16, 16]) - 2.2) < 1e-9
    assert abs(float(out.alpha[0, 0, 16, 16]) - ALPHA_MAX) < 1e-6  # alpha is clamped at 0.999
    assert float(out.depth[0, 0, 0, 0]) == 0.0  # nothing there: depth 0, not NaN


def test_background_is_composited_with_one_minus_alpha():
    sc = random_scene(20, 2, sh_degree=None)
    cams = sc.pop("cameras")
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    black = rasterize(**sc, cameras=cams, backend="torch")
    out = rasterize(**sc, cameras=cams, background=bg, backend="torch")
    torch.testing.assert_close(out.rgb, black.rgb + (1 - black.alpha) * bg[:, :, None, None])
    assert (black.alpha[..., 0, 0] < 1e-6).all()  # corners are empty: they show the background
    torch.testing.assert_close(out.rgb[:, :, 0, 0], bg.detach(), atol=1e-6, rtol=0)
    (gbg,) = torch.autograd.grad(out.rgb.sum(), bg)
    torch.testing.assert_close(gbg, (1 - black.alpha).sum((2, 3)).expand(2, 3))
    for b in (0.5, torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)):
        o = rasterize(**sc, cameras=cams, background=b, backend="torch")
        torch.testing.assert_close(
            o.rgb, black.rgb + (1 - black.alpha) * torch.as_tensor(b).reshape(-1, 1, 1)
        )


# --------------------------------------------------------------------------------------------
# against the dense reference


def _loss_weights(out, seed=1):
    g = torch.Generator().manual_seed(seed)
    wr = torch.randn(out.rgb.shape, generator=g, dtype=out.rgb.dtype)
    wa = torch.randn(out.alpha.shape, generator=g, dtype=out.rgb.dtype)
    wd = torch.randn(out.depth.shape, generator=g, dtype=out.rgb.dtype)
    return lambda o: (o.rgb * wr).sum() + (o.alpha * wa).sum() + 0.1 * (o.depth * wd).sum()


def _compare_with_reference(sc, background=None, atol=1e-9, rtol=1e-7):
    names = ["means", "scales", "quats", "opacity", "colors"]
    params = {k: sc[k].clone().requires_grad_() for k in names}
    cams, deg = sc["cameras"], sc["sh_degree"]
    out = rasterize(**params, cameras=cams, sh_degree=deg, background=background, backend="torch")
    ref = reference_render(*params.values(), cams, deg, background)
    for k in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(out, k), getattr(ref, k), atol=atol, rtol=rtol, msg=k)
    vis = out.radii > 0
    torch.testing.assert_close(out.means2d[vis], ref.means2d[vis], atol=atol, rtol=rtol)
    loss = _loss_weights(out)
    out.means2d.retain_grad()
    ref.means2d.retain_grad()
    g_out = torch.autograd.grad(loss(out), list(params.values()), retain_graph=True)
    g_ref = torch.autograd.grad(loss(ref), list(params.values()), retain_graph=True)
    for k, a, b in zip(names, g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=atol * 100, rtol=rtol * 100, msg=f"grad {k}")
    g2_out = torch.autograd.grad(loss(out), out.means2d)[0]
    g2_ref = torch.autograd.grad(loss(ref), ref.means2d)[0]
    torch.testing.assert_close(g2_out[vis], g2_ref[vis], atol=atol * 100, rtol=rtol * 100)
    return out


def test_torch_backend_matches_dense_reference_per_camera_means_sh():
    sc = random_scene(60, 3, per_camera=True, sh_degree=2, opaque=0.3)
    out = _compare_with_reference(sc, background=torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64))
    assert (out.alpha > 0.99).any()  # the scene has saturated pixels


def test_torch_backend_matches_dense_reference_shared_means_rgb_small_slices(monkeypatch):
    # tiny slices and chunks: transmittance carried over many slices, tiles retiring early
    monkeypatch.setattr(render_module, "_SLICE", {"cpu": 3, "cuda": 3})
    monkeypatch.setattr(render_module, "_TILE", 8)
    monkeypatch.setattr(render_module, "_CHUNK_ELEMENTS", {"cpu": 3 * 64 * 4, "cuda": 3 * 64 * 4})
    sc = random_scene(50, 2, per_camera=False, sh_degree=None, opaque=0.5, seed=3)
    _compare_with_reference(sc)


def test_torch_backend_matches_dense_reference_float32():
    sc = random_scene(40, 2, per_camera=True, sh_degree=1, dtype=torch.float32, seed=5)
    sc["colors"] = sc["colors"][None].expand(2, -1, -1, -1).clone()  # per-camera SH too
    _compare_with_reference(sc, atol=2e-5, rtol=1e-4)


def test_per_camera_means_equal_separate_renders():
    sc = random_scene(30, 3, per_camera=True, sh_degree=1)
    cams = sc.pop("cameras")
    means = sc.pop("means")
    both = rasterize(means, **sc, cameras=cams, backend="torch")
    for c in range(3):
        one = rasterize(means[c], **sc, cameras=cams[c], backend="torch")
        torch.testing.assert_close(both.rgb[c], one.rgb[0])
        torch.testing.assert_close(both.depth[c], one.depth[0])


# --------------------------------------------------------------------------------------------
# finite differences


@pytest.mark.parametrize("sh_degree, per_camera", [(2, False), (None, True)])
def test_gradients_match_finite_differences(sh_degree, per_camera):
    """Float64 central differences of a random linear function of rgb, alpha and depth, w.r.t.
    means, scales, quats, opacity and colours (RGB) / SH coefficients, and the background."""
    sc = random_scene(4, 2, per_camera=per_camera, sh_degree=sh_degree, seed=7)
    cams = look_at_cameras([10.0, 30.0], [20.0, 200.0], 2.0, 40.0, 16, 12)
    names = ["means", "scales", "quats", "opacity", "colors"]
    bg = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.5, 0.0]], dtype=torch.float64)
    probe = rasterize(**sc | {"cameras": cams}, backend="torch")
    loss = _loss_weights(probe, seed=2)

    def f(*params):
        *gauss, background = params
        out = rasterize(*gauss, cams, sh_degree=sh_degree, background=background, backend="torch")
        return loss(out)

    inputs = tuple(sc[k].clone().requires_grad_() for k in names) + (bg.requires_grad_(),)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# culling, means2d gradient, visibility, SH, wrapper, validation


def test_culling_and_means2d_gradient():
    means = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    means.requires_grad_()
    scales = torch.full((4, 3), 0.05)
    opacity = torch.tensor([0.8, 0.8, 0.002, 0.8])  # behind the camera; transparent; off screen
    out = rasterize(means, scales, None, opacity, torch.ones(4, 3), front_camera(), backend="torch")
    assert out.radii.dtype == torch.int32 and out.radii.shape == (1, 4)
    assert out.radii.tolist() == [[int(out.radii[0, 0]), 0, 0, 0]] and out.radii[0, 0] > 0
    out.means2d.retain_grad()
    (out.rgb[:, :, :, :32].sum() - out.rgb[:, :, :, 32:].sum()).backward()
    g = out.means2d.grad
    assert g.shape == (1, 4, 2)
    assert g[0, 0, 0] < 0 and g[0, 1:].abs().sum() == 0  # moving left brightens the left half


def test_gaussian_visibility():
    # a big near-opaque Gaussian in front of a small one, seen from +x; from -x the other way
    means = torch.tensor(
        [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.3, 0.0], [5.0, 0.0, 0.0]], dtype=torch.float64
    )
    scales = torch.tensor([[0.2] * 3, [0.02] * 3, [0.02] * 3, [0.02] * 3], dtype=torch.float64)
    opacity = torch.tensor([0.9, 0.5, 0.5, 0.5], dtype=torch.float64)
    cams = look_at_cameras(0.0, [0.0, 180.0], 3.0, 60.0, 64, 64)
    vis = gaussian_visibility(means, scales, None, opacity, cams)
    assert vis.shape == (2, 4)
    # the small one sits on the big one's axis: 1 - 0.9 in front of it
    assert abs(float(vis[0, 1]) - 0.1) < 1e-9
    assert float(vis[0, 0]) == 1.0 and float(vis[1, 1]) == 1.0  # nothing in front
    assert abs(float(vis[1, 0]) - (1 - 0.5)) < 1e-9  # from -x the small one is in front
    # off the axis by 0.3: alpha of the big one there, std f·0.2/2.5 px (+0.3 px²)
    f = 32 / math.tan(math.radians(30))
    var = (f * 0.2 / 2.5) ** 2 + EPS2D
    du = f * 0.3 / 3.0
    assert abs(float(vis[0, 2]) - (1 - 0.9 * math.exp(-0.5 * du * du / var))) < 1e-9
    assert float(vis[0, 3]) == 0.0  # behind the +x camera
    assert abs(float(vis[1, 3]) - 0.5 * 0.1) < 1e-9  # far behind both others for the -x one
    per = means[None].expand(2, 4, 3).clone()  # per-camera means give the same
    torch.testing.assert_close(gaussian_visibility(per, scales, None, opacity, cams), vis)


def test_visibility_matches_brute_force_transmittance(monkeypatch):
    monkeypatch.setattr(render_module, "_CHUNK_ELEMENTS", {"cpu": 256 * 7, "cuda": 256 * 7})
    sc = random_scene(40, 2, per_camera=True, sh_degree=None, seed=11)
    cams = sc["cameras"]
    vis = gaussian_visibility(sc["means"], sc["scales"], sc["quats"], sc["opacity"], cams)
    radii = rasterize(**sc, backend="torch").radii
    means2d, conics, zs = reference_project(sc["means"], sc["scales"], sc["quats"], cams)
    for c in range(2):
        for n in range(40):
            u, v = means2d[c, n].tolist()
            if not (0 <= u < cams.width and 0 <= v < cams.height) or radii[c, n] == 0:
                assert float(vis[c, n]) == 0.0
                continue
            alpha = reference_alpha(
                sc["opacity"], conics[c], means2d[c], zs[c], means2d[c, n][None]
            )[0]
            front = zs[c] < zs[c, n]
            expected = torch.prod(1 - alpha[front])
            assert abs(float(vis[c, n]) - float(expected)) < 1e-9, (c, n)
    assert (vis > 0).sum() > 40 and (vis < 0.9).sum() > 5  # the scene has occlusions


def test_eval_sh_basis_is_orthonormal_and_matches_constants():
    # Fibonacci sphere quadrature of ∫ Y_i Y_j = δ_ij over the 16 real SH of degree <= 3
    n = 20000
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n
    phi = math.pi * (1 + 5**0.5) * k
    r = (1 - z * z).sqrt()
    dirs = torch.stack([r * phi.cos(), r * phi.sin(), z], -1)
    sh = torch.eye(16, dtype=torch.float64)[:, :, None].expand(16, 16, 3)  # one-hot per basis
    Y = torch.stack([eval_sh(3, sh[i].expand(n, 16, 3), dirs)[:, 0] for i in range(16)])  # (16, n)
    gram = Y @ Y.T * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)
    assert abs(float(Y[0, 0]) - 0.28209479177387814) < 1e-12
    # degree 1 along +x: Kerbl's sign convention -C1·x·sh[3]
    one = torch.zeros(1, 4, 3, dtype=torch.float64)
    one[0, 3] = 1.0
    val = eval_sh(1, one, torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(val, torch.full((1, 3), -0.4886025119029199, dtype=torch.float64))
    # unused higher coefficients are ignored
    big = torch.randn(5, 16, 3, dtype=torch.float64)
    d = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(eval_sh(1, big, d), eval_sh(1, big[:, :4], d))


def test_render_gaussians_reads_a_cloud():
    sc = random_scene(10, 2, sh_degree=1)
    cloud = SimpleNamespace(
        means=sc["means"],
        scales=sc["scales"],
        quats=sc["quats"],
        opacity=sc["opacity"],
        sh=sc["colors"],
        sh_degree=1,
    )
    a = render_gaussians(cloud, sc["cameras"], backend="torch")
    b = rasterize(**sc, backend="torch")
    torch.testing.assert_close(a.rgb, b.rgb)
    moved = sc["means"][None].expand(2, -1, -1) + torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64)
    c = render_gaussians(cloud, sc["cameras"], means=moved, backend="torch")
    assert not torch.allclose(c.rgb, a.rgb)
    assert a.width == 40 and a.height == 24


def test_empty_and_all_culled():
    cams = front_camera(width=20, height=20)
    out = rasterize(
        torch.zeros(0, 3),
        torch.zeros(0, 3),
        None,
        torch.zeros(0),
        torch.zeros(0, 3),
        cams,
        backend="torch",
    )
    assert (
        out.rgb.shape == (1, 3, 20, 20)
        and out.rgb.abs().sum() == 0
        and out.means2d.shape == (1, 0, 2)
    )
    behind = rasterize(
        torch.tensor([[9.0, 0, 0]]),
        torch.full((1, 3), 0.1),
        None,
        torch.ones(1) * 0.5,
        torch.ones(1, 3),
        cams,
        background=0.5,
        backend="torch",
    )
    torch.testing.assert_close(behind.rgb, torch.full((1, 3, 20, 20), 0.5))
    assert gaussian_visibility(
        torch.zeros(0, 3), torch.zeros(0, 3), None, torch.zeros(0), cams
    ).shape == (1, 0)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(means=torch.zeros(5, 2)), "means must have shape"),
        (dict(means=torch.zeros(3, 5, 3)), "per-camera means have 3 rows but there are 2 cameras"),
        (dict(scales=torch.zeros(4, 3)), "scales must have shape"),
        (dict(quats=torch.zeros(5, 3)), "quats must be None"),
        (dict(opacity=torch.zeros(5, 1)), "opacity must have shape"),
        (dict(colors=torch.zeros(5, 4)), "colors must have shape"),
        (dict(colors=torch.zeros(5, 3, 3), sh_degree=2), "SH colors must have shape"),
        (
            dict(colors=torch.zeros(5, 16, 3), sh_degree=4),
            "sh_degree must be None or an int in 0..3",
        ),
        (dict(background=torch.zeros(4)), "background must be"),
        (dict(backend="cuda"), "backend must be one of"),
        (dict(backend="gsplat"), "backend 'gsplat' needs CUDA tensors"),
        (dict(cameras="front"), "cameras must be ayg.cameras.Cameras"),
    ],
)
def test_input_validation(change, match):
    args = dict(
        means=torch.zeros(5, 3),
        scales=torch.ones(5, 3),
        quats=None,
        opacity=torch.ones(5),
        colors=torch.ones(5, 3),
        cameras=look_at_cameras(0.0, [0.0, 90.0], 3.0, 40.0, 8, 8),
    )
    args.update(change)
    with pytest.raises(ValueError, match=match):
        rasterize(**args)


def test_sh_degree0_broadcasts_over_cameras():
    """A degree-0 cloud seen by several cameras (regression: eval_sh did not broadcast)."""
    from ayg.cameras import orbit_cameras

    cams = orbit_cameras(4, width=16, height=16)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(5, 3, generator=g) * 0.1
    sh = torch.randn(5, 1, 3, generator=g)
    out = rasterize(
        means, torch.full((5, 3), 0.1), None, torch.full((5,), 0.5), sh, cams, sh_degree=0
    )
    rgb = rasterize(
        means,
        torch.full((5, 3), 0.1),
        None,
        torch.full((5,), 0.5),
        (0.5 + 0.28209479177387814 * sh[:, 0]).clamp_min(0),
        cams,
    )
    assert out.rgb.shape == (4, 3, 16, 16)
    torch.testing.assert_close(out.rgb, rgb.rgb)
