"""The ``.ayg`` asset: Gaussians + deformation fields + placements in one safetensors file
(docs/ARCHITECTURE.md, Conventions), and the world-space view of an asset that rendering and export use.

An asset is a list of objects. Each object is a static ``GaussianCloud`` (stage 1), an optional
``Motion`` (stage 2: a chain of deformation-field segments over global time, sec. 3.4) and a
``Placement`` in the scene (uniform scale, rotation, translation, time offset). A generated asset
has one object with the identity placement; ``ayg compose`` builds assets with several
(paper fig. 1: "multiple dynamic 4D objects composed within a large dynamic scene").

Time. Object ``o`` sees the local time ``clamp(g − o.time_offset, 0, o.duration)`` at global time
``g``: it waits in its first pose until its offset and holds its last pose after its motion
ends. A static object (no motion) has duration 1, like a single segment that does not move.
The asset's duration is ``max_o (time_offset + duration)``.

File layout (readable without ayg: ``safetensors.torch.load_file(path)`` gives the tensors and
``json.loads(safe_open(path, "pt").metadata()["ayg"])`` the header). All tensors are float32
(a reader converts float16, bfloat16 and float64 to float32, and refuses NaN or Inf):

    objects.{i}.gaussians.means           (N, 3)      canonical (τ = 0) centres, object space
    objects.{i}.gaussians.log_scales      (N, 1)      isotropic, or (N, 3) anisotropic; log σ
    objects.{i}.gaussians.quats           (N, 4)      wxyz, unnormalised; absent when isotropic
                                                      or when the cloud has none (identity)
    objects.{i}.gaussians.opacity_logits  (N,)        opacity = sigmoid(logit)
    objects.{i}.gaussians.sh_dc           (N, 3)      degree-0 SH; colour = 0.5 + C0·sh_dc + ...
    objects.{i}.gaussians.sh_rest         (N, K−1, 3) higher bands, K = (sh_degree + 1)², Inria
                                                      basis order (may have K − 1 = 0 rows)
    objects.{i}.motion.{k}.mlp.{j}.weight / .bias     the deformation field of segment k of the
                                                      object's Motion (torch state_dict names of
                                                      DeformationField: Linear and LayerNorm
                                                      layers of the MLP, C.2); absent when static

Metadata key ``"ayg"`` holds a JSON object:

    format_version  1
    prompts         [str]            every prompt used (stage-1 prompt first, then extensions)
    segments        [{kind, prompt, config, start, object}]  every motion segment of every
                                     object: kind ("base" | "extend" | "loop"), its prompt, the
                                     DeformationConfig dict, its global start time s_k = 0.5·k
                                     (object-local) and the object index
    config          {}               the resolved run config (``RunConfig`` as a dict)
    objects         [{name, num_gaussians, sh_degree, isotropic, duration,
                      placement: {scale, rotation: [w,x,y,z], translation: [x,y,z], time_offset},
                      motion: Motion.metadata() (list of {kind, prompt, config}) or null}]
    ...             any other key the writer put in ``Asset.header`` (kept as is)

World positions of object i at global time g: ``scale · R · x_local(g) + translation``, where R
is the rotation matrix of the unit quaternion ``rotation`` and ``x_local`` the deformed means.
Scales are multiplied by ``scale``, Gaussian rotations become ``rotation ⊗ quat`` and the SH
coefficients are rotated band by band (``sh_rotation``: exact for degrees 1-3), so that a
placed object looks from R·d the way the unplaced one looks from d.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ayg.deformation import Motion
from ayg.gaussians import GaussianCloud, PlyError, load_ply, quat_to_rotmat
from ayg.io_utils import atomic_path

FORMAT_VERSION = 1
HEADER_KEY = "ayg"
STATIC_DURATION = 1.0  # a static object lasts one segment

_GAUSSIAN_TENSORS = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")


class AssetError(ValueError):
    """A file that is not a readable ``.ayg`` asset, or an invalid asset argument."""


# ----------------------------------------------------------------------------------------------
# Quaternions (wxyz) and rotations


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a ⊗ b of (..., 4) wxyz quaternions: the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def _axis_quat(axis: int, degrees: float) -> tuple[float, float, float, float]:
    half = math.radians(degrees) / 2.0
    q = [math.cos(half), 0.0, 0.0, 0.0]
    q[1 + axis] = math.sin(half)
    return tuple(q)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Real spherical harmonics (the Inria 3DGS basis, degrees 0..3) and their rotation

_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
       0.5462742152960396)  # fmt: skip
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)  # fmt: skip


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """(M, 3) unit directions -> (M, (degree+1)²) basis values, ordered and signed exactly as in
    the Inria renderer (colour = 0.5 + Σ_k sh_k · Y_k(dir))."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            _C2[1] * y * z,
            _C2[2] * (2 * zz - xx - yy),
            _C2[3] * x * z,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def _fibonacci_sphere(n: int) -> Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = torch.sqrt(1.0 - z * z)
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)  # (n, 3)


def sh_rotation(rotation: Tensor, degree: int) -> Tensor:
    """(K, K) block-diagonal matrix M with K = (degree+1)² such that coefficients ``M @ f`` seen
    from direction ``R·d`` give the colour that ``f`` gives from ``d`` (R = rotation (3, 3)).

    Each band l is closed under rotation, so its block is the exact solution of the linear
    system ``Y_l(R d_j)ᵀ f' = Y_l(d_j)ᵀ f`` over 64 well-spread directions d_j (least squares in
    float64; exact up to rounding). For l = 1 this is the rotation R itself acting on the
    coefficients in the basis order (−y, z, −x).
    """
    R = rotation.detach().to("cpu", torch.float64)
    dirs = _fibonacci_sphere(64)  # (M, 3)
    A = sh_basis(dirs @ R.T, degree)  # (M, K): Y(R d)
    B = sh_basis(dirs, degree)  # (M, K): Y(d)
    K = (degree + 1) ** 2
    M = torch.zeros(K, K, dtype=torch.float64)
    M[0, 0] = 1.0
    for band in range(1, degree + 1):
        sl = slice(band * band, (band + 1) ** 2)
        M[sl, sl] = torch.linalg.lstsq(A[:, sl], B[:, sl]).solution
    return M


def rotate_sh(sh: Tensor, rotation: Tensor) -> Tensor:
    """Rotate SH coefficients (N, K, 3) of objects that are rotated by ``rotation`` (3, 3)."""
    degree = math.isqrt(sh.shape[1]) - 1
    if degree == 0:
        return sh
    M = sh_rotation(rotation, degree).to(sh.device, sh.dtype)  # (K, K)
    return torch.einsum("ij,njc->nic", M, sh)


# ----------------------------------------------------------------------------------------------
# Placement


def _floats(value: Any, n: int, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise AssetError(f"{what} must be {n} numbers, got {value!r}") from None
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        raise AssetError(f"{what} must be {n} finite numbers, got {value!r}")
    return vals


@dataclass(frozen=True)
class Placement:
    """Where and when an object sits in a scene: ``x_world = scale · R(rotation) · x + translation``
    at local time ``clamp(g − time_offset, 0, duration)``. ``rotation`` is a wxyz quaternion
    (normalised on construction); ``time_offset`` must be ≥ 0."""

    scale: float = 1.0
    rotation: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    time_offset: float = 0.0

    def __post_init__(self) -> None:
        scale = float(self.scale)
        if not math.isfinite(scale) or scale <= 0:
            raise AssetError(f"placement scale must be a positive number, got {self.scale!r}")
        q = _floats(self.rotation, 4, "placement rotation (quaternion w, x, y, z)")
        norm = math.sqrt(sum(v * v for v in q))
        if norm < 1e-12:
            raise AssetError("placement rotation quaternion must not be zero")
        q = tuple(v / norm for v in q)
        if q[0] < 0:  # canonical sign: same rotation, stable round trips
            q = tuple(-v for v in q)
        t = _floats(self.translation, 3, "placement translation")
        offset = float(self.time_offset)
        if not math.isfinite(offset) or offset < 0:
            raise AssetError(
                f"placement time_offset must be a number >= 0, got {self.time_offset!r}"
            )
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "rotation", q)
        object.__setattr__(self, "translation", t)
        object.__setattr__(self, "time_offset", offset)

    @classmethod
    def from_euler_degrees(
        cls,
        rx: float = 0.0,
        ry: float = 0.0,
        rz: float = 0.0,
        scale: float = 1.0,
        translation: Sequence[float] = (0.0, 0.0, 0.0),
        time_offset: float = 0.0,
    ) -> Placement:
        """Euler angles in degrees, "xyz" extrinsic: rotate about the world x axis by rx, then
        about world y by ry, then about world z by rz (R = Rz·Ry·Rx)."""
        qx, qy, qz = (
            torch.tensor(_axis_quat(a, d), dtype=torch.float64) for a, d in enumerate((rx, ry, rz))
        )
        q = quat_multiply(qz, quat_multiply(qy, qx))
        return cls(scale, tuple(q.tolist()), tuple(translation), time_offset)

    @property
    def is_identity_rotation(self) -> bool:
        return abs(self.rotation[0] - 1.0) < 1e-12

    def rotation_matrix(self, device: torch.device | str = "cpu", dtype=torch.float32) -> Tensor:
        """(3, 3) rotation matrix."""
        q = torch.tensor(self.rotation, dtype=torch.float64)
        return quat_to_rotmat(q).to(device, dtype)

    def apply(self, points: Tensor) -> Tensor:
        """(..., 3) object-space points -> (..., 3) world points."""
        R = self.rotation_matrix(points.device, points.dtype)
        t = torch.tensor(self.translation, device=points.device, dtype=points.dtype)
        return self.scale * points @ R.T + t

    def compose(self, inner: Placement) -> Placement:
        """The placement ``self ∘ inner``: first ``inner``, then ``self`` (an object placed by
        ``inner`` inside an asset that is itself placed by ``self``). Time offsets add, which
        flattens nested clamping exactly because offsets are ≥ 0 and every inner object ends
        within its asset's duration."""
        q_outer = torch.tensor(self.rotation, dtype=torch.float64)
        q = quat_multiply(q_outer, torch.tensor(inner.rotation, dtype=torch.float64))
        t_inner = torch.tensor(inner.translation, dtype=torch.float64)
        t = self.scale * quat_to_rotmat(q_outer) @ t_inner + torch.tensor(
            self.translation, dtype=torch.float64
        )
        return Placement(
            self.scale * inner.scale,
            tuple(q.tolist()),
            tuple(t.tolist()),
            self.time_offset + inner.time_offset,
        )

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "rotation": list(self.rotation),
            "translation": list(self.translation),
            "time_offset": self.time_offset,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Placement:
        unknown = set(d) - {"scale", "rotation", "translation", "time_offset"}
        if unknown:
            raise AssetError(f"unknown placement keys {sorted(unknown)}")
        return cls(
            d.get("scale", 1.0),
            tuple(d.get("rotation", (1.0, 0.0, 0.0, 0.0))),
            tuple(d.get("translation", (0.0, 0.0, 0.0))),
            d.get("time_offset", 0.0),
        )


# ----------------------------------------------------------------------------------------------
# Objects and assets


@dataclass
class AssetObject:
    """One object of a scene: a static cloud, its motion (None: static) and its placement."""

    cloud: GaussianCloud
    motion: Motion | None = None
    placement: Placement = field(default_factory=Placement)
    name: str = "object"

    @property
    def duration(self) -> float:
        return float(self.motion.duration) if self.motion is not None else STATIC_DURATION

    @property
    def num_gaussians(self) -> int:
        return int(self.cloud.means.shape[0])

    @property
    def isotropic(self) -> bool:
        return bool(self.cloud.isotropic)

    def local_positions(self, g: Tensor) -> Tensor:
        """Global times g (T,) -> (T, N, 3) object-space positions (before the placement)."""
        means0 = self.cloud.means  # (N, 3)
        local = (g - self.placement.time_offset).clamp(0.0, self.duration)
        if self.motion is None:
            return means0.unsqueeze(0).expand(g.shape[0], -1, -1)
        return self.motion.positions(means0, local)

    def positions(self, g: Tensor) -> Tensor:
        """Global times g (T,) -> (T, N, 3) world positions."""
        return self.placement.apply(self.local_positions(g))


def _as_times(g, device: torch.device) -> Tensor:
    g = torch.as_tensor(g, dtype=torch.float32, device=device)
    if g.ndim == 0:
        g = g.reshape(1)
    if g.ndim != 1:
        raise AssetError(f"times must be a scalar or a (T,) sequence, got shape {tuple(g.shape)}")
    if not torch.isfinite(g).all():
        raise AssetError("times must be finite")
    return g


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


class Asset:
    """A 4D (or static) asset: one or more placed objects, plus a JSON-able header with the
    prompts and the resolved config. Build with ``from_cloud`` / ``from_ply`` / ``load`` or
    ``ayg.scene.compose``."""

    def __init__(self, objects: Sequence[AssetObject], header: dict | None = None) -> None:
        objects = list(objects)
        if not objects:
            raise AssetError("an asset needs at least one object")
        self.objects = objects
        self.header = dict(header or {})

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_cloud(
        cls,
        cloud: GaussianCloud,
        motion: Motion | None = None,
        prompts: Sequence[str] | str = (),
        config: Any = None,
        name: str = "object",
        placement: Placement | None = None,
    ) -> Asset:
        """One object. ``config`` is a dict or a config dataclass (stored as a dict)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        header = {"prompts": list(prompts), "config": dict(config or {})}
        return cls([AssetObject(cloud, motion, placement or Placement(), name)], header)

    @classmethod
    def from_ply(cls, path: str | os.PathLike) -> Asset:
        """A static asset from an Inria-format 3DGS PLY (what other tools write)."""
        path = Path(path)
        if not path.is_file():
            raise AssetError(f"{path}: no such file")
        try:
            cloud = load_ply(path)
        except PlyError as e:
            raise AssetError(str(e)) from e
        header = {"prompts": [], "config": {}, "source": {"ply": path.name}}
        return cls([AssetObject(cloud, None, Placement(), path.stem)], header)

    # ---- properties --------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.objects[0].cloud.means.device

    @property
    def num_gaussians(self) -> int:
        return sum(o.num_gaussians for o in self.objects)

    @property
    def duration(self) -> float:
        return max(o.placement.time_offset + o.duration for o in self.objects)

    @property
    def sh_degree(self) -> int:
        return max(int(o.cloud.sh_degree) for o in self.objects)

    @property
    def prompts(self) -> list[str]:
        return list(self.header.get("prompts", []))

    @property
    def is_static(self) -> bool:
        return all(o.motion is None for o in self.objects)

    def object_ids(self) -> Tensor:
        """(N,) long: which object each Gaussian of the concatenation belongs to."""
        return torch.cat(
            [
                torch.full((o.num_gaussians,), i, dtype=torch.long)
                for i, o in enumerate(self.objects)
            ]
        )

    def to(self, device: torch.device | str) -> Asset:
        """Moves every cloud and motion to ``device`` (in place) and returns self."""
        for o in self.objects:
            o.cloud = o.cloud.to(device)
            if o.motion is not None:
                o.motion = o.motion.to(device)
        return self

    # ---- world-space views -------------------------------------------------------------------

    def positions(self, g) -> Tensor:
        """Global times g (T,) -> (T, N, 3) world positions of all Gaussians of all objects,
        concatenated in object order."""
        g = _as_times(g, self.device)
        return torch.cat([o.positions(g) for o in self.objects], dim=1)

    def _world_parameters(self) -> dict:
        """Raw (log / logit) world-space parameters of all objects, concatenated: log_scales
        (N, 1) when every object is isotropic else (N, 3), quats (N, 4) wxyz or None,
        opacity_logits (N,), sh (N, K, 3) padded to the largest degree and rotated."""
        degree = self.sh_degree
        K = (degree + 1) ** 2
        isotropic = all(o.isotropic for o in self.objects)
        log_scales, quats, logits, shs = [], [], [], []
        for o in self.objects:
            c, p = o.cloud, o.placement
            ls = c.log_scales + math.log(p.scale)  # (N, 1) or (N, 3)
            log_scales.append(ls if isotropic else ls.expand(-1, 3))
            logits.append(c.opacity_logits)
            sh = c.sh  # (N, k, 3)
            if sh.shape[1] < K:  # objects of a lower degree: missing bands are 0
                sh = torch.cat([sh, sh.new_zeros(sh.shape[0], K - sh.shape[1], 3)], dim=1)
            if degree > 0 and not p.is_identity_rotation:
                sh = rotate_sh(sh, p.rotation_matrix())
            shs.append(sh)
            if not isotropic:
                if o.isotropic:  # the rotation of a ball is irrelevant
                    q = c.rotations
                else:  # R_world = R_placement · R_local
                    q_p = torch.tensor(p.rotation, dtype=c.means.dtype, device=c.means.device)
                    q = quat_multiply(q_p.expand(o.num_gaussians, 4), c.rotations)
                quats.append(q)
        return {
            "log_scales": torch.cat(log_scales),
            "quats": torch.cat(quats) if quats else None,
            "opacity_logits": torch.cat(logits),
            "sh": torch.cat(shs),
            "sh_degree": degree,
            "isotropic": isotropic,
        }

    def attributes(self) -> dict:
        """Time-independent world-space attributes of all Gaussians (object order):
        scales (N, 3) linear (cloud scale × placement scale), quats (N, 4) unit wxyz composed
        with the placement rotation, or None when every object is isotropic, opacity (N,),
        sh (N, K, 3) with K = (sh_degree+1)², rotated with the placement, sh_degree (int),
        isotropic (bool)."""
        w = self._world_parameters()
        return {
            "scales": torch.exp(w["log_scales"]).expand(-1, 3),
            "quats": w["quats"],
            "opacity": torch.sigmoid(w["opacity_logits"]),
            "sh": w["sh"],
            "sh_degree": w["sh_degree"],
            "isotropic": w["isotropic"],
        }

    def cloud_at(self, g: float) -> GaussianCloud:
        """A world-space ``GaussianCloud`` of the whole asset frozen at global time ``g`` (what
        a per-frame PLY holds). Isotropic if every object is."""
        w = self._world_parameters()
        means = self.positions([float(g)])[0]  # (N, 3)
        sh = w["sh"]
        return GaussianCloud(
            means.detach(),
            w["log_scales"].detach(),
            None if w["quats"] is None else w["quats"].detach(),
            w["opacity_logits"].detach(),
            sh[:, 0].detach(),
            sh[:, 1:].detach(),
            requires_grad=False,
        )

    def gaussians_at(self, g) -> dict:
        """World-space Gaussians at global times g (T,): ``attributes()`` plus means (T, N, 3)."""
        return {"means": self.positions(g), **self.attributes()}

    def render(self, cameras, times, background=None, backend: str = "auto"):
        """Render C cameras, camera c at global time times[c] (C,). Returns ``RenderOutput``
        (rgb (C, 3, H, W), alpha, depth, means2d (C, N, 2), radii)."""
        from ayg.render import rasterize  # render imports gaussians; keep asset light

        times = _as_times(times, self.device)
        if times.shape[0] == 1 and len(cameras) > 1:
            times = times.expand(len(cameras))
        if times.shape[0] != len(cameras):
            raise AssetError(
                f"render needs one time per camera: {len(cameras)} cameras, {times.shape[0]} times"
            )
        cameras = cameras.to(self.device)
        g = self.gaussians_at(times)
        return rasterize(
            g["means"],  # (C, N, 3)
            g["scales"],
            g["quats"],
            g["opacity"],
            g["sh"],
            cameras,
            background=background,
            sh_degree=g["sh_degree"],
            backend=backend,
        )

    def radius(self, times=None) -> float:
        """Largest distance of a Gaussian centre from the origin, over ``times`` (default: 17
        times spread over [0, duration])."""
        if times is None:
            times = torch.linspace(0.0, self.duration, 17)
        with torch.no_grad():
            return float(self.positions(times).norm(dim=-1).max())

    # ---- file I/O ----------------------------------------------------------------------------

    def full_header(self) -> dict:
        """The JSON header written to the file (``self.header`` plus the per-object records)."""
        header = dict(self.header)
        header["format_version"] = FORMAT_VERSION
        header.setdefault("prompts", [])
        header.setdefault("config", {})
        objects, segments = [], []
        for i, o in enumerate(self.objects):
            motion_meta = o.motion.metadata() if o.motion is not None else None
            for k, seg in enumerate(motion_meta or []):
                segments.append({**seg, "start": o.motion.start(k), "object": i})
            objects.append(
                {
                    "name": o.name,
                    "num_gaussians": o.num_gaussians,
                    "sh_degree": int(o.cloud.sh_degree),
                    "isotropic": o.isotropic,
                    "duration": o.duration,
                    "placement": o.placement.to_dict(),
                    "motion": motion_meta,
                }
            )
        header["segments"] = segments
        header["objects"] = objects
        return header

    def tensors(self) -> dict[str, Tensor]:
        """The named tensors of the file (see the module docstring), contiguous float32 on CPU."""
        out: dict[str, Tensor] = {}
        for i, o in enumerate(self.objects):
            c = o.cloud
            for name in _GAUSSIAN_TENSORS:
                t = getattr(c, name)
                if t is None or (name == "quats" and o.isotropic):
                    continue
                out[f"objects.{i}.gaussians.{name}"] = t
            if o.motion is not None:
                out.update(o.motion.to_tensors(f"objects.{i}.motion."))
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the asset atomically (temp file in the same directory, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        try:
            header_json = json.dumps(self.full_header(), default=_json_default)
        except TypeError as e:
            raise AssetError(f"asset header is not JSON-serialisable: {e}") from None
        tensors = self.tensors()
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={HEADER_KEY: header_json})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> Asset:
        """Read a ``.ayg`` file; raises ``AssetError`` with one line on any problem."""
        path = Path(path)
        header, tensors = read_ayg(path)
        objects = []
        try:
            records = header["objects"]
            if not isinstance(records, list) or not records:
                raise AssetError(f"{path}: header has no objects")
            for i, rec in enumerate(records):
                objects.append(_object_from_file(path, i, rec, tensors, device))
        except (KeyError, TypeError) as e:
            raise AssetError(f"{path}: malformed ayg header ({type(e).__name__}: {e})") from None
        user_header = {
            k: v for k, v in header.items() if k not in ("objects", "segments", "format_version")
        }
        return cls(objects, user_header)


def read_ayg(path: Path) -> tuple[dict, dict[str, Tensor]]:
    """(header, tensors) of a ``.ayg`` file, validated up to the format version."""
    from safetensors import safe_open

    if not path.exists():
        raise AssetError(f"{path}: no such file")
    if path.is_dir():
        raise AssetError(f"{path}: is a directory, not an .ayg asset")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type (and OSError)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AssetError(f"{path}: not a safetensors file ({first})") from None
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise AssetError(f"{path}: tensor '{key}' holds {t.dtype}, not floating-point numbers")
        if t.dtype != torch.float32:  # float16 / bfloat16 / float64 writers: compute in float32
            tensors[key] = t = t.to(torch.float32)
        if not torch.isfinite(t).all():
            raise AssetError(
                f"{path}: tensor '{key}' holds NaN or infinite values; the asset is damaged"
            )
    if HEADER_KEY not in metadata:
        raise AssetError(
            f"{path}: a safetensors file without an '{HEADER_KEY}' header, not an ayg asset"
        )
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as e:
        raise AssetError(f"{path}: the '{HEADER_KEY}' header is not valid JSON ({e.msg})") from None
    if not isinstance(header, dict):
        raise AssetError(f"{path}: the '{HEADER_KEY}' header is not a JSON object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise AssetError(
            f"{path}: ayg format version {version!r} is not supported (this ayg reads version {FORMAT_VERSION})"
        )
    return header, tensors


def _object_from_file(path: Path, i: int, rec: dict, tensors: dict, device) -> AssetObject:
    prefix = f"objects.{i}.gaussians."
    state = {}
    for name in _GAUSSIAN_TENSORS:
        key = prefix + name
        if key in tensors:
            state[name] = tensors[key]
        elif name == "quats":
            state[name] = None
        else:
            raise AssetError(f"{path}: missing tensor '{key}'")
    sh_degree = int(rec.get("sh_degree", math.isqrt(state["sh_rest"].shape[1] + 1) - 1))
    try:
        cloud = _cloud_from_state(state, sh_degree, device)
    except AssetError as e:
        raise AssetError(f"{path}: object {i}: {e}") from None
    motion = None
    if rec.get("motion") is not None:
        mprefix = f"objects.{i}.motion."
        mt = {k: v for k, v in tensors.items() if k.startswith(mprefix)}
        try:
            motion = Motion.from_tensors(mt, rec["motion"], mprefix, device=device)
            for param in motion.parameters():
                param.requires_grad_(False)
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AssetError(f"{path}: cannot rebuild the motion of object {i}: {first}") from None
    try:
        placement = Placement.from_dict(rec.get("placement") or {})
    except AssetError as e:
        raise AssetError(f"{path}: object {i}: {e}") from None
    return AssetObject(cloud, motion, placement, str(rec.get("name", f"object{i}")))


def _cloud_from_state(state: dict, sh_degree: int, device) -> GaussianCloud:
    sd = {k: (v.to(device) if v is not None else None) for k, v in state.items()}
    sd["sh_degree"] = sh_degree
    try:  # assets are frozen (stage 2 and later train only deformation fields)
        return GaussianCloud.from_state_dict(sd, requires_grad=False)
    except ValueError as e:
        raise AssetError(str(e)) from None


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> Asset:
    """Load an asset: a ``.ayg`` file, or an Inria PLY (``.ply``) as a static asset."""
    path = Path(path)
    if path.suffix.lower() == ".ply":
        return Asset.from_ply(path).to(device)
    return Asset.load(path, device)
