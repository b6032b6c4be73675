"""The cloud of 3D Gaussians: its parameters, the initialisation of the paper's appendix C.1 and
the learning rates of table 3.

AYG uses isotropic Gaussians (sec. 3.1): one log-scale per Gaussian, no rotation. Files written
by other 3DGS tools are anisotropic; they load with three log-scales and a quaternion, and
everything downstream (renderer, asset, export) accepts both.

Conventions (docs/ARCHITECTURE.md, Conventions):
* colour = clamp(0.5 + SH(dir), 0) with the degree-0 term C0·sh_dc, C0 = 1 / (2√π);
* opacity is stored as a logit, scales as logs, rotations as wxyz quaternions (unnormalised).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ayg.regularizers import knn_indices

C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))

# Parameter names, in the order of ``named_parameters`` and of the optimizer's groups.
PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """(..., 3) colour in [0, 1] -> the degree-0 SH coefficient that renders it."""
    return (rgb - 0.5) / C0


def sh_dc_to_rgb(sh_dc: Tensor) -> Tensor:
    """(..., 3) degree-0 SH coefficient -> view-independent colour (unclamped)."""
    return 0.5 + C0 * sh_dc


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(N, 4) wxyz quaternions (any norm) -> (N, 3, 3) rotation matrices."""
    w, x, y, z = nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def knn_mean_sq_dist(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """(N, 3) -> (N,) mean squared distance to the k nearest other points, the neighbours found
    by ``ayg.regularizers.knn_indices`` (the rigidity term's search) and their distances computed
    directly."""
    n = points.shape[0]
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"need at least 2 points to measure neighbour distances, got {n}")
    idx = knn_indices(points, k, chunk)  # (N, k)
    return (points[:, None] - points[idx]).square().sum(-1).mean(1)


# ----------------------------------------------------------------------------- the cloud


def sh_degree_of(num_rest: int) -> int:
    """K - 1 higher-band coefficients -> SH degree d with K = (d + 1)^2, or -1 if none fits."""
    d = math.isqrt(num_rest + 1) - 1
    return d if (d + 1) ** 2 == num_rest + 1 else -1


class GaussianCloud:
    """N 3D Gaussians as leaf ``nn.Parameter``s (not an ``nn.Module``: densification replaces
    the parameters, and the optimizer is edited with them).

    means (N, 3); log_scales (N, 1) isotropic or (N, 3) anisotropic; quats (N, 4) wxyz or None
    (identity); opacity_logits (N,); sh_dc (N, 3); sh_rest (N, K-1, 3), K = (sh_degree + 1)^2,
    or None for degree 0. The tensors are copied.
    """

    def __init__(
        self,
        means: Tensor,
        log_scales: Tensor,
        quats: Tensor | None,
        opacity_logits: Tensor,
        sh_dc: Tensor,
        sh_rest: Tensor | None = None,
        *,
        requires_grad: bool = True,
    ) -> None:
        if means.ndim != 2 or means.shape[1] != 3:
            raise ValueError(f"means must have shape (N, 3), got {tuple(means.shape)}")
        n = means.shape[0]
        if sh_rest is None:
            sh_rest = means.new_zeros(n, 0, 3)
        expected = {
            "log_scales": ((n, 1), (n, 3)),
            "quats": ((n, 4),),
            "opacity_logits": ((n,),),
            "sh_dc": ((n, 3),),
        }
        given = {
            "log_scales": log_scales,
            "quats": quats,
            "opacity_logits": opacity_logits,
            "sh_dc": sh_dc,
        }
        for name, t in given.items():
            if t is not None and tuple(t.shape) not in expected[name]:
                allowed = " or ".join(str(s) for s in expected[name])
                raise ValueError(
                    f"{name} must have shape {allowed} for N={n}, got {tuple(t.shape)}"
                )
        if (
            sh_rest.ndim != 3
            or sh_rest.shape[0] != n
            or sh_rest.shape[2] != 3
            or sh_degree_of(sh_rest.shape[1]) < 0
        ):
            raise ValueError(
                f"sh_rest must have shape (N, (d+1)^2 - 1, 3) = ({n}, 0|3|8|15|..., 3), got {tuple(sh_rest.shape)}"
            )
        tensors = {"means": means, **given, "sh_rest": sh_rest}
        for name, t in tensors.items():
            if t is None:
                continue
            if not t.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
            if t.device != means.device:
                raise ValueError(f"{name} is on {t.device} but means is on {means.device}")

        def param(t: Tensor | None) -> nn.Parameter | None:
            if t is None:
                return None
            return nn.Parameter(
                t.detach().clone(memory_format=torch.contiguous_format), requires_grad=requires_grad
            )

        self.means = param(means)
        self.log_scales = param(log_scales)
        self.quats = param(quats)
        self.opacity_logits = param(opacity_logits)
        self.sh_dc = param(sh_dc)
        self.sh_rest = param(sh_rest)

    # --- construction

    @classmethod
    def init_sphere(
        cls,
        n: int = 1000,
        radius: float = 0.3,
        sh_degree: int = 2,
        init_opacity: float = 0.1,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> GaussianCloud:
        """The initialisation of C.1: ``n`` isotropic Gaussians uniform in a ball of ``radius``
        at the origin, random colour, higher SH bands 0; as Kerbl et al., log-scale = log of the
        root mean squared distance to the 3 nearest neighbours and opacity ``init_opacity``."""
        if n < 2:
            raise ValueError(f"n must be at least 2 (neighbour distances set the scales), got {n}")
        if radius <= 0:
            raise ValueError(f"radius must be positive, got {radius}")
        if sh_degree < 0:
            raise ValueError(f"sh_degree must be >= 0, got {sh_degree}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0, 1), got {init_opacity}")
        # Sampled on the CPU so that a seed gives the same cloud on every device.
        direction = nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
        r = radius * torch.rand(n, 1, generator=generator).pow(1.0 / 3.0)  # uniform in volume
        means = direction * r  # (N, 3)
        rgb = torch.rand(n, 3, generator=generator)  # (N, 3)
        d2 = knn_mean_sq_dist(means, k=3).clamp_min(1e-7)  # (N,)
        log_scales = torch.log(torch.sqrt(d2))[:, None]  # (N, 1)
        opacity_logits = torch.full((n,), math.log(init_opacity / (1.0 - init_opacity)))
        sh_rest = torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3)
        cloud = cls(means, log_scales, None, opacity_logits, rgb_to_sh_dc(rgb), sh_rest)
        return cloud.to(device)

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any], requires_grad: bool = True) -> GaussianCloud:
        """Inverse of ``state_dict``. ``quats`` may be absent or None; an optional integer
        ``sh_degree`` entry is checked against the shape of ``sh_rest``."""
        required = ("means", "log_scales", "opacity_logits", "sh_dc", "sh_rest")
        missing = [k for k in required if d.get(k) is None]
        if missing:
            raise ValueError(
                f"Gaussian state dict is missing {', '.join(missing)} (has {', '.join(d)})"
            )
        unknown = [k for k in d if k not in PARAM_NAMES and k != "sh_degree"]
        if unknown:
            raise ValueError(
                f"Gaussian state dict has unknown entries {', '.join(unknown)}; expected {PARAM_NAMES}"
            )
        cloud = cls(
            d["means"],
            d["log_scales"],
            d.get("quats"),
            d["opacity_logits"],
            d["sh_dc"],
            d["sh_rest"],
            requires_grad=requires_grad,
        )
        if d.get("sh_degree") is not None and int(d["sh_degree"]) != cloud.sh_degree:
            raise ValueError(
                f"sh_degree {int(d['sh_degree'])} does not match sh_rest of shape {tuple(d['sh_rest'].shape)}"
                f" (degree {cloud.sh_degree})"
            )
        return cloud

    @staticmethod
    def cat(clouds: Sequence[GaussianCloud]) -> GaussianCloud:
        """Concatenate clouds of one SH degree; mixing isotropic and anisotropic clouds gives an
        anisotropic cloud (isotropic members get three equal log-scales and identity rotations)."""
        if not clouds:
            raise ValueError("cat needs at least one cloud")
        degrees = {c.sh_degree for c in clouds}
        if len(degrees) != 1:
            raise ValueError(f"cannot concatenate clouds of different SH degrees {sorted(degrees)}")
        iso = all(c.isotropic for c in clouds)
        has_quats = any(c.quats is not None for c in clouds)
        parts: dict[str, list[Tensor]] = {k: [] for k in PARAM_NAMES}
        for c in clouds:
            parts["means"].append(c.means.detach())
            parts["log_scales"].append(
                c.log_scales.detach() if iso else c.log_scales.detach().expand(-1, 3)
            )
            parts["quats"].append(c.rotations.detach() if c.quats is None else c.quats.detach())
            parts["opacity_logits"].append(c.opacity_logits.detach())
            parts["sh_dc"].append(c.sh_dc.detach())
            parts["sh_rest"].append(c.sh_rest.detach())
        out = {k: torch.cat(v) for k, v in parts.items()}
        if not has_quats:
            out["quats"] = None
        return GaussianCloud(**out, requires_grad=clouds[0].means.requires_grad)

    # --- activated views

    @property
    def num(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.sh_rest.shape[1])

    @property
    def isotropic(self) -> bool:
        return self.log_scales.shape[1] == 1

    @property
    def scales(self) -> Tensor:
        """(N, 3) standard deviations, broadcast from (N, 1) when isotropic."""
        return torch.exp(self.log_scales).expand(-1, 3).contiguous()

    @property
    def opacity(self) -> Tensor:
        """(N,) in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> Tensor:
        """(N, 4) unit wxyz quaternions; identity when ``quats`` is None."""
        if self.quats is None:
            q = self.means.new_zeros(self.num, 4)
            q[:, 0] = 1.0
            return q
        return nn.functional.normalize(self.quats, dim=-1)

    @property
    def sh(self) -> Tensor:
        """(N, K, 3) all SH coefficients, degree 0 first."""
        return torch.cat([self.sh_dc[:, None, :], self.sh_rest], dim=1)

    @property
    def rgb(self) -> Tensor:
        """(N, 3) view-independent colour 0.5 + C0·sh_dc, clamped at 0 as in the renderer."""
        return sh_dc_to_rgb(self.sh_dc).clamp_min(0.0)

    # --- parameters, copies, devices

    def named_parameters(self) -> dict[str, nn.Parameter]:
        """name -> parameter, in ``PARAM_NAMES`` order, without ``quats`` when it is None."""
        return {k: getattr(self, k) for k in PARAM_NAMES if getattr(self, k) is not None}

    def parameters(self) -> list[nn.Parameter]:
        return list(self.named_parameters().values())

    def param_groups(self, lr: GaussianLR | None = None, step: int = 0) -> list[dict]:
        """Adam parameter groups, one parameter each, with key ``name`` (the attribute name).
        The degree-0 ``sh_rest`` (no coefficients) gets no group."""
        lr = lr if lr is not None else GaussianLR()
        groups = []
        for name, p in self.named_parameters().items():
            if name == "sh_rest" and p.shape[1] == 0:
                continue
            groups.append({"params": [p], "lr": lr.value(name, step), "name": name})
        return groups

    def state_dict(self) -> dict[str, Tensor]:
        """name -> detached copy of each parameter (``quats`` only when present)."""
        return {k: p.detach().clone() for k, p in self.named_parameters().items()}

    def _rebuilt(self, fn, requires_grad: bool | None = None) -> GaussianCloud:
        rg = self.means.requires_grad if requires_grad is None else requires_grad
        q = None if self.quats is None else fn(self.quats.detach())
        return GaussianCloud(
            fn(self.means.detach()),
            fn(self.log_scales.detach()),
            q,
            fn(self.opacity_logits.detach()),
            fn(self.sh_dc.detach()),
            fn(self.sh_rest.detach()),
            requires_grad=rg,
        )

    def clone(self) -> GaussianCloud:
        """A copy with new parameters (same ``requires_grad``)."""
        return self._rebuilt(lambda t: t)

    def detached(self) -> GaussianCloud:
        """A copy whose parameters do not require grad (a frozen cloud)."""
        return self._rebuilt(lambda t: t, requires_grad=False)

    def to(self, device: torch.device | str) -> GaussianCloud:
        """A copy on ``device`` (new parameters: build the optimizer after moving)."""
        return self._rebuilt(lambda t: t.to(device))

    def subset(self, mask_or_index: Tensor) -> GaussianCloud:
        """A copy of the Gaussians selected by a (N,) bool mask or a (M,) index tensor."""
        idx = torch.as_tensor(mask_or_index, device=self.device)
        if idx.dtype == torch.bool and idx.shape != (self.num,):
            raise ValueError(f"mask must have shape ({self.num},), got {tuple(idx.shape)}")
        return self._rebuilt(lambda t: t[idx])

    def __repr__(self) -> str:
        kind = "isotropic" if self.isotropic else "anisotropic"
        return f"GaussianCloud(num={self.num}, sh_degree={self.sh_degree}, {kind}, device={self.device})"


# ----------------------------------------------------------------------------- learning rates


@dataclass
class GaussianLR:
    """Learning rates of table 3. The position rate decays log-linearly from ``position`` to
    ``position_final`` over ``position_decay_steps`` and is constant afterwards (DreamGaussian's
    schedule); every rate is multiplied by ``scale`` (fine-tuning of C.9 uses 1/5)."""

    position: float = 1e-3
    position_final: float = 2e-4
    position_decay_steps: int = 500
    rgb: float = 0.01  # sh_dc
    sh: float = 0.0005  # sh_rest
    opacity: float = 0.05
    scaling: float = 0.005
    rotation: float = 0.001  # only for anisotropic clouds
    scale: float = 1.0

    def __post_init__(self) -> None:
        for name in (
            "position",
            "position_final",
            "rgb",
            "sh",
            "opacity",
            "scaling",
            "rotation",
            "scale",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"learning rate {name} must be >= 0, got {getattr(self, name)}")
        if self.position_decay_steps < 0:
            raise ValueError(f"position_decay_steps must be >= 0, got {self.position_decay_steps}")

    def position_at(self, step: int) -> float:
        """exp((1 - t) log(position) + t log(position_final)), t = clip(step / decay_steps, 0, 1)."""
        if self.position_decay_steps == 0 or self.position <= 0 or self.position_final <= 0:
            lr = self.position_final if step >= self.position_decay_steps else self.position
            return lr * self.scale
        t = min(max(step / self.position_decay_steps, 0.0), 1.0)
        lr = math.exp((1.0 - t) * math.log(self.position) + t * math.log(self.position_final))
        return lr * self.scale

    def value(self, name: str, step: int = 0) -> float:
        """The rate of parameter ``name`` (one of ``PARAM_NAMES``) at ``step``."""
        fixed = {
            "log_scales": self.scaling,
            "quats": self.rotation,
            "opacity_logits": self.opacity,
            "sh_dc": self.rgb,
            "sh_rest": self.sh,
        }
        if name == "means":
            return self.position_at(step)
        if name not in fixed:
            raise ValueError(f"unknown Gaussian parameter {name!r}; expected one of {PARAM_NAMES}")
        return fixed[name] * self.scale


def make_optimizer(cloud: GaussianCloud, lr: GaussianLR | None = None) -> torch.optim.Adam:
    """Adam over the cloud's parameters, one group per parameter (key ``name``), eps 1e-15 as in
    the Inria trainer."""
    return torch.optim.Adam(cloud.param_groups(lr), lr=0.0, eps=1e-15)


def update_learning_rate(optimizer: torch.optim.Optimizer, lr: GaussianLR, step: int) -> float:
    """Set every named group's rate for ``step``; returns the position rate."""
    for group in optimizer.param_groups:
        name = group.get("name")
        if name in PARAM_NAMES:
            group["lr"] = lr.value(name, step)
    return lr.position_at(step)
