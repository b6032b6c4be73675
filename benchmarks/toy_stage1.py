"""Stage 1 alone on toy prompts: how close is the static cloud to the true object?

For each prompt, runs stage 1 of the ``toy`` preset (plus ``--set`` overrides), renders the
cloud from the 20 cameras of the F.1 protocol (``ayg.evaluate``) at τ = 0 over white, and
compares with the analytic render of the same prompt (``ayg.toyworld.scene``), which is what
the teachers were trained on. Prints one JSON line per prompt: mean squared error of the
images, and ``ayg eval``'s appearance accuracy at τ = 0, view consistency and view agreement
(``ayg.evaluate.evaluate_asset`` on the static cloud).

    python benchmarks/toy_stage1.py --prompts "a red ball spinning,a green cube swaying"
    python benchmarks/toy_stage1.py --prompts "a red ball spinning" --set 'stage1.mode="csd"'
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from toy_eval import split_prompts


def stage1_quality(prompt: str, overrides: list[str], device: str, seed: int, res: int) -> dict:
    from ayg.asset import Asset
    from ayg.config import apply_overrides, preset, validate
    from ayg.evaluate import EVAL_VIEWS, eval_cameras, evaluate_asset
    from ayg.stages import RunContext, run_stage1
    from ayg.teachers import build_teachers
    from ayg.teachers.toy import load_toy_classifiers
    from ayg.toyworld import scene
    from ayg.toyworld.vocab import parse_prompt

    cfg = apply_overrides(preset("toy"), [f'device="{device}"', f"seed={seed}", *overrides])
    validate(cfg)
    dev = torch.device(device)
    t0 = time.perf_counter()
    teachers = build_teachers(cfg.teachers, dev, ("multiview", "image"), seed=cfg.seed)
    cloud = run_stage1(prompt, cfg.stage1, teachers, RunContext(device=dev, progress=False), seed)
    seconds = time.perf_counter() - t0
    asset = Asset.from_cloud(cloud, prompts=[prompt]).to(dev)

    azimuths = torch.arange(EVAL_VIEWS, dtype=torch.float32) * (360.0 / EVAL_VIEWS)
    white = torch.ones(3, device=dev)
    cams = eval_cameras(azimuths, res).to(dev)
    with torch.no_grad():
        truth = scene.render(parse_prompt(prompt), cams, 0.0, background=white).rgb
        image = asset.render(cams, torch.zeros(EVAL_VIEWS), background=white).rgb
    report = evaluate_asset(asset, prompt, load_toy_classifiers(dev))
    return {
        "prompt": prompt,
        "overrides": overrides,
        "mse": (truth - image).square().mean().item(),
        "appearance_accuracy_tau0": report["appearance_accuracy_tau0"],
        "view_consistency": report["view_consistency"],
        "view_agreement": report["view_agreement"],
        "gaussians": cloud.num,
        "stage1_seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", required=True, help="comma-separated toy prompts")
    ap.add_argument("--set", action="append", default=[], help="config overrides (key=value)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--res", type=int, default=64, help="render size of the comparison")
    args = ap.parse_args()
    for prompt in split_prompts(args.prompts):
        print(json.dumps(stage1_quality(prompt, args.set, args.device, args.seed, args.res)))


if __name__ == "__main__":
    main()
