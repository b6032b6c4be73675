"""benchmarks/paper_e2e.py at tiny size: the teachers written in users' on-disk layouts load
through the real loaders, and ``ayg generate --preset paper`` runs on them through the CLI,
offline; the stage loops' end-of-phase records carry the figures the benchmark prints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def e2e(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import paper_e2e

    return paper_e2e


@pytest.mark.slow
def test_tiny_checkpoints_and_generate_through_the_cli(e2e, tmp_path, capsys):
    from safetensors import safe_open

    from ayg.asset import Asset
    from ayg.teachers.mvdream import MVDreamTeacher

    work, out = tmp_path / "work", tmp_path / "e2e.json"
    argv = ["--size", "tiny", "--workdir", str(work), "--json", str(out), "--steps", "1"]
    rc = e2e.main([*argv, "--phases", "generate", "--no-video", "--no-finetune"])
    report = json.loads(out.read_text())
    phases = {p["name"]: p for p in report["phases"]}
    assert rc == 0, [p["error"] for p in report["phases"] if p["status"] != "ok"]
    assert list(phases)[:4] == [
        "write SD 2.1 base (diffusers)",
        "write MVDream (.pt + diffusers port)",
        "write Zeroscope v2 576w (diffusers)",
        "write hub cache (SD 2.1 tokenizer)",
    ]

    # the layouts: ldm keys in the official file, safetensors in the folders, the hub cache
    models = work / "models"
    state = torch.load(models / "MVDream" / "sd-v2.1-base-4view.pt", weights_only=True)
    for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."):
        assert any(k.startswith(prefix) for k in state), prefix
    for folder in ("stable-diffusion-2-1-base", "zeroscope_v2_576w"):
        for part in ("unet", "vae"):
            path = models / folder / part / "diffusion_pytorch_model.safetensors"
            with safe_open(str(path), "pt") as f:
                assert len(list(f.keys())) > 10
        assert (models / folder / "model_index.json").is_file()
    refs = work / "hf" / "hub" / "models--stabilityai--stable-diffusion-2-1-base" / "refs" / "main"
    assert (refs.parent.parent / "snapshots" / refs.read_text() / "tokenizer").is_dir()

    # the port holds the official file's UNet, tensor for tensor (loaded as users would)
    official = MVDreamTeacher.from_pretrained(
        str(models / "MVDream" / "sd-v2.1-base-4view.pt"),
        tokenizer=MVDreamTeacher.from_pretrained(str(models / "mvdream-sd2.1-diffusers")).tokenizer,
    )
    port = MVDreamTeacher.from_pretrained(str(models / "mvdream-sd2.1-diffusers"))
    for k, v in official.unet.state_dict().items():
        assert torch.equal(port.unet.state_dict()[k], v), k

    # generate ran through the CLI on those files, offline, and its figures are on record
    gen = phases["generate"]
    assert gen["command"][:3] == ["ayg", "generate", e2e.PROMPT]
    assert [s["phase"] for s in gen["stages"]] == ["stage1", "stage2"]
    for s in gen["stages"]:
        assert s["steps"] == 1 and s["s_per_step"] > 0 and s["peak_gib"] is None  # CPU
    names = {Path(o["path"]).name for o in gen["outputs"]}
    assert {"asset.ayg", "stage1.ayg", "losses.jsonl", "config.json"} <= names
    asset = Asset.load(work / "runs" / "generate" / "asset.ayg")
    teachers = asset.header["config"]["teachers"]
    assert teachers["kind"] == "real" and teachers["multiview_model"].endswith(".pt")
    assert asset.objects[0].motion is not None
    printed = capsys.readouterr().out
    assert "  stage2" in printed and "runs/generate/asset.ayg" in printed


@pytest.mark.slow
def test_tiny_wan_folder_and_generate_through_the_cli(e2e, tmp_path):
    """--video-teacher wan: a Wan folder in WanPipeline's layout replaces Zeroscope's, and
    generate distils stage 2 from it (the family read from its model_index.json)."""
    from ayg.asset import Asset

    work, out = tmp_path / "work", tmp_path / "e2e.json"
    argv = ["--size", "tiny", "--workdir", str(work), "--json", str(out), "--steps", "1"]
    argv += ["--video-teacher", "wan", "--phases", "generate", "--no-video", "--no-finetune"]
    rc = e2e.main(argv)
    report = json.loads(out.read_text())
    phases = {p["name"]: p for p in report["phases"]}
    assert rc == 0, [p["error"] for p in report["phases"] if p["status"] != "ok"]
    assert report["video_teacher"] == "wan"
    assert "write Wan 2.1 T2V 1.3B (diffusers)" in phases
    assert not any("Zeroscope" in name for name in phases)
    wan = work / "models" / "Wan2.1-T2V-1.3B-Diffusers"
    index = json.loads((wan / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["transformer"][1] == (
        "WanTransformer3DModel"
    )
    gen = phases["generate"]
    assert f"teachers.video_model={wan}" in gen["command"]
    assert [s["phase"] for s in gen["stages"]] == ["stage1", "stage2"]
    asset = Asset.load(work / "runs" / "generate" / "asset.ayg")
    assert asset.header["config"]["teachers"]["video_model"] == str(wan)
    assert asset.objects[0].motion is not None


def test_arguments_are_checked(e2e, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    bad = [
        ["--workdir", str(tmp_path / "busy")],
        ["--workdir", str(tmp_path / "w"), "--phases", "generate,fly"],
        ["--workdir", str(tmp_path / "w"), "--steps", "0"],
    ]
    for argv in bad:
        with pytest.raises(SystemExit) as err:
            e2e.parse_args(argv)
        assert err.value.code == 2
    args = e2e.parse_args(["--size", "tiny", "--workdir", str(tmp_path / "w")])
    assert args.steps == 2 and args.device == "cpu" and args.video and "video" in args.phases


def test_real_size_builds_the_real_architectures(e2e):
    """Parameter counts on the meta device: SD 2.1's UNet is 865,910,724 (its model card's
    architecture); the text towers are OpenCLIP-H's penultimate 23 layers of width 1024."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from ayg.teachers.mvdream import MVDreamArch

    shapes = e2e.real_shapes()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**shapes.sd_unet)
        text = CLIPTextModel(shapes.text())
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert text.config.num_hidden_layers == 23 and text.config.hidden_size == 1024
    assert shapes.mvdream == MVDreamArch() and shapes.disk_dtype == torch.float16
    assert shapes.overrides == ()  # the paper preset as it is


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stage_records_carry_peak_memory_on_cuda(tmp_path):
    from ayg.config import apply_overrides, preset
    from ayg.pipeline import generate

    cfg = apply_overrides(preset("tiny"), ['device="cuda"', "output.preview=false"])
    generate("a red ball spinning", tmp_path / "run", cfg, progress=False)
    records = [
        json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()
    ]
    ends = {r["phase"]: r for r in records if "seconds" in r}
    assert set(ends) == {"stage1", "stage2"}
    for r in ends.values():
        # at least the tiny teachers' weights, at most the whole card
        assert 0 < r["peak_gib"] < torch.cuda.get_device_properties(0).total_memory / 2**30


def test_reuse_writes_only_what_is_missing(e2e, tmp_path, capsys):
    """A run split over calls: the second call reuses the models the first wrote; a phase
    whose input is missing is skipped, not run (and makes the call fail)."""
    work, out = tmp_path / "w", tmp_path / "e2e.json"
    argv = ["--workdir", str(work), "--json", str(out), "--phases", "animate"]
    assert e2e.main(argv) == 1
    first = {p["name"]: p for p in json.loads(out.read_text())["phases"]}
    assert first["animate"]["status"] == "skipped" and "frame_0000.ply" in first["animate"]["error"]
    shutil.rmtree(work / "models" / "zeroscope_v2_576w")
    e2e.main([*argv, "--reuse"])
    second = {p["name"]: p["status"] for p in json.loads(out.read_text())["phases"]}
    assert second == {
        "write SD 2.1 base (diffusers)": "reused",
        "write MVDream (.pt + diffusers port)": "reused",
        "write Zeroscope v2 576w (diffusers)": "ok",
        "write hub cache (SD 2.1 tokenizer)": "reused",
        "animate": "skipped",
    }
    with pytest.raises(SystemExit):  # models of another size
        e2e.parse_args(["--size", "real", "--workdir", str(work), "--reuse", "--device", "cpu"])
