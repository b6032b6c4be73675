"""Time, FLOPs and peak GPU memory of one distillation step of each AYG stage at the paper's sizes.

The teachers have the real architectures with random weights (no download), in bf16: Stable
Diffusion 2.1 base (UNet + VAE + an OpenCLIP-H-sized CLIPTextModel), MVDream 4-view
(``ayg.teachers.mvdream``) and a video teacher (``--video``; ``zeroscope``: a Zeroscope/ModelScope
``UNet3DConditionModel``; ``wan``: Wan 2.1 T2V 1.3B, ``benchmarks/wan_configs.py``, 17 frames
encoded at 480×832). The steps are the product's own loops, ``ayg.stages.run_stage1`` and
``run_stage2``, with the paper preset's stage configs (E.2, tables 3 and 4) on a cloud of
``--gaussians`` Gaussians:

* stage 1: 4 views at 256×256 through MVDream (CSD, ω_3D 1.6, negative prompt ω_neg 0.8) + the
  image teacher at 320×512 (CSD, ω_im 0.4, view guidance ω_vg 3.0), one Adam step on the cloud;
* stage 2: 4 clips × 16 frames (Wan: 17) at 160×256 -> 320×512 through the video teacher (CSD, negative
  prompt ω_neg 0.8, motion amplification ω_ma 24) + the image teacher on 4 frames of each clip,
  rigidity and JSD, one Adam step on the deformation field. Every frame keeps its gradient.

Each step is timed under several runtimes (``ayg.teachers.runtime``) on the same weights:
``naive`` (plain eager bf16: every encoder activation stored, no CUDA graphs, NCHW, no cuDNN
autotuning, no TF32), ``paper`` (the paper preset's ``teachers.*`` settings), ``lowvram`` (the
``lowvram`` preset's), for stage 2 the ``fast`` preset's smaller step and, with ``--variants``,
the paper runtime with one lever changed at a time. For a UNet3D video teacher, each stage-2
runtime but naive and lowvram is timed once more with the image teacher given the video
teacher's VAE (``paper+shared``, ...: what a pair of checkpoints with equal encoders costs, one
encoder pass over the frames instead of two; ``--skip shared`` leaves these out). Then every component
of the step is timed alone (median of ``--reps`` CUDA-event timings) under ``naive`` and
``paper``, with its FLOPs (matrix products, convolutions and attention, counted by
``torch.utils.flop_counter``), its rate, and that rate as a share of a bf16 matrix product's rate
measured first in the same run. The figures go to stdout and, with ``--json``, to a file
(rewritten after the components and after each stage's loops with ``"complete": false``, so a run
cut short keeps what it measured, and ``true`` once the report is whole); the
paper pipeline's wall time is projected from the step times (stage 1 + stage 2 + the fine-tuning
of C.9 at the paper's step counts, plus the measured one-time costs: each loop's first step
beyond the median, and the paper components' first calls beyond theirs, where the UNets'
compilation is paid).
With ``--profile TABLE`` one more paper-runtime stage-2 step runs under torch.profiler: its
ops by device time go to TABLE and its wall time against the device's busy time to the JSON.
Prints figures; asserts nothing.

    PYTHONPATH=src python benchmarks/step.py [--stage 1|2|all] [--video zeroscope|wan]
        [--compile none|default|max-autotune-no-cudagraphs] [--warmup 2] [--iters 5]
        [--reps 5] [--json docs/results/step.json] [--profile ops.txt]
    PYTHONPATH=src python benchmarks/step.py --tiny   # tiny models on the CPU: a check of the script
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ayg.cameras import FpsSampler, Stage1CameraSampler, Stage2CameraSampler
from ayg.config import FinetuneConfig, RunConfig, Stage1Config, Stage2Config, preset
from ayg.deformation import Motion
from ayg.distill import Conditioning
from ayg.gaussians import GaussianCloud, make_optimizer
from ayg.io_utils import write_text
from ayg.regularizers import jsd_regularizer, knn_indices, rigidity_loss
from ayg.render import gsplat_available, rasterize
from ayg.stages import (
    LossLog,
    RunContext,
    grads_finite,
    new_segment,
    run_stage1,
    run_stage2,
    stage2_defaults,
)
from ayg.teachers import runtime_of
from ayg.teachers.runtime import NAIVE, FastUNet, Runtime, configure_teacher
from ayg.teachers.stable_diffusion import StableDiffusionTeacher
from ayg.teachers.video import VideoTeacher

PROMPT = "a corgi running, highly detailed"
GIB = 2**30


# ----------------------------------------------------------------------------------------------
# Real-size configurations (the public model cards' config.json values) and tiny ones (--tiny)


def sd21_unet_config(tiny: bool = False) -> dict:
    if tiny:
        return dict(
            sample_size=8,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
    return dict(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
    )


def sd_vae_config(tiny: bool = False) -> dict:
    if tiny:
        return dict(
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        )
    return dict(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=768,
        scaling_factor=0.18215,
    )


def openclip_h_text_config(tiny: bool = False):
    from transformers import CLIPTextConfig

    # OpenCLIP ViT-H/14 text tower as SD 2.x uses it: 23 of 24 layers (penultimate output)
    width, layers, heads = (32, 2, 4) if tiny else (1024, 23, 16)
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )


def zeroscope_unet_config(tiny: bool = False) -> dict:
    if tiny:
        return dict(
            sample_size=8,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
    # cerspense/zeroscope_v2_576w and ali-vilab/text-to-video-ms-1.7b share this UNet3D
    return dict(
        sample_size=32,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        attention_head_dim=64,
        cross_attention_dim=1024,
    )


TINY_RESOLUTION = (16, 16)  # the tiny VAE halves it: 8×8 latents


class ByteTokenizer:
    """Stand-in for the CLIP tokenizer: UTF-8 bytes between start/end ids, padded to 77."""

    model_max_length = 77

    def __call__(self, prompts, max_length=None, **_):
        n = max_length or self.model_max_length
        ids = torch.zeros(len(prompts), n, dtype=torch.long)
        for row, p in enumerate(prompts):
            toks = [49406, *(1 + b for b in p.encode())][: n - 1] + [49407]
            ids[row, : len(toks)] = torch.tensor(toks)
        return type("Tokens", (), {"input_ids": ids})()


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def build_latent_parts(unet_cls, unet_cfg: dict, device: torch.device, tiny: bool) -> dict:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    with torch.device(device):  # initialise on the GPU: seconds instead of minutes on the CPU
        return dict(
            unet=unet_cls(**unet_cfg),
            vae=AutoencoderKL(**sd_vae_config(tiny)),
            text_encoder=CLIPTextModel(openclip_h_text_config(tiny)),
            tokenizer=ByteTokenizer(),
            alphas_cumprod=alphas_cumprod(),
        )


def build_sd(device: torch.device, dtype: torch.dtype, tiny: bool) -> StableDiffusionTeacher:
    from diffusers import UNet2DConditionModel

    parts = build_latent_parts(UNet2DConditionModel, sd21_unet_config(tiny), device, tiny)
    extra = dict(resolution=TINY_RESOLUTION) if tiny else {}
    return StableDiffusionTeacher.from_components(**parts, device=device, dtype=dtype, **extra)


def build_zeroscope(device: torch.device, dtype: torch.dtype, tiny: bool) -> VideoTeacher:
    from diffusers import UNet3DConditionModel

    parts = build_latent_parts(UNet3DConditionModel, zeroscope_unet_config(tiny), device, tiny)
    extra = dict(resolution=TINY_RESOLUTION) if tiny else {}
    return VideoTeacher.from_components(**parts, device=device, dtype=dtype, frames=16, **extra)


def build_wan(device: torch.device, dtype: torch.dtype, tiny: bool):
    import wan_configs  # benchmarks/wan_configs.py, next to this script

    return wan_configs.build_wan_teacher(device, dtype, tiny=tiny)


# --video NAME -> builder(device, dtype, tiny); another video teacher adds its entry here
VIDEO_TEACHERS: dict[str, Callable[[torch.device, torch.dtype, bool], Any]] = {
    "zeroscope": build_zeroscope,
    "wan": build_wan,
}


def build_mvdream(device: torch.device, dtype: torch.dtype, tiny: bool):
    from ayg.teachers.mvdream import MVDreamArch, MVDreamTeacher

    arch = MVDreamArch()
    if tiny:
        arch = MVDreamArch(
            model_channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(1, 2),
            num_head_channels=16,
            context_dim=32,
            vae_ch=32,
            vae_ch_mult=(1, 2),
            vae_num_res_blocks=1,
            text_width=32,
            text_layers=2,
            text_heads=2,
            image_size=16,
        )
    with torch.device(device):
        return MVDreamTeacher.from_config(arch, device=device, dtype=dtype)


def n_params(teacher) -> float:
    denoiser = teacher.unet if hasattr(teacher, "unet") else teacher.transformer  # Wan
    mods = (denoiser, teacher.vae, teacher.text_encoder)
    return sum(p.numel() for m in mods for p in m.parameters()) / 1e6


# ----------------------------------------------------------------------------------------------
# Measuring


class Clock:
    """Wall time of GPU work: CUDA events on CUDA, the host clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def median_ms(self, fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        return statistics.median(self.ms(fn) for _ in range(reps))

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated() / GIB if self.cuda else float("nan")


def matmul_peak(device: torch.device, dtype: torch.dtype, clock: Clock) -> float:
    """TFLOP/s of one large square matrix product on random data (mean of 10 after 3)."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    clock.sync()
    ms = statistics.mean(clock.ms(lambda: a @ b) for _ in range(10))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def count_flops(fn: Callable[[], object], teachers) -> int:
    """FLOPs of one call, counted by torch.utils.flop_counter with the UNets eager (a CUDA
    graph replay or a compiled kernel dispatches nothing to count)."""
    from torch.utils.flop_counter import FlopCounterMode

    with contextlib.ExitStack() as stack:
        for t in teachers:
            if t is not None and isinstance(getattr(t, "unet", None), FastUNet):
                stack.enter_context(t.unet.eager())
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
    return counter.get_total_flops()


def configure(teachers, runtime: Runtime) -> None:
    for t in teachers:
        if t is not None:
            configure_teacher(t, runtime)


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclasses.dataclass
class StepFigures:
    step_s: float  # median of the timed steps
    first_step_s: float  # the first step with the loop's setup: graph capture, autotuning
    peak_gib: float
    steps_s: list[float]


def time_loop(run: Callable[[RunContext], object], device, warmup: int, iters: int) -> StepFigures:
    """Runs a stage loop of warmup + iters steps; per-step times from its step callback."""
    clock = Clock(device)
    marks: list[float] = []

    def callback(phase: str, done: int) -> None:
        clock.sync()
        marks.append(time.perf_counter())
        if done == warmup:
            clock.reset_peak()

    ctx = RunContext(
        device=device, backend=BACKEND, log=LossLog(None), progress=False, callback=callback
    )
    clock.sync()
    clock.reset_peak()
    t0 = time.perf_counter()
    run(ctx)
    steps = [b - a for a, b in zip([t0, *marks[:-1]], marks, strict=True)]
    timed = steps[warmup:] or steps
    return StepFigures(statistics.median(timed), steps[0], clock.peak_gib(), steps)


def kernel_time_ms(events, key: str, device_type) -> float:
    """The device time of the kernels among profiler ``events`` (ms). The profiler also puts each
    ``ProfilerStep`` and ``record_function`` range on the device's timeline, spanning the
    kernels inside it; counting those too would count the kernels twice."""
    total = 0.0
    for e in events:
        ranged = getattr(e, "is_user_annotation", False) or e.key.startswith("ProfilerStep")
        if e.device_type == device_type and not ranged:
            total += getattr(e, key)
    return total / 1e3


def profile_step(run: Callable[[RunContext], object], device, warmup: int, path: Path) -> dict:
    """The last step of a loop of ``warmup`` + 1 steps under torch.profiler: its ops by self
    device time (CPU time off CUDA) as a table in ``path``, and the step's wall time against the
    time the device was busy with them; the rest is the host's launches, syncs and draws."""
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    clock, marks, got = Clock(device), [], []
    plan = schedule(wait=0, warmup=warmup, active=1, repeat=1)
    ready = lambda p: got.append(p.key_averages())  # noqa: E731
    with profile(activities=acts, schedule=plan, on_trace_ready=ready) as prof:

        def callback(phase: str, done: int) -> None:
            clock.sync()
            marks.append(time.perf_counter())
            prof.step()

        ctx = RunContext(
            device=device, backend=BACKEND, log=LossLog(None), progress=False, callback=callback
        )
        clock.sync()
        marks.append(time.perf_counter())
        run(ctx)
    events = got[0]
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    if cuda and not hasattr(events[0], key):
        key = "self_cuda_time_total"  # older torch
    write_text(path, events.table(sort_by=key, row_limit=40) + "\n")
    from torch.autograd import DeviceType

    busy = kernel_time_ms(events, key, DeviceType.CUDA) if cuda else None
    step = (marks[-1] - marks[-2]) * 1e3
    return {"step_ms": step, "device_busy_ms": busy, "table": str(path)}


# ----------------------------------------------------------------------------------------------
# The scene


def make_cloud(n: int, device: torch.device) -> GaussianCloud:
    """The C.1 initialisation of n Gaussians (radius 0.5), SH degree 2, opacity 0.3."""
    gen = torch.Generator().manual_seed(0)
    return GaussianCloud.init_sphere(n, 0.5, 2, 0.3, generator=gen, device=device).detached()


def stage_configs(tiny: bool) -> tuple[Stage1Config, Stage2Config]:
    s1, s2 = Stage1Config(), Stage2Config()
    s1.densify_start = 10**9  # densification runs every 1,000 steps: not part of a step
    if tiny:
        s1 = dataclasses.replace(s1, width=32, height=32)
        s2 = dataclasses.replace(s2, batch=2, width=32, height=20, knn=8)
    return s1, s2


# ----------------------------------------------------------------------------------------------
# Components of a step, each a callable that does its part alone


def stage1_camera_draw(s1: Stage1Config, device):
    gen = torch.Generator().manual_seed(1)
    sampler = Stage1CameraSampler(views=s1.views, width=s1.width, height=s1.height)
    return sampler.sample(s1.batch, gen, "cpu").to(device)


def stage2_draws(s2: Stage2Config, device):
    gen = torch.Generator().manual_seed(2)
    B, F, H, W = s2.batch, s2.frames, s2.height, s2.width
    fps, tau = FpsSampler(s2.fps_values, s2.fps_probs, F).sample(B, gen, device)
    cams = Stage2CameraSampler(frames=F, width=W, height=H).sample(B, gen, device)
    return fps, tau, cams


def moving_motion(s2: Stage2Config, device) -> Motion:
    """A deformation field that moves (a fresh one is the identity: its last layer is zero)."""
    motion = Motion([new_segment(s2, "base", PROMPT, device)])
    field = motion.segments[-1].field.requires_grad_(True)
    torch.nn.init.normal_(field.mlp[-1].weight, std=1e-2)
    return motion


def stage1_components(mv, sd, cloud: GaussianCloud, s1: Stage1Config, device) -> dict:
    cams = stage1_camera_draw(s1, device)
    n = s1.batch * s1.views
    live = GaussianCloud.from_state_dict(cloud.state_dict(), requires_grad=True).to(device)
    optimizer = make_optimizer(live)
    images = torch.rand(s1.batch, s1.views, 3, s1.height, s1.width, device=device)

    def optimizer_step() -> None:
        for p in live.parameters():
            p.grad = torch.ones_like(p) * 1e-3
        if grads_finite(live.parameters()):
            optimizer.step()

    comps = {}
    if mv is not None:
        comps.update(teacher_components("MVDream", mv, images, 3, Conditioning(cameras=cams)))
    comps.update(teacher_components("image (SD)", sd, images.reshape(n, 1, *images.shape[2:]), 3))
    comps["optimizer: finite check + Adam"] = (optimizer_step, [])
    return comps


def stage1_render(cloud: GaussianCloud, s1: Stage1Config, device) -> dict:
    cams = stage1_camera_draw(s1, device)
    live = GaussianCloud.from_state_dict(cloud.state_dict(), requires_grad=True).to(device)
    g_img = torch.randn(s1.batch * s1.views, 3, s1.height, s1.width, device=device)

    def render() -> None:
        out = rasterize(
            live.means, live.scales, live.quats, live.opacity, live.sh, cams, 0.0,
            live.sh_degree, BACKEND,
        )  # fmt: skip
        out.rgb.backward(g_img)

    return {f"render: {cloud.num} Gaussians -> {len(cams)} views, fwd+bwd": (render, [])}


def stage2_components(vid, sd, cloud: GaussianCloud, s2: Stage2Config, device) -> dict:
    B, F, H, W = s2.batch, s2.frames, s2.height, s2.width
    fps, tau, _ = stage2_draws(s2, device)
    motion = moving_motion(s2, device)
    field = motion.segments[-1].field
    optimizer = torch.optim.Adam(field.parameters(), lr=s2.lr)
    means0 = cloud.means.detach()
    knn = knn_indices(means0, k=min(s2.knn, cloud.num - 1))
    frames = torch.rand(B, F, 3, H, W, device=device)
    with torch.no_grad():
        positions0, _ = motion.positions_for_training(means0, tau.reshape(-1))

    def regularizers() -> None:
        pos = positions0.detach().requires_grad_(True)
        loss = s2.lambda_rigidity * rigidity_loss(pos - means0[None], knn, validate=False)
        loss = loss + s2.lambda_jsd * jsd_regularizer(means0, pos)
        loss.backward()

    def optimizer_step() -> None:
        for p in field.parameters():
            p.grad = torch.ones_like(p) * 1e-3
        if grads_finite(list(field.parameters())):
            optimizer.step()

    comps = dict(teacher_components("video", vid, frames, 3, Conditioning(fps=fps)))
    k = s2.image_frames
    picked = frames[:, :k].reshape(B * k, 1, 3, H, W)
    comps.update(teacher_components("image (SD)", sd, picked, 2))
    comps["regularizers: rigidity + JSD, fwd+bwd"] = (regularizers, [])
    comps["optimizer: finite check + Adam"] = (optimizer_step, [])
    return comps


def stage2_render(cloud: GaussianCloud, s2: Stage2Config, device) -> dict:
    """The deformation field at every Gaussian and frame, then the frames, forward+backward."""
    _, tau, cams = stage2_draws(s2, device)
    motion = moving_motion(s2, device)
    means0 = cloud.means.detach()
    g_frames = torch.randn(len(cams), 3, s2.height, s2.width, device=device)

    def render() -> None:
        positions, _ = motion.positions_for_training(means0, tau.reshape(-1))
        out = rasterize(
            positions, cloud.scales, cloud.quats, cloud.opacity, cloud.sh, cams, 0.0,
            cloud.sh_degree, BACKEND,
        )  # fmt: skip
        out.rgb.backward(g_frames)

    return {f"render: field + {cloud.num} Gaussians -> {len(cams)} frames, fwd+bwd": (render, [])}


def teacher_components(name: str, teacher, images: torch.Tensor, branches: int, cond=None):
    """The encoder's forward+backward over ``images`` (B, F, 3, H, W) and one batched UNet call
    of ``branches`` CFG branches, as the distillation loss runs them."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = teacher.encode(images, generator=gen)  # (B, F, c, h, w)
    g_z = torch.randn_like(z)
    b = z.shape[0]
    noisy = torch.randn((branches * b, *z.shape[1:]), device=z.device)
    t = torch.randint(20, 980, (branches * b,), generator=gen).to(z.device)
    emb = teacher.embed([PROMPT, "", "low motion"][:branches])
    emb = emb.repeat_interleave(b, dim=0)  # (branches·B, L, D)
    cond_k = None if cond is None else cond.repeat(branches)

    def encoder() -> None:
        x = images.detach().requires_grad_(True)
        teacher.encode(x, generator=gen).backward(g_z)

    def unet() -> None:
        with torch.no_grad():
            teacher.predict_noise(noisy, t, emb, cond_k)

    n, f_in = images.shape[:2]  # frames in; a Wan clip's latent has 1 + (F − 1)/4 of them
    unit = f"{n} clips of {f_in}" if teacher.kind == "video" else f"{n}×{f_in} images"
    net = "UNet" if hasattr(teacher, "unet") else "transformer"
    return {
        f"{name} VAE encoder, {n * f_in} frames, fwd+bwd": (encoder, [teacher]),
        f"{name} {net}, {branches} CFG × {unit}, no grad": (unet, [teacher]),
    }


def encoder_modes(vid, runtime: Runtime, s2: Stage2Config, device, clock: Clock, reps: int):
    """The video teacher's encoder forward+backward over one stage-2 batch of frames under each
    ``encoder_backward``: time, FLOPs and the memory it needs above what was allocated before."""
    from ayg.teachers.stable_diffusion import ENCODER_BACKWARDS

    frames = torch.rand(s2.batch, s2.frames, 3, s2.height, s2.width, device=device)
    n = s2.batch * s2.frames
    print(f"\nvideo VAE encoder, {n} frames, fwd+bwd, by encoder_backward (paper runtime)")
    print(f"{'mode':10s} {'ms':>8s} {'TFLOP':>7s} {'GiB above start':>16s} {'GiB/frame':>10s}")
    out = {}
    for mode in ENCODER_BACKWARDS:
        configure([vid], dataclasses.replace(runtime, encoder_backward=mode))
        (fn, _), _ = teacher_components("video", vid, frames, 3).values()
        free_memory()
        base = torch.cuda.memory_allocated() if clock.cuda else 0
        clock.reset_peak()
        try:
            ms = clock.median_ms(fn, reps)
        except torch.OutOfMemoryError:
            print(f"{mode:10s} out of memory")
            continue
        above = (clock.peak_gib() * GIB - base) / GIB
        tflop = count_flops(fn, [vid]) / 1e12
        out[mode] = dict(ms=ms, tflop=tflop, gib_above_start=above, gib_per_frame=above / n)
        print(f"{mode:10s} {ms:8.1f} {tflop:7.2f} {above:16.2f} {above / n:10.3f}", flush=True)
    return out


def time_components(comps: dict, clock: Clock, reps: int) -> dict[str, dict]:
    """Median time, peak memory (weights included) and FLOPs of each component alone."""
    out = {}
    for name, (fn, teachers) in comps.items():
        free_memory()
        clock.reset_peak()
        first = clock.ms(fn)  # the first call pays compilation, graph capture, autotuning
        ms = clock.median_ms(fn, reps, warmup=0)
        peak = clock.peak_gib()
        flops = count_flops(fn, teachers) / 1e12
        out[name] = {"ms": ms, "first_ms": first, "peak_gib": peak, "tflop": flops}
    return out


# ----------------------------------------------------------------------------------------------
# Report


def variants_of(paper: Runtime) -> dict[str, Runtime]:
    """The paper runtime with one lever changed at a time."""
    return {
        "paper-no-graphs": dataclasses.replace(paper, cuda_graphs=False),
        "paper-keep": dataclasses.replace(paper, encoder_backward="keep"),
        "paper-convs": dataclasses.replace(paper, encoder_backward="convs"),
        "paper-fused": dataclasses.replace(paper, encoder_backward="fused"),
        "paper-channels-last": dataclasses.replace(paper, channels_last=not paper.channels_last),
        "paper-encoder-nhwc": dataclasses.replace(
            paper, encoder_channels_last=not paper.encoder_channels_last
        ),
        "paper-no-cudnn-bench": dataclasses.replace(paper, cudnn_benchmark=False),
        "paper-no-tf32": dataclasses.replace(paper, tf32=False),
    }


def runtimes(compile_mode: str | None, variants: list[str]) -> dict[str, Runtime]:
    """naive, paper (``compile_mode``: None keeps the preset's), lowvram and the named variants
    of the paper runtime."""
    paper = runtime_of(preset("paper").teachers)
    if compile_mode is not None:
        paper = dataclasses.replace(paper, compile=compile_mode)
    out = {"naive": NAIVE, "paper": paper, "lowvram": runtime_of(preset("lowvram").teachers)}
    known = variants_of(paper)
    for name in variants:
        if name not in known:
            raise SystemExit(f"--variants takes names from {', '.join(known)}; got {name!r}")
        out[name] = known[name]
    return out


def print_components(
    title: str, naive: dict, opt: dict, peak: float, step_naive: float, step_opt: float
) -> list[dict]:
    print(f"\n{title}")
    head = f"{'component':58s} {'naive ms':>9s} {'ms':>8s} {'TFLOP':>7s} {'TFLOP/s':>8s} {'% peak':>7s} {'peak GiB':>8s}"
    print(head)
    rows = []
    for name, r in opt.items():
        tflop = r["tflop"]
        rate = tflop / (r["ms"] * 1e-3) if tflop else 0.0
        rows.append(
            dict(
                component=name,
                naive_ms=naive[name]["ms"],
                ms=r["ms"],
                tflop=tflop,
                tflops=rate,
                pct_peak=100 * rate / peak if rate else 0.0,
                peak_gib=r["peak_gib"],
            )
        )
        cells = (
            f"{tflop:7.2f} {rate:8.1f} {100 * rate / peak:6.1f}%"
            if tflop
            else f"{'-':>7s} {'-':>8s} {'-':>7s}"
        )
        print(f"{name:58s} {naive[name]['ms']:9.1f} {r['ms']:8.1f} {cells} {r['peak_gib']:8.1f}")
    s_naive = sum(r["naive_ms"] for r in rows)
    s_opt = sum(r["ms"] for r in rows)
    total_tflop = sum(r["tflop"] for r in rows)
    print(f"{'sum of the components':58s} {s_naive:9.1f} {s_opt:8.1f} {total_tflop:7.2f}")
    rate = total_tflop / step_opt if step_opt else 0.0
    print(
        f"{'whole step (the stage loop)':58s} {step_naive * 1e3:9.1f} {step_opt * 1e3:8.1f} "
        f"{total_tflop:7.2f} {rate:8.1f} {100 * rate / peak:6.1f}%"
    )
    return rows


def run_header(cuda: bool) -> dict:
    """What every benchmark report starts with: device, torch, commit and the command line."""
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "commit": git_commit(),
        "command": " ".join(["python", *sys.argv]),
    }


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_loops(
    stage: str, runs: list[tuple], device, warmup: int, iters: int
) -> dict[str, StepFigures]:
    """runs: (label, runtime, teachers, loop(ctx)). One failure is printed, not raised."""
    figs = {}
    for label, rt, teachers, loop in runs:
        configure(teachers, rt)
        free_memory()
        try:
            figs[label] = f = time_loop(loop, device, warmup, iters)
        except Exception as e:  # noqa: BLE001 - report and go on with the other runtimes
            print(f"{stage} {label:12s} failed: {type(e).__name__}: {e}", flush=True)
            free_memory()
            continue
        print(
            f"{stage} {label:12s} {f.step_s * 1e3:8.1f} ms/step   first step {f.first_step_s:6.2f} s"
            f"   peak {f.peak_gib:6.1f} GiB",
            flush=True,
        )
    return figs


def components_under(
    labels: list[str], rts: dict, teachers, make: Callable[[], dict], clock: Clock, reps: int
) -> dict[str, dict]:
    out = {}
    for label in labels:
        configure(teachers, rts[label])
        try:
            out[label] = time_components(make(), clock, reps)
        except Exception as e:  # noqa: BLE001
            print(f"# components under {label} failed: {type(e).__name__}: {e}", flush=True)
    return out


BACKEND = "auto"  # the renderer of every render in this run (set once the renderer is known)


def choose_renderer(ready: Path | None, timeout_s: float) -> str:
    """ "auto" (gsplat when it loads), or "torch" when ``ready``, a file another process creates
    once it has built gsplat's extension, is still missing after ``timeout_s``: importing gsplat
    while that build runs would start a second build over the first."""
    if ready is None:
        return "auto"
    t0 = time.perf_counter()
    while not ready.exists() and time.perf_counter() - t0 < timeout_s:
        time.sleep(2.0)
    print(f"# waited {time.perf_counter() - t0:.0f} s for {ready}: exists={ready.exists()}")
    return "auto" if ready.exists() else "torch"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=["1", "2", "all"], default="all")
    ap.add_argument("--video", choices=sorted(VIDEO_TEACHERS), default="zeroscope")
    ap.add_argument(
        "--compile",
        choices=["none", "default", "max-autotune-no-cudagraphs"],
        default=None,
        help="torch.compile mode of the UNets' forward in the paper runtime (default: the paper "
        "preset's teachers.compile; its cost lands in each loop's first step)",
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each loop")
    ap.add_argument("--iters", type=int, default=5, help="timed steps of each loop")
    ap.add_argument("--reps", type=int, default=5, help="timings of each component")
    ap.add_argument("--gaussians", type=int, default=50_000)
    ap.add_argument("--device", default=None, help="default: cuda (--tiny: cpu)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="TABLE",
        help="profile one stage-2 step of the paper runtime after the loops: the ops' table to "
        "TABLE, its wall and device-busy time to the JSON's 'stage2_profile'",
    )
    ap.add_argument("--commit", default=None, help="commit to record (default: git HEAD)")
    ap.add_argument("--tiny", action="store_true", help="tiny random models: a CPU check")
    ap.add_argument("--skip", default="", help="comma-separated runtimes to leave out")
    ap.add_argument(
        "--renderer-ready",
        type=Path,
        default=None,
        help="a file whose existence says gsplat's extension, built by another process, is "
        "ready: the first render waits for it (--renderer-wait s, then renders with torch)",
    )
    ap.add_argument("--renderer-wait", type=float, default=300.0)
    ap.add_argument(
        "--variants",
        default="",
        help="comma-separated variants of the paper runtime to time too (one lever changed): "
        + ", ".join(variants_of(NAIVE)),
    )
    args = ap.parse_args()
    if args.warmup < 1 or args.iters < 1 or args.reps < 1:
        raise SystemExit("--warmup, --iters and --reps must be >= 1")
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/step.py needs a CUDA device (or --tiny on the CPU)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_gauss = 500 if args.tiny else args.gaussians
    clock = Clock(device)
    torch.manual_seed(0)
    skip = {s for s in args.skip.split(",") if s}
    stages = {"1": ["1"], "2": ["2"], "all": ["1", "2"]}[args.stage]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, {dtype}")
    peak = matmul_peak(device, dtype, clock)
    print(f"# measured {dtype} matrix product: {peak:.1f} TFLOP/s", flush=True)
    res: dict[str, Any] = dict(
        device=name,
        commit=args.commit or git_commit(),
        torch=torch.__version__,
        peak_tflops=peak,
        video_teacher=args.video,
        gaussians=n_gauss,
        command=" ".join(["python", "benchmarks/step.py", *sys.argv[1:]]),
    )
    variants = [v for v in args.variants.split(",") if v]
    every = runtimes(args.compile, variants)
    res["compile"] = every["paper"].compile
    rts = {k: v for k, v in every.items() if k not in skip}
    res["runtimes"] = {k: dataclasses.asdict(v) for k, v in rts.items()}
    s1cfg, s2cfg = stage_configs(args.tiny)
    cloud = make_cloud(n_gauss, device)
    steps = args.warmup + args.iters
    compared = [k for k in ("naive", "paper") if k in rts]

    # -- the teachers, and every component but the renderer (which may still be building) --
    t0 = time.perf_counter()
    sd = build_sd(device, dtype, args.tiny)
    print(f"# image teacher (SD 2.1 base size): {n_params(sd):.0f} M parameters")
    mv = vid = None
    comps: dict[str, dict] = {}
    if "1" in stages:
        mv = build_mvdream(device, dtype, args.tiny)
        print(f"# multiview teacher (MVDream size): {n_params(mv):.0f} M parameters", flush=True)
        comps["1"] = components_under(
            compared,
            rts,
            [mv, sd],
            lambda: stage1_components(mv, sd, cloud, s1cfg, device),
            clock,
            args.reps,
        )
        mv.offload()
        free_memory()
    if "2" in stages:
        vid = VIDEO_TEACHERS[args.video](device, dtype, args.tiny)
        s2cfg = stage2_defaults(s2cfg, vid)  # clips of the teacher's length, as run_stage2 does
        print(
            f"# video teacher ({args.video} size): {n_params(vid):.0f} M parameters, "
            f"{vid.frames} frames at {vid.resolution[0]}×{vid.resolution[1]}",
            flush=True,
        )
        comps["2"] = components_under(
            compared,
            rts,
            [vid, sd],
            lambda: stage2_components(vid, sd, cloud, s2cfg, device),
            clock,
            args.reps,
        )
        if "paper" in rts and hasattr(vid, "unet"):  # encoder_backward modes: UNet teachers
            res["encoder_modes"] = encoder_modes(vid, rts["paper"], s2cfg, device, clock, args.reps)
    print(f"# teachers built and components timed in {time.perf_counter() - t0:.0f} s", flush=True)

    # -- the renderer --
    global BACKEND
    BACKEND = choose_renderer(args.renderer_ready, args.renderer_wait)
    res["renderer"] = "gsplat" if BACKEND == "auto" and gsplat_available() else "torch"
    print(f"# renderer: {res['renderer']}", flush=True)
    for stage in stages:
        make = stage1_render if stage == "1" else stage2_render
        cfg = s1cfg if stage == "1" else s2cfg
        for label in compared:
            configure([sd], rts[label])  # TF32 for the field follows the runtime
            try:
                comps[stage].setdefault(label, {}).update(
                    time_components(make(cloud, cfg, device), clock, args.reps)
                )
            except Exception as e:  # noqa: BLE001
                print(f"# render under {label} failed: {type(e).__name__}: {e}", flush=True)

    def save(complete: bool) -> None:
        """Write what is measured so far (a run cut short still leaves its figures)."""
        if args.json is not None:
            res["complete"] = complete
            write_text(args.json, json.dumps(res, indent=2, sort_keys=True) + "\n")

    res["components"] = comps  # per stage and runtime; the tables below are built from them
    save(complete=False)

    # -- the stage loops --
    figs1: dict[str, StepFigures] = {}
    figs2: dict[str, StepFigures] = {}
    res["stage1"], res["stage2"] = {}, {}  # each filled once its loops have run
    if "1" in stages:
        if vid is not None:
            vid.offload()
            vid.vae.to("cpu")
        mv.activate()
        s1 = dataclasses.replace(s1cfg, steps=steps)

        def loop1(ctx, s1=s1):
            return run_stage1(PROMPT, s1, {"multiview": mv, "image": sd}, ctx, 0, cloud)

        runs = [(k, rt, [mv, sd], loop1) for k, rt in rts.items() if k != "lowvram"]
        figs1 = run_loops("stage1", runs, device, args.warmup, args.iters)
        res["stage1"] = {k: dataclasses.asdict(v) for k, v in figs1.items()}
        save(complete=False)
        mv.offload()
        free_memory()
    if "2" in stages:
        vid.activate()
        runs = []
        for label, rt in rts.items():
            runs.append((label, rt, [vid, sd], stage2_loop(vid, sd, cloud, s2cfg, steps, None)))
        if "shared" not in skip and hasattr(vid, "same_encoder"):  # SD-autoencoder teachers
            for label in [k for k in rts if k not in ("naive", "lowvram")]:
                loop = with_shared_vae(vid, sd, stage2_loop(vid, sd, cloud, s2cfg, steps, None))
                runs.append((f"{label}+shared", rts[label], [vid, sd], loop))
        if "fast" not in skip and not args.tiny:
            fast = preset("fast")
            s2fast = stage2_defaults(fast.stage2, vid)
            loop = stage2_loop(vid, sd, cloud, s2fast, steps, fast.teachers.grad_frames)
            runs.append(("fast", runtime_of(fast.teachers), [vid, sd], loop))
        figs2 = run_loops("stage2", runs, device, args.warmup, args.iters)
        res["stage2"] = {k: dataclasses.asdict(v) for k, v in figs2.items()}
        save(complete=False)
        if args.profile is not None and "paper" in rts:
            configure([vid, sd], rts["paper"])
            loop = stage2_loop(vid, sd, cloud, s2cfg, args.warmup + 1, None)
            res["stage2_profile"] = prof = profile_step(loop, device, args.warmup, args.profile)
            busy = prof["device_busy_ms"]
            print(
                f"# stage 2 profiled step: {prof['step_ms']:.1f} ms"
                + ("" if busy is None else f", device busy {busy:.1f} ms")
                + f" (ops: {args.profile})",
                flush=True,
            )
            save(complete=False)

    # -- report --
    for stage, figs in (("1", figs1), ("2", figs2)):
        c = comps.get(stage, {})
        if "naive" in c and "paper" in c and "naive" in figs and "paper" in figs:
            res[f"stage{stage}_components"] = print_components(
                f"stage {stage} components (naive ms: plain eager; ms, TFLOP/s, % peak and peak "
                "memory: the paper runtime)",
                c["naive"],
                c["paper"],
                peak,
                figs["naive"].step_s,
                figs["paper"].step_s,
            )
    keys = {
        ("1", "paper"): ("stage1_step_s", "stage1_peak_gib"),
        ("1", "naive"): ("naive_stage1_step_s", "naive_stage1_peak_gib"),
        ("2", "paper"): ("stage2_step_s", "stage2_peak_gib"),
        ("2", "naive"): ("naive_stage2_step_s", "naive_stage2_peak_gib"),
        ("2", "lowvram"): ("lowvram_stage2_step_s", "lowvram_peak_gib"),
        ("2", "fast"): ("fast_stage2_step_s", "fast_stage2_peak_gib"),
        ("2", "paper+shared"): ("shared_encoder_stage2_step_s", "shared_encoder_stage2_peak_gib"),
    }
    for (stage, label), (step_key, peak_key) in keys.items():
        figs = figs1 if stage == "1" else figs2
        if label in figs:
            res[step_key], res[peak_key] = figs[label].step_s, figs[label].peak_gib
    for stage, figs in (("1", figs1), ("2", figs2)):
        if "naive" in figs and "paper" in figs:
            ratio = figs["naive"].step_s / figs["paper"].step_s
            res[f"stage{stage}_speedup_vs_naive"] = ratio
            print(f"# stage {stage}: naive / paper runtime step time = {ratio:.2f}")
    if "paper" in figs1 and "paper" in figs2:
        project(res)
    save(complete=True)
    if args.json is not None:
        print(f"# wrote {args.json}")


def stage2_loop(vid, sd, cloud, cfg2: Stage2Config, steps: int, grad_frames: int | None):
    cfg2 = dataclasses.replace(cfg2, steps=steps)

    def loop(ctx):
        motion = Motion([new_segment(cfg2, "base", PROMPT, ctx.device)])
        teachers = {"video": vid, "image": sd}
        return run_stage2(PROMPT, cfg2, cloud, motion, teachers, ctx, 1, grad_frames)

    return loop


def with_shared_vae(vid, sd, loop):
    """``loop`` with the image teacher holding the video teacher's VAE: the step of two
    checkpoints whose encoders are equal, where run_stage2 encodes each frame once. (The random
    weights of two separately built VAEs differ, so the other loops encode twice.)"""

    def run(ctx):
        own = sd.vae
        sd.vae = vid.vae
        try:
            if not vid.same_encoder(sd):
                raise RuntimeError("the swapped-in VAE is not seen as the same encoder")
            return loop(ctx)
        finally:
            sd.vae = own

    return run


def project(res: dict) -> None:
    """The paper pipeline's wall time from the step times: stage 1 and the 3D fine-tuning of C.9
    at the stage-1 step, stage 2 and the 4D fine-tuning at the stage-2 step, plus once per loop
    its one-time costs (graph capture, cuDNN autotuning, compilation): the loop's first-step
    overhead and, since the components' phase ran first and paid what a process pays once
    (the UNets' compilation), the paper components' first calls beyond their median."""
    cfg, ft = RunConfig(), FinetuneConfig()
    s1, s2 = res["stage1_step_s"], res["stage2_step_s"]

    def first_calls(stage: str) -> float:
        comps = res.get("components", {}).get(stage, {}).get("paper", {})
        return sum(max(0.0, c.get("first_ms", c["ms"]) - c["ms"]) for c in comps.values()) / 1e3

    once1, once2 = first_calls("1"), first_calls("2")
    over1 = max(0.0, res["stage1"]["paper"]["first_step_s"] - s1) + once1
    over2 = max(0.0, res["stage2"]["paper"]["first_step_s"] - s2) + once2
    steps1, steps2 = cfg.stage1.steps + ft.steps_3d, cfg.stage2.steps + ft.steps_4d
    total = steps1 * s1 + steps2 * s2 + 2 * over1 + 2 * over2
    no_ft = cfg.stage1.steps * s1 + cfg.stage2.steps * s2 + over1 + over2
    res["paper_pipeline_projected_min"] = total / 60
    res["paper_pipeline_no_finetune_projected_min"] = no_ft / 60
    res["projection"] = dict(
        stage1_steps=steps1,
        stage2_steps=steps2,
        stage1_overhead_s=over1,
        stage2_overhead_s=over2,
        stage1_components_first_calls_s=once1,
        stage2_components_first_calls_s=once2,
    )
    print(
        f"\n# projected paper pipeline: {total / 60:.1f} min ({steps1} stage-1/3D steps at "
        f"{s1 * 1e3:.0f} ms, {steps2} stage-2/4D steps at {s2 * 1e3:.0f} ms, first-step overheads "
        f"{over1:.1f} s + {over2:.1f} s per loop, of which the components' first calls "
        f"{once1:.1f} s + {once2:.1f} s); without the fine-tuning {no_ft / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
