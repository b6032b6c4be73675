"""The user-level jobs: generate (stage 1 → stage 2 → optional fine-tuning, C.9), animate a
static PLY (stage 2 only), extend / loop an asset (sec. 3.4, 4).

A run directory holds ``config.json`` (resolved), ``losses.jsonl``, ``checkpoint.pt`` while a
phase is under way, ``stage1.ayg`` once the static stage is done, then ``asset.ayg`` and
``preview.mp4``. Every file is written atomically; ``resume=True`` skips finished phases and
continues the current one from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from ayg.asset import Asset
from ayg.config import RunConfig, validate
from ayg.deformation import Motion
from ayg.gaussians import GaussianCloud, load_ply
from ayg.io_utils import write_text as atomic_write_text
from ayg.stages import LossLog, RunContext, StepCallback, new_segment, run_stage1, run_stage2
from ayg.teachers import build_teachers, check_prompt

RUN_FILES = ("config.json", "checkpoint.pt", "stage1.ayg", "asset.ayg")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device '{name}' was asked for but CUDA is not available; use --device cpu"
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


def _start_run(out: Path, cfg: RunConfig, job: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, cfg, job)


def _context(
    cfg: RunConfig, out: Path, device: torch.device, progress: bool, callback
) -> RunContext:
    tb = out / "tensorboard"
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


def _check_resume_config(out: Path, cfg: RunConfig, resume: bool) -> None:
    path = out / "config.json"
    if resume and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("config") != json.loads(json.dumps(cfg.to_dict())):
            raise ValueError(
                f"'{out}' was started with another config; resume it with the same preset and overrides"
            )


def _write_config(out: Path, cfg: RunConfig, job: dict[str, Any]) -> None:
    atomic_write_text(
        out / "config.json",
        json.dumps({"job": job, "config": cfg.to_dict()}, indent=2, sort_keys=True),
    )


def _finish(asset: Asset, out: Path, cfg: RunConfig, ctx: RunContext) -> Asset:
    from ayg.export import export_video

    asset.save(out / "asset.ayg")
    o = cfg.output
    if o.preview:
        export_video(
            asset,
            out / "preview.mp4",
            frames=o.preview_frames,
            fps=o.preview_fps,
            width=o.preview_width,
            height=o.preview_height,
            backend=ctx.backend,
        )
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
    validate(cfg)
    check_prompt(cfg.teachers, prompt)
    out = Path(out)
    check_out_dir(out, resume)
    _check_resume_config(out, cfg, resume)
    device = resolve_device(cfg.device)
    stage1_path = out / "stage1.ayg"
    need_stage1 = not (resume and stage1_path.exists())
    # load the first teachers before anything is written: a missing model leaves no run behind
    teachers = (
        build_teachers(cfg.teachers, device, ("multiview", "image"), seed=cfg.seed)
        if need_stage1
        else None
    )
    _start_run(out, cfg, {"command": "generate", "prompt": prompt})
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
    validate(cfg)
    check_prompt(cfg.teachers, prompt)
    cloud = load_ply(ply)  # fails early with a PlyError for a bad file
    out = Path(out)
    check_out_dir(out, resume)
    _check_resume_config(out, cfg, resume)
    device = resolve_device(cfg.device)
    teachers = _stage2_teachers(cfg, device)
    _start_run(out, cfg, {"command": "animate", "prompt": prompt, "ply": str(ply)})
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
    validate(cfg)
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
    check_out_dir(out, resume)
    _check_resume_config(out, cfg, resume)
    device = resolve_device(cfg.device)
    teachers = _stage2_teachers(cfg, device)
    _start_run(
        out, cfg, {"command": "extend", "prompt": prompt, "asset": str(asset_path), "loop": loop}
    )
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
    "generate",
    "animate",
    "extend",
    "load_cloud_or_asset",
    "resolve_device",
    "GaussianCloud",
]
