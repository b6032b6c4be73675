"""Does the 4D stage keep the 3D object? (the paper's table 5: CLIP R-Precision 82.2 % after the
3D stage, 81.7 % after the 4D stage). For each run directory holding both ``stage1.ayg`` (the
static cloud the 4D stage starts from) and ``asset.ayg`` (the final animated asset), the toy
appearance classifier scores each with F.1's appearance protocol at 20 evenly spaced times
(``ayg.evaluate.appearance_over_time``: 20 azimuths at elevation 15°, distance 3, fov 40°,
majority vote per time); the stage-1 cloud is static, so it is scored once.

    python -m ayg.evaluation.toy48 --device cuda --workers 16 --seed 0 --out runs/toy48 \\
        --set output.preview=false              # the 48 moving prompts, each keeps stage1.ayg
    python -m ayg.evaluation.keeps3d runs/toy48 --out docs/results/keeps3d.jsonl
    python -m ayg.evaluation.keeps3d --summarize docs/results/keeps3d.jsonl

Every scored run is appended to ``--out`` (records of ``ayg.evaluation.records``, kind
"keeps3d", with the run's directory name in ``run``); the same command again skips the runs
recorded there. The summary gives both accuracies with 95 % Wilson intervals over the runs
and the exact McNemar test of the paired per-run results (the final asset counted right when
its majority is right at most of the times).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ayg.evaluation.records import (
    RecordError,
    append_record,
    make_record,
    read_records,
    source_commit,
)
from ayg.evaluation.stats import mcnemar_exact, paired_counts, wilson_interval

TIMES = 20


def run_dirs(paths: list[str | Path]) -> list[Path]:
    """The run directories under ``paths`` (a path that holds ``asset.ayg`` and ``stage1.ayg``
    is one, else its immediate sub-directories that do), sorted by name."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: not a directory of runs")
        candidates = [p] if (p / "asset.ayg").is_file() else sorted(p.iterdir())
        found += [
            d for d in candidates if (d / "asset.ayg").is_file() and (d / "stage1.ayg").is_file()
        ]
    if not found:
        raise FileNotFoundError(
            f"no run directory with asset.ayg and stage1.ayg under {', '.join(map(str, paths))}"
        )
    return sorted(found, key=lambda d: d.name)


def score_run(run: Path, classifiers, device: str = "cpu", times: int = TIMES) -> dict[str, Any]:
    """A "keeps3d" record for one run directory."""
    from ayg.asset import load
    from ayg.evaluate import appearance_over_time
    from ayg.toyworld.vocab import parse_prompt

    final = load(run / "asset.ayg", device=device)
    stage1 = load(run / "stage1.ayg", device=device)
    prompt = (final.prompts or [None])[0]
    if prompt is None:
        raise ValueError(f"{run / 'asset.ayg'} holds no prompt to score against")
    config_path = run / "config.json"
    config = json.loads(config_path.read_text()).get("config", {}) if config_path.is_file() else {}
    s1 = appearance_over_time(stage1, prompt, classifiers, times=times)
    s2 = appearance_over_time(final, prompt, classifiers, times=times)
    metrics = {
        "stage1_accuracy": s1["accuracy"],
        "stage1_view_accuracy": s1["view_accuracy"],
        "stage1_majority": s1["majorities"][0],
        "final_accuracy": s2["accuracy"],
        "final_view_accuracy": s2["view_accuracy"],
        "final_majorities": s2["majorities"],
    }
    return make_record(
        "keeps3d",
        metrics,
        prompt=prompt,
        seed=config.get("seed"),
        preset=config.get("preset"),
        commit=source_commit(),
        run=run.name,
        held_out=parse_prompt(prompt).held_out,
        times=s2["times"],
    )


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    rs = [r for r in records if r["kind"] == "keeps3d"]
    if not rs:
        raise RecordError("no keeps3d records to summarize")
    n = len(rs)
    s1 = [r["metrics"]["stage1_accuracy"] >= 0.5 for r in rs]
    s2 = [r["metrics"]["final_accuracy"] > 0.5 for r in rs]
    b, c = paired_counts(s1, s2)
    mean = lambda key: sum(r["metrics"][key] for r in rs) / n  # noqa: E731
    return {
        "runs": n,
        "stage1_accuracy": sum(s1) / n,
        "stage1_interval": wilson_interval(sum(s1), n),
        "final_accuracy": sum(s2) / n,
        "final_interval": wilson_interval(sum(s2), n),
        "final_time_accuracy": mean("final_accuracy"),
        "stage1_view_accuracy": mean("stage1_view_accuracy"),
        "final_view_accuracy": mean("final_view_accuracy"),
        "right_in_3d_only": b,
        "right_in_4d_only": c,
        "mcnemar_p": mcnemar_exact(b, c),
        "changed": [
            (r["prompt"], r["metrics"]["stage1_majority"], r["metrics"]["final_majorities"])
            for r, x, y in zip(rs, s1, s2, strict=True)
            if x != y
        ],
    }


def format_summary(s: dict[str, Any]) -> str:
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    ci = lambda lo_hi: f"[{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]"  # noqa: E731
    lines = [
        f"runs                          {s['runs']}",
        f"after 3D (stage-1 cloud)      {pct(s['stage1_accuracy'])}  95 % {ci(s['stage1_interval'])}",
        f"after 4D (final asset)        {pct(s['final_accuracy'])}  95 % {ci(s['final_interval'])}",
        f"after 4D, over prompt × time  {pct(s['final_time_accuracy'])}",
        f"per view: 3D {pct(s['stage1_view_accuracy'])}, 4D {pct(s['final_view_accuracy'])}",
        f"paired: right in 3D only {s['right_in_3d_only']}, in 4D only {s['right_in_4d_only']}, "
        f"exact McNemar p = {s['mcnemar_p']:.3f}",
    ]
    lines += [f"  changed: {p}: 3D {a}, 4D {sorted(set(m))}" for p, a, m in s["changed"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run directories, or folders of them")
    ap.add_argument("--out", default=None, help="records file (.jsonl); runs in it are skipped")
    ap.add_argument(
        "--times", type=int, default=TIMES, help="times at which the 4D asset is scored"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--summarize", nargs="+", default=None, help="summarize these records files")
    args = ap.parse_args(argv)
    try:
        if args.summarize:
            print(format_summary(summarize(read_records(args.summarize))))
            return 0
        if not args.runs or args.out is None:
            ap.error("give run directories and --out (or --summarize FILE)")
        if args.times < 1:
            ap.error(f"--times must be at least 1, got {args.times}")
        from ayg.teachers.toy import load_toy_classifiers

        out = Path(args.out)
        done = {r.get("run") for r in read_records([out])} if out.is_file() else set()
        classifiers = load_toy_classifiers(args.device)
        for run in run_dirs(args.runs):
            if run.name in done:
                continue
            record = score_run(run, classifiers, args.device, args.times)
            append_record(out, record)
            m = record["metrics"]
            print(
                f"{record['prompt']:28s} 3D {m['stage1_majority']:14s} "
                f"4D {100 * m['final_accuracy']:5.1f} % of {args.times} times",
                flush=True,
            )
        print(format_summary(summarize(read_records([out]))))
    except (RecordError, FileNotFoundError, ValueError) as e:
        print(f"keeps3d: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
