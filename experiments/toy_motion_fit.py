"""Which of the toy world's motions a distilled asset carries, and what the motion classifier
reads in each part of it: the diagnosis of a sway that is scored as a spin.

Fits, at each time τ, the three analytic motions of ``tools.toyworld.scene`` to the Gaussians'
centres (p at τ = 0, q at τ):

* bend — the top moved sideways: every centre moves by w(p)·(a_x, a_y, 0), w = h² with
  h = (p_z − BEND_BASE_Z) / BEND_HEIGHT (clamped at 0). The least-squares amounts are
  a_i = Σ w (q_i − p_i) / Σ w², the displacement of the top along x (the world's nod) and y (its
  sway); the world's sway has a_y = BEND_AMPLITUDE·sin(2πτ). Stage 2's cameras take any
  azimuth, so a distilled sway may bend in any horizontal direction: the fit leaves it free;
* spin — the least-squares turn about z (``experiments.toy_spin_fit``);
* affine — the least-squares q ≈ A p + b: how much of the motion one global linear map
  carries (a bend is not affine, so this is a yardstick, not a motion of the world);
* ``local_coherence`` — the mean cosine between each centre's displacement and the mean
  displacement of its 16 nearest rest neighbours: 1 when neighbourhoods move together (a smooth
  deformation), about 0 when every Gaussian moves its own way.

``explained`` = 1 − mean ‖q − model(p)‖ / mean ‖q − p‖ (``toy_spin_fit.explained_share``).

With ``--classify`` the toy motion classifier scores, from the 8 azimuths of ``ayg.evaluate``,
the asset and versions of it whose centres follow one model (the rest of the asset unchanged):

* ``asset`` — the asset as distilled;
* ``fit-bend`` / ``fit-spin`` — the rest pose moved by the fitted bend / turn at every τ;
* ``residual`` — the asset with its fitted bend taken out (q − w·(a_x, a_y, 0));
* ``world-sway`` / ``world-spin`` — the rest pose moved by the world's own sway / spin.

If ``world-sway`` reads as swaying while the asset reads as spinning, the
classifier is right about bends and the asset carries something else besides; ``residual`` says
what that is.

    python -m experiments.toy_motion_fit --asset runs/x/asset.ayg [--times 9] [--classify] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ayg.asset import Asset
from ayg.regularizers import knn_indices
from experiments.toy_spin_fit import explained_share, spin_fit
from tools.toyworld import scene

NEIGHBOURS = 16
REPLAYS = ("asset", "fit-bend", "fit-spin", "residual", "world-sway", "world-spin")


def bend_amounts(positions: Tensor, axis: int) -> Tensor:
    """positions (T, N, 3), positions[0] the rest pose -> (T,) least-squares bend amounts along
    ``axis`` (0 = x, 1 = y) of every time (0 at τ = 0)."""
    p = positions[0].double()
    w = scene.bend_profile(p[:, 2])
    denom = (w * w).sum().clamp(min=1e-12)
    return ((positions.double()[..., axis] - p[:, axis]) * w).sum(-1) / denom


def _bend_model(p: Tensor, ax: Tensor, ay: Tensor) -> Tensor:
    """Positions p (..., N, 3) bent by the world's bend with top displacements ax along x and ay
    along y (broadcast against p[..., 0]); a bend keeps z, so the two compose."""
    return scene.bend(scene.bend(p, ax, 0), ay, 1)


def affine_explained(p: Tensor, q: Tensor) -> float:
    """Share of the mean displacement p -> q (N, 3) that the least-squares affine map explains."""
    x = torch.cat([p, torch.ones_like(p[:, :1])], 1)
    model = x @ torch.linalg.lstsq(x, q).solution
    return explained_share(p, q, model)


def local_coherence(d: Tensor, near: Tensor | None) -> float:
    """Mean cosine between displacements d (N, 3) and their neighbours' (``near`` (N, k)) mean;
    0 when nothing moves."""
    if near is None:
        return 0.0
    nb = d[near].mean(1)
    norms = d.norm(dim=-1) * nb.norm(dim=-1)
    moving = norms > 1e-12
    if not bool(moving.any()):
        return 0.0
    return float(((d * nb).sum(-1)[moving] / norms[moving]).mean())


def motion_fit(positions: Tensor) -> list[dict]:
    """positions (T >= 2, N, 3), positions[0] at τ = 0 -> for each later time the bend (top
    displacements ``nod`` along x and ``sway`` along y, ``bend_explained``), the spin
    (``spin_degrees``, ``spin_explained``), ``affine_explained`` and ``local_coherence``."""
    if positions.ndim != 3 or positions.shape[-1] != 3 or positions.shape[0] < 2:
        raise ValueError(f"positions must be (T >= 2, N, 3), got {tuple(positions.shape)}")
    pos = positions.double()
    p = pos[0]
    ax, ay = bend_amounts(pos, 0), bend_amounts(pos, 1)
    near = knn_indices(p.float(), min(NEIGHBOURS, p.shape[0] - 1)) if p.shape[0] > 1 else None
    rows = []
    for i, spin in enumerate(spin_fit(pos), start=1):
        q = pos[i]
        rows.append(
            {
                "nod": float(ax[i]),
                "sway": float(ay[i]),
                "bend_explained": explained_share(p, q, _bend_model(p, ax[i], ay[i])),
                "spin_degrees": spin["degrees"],
                "spin_explained": spin["explained"],
                "affine_explained": affine_explained(p, q),
                "local_coherence": local_coherence(q - p, near),
            }
        )
    return rows


class MovedAsset(Asset):
    """``base`` with its centres at time g given by ``move(rest (N, 3), g (T,), q (T, N, 3))``,
    q the base's own centres; scales, opacities and colours stay the base's."""

    def __init__(self, base: Asset, move: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
        super().__init__(base.objects, base.header)
        self._base, self._move = base, move

    def positions(self, g) -> Tensor:
        q = self._base.positions(g).detach()
        g = torch.as_tensor(g, dtype=q.dtype, device=q.device).reshape(-1)
        rest = self._base.positions([0.0])[0].detach()
        return self._move(rest, g, q)


def _fitted_bend(rest: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """(T, 1) bend amounts along x and y of centres q (T, N, 3) from rest (N, 3)."""
    both = torch.cat([rest[None], q])
    return tuple(bend_amounts(both, axis)[1:, None].to(q.dtype) for axis in (0, 1))


def _expand(rest: Tensor, g: Tensor) -> Tensor:
    return rest[None].expand(g.shape[0], -1, -1)


def _fit_spin(rest: Tensor, g: Tensor, q: Tensor) -> Tensor:
    angles = [math.radians(r["degrees"]) for r in spin_fit(torch.cat([rest[None], q]))]
    theta = torch.tensor(angles, dtype=q.dtype, device=q.device)[:, None]
    return scene.rotate_z(_expand(rest, g), theta)


def _fit_bend(rest: Tensor, g: Tensor, q: Tensor) -> Tensor:
    return _bend_model(_expand(rest, g), *_fitted_bend(rest, q))


def _residual(rest: Tensor, g: Tensor, q: Tensor) -> Tensor:
    return q - (_fit_bend(rest, g, q) - rest)


MOVES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "fit-bend": _fit_bend,
    "fit-spin": _fit_spin,
    "residual": _residual,
    "world-sway": lambda rest, g, q: scene.deform(_expand(rest, g), "swaying", g),
    "world-spin": lambda rest, g, q: scene.deform(_expand(rest, g), "spinning", g),
}


def replay(asset: Asset, kind: str) -> Asset:
    """The asset (``kind`` "asset") or its version whose centres follow one model (REPLAYS)."""
    if kind == "asset":
        return asset
    if kind not in MOVES:
        raise ValueError(f"unknown replay {kind!r}; allowed: {', '.join(REPLAYS)}")
    return MovedAsset(asset, MOVES[kind])


def readings(asset: Asset, classifiers) -> list[str]:
    """The motion class the classifier reads from each of ``ayg.evaluate``'s 8 azimuths, on the
    clips that ``evaluate_asset`` scores."""
    from ayg.evaluate import MOTION_AZIMUTHS, motion_predictions
    from ayg.toyworld.vocab import MOTION_CLASSES

    res = getattr(classifiers, "motion_res", (24, 40))
    az = torch.tensor(MOTION_AZIMUTHS, dtype=torch.float32)
    with torch.no_grad():
        probs = motion_predictions(asset, classifiers, az, res, torch.zeros(3))
    return [MOTION_CLASSES[i] for i in probs.argmax(-1).tolist()]


def diagnose(asset: Asset, times: int, classifiers=None) -> dict:
    """The fits at ``times`` evenly spaced times of [0, duration] and, with ``classifiers``, the
    readings of every replay."""
    g = torch.linspace(0.0, asset.duration, times)
    with torch.no_grad():
        rows = motion_fit(asset.positions(g).float())
    world = scene.bend_amount(g[1:], "swaying").tolist()
    for t, w, r in zip(g[1:].tolist(), world, rows, strict=True):
        r["tau"], r["world_sway"] = t, w
    out: dict = {"gaussians": asset.num_gaussians, "fit": rows}
    if classifiers is not None:
        out["readings"] = {k: readings(replay(asset, k), classifiers) for k in REPLAYS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--asset", required=True, help="an .ayg asset (e.g. RUN/asset.ayg)")
    ap.add_argument("--times", type=int, default=9, help="times from 0 to the end (>= 2)")
    ap.add_argument("--classify", action="store_true", help="read every replay's motion")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = ap.parse_args()
    if args.times < 2:
        ap.error(f"--times must be >= 2, got {args.times}")
    from experiments.toy_force import load_asset

    asset = load_asset(ap, args.asset)
    classifiers = None
    if args.classify:
        from ayg.teachers.toy import load_toy_classifiers

        classifiers = load_toy_classifiers("cpu")
    out = {"asset": args.asset, **diagnose(asset, args.times, classifiers)}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.asset} ({out['gaussians']} Gaussians)")
    print(
        "   tau  world sway    sway     nod  bend expl.   spin°  spin expl.  affine expl.  local coh."
    )
    for r in out["fit"]:
        print(
            f"{r['tau']:6.2f}  {r['world_sway']:+9.3f}  {r['sway']:+6.3f}  {r['nod']:+6.3f}"
            f"  {r['bend_explained']:10.2f}  {r['spin_degrees']:+6.1f}  {r['spin_explained']:10.2f}"
            f"  {r['affine_explained']:12.2f}  {r['local_coherence']:10.2f}"
        )
    for kind, labels in out.get("readings", {}).items():
        print(f"{kind:11s} " + " ".join(f"{x:8s}" for x in labels))


if __name__ == "__main__":
    main()
