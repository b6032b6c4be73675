"""Bad input and faults, as a new user meets them: every case below ends in exit code 2 and one
line on stderr naming what was wrong, with no traceback and nothing written (every check runs
before the first write). The commands run in-process through ``ayg.cli.main``; a few run as
real subprocesses at the end to cover the entry point itself.

Faults that cannot be produced for real without root or special hardware are simulated at the
operating-system boundary: a read-only file system by making ``os.open`` / ``os.mkdir`` fail
with EROFS under one folder, a machine without CUDA by ``torch.cuda.is_available``, a missing
optional package by a ``None`` entry in ``sys.modules`` (Python's own "not importable" marker).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ayg.asset import Asset
from ayg.config import preset
from ayg.deformation import Motion
from ayg.examples import example_ply_path
from ayg.gaussians import GaussianCloud
from ayg.stages import new_segment


class _Payload:
    """Pickles to a call of os.mkdir: what a planted checkpoint would run if it were unpickled."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def small_asset() -> Asset:
    g = torch.Generator().manual_seed(0)
    cloud = GaussianCloud.init_sphere(n=64, sh_degree=1, generator=g)
    motion = Motion([new_segment(preset("tiny").stage2, "base", "a red ball", "cpu", seed=0)])
    return Asset.from_cloud(cloud.detached(), motion=motion, prompts=["a red ball"])


def _run_dir(root: Path, checkpoint: bytes | None = None) -> Path:
    """A run of ``generate "a red ball" --preset tiny`` interrupted in stage 1."""
    root.mkdir()
    job = {"command": "generate", "prompt": "a red ball"}
    (root / "config.json").write_text(json.dumps({"job": job, "config": preset("tiny").to_dict()}))
    if checkpoint is not None:
        (root / "checkpoint.pt").write_bytes(checkpoint)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    t = tmp_path_factory.mktemp("world")
    asset = small_asset()
    asset.save(t / "asset.ayg")
    tensors = load_file(str(t / "asset.ayg"))
    from safetensors import safe_open

    with safe_open(str(t / "asset.ayg"), "pt") as f:
        meta = f.metadata()
    bad = dict(tensors)
    key = "objects.0.gaussians.means"
    bad[key] = bad[key].clone()
    bad[key][3, 1] = float("nan")
    save_file(bad, str(t / "nan.ayg"), metadata=meta)
    (t / "file.txt").write_text("not an asset")
    (t / "d.png").mkdir()
    (t / "ro").mkdir()
    (t / "cams_object.json").write_text(json.dumps({"elevation": 10, "azimuth": 0}))
    (t / "cams_text.json").write_text(json.dumps([{"elevation": "high"}]))
    (t / "spec.json").write_text(json.dumps({"objects": [{"asset": "asset.ayg"}]}))
    _run_dir(t / "run_corrupt", b"PK\x03\x04 this is not a torch checkpoint")
    payload = t / "run_pickle.ran"
    pickled = t / "pickled.pt"
    torch.save({"phase": "stage1", "step": 2, "x": _Payload(str(payload))}, pickled)
    _run_dir(t / "run_pickle", pickled.read_bytes())
    pickled.unlink()
    return t


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
    }


# ---------------------------------------------------------------- simulated machine faults


def _read_only(monkeypatch, root: Path) -> None:
    """Every file or folder created under ``root`` fails as on a read-only mount."""
    real_open, real_mkdir = os.open, os.mkdir
    root_s = str(root)

    def under(path) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(root_s)

    def fake_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def _patch(name: str, monkeypatch, world: Path) -> None:
    if name == "ro":
        _read_only(monkeypatch, world / "ro")
    elif name == "no_cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    elif name.startswith("no_"):  # an optional package that is not installed
        monkeypatch.setitem(sys.modules, name[3:], None)
    elif name:
        raise AssertionError(name)


GEN = ["generate", "a red ball", "--preset", "tiny", "--no-progress", "--out", "{t}/out"]
ASSET = "{t}/asset.ayg"

# (id, argv, text the line must hold, simulated fault)
CASES = [
    # the resolved config, whole, before anything is written (generate, animate, extend, config)
    ("range_one_number", [*GEN, "--set", "stage1.elevation_range=[1]"], "stage1.elevation_range", ""),
    ("range_not_numbers", [*GEN, "--set", 'stage1.elevation_range=["a","b"]'], "2 numbers", ""),
    ("range_reversed", [*GEN, "--set", "stage2.distance_range=[3,1]"], "low <= high", ""),
    ("omega_ma_nan", [*GEN, "--set", "stage2.omega_ma=NaN"], "stage2.omega_ma", ""),
    ("omega_ma_negative", [*GEN, "--set", "stage2.omega_ma=-1"], ">= 0", ""),
    ("lr_infinite", [*GEN, "--set", "stage1.lr_rgb=Infinity"], "stage1.lr_rgb", ""),
    ("preview_frames_0", [*GEN, "--set", "output.preview_frames=0"], "output.preview_frames", ""),
    ("steps_set_0", [*GEN, "--set", "stage1.steps=0"], "'stage1.steps' (--steps-3d)", ""),
    ("steps_flag_0", [*GEN, "--steps-3d", "0"], "'stage1.steps' (--steps-3d)", ""),
    ("steps_too_many", [*GEN, "--steps-4d", "2000000"], "from 1 to 1000000", ""),
    ("fps_probs_sum", [*GEN, "--set", "stage2.fps_probs=[0.5,0.6,0.1]"], "sum to 1", ""),
    ("int_field_text", [*GEN, "--set", "teachers.grad_frames=abc"], "teachers.grad_frames", ""),
    ("unknown_field", [*GEN, "--set", "stage2.omega=3"], "unknown config field", ""),
    ("bad_int_flag", [*GEN, "--steps-3d", "abc"], "--steps-3d", ""),
    ("bad_device", [*GEN, "--device", "tpu"], "device", ""),
    ("toy_unknown_word", ["generate", "a blue cone dancing", "--preset", "tiny", "--out", "{t}/out"], "'dancing'", ""),
    ("toy_two_colours", ["generate", "a red blue ball", "--preset", "tiny", "--out", "{t}/out"], "two colours", ""),
    ("tensorboard_absent", [*GEN, "--set", "output.tensorboard=true"], 'pip install "ayg[tensorboard]"', "no_tensorboard"),
    ("paper_on_a_cpu_machine", ["generate", "a cat dancing", "--out", "{t}/out"], "--preset toy", "no_cuda"),
    ("paper_without_models_extra", ["generate", "a cat", "--preset", "paper", "--device", "cpu", "--out", "{t}/out"], 'pip install "ayg[models]"', "no_diffusers"),
    ("generate_read_only", [*GEN[:-1], "{t}/ro/run"], "Read-only file system", "ro"),
    ("checkpoint_corrupt", ["generate", "a red ball", "--preset", "tiny", "--out", "{t}/run_corrupt", "--resume"], "is corrupt", ""),
    ("checkpoint_pickled", ["generate", "a red ball", "--preset", "tiny", "--out", "{t}/run_pickle", "--resume"], "could run code", ""),
    ("animate_config", ["animate", str(example_ply_path()), "a red ball", "--preset", "tiny", "--out", "{t}/out", "--set", "stage2.omega_ma=NaN"], "stage2.omega_ma", ""),
    ("extend_config", ["extend", ASSET, "--preset", "tiny", "--out", "{t}/out", "--set", "output.preview_frames=0"], "output.preview_frames", ""),
    ("config_command", ["config", "--preset", "tiny", "--set", "stage1.elevation_range=[1]"], "stage1.elevation_range", ""),
    # render
    ("render_under_a_file", ["render", ASSET, "--out", "{t}/file.txt/x.png"], "is a file, not a directory", ""),
    ("render_onto_a_directory", ["render", ASSET, "--out", "{t}/d.png"], "is a directory", ""),
    ("render_huge", ["render", ASSET, "--out", "{t}/x.png", "--width", "100000", "--height", "100000"], "--width", ""),
    ("render_nan_distance", ["render", ASSET, "--out", "{t}/x.png", "--distance", "nan"], "--distance", ""),
    ("render_odd_video", ["render", ASSET, "--out", "{t}/x.mp4", "--width", "33"], "even", ""),
    ("render_video_too_large", ["render", ASSET, "--out", "{t}/x.mp4", "--frames", "10000", "--width", "4096", "--height", "4096"], "pixels", ""),
    ("render_nan_asset", ["render", "{t}/nan.ayg", "--out", "{t}/x.png"], "NaN", ""),
    ("render_read_only", ["render", ASSET, "--out", "{t}/ro/x.png", "--width", "16", "--height", "16"], "Read-only file system", "ro"),
    # compose
    ("compose_under_a_file", ["compose", "{t}/spec.json", "--out", "{t}/file.txt/s.ayg"], "is a file, not a directory", ""),
    ("compose_read_only", ["compose", "{t}/spec.json", "--out", "{t}/ro/s.ayg"], "Read-only file system", "ro"),
    # export
    ("export_video_under_a_file", ["export", ASSET, "--format", "video", "--out", "{t}/file.txt/v.mp4"], "is a file, not a directory", ""),
    ("export_tracks_under_a_file", ["export", ASSET, "--format", "tracks", "--out", "{t}/file.txt/t.npz"], "is a file, not a directory", ""),
    ("export_frames_onto_a_file", ["export", ASSET, "--format", "ply-frames", "--out", "{t}/file.txt"], "is a file, not a directory", ""),
    ("export_cameras_object", ["export", ASSET, "--format", "tracks", "--out", "{t}/t.npz", "--cameras", "{t}/cams_object.json"], "--cameras", ""),
    ("export_cameras_text", ["export", ASSET, "--format", "tracks", "--out", "{t}/t.npz", "--cameras", "{t}/cams_text.json"], "finite numbers", ""),
    ("export_times_text", ["export", ASSET, "--format", "tracks", "--out", "{t}/t.npz", "--times", "0,abc"], "--times", ""),
    ("export_video_read_only", ["export", ASSET, "--format", "video", "--out", "{t}/ro/v.mp4", "--frames", "2", "--width", "16", "--height", "16"], "Read-only file system", "ro"),
    ("export_tracks_read_only", ["export", ASSET, "--format", "tracks", "--out", "{t}/ro/t.npz", "--frames", "2", "--views", "0"], "Read-only file system", "ro"),
    ("export_frames_read_only", ["export", ASSET, "--format", "ply-frames", "--out", "{t}/ro/frames", "--frames", "2"], "Read-only file system", "ro"),
    # view
    ("view_without_viser", ["view", ASSET], 'pip install "ayg[viewer]"', "no_viser"),
]  # fmt: skip


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    from ayg.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv,needle,fault", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(world, monkeypatch, capsys, argv, needle, fault):
    argv = [a.replace("{t}", str(world)) for a in argv]
    before = _tree(world)
    _patch(fault, monkeypatch, world)
    rc, _, err = run_main(argv, capsys)
    monkeypatch.undo()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("ayg: error: ") and needle in lines[0], lines[0]
    assert ".tmp-" not in lines[0]  # the target is named, never a temporary file
    assert _tree(world) == before  # nothing written, nothing left behind
    assert not (world / "run_pickle.ran").exists()  # the planted payload never ran


def test_same_rule_for_the_steps_flag_and_the_config_field(world, capsys):
    """``--steps-3d N`` is ``--set stage1.steps=N``: the same values pass and fail alike."""
    for n in ("0", "-3", "1000001"):
        a = run_main([*GEN[:-1], f"{world}/x", "--steps-3d", n], capsys)
        b = run_main([*GEN[:-1], f"{world}/x", "--set", f"stage1.steps={n}"], capsys)
        assert a[0] == b[0] == 2 and a[2] == b[2], (a, b)
    cfg = run_main(["config", "--preset", "tiny", "--set", "stage1.steps=1000000"], capsys)
    assert cfg[0] == 0 and json.loads(cfg[1])["stage1"]["steps"] == 1_000_000


def test_float16_asset_is_read_as_float32(world, tmp_path):
    """An .ayg whose tensors another writer stored as float16 loads as float32 and renders."""
    from safetensors import safe_open

    from ayg.cameras import orbit_cameras

    src = world / "asset.ayg"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    half = {k: v.half() for k, v in load_file(str(src)).items()}
    save_file(half, str(tmp_path / "half.ayg"), metadata=meta)
    a, b = Asset.load(tmp_path / "half.ayg"), Asset.load(src)
    assert a.objects[0].cloud.means.dtype == torch.float32
    cams = orbit_cameras(2, width=24, height=24)
    with torch.no_grad():
        ra, rb = a.render(cams, [0.0, 0.7]).rgb, b.render(cams, [0.0, 0.7]).rgb
    assert ra.dtype == torch.float32 and torch.isfinite(ra).all()
    assert (ra - rb).abs().max() < 0.05  # float16 rounding of the same asset


def test_integer_tensors_in_an_asset_are_refused(world, tmp_path):
    from safetensors import safe_open

    from ayg.asset import AssetError

    src = world / "asset.ayg"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    tensors["objects.0.gaussians.sh_dc"] = tensors["objects.0.gaussians.sh_dc"].long()
    save_file(tensors, str(tmp_path / "int.ayg"), metadata=meta)
    with pytest.raises(AssetError, match="not floating-point"):
        Asset.load(tmp_path / "int.ayg")


def test_version_and_config_listing(capsys):
    import ayg

    rc, out, _ = run_main(["--version"], capsys)
    assert rc == 0 and out.strip() == f"ayg {ayg.__version__}"
    argv = ["config", "--preset", "toy", "--set", "stage2.omega_ma=6"]
    rc, out, _ = run_main([*argv, "--set", "teachers.cache_dir=/c"], capsys)
    cfg = json.loads(out)
    assert rc == 0 and cfg["preset"] == "toy" and cfg["stage2"]["omega_ma"] == 6.0
    assert cfg["teachers"]["cache_dir"] == "/c" and cfg["teachers"]["image_revision"] is None
    # every --set field is listed: the paper preset's sections and their fields
    assert set(cfg) >= {"teachers", "stage1", "stage2", "finetune", "output", "seed"}
    rc, out, _ = run_main(["generate", "--help"], capsys)
    assert "ayg config --preset NAME" in " ".join(out.split())


def test_text_fields_keep_what_was_typed(capsys):
    """A revision that looks like a number stays the text the user typed."""
    rc, out, _ = run_main(
        ["config", "--preset", "paper", "--set", "teachers.video_revision=1234",
         "--set", "teachers.image_revision=1.10"],
        capsys,
    )  # fmt: skip
    t = json.loads(out)["teachers"]
    assert rc == 0 and t["video_revision"] == "1234" and t["image_revision"] == "1.10"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ayg.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_the_entry_point_prints_one_line(world, tmp_path):
    """Through the real entry point: a bad range, an argparse error and viser not importable
    (a package on the path that fails to import, as an absent one does)."""
    shim = tmp_path / "shim" / "viser"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'viser'\")\n")
    path = os.pathsep.join([str(tmp_path / "shim"), os.environ.get("PYTHONPATH", "")])
    cases = [
        (["config", "--preset", "tiny", "--set", "stage1.elevation_range=[1]"], {}, "range"),
        (["render", str(world / "asset.ayg"), "--out", "x.png", "--width", "a"], {}, "--width"),
        (["view", str(world / "asset.ayg")], {"PYTHONPATH": path}, "ayg[viewer]"),
    ]
    for argv, env, needle in cases:
        res = run_cli(*argv, env=env)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert needle in lines[0] and "Traceback" not in res.stderr, lines[0]
