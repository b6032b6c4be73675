"""The user-level jobs: generate (stage 1 → stage 2 → optional fine-tuning, C.9), animate a
static PLY (stage 2 only), extend / loop an asset (sec. 3.4, 4).

A run directory holds ``config.json`` (resolved), ``losses.jsonl``, ``checkpoint.pt`` while a
phase is under way, ``stage1.ayg`` once the static stage is done, then ``asset.ayg`` and
``preview.mp4``. Every file is written atomically; ``resume=True`` skips finished phases and
continues the current one from its checkpoint (a phase without a checkpoint yet restarts from
its first step; the hidden temporary files of a write that a kill cut short are removed). On a
finished run (``asset.ayg`` present) it trains nothing and writes only outputs that are missing.

Everything a job needs is checked before its directory is made: the whole config
(``config.validate``), that the teachers can run here, the prompt, the output directory and, on
resume, that the run was started by the same command, prompt and config.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from ayg.asset import Asset
from ayg.config import VIDEO_NEGATIVE_PROMPT, RunConfig, validate
from ayg.deformation import Motion
from ayg.gaussians import GaussianCloud, load_ply
from ayg.io_utils import remove_temp_files
from ayg.io_utils import write_text as atomic_write_text
from ayg.stages import (
    TENSORBOARD_INSTALL,
    LossLog,
    RunContext,
    StepCallback,
    new_segment,
    read_checkpoint,
    run_stage1,
    run_stage2,
    stage1_terms,
    stage2_samplers,
    stage2_terms,
)
from ayg.teachers import build_teachers, check_prompt, check_teachers_runnable

RUN_FILES = ("config.json", "checkpoint.pt", "stage1.ayg", "asset.ayg")
# every file a run writes into its directory (whose leftover temporary files a start clears)
WRITTEN_FILES = (*RUN_FILES, "losses.jsonl", "preview.mp4", "stage2.ayg", "finetune3d.ayg")


def resolve_device(name: str) -> torch.device:
    """The device "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device '{name}' was asked for but CUDA is not available; use --device cpu"
            )
        if ":" in name and int(name[5:]) >= torch.cuda.device_count():
            raise ValueError(
                f"device '{name}' does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s), cuda:0 and up"
            )
    return torch.device(name)


def _stage2_teachers(cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """The video teacher (for ``stage2.frames`` when that is set) and, unless stage 2 goes
    without it, the image teacher."""
    roles = ("video", "image") if cfg.stage2.use_image else ("video",)
    return build_teachers(
        cfg.teachers, device, roles, seed=cfg.seed, video_frames=cfg.stage2.frames
    )


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse a path that is a file, or a directory holding another run unless resuming.
    Touches nothing: the directory is made only once the teachers have loaded."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory '{out}' is a file; give a directory path")
    if out.is_dir() and not resume and any((out / f).exists() for f in RUN_FILES):
        raise ValueError(
            f"'{out}' already holds a run; pass --resume to continue it or choose another --out"
        )


def check_config(cfg: RunConfig) -> None:
    """The whole resolved config, before anything is written: every field (``validate``), the
    objects built from it (teacher terms, samplers), that its teachers can run here, and that
    TensorBoard is installed when asked for."""
    validate(cfg)
    stage1_terms(cfg.stage1)
    # the fields stage 2 leaves to its video teacher, provisionally (the teacher's own are
    # checked against the config once it is loaded, stages.stage2_defaults)
    s2 = cfg.stage2
    s2 = dataclasses.replace(
        s2,
        frames=s2.frames or 16,
        negative_prompt=VIDEO_NEGATIVE_PROMPT if s2.negative_prompt is None else s2.negative_prompt,
    )
    stage2_terms(s2, cfg.teachers.grad_frames)
    stage2_samplers(s2)
    check_teachers_runnable(cfg.teachers, cfg.device, cfg.preset)
    if cfg.output.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError(
                f"output.tensorboard=true needs TensorBoard: {TENSORBOARD_INSTALL} "
                "(losses.jsonl is written either way)"
            )


def is_finished(out: str | Path) -> bool:
    """Whether ``out`` holds a finished run (its asset was written)."""
    return (Path(out) / "asset.ayg").is_file()


def _prepare(out: Path, cfg: RunConfig, job: dict[str, Any], resume: bool) -> torch.device:
    """The checks every job makes before it writes anything, then clears the temporary files
    an earlier start of this run left when it was killed. Returns the device."""
    check_out_dir(out, resume)
    _check_resume(out, cfg, job, resume)
    device = resolve_device(cfg.device)
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        read_checkpoint(checkpoint)  # a corrupt one is refused before the teachers load
    remove_temp_files(out, WRITTEN_FILES)
    return device


def _start_run(out: Path, cfg: RunConfig, job: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, cfg, job)


def _context(
    cfg: RunConfig, out: Path, device: torch.device, progress: bool, callback
) -> RunContext:
    tb = out / "tensorboard" if cfg.output.tensorboard else None
    return RunContext(
        device=device,
        backend=cfg.backend,
        checkpoint_path=out / "checkpoint.pt",
        checkpoint_every=cfg.output.checkpoint_every,
        log=LossLog(out / "losses.jsonl", tensorboard_dir=tb),
        log_every=cfg.output.log_every,
        progress=progress,
        callback=callback,
    )


# what must match for a run to be resumed (paths may be spelled differently)
_JOB_KEYS = ("command", "prompt", "loop")


def _check_resume(out: Path, cfg: RunConfig, job: dict[str, Any], resume: bool) -> None:
    path = out / "config.json"
    if not (resume and path.exists()):
        return
    try:
        saved = json.loads(path.read_text())
        saved_job, saved_cfg = saved["job"], saved["config"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ValueError(
            f"{path} is damaged, so the run cannot be resumed; start over in a new --out"
        ) from None
    for key in _JOB_KEYS:
        if saved_job.get(key) != job.get(key):
            raise ValueError(
                f"'{out}' was started with {key} {saved_job.get(key)!r}, not {job.get(key)!r}; "
                "resume it with the same command or choose another --out"
            )
    if saved_cfg != json.loads(json.dumps(cfg.to_dict())):
        raise ValueError(
            f"'{out}' was started with another config; resume it with the same preset and overrides"
        )


def _write_config(out: Path, cfg: RunConfig, job: dict[str, Any]) -> None:
    atomic_write_text(
        out / "config.json",
        json.dumps({"job": job, "config": cfg.to_dict()}, indent=2, sort_keys=True),
    )


def _write_preview(asset: Asset, out: Path, cfg: RunConfig) -> None:
    from ayg.export import export_video

    o = cfg.output
    export_video(
        asset,
        out / "preview.mp4",
        frames=o.preview_frames,
        fps=o.preview_fps,
        width=o.preview_width,
        height=o.preview_height,
        backend=cfg.backend,
    )
    # what the preview is, beside the config that made it: its length and frame rate
    record = json.loads((out / "config.json").read_text())
    record["preview"] = {
        "file": "preview.mp4",
        "frames": o.preview_frames,
        "fps": o.preview_fps,
        "seconds": o.preview_frames / o.preview_fps,
        "width": o.preview_width,
        "height": o.preview_height,
    }
    atomic_write_text(out / "config.json", json.dumps(record, indent=2, sort_keys=True))


def _finished(out: Path, cfg: RunConfig) -> Asset:
    """A finished run on resume: nothing is trained; the outputs a kill during the closing
    writes left missing are written, and a checkpoint left behind is removed."""
    asset = Asset.load(out / "asset.ayg")
    if cfg.output.preview and not (out / "preview.mp4").exists():
        _write_preview(asset, out, cfg)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return asset


def _finish(asset: Asset, out: Path, cfg: RunConfig, ctx: RunContext) -> Asset:
    asset.save(out / "asset.ayg")
    if cfg.output.preview:
        _write_preview(asset, out, cfg)
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        ckpt.unlink()
    ctx.log.close()
    return asset


def generate(
    prompt: str,
    out: str | Path,
    cfg: RunConfig,
    resume: bool = False,
    progress: bool = True,
    callback: StepCallback | None = None,
) -> Asset:
    """Text → 4D asset: stage 1, stage 2, then the fine-tuning of C.9 when enabled."""
    check_config(cfg)
    check_prompt(cfg.teachers, prompt)
    out = Path(out)
    job = {"command": "generate", "prompt": prompt}
    device = _prepare(out, cfg, job, resume)
    if resume and is_finished(out):
        return _finished(out, cfg)
    stage1_path = out / "stage1.ayg"
    need_stage1 = not (resume and stage1_path.exists())
    # load the first teachers before anything is written: a missing model leaves no run behind
    teachers = (
        build_teachers(cfg.teachers, device, ("multiview", "image"), seed=cfg.seed)
        if need_stage1
        else None
    )
    _start_run(out, cfg, job)
    ctx = _context(cfg, out, device, progress, callback)

    def snapshot(cloud: GaussianCloud, motion: Motion | None = None) -> Asset:
        return Asset.from_cloud(cloud, motion=motion, prompts=[prompt], config=cfg.to_dict())

    if not need_stage1:
        cloud = Asset.load(stage1_path).objects[0].cloud.to(device)
    else:
        cloud = run_stage1(prompt, cfg.stage1, teachers, ctx, seed=cfg.seed)
        del teachers
        snapshot(cloud).save(stage1_path)

    teachers = _stage2_teachers(cfg, device)
    stage2_path = out / "stage2.ayg"  # kept only when fine-tuning follows
    if resume and stage2_path.exists():
        motion = Asset.load(stage2_path).objects[0].motion.to(device)
    else:
        motion = Motion([new_segment(cfg.stage2, "base", prompt, device, seed=cfg.seed)])
        motion = run_stage2(
            prompt,
            cfg.stage2,
            cloud,
            motion,
            teachers,
            ctx,
            seed=cfg.seed + 1,
            grad_frames=cfg.teachers.grad_frames,
        )
        if cfg.finetune.enabled:
            snapshot(cloud, motion).save(stage2_path)

    if cfg.finetune.enabled:
        ft = cfg.finetune
        s1 = dataclasses.replace(
            cfg.stage1,
            steps=ft.steps_3d,
            lr_scale=cfg.stage1.lr_scale * ft.lr_scale,
            width=ft.width,
            height=ft.height,
            max_gaussians=ft.max_gaussians,
            # the t-ranges are already annealed at the end of stage 1
            t_image_start=cfg.stage1.t_image_end,
            t_multiview_start=cfg.stage1.t_multiview_end,
        )
        ft3_path = out / "finetune3d.ayg"
        if resume and ft3_path.exists():
            cloud = Asset.load(ft3_path).objects[0].cloud.to(device)
        else:
            t3 = build_teachers(cfg.teachers, device, ("multiview", "image"), seed=cfg.seed)
            cloud = run_stage1(
                prompt, s1, t3, ctx, seed=cfg.seed + 2, cloud=cloud, phase="finetune3d"
            )
            del t3
            snapshot(cloud).save(ft3_path)
        s2 = dataclasses.replace(cfg.stage2, steps=ft.steps_4d, lr=cfg.stage2.lr * ft.lr_scale)
        motion = run_stage2(
            prompt,
            s2,
            cloud,
            motion,
            teachers,
            ctx,
            seed=cfg.seed + 3,
            grad_frames=cfg.teachers.grad_frames,
            phase="finetune4d",
        )

    return _finish(snapshot(cloud, motion), out, cfg, ctx)


def animate(
    ply: str | Path,
    prompt: str,
    out: str | Path,
    cfg: RunConfig,
    resume: bool = False,
    progress: bool = True,
    callback: StepCallback | None = None,
) -> Asset:
    """Stage 2 only, on a static 3DGS asset from another tool (an Inria-format PLY)."""
    check_config(cfg)
    check_prompt(cfg.teachers, prompt)
    cloud = load_ply(ply)  # fails early with a PlyError for a bad file
    out = Path(out)
    job = {"command": "animate", "prompt": prompt, "ply": str(ply)}
    device = _prepare(out, cfg, job, resume)
    if resume and is_finished(out):
        return _finished(out, cfg)
    teachers = _stage2_teachers(cfg, device)
    _start_run(out, cfg, job)
    ctx = _context(cfg, out, device, progress, callback)
    motion = Motion([new_segment(cfg.stage2, "base", prompt, device, seed=cfg.seed)])
    motion = run_stage2(
        prompt,
        cfg.stage2,
        cloud.to(device),
        motion,
        teachers,
        ctx,
        seed=cfg.seed + 1,
        grad_frames=cfg.teachers.grad_frames,
    )
    asset = Asset.from_cloud(cloud, motion=motion, prompts=[prompt], config=cfg.to_dict())
    return _finish(asset, out, cfg, ctx)


def extend(
    asset_path: str | Path,
    prompt: str | None,
    out: str | Path,
    cfg: RunConfig,
    loop: bool = False,
    resume: bool = False,
    progress: bool = True,
    callback: StepCallback | None = None,
) -> Asset:
    """Autoregressive extension (sec. 3.4): a new segment starts at the middle frame of the last
    one and is optimised with the earlier ones fixed, optionally under a new prompt; ``loop``
    makes it end on the first pose (sec. 4)."""
    check_config(cfg)
    asset = Asset.load(asset_path)
    if len(asset.objects) != 1:
        raise ValueError("extend works on a single-object asset, not on a composed scene")
    obj = asset.objects[0]
    if prompt is None or not prompt.strip():
        prompts = asset.header.get("prompts") or []
        if not prompts:
            raise ValueError("the asset records no prompt; give one")
        prompt = prompts[-1]
    check_prompt(cfg.teachers, prompt)
    out = Path(out)
    job = {"command": "extend", "prompt": prompt, "asset": str(asset_path), "loop": loop}
    device = _prepare(out, cfg, job, resume)
    if resume and is_finished(out):
        return _finished(out, cfg)
    teachers = _stage2_teachers(cfg, device)
    _start_run(out, cfg, job)
    ctx = _context(cfg, out, device, progress, callback)
    motion = obj.motion if obj.motion is not None else Motion([])
    for seg in motion.segments:
        seg.field.to(device)
    kind = "loop" if loop else "extend" if motion.segments else "base"
    motion.segments.append(
        new_segment(cfg.stage2, kind, prompt, device, seed=cfg.seed + len(motion.segments))
    )
    motion = run_stage2(
        prompt,
        cfg.stage2,
        obj.cloud.to(device),
        motion,
        teachers,
        ctx,
        seed=cfg.seed + 11,
        grad_frames=cfg.teachers.grad_frames,
        phase="extend",
    )
    prompts = list(asset.header.get("prompts") or []) + [prompt]
    new = Asset.from_cloud(obj.cloud, motion=motion, prompts=prompts, config=cfg.to_dict())
    return _finish(new, out, cfg, ctx)


def load_cloud_or_asset(path: str | Path) -> Asset:
    """An ``.ayg`` asset, or a static asset from an Inria PLY."""
    p = Path(path)
    if p.suffix.lower() == ".ply":
        return Asset.from_cloud(load_ply(p), motion=None, prompts=[], config={})
    return Asset.load(p)


__all__ = [
    "check_config",
    "generate",
    "is_finished",
    "animate",
    "extend",
    "load_cloud_or_asset",
    "resolve_device",
    "GaussianCloud",
]
