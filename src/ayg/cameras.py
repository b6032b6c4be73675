"""Cameras: the pinhole model of docs/ARCHITECTURE.md, look-at construction, and the samplers of
the paper's appendix C.3 (fps / time) and C.6 (stage-1 and dynamic stage-2 cameras).

Conventions (docs/ARCHITECTURE.md, Conventions):
* world is right-handed, z up, object at the origin;
* a camera at (elevation e, azimuth a, distance d) sits at d·(cos e cos a, cos e sin a, sin e)
  and looks at the origin with up = +z; azimuth 0 is the object's front (+x);
* camera space is OpenCV: x right, y down, z forward;
* ``fov`` is the vertical field of view in degrees, fy = fx = H / (2 tan(fov/2)), the principal
  point is the image centre and pixel (row i, col j) has its centre at (j + 0.5, i + 0.5).

All angles are degrees. Randomness takes a ``torch.Generator`` (on the CPU) so a seed
reproduces a run; the tensors are then moved to the requested device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A batch of C pinhole cameras of one image size.

    c2w: (C, 4, 4) camera-to-world, columns are the OpenCV axes (right, down, forward) and the
    position. fov: (C,) vertical field of view in degrees. elevation / azimuth / distance:
    (C,) the spherical coordinates when the cameras were built from angles (used for view
    prompts and multiview conditioning), else None.
    """

    c2w: Tensor
    fov: Tensor
    width: int
    height: int
    elevation: Tensor | None = None
    azimuth: Tensor | None = None
    distance: Tensor | None = None

    def __post_init__(self) -> None:
        if self.c2w.ndim != 3 or self.c2w.shape[-2:] != (4, 4):
            raise ValueError(f"c2w must have shape (C, 4, 4), got {tuple(self.c2w.shape)}")
        if self.fov.shape != (self.c2w.shape[0],):
            raise ValueError(
                f"fov must have shape ({self.c2w.shape[0]},), got {tuple(self.fov.shape)}"
            )
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def focal(self) -> Tensor:
        """(C,) focal length in pixels (fx = fy)."""
        return self.height / (2.0 * torch.tan(torch.deg2rad(self.fov) / 2.0))

    @property
    def K(self) -> Tensor:  # noqa: N802 - the usual name of the intrinsics matrix
        """(C, 3, 3) intrinsics."""
        f = self.focal
        K = torch.zeros(len(self), 3, 3, dtype=self.c2w.dtype, device=self.device)
        K[:, 0, 0] = f
        K[:, 1, 1] = f
        K[:, 0, 2] = self.width / 2.0
        K[:, 1, 2] = self.height / 2.0
        K[:, 2, 2] = 1.0
        return K

    @property
    def viewmats(self) -> Tensor:
        """(C, 4, 4) world-to-camera matrices."""
        R = self.c2w[:, :3, :3]
        t = self.c2w[:, :3, 3:]
        w2c = torch.zeros_like(self.c2w)
        w2c[:, :3, :3] = R.transpose(1, 2)
        w2c[:, :3, 3:] = -R.transpose(1, 2) @ t
        w2c[:, 3, 3] = 1.0
        return w2c

    @property
    def positions(self) -> Tensor:
        """(C, 3) camera centres in world space."""
        return self.c2w[:, :3, 3]

    def _map(self, fn) -> Cameras:
        opt = lambda x: None if x is None else fn(x)  # noqa: E731
        return Cameras(
            c2w=fn(self.c2w),
            fov=fn(self.fov),
            width=self.width,
            height=self.height,
            elevation=opt(self.elevation),
            azimuth=opt(self.azimuth),
            distance=opt(self.distance),
        )

    def __getitem__(self, idx) -> Cameras:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return self._map(lambda x: x[idx])

    def to(self, device: torch.device | str) -> Cameras:
        return self._map(lambda x: x.to(device))

    def resized(self, width: int, height: int) -> Cameras:
        """Same poses and vertical fov at another image size."""
        return Cameras(
            self.c2w, self.fov, width, height, self.elevation, self.azimuth, self.distance
        )

    @staticmethod
    def cat(cams: list[Cameras]) -> Cameras:
        if not cams:
            raise ValueError("Cameras.cat needs at least one batch")
        w, h = cams[0].width, cams[0].height
        if any(c.width != w or c.height != h for c in cams):
            raise ValueError("Cameras.cat needs cameras of one image size")

        def cat_opt(name: str) -> Tensor | None:
            vals = [getattr(c, name) for c in cams]
            return None if any(v is None for v in vals) else torch.cat(vals)

        return Cameras(
            c2w=torch.cat([c.c2w for c in cams]),
            fov=torch.cat([c.fov for c in cams]),
            width=w,
            height=h,
            elevation=cat_opt("elevation"),
            azimuth=cat_opt("azimuth"),
            distance=cat_opt("distance"),
        )


def _as_tensor(x, n: int | None, device, dtype=torch.float32) -> Tensor:
    t = torch.as_tensor(x, dtype=dtype, device=device)
    if t.ndim == 0 and n is not None:
        t = t.expand(n).clone()
    return t


def spherical_positions(elevation: Tensor, azimuth: Tensor, distance: Tensor) -> Tensor:
    """(C, 3) = d·(cos e cos a, cos e sin a, sin e), angles in degrees."""
    e, a = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    return torch.stack(
        [
            distance * torch.cos(e) * torch.cos(a),
            distance * torch.cos(e) * torch.sin(a),
            distance * torch.sin(e),
        ],
        dim=-1,
    )


def look_at_cameras(
    elevation,
    azimuth,
    distance,
    fov,
    width: int,
    height: int,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Cameras on a sphere around the origin, looking at it with up = +z (docs/ARCHITECTURE.md, Conventions).

    Each of elevation / azimuth / distance / fov is a float or a (C,) sequence; scalars are
    broadcast to the length of the others. The right axis is (-sin a, cos a, 0), which stays
    defined straight overhead (elevation ±90°) where forward × up vanishes.
    """
    sizes = [torch.as_tensor(x).numel() for x in (elevation, azimuth, distance, fov)]
    n = max(sizes)
    if any(s not in (1, n) for s in sizes):
        raise ValueError(f"elevation/azimuth/distance/fov must have matching lengths, got {sizes}")
    elev = _as_tensor(elevation, n, device).reshape(-1).expand(n).clone()
    azim = _as_tensor(azimuth, n, device).reshape(-1).expand(n).clone()
    dist = _as_tensor(distance, n, device).reshape(-1).expand(n).clone()
    fovs = _as_tensor(fov, n, device).reshape(-1).expand(n).clone()
    if (dist <= 0).any():
        raise ValueError("camera distance must be > 0")
    if ((fovs <= 0) | (fovs >= 180)).any():
        raise ValueError("fov must be in (0, 180) degrees")

    pos = spherical_positions(elev, azim, dist)  # (C, 3)
    forward = -pos / dist[:, None]
    a = torch.deg2rad(azim)
    right = torch.stack([-torch.sin(a), torch.cos(a), torch.zeros_like(a)], dim=-1)
    down = torch.cross(forward, right, dim=-1)
    c2w = torch.zeros(n, 4, 4, device=device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = down
    c2w[:, :3, 2] = forward
    c2w[:, :3, 3] = pos
    c2w[:, 3, 3] = 1.0
    return Cameras(c2w, fovs, width, height, elev, azim, dist)


def orbit_cameras(
    n: int,
    elevation: float = 15.0,
    distance: float = 3.0,
    fov: float = 40.0,
    width: int = 256,
    height: int = 256,
    start_azimuth: float = 0.0,
    device: torch.device | str = "cpu",
) -> Cameras:
    """n cameras evenly spaced in azimuth (a turntable), starting at ``start_azimuth``."""
    azim = start_azimuth + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return look_at_cameras(elevation, azim % 360.0, distance, fov, width, height, device)


def _uniform(lo: float, hi: float, shape, generator: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


@dataclass
class Stage1CameraSampler:
    """Stage-1 cameras (C.6, after MVDream): fov ~ U(15, 60), elv ~ U(10, 45), azm ~ U(0, 360),
    distance = s / tan(fov/2) with s ~ U(0.8, 1.0). One sample is ``views`` cameras that share
    fov, elevation and distance and are spread evenly in azimuth (MVDream's 4 orthogonal views).
    """

    fov_range: tuple[float, float] = (15.0, 60.0)
    elevation_range: tuple[float, float] = (10.0, 45.0)
    azimuth_range: tuple[float, float] = (0.0, 360.0)
    scale_range: tuple[float, float] = (0.8, 1.0)
    views: int = 4
    width: int = 256
    height: int = 256

    def sample(
        self,
        batch: int = 1,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Cameras:
        """Returns batch × views cameras, grouped by sample: (b0v0, b0v1, ..., b1v0, ...)."""
        fov = _uniform(*self.fov_range, (batch,), generator)
        elev = _uniform(*self.elevation_range, (batch,), generator)
        azim = _uniform(*self.azimuth_range, (batch,), generator)
        s = _uniform(*self.scale_range, (batch,), generator)
        dist = s / torch.tan(torch.deg2rad(fov) / 2.0)
        offsets = torch.arange(self.views, dtype=torch.float32) * (360.0 / self.views)
        azims = (azim[:, None] + offsets[None, :]) % 360.0  # (B, V)
        rep = lambda x: x[:, None].expand(batch, self.views).reshape(-1)  # noqa: E731
        return look_at_cameras(
            rep(elev), azims.reshape(-1), rep(dist), rep(fov), self.width, self.height, device
        )


@dataclass
class Stage2CameraSampler:
    """Dynamic stage-2 cameras (C.6): fov ~ U(40, 70), elv ~ U(-10, 45), azm ~ U(0, 360),
    distance ~ U(1.5, 3.0), and per clip offsets elv_off ~ U(-13.5, 30), azm_off ~ U(-45, 45)
    spread linearly over the frames: elv_i = elv + elv_off·i/(F-1). ``dynamic=False`` gives a
    static camera per clip (the "w/o dynamic cameras" ablation).
    """

    fov_range: tuple[float, float] = (40.0, 70.0)
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    azimuth_range: tuple[float, float] = (0.0, 360.0)
    distance_range: tuple[float, float] = (1.5, 3.0)
    elevation_offset_range: tuple[float, float] = (-13.5, 30.0)
    azimuth_offset_range: tuple[float, float] = (-45.0, 45.0)
    frames: int = 16
    dynamic: bool = True
    width: int = 256
    height: int = 160

    def sample(
        self,
        batch: int = 1,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Cameras:
        """Returns batch × frames cameras, clip-major: (c0f0, c0f1, ..., c1f0, ...)."""
        fov = _uniform(*self.fov_range, (batch,), generator)
        elev = _uniform(*self.elevation_range, (batch,), generator)
        azim = _uniform(*self.azimuth_range, (batch,), generator)
        dist = _uniform(*self.distance_range, (batch,), generator)
        elev_off = _uniform(*self.elevation_offset_range, (batch,), generator)
        azim_off = _uniform(*self.azimuth_offset_range, (batch,), generator)
        if not self.dynamic:
            elev_off = torch.zeros_like(elev_off)
            azim_off = torch.zeros_like(azim_off)
        ramp = torch.arange(self.frames, dtype=torch.float32) / max(self.frames - 1, 1)  # (F,)
        elevs = elev[:, None] + elev_off[:, None] * ramp[None]  # (B, F)
        azims = (azim[:, None] + azim_off[:, None] * ramp[None]) % 360.0
        rep = lambda x: x[:, None].expand(batch, self.frames).reshape(-1)  # noqa: E731
        return look_at_cameras(
            elevs.reshape(-1),
            azims.reshape(-1),
            rep(dist),
            rep(fov),
            self.width,
            self.height,
            device,
        )


@dataclass
class FpsSampler:
    """fps and frame times (C.3): fps ∈ {4, 8, 12} with p = (0.81, 0.14, 0.05), a start
    τ_s ~ U(0, 1 − span_at_fps1/fps) (C.3: 1 − 3/fps), and frame i at τ_s + i·frame_step/fps.

    C.3 sets "0.75 as the length of the time interval covering a 16 frame 4 fps video", i.e.
    4 s of video ↔ 0.75 of τ, so one second is 0.1875 of τ and consecutive frames, 1/fps s apart,
    are ``frame_step / fps`` = 0.1875/fps apart: the 16 frames cover 16 frame intervals
    (3/fps), their first-to-last distance is 15·0.1875/fps. A teacher with F = 4k + 1 frames
    (17) keeps the same pace; ``frame_step`` must satisfy (F − 1)·frame_step <= span_at_fps1
    so the last frame stays inside [0, 1].
    """

    fps_values: tuple[int, ...] = (4, 8, 12)
    probs: tuple[float, ...] = (0.81, 0.14, 0.05)
    frames: int = 16
    span_at_fps1: float = 3.0
    frame_step: float = 0.1875

    def __post_init__(self) -> None:
        if len(self.fps_values) != len(self.probs):
            raise ValueError("fps_values and probs must have the same length")
        if any(p < 0 for p in self.probs) or not math.isclose(sum(self.probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"fps probabilities must be >= 0 and sum to 1, got {self.probs}")
        if any(f <= 0 for f in self.fps_values) or any(
            self.span_at_fps1 / f > 1.0 for f in self.fps_values
        ):
            raise ValueError(
                f"every fps must be > 0 and satisfy {self.span_at_fps1}/fps <= 1, "
                f"got {self.fps_values}"
            )
        if (
            not 0.0 < self.frame_step
            or (self.frames - 1) * self.frame_step > self.span_at_fps1 + 1e-9
        ):
            raise ValueError(
                f"the frame step must be > 0 and (frames - 1)·step <= {self.span_at_fps1} "
                f"(the last frame inside [0, 1]), got step {self.frame_step} for {self.frames} frames"
            )

    def span(self, fps: Tensor) -> Tensor:
        """τ-length of the clip window the start is drawn for (C.3: 3/fps)."""
        return self.span_at_fps1 / fps

    def sample(
        self,
        batch: int = 1,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[Tensor, Tensor]:
        """Returns fps (B,) float and tau (B, F) in [0, 1]."""
        probs = torch.tensor(self.probs, dtype=torch.float64)
        idx = torch.multinomial(probs, batch, replacement=True, generator=generator)
        fps = torch.tensor(self.fps_values, dtype=torch.float32)[idx]  # (B,)
        start = torch.rand(batch, generator=generator) * (1.0 - self.span(fps))
        ramp = torch.arange(self.frames, dtype=torch.float32) * self.frame_step  # (F,)
        tau = start[:, None] + ramp[None] / fps[:, None]
        return fps.to(device), tau.clamp(0.0, 1.0).to(device)


VIEW_SUFFIXES = ("front view", "side view", "back view", "overhead view")


def view_direction(elevation: float, azimuth: float) -> str:
    """The view word of D.3: overhead if elv ≥ 60, front if azm ≤ 30 or ≥ 330, back if
    150 ≤ azm ≤ 210, side otherwise. Returns one of VIEW_SUFFIXES."""
    azimuth = azimuth % 360.0
    if elevation >= 60.0:
        return "overhead view"
    if azimuth <= 30.0 or azimuth >= 330.0:
        return "front view"
    if 150.0 <= azimuth <= 210.0:
        return "back view"
    return "side view"
