"""Metrics of a 4D asset: what ``ayg eval`` reports and the evaluation runners tabulate
(``ayg.evaluation``).

For an asset and its prompt:

* **appearance accuracy** — the protocol of F.1 (the paper's R-Precision set-up) with the toy
  appearance classifier in place of CLIP: 20 cameras at azimuths 0°, 18°, ..., elevation 15°,
  distance 3, fov 40; one prediction (colour, shape) per view; the asset is correct when the
  majority vote over the 20 views equals the prompt's (colour, shape). Done twice: at τ = 0
  (the 3D object) and at 20 random times paired with the 20 azimuths (the 4D protocol of F.1);
  ``appearance_accuracy`` is the latter, which equals the former for a static asset. The
  per-view accuracies (fraction of views whose prediction is right) are reported alongside.
* **motion accuracy** — the toy video classifier on 16-frame clips spanning 3/4 of a segment
  (fps 4, C.3) from fixed cameras of the same protocol at a few azimuths; majority vote over
  the clips against the prompt's motion (static when the prompt has none). The shipped
  classifier was trained on motions of either handedness (a sway starting left or right, a
  spin either way), which a prompt does not fix.
* **motion amount** — mean over times τ ∈ (0, duration] and Gaussians of ‖x_τ − x_0‖, divided
  by the object radius (largest distance of a Gaussian centre from the origin at τ = 0).
* **drift** — how far the cloud as a whole wanders (what the JSD regulariser of C.5 holds
  back): ``drift_mean`` = max_τ ‖ν_τ − ν_0‖ / radius and ``drift_variance`` =
  max_τ |tr Γ_τ / tr Γ_0 − 1|, with ν_τ, Γ_τ the mean and covariance of the Gaussian centres;
  ``drift`` is the larger of the two.
* **view consistency** — does the asset look like the *same* object from every side? The mean
  over the 20 τ = 0 views of the classifier's probability of the majority (colour, shape)
  class, p(colour)·p(shape). 1 when every view is confidently the same object, whatever the
  prompt; low for a Janus-like or view-dependent asset. ``view_agreement`` is the hard
  version: the fraction of views whose prediction equals the majority.

The classifiers are passed in (``Classifiers`` protocol), so these metrics are tested with fake
ones and work with whatever the toy training script produces. With a real-model prompt (not in
the toy vocabulary) or no classifiers, the classifier metrics are None; the geometric ones
(motion amount, drift) are always computed.

The asset is duck-typed: ``duration`` (global time length), ``positions(g (T,)) -> (T, N, 3)``
and ``render(cameras, times (C,), background=None) -> obj`` with ``.rgb (C, 3, H, W)``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ayg.cameras import look_at_cameras
from ayg.toyworld.vocab import COLOURS, MOTION_CLASSES, SHAPES, ToyPrompt, parse_prompt

# F.1: 20 azimuths, elevation 15, distance 3, fov 40.
EVAL_VIEWS = 20
EVAL_ELEVATION = 15.0
EVAL_DISTANCE = 3.0
EVAL_FOV = 40.0
MOTION_FPS = 4.0
MOTION_FRAMES = 16
MOTION_SPAN = 3.0 / MOTION_FPS  # 0.75 of a segment (C.3)
MOTION_AZIMUTHS = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)


@runtime_checkable
class Classifiers(Protocol):
    """The toy classifiers (trained by ``tools/toyworld/train.py`` of the repository)."""

    def appearance(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) in [0, 1] -> (colour logits (B, 4), shape logits (B, 4)),
        classes in the order of vocab.COLOURS and vocab.SHAPES."""
        ...

    def motion(self, frames: Tensor, fps: Tensor) -> Tensor:
        """frames (B, 16, 3, H, W) in [0, 1], fps (B,) -> logits (B, 4) over
        vocab.MOTION_CLASSES (static, spinning, swaying, nodding)."""
        ...


def _res(res: int | tuple[int, int]) -> tuple[int, int]:
    return (res, res) if isinstance(res, int) else (int(res[0]), int(res[1]))


def _toy_prompt(prompt: str | ToyPrompt | None) -> ToyPrompt | None:
    if prompt is None:
        return None
    try:
        return parse_prompt(prompt)
    except ValueError:
        return None  # a real-model prompt: no toy labels


def _majority(labels: list[Any]) -> Any:
    """Most frequent label; ties go to the label seen first."""
    counts = Counter(labels)
    best = max(counts.values())
    return next(x for x in labels if counts[x] == best)


def _render(asset, cameras, times: Tensor, background: Tensor) -> Tensor:
    """(C, 3, H, W) renders of the asset, camera c at global time times[c]."""
    dev = getattr(asset, "device", cameras.device)
    out = asset.render(cameras.to(dev), times.to(dev), background=background.to(dev))
    return out.rgb.clamp(0.0, 1.0)


def _classifier_device(classifiers, fallback: torch.device) -> torch.device:
    return torch.device(getattr(classifiers, "device", fallback))


# ---------------------------------------------------------------------------------------------
# Geometric metrics


def object_radius(positions0: Tensor) -> float:
    """Largest distance of a centre from the origin: positions0 (N, 3) -> float (> 0)."""
    return max(float(positions0.norm(dim=-1).max()), 1e-8)


def motion_amount(positions: Tensor, radius: float) -> float:
    """positions (T, N, 3) with positions[0] at τ = 0 -> mean over T−1 later times and N
    Gaussians of the displacement from τ = 0, divided by ``radius``."""
    if positions.shape[0] < 2:
        return 0.0
    disp = (positions[1:] - positions[:1]).norm(dim=-1)  # (T-1, N)
    return float(disp.mean()) / radius


def drift(positions: Tensor, radius: float) -> tuple[float, float]:
    """positions (T, N, 3) -> (max_τ ‖ν_τ − ν_0‖ / radius, max_τ |tr Γ_τ / tr Γ_0 − 1|), ν and Γ
    the mean and covariance of the centres at each time."""
    mean = positions.mean(dim=1)  # (T, 3)
    centred = positions - mean[:, None]
    trace = (centred * centred).sum(dim=(1, 2)) / max(positions.shape[1] - 1, 1)  # (T,) tr Γ_τ
    mean_drift = float((mean - mean[:1]).norm(dim=-1).max()) / radius
    var_drift = float((trace / trace[0].clamp(min=1e-12) - 1.0).abs().max())
    return mean_drift, var_drift


# ---------------------------------------------------------------------------------------------
# Classifier metrics


def eval_cameras(azimuths: Tensor, res: int | tuple[int, int]):
    """Cameras of the F.1 protocol at the given azimuths (C,)."""
    H, W = _res(res)
    return look_at_cameras(EVAL_ELEVATION, azimuths, EVAL_DISTANCE, EVAL_FOV, W, H)


@torch.no_grad()
def appearance_predictions(
    asset, classifiers: Classifiers, azimuths: Tensor, times: Tensor, res, background: Tensor
) -> tuple[Tensor, Tensor]:
    """Renders the views (azimuth[c], time[c]) and returns softmax probabilities
    (colour (C, 4), shape (C, 4))."""
    images = _render(asset, eval_cameras(azimuths, res), times, background)  # (C, 3, H, W)
    images = images.to(_classifier_device(classifiers, images.device))
    colour_logits, shape_logits = classifiers.appearance(images)
    return colour_logits.float().softmax(-1).cpu(), shape_logits.float().softmax(-1).cpu()


def appearance_scores(colour_p: Tensor, shape_p: Tensor, target: ToyPrompt | None) -> dict:
    """Per-view predictions (C, 4) + (C, 4) -> majority vote, per-view accuracy and view
    consistency (see the module docstring)."""
    colour = colour_p.argmax(-1).tolist()
    shape = shape_p.argmax(-1).tolist()
    pairs = list(zip(colour, shape, strict=True))
    maj = _majority(pairs)
    p_maj = colour_p[:, maj[0]] * shape_p[:, maj[1]]  # (C,)
    out = {
        "majority": f"{COLOURS[maj[0]]} {SHAPES[maj[1]]}",
        "views": [f"{COLOURS[c]} {SHAPES[s]}" for c, s in pairs],
        "view_consistency": float(p_maj.mean()),
        "view_agreement": sum(p == maj for p in pairs) / len(pairs),
        "accuracy": None,
        "view_accuracy": None,
    }
    if target is not None:
        want = (COLOURS.index(target.colour), SHAPES.index(target.shape))
        out["accuracy"] = float(maj == want)
        out["view_accuracy"] = sum(p == want for p in pairs) / len(pairs)
    return out


@torch.no_grad()
def appearance_over_time(
    asset,
    prompt: str | ToyPrompt,
    classifiers: Classifiers,
    times: int = 20,
    views: int = EVAL_VIEWS,
    res: int | tuple[int, int] | None = None,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> dict:
    """F.1's appearance protocol repeated at ``times`` evenly spaced global times over
    [0, duration]: at each time the ``views`` azimuths are rendered and classified, and the
    majority vote is right or not. ``accuracy``: the fraction of times whose majority is the
    prompt's colour and shape; ``view_accuracy``: the fraction of all times × views classified
    right; ``majorities``: the vote at each time. A static asset (duration 0, e.g. a stage-1
    cloud) looks the same at every time, so it is rendered once."""
    target = _toy_prompt(prompt)
    if target is None:
        raise ValueError(f"appearance needs a toy prompt, got {prompt!r}")
    duration = float(asset.duration)
    bg = torch.tensor(background, dtype=torch.float32)
    res = res or getattr(classifiers, "appearance_res", 32)
    azimuths = torch.arange(views, dtype=torch.float32) * (360.0 / views)
    grid = torch.linspace(0.0, duration, times) if duration > 0 else torch.zeros(1)
    per_time = [
        appearance_scores(
            *appearance_predictions(asset, classifiers, azimuths, t.expand(views), res, bg),
            target,
        )
        for t in grid
    ]
    per_time = per_time * (times // len(per_time))
    return {
        "accuracy": sum(s["accuracy"] for s in per_time) / times,
        "view_accuracy": sum(s["view_accuracy"] for s in per_time) / times,
        "majorities": [s["majority"] for s in per_time],
        "times": [float(t) for t in (grid if duration > 0 else grid.expand(times))],
    }


@torch.no_grad()
def motion_predictions(
    asset,
    classifiers: Classifiers,
    azimuths: Tensor,
    res,
    background: Tensor,
    start: float = 0.0,
) -> Tensor:
    """16-frame clips spanning MOTION_SPAN of global time from ``start``, one fixed camera per
    azimuth (A,) -> softmax probabilities (A, 4) over MOTION_CLASSES."""
    A, F = azimuths.shape[0], MOTION_FRAMES
    end = min(start + MOTION_SPAN, float(asset.duration))
    times = torch.linspace(start, end, F)  # (F,)
    cams = eval_cameras(azimuths.repeat_interleave(F), res)  # A·F, clip-major
    frames = _render(asset, cams, times.repeat(A), background)  # (A·F, 3, H, W)
    frames = frames.reshape(A, F, *frames.shape[1:])
    dev = _classifier_device(classifiers, frames.device)
    fps = torch.full((A,), MOTION_FPS, device=dev)
    return classifiers.motion(frames.to(dev), fps).float().softmax(-1).cpu()


# ---------------------------------------------------------------------------------------------
# The whole report


@torch.no_grad()
def evaluate_asset(
    asset,
    prompt: str | ToyPrompt | None = None,
    classifiers: Classifiers | None = None,
    generator: torch.Generator | None = None,
    appearance_res: int | tuple[int, int] | None = None,
    motion_res: int | tuple[int, int] | None = None,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    times: int = 17,
    views: int = EVAL_VIEWS,
    motion_azimuths: tuple[float, ...] = MOTION_AZIMUTHS,
) -> dict:
    """All the metrics of this module for one asset.

    prompt: the asset's prompt (default: ``asset.prompts[0]`` when the asset has one); metrics
    that need toy labels are None when it is not a toy prompt. classifiers: the toy classifiers
    or None. generator: draws the random times of the 4D appearance protocol. Resolutions
    default to the classifiers' ``appearance_res`` / ``motion_res`` attributes, else 32 and
    (24, 40) (the toy video teacher's size; ``ayg.teachers.toy.ToyClassifiers`` resizes). ``times``: how many evenly spaced global times over [0, duration] the geometric
    metrics use. Returns a flat dict of floats (or None) plus per-view details (lists).
    """
    if prompt is None:
        prompts = list(getattr(asset, "prompts", []) or [])
        prompt = prompts[0] if prompts else None
    target = _toy_prompt(prompt)
    duration = float(asset.duration)

    g = torch.linspace(0.0, duration, max(times, 2))  # (T,)
    positions = asset.positions(g).detach().float().cpu()  # (T, N, 3)
    radius = object_radius(positions[0])
    mean_drift, var_drift = drift(positions, radius)
    report: dict[str, Any] = {
        "prompt": None if prompt is None else str(prompt),
        "appearance_accuracy": None,
        "motion_accuracy": None,
        "motion_amount": motion_amount(positions, radius),
        "drift": max(mean_drift, var_drift),
        "drift_mean": mean_drift,
        "drift_variance": var_drift,
        "view_consistency": None,
        "radius": radius,
        "num_gaussians": int(positions.shape[1]),
    }
    if classifiers is None or (prompt is not None and target is None):
        return report

    bg = torch.tensor(background, dtype=torch.float32)
    a_res = appearance_res or getattr(classifiers, "appearance_res", 32)
    m_res = motion_res or getattr(classifiers, "motion_res", (24, 40))
    azimuths = torch.arange(views, dtype=torch.float32) * (360.0 / views)

    # 3D protocol (τ = 0) and 4D protocol (random τ paired with the azimuths), F.1.
    static = appearance_scores(
        *appearance_predictions(asset, classifiers, azimuths, torch.zeros(views), a_res, bg), target
    )
    rand_t = torch.rand(views, generator=generator) * duration
    dynamic = appearance_scores(
        *appearance_predictions(asset, classifiers, azimuths, rand_t, a_res, bg), target
    )
    report.update(
        appearance_accuracy=dynamic["accuracy"],
        appearance_view_accuracy=dynamic["view_accuracy"],
        appearance_accuracy_tau0=static["accuracy"],
        appearance_view_accuracy_tau0=static["view_accuracy"],
        appearance_majority=dynamic["majority"],
        view_consistency=static["view_consistency"],
        view_agreement=static["view_agreement"],
        appearance_views_tau0=static["views"],
        appearance_views=dynamic["views"],
        appearance_times=rand_t.tolist(),
    )

    probs = motion_predictions(
        asset, classifiers, torch.tensor(motion_azimuths, dtype=torch.float32), m_res, bg
    )
    clips = probs.argmax(-1).tolist()
    maj = _majority(clips)
    report.update(
        motion_majority=MOTION_CLASSES[maj],
        motion_clips=[MOTION_CLASSES[c] for c in clips],
    )
    if target is not None:
        report["motion_accuracy"] = float(maj == target.motion_class)
        report["motion_clip_accuracy"] = sum(c == target.motion_class for c in clips) / len(clips)
    return report


def evaluate_paths(
    paths,
    prompts: list[str] | None = None,
    seed: int = 0,
    classifiers: Classifiers | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> list[dict]:
    """``ayg eval``: ``evaluate_asset`` for each ``.ayg`` (or PLY) path. ``prompts``: one per
    path, or None to read each asset's own prompt. The shipped toy classifiers are loaded when
    some prompt is a toy prompt and ``classifiers`` is None (and their weights exist; else the
    classifier metrics are None). The random times of each asset come from ``seed``; ``kwargs`` go to ``evaluate_asset``."""
    from ayg.asset import load  # lazy: evaluate's maths does not need the file format

    paths = list(paths)
    if prompts is not None and len(prompts) not in (1, len(paths)):
        raise ValueError(f"give one --prompt per asset ({len(paths)}) or none, got {len(prompts)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    assets = [load(p, device=dev) for p in paths]
    if prompts is None:
        per_asset = [(a.prompts or [None])[0] for a in assets]
    else:
        per_asset = list(prompts) * (len(paths) if len(prompts) == 1 else 1)
    if classifiers is None and any(_toy_prompt(p) is not None for p in per_asset):
        from ayg.teachers.toy import load_toy_classifiers, toy_weights_available

        if toy_weights_available():
            classifiers = load_toy_classifiers(dev)
    return [
        evaluate_asset(a, p, classifiers, torch.Generator().manual_seed(seed), **kwargs)
        for a, p in zip(assets, per_asset, strict=True)
    ]


SUMMARY_KEYS = (
    "appearance_accuracy",
    "motion_accuracy",
    "motion_amount",
    "drift",
    "view_consistency",
)


def format_report(report: dict) -> str:
    """One line per headline metric, e.g. for ``ayg eval``."""
    lines = [f"prompt: {report.get('prompt')}"]
    for key in SUMMARY_KEYS + (
        "drift_mean",
        "drift_variance",
        "appearance_majority",
        "motion_majority",
    ):
        value = report.get(key)
        if key in report:
            text = (
                "n/a"
                if value is None
                else f"{value:.4f}"
                if isinstance(value, float)
                else str(value)
            )
            lines.append(f"  {key:<22} {text}")
    return "\n".join(lines)
