"""Train the toy world's three teachers and two classifiers, the nets of ``ayg.toyworld.nets``
that the ``toy`` preset loads. From the repository root:

    PYTHONPATH=src python -m tools.toyworld.train --out DIR [--budget-s 430] [--nets image,video]

(the commands that made the shipped weights are in docs/TOY_TEACHERS.md)

For each net: render a dataset once with the analytic renderer (``tools.toyworld.data``; on the GPU
when there is one), then train for a fixed number of steps with AdamW, a cosine learning rate,
an EMA of the weights and bf16 autocast (CUDA). Teachers learn ε-prediction on pixels in [-1, 1]
with token dropout for classifier-free guidance (whole prompt and each slot; the video
negative prompt (null, null, static) must stay in distribution); classifiers learn
cross-entropy on clean renders with mild noise / blur augmentation.

Each net also stops at its wall-clock budget (``--budget-s``, rendering included); its learning
rate follows progress = max(step / steps, time / budget), so a budget stop still ends on a
decayed rate. With ``--parallel`` (default on CUDA) every net trains in its own process on the
one GPU (these nets are launch-bound, so processes overlap well); then the main process
evaluates: classifier accuracies on a held-out render set (another seed) and DDIM samples of
every teacher judged by the classifiers, the video teacher's on held-out pairs too.

``--init-from DIR`` starts the listed nets from DIR's weights (continued training; the nets are
convolutional, so a classifier may continue at another input size); ``--compile true`` runs the
training forward through ``torch.compile`` (eager again if that fails).

Outputs in ``--out``: ``{image,multiview,video,appearance,motion}.safetensors`` (EMA weights, the
config and a checksum in the metadata), ``report.json``, ``samples.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ayg.cameras import Stage1CameraSampler
from ayg.toyworld.nets import (
    AppearanceNet,
    MotionNet,
    ToyUNet,
    camera_features,
    checksum,
    ddim_sample,
    default_config,
    load_net,
    save_net,
)
from ayg.toyworld.vocab import COLOURS, MOTION_CLASSES, NULL_TOKENS, SHAPES, ToyPrompt
from tools.toyworld import data as toydata
from tools.toyworld import scene as toyscene

REPO_ROOT = Path(__file__).resolve().parents[2]  # holds tools/ (and src/ in a checkout)

TEACHERS = ("image", "multiview", "video")
CLASSIFIERS = ("appearance", "motion")
ALL_NETS = CLASSIFIERS + TEACHERS


@dataclass
class TrainConfig:
    """Everything that determines the weights. Steps / batches / dataset sizes per net."""

    out: str = "toy_weights"
    nets: str = ",".join(ALL_NETS)
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available, else cpu
    parallel: bool = True  # one process per net (CUDA only)
    budget_s: float = 430.0  # wall clock per net, rendering included
    evaluate: bool = True
    supersample: int = 2  # anti-aliased renders (the renderer averages s×s subpixels)
    # dataset sizes (sequences) and held-out validation sizes
    image_data: int = 100_000
    multiview_data: int = 30_000
    video_data: int = 24_000
    appearance_data: int = 60_000
    motion_data: int = 16_000
    val_data: int = 1024
    # steps and batch sizes (sequences per step)
    image_steps: int = 20_000
    multiview_steps: int = 20_000
    video_steps: int = 20_000
    appearance_steps: int = 6_000
    motion_steps: int = 10_000
    image_batch: int = 256
    multiview_batch: int = 64
    video_batch: int = 32
    appearance_batch: int = 256
    motion_batch: int = 48
    # optimisation
    lr: float = 6e-4
    classifier_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    ema: float = 0.999
    grad_clip: float = 1.0
    drop_all: float = 0.1  # whole prompt → null (CFG)
    drop_slot: float = 0.15  # each slot → null independently
    # evaluation
    sample_steps: int = 50
    guidance: float = 4.0
    samples_per_prompt: int = 4
    # ground-truth clips of the video teacher's diffusion-classifier check
    classifier_clips: int = 256
    render_chunk: int = 8192  # frames rendered per call (dataset pre-rendering)
    render_frac: float = 0.3  # at most this share of a net's budget goes to rendering its data
    threads: int = 2  # torch CPU threads per process
    init_from: str = ""  # a folder of *.safetensors to start from (continue training)
    compile: bool = False  # torch.compile the training forward (falls back to eager on error)

    def net_list(self) -> list[str]:
        names = [n.strip() for n in self.nets.split(",") if n.strip()]
        bad = [n for n in names if n not in ALL_NETS]
        if bad or not names:
            raise ValueError(
                f"--nets must be a comma list of {', '.join(ALL_NETS)}, got {self.nets!r}"
            )
        return names


def log(name: str, msg: str) -> None:
    print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# datasets: rendered once, stored as uint8 on the training device


@dataclass
class Dataset:
    images: Tensor  # (N, F, 3, H, W) uint8
    tokens: Tensor  # (N, 3) long
    cameras: Tensor | None = None  # (N, F, 8) multiview camera features
    fps: Tensor | None = None  # (N,)
    labels: Tensor | None = None  # (N,) or (N, 2) classifier targets

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: Tensor) -> Dataset:
        opt = lambda x: None if x is None else x[idx]  # noqa: E731
        return Dataset(
            self.images[idx], self.tokens[idx], opt(self.cameras), opt(self.fps), opt(self.labels)
        )


def _sampler(name: str, cfg: TrainConfig):
    """(function(batch, generator) -> ToyBatch, frames per sequence) of a net's data."""
    ss, dev = cfg.supersample, "cpu"  # cameras on the CPU; see device_rendering
    if name in ("image", "multiview"):
        net = default_config(name)
        fn = toydata.sample_image_batch if name == "image" else toydata.sample_multiview_batch
        return (
            lambda b, g: fn(b, (net.height, net.width), g, supersample=ss, device=dev)
        ), net.frames
    if name == "video":
        net = default_config(name)
        return (
            lambda b, g: toydata.sample_video_batch(
                b, (net.height, net.width), g, supersample=ss, device=dev
            ),
            net.frames,
        )
    if name == "appearance":
        c = default_config(name)
        return (
            lambda b, g: toydata.sample_appearance_batch(
                b, (c.height, c.width), g, supersample=ss, device=dev
            )
        ), 1
    c = default_config(name)
    return (
        lambda b, g: toydata.sample_motion_batch(
            b, (c.height, c.width), g, frames=c.frames, supersample=ss, device=dev
        ),
        c.frames,
    )


@contextlib.contextmanager
def device_rendering(device: torch.device):
    """Let the samplers of ``tools.toyworld.data`` draw cameras on the CPU while the analytic renderer
    runs on ``device``. The samplers look at every camera from Python (view words, per-frame
    camera picks) and the renderer builds each frame's colour tensor; on a GPU each of those
    small host<->device copies synchronises, which made rendering many times slower than its
    arithmetic. So, inside the block: cameras move to ``device`` only in ``render_sequences``,
    colour tones are cached, and the renderer marches 1M rays at a time."""
    orig = (toydata.render_sequences, toyscene.colour_tones, toyscene._RAY_CHUNK)

    def render_on_device(prompts, cameras, tau, background, supersample=1):
        return orig[0](prompts, cameras.to(device), tau, background, supersample)

    if device.type != "cpu":
        toydata.render_sequences = render_on_device
        toyscene.colour_tones = functools.lru_cache(maxsize=64)(orig[1])
        toyscene._RAY_CHUNK = 1 << 20
    try:
        yield
    finally:
        toydata.render_sequences, toyscene.colour_tones, toyscene._RAY_CHUNK = orig


def render_dataset(
    name: str, size: int, cfg: TrainConfig, generator: torch.Generator, budget_s: float = math.inf
) -> Dataset:
    """Render ``size`` sequences for net ``name`` in chunks of ~render_chunk frames, stopping
    early (with a note) once ``budget_s`` seconds have passed."""
    sample, frames = _sampler(name, cfg)
    device = torch.device(cfg.device)
    chunk = max(1, cfg.render_chunk // frames)
    parts: list[Dataset] = []
    done = 0
    t0 = time.perf_counter()
    with device_rendering(device):
        while done < size:
            if done > 0 and time.perf_counter() - t0 > budget_s:
                log(name, f"render budget spent after {done} of {size} sequences")
                break
            b = min(chunk, size - done)
            tb = sample(b, generator)
            images = (tb.images * 255.0).round().to(device=device, dtype=torch.uint8)
            cams = None
            if name == "multiview":
                cams = camera_features(tb.cameras.c2w, tb.cameras.fov, frames).to(device)
            labels = None
            if name == "appearance":
                labels = torch.stack([tb.colour_labels, tb.shape_labels], dim=1)
            elif name == "motion":
                labels = tb.motion_labels
            fps = None if tb.fps is None else tb.fps.float().to(device)
            labels = None if labels is None else labels.to(device)
            parts.append(Dataset(images, tb.tokens.to(device), cams, fps, labels))
            done += b
    cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
    return Dataset(
        cat([p.images for p in parts]),
        cat([p.tokens for p in parts]),
        cat([p.cameras for p in parts]),
        cat([p.fps for p in parts]),
        cat([p.labels for p in parts]),
    )


def load_grown(net: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load ``state`` of a smaller net into ``net``, which may have gained layers (a video
    UNet's temporal attention: its temporal conv moves under ".conv"). Returns the names of
    ``net``'s tensors left at their initialisation; any tensor of ``state`` that finds no place
    is an error."""
    own = net.state_dict()
    mapped = {}
    for key, value in state.items():
        if key not in own:
            parts = key.split(".")
            alt = ".".join(parts[:2] + ["conv"] + parts[2:])
            if parts[0] in ("down_tconv", "up_tconv") and alt in own:
                key = alt
            else:
                raise ValueError(f"--init-from: tensor {key!r} has no place in the net")
        mapped[key] = value
    net.load_state_dict(mapped, strict=False)
    return [k for k in own if k not in mapped]


def drop_tokens(tokens: Tensor, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
    """Caption dropout (B, 3) → (B, 3): whole prompt with p = drop_all, else each slot with
    p = drop_slot (independently) set to its null id."""
    b = tokens.shape[0]
    u = torch.rand(b, 4, generator=generator, device=generator.device)
    drop = (u[:, :1] < cfg.drop_all) | (u[:, 1:] < cfg.drop_slot)  # (B, 3)
    null = torch.tensor(NULL_TOKENS, dtype=tokens.dtype, device=tokens.device)
    return torch.where(drop.to(tokens.device), null.expand(b, 3), tokens)


def to_unit(images: Tensor) -> Tensor:
    """uint8 → float in [0, 1]."""
    return images.float() / 255.0


# ----------------------------------------------------------------------------------------------
# training


class Schedule:
    """Warm-up then cosine to 10 %, on progress = max(step / steps, time / budget)."""

    def __init__(self, lr: float, steps: int, warmup: int, budget_s: float, t0: float) -> None:
        self.lr, self.steps, self.warmup, self.budget_s, self.t0 = lr, steps, warmup, budget_s, t0

    def progress(self, step: int) -> float:
        return max(step / self.steps, (time.perf_counter() - self.t0) / self.budget_s)

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup)
        p = min(1.0, self.progress(step))
        return self.lr * warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _unet_loss(
    net: ToyUNet, batch: Dataset, cfg: TrainConfig, gen: torch.Generator, train: bool
) -> Tensor:
    x0 = to_unit(batch.images) * 2.0 - 1.0  # (B, F, 3, H, W)
    b = x0.shape[0]
    if train:
        tokens = drop_tokens(batch.tokens, cfg, gen)
        t = torch.randint(0, net.cfg.timesteps, (b,), generator=gen, device=gen.device).to(
            x0.device
        )
    else:  # validation: full prompts, t on a fixed grid
        tokens = batch.tokens
        t = torch.linspace(0, net.cfg.timesteps - 1, b, device=x0.device).long()
    noise = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
    a = net.alphas_cumprod.to(x0.device)[t].view(b, 1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    with _autocast(x0.device):
        eps = net(xt, t, net.embed_tokens(tokens), batch.cameras, batch.fps)
    return F.mse_loss(eps.float(), noise)


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Classifier augmentation on (N, ..., 3, H, W) in [0, 1]: a 3×3 blur on half of the samples
    and Gaussian pixel noise of std U(0, 0.04) (the rasterizer's renders are softer than the
    analytic ones)."""
    n = x.shape[0]
    shape = x.shape
    flat = x.reshape(-1, 3, *shape[-2:])
    blurred = F.avg_pool2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), 3, stride=1).view(shape)
    pick = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)
    pick = pick.view(n, *([1] * (x.ndim - 1)))
    x = torch.where(pick, 0.5 * (x + blurred), x)
    std = 0.04 * torch.rand(n, generator=gen, device=gen.device).to(x.device).view(
        n, *([1] * (x.ndim - 1))
    )
    return (x + std * torch.randn(x.shape, generator=gen, device=gen.device).to(x.device)).clamp(
        0.0, 1.0
    )


def _classifier_loss(
    net: nn.Module, batch: Dataset, gen: torch.Generator, train: bool
) -> tuple[Tensor, Tensor]:
    """(cross-entropy, per-sample correct (N,) or (N, 2))."""
    x = to_unit(batch.images)
    if train:
        x = _augment(x, gen)
    with _autocast(x.device):
        if isinstance(getattr(net, "_orig_mod", net), AppearanceNet):  # compiled or not
            colour, shape = net(x[:, 0])
            loss = F.cross_entropy(colour.float(), batch.labels[:, 0]) + F.cross_entropy(
                shape.float(), batch.labels[:, 1]
            )
            correct = torch.stack(
                [colour.argmax(-1) == batch.labels[:, 0], shape.argmax(-1) == batch.labels[:, 1]],
                dim=1,
            )
        else:
            logits = net(x, batch.fps)
            loss = F.cross_entropy(logits.float(), batch.labels)
            correct = logits.argmax(-1) == batch.labels
    return loss, correct


def _build(name: str) -> tuple[nn.Module, str]:
    if name in TEACHERS:
        return ToyUNet(default_config(name)), "unet"
    if name == "appearance":
        return AppearanceNet(default_config(name)), "appearance"
    return MotionNet(default_config(name)), "motion"


def train_net(name: str, cfg: TrainConfig) -> dict:
    """Render, train, validate and save one net; returns its report entry."""
    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    index = ALL_NETS.index(name)
    cpu_gen = torch.Generator().manual_seed(cfg.seed * 1000 + index)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + index)
    torch.manual_seed(cfg.seed * 1000 + index)  # module initialisation only

    size = getattr(cfg, f"{name}_data")
    val_gen = torch.Generator().manual_seed(cfg.seed * 1000 + index + 500)
    val = render_dataset(name, cfg.val_data, cfg, val_gen)
    data = render_dataset(name, size, cfg, cpu_gen, cfg.render_frac * cfg.budget_s)
    t_render = time.perf_counter() - t_start
    log(
        name,
        f"rendered {len(data)} + {len(val)} sequences {tuple(data.images.shape[1:])} in {t_render:.1f}s",
    )

    net, arch = _build(name)
    init_steps = 0
    init_path = weights_file(cfg, name, Path("/nonexistent"))
    if init_path is not None:
        init, init_meta = load_net(init_path)
        missing = load_grown(net, init.state_dict())  # convolutional: any resolution
        if missing:
            log(name, f"new layers (zero-initialised): {len(missing)} tensors")
        prev = json.loads(init_meta.get("train", "{}"))
        init_steps = int(prev.get("total_steps", prev.get("steps", 0)))
        log(name, f"initialised from {init_path} ({init_steps} steps)")
    net = net.to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    forward = net
    if cfg.compile:
        forward = torch.compile(net)
    params = [p for p in net.parameters()]
    n_params = sum(p.numel() for p in params)
    teacher = name in TEACHERS
    steps = getattr(cfg, f"{name}_steps")
    batch_size = getattr(cfg, f"{name}_batch")
    base_lr = cfg.lr if teacher else cfg.classifier_lr
    opt = torch.optim.AdamW(params, lr=base_lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    remaining = max(1.0, cfg.budget_s - (time.perf_counter() - t_start))
    sched = Schedule(base_lr, steps, cfg.warmup, remaining, time.perf_counter())
    log(
        name,
        f"{n_params / 1e6:.2f}M params, up to {steps} steps of {batch_size}, {remaining:.0f}s left",
    )

    history: list[tuple[int, float]] = []  # (step, mean loss of the last 100 steps)
    loss_sum = torch.zeros((), device=device)
    step = 0
    t_train = time.perf_counter()
    while step < steps and sched.progress(step) < 1.0:
        for group in opt.param_groups:
            group["lr"] = sched(step)
        idx = torch.randint(0, len(data), (batch_size,), generator=gen, device=device).to(
            data.images.device
        )
        batch = data.batch(idx)
        opt.zero_grad(set_to_none=True)
        try:
            if teacher:
                loss = _unet_loss(forward, batch, cfg, gen, train=True)
            else:
                loss = _classifier_loss(forward, batch, gen, train=True)[0]
            loss.backward()
        except Exception as err:  # a failed torch.compile: carry on eagerly
            if forward is net:
                raise
            log(
                name,
                f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); eager from here",
            )
            forward = net
            continue
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), params, 1.0 - decay)
        step += 1
        loss_sum += loss.detach()
        if step % 100 == 0:
            history.append((step, float(loss_sum) / 100))  # one sync per 100 steps
            loss_sum.zero_()
        if step % 1000 == 0:
            rate = step / (time.perf_counter() - t_train)
            log(name, f"step {step} loss {history[-1][1]:.4f} lr {sched(step):.2e} {rate:.1f} it/s")
    t_loop = time.perf_counter() - t_train
    tail = [v for _, v in history[-5:]]
    # mean of the last 500 steps (or of all steps when fewer than 100)
    running = sum(tail) / len(tail) if tail else float(loss_sum) / max(step, 1)
    log(
        name,
        f"stopped after {step} steps ({t_loop:.0f}s, {step / max(t_loop, 1e-9):.1f} it/s), loss {running:.4f}",
    )

    entry: dict = {
        "params": n_params,
        "steps": step,
        "init_steps": init_steps,
        "total_steps": init_steps + step,
        "batch": batch_size,
        "dataset": len(data),
        "render_s": round(t_render, 1),
        "train_s": round(t_loop, 1),
        "final_train_loss": running,
        "loss_history": history,
    }
    entry.update(validate(name, ema, val, cfg, gen))
    log(name, "validation " + json.dumps({k: v for k, v in entry.items() if k.startswith("val")}))
    out = Path(cfg.out)
    meta = {
        "train": {k: v for k, v in entry.items() if k != "loss_history"},
        "checksum": checksum(ema),
    }
    meta["train"]["command_config"] = dataclasses.asdict(cfg)
    save_net(ema, out / f"{name}.safetensors", arch, extra=meta)
    entry["checksum"] = meta["checksum"]
    entry["total_s"] = round(time.perf_counter() - t_start, 1)
    return entry


@torch.no_grad()
def validate(
    name: str, net: nn.Module, val: Dataset, cfg: TrainConfig, gen: torch.Generator
) -> dict:
    """Teachers: ε-MSE on held-out renders with full prompts (t on a grid). Classifiers:
    accuracy on held-out renders (another seed; every pair)."""
    chunk = 256
    if name in TEACHERS:
        losses = [
            float(
                _unet_loss(
                    net,
                    val.batch(torch.arange(i, min(i + chunk, len(val)), device=val.images.device)),
                    cfg,
                    gen,
                    False,
                )
            )
            for i in range(0, len(val), chunk)
        ]
        return {"val_loss": sum(losses) / len(losses)}
    correct = []
    for i in range(0, len(val), chunk):
        idx = torch.arange(i, min(i + chunk, len(val)), device=val.images.device)
        correct.append(_classifier_loss(net, val.batch(idx), gen, train=False)[1])
    c = torch.cat(correct).float()
    if name == "appearance":
        return {"val_colour_acc": float(c[:, 0].mean()), "val_shape_acc": float(c[:, 1].mean())}
    labels = val.labels
    per = {
        MOTION_CLASSES[k]: float(c[labels == k].mean())
        for k in range(len(MOTION_CLASSES))
        if (labels == k).any()
    }
    return {"val_motion_acc": float(c.mean()), "val_motion_acc_per_class": per}


# ----------------------------------------------------------------------------------------------
# evaluation of the teachers by their DDIM samples


@torch.no_grad()
def weights_file(cfg: TrainConfig, name: str, out: Path) -> Path | None:
    """A net's weights: the run's own (``out``), else ``init_from``'s, else None."""
    for folder in (out, Path(cfg.init_from) if cfg.init_from else None):
        if folder is not None and (folder / f"{name}.safetensors").is_file():
            return folder / f"{name}.safetensors"
    return None


def evaluate_teachers(cfg: TrainConfig, out: Path) -> dict:
    """DDIM samples of each teacher (CFG ``guidance``), judged by the trained classifiers."""
    device = torch.device(cfg.device)
    loaded = functools.cache(lambda name: load_net(weights_file(cfg, name, out), device)[0])
    app, mot = loaded("appearance"), loaded("motion")
    gen = torch.Generator().manual_seed(cfg.seed + 4242)
    n = cfg.samples_per_prompt
    report: dict = {}
    grids: list[Tensor] = []

    def appearance_acc(images: Tensor, prompts: list[ToyPrompt]) -> tuple[float, float]:
        # images (N, 3, H, W), one prompt per image
        colour, shape = app(
            F.interpolate(images, (app.cfg.height, app.cfg.width), mode="bilinear", antialias=True)
        )
        c_true = torch.tensor([COLOURS.index(p.colour) for p in prompts], device=device)
        s_true = torch.tensor([SHAPES.index(p.shape) for p in prompts], device=device)
        return float((colour.argmax(-1) == c_true).float().mean()), float(
            (shape.argmax(-1) == s_true).float().mean()
        )

    def sample(
        name: str, prompts: list[ToyPrompt], cams: Tensor | None, fps: Tensor | None
    ) -> Tensor:
        net = loaded(name)
        ids = torch.stack([p.tokens() for p in prompts])
        if name != "video":
            ids[:, 2] = NULL_TOKENS[2]
        text = net.embed_tokens(ids.to(device))
        null = net.embed_tokens(torch.tensor([NULL_TOKENS] * len(prompts), device=device))
        return ddim_sample(net, text, null, cfg.guidance, cfg.sample_steps, cams, fps, gen)

    statics = [ToyPrompt(c, s) for c in COLOURS for s in SHAPES for _ in range(n)]
    if weights_file(cfg, "image", out):
        x = sample("image", statics, None, None)  # (N, 1, 3, 32, 32)
        ca, sa = appearance_acc(x[:, 0], statics)
        report["image"] = {"colour_acc": ca, "shape_acc": sa, "samples": len(statics)}
        grids.append(x[::n, 0])  # one row: a sample of every (colour, shape)
    if weights_file(cfg, "multiview", out):
        cams = Stage1CameraSampler(views=4).sample(len(statics), gen)
        feats = camera_features(cams.c2w, cams.fov, 4).to(device)
        x = sample("multiview", statics, feats, None)  # (N, 4, 3, 32, 32)
        per_view = [p for p in statics for _ in range(4)]
        ca, sa = appearance_acc(x.flatten(0, 1), per_view)
        report["multiview"] = {"colour_acc": ca, "shape_acc": sa, "samples": len(statics)}
        grids.extend(x[::n][:4])  # rows of 4 views
    if weights_file(cfg, "video", out):
        prompts = [
            ToyPrompt(c, s, m)
            for c in COLOURS
            for s in SHAPES
            for m in (None, "spinning", "swaying", "nodding")
            for _ in range(n)
        ]
        video: dict = {}
        for fps_value in (4.0, 8.0):
            fps = torch.full((len(prompts),), fps_value, device=device)
            x = sample("video", prompts, None, fps)  # (N, 16, 3, h, w)
            pred = mot(
                F.interpolate(
                    x.flatten(0, 1),
                    (mot.cfg.height, mot.cfg.width),
                    mode="bilinear",
                    antialias=True,
                ).view(len(prompts), mot.cfg.frames, 3, mot.cfg.height, mot.cfg.width),
                fps,
            ).argmax(-1)
            true = torch.tensor([p.motion_class for p in prompts], device=device)
            ok = (pred == true).float()
            held = torch.tensor([p.held_out for p in prompts], device=device)
            moving = true != 0
            ca, sa = appearance_acc(x[:, 8], prompts)
            video[f"fps{int(fps_value)}"] = {
                "motion_acc": float(ok.mean()),
                "motion_acc_static": float(ok[~moving].mean()),
                "motion_acc_moving_seen_pairs": float(ok[moving & ~held].mean()),
                "motion_acc_moving_held_out_pairs": float(ok[moving & held].mean()),
                "colour_acc_frame8": ca,
                "shape_acc_frame8": sa,
                "samples": len(prompts),
            }
            if fps_value == 4.0:
                pick = [i for i, p in enumerate(prompts) if p.held_out and p.motion == "nodding"][
                    ::n
                ][:2]
                pick += [
                    i for i, p in enumerate(prompts) if not p.held_out and p.motion == "spinning"
                ][::n][:2]
                grids.extend(x[pick])  # rows of 16 frames
        video["diffusion_classifier"] = diffusion_classifier(loaded("video"), cfg)
        report["video"] = video
    _save_grid(grids, out / "samples.png")
    return report


@torch.no_grad()
def diffusion_classifier(
    net: nn.Module,
    cfg: TrainConfig,
    times: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700),
    draws: int = 2,
) -> dict:
    """The video teacher read as a classifier of motion: for ``cfg.classifier_clips``
    ground-truth clips (every pair, a quarter static, stage-2 cameras and fps), the motion token
    whose ε-prediction has the lowest MSE, summed over ``times`` × ``draws`` noise draws (the
    same noise for every token).
    This measures what score distillation relies on: whether the conditional score knows the
    motion of a clip it is shown (the DDIM samples measure generation instead)."""
    device = torch.device(cfg.device)
    c, clips, classes = net.cfg, cfg.classifier_clips, len(MOTION_CLASSES)
    gen = torch.Generator().manual_seed(777)  # the same clips for every run
    with device_rendering(device):
        tb = toydata.sample_video_batch(
            clips, (c.height, c.width), gen, exclude_held_out=False, supersample=cfg.supersample
        )
    x0 = (tb.images.to(device) * 2.0 - 1.0).float()
    fps = tb.fps.float().to(device)
    abar = net.alphas_cumprod.to(device)
    texts = []  # (clips, 3, D) per motion token, colour and shape kept
    for m in range(classes):
        ids = tb.tokens.clone().to(device)
        ids[:, 2] = m
        texts.append(net.embed_tokens(ids))
    err = torch.zeros(clips, classes, device=device)
    for t in times:
        for _ in range(draws):
            eps = torch.randn(x0.shape, generator=gen).to(device)
            xt = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
            for m, text in enumerate(texts):
                for i in range(0, clips, 64):
                    sl = slice(i, i + 64)
                    pred = net(
                        xt[sl],
                        torch.full((xt[sl].shape[0],), t, device=device),
                        text[sl],
                        None,
                        fps[sl],
                    ).float()
                    err[sl, m] += (pred - eps[sl]).pow(2).mean(dim=(1, 2, 3, 4))
    pred = err.argmin(1).cpu()
    true = tb.motion_labels
    ok = (pred == true).float()
    held = torch.tensor([p.held_out for p in tb.prompts])
    moving = true != 0
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((true, pred), torch.ones_like(true), accumulate=True)
    shapes = [p.shape for p in tb.prompts]
    by_shape = {}  # moving clips of each shape: a spin shows differently on a ball and a cube
    for shape in SHAPES:
        mine = moving & torch.tensor([s == shape for s in shapes])
        if bool(mine.any()):
            by_shape[shape] = float(ok[mine].mean())
    return {
        "acc": float(ok.mean()),
        "acc_static": float(ok[~moving].mean()),
        "acc_moving_seen_pairs": float(ok[moving & ~held].mean()),
        "acc_moving_held_out_pairs": float(ok[moving & held].mean()),
        "acc_moving_by_shape": by_shape,
        "confusion_true_by_pred": confusion.tolist(),
        "clips": clips,
    }


def _save_grid(grids: list[Tensor], path: Path) -> None:
    """Rows of samples (each (N, 3, h, w), resized to 32 px high) as one PNG, if PIL exists."""
    if not grids:
        return
    try:
        from PIL import Image
    except ImportError:
        return
    rows = []
    for g in grids:
        g = F.interpolate(
            g.float().cpu(), size=(32, round(32 * g.shape[-1] / g.shape[-2])), mode="bilinear"
        )
        rows.append(torch.cat(list(g), dim=-1))
    width = max(r.shape[-1] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[-1])) for r in rows]
    img = (torch.cat(rows, dim=-2).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    Image.fromarray(img).save(path)


# ----------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.toyworld.train", description=__doc__.split("\n\n")[0]
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(
                flag,
                type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                default=f.default,
                metavar="BOOL",
            )
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=f.default)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def _resolve_device(cfg: TrainConfig) -> None:
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    worker = args.worker
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    _resolve_device(cfg)
    torch.set_num_threads(cfg.threads)
    if torch.device(cfg.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        toyscene._RAY_CHUNK = 1 << 20  # the renderer's memory bound; far more rays fit on a GPU
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)

    if worker is not None:
        entry = train_net(worker, cfg)
        (logs / f"{worker}.json").write_text(json.dumps(entry))
        return 0

    names = cfg.net_list()
    t0 = time.perf_counter()
    log(
        "main",
        f"training {names} on {cfg.device} (torch {torch.__version__}), budget {cfg.budget_s:.0f}s per net",
    )
    if cfg.parallel and len(names) > 1 and torch.device(cfg.device).type == "cuda":
        argv_base = [sys.executable, "-m", "tools.toyworld.train"]
        for f in dataclasses.fields(TrainConfig):
            argv_base += ["--" + f.name.replace("_", "-"), str(getattr(cfg, f.name))]
        # the workers import ``tools`` from the repository root whatever the working directory
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        procs = [subprocess.Popen(argv_base + ["--worker", n], env=env) for n in names]
        codes = [p.wait() for p in procs]
        if any(codes):
            log("main", f"worker exit codes {dict(zip(names, codes, strict=True))}")
    else:
        for n in names:
            (logs / f"{n}.json").write_text(json.dumps(train_net(n, cfg)))

    report: dict = {"config": dataclasses.asdict(cfg), "nets": {}}
    for n in names:
        path = logs / f"{n}.json"
        if path.is_file():
            report["nets"][n] = json.loads(path.read_text())
    report["train_wall_s"] = round(time.perf_counter() - t0, 1)
    if cfg.evaluate and weights_file(cfg, "appearance", out) and weights_file(cfg, "motion", out):
        t1 = time.perf_counter()
        report["teacher_samples"] = evaluate_teachers(cfg, out)
        report["eval_s"] = round(time.perf_counter() - t1, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(logs, ignore_errors=True)
    summary = {
        n: {k: v for k, v in e.items() if k.startswith(("val", "final", "steps"))}
        for n, e in report["nets"].items()
    }
    log("main", "summary " + json.dumps(summary, indent=1))
    if "teacher_samples" in report:
        log("main", "teacher samples " + json.dumps(report["teacher_samples"], indent=1))
    log("main", f"done in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
