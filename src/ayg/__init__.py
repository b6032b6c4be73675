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


def __getattr__(name: str):
    # ``ayg.render`` is the callable module ayg/render.py (see its ``_CallableModule``),
    # imported on first use so that ``import ayg`` stays light
    if name == "render":
        import importlib

        return importlib.import_module("ayg.render")
    raise AttributeError(f"module 'ayg' has no attribute {name!r}")


__all__ = ["generate", "load", "render", "__version__"]
