"""Teachers: frozen diffusion models that judge renders (docs/ARCHITECTURE.md).

One file per teacher: ``stable_diffusion`` (image), ``mvdream`` (multiview), ``video``
(text-to-video UNet3D: Zeroscope, ModelScope), ``wan`` (Wan 2.1, flow matching) and ``toy`` (the
offline pixel-space teachers). ``build_teachers`` picks them from a ``TeacherConfig``; the video
teacher's family comes from the model's own ``model_index.json`` (the class of its denoiser), so
``teachers.video_model`` alone selects it. Heavy imports happen only for the kind asked for.
"""

from __future__ import annotations

from typing import Any

import torch

from ayg.config import TeacherConfig

ROLES = ("image", "multiview", "video")
# the denoiser class named in a video model's model_index.json -> the teacher that runs it
VIDEO_FAMILIES = {
    ("transformer", "WanTransformer3DModel"): "wan",
    ("unet", "UNet3DConditionModel"): "unet3d",
}


def video_family(
    model_id: str,
    local_files_only: bool | None = None,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> str:
    """The family ("wan" or "unet3d") of a diffusers text-to-video repository or folder, read
    from its ``model_index.json``; anything else is a ValueError naming what the model is."""
    from ayg.teachers.hub import pipeline_index

    index = pipeline_index(
        model_id, local_files_only=local_files_only, cache_dir=cache_dir, revision=revision
    )
    for (folder, cls), family in VIDEO_FAMILIES.items():
        entry = index.get(folder)
        if isinstance(entry, list) and len(entry) == 2 and entry[1] == cls:
            return family
    allowed = " or ".join(f"{cls} ({folder}/)" for folder, cls in VIDEO_FAMILIES)
    raise ValueError(
        f"teachers.video_model {model_id!r} is a {index.get('_class_name', 'pipeline')} "
        f"without a video denoiser this tool runs; allowed: {allowed}"
    )


def load_video_teacher(
    cfg: TeacherConfig, device: torch.device, dtype: torch.dtype, frames: int | None = None
) -> Any:
    """The video teacher of ``cfg.video_model`` (Wan or UNet3D, by ``video_family``) with its
    own default frame count and resolution unless ``frames`` / ``cfg.video_resolution`` say."""
    kwargs: dict[str, Any] = {}
    if frames is not None:
        kwargs["frames"] = frames
    if cfg.video_resolution is not None:
        kwargs["resolution"] = tuple(cfg.video_resolution)
    family = video_family(
        cfg.video_model,
        local_files_only=cfg.local_files_only,
        cache_dir=cfg.cache_dir,
        revision=cfg.video_revision,
    )
    if family == "wan":
        from ayg.teachers.wan import WanTeacher as cls
    else:
        from ayg.teachers.video import VideoTeacher as cls
    return cls.from_pretrained(
        cfg.video_model,
        device=device,
        dtype=dtype,
        local_files_only=cfg.local_files_only,
        cache_dir=cfg.cache_dir,
        revision=cfg.video_revision,
        **kwargs,
    )


def build_teachers(
    cfg: TeacherConfig,
    device: torch.device,
    roles: tuple[str, ...],
    seed: int = 0,
    video_frames: int | None = None,
) -> dict[str, Any]:
    """Teachers for ``roles`` (a subset of ROLES) on ``device``. ``video_frames`` (stage 2's
    ``frames`` when set) builds a real video teacher for that clip length instead of its own."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown teacher role(s) {sorted(unknown)}; allowed: {', '.join(ROLES)}")
    if cfg.kind in ("toy", "random"):
        from ayg.teachers.toy import load_toy_teachers, random_toy_teachers

        teachers = (
            load_toy_teachers(device)
            if cfg.kind == "toy"
            else random_toy_teachers(seed, device=device)
        )
        return {r: teachers[r] for r in roles}
    if cfg.kind != "real":
        raise ValueError(f"teachers.kind must be real, toy or random, got '{cfg.kind}'")

    dtype = getattr(torch, cfg.dtype) if device.type == "cuda" else torch.float32
    hub = dict(local_files_only=cfg.local_files_only, cache_dir=cfg.cache_dir)
    out: dict[str, Any] = {}
    if "image" in roles:
        from ayg.teachers.stable_diffusion import StableDiffusionTeacher

        out["image"] = StableDiffusionTeacher.from_pretrained(
            cfg.image_model, device=device, dtype=dtype, revision=cfg.image_revision, **hub
        )
    if "multiview" in roles:
        from ayg.teachers.mvdream import MVDreamTeacher

        out["multiview"] = MVDreamTeacher.from_pretrained(
            cfg.multiview_model, device=device, dtype=dtype, revision=cfg.multiview_revision, **hub
        )
    if "video" in roles:
        out["video"] = load_video_teacher(cfg, device, dtype, frames=video_frames)
    if device.type == "cuda":
        from ayg.teachers.runtime import configure_teacher

        for t in out.values():
            configure_teacher(t, runtime_of(cfg))
    if cfg.offload_idle:
        for t in out.values():
            t.offload()
    return out


MODELS_EXTRA = ("diffusers", "transformers", "huggingface_hub")
MODELS_INSTALL = 'pip install "ayg[models]"'


def check_teachers_runnable(cfg: TeacherConfig, device_name: str, preset: str) -> None:
    """Refuse, in one line and before anything is written, real teachers that cannot run here:
    their libraries are missing (the ``models`` extra), or the device is "auto" on a machine
    without CUDA (the real models need a GPU; ``--device cpu`` asks for the CPU explicitly)."""
    if cfg.kind != "real":
        return
    import importlib.util

    missing = [m for m in MODELS_EXTRA if importlib.util.find_spec(m) is None]
    no_gpu = device_name == "auto" and not torch.cuda.is_available()
    if not missing and not no_gpu:
        return
    needs = []
    if no_gpu:
        needs.append("a CUDA GPU (none found; --device cpu runs it on the CPU, very slowly)")
    if missing:
        needs.append(f"{MODELS_INSTALL} ({', '.join(missing)} not installed)")
    raise ValueError(
        f"preset '{preset}' runs real diffusion models and needs "
        + " and ".join(needs)
        + "; --preset toy runs offline on a CPU in minutes"
    )


def runtime_of(cfg: TeacherConfig):
    """The ``ayg.teachers.runtime.Runtime`` a teacher config asks for."""
    from ayg.teachers.runtime import Runtime

    return Runtime(
        encoder_backward=cfg.encoder_backward,
        encoder_chunk=cfg.encoder_chunk,
        channels_last=cfg.channels_last,
        encoder_channels_last=cfg.encoder_channels_last,
        cuda_graphs=cfg.cuda_graphs,
        compile=cfg.compile,
        compile_cache=cfg.compile_cache,
        cudnn_benchmark=cfg.cudnn_benchmark,
        tf32=cfg.tf32,
    )


def check_prompt(cfg: TeacherConfig, prompt: str) -> None:
    """Reject prompts a teacher cannot read, before any work starts (one clear line)."""
    if not prompt or not prompt.strip():
        raise ValueError('the prompt is empty; give a text such as "a blue cone nodding"')
    if cfg.kind in ("toy", "random"):
        from ayg.toyworld.vocab import check_user_prompt

        check_user_prompt(prompt)
