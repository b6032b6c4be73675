"""Score distillation maths (ayg.distill) against closed forms, with a scripted teacher whose
denoiser returns known tensors per prompt."""

from __future__ import annotations

import zlib

import pytest
import torch

from ayg.cameras import look_at_cameras, view_direction
from ayg.distill import (
    Conditioning,
    LinearSchedule,
    Teacher,
    TeacherTerm,
    TRangeSchedule,
    augment_prompt,
    classifier_score,
    compose,
    distill_loss,
    motion_amplification,
    negative_prompt_term,
    sds_direction,
    to_timesteps,
    view_guidance_term,
    view_words,
    weight_sds,
    weight_uniform,
)

C, H, W = 3, 4, 5


def eps_for(prompt: str, frames: int) -> torch.Tensor:
    """The scripted ε̂ of a prompt: (F, C, H, W), fixed per prompt, independent of z_t and t."""
    g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    return torch.randn(frames, C, H, W, generator=g)


class ScriptedTeacher:
    """A Teacher whose encoder is z = 2·x and whose denoiser ignores z_t and returns eps_for(prompt)."""

    def __init__(self, kind: str = "video", frames: int = 3) -> None:
        self.kind = kind
        self.frames = frames
        self.device = torch.device("cpu")
        self.names: list[str] = []
        self.calls: list[dict] = []
        self.embedded: list[list[str]] = []
        self.grad_frames_seen: list[int | None] = []

    def alphas_cumprod(self) -> torch.Tensor:
        return torch.linspace(0.999, 0.01, 1000)

    def encode(self, images, grad_frames=None, generator=None):
        self.grad_frames_seen.append(grad_frames)
        return 2.0 * images

    def embed(self, prompts):
        self.embedded.append(list(prompts))
        for p in prompts:
            if p not in self.names:
                self.names.append(p)
        return torch.tensor([float(self.names.index(p)) for p in prompts]).view(-1, 1, 1)

    def predict_noise(self, noisy, t, emb, cond=None):
        self.calls.append(
            {"noisy": noisy.clone(), "t": t.clone(), "emb": emb.clone(), "cond": cond}
        )
        f = noisy.shape[1]
        return torch.stack([eps_for(self.names[int(e.item())], f) for e in emb[:, 0, 0]])

    def offload(self) -> None:
        pass

    def activate(self) -> None:
        pass


def run(
    term: TeacherTerm,
    batch: int = 2,
    frames: int = 3,
    kind: str = "video",
    views=None,
    cond=None,
    seed=0,
):
    teacher = ScriptedTeacher(kind, 1 if kind == "image" else frames)
    images = torch.rand(batch, frames, 3, H, W, generator=torch.Generator().manual_seed(seed + 1))
    images.requires_grad_(True)
    loss, stats = distill_loss(
        teacher,
        term,
        images,
        "a cat",
        step=0,
        generator=torch.Generator().manual_seed(seed),
        cond=cond,
        views=views,
    )
    loss.backward()
    # dL/dz where z = 2x: images.grad / 2, times B to undo the 1/B of the surrogate
    grad_latents = images.grad / 2.0 * batch
    return teacher, grad_latents, loss, stats


# -- protocol ------------------------------------------------------------------------------------


def test_scripted_teacher_satisfies_protocol():
    assert isinstance(ScriptedTeacher(), Teacher)


def test_conditioning_repeat_is_branch_major():
    cams = look_at_cameras([10.0, 20.0], [0.0, 90.0], 2.0, 40.0, 8, 8)
    cond = Conditioning(cameras=cams, fps=torch.tensor([4.0, 8.0]))
    rep = cond.repeat(3)
    assert torch.equal(rep.fps, torch.tensor([4.0, 8.0] * 3))
    assert torch.equal(rep.cameras.elevation, torch.tensor([10.0, 20.0] * 3))
    assert Conditioning().repeat(2).cameras is None
    with pytest.raises(ValueError):
        cond.repeat(0)


# -- schedules -------------------------------------------------------------------------------------


def test_linear_schedule_endpoints():
    s = LinearSchedule(1.0, 0.0, 100, 200)
    assert s(0) == 1.0 and s(100) == 1.0 and s(150) == pytest.approx(0.5)
    assert s(200) == 0.0 and s(10_000) == 0.0
    with pytest.raises(ValueError):
        LinearSchedule(0.0, 1.0, 10, 5)


def test_t_range_schedules_hit_endpoints():
    im = TRangeSchedule.image_stage1()
    assert im.range(0) == pytest.approx((0.02, 0.98))
    assert im.range(3000) == pytest.approx((0.02, 0.74))
    assert im.range(6000) == pytest.approx((0.02, 0.5))
    assert im.range(9000) == pytest.approx((0.02, 0.5))
    mv = TRangeSchedule.multiview_stage1()
    assert mv.range(0) == pytest.approx((0.98, 0.98))
    assert mv.range(4000) == pytest.approx((0.5, 0.74))
    assert mv.range(8000) == pytest.approx((0.02, 0.5))
    vid = TRangeSchedule.constant()
    assert vid.range(0) == vid.range(10_000) == pytest.approx((0.02, 0.98))
    with pytest.raises(ValueError):
        TRangeSchedule(start=(0.9, 0.1))


def test_t_range_samples_and_timesteps():
    g = torch.Generator().manual_seed(0)
    t = TRangeSchedule.image_stage1().sample(1000, 6000, g)
    assert t.shape == (1000,) and t.min() >= 0.02 and t.max() <= 0.5
    assert torch.allclose(TRangeSchedule.multiview_stage1().sample(8, 0, g), torch.full((8,), 0.98))
    ts = to_timesteps(torch.tensor([0.0, 0.02, 0.5, 0.98, 1.0]), 1000)
    assert ts.dtype == torch.long and ts.tolist() == [0, 20, 500, 980, 999]


def test_weightings():
    a = torch.tensor([0.9, 0.5, 0.1])
    assert torch.allclose(weight_sds(a), torch.tensor([0.1, 0.5, 0.9]))
    assert torch.equal(weight_uniform(a), torch.ones(3))


# -- the pieces --------------------------------------------------------------------------------------


def test_pieces_closed_forms():
    c, u, n, a, e = (torch.randn(2, 3, C, H, W) for _ in range(5))
    assert torch.equal(classifier_score(c, u), c - u)
    assert torch.allclose(sds_direction(c, u, e, 7.5), u + 7.5 * (c - u) - e)
    # eq. 22/23: + ω_neg (ε_∅ - ε_neg): away from the negative prompt
    assert torch.allclose(negative_prompt_term(u, n, 0.8), 0.8 * (u - n))
    # view guidance: + ω_vg (ε_aug - ε_v): towards the view-augmented prompt
    assert torch.allclose(view_guidance_term(a, c, 3.0), 3.0 * (a - c))


def test_motion_amplification():
    delta = torch.randn(2, 16, C, H, W)
    assert torch.allclose(motion_amplification(delta, 1.0), delta)
    out = motion_amplification(delta, 24.0)
    mean = delta.mean(1, keepdim=True)
    assert torch.allclose(out.mean(1, keepdim=True), mean, atol=1e-5)
    assert torch.allclose(out - out.mean(1, keepdim=True), 24.0 * (delta - mean), atol=1e-4)
    # a clip whose frames all get the same score is unchanged
    same = delta[:, :1].expand(2, 16, C, H, W)
    assert torch.allclose(motion_amplification(same, 24.0), same)


def test_view_words_follow_d3_rules():
    cases = {
        (0.0, 0.0): "front view",
        (30.0, 30.0): "front view",
        (30.0, 330.0): "front view",
        (10.0, 31.0): "side view",
        (10.0, 149.0): "side view",
        (10.0, 150.0): "back view",
        (10.0, 210.0): "back view",
        (10.0, 211.0): "side view",
        (59.9, 0.0): "front view",
        (60.0, 0.0): "overhead view",
        (75.0, 180.0): "overhead view",
        (10.0, 360.0 + 90.0): "side view",
    }
    for (elv, azm), word in cases.items():
        assert view_direction(elv, azm) == word, (elv, azm)
    cams = look_at_cameras([15.0, 15.0, 15.0, 70.0], [0.0, 90.0, 180.0, 270.0], 2.0, 40.0, 8, 8)
    assert view_words(cams) == ["front view", "side view", "back view", "overhead view"]
    assert augment_prompt("a cat", "back view") == "a cat, back view"
    with pytest.raises(ValueError):
        augment_prompt("a cat", "left view")


# -- distill_loss ------------------------------------------------------------------------------------


def test_csd_gradient_is_weighted_classifier_score():
    term = TeacherTerm(weight=0.4, weighting="uniform")
    teacher, grad, loss, stats = run(term)
    expected = 0.4 * (eps_for("a cat", 3) - eps_for("", 3))  # (F, C, H, W), same for each sample
    assert torch.allclose(grad, expected.expand_as(grad), atol=1e-6)
    assert set(stats) >= {"loss", "t_mean", "w_mean", "grad_norm"}
    assert all(isinstance(v, float) for v in stats.values())


def test_sds_gradient_with_cfg():
    term = TeacherTerm(weight=1.0, mode="sds", cfg_scale=7.5, weighting="uniform")
    teacher, grad, _, _ = run(term)
    call = teacher.calls[0]
    batch = grad.shape[0]
    a = teacher.alphas_cumprod()[call["t"][:batch]].view(-1, 1, 1, 1, 1)
    latents = 2.0 * torch.rand(batch, 3, 3, H, W, generator=torch.Generator().manual_seed(1))
    noise = (call["noisy"][:batch] - a.sqrt() * latents) / (1 - a).sqrt()  # ε used to diffuse
    c, u = eps_for("a cat", 3), eps_for("", 3)
    assert torch.allclose(grad, u + 7.5 * (c - u) - noise, atol=1e-4)


def test_sds_weighting_uses_one_minus_alpha_bar():
    term = TeacherTerm(weight=1.0, t_range=TRangeSchedule.constant(0.5, 0.5), weighting="sds")
    teacher, grad, _, stats = run(term)
    w = 1.0 - teacher.alphas_cumprod()[500]
    assert torch.all(teacher.calls[0]["t"] == 500)
    assert torch.allclose(
        grad, w * (eps_for("a cat", 3) - eps_for("", 3)).expand_as(grad), atol=1e-6
    )
    assert stats["w_mean"] == pytest.approx(float(w))


def test_negative_view_and_motion_amplification_compose():
    term = TeacherTerm(
        weight=1.0,
        negative_prompt="static statue",
        negative_weight=0.8,
        view_guidance=3.0,
        motion_amplification=5.0,
        weighting="uniform",
    )
    views = ["front view", "back view"]
    teacher, grad, _, _ = run(term, views=views)
    c, u, n = eps_for("a cat", 3), eps_for("", 3), eps_for("static statue", 3)
    for b, v in enumerate(views):
        a = eps_for(f"a cat, {v}", 3)
        delta = (c - u) + 0.8 * (u - n) + 3.0 * (a - c)  # negative before amplification (eq. 23-24)
        expected = motion_amplification(delta[None], 5.0)[0]
        assert torch.allclose(grad[b], expected, atol=1e-5)


def test_all_branches_in_one_forward_call():
    term = TeacherTerm(negative_prompt="ugly", negative_weight=0.8, view_guidance=3.0)
    cond = Conditioning(fps=torch.tensor([4.0, 8.0]))
    teacher, _, _, _ = run(term, views=["side view", "overhead view"], cond=cond)
    assert len(teacher.calls) == 1
    call = teacher.calls[0]
    assert call["noisy"].shape == (8, 3, 3, H, W)  # 4 branches × B = 2
    prompts = [teacher.names[int(e)] for e in call["emb"][:, 0, 0]]
    assert prompts == ["a cat"] * 2 + [""] * 2 + ["ugly"] * 2 + [
        "a cat, side view",
        "a cat, overhead view",
    ]
    assert torch.equal(call["t"][:2], call["t"][2:4])  # branches share t and z_t
    assert torch.equal(call["noisy"][:2], call["noisy"][6:])
    assert torch.equal(call["cond"].fps, torch.tensor([4.0, 8.0] * 4))
    assert len(teacher.embedded) == 1 and len(teacher.embedded[0]) == 5  # distinct prompts only


def test_t_is_shared_by_the_frames_of_a_sequence():
    teacher, _, _, _ = run(TeacherTerm(), batch=3, frames=4)
    call = teacher.calls[0]
    assert call["t"].shape == (6,)  # (branches × B,): one t per sequence
    noisy = call["noisy"][:3]
    assert noisy.shape == (3, 4, 3, H, W)


def test_gradient_is_exactly_zero_when_score_is_zero():
    teacher = ScriptedTeacher("video", 3)
    images = torch.rand(2, 3, 3, H, W, requires_grad=True)
    loss, _ = distill_loss(teacher, TeacherTerm(), images, "", 0, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.count_nonzero(images.grad) == 0
    assert loss.item() == 0.0


def test_image_teacher_folds_frames_into_samples():
    term = TeacherTerm(weight=1.0, view_guidance=3.0, weighting="uniform")
    views = ["front view", "side view", "back view", "overhead view"]
    teacher, grad, _, _ = run(term, batch=1, frames=4, kind="image", views=views)
    call = teacher.calls[0]
    assert call["noisy"].shape == (12, 1, 3, H, W)  # 3 branches × 4 images
    c, u = eps_for("a cat", 1)[0], eps_for("", 1)[0]
    for j, v in enumerate(views):
        a = eps_for(f"a cat, {v}", 1)[0]
        assert torch.allclose(grad[0, j], (c - u) + 3.0 * (a - c), atol=1e-5)


def test_grad_frames_is_passed_to_the_encoder():
    teacher, _, _, _ = run(TeacherTerm(grad_frames=2))
    assert teacher.grad_frames_seen == [2]


def test_validation_errors():
    teacher = ScriptedTeacher("video", 3)
    images = torch.rand(1, 3, 3, H, W)
    with pytest.raises(ValueError, match="view guidance"):
        distill_loss(teacher, TeacherTerm(view_guidance=3.0), images, "a cat", 0)
    with pytest.raises(ValueError, match="F=3"):
        distill_loss(teacher, TeacherTerm(), torch.rand(1, 5, 3, H, W), "a cat", 0)
    with pytest.raises(ValueError, match="B, F, 3, H, W"):
        distill_loss(teacher, TeacherTerm(), torch.rand(3, 3, H, W), "a cat", 0)
    with pytest.raises(ValueError):
        TeacherTerm(mode="vsd")
    with pytest.raises(ValueError):
        TeacherTerm(negative_weight=0.8)
    with pytest.raises(ValueError):
        TeacherTerm(weighting="snr")


def test_compose_sums_terms():
    x = torch.tensor(2.0, requires_grad=True)
    total, stats = compose({"mv": (x * 3.0, {"loss": 6.0}), "im": (x * 1.0, {"loss": 2.0})})
    total.backward()
    assert x.grad.item() == 4.0
    assert stats == {"mv/loss": 6.0, "im/loss": 2.0, "loss": 8.0}
    with pytest.raises(ValueError):
        compose({})
