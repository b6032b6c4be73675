"""Table 2 of the paper on the toy world: the full method against its ablations.

Each row is the ``toy`` preset with a few fields overridden; every row generates the same
prompts with the same seeds, then ``ayg.evaluate`` scores the assets with the toy classifiers.
Prints one table: appearance accuracy, motion accuracy, motion amount, drift and view
consistency, each averaged over the prompts.

    python benchmarks/ablations.py --prompts "a blue cone nodding,a red cube spinning" \
        --device cuda --out runs/ablations

The paper's rows that need a model we do not have in the toy world (4D stage with MVDream,
w/o initial 3D stage) are omitted; "w/o rigidity" is included for completeness.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_eval import _one, split_prompts  # noqa: E402  (one generate + evaluate per worker)

ROWS: list[tuple[str, list[str]]] = [
    ("full AYG", []),
    ("w/o JSD regularizer", ["stage2.lambda_jsd=0"]),
    ("w/o rigidity regularizer", ["stage2.lambda_rigidity=0"]),
    ("w/o motion amplification", ["stage2.omega_ma=1"]),
    ("w/o image DM in stage 2", ["stage2.use_image=false"]),
    # the toy preset's stage 1 already uses SDS (config.toy_preset), so in the toy world this
    # row changes stage 2 only; the last row puts the paper's CSD back into stage 1
    ("SDS instead of CSD", ['stage1.mode="sds"', 'stage2.mode="sds"']),
    ("stage 1 w/o multiview DM", ["stage1.use_multiview=false"]),
    ("w/o dynamic cameras", ["stage2.dynamic_cameras=false"]),
    ("fps 4 only", ["stage2.fps_values=[4]", "stage2.fps_probs=[1.0]"]),
    ("fps 12 only", ["stage2.fps_values=[12]", "stage2.fps_probs=[1.0]"]),
    ("w/o negative prompt", ["stage2.omega_neg=0"]),
    ("stage 1 with CSD (paper's)", ['stage1.mode="csd"']),
]

DEFAULT_PROMPTS = [
    "a blue cone nodding",  # held-out pair: never seen moving by the video teacher
    "a red cube spinning",
    "a green ball swaying",
    "a yellow ring nodding",
]

METRICS = ("appearance_accuracy", "motion_accuracy", "motion_amount", "drift", "view_consistency")


def _mean(values: list) -> float:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else math.nan


def _job(item: tuple[int, tuple]) -> tuple[int, dict]:
    row, job = item
    return row, _one(job)


def print_table(runs: list[dict], prompts: list[str], seconds: float | None = None) -> list[dict]:
    """One line per row (in ROWS order) of the metrics averaged over that row's runs."""
    table = []
    for r, (name, _) in enumerate(ROWS):
        mine = [x for x in runs if x["row"] == r]
        if mine:
            table.append(
                {
                    "row": name,
                    "runs": len(mine),
                    **{m: _mean([x[m] for x in mine]) for m in METRICS},
                }
            )
    took = "" if seconds is None else f", {seconds:.0f} s"
    header = f"{'setting':28s} {'runs':>4s} " + " ".join(f"{m[:14]:>14s}" for m in METRICS)
    print(f"\nprompts: {'; '.join(prompts)}{took}\n" + header)
    print("-" * len(header))
    for row in table:
        print(f"{row['row']:28s} {row['runs']:4d} " + " ".join(f"{row[m]:14.3f}" for m in METRICS))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--prompts", default=",".join(DEFAULT_PROMPTS), help="comma-separated toy prompts"
    )
    ap.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2, help="parallel runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="extra overrides for every row")
    ap.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="RUNS_JSONL",
        help="print the table of finished runs (runs.jsonl files of earlier calls) and exit",
    )
    args = ap.parse_args()

    if args.summarize:
        runs = [json.loads(line) for f in args.summarize for line in open(f) if line.strip()]
        prompts = list(dict.fromkeys(r["prompt"] for r in runs))
        print_table(runs, prompts)
        return

    prompts = split_prompts(args.prompts)
    rows = range(len(ROWS)) if args.rows is None else [int(i) for i in args.rows.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            r,
            (
                prompt,
                str(out / f"row{r:02d}" / f"p{p:02d}"),
                args.device,
                args.seed,
                [*args.set, *ROWS[r][1]],
            ),
        )
        for r in rows
        for p, prompt in enumerate(prompts)
    ]
    t0 = time.perf_counter()
    runs = []
    # every finished run is appended at once, so an interrupted call keeps what it finished
    with (
        mp.get_context("spawn").Pool(args.workers) as pool,
        open(out / "runs.jsonl", "a") as log,
    ):
        for r, res in pool.imap_unordered(_job, jobs):
            runs.append({"row": r, "setting": ROWS[r][0], **res})
            log.write(json.dumps(runs[-1]) + "\n")
            log.flush()
    table = print_table(runs, prompts, time.perf_counter() - t0)
    (out / "table.json").write_text(
        json.dumps({"prompts": prompts, "rows": table, "runs": runs}, indent=2)
    )


if __name__ == "__main__":
    main()
