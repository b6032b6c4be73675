"""Densification and pruning of the cloud (C.1, after Kerbl et al. 2023).

It follows the gsplat "strategy" pattern: ``DensifyStrategy`` holds the hyperparameters, its
running statistics live in a plain dict, and every edit of the parameters edits the Adam state
with them, so training continues seamlessly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ayg.gaussians.cloud import GaussianCloud, quat_to_rotmat

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
