"""benchmarks/batch.py, benchmarks/viewer_fps.py --no-browser and benchmarks/overlap.py --tiny,
run small: their figures are recorded in the JSON they write (no figure is checked, only that it was measured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_batch_benchmark_writes_a_row_per_configuration(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "batch.json"
    args = ["cpu", "--workers", "1", "--prompts", "1", "--preset", "tiny"]
    res = run("batch.py", *args, "--out", str(tmp_path / "runs"), "--json", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["config"] == "cpu-workers1-n1" and row["jobs"] == 1
    assert row["jobs_per_hour"] > 0 and row["resumed_attempts"] == 0
    assert row["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert "cpu-workers1-n1" in res.stdout


def test_batch_rows_merge_by_configuration(tmp_path, monkeypatch):
    """A later call's row replaces the same configuration's and keeps the others; GPU rows
    get their scaling efficiency against one GPU at the same share."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import batch

    path = tmp_path / "rows.json"
    old = [
        {"config": "gpu1-share0.5-n4", "jobs_per_hour": 10.0},
        {"config": "gpu2-share0.5-n4", "jobs_per_hour": 15.0},
        {"config": "cpu-workers1-n2", "jobs_per_hour": 3.0},
    ]
    path.write_text(json.dumps({"rows": old}))
    rows = batch.merged([{"config": "gpu1-share0.5-n4", "jobs_per_hour": 20.0}], path)
    by = {r["config"]: r for r in rows}
    assert len(rows) == 3 and by["gpu1-share0.5-n4"]["jobs_per_hour"] == 20.0
    assert by["gpu2-share0.5-n4"]["scaling_efficiency"] == pytest.approx(15.0 / (2 * 20.0))
    assert by["gpu1-share0.5-n4"]["scaling_efficiency"] == 1.0
    assert by["cpu-workers1-n2"]["scaling_efficiency"] is None


def test_viewer_fps_without_a_browser(tmp_path):
    out = tmp_path / "viewer.json"
    args = ["--no-browser", "--gaussians", "64", "--seconds", "0.3", "--resolution", "64"]
    res = run("viewer_fps.py", *args, "--json", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["browser"] is None and report["device"] == "cpu"
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {"splats", "server"}
    for r in rows.values():
        assert r["gaussians"] == 64 and r["calls"] >= 1 and r["server_fps"] > 0
    assert (rows["server"]["width"], rows["server"]["height"]) == (64, 48)  # 800×600's aspect


def test_overlap_benchmark_times_each_pair_both_ways(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "overlap.json"
    res = run("overlap.py", "--tiny", "--reps", "1", "--json", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["stage"], r["calls"]) for r in rows] == [
        ("stage 1", "UNets"),
        ("stage 1", "encoders"),
        ("stage 2", "UNets"),
        ("stage 2", "encoders"),
    ]
    for r in rows:
        assert min(r["a_ms"], r["b_ms"], r["sequential_ms"], r["overlapped_ms"]) > 0
        assert r["saved_ms"] == pytest.approx(r["sequential_ms"] - r["overlapped_ms"])
    assert "MVDream" in rows[0]["a"] and "video" in rows[2]["a"] and "SD" in rows[3]["b"]


def test_encoders_benchmark_times_each_encoder_both_layouts(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "encoders.json"
    args = ["--tiny", "--reps", "1", "--rounds", "1", "--json", str(out)]
    res = run("encoders.py", *args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["encoder"] for r in rows] == [
        "stage 2: video",
        "stage 2: SD",
        "stage 1: MVDream",
        "stage 1: SD",
    ]
    assert [r["frames"] for r in rows] == [32, 8, 4, 4]  # the tiny step's sizes
    assert all(r["nchw_ms"] > 0 and r["nhwc_ms"] > 0 for r in rows)
