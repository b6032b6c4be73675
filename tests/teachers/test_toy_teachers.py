"""The toy teachers and classifiers (teachers/toy.py, toyworld/nets.py): the Teacher protocol
on random-weight nets, conditioning that must matter (cameras, fps, other views / frames),
gradients through ``encode``, the shipped weights' checksums, and a distillation call each."""

from __future__ import annotations

import json

import pytest
import torch

from ayg.cameras import Stage1CameraSampler, look_at_cameras
from ayg.distill import Conditioning, Teacher, TeacherTerm, distill_loss
from ayg.teachers.toy import (
    WEIGHT_FILES,
    ToyClassifiers,
    ToyTeacher,
    load_toy_classifiers,
    load_toy_teachers,
    random_toy_classifiers,
    random_toy_teachers,
    weights_path,
)
from ayg.toyworld.nets import ToyUNet, UNetConfig, checksum, linear_alphas_cumprod, load_net
from ayg.toyworld.vocab import NULL_TOKENS, VIDEO_NEGATIVE_PROMPT
from tools.toyworld.train import TrainConfig, diffusion_classifier, load_grown


@pytest.fixture(scope="module")
def teachers() -> dict[str, ToyTeacher]:
    torch.set_num_threads(2)
    return random_toy_teachers(seed=0)


def _cond(kind: str, batch: int, seed: int = 0) -> Conditioning | None:
    g = torch.Generator().manual_seed(seed)
    if kind == "multiview":
        return Conditioning(cameras=Stage1CameraSampler().sample(batch, g))
    if kind == "video":
        return Conditioning(fps=torch.tensor([4.0, 8.0, 12.0])[:batch])
    return None


def _noisy(teacher: ToyTeacher, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, teacher.frames, 3, *teacher.resolution, generator=g)


@pytest.mark.parametrize(
    "kind,frames,res", [("image", 1, (32, 32)), ("multiview", 4, (32, 32)), ("video", 16, (24, 40))]
)
def test_protocol_shapes(teachers, kind, frames, res):
    t = teachers[kind]
    assert isinstance(t, Teacher)
    assert t.kind == kind and t.frames == frames and t.device == torch.device("cpu")
    abar = t.alphas_cumprod()
    assert abar.shape == (1000,) and abar.dtype == torch.float32
    torch.testing.assert_close(abar, linear_alphas_cumprod(1000, 1e-4, 0.02))
    assert bool((abar[1:] < abar[:-1]).all()) and 0.0 < float(abar[-1]) < float(abar[0]) < 1.0

    images = torch.rand(2, frames, 3, 48, 80)  # any render size: encode resizes
    z = t.encode(images)
    assert z.shape == (2, frames, 3, *res)
    assert float(z.min()) >= -1.0 and float(z.max()) <= 1.0

    emb = t.embed(["a red ball spinning", ""])
    assert emb.shape == (2, 3, 64)
    eps = t.predict_noise(_noisy(t, 2), torch.tensor([10, 900]), emb, _cond(kind, 2))
    assert eps.shape == (2, frames, 3, *res) and eps.dtype == torch.float32
    assert torch.isfinite(eps).all()


def test_encode_is_pixel_space(teachers):
    t = teachers["image"]
    images = torch.rand(3, 1, 3, 32, 32)
    torch.testing.assert_close(t.encode(images), images * 2 - 1)  # same size: no resampling
    big = images.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # 64×64 blocks
    torch.testing.assert_close(t.encode(big), images * 2 - 1)  # bilinear 2× down = block mean


def test_embed_cache_and_null(teachers, monkeypatch):
    t = random_toy_teachers(seed=1)["video"]
    calls: list[int] = []
    embed_tokens = t.net.embed_tokens
    monkeypatch.setattr(
        t.net, "embed_tokens", lambda ids: calls.append(len(ids)) or embed_tokens(ids)
    )
    a = t.embed(["a blue cone nodding"])
    b = t.embed(["a blue cone nodding", "A blue cone, nodding!", "a blue cone nodding"])
    assert calls == [1, 1]  # each new prompt text embedded once
    assert b.shape == (3, 3, 64)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(b[0], b[1])  # same tokens
    t.embed(["a blue cone nodding", "A blue cone, nodding!"])
    assert calls == [1, 1]
    # "" is all-null; the video negative prompt is (null, null, static)
    assert t.tokens([""]).tolist() == [list(NULL_TOKENS)]
    assert t.tokens([VIDEO_NEGATIVE_PROMPT]).tolist() == [[NULL_TOKENS[0], NULL_TOKENS[1], 0]]
    null = t.net.embed_tokens(torch.tensor([NULL_TOKENS]))[0]
    torch.testing.assert_close(t.embed([""])[0], null)
    assert not torch.allclose(t.embed([""])[0], t.embed(["a red ball"])[0])
    assert t.embed([]).shape == (0, 3, 64)


def test_appearance_teachers_ignore_motion_words(teachers):
    for kind in ("image", "multiview"):
        t = teachers[kind]
        assert t.tokens(["a blue cone nodding"]).tolist() == t.tokens(["a blue cone"]).tolist()
        torch.testing.assert_close(t.embed(["a blue cone nodding"]), t.embed(["a blue cone"]))
    v = teachers["video"]
    assert not torch.allclose(v.embed(["a blue cone nodding"]), v.embed(["a blue cone"]))


def test_text_changes_prediction(teachers):
    for kind, t in teachers.items():
        x = _noisy(t, 1).repeat(2, 1, 1, 1, 1)
        eps = t.predict_noise(
            x, torch.tensor([500, 500]), t.embed(["a red ball spinning", ""]), _cond(kind, 2)
        )
        assert not torch.allclose(eps[0], eps[1], atol=1e-5), kind


def test_multiview_depends_on_cameras_and_other_views(teachers):
    t = teachers["multiview"]
    x = _noisy(t, 1)
    emb = t.embed(["a green ring"])
    tt = torch.tensor([400])
    base = t.predict_noise(x, tt, emb, _cond("multiview", 1, seed=0))
    other = t.predict_noise(x, tt, emb, _cond("multiview", 1, seed=1))
    assert not torch.allclose(base, other, atol=1e-5)
    with pytest.raises(ValueError, match="cameras"):
        t.predict_noise(x, tt, emb, None)
    # changing view 3's pixels changes view 0's prediction (cross-view attention)
    x2 = x.clone()
    x2[:, 3] = torch.randn_like(x2[:, 3])
    moved = t.predict_noise(x2, tt, emb, _cond("multiview", 1, seed=0))
    assert not torch.allclose(base[:, 0], moved[:, 0], atol=1e-6)


def test_video_depends_on_fps_and_other_frames(teachers):
    t = teachers["video"]
    x = _noisy(t, 1)
    emb = t.embed(["a yellow cube swaying"])
    tt = torch.tensor([300])
    base = t.predict_noise(x, tt, emb, Conditioning(fps=torch.tensor([4.0])))
    fast = t.predict_noise(x, tt, emb, Conditioning(fps=torch.tensor([12.0])))
    assert not torch.allclose(base, fast, atol=1e-5)
    with pytest.raises(ValueError, match="fps"):
        t.predict_noise(x, tt, emb, None)
    # changing the last frame changes the first frame's prediction (temporal layers)
    x2 = x.clone()
    x2[:, 15] = torch.randn_like(x2[:, 15])
    moved = t.predict_noise(x2, tt, emb, Conditioning(fps=torch.tensor([4.0])))
    assert not torch.allclose(base[:, 0], moved[:, 0], atol=1e-6)


def test_image_frames_are_independent(teachers):
    t = teachers["image"]
    x = _noisy(t, 2)
    emb = t.embed(["a red cube", "a red cube"])
    tt = torch.tensor([300, 300])
    base = t.predict_noise(x, tt, emb)
    x2 = x.clone()
    x2[1] = torch.randn_like(x2[1])
    torch.testing.assert_close(t.predict_noise(x2, tt, emb)[0], base[0])


def test_bad_inputs_raise(teachers):
    t = teachers["image"]
    with pytest.raises(ValueError, match="noisy"):
        t.predict_noise(torch.randn(1, 1, 3, 16, 16), torch.tensor([1]), t.embed(["a red ball"]))
    with pytest.raises(ValueError, match="emb"):
        t.predict_noise(_noisy(t, 1), torch.tensor([1]), torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="images"):
        t.encode(torch.rand(1, 3, 32, 32))
    mv = teachers["multiview"]
    with pytest.raises(ValueError, match="cameras"):
        mv.predict_noise(
            _noisy(mv, 2), torch.tensor([1, 2]), mv.embed(["", ""]), _cond("multiview", 1)
        )


def test_score_gradient_flows_through_encode(teachers):
    """A CSD-style surrogate on the encoded pixels sends gradient into the images."""
    for kind, t in teachers.items():
        images = torch.rand(1, t.frames, 3, 48, 48, requires_grad=True)
        z = t.encode(images)
        with torch.no_grad():
            emb = t.embed(["a blue cone nodding", ""])
            zt = z.detach().repeat(2, 1, 1, 1, 1)
            eps = t.predict_noise(
                zt, torch.tensor([500, 500]), emb, _cond(kind, 1) and _cond(kind, 1).repeat(2)
            )
            direction = eps[:1] - eps[1:]
        loss = 0.5 * (z - (z - direction).detach()).square().sum()
        loss.backward()
        assert images.grad is not None and float(images.grad.abs().sum()) > 0, kind


def test_grad_frames_limits_gradient(teachers):
    t = teachers["video"]
    images = torch.rand(2, 16, 3, 24, 40, requires_grad=True)
    z = t.encode(images, grad_frames=3, generator=torch.Generator().manual_seed(0))
    z.sum().backward()
    live = images.grad.flatten(2).abs().sum(-1) > 0  # (B, F)
    assert live.sum(dim=1).tolist() == [3, 3]
    torch.testing.assert_close(z, t.encode(images.detach()))


def test_offload_activate(teachers):
    t = random_toy_teachers(seed=3)["image"]
    x, tt, emb = _noisy(t, 1), torch.tensor([5]), t.embed(["a red ball"])
    before = t.predict_noise(x, tt, emb)
    t.offload()
    assert not t.active
    torch.testing.assert_close(t.predict_noise(x, tt, emb), before)  # re-activates itself
    assert t.active


def test_random_teachers_are_seeded():
    a = random_toy_teachers(seed=5)["video"].net.state_dict()
    b = random_toy_teachers(seed=5)["video"].net.state_dict()
    c = random_toy_teachers(seed=6)["video"].net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("kind", ["image", "multiview", "video"])
def test_distill_loss_runs_with_toy_teacher(teachers, kind):
    t = teachers[kind]
    g = torch.Generator().manual_seed(0)
    frames = 4 if kind == "image" else t.frames  # the image teacher folds frames into the batch
    images = torch.rand(2, frames, 3, 40, 64, requires_grad=True)
    neg = (
        dict(negative_prompt=VIDEO_NEGATIVE_PROMPT, negative_weight=0.8) if kind != "image" else {}
    )
    term = TeacherTerm(weight=1.0, motion_amplification=4.0 if kind == "video" else 1.0, **neg)
    loss, stats = distill_loss(
        t, term, images, "a blue cone nodding", step=0, generator=g, cond=_cond(kind, 2)
    )
    loss.backward()
    assert torch.isfinite(loss) and stats["cls_norm"] > 0
    assert float(images.grad.abs().sum()) > 0


def test_classifiers_resize_and_shapes():
    clf = random_toy_classifiers(seed=0)
    colour, shape = clf.appearance(torch.rand(3, 3, 64, 64))
    assert colour.shape == (3, 4) and shape.shape == (3, 4)
    logits = clf.motion(torch.rand(2, 16, 3, 40, 64), torch.tensor([4.0, 12.0]))
    assert logits.shape == (2, 4)
    with pytest.raises(ValueError, match="fps"):
        clf.motion(torch.rand(2, 16, 3, 24, 40), torch.tensor([4.0]))
    with pytest.raises(ValueError, match="frames"):
        clf.motion(torch.rand(2, 8, 3, 24, 40), torch.tensor([4.0, 4.0]))


SHIPPED = all(weights_path(n).is_file() for n in WEIGHT_FILES)


@pytest.mark.skipif(not SHIPPED, reason="the toy weights are missing from the package")
@pytest.mark.parametrize("name", list(WEIGHT_FILES))
def test_shipped_weights_reproduce_checksum(name):
    net, meta = load_net(weights_path(name))
    expected = json.loads(meta["checksum"])
    got = checksum(net)
    assert got["abs_sum"] == pytest.approx(expected["abs_sum"], rel=1e-3)
    assert got["sum"] == pytest.approx(
        expected["sum"], rel=1e-3, abs=1e-2 * max(1.0, expected["abs_sum"]) ** 0.5
    )
    torch.testing.assert_close(
        torch.tensor(got["head"]), torch.tensor(expected["head"]), atol=1e-3, rtol=1e-3
    )
    train = json.loads(meta["train"])
    assert train["steps"] > 0


@pytest.mark.skipif(not SHIPPED, reason="the toy weights are missing from the package")
def test_shipped_teachers_and_classifiers_load():
    ts = load_toy_teachers("cpu")
    assert {k: t.frames for k, t in ts.items()} == {"image": 1, "multiview": 4, "video": 16}
    assert isinstance(load_toy_classifiers("cpu"), ToyClassifiers)


@pytest.mark.skipif(not SHIPPED, reason="the toy weights are missing from the package")
def test_shipped_appearance_classifier_reads_a_render():
    """The trained appearance classifier names a clean analytic render (eval camera)."""
    from tools.toyworld.scene import render

    cams = look_at_cameras(15.0, [0.0, 120.0, 240.0], 3.0, 40.0, 64, 64)
    rgb = render(
        ["a red ball", "a green cube", "a blue cone"], cams, background=[1.0, 1.0, 1.0]
    ).rgb
    colour, shape = load_toy_classifiers("cpu").appearance(rgb)
    assert colour.argmax(-1).tolist() == [0, 1, 2]
    assert shape.argmax(-1).tolist() == [0, 1, 2]


def _small_video(levels: tuple[int, ...]) -> ToyUNet:
    torch.manual_seed(0)
    cfg = UNetConfig(
        kind="video",
        frames=16,
        height=8,
        width=8,
        channels=(8, 16),
        temporal_attention_levels=levels,
    )
    return ToyUNet(cfg).eval()


def test_grown_video_net_starts_as_the_smaller_one():
    # Temporal attention added to a trained net (init-from) is zero-initialised: same outputs.
    small, grown = _small_video(()), _small_video((0, 1))
    for p in small.parameters():  # a "trained" net: no zero-initialised layers left
        p.data.normal_(0.0, 0.1)
    missing = load_grown(grown, small.state_dict())
    assert missing and all(".attn." in k for k in missing)
    x = torch.randn(2, 16, 3, 8, 8)
    emb = small.embed_tokens(torch.tensor([[0, 1, 2], [1, 2, 3]]))
    args = (x, torch.tensor([100, 700]), emb, None, torch.tensor([4.0, 12.0]))
    with torch.no_grad():
        torch.testing.assert_close(grown(*args), small(*args))
        for p in grown.parameters():  # and the new layers do act once trained
            p.data.add_(0.05 * torch.randn_like(p))
        assert (grown(*args) - small(*args)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no place"):
        load_grown(small, grown.state_dict())


def test_diffusion_classifier_bookkeeping():
    # A video net that ignores the motion token scores all four tokens alike, so the argmin
    # picks the first class (static) for every clip: static right, moving clips wrong.
    net = _small_video(())
    net.motion_emb.weight.data.zero_()
    cfg = TrainConfig(device="cpu", supersample=1, classifier_clips=12)
    rep = diffusion_classifier(net, cfg, times=(300,), draws=1)
    conf = torch.tensor(rep["confusion_true_by_pred"])
    assert conf.sum() == 12 and conf[:, 1:].sum() == 0
    assert rep["acc"] == pytest.approx(float(conf[0, 0]) / 12)
    assert rep["acc_static"] == 1.0 and rep["acc_moving_seen_pairs"] == 0.0
    assert rep["acc_moving_by_shape"] and set(rep["acc_moving_by_shape"].values()) == {0.0}
