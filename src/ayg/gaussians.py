"""3D Gaussians: parameters, the initialisation of the paper's appendix C.1, densification and
pruning (C.1, after Kerbl et al. 2023), learning rates (table 3), and the Inria PLY format.

AYG uses isotropic Gaussians (sec. 3.1): one log-scale per Gaussian, no rotation. Files written
by other 3DGS tools are anisotropic; they load with three log-scales and a quaternion, and
everything downstream (renderer, asset, export) accepts both.

Conventions (docs/ARCHITECTURE.md, Conventions):
* colour = clamp(0.5 + SH(dir), 0) with the degree-0 term C0·sh_dc, C0 = 1 / (2√π);
* opacity is stored as a logit, scales as logs, rotations as wxyz quaternions (unnormalised);
* PLY: ``x y z nx ny nz f_dc_0..2 f_rest_0..M-1 opacity scale_0..2 rot_0..3``, float32,
  ``f_rest`` channel-major (all coefficients of R, then G, then B).

Densification follows the gsplat "strategy" pattern: ``DensifyStrategy`` holds the
hyperparameters, its running statistics live in a plain dict, and every edit of the
parameters edits the Adam state with them, so training continues seamlessly.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

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
    """(N, 3) -> (N,) mean squared distance to the k nearest other points (brute force, chunked)."""
    n = points.shape[0]
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"need at least 2 points to measure neighbour distances, got {n}")
    out = []
    for i in range(0, n, chunk):
        d = torch.cdist(points[i : i + chunk], points, compute_mode="donot_use_mm_for_euclid_dist")
        rows = torch.arange(d.shape[0], device=points.device)
        d[rows, rows + i] = float("inf")  # not its own neighbour
        out.append(d.topk(k, dim=1, largest=False).values.square().mean(dim=1))
    return torch.cat(out)


# ----------------------------------------------------------------------------- the cloud


def _sh_degree_of(num_rest: int) -> int:
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
            or _sh_degree_of(sh_rest.shape[1]) < 0
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
        return _sh_degree_of(self.sh_rest.shape[1])

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


# ----------------------------------------------------------------------------- editing


def _edit_rows(
    cloud: GaussianCloud,
    optimizer: torch.optim.Optimizer | None,
    keep: Tensor,
    new_rows: Mapping[str, Tensor] | None = None,
) -> None:
    """Replace every parameter p by cat(p[keep], new_rows[name]) and edit its gradient and its
    optimizer state the same way (kept rows kept, new rows zero). The optimizer's groups then
    hold the cloud's new parameters."""
    where: dict[int, tuple[dict, int]] = {}
    if optimizer is not None:
        for group in optimizer.param_groups:
            for i, q in enumerate(group["params"]):
                where[id(q)] = (group, i)
    for name, p in cloud.named_parameters().items():
        extra = None if new_rows is None else new_rows[name].to(p)
        n_extra = 0 if extra is None else extra.shape[0]

        def edit(t: Tensor, fill: Tensor | None, n_extra: int = n_extra) -> Tensor:
            kept = t[keep]
            if n_extra == 0:
                return kept
            if fill is None:
                fill = t.new_zeros((n_extra, *t.shape[1:]))
            return torch.cat([kept, fill], dim=0)

        new_p = nn.Parameter(edit(p.detach(), extra), requires_grad=p.requires_grad)
        if p.grad is not None:
            new_p.grad = edit(p.grad, None)
        if id(p) in where:
            group, i = where[id(p)]
            state = optimizer.state.pop(p, None)
            group["params"][i] = new_p
            if state:
                optimizer.state[new_p] = {
                    k: (edit(v, None) if isinstance(v, Tensor) and v.shape == p.shape else v)
                    for k, v in state.items()
                }
        setattr(cloud, name, new_p)


def _sample_children(
    cloud: GaussianCloud, idx: Tensor, n_split: int, generator: torch.Generator
) -> dict[str, Tensor]:
    """Rows for ``n_split`` children of each Gaussian in idx (M,): centres drawn from the parent
    Gaussian, scales divided by 0.8·n_split (1.6 for 2), everything else copied."""
    scales = cloud.scales.detach()[idx].repeat(n_split, 1)  # (S·M, 3)
    z = torch.randn(scales.shape, generator=generator).to(scales)  # CPU generator, then device
    offsets = z * scales
    if cloud.quats is not None:
        rot = quat_to_rotmat(cloud.quats.detach()[idx]).repeat(n_split, 1, 1)  # (S·M, 3, 3)
        offsets = (rot @ offsets[..., None])[..., 0]
    rows = {
        name: p.detach()[idx].repeat(n_split, *([1] * (p.ndim - 1)))
        for name, p in cloud.named_parameters().items()
    }
    rows["means"] = rows["means"] + offsets
    rows["log_scales"] = rows["log_scales"] - math.log(0.8 * n_split)
    return rows


def _info_get(info: Any, key: str) -> Any:
    if isinstance(info, Mapping):
        return info.get(key)
    return getattr(info, key, None)


@dataclass
class DensifyStrategy:
    """Adaptive density control of C.1 (Kerbl et al.): the fields are hyperparameters, the
    running statistics live in the dict of ``initialize_state``.

    At steps start, start + every, ... (while ``step < stop``): Gaussians whose mean NDC
    screen-space position gradient exceeds ``grad_threshold`` are cloned when small (largest
    scale <= percent_dense·scene_extent) or split into ``n_split`` children when large — only
    while N < ``max_gaussians``, and never past it (the largest gradients go first); then
    Gaussians with opacity < ``prune_opacity`` are pruned. Every ``reset_every`` steps the
    opacities are set to min(opacity, ``reset_value``) and their Adam moments zeroed.
    """

    grad_threshold: float = 0.002
    prune_opacity: float = 0.005
    start: int = 500
    every: int = 1000
    stop: int | None = None
    max_gaussians: int | None = 50_000
    reset_every: int | None = 3000
    reset_value: float = 0.01
    percent_dense: float = 0.01
    scene_extent: float = 1.0
    n_split: int = 2
    seed: int = 0  # split sampling at step s uses Generator(seed·1_000_003 + s): resumable

    def __post_init__(self) -> None:
        if self.every <= 0:
            raise ValueError(f"every must be positive, got {self.every}")
        if self.n_split < 2:
            raise ValueError(f"n_split must be at least 2, got {self.n_split}")
        if not 0.0 < self.reset_value < 1.0:
            raise ValueError(f"reset_value must be in (0, 1), got {self.reset_value}")
        if self.max_gaussians is not None and self.max_gaussians < 1:
            raise ValueError(f"max_gaussians must be positive or None, got {self.max_gaussians}")

    def initialize_state(self) -> dict[str, Any]:
        """grad2d (N,) summed NDC gradient norms, count (N,) visible views; created lazily."""
        return {"grad2d": None, "count": None}

    def step_pre_backward(self, info: Any) -> None:
        """Keep the gradient of the projected centres (call before ``loss.backward()``)."""
        means2d = _info_get(info, "means2d")
        if means2d is None:
            raise ValueError("info has no 'means2d': pass what the renderer returned")
        if not means2d.requires_grad:
            raise ValueError(
                "info['means2d'] does not require grad: render a cloud whose means require grad"
            )
        means2d.retain_grad()

    def _accumulate(self, cloud: GaussianCloud, state: dict, info: Any) -> None:
        means2d = _info_get(info, "means2d")
        radii = _info_get(info, "radii")
        if means2d is None or radii is None:
            raise ValueError("info needs 'means2d' (C, N, 2) and 'radii' (C, N)")
        grad = means2d.grad
        if grad is None:
            raise ValueError(
                "info['means2d'] has no gradient: call step_pre_backward(info) before loss.backward()"
            )
        width, height = _info_get(info, "width"), _info_get(info, "height")
        if width is None or height is None:
            image = _info_get(info, "rgb")
            if image is None:
                raise ValueError(
                    "info needs 'width' and 'height' (or an 'rgb' image to read them from)"
                )
            height, width = image.shape[-2:]
        if grad.ndim == 2:  # one camera
            grad, radii = grad[None], radii[None]
        if grad.shape[1] != cloud.num:
            raise ValueError(f"means2d has {grad.shape[1]} Gaussians but the cloud has {cloud.num}")
        visible = radii > 0
        if visible.ndim == 3:  # per-axis radii (gsplat >= 1.5)
            visible = visible.all(dim=-1)
        scale = grad.new_tensor([width / 2.0, height / 2.0])  # pixel -> NDC gradient
        norms = torch.linalg.vector_norm(grad.detach() * scale, dim=-1)  # (C, N)
        # a step with non-finite gradients (skipped by the trainer) must not poison the means
        norms = torch.nan_to_num(norms, nan=0.0, posinf=0.0)
        if state.get("grad2d") is None or state["grad2d"].shape[0] != cloud.num:
            state["grad2d"] = torch.zeros(cloud.num, device=cloud.device)
            state["count"] = torch.zeros(cloud.num, device=cloud.device)
        state["grad2d"] += (norms * visible).sum(dim=0).to(state["grad2d"])
        state["count"] += visible.sum(dim=0).to(state["count"])

    def step_post_backward(
        self,
        cloud: GaussianCloud,
        optimizer: torch.optim.Optimizer | None,
        state: dict[str, Any],
        step: int,
        info: Any,
        generator: torch.Generator | None = None,
    ) -> dict[str, int]:
        """Accumulate the screen-space gradients of this step, then densify / prune / reset when
        due. Returns what happened: cloned, split, pruned, reset (0/1), num."""
        event = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0, "num": cloud.num}
        if self.stop is not None and step >= self.stop:
            return event
        self._accumulate(cloud, state, info)
        if step >= self.start and (step - self.start) % self.every == 0:
            if self.max_gaussians is None or cloud.num < self.max_gaussians:
                if generator is None:
                    generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
                event["cloned"], event["split"] = self.densify(cloud, optimizer, state, generator)
            event["pruned"] = self.prune(cloud, optimizer)
            state["grad2d"] = torch.zeros(cloud.num, device=cloud.device)
            state["count"] = torch.zeros(cloud.num, device=cloud.device)
        if self.reset_every and step > 0 and step % self.reset_every == 0:
            self.reset_opacity(cloud, optimizer)
            event["reset"] = 1
        event["num"] = cloud.num
        return event

    def densify(
        self,
        cloud: GaussianCloud,
        optimizer: torch.optim.Optimizer | None,
        state: dict[str, Any],
        generator: torch.Generator | None = None,
    ) -> tuple[int, int]:
        """Clone small / split large Gaussians whose mean gradient exceeds the threshold.
        Returns (cloned, split)."""
        if state.get("grad2d") is None or state["grad2d"].shape[0] != cloud.num:
            return 0, 0
        avg = state["grad2d"] / state["count"].clamp_min(1.0)  # (N,)
        candidates = avg > self.grad_threshold
        small = cloud.scales.detach().amax(dim=-1) <= self.percent_dense * self.scene_extent
        # each clone adds 1 Gaussian, each split n_split - 1
        if self.max_gaussians is not None:
            idx = torch.nonzero(candidates).squeeze(1)
            order = idx[torch.argsort(avg[idx], descending=True, stable=True)]
            cost = torch.where(small[order], 1, self.n_split - 1)
            allowed = order[torch.cumsum(cost, 0) <= self.max_gaussians - cloud.num]
            candidates = torch.zeros_like(candidates)
            candidates[allowed] = True
        clone_idx = torch.nonzero(candidates & small).squeeze(1)
        split_idx = torch.nonzero(candidates & ~small).squeeze(1)
        if clone_idx.numel() == 0 and split_idx.numel() == 0:
            return 0, 0
        generator = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        children = _sample_children(cloud, split_idx, self.n_split, generator)
        rows = {
            name: torch.cat([p.detach()[clone_idx], children[name]])
            for name, p in cloud.named_parameters().items()
        }
        keep = torch.ones(cloud.num, dtype=torch.bool, device=cloud.device)
        keep[split_idx] = False  # the parents are replaced by their children
        _edit_rows(cloud, optimizer, torch.nonzero(keep).squeeze(1), rows)
        return int(clone_idx.numel()), int(split_idx.numel())

    def prune(self, cloud: GaussianCloud, optimizer: torch.optim.Optimizer | None) -> int:
        """Remove Gaussians with opacity < prune_opacity (never all of them). Returns the count."""
        remove = cloud.opacity.detach() < self.prune_opacity
        n = int(remove.sum())
        if n == 0 or n == cloud.num:
            return 0
        _edit_rows(cloud, optimizer, torch.nonzero(~remove).squeeze(1))
        return n

    def reset_opacity(self, cloud: GaussianCloud, optimizer: torch.optim.Optimizer | None) -> None:
        """opacity <- min(opacity, reset_value); the Adam moments of the opacities are zeroed."""
        p = cloud.opacity_logits
        with torch.no_grad():
            p.clamp_(max=math.log(self.reset_value / (1.0 - self.reset_value)))
        if optimizer is not None:
            for v in optimizer.state.get(p, {}).values():
                if isinstance(v, Tensor) and v.shape == p.shape:
                    v.zero_()


# ----------------------------------------------------------------------------- PLY


class PlyError(ValueError):
    """A PLY file that cannot be read as 3D Gaussians; the message is one line."""


_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_CANONICAL = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
_CANONICAL += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
_EXPECTED = "an Inria 3DGS PLY with x y z f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3"


def ply_field_names(sh_degree: int) -> list[str]:
    """The vertex properties that ``save_ply`` writes, in order."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(cloud: GaussianCloud, path: str | os.PathLike) -> Path:
    """Write ``cloud`` as an Inria 3DGS PLY (binary little endian, float32), atomically: a
    temporary file in the same directory, then ``os.replace``. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = cloud.num

    def cpu(t: Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy()

    sh_rest = cpu(cloud.sh_rest).transpose(0, 2, 1).reshape(n, -1)  # (N, 3·(K-1)) channel-major
    log_scales = cpu(cloud.log_scales)
    if log_scales.shape[1] == 1:
        log_scales = np.repeat(log_scales, 3, axis=1)
    quats = (
        cpu(cloud.quats) if cloud.quats is not None else np.tile(np.float32([1, 0, 0, 0]), (n, 1))
    )
    columns = [cpu(cloud.means), np.zeros((n, 3), np.float32), cpu(cloud.sh_dc), sh_rest]
    columns += [cpu(cloud.opacity_logits)[:, None], log_scales, quats]
    data = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")  # (N, P)
    names = ply_field_names(cloud.sh_degree)
    assert data.shape[1] == len(names)
    header = ["ply", "format binary_little_endian 1.0", f"comment ayg sh_degree {cloud.sh_degree}"]
    header += [f"element vertex {n}"] + [f"property float {k}" for k in names] + ["end_header"]
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(("\n".join(header) + "\n").encode("ascii"))
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str]]  # (name, numpy type code, or "list")


def _parse_header(raw: bytes, where: str) -> tuple[str, list[_Element], int]:
    """-> (format, elements, offset of the data)."""
    first = raw[:16].split(b"\n", 1)[0].strip()
    if first != b"ply":
        got = "an empty file" if not raw else f"{raw[:16]!r}"
        raise PlyError(f"{where}: not a PLY file (expected the first line 'ply', got {got})")
    fmt: str | None = None
    elements: list[_Element] = []
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise PlyError(
                f"{where}: the PLY header has no 'end_header' line (truncated or corrupt file)"
            )
        line = raw[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        words = line.split()
        if not words or words[0] in ("ply", "comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            if len(words) < 2 or words[1] not in _PLY_FORMATS:
                raise PlyError(
                    f"{where}: unsupported PLY format line {line!r}; expected ascii or binary_*_endian"
                )
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyError(
                    f"{where}: bad PLY header line {line!r}; expected 'element NAME COUNT'"
                )
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise PlyError(f"{where}: PLY property {line!r} comes before any element")
            if len(words) == 5 and words[1] == "list":
                elements[-1].props.append((words[4], "list"))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].props.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise PlyError(
                    f"{where}: bad PLY property line {line!r}; expected 'property TYPE NAME'"
                )
        else:
            raise PlyError(f"{where}: unexpected PLY header line {line!r}")
        if pos > 1 << 20:
            raise PlyError(f"{where}: the PLY header is over 1 MiB without 'end_header'")
    if fmt is None:
        raise PlyError(f"{where}: the PLY header has no 'format' line")
    return fmt, elements, pos


def _read_vertices(raw: bytes, where: str) -> dict[str, np.ndarray]:
    """The vertex element's properties as float64 columns."""
    fmt, elements, offset = _parse_header(raw, where)
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise PlyError(
            f"{where}: the PLY file has no 'vertex' element (has {', '.join(names) or 'none'})"
        )
    vi = names.index("vertex")
    vertex = elements[vi]
    props = [p for p, _ in vertex.props]
    if len(set(props)) != len(props):
        raise PlyError(f"{where}: the PLY vertex element repeats a property name")
    if any(t == "list" for _, t in vertex.props):
        raise PlyError(
            f"{where}: the PLY vertex element has list properties; expected scalar properties only"
        )
    n = vertex.count
    if fmt == "ascii":
        lines = [
            ln for ln in raw[offset:].decode("ascii", errors="replace").splitlines() if ln.strip()
        ]
        skip = sum(e.count for e in elements[:vi])
        rows = lines[skip : skip + n]
        if len(rows) < n:
            raise PlyError(
                f"{where}: truncated ASCII PLY: the header declares {n} vertices, found {len(rows)} lines"
            )
        try:
            values = np.array(" ".join(rows).split(), dtype=np.float64)
        except ValueError:
            raise PlyError(f"{where}: the ASCII PLY vertex data has a non-numeric value") from None
        if values.size != n * len(props):
            raise PlyError(
                f"{where}: the ASCII PLY vertex data has {values.size} values, expected {n} x {len(props)} properties"
            )
        table = values.reshape(n, len(props))
        return {p: table[:, i] for i, p in enumerate(props)}
    endian = _PLY_FORMATS[fmt]
    for e in elements[:vi]:
        if any(t == "list" for _, t in e.props):
            raise PlyError(
                f"{where}: element '{e.name}' with list properties before 'vertex' is not supported"
            )
        offset += e.count * np.dtype([(p, endian + t) for p, t in e.props]).itemsize
    dtype = np.dtype([(p, endian + t) for p, t in vertex.props])
    need, have = n * dtype.itemsize, max(len(raw) - offset, 0)
    if have < need:
        raise PlyError(
            f"{where}: truncated PLY: the header declares {n} vertices ({need} bytes), only {have} bytes follow"
        )
    table = np.frombuffer(raw, dtype=dtype, count=n, offset=offset)
    return {p: table[p].astype(np.float64) for p in props}


def load_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> GaussianCloud:
    """Read an Inria 3DGS PLY (binary or ASCII, float or double). The SH degree follows from the
    number of ``f_rest`` fields. Files whose three scales are equal and whose rotations are the
    identity load as isotropic, others as anisotropic with ``quats``. Raises ``PlyError``."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PlyError(f"{where}: no such file; expected {_EXPECTED}") from None
    except IsADirectoryError:
        raise PlyError(f"{where}: is a directory, expected a .ply file") from None
    except OSError as e:
        raise PlyError(f"{where}: cannot read the file ({e.strerror or e})") from None
    cols = _read_vertices(raw, where)

    have = set(cols)
    missing = [k for k in _CANONICAL if k not in have]
    # Lenient: a single scale_0 is isotropic, missing rotations are the identity.
    partial_scale = ("scale_1" in have) != ("scale_2" in have)
    partial_rot = 0 < sum(f"rot_{i}" in have for i in range(4)) < 4
    core = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0"]
    if any(k not in have for k in core) or partial_scale or partial_rot:
        found = ", ".join(list(cols)[:12]) + (", ..." if len(cols) > 12 else "")
        raise PlyError(
            f"{where}: not a Gaussian-splat PLY: missing {', '.join(missing)} (found {found}); expected {_EXPECTED}"
        )
    rest_ids = sorted(int(m.group(1)) for k in cols if (m := re.fullmatch(r"f_rest_(\d+)", k)))
    n_rest = len(rest_ids)
    degree = _sh_degree_of(n_rest // 3) if n_rest % 3 == 0 else -1
    if degree < 0 or rest_ids != list(range(n_rest)):
        raise PlyError(
            f"{where}: has {n_rest} f_rest fields; expected f_rest_0..f_rest_(M-1) with M = 3·((d+1)²-1)"
            " = 0, 9, 24, 45, ... for SH degree d"
        )

    def stack(keys: list[str]) -> np.ndarray:
        if not keys:
            return np.zeros((len(cols["x"]), 0), np.float32)
        return np.stack([cols[k] for k in keys], axis=1).astype(np.float32)  # (N, len(keys))

    fields = {
        "means": stack(["x", "y", "z"]),
        "sh_dc": stack(["f_dc_0", "f_dc_1", "f_dc_2"]),
        "sh_rest": stack([f"f_rest_{i}" for i in range(n_rest)]),
        "opacity": stack(["opacity"]),
        "scales": stack(["scale_0", "scale_1", "scale_2"] if "scale_1" in have else ["scale_0"]),
    }
    if "rot_0" in have:
        fields["rotations"] = stack([f"rot_{i}" for i in range(4)])
    bad = [k for k, v in fields.items() if not np.isfinite(v).all()]
    if bad:
        raise PlyError(f"{where}: the PLY has NaN or infinite values in {', '.join(bad)}")
    n = fields["means"].shape[0]

    scales = fields["scales"]
    iso_scales = bool((scales == scales[:, :1]).all())
    quats = fields.get("rotations")
    if quats is not None:
        norm = np.linalg.norm(quats, axis=1)
        identity = bool((norm > 0).all() and (np.abs(quats[:, 1:]) <= 1e-6 * norm[:, None]).all())
    else:
        identity = True
    if iso_scales and identity:
        log_scales, quats = scales[:, :1], None
    else:
        log_scales = np.repeat(scales, 3, axis=1) if scales.shape[1] == 1 else scales
    sh_rest = fields["sh_rest"].reshape(n, 3, n_rest // 3).transpose(0, 2, 1)  # (N, K-1, 3)

    def tt(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return GaussianCloud(
        tt(fields["means"]),
        tt(log_scales),
        None if quats is None else tt(quats),
        tt(fields["opacity"][:, 0]),
        tt(fields["sh_dc"]),
        tt(sh_rest),
    )


__all__ = [
    "C0",
    "PARAM_NAMES",
    "DensifyStrategy",
    "GaussianCloud",
    "GaussianLR",
    "PlyError",
    "knn_mean_sq_dist",
    "load_ply",
    "make_optimizer",
    "ply_field_names",
    "quat_to_rotmat",
    "rgb_to_sh_dc",
    "save_ply",
    "sh_dc_to_rgb",
    "update_learning_rate",
]
