"""Run configuration: typed dataclasses with the paper's defaults (tables 3 and 4, appendix C
and E.2), the presets ``paper`` / ``lowvram`` / ``fast`` / ``toy`` / ``tiny``, and ``key=value`` overrides.

One source of truth for defaults: the dataclass fields below. A preset is a function that
returns a ``RunConfig`` with some fields changed; the command line applies ``--set a.b=v``
overrides on top, and the resolved config is written next to every output as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# Stage-2 cameras of the toy world, where they differ from the paper's C.6 (the toy video
# teacher's training clips use the same distribution, TOY_STAGE2_CAMERAS in tools/toyworld/data.py):
# * distance U(1.2, 2.2), not U(1.5, 3.0): the toy video teacher sees 24×40 pixels, not
#   160×256; at the paper's distances a toy object (0.8 tall) spans 8 rows on average and as few
#   as 5, and its motions move a pixel or two. Closer, it is ~1.3× larger (11 rows on average).
# * azimuth offset U(-15, 15)°, not U(-45, 45)°: over a uniform background a camera orbiting
#   by θ makes a still object look exactly like one spinning by -θ about z — the toy's
#   "spinning" (45° over a 4-fps clip). With ±45° orbits the toy video teacher could not tell
#   spinning from static (its diffusion-classifier check: 29 of 60 spinning clips right).
#   ±15° keeps the cameras dynamic and the two motions apart. Elevation offsets, fov and
#   elevations stay the paper's.
TOY_STAGE2_DISTANCE = (1.2, 2.2)
TOY_STAGE2_AZIMUTH_OFFSET = (-15.0, 15.0)
# The toy video teacher's training clips have 16 frames that fill 3/fps of τ end to end: frame
# step 3/(15·fps) = 0.2/fps, where C.3's pace is 0.1875/fps (cameras.FpsSampler).
TOY_FPS_FRAME_STEP = 0.2

VIDEO_NEGATIVE_PROMPT = "low motion, static statue, not moving, no motion"
MVDREAM_NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and "
    "unclear, cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn "
    "face, deformed, dehydrated, bad proportions"
)


@dataclass
class TeacherConfig:
    """Which teachers to build. ``kind``: "real" (diffusers models from the Hugging Face cache),
    "toy" (the shipped offline teachers), "random" (toy architectures with random weights: tests)."""

    kind: str = "real"
    image_model: str = "stabilityai/stable-diffusion-2-1-base"
    multiview_model: str = "MVDream/MVDream"
    # a UNet3D text-to-video model (Zeroscope, ModelScope) or a Wan one
    # (Wan-AI/Wan2.1-T2V-1.3B-Diffusers); the family is read from the model's model_index.json
    video_model: str = "cerspense/zeroscope_v2_576w"
    # (H, W) the renders are resized to for the real video teacher; None: the teacher's own
    # (320×512 for UNet3D models, 480×832 for Wan)
    video_resolution: tuple[int, int] | None = None
    dtype: str = "bfloat16"  # on CUDA; CPU always float32
    offload_idle: bool = False
    local_files_only: bool = False
    cache_dir: str | None = None  # Hugging Face cache folder (None: HF_HUB_CACHE or its default)
    # a branch, tag or commit hash of each model repository (None: its main branch)
    image_revision: str | None = None
    multiview_revision: str | None = None
    video_revision: str | None = None
    grad_frames: int | None = None  # backprop through the video encoder for only k frames
    # How the real teachers run on CUDA (ayg.teachers.runtime); none of these changes the
    # maths, every frame keeps its gradient. encoder_backward: what the VAE encoders store for
    # their backward, "fused" (GroupNorm + SiLU as one op storing its input, convolutions
    # storing nothing, nothing recomputed: ayg.teachers.fused_encoder), "keep" (everything),
    # "convs" (convolution outputs), "lean" (those below full resolution) or "recompute"
    # (nothing: the encoder runs again, encoder_chunk frames at a time);
    # ayg.teachers.stable_diffusion.ENCODER_BACKWARDS has the memory and time of each.
    # compile: "none" or a torch.compile mode for the UNets' forward ("default" in the paper
    # preset); compile_cache: the folder the compiled code is kept in for later runs (None:
    # TORCHINDUCTOR_CACHE_DIR if set, else ~/.cache/ayg/torch-compile).
    encoder_backward: str = "fused"
    encoder_chunk: int = 8
    channels_last: bool = False  # measured slower on the H200: the VAE's GroupNorms (step.md)
    # the VAE encoders alone channels-last (NHWC): with encoder_backward="fused" their
    # GroupNorm + SiLU kernels read NHWC, so cuDNN's convolutions need no layout conversions;
    # off: measured slower on an H100 all the same (docs/results/step.md)
    encoder_channels_last: bool = False
    cuda_graphs: bool = True
    compile: str = "none"
    compile_cache: str | None = None
    cudnn_benchmark: bool = True
    tf32: bool = True  # float32 matrix products (the deformation field) on TF32 tensor cores


@dataclass
class Stage1Config:
    """Stage 1 (static 3D), table 3 and C.1, C.6, C.8, E.2."""

    steps: int = 10_000
    batch: int = 1  # samples of 4 views
    views: int = 4
    width: int = 256
    height: int = 256
    init_gaussians: int = 1000
    init_radius: float = 0.3
    sh_degree: int = 2
    lr_position: float = 1e-3
    lr_position_final: float = 2e-4
    lr_position_decay_steps: int = 500
    lr_rgb: float = 0.01
    lr_sh: float = 0.0005
    lr_opacity: float = 0.05
    lr_scaling: float = 0.005
    lr_scale: float = 1.0  # multiplier on every rate (fine-tuning uses 1/5)
    densify_start: int = 500
    densify_every: int = 1000
    densify_stop: int | None = None
    densify_grad_threshold: float = 0.002
    prune_opacity: float = 0.005
    max_gaussians: int = 50_000
    opacity_reset_every: int = 3000
    opacity_reset_value: float = 0.01
    omega_3d: float = 1.6
    omega_im: float = 0.4
    omega_vg: float = 3.0
    omega_neg: float = 0.8
    negative_prompt: str = MVDREAM_NEGATIVE_PROMPT
    t_image_start: tuple[float, float] = (0.02, 0.98)
    t_image_end: tuple[float, float] = (0.02, 0.5)
    t_image_steps: int = 6000
    t_multiview_start: tuple[float, float] = (0.98, 0.98)
    t_multiview_end: tuple[float, float] = (0.02, 0.5)
    t_multiview_steps: int = 8000
    fov_range: tuple[float, float] = (15.0, 60.0)
    elevation_range: tuple[float, float] = (10.0, 45.0)
    scale_range: tuple[float, float] = (0.8, 1.0)
    mode: str = "csd"  # "csd" (eq. 4) or "sds" (eq. 3)
    sds_guidance: float = 7.5
    use_multiview: bool = True
    use_image: bool = True


@dataclass
class Stage2Config:
    """Stage 2 (dynamics), table 4 and C.2–C.6, D.3, E.2."""

    steps: int = 10_000
    batch: int = 4  # sequences
    frames: int | None = None  # None: the video teacher's (16; Wan 4k + 1 = 17)
    width: int = 256
    height: int = 160
    lr: float = 1e-3
    hidden: int = 128
    layers: int = 5
    frequencies: int = 4
    lambda_rigidity: float = 100.0
    lambda_jsd: float = 30.0
    lambda_interp: float = 100.0  # sec. 3.4 gives no weight; ours, on the rigidity scale
    knn: int = 40
    omega_ma: float = 24.0
    omega_neg: float = 0.8
    omega_vid: float = 1.0
    omega_im: float = 1.0
    negative_prompt: str | None = None  # None: the video teacher's (VIDEO_NEGATIVE_PROMPT)
    t_range: tuple[float, float] = (0.02, 0.98)
    fps_values: tuple[int, ...] = (4, 8, 12)
    fps_probs: tuple[float, ...] = (0.81, 0.14, 0.05)
    fps_frame_step: float = 0.1875  # τ between frames at 1 fps (C.3: 16 frames at 4 fps = 0.75)
    fov_range: tuple[float, float] = (40.0, 70.0)
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    distance_range: tuple[float, float] = (1.5, 3.0)
    elevation_offset_range: tuple[float, float] = (-13.5, 30.0)
    azimuth_offset_range: tuple[float, float] = (-45.0, 45.0)
    dynamic_cameras: bool = True
    image_frames: int = 4  # 3 random frames plus the middle one
    mode: str = "csd"
    sds_guidance: float = 7.5
    use_image: bool = True


@dataclass
class FinetuneConfig:
    """The optional fine-tuning of C.9: more 3D steps with densification past 50k at 1/5 of the
    learning rates and 512×512 renders, then more 4D steps."""

    enabled: bool = False
    steps_3d: int = 7000
    steps_4d: int = 3000
    lr_scale: float = 0.2
    width: int = 512
    height: int = 512
    max_gaussians: int = 500_000


@dataclass
class OutputConfig:
    preview: bool = True  # write preview.mp4 (needs imageio-ffmpeg)
    preview_frames: int = 48
    preview_fps: int = 12
    preview_width: int = 256
    preview_height: int = 256
    checkpoint_every: int = 500
    log_every: int = 10
    tensorboard: bool = False  # also write TensorBoard events (pip install "ayg[tensorboard]")


@dataclass
class RunConfig:
    preset: str = "paper"
    seed: int = 0
    device: str = "auto"  # "auto" → cuda when available, else cpu
    backend: str = "auto"  # renderer backend
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RunConfig:
        cfg = RunConfig()
        _update(cfg, d, "")
        return cfg


def _update(obj: Any, d: dict[str, Any], path: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in d.items():
        if key not in names:
            raise ValueError(
                f"unknown config field '{path}{key}'; allowed: {', '.join(sorted(names))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config field '{path}{key}' is a section; give a mapping")
            _update(current, value, f"{path}{key}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{path}{key}"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert ``value`` to the field's declared type ``hint`` (JSON lists → tuples); the
    values themselves are checked by ``validate``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # optional fields: "X | None"
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"config field '{name}' takes true/false, got {value!r}")
    if hint is int:
        if not _is_number(value) or not math.isfinite(value) or int(value) != value:
            raise ValueError(f"config field '{name}' takes an integer, got {value!r}")
        return int(value)
    if hint is float:
        if not _is_number(value):
            raise ValueError(f"config field '{name}' takes a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"config field '{name}' takes a string, got {value!r}")
        return value
    if origin is tuple:
        if args[-1] is Ellipsis:  # tuple[int, ...]: any length >= 1
            kinds, example = (
                [args[0]] * (len(value) if isinstance(value, (list, tuple)) else 0),
                "[4, 8, 12]",
            )
            ok = isinstance(value, (list, tuple)) and len(value) >= 1
        else:  # tuple[float, float]: a (low, high) range
            kinds, example = list(args), "[0.02, 0.98]"
            ok = isinstance(value, (list, tuple)) and len(value) == len(args)
        if ok:
            try:
                return tuple(_coerce(v, k, name) for v, k in zip(value, kinds, strict=True))
            except ValueError:
                pass
        what = "integers" if args[0] is int else "numbers"
        count = "one or more" if args[-1] is Ellipsis else str(len(args))
        raise ValueError(
            f"config field '{name}' takes a list of {count} {what}, e.g. {example}, got {value!r}"
        )
    raise ValueError(f"config field '{name}' cannot take {value!r}")  # pragma: no cover


def _is_text_field(cfg: Any, parts: list[str]) -> bool:
    """Whether ``a.b.c`` names a field declared ``str`` (or ``str | None``)."""
    obj = cfg
    for p in parts[:-1]:
        obj = getattr(obj, p, None)
        if not dataclasses.is_dataclass(obj):
            return False
    hint = typing.get_type_hints(type(obj)).get(parts[-1])
    return hint is str or (
        typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint)
    )


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.field=value`` strings; values are parsed as JSON when possible."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(
                f"override '{item}' must look like section.field=value, e.g. stage1.steps=200"
            )
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if _is_text_field(cfg, key.strip().split(".")) and not isinstance(value, str | None):
            value = raw  # a revision "1234" or a tag "1.0" stays the text the user typed
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            cursor = cursor.setdefault(p, {})
        cursor[parts[-1]] = value
        _update(cfg, nested, "")
    return cfg


# ----------------------------------------------------------------------------- presets


def paper_preset() -> RunConfig:
    """The paper's settings (E.2, tables 3 and 4). Its UNets run under ``torch.compile``: about
    three minutes of compilation when each stage starts, for ~0.2 s on each of its 13,000
    stage-2 steps on an H200 (docs/results/step.md)."""
    cfg = RunConfig(preset="paper")
    cfg.teachers.compile = "default"
    return cfg


def fast_preset() -> RunConfig:
    """Same models, fewer steps and lower resolution: a first look in well under an hour."""
    cfg = RunConfig(preset="fast")
    s1, s2 = cfg.stage1, cfg.stage2
    s1.steps, s1.width, s1.height = 3000, 192, 192
    s1.densify_start, s1.densify_every, s1.opacity_reset_every = 300, 500, 1500
    s1.max_gaussians = 30_000
    s1.t_image_steps, s1.t_multiview_steps = 1800, 2400
    s2.steps, s2.batch = 2000, 2
    s2.width, s2.height = 192, 120
    cfg.teachers.grad_frames = 8
    cfg.teachers.offload_idle = True
    cfg.output.checkpoint_every = 250
    return cfg


def lowvram_preset() -> RunConfig:
    """The paper's settings on a 24 GB card: the same steps, resolutions, teachers and CFG
    branches, and every frame keeps its gradient. What it trades is time: the VAE encoders keep
    no activations and run their forward a second time during the backward, 4 frames at a time
    (one more encoder forward per frame; docs/results/step.md has the cost)."""
    cfg = RunConfig(preset="lowvram")
    cfg.teachers.encoder_backward = "recompute"
    cfg.teachers.encoder_chunk = 4
    return cfg


def toy_preset() -> RunConfig:
    """The offline toy world: shipped pixel-space teachers, CPU in minutes."""
    cfg = RunConfig(preset="toy")
    cfg.teachers.kind = "toy"
    s1, s2 = cfg.stage1, cfg.stage2
    s1.steps, s1.width, s1.height = 400, 64, 64
    s1.init_gaussians, s1.sh_degree = 1000, 1
    s1.lr_position_decay_steps = 100
    s1.densify_start, s1.densify_every, s1.opacity_reset_every = 100, 100, 10_000
    s1.max_gaussians = 4000
    s1.t_image_steps, s1.t_multiview_steps = 240, 320
    # Stage 1 with SDS (eq. 3, guidance 7.5), not the paper's CSD: with 64-pixel pixel-space
    # teachers, CSD's classifier direction alone leaves the static cloud speckled with
    # off-colour floaters (mean squared error to the true object over the 20 views of F.1:
    # 0.014–0.087 on five prompts, 0.0015–0.007 with SDS; view consistency 0.44–0.91 → 1.0 on
    # balls and cubes), and the tone pattern a spin must move is lost in the speckle.
    # Stage 2 keeps CSD (SDS there stops the motion, docs/RESULTS.md).
    s1.mode = "sds"
    s2.steps, s2.batch = 300, 2
    s2.width, s2.height = 64, 40
    s2.knn = 16
    s2.distance_range = TOY_STAGE2_DISTANCE
    s2.azimuth_offset_range = TOY_STAGE2_AZIMUTH_OFFSET
    # Pixel-space toy teachers score every pixel directly (no VAE encoder in between), so
    # their gradients outweigh the regularisers more than latent teachers' do. Measured on the
    # H200 (docs/RESULTS.md): with a CSD stage 1, the paper's ω_ma = 24 with JSD
    # and rigidity 300 blew the speckled clouds apart (mean drift 2.1 over 24 prompts); with
    # the clean SDS stage 1, ω_ma = 12 and JSD / rigidity 1000 keep them together (drift 0.37
    # on 16 hard prompts, 0.75 at ω_ma = 24) and move them more than ω_ma = 6.
    s2.omega_ma = 12.0
    s2.lambda_jsd, s2.lambda_rigidity = 1000.0, 1000.0
    # Negative prompting at ω_neg = 0.3, not the paper's 0.8. The negative term
    # ε(∅) − ε(static) of eq. (23) rewards any motion whatever its pace, and in the toy world pace
    # is what tells a sway from a nod. experiments/toy_force.py, s = 0.5, "a red cube swaying":
    # at 0.8 the video term pulls 101 towards the sway and 85–96 towards bends at the nod's pace,
    # at 0.3 58 vs 38–49. All 48 moving prompts × seeds 0 and 1 (docs/RESULTS.md):
    # motion 70.8 % (0.8: 66.7 %), sways 29/32 (14/32), nods 32/32 (32/32), but spins 7/32
    # (21/32): that push is also what starts a spin. Appearance 100 % (97.9 %), drift 0.20 (0.38).
    s2.omega_neg = 0.3
    # Diffusion times t ∈ U(0.02, 0.5) for both stage-2 teachers, not the paper's U(0.02, 0.98)
    # (E.2; U(0.02, 0.5) is where its stage-1 schedules end). At the toy video teacher's 24×40
    # pixels a clip noised past t ≈ 0.75 carries no motion: toy_force.py found the pull for
    # t ∈ [0.75, 0.98] zero within noise on spins (cube −0.2 ± 0.3 against 25–54 below 0.5) and
    # under 3 % of the pull below 0.5 on bends, so those draws only added noise. All 48 moving
    # prompts × seeds 0, 1 and 2 (docs/RESULTS.md): motion 81.3 / 81.3 / 77.1 %,
    # spins 20/48 (7/32 at seeds 0 and 1 with the full range), sways 47/48, nods 48/48,
    # appearance 100 %, drift 0.29 (0.20 with the full range).
    s2.t_range = (0.02, 0.5)
    # The image teacher's weights at which every toy figure in docs/RESULTS.md was measured:
    # ω_im and ω_vg at 1/4 of the paper's in stage 1 (0.1, 0.75) and ω_im at 1/4 in stage 2
    # (video : image 1 : 0.25), the scale the image frames had before each frame got its full
    # weight of eq. 22 / 24.
    s1.omega_im, s1.omega_vg = 0.1, 0.75
    s2.omega_im = 0.25
    s2.fps_frame_step = TOY_FPS_FRAME_STEP  # the pace the toy video teacher was trained on
    cfg.output.preview_frames = 24
    cfg.output.preview_width = cfg.output.preview_height = 128
    cfg.output.checkpoint_every = 100
    return cfg


def tiny_preset() -> RunConfig:
    """Random tiny teachers and a handful of steps: the pipeline's own tests."""
    cfg = toy_preset()
    cfg.preset = "tiny"
    cfg.teachers.kind = "random"
    s1, s2 = cfg.stage1, cfg.stage2
    s1.steps, s1.width, s1.height = 6, 32, 32
    s1.init_gaussians = 200
    s1.densify_start, s1.densify_every = 3, 3
    s1.t_image_steps, s1.t_multiview_steps = 4, 5
    s2.steps, s2.batch = 4, 1
    s2.fps_frame_step = Stage2Config.fps_frame_step  # C.3's pace: any teacher's frame count
    s2.width, s2.height = 32, 20
    s2.knn = 8
    cfg.output.preview_frames = 4
    cfg.output.preview_width = cfg.output.preview_height = 32
    cfg.output.checkpoint_every = 2
    return cfg


PRESETS = {
    "paper": paper_preset,
    "lowvram": lowvram_preset,
    "fast": fast_preset,
    "toy": toy_preset,
    "tiny": tiny_preset,
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]()


# Upper bounds of the checks below: far above any sensible run, low enough that a typo cannot
# ask for days of training or for buffers larger than the machine.
MAX_STEPS = 1_000_000
MAX_RENDER_SIDE = 4096  # pixels per image side, for training renders and outputs alike
MAX_GAUSSIANS = 50_000_000
MAX_SEED = 2**63 - 1
DTYPES = ("float32", "float16", "bfloat16")

# command-line flags that set a config field, named in the messages of ``validate``
FLAGS = {
    "stage1.steps": "--steps-3d",
    "stage2.steps": "--steps-4d",
    "seed": "--seed",
    "device": "--device",
}


def _field(name: str) -> str:
    flag = FLAGS.get(name)
    return f"config field '{name}'" + (f" ({flag})" if flag else "")


def _check_int(name: str, value: int | None, low: int, high: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{_field(name)} must be an integer from {low} to {high}, got {value!r}")


def _check_number(
    name: str,
    value: float,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        if low == -math.inf and high == math.inf:
            allowed = "a finite number"
        elif high == math.inf:
            allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif low == -math.inf:
            allowed = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
            allowed = f"a number in {lo}{low:g}, {high:g}{hi}"
        raise ValueError(f"{_field(name)} must be {allowed}, got {value!r}")


def _check_range(name: str, value: tuple, low: float, high: float, low_open: bool = False) -> None:
    """A (low, high) pair of finite numbers inside [low, high] with value[0] <= value[1]."""
    lo, hi = ("(" if low_open else "["), "]"
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(_is_number(v) and math.isfinite(v) for v in value)
    ):
        raise ValueError(f"{_field(name)} must be two finite numbers [low, high], got {value!r}")
    a, b = value
    inside = all((v > low if low_open else v >= low) and v <= high for v in value)
    if not inside or a > b:
        raise ValueError(
            f"{_field(name)} must be [low, high] with low <= high, both in {lo}{low:g}, {high:g}{hi}, "
            f"got {list(value)}"
        )


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{_field(name)} must be one of {', '.join(allowed)}, got {value!r}")


def _check_size(name: str, width: int, height: int) -> None:
    _check_int(f"{name}width", width, 1, MAX_RENDER_SIDE)
    _check_int(f"{name}height", height, 1, MAX_RENDER_SIDE)


def validate(cfg: RunConfig) -> None:
    """Every field of a resolved config against what it may hold (finite numbers, signs, ranges
    with low <= high, step counts from 1 to MAX_STEPS, sizes up to MAX_RENDER_SIDE ...): run
    before anything is written, so that a bad value costs one clear line and no half-made run."""
    _check_int("seed", cfg.seed, 0, MAX_SEED)
    if cfg.device not in ("auto", "cpu", "cuda") and not (
        isinstance(cfg.device, str) and cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()
    ):
        raise ValueError(
            f"{_field('device')} must be auto, cpu, cuda or cuda:N, got {cfg.device!r}"
        )
    _check_choice("backend", cfg.backend, ("auto", "torch", "gsplat"))

    t = cfg.teachers
    _check_choice("teachers.kind", t.kind, ("real", "toy", "random"))
    _check_choice("teachers.dtype", t.dtype, DTYPES)
    for name in ("image_model", "multiview_model", "video_model"):
        if not getattr(t, name).strip():
            raise ValueError(f"{_field('teachers.' + name)} must not be empty")
    for name in (
        "cache_dir",
        "compile_cache",
        "image_revision",
        "multiview_revision",
        "video_revision",
    ):
        value = getattr(t, name)
        if value is not None and not value.strip():
            raise ValueError(f"{_field('teachers.' + name)} must be a non-empty string or null")
    if t.compile_cache is not None and os.path.isfile(os.path.expanduser(t.compile_cache)):
        raise ValueError(
            f"{_field('teachers.compile_cache')} must be a folder (it is made if missing), "
            f"got the file {t.compile_cache}"
        )
    _check_int("teachers.grad_frames", t.grad_frames, 1, cfg.stage2.frames or 256, optional=True)
    if t.encoder_backward not in ("keep", "convs", "lean", "recompute", "fused"):
        raise ValueError(
            "config field 'teachers.encoder_backward' must be keep, convs, lean, recompute or "
            "fused, "
            f"got '{t.encoder_backward}'"
        )
    _check_int("teachers.encoder_chunk", t.encoder_chunk, 1, 4096)
    compile_modes = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
    _check_choice("teachers.compile", t.compile, compile_modes)
    res = t.video_resolution
    if res is not None:
        if len(res) != 2 or any(
            isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= MAX_RENDER_SIDE
            for r in res
        ):
            raise ValueError(
                f"{_field('teachers.video_resolution')} must be [H, W] with positive integers up "
                f"to {MAX_RENDER_SIDE}, got {list(res)}"
            )
        if t.kind != "real":
            raise ValueError(
                f"{_field('teachers.video_resolution')} applies to real video teachers only"
            )

    s1 = cfg.stage1
    _check_int("stage1.steps", s1.steps, 1, MAX_STEPS)
    _check_int("stage1.batch", s1.batch, 1, 1024)
    _check_int("stage1.views", s1.views, 1, 64)
    _check_size("stage1.", s1.width, s1.height)
    _check_int("stage1.init_gaussians", s1.init_gaussians, 1, MAX_GAUSSIANS)
    _check_int("stage1.max_gaussians", s1.max_gaussians, 1, MAX_GAUSSIANS)
    _check_number("stage1.init_radius", s1.init_radius, 0.0, low_open=True)
    _check_int("stage1.sh_degree", s1.sh_degree, 0, 3)
    for name in ("lr_position", "lr_position_final", "lr_rgb", "lr_sh", "lr_opacity", "lr_scaling"):
        _check_number(f"stage1.{name}", getattr(s1, name), 0.0)
    _check_number("stage1.lr_scale", s1.lr_scale, 0.0, low_open=True)
    _check_int("stage1.lr_position_decay_steps", s1.lr_position_decay_steps, 1, MAX_STEPS)
    _check_int("stage1.densify_start", s1.densify_start, 0, MAX_STEPS)
    _check_int("stage1.densify_every", s1.densify_every, 1, MAX_STEPS)
    _check_int("stage1.densify_stop", s1.densify_stop, 0, MAX_STEPS, optional=True)
    _check_number("stage1.densify_grad_threshold", s1.densify_grad_threshold, 0.0, low_open=True)
    _check_number("stage1.prune_opacity", s1.prune_opacity, 0.0, 1.0, high_open=True)
    _check_int("stage1.opacity_reset_every", s1.opacity_reset_every, 1, MAX_STEPS)
    _check_number("stage1.opacity_reset_value", s1.opacity_reset_value, 0.0, 1.0, True, True)
    for name in ("omega_3d", "omega_im", "omega_vg", "omega_neg", "sds_guidance"):
        _check_number(f"stage1.{name}", getattr(s1, name), 0.0)
    for name in ("t_image_start", "t_image_end", "t_multiview_start", "t_multiview_end"):
        _check_range(f"stage1.{name}", getattr(s1, name), 0.0, 1.0, low_open=True)
    _check_int("stage1.t_image_steps", s1.t_image_steps, 0, MAX_STEPS)
    _check_int("stage1.t_multiview_steps", s1.t_multiview_steps, 0, MAX_STEPS)
    _check_range("stage1.fov_range", s1.fov_range, 0.0, 179.0, low_open=True)
    _check_range("stage1.elevation_range", s1.elevation_range, -90.0, 90.0)
    _check_range("stage1.scale_range", s1.scale_range, 0.0, 100.0, low_open=True)
    _check_choice("stage1.mode", s1.mode, ("csd", "sds"))
    if not (s1.use_multiview or s1.use_image):
        raise ValueError(
            "config fields 'stage1.use_multiview' and 'stage1.use_image' are both false; "
            "stage 1 needs at least one of its teachers"
        )

    s2 = cfg.stage2
    _check_int("stage2.steps", s2.steps, 1, MAX_STEPS)
    _check_int("stage2.batch", s2.batch, 1, 1024)
    _check_int("stage2.frames", s2.frames, 2, 256, optional=True)  # None: the teacher's
    _check_size("stage2.", s2.width, s2.height)
    _check_number("stage2.lr", s2.lr, 0.0, low_open=True)
    _check_int("stage2.hidden", s2.hidden, 1, 65_536)
    _check_int("stage2.layers", s2.layers, 1, 64)
    _check_int("stage2.frequencies", s2.frequencies, 0, 32)
    _check_int("stage2.knn", s2.knn, 1, 1024)
    for name in (
        "lambda_rigidity", "lambda_jsd", "lambda_interp", "omega_ma", "omega_neg", "omega_vid",
        "omega_im", "sds_guidance",
    ):  # fmt: skip
        _check_number(f"stage2.{name}", getattr(s2, name), 0.0)
    _check_range("stage2.t_range", s2.t_range, 0.0, 1.0, low_open=True)
    if not all(isinstance(f, int) and 3 <= f <= 1000 for f in s2.fps_values):
        raise ValueError(
            f"{_field('stage2.fps_values')} must be integers from 3 to 1000 (a clip spans 3/fps "
            f"of the motion), got {list(s2.fps_values)}"
        )
    if len(s2.fps_probs) != len(s2.fps_values) or not all(
        _is_number(p) and math.isfinite(p) and p >= 0 for p in s2.fps_probs
    ):
        raise ValueError(
            f"{_field('stage2.fps_probs')} must be one number >= 0 per fps value "
            f"({len(s2.fps_values)}), got {list(s2.fps_probs)}"
        )
    if not math.isclose(sum(s2.fps_probs), 1.0, abs_tol=1e-6):
        raise ValueError(f"{_field('stage2.fps_probs')} must sum to 1, got {list(s2.fps_probs)}")
    _check_range("stage2.fov_range", s2.fov_range, 0.0, 179.0, low_open=True)
    _check_range("stage2.elevation_range", s2.elevation_range, -90.0, 90.0)
    _check_range("stage2.distance_range", s2.distance_range, 0.0, 1000.0, low_open=True)
    _check_range("stage2.elevation_offset_range", s2.elevation_offset_range, -180.0, 180.0)
    _check_range("stage2.azimuth_offset_range", s2.azimuth_offset_range, -360.0, 360.0)
    _check_int("stage2.image_frames", s2.image_frames, 1, s2.frames or 16)
    _check_number("stage2.fps_frame_step", s2.fps_frame_step, 0.0, low_open=True)
    if s2.frames is not None and (s2.frames - 1) * s2.fps_frame_step > 3.0 + 1e-9:
        raise ValueError(
            f"{_field('stage2.fps_frame_step')} times (stage2.frames - 1) must be <= 3 (C.3: the "
            f"last frame inside [0, 1]), got {s2.fps_frame_step} for {s2.frames} frames"
        )
    _check_choice("stage2.mode", s2.mode, ("csd", "sds"))

    ft = cfg.finetune
    _check_int("finetune.steps_3d", ft.steps_3d, 1, MAX_STEPS)
    _check_int("finetune.steps_4d", ft.steps_4d, 1, MAX_STEPS)
    _check_number("finetune.lr_scale", ft.lr_scale, 0.0, low_open=True)
    _check_size("finetune.", ft.width, ft.height)
    _check_int("finetune.max_gaussians", ft.max_gaussians, 1, MAX_GAUSSIANS)

    o = cfg.output
    _check_int("output.preview_frames", o.preview_frames, 1, 10_000)
    _check_int("output.preview_fps", o.preview_fps, 1, 240)
    _check_size("output.preview_", o.preview_width, o.preview_height)
    if o.preview and (o.preview_width % 2 or o.preview_height % 2):
        raise ValueError(
            "config fields 'output.preview_width' and 'output.preview_height' must be even "
            f"(an mp4 needs it), got {o.preview_width}x{o.preview_height}"
        )
    _check_int("output.checkpoint_every", o.checkpoint_every, 1, MAX_STEPS)
    _check_int("output.log_every", o.log_every, 1, MAX_STEPS)


# ----------------------------------------------------------------------------- batch


EXPORT_FORMATS = ("tracks", "ply-frames", "video")


@dataclass
class ExportConfig:
    """One export of a batch job (the options of ``ayg export``)."""

    format: str = "tracks"  # one of EXPORT_FORMATS
    frames: int = 16  # evenly spaced global times over the asset's duration
    times: tuple[float, ...] | None = None  # explicit global times (override ``frames``)
    views: int = 4  # tracks: orbit cameras to project into (0: positions only)
    width: int = 256
    height: int = 256
    fps: int = 12  # video


@dataclass
class BatchConfig:
    """How ``ayg batch`` places its jobs on Ray."""

    workers: int | None = None  # CPU jobs, this many at a time (None: GPU jobs when there are GPUs)
    gpus_per_job: float | None = None  # GPU share each job asks for, in (0, 1]; None: 1
    cpus_per_job: int | None = None  # CPU cores (torch threads) per job; None: see ayg.batch
    ray_address: str | None = None  # an existing cluster; None: start Ray on this machine
    retries: int = 2  # times Ray reruns a job whose worker died (SIGKILL, OOM killer)
    evaluate: bool = False  # ayg eval metrics of each generated asset
    progress: bool = True


def validate_batch(cfg: BatchConfig) -> None:
    """Boundary checks of the batch options, one clear line each."""
    if cfg.workers is not None and cfg.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {cfg.workers}")
    if cfg.gpus_per_job is not None and not 0 < cfg.gpus_per_job <= 1:
        raise ValueError(
            f"--gpus-per-job must be in (0, 1], e.g. 0.5 for two jobs per GPU, got {cfg.gpus_per_job}"
        )
    if cfg.workers is not None and cfg.gpus_per_job is not None:
        raise ValueError(
            "--workers runs CPU jobs and --gpus-per-job GPU jobs; give one of them, not both"
        )
    if cfg.cpus_per_job is not None and cfg.cpus_per_job < 1:
        raise ValueError(f"--cpus-per-job must be >= 1, got {cfg.cpus_per_job}")
    if cfg.retries < 0:
        raise ValueError(f"--retries must be >= 0, got {cfg.retries}")


def export_config(d: dict[str, Any], where: str = "export") -> ExportConfig:
    """An ``ExportConfig`` from a mapping (a batch spec's export entry), checked field by field."""
    cfg = ExportConfig()
    d = dict(d)
    times = d.pop("times", None)  # optional list: not a field _update can type from its default
    _update(cfg, d, f"{where}.")
    if times is not None:
        if not isinstance(times, (list, tuple)) or not times:
            raise ValueError(f"{where}: times must be a list of global times, got {times!r}")
        cfg.times = tuple(times)
    if cfg.format not in EXPORT_FORMATS:
        raise ValueError(
            f"{where}: format must be one of {', '.join(EXPORT_FORMATS)}, got '{cfg.format}'"
        )
    for name in ("frames", "width", "height", "fps"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{where}: {name} must be > 0, got {getattr(cfg, name)}")
    if cfg.views < 0:
        raise ValueError(f"{where}: views must be >= 0, got {cfg.views}")
    if cfg.format == "video" and (cfg.width % 2 or cfg.height % 2):
        raise ValueError(
            f"{where}: a video needs an even width and height, got {cfg.width}x{cfg.height}"
        )
    if cfg.times is not None and (
        not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in cfg.times)
        or min(cfg.times) < 0
    ):
        raise ValueError(
            f"{where}: times must be a list of global times >= 0, got {list(cfg.times)}"
        )
    return cfg
