"""Teachers: frozen diffusion models that judge renders (DESIGN §3, §7).

One file per teacher: ``stable_diffusion`` (image), ``mvdream`` (multiview), ``video``
(text-to-video UNet3D) and ``toy`` (the offline pixel-space teachers). ``build_teachers`` picks
them from a ``TeacherConfig``; heavy imports happen only for the kind asked for.
"""

from __future__ import annotations

from typing import Any

import torch

from ayg.config import TeacherConfig

ROLES = ("image", "multiview", "video")


def build_teachers(
    cfg: TeacherConfig, device: torch.device, roles: tuple[str, ...], seed: int = 0
) -> dict[str, Any]:
    """Teachers for ``roles`` (a subset of ROLES) on ``device``."""
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
        from ayg.teachers.video import VideoTeacher

        out["video"] = VideoTeacher.from_pretrained(
            cfg.video_model, device=device, dtype=dtype, revision=cfg.video_revision, **hub
        )
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
        cuda_graphs=cfg.cuda_graphs,
        compile=cfg.compile,
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
