"""How much a spin changes what the toy video teacher sees, for a stage-1 cloud and for the true
object.

The cloud is turned about z by θ (its centres only, as ``toy_force.py`` moves it) and rasterized
from stage 2's cameras; the true object is rendered by the analytic renderer at the τ where the
toy world's spin reaches θ. Both are resized to the video teacher's input (24×40, bilinear, as
its ``encode`` does) and compared with their own rest pose:

* ``cloud_change`` / ``true_change``: mean absolute change per pixel and channel;
* ``ratio``: cloud_change / true_change;
* ``corr``: cosine between the two change images (1: the cloud changes the same pixels in the
  same way as the true object);
* ``rest_error``: mean absolute difference between the cloud and the true object at rest.

    python -m experiments.toy_spin_visibility --asset runs/red-ball/stage1.ayg \\
        --prompt "a red ball spinning" --degrees 10,30 --json
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from torch import Tensor

from ayg.toyworld.nets import default_config, resize

_VIDEO = default_config("video")  # the shipped toy video teacher's input size


def _resize(x: Tensor) -> Tensor:
    """Renders to the video teacher's input, as its ``encode`` resizes them."""
    return resize(x, _VIDEO.height, _VIDEO.width)


def spin_changes(
    cloud, prompt: str, cameras, degrees: list[float], background: Tensor
) -> dict[float, dict]:
    """{θ: change of the cloud's and the true object's renders under a spin of θ degrees}; the
    rest poses are rendered once for all angles."""
    from ayg.render import rasterize
    from tools.toyworld import scene

    quats = cloud.rotations if cloud.quats is not None else None

    def cloud_view(means: Tensor) -> Tensor:
        with torch.no_grad():
            out = rasterize(
                means, cloud.scales, quats, cloud.opacity, cloud.sh, cameras,
                background=background, sh_degree=cloud.sh_degree,
            )  # fmt: skip
        return _resize(out.rgb)

    def true_view(tau: float) -> Tensor:
        return _resize(scene.render(prompt, cameras, tau, background=background, supersample=2).rgb)

    cloud0, true0 = cloud_view(cloud.means), true_view(0.0)
    rest_error = float((cloud0 - true0).abs().mean())
    rows = {}
    for deg in degrees:
        angle = torch.tensor([[math.radians(deg)]], dtype=cloud.means.dtype)
        dc = cloud_view(scene.rotate_z(cloud.means[None], angle)[0]) - cloud0
        dt = true_view(deg / (360.0 * scene.SPIN_TURNS)) - true0
        cloud_change, true_change = float(dc.abs().mean()), float(dt.abs().mean())
        norm = float(dc.norm() * dt.norm())
        rows[deg] = {
            "cloud_change": cloud_change,
            "true_change": true_change,
            "ratio": cloud_change / true_change if true_change > 0 else float("nan"),
            "corr": float((dc * dt).sum()) / norm if norm > 0 else float("nan"),
            "rest_error": rest_error,
        }
    return rows


def stage2_cameras(count: int, seed: int, width: int = 64, height: int = 40):
    """``count`` still cameras drawn like the toy preset's stage 2 (one frame each)."""
    import dataclasses

    from ayg.config import preset
    from ayg.stages import stage2_samplers

    one_frame = dataclasses.replace(preset("toy").stage2, frames=1, width=width, height=height)
    _, sampler = stage2_samplers(one_frame)
    return sampler.sample(count, torch.Generator().manual_seed(seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--asset", required=True, help="a stage-1 .ayg (e.g. RUN/stage1.ayg)")
    ap.add_argument("--prompt", required=True, help="the toy prompt the asset was made from")
    ap.add_argument("--degrees", default="10,30")
    ap.add_argument("--cameras", type=int, default=48)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = ap.parse_args()
    from ayg.toyworld.vocab import parse_prompt
    from experiments.toy_force import numbers, stage1_cloud

    if args.cameras < 1:
        ap.error(f"--cameras must be >= 1, got {args.cameras}")
    degrees = numbers(ap, "--degrees", args.degrees, "10,30")
    try:  # a prompt outside the vocabulary: one line, not a traceback
        parse_prompt(args.prompt)
    except ValueError as e:
        ap.error(str(e).strip().splitlines()[0])
    cloud = stage1_cloud(ap, args.asset)
    cams = stage2_cameras(args.cameras, args.seed)
    white = torch.ones(len(cams), 3)
    rows = {f"{d:g}": r for d, r in spin_changes(cloud, args.prompt, cams, degrees, white).items()}
    if args.json:
        print(json.dumps({"prompt": args.prompt, "gaussians": cloud.num, "spin": rows}))
        return
    print(f"{args.prompt} ({cloud.num} Gaussians, {args.cameras} cameras, white background)")
    print("degrees  cloud_change  true_change  ratio  corr  rest_error")
    for d, r in rows.items():
        print(
            f"{d:>7}  {r['cloud_change']:12.4f}  {r['true_change']:11.4f}  {r['ratio']:5.2f}"
            f"  {r['corr']:4.2f}  {r['rest_error']:10.4f}"
        )


if __name__ == "__main__":
    main()
