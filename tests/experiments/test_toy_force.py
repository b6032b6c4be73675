"""experiments/toy_force.py: the force −dL/ds along an analytic motion, checked against finite
differences (regularisers) and against the chain rule through the rendered frames (teachers)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ayg.config import apply_overrides, preset
from ayg.gaussians import GaussianCloud
from ayg.teachers.toy import random_toy_teachers
from experiments import toy_force
from tools.toyworld import scene


def _probe(prompt: str, motion: str, n: int = 300, overrides=(), split=False):
    cfg = apply_overrides(preset("tiny"), ["stage2.batch=1", "stage2.knn=6", *overrides]).stage2
    cloud = GaussianCloud.init_sphere(
        n=n, radius=0.4, sh_degree=1, init_opacity=0.5, generator=torch.Generator().manual_seed(0)
    ).detached()
    teachers = random_toy_teachers(seed=0)
    return toy_force.ForceProbe(
        cloud, prompt, cfg, teachers, toy_force.parse_motion(motion, prompt), split
    )


def test_motion_positions_at_amplitude_one_is_the_scene_motion():
    pts = torch.randn(50, 3, generator=torch.Generator().manual_seed(1)) * 0.3
    tau = torch.linspace(0, 1, 5)
    one = torch.tensor(1.0)
    for motion in ("spinning", "swaying", "nodding"):
        spec = toy_force.parse_motion("true", f"a red cone {motion}")
        got = toy_force.motion_positions(pts, tau, spec, one)
        want = torch.stack([scene.deform(pts, motion, float(t)) for t in tau])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    still = toy_force.motion_positions(pts, tau, ("bend", 0, 2.0), torch.tensor(0.0))
    torch.testing.assert_close(still, pts[None].expand(5, -1, -1))


def test_parse_motion_rejects_bad_specs():
    assert toy_force.parse_motion("bend:1:2", "a red cube") == ("bend", 1, 2.0)
    for bad in ("bend:2:1", "bend:x:1", "wobble"):
        with pytest.raises(ValueError, match="bend:AXIS:CYCLES"):
            toy_force.parse_motion(bad, "a red cube swaying")
    with pytest.raises(ValueError, match="names no motion"):
        toy_force.parse_motion("true", "a red cube")


def test_regulariser_forces_match_finite_differences():
    probe = _probe("a red cube spinning", "true")
    d = probe.draw(torch.Generator().manual_seed(3))
    s, h = 0.4, 1e-3
    force = probe.force(d, s)
    for name in ("rig", "jsd"):
        up = probe.regulariser_losses(d, torch.tensor(s + h, dtype=torch.float64))[name]
        down = probe.regulariser_losses(d, torch.tensor(s - h, dtype=torch.float64))[name]
        fd = -(float(up) - float(down)) / (2 * h)
        assert fd != 0.0
        assert math.isclose(force[name], fd, rel_tol=2e-2), (name, force[name], fd)
    # no motion, no pull: both regularisers are at their minimum at s = 0
    at_rest = probe.force(d, 0.0)
    assert abs(at_rest["rig"]) < 1e-4 and abs(at_rest["jsd"]) < 1e-4


def test_teacher_forces_follow_the_chain_rule_through_the_frames():
    """Each teacher term's force is −(∂L/∂frames)·(∂frames/∂s), with ∂L/∂frames taken on a
    detached copy of the frames (so the terms do not leak into each other) and the product by
    a separate backward pass. Finite differences of the renders are no check here: the
    rasterizer's α < 1/255 cut makes them jump by ~1/255 per pixel as the Gaussians move."""
    probe = _probe("a red cube swaying", "bend:1:1")
    d = probe.draw(torch.Generator().manual_seed(5))
    s = 0.6
    force = probe.force(d, s)
    frames = probe.frames(d, torch.tensor(s)).detach().requires_grad_(True)
    losses = probe.teacher_losses(d, frames)
    assert set(losses) == {"vid", "im"}
    for name, loss in losses.items():
        (g,) = torch.autograd.grad(loss, frames)
        st = torch.tensor(s, requires_grad=True)
        (chain,) = torch.autograd.grad((probe.frames(d, st) * g).sum(), st)
        assert float(chain) != 0.0
        assert math.isclose(force[name], -float(chain), rel_tol=1e-4), (name, force[name], chain)


def test_measure_uses_the_same_draws_for_every_amplitude():
    probe = _probe("a red cube nodding", "true")
    res = toy_force.measure(probe, [0.0, 0.5], samples=2, seed=0)
    assert set(res) == {0.0, 0.5}
    for row in res.values():
        assert set(row) == {"vid", "im", "rig", "jsd", "total"}
        assert math.isclose(row["total"][0], sum(row[n][0] for n in ("vid", "im", "rig", "jsd")))
    again = toy_force.measure(probe, [0.5], samples=2, seed=0)
    assert again[0.5]["vid"] == res[0.5]["vid"]


def test_split_negative_parts_add_up_and_scale_with_the_weight():
    """vid.cls + vid.neg is the video force; vid.cls is the force with ω_neg = 0, and the force
    at another ω' is vid.cls + (ω'/ω_neg)·vid.neg (three probes on the same draw)."""

    def probe_at(weight: float, split: bool):
        overrides = [f"stage2.omega_neg={weight}"]
        return _probe("a red cube swaying", "bend:1:1", overrides=overrides, split=split)

    split = probe_at(0.8, True)
    d = split.draw(torch.Generator().manual_seed(5))
    f = split.force(d, 0.5)
    assert abs(f["vid.neg"]) > 0.01 * abs(f["vid"])
    assert math.isclose(f["vid.cls"] + f["vid.neg"], f["vid"], rel_tol=1e-4, abs_tol=1e-7)
    f0 = probe_at(0.0, True).force(d, 0.5)
    assert "vid.cls" not in f0  # nothing to split without a negative prompt
    assert math.isclose(f0["vid"], f["vid.cls"], rel_tol=1e-3, abs_tol=1e-6)
    f3 = probe_at(0.3, False).force(d, 0.5)
    want = f["vid.cls"] + 0.3 / 0.8 * f["vid.neg"]
    assert math.isclose(f3["vid"], want, rel_tol=1e-3, abs_tol=1e-6)
    # the table's total counts the video term once
    row = toy_force.measure(split, [0.5], samples=1, seed=5)[0.5]
    parts = ("vid", "im", "rig", "jsd")
    assert math.isclose(row["total"][0], sum(row[n][0] for n in parts), rel_tol=1e-6)


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--motion", "wobble"], "bend:AXIS:CYCLES"),
        (["--amplitudes", "a,b"], "--amplitudes takes numbers"),
        (["--set", "stage2.nope=1"], "unknown config field"),
        ([], "no such file"),
    ],
)
def test_bad_command_lines_end_in_one_line(tmp_path, extra, says):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]  # python -m finds experiments/ from here
    cmd = [sys.executable, "-m", "experiments.toy_force", "--asset", str(tmp_path / "none.ayg")]
    res = subprocess.run(
        [*cmd, "--prompt", "a red cube swaying", *extra], capture_output=True, text=True, cwd=root
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and says in res.stderr.strip().splitlines()[-1]
