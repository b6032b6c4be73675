"""ayg — Align Your Gaussians: text to animated 3D Gaussians (text-to-4D).

A small Python API over the same machinery as the ``ayg`` command line::

    import ayg
    asset = ayg.generate("a blue cone nodding", out="runs/cone", preset="toy")
    asset = ayg.load("runs/cone/asset.ayg")
    out = ayg.render(asset, cameras, times)      # RenderOutput: rgb (C,3,H,W), alpha, depth
    asset.save("copy.ayg")
"""

from __future__ import annotations

__version__ = "0.1.0"


def generate(
    prompt: str, out: str, preset: str = "paper", overrides: list[str] | None = None, **kwargs
):
    """Stage 1 then stage 2 for ``prompt``; writes ``out/asset.ayg`` and returns the asset.
    ``overrides`` are ``section.field=value`` strings (see ``ayg.config``)."""
    from ayg.config import apply_overrides
    from ayg.config import preset as make_preset
    from ayg.pipeline import generate as _generate

    cfg = apply_overrides(make_preset(preset), overrides or [])
    return _generate(prompt, out, cfg, **kwargs)


def load(path: str):
    """Read an ``.ayg`` asset (or a static asset from an Inria PLY)."""
    from ayg.pipeline import load_cloud_or_asset

    return load_cloud_or_asset(path)


def render(asset, cameras, times, background=None, backend: str = "auto"):
    """Render ``asset`` from ``cameras`` (C cameras), camera i at global time ``times[i]``."""
    import torch

    times = torch.as_tensor(times, dtype=torch.float32, device=cameras.device).reshape(-1)
    if times.numel() == 1 and len(cameras) > 1:
        times = times.expand(len(cameras))
    return asset.render(cameras, times, background=background, backend=backend)


__all__ = ["generate", "load", "render", "__version__"]
