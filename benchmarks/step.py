"""Time and peak GPU memory of one distillation step of each AYG stage with real-size teachers.

The teachers have the real architectures with random weights (no download): Stable Diffusion
2.1 base (UNet + VAE + an OpenCLIP-H-sized CLIPTextModel), MVDream 4-view (``ayg.teachers.mvdream``)
and a Zeroscope/ModelScope-sized ``UNet3DConditionModel``, all in bf16 on CUDA.

* stage 1 (E.2, table 3): 4 views at 256×256 through MVDream (CSD, ω_3D 1.6, negative prompt
  ω_neg 0.8) + the image teacher at 320×512 (CSD, ω_im 0.4, view guidance ω_vg 3.0); one
  backward into a (1, 4, 3, 256, 256) image batch that requires grad.
* stage 2 (table 4): 4 clips × 16 frames at 160×256 -> 320×512 through the video teacher (CSD,
  negative prompt ω_neg 0.8, motion amplification ω_ma 24) + the image teacher on 4 frames of each
  clip; one backward into the (4, 16, 3, 160, 256) frames.

Options compared: ``grad_frames`` (encoder backprop through k of 16 frames), offloading (each
teacher activated, its loss backpropagated, then its weights offloaded to the CPU; the
transfers dominate), and gradient checkpointing of the VAE encoders (``--breakdown`` also times
each encoder's forward+backward and each batched UNet call alone).
Printed figures are seconds per step (mean over ``--iters`` after ``--warmup``) and the peak of
``torch.cuda.max_memory_allocated`` during those steps (weights included).

    PYTHONPATH=src python benchmarks/step.py [--stage 1|2|all] [--warmup 2] [--iters 5] [--breakdown]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ayg.cameras import Stage1CameraSampler
from ayg.distill import Conditioning, TeacherTerm, TRangeSchedule, compose, distill_loss, view_words
from ayg.teachers.stable_diffusion import StableDiffusionTeacher
from ayg.teachers.video import VideoTeacher

PROMPT = "a corgi running, highly detailed"
NEG_3D = "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear"
NEG_VID = "low motion, static statue, not moving, no motion"
GIB = 2**30


# ----------------------------------------------------------------------------------------------
# Real-size configurations (the public model cards' config.json values)


def sd21_unet_config() -> dict:
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


def sd_vae_config() -> dict:
    return dict(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=768,
        scaling_factor=0.18215,
    )


def openclip_h_text_config():
    from transformers import CLIPTextConfig

    # OpenCLIP ViT-H/14 text tower as SD 2.x uses it: 23 of 24 layers (penultimate output)
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=1024,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )


def zeroscope_unet_config() -> dict:
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


def build_latent_parts(unet_cls, unet_cfg: dict, device: torch.device) -> dict:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    with torch.device(device):  # initialise on the GPU: seconds instead of minutes on the CPU
        return dict(
            unet=unet_cls(**unet_cfg),
            vae=AutoencoderKL(**sd_vae_config()),
            text_encoder=CLIPTextModel(openclip_h_text_config()),
            tokenizer=ByteTokenizer(),
            alphas_cumprod=alphas_cumprod(),
        )


def build_sd(device: torch.device, dtype: torch.dtype) -> StableDiffusionTeacher:
    from diffusers import UNet2DConditionModel

    parts = build_latent_parts(UNet2DConditionModel, sd21_unet_config(), device)
    return StableDiffusionTeacher.from_components(**parts, device=device, dtype=dtype)


def build_video(device: torch.device, dtype: torch.dtype) -> VideoTeacher:
    from diffusers import UNet3DConditionModel

    parts = build_latent_parts(UNet3DConditionModel, zeroscope_unet_config(), device)
    return VideoTeacher.from_components(**parts, device=device, dtype=dtype, frames=16)


def build_mvdream(device: torch.device, dtype: torch.dtype):
    """MVDream from ``ayg.teachers.mvdream`` (random weights), or None if it is unavailable."""
    try:
        from ayg.teachers.mvdream import MVDreamTeacher
    except ImportError as e:
        print(f"# MVDream teacher unavailable ({e}); stage 1 runs the image teacher only")
        return None
    with torch.device(device):
        return MVDreamTeacher.from_config(device=device, dtype=dtype)


def n_params(teacher) -> float:
    return (
        sum(
            p.numel()
            for m in (teacher.unet, teacher.vae, teacher.text_encoder)
            for p in m.parameters()
        )
        / 1e6
    )


# ----------------------------------------------------------------------------------------------
# Steps


@dataclass
class Options:
    grad_frames: int | None = None
    offload: bool = False
    vae_checkpointing: bool = False

    def label(self) -> str:
        parts = [f"grad_frames={self.grad_frames or 'all'}"]
        parts += ["offload"] if self.offload else []
        parts += ["vae-ckpt"] if self.vae_checkpointing else []
        return " ".join(parts)


def run_terms(terms: list[tuple], step: int, gen: torch.Generator, opt: Options) -> dict:
    """terms: (name, teacher, term, images, kwargs). Without offloading: the composed loss and one
    backward. With offloading: each teacher is activated, its loss backpropagated, then its
    UNet and text encoder go back to the CPU (backward before offload, so no offload can pull
    weights from under a pending graph; a real stage keeps the render graph with retain_graph)."""
    if not opt.offload:
        parts = {
            name: distill_loss(t, term, x, PROMPT, step, gen, **kw)
            for name, t, term, x, kw in terms
        }
        loss, stats = compose(parts)
        loss.backward()
        return stats
    stats = {}
    for name, teacher, term, x, kw in terms:
        teacher.activate()
        loss, s = distill_loss(teacher, term, x, PROMPT, step, gen, **kw)
        loss.backward()
        teacher.offload()
        stats.update({f"{name}/{k}": v for k, v in s.items()})
    return stats


def stage1_step(mv, sd, device, opt: Options, step: int, gen: torch.Generator) -> dict:
    images = torch.rand(1, 4, 3, 256, 256, device=device, requires_grad=True)  # (B, V, 3, H, W)
    cams = Stage1CameraSampler().sample(1, gen, device)  # 4 cameras
    terms = []
    if mv is not None:
        mv_term = TeacherTerm(
            weight=1.6,
            t_range=TRangeSchedule.multiview_stage1(),
            negative_prompt=NEG_3D,
            negative_weight=0.8,
        )
        terms.append(("mv", mv, mv_term, images, dict(cond=Conditioning(cameras=cams))))
    im_term = TeacherTerm(weight=0.4, t_range=TRangeSchedule.image_stage1(), view_guidance=3.0)
    terms.append(("im", sd, im_term, images, dict(views=view_words(cams))))  # (1, 4) -> 4 images
    stats = run_terms(terms, step, gen, opt)
    assert images.grad is not None
    return stats


def stage2_step(vid, sd, device, opt: Options, step: int, gen: torch.Generator) -> dict:
    frames = torch.rand(4, 16, 3, 160, 256, device=device, requires_grad=True)  # (B, F, 3, H, W)
    fps = torch.tensor([4.0, 4.0, 8.0, 12.0], device=device)
    vid_term = TeacherTerm(
        weight=1.0,
        negative_prompt=NEG_VID,
        negative_weight=0.8,
        motion_amplification=24.0,
        grad_frames=opt.grad_frames,
    )
    picked = frames[:, [2, 7, 10, 13]]  # 3 random frames + the middle (8th) one: (4, 4, 3, H, W)
    terms = [
        ("vid", vid, vid_term, frames, dict(cond=Conditioning(fps=fps))),
        ("im", sd, TeacherTerm(weight=1.0), picked, {}),
    ]
    stats = run_terms(terms, step, gen, opt)
    assert frames.grad is not None
    return stats


def measure(step_fn: Callable[[int], dict], warmup: int, iters: int) -> tuple[float, float]:
    """(seconds per step, peak GiB allocated during the timed steps)."""
    for i in range(warmup):
        step_fn(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(iters):
        step_fn(warmup + i)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters, torch.cuda.max_memory_allocated() / GIB


def timed(fn: Callable[[], object], iters: int = 3) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def breakdown(
    name: str, teacher, images: torch.Tensor, branches: int, cond=None, grad_frames=None
) -> None:
    """Encoder forward+backward and one batched UNet call (``branches`` CFG branches) alone."""
    teacher.activate()

    def enc() -> None:
        x = images.detach().requires_grad_(True)
        teacher.encode(x, grad_frames=grad_frames).sum().backward()

    with torch.no_grad():
        z = teacher.encode(images)  # (B, F, 4, h, w)
    b = z.shape[0]
    noisy = z.repeat(branches, 1, 1, 1, 1)
    t = torch.full((b * branches,), 500, device=z.device)
    emb = teacher.embed([PROMPT]).expand(b * branches, -1, -1)
    cond_k = None if cond is None else cond.repeat(branches)

    def unet() -> None:
        with torch.no_grad():
            teacher.predict_noise(noisy, t, emb, cond_k)

    print(
        f"  {name:28s} encode+backward {timed(enc) * 1000:7.1f} ms   unet x{branches} branches "
        f"{tuple(noisy.shape)} {timed(unet) * 1000:7.1f} ms",
        flush=True,
    )


def set_vae_checkpointing(teachers, on: bool) -> None:
    for t in teachers:
        if t is None:
            continue
        if on:
            t.vae.enable_gradient_checkpointing()
        else:
            t.vae.disable_gradient_checkpointing()


def run_configs(
    name: str, configs: list[Options], make_step, teachers, warmup: int, iters: int
) -> None:
    for opt in configs:
        set_vae_checkpointing(teachers, opt.vae_checkpointing)
        for t in teachers:  # every config starts with all weights resident or all offloaded
            if t is not None and opt.offload:
                t.offload()
            elif t is not None:
                t.activate()
        torch.cuda.empty_cache()
        try:
            sec, peak = measure(lambda s, opt=opt: make_step(opt, s), warmup, iters)
            print(
                f"{name:8s} {opt.label():38s} {sec * 1000:9.1f} ms/step   peak {peak:6.1f} GiB",
                flush=True,
            )
        except torch.OutOfMemoryError:
            print(f"{name:8s} {opt.label():38s}   out of memory", flush=True)
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=["1", "2", "all"], default="all")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--breakdown", action="store_true", help="also time encoders and UNets alone")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/step.py needs a CUDA device")
    device, dtype = torch.device(args.device), torch.bfloat16
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    gen = torch.Generator().manual_seed(0)
    print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16")

    t0 = time.perf_counter()
    sd = build_sd(device, dtype)
    print(f"# image teacher (SD 2.1 base size): {n_params(sd):.0f} M parameters")
    mv = vid = None
    if args.stage in ("1", "all"):
        mv = build_mvdream(device, dtype)
        if mv is not None:
            print(f"# multiview teacher (MVDream size): {n_params(mv):.0f} M parameters")
    if args.stage in ("2", "all"):
        vid = build_video(device, dtype)
        print(f"# video teacher (Zeroscope size): {n_params(vid):.0f} M parameters")
    torch.cuda.synchronize()
    print(
        f"# built in {time.perf_counter() - t0:.1f} s; weights {torch.cuda.memory_allocated() / GIB:.1f} GiB"
    )

    if args.stage in ("1", "all"):
        configs = [Options(), Options(offload=True), Options(vae_checkpointing=True)]
        run_configs(
            "stage1",
            configs,
            lambda o, s: stage1_step(mv, sd, device, o, s, gen),
            [mv, sd],
            args.warmup,
            args.iters,
        )
    if args.stage in ("2", "all"):
        configs = [
            Options(grad_frames=None),
            Options(grad_frames=None, vae_checkpointing=True),
            Options(grad_frames=4),
            Options(grad_frames=1),
            Options(grad_frames=4, offload=True),
            Options(grad_frames=4, vae_checkpointing=True),
        ]
        if mv is not None:
            mv.offload()  # stage 2 does not use MVDream
            torch.cuda.empty_cache()
        run_configs(
            "stage2",
            configs,
            lambda o, s: stage2_step(vid, sd, device, o, s, gen),
            [vid, sd],
            args.warmup,
            args.iters,
        )

    if args.breakdown:
        print("# breakdown (bf16):")
        set_vae_checkpointing([mv, sd, vid], False)
        if mv is not None:
            cams = Stage1CameraSampler().sample(1, gen, device)
            breakdown(
                "mvdream 4x256^2",
                mv,
                torch.rand(1, 4, 3, 256, 256, device=device),
                3,
                Conditioning(cameras=cams),
            )
            mv.offload()
        breakdown("image 4x(256^2->320x512)", sd, torch.rand(4, 1, 3, 256, 256, device=device), 3)
        breakdown(
            "image 16x(160x256->320x512)", sd, torch.rand(16, 1, 3, 160, 256, device=device), 2
        )
        if vid is not None:
            fps = Conditioning(fps=torch.full((4,), 4.0, device=device))
            clips = torch.rand(4, 16, 3, 160, 256, device=device)
            for k in (None, 4, 1):
                breakdown(f"video 4x16 grad_frames={k or 'all'}", vid, clips, 3, fps, grad_frames=k)


if __name__ == "__main__":
    main()
