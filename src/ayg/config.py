"""Run configuration: typed dataclasses with the paper's defaults (tables 3 and 4, appendix C
and E.2), the presets ``paper`` / ``fast`` / ``toy`` / ``tiny``, and ``key=value`` overrides.

One source of truth for defaults: the dataclass fields below. A preset is a function that
returns a ``RunConfig`` with some fields changed; the command line applies ``--set a.b=v``
overrides on top, and the resolved config is written next to every output as JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# Stage-2 cameras of the toy world, where they differ from the paper's C.6 (the toy video
# teacher's training clips use the same distribution, toyworld.data.TOY_STAGE2_CAMERAS):
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
    grad_frames: int | None = None  # backprop through the video encoder for only k frames


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
            setattr(obj, key, _coerce(value, current, f"{path}{key}", str(names[key].type)))


# an example value of each base type an optional field ("X | None") can have
_OPTIONAL_BASES = {"int": 0, "float": 0.0, "str": "", "bool": False, "tuple": ()}


def _coerce(value: Any, current: Any, name: str, annotation: str = "") -> Any:
    """Convert ``value`` to the type of the field's current value (JSON lists → tuples); an
    optional field (annotation ``X | None``) takes null or a value of X."""
    if annotation.replace(" ", "").endswith("|None"):
        if value is None:
            return None
        base = annotation.rsplit("|", 1)[0].strip().split("[", 1)[0]
        if base not in _OPTIONAL_BASES:
            raise ValueError(f"config field '{name}' cannot take {value!r}")
        return _coerce(value, _OPTIONAL_BASES[base], name)
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"config field '{name}' takes true/false, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"config field '{name}' takes an integer, got {value!r}")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config field '{name}' takes a number, got {value!r}")
        return float(value)
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) == 0:
            raise ValueError(
                f"config field '{name}' takes a list, e.g. [0.02, 0.98], got {value!r}"
            )
        return tuple(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ValueError(f"config field '{name}' takes a string, got {value!r}")
        return value
    raise ValueError(f"config field '{name}' cannot take {value!r}")


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
    return RunConfig(preset="paper")


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


def toy_preset() -> RunConfig:
    """The offline toy world (DESIGN §7): shipped pixel-space teachers, CPU in minutes."""
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
    # H200 (docs/RESULTS.md): with the session-3 stage 1 (CSD), the paper's ω_ma = 24 with JSD
    # and rigidity 300 blew the speckled clouds apart (mean drift 2.1 over 24 prompts); with
    # the clean SDS stage 1, ω_ma = 12 and JSD / rigidity 1000 keep them together (drift 0.37
    # on 16 hard prompts, 0.75 at ω_ma = 24) and move them more than ω_ma = 6.
    s2.omega_ma = 12.0
    s2.lambda_jsd, s2.lambda_rigidity = 1000.0, 1000.0
    # Negative prompting at ω_neg = 0.3, not the paper's 0.8. The negative term
    # ε(∅) − ε(static) of eq. (23) rewards any motion whatever its pace, and in the toy world pace
    # is what tells a sway from a nod. benchmarks/toy_force.py, s = 0.5, "a red cube swaying":
    # at 0.8 the video term pulls 101 towards the sway and 85–96 towards bends at the nod's pace,
    # at 0.3 58 vs 38–49. All 48 moving prompts × seeds 0 and 1 (docs/RESULTS.md, session 6):
    # motion 70.8 % (0.8: 66.7 %), sways 29/32 (14/32), nods 32/32 (32/32), but spins 7/32
    # (21/32): that push is also what starts a spin. Appearance 100 % (97.9 %), drift 0.20 (0.38).
    s2.omega_neg = 0.3
    # Diffusion times t ∈ U(0.02, 0.5) for both stage-2 teachers, not the paper's U(0.02, 0.98)
    # (E.2; U(0.02, 0.5) is where its stage-1 schedules end). At the toy video teacher's 24×40
    # pixels a clip noised past t ≈ 0.75 carries no motion: toy_force.py found the pull for
    # t ∈ [0.75, 0.98] zero within noise on spins (cube −0.2 ± 0.3 against 25–54 below 0.5) and
    # under 3 % of the pull below 0.5 on bends, so those draws only added noise. All 48 moving
    # prompts × seeds 0, 1 and 2 (docs/RESULTS.md, session 7): motion 81.3 / 81.3 / 77.1 %,
    # spins 20/48 (7/32 at seeds 0 and 1 with the full range), sways 47/48, nods 48/48,
    # appearance 100 %, drift 0.29 (0.20 with the full range).
    s2.t_range = (0.02, 0.5)
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
    s2.width, s2.height = 32, 20
    s2.knn = 8
    cfg.output.preview_frames = 4
    cfg.output.preview_width = cfg.output.preview_height = 32
    cfg.output.checkpoint_every = 2
    return cfg


PRESETS = {"paper": paper_preset, "fast": fast_preset, "toy": toy_preset, "tiny": tiny_preset}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]()


def validate(cfg: RunConfig) -> None:
    """Boundary checks that give one clear line each."""
    for stage, name in ((cfg.stage1, "stage1"), (cfg.stage2, "stage2")):
        if stage.steps < 0:
            raise ValueError(f"{name}.steps must be >= 0, got {stage.steps}")
        if stage.batch <= 0:
            raise ValueError(f"{name}.batch must be > 0, got {stage.batch}")
        if stage.width <= 0 or stage.height <= 0:
            raise ValueError(
                f"{name} render size must be positive, got {stage.width}x{stage.height}"
            )
        if stage.mode not in ("csd", "sds"):
            raise ValueError(f"{name}.mode must be 'csd' or 'sds', got '{stage.mode}'")
    if cfg.teachers.kind not in ("real", "toy", "random"):
        raise ValueError(f"teachers.kind must be real, toy or random, got '{cfg.teachers.kind}'")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got '{cfg.device}'")
    if cfg.backend not in ("auto", "torch", "gsplat"):
        raise ValueError(f"backend must be auto, torch or gsplat, got '{cfg.backend}'")
    s2 = cfg.stage2
    if s2.frames is not None and s2.frames < 2:
        raise ValueError(
            f"stage2.frames must be >= 2 (or null: the video teacher's), got {s2.frames}"
        )
    if s2.image_frames < 1 or (s2.frames is not None and s2.image_frames > s2.frames):
        raise ValueError("stage2.image_frames must be between 1 and stage2.frames")
    res = cfg.teachers.video_resolution
    if res is not None:
        if len(res) != 2 or any(
            isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in res
        ):
            raise ValueError(
                f"teachers.video_resolution must be [H, W] with positive integers, got {list(res)}"
            )
        if cfg.teachers.kind != "real":
            raise ValueError("teachers.video_resolution applies to real video teachers only")
    if cfg.output.checkpoint_every <= 0:
        raise ValueError("output.checkpoint_every must be > 0")
