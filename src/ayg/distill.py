"""Composed score distillation (AYG sec. 3.2-3.4, appendix D).

A *teacher* wraps one frozen latent diffusion model (:class:`Teacher`). For renderings
``x`` encoded to latents ``z`` and diffused to ``z_t = √ᾱ_t z + √(1-ᾱ_t) ε``, one teacher term
pushes ``z`` along ``w(t)·direction`` where the direction is built from a few denoiser
evaluations ε̂(z_t, ·, t), all run in one batched call:

* classifier score (CSD, eq. 4 / 21):       δ_cls = ε̂(z, v) - ε̂(z, ∅),   scaled by ω
* SDS with classifier-free guidance (eq. 3 / 20): ε̂(z, ∅) + s(ε̂(z, v) - ε̂(z, ∅)) - ε, scaled by ω
* negative prompt (eq. 22 / 23):            ω_neg (ε̂(z, ∅) - ε̂(z, v_neg))
* view guidance (sec. 3.4, eq. 22):         ω_vg (ε̂(z, v_aug) - ε̂(z, v)),  v_aug = "v, front view"
* motion amplification (sec. 3.4, eq. 24):  δ -> ⟨δ⟩ + ω_ma (δ - ⟨δ⟩), ⟨·⟩ the mean over frames,
  applied to the video score *after* the negative term was added (eq. 23).

Where the term's weight ω sits follows the equations: eq. 22 (stage 1) weights only the
classifier score, ω_3D·δ_cls + ω_neg(…) and ω_im·δ_cls + ω_vg(…), so ω_neg and ω_vg are absolute;
eq. 24 (stage 2) writes ω_vid outside the negative term and the motion amplification,
ω_vid·MA(δ_cls + ω_neg(…)) (``TeacherTerm.weight_covers_guidance``).

Composition (sec. 3.2, D.1-D.2): the reverse KL to a product of teachers p_1^ω1 p_2^ω2 ...
has the sum of the teachers' terms as its gradient. Each :func:`distill_loss` returns a
surrogate whose gradient w.r.t. that teacher's latents is the term's ``w(t)·direction / B``,
B the number of *sequences* (stage-1 samples of 4 views, stage-2 clips), backpropagated through
that teacher's encoder; summing the surrogates (:func:`compose`) and calling ``backward()`` once
reaches the Gaussians (stage 1) or the deformation field (stage 2). An image teacher sees the F
frames of each sequence as F independent samples (D.2: a product over the frames), and every
frame gets the same ``w(t)·direction / B`` scale as a frame of the multiview or video teacher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from ayg.cameras import VIEW_SUFFIXES, view_direction

if TYPE_CHECKING:
    from ayg.cameras import Cameras


# ----------------------------------------------------------------------------------------------
# The teacher protocol (docs/ARCHITECTURE.md, "distill.py — the Teacher protocol")


@dataclass
class Conditioning:
    """Extra conditioning of a teacher call besides the text.

    cameras: multiview teachers, B·F cameras sample-major (b0v0, b0v1, ..., b1v0, ...).
    fps: video teachers, (B,) frames per second of each clip.
    """

    cameras: Cameras | None = None
    fps: Tensor | None = None

    def repeat(self, k: int) -> Conditioning:
        """The conditioning of k stacked CFG branches, branch-major (all of branch 0, then 1...)."""
        if k < 1:
            raise ValueError(f"repeat needs k >= 1, got {k}")
        cams = None if self.cameras is None else self.cameras.cat([self.cameras] * k)
        fps = None if self.fps is None else self.fps.repeat(k)
        return Conditioning(cameras=cams, fps=fps)


class Posterior(NamedTuple):
    """A VAE's posterior over the latents of frames, ``mean`` and ``std`` each (B, F, c, h, w)
    in the encoder's own units (before shift and scale): one encoder pass, which two teachers
    with the same encoder can share (``LatentTeacher.encode_posterior``, ``.latents``)."""

    mean: Tensor
    std: Tensor

    def frames(self, idx: Tensor) -> Posterior:
        """The frames ``idx`` (B, k) of each sequence: mean and std (B, k, c, h, w)."""
        index = idx.to(self.mean.device)[(...,) + (None,) * (self.mean.ndim - 2)]
        index = index.expand(-1, -1, *self.mean.shape[2:])
        return Posterior(self.mean.gather(1, index), self.std.gather(1, index))

    def as_images(self) -> Posterior:
        """(B, F, ...) -> (B·F, 1, ...): each frame its own sample, as an image teacher sees
        the frames of sequences."""
        return Posterior(*(x.reshape(-1, 1, *x.shape[2:]) for x in self))


@runtime_checkable
class Teacher(Protocol):
    """A frozen diffusion model seen through sequences ``(B, F, ...)`` (F = 1, 4 or 16; 4k + 1
    for Wan). A flow-matching teacher publishes the ᾱ of its path rescaled to variance preserving
    and rescales z_t itself in ``predict_noise`` (``ayg.teachers.wan``), so the maths below is
    the same for every teacher."""

    kind: str  # "image" | "multiview" | "video"
    frames: int  # F it expects
    device: torch.device

    def alphas_cumprod(self) -> Tensor:
        """(T,) float32 ᾱ_t on ``self.device``."""
        ...

    def encode(
        self,
        images: Tensor,
        grad_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """images (B, F, 3, H, W) in [0, 1] -> latents (B, F', c, h, w), differentiable (only
        ``grad_frames`` random frames of each sequence carry gradient when set). F' = F for
        frame-wise encoders, the latent frames of a causal video VAE (1 + (F−1)/4 for Wan)."""
        ...

    def embed(self, prompts: Sequence[str]) -> Tensor:
        """(P, L, D) text embeddings, cached per prompt ("" is the unconditional one)."""
        ...

    def predict_noise(
        self, noisy: Tensor, t: Tensor, emb: Tensor, cond: Conditioning | None = None
    ) -> Tensor:
        """noisy (B', F', c, h, w), t (B',) long, emb (B', L, D) -> ε̂ (B', F', c, h, w)."""
        ...

    def offload(self) -> None:
        """Move the weights to the CPU (idle teacher)."""
        ...

    def activate(self) -> None:
        """Move the weights back to the compute device."""
        ...


# ----------------------------------------------------------------------------------------------
# Schedules


@dataclass(frozen=True)
class LinearSchedule:
    """``start`` until ``step0``, linear to ``end`` at ``step1``, ``end`` afterwards."""

    start: float
    end: float
    step0: int = 0
    step1: int = 0

    def __post_init__(self) -> None:
        if self.step1 < self.step0:
            raise ValueError(f"LinearSchedule needs step1 >= step0, got {self.step0}..{self.step1}")

    def __call__(self, step: int) -> float:
        if step <= self.step0:
            return self.start
        if step >= self.step1:
            return self.end
        u = (step - self.step0) / (self.step1 - self.step0)
        return self.start + u * (self.end - self.start)


@dataclass(frozen=True)
class TRangeSchedule:
    """Diffusion time t ~ U[lo, hi] (fractions of the teacher's T), the range moving linearly
    from ``start`` to ``end`` between ``step0`` and ``step1`` (E.2):

    * image DM, stage 1: (0.02, 0.98) -> (0.02, 0.5) by step 6,000  (:meth:`image_stage1`)
    * MVDream:           (0.98, 0.98) -> (0.02, 0.5) by step 8,000  (:meth:`multiview_stage1`)
    * stage 2:           (0.02, 0.98) throughout                    (:meth:`constant`)
    """

    start: tuple[float, float] = (0.02, 0.98)
    end: tuple[float, float] | None = None  # None: constant
    step0: int = 0
    step1: int = 0

    def __post_init__(self) -> None:
        for name, r in (("start", self.start), ("end", self.end)):
            if r is None:
                continue
            if len(r) != 2 or not (0.0 <= r[0] <= r[1] <= 1.0):
                raise ValueError(
                    f"TRangeSchedule.{name} must be (lo, hi) with 0 <= lo <= hi <= 1, got {r}"
                )
        if self.step1 < self.step0:
            raise ValueError(f"TRangeSchedule needs step1 >= step0, got {self.step0}..{self.step1}")

    @classmethod
    def constant(cls, lo: float = 0.02, hi: float = 0.98) -> TRangeSchedule:
        return cls(start=(lo, hi))

    @classmethod
    def image_stage1(cls) -> TRangeSchedule:
        return cls(start=(0.02, 0.98), end=(0.02, 0.5), step0=0, step1=6000)

    @classmethod
    def multiview_stage1(cls) -> TRangeSchedule:
        return cls(start=(0.98, 0.98), end=(0.02, 0.5), step0=0, step1=8000)

    def range(self, step: int) -> tuple[float, float]:
        """(lo, hi) at ``step``."""
        end = self.start if self.end is None else self.end
        lo = LinearSchedule(self.start[0], end[0], self.step0, self.step1)(step)
        hi = LinearSchedule(self.start[1], end[1], self.step0, self.step1)(step)
        return lo, hi

    def sample(self, batch: int, step: int, generator: torch.Generator | None = None) -> Tensor:
        """(batch,) float32 fractions t ~ U[lo, hi] (on the CPU)."""
        lo, hi = self.range(step)
        return lo + (hi - lo) * torch.rand(batch, generator=generator)


def to_timesteps(t: Tensor, num_train_timesteps: int) -> Tensor:
    """Fractions t in [0, 1] -> integer timesteps round(t·T) clamped to [0, T-1] (long)."""
    return (t.double() * num_train_timesteps).round().long().clamp_(0, num_train_timesteps - 1)


def host_to(t: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """A tensor drawn on the host (the run's generators live on the CPU) onto ``device``
    without a host sync: a plain copy to a CUDA device waits for every queued kernel, a copy
    from pinned memory does not."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device=device, dtype=dtype, non_blocking=True)
    return t.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Weighting w(t)


def weight_sds(alphas_cumprod_t: Tensor) -> Tensor:
    """w(t) = 1 - ᾱ_t = σ_t² (DreamFusion's choice, used by threestudio and MVDream)."""
    return 1.0 - alphas_cumprod_t


def weight_uniform(alphas_cumprod_t: Tensor) -> Tensor:
    """w(t) = 1."""
    return torch.ones_like(alphas_cumprod_t)


WEIGHTINGS: dict[str, Callable[[Tensor], Tensor]] = {"sds": weight_sds, "uniform": weight_uniform}


# ----------------------------------------------------------------------------------------------
# Directions: one small function per idea. All ε tensors are (B, F, c, h, w).


def classifier_score(eps_cond: Tensor, eps_uncond: Tensor) -> Tensor:
    """δ_cls = ε̂(z, v) - ε̂(z, ∅): the implicit classifier's score (eq. 4 / 21)."""
    return eps_cond - eps_uncond


def sds_direction(eps_cond: Tensor, eps_uncond: Tensor, noise: Tensor, cfg_scale: float) -> Tensor:
    """ε̂(z, ∅) + s·(ε̂(z, v) - ε̂(z, ∅)) - ε: SDS with classifier-free guidance (eq. 3 / 20)."""
    return eps_uncond + cfg_scale * (eps_cond - eps_uncond) - noise


def negative_prompt_term(eps_uncond: Tensor, eps_neg: Tensor, weight: float) -> Tensor:
    """ω_neg·(ε̂(z, ∅) - ε̂(z, v_neg)): pushes away from the negative prompt (eq. 22 / 23)."""
    return weight * (eps_uncond - eps_neg)


def view_guidance_term(eps_aug: Tensor, eps_cond: Tensor, weight: float) -> Tensor:
    """ω_vg·(ε̂(z, v_aug) - ε̂(z, v)): amplifies the view-augmented prompt (sec. 3.4, eq. 22)."""
    return weight * (eps_aug - eps_cond)


def motion_amplification(delta: Tensor, scale: float) -> Tensor:
    """⟨δ⟩ + ω_ma·(δ - ⟨δ⟩) with ⟨·⟩ the mean over the frame axis (dim 1) (sec. 3.4, eq. 24).

    delta (B, F, ...). ω_ma = 1 is the identity; the frame mean is unchanged for every ω_ma.
    """
    mean = delta.mean(dim=1, keepdim=True)
    return mean + scale * (delta - mean)


def augment_prompt(prompt: str, view: str) -> str:
    """ "PROMPT, front view" (D.3). ``view`` is one of cameras.VIEW_SUFFIXES."""
    if view not in VIEW_SUFFIXES:
        raise ValueError(f"view must be one of {VIEW_SUFFIXES}, got {view!r}")
    return f"{prompt}, {view}"


def view_words(cameras: Cameras) -> list[str]:
    """One view word per camera by D.3's angle rules (cameras built from angles)."""
    if cameras.elevation is None or cameras.azimuth is None:
        raise ValueError("view_words needs cameras built from angles (elevation and azimuth set)")
    return [
        view_direction(float(e), float(a))
        for e, a in zip(cameras.elevation.tolist(), cameras.azimuth.tolist(), strict=True)
    ]


# ----------------------------------------------------------------------------------------------
# One teacher term


Mode = Literal["csd", "sds"]


@dataclass
class TeacherTerm:
    """How one teacher enters the composed objective (paper defaults in E.2, tables 3 and 4).

    weight: ω (ω_3D, ω_im or ω_vid).  t_range: diffusion-time schedule.
    mode: "csd" (eq. 4, the paper's choice) or "sds" (eq. 3 with CFG scale ``cfg_scale``).
    negative_prompt / negative_weight: eq. 22-23 (MVDream in stage 1, video in stage 2).
    view_guidance: ω_vg of sec. 3.4 (image teacher in stage 1; needs ``views``).
    motion_amplification: ω_ma of eq. 24 (video teacher; 1 = off).
    weighting: w(t), "sds" (1 - ᾱ_t) or "uniform".  grad_frames: see Teacher.encode.
    weight_covers_guidance: ω multiplies the whole direction, negative term and motion
    amplification included (eq. 24, the video term); otherwise only the base score (eq. 22).
    """

    weight: float = 1.0
    t_range: TRangeSchedule = field(default_factory=TRangeSchedule)
    mode: Mode = "csd"
    cfg_scale: float = 100.0
    negative_prompt: str = ""
    negative_weight: float = 0.0
    view_guidance: float = 0.0
    motion_amplification: float = 1.0
    weighting: str = "sds"
    grad_frames: int | None = None
    weight_covers_guidance: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("csd", "sds"):
            raise ValueError(f"TeacherTerm.mode must be 'csd' or 'sds', got {self.mode!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"TeacherTerm.weighting must be one of {sorted(WEIGHTINGS)}, got {self.weighting!r}"
            )
        if self.negative_weight != 0.0 and not self.negative_prompt:
            raise ValueError("TeacherTerm.negative_weight is set but negative_prompt is empty")
        if self.grad_frames is not None and self.grad_frames < 1:
            raise ValueError(
                f"TeacherTerm.grad_frames must be >= 1 or None, got {self.grad_frames}"
            )
        for name in (
            "weight",
            "cfg_scale",
            "negative_weight",
            "view_guidance",
            "motion_amplification",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"TeacherTerm.{name} must be finite")

    @property
    def uses_negative(self) -> bool:
        return self.negative_weight != 0.0

    @property
    def uses_views(self) -> bool:
        return self.view_guidance != 0.0


@dataclass
class Branches:
    """The ε̂ of each branch of one batched teacher call, each (B, F, c, h, w)."""

    cond: Tensor
    uncond: Tensor
    negative: Tensor | None = None
    view: Tensor | None = None


def _csd_base(term: TeacherTerm, eps: Branches, noise: Tensor) -> Tensor:
    return classifier_score(eps.cond, eps.uncond)


def _sds_base(term: TeacherTerm, eps: Branches, noise: Tensor) -> Tensor:
    return sds_direction(eps.cond, eps.uncond, noise, term.cfg_scale)


BASE_DIRECTIONS: dict[str, Callable[[TeacherTerm, Branches, Tensor], Tensor]] = {
    "csd": _csd_base,
    "sds": _sds_base,
}


def guidance_direction(term: TeacherTerm, eps: Branches, noise: Tensor) -> Tensor:
    """The full direction of one term (without w(t)), (B, F, c, h, w), MA = motion amplification:

    * eq. 22:  MA( ω·base + ω_neg·(ε̂_∅ - ε̂_neg) + ω_vg·(ε̂_aug - ε̂_v) )
    * eq. 24 (``weight_covers_guidance``):  ω·MA( base + ω_neg·(ε̂_∅ - ε̂_neg) + ω_vg·(…) )
    """
    base = BASE_DIRECTIONS[term.mode](term, eps, noise)
    inner = 1.0 if term.weight_covers_guidance else term.weight
    direction = inner * base
    if eps.negative is not None:
        direction = direction + negative_prompt_term(eps.uncond, eps.negative, term.negative_weight)
    if eps.view is not None:
        direction = direction + view_guidance_term(eps.view, eps.cond, term.view_guidance)
    if term.motion_amplification != 1.0:
        direction = motion_amplification(direction, term.motion_amplification)
    if term.weight_covers_guidance:
        direction = term.weight * direction
    return direction


def surrogate_loss(latents: Tensor, grad: Tensor, sequences: int | None = None) -> Tensor:
    """0.5·‖z - sg(z - g)‖² summed, divided by B: its gradient w.r.t. ``latents`` is ``grad / B``
    (the threestudio convention), B = ``sequences`` (default ``latents.shape[0]``)."""
    target = (latents - grad).detach()
    b = latents.shape[0] if sequences is None else sequences
    return 0.5 * (latents - target).square().sum() / b


# ----------------------------------------------------------------------------------------------
# The distillation loss of one teacher


def _branch_prompts(
    term: TeacherTerm, prompt: str, batch: int, views: Sequence[str] | None
) -> list[str]:
    """Prompts of all branches, branch-major: cond, uncond, [negative], [view-augmented]."""
    prompts = [prompt] * batch + [""] * batch
    if term.uses_negative:
        prompts += [term.negative_prompt] * batch
    if term.uses_views:
        prompts += [augment_prompt(prompt, v) for v in views]  # type: ignore[union-attr]
    return prompts


def _embed_batch(teacher: Teacher, prompts: list[str]) -> Tensor:
    """(len(prompts), L, D): each distinct prompt embedded once, then gathered."""
    unique = list(dict.fromkeys(prompts))
    emb = teacher.embed(unique)  # (P, L, D)
    index = host_to(torch.tensor([unique.index(p) for p in prompts]), emb.device)
    return emb.index_select(0, index)


def term_prompts(term: TeacherTerm, prompt: str) -> list[str]:
    """Every prompt a term can ask its teacher for: the prompt, "", the negative prompt and,
    with view guidance, the prompt augmented by each view word (D.3)."""
    views = list(VIEW_SUFFIXES) if term.uses_views else None
    return list(dict.fromkeys(_branch_prompts(term, prompt, len(views or [0]), views)))


def prime_prompts(teacher: Teacher, term: TeacherTerm, prompt: str) -> None:
    """Embed every prompt of :func:`term_prompts` now and, where the teacher can, take its text
    encoder off the GPU: a stage then runs with the embeddings cached."""
    teacher.embed(term_prompts(term, prompt))
    release = getattr(teacher, "release_text_encoder", None)
    if release is not None:
        release()


def check_sequences(images: Tensor) -> None:
    """``images`` must be sequences of RGB frames, (B, F, 3, H, W)."""
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"images must have shape (B, F, 3, H, W), got {tuple(images.shape)}")


def _check_inputs(teacher: Teacher, term: TeacherTerm, images: Tensor, views, batch: int) -> None:
    check_sequences(images)
    if teacher.frames != 1 and images.shape[1] != teacher.frames:
        raise ValueError(
            f"{teacher.kind} teacher expects F={teacher.frames} frames, got {images.shape[1]}"
        )
    if term.uses_views:
        if views is None or len(views) != batch:
            n = "None" if views is None else len(views)
            raise ValueError(f"view guidance needs one view word per sample ({batch}), got {n}")
        for v in views:
            if v not in VIEW_SUFFIXES:
                raise ValueError(f"view words must be in {VIEW_SUFFIXES}, got {v!r}")


def distill_loss(
    teacher: Teacher,
    term: TeacherTerm,
    images: Tensor,
    prompt: str,
    step: int,
    generator: torch.Generator | None = None,
    cond: Conditioning | None = None,
    views: Sequence[str] | None = None,
    sync: bool = True,
    posterior: Posterior | None = None,
) -> tuple[Tensor, dict[str, float | Tensor]]:
    """The surrogate loss of one teacher term and its statistics.

    images: (B, F, 3, H, W) in [0, 1], attached to the graph of the Gaussians / the field.
    An image teacher (``teacher.frames == 1``) given F > 1 frames sees the B·F frames as
    independent samples (D.2's product over the M frames); ``views`` then has B·F words, else B.
    ``cond`` is for the teacher's own batch (B·F cameras sample-major; fps (B,)).

    The returned loss has gradient ``w(t)·direction / B`` w.r.t. the latents of every frame,
    B = images.shape[0] the number of sequences (also for an image teacher, whose B·F samples
    are frames of B sequences), with t drawn per sample (shared by its frames); see
    :func:`guidance_direction`. Pass the frames as (B, F, ...) — flattening them to (B·F, 1, ...)
    first would divide each frame's gradient by F once more.
    The statistics are floats, or with ``sync=False`` detached 0-dim tensors: reading them
    waits for the GPU, which a training step should do only when it logs.
    ``posterior``: the frames' posterior (B, F, c, h, w), already computed by a teacher with
    the same encoder (``teacher.same_encoder``); the latents are then drawn from it with the
    draws ``teacher.encode`` would make, and the encoder does not run again. Every frame keeps
    its gradient then (``term.grad_frames`` unset).
    """
    sequences = images.shape[0] if images.ndim == 5 else 0
    if teacher.frames == 1 and images.ndim == 5 and images.shape[1] > 1:
        images = images.reshape(-1, 1, *images.shape[2:])  # (B·F, 1, 3, H, W)
        if posterior is not None:
            posterior = posterior.as_images()
    batch = images.shape[0]
    _check_inputs(teacher, term, images, views, batch)

    if posterior is None:
        latents = teacher.encode(images, grad_frames=term.grad_frames, generator=generator)
    else:
        if term.grad_frames is not None:
            raise ValueError("a shared posterior keeps every frame's gradient: unset grad_frames")
        if posterior.mean.shape[:2] != images.shape[:2]:
            raise ValueError(
                f"the posterior has {tuple(posterior.mean.shape[:2])} sequences × frames, the "
                f"images {tuple(images.shape[:2])}"
            )
        latents = teacher.latents(posterior, generator)  # (B, F, c, h, w)
    latents = latents.float()
    device = latents.device

    alphas = teacher.alphas_cumprod().to(device=device, dtype=torch.float32)  # (T,)
    t_frac = term.t_range.sample(batch, step, generator)  # (B,)
    timesteps = host_to(to_timesteps(t_frac, alphas.shape[0]), device)  # (B,)
    noise = host_to(torch.randn(latents.shape, generator=generator), device)  # (B, F, c, h, w)
    view_shape = (batch,) + (1,) * (latents.ndim - 1)
    a_t = alphas[timesteps].view(view_shape)

    with torch.no_grad():
        noisy = a_t.sqrt() * latents.detach() + (1.0 - a_t).sqrt() * noise  # (B, F, c, h, w)
        prompts = _branch_prompts(term, prompt, batch, views)
        k = len(prompts) // batch
        emb = _embed_batch(teacher, prompts)  # (k·B, L, D)
        cond_k = None if cond is None else cond.repeat(k)
        eps = teacher.predict_noise(
            noisy.repeat(k, *([1] * (noisy.ndim - 1))), timesteps.repeat(k), emb, cond_k
        )
        chunks = list(eps.float().split(batch))  # k × (B, F, c, h, w)
        branches = Branches(
            cond=chunks[0],
            uncond=chunks[1],
            negative=chunks[2] if term.uses_negative else None,
            view=chunks[-1] if term.uses_views else None,
        )
        direction = guidance_direction(term, branches, noise)  # (B, F, c, h, w)
        w = WEIGHTINGS[term.weighting](a_t)  # (B, 1, 1, 1, 1)
        grad = torch.nan_to_num(w * direction)

    loss = surrogate_loss(latents, grad, sequences)
    stats = {
        "loss": loss.detach(),
        "t_mean": t_frac.mean(),
        "w_mean": w.mean(),
        "grad_norm": grad.flatten(1).norm(dim=1).mean(),
        "cls_norm": classifier_score(branches.cond, branches.uncond).flatten(1).norm(dim=1).mean(),
    }
    return loss, (as_floats(stats) if sync else stats)


def as_floats(stats: Mapping[str, float | Tensor]) -> dict[str, float]:
    """Statistics with every 0-dim tensor read as a float, in one host sync per device."""
    out = dict(stats)
    by_device: dict[torch.device, list[str]] = {}
    for key, value in stats.items():
        if isinstance(value, Tensor):
            by_device.setdefault(value.device, []).append(key)
    for keys in by_device.values():
        values = torch.stack([stats[k].detach().double().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, values, strict=True))
    return out


def compose(
    parts: Mapping[str, tuple[Tensor, Mapping[str, float | Tensor]]],
    sync: bool = True,
) -> tuple[Tensor, dict[str, float | Tensor]]:
    """Sum of teacher terms (the product of teacher distributions, D.1-D.2) and their statistics
    as ``"name/key"``. One ``backward()`` of the sum reaches the scene through every encoder.
    ``sync=False`` leaves the total's statistic a tensor (see :func:`distill_loss`)."""
    if not parts:
        raise ValueError("compose needs at least one teacher term")
    total: Tensor | None = None
    stats: dict[str, float] = {}
    for name, (loss, s) in parts.items():
        total = loss if total is None else total + loss
        stats.update({f"{name}/{key}": value for key, value in s.items()})
    assert total is not None
    stats["loss"] = float(total.detach()) if sync else total.detach()
    return total, stats
