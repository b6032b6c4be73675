"""The optimisation loops of AYG, written out explicitly (sec. 3.2–3.4, C, D.3, E.2).

* ``run_stage1``: Gaussians only; MVDream-style multiview teacher (ω_3D, negative prompt) plus
  the image teacher (ω_im, view guidance) on the same 4 renders (eq. 22); densification.
* ``run_stage2``: the deformation field only; video teacher (negative prompt, then motion
  amplification, eq. 23–24) plus the image teacher on 3 random frames and the middle frame;
  λ_JSD·JSD (C.5) and λ_rig·rigidity (C.4), dynamic cameras (C.6) and fps sampling (C.3).
  The clip length and the default negative prompt are the video teacher's
  (:func:`stage2_defaults`: 16 frames for a UNet3D teacher, 4k + 1 for Wan). When the two
  teachers' VAE encoders are equal, the image teacher's frames come from the video teacher's
  encoder pass (the same latents and draws, one encoder pass fewer).
  The same loop trains an extension or loop segment (sec. 3.4) with the interpolation
  regulariser, earlier segments frozen.
* fine-tuning (C.9) reuses both with other settings.

Every loop checkpoints atomically every ``checkpoint_every`` steps (parameters, optimiser and
densification state, the generator's state, the losses so far) and resumes from its checkpoint:
a resumed run is bitwise the run that was not interrupted. A step whose gradient holds NaN or
Inf is skipped and counted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ayg.cameras import FpsSampler, Stage1CameraSampler, Stage2CameraSampler, view_direction
from ayg.config import VIDEO_NEGATIVE_PROMPT, Stage1Config, Stage2Config
from ayg.deformation import DeformationConfig, DeformationField, Motion, Segment
from ayg.distill import (
    Conditioning,
    TeacherTerm,
    TRangeSchedule,
    as_floats,
    distill_loss,
    prime_prompts,
)
from ayg.gaussians import (
    DensifyStrategy,
    GaussianCloud,
    GaussianLR,
    make_optimizer,
    update_learning_rate,
)
from ayg.io_utils import atomic_path, write_text
from ayg.regularizers import jsd_regularizer, knn_indices, rigidity_loss
from ayg.render import rasterize, render_gaussians

StepCallback = Callable[[str, int], None]


# ----------------------------------------------------------------------------- logging


TENSORBOARD_INSTALL = 'pip install "ayg[tensorboard]"'


class LossLog:
    """Losses as JSON lines (one file per run) and, when asked for, TensorBoard events."""

    def __init__(self, path: Path | None, tensorboard_dir: Path | None = None):
        self.path = path
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError(
                    f"TensorBoard logging (output.tensorboard=true) needs {TENSORBOARD_INSTALL}"
                ) from None
            self.writer = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, phase: str, step: int) -> None:
        """When a phase (re)starts at ``step``, drop its lines at ``step`` and later: they are
        recomputed identically, and a phase restarted from its beginning (no checkpoint yet)
        drops them all instead of logging its first steps twice."""
        if self.path is None or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the interruption
            if rec.get("phase") == phase and rec.get("step", -1) >= step:
                continue
            keep.append(line)
        write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, phase: str, step: int, stats: dict[str, float]) -> None:
        rec = {"phase": phase, "step": step, **{k: _num(v) for k, v in stats.items()}}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in stats.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{phase}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _num(v: Any) -> Any:
    if isinstance(v, Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


@dataclass
class RunContext:
    """What a loop needs besides its config: where to checkpoint, how to report."""

    device: torch.device
    backend: str = "auto"
    checkpoint_path: Path | None = None
    checkpoint_every: int = 500
    log: LossLog = field(default_factory=lambda: LossLog(None))
    log_every: int = 10
    progress: bool = True
    callback: StepCallback | None = None  # called after every step (tests interrupt runs here)


def grads_finite(params: list[Tensor]) -> bool:
    """Whether every gradient is finite, read with one host sync for all of them."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def _progress(total: int, start: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, leave=True)


def _random_backgrounds(n: int, generator: torch.Generator, device) -> Tensor:
    """(n, 3) black or white, each with probability ½ (E.2)."""
    white = torch.rand(n, generator=generator) < 0.5
    return white.float()[:, None].expand(n, 3).to(device)


def atomic_torch_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class CheckpointError(ValueError):
    """A ``checkpoint.pt`` that cannot be resumed from (one line saying how to go on)."""


_START_OVER = (
    "delete it and run again with --resume to redo the current phase from its start, "
    "or start over in a new --out"
)


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file, loaded with ``weights_only=True``: a file holding pickled objects
    other than tensors and plain containers is refused, never run. Raises ``CheckpointError``
    (one line saying how to go on) for such a file and for a corrupt or foreign one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and was not loaded (loading "
            f"it could run code); {_START_OVER}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt ({first}); {_START_OVER}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("phase"), str):
        raise CheckpointError(f"checkpoint {path} is not an ayg checkpoint; {_START_OVER}")
    return ckpt


def _load_checkpoint(path: Path | None, phase: str, keys: tuple[str, ...]) -> dict | None:
    """The checkpoint of ``phase`` at ``path``: None when there is none or it belongs to
    another phase; ``CheckpointError`` when it cannot be used."""
    if path is None or not path.exists():
        return None
    ckpt = read_checkpoint(path)
    if ckpt["phase"] != phase:
        return None
    missing = [k for k in ("step", "skipped", "generator", *keys) if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)} for phase {phase}; {_START_OVER}"
        )
    return ckpt


def _reset_peak_memory(device: torch.device) -> None:
    """Start the phase's peak of allocated GPU memory from what is allocated now (the weights)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _synced_clock(device: torch.device) -> float:
    """perf_counter once the device has finished the work queued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _phase_record(
    device: torch.device, t0: float, skipped: int, first_step: float | None = None
) -> dict[str, float]:
    """The end-of-phase line of losses.jsonl: wall seconds of the steps run, the first of them
    alone (``first_step_seconds``: it pays the one-time costs, CUDA graph capture, cuDNN
    autotuning, ``torch.compile``), skipped steps and, on CUDA, the phase's peak of allocated
    memory in GiB (weights included)."""
    rec = {"seconds": time.perf_counter() - t0, "skipped_steps": skipped}
    if first_step is not None:
        rec["first_step_seconds"] = first_step
    if device.type == "cuda":
        rec["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return rec


def _end_of_step(
    ctx: RunContext,
    bar,
    phase: str,
    step: int,
    total: int,
    stats: dict[str, float],
    postfix: dict[str, Any],
    checkpoint: Callable[[], dict],
) -> None:
    """Log, progress bar, periodic atomic checkpoint (built lazily) and the step callback.
    Statistics may be device tensors: they are read (one host sync) only on logging steps, so
    the other steps queue their work without waiting for the GPU."""
    done = step + 1
    logging = done % ctx.log_every == 0 or done == total
    if logging:
        stats = as_floats(stats)
        ctx.log.write(phase, step, stats)
    if bar is not None:
        bar.update(1)
        if logging:
            post = {k: (v(stats) if callable(v) else v) for k, v in postfix.items()}
            bar.set_postfix(loss=f"{stats['loss']:.3g}", **post)
    if ctx.checkpoint_path is not None and done % ctx.checkpoint_every == 0 and done < total:
        atomic_torch_save(checkpoint(), ctx.checkpoint_path)
    if ctx.callback is not None:
        ctx.callback(phase, done)


# ----------------------------------------------------------------------------- stage 1


def stage1_terms(cfg: Stage1Config) -> tuple[TeacherTerm, TeacherTerm]:
    """The two teacher terms of eq. 22: (multiview, image)."""
    mv = TeacherTerm(
        weight=cfg.omega_3d,
        t_range=TRangeSchedule(
            cfg.t_multiview_start, cfg.t_multiview_end, 0, cfg.t_multiview_steps
        ),
        mode=cfg.mode,
        cfg_scale=cfg.sds_guidance,
        negative_prompt=cfg.negative_prompt,
        negative_weight=cfg.omega_neg,
    )
    im = TeacherTerm(
        weight=cfg.omega_im,
        t_range=TRangeSchedule(cfg.t_image_start, cfg.t_image_end, 0, cfg.t_image_steps),
        mode=cfg.mode,
        cfg_scale=cfg.sds_guidance,
        view_guidance=cfg.omega_vg,
    )
    return mv, im


def stage1_components(
    cfg: Stage1Config,
) -> tuple[GaussianLR, DensifyStrategy, Stage1CameraSampler]:
    """The learning rates, densification and camera sampler a stage-1 config asks for: the
    one place the config's flat ``--set`` fields (``stage1.lr_position``, ...) map onto the
    components' own names. With a default config they equal the components' defaults (checked
    in tests), so the paper's table-3 values are stated in both and cannot drift apart."""
    return (
        GaussianLR(
            position=cfg.lr_position,
            position_final=cfg.lr_position_final,
            position_decay_steps=cfg.lr_position_decay_steps,
            rgb=cfg.lr_rgb,
            sh=cfg.lr_sh,
            opacity=cfg.lr_opacity,
            scaling=cfg.lr_scaling,
            scale=cfg.lr_scale,
        ),
        DensifyStrategy(
            grad_threshold=cfg.densify_grad_threshold,
            prune_opacity=cfg.prune_opacity,
            start=cfg.densify_start,
            every=cfg.densify_every,
            stop=cfg.densify_stop,
            max_gaussians=cfg.max_gaussians,
            reset_every=cfg.opacity_reset_every,
            reset_value=cfg.opacity_reset_value,
        ),
        Stage1CameraSampler(
            fov_range=cfg.fov_range,
            elevation_range=cfg.elevation_range,
            scale_range=cfg.scale_range,
            views=cfg.views,
            width=cfg.width,
            height=cfg.height,
        ),
    )


def run_stage1(
    prompt: str,
    cfg: Stage1Config,
    teachers: dict[str, Any],
    ctx: RunContext,
    seed: int,
    cloud: GaussianCloud | None = None,
    phase: str = "stage1",
) -> GaussianCloud:
    """Optimise a static cloud (from ``cloud`` or the C.1 initialisation) for ``cfg.steps``."""
    device = ctx.device
    generator = torch.Generator().manual_seed(seed)
    if cloud is None:
        cloud = GaussianCloud.init_sphere(
            n=cfg.init_gaussians,
            radius=cfg.init_radius,
            sh_degree=cfg.sh_degree,
            generator=generator,
            device=device,
        )
    else:
        # a trainable copy (the cloud handed over is usually a frozen stage-1 result)
        cloud = GaussianCloud.from_state_dict(cloud.state_dict(), requires_grad=True).to(device)
    lr, strategy, sampler = stage1_components(cfg)
    optimizer = make_optimizer(cloud, lr)
    strategy_state = strategy.initialize_state()
    start, skipped = 0, 0

    ckpt = _load_checkpoint(ctx.checkpoint_path, phase, ("cloud", "optimizer", "strategy"))
    if ckpt is not None:
        cloud = GaussianCloud.from_state_dict(ckpt["cloud"]).to(device)
        optimizer = make_optimizer(cloud, lr)
        optimizer.load_state_dict(ckpt["optimizer"])
        strategy_state = {
            k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in ckpt["strategy"].items()
        }
        generator.set_state(ckpt["generator"])
        start, skipped = int(ckpt["step"]), int(ckpt["skipped"])
    ctx.log.truncate_after(phase, start)

    mv_term, im_term = stage1_terms(cfg)
    mv_teacher = teachers.get("multiview") if cfg.use_multiview else None
    im_teacher = teachers.get("image") if cfg.use_image else None
    if mv_teacher is None and im_teacher is None:
        raise ValueError("stage 1 needs at least one of the multiview and image teachers")
    for teacher, term in ((mv_teacher, mv_term), (im_teacher, im_term)):
        if teacher is not None:
            prime_prompts(teacher, term, prompt)

    bar = _progress(cfg.steps, start, phase, ctx.progress)
    _reset_peak_memory(device)
    t0, first_step = time.perf_counter(), None
    for step in range(start, cfg.steps):
        update_learning_rate(optimizer, lr, step)
        # drawn on the host, then moved: the view words below are read without a GPU sync
        cams_host = sampler.sample(cfg.batch, generator, "cpu")  # B·V cameras
        cams = cams_host.to(device)
        bg = _random_backgrounds(cfg.batch, generator, device).repeat_interleave(cfg.views, 0)
        out = render_gaussians(cloud, cams, background=bg, backend=ctx.backend)
        info = {
            "means2d": out.means2d,
            "radii": out.radii,
            "width": cfg.width,
            "height": cfg.height,
        }
        strategy.step_pre_backward(info)
        images = out.rgb.view(cfg.batch, cfg.views, 3, cfg.height, cfg.width)  # (B, V, 3, H, W)

        loss = torch.zeros((), device=device)
        stats: dict[str, float] = {}
        if mv_teacher is not None:
            l_mv, s = distill_loss(
                mv_teacher,
                mv_term,
                images,
                prompt,
                step,
                generator,
                cond=Conditioning(cameras=cams),
                sync=False,
            )
            loss = loss + l_mv
            stats.update({f"mv_{k}": v for k, v in s.items()})
        if im_teacher is not None:
            views = [
                view_direction(float(e), float(a))
                for e, a in zip(
                    cams_host.elevation.tolist(), cams_host.azimuth.tolist(), strict=False
                )
            ]
            l_im, s = distill_loss(
                im_teacher,
                im_term,
                images,  # (B, V, 3, H, W): each view one image sample, at the views' scale
                prompt,
                step,
                generator,
                views=views,
                sync=False,
            )
            loss = loss + l_im
            stats.update({f"im_{k}": v for k, v in s.items()})

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if grads_finite(params):
            optimizer.step()
        else:
            skipped += 1
            optimizer.zero_grad(set_to_none=True)
        event = strategy.step_post_backward(cloud, optimizer, strategy_state, step, info)
        done = step + 1
        stats.update(loss=loss.detach(), n_gaussians=cloud.num, skipped_steps=skipped)
        if isinstance(event, dict):
            stats.update({k: v for k, v in event.items() if isinstance(v, (int, float))})
        _end_of_step(
            ctx,
            bar,
            phase,
            step,
            cfg.steps,
            stats,
            {"N": cloud.num, "skip": skipped},
            lambda done=done, skipped=skipped: {
                "phase": phase,
                "step": done,
                "skipped": skipped,
                "cloud": cloud.state_dict(),
                "optimizer": optimizer.state_dict(),
                "strategy": strategy_state,
                "generator": generator.get_state(),
            },
        )
        if first_step is None:  # one host sync, once per run of the loop
            first_step = _synced_clock(device) - t0
    if bar is not None:
        bar.close()
    ctx.log.write(phase, cfg.steps, _phase_record(device, t0, skipped, first_step))
    return cloud.detached()


# ----------------------------------------------------------------------------- stage 2


def stage2_defaults(cfg: Stage2Config, video: Any) -> Stage2Config:
    """``cfg`` with the fields it leaves to the video teacher filled in: ``frames`` (the
    teacher's clip length) and ``negative_prompt`` (its own, else the paper's). A ``frames`` the
    teacher was not built for is a ValueError."""
    frames = video.frames if cfg.frames is None else cfg.frames
    if frames != video.frames:
        raise ValueError(
            f"stage2.frames is {cfg.frames} but the video teacher takes {video.frames} frames; "
            "leave stage2.frames unset to use the teacher's"
        )
    if not 1 <= cfg.image_frames <= frames:
        raise ValueError(
            f"stage2.image_frames must be between 1 and the clip's {frames} frames, "
            f"got {cfg.image_frames}"
        )
    negative = cfg.negative_prompt
    if negative is None:
        negative = getattr(video, "negative_prompt", VIDEO_NEGATIVE_PROMPT)
    return dataclasses.replace(cfg, frames=frames, negative_prompt=negative)


def _resolved_frames(cfg: Stage2Config) -> int:
    if cfg.frames is None:
        raise ValueError("stage2.frames is unset; fill it from the video teacher (stage2_defaults)")
    return cfg.frames


def stage2_terms(
    cfg: Stage2Config, grad_frames: int | None = None
) -> tuple[TeacherTerm, TeacherTerm]:
    """The two teacher terms of eq. 24: (video, image). ``cfg.negative_prompt`` unset means the
    paper's; :func:`stage2_defaults` sets the video teacher's."""
    schedule = TRangeSchedule.constant(*cfg.t_range)
    vid = TeacherTerm(
        weight=cfg.omega_vid,
        t_range=schedule,
        mode=cfg.mode,
        cfg_scale=cfg.sds_guidance,
        negative_prompt=VIDEO_NEGATIVE_PROMPT
        if cfg.negative_prompt is None
        else cfg.negative_prompt,
        negative_weight=cfg.omega_neg,
        motion_amplification=cfg.omega_ma,
        grad_frames=grad_frames,
        weight_covers_guidance=True,  # eq. 24: ω_vid·MA(δ_cls + ω_neg·(…))
    )
    im = TeacherTerm(
        weight=cfg.omega_im, t_range=schedule, mode=cfg.mode, cfg_scale=cfg.sds_guidance
    )
    return vid, im


def image_frame_indices(batch: int, frames: int, k: int, generator: torch.Generator) -> Tensor:
    """(B, k) frame indices for the image teacher: k−1 random frames plus the middle one
    (index (F−1)//2: the 8th of 16, the 9th of 17; sec. 3.2)."""
    middle = (frames - 1) // 2
    out = []
    for _ in range(batch):
        others = torch.tensor([i for i in range(frames) if i != middle])
        pick = others[torch.randperm(len(others), generator=generator)[: k - 1]]
        out.append(torch.cat([pick, torch.tensor([middle])]))
    return torch.stack(out)


def stage2_samplers(cfg: Stage2Config) -> tuple[FpsSampler, Stage2CameraSampler]:
    """Stage 2's fps / τ sampler (C.3) and dynamic camera sampler (C.6) for ``cfg`` (its
    ``frames`` set, e.g. by :func:`stage2_defaults`)."""
    frames = _resolved_frames(cfg)
    fps = FpsSampler(
        fps_values=cfg.fps_values,
        probs=cfg.fps_probs,
        frames=frames,
        frame_step=cfg.fps_frame_step,
    )
    cams = Stage2CameraSampler(
        fov_range=cfg.fov_range,
        elevation_range=cfg.elevation_range,
        distance_range=cfg.distance_range,
        elevation_offset_range=cfg.elevation_offset_range,
        azimuth_offset_range=cfg.azimuth_offset_range,
        frames=frames,
        dynamic=cfg.dynamic_cameras,
        width=cfg.width,
        height=cfg.height,
    )
    return fps, cams


def new_segment(cfg: Stage2Config, kind: str, prompt: str, device, seed: int = 0) -> Segment:
    """A fresh deformation field (identity: its last layer is zero), initialised from ``seed``
    without touching the global RNG, so a resumed run builds the same field."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        field_ = DeformationField(
            DeformationConfig(hidden=cfg.hidden, layers=cfg.layers, frequencies=cfg.frequencies)
        )
    return Segment(field=field_.to(device), kind=kind, prompt=prompt)


def run_stage2(
    prompt: str,
    cfg: Stage2Config,
    cloud: GaussianCloud,
    motion: Motion,
    teachers: dict[str, Any],
    ctx: RunContext,
    seed: int,
    grad_frames: int | None = None,
    phase: str = "stage2",
) -> Motion:
    """Optimise the LAST segment of ``motion`` (its earlier segments stay fixed) on the frozen
    ``cloud``. Returns the motion with the trained segment."""
    video = teachers.get("video")
    if video is None:
        raise ValueError("stage 2 needs a video teacher")
    cfg = stage2_defaults(cfg, video)
    device = ctx.device
    generator = torch.Generator().manual_seed(seed)
    cloud = cloud.detached().to(device)
    if not motion.segments:
        raise ValueError("run_stage2 needs a motion with at least one segment to train")
    trained = motion.segments[-1].field.to(device)
    for seg in motion.segments[:-1]:
        seg.field.to(device).requires_grad_(False)
    trained.requires_grad_(True)
    optimizer = torch.optim.Adam(trained.parameters(), lr=cfg.lr)
    start, skipped = 0, 0

    ckpt = _load_checkpoint(ctx.checkpoint_path, phase, ("field", "optimizer"))
    if ckpt is not None:
        trained.load_state_dict(ckpt["field"])
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"])
        start, skipped = int(ckpt["step"]), int(ckpt["skipped"])
    ctx.log.truncate_after(phase, start)

    means0 = cloud.means.detach()  # (N, 3)
    with torch.no_grad():
        canon = motion.positions(
            means0, torch.tensor([motion.segment_start(len(motion.segments) - 1)], device=device)
        )[0]
    knn = knn_indices(
        canon, k=min(cfg.knn, max(cloud.num - 1, 1))
    )  # from the segment's first frame
    scales, quats, opacity, sh = cloud.scales, cloud.quats, cloud.opacity, cloud.sh
    if quats is not None:
        quats = cloud.rotations

    fps_sampler, cam_sampler = stage2_samplers(cfg)
    vid_term, im_term = stage2_terms(cfg, grad_frames)
    image = teachers.get("image") if cfg.use_image else None
    if video is None:
        raise ValueError("stage 2 needs a video teacher")
    prime_prompts(video, vid_term, prompt)
    if image is not None:
        prime_prompts(image, im_term, prompt)

    # one encoder pass over the frames serves both teachers when their encoders are equal
    # (the SD autoencoder of a UNet3D video teacher and SD): the same latents, the same draws
    share_posterior = (
        image is not None
        and vid_term.grad_frames is None
        and im_term.grad_frames is None
        and callable(getattr(video, "same_encoder", None))
        and video.same_encoder(image)
    )
    B, F, H, W = cfg.batch, cfg.frames, cfg.height, cfg.width
    bar = _progress(cfg.steps, start, phase, ctx.progress)
    _reset_peak_memory(device)
    t0, first_step = time.perf_counter(), None
    for step in range(start, cfg.steps):
        fps, tau = fps_sampler.sample(B, generator, device)  # (B,), (B, F)
        cams = cam_sampler.sample(B, generator, device)  # B·F cameras, clip-major
        bg = _random_backgrounds(B, generator, device).repeat_interleave(F, 0)
        positions, interp = motion.positions_for_training(means0, tau.reshape(-1))  # (B·F, N, 3)
        out = rasterize(
            positions,
            scales,
            quats,
            opacity,
            sh,
            cams,
            background=bg,
            sh_degree=cloud.sh_degree,
            backend=ctx.backend,
        )
        frames = out.rgb.view(B, F, 3, H, W)

        post = video.encode_posterior(frames) if share_posterior else None
        l_vid, s_vid = distill_loss(
            video,
            vid_term,
            frames,
            prompt,
            step,
            generator,
            Conditioning(fps=fps),
            sync=False,
            posterior=post,
        )
        loss = l_vid
        stats = {f"vid_{k}": v for k, v in s_vid.items()}
        if image is not None:
            idx = image_frame_indices(B, F, cfg.image_frames, generator).to(device)  # (B, k)
            picked = torch.gather(frames, 1, idx[:, :, None, None, None].expand(-1, -1, 3, H, W))
            # (B, k, 3, H, W): each picked frame one image sample, at the video frames' scale
            im_post = None if post is None else post.frames(idx)
            l_im, s_im = distill_loss(
                image, im_term, picked, prompt, step, generator, sync=False, posterior=im_post
            )
            loss = loss + l_im
            stats.update({f"im_{k}": v for k, v in s_im.items()})
        delta = positions - canon[None]  # (B·F, N, 3) displacement of this segment
        l_rig = rigidity_loss(delta, knn, validate=False)  # knn is ours: no per-step check
        l_jsd = jsd_regularizer(canon, positions)
        loss = (
            loss + cfg.lambda_rigidity * l_rig + cfg.lambda_jsd * l_jsd + cfg.lambda_interp * interp
        )

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grads_finite(list(trained.parameters())):
            optimizer.step()
        else:
            skipped += 1
            optimizer.zero_grad(set_to_none=True)
        done = step + 1
        stats.update(
            loss=loss.detach(),
            rigidity=l_rig.detach(),
            jsd=l_jsd.detach(),
            interp=interp.detach() if torch.is_tensor(interp) else float(interp),
            motion=delta.detach().norm(dim=-1).mean(),
            skipped_steps=skipped,
        )
        _end_of_step(
            ctx,
            bar,
            phase,
            step,
            cfg.steps,
            stats,
            {"motion": lambda st: f"{st['motion']:.3f}", "skip": skipped},
            lambda done=done, skipped=skipped: {
                "phase": phase,
                "step": done,
                "skipped": skipped,
                "field": trained.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
            },
        )
        if first_step is None:  # one host sync, once per run of the loop
            first_step = _synced_clock(device) - t0
    if bar is not None:
        bar.close()
    trained.requires_grad_(False)
    record = _phase_record(device, t0, skipped, first_step)
    ctx.log.write(phase, cfg.steps, {**record, "shared_encoder": share_posterior})
    return motion
