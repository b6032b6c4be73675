"""Resuming runs (preset ``tiny``, CPU): a phase interrupted before its first checkpoint logs
each step once, a finished run trains nothing and rewrites only missing outputs, and a run
killed with SIGKILL in the middle of an atomic save leaves no temporary file once restarted
and still ends on the uninterrupted run's asset, bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ayg.config import apply_overrides, preset
from ayg.pipeline import generate

PROMPT = "a red cube swaying"
# one log record per step and a checkpoint every 2 steps: stage 1 saves after steps 2 and 4
OVERRIDES = [
    'device="cpu"',
    "stage1.steps=5",
    "stage2.steps=2",
    "output.log_every=1",
    "output.checkpoint_every=2",
]
# the same config as OVERRIDES, from the command line
CLI_ARGS = [
    "generate", PROMPT, "--preset", "tiny", "--device", "cpu", "--steps-3d", "5",
    "--steps-4d", "2", "--set", "output.log_every=1", "--set", "output.checkpoint_every=2",
    "--no-progress",
]  # fmt: skip


def cfg():
    return apply_overrides(preset("tiny"), OVERRIDES)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    generate(PROMPT, out, cfg(), progress=False)
    return out


def records(run: Path) -> list[tuple[str, int]]:
    return [
        (r["phase"], r["step"])
        for r in map(json.loads, (run / "losses.jsonl").read_text().splitlines())
    ]


def assert_same_asset(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a / "asset.ayg")), load_file(str(b / "asset.ayg"))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0, msg=k)
    with safe_open(str(a / "asset.ayg"), "pt") as fa, safe_open(str(b / "asset.ayg"), "pt") as fb:
        assert fa.metadata() == fb.metadata()


def test_resume_before_the_first_checkpoint_logs_each_step_once(ref, tmp_path):
    run = tmp_path / "run"

    def stop(phase, done):
        if phase == "stage1" and done == 1:  # one step logged, no checkpoint yet
            raise Interrupt

    with pytest.raises(Interrupt):
        generate(PROMPT, run, cfg(), progress=False, callback=stop)
    assert records(run) == [("stage1", 0)] and not (run / "checkpoint.pt").exists()
    generate(PROMPT, run, cfg(), resume=True, progress=False)
    got = records(run)
    assert len(got) == len(set(got)), got  # no step logged twice
    assert got == records(ref)
    assert_same_asset(ref, run)


def test_resume_of_a_finished_run_trains_nothing(ref, tmp_path, monkeypatch, capsys):
    import ayg.pipeline as pipeline
    from ayg.cli import main

    run = tmp_path / "run"
    shutil.copytree(ref, run)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    for name in ("build_teachers", "run_stage1", "run_stage2"):
        monkeypatch.setattr(pipeline, name, no_training)
    losses, asset = (run / "losses.jsonl").read_bytes(), (run / "asset.ayg").stat().st_mtime_ns
    assert main([*CLI_ARGS, "--out", str(run), "--resume"]) == 0
    assert "finished run; nothing to resume" in capsys.readouterr().out
    assert (run / "losses.jsonl").read_bytes() == losses  # no record appended
    assert (run / "asset.ayg").stat().st_mtime_ns == asset
    # killed after the asset but before the preview: only the preview is written again
    (run / "preview.mp4").unlink()
    assert main([*CLI_ARGS, "--out", str(run), "--resume"]) == 0
    assert (run / "preview.mp4").stat().st_size > 0
    assert (run / "asset.ayg").stat().st_mtime_ns == asset
    assert (run / "losses.jsonl").read_bytes() == losses
    # another prompt is not the same run
    other = [*CLI_ARGS[:1], "a red cube nodding", *CLI_ARGS[2:]]
    assert main([*other, "--out", str(run), "--resume"]) == 2
    assert "was started with prompt" in capsys.readouterr().err


KILL_DURING_SAVE = """
import os, signal, sys
import torch
from ayg.config import apply_overrides, preset
from ayg.pipeline import generate

real_save, calls = torch.save, []


def save(obj, f, *args, **kwargs):
    calls.append(f)
    if len(calls) == 2:  # the second checkpoint (step 4): half written, then a SIGKILL
        with open(f, "wb") as out:
            out.write(b"PK\\x03\\x04 half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.save = save
generate(sys.argv[1], sys.argv[2], apply_overrides(preset("tiny"), sys.argv[3:]), progress=False)
"""


def test_kill_during_a_save_then_resume_leaves_no_temporary_file(ref, tmp_path):
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, PROMPT, str(run), *OVERRIDES],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    left = [p.name for p in run.iterdir() if ".tmp-" in p.name]
    assert left and all(n.startswith(".checkpoint.pt.tmp-") for n in left), left
    assert (run / "checkpoint.pt").exists()  # the first checkpoint is intact
    generate(PROMPT, run, cfg(), resume=True, progress=False)
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]
    assert not (run / "checkpoint.pt").exists()
    assert_same_asset(ref, run)
    got = records(run)
    assert len(got) == len(set(got)) and got == records(ref)
