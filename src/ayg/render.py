"""Differentiable rendering of 3D Gaussians: one call renders a batch of cameras (and, for 4D,
one set of means per camera) to RGB, alpha and depth.

The image model is the paper's sec. 2, eq. 1-2 (after Kerbl et al. 2023, "3D Gaussian
Splatting"): each Gaussian is projected to a 2D Gaussian with the EWA approximation
Σ' = J W Σ Wᵀ Jᵀ (Zwicker et al. 2001), Σ = R S Sᵀ Rᵀ, and pixels blend the depth-sorted
Gaussians front to back, C = Σ_i c_i α_i Π_{j<i} (1 − α_j) with α_i = o_i · exp(−½ dᵀ Σ'⁻¹ d).

Two backends share these maths and give the same outputs:

* ``torch``: pure PyTorch (CPU or GPU). The projection is plain autograd. Gaussians are binned
  to 8×8 tiles by their screen boxes and sorted by depth; each tile composites depth slices
  of 64 (CPU) or 256 (GPU) Gaussians at a time (one matmul evaluates log α for every
  pixel × Gaussian pair of a slice), carrying transmittance between slices and retiring a
  tile once every pixel is opaque or its list is spent. A custom autograd function keeps only each slice's incoming
  transmittance and recomputes the slice in the backward pass (front-to-back compositing has
  a closed-form gradient), so memory is bounded by the slice size, not the scene.
* ``gsplat``: gsplat 1.5.3's CUDA kernels (projection, SH, tiling, rasterisation).

The details follow gsplat 1.5.3 ("classic" mode) so that the two agree to float precision:
camera-space x/z, y/z clamped to 1.3× the half-fov tangent inside the Jacobian, +0.3 px² on
the diagonal of the 2D covariance (no opacity compensation), Gaussians with camera z < 0.01 or
opacity < 1/255 culled, α = min(0.999, o·g) (gsplat's clamp; Kerbl's CUDA code uses 0.99),
α < 1/255 skipped, a pixel stops before the Gaussian that would take its transmittance to
1e-4 or below. The screen box of a Gaussian is gsplat's opacity-aware one: half-widths
⌈k·√Σ'_xx⌉, ⌈k·√Σ'_yy⌉ with k = min(3.33, √(2 ln(255·o))) (k ≤ 3.33σ, the 3-sigma rule plus
the margin where α can still reach 1/255), which contains every pixel where α ≥ 1/255, so the
image does not depend on the tiling. Colours from SH follow Kerbl et al.: clamp(0.5 + SH, 0).

Conventions (docs/ARCHITECTURE.md, Conventions): camera space is OpenCV (x right, y down, z forward), pixel (row i,
col j) has its centre at (j + 0.5, i + 0.5), depth is camera-space z.
"""

from __future__ import annotations

import functools
import math
import sys
import types
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ayg.cameras import Cameras

NEAR_PLANE = 0.01
FAR_PLANE = 1e10
EPS2D = 0.3  # px² added to the 2D covariance diagonal (gsplat eps2d)
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4  # a pixel is done once its transmittance would fall to this
MAX_EXTENT = 3.33  # screen-box half-width in standard deviations, at most
FOV_CLAMP = 1.3  # x/z, y/z clamped to this × tan(fov/2) inside the Jacobian
DEPTH_EPS = 1e-8
TILE = 16  # gsplat's tile size
BACKENDS = ("auto", "torch", "gsplat")
GSPLAT_VERSION = "1.5.3"

# torch backend: tile size, Gaussians per tile per depth slice, and the most
# (pixel × Gaussian) pairs of one slice evaluated at once, which bounds the working memory
# (~10 float buffers of that size); tuned on a 2-core CPU and an H200
_TILE = 8
_SLICE = {"cpu": 64, "cuda": 256}  # a GPU is bound by launches: fewer, larger slices
_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


@dataclass
class RenderOutput:
    """What a render returns. ``means2d`` is the tensor the rasteriser consumed: call
    ``retain_grad()`` on it before ``backward()`` to read the screen-space gradient
    (densification). Entries of culled Gaussians (radii == 0) are unspecified."""

    rgb: Tensor  # (C, 3, H, W) composited over the background
    alpha: Tensor  # (C, 1, H, W)
    depth: Tensor  # (C, 1, H, W) expected camera-space z: Σ w_i z_i / max(alpha, 1e-8)
    means2d: Tensor  # (C, N, 2) projected centres in pixels
    radii: Tensor  # (C, N) int32 screen radius in pixels, 0 where culled

    @property
    def width(self) -> int:
        return self.rgb.shape[-1]

    @property
    def height(self) -> int:
        return self.rgb.shape[-2]


# --------------------------------------------------------------------------------------------
# Spherical harmonics (real, degree <= 3; the basis and constants of Kerbl et al. / gsplat)

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Evaluates real SH of degree 0..3: sh (..., K, 3) with K >= (degree+1)², dirs (..., 3)
    (normalised here; broadcast against sh's leading dims) -> (..., 3), the raw SH value.
    The colour of a Gaussian is ``sh_to_rgb`` = clamp(0.5 + eval_sh, 0)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    if sh.ndim < 2 or sh.shape[-1] != 3 or sh.shape[-2] < (degree + 1) ** 2:
        raise ValueError(
            f"sh must have shape (..., K>={(degree + 1) ** 2}, 3), got {tuple(sh.shape)}"
        )
    if dirs.shape[-1] != 3:
        raise ValueError(f"dirs must have shape (..., 3), got {tuple(dirs.shape)}")
    out = SH_C0 * sh[..., 0, :]
    if degree == 0:
        # broadcast like the higher bands do, so (N, K, 3) with (C, N, 3) dirs gives (C, N, 3)
        return out.expand(torch.broadcast_shapes(out.shape, dirs.shape))
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = (d[..., i : i + 1] for i in range(3))  # (..., 1) each, broadcast over RGB
    out = out + SH_C1 * (-y * sh[..., 1, :] + z * sh[..., 2, :] - x * sh[..., 3, :])
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + SH_C2[0] * xy * sh[..., 4, :]
        + SH_C2[1] * yz * sh[..., 5, :]
        + SH_C2[2] * (2.0 * zz - xx - yy) * sh[..., 6, :]
        + SH_C2[3] * xz * sh[..., 7, :]
        + SH_C2[4] * (xx - yy) * sh[..., 8, :]
    )
    if degree == 2:
        return out
    return (
        out
        + SH_C3[0] * y * (3.0 * xx - yy) * sh[..., 9, :]
        + SH_C3[1] * xy * z * sh[..., 10, :]
        + SH_C3[2] * y * (4.0 * zz - xx - yy) * sh[..., 11, :]
        + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[..., 12, :]
        + SH_C3[4] * x * (4.0 * zz - xx - yy) * sh[..., 13, :]
        + SH_C3[5] * z * (xx - yy) * sh[..., 14, :]
        + SH_C3[6] * x * (xx - 3.0 * yy) * sh[..., 15, :]
    )


def sh_to_rgb(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Colour seen along dirs: clamp(0.5 + eval_sh(degree, sh, dirs), min=0) (..., 3)."""
    return (eval_sh(degree, sh, dirs) + 0.5).clamp_min(0.0)


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass
class _Scene:
    means: Tensor  # (N, 3) or (C, N, 3)
    scales: Tensor  # (N, 3)
    quats: Tensor | None  # (N, 4) wxyz, or None for identity
    opacity: Tensor  # (N,)
    colors: Tensor  # RGB (N, 3) / (C, N, 3), or SH (N, K, 3) / (C, N, K, 3)
    sh_degree: int | None
    viewmats: Tensor  # (C, 4, 4)
    Ks: Tensor  # (C, 3, 3)
    campos: Tensor  # (C, 3)
    width: int
    height: int

    @property
    def C(self) -> int:  # noqa: N802
        return self.viewmats.shape[0]

    @property
    def N(self) -> int:  # noqa: N802
        return self.means.shape[-2]

    @property
    def per_camera(self) -> bool:
        return self.means.ndim == 3


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def _check_scene(
    means, scales, quats, opacity, colors, cameras, sh_degree, require_colors: bool = True
) -> _Scene:
    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras must be ayg.cameras.Cameras, got {type(cameras).__name__}")
    C = len(cameras)
    if not isinstance(means, Tensor) or means.ndim not in (2, 3) or means.shape[-1] != 3:
        raise ValueError(f"means must have shape (N, 3) or (C, N, 3), got {_shape(means)}")
    if means.ndim == 3 and means.shape[0] != C:
        raise ValueError(f"per-camera means have {means.shape[0]} rows but there are {C} cameras")
    if not means.is_floating_point():
        raise ValueError(f"means must be a floating-point tensor, got {means.dtype}")
    N = means.shape[-2]
    if scales.ndim != 2 or scales.shape[0] != N or scales.shape[1] not in (1, 3):
        raise ValueError(f"scales must have shape ({N}, 3) or ({N}, 1), got {_shape(scales)}")
    if quats is not None and quats.shape != (N, 4):
        raise ValueError(f"quats must be None or have shape ({N}, 4), got {_shape(quats)}")
    if opacity.shape != (N,):
        raise ValueError(f"opacity must have shape ({N},), got {_shape(opacity)}")
    if require_colors:
        if sh_degree is None:
            if colors.shape not in ((N, 3), (C, N, 3)):
                raise ValueError(
                    f"colors must have shape ({N}, 3) or ({C}, {N}, 3) when sh_degree is None, "
                    f"got {_shape(colors)}"
                )
        else:
            if not isinstance(sh_degree, int) or not 0 <= sh_degree <= 3:
                raise ValueError(f"sh_degree must be None or an int in 0..3, got {sh_degree!r}")
            K = (sh_degree + 1) ** 2
            ok = colors.ndim in (3, 4) and colors.shape[-1] == 3 and colors.shape[-2] >= K
            ok = ok and colors.shape[:-2] in ((N,), (C, N))
            if not ok:
                raise ValueError(
                    f"SH colors must have shape ({N}, K, 3) or ({C}, {N}, K, 3) with "
                    f"K >= {K} for degree {sh_degree}, got {_shape(colors)}"
                )
    device, dtype = means.device, means.dtype
    for name, t in (("scales", scales), ("quats", quats), ("opacity", opacity), ("colors", colors)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but means are on {device}")
    if scales.shape[1] == 1:
        scales = scales.expand(N, 3)
    cams = cameras.to(device)
    return _Scene(
        means=means,
        scales=scales,
        quats=quats,
        opacity=opacity,
        colors=colors,
        sh_degree=sh_degree,
        viewmats=cams.viewmats.to(dtype),
        Ks=cams.K.to(dtype),
        campos=cams.positions.to(dtype),
        width=cameras.width,
        height=cameras.height,
    )


def _check_background(background, C: int, H: int, W: int, like: Tensor) -> Tensor | None:
    """None, a float, (3,), (C, 3) or (C, 3, H, W) -> None or a tensor broadcastable to
    (C, 3, H, W)."""
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.ndim == 0:
        return bg.expand(3)[None, :, None, None]
    if bg.shape == (3,):
        return bg[None, :, None, None]
    if bg.shape == (C, 3):
        return bg[:, :, None, None]
    if bg.shape == (C, 3, H, W):
        return bg
    raise ValueError(
        f"background must be a float, (3,), ({C}, 3) or ({C}, 3, {H}, {W}), got {_shape(bg)}"
    )


# --------------------------------------------------------------------------------------------
# Projection (sec. 2 eq. 1; EWA splatting) -- the torch backend's; gsplat fuses the same maths


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(N, 4) wxyz, any norm -> (N, 3, 3) rotation matrices."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)  # fmt: skip


@dataclass
class _Projected:
    means2d: Tensor  # (C, N, 2) pixels
    conics: Tensor  # (C, N, 3) upper triangle of Σ'⁻¹: (a, b, c)
    depths: Tensor  # (C, N) camera z
    radii: Tensor  # (C, N, 2) int32 half-widths of the screen box, 0 where culled


def _project(s: _Scene) -> _Projected:
    R, t = s.viewmats[:, :3, :3], s.viewmats[:, :3, 3]  # (C, 3, 3), (C, 3)
    if s.per_camera:
        mc = torch.einsum("cij,cnj->cni", R, s.means) + t[:, None]  # (C, N, 3)
    else:
        mc = torch.einsum("cij,nj->cni", R, s.means) + t[:, None]
    x, y, z = mc.unbind(-1)  # (C, N)
    in_depth = (z >= NEAR_PLANE) & (z <= FAR_PLANE)
    z = torch.where(in_depth, z, torch.ones_like(z))  # culled ones must not make NaNs

    fx, fy = s.Ks[:, 0, 0, None], s.Ks[:, 1, 1, None]  # (C, 1)
    cx, cy = s.Ks[:, 0, 2, None], s.Ks[:, 1, 2, None]
    W, H = s.width, s.height
    lim_xp = (W - cx) / fx + (FOV_CLAMP - 1.0) * 0.5 * W / fx
    lim_xn = cx / fx + (FOV_CLAMP - 1.0) * 0.5 * W / fx
    lim_yp = (H - cy) / fy + (FOV_CLAMP - 1.0) * 0.5 * H / fy
    lim_yn = cy / fy + (FOV_CLAMP - 1.0) * 0.5 * H / fy
    u, v = x / z, y / z
    uc = torch.minimum(torch.maximum(u, -lim_xn), lim_xp)
    vc = torch.minimum(torch.maximum(v, -lim_yn), lim_yp)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * uc / z, zero, fy / z, -fy * vc / z], dim=-1).reshape(
        *z.shape, 2, 3
    )  # (C, N, 2, 3)

    if s.quats is None:  # axis-aligned: R S = diag(s)
        M = torch.diag_embed(s.scales)  # (N, 3, 3)
    else:
        M = quat_to_rotmat(s.quats) * s.scales[:, None, :]  # (N, 3, 3): R S
    T = J @ R[:, None] @ M  # (C, N, 2, 3): J W R S
    cov = T @ T.transpose(-1, -2)  # (C, N, 2, 2)
    a = cov[..., 0, 0] + EPS2D
    b = cov[..., 0, 1]
    c = cov[..., 1, 1] + EPS2D
    det = a * c - b * b
    ok_det = det > 0
    det = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)  # (C, N, 3)
    means2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)  # (C, N, 2)

    with torch.no_grad():
        o = s.opacity.expand(z.shape)  # (C, N)
        extent = torch.sqrt(2.0 * torch.log((o * 255.0).clamp_min(1.0))).clamp_max(MAX_EXTENT)
        rx = torch.ceil(extent * a.clamp_min(0).sqrt())
        ry = torch.ceil(extent * c.clamp_min(0).sqrt())
        mx, my = means2d[..., 0], means2d[..., 1]
        on_screen = (mx + rx > 0) & (mx - rx < W) & (my + ry > 0) & (my - ry < H)
        keep = in_depth & ok_det & (o >= ALPHA_MIN) & on_screen
        radii = torch.stack([rx, ry], dim=-1) * keep[..., None]
        radii = radii.to(torch.int32)
    return _Projected(means2d, conics, mc[..., 2], radii)


def _colors(s: _Scene) -> Tensor:
    """(C, N, 3) RGB per camera: given, or clamp(0.5 + SH(mean - camera centre), 0)."""
    C, N = s.C, s.N
    if s.sh_degree is None:
        return s.colors.expand(C, N, 3)
    dirs = (s.means if s.per_camera else s.means[None]) - s.campos[:, None]  # (C, N, 3)
    sh = s.colors if s.colors.ndim == 4 else s.colors[None]  # (C or 1, N, K, 3)
    return sh_to_rgb(s.sh_degree, sh, dirs)


# --------------------------------------------------------------------------------------------
# Tile binning (shared by the torch rasteriser and gaussian_visibility)


@dataclass
class _Bins:
    vis: Tensor  # (V,) flat (c·N + n) indices of the Gaussians that are drawn
    ids: Tensor  # (M,) row in vis of each (tile, Gaussian) pair, sorted by tile then depth
    keys: Tensor  # (M,) sorted int64 keys tile·V + depth rank
    rank: Tensor  # (V,) depth rank of each visible Gaussian (over all cameras)
    offsets: Tensor  # (n_tiles,) start of each tile's list in ids
    counts: Tensor  # (n_tiles,) length of each tile's list
    tiles_x: int
    tiles_y: int
    tile: int


@torch.no_grad()
def _bin_tiles(p: _Projected, width: int, height: int, tile: int) -> _Bins:
    C, N = p.depths.shape
    device = p.depths.device
    tw, th = math.ceil(width / tile), math.ceil(height / tile)
    vis = (p.radii > 0).any(-1).reshape(-1).nonzero().squeeze(1)  # (V,)
    V = vis.numel()
    cam = vis // N
    m = p.means2d.detach().reshape(-1, 2)[vis]  # (V, 2)
    r = p.radii.reshape(-1, 2)[vis].to(m.dtype)
    x0 = torch.floor((m[:, 0] - r[:, 0]) / tile).clamp(0, tw).long()
    x1 = torch.ceil((m[:, 0] + r[:, 0]) / tile).clamp(0, tw).long()
    y0 = torch.floor((m[:, 1] - r[:, 1]) / tile).clamp(0, th).long()
    y1 = torch.ceil((m[:, 1] + r[:, 1]) / tile).clamp(0, th).long()
    nx = (x1 - x0).clamp_min(0)
    n_per = nx * (y1 - y0).clamp_min(0)  # (V,) tiles touched
    order = torch.argsort(p.depths.detach().reshape(-1)[vis])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(V, device=device)

    pid = torch.repeat_interleave(torch.arange(V, device=device), n_per)  # (M,)
    start = torch.cumsum(n_per, 0) - n_per
    local = torch.arange(pid.numel(), device=device) - start[pid]
    tx = x0[pid] + local % nx[pid]
    ty = y0[pid] + torch.div(local, nx[pid], rounding_mode="floor")
    tile_id = (cam[pid] * th + ty) * tw + tx
    keys, perm = torch.sort(tile_id * max(V, 1) + rank[pid])
    counts = torch.bincount(tile_id, minlength=C * th * tw)
    offsets = torch.cumsum(counts, 0) - counts
    return _Bins(vis, pid[perm], keys, rank, offsets, counts, tw, th, tile)


# --------------------------------------------------------------------------------------------
# torch rasteriser (sec. 2 eq. 2): tiles × depth slices, front to back


def _pixel_basis(tile: int, dtype, device) -> Tensor:
    """(P, 6) quadratic monomials of the pixel centres relative to the tile centre:
    lx², lx·ly, ly², lx, ly, 1 (P = tile², row-major)."""
    lin = torch.arange(tile, dtype=dtype, device=device) + 0.5 - tile / 2
    ly, lx = torch.meshgrid(lin, lin, indexing="ij")
    lx, ly = lx.reshape(-1), ly.reshape(-1)
    return torch.stack([lx * lx, lx * ly, ly * ly, lx, ly, torch.ones_like(lx)], dim=-1)


def _neg_quadric(m: Tensor, conic: Tensor, log_o: Tensor) -> Tensor:
    """Coefficients q (..., 6) with basis·q = log o − ½ dᵀΣ'⁻¹d = log α (before clamping) at
    the basis pixels, for means m (..., 2) relative to the tile centre. Expanding the quadratic
    form lets one matmul evaluate every (pixel, Gaussian) pair of a slice; tile-centred
    coordinates keep the cancellation small in float32."""
    a, b, c = conic.unbind(-1)
    mx, my = m.unbind(-1)
    const = log_o - (0.5 * a * mx * mx + b * mx * my + 0.5 * c * my * my)
    return torch.stack([-0.5 * a, -b, -0.5 * c, a * mx + b * my, c * my + b * mx, const], -1)


def _neg_quadric_backward(g: Tensor, m: Tensor, conic: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Vector-Jacobian product of _neg_quadric: g (..., 6) -> grads of m, conic, log_o."""
    a, b, c = conic.unbind(-1)
    mx, my = m.unbind(-1)
    g0, g1, g2, g3, g4, g5 = g.unbind(-1)
    g_m = torch.stack(
        [g3 * a + g4 * b - g5 * (a * mx + b * my), g3 * b + g4 * c - g5 * (c * my + b * mx)], -1
    )
    g_conic = torch.stack(
        [
            -0.5 * g0 + g3 * mx - 0.5 * g5 * mx * mx,
            -g1 + g3 * my + g4 * mx - g5 * mx * my,
            -0.5 * g2 + g4 * my - 0.5 * g5 * my * my,
        ],
        -1,
    )
    return g_m, g_conic, g5


def _slice_alpha(quad_t: Tensor, trans: Tensor, basis: Tensor):
    """quad_t (Ta, 6, S), trans (Ta, P) -> alpha, 1 − alpha, u = T·[T > T_MIN] after each
    Gaussian, all (Ta, P, S); and the transmittance behind the slice (Ta, P)."""
    # clamping log α first keeps exp away from subnormal results, which are ~15× slower on CPUs
    alpha = torch.exp((basis @ quad_t).clamp_(min=-20.0))  # (Ta, P, S)
    alpha = torch.nn.functional.threshold(alpha, ALPHA_MIN, 0.0).clamp_(max=ALPHA_MAX)
    one_minus = 1.0 - alpha
    t_incl = torch.cumprod(one_minus, dim=-1).mul_(trans[..., None])
    # stop *before* the Gaussian that takes T to T_MIN; t_incl keeps falling, so once one
    # Gaussian fails the test every later one (in this slice and the next) fails it too
    u = torch.nn.functional.threshold(t_incl, T_MIN, 0.0)
    return alpha, one_minus, u, t_incl[..., -1]


def _slice_forward(quad_t: Tensor, feats_t: Tensor, trans: Tensor, basis: Tensor):
    """One depth slice of Ta tiles (eq. 2): w_s = α_s T_s, T_s = T_in Π_{j<s} (1 − α_j).
    quad_t (Ta, 6, S), feats_t (Ta, D, S), trans (Ta, P) = T_in
    -> Σ_s f_s w_s (Ta, D, P) and T behind the slice (Ta, P)."""
    alpha, one_minus, u, t_out = _slice_alpha(quad_t, trans, basis)
    w = torch.div(u, one_minus).sub_(u)  # = u·α/(1 − α) = α·T before the Gaussian
    # (matmuls arranged so that the short feature axis D is never the output's last)
    return feats_t @ w.transpose(1, 2), t_out


def _slice_backward(quad_t, feats_t, trans, basis, g_out, g_t):
    """Recomputes the slice and returns the grads of quad_t, feats_t and trans given those of
    its outputs g_out (Ta, D, P) and g_t (Ta, P), with g = ∂L/∂w:
    ∂L/∂α_k = (g_k T_k (1 − α_k) − Σ_{s>k} g_s w_s − G_T T_out) / (1 − α_k)."""
    alpha, one_minus, u, t_out = _slice_alpha(quad_t, trans, basis)
    w = torch.div(u, one_minus).sub_(u)  # (Ta, P, S)
    g_w = g_out.transpose(1, 2) @ feats_t  # (Ta, P, S)
    g_feats_t = g_out @ w  # (Ta, D, S)
    tail = torch.cumsum(g_w * w, dim=-1)  # Σ_{s<=k} g_s w_s
    total = tail[..., -1] + g_t * t_out  # (Ta, P)
    tail = tail.neg_().add_(total[..., None])  # Σ_{s>k} g_s w_s + G_T T_out
    g_alpha = g_w.mul_(u).sub_(tail).div_(one_minus)
    # dα/dlog α = α where 1/255 <= α < 0.999 (skipped and clamped ones: 0)
    dalpha = torch.nn.functional.threshold(alpha.neg_(), -ALPHA_MAX, 0.0)
    g_log_alpha = g_alpha.mul_(dalpha).neg_()  # (Ta, P, S)
    g_quad_t = basis.transpose(0, 1) @ g_log_alpha  # (Ta, 6, S)
    g_trans = total / trans.clamp_min(1e-30)
    return g_quad_t, g_feats_t, g_trans


@dataclass
class _Plan:
    """What the torch rasteriser needs besides the per-Gaussian rows."""

    bins: _Bins
    basis: Tensor  # (P, 6)
    centre: Tensor  # (n_tiles, 2) tile centres in pixels
    inside: Tensor  # (n_tiles, P) 1 for pixels inside the image, 0 for the padding
    n_tiles: int


def _gather(rows, g: Tensor, centre: Tensor):
    """Rows g (Ta, S) of (means2d, conic, log o, feats) -> quad_t (Ta, 6, S), feats_t
    (Ta, D, S), and the tile-relative means and conics (for the backward)."""
    m_r, conic_r, logo_r, feat_r = rows
    m = m_r[g] - centre[:, None]  # (Ta, S, 2)
    conic = conic_r[g]  # (Ta, S, 3)
    quad = _neg_quadric(m, conic, logo_r[g])  # (Ta, S, 6)
    return quad.transpose(1, 2), feat_r[g].transpose(1, 2), m, conic


class _Rasterize(torch.autograd.Function):
    """All tiles of all cameras, front to back in depth slices of _SLICE Gaussians per tile,
    chunks of tiles bounded by _CHUNK_ELEMENTS. Forward keeps only each slice's transmittance
    in front and its row indices; backward walks each chunk's slices back to front,
    recomputing them, and accumulates the row gradients in place."""

    @staticmethod
    def forward(ctx, m_r, conic_r, logo_r, feat_r, plan: _Plan):
        # m_r (V+1, 2), conic_r (V+1, 3), logo_r (V+1,), feat_r (V+1, D); row V is a null
        # Gaussian (α = 0) that pads the slices
        rows = (m_r, conic_r, logo_r, feat_r)
        bins, basis = plan.bins, plan.basis
        D, P = feat_r.shape[1], basis.shape[0]
        device = feat_r.device
        V, M = m_r.shape[0] - 1, bins.ids.numel()
        counts = bins.counts
        todo = torch.argsort(counts, descending=True)  # longest lists first: alike chunks
        todo = todo[: int((counts > 0).sum())]
        S = _SLICE.get(device.type, 64)
        chunk = max(1, _CHUNK_ELEMENTS.get(device.type, 1 << 22) // (S * P))
        arange_s = torch.arange(S, device=device)
        out = torch.zeros(plan.n_tiles, D, P, dtype=feat_r.dtype, device=device)
        tape = []  # per chunk: [(act, g, trans_in, going) per slice]
        for c0 in range(0, todo.numel(), chunk):
            act = todo[c0 : c0 + chunk]  # global tile ids (Ta,)
            trans = plan.inside[act]  # (Ta, P)
            slices, k = [], 0
            while act.numel() > 0:
                pos = k * S + arange_s  # (S,)
                in_list = pos[None] < counts[act, None]  # (Ta, S)
                idx = (bins.offsets[act, None] + pos[None]).clamp_max(max(M - 1, 0))
                g = torch.where(in_list, bins.ids[idx], V)  # (Ta, S)
                quad_t, feats_t, _, _ = _gather(rows, g, plan.centre[act])
                contrib, t_out = _slice_forward(quad_t, feats_t, trans, basis)
                out.index_add_(0, act, contrib)
                k += 1
                going = (counts[act] > k * S) & (t_out > T_MIN).any(1)  # (Ta,)
                slices.append((act, g, trans, going))
                act, trans = act[going], t_out[going]
            tape.append(slices)
        ctx.tape, ctx.plan = tape, plan
        ctx.save_for_backward(m_r, conic_r, logo_r, feat_r)
        return out  # (n_tiles, D, P)

    @staticmethod
    def backward(ctx, g_out):
        rows = ctx.saved_tensors
        plan = ctx.plan
        grads = [torch.zeros_like(r) for r in rows]
        g_m, g_conic, g_logo, g_feat = grads
        g_out = g_out.contiguous()
        for slices in ctx.tape:
            g_next = None  # gradient of the transmittance entering the next slice
            for act, g, trans, going in reversed(slices):
                g_t = torch.zeros_like(trans)
                if g_next is not None:
                    g_t[going] = g_next
                quad_t, feats_t, m, conic = _gather(rows, g, plan.centre[act])
                g_quad_t, g_feats_t, g_next = _slice_backward(
                    quad_t, feats_t, trans, plan.basis, g_out[act], g_t
                )
                gm, gc, gl = _neg_quadric_backward(g_quad_t.transpose(1, 2), m, conic)
                flat = g.reshape(-1)
                g_m.index_add_(0, flat, gm.reshape(-1, 2))
                g_conic.index_add_(0, flat, gc.reshape(-1, 3))
                g_logo.index_add_(0, flat, gl.reshape(-1))
                g_feat.index_add_(0, flat, g_feats_t.transpose(1, 2).reshape(-1, g_feat.shape[1]))
        return g_m, g_conic, g_logo, g_feat, None


def _rasterize_torch(
    p: _Projected, opacity: Tensor, feats: Tensor, width: int, height: int, bins: _Bins
) -> Tensor:
    """feats (C, N, D) -> (C, D, H, W) Σ_i w_i feat_i per pixel."""
    C, N, D = feats.shape
    dtype, device = feats.dtype, feats.device
    tile = bins.tile
    tw, th = bins.tiles_x, bins.tiles_y
    n_tiles = C * th * tw

    def rows(t: Tensor, fill: float) -> Tensor:  # (C, N, k) -> (V+1, k), last row: null
        flat = t.reshape(C * N, t.shape[-1])[bins.vis]
        return torch.cat([flat, flat.new_full((1, flat.shape[1]), fill)])

    m_r = rows(p.means2d, 0.0)
    conic_r = rows(p.conics, 0.0)
    logo_r = rows(torch.log(opacity.clamp_min(1e-30)).expand(C, N)[..., None], -1e4)[:, 0]
    feat_r = rows(feats, 0.0)

    # full-tile pixels outside the image start "done" (T = 0) and never get weight
    tile_ids = torch.arange(n_tiles, device=device)
    tx, ty = tile_ids % tw, torch.div(tile_ids, tw, rounding_mode="floor") % th
    lin = torch.arange(tile, device=device)
    px = (tx[:, None, None] * tile + lin[None, None, :]).expand(-1, tile, tile)
    py = (ty[:, None, None] * tile + lin[None, :, None]).expand(-1, tile, tile)
    plan = _Plan(
        bins=bins,
        basis=_pixel_basis(tile, dtype, device),
        centre=(torch.stack([tx, ty], -1).to(dtype) + 0.5) * tile,
        inside=((px < width) & (py < height)).reshape(n_tiles, tile * tile).to(dtype),
        n_tiles=n_tiles,
    )
    out = _Rasterize.apply(m_r, conic_r, logo_r, feat_r, plan)  # (n_tiles, D, P)
    out = out.reshape(C, th, tw, D, tile, tile).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(C, D, th * tile, tw * tile)[:, :, :height, :width]


# --------------------------------------------------------------------------------------------
# gsplat backend


@functools.lru_cache(maxsize=1)
def _gsplat():
    """gsplat's low-level wrapper module when gsplat 1.5.x is installed and its CUDA extension
    loads (the first call JIT-compiles it), else None."""
    try:
        import gsplat
        from gsplat.cuda import _wrapper
        from gsplat.cuda._backend import _C
    except Exception as e:  # noqa: BLE001 - any failure means "not available"
        warnings.warn(
            f"gsplat unavailable ({type(e).__name__}: {e}); using the torch renderer", stacklevel=3
        )
        return None
    if _C is None:
        return None
    if not str(getattr(gsplat, "__version__", "")).startswith("1.5."):
        warnings.warn(f"gsplat {gsplat.__version__} found, {GSPLAT_VERSION} expected", stacklevel=3)
    return _wrapper


def gsplat_available() -> bool:
    """True when gsplat is importable and its CUDA extension loads (needs CUDA)."""
    return torch.cuda.is_available() and _gsplat() is not None


def _render_gsplat(s: _Scene) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> rgb (C, 3, H, W), depth Σ w z (C, 1, H, W), alpha (C, 1, H, W), means2d, radii."""
    gs = _gsplat()
    C, N, W, H = s.C, s.N, s.width, s.height
    quats = s.quats
    if quats is None:
        quats = s.means.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(N, 4)
    if s.per_camera:
        # gsplat batches over leading dims: C batches of one camera each
        radii, means2d, depths, conics, _ = gs.fully_fused_projection(
            s.means, None, quats.expand(C, N, 4), s.scales.expand(C, N, 3),
            s.viewmats[:, None], s.Ks[:, None], W, H, eps2d=EPS2D, near_plane=NEAR_PLANE,
            far_plane=FAR_PLANE, packed=False, opacities=s.opacity.expand(C, N),
        )  # fmt: skip
        radii, means2d = radii.reshape(C, N, 2), means2d.reshape(C, N, 2)
        depths, conics = depths.reshape(C, N), conics.reshape(C, N, 3)
    else:
        radii, means2d, depths, conics, _ = gs.fully_fused_projection(
            s.means, None, quats, s.scales, s.viewmats, s.Ks, W, H, eps2d=EPS2D,
            near_plane=NEAR_PLANE, far_plane=FAR_PLANE, packed=False, opacities=s.opacity,
        )  # fmt: skip
    if s.sh_degree is None:
        rgb = s.colors.expand(C, N, 3)
    else:
        dirs = (s.means if s.per_camera else s.means[None]) - s.campos[:, None]  # (C, N, 3)
        sh = s.colors.expand(C, *s.colors.shape[-3:])  # (C, N, K, 3)
        masks = (radii > 0).all(-1)
        rgb = gs.spherical_harmonics(s.sh_degree, dirs.expand(C, N, 3), sh, masks=masks)
        rgb = (rgb + 0.5).clamp_min(0.0)
    feats = torch.cat([rgb, depths[..., None]], -1)  # (C, N, 4)
    tw, th = math.ceil(W / TILE), math.ceil(H / TILE)
    _, isect_ids, flatten_ids = gs.isect_tiles(means2d, radii, depths, TILE, tw, th)
    offsets = gs.isect_offset_encode(isect_ids, C, tw, th)
    out, alpha = gs.rasterize_to_pixels(
        means2d,
        conics,
        feats,
        s.opacity.expand(C, N).contiguous(),
        W,
        H,
        TILE,
        offsets,
        flatten_ids,
    )  # (C, H, W, 4), (C, H, W, 1)
    out = out.permute(0, 3, 1, 2)
    return out[:, :3], out[:, 3:4], alpha.permute(0, 3, 1, 2), means2d, radii.amax(-1)


# --------------------------------------------------------------------------------------------
# Public API


def _choose_backend(backend: str, means: Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    cuda = means.device.type == "cuda"
    if backend == "gsplat":
        if not cuda:
            raise ValueError(f"backend 'gsplat' needs CUDA tensors, got means on {means.device}")
        if means.dtype != torch.float32:
            raise ValueError(f"backend 'gsplat' needs float32 tensors, got {means.dtype}")
        if _gsplat() is None:
            raise RuntimeError(
                f"backend 'gsplat' requested but gsplat=={GSPLAT_VERSION} is not usable"
            )
        return "gsplat"
    if not cuda or means.dtype != torch.float32 or means.shape[-2] == 0:
        return "torch"
    return "gsplat" if _gsplat() is not None else "torch"


def rasterize(
    means: Tensor,
    scales: Tensor,
    quats: Tensor | None,
    opacity: Tensor,
    colors: Tensor,
    cameras: Cameras,
    background=None,
    sh_degree: int | None = None,
    backend: str = "auto",
) -> RenderOutput:
    """Renders C cameras. means (N, 3) shared by all cameras or (C, N, 3) one set per camera
    (4D: one time per camera); scales (N, 3) linear (or (N, 1) isotropic); quats (N, 4) wxyz,
    any norm, or None (axis-aligned); opacity (N,) in [0, 1]; colors RGB (N, 3) / (C, N, 3)
    when sh_degree is None, else SH coefficients (N, K, 3) / (C, N, K, 3) evaluated per camera
    along camera centre → mean. background: None (black), a float, (3,), (C, 3) or
    (C, 3, H, W), composited as rgb + (1 − alpha)·bg. backend: "auto" (gsplat on CUDA float32
    when it loads, else torch), "torch" or "gsplat". Differentiable w.r.t. means, scales,
    quats, opacity, colors and background."""
    s = _check_scene(means, scales, quats, opacity, colors, cameras, sh_degree)
    bg = _check_background(background, s.C, s.height, s.width, means)
    if _choose_backend(backend, means) == "gsplat":
        rgb, depth_sum, alpha, means2d, radii = _render_gsplat(s)
    else:
        p = _project(s)
        rgb_g = _colors(s)  # (C, N, 3)
        feats = torch.cat([rgb_g, p.depths[..., None], torch.ones_like(p.depths)[..., None]], -1)
        bins = _bin_tiles(p, s.width, s.height, _TILE)
        img = _rasterize_torch(p, s.opacity, feats, s.width, s.height, bins)  # (C, 5, H, W)
        rgb, depth_sum, alpha = img[:, :3], img[:, 3:4], img[:, 4:5]
        means2d, radii = p.means2d, p.radii.amax(-1)
    if bg is not None:
        rgb = rgb + (1.0 - alpha) * bg
    depth = depth_sum / alpha.clamp_min(DEPTH_EPS)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii)


def render_gaussians(
    cloud, cameras: Cameras, means: Tensor | None = None, background=None, backend: str = "auto"
) -> RenderOutput:
    """Renders a GaussianCloud (any object with .means, .scales (activated), .quats (None or
    (N, 4)), .opacity (activated), .sh (N, K, 3), .sh_degree). means overrides the cloud's
    positions: (N, 3), or (C, N, 3) one set per camera (4D)."""
    return rasterize(
        cloud.means if means is None else means,
        cloud.scales,
        cloud.quats,
        cloud.opacity,
        cloud.sh,
        cameras,
        background=background,
        sh_degree=cloud.sh_degree,
        backend=backend,
    )


@torch.no_grad()
def gaussian_visibility(
    means: Tensor,
    scales: Tensor,
    quats: Tensor | None,
    opacity: Tensor,
    cameras: Cameras,
    backend: str = "auto",
) -> Tensor:
    """(C, N) transmittance in front of each Gaussian at its projected centre,
    Π_{j nearer} (1 − α_j(centre)), with the renderer's α (clamp, 1/255 skip). 0 for Gaussians
    that are culled (behind the near plane, opacity < 1/255) or whose centre is outside the
    image. means (N, 3) or (C, N, 3) as in ``rasterize``. Computed with torch on any device;
    ``backend`` is accepted for symmetry with ``rasterize`` and validated only."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    s = _check_scene(means, scales, quats, opacity, None, cameras, None, require_colors=False)
    p = _project(s)
    bins = _bin_tiles(p, s.width, s.height, _TILE)
    C, N, W, H = s.C, s.N, s.width, s.height
    device, dtype = means.device, means.dtype
    out = torch.zeros(C * N, dtype=dtype, device=device)
    V = bins.vis.numel()
    if V == 0:
        return out.reshape(C, N)
    m = p.means2d.reshape(-1, 2)[bins.vis]  # (V, 2)
    conic = p.conics.reshape(-1, 3)[bins.vis]
    opac = s.opacity.expand(C, N).reshape(-1)[bins.vis]
    centre_in = (m[:, 0] >= 0) & (m[:, 0] < W) & (m[:, 1] >= 0) & (m[:, 1] < H)
    q = centre_in.nonzero().squeeze(1)  # (Q,) queries: rows of vis
    cam = bins.vis[q] // N
    ts = bins.tile
    tile = (cam * bins.tiles_y + (m[q, 1] // ts).long()) * bins.tiles_x + (m[q, 0] // ts).long()
    # a Gaussian's own entry sits in its centre tile's list; everything before it is nearer
    own = torch.searchsorted(bins.keys, tile * V + bins.rank[q])
    start, n_front = bins.offsets[tile], own - bins.offsets[tile]
    log_t = torch.zeros(q.numel(), dtype=dtype, device=device)
    S = 256
    M = bins.ids.numel()
    per_chunk = max(1, _CHUNK_ELEMENTS.get(device.type, 1 << 22) // S)
    for c0 in range(0, q.numel(), per_chunk):  # bounded memory: (queries, S) per step
        act = torch.arange(c0, min(c0 + per_chunk, q.numel()), device=device)
        k = 0
        while True:
            act = act[n_front[act] > k * S]
            if act.numel() == 0:
                break
            pos = k * S + torch.arange(S, device=device)
            in_front = pos[None] < n_front[act, None]  # (Qa, S)
            g = bins.ids[(start[act, None] + pos[None]).clamp_max(M - 1)]  # (Qa, S)
            d = m[q[act], None] - m[g]  # (Qa, S, 2)
            a, b, c = conic[g].unbind(-1)
            sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
            alpha = (opac[g] * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
            alpha = alpha * ((alpha >= ALPHA_MIN) & (sigma >= 0) & in_front)
            log_t[act] += torch.log1p(-alpha).sum(1)
            k += 1
    out[bins.vis[q]] = torch.exp(log_t)
    return out.reshape(C, N)


# ----------------------------------------------------------------------------- the API's render


def render_asset(asset, cameras: Cameras, times, background=None, backend: str = "auto"):
    """Render ``asset`` from ``cameras`` (C cameras), camera i at global time ``times[i]`` (one
    time is used for every camera). Returns ``RenderOutput``: rgb (C, 3, H, W), alpha, depth."""
    times = torch.as_tensor(times, dtype=torch.float32, device=cameras.device).reshape(-1)
    if times.numel() == 1 and len(cameras) > 1:
        times = times.expand(len(cameras))
    return asset.render(cameras, times, background=background, backend=backend)


class _CallableModule(types.ModuleType):
    """``ayg.render(asset, cameras, times)`` is the Python API's render call, and ``ayg.render``
    is also this module: importing a submodule makes it an attribute of its package, replacing
    any function of the same name. Calling the module itself keeps both meanings working
    whatever was imported first."""

    def __call__(self, asset, cameras: Cameras, times, background=None, backend: str = "auto"):
        return render_asset(asset, cameras, times, background=background, backend=backend)


sys.modules[__name__].__class__ = _CallableModule
