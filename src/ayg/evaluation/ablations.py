"""Table 2 of the paper on the toy world: the full method against its ablations.

Each row is the ``toy`` preset with a few fields overridden; every row generates the same
prompts with the same seed, then ``ayg.evaluate`` scores the assets with the toy classifiers.
The table holds appearance accuracy, motion accuracy, motion amount, drift and view
consistency, each averaged over the row's runs.

    python -m ayg.evaluation.ablations --seeds 0,1 --device cuda --workers 16 \\
        --out runs/ablations --set output.preview=false          # TABLE_PROMPTS, every row
    python -m ayg.evaluation.ablations --summarize docs/results/ablations.jsonl
    python -m ayg.evaluation.ablations --summarize docs/results/ablations_table.jsonl --markdown

Every finished run is appended to ``OUT/runs.jsonl`` (records of ``ayg.evaluation.records``,
kind "ablation", the row's name in ``setting``); the same command again skips the runs recorded
there, so a long table can be split over several calls (``--rows``, ``--seeds``) and their
``runs.jsonl`` files summarized together. With ``--device cuda`` the workers are spread over
every visible GPU (``ayg.evaluation.toy48.run_jobs``). The paper's rows that need a model the
toy world does not have (4D stage with MVDream, w/o initial 3D stage) are omitted; "w/o
rigidity" is included for completeness.

The summary gives, per row, the accuracies with 95 % Wilson intervals, the continuous metrics
with normal-approximation 95 % intervals, and the row against "full AYG" on the same prompt–seed
pairs: the exact McNemar p-value of each accuracy and the mean paired difference of drift and
motion amount with its 95 % interval.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ayg.evaluation.records import RecordError, read_records
from ayg.evaluation.stats import mcnemar_exact, mean_interval, paired_counts, wilson_interval
from ayg.evaluation.toy48 import RunJob, check_jobs_input, run_jobs, split_prompts

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

# The table's prompts, fixed before any run: 4 per shape, every motion, 7 of them held-out pairs
# (red ball, yellow cube, blue cone, green ring: never seen moving by the video teacher).
TABLE_PROMPTS = [
    "a red ball spinning",
    "a red ball swaying",
    "a green ball nodding",
    "a blue ball spinning",
    "a yellow cube swaying",
    "a yellow cube nodding",
    "a red cube spinning",
    "a blue cube swaying",
    "a blue cone nodding",
    "a blue cone spinning",
    "a green cone swaying",
    "a yellow cone spinning",
    "a green ring spinning",
    "a yellow ring swaying",
    "a red ring nodding",
    "a blue ring spinning",
]
DEFAULT_PROMPTS = TABLE_PROMPTS
ACCURACIES = ("motion_accuracy", "appearance_accuracy")
CONTINUOUS = ("drift", "motion_amount")

METRICS = ("appearance_accuracy", "motion_accuracy", "motion_amount", "drift", "view_consistency")


def ablation_jobs(
    prompts: Sequence[str],
    rows: Sequence[int],
    out: str | Path,
    device: str = "cpu",
    seeds: Sequence[int] = (0,),
    overrides: Sequence[str] = (),
) -> list[RunJob]:
    """One job per row, seed and prompt: ``overrides`` for every row, then the row's own."""
    out = Path(out)
    return [
        RunJob(
            prompt,
            str(out / f"row{r:02d}" / f"s{seed}" / f"p{p:02d}"),
            device,
            seed,
            (*overrides, *ROWS[r][1]),
            kind="ablation",
            setting=ROWS[r][0],
        )
        for r in rows
        for seed in seeds
        for p, prompt in enumerate(prompts)
    ]


def _mean(values: Sequence[Any]) -> float:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else math.nan


def _by_pair(records: Sequence[dict[str, Any]]) -> dict[tuple[str, Any], dict[str, Any]]:
    return {(r["prompt"], r["seed"]): r["metrics"] for r in records}


def table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per row of ``ROWS`` (in that order) that has records: the row's name, its
    number of runs, each metric averaged over them, the intervals, and the paired comparison
    with "full AYG" (``vs_full``) on the prompt–seed pairs both rows ran."""
    out = []
    full = _by_pair([r for r in records if r.get("setting") == ROWS[0][0]])
    for name, _ in ROWS:
        mine = [r for r in records if r.get("setting") == name]
        if not mine:
            continue
        row: dict[str, Any] = {
            "row": name,
            "runs": len(mine),
            **{m: _mean([r["metrics"].get(m) for r in mine]) for m in METRICS},
        }
        for m in ACCURACIES:
            vals = [r["metrics"].get(m) for r in mine if r["metrics"].get(m) is not None]
            if vals:
                row[f"{m}_interval"] = wilson_interval(int(sum(v >= 0.5 for v in vals)), len(vals))
        for m in CONTINUOUS:
            vals = [float(r["metrics"][m]) for r in mine if r["metrics"].get(m) is not None]
            if vals:
                row[f"{m}_interval"] = mean_interval(vals)[1:]
        if name != ROWS[0][0] and full:
            pairs = [(full[k], v) for k, v in _by_pair(mine).items() if k in full]
            vs: dict[str, Any] = {"pairs": len(pairs)}
            for m in ACCURACIES:
                both = [(a.get(m), b.get(m)) for a, b in pairs]
                both = [(a >= 0.5, b >= 0.5) for a, b in both if a is not None and b is not None]
                if both:
                    b, c = paired_counts([x for x, _ in both], [y for _, y in both])
                    vs[m] = {"full_only": b, "row_only": c, "mcnemar_p": mcnemar_exact(b, c)}
            for m in CONTINUOUS:
                diffs = [float(b[m]) - float(a[m]) for a, b in pairs if m in a and m in b]
                if diffs:
                    mean, lo, hi = mean_interval(diffs)
                    vs[m] = {"mean_difference": mean, "interval": (lo, hi)}
            row["vs_full"] = vs
        out.append(row)
    return out


def format_table(rows: Sequence[dict[str, Any]], prompts: Sequence[str]) -> str:
    header = f"{'setting':28s} {'runs':>4s} " + " ".join(f"{m[:14]:>14s}" for m in METRICS)
    lines = [f"prompts: {'; '.join(prompts)}", header, "-" * len(header)]
    for row in rows:
        cells = " ".join(f"{row[m]:14.3f}" for m in METRICS)
        lines.append(f"{row['row']:28s} {row['runs']:4d} {cells}")
    lines += ["", "95 % intervals, and each row against full AYG on the same prompt-seed pairs:"]
    for row in rows:

        def ci(m: str, row: dict[str, Any] = row) -> str:
            iv = row.get(f"{m}_interval")
            return "-" if iv is None else f"[{iv[0]:.2f}, {iv[1]:.2f}]"

        text = (
            f"{row['row']:28s} motion {ci('motion_accuracy')} appearance "
            f"{ci('appearance_accuracy')} drift {ci('drift')} amount {ci('motion_amount')}"
        )
        vs = row.get("vs_full")
        if vs:
            parts = [f"{vs['pairs']} pairs"]
            for m in ACCURACIES:
                if m in vs:
                    v = vs[m]
                    parts.append(
                        f"{m.split('_')[0]} {v['full_only']}/{v['row_only']} p={v['mcnemar_p']:.3f}"
                    )
            for m in CONTINUOUS:
                if m in vs:
                    d, (lo, hi) = vs[m]["mean_difference"], vs[m]["interval"]
                    parts.append(f"{m} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            text += "\n" + " " * 29 + "vs full: " + ", ".join(parts)
        lines.append(text)
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "100 %" if v == 1 else f"{100 * v:.1f} %"


def _signed(v: float) -> str:
    return f"{v:+.2f}".replace("-", "−")  # a typographic minus, as the docs write it


def markdown_tables(rows: Sequence[dict[str, Any]]) -> str:
    """The two tables of docs/RESULTS.md from :func:`table`'s rows: each row's means with their
    95 % intervals, then each row against full AYG (discordant pairs and exact McNemar p of the
    accuracies, mean paired differences of drift and motion amount with their intervals)."""
    lines = [
        "| setting | motion | appearance | drift | motion amount |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for m in ACCURACIES:
            lo, hi = row[f"{m}_interval"]
            cells.append(f"{_pct(row[m])} [{round(100 * lo)}, {round(100 * hi)}]")
        for m in CONTINUOUS:
            lo, hi = row[f"{m}_interval"]
            cells.append(f"{row[m]:.3f} [{lo:.2f}, {hi:.2f}]")
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| setting vs full AYG | motion: discordant, p | appearance: discordant, p | drift "
        "difference | motion amount difference |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        vs = row.get("vs_full")
        if not vs:
            continue
        cells = []
        for m in ACCURACIES:
            v = vs[m]
            cells.append(f"{v['full_only']} / {v['row_only']}, p = {v['mcnemar_p']:.2g}")
        for m in CONTINUOUS:
            d, (lo, hi) = vs[m]["mean_difference"], vs[m]["interval"]
            cells.append(f"{_signed(d)} [{_signed(lo)}, {_signed(hi)}]")
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ayg.evaluation.ablations", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--prompts", default=",".join(DEFAULT_PROMPTS), help="comma-separated toy prompts"
    )
    ap.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2, help="parallel runs (processes)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1")
    ap.add_argument("--set", action="append", default=[], help="extra overrides for every row")
    ap.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="RUNS_JSONL",
        help="print the table of finished runs (record files) and exit",
    )
    ap.add_argument(
        "--markdown",
        action="store_true",
        help="with --summarize: print the two Markdown tables of docs/RESULTS.md instead",
    )
    args = ap.parse_args(argv)
    if args.markdown and not args.summarize:
        ap.error("--markdown prints the tables of finished runs: give it with --summarize FILE")

    if args.summarize:
        try:
            records = [r for r in read_records(args.summarize) if r["kind"] == "ablation"]
        except RecordError as e:
            ap.error(str(e))
        prompts = list(dict.fromkeys(r["prompt"] for r in records))
        rows = table(records)
        print(markdown_tables(rows) if args.markdown else format_table(rows, prompts))
        return 0

    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    prompts = split_prompts(args.prompts)
    try:
        rows = (
            list(range(len(ROWS))) if args.rows is None else [int(i) for i in args.rows.split(",")]
        )
    except ValueError:
        rows = [-1]
    if any(not 0 <= r < len(ROWS) for r in rows):
        ap.error(
            f"--rows takes row numbers 0..{len(ROWS) - 1} separated by commas, got {args.rows!r}"
        )
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(x < 0 for x in seeds):
        ap.error(f"--seeds takes non-negative integers separated by commas, got {args.seeds!r}")
    check_jobs_input(ap, prompts, args.set)
    for r in rows:  # every row's overrides must apply too
        check_jobs_input(ap, prompts[:1], [*args.set, *ROWS[r][1]])

    from ayg.io_utils import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = ablation_jobs(prompts, rows, out, args.device, seeds, args.set)
    t0 = time.perf_counter()
    records = run_jobs(jobs, out / "runs.jsonl", args.workers)
    rows_out = table(records)
    print(format_table(rows_out, prompts) + f"\n({time.perf_counter() - t0:.0f} s)")
    write_json(out / "table.json", {"prompts": prompts, "rows": rows_out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
