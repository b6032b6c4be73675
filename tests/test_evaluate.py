"""Metrics of ayg eval on synthetic assets with fake classifiers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ayg.evaluate import (
    Classifiers,
    drift,
    evaluate_asset,
    evaluate_paths,
    format_report,
    motion_amount,
    object_radius,
)
from ayg.toyworld.vocab import COLOUR_RGB, COLOURS, MOTION_CLASSES, SHAPES, parse_prompt
from tools.toyworld import scene


class FakeAsset:
    """Duck-typed asset: a few points moved like the toy object, rendered by the analytic toy
    renderer. ``velocity`` adds a uniform translation of the centres (not of the renders)."""

    def __init__(self, prompt: str, n: int = 64, velocity=(0.0, 0.0, 0.0), duration: float = 1.0):
        g = torch.Generator().manual_seed(0)
        self.rest = (torch.rand(n, 3, generator=g) - 0.5) * 0.6  # (N, 3)
        self.toy = parse_prompt(prompt)
        self.prompts = [prompt]
        self.duration = duration
        self.velocity = torch.tensor(velocity)
        self.rendered_times: list[torch.Tensor] = []

    def positions(self, g) -> torch.Tensor:
        g = torch.as_tensor(g, dtype=torch.float32)
        moved = scene.deform(self.rest.expand(len(g), -1, -1), self.toy.motion, g)  # (T, N, 3)
        return moved + g[:, None, None] * self.velocity

    def render(self, cameras, times, background=None, backend="auto"):
        self.rendered_times.append(times)
        out = scene.render(self.toy, cameras, times, background)
        return SimpleNamespace(rgb=out.rgb, alpha=out.alpha)


# Fewer motion clips than the default protocol keeps the tests fast on a small CPU.
FAST = {"motion_azimuths": (45.0, 135.0, 225.0)}


def _one_hot(index: int, n: int, batch: int) -> torch.Tensor:
    logits = torch.full((batch, n), -10.0)
    logits[:, index] = 10.0
    return logits


class OracleClassifiers:
    """Perfect fakes: colour from the pixels (chroma nearest to the vocabulary's colours),
    shape from the known answer, motion = the known answer when the frames change, else
    static."""

    appearance_res = 24
    motion_res = (12, 16)

    def __init__(self, prompt: str, shape: str | None = None):
        self.toy = parse_prompt(prompt)
        self.shape = shape or self.toy.shape

    def appearance(self, images):
        B = images.shape[0]
        assert images.shape[1:] == (3, 24, 24)
        pix = images.permute(0, 2, 3, 1).reshape(B, -1, 3)
        sat = (pix.amax(-1) - pix.amin(-1)) > 0.15  # object pixels, not black / white
        mean = (pix * sat[..., None]).sum(1) / sat.sum(1, keepdim=True).clamp(min=1)  # (B, 3)
        chroma = mean - mean.mean(-1, keepdim=True)
        ref = torch.tensor([COLOUR_RGB[c] for c in COLOURS])
        ref = ref - ref.mean(-1, keepdim=True)
        colour_logits = (
            100
            * torch.nn.functional.normalize(chroma, dim=-1)
            @ torch.nn.functional.normalize(ref, dim=-1).T
        )
        return colour_logits, _one_hot(SHAPES.index(self.shape), 4, B)

    def motion(self, frames, fps):
        assert frames.shape[1:] == (16, 3, 12, 16) and torch.equal(fps, torch.full_like(fps, 4.0))
        moving = (frames - frames[:, :1]).abs().amax(dim=(1, 2, 3, 4)) > 0.2  # (B,)
        logits = torch.stack([_one_hot(self.toy.motion_class, 4, 1)[0], _one_hot(0, 4, 1)[0]])
        return logits[(~moving).long()]


def test_geometric_metrics_closed_form():
    pos0 = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    assert object_radius(pos0) == 1.0
    still = pos0.expand(5, 2, 3)
    assert motion_amount(still, 1.0) == 0.0 and drift(still, 1.0) == (0.0, 0.0)
    shifted = torch.stack([pos0, pos0 + torch.tensor([0.3, 0.4, 0.0])])  # (2, 2, 3)
    assert motion_amount(shifted, 1.0) == pytest.approx(0.5)
    assert drift(shifted, 2.0) == pytest.approx((0.25, 0.0))
    scaled = torch.stack([pos0, 2 * pos0])
    assert drift(scaled, 1.0)[1] == pytest.approx(3.0)  # trace of the covariance ×4


def test_static_asset_has_no_motion_and_no_drift():
    asset = FakeAsset("a red ball")
    report = evaluate_asset(asset, classifiers=None)
    assert report["motion_amount"] == 0.0 and report["drift"] == 0.0
    assert report["appearance_accuracy"] is None and report["motion_accuracy"] is None


def test_translated_asset_drifts():
    asset = FakeAsset("a red ball", velocity=(0.2, 0.0, 0.0))
    report = evaluate_asset(asset)
    radius = object_radius(asset.positions(torch.zeros(1))[0])
    assert report["drift_mean"] == pytest.approx(0.2 / radius, rel=1e-4)
    assert report["drift_variance"] == pytest.approx(0.0, abs=1e-5)
    assert report["drift"] > 0 and report["motion_amount"] > 0


def test_moving_asset_motion_amount_and_spin_keeps_the_moments():
    asset = FakeAsset("a red ball spinning")
    report = evaluate_asset(asset)
    assert report["motion_amount"] > 0.05
    # a rotation about z moves the mean only by the rotation of ν_0 and keeps tr Γ
    assert report["drift_variance"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("prompt", ["a red ball spinning", "a yellow cone nodding", "a blue ring"])
def test_perfect_classifiers_give_accuracy_one(prompt):
    asset = FakeAsset(prompt)
    clf = OracleClassifiers(prompt)
    assert isinstance(clf, Classifiers)
    report = evaluate_asset(asset, prompt, clf, torch.Generator().manual_seed(0), **FAST)
    assert report["appearance_accuracy"] == 1.0 and report["appearance_accuracy_tau0"] == 1.0
    assert report["appearance_view_accuracy"] == 1.0
    assert report["motion_accuracy"] == 1.0
    # the pixel-change fake may miss a nod seen exactly from the front or back
    assert report["motion_clip_accuracy"] >= 0.5
    assert report["view_consistency"] == pytest.approx(1.0, abs=1e-3)
    assert len(report["appearance_views"]) == 20
    times = asset.rendered_times
    assert torch.equal(times[0], torch.zeros(20))  # F.1 at τ = 0, then 20 random times
    assert times[1].shape == (20,) and 0 <= times[1].min() and times[1].max() <= 1
    assert "appearance_accuracy" in format_report(report)


def test_wrong_and_inconsistent_classifiers():
    prompt = "a green cube swaying"
    wrong = OracleClassifiers(prompt, shape="cone")
    report = evaluate_asset(
        FakeAsset(prompt), prompt, wrong, torch.Generator().manual_seed(0), views=8, **FAST
    )
    assert report["appearance_accuracy"] == 0.0 and report["appearance_view_accuracy"] == 0.0
    assert report["appearance_majority"] == "green cone"

    # the prompt asks for motion, the asset stands still: motion accuracy 0
    still = FakeAsset("a green cube")
    report = evaluate_asset(
        still, prompt, OracleClassifiers(prompt), torch.Generator().manual_seed(0), views=4, **FAST
    )
    assert report["motion_accuracy"] == 0.0 and report["motion_majority"] == MOTION_CLASSES[0]

    class Flip(OracleClassifiers):  # every other view sees another shape
        def appearance(self, images):
            c, _ = super().appearance(images)
            idx = torch.arange(images.shape[0]) % 2
            return c, torch.stack([_one_hot(1, 4, 1)[0], _one_hot(2, 4, 1)[0]])[idx]

    report = evaluate_asset(
        FakeAsset(prompt), prompt, Flip(prompt), torch.Generator().manual_seed(0), views=8, **FAST
    )
    assert report["view_consistency"] == pytest.approx(0.5, abs=1e-3)
    assert report["view_agreement"] == 0.5


def test_real_model_prompt_has_no_classifier_metrics():
    asset = FakeAsset("a red ball nodding")
    report = evaluate_asset(asset, "a panda dancing", OracleClassifiers("a red ball"), **FAST)
    assert report["appearance_accuracy"] is None and report["motion_accuracy"] is None
    assert report["view_consistency"] is None
    assert report["motion_amount"] > 0 and math.isfinite(report["drift"])


def test_with_the_gaussian_rasterizer(tmp_path):
    asset_mod = pytest.importorskip("ayg.asset")
    gaussians = pytest.importorskip("ayg.gaussians")
    g = torch.Generator().manual_seed(0)
    n = 200
    means = torch.randn(n, 3, generator=g) * 0.2
    rgb = torch.tensor(COLOUR_RGB["blue"]).expand(n, 3)
    cloud = gaussians.GaussianCloud(
        means,
        torch.full((n, 1), math.log(0.05)),
        None,
        torch.full((n,), 3.0),
        (rgb - 0.5) / 0.28209479177387814,
        torch.zeros(n, 3, 3),  # SH degree 1 (zero view dependence)
        requires_grad=False,
    )
    asset = asset_mod.Asset.from_cloud(cloud, prompts="a blue ball")
    clf = OracleClassifiers("a blue ball")
    report = evaluate_asset(
        asset, classifiers=clf, generator=g, views=8, motion_azimuths=(0.0, 90.0)
    )
    assert report["motion_amount"] == 0.0 and report["drift"] == 0.0
    assert report["appearance_accuracy"] == 1.0 and report["motion_accuracy"] == 1.0

    # ``ayg eval`` path: from the file, the prompt read from the asset
    path = asset.save(tmp_path / "ball.ayg")
    (from_file,) = evaluate_paths([path], classifiers=clf, device="cpu", views=4, **FAST)
    assert from_file["prompt"] == "a blue ball" and from_file["drift"] == 0.0


# -- appearance over time (the 3D-vs-4D comparison) -----------------------------------------


class MorphAsset(FakeAsset):
    """Renders its own prompt before ``switch`` and another colour from then on."""

    def __init__(self, prompt: str, other: str, switch: float, duration: float = 1.0):
        super().__init__(prompt, duration=duration)
        self.other, self.switch = parse_prompt(other), switch

    def render(self, cameras, times, background=None, backend="auto"):
        self.rendered_times.append(times)
        a = scene.render(self.toy, cameras, times, background).rgb
        b = scene.render(self.other, cameras, times, background).rgb
        late = (times >= self.switch).view(-1, 1, 1, 1)
        return SimpleNamespace(rgb=torch.where(late, b, a), alpha=None)


def test_appearance_over_time_counts_the_times_whose_majority_is_right():
    from ayg.evaluate import appearance_over_time

    prompt = "a red cube nodding"
    oracle = OracleClassifiers(prompt)
    # 20 times on [0, 1]: 0, 1/19, ..., 1; the colour turns green from t = 0.5: 10 right
    asset = MorphAsset(prompt, "a green cube", switch=0.5)
    out = appearance_over_time(asset, prompt, oracle, times=20, views=4)
    assert out["accuracy"] == 0.5 and out["view_accuracy"] == 0.5
    assert out["majorities"][:10] == ["red cube"] * 10
    assert out["majorities"][10:] == ["green cube"] * 10
    assert out["times"][0] == 0.0 and out["times"][-1] == 1.0 and len(asset.rendered_times) == 20

    # a static asset (a stage-1 cloud) is rendered once and counts for every time
    still = FakeAsset("a red cube", duration=0.0)
    out = appearance_over_time(still, prompt, oracle, times=20, views=4)
    assert len(still.rendered_times) == 1 and out["accuracy"] == 1.0
    assert out["majorities"] == ["red cube"] * 20 and out["times"] == [0.0] * 20
    wrong = OracleClassifiers(prompt, shape="ring")
    assert appearance_over_time(still, prompt, wrong, times=5, views=4)["accuracy"] == 0.0
    with pytest.raises(ValueError, match="toy prompt"):
        appearance_over_time(still, "a panda", oracle)


@pytest.mark.slow
def test_keeps3d_scores_a_generated_run_and_skips_it_next_time(tmp_path, capsys):
    """A tiny-preset generate keeps stage1.ayg beside asset.ayg; keeps3d scores both with the
    shipped classifiers, appends one record and, run again, scores nothing new."""
    from ayg.cli import main as ayg_main
    from ayg.evaluation import keeps3d
    from ayg.evaluation.records import read_records

    run = tmp_path / "runs" / "a_red_cube_swaying"
    assert ayg_main(["generate", "a red cube swaying", "--preset", "tiny", "--out", str(run)]) == 0
    out = tmp_path / "keeps3d.jsonl"
    argv = [str(tmp_path / "runs"), "--out", str(out), "--times", "3"]
    assert keeps3d.main(argv) == 0
    (rec,) = read_records([out])
    assert rec["kind"] == "keeps3d" and rec["prompt"] == "a red cube swaying"
    assert rec["run"] == "a_red_cube_swaying" and rec["preset"] == "tiny" and rec["seed"] == 0
    m = rec["metrics"]
    assert m["stage1_accuracy"] in (0.0, 1.0) and len(m["final_majorities"]) == 3
    assert 0.0 <= m["final_accuracy"] <= 1.0 and len(rec["times"]) == 3
    assert keeps3d.main(argv) == 0
    assert len(read_records([out])) == 1
    assert "runs                          1" in capsys.readouterr().out
    assert keeps3d.main([str(tmp_path / "nothing-here"), "--out", str(out)]) == 2
