"""Each teacher term's gradient on every rendered frame, taken inside ``run_stage1`` and
``run_stage2`` themselves, against eq. 22 (stage 1) and eq. 23–24 (stage 2).

The teachers are scripted: an identity encoder whose output records the gradient that reaches
it (so each teacher's own term is seen apart from the others and from the regularisers), a
constant ᾱ (so w(t) = 1 − ᾱ whatever t is drawn) and a denoiser that returns a fixed tensor per
prompt. The expected gradients are written from the equations with the view words of D.3
computed here from the cameras the multiview teacher was given.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from ayg.config import VIDEO_NEGATIVE_PROMPT, Stage1Config, Stage2Config
from ayg.deformation import Motion
from ayg.gaussians import GaussianCloud
from ayg.stages import RunContext, new_segment, run_stage1, run_stage2

ALPHA_BAR = 0.64
W_T = 1.0 - ALPHA_BAR  # w(t) = 1 − ᾱ_t, the "sds" weighting
PROMPT = "a corgi"


def eps_for(prompt: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    return torch.randn(shape, generator=g)


class Scripted:
    def __init__(self, kind: str, frames: int) -> None:
        self.kind, self.frames, self.device = kind, frames, torch.device("cpu")
        self.names: list[str] = []
        self.grads: list[torch.Tensor] = []  # gradient on this teacher's latents, per call
        self.cameras: list = []

    def alphas_cumprod(self) -> torch.Tensor:
        return torch.full((1000,), ALPHA_BAR)

    def encode(self, images, grad_frames=None, generator=None):
        z = images * 1.0  # (B, F, 3, H, W): identity, a node of this teacher's own
        z.register_hook(lambda g: self.grads.append(g.detach().clone()))
        return z

    def embed(self, prompts):
        for p in prompts:
            if p not in self.names:
                self.names.append(p)
        return torch.tensor([float(self.names.index(p)) for p in prompts]).view(-1, 1, 1)

    def predict_noise(self, noisy, t, emb, cond=None):
        if cond is not None and cond.cameras is not None:
            self.cameras.append(cond.cameras)
        shape = tuple(noisy.shape[1:])
        return torch.stack([eps_for(self.names[int(e)], shape) for e in emb[:, 0, 0]])

    def offload(self) -> None:
        pass

    def activate(self) -> None:
        pass


def d3_view_word(elevation: float, azimuth: float) -> str:
    """D.3, written out again: overhead if elv ≥ 60, front if azm ≤ 30 or ≥ 330, back if
    150 ≤ azm ≤ 210, side otherwise."""
    a = azimuth % 360.0
    if elevation >= 60.0:
        return "overhead view"
    if a <= 30.0 or a >= 330.0:
        return "front view"
    if 150.0 <= a <= 210.0:
        return "back view"
    return "side view"


def ctx() -> RunContext:
    return RunContext(device=torch.device("cpu"), backend="torch", progress=False)


def test_stage1_terms_follow_eq22_per_view():
    cfg = Stage1Config(
        steps=1, batch=2, width=12, height=12, init_gaussians=40, densify_start=10**6
    )
    mv, im = Scripted("multiview", cfg.views), Scripted("image", 1)
    run_stage1(PROMPT, cfg, {"multiview": mv, "image": im}, ctx(), seed=0)
    B, V, shape = cfg.batch, cfg.views, (3, cfg.height, cfg.width)

    # multiview (eq. 22): w·[ω_3D·(ε̂(v) − ε̂(∅)) + ω_neg·(ε̂(∅) − ε̂(v_neg))] / B on every view
    (g_mv,) = mv.grads  # (B, V, 3, H, W)
    c, u = eps_for(PROMPT, (V, *shape)), eps_for("", (V, *shape))
    n = eps_for(cfg.negative_prompt, (V, *shape))
    expected = W_T * (cfg.omega_3d * (c - u) + cfg.omega_neg * (u - n)) / B
    torch.testing.assert_close(g_mv, expected[None].expand(B, -1, -1, -1, -1), atol=1e-5, rtol=1e-4)

    # image (eq. 22): w·[ω_im·(ε̂(v) − ε̂(∅)) + ω_vg·(ε̂(v_aug) − ε̂(v))] / B on every view — the
    # same 1/B as a multiview view, not 1/(B·V)
    (g_im,) = im.grads  # (B·V, 1, 3, H, W)
    cams = mv.cameras[0]
    c1, u1 = eps_for(PROMPT, (1, *shape))[0], eps_for("", (1, *shape))[0]
    for i in range(B * V):
        word = d3_view_word(float(cams.elevation[i]), float(cams.azimuth[i]))
        a = eps_for(f"{PROMPT}, {word}", (1, *shape))[0]
        want = W_T * (cfg.omega_im * (c1 - u1) + cfg.omega_vg * (a - c1)) / B
        torch.testing.assert_close(g_im[i, 0], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("omega_vid", [1.0, 1.5])
def test_stage2_terms_follow_eq24_per_frame(omega_vid):
    cfg = Stage2Config(
        steps=1,
        batch=2,
        frames=16,
        width=12,
        height=8,
        knn=4,
        omega_vid=omega_vid,
        omega_ma=3.0,
        omega_neg=0.5,
        omega_im=0.7,
    )
    cloud = GaussianCloud.init_sphere(n=40, radius=0.3, sh_degree=0, generator=torch.Generator())
    motion = Motion([new_segment(cfg, "base", PROMPT, torch.device("cpu"))])
    vid, im = Scripted("video", cfg.frames), Scripted("image", 1)
    run_stage2(PROMPT, cfg, cloud, motion, {"video": vid, "image": im}, ctx(), seed=0)
    B, F, shape = cfg.batch, cfg.frames, (3, cfg.height, cfg.width)

    # video (eq. 23–24): w·ω_vid·(⟨δ⟩ + ω_ma·(δ − ⟨δ⟩)) / B, δ = δ_cls + ω_neg·(ε̂(∅) − ε̂(v_neg))
    (g_vid,) = vid.grads  # (B, F, 3, H, W)
    c, u = eps_for(PROMPT, (F, *shape)), eps_for("", (F, *shape))
    n = eps_for(VIDEO_NEGATIVE_PROMPT, (F, *shape))  # the teacher's default (it names none)
    delta = (c - u) + cfg.omega_neg * (u - n)  # (F, 3, H, W)
    mean = delta.mean(0, keepdim=True)
    expected = W_T * omega_vid * (mean + cfg.omega_ma * (delta - mean)) / B
    torch.testing.assert_close(
        g_vid, expected[None].expand(B, -1, -1, -1, -1), atol=1e-5, rtol=1e-4
    )

    # image (eq. 24): w·ω_im·(ε̂(v) − ε̂(∅)) / B on each of the k picked frames of each clip — the
    # same 1/B as a video frame, not 1/(B·k)
    (g_im,) = im.grads  # (B·k, 1, 3, H, W)
    assert g_im.shape[0] == B * cfg.image_frames
    c1, u1 = eps_for(PROMPT, (1, *shape))[0], eps_for("", (1, *shape))[0]
    want = W_T * cfg.omega_im * (c1 - u1) / B
    for i in range(g_im.shape[0]):
        torch.testing.assert_close(g_im[i, 0], want, atol=1e-5, rtol=1e-4)
