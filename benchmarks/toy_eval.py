"""Generate every moving toy prompt (16 colour–shape pairs × 3 motions = 48) with the ``toy``
preset and report appearance and motion accuracy, overall and on the held-out pairs that the
video teacher never saw moving (DESIGN §7).

    python benchmarks/toy_eval.py --device cuda --workers 12 --out runs/toy48

Prompts run in parallel worker processes (each one generate + evaluate); the summary is
printed as JSON and written to OUT/summary.json, per-prompt results to OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path


def _one(job: tuple[str, str, str, int, list[str]]) -> dict:
    prompt, out, device, seed, overrides = job
    import torch

    torch.set_num_threads(1)
    from ayg.config import apply_overrides, preset
    from ayg.evaluate import evaluate_asset
    from ayg.pipeline import generate
    from ayg.teachers.toy import load_toy_classifiers
    from ayg.toyworld.vocab import parse_prompt

    t0 = time.perf_counter()
    cfg = apply_overrides(preset("toy"), [f'device="{device}"', f"seed={seed}", *overrides])
    run = Path(out)
    asset = generate(prompt, run, cfg, resume=(run / "config.json").exists(), progress=False)
    res = evaluate_asset(
        asset.to(device),
        prompt,
        load_toy_classifiers(device),
        generator=torch.Generator().manual_seed(seed),
    )
    toy = parse_prompt(prompt)
    keep = (
        "appearance_accuracy",
        "motion_accuracy",
        "motion_amount",
        "drift",
        "view_consistency",
        "appearance_majority",
        "motion_majority",
    )
    return {
        "prompt": prompt,
        "held_out": toy.held_out,
        "seconds": time.perf_counter() - t0,
        **{k: res.get(k) for k in keep},
    }


def split_prompts(text: str) -> list[str]:
    """A comma-separated prompt list of the command line -> prompts (blanks dropped)."""
    return [p.strip() for p in text.split(",") if p.strip()]


def _mean(xs: list) -> float:
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/toy48")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first prompt index (of 48)")
    ap.add_argument("--limit", type=int, default=None, help="at most N prompts from --start")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every run")
    ap.add_argument(
        "--prompts", default=None, help="comma-separated toy prompts instead of the 48 moving ones"
    )
    args = ap.parse_args()

    from ayg.toyworld.vocab import COLOURS, MOTIONS, SHAPES

    prompts = [f"a {c} {s} {m}" for c in COLOURS for s in SHAPES for m in MOTIONS]
    if args.prompts is not None:
        prompts = split_prompts(args.prompts)
    stop = None if args.limit is None else args.start + args.limit
    prompts = prompts[args.start : stop]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, str(out / p.replace(" ", "_")), args.device, args.seed, args.set) for p in prompts]
    t0 = time.perf_counter()
    results = []
    with (
        mp.get_context("spawn").Pool(args.workers) as pool,
        open(out / "results.jsonl", "w") as log,
    ):
        for res in pool.imap_unordered(_one, jobs):
            results.append(res)
            log.write(json.dumps(res) + "\n")
            log.flush()
            print(json.dumps(res), flush=True)
    held = [r for r in results if r["held_out"]]
    summary = {
        "prompts": len(results),
        "appearance_accuracy": _mean([r["appearance_accuracy"] for r in results]),
        "motion_accuracy": _mean([r["motion_accuracy"] for r in results]),
        "held_out_prompts": len(held),
        "held_out_appearance_accuracy": _mean([r["appearance_accuracy"] for r in held]),
        "held_out_motion_accuracy": _mean([r["motion_accuracy"] for r in held]),
        "motion_amount": _mean([r["motion_amount"] for r in results]),
        "drift": _mean([r["drift"] for r in results]),
        "view_consistency": _mean([r["view_consistency"] for r in results]),
        "wall_seconds": time.perf_counter() - t0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
