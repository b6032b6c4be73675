"""The toy evaluation: every moving toy prompt (16 colour–shape pairs × 3 motions = 48)
generated with the ``toy`` preset and scored by ``ayg.evaluate`` (the protocol of the paper's
F.1 with the toy classifiers), overall and on the 12 held-out pairs that the video teacher
never saw moving, so their motion comes from composing the teachers.

    python -m ayg.evaluation.toy48 --device cuda --workers 16 --seed 0 --out runs/toy48 \\
        --set output.preview=false
    python -m ayg.evaluation.toy48 --summarize docs/results/toy48.jsonl

Each prompt runs in a worker process (one generate, then one evaluation); every finished run is
appended to ``OUT/runs.jsonl`` as a record of ``ayg.evaluation.records`` at once, so an
interrupted call keeps what it finished; the same command again skips the runs recorded there
and resumes the unfinished ones. With ``--device cuda`` on a machine with several GPUs the
workers are spread over all of them, worker k on GPU k mod G (processes on one GPU take turns
on it, so more GPUs is what makes a table faster). The summary (per seed and over all runs) is
printed and written to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ayg.evaluation.records import (
    RecordError,
    append_record,
    make_record,
    read_records,
    source_commit,
)

PRESET = "toy"
# what a record keeps of ``evaluate_asset``'s report
METRICS = (
    "appearance_accuracy",
    "motion_accuracy",
    "motion_amount",
    "drift",
    "view_consistency",
    "appearance_majority",
    "motion_majority",
)
MEANS = ("appearance_accuracy", "motion_accuracy", "motion_amount", "drift", "view_consistency")


@dataclass(frozen=True)
class RunJob:
    """One run: ``prompt`` generated into ``out`` with the toy preset, ``seed`` and
    ``overrides``; ``kind`` and ``setting`` go into its record."""

    prompt: str
    out: str
    device: str = "cpu"
    seed: int = 0
    overrides: tuple[str, ...] = ()
    kind: str = "toy48"
    setting: str | None = None


def moving_prompts() -> list[str]:
    """The 48 moving toy prompts, colour-major: "a red ball spinning", "a red ball swaying", ..."""
    from ayg.toyworld.vocab import all_prompts

    return [p.text for p in all_prompts(motion=True)]


def split_prompts(text: str) -> list[str]:
    """A comma-separated prompt list of the command line -> prompts (blanks dropped)."""
    return [p.strip() for p in text.split(",") if p.strip()]


def run_job(job: RunJob) -> dict[str, Any]:
    """Generate and evaluate one prompt; returns its record. A run directory that holds a
    config already is resumed (the same command continues an interrupted call)."""
    import torch

    from ayg.config import apply_overrides, preset
    from ayg.evaluate import evaluate_asset
    from ayg.pipeline import generate
    from ayg.teachers.toy import load_toy_classifiers
    from ayg.toyworld.vocab import parse_prompt

    t0 = time.perf_counter()
    cfg = apply_overrides(
        preset(PRESET), [f'device="{job.device}"', f"seed={job.seed}", *job.overrides]
    )
    run = Path(job.out)
    asset = generate(job.prompt, run, cfg, resume=(run / "config.json").exists(), progress=False)
    report = evaluate_asset(
        asset.to(job.device),
        job.prompt,
        load_toy_classifiers(job.device),
        generator=torch.Generator().manual_seed(job.seed),
    )
    extra: dict[str, Any] = {} if job.setting is None else {"setting": job.setting}
    return make_record(
        job.kind,
        {k: report.get(k) for k in METRICS},
        prompt=job.prompt,
        seed=job.seed,
        preset=PRESET,
        overrides=job.overrides,
        commit=source_commit(),
        **extra,
        held_out=parse_prompt(job.prompt).held_out,
        device=job.device,
        seconds=time.perf_counter() - t0,
    )


def _worker_init(counter=None) -> None:
    """A pool worker: one CPU thread, and with ``counter`` (a shared integer handing out worker
    numbers) its own GPU, worker k on GPU k mod G when G > 1 GPUs are visible, so that a job's
    "cuda" device is that GPU."""
    import torch

    torch.set_num_threads(1)  # workers share the machine's cores
    if counter is None:
        return
    with counter.get_lock():
        k = counter.value
        counter.value += 1
    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(k % torch.cuda.device_count())


def _key(kind: str, prompt: str, seed: int | None, overrides, setting: str | None) -> tuple:
    return (kind, prompt, seed, tuple(overrides), setting)


def run_jobs(
    jobs: Sequence[RunJob],
    log: str | Path,
    workers: int = 1,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``jobs`` (in ``workers`` spawned processes when more than one) and append every
    record to ``log`` as it finishes. Jobs that ``log`` already holds a record of are not run
    again. Returns the records of all ``jobs``: those found in ``log``, then the new ones in
    the order they finished."""
    log = Path(log)
    found = read_records([log]) if log.exists() else []
    wanted = {_key(j.kind, j.prompt, j.seed, j.overrides, j.setting): j for j in jobs}
    records = []
    for r in found:
        key = _key(r["kind"], r["prompt"], r["seed"], r["overrides"], r.get("setting"))
        if wanted.pop(key, None) is not None:
            records.append(r)
    jobs = list(wanted.values())

    def keep(record: dict[str, Any]) -> None:
        append_record(log, record)
        records.append(record)
        if on_record is not None:
            on_record(record)

    if workers <= 1:
        for job in jobs:
            keep(run_job(job))
        return records
    ctx = mp.get_context("spawn")
    on_gpu = any(str(j.device).startswith("cuda") for j in jobs)
    init_args = (ctx.Value("i", 0),) if on_gpu else ()
    with ctx.Pool(workers, initializer=_worker_init, initargs=init_args) as pool:
        for record in pool.imap_unordered(run_job, jobs):
            keep(record)
    return records


def _mean(xs: Sequence[Any]) -> float:
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else math.nan


def _right(record: dict[str, Any]) -> bool:
    """A run is right on motion when the classifiers' majority motion is the prompt's
    (``motion_accuracy`` of one asset is 1 or 0)."""
    return record["metrics"].get("motion_accuracy") == 1.0


def _stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from ayg.toyworld.vocab import MOTIONS, SHAPES, parse_prompt

    toy = [parse_prompt(r["prompt"]) for r in records]
    held = [r for r, p in zip(records, toy, strict=True) if p.held_out]
    by_motion = {}
    for motion in MOTIONS:
        mine = [r for r, p in zip(records, toy, strict=True) if p.motion == motion]
        by_motion[motion] = [sum(map(_right, mine)), len(mine)]
    spins = {}
    for shape in SHAPES:
        mine = [
            r
            for r, p in zip(records, toy, strict=True)
            if p.motion == "spinning" and p.shape == shape
        ]
        spins[shape] = [sum(map(_right, mine)), len(mine)]
    return {
        "runs": len(records),
        **{m: _mean([r["metrics"].get(m) for r in records]) for m in MEANS},
        "held_out_runs": len(held),
        "held_out_motion_accuracy": _mean([r["metrics"].get("motion_accuracy") for r in held]),
        "motion_right": by_motion,
        "spins_right_by_shape": spins,
    }


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per seed and over all records: mean metrics, held-out motion accuracy, and the runs
    right on motion per motion and, for spins, per shape (as [right, runs])."""
    seeds = sorted({r["seed"] for r in records}, key=lambda s: (s is None, s))
    return {
        "seeds": {str(s): _stats([r for r in records if r["seed"] == s]) for s in seeds},
        "all": _stats(records),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table, one column per seed and one for all runs."""
    cols = {f"seed {s}": v for s, v in summary["seeds"].items()} | {"all": summary["all"]}
    rows: list[tuple[str, Callable[[dict], str]]] = [
        ("runs", lambda v: str(v["runs"])),
        ("appearance", lambda v: f"{100 * v['appearance_accuracy']:.1f} %"),
        ("motion", lambda v: f"{100 * v['motion_accuracy']:.1f} %"),
        ("held-out motion", lambda v: f"{100 * v['held_out_motion_accuracy']:.1f} %"),
    ]
    first = summary["all"]
    for motion in first["motion_right"]:
        rows.append((motion, lambda v, m=motion: "{} / {}".format(*v["motion_right"][m])))
    for shape in first["spins_right_by_shape"]:
        rows.append(
            (
                f"spinning {shape}s",
                lambda v, s=shape: "{} / {}".format(*v["spins_right_by_shape"][s]),
            )
        )
    for m in ("motion_amount", "drift", "view_consistency"):
        rows.append((m.replace("_", " "), lambda v, m=m: f"{v[m]:.2f}"))
    width = max(12, *(len(c) for c in cols))
    lines = [f"{'':18s}" + "".join(f"{c:>{width}s}" for c in cols)]
    for name, cell in rows:
        lines.append(f"{name:18s}" + "".join(f"{cell(v):>{width}s}" for v in cols.values()))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m ayg.evaluation.toy48", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--out", default="runs/toy48")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2, help="parallel runs (processes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first prompt index (of 48)")
    ap.add_argument("--limit", type=int, default=None, help="at most N prompts from --start")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every run")
    ap.add_argument(
        "--prompts", default=None, help="comma-separated toy prompts instead of the 48 moving ones"
    )
    ap.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="RUNS_JSONL",
        help="print the summary of finished runs (record files) and exit",
    )
    return ap


def check_jobs_input(ap: argparse.ArgumentParser, prompts: Sequence[str], overrides: Sequence[str]):
    """Bad prompts or overrides end in one usage line (exit 2) before any run starts."""
    from ayg.config import apply_overrides, preset, validate
    from ayg.toyworld.vocab import parse_prompt

    if not prompts:
        ap.error("no prompts to run")
    try:
        for p in prompts:
            parse_prompt(p)
        validate(apply_overrides(preset(PRESET), list(overrides)))
    except ValueError as e:
        ap.error(str(e).strip().splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.summarize:
        try:
            records = read_records(args.summarize)
        except RecordError as e:
            ap.error(str(e))
        print(format_summary(summarize(records)))
        return 0
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    prompts = moving_prompts() if args.prompts is None else split_prompts(args.prompts)
    stop = None if args.limit is None else args.start + args.limit
    prompts = prompts[args.start : stop]
    check_jobs_input(ap, prompts, args.set)

    from ayg.io_utils import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        RunJob(p, str(out / p.replace(" ", "_")), args.device, args.seed, tuple(args.set))
        for p in prompts
    ]
    t0 = time.perf_counter()
    records = run_jobs(
        jobs, out / "runs.jsonl", args.workers, on_record=lambda r: print(json.dumps(r), flush=True)
    )
    summary = summarize(records) | {"wall_seconds": time.perf_counter() - t0}
    write_json(out / "summary.json", summary)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
