"""benchmarks/step.py end to end on tiny random teachers on the CPU: its stage-2 loop and
components take clips of the video teacher's own frame count (16 for the UNet3D, 4k + 1 for
Wan) and the JSON it writes holds the figures its report is built from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("video,frames,net", [("wan", 5, "transformer"), ("zeroscope", 16, "UNet")])
def test_stage2_step_benchmark_on_tiny_teachers(tmp_path, video, frames, net):
    out = tmp_path / "step.json"
    argv = [sys.executable, str(ROOT / "benchmarks" / "step.py"), "--tiny", "--stage", "2"]
    argv += ["--video", video, "--warmup", "1", "--iters", "1", "--reps", "1"]
    argv += ["--skip", "lowvram", "--json", str(out), "--commit", "test"]
    argv += ["--profile", str(tmp_path / "ops.txt")]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["video_teacher"] == video and res["commit"] == "test"
    assert res["complete"] is True  # the partial writes along the way end in the full report
    assert set(res["components"]["2"]) == {"naive", "paper"}
    # "paper+shared": the paper step with one encoder pass for both teachers (UNet3D teachers)
    shared = {"paper+shared"} if video == "zeroscope" else set()
    assert set(res["stage2"]) == {"naive", "paper"} | shared
    assert ("shared_encoder_stage2_step_s" in res) == (video == "zeroscope")
    for figs in res["stage2"].values():
        assert len(figs["steps_s"]) == 2 and figs["step_s"] > 0  # warmup + timed
    names = [c["component"] for c in res["stage2_components"]]
    assert f"video {net}, 3 CFG × 2 clips of {frames}, no grad" in names
    assert f"video VAE encoder, {2 * frames} frames, fwd+bwd" in names
    prof = res["stage2_profile"]  # one more paper step under torch.profiler, its ops' table
    assert prof["step_ms"] > 0 and prof["device_busy_ms"] is None  # no device time on the CPU
    assert "Self CPU" in (tmp_path / "ops.txt").read_text()
    assert ("encoder_modes" in res) == (video == "zeroscope")  # encoder_backward: UNet teachers


def test_device_busy_time_counts_each_kernel_once(monkeypatch):
    """The profiler puts the ProfilerStep and record_function ranges on the device timeline too,
    spanning the kernels inside them; the busy time is the kernels' alone."""
    from types import SimpleNamespace as Event

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import step

    cpu, cuda = "cpu", "cuda"
    events = [
        Event(key="ProfilerStep*", device_type=cuda, is_user_annotation=False, t=1740e3),
        Event(key="stage2.video", device_type=cuda, is_user_annotation=True, t=900e3),
        Event(key="aten::conv2d", device_type=cpu, is_user_annotation=False, t=700e3),
        Event(key="sm90_xmma_fprop", device_type=cuda, is_user_annotation=False, t=1000e3),
        Event(key="elementwise_kernel", device_type=cuda, is_user_annotation=False, t=712e3),
    ]
    assert step.kernel_time_ms(events, "t", cuda) == 1712.0


def test_projection_counts_each_loops_one_time_costs(monkeypatch):
    """Per loop (stage 1, 3D fine-tuning, stage 2, 4D fine-tuning): its first step beyond the
    median, plus the paper components' first calls beyond theirs (the compilation the
    components' phase paid before the loops ran)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import step

    from ayg.config import FinetuneConfig, RunConfig

    res = {
        "stage1_step_s": 0.1,
        "stage2_step_s": 1.0,
        "stage1": {"paper": {"first_step_s": 0.6}},
        "stage2": {"paper": {"first_step_s": 3.0}},
        "components": {
            "1": {"paper": {"unet": {"ms": 10.0, "first_ms": 40_010.0}, "enc": {"ms": 5.0}}},
            "2": {
                "paper": {"unet": {"ms": 400.0, "first_ms": 100_400.0}},
                "naive": {"unet": {"ms": 600.0, "first_ms": 9e9}},  # not the paper runtime's
            },
        },
    }
    step.project(res)
    cfg, ft = RunConfig(), FinetuneConfig()
    over1, over2 = 0.5 + 40.0, 2.0 + 100.0
    total = (cfg.stage1.steps + ft.steps_3d) * 0.1 + (cfg.stage2.steps + ft.steps_4d) * 1.0
    total += 2 * over1 + 2 * over2
    assert res["paper_pipeline_projected_min"] * 60 == pytest.approx(total)
    p = res["projection"]
    assert p["stage1_components_first_calls_s"] == pytest.approx(40.0)
    assert p["stage2_components_first_calls_s"] == pytest.approx(100.0)
    assert p["stage1_overhead_s"] == pytest.approx(over1)
