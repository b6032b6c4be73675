"""How far an asset turns about the spin axis: the least-squares rotation about z (through the
origin, the toy world's spin axis) that carries the Gaussians' centres at τ = 0 to their
centres at each later time, and the share of their displacement that rotation explains.

For centres p (at τ = 0) and q (at τ), the rotation angle θ about z minimising
Σ ‖R_θ p_xy − q_xy‖² has the closed form θ = atan2(Σ (p_x q_y − p_y q_x), Σ (p_x q_x + p_y q_y)).
``explained`` = 1 − mean ‖q − R_θ p‖ / mean ‖q − p‖: 1 when the motion is exactly that turn,
about 0 when the motion is not a turn about z (0 when nothing moves). The toy world's own spin
turns by 360°·SPIN_TURNS·τ (60° at τ = 1), printed alongside as ``world``.

    python -m experiments.toy_spin_fit --asset runs/red-ball/asset.ayg [--times 9] [--json]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from torch import Tensor

from tools.toyworld.scene import rotate_z, spin_angle


def explained_share(p: Tensor, q: Tensor, model: Tensor) -> float:
    """1 − mean ‖q − model‖ / mean ‖q − p‖ over the points (N, 3): the share of the mean
    displacement p -> q that ``model`` (where the model moves p) explains; 0 when nothing moves."""
    moved = float((q - p).norm(dim=-1).mean())
    left = float((q - model).norm(dim=-1).mean())
    return 1.0 - left / moved if moved > 0 else 0.0


def spin_fit(positions: Tensor) -> list[dict]:
    """positions (T, N, 3), positions[0] at τ = 0 -> for each later time, {"degrees": θ of the
    best turn about z, "explained": share of the mean displacement that turn explains}."""
    if positions.ndim != 3 or positions.shape[-1] != 3 or positions.shape[0] < 2:
        raise ValueError(f"positions must be (T >= 2, N, 3), got {tuple(positions.shape)}")
    p = positions[0].double()
    rows = []
    for q in positions[1:].double():
        cross = (p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum()
        dot = (p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1]).sum()
        theta = torch.atan2(cross, dot)
        explained = explained_share(p, q, rotate_z(p, theta))
        rows.append({"degrees": math.degrees(float(theta)), "explained": explained})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--asset", required=True, help="an .ayg asset (e.g. RUN/asset.ayg)")
    ap.add_argument("--times", type=int, default=9, help="times from 0 to the end (>= 2)")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = ap.parse_args()
    if args.times < 2:
        ap.error(f"--times must be >= 2, got {args.times}")
    from experiments.toy_force import load_asset

    asset = load_asset(ap, args.asset)
    g = torch.linspace(0.0, asset.duration, args.times)
    with torch.no_grad():
        rows = spin_fit(asset.positions(g).float())
    world = torch.rad2deg(spin_angle(g[1:])).tolist()
    for t, w, r in zip(g[1:].tolist(), world, rows, strict=True):
        r["tau"], r["world"] = t, w
    if args.json:
        print(json.dumps({"asset": args.asset, "gaussians": asset.num_gaussians, "fit": rows}))
        return
    print(f"{args.asset} ({asset.num_gaussians} Gaussians)")
    print("   tau  degrees  world  explained")
    for r in rows:
        print(f"{r['tau']:6.2f}  {r['degrees']:+7.1f}  {r['world']:5.1f}  {r['explained']:9.2f}")


if __name__ == "__main__":
    main()
