"""The toy world's ground truth: implicit solids, their motions, and an analytic ray-marching
renderer that is independent of the Gaussian rasterizer.

Objects (object space = world space, z up, centred at the origin, radius ≈ 0.5):

* ball — sphere of radius 0.4;
* cube — axis-aligned, half-size 0.3;
* cone — base radius 0.35 on z = -0.4, apex at z = +0.4;
* ring — torus (R 0.3, r 0.1) standing upright in the y-z plane, facing the front (+x), so the
  cameras of stages 1 and 2 (elevation -10..45°) see its hole from most azimuths.

Every object is two-toned so that rotation about z is visible from any azimuth: equal sectors
about the z axis (boundaries every 360°/TONE_SECTORS[shape] of azimuth, starting at 0°) alternate
between the prompt's colour (the sector of azimuths 0° up to the first boundary, then every
other one) and a pale tint of it, (1 − TINT[shape])·colour + TINT[shape]·white; the ring
alternates sectors about its own axis (x) instead, since it has no extent around z. Shading is
Lambert with a fixed world light plus an ambient term, so it is view-independent (a static
Gaussian cloud can reproduce it).

Cubes and rings have quarters and a tint of 0.5; balls and cones, eighths and a tint of 0.65.
A turned cube or ring changes its silhouette, but a turned ball or cone, round about the spin
axis, shows its spin only through the tone boundaries: at the video teacher's 24×40 a 30° turn
of quarters at 0.5 changes 0.008 (ball) and 0.006 (cone) per pixel, against 0.03 for a cube or
ring (``experiments/toy_spin_visibility.py``), and with that pattern distilled cones stayed
still. Eighths at 0.65 give 0.020 and 0.013 and let cones spin; on cubes they made spins and
sways harder to tell apart, so cubes and rings keep quarters (docs/RESULTS.md). A period of 90°
still turns less than half a period between two frames of any clip, so the direction of a spin
stays readable.

Motions, as functions of τ (any real; a segment uses [0, 1]); τ = 0 is always the rest pose:

* spinning — rotation about z by 360°·SPIN_TURNS·τ. SPIN_TURNS = 1/6 (60° over a segment):
  the paper's deformation field outputs at most 0.5 per coordinate (C.2), which rules out
  rotations much beyond 70° of a shape of radius ≈ 0.45, and the tone pattern makes 60°
  plainly visible;
* swaying — a bend of the top sideways (along y): a point moves by
  BEND_AMPLITUDE·sin(2π·c·τ)·h² along y, h = (z + 0.4)/0.8 its height above the base, with
  c = BEND_CYCLES["swaying"] = 1 (one slow sway per segment);
* nodding — the same bend front-to-back (along x), twice as fast (c = 2: two nods per segment).

Why the two bends differ in pace, not only in direction: the cameras of stage 2 take any
azimuth, and seen from 90° a sideways bend *is* a front-to-back one. Told apart by direction
alone, the two motions differ only through the orientation of the tone pattern — a cue of a
pixel or two at the video teacher's 24×40, which the toy video teacher never learned (its
diffusion-classifier check confused them at chance, docs/RESULTS.md). A nod being quicker
than a sway makes the two distinguishable from every azimuth, as real nods and sways are by
their look.

A bend keeps z, so its inverse is exact: subtract the same displacement. The renderer marches
each ray through the *deformed* solid by pulling sample points back to rest space (inverse
deformation), testing the rest-space signed distance, refining the first hit by bisection and
shading with a finite-difference normal of the deformed field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ayg.cameras import Cameras
from ayg.toyworld.vocab import COLOUR_RGB, SHAPES, ToyPrompt, parse_prompt

BALL_RADIUS = 0.4
CUBE_HALF = 0.3
CONE_RADIUS = 0.35
CONE_HEIGHT = 0.8
CONE_BASE_Z = -0.4
RING_MAJOR = 0.3
RING_MINOR = 0.1

SPIN_TURNS = 1.0 / 6.0  # turns per unit τ
BEND_AMPLITUDE = 0.25  # displacement of the top (z = 0.4) at the extreme of a sway / nod
BEND_CYCLES = {"swaying": 1.0, "nodding": 2.0}  # periods per unit τ
BEND_AXIS = {"swaying": 1, "nodding": 0}  # the top moves along y (sideways) / x (front-back)
BEND_BASE_Z = -0.4  # the bend is rooted here (h = 0) and reaches h = 1 at z = +0.4
BEND_HEIGHT = 0.8

BOUND_RADIUS = 0.72  # every object, in every pose, lies inside this sphere
TONE_SECTORS = {"ball": 8, "cube": 4, "cone": 8, "ring": 4}  # even: the two tones alternate
TINT = {"ball": 0.65, "cube": 0.5, "cone": 0.65, "ring": 0.5}  # second tone's share of white
AMBIENT = 0.4
LIGHT_DIR = (0.5, 0.3, 1.0)  # world direction towards the light (normalised at use)

_RAY_CHUNK = 16384  # rays marched at once (bounds memory at large resolutions)


class ToyRender(NamedTuple):
    rgb: Tensor  # (C, 3, H, W) in [0, 1], composited over the background
    alpha: Tensor  # (C, 1, H, W) coverage in [0, 1]


# ---------------------------------------------------------------------------------------------
# Solids (rest pose)


def _sdf_ball(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - BALL_RADIUS


def _sdf_cube(p: Tensor) -> Tensor:
    q = p.abs() - CUBE_HALF
    outside = q.clamp(min=0.0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp(max=0.0)
    return outside + inside


_CONE_SLANT = math.hypot(CONE_HEIGHT, CONE_RADIUS)


def _sdf_cone(p: Tensor) -> Tensor:
    # Distance to the slanted side (exact near it) and to the base plane; max = intersection.
    rho = p[..., :2].norm(dim=-1)
    apex_z = CONE_BASE_Z + CONE_HEIGHT
    side = (CONE_HEIGHT * rho + CONE_RADIUS * (p[..., 2] - apex_z)) / _CONE_SLANT
    base = CONE_BASE_Z - p[..., 2]
    return torch.maximum(side, base)


def _sdf_ring(p: Tensor) -> Tensor:
    # Torus around the x axis: the tube circle lies in the y-z plane.
    rho = p[..., 1:].norm(dim=-1)
    return torch.stack([rho - RING_MAJOR, p[..., 0]], dim=-1).norm(dim=-1) - RING_MINOR


_SDF = {"ball": _sdf_ball, "cube": _sdf_cube, "cone": _sdf_cone, "ring": _sdf_ring}


def sdf(shape: str, points: Tensor) -> Tensor:
    """Signed distance (negative inside) of the rest-pose solid: points (..., 3) -> (...)."""
    if shape not in _SDF:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    return _SDF[shape](points)


def main_tone(shape: str, points: Tensor) -> Tensor:
    """True where rest-pose points (..., 3) carry the prompt's colour, False on the tint."""
    if shape == "ring":
        angle = torch.atan2(points[..., 2], points[..., 1])  # about the ring's own axis (x)
    else:
        angle = torch.atan2(points[..., 1], points[..., 0])  # about z
    sector = torch.floor(angle / (2.0 * math.pi / TONE_SECTORS[shape])).long()
    return sector % 2 == 0


def colour_tones(
    colour: str, shape: str, device=None, dtype=torch.float32
) -> tuple[Tensor, Tensor]:
    """(main (3,), tint (3,)) RGB of a colour word on a shape."""
    c = torch.tensor(COLOUR_RGB[colour], dtype=dtype, device=device)
    return c, (1.0 - TINT[shape]) * c + TINT[shape]


def albedo(prompt: ToyPrompt, points: Tensor) -> Tensor:
    """Surface colour at rest-pose points (..., 3) -> (..., 3): the prompt's colour on
    alternating sectors, a pale tint on the others."""
    main, tint = colour_tones(prompt.colour, prompt.shape, points.device, points.dtype)
    return torch.where(main_tone(prompt.shape, points).unsqueeze(-1), main, tint)


# ---------------------------------------------------------------------------------------------
# Motions


def spin_angle(tau: Tensor) -> Tensor:
    """Rotation about z in radians at τ (any shape)."""
    return 2.0 * math.pi * SPIN_TURNS * tau


def bend_wave(tau: Tensor, cycles: float) -> Tensor:
    """Displacement of the top (h = 1) at τ (any shape) for a bend of ``cycles`` periods per
    unit τ."""
    return BEND_AMPLITUDE * torch.sin(2.0 * math.pi * cycles * tau)


def bend_amount(tau: Tensor, motion: str) -> Tensor:
    """Displacement of the top (h = 1) at τ (any shape) for "swaying" or "nodding"."""
    return bend_wave(tau, BEND_CYCLES[motion])


def bend_profile(z: Tensor) -> Tensor:
    """h² of the bend at height z: h = (z − BEND_BASE_Z) / BEND_HEIGHT, clamped at 0."""
    h = ((z - BEND_BASE_Z) / BEND_HEIGHT).clamp(min=0.0)
    return h * h


def rotate_z(points: Tensor, angle: Tensor) -> Tensor:
    """points (..., 3) rotated about z by ``angle`` (broadcast against points[..., 0])."""
    c, s = torch.cos(angle), torch.sin(angle)
    x, y, z = points.unbind(-1)
    return torch.stack([c * x - s * y, s * x + c * y, z], dim=-1)


def bend(points: Tensor, amount: Tensor, axis: int) -> Tensor:
    """points (..., 3) bent along ``axis`` (0 = x, 1 = y): each moves by amount·h², h its
    height above BEND_BASE_Z over BEND_HEIGHT (``amount`` broadcast against points[..., 0])."""
    shift = amount * bend_profile(points[..., 2])
    return torch.cat(
        [points[..., :axis], (points[..., axis] + shift).unsqueeze(-1), points[..., axis + 1 :]],
        dim=-1,
    )


def _tau_for(points: Tensor, tau: Tensor | float) -> Tensor:
    tau = torch.as_tensor(tau, dtype=points.dtype, device=points.device)
    # Broadcast τ over the trailing point dimensions: tau (...) vs points (..., M, 3).
    while tau.ndim > 0 and tau.ndim < points.ndim - 1:
        tau = tau.unsqueeze(-1)
    return tau


def _pose(points: Tensor, motion: str | None, tau: Tensor | float, sign: float) -> Tensor:
    """The motion at τ applied forwards (sign +1) or undone (sign -1)."""
    tau = _tau_for(points, tau)
    if motion is None:
        return points
    if motion == "spinning":
        return rotate_z(points, sign * spin_angle(tau))
    if motion in BEND_AXIS:
        return bend(points, sign * bend_amount(tau, motion), axis=BEND_AXIS[motion])
    raise ValueError(f"unknown motion {motion!r}; allowed: spinning, swaying, nodding or None")


def deform(points: Tensor, motion: str | None, tau: Tensor | float) -> Tensor:
    """Rest pose -> pose at τ. points (..., 3); tau a scalar or with the leading shape of
    points[..., 0] up to trailing dims (e.g. points (T, N, 3), tau (T,))."""
    return _pose(points, motion, tau, 1.0)


def undeform(points: Tensor, motion: str | None, tau: Tensor | float) -> Tensor:
    """Pose at τ -> rest pose, the exact inverse of ``deform`` (same shapes)."""
    return _pose(points, motion, tau, -1.0)


# ---------------------------------------------------------------------------------------------
# Rendering


def camera_rays(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """World-space rays through pixel centres: origins (C, 3), unit directions (C, H·W, 3),
    row-major pixels."""
    H, W = cameras.height, cameras.width
    dev, dt = cameras.device, cameras.c2w.dtype
    v, u = torch.meshgrid(
        torch.arange(H, device=dev, dtype=dt) + 0.5,
        torch.arange(W, device=dev, dtype=dt) + 0.5,
        indexing="ij",
    )
    f = cameras.focal[:, None]  # (C, 1)
    d_cam = torch.stack(
        [
            (u.reshape(1, -1) - W / 2.0) / f,
            (v.reshape(1, -1) - H / 2.0) / f,
            torch.ones(len(cameras), H * W, device=dev, dtype=dt),
        ],
        dim=-1,
    )  # (C, P, 3) OpenCV camera space
    dirs = d_cam @ cameras.c2w[:, :3, :3].transpose(1, 2)
    return cameras.positions, F.normalize(dirs, dim=-1)


def _march(
    shape: str,
    motion: str | None,
    origins: Tensor,
    dirs: Tensor,
    tau: Tensor,
    samples: int,
    refine: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """First hit of each ray through the deformed solid: origins (R, 3), dirs (R, 3), tau (R,)
    -> (rest-pose hit point (R, 3), shade (R,), hit (R,) bool)."""
    prompt_sdf = _SDF[shape]

    def field(points: Tensor) -> Tensor:  # (R, M, 3) -> (R, M)
        return prompt_sdf(undeform(points, motion, tau))

    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - BOUND_RADIUS**2
    disc = b * b - c
    meets = disc > 0
    root = disc.clamp(min=0.0).sqrt()
    t0 = (-b - root).clamp(min=0.0)
    t1 = (-b + root).clamp(min=0.0)
    steps = torch.linspace(0.0, 1.0, samples, device=dirs.device, dtype=dirs.dtype)
    ts = t0[:, None] + (t1 - t0)[:, None] * steps  # (R, S)
    pts = origins[:, None] + dirs[:, None] * ts[..., None]  # (R, S, 3)
    inside = (field(pts) < 0) & meets[:, None]  # (R, S)
    hit = inside.any(-1)
    first = inside.to(torch.uint8).argmax(-1)  # (R,) first inside sample (0 when none)
    hi = ts.gather(1, first[:, None]).squeeze(1)
    lo = ts.gather(1, (first - 1).clamp(min=0)[:, None]).squeeze(1)
    for _ in range(refine):  # bisection between the last outside and the first inside sample
        mid = 0.5 * (lo + hi)
        inside_mid = field((origins + dirs * mid[:, None])[:, None])[:, 0] < 0
        hi = torch.where(inside_mid, mid, hi)
        lo = torch.where(inside_mid, lo, mid)
    x = origins + dirs * (0.5 * (lo + hi))[:, None]  # (R, 3)

    # Normal of the deformed surface = gradient of the pulled-back distance, by central
    # differences (exact enough for shading; works for every motion without its Jacobian).
    eps = 2e-3
    offs = torch.eye(3, device=x.device, dtype=x.dtype) * eps  # (3, 3)
    probe = torch.cat([x[:, None] + offs, x[:, None] - offs], dim=1)  # (R, 6, 3)
    d = field(probe)  # (R, 6)
    normal = F.normalize(d[:, :3] - d[:, 3:], dim=-1)
    light = F.normalize(torch.tensor(LIGHT_DIR, device=x.device, dtype=x.dtype), dim=0)
    shade = AMBIENT + (1.0 - AMBIENT) * (normal @ light).clamp(min=0.0)
    rest = undeform(x[:, None], motion, tau)[:, 0]
    return rest, shade, hit


def _as_prompts(prompt, n: int) -> list[ToyPrompt]:
    if isinstance(prompt, (str, ToyPrompt)):
        return [parse_prompt(prompt)] * n
    prompts = [parse_prompt(p) for p in prompt]
    if len(prompts) != n:
        raise ValueError(
            f"got {len(prompts)} prompts for {n} cameras; give one prompt or one per camera"
        )
    return prompts


def render(
    prompt: str | ToyPrompt | Sequence[str | ToyPrompt],
    cameras: Cameras,
    tau: Tensor | float | None = None,
    background: Tensor | Sequence[float] | None = None,
    samples: int = 48,
    refine: int = 6,
    supersample: int = 1,
) -> ToyRender:
    """Render the toy object(s) for a batch of C cameras, each at its own τ.

    prompt: one prompt for all cameras or one per camera. tau: (C,) or a scalar (default 0).
    background: (3,) or (C, 3) RGB in [0, 1] (default black). ``samples`` points per ray
    inside the bounding sphere, then ``refine`` bisection steps; ``supersample`` s renders at
    s× the resolution and averages s×s blocks (anti-aliasing).
    Returns ToyRender(rgb (C, 3, H, W), alpha (C, 1, H, W)).
    """
    C, H, W = len(cameras), cameras.height, cameras.width
    dev, dt = cameras.device, cameras.c2w.dtype
    prompts = _as_prompts(prompt, C)
    tau_t = (
        torch.zeros(C, device=dev, dtype=dt)
        if tau is None
        else torch.as_tensor(tau, device=dev, dtype=dt)
    )
    tau_t = tau_t.expand(C) if tau_t.ndim == 0 else tau_t
    if tau_t.shape != (C,):
        raise ValueError(f"tau must be a scalar or have shape ({C},), got {tuple(tau_t.shape)}")
    bg = (
        torch.zeros(3, device=dev, dtype=dt)
        if background is None
        else torch.as_tensor(background, device=dev, dtype=dt)
    )
    bg = bg.expand(C, 3) if bg.shape == (3,) else bg
    if bg.shape != (C, 3):
        raise ValueError(f"background must have shape (3,) or ({C}, 3), got {tuple(bg.shape)}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")

    s = supersample
    cams = cameras.resized(W * s, H * s) if s > 1 else cameras
    origins, dirs = camera_rays(cams)  # (C, 3), (C, P, 3)
    P = dirs.shape[1]
    colour = torch.zeros(C, P, 3, device=dev, dtype=dt)
    hit = torch.zeros(C, P, dtype=torch.bool, device=dev)
    # Cameras that share shape and motion are marched together; only the albedo differs.
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((p.shape, p.motion), []).append(i)
    for (shape, motion), idx in groups.items():
        idx_t = torch.tensor(idx, device=dev)
        ray_o = origins[idx_t][:, None].expand(-1, P, -1).reshape(-1, 3)
        ray_d = dirs[idx_t].reshape(-1, 3)
        ray_tau = tau_t[idx_t][:, None].expand(-1, P).reshape(-1)
        rest, shade, got = [], [], []
        for a in range(0, ray_o.shape[0], _RAY_CHUNK):
            sl = slice(a, a + _RAY_CHUNK)
            r_, s_, h_ = _march(shape, motion, ray_o[sl], ray_d[sl], ray_tau[sl], samples, refine)
            rest.append(r_)
            shade.append(s_)
            got.append(h_)
        main = main_tone(shape, torch.cat(rest)).reshape(len(idx), P, 1)
        tones = [colour_tones(prompts[i].colour, shape, dev, dt) for i in idx]
        c_main = torch.stack([t[0] for t in tones])[:, None]  # (G, 1, 3)
        c_tint = torch.stack([t[1] for t in tones])[:, None]
        shade_t = torch.cat(shade).reshape(len(idx), P, 1)
        hit_t = torch.cat(got).reshape(len(idx), P)
        colour[idx_t] = torch.where(main, c_main, c_tint) * shade_t * hit_t[..., None]
        hit[idx_t] = hit_t

    alpha = hit.to(dt).reshape(C, 1, H * s, W * s)
    # (C, 3, Hs, Ws), zero where no ray hit
    rgb = colour.reshape(C, H * s, W * s, 3).permute(0, 3, 1, 2)
    if s > 1:
        alpha = F.avg_pool2d(alpha, s)
        rgb = F.avg_pool2d(rgb, s)
    rgb = rgb + (1.0 - alpha) * bg[:, :, None, None]
    return ToyRender(rgb.clamp(0.0, 1.0), alpha)
