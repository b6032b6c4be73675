"""Throughput of ``ayg batch`` (jobs per hour) with the ``toy`` preset, one configuration after
another, each a fresh ``ayg batch`` command with its own local Ray:

    # CPU workers on this machine (each job gets the cores split over the workers)
    python benchmarks/batch.py cpu --workers 1,2 --prompts 2 --out runs/bench-batch-cpu \
        --json docs/results/batch_cpu.json

    # several toy jobs sharing one GPU
    python benchmarks/batch.py gpu --gpus-per-job 1,0.5,0.25 --prompts 8 \
        --out runs/bench-batch-gpu --json docs/results/batch_gpu.json

    # 1, 2 and 4 GPUs of one host (CUDA_VISIBLE_DEVICES is set to the first k GPUs)
    python benchmarks/batch.py gpu --gpus 1,2,4 --gpus-per-job 0.25 --prompts 32 \
        --out runs/bench-batch-gpus --json docs/results/batch_gpus.json

For every configuration: the command's wall time (Ray's start and the workers' imports
included), the span from the first job's start to the last job's end (from the manifest), jobs
per hour over each, the mean job time, and for GPU runs the peak memory of each GPU in use
(``nvidia-smi`` sampled every 0.5 s) and the largest per-job ``torch.cuda.max_memory_allocated``,
and "res": how many job attempts were resumes after a worker died (their recomputed steps are
in the figure; 0 for a clean measurement).
With several GPU counts, scaling efficiency is jobs-per-hour(k GPUs) / (k × jobs-per-hour(1 GPU))
at the same ``--gpus-per-job`` and number of jobs. Every configuration runs the same prompts
(seed 0), chosen round-robin over the four shapes so that no configuration gets only the slow
balls.

``--json`` accumulates: rows of configurations measured earlier stay in the file (a row is
replaced when the same configuration is measured again), so the GPU settings can be measured in
separate calls; the table printed at the end holds every row of the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from ayg.io_utils import write_json

# Ray's memory monitor kills a task when the node's memory passes 95 %, whoever uses it; on a
# shared machine that turns into a resumed job and a wrong figure, so the benchmark turns it off
NO_MEMORY_MONITOR = {"RAY_memory_monitor_refresh_ms": "0"}


def prompts(n: int) -> list[str]:
    from ayg.toyworld.vocab import COLOURS, MOTIONS, SHAPES

    return [
        f"a {COLOURS[(i // len(SHAPES)) % len(COLOURS)]} {SHAPES[i % len(SHAPES)]} "
        f"{MOTIONS[i % len(MOTIONS)]}"
        for i in range(n)
    ]


def gpu_ids() -> list[int]:
    """The host's GPU indices as nvidia-smi numbers them (empty without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(x) for x in out.stdout.split()] if out.returncode == 0 else []


class GpuMemory(threading.Thread):
    """Samples nvidia-smi's memory.used of the given GPUs every ``every`` s; ``peak`` in MiB."""

    def __init__(self, ids: list[int], every: float = 0.5):
        super().__init__(daemon=True)
        self.ids, self.every = ids, every
        self.peak = {i: 0 for i in ids}
        self.stop = threading.Event()

    def run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
        while not self.stop.is_set():
            out = subprocess.run(query, capture_output=True, text=True, check=False)
            for line in out.stdout.splitlines():
                index, used = (int(x) for x in line.split(","))
                if index in self.peak:
                    self.peak[index] = max(self.peak[index], used)
            self.stop.wait(self.every)


def measure(args, spec: Path, key: str, flags: list[str], env: dict[str, str], gpus: list[int]):
    out = Path(args.out) / key
    if out.exists():
        shutil.rmtree(out)  # a throughput figure from a fresh batch, never a resumed one
    cmd = [sys.executable, "-m", "ayg.cli", "batch", str(spec), "--out", str(out)]
    cmd += ["--preset", args.preset, "--no-progress", "--retries", str(args.retries), *flags]
    for item in args.set or []:
        cmd += ["--set", item]
    monitor = GpuMemory(gpus) if gpus else None
    if monitor is not None:
        monitor.start()
    load = os.getloadavg()[0]  # other work on the machine skews the figure
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if monitor is not None:
        monitor.stop.set()
        monitor.join()
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch.out").write_text(res.stdout + res.stderr)
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    done = [r for r in records if r["status"] == "done"]
    if len(done) != len(records):
        failed = [f"{r['name']}: {r['error']}" for r in records if r["status"] != "done"]
        raise SystemExit(f"{key}: {len(failed)} job(s) did not finish: {failed[0]}")
    span = max(r["end"] for r in done) - min(r["start"] for r in done)
    peaks = [r["peak_memory_mb"] for r in done if r.get("peak_memory_mb") is not None]
    return {
        "config": key,
        "command": " ".join(cmd[1:]),
        "env": env,
        "jobs": len(done),
        "wall_s": round(wall, 1),
        "span_s": round(span, 1),
        "jobs_per_hour": round(len(done) / wall * 3600, 2),
        "jobs_per_hour_span": round(len(done) / span * 3600, 2),
        "mean_job_s": round(sum(r["wall_s"] for r in done) / len(done), 1),
        # a job whose worker died (OOM killer, memory monitor) resumed from its checkpoint:
        # its recomputed steps are in the figure
        "resumed_attempts": sum(
            (out / r["outputs"]["log"]).read_text().count(" start: ") for r in done
        )
        - len(done),
        "gpu_peak_mib": None if monitor is None else monitor.peak,
        "job_peak_allocated_mib": round(max(peaks), 1) if peaks else None,
        "host_cpus": os.cpu_count(),
        "load_before": round(load, 2),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def table(rows: list[dict]) -> str:
    head = f"{'config':<22} {'jobs':>4} {'wall s':>8} {'span s':>8} {'jobs/h':>8} {'jobs/h span':>11} {'job s':>7} {'eff':>5} {'res':>3}  GPU peak MiB"
    lines = [head, "-" * len(head)]
    for r in rows:
        eff = "" if r.get("scaling_efficiency") is None else f"{r['scaling_efficiency']:.2f}"
        peak = (
            ""
            if not r.get("gpu_peak_mib")
            else ", ".join(f"{k}: {v}" for k, v in r["gpu_peak_mib"].items())
        )
        lines.append(
            f"{r['config']:<22} {r['jobs']:>4} {r['wall_s']:>8.1f} {r['span_s']:>8.1f} "
            f"{r['jobs_per_hour']:>8.2f} {r['jobs_per_hour_span']:>11.2f} {r['mean_job_s']:>7.1f} "
            f"{eff:>5} {r.get('resumed_attempts', 0):>3}  {peak}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("cpu", "gpu"))
    ap.add_argument("--workers", default="1,2", help="cpu: worker counts to compare")
    ap.add_argument("--gpus-per-job", default="1,0.5,0.25", help="gpu: GPU shares to compare")
    ap.add_argument("--gpus", default="1", help="gpu: GPU counts to compare, e.g. 1,2,4")
    ap.add_argument("--prompts", type=int, default=None, help="jobs per configuration")
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--set", action="append", help="config override for every job (repeatable)")
    ap.add_argument("--retries", type=int, default=5, help="ayg batch --retries")
    ap.add_argument("--out", default="runs/bench-batch")
    ap.add_argument("--json", default=None, help="results file (rows accumulate)")
    args = ap.parse_args()

    n = args.prompts or (2 if args.kind == "cpu" else 8)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    spec = Path(args.out) / f"spec-{n}.txt"
    spec.write_text("".join(p + "\n" for p in prompts(n)))
    rows: list[dict] = []

    def record(row: dict) -> None:
        """Keep a configuration's row; the JSON is rewritten after each one, so a call cut
        short (a time limit) keeps what it measured."""
        rows.append(row)
        print(table(rows[-1:]), flush=True)
        if args.json:
            write_json(args.json, {"rows": merged(rows, Path(args.json))})

    if args.kind == "cpu":
        for w in ints(args.workers):
            # CUDA hidden: the CPU figure must not depend on a GPU being present
            env = {"CUDA_VISIBLE_DEVICES": "", **NO_MEMORY_MONITOR}
            record(measure(args, spec, f"cpu-workers{w}-n{n}", ["--workers", str(w)], env, []))
    else:
        ids = gpu_ids()
        if not ids:
            raise SystemExit("gpu: nvidia-smi finds no GPU on this machine")
        for k in ints(args.gpus):
            if k > len(ids):
                raise SystemExit(f"--gpus {k}: this machine has {len(ids)} GPU(s)")
            use = ids[:k]
            env = {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in use), **NO_MEMORY_MONITOR}
            for g in floats(args.gpus_per_job):
                key = f"gpu{k}-share{g:g}-n{n}"
                record(measure(args, spec, key, ["--gpus-per-job", str(g)], env, use))

    all_rows = merged(rows, Path(args.json)) if args.json else with_efficiency(rows)
    print()
    print(table(all_rows))
    if args.json:
        print(f"wrote {args.json}")


def with_efficiency(rows: list[dict]) -> list[dict]:
    """Each GPU row's scaling efficiency against 1 GPU at the same share and job count."""
    one = {
        (r["config"].split("-", 1)[1]): r["jobs_per_hour"]
        for r in rows
        if r["config"].startswith("gpu1-")
    }
    for r in rows:
        r["scaling_efficiency"] = None
        if r["config"].startswith("gpu"):
            k = int(r["config"].split("-")[0][3:])
            base = one.get(r["config"].split("-", 1)[1])
            if base:
                r["scaling_efficiency"] = round(r["jobs_per_hour"] / (k * base), 3)
    return rows


def merged(rows: list[dict], path: Path) -> list[dict]:
    """The rows of ``path`` (an earlier call's) with this call's rows replacing those of the
    same configuration."""
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    new_keys = {r["config"] for r in rows}
    return with_efficiency([r for r in old if r["config"] not in new_keys] + rows)


if __name__ == "__main__":
    main()
