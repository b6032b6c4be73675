"""Every command of the ``paper`` path, end to end through the real CLI and loaders, at the
paper's model sizes (AYG sec. 3, C.7-C.9, E.2): time per phase, seconds per step, peak GPU
memory, outputs.

The teachers are random-weight models written in the on-disk layouts users have
(``ayg.teachers.synthetic``), under ``--workdir``:

    models/stable-diffusion-2-1-base/       SD 2.1 base, a diffusers folder (image teacher)
    models/MVDream/sd-v2.1-base-4view.pt    MVDream's official ldm checkpoint (multiview)
    models/mvdream-sd2.1-diffusers/         MVDream's diffusers port, MVDream's UNet layout
    models/zeroscope_v2_576w/               Zeroscope v2 576w, a diffusers folder (video), or
    models/Wan2.1-T2V-1.3B-Diffusers/       with --video-teacher wan: Wan 2.1 T2V 1.3B's folder
    hf/hub/                                 a Hugging Face cache with SD 2.1's tokenizer under
                                            its id: the official MVDream checkpoint reads it

Tokenizers are a stand-in CLIP BPE of 56 tokens (the text encoders keep their full vocabulary).
Then ``python -m ayg.cli`` runs as a subprocess per phase, offline (``HF_HUB_OFFLINE=1``,
``teachers.local_files_only=true``, the teachers' ids set to the folders above):

    generate       --preset paper, MVDream from the official checkpoint, fine-tuning (C.9) on
    generate-port  --preset paper, MVDream from the diffusers port
    extend         the first asset, a new prompt          loop      the extension, --loop
    export-ply     ply-frames of the loop                 animate   the first exported PLY
    compose        the two generated assets               tracks    export --format tracks
    render         a png of the scene                     video     export --format video

Every stage phase runs ``--steps`` steps. Seconds per step and peak memory come from the end-
of-phase record of each run's ``losses.jsonl`` (the loop's wall time over its steps, the first
step included; ``torch.cuda.max_memory_allocated`` since the phase started, weights included);
for commands without stages the wall time is the figure. Checkpoint writing is timed too.

``--size real``: SD 2.1 base, MVDream (``MVDreamArch()``) and Zeroscope at their real shapes
(``benchmarks/step.py``'s configs), initialised on the GPU, saved in fp16 (safetensors, and the
``.pt`` for MVDream's official file); bf16 teachers; about 11 GB on disk. ``--video-teacher
wan`` writes Wan 2.1 T2V 1.3B instead of Zeroscope (``benchmarks/wan_configs.py``: the 1.3B
transformer, its causal VAE and the UMT5-XXL encoder, in bf16, about 14 GB, with a stand-in T5
tokenizer) and the generate commands pass its folder as ``teachers.video_model``. No video by default
(``--video`` to add previews and the video export; they need imageio-ffmpeg).
``--size tiny``: the same layouts with tiny shapes, on the CPU, with small renders (the
teachers still see 320×512 and 256×256); tests/benchmarks/test_paper_e2e.py runs the writers and one
generate. ``--reuse`` splits a run over several calls: a later call keeps the models and runs
an earlier call left in ``--workdir`` and runs its ``--phases`` on them.

    PYTHONPATH=src python benchmarks/paper_e2e.py --size real --workdir /tmp/e2e --json e2e.json
    PYTHONPATH=src python benchmarks/paper_e2e.py --size tiny --workdir /tmp/e2e-tiny
    PYTHONPATH=src python benchmarks/paper_e2e.py --size real --video-teacher wan \
        --phases generate --steps 3 --workdir /tmp/e2e-wan --json e2e_wan.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SD_ID = "stabilityai/stable-diffusion-2-1-base"  # MVDream's official checkpoint reads its tokenizer
PROMPT = "a corgi running, highly detailed"
PROMPT_EXTEND = "a corgi jumping"
PROMPT_ANIMATE = "a corgi wagging its tail"
PHASES = (
    "generate",
    "generate-port",
    "extend",
    "loop",
    "export-ply",
    "animate",
    "compose",
    "tracks",
    "render",
    "video",
)
GIB = 2**30


# ----------------------------------------------------------------------------------------------
# Model shapes


@dataclass(frozen=True)
class Shapes:
    """What differs between the two sizes: the teachers' shapes, the stand-in dtype on disk,
    and the run overrides."""

    sd_unet: dict
    vae: dict
    text: Callable[[], Any]  # -> CLIPTextConfig
    video_unet: dict
    mvdream: Any  # MVDreamArch
    disk_dtype: torch.dtype | None  # None: as initialised
    tiny: bool = False
    overrides: tuple[str, ...] = ()
    wan_overrides: tuple[str, ...] = ()  # with --video-teacher wan


def wan_parts(device: torch.device, tiny: bool) -> dict[str, Any]:
    """Wan 2.1 T2V 1.3B's transformer, VAE and UMT5 encoder (real size or tiny), random, on
    ``device``, with the stand-in T5 tokenizer that a folder can hold."""
    from wan_configs import build_wan_parts

    from ayg.teachers.synthetic import stand_in_t5_tokenizer
    from ayg.teachers.wan import TEXT_LENGTH

    parts = build_wan_parts(device, tiny=tiny)
    parts["tokenizer"] = stand_in_t5_tokenizer(max_length=TEXT_LENGTH)
    return parts


def real_shapes() -> Shapes:
    from step import openclip_h_text_config, sd21_unet_config, sd_vae_config, zeroscope_unet_config

    from ayg.teachers.mvdream import MVDreamArch

    return Shapes(
        sd_unet=sd21_unet_config(),
        vae=sd_vae_config(),
        text=openclip_h_text_config,
        video_unet=zeroscope_unet_config(),
        mvdream=MVDreamArch(),
        disk_dtype=torch.float16,
    )


def tiny_text_config() -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def tiny_shapes() -> Shapes:
    """Tiny teachers that still see the teachers' resolutions (320×512 and 256×256 renders are
    resized to them) on a CPU: VAEs downsample by 8 like SD's, attention only below the first
    latent level, MVDream's widths multiples of its 32 norm groups and 64-channel heads (what
    its checkpoint does not store)."""
    from ayg.teachers.mvdream import MVDreamArch

    blocks2d = dict(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    return Shapes(
        sd_unet=dict(
            blocks2d,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=2,  # UNet2D's name for the number of heads: 16 channels each
        ),
        vae=dict(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        ),
        text=tiny_text_config,
        video_unet=dict(
            blocks2d,
            down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"),
            up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"),
            # channels per head here; the temporal transformer at the input is 8 heads wide
            attention_head_dim=8,
        ),
        mvdream=MVDreamArch(
            model_channels=64,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(2,),
            context_dim=64,
            vae_ch=32,
            vae_ch_mult=(1, 1, 1, 1),
            vae_num_res_blocks=1,
            text_width=64,
            text_layers=2,
            text_heads=1,
            text_vocab=64,
        ),
        disk_dtype=None,
        tiny=True,
        # small renders and batches; the teachers resize to their own resolutions
        overrides=(
            "stage1.width=64",
            "stage1.height=64",
            "stage1.init_gaussians=300",
            "stage2.batch=1",
            "stage2.width=64",
            "stage2.height=40",
            "stage2.knn=8",
            "finetune.width=64",
            "finetune.height=64",
            "teachers.grad_frames=2",
            "output.preview_frames=4",
            "output.preview_width=32",
            "output.preview_height=32",
        ),
        # the tiny transformer's rotary table covers 4×4 latents, not 480×832's 60×104
        wan_overrides=("teachers.video_resolution=[32, 32]",),
    )


# ----------------------------------------------------------------------------------------------
# Records


@dataclass
class StageFigures:
    phase: str
    steps: int
    seconds: float
    s_per_step: float
    peak_gib: float | None
    skipped_steps: int


@dataclass
class Phase:
    name: str
    wall_s: float = 0.0
    status: str = "ok"  # ok | failed | skipped (an input is missing) | reused (--reuse)
    command: list[str] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    stages: list[StageFigures] = field(default_factory=list)
    peak_gib: float | None = None  # writers on CUDA
    error: str = ""


def describe(path: Path, root: Path) -> dict[str, Any]:
    """{path (relative to the workdir), bytes} of a file, or of a folder's files summed."""
    size = (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )
    return {"path": str(path.relative_to(root)), "bytes": size}


def stage_figures(losses: Path) -> list[StageFigures]:
    """The end-of-phase records of a run's losses.jsonl (the lines carrying ``seconds``)."""
    if not losses.is_file():
        return []
    out = []
    for line in losses.read_text().splitlines():
        rec = json.loads(line)
        if "seconds" not in rec:
            continue
        steps = int(rec["step"])
        out.append(
            StageFigures(
                phase=rec["phase"],
                steps=steps,
                seconds=float(rec["seconds"]),
                s_per_step=float(rec["seconds"]) / max(steps, 1),
                peak_gib=rec.get("peak_gib"),
                skipped_steps=int(rec.get("skipped_steps", 0)),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# Writing the checkpoints


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(phase: Phase, device: torch.device, fn: Callable[[], list[Path]], root: Path) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    paths = fn()
    _synchronize(device)
    phase.wall_s = time.perf_counter() - t0
    phase.outputs = [describe(p, root) for p in paths]
    if device.type == "cuda":
        phase.peak_gib = torch.cuda.max_memory_allocated(device) / GIB
        torch.cuda.empty_cache()


def write_models(
    shapes: Shapes,
    workdir: Path,
    device: torch.device,
    log,
    reuse: bool = False,
    video_teacher: str = "zeroscope",
) -> dict[str, Path]:
    """The four teacher checkpoints (the video one Zeroscope's or Wan's) and the hub-cache
    tokenizer; returns their paths. With ``reuse``, a writer whose outputs an earlier call left
    in ``workdir`` is skipped."""
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet3DConditionModel
    from transformers import CLIPTextModel

    from ayg.io_utils import atomic_torch_save
    from ayg.teachers.synthetic import (
        ldm_scheduler,
        register_in_hub_cache,
        synthetic_checkpoint,
        write_mvdream_port,
        write_pipeline,
        write_stand_in_tokenizer,
        write_wan_pipeline,
    )

    models = workdir / "models"
    paths = {
        "sd": models / "stable-diffusion-2-1-base",
        "mvdream": models / "MVDream" / "sd-v2.1-base-4view.pt",
        "port": models / "mvdream-sd2.1-diffusers",
        "video": models
        / ("Wan2.1-T2V-1.3B-Diffusers" if video_teacher == "wan" else "zeroscope_v2_576w"),
        "hub": workdir / "hf" / "hub",
    }
    for library in (diffusers, transformers):  # dtype-cast notes and shard progress bars
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    tokenizer = write_stand_in_tokenizer(models / "stand-in-tokenizer")
    dtype = shapes.disk_dtype

    def latent_folder(folder: Path, unet_cls, unet_cfg: dict, pipeline: str, scheduler: str):
        def write() -> list[Path]:
            torch.manual_seed(0)
            with torch.device(device):  # GPU initialisation: seconds, not minutes
                unet = unet_cls(**unet_cfg)
                vae = AutoencoderKL(**shapes.vae)
                text_encoder = CLIPTextModel(shapes.text())
            write_pipeline(
                folder,
                unet,
                vae,
                text_encoder,
                tokenizer,
                ldm_scheduler(scheduler),
                pipeline_class=pipeline,
                dtype=dtype,
            )
            return [folder]

        return write

    def mvdream() -> list[Path]:
        state = synthetic_checkpoint(shapes.mvdream, seed=1, device=device, dtype=dtype)
        atomic_torch_save({k: v.cpu() for k, v in state.items()}, paths["mvdream"])
        write_mvdream_port(paths["port"], state, shapes.mvdream, tokenizer, dtype=dtype)
        return [paths["mvdream"], paths["port"]]

    def wan() -> list[Path]:
        from wan_configs import SHIFT

        torch.manual_seed(2)
        parts = wan_parts(device, shapes.tiny)
        # bf16 on disk: the teacher runs in bf16, and UMT5 overflows in fp16
        dtype = None if shapes.tiny else torch.bfloat16
        write_wan_pipeline(paths["video"], shift=SHIFT, dtype=dtype, **parts)
        return [paths["video"]]

    def hub() -> list[Path]:
        register_in_hub_cache(paths["hub"], SD_ID, paths["sd"], include=["tokenizer"])
        return [paths["hub"]]

    writers = [
        (
            "write SD 2.1 base (diffusers)",
            latent_folder(
                paths["sd"],
                UNet2DConditionModel,
                shapes.sd_unet,
                "StableDiffusionPipeline",
                "PNDMScheduler",
            ),
            ("sd",),
        ),
        ("write MVDream (.pt + diffusers port)", mvdream, ("mvdream", "port")),
        (
            "write Zeroscope v2 576w (diffusers)",
            latent_folder(
                paths["video"],
                UNet3DConditionModel,
                shapes.video_unet,
                "TextToVideoSDPipeline",
                "DDIMScheduler",
            ),
            ("video",),
        )
        if video_teacher == "zeroscope"
        else ("write Wan 2.1 T2V 1.3B (diffusers)", wan, ("video",)),
        ("write hub cache (SD 2.1 tokenizer)", hub, ("hub",)),
    ]
    for name, fn, keys in writers:
        phase = Phase(name)
        if reuse and all(paths[k].exists() for k in keys):
            phase.status = "reused"
            phase.outputs = [describe(paths[k], workdir) for k in keys]
        else:
            _timed(phase, device, fn, workdir)
        log(phase)
    return paths


# ----------------------------------------------------------------------------------------------
# The CLI phases


@dataclass
class Job:
    """One CLI command: its arguments (after ``ayg``), the run directory whose losses.jsonl
    holds its stage figures, the files it needs and the files it makes."""

    name: str
    args: list[str]
    needs: list[Path]
    makes: list[Path]
    run_dir: Path | None = None


def jobs(
    paths: dict[str, Path],
    runs: Path,
    shapes: Shapes,
    steps: int,
    device: str,
    video: bool,
    finetune: bool = True,
    video_teacher: str = "zeroscope",
) -> list[Job]:
    teachers = [
        "teachers.local_files_only=true",
        f"teachers.image_model={paths['sd']}",
        f"teachers.video_model={paths['video']}",
        f"output.preview={'true' if video else 'false'}",
        *shapes.overrides,
        *(shapes.wan_overrides if video_teacher == "wan" else ()),
    ]

    def run_args(out: Path, multiview: Path = paths["mvdream"], stage1: bool = True) -> list[str]:
        args = ["--preset", "paper", "--out", str(out), "--device", device, "--no-progress"]
        if stage1:
            args += ["--steps-3d", str(steps)]
        args += ["--steps-4d", str(steps)]
        for s in (*teachers, f"teachers.multiview_model={multiview}"):
            args += ["--set", s]
        return args

    gen, port = runs / "generate", runs / "generate-port"
    ext, loop, ply, anim = runs / "extend", runs / "loop", runs / "ply", runs / "animate"
    spec, scene = runs / "scene.json", runs / "scene.ayg"
    tune = ["finetune.enabled=true", f"finetune.steps_3d={steps}", f"finetune.steps_4d={steps}"]
    tune_args = [a for s in tune for a in ("--set", s)] if finetune else []
    return [
        Job(
            "generate",
            ["generate", PROMPT, *run_args(gen), *tune_args],
            [],
            [gen / "asset.ayg"],
            gen,
        ),
        Job(
            "generate-port",
            ["generate", PROMPT, *run_args(port, multiview=paths["port"])],
            [],
            [port / "asset.ayg"],
            port,
        ),
        Job(
            "extend",
            ["extend", str(gen / "asset.ayg"), PROMPT_EXTEND, *run_args(ext, stage1=False)],
            [gen / "asset.ayg"],
            [ext / "asset.ayg"],
            ext,
        ),
        Job(
            "loop",
            ["extend", str(ext / "asset.ayg"), "--loop", *run_args(loop, stage1=False)],
            [ext / "asset.ayg"],
            [loop / "asset.ayg"],
            loop,
        ),
        Job(
            "export-ply",
            ["export", str(loop / "asset.ayg"), "--format", "ply-frames", "--frames", "2"]
            + ["--out", str(ply)],
            [loop / "asset.ayg"],
            [ply / "frame_0000.ply", ply / "frame_0001.ply"],
        ),
        Job(
            "animate",
            ["animate", str(ply / "frame_0000.ply"), PROMPT_ANIMATE, *run_args(anim, stage1=False)],
            [ply / "frame_0000.ply"],
            [anim / "asset.ayg"],
            anim,
        ),
        Job(
            "compose",
            ["compose", str(spec), "--out", str(scene)],
            [gen / "asset.ayg", port / "asset.ayg", spec],
            [scene],
        ),
        Job(
            "tracks",
            ["export", str(scene), "--format", "tracks", "--frames", "4"]
            + ["--out", str(runs / "tracks.npz")],
            [scene],
            [runs / "tracks.npz"],
        ),
        Job(
            "render",
            ["render", str(scene), "--time", "0.5", "--device", device]
            + ["--out", str(runs / "scene.png")],
            [scene],
            [runs / "scene.png"],
        ),
        Job(
            "video",
            ["export", str(scene), "--format", "video", "--frames", "8"]
            + ["--out", str(runs / "scene.mp4")],
            [scene],
            [runs / "scene.mp4"],
        ),
    ]


def write_compose_spec(runs: Path) -> None:
    """The two generated assets side by side, the second starting half a unit of time later."""
    from ayg.io_utils import write_json

    write_json(
        runs / "scene.json",
        {
            "description": "paper_e2e: the two generated assets",
            "objects": [
                {"asset": "generate/asset.ayg", "translation": [0.0, -0.6, 0.0]},
                {
                    "asset": "generate-port/asset.ayg",
                    "translation": [0.0, 0.6, 0.0],
                    "time_offset": 0.5,
                },
            ],
        },
    )


def cli_env(workdir: Path) -> dict[str, str]:
    """Offline, the workdir's hub cache, this checkout's sources first."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(workdir / "hf"),
        HF_HUB_CACHE=str(workdir / "hf" / "hub"),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    )
    return env


def run_job(job: Job, workdir: Path, env: dict[str, str], timeout: float) -> Phase:
    phase = Phase(job.name, command=["ayg", *job.args])
    missing = [p for p in job.needs if not p.exists()]
    if missing:
        phase.status = "skipped"
        phase.error = f"missing input {missing[0].relative_to(workdir)}"
        return phase
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ayg.cli", *job.args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, stderr = -1, f"timed out after {timeout:.0f} s; {e.stderr or ''}"
    phase.wall_s = time.perf_counter() - t0
    made = [p for p in job.makes if p.exists()]
    if rc != 0 or len(made) != len(job.makes):
        phase.status = "failed"
        tail = [line for line in str(stderr).strip().splitlines() if line.strip()][-12:]
        phase.error = f"exit code {rc}: " + " | ".join(tail)
    if job.run_dir is not None and job.run_dir.is_dir():
        phase.stages = stage_figures(job.run_dir / "losses.jsonl")
        made = sorted(p for p in job.run_dir.iterdir() if p.is_file())
    phase.outputs = [describe(p, workdir) for p in made]
    return phase


# ----------------------------------------------------------------------------------------------
# Report


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} B"


def _gib(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def table(phases: list[Phase]) -> str:
    head = f"{'phase':40s} {'wall s':>8s} {'steps':>5s} {'s/step':>7s} {'peak GiB':>8s}  outputs"
    lines = [head, "-" * len(head)]
    for p in phases:
        outputs = ", ".join(f"{o['path']} ({_size(o['bytes'])})" for o in p.outputs)
        status = {"ok": "", "reused": "[REUSED] "}.get(
            p.status, f"[{p.status.upper()}: {p.error}] "
        )
        lines.append(
            f"{p.name:40s} {p.wall_s:8.1f} {'':5s} {'':7s} {_gib(p.peak_gib):>8s}  "
            f"{status}{outputs}"
        )
        for s in p.stages:
            name = f"  {s.phase}" + (f" ({s.skipped_steps} skipped)" if s.skipped_steps else "")
            lines.append(
                f"{name:40s} {s.seconds:8.1f} {s.steps:5d} {s.s_per_step:7.2f} "
                f"{_gib(s.peak_gib):>8s}"
            )
    return "\n".join(lines)


def report(args: argparse.Namespace, phases: list[Phase], t_start: float) -> dict[str, Any]:
    device = torch.device(args.device)
    return {
        "size": args.size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "steps_per_phase": args.steps,
        "video": args.video,
        "video_teacher": args.video_teacher,
        "finetune": args.finetune,
        "total_s": time.perf_counter() - t_start,
        "phases": [asdict(p) for p in phases],
    }


# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", choices=("tiny", "real"), default="tiny")
    ap.add_argument("--workdir", required=True, type=Path, help="an empty or new directory")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    ap.add_argument("--steps", type=int, default=None, help="steps per phase (real 5, tiny 2)")
    ap.add_argument("--device", default=None, help="default: cuda for real, cpu for tiny")
    ap.add_argument(
        "--video",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="previews and the video export (need imageio-ffmpeg; default: on for tiny only)",
    )
    ap.add_argument(
        "--video-teacher",
        choices=("zeroscope", "wan"),
        default="zeroscope",
        help="the video teacher's folder to write and distil from (default zeroscope)",
    )
    ap.add_argument(
        "--finetune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the first generate fine-tunes (C.9; default on)",
    )
    ap.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (the checkpoints are always written)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="--workdir holds an earlier call's models (same --size) and runs: write only what "
        "is missing, and run --phases on what is there (a long run split over several calls)",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per CLI command")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps <= 0:
        ap.error(f"--steps must be positive, got {args.steps}")
    args.steps = args.steps or (5 if args.size == "real" else 2)
    args.device = args.device or ("cuda" if args.size == "real" else "cpu")
    args.video = (args.size == "tiny") if args.video is None else args.video
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        ap.error(f"unknown phase(s) {', '.join(unknown)}; allowed: {', '.join(PHASES)}")
    if not args.video and "video" in args.phases:
        args.phases.remove("video")
    if args.workdir.exists() and not args.workdir.is_dir():
        ap.error(f"--workdir {args.workdir} is a file; give a directory")
    stamp = args.workdir / "models" / "SIZE"
    if args.reuse and stamp.is_file() and stamp.read_text().strip() != args.size:
        ap.error(f"--workdir {args.workdir} holds --size {stamp.read_text().strip()} models")
    if not args.reuse and args.workdir.is_dir() and any(args.workdir.iterdir()):
        ap.error(f"--workdir {args.workdir} must be a new or empty directory (or pass --reuse)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available (use --size tiny on a CPU)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    shapes = real_shapes() if args.size == "real" else tiny_shapes()
    phases: list[Phase] = []

    def log(phase: Phase) -> None:
        phases.append(phase)
        status = "" if phase.status == "ok" else f"  {phase.status.upper()} {phase.error}"
        print(f"# {phase.name}: {phase.wall_s:.1f} s{status}", flush=True)
        if args.json is not None:  # after every phase: a run cut short keeps what it measured
            from ayg.io_utils import write_json

            write_json(args.json, report(args, phases, t_start))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# paper_e2e --size {args.size} on {where}, torch {torch.__version__}", flush=True)
    (workdir / "models").mkdir(exist_ok=True)
    (workdir / "models" / "SIZE").write_text(args.size)
    paths = write_models(
        shapes, workdir, device, log, reuse=args.reuse, video_teacher=args.video_teacher
    )
    runs = workdir / "runs"
    runs.mkdir(exist_ok=True)
    write_compose_spec(runs)
    env = cli_env(workdir)
    for job in jobs(
        paths,
        runs,
        shapes,
        args.steps,
        args.device,
        args.video,
        args.finetune,
        video_teacher=args.video_teacher,
    ):
        if job.name in args.phases:
            log(run_job(job, workdir, env, args.timeout))

    print(table(phases))
    print(f"# total {time.perf_counter() - t_start:.1f} s", flush=True)
    return 0 if all(p.status in ("ok", "reused") for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
