"""Datasets of the toy world: rendered batches for the toy teachers (image, 4-view multiview,
16-frame video) and for the evaluation classifiers (appearance, motion).

The cameras and the frame times follow the distributions the teachers will meet during
distillation (``ayg.cameras``): stage-1 cameras (C.6, after MVDream: fov U(15, 60), elevation
U(10, 45), distance s / tan(fov/2)) for the image and multiview sets; the fps sampler of C.3
and the dynamic stage-2 cameras of C.6, closer and orbiting less (``TOY_STAGE2_CAMERAS``), for
the video set. Backgrounds are black or white at random, as in stage 1. Resolutions are
arguments (``res`` = side or (H, W)).

Every sampler takes a ``torch.Generator`` and is deterministic given its state; it draws all its
randomness on the CPU and renders on ``device``.

Held out: with ``exclude_held_out`` the video set never shows a pair of HELD_OUT
moving; such pairs may appear static. The classifier sets use all pairs (they are evaluation
tools, not teachers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ayg.cameras import (
    Cameras,
    FpsSampler,
    Stage1CameraSampler,
    Stage2CameraSampler,
    look_at_cameras,
    view_direction,
)
from ayg.config import TOY_FPS_FRAME_STEP, TOY_STAGE2_AZIMUTH_OFFSET, TOY_STAGE2_DISTANCE
from ayg.toyworld.vocab import (
    COLOURS,
    HELD_OUT,
    MOTION_CLASSES,
    MOTION_NULL,
    MOTION_STATIC,
    MOTIONS,
    NULL_TOKENS,
    SHAPES,
    ToyPrompt,
)
from tools.toyworld.scene import render

Res = int | tuple[int, int]

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT)

# Camera of the evaluation protocol (F.1): elevation 15, distance 3, fov 40, any azimuth.
EVAL_ELEVATION = 15.0
EVAL_DISTANCE = 3.0
EVAL_FOV = 40.0

# The stage-2 cameras of the toy preset (C.6 with closer distances and smaller azimuth offsets,
# see config.TOY_STAGE2_DISTANCE): what the video teacher and the classifiers see of stage 2.
TOY_FPS = FpsSampler(frame_step=TOY_FPS_FRAME_STEP)  # the training clips' pace (C.3)
TOY_STAGE2_CAMERAS = Stage2CameraSampler(
    distance_range=TOY_STAGE2_DISTANCE, azimuth_offset_range=TOY_STAGE2_AZIMUTH_OFFSET
)


@dataclass
class ToyBatch:
    """A batch of B rendered sequences of F frames (F = 1 image, 4 multiview, 16 video)."""

    images: Tensor  # (B, F, 3, H, W) in [0, 1]
    alpha: Tensor  # (B, F, 1, H, W)
    tokens: Tensor  # (B, 3) long: colour, shape, motion ids (see vocab)
    cameras: Cameras  # B·F cameras, sample-major
    tau: Tensor  # (B, F) time of each frame
    background: Tensor  # (B, 3)
    prompts: list[ToyPrompt]  # (B,) what was rendered (motion None = static)
    views: list[str]  # (B·F,) view words of D.3 ("front view", ...)
    fps: Tensor | None = None  # (B,) for clips

    @property
    def colour_labels(self) -> Tensor:
        """(B,) class index into COLOURS."""
        return torch.tensor([COLOURS.index(p.colour) for p in self.prompts], dtype=torch.long)

    @property
    def shape_labels(self) -> Tensor:
        """(B,) class index into SHAPES."""
        return torch.tensor([SHAPES.index(p.shape) for p in self.prompts], dtype=torch.long)

    @property
    def motion_labels(self) -> Tensor:
        """(B,) class index into MOTION_CLASSES (0 = static)."""
        return torch.tensor([p.motion_class for p in self.prompts], dtype=torch.long)

    def texts(self) -> list[str]:
        """(B,) prompt texts with the view word of each sequence's first frame appended, e.g.
        "a red ball spinning, front view" (the toy text encoder ignores view words)."""
        F = self.images.shape[1]
        return [f"{p.text}, {self.views[i * F]}" for i, p in enumerate(self.prompts)]


def _hw(res: Res) -> tuple[int, int]:
    h, w = (res, res) if isinstance(res, int) else res
    if h <= 0 or w <= 0:
        raise ValueError(f"resolution must be positive, got {res}")
    return int(h), int(w)


def _randint(n: int, size: int, generator: torch.Generator | None) -> Tensor:
    return torch.randint(0, n, (size,), generator=generator)


def _backgrounds(batch: int, generator: torch.Generator | None) -> Tensor:
    """(B, 3) black or white, each with probability 1/2."""
    white = torch.rand(batch, generator=generator) < 0.5
    return white.float()[:, None].expand(batch, 3).clone()


def _pairs(
    batch: int, pool: tuple[tuple[str, str], ...], generator: torch.Generator | None
) -> list[tuple[str, str]]:
    return [pool[int(i)] for i in _randint(len(pool), batch, generator)]


def _motion_tokens(
    batch: int, static_token_prob: float, generator: torch.Generator | None
) -> Tensor:
    """(B,) static with probability static_token_prob, else null (for static image sets)."""
    static = torch.rand(batch, generator=generator) < static_token_prob
    return torch.where(static, MOTION_STATIC, MOTION_NULL).long()


def _views(cameras: Cameras) -> list[str]:
    return [
        view_direction(float(e), float(a))
        for e, a in zip(cameras.elevation, cameras.azimuth, strict=True)
    ]


def render_sequences(
    prompts: list[ToyPrompt],
    cameras: Cameras,
    tau: Tensor,
    background: Tensor,
    supersample: int = 1,
) -> tuple[Tensor, Tensor]:
    """Render B sequences of F frames: prompts (B,), cameras B·F sample-major, tau (B, F),
    background (B, 3) -> images (B, F, 3, H, W), alpha (B, F, 1, H, W)."""
    B, F = tau.shape
    if len(prompts) != B or len(cameras) != B * F:
        raise ValueError(
            f"need {B} prompts and {B * F} cameras, got {len(prompts)} and {len(cameras)}"
        )
    dev = cameras.device
    per_cam = [p for p in prompts for _ in range(F)]
    out = render(
        per_cam,
        cameras,
        tau.reshape(-1).to(dev),
        background.to(dev).repeat_interleave(F, dim=0),
        supersample=supersample,
    )
    H, W = cameras.height, cameras.width
    return out.rgb.reshape(B, F, 3, H, W), out.alpha.reshape(B, F, 1, H, W)


def _rendered_batch(
    prompts: list[ToyPrompt],
    tokens: Tensor,
    cams: Cameras,
    tau: Tensor,
    bg: Tensor,
    supersample: int,
    device: torch.device | str,
    fps: Tensor | None = None,
) -> ToyBatch:
    """Render the sequences and pack them, every tensor on ``device``."""
    images, alpha = render_sequences(prompts, cams, tau, bg, supersample)
    return ToyBatch(
        images,
        alpha,
        tokens.to(device),
        cams,
        tau.to(device),
        bg.to(device),
        prompts,
        _views(cams),
        None if fps is None else fps.to(device),
    )


def _static_batch(
    batch: int,
    res: Res,
    views: int,
    generator: torch.Generator | None,
    static_token_prob: float,
    supersample: int,
    device: torch.device | str,
    sampler: Stage1CameraSampler | None,
    moving_prob: float = 0.0,
) -> ToyBatch:
    H, W = _hw(res)
    pairs = _pairs(batch, ALL_PAIRS, generator)
    prompts = [ToyPrompt(c, s) for c, s in pairs]
    sampler = replace(sampler or Stage1CameraSampler(), views=views, width=W, height=H)
    cams = sampler.sample(batch, generator, device)
    bg = _backgrounds(batch, generator)
    tokens = torch.stack([p.tokens() for p in prompts])
    tokens[:, 2] = _motion_tokens(batch, static_token_prob, generator)
    tau = torch.zeros(batch, views)
    if moving_prob > 0:  # frames of moving objects (never a held-out pair), motion token set
        moving = (torch.rand(batch, generator=generator) < moving_prob).tolist()
        motion = _randint(len(MOTIONS), batch, generator).tolist()
        pair = _randint(len(TRAIN_PAIRS), batch, generator).tolist()
        times = torch.rand(batch, generator=generator)
        for i in (i for i in range(batch) if moving[i]):
            prompts[i] = ToyPrompt(*TRAIN_PAIRS[pair[i]], MOTIONS[motion[i]])
            tokens[i] = prompts[i].tokens()
            tau[i] = times[i]
    return _rendered_batch(prompts, tokens, cams, tau, bg, supersample, device)


def sample_image_batch(
    batch: int,
    res: Res,
    generator: torch.Generator | None = None,
    static_token_prob: float = 0.5,
    supersample: int = 1,
    device: torch.device | str = "cpu",
    cameras: Stage1CameraSampler | None = None,
    moving_prob: float = 0.0,
) -> ToyBatch:
    """Static objects, one stage-1 camera each: images (B, 1, 3, H, W); any (colour, shape);
    motion token static with probability ``static_token_prob``, else null. ``cameras``
    overrides the stage-1 distribution (its views and size are set here).

    ``moving_prob`` > 0 mixes in single frames of moving objects (pairs of TRAIN_PAIRS only) at
    a random τ with their motion token, so that an image teacher also knows what "a red cube
    swaying" looks like in one frame (the image DM of stage 2 sees the motion prompt)."""
    return _static_batch(
        batch, res, 1, generator, static_token_prob, supersample, device, cameras, moving_prob
    )


def sample_multiview_batch(
    batch: int,
    res: Res,
    generator: torch.Generator | None = None,
    static_token_prob: float = 0.5,
    supersample: int = 1,
    device: torch.device | str = "cpu",
    cameras: Stage1CameraSampler | None = None,
) -> ToyBatch:
    """Static objects seen by 4 stage-1 cameras 90° apart in azimuth (shared fov, elevation,
    distance, background): images (B, 4, 3, H, W), cameras B·4 sample-major."""
    return _static_batch(batch, res, 4, generator, static_token_prob, supersample, device, cameras)


def _sample_motions(
    batch: int, static_prob: float, generator: torch.Generator | None
) -> list[str | None]:
    static = torch.rand(batch, generator=generator) < static_prob
    which = _randint(len(MOTIONS), batch, generator)
    return [None if bool(s) else MOTIONS[int(m)] for s, m in zip(static, which, strict=True)]


def sample_video_batch(
    batch: int,
    res: Res,
    generator: torch.Generator | None = None,
    exclude_held_out: bool = True,
    static_prob: float = 0.25,
    frames: int = 16,
    supersample: int = 1,
    device: torch.device | str = "cpu",
    cameras: Stage2CameraSampler | None = None,
    fps_sampler: FpsSampler | None = None,
) -> ToyBatch:
    """Clips for the video teacher: images (B, 16, 3, H, W), fps (B,), tokens (B, 3).

    Motion: static with probability ``static_prob`` (token "static"), else uniform among MOTIONS.
    Moving clips draw their (colour, shape) from TRAIN_PAIRS when ``exclude_held_out``; static
    clips from all pairs. fps and frame times from FpsSampler (C.3), dynamic cameras from
    TOY_STAGE2_CAMERAS (C.6, closer and orbiting less); ``cameras`` / ``fps_sampler`` override
    those distributions.
    ``res`` is (H, W) (stage 2 renders 160×256 in the paper).
    """
    H, W = _hw(res)
    motions = _sample_motions(batch, static_prob, generator)
    moving_pool = TRAIN_PAIRS if exclude_held_out else ALL_PAIRS
    idx_all = _randint(len(ALL_PAIRS), batch, generator)
    idx_moving = _randint(len(moving_pool), batch, generator)
    prompts = [
        ToyPrompt(*(ALL_PAIRS[int(a)] if m is None else moving_pool[int(b)]), m)
        for m, a, b in zip(motions, idx_all, idx_moving, strict=True)
    ]
    fps, tau = replace(fps_sampler or TOY_FPS, frames=frames).sample(batch, generator)
    sampler = replace(cameras or TOY_STAGE2_CAMERAS, frames=frames, width=W, height=H)
    cams = sampler.sample(batch, generator, device)
    bg = _backgrounds(batch, generator)
    tokens = torch.stack([p.tokens() for p in prompts])
    return _rendered_batch(prompts, tokens, cams, tau, bg, supersample, device, fps)


def eval_cameras(
    azimuth: Tensor | float,
    res: Res,
    device: torch.device | str = "cpu",
    elevation: float = EVAL_ELEVATION,
) -> Cameras:
    """Cameras of the evaluation protocol (F.1): elevation 15, distance 3, fov 40."""
    H, W = _hw(res)
    return look_at_cameras(elevation, azimuth, EVAL_DISTANCE, EVAL_FOV, W, H, device)


def sample_appearance_batch(
    batch: int,
    res: Res,
    generator: torch.Generator | None = None,
    moving_prob: float = 0.5,
    supersample: int = 1,
    device: torch.device | str = "cpu",
) -> ToyBatch:
    """Single views for the appearance classifier: images (B, 1, 3, H, W), labels
    ``colour_labels`` / ``shape_labels``. Any pair; with probability ``moving_prob`` the object
    moves and is seen at a random τ ∈ [0, 1]. Cameras: a third each from the stage-1
    distribution, the stage-2 distribution (one frame), and the evaluation protocol (F.1) at a
    random azimuth."""
    H, W = _hw(res)
    pairs = _pairs(batch, ALL_PAIRS, generator)
    moving = torch.rand(batch, generator=generator) < moving_prob
    which = _randint(len(MOTIONS), batch, generator)
    prompts = [
        ToyPrompt(c, s, MOTIONS[int(m)] if bool(mv) else None)
        for (c, s), mv, m in zip(pairs, moving, which, strict=True)
    ]
    tau = torch.rand(batch, 1, generator=generator)
    kind = _randint(3, batch, generator)
    stage1 = Stage1CameraSampler(views=1, width=W, height=H).sample(batch, generator, device)
    stage2 = replace(TOY_STAGE2_CAMERAS, frames=1, width=W, height=H)
    stage2 = stage2.sample(batch, generator, device)
    evalc = eval_cameras(torch.rand(batch, generator=generator) * 360.0, (H, W), device)
    cams = Cameras.cat([(stage1, stage2, evalc)[int(k)][i] for i, k in enumerate(kind)])
    bg = _backgrounds(batch, generator)
    tokens = torch.stack([p.tokens() for p in prompts])
    return _rendered_batch(prompts, tokens, cams, tau, bg, supersample, device)


def sample_motion_batch(
    batch: int,
    res: Res,
    generator: torch.Generator | None = None,
    frames: int = 16,
    eval_camera_prob: float = 0.5,
    supersample: int = 1,
    device: torch.device | str = "cpu",
    mirror_prob: float = 0.5,
) -> ToyBatch:
    """Clips for the motion classifier: images (B, 16, 3, H, W), fps (B,), label
    ``motion_labels`` uniform over MOTION_CLASSES (static, spinning, swaying, nodding); ALL
    pairs, held-out ones included. fps and times from FpsSampler; cameras: with probability
    ``eval_camera_prob`` a fixed camera of the evaluation protocol at a random azimuth (what
    ``ayg.evaluate`` shows the classifier), else dynamic stage-2 cameras.

    With probability ``mirror_prob`` a clip plays its motion mirrored, τ → −τ (``tau`` holds
    the negated times): the sway or nod starts to the other side, the spin turns the other
    way. A prompt says "swaying", not which side first, so the classifier that judges assets
    must not tell the two apart; trained on one handedness only, it read a correct sway that
    began leftwards as a nod."""
    H, W = _hw(res)
    motion_idx = _randint(len(MOTION_CLASSES), batch, generator)
    pairs = _pairs(batch, ALL_PAIRS, generator)
    prompts = [
        ToyPrompt(c, s, None if int(m) == MOTION_STATIC else MOTION_CLASSES[int(m)])
        for (c, s), m in zip(pairs, motion_idx, strict=True)
    ]
    fps, tau = replace(TOY_FPS, frames=frames).sample(batch, generator)
    mirrored = torch.rand(batch, generator=generator) < mirror_prob
    tau = torch.where(mirrored[:, None], -tau, tau)
    stage2 = replace(TOY_STAGE2_CAMERAS, frames=frames, width=W, height=H)
    dynamic = stage2.sample(batch, generator, device)
    use_eval = torch.rand(batch, generator=generator) < eval_camera_prob
    azim = (torch.rand(batch, generator=generator) * 360.0).repeat_interleave(frames)
    fixed = eval_cameras(azim, (H, W), device)
    sel = use_eval.repeat_interleave(frames)
    cams = Cameras.cat([(fixed if bool(s) else dynamic)[i] for i, s in enumerate(sel)])
    bg = _backgrounds(batch, generator)
    tokens = torch.stack([p.tokens() for p in prompts])
    return _rendered_batch(prompts, tokens, cams, tau, bg, supersample, device, fps)


def drop_tokens(
    tokens: Tensor, p: float, generator: torch.Generator | None = None, per_slot: bool = False
) -> Tensor:
    """Caption dropout for classifier-free guidance training: tokens (B, 3) -> (B, 3) with the
    whole triple (``per_slot=False``) or each slot independently (``per_slot=True``) replaced
    by its null id with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    B = tokens.shape[0]
    shape = (B, 3) if per_slot else (B, 1)
    drop = (torch.rand(shape, generator=generator) < p).to(tokens.device)
    null = torch.tensor(NULL_TOKENS, dtype=tokens.dtype, device=tokens.device)
    return torch.where(drop, null.expand(B, 3), tokens)
