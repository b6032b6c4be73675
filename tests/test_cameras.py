"""Tests of ayg.cameras: the camera convention of docs/ARCHITECTURE.md, intrinsics, and the samplers of C.3 / C.6."""

from __future__ import annotations

import math

import pytest
import torch

from ayg.cameras import (
    Cameras,
    FpsSampler,
    Stage1CameraSampler,
    Stage2CameraSampler,
    look_at_cameras,
    orbit_cameras,
    view_direction,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def wrap180(a: torch.Tensor) -> torch.Tensor:
    return (a + 180.0) % 360.0 - 180.0


# ---------------------------------------------------------------- convention


def test_azimuth_zero_sits_on_plus_x_and_looks_down_minus_x():
    cam = look_at_cameras(0.0, 0.0, 2.0, 40.0, 64, 48)
    c2w = cam.c2w[0]
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([-1.0, 0.0, 0.0]))  # forward
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([0.0, 1.0, 0.0]))  # right
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, -1.0]))  # down = -up


def test_rotations_are_proper_and_look_at_origin():
    g = gen(1)
    n = 64
    elev = -89 + 178 * torch.rand(n, generator=g)
    azim = 360 * torch.rand(n, generator=g)
    dist = 0.5 + 3 * torch.rand(n, generator=g)
    cams = look_at_cameras(elev, azim, dist, 50.0, 32, 32)
    R = cams.c2w[:, :3, :3]
    eye = torch.eye(3).expand(n, 3, 3)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(n), atol=1e-5, rtol=0)
    e, a = torch.deg2rad(elev), torch.deg2rad(azim)
    expected = dist[:, None] * torch.stack(
        [torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e)], -1
    )
    torch.testing.assert_close(cams.positions, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(R[:, :, 2], -expected / dist[:, None], atol=1e-5, rtol=0)
    # up (= -down) has a positive z component: the image is upright
    assert (-R[:, 2, 1] > 0).all()
    # right is horizontal
    torch.testing.assert_close(R[:, 2, 0], torch.zeros(n), atol=1e-6, rtol=0)


@pytest.mark.parametrize("azimuth", [0.0, 37.0, 200.0])
def test_elevation_90_is_well_defined(azimuth):
    cam = look_at_cameras(90.0, azimuth, 2.0, 40.0, 32, 32)
    c2w = cam.c2w[0]
    assert torch.isfinite(c2w).all()
    R = c2w[:3, :3]
    torch.testing.assert_close(R.T @ R, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(R[:, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    a = math.radians(azimuth)
    torch.testing.assert_close(
        R[:, 0], torch.tensor([-math.sin(a), math.cos(a), 0.0]), atol=1e-6, rtol=0
    )


def test_intrinsics_and_viewmats():
    cams = look_at_cameras([10.0, 30.0], [0.0, 120.0], [2.0, 3.0], [40.0, 60.0], 256, 160)
    K = cams.K
    f = 160 / (2 * torch.tan(torch.deg2rad(torch.tensor([40.0, 60.0])) / 2))
    torch.testing.assert_close(K[:, 0, 0], f)
    torch.testing.assert_close(K[:, 1, 1], f)
    torch.testing.assert_close(cams.focal, f)
    torch.testing.assert_close(K[:, 0, 2], torch.full((2,), 128.0))
    torch.testing.assert_close(K[:, 1, 2], torch.full((2,), 80.0))
    torch.testing.assert_close(K[:, 2], torch.tensor([[0.0, 0.0, 1.0]] * 2))
    assert K[:, 0, 1].abs().max() == 0 and K[:, 1, 0].abs().max() == 0
    torch.testing.assert_close(
        cams.viewmats @ cams.c2w, torch.eye(4).expand(2, 4, 4), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(cams.viewmats, torch.linalg.inv(cams.c2w), atol=1e-5, rtol=0)


def project(cams: Cameras, x: torch.Tensor) -> torch.Tensor:
    """(C, 2) pixel coordinates of the world point x (3,) by K · viewmat."""
    xh = torch.cat([x, torch.ones(1)])
    cam = (cams.viewmats @ xh)[:, :3]  # (C, 3)
    uvw = (cams.K @ cam[:, :, None])[:, :, 0]
    return uvw[:, :2] / uvw[:, 2:]


def test_projection_by_k_viewmat():
    W, H, d, fov = 256, 160, 2.0, 60.0
    cams = look_at_cameras(0.0, 0.0, d, fov, W, H)
    f = H / (2 * math.tan(math.radians(fov) / 2))
    torch.testing.assert_close(project(cams, torch.zeros(3))[0], torch.tensor([W / 2, H / 2]))
    # +y is to the right of the front camera, +z is up (smaller row)
    uv = project(cams, torch.tensor([0.0, 0.1, 0.0]))[0]
    torch.testing.assert_close(uv, torch.tensor([W / 2 + f * 0.1 / d, H / 2]))
    uv = project(cams, torch.tensor([0.0, 0.0, 0.1]))[0]
    torch.testing.assert_close(uv, torch.tensor([W / 2, H / 2 - f * 0.1 / d]))
    # the vertical fov spans the image height at the origin's depth
    top = torch.tensor([0.0, 0.0, d * math.tan(math.radians(fov) / 2)])
    torch.testing.assert_close(project(cams, top)[0], torch.tensor([W / 2, 0.0]), atol=1e-4, rtol=0)


def test_indexing_cat_and_orbit():
    cams = orbit_cameras(8, width=32, height=32)
    torch.testing.assert_close(cams.azimuth, torch.arange(8) * 45.0)
    assert len(cams[2]) == 1 and len(cams[-1]) == 1 and len(cams[1:4]) == 3
    torch.testing.assert_close(cams[-1].c2w, cams.c2w[-1:])
    both = Cameras.cat([cams[:3], cams[3:]])
    torch.testing.assert_close(both.c2w, cams.c2w)
    with pytest.raises(ValueError):
        Cameras.cat([cams, cams.resized(16, 16)])


# ---------------------------------------------------------------- samplers (C.3, C.6)


def test_stage1_sampler_statistics():
    B = 3000
    s = Stage1CameraSampler()
    cams = s.sample(B, gen(0))
    assert len(cams) == 4 * B and (cams.width, cams.height) == (256, 256)
    fov = cams.fov.view(B, 4)
    elev = cams.elevation.view(B, 4)
    azim = cams.azimuth.view(B, 4)
    dist = cams.distance.view(B, 4)
    for x in (fov, elev, dist):
        assert (x == x[:, :1]).all()  # shared by the 4 views
    torch.testing.assert_close(
        wrap180(azim[:, 1:] - azim[:, :-1]), torch.full((B, 3), 90.0), atol=1e-3, rtol=0
    )
    assert fov.min() >= 15 and fov.max() <= 60 and elev.min() >= 10 and elev.max() <= 45
    assert azim.min() >= 0 and azim.max() < 360
    scale = dist * torch.tan(torch.deg2rad(fov) / 2)
    assert scale.min() >= 0.8 - 1e-5 and scale.max() <= 1.0 + 1e-5
    assert abs(fov[:, 0].mean() - 37.5) < 1.0
    assert abs(elev[:, 0].mean() - 27.5) < 1.0
    assert abs(azim[:, 0].mean() - 180) < 8.0
    assert abs(scale[:, 0].mean() - 0.9) < 0.01
    torch.testing.assert_close(s.sample(5, gen(7)).c2w, s.sample(5, gen(7)).c2w)


def test_stage2_sampler_statistics():
    B, F = 2000, 16
    cams = Stage2CameraSampler().sample(B, gen(0))
    assert len(cams) == B * F and (cams.width, cams.height) == (256, 160)
    fov = cams.fov.view(B, F)
    dist = cams.distance.view(B, F)
    elev = cams.elevation.view(B, F)
    azim = cams.azimuth.view(B, F)
    assert (fov == fov[:, :1]).all() and (dist == dist[:, :1]).all()
    assert fov.min() >= 40 and fov.max() <= 70 and dist.min() >= 1.5 and dist.max() <= 3.0
    e0, a0 = elev[:, 0], azim[:, 0]
    assert e0.min() >= -10 and e0.max() <= 45 and azim.min() >= 0 and azim.max() < 360
    e_off = elev[:, -1] - e0
    a_off = wrap180(azim[:, -1] - a0)
    assert e_off.min() >= -13.5 - 1e-4 and e_off.max() <= 30 + 1e-4
    assert a_off.min() >= -45 - 1e-3 and a_off.max() <= 45 + 1e-3
    ramp = torch.arange(F) / (F - 1)
    torch.testing.assert_close(elev, e0[:, None] + e_off[:, None] * ramp, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        wrap180(azim - (a0[:, None] + a_off[:, None] * ramp)), torch.zeros(B, F), atol=1e-3, rtol=0
    )
    assert abs(fov[:, 0].mean() - 55) < 1.0 and abs(dist[:, 0].mean() - 2.25) < 0.05
    assert abs(e0.mean() - 17.5) < 1.5 and abs(a0.mean() - 180) < 8.0
    assert abs(e_off.mean() - 8.25) < 1.0 and abs(a_off.mean()) < 2.0


def test_stage2_static_cameras_are_equal_within_a_clip():
    cams = Stage2CameraSampler(dynamic=False).sample(10, gen(2))
    c2w = cams.c2w.view(10, 16, 4, 4)
    assert (c2w == c2w[:, :1]).all()
    assert not (c2w[0, 0] == c2w[1, 0]).all()


def test_fps_sampler_statistics():
    B = 20000
    s = FpsSampler()
    fps, tau = s.sample(B, gen(0))
    assert fps.shape == (B,) and tau.shape == (B, 16)
    freq = torch.stack([(fps == v).float().mean() for v in (4.0, 8.0, 12.0)])
    torch.testing.assert_close(freq, torch.tensor([0.81, 0.14, 0.05]), atol=0.015, rtol=0)
    # C.3: 16 frames at 4 fps are 4 s of video and cover 0.75 of τ: one second is 0.1875,
    # consecutive frames (1/fps s apart) 0.1875/fps, first to last 15·0.1875/fps
    torch.testing.assert_close(tau[:, -1] - tau[:, 0], 15 * 0.1875 / fps, atol=1e-5, rtol=0)
    assert tau.min() >= 0 and tau.max() <= 1
    steps = tau[:, 1:] - tau[:, :-1]
    torch.testing.assert_close(
        steps, (0.75 / 16 * 4 / fps)[:, None].expand(B, 15), atol=1e-5, rtol=0
    )
    for v in (4.0, 8.0, 12.0):
        start = tau[fps == v, 0]
        assert start.max() <= 1 - 3.0 / v + 1e-6
        assert abs(start.mean() - (1 - 3.0 / v) / 2) < 0.02
    with pytest.raises(ValueError):
        FpsSampler(fps_values=(2,), probs=(1.0,))
    with pytest.raises(ValueError):
        FpsSampler(probs=(0.5, 0.5, 0.5))


def test_fps_sampler_frame_counts_and_toy_pace():
    # a 17-frame teacher (4k + 1) keeps C.3's pace; its last frame reaches at most τ = 1
    fps, tau = FpsSampler(frames=17).sample(5000, gen(1))
    assert tau.shape == (5000, 17)
    torch.testing.assert_close(tau[:, -1] - tau[:, 0], 3.0 / fps, atol=1e-5, rtol=0)
    assert tau.max() <= 1.0
    # the toy world's clips fill 3/fps end to end (frame step 3/(15·fps))
    fps, tau = FpsSampler(frame_step=0.2).sample(5000, gen(2))
    torch.testing.assert_close(tau[:, 1:] - tau[:, :-1], (3.0 / fps / 15)[:, None].expand(-1, 15))
    with pytest.raises(ValueError, match="frame step"):
        FpsSampler(frames=17, frame_step=0.2)  # 16·0.2 > 3: the last frame would leave [0, 1]


# ---------------------------------------------------------------- view prompts (D.3)


@pytest.mark.parametrize(
    ("elev", "azim", "word"),
    [
        (0, 0, "front view"),
        (0, 30, "front view"),
        (0, 30.5, "side view"),
        (0, 330, "front view"),
        (0, 329.5, "side view"),
        (0, 150, "back view"),
        (0, 149.5, "side view"),
        (0, 210, "back view"),
        (0, 210.5, "side view"),
        (0, 90, "side view"),
        (0, -10, "front view"),
        (0, 360, "front view"),
        (0, 540, "back view"),
        (60, 0, "overhead view"),
        (60, 180, "overhead view"),
        (59.9, 180, "back view"),
        (90, 90, "overhead view"),
    ],
)
def test_view_direction(elev, azim, word):
    assert view_direction(elev, azim) == word
