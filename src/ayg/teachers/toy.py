"""The offline ("toy") teachers and evaluation classifiers.

Three small pixel-space diffusion models trained by ``python -m tools.toyworld.train`` on the
toy world's analytic renders, shipped in ``ayg/toyworld/weights/*.safetensors``, and seen
through the same :class:`ayg.distill.Teacher` protocol as the real latent teachers (sec. 3.2):

* ``ToyImageTeacher``      F = 1, 32×32 (the role of Stable Diffusion);
* ``ToyMultiviewTeacher``  F = 4, 32×32, camera of each view as input (the role of MVDream);
* ``ToyVideoTeacher``      F = 16, 24×40, fps as input (the role of the fps-conditioned video
  DM of E.1).

Pixel space: ``encode`` is a bilinear resize (no antialiasing, differentiable) to the teacher's
resolution and [0, 1] → [-1, 1]; the "latents" are the pixels. Text: the toy tokenizer gives
(colour, shape, motion) ids, each slot with a null id; ``embed`` returns (P, 3, D) and caches it
per prompt; "" is all-null (unconditional). The image and multiview teachers were trained on
still objects only (motion token "static" or null), so their ``embed`` maps a motion word to
null: like SD reading "a corgi running", they judge the appearance of each frame.

``load_toy_classifiers`` returns the two evaluation classifiers (appearance, motion) used by
``ayg.evaluate``; ``random_toy_teachers`` builds the same architectures with random weights
(CPU tests, and a fallback before the weights exist).
"""

from __future__ import annotations

import contextlib
import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ayg.distill import Conditioning, check_sequences
from ayg.toyworld.nets import (
    AppearanceNet,
    MotionNet,
    ToyUNet,
    camera_features,
    default_config,
    load_net,
    resize,
)
from ayg.toyworld.vocab import MOTION_NULL, MOTION_STATIC, tokenize_batch

WEIGHT_FILES = {
    "image": "image.safetensors",
    "multiview": "multiview.safetensors",
    "video": "video.safetensors",
    "appearance": "appearance.safetensors",
    "motion": "motion.safetensors",
}


def weights_path(name: str) -> Path:
    """Path of a shipped weight file (``name`` in WEIGHT_FILES) inside the installed package."""
    if name not in WEIGHT_FILES:
        raise ValueError(f"unknown toy net {name!r}; allowed: {', '.join(WEIGHT_FILES)}")
    return Path(str(importlib.resources.files("ayg.toyworld") / "weights" / WEIGHT_FILES[name]))


def toy_weights_available() -> bool:
    """Whether all five shipped weight files are present."""
    return all(weights_path(n).is_file() for n in WEIGHT_FILES)


# ----------------------------------------------------------------------------------------------
# Teachers


class ToyTeacher:
    """A frozen toy UNet behind the Teacher protocol. Subclasses say which conditioning the
    net takes (``_extra``)."""

    kind = "image"
    frames = 1

    def __init__(self, net: ToyUNet, device: torch.device | str = "cpu") -> None:
        if net.cfg.kind != self.kind or net.cfg.frames != self.frames:
            raise ValueError(
                f"{type(self).__name__} needs a {self.kind} UNet with F={self.frames}, "
                f"got {net.cfg.kind} with F={net.cfg.frames}"
            )
        self.device = torch.device(device)
        self.net = net.eval().requires_grad_(False).to(self.device)
        self.resolution = (net.cfg.height, net.cfg.width)
        self._alphas = net.alphas_cumprod.float().to(self.device)  # (T,)
        self._cache: dict[str, Tensor] = {}
        self.active = True

    # -- protocol -------------------------------------------------------------------------------
    def alphas_cumprod(self) -> Tensor:
        return self._alphas

    def tokens(self, prompts: Sequence[str]) -> Tensor:
        """(P, 3) long token ids the net is conditioned on."""
        return tokenize_batch(list(prompts))

    def embed(self, prompts: Sequence[str]) -> Tensor:
        """(P, 3, D) prompt embeddings, each prompt computed once and cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            self._ensure_active()
            with torch.no_grad():
                emb = self.net.embed_tokens(self.tokens(missing)).float()  # (M, 3, D)
            self._cache.update({p: e.to(self.device) for p, e in zip(missing, emb, strict=True)})
        if not prompts:
            return torch.empty(0, 3, self.net.cfg.tokens.dim, device=self.device)
        return torch.stack([self._cache[p] for p in prompts])

    def encode(
        self,
        images: Tensor,
        grad_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """images (B, F, 3, H, W) in [0, 1] → (B, F, 3, h, w) in [-1, 1] at the teacher's
        resolution (bilinear, no antialiasing). With ``grad_frames = k < F`` only k random frames
        of each sequence carry gradient."""
        check_sequences(images)
        b, f = images.shape[:2]
        x = resize(
            images.to(self.device).reshape(b * f, *images.shape[2:]).float(), *self.resolution
        )
        x = (x * 2.0 - 1.0).view(b, f, 3, *self.resolution)
        if grad_frames is None or grad_frames >= f or not torch.is_grad_enabled():
            return x
        if grad_frames < 1:
            raise ValueError(f"grad_frames must be >= 1, got {grad_frames}")
        order = torch.stack([torch.randperm(f, generator=generator) for _ in range(b)])  # (B, F)
        live = torch.zeros(b, f, dtype=torch.bool).scatter_(1, order[:, :grad_frames], True)
        live = live.to(self.device)[:, :, None, None, None]
        return torch.where(live, x, x.detach())

    def predict_noise(
        self, noisy: Tensor, t: Tensor, emb: Tensor, cond: Conditioning | None = None
    ) -> Tensor:
        """noisy (B', F, 3, h, w), t (B',) long, emb (B', 3, D) → ε̂ (B', F, 3, h, w) float32.
        Runs without gradient (a frozen teacher)."""
        self._ensure_active()
        expect = (self.frames, 3, *self.resolution)
        if noisy.ndim != 5 or tuple(noisy.shape[1:]) != expect:
            raise ValueError(
                f"{self.kind} teacher: noisy must be (B, {', '.join(map(str, expect))}), got {tuple(noisy.shape)}"
            )
        b = noisy.shape[0]
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
        if emb.shape != (b, 3, self.net.cfg.tokens.dim):
            raise ValueError(
                f"emb must have shape ({b}, 3, {self.net.cfg.tokens.dim}), got {tuple(emb.shape)}"
            )
        cameras, fps = self._extra(cond, b)
        with torch.no_grad():
            eps = self.net(
                noisy.to(self.device).float(),
                t.to(self.device).long(),
                emb.to(self.device).float(),
                cameras,
                fps,
            )
        return eps.float()

    def offload(self) -> None:
        """Weights to the CPU (the prompt cache stays on the compute device)."""
        self.net.to("cpu")
        self.active = False

    def activate(self) -> None:
        self.net.to(self.device)
        self.active = True

    # -- helpers ----------------------------------------------------------------------------------
    def _ensure_active(self) -> None:
        if not self.active:
            self.activate()

    def _extra(self, cond: Conditioning | None, batch: int) -> tuple[Tensor | None, Tensor | None]:
        return None, None


class _AppearanceOnly:
    """Mixin: the net was trained on still objects, so a motion word reads as null."""

    def tokens(self, prompts: Sequence[str]) -> Tensor:
        ids = tokenize_batch(list(prompts))
        moving = (ids[:, 2] != MOTION_STATIC) & (ids[:, 2] != MOTION_NULL)
        ids[:, 2] = torch.where(moving, torch.full_like(ids[:, 2], MOTION_NULL), ids[:, 2])
        return ids


class ToyImageTeacher(_AppearanceOnly, ToyTeacher):
    """Image teacher (F = 1): frames are independent images."""

    kind = "image"
    frames = 1


class ToyMultiviewTeacher(_AppearanceOnly, ToyTeacher):
    """Multiview teacher (F = 4): needs ``cond.cameras`` (B'·4 cameras, sample-major)."""

    kind = "multiview"
    frames = 4

    def _extra(self, cond: Conditioning | None, batch: int) -> tuple[Tensor | None, Tensor | None]:
        if cond is None or cond.cameras is None:
            raise ValueError("the multiview teacher needs cond.cameras (B·4 cameras, sample-major)")
        cams = cond.cameras
        if len(cams) != batch * self.frames:
            raise ValueError(
                f"multiview teacher: expected {batch * self.frames} cameras, got {len(cams)}"
            )
        return camera_features(
            cams.c2w.to(self.device), cams.fov.to(self.device), self.frames
        ), None


class ToyVideoTeacher(ToyTeacher):
    """Video teacher (F = 16): needs ``cond.fps`` (B',)."""

    kind = "video"
    frames = 16

    def _extra(self, cond: Conditioning | None, batch: int) -> tuple[Tensor | None, Tensor | None]:
        if cond is None or cond.fps is None:
            raise ValueError("the video teacher needs cond.fps of shape (B,)")
        fps = torch.as_tensor(cond.fps, dtype=torch.float32).reshape(-1).to(self.device)
        if fps.shape != (batch,):
            raise ValueError(
                f"video teacher: fps must have shape ({batch},), got {tuple(fps.shape)}"
            )
        return None, fps


TEACHER_CLASSES: dict[str, type[ToyTeacher]] = {
    "image": ToyImageTeacher,
    "multiview": ToyMultiviewTeacher,
    "video": ToyVideoTeacher,
}


# ----------------------------------------------------------------------------------------------
# Classifiers


class ToyClassifiers:
    """The evaluation classifiers; inputs of any size are resized (bilinear, antialiased)."""

    def __init__(
        self, appearance: AppearanceNet, motion: MotionNet, device: torch.device | str = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.appearance_net = appearance.eval().requires_grad_(False).to(self.device)
        self.motion_net = motion.eval().requires_grad_(False).to(self.device)

    def appearance(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) in [0, 1] → (colour logits (B, 4), shape logits (B, 4))."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        cfg = self.appearance_net.cfg
        x = resize(images.to(self.device).float(), cfg.height, cfg.width, antialias=True)
        return self.appearance_net(x)

    def motion(self, frames: Tensor, fps: Tensor) -> Tensor:
        """frames (B, 16, 3, H, W) in [0, 1], fps (B,) → logits (B, 4) over MOTION_CLASSES
        (static, spinning, swaying, nodding)."""
        cfg = self.motion_net.cfg
        if frames.ndim != 5 or frames.shape[1] != cfg.frames or frames.shape[2] != 3:
            raise ValueError(
                f"frames must have shape (B, {cfg.frames}, 3, H, W), got {tuple(frames.shape)}"
            )
        b = frames.shape[0]
        fps = torch.as_tensor(fps, dtype=torch.float32).reshape(-1).to(self.device)
        if fps.shape != (b,):
            raise ValueError(f"fps must have shape ({b},), got {tuple(fps.shape)}")
        x = resize(
            frames.to(self.device).float().flatten(0, 1), cfg.height, cfg.width, antialias=True
        )
        return self.motion_net(x.view(b, cfg.frames, 3, cfg.height, cfg.width), fps)


# ----------------------------------------------------------------------------------------------
# Loading


def load_toy_teachers(device: torch.device | str = "cpu") -> dict[str, ToyTeacher]:
    """The three shipped teachers, keyed "image", "multiview", "video"."""
    missing = [WEIGHT_FILES[k] for k in TEACHER_CLASSES if not weights_path(k).is_file()]
    if missing:
        raise FileNotFoundError(
            f"toy teacher weights missing ({', '.join(missing)}) in ayg/toyworld/weights; "
            "train them with `python -m tools.toyworld.train --out DIR` (docs/TOY_TEACHERS.md) or "
            "use random teachers (teachers.kind=random)"
        )
    return {k: cls(load_net(weights_path(k))[0], device) for k, cls in TEACHER_CLASSES.items()}


def load_toy_classifiers(device: torch.device | str = "cpu") -> ToyClassifiers:
    """The shipped appearance and motion classifiers."""
    for k in ("appearance", "motion"):
        if not weights_path(k).is_file():
            raise FileNotFoundError(f"toy classifier weights missing: {weights_path(k)}")
    return ToyClassifiers(
        load_net(weights_path("appearance"))[0], load_net(weights_path("motion"))[0], device
    )


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's default CPU generator inside the block only (module init draws from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randomise_zero_init(net: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Zero-initialised layers (output convs, attention outputs) make a fresh UNet predict 0 and
    ignore its conditioning; random teachers get small random values there instead."""
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, std)
    return net


def random_toy_teachers(seed: int = 0, device: torch.device | str = "cpu") -> dict[str, ToyTeacher]:
    """The toy architectures with random weights (deterministic in ``seed``)."""
    out: dict[str, ToyTeacher] = {}
    for i, (k, cls) in enumerate(TEACHER_CLASSES.items()):
        with _seeded(seed * 7919 + i):
            net = _randomise_zero_init(ToyUNet(default_config(k)))
        out[k] = cls(net, device)
    return out


def random_toy_classifiers(seed: int = 0, device: torch.device | str = "cpu") -> ToyClassifiers:
    """The classifier architectures with random weights (tests)."""
    with _seeded(seed * 7919 + 11):
        app = AppearanceNet(default_config("appearance"))
        mot = MotionNet(default_config("motion"))
    return ToyClassifiers(app, mot, device)
