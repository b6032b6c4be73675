"""Batch generation (``ayg batch``): many prompts × seeds, each job a Ray task.

The paper distils one asset per prompt (sec. 3, C); a batch runs that same job — stage 1,
stage 2 and the optional fine-tuning of C.9 (``pipeline.generate``), then the extensions of
sec. 3.4 (``pipeline.extend``), the metrics of ``ayg eval`` and the exports of ``ayg export`` —
for every line of a spec, on every GPU of this machine or of a Ray cluster.

The spec is a text file: a line is a prompt, or a JSON object

    {"prompt": "a red cube swaying", "seed": 1, "preset": "toy", "set": {"stage2.omega_ma": 12},
     "extend": ["a red cube spinning", {"loop": true}], "export": ["tracks", "ply-frames"]}

(blank lines and lines starting with ``#`` are skipped). A line without a seed makes one job
per seed of ``--seeds``. Every job writes its own run directory under the output directory,
named from the prompt and the seed (``a-red-cube-swaying-s1``, or the line's ``"name"``):

    DIR/manifest.jsonl          one line per job: status, error, outputs, metrics, wall time,
                                device; rewritten atomically after every change
    DIR/NAME/                   pipeline.generate's run directory, plus job.log (the job's log)
    DIR/NAME/extend-1/ ...      one run directory per extension, each from the one before
    DIR/NAME/metrics.json       with --eval: the ayg eval report of NAME/asset.ayg
    DIR/NAME/export/            tracks.npz, ply-frames/frame_0000.ply ..., video.mp4, made
                                from the last asset of the job

Nothing is lost. A job whose outputs are all there is skipped without starting a task; the
others continue with the ``resume`` machinery of ``pipeline.generate`` / ``extend``: finished
phases are kept and the current one continues from its last checkpoint, which gives the asset
of an uninterrupted run bit for bit. A job that raises (a bad prompt, CUDA out of memory) is
recorded as failed with the first line of its error, its traceback goes to its job.log, and the
other jobs go on. A worker process that dies (SIGKILL, the OOM killer, a lost node) is rerun by
Ray up to ``retries`` times, and the rerun resumes from the checkpoint.

Scheduling is Ray's: a job is a task asking for ``num_gpus`` (a fraction lets several toy jobs
share a GPU) or for CPUs, Ray places the tasks and reruns the dead ones. The jobs report
"running" and their step progress through a Ray queue; the driver only waits for results,
writes the manifest and draws one progress bar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
import traceback
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ayg.config import (
    PRESETS,
    BatchConfig,
    ExportConfig,
    RunConfig,
    apply_overrides,
    export_config,
    preset,
    validate,
    validate_batch,
)
from ayg.io_utils import write_json, write_text

MANIFEST = "manifest.jsonl"
JOB_LOG = "job.log"
JOB_KEYS = ("prompt", "seed", "preset", "set", "extend", "export", "name")
EXPORT_PATHS = {
    "tracks": "export/tracks.npz",
    "ply-frames": "export/ply-frames",
    "video": "export/video.mp4",
}
NAME_CHARS = 60  # longest readable part of a run directory name
REPORT_EVERY_S = 1.0  # how often a job sends its step progress to the driver
INSTALL_HINT = 'ayg batch needs Ray; install it with: pip install "ayg[batch]"'

# (job name, phase, step) after every optimisation step of a job (tests interrupt jobs here)
BatchCallback = Callable[[str, str, int], None]


def import_ray():
    """Ray, or an ImportError whose one line says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


# ----------------------------------------------------------------------------- the spec


@dataclass
class ExtendStep:
    """One extension of a job's asset (sec. 3.4): a new prompt (None: the asset's last), or a
    loop back to the first pose."""

    prompt: str | None = None
    loop: bool = False


@dataclass
class Job:
    name: str  # run directory under the batch's output directory
    prompt: str
    seed: int
    preset: str
    overrides: list[str] = field(default_factory=list)  # key=value, the batch's then the line's
    extend: list[ExtendStep] = field(default_factory=list)
    export: list[ExportConfig] = field(default_factory=list)
    line: int = 0  # line of the spec

    def config(self, device: str = "auto") -> RunConfig:
        """The job's resolved config; ``device`` is the one its worker was given."""
        cfg = apply_overrides(
            preset(self.preset), [*self.overrides, f"seed={self.seed}", f'device="{device}"']
        )
        validate(cfg)
        return cfg


def run_name(prompt: str, seed: int) -> str:
    """A stable, readable directory name: the prompt in lower-case ASCII words joined by '-',
    then the seed: "A red cube, swaying!" seed 3 -> "a-red-cube-swaying-s3". A long prompt is
    cut and a prompt with no ASCII letters replaced, each followed by 8 hex digits of its SHA-1
    so that different prompts keep different names."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    if not slug or len(slug) > NAME_CHARS:
        digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
        head = slug[: NAME_CHARS - 12].rstrip("-")
        slug = f"{head}-{digest}" if head else f"prompt-{digest}"
    return f"{slug}-s{seed}"


def parse_seeds(text: str | None) -> list[int] | None:
    """``--seeds``: "0,1,2" or "0-3" (inclusive) or a mix, e.g. "0-2,7"."""
    if text is None:
        return None
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m and int(m.group(1)) <= int(m.group(2)):
            seeds.extend(range(int(m.group(1)), int(m.group(2)) + 1))
        elif re.fullmatch(r"-?\d+", part):
            seeds.append(int(part))
        else:
            raise ValueError(
                f"--seeds takes integers and ranges such as 0,1,2 or 0-3, got '{text}'"
            )
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds lists a seed twice: '{text}'")
    return seeds


def _overrides(value: Any, where: str) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}={json.dumps(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f'{where}: "set" takes an object such as {{"stage2.omega_ma": 12}}')


def _extend_steps(value: Any, where: str) -> list[ExtendStep]:
    if not isinstance(value, list):
        raise ValueError(
            f'{where}: "extend" takes a list of prompts or {{"prompt", "loop"}} objects'
        )
    steps = []
    for item in value:
        if isinstance(item, str):
            steps.append(ExtendStep(prompt=item))
        elif isinstance(item, dict) and set(item) <= {"prompt", "loop"}:
            prompt, loop = item.get("prompt"), item.get("loop", False)
            if not (prompt is None or isinstance(prompt, str)) or not isinstance(loop, bool):
                raise ValueError(f'{where}: an extension is {{"prompt": text, "loop": true/false}}')
            steps.append(ExtendStep(prompt=prompt, loop=loop))
        else:
            raise ValueError(
                f'{where}: an extension is a prompt or {{"prompt": ..., "loop": ...}}, got {item!r}'
            )
    return steps


def _exports(value: Any, where: str) -> list[ExportConfig]:
    if not isinstance(value, list):
        raise ValueError(f'{where}: "export" takes a list such as ["tracks", "ply-frames"]')
    out = [
        export_config({"format": v} if isinstance(v, str) else v, f"{where}: export") for v in value
    ]
    formats = [e.format for e in out]
    for f in formats:
        if formats.count(f) > 1:
            raise ValueError(f"{where}: export lists '{f}' twice")
    return out


def _jobs_of_line(
    entry: dict[str, Any], where: str, line: int, default_preset: str, seeds: list[int], overrides
) -> list[Job]:
    unknown = sorted(set(entry) - set(JOB_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(JOB_KEYS)}")
    prompt = entry.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError(f'{where}: each job needs a "prompt" string')
    if "seed" in entry:
        seed = entry["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f'{where}: "seed" takes an integer, got {seed!r}')
        job_seeds = [seed]
    else:
        job_seeds = seeds
    name = entry.get("name")
    if name is not None and (
        not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)
    ):
        raise ValueError(f'{where}: "name" takes letters, digits, ".", "_" and "-", got {name!r}')
    job_preset = entry.get("preset", default_preset)
    if job_preset not in PRESETS:
        raise ValueError(f"{where}: unknown preset '{job_preset}'; allowed: {', '.join(PRESETS)}")
    line_overrides = _overrides(entry.get("set", {}), where)
    extend = _extend_steps(entry.get("extend", []), where)
    export = _exports(entry.get("export", []), where)
    jobs = []
    for seed in job_seeds:
        if name is None:
            job_name = run_name(prompt, seed)
        else:
            job_name = name if len(job_seeds) == 1 else f"{name}-s{seed}"
        jobs.append(
            Job(
                job_name,
                prompt,
                seed,
                job_preset,
                [*overrides, *line_overrides],
                extend,
                export,
                line,
            )
        )
    return jobs


def read_spec(
    path: str | os.PathLike,
    preset_name: str = "paper",
    seeds: list[int] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> list[Job]:
    """The jobs of a spec file. ``preset_name``, ``seeds`` and ``overrides`` (``--set``) apply
    to every line that does not say otherwise; a line's "set" is applied after ``overrides``.
    Every job's config is resolved here, so a bad line ends the batch before any work with one
    line naming the file and line number. Prompts are checked by the job itself: a prompt the
    teachers cannot read fails that job only."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"spec file '{path}' does not exist")
    if not path.is_file():
        raise ValueError(f"spec '{path}' is not a file; give a text or JSON-lines file of prompts")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"spec '{path}' is not UTF-8 text") from None
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset '{preset_name}'; allowed: {', '.join(PRESETS)}")
    apply_overrides(preset(preset_name), list(overrides))  # a bad --set is named as such
    seeds = [0] if not seeds else list(seeds)
    jobs: list[Job] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: a JSON line must be an object")
        else:
            entry = {"prompt": line}
        jobs.extend(_jobs_of_line(entry, where, number, preset_name, seeds, list(overrides)))
    if not jobs:
        raise ValueError(f"spec '{path}' holds no job; write one prompt a line, or JSON lines")
    first: dict[str, int] = {}
    for job in jobs:
        where = f"{path}:{job.line}"
        if job.name in first:
            raise ValueError(
                f"{where}: its run directory '{job.name}' is also the one of line "
                f'{first[job.name]}; give one of them another seed or a "name"'
            )
        first[job.name] = job.line
        try:
            job.config()
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return jobs


# ----------------------------------------------------------------------------- one job


def _same_config(saved: dict[str, Any], cfg: RunConfig) -> bool:
    """Config equality up to the device (a finished asset is the same wherever it was made)."""
    a = dict(saved)
    b = json.loads(json.dumps(cfg.to_dict()))
    a.pop("device", None)
    b.pop("device", None)
    return a == b


def run_finished(run: Path, cfg: RunConfig) -> bool:
    """Has ``run`` (a generate or extend run directory) finished with config ``cfg``?
    ``pipeline`` writes asset.ayg, then the preview, then deletes the checkpoint; a run with
    all of them is finished. A finished run of another config raises: it is not this job's."""
    if not (run / "asset.ayg").exists() or (run / "checkpoint.pt").exists():
        return False
    if cfg.output.preview and not (run / "preview.mp4").exists():
        return False
    saved = run / "config.json"
    if saved.exists() and not _same_config(json.loads(saved.read_text()).get("config", {}), cfg):
        raise ValueError(
            f"'{run}' holds a finished run of another config; delete it or give the job "
            'another "name"'
        )
    return True


def _export_times(ex: ExportConfig, duration: float) -> list[float]:
    import numpy as np

    if ex.times is not None:
        return [float(t) for t in ex.times]
    return [float(t) for t in np.linspace(0.0, duration, ex.frames)]


def _export_done(target: Path, ex: ExportConfig) -> bool:
    if ex.format != "ply-frames":
        return target.exists()
    count = len(ex.times) if ex.times is not None else ex.frames
    return all((target / f"frame_{i:04d}.ply").exists() for i in range(count))


def outputs(job: Job, cfg: RunConfig, evaluate: bool) -> dict[str, Any]:
    """Paths of a job's outputs, relative to the batch directory."""
    run = Path(job.name)
    final = run / "asset.ayg"
    out: dict[str, Any] = {"run_dir": str(run), "log": str(run / JOB_LOG), "asset": str(final)}
    if cfg.output.preview:
        out["preview"] = str(run / "preview.mp4")
    if job.extend:
        out["extend"] = [
            str(run / f"extend-{k}" / "asset.ayg") for k in range(1, len(job.extend) + 1)
        ]
        final = Path(out["extend"][-1])
    out["final"] = str(final)
    if evaluate:
        out["metrics"] = str(run / "metrics.json")
    if job.export:
        out["exports"] = {e.format: str(run / EXPORT_PATHS[e.format]) for e in job.export}
    return out


def job_complete(job: Job, root: Path, evaluate: bool) -> bool:
    """Are all of a job's outputs there (raises when its run holds another config)?"""
    cfg = job.config()
    run = root / job.name
    dirs = [run] + [run / f"extend-{k}" for k in range(1, len(job.extend) + 1)]
    if not all(run_finished(d, cfg) for d in dirs):
        return False
    if evaluate and not (run / "metrics.json").exists():
        return False
    return all(_export_done(run / EXPORT_PATHS[e.format], e) for e in job.export)


def _metrics_summary(report: dict[str, Any]) -> dict[str, Any]:
    from ayg.evaluate import SUMMARY_KEYS

    return {k: report.get(k) for k in SUMMARY_KEYS}


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Progress:
    """Turns a part's (phase, step) callbacks into the job's fraction done, sent to the driver
    at most once per REPORT_EVERY_S, and calls the batch callback."""

    def __init__(self, job: Job, cfg: RunConfig, reporter, callback: BatchCallback | None):
        self.name, self.reporter, self.callback = job.name, reporter, callback
        s1, s2, ft = cfg.stage1.steps, cfg.stage2.steps, cfg.finetune
        self.generate_offsets = {"stage1": 0, "stage2": s1}
        gen = s1 + s2
        if ft.enabled:
            self.generate_offsets.update(finetune3d=gen, finetune4d=gen + ft.steps_3d)
            gen += ft.steps_3d + ft.steps_4d
        self.generate_steps, self.extend_steps = gen, s2
        self.total = max(gen + len(job.extend) * s2, 1)
        self.last = 0.0

    def part(self, offsets: dict[str, int]):
        def step(phase: str, done: int) -> None:
            if self.callback is not None:
                self.callback(self.name, phase, done)
            now = time.monotonic()
            if now - self.last >= REPORT_EVERY_S:
                self.last = now
                fraction = min((offsets.get(phase, 0) + done) / self.total, 1.0)
                _report(self.reporter, self.name, "progress", fraction=fraction)

        return step

    def generate(self):
        return self.part(self.generate_offsets)

    def extension(self, k: int):
        return self.part({"extend": self.generate_steps + (k - 1) * self.extend_steps})


def _report(reporter, name: str, kind: str, **info: Any) -> None:
    if reporter is None:
        return
    with contextlib.suppress(Exception):  # progress is a courtesy; the job must not fail on it
        reporter.put_nowait({"name": name, "kind": kind, **info})


def _device(gpu: bool) -> tuple[str, str]:
    """(device for the config, label for the manifest). A GPU task sees the GPU(s) Ray gave it
    as CUDA_VISIBLE_DEVICES, so its device is plain "cuda"."""
    if not gpu:
        return "cpu", "cpu"
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("this job was given a GPU but CUDA is not available in its worker")
    label = f"cuda ({torch.cuda.get_device_name(0)}"
    with contextlib.suppress(Exception):
        import ray

        label += f", GPU {','.join(str(i) for i in ray.get_gpu_ids())}"
    return "cuda", label + ")"


def _export(asset_path: Path, run: Path, ex: ExportConfig, device: str, log) -> None:
    from ayg.asset import Asset
    from ayg.cameras import orbit_cameras
    from ayg.export import export_ply_frames, export_tracks, export_video

    target = run / EXPORT_PATHS[ex.format]
    if _export_done(target, ex):
        log(f"export {ex.format}: there already, skipped")
        return
    asset = Asset.load(asset_path).to(device)
    times = _export_times(ex, float(asset.duration))
    if ex.format == "tracks":
        cams = orbit_cameras(ex.views, width=ex.width, height=ex.height) if ex.views > 0 else None
        export_tracks(asset, target, times, cameras=cams)
    elif ex.format == "ply-frames":
        export_ply_frames(asset, target, times)
    else:
        export_video(asset, target, frames=ex.frames, fps=ex.fps, width=ex.width, height=ex.height)
    log(f"export {ex.format}: wrote {target}")


def _run_parts(job: Job, run: Path, cfg: RunConfig, evaluate: bool, progress: _Progress, log):
    """generate, the extensions, eval and the exports; each skipped when already done."""
    from ayg.pipeline import extend, generate

    if run_finished(run, cfg):
        log("generate: finished earlier, skipped")
    else:
        log("generate: resuming" if (run / "config.json").exists() else "generate: starting")
        generate(job.prompt, run, cfg, resume=True, progress=False, callback=progress.generate())
        log("generate: wrote asset.ayg")
    asset_path = run / "asset.ayg"
    for k, step in enumerate(job.extend, 1):
        d = run / f"extend-{k}"
        what = "loop" if step.loop else f"'{step.prompt}'" if step.prompt else "the last prompt"
        if run_finished(d, cfg):
            log(f"extend {k} ({what}): finished earlier, skipped")
        else:
            log(
                f"extend {k} ({what}): {'resuming' if (d / 'config.json').exists() else 'starting'}"
            )
            extend(
                asset_path, step.prompt, d, cfg, loop=step.loop, resume=True, progress=False,
                callback=progress.extension(k),
            )  # fmt: skip
            log(f"extend {k}: wrote extend-{k}/asset.ayg")
        asset_path = d / "asset.ayg"
    metrics = None
    if evaluate:
        path = run / "metrics.json"
        if path.exists():
            report = json.loads(path.read_text())
        else:
            from ayg.evaluate import evaluate_paths

            report = evaluate_paths([run / "asset.ayg"], device=cfg.device)[0]
            write_json(path, report)
            log("eval: wrote metrics.json")
        metrics = _metrics_summary(report)
    for ex in job.export:
        _export(asset_path, run, ex, cfg.device, log)
    return metrics


def run_job(
    job: Job,
    root: str,
    gpu: bool = False,
    threads: int = 1,
    evaluate: bool = False,
    reporter=None,
    callback: BatchCallback | None = None,
) -> dict[str, Any]:
    """One job, in a Ray worker (or in this process). Never raises for the job's own errors:
    returns {"status": "done" | "failed", "error", "metrics", "start", "end", "device", "host",
    "peak_memory_mb"}. Everything the job prints goes to its job.log."""
    import torch

    run = Path(root) / job.name
    run.mkdir(parents=True, exist_ok=True)
    start = time.time()
    torch.set_num_threads(threads)
    host = socket.gethostname()
    result: dict[str, Any] = {"name": job.name, "status": "failed", "error": None, "metrics": None}
    with (
        open(run / JOB_LOG, "a", encoding="utf-8", buffering=1) as log_file,
        contextlib.redirect_stdout(log_file),
        contextlib.redirect_stderr(log_file),
    ):

        def log(message: str) -> None:
            log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

        label = "gpu" if gpu else "cpu"
        try:
            device, label = _device(gpu)
            log(f"start: '{job.prompt}' seed {job.seed}, pid {os.getpid()} on {host}, {label}, "
                f"{threads} thread(s)")  # fmt: skip
            _report(reporter, job.name, "running", start=start, device=label, host=host)
            cfg = job.config(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            result["metrics"] = _run_parts(
                job, run, cfg, evaluate, _Progress(job, cfg, reporter, callback), log
            )
            result["status"] = "done"
            log(f"done in {time.time() - start:.1f} s")
        except Exception as e:  # the job's own failure: recorded, the batch goes on
            result["error"] = one_line(e)
            log(f"failed: {result['error']}")
            traceback.print_exc(file=log_file)
        finally:
            if gpu and torch.cuda.is_available():
                result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.empty_cache()
    result.update(start=start, end=time.time(), device=label, host=host)
    return result


# ----------------------------------------------------------------------------- the manifest


class Manifest:
    """``DIR/manifest.jsonl``: one record per job of the spec, in spec order, rewritten
    atomically after every change. Paths in it are relative to DIR."""

    def __init__(self, root: Path, jobs: list[Job], evaluate: bool):
        self.path = root / MANIFEST
        old = self._read(self.path)
        self.records: dict[str, dict[str, Any]] = {}
        self.first_start: dict[str, float] = {}
        for job in jobs:
            rec = {
                "name": job.name,
                "line": job.line,
                "prompt": job.prompt,
                "seed": job.seed,
                "preset": job.preset,
                "status": "pending",
                "error": None,
                "attempts": 0,
                "wall_s": None,
                "start": None,  # seconds since the epoch: first attempt's start, the end
                "end": None,
                "device": None,
                "host": None,
                "peak_memory_mb": None,
                "metrics": None,
                "outputs": outputs(job, job.config(), evaluate),
            }
            try:
                complete = job_complete(job, root, evaluate)
            except ValueError as e:  # a finished run of another config in its directory
                rec.update(status="failed", error=one_line(e))
                complete = False
            if complete:
                prev = old.get(job.name, {})
                if prev.get("status") == "done":
                    for key in ("attempts", "wall_s", "start", "end", "device", "host"):
                        rec[key] = prev.get(key)
                    rec["peak_memory_mb"] = prev.get("peak_memory_mb")
                rec["status"] = "done"
                if evaluate:
                    rec["metrics"] = _metrics_summary(
                        json.loads((root / job.name / "metrics.json").read_text())
                    )
            self.records[job.name] = rec
        self.write()

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, Any]]:
        if not path.exists():
            return {}
        old = {}
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, TypeError, KeyError):
                rec = json.loads(line)
                old[rec["name"]] = rec
        return old

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records.values())

    def write(self) -> None:
        text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in self.records.values())
        write_text(self.path, text)

    def running(self, name: str, info: dict[str, Any]) -> None:
        rec = self.records[name]
        self.first_start.setdefault(name, float(info.get("start", time.time())))
        rec.update(status="running", device=info.get("device"), host=info.get("host"))
        rec["attempts"] = (rec["attempts"] or 0) + 1
        self.write()

    def finished(self, name: str, result: dict[str, Any]) -> None:
        rec = self.records[name]
        start = self.first_start.get(name, result.get("start"))
        end = result.get("end")
        rec.update(
            status=result["status"],
            error=result.get("error"),
            metrics=result.get("metrics"),
            wall_s=None if start is None or end is None else round(end - start, 3),
            start=start,
            end=end,
        )
        for key in ("device", "host", "peak_memory_mb"):
            if result.get(key) is not None:
                rec[key] = result[key]
        if rec["attempts"] == 0 and result.get("start") is not None:
            rec["attempts"] = 1  # finished before its "running" report was read
        self.write()


# ----------------------------------------------------------------------------- the driver


@dataclass
class Placement:
    """What each task asks Ray for."""

    gpu: bool
    num_gpus: float
    num_cpus: int
    in_flight: int | None  # most jobs submitted at once (--workers); None: as Ray's resources allow


def _connect(ray, cfg: BatchConfig) -> bool:
    """Connect to (or start) Ray; True when this call started it and must stop it."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if cfg.ray_address:
        try:
            ray.init(address=cfg.ray_address, **quiet)
        except ConnectionError as e:
            raise ValueError(
                f"cannot reach the Ray cluster at '{cfg.ray_address}': {one_line(e)}"
            ) from None
    else:
        local = {"num_cpus": os.cpu_count() or 1, "include_dashboard": False}
        if cfg.workers is not None:
            local["num_gpus"] = 0  # CPU jobs asked for: leave the GPUs alone
        ray.init(address="local", **local, **quiet)
    return True


def placement(ray, cfg: BatchConfig) -> Placement:
    """GPU jobs when the cluster has GPUs and --workers was not given, else CPU jobs."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    max_cpus = max((int(n["Resources"].get("CPU", 0)) for n in nodes), default=1)
    total_cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.workers is None and gpus > 0:
        cpus = cfg.cpus_per_job or 1
        p = Placement(gpu=True, num_gpus=cfg.gpus_per_job or 1.0, num_cpus=cpus, in_flight=None)
    elif cfg.gpus_per_job is not None:
        raise ValueError(
            "--gpus-per-job asks for GPUs but Ray sees none; use --workers N for CPU jobs"
        )
    else:
        workers = cfg.workers or 1
        cpus = cfg.cpus_per_job or max(1, total_cpus // workers)
        p = Placement(gpu=False, num_gpus=0, num_cpus=cpus, in_flight=workers)
    if p.num_cpus > max_cpus:
        raise ValueError(
            f"each job asks for {p.num_cpus} CPUs but the largest Ray node has {max_cpus}; "
            "lower --cpus-per-job"
        )
    return p


def _drain(reporter) -> list[dict[str, Any]]:
    with contextlib.suppress(Exception):
        n = reporter.qsize()
        if n:
            return reporter.get_nowait_batch(n)
    return []


class _Bar:
    """One progress bar over the batch: jobs done / failed / running, ETA from the jobs' step
    progress. A line per finished job is printed above it."""

    def __init__(self, manifest: Manifest, enabled: bool):
        self.manifest = manifest
        self.fractions: dict[str, float] = {}
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            total = len(manifest.records)
            self.bar = tqdm(
                total=total, initial=self._finished(), unit="job", dynamic_ncols=True,
                bar_format="batch {percentage:3.0f}%|{bar}| {desc} [{elapsed}<{remaining}]",
            )  # fmt: skip
        self.refresh()

    def _finished(self) -> int:
        return self.manifest.count("done") + self.manifest.count("failed")

    def refresh(self) -> None:
        if self.bar is None:
            return
        m = self.manifest
        running = [n for n, r in m.records.items() if r["status"] == "running"]
        self.bar.n = self._finished() + sum(self.fractions.get(n, 0.0) for n in running)
        self.bar.set_description_str(
            f"done {m.count('done')}, failed {m.count('failed')}, running {len(running)}, "
            f"pending {m.count('pending')}",
            refresh=True,
        )

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _ray_error(e: BaseException, retries: int) -> str:
    import ray

    if isinstance(e, ray.exceptions.WorkerCrashedError):
        return f"its worker died {retries + 1} time(s) (killed, or out of memory); see its job.log"
    return one_line(e)


def run_batch(
    jobs: list[Job],
    out: str | os.PathLike,
    cfg: BatchConfig | None = None,
    callback: BatchCallback | None = None,
) -> dict[str, Any]:
    """Run ``jobs`` under ``out`` on Ray (see the module docstring). Returns the counts
    {"jobs", "done", "failed", "ran", "wall_s", "manifest"}; "ran" is how many jobs were
    submitted (0 when every job was already complete). Uses the Ray of this process when it
    is already initialised, else starts or joins one and stops it at the end."""
    cfg = cfg or BatchConfig()
    validate_batch(cfg)
    t0 = time.time()
    # absolute: workers on other nodes write to the same path (a shared filesystem)
    root = Path(out).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out '{out}' is a file; give a directory")
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(root, jobs, cfg.evaluate)
    todo = deque(j for j in jobs if manifest.records[j.name]["status"] == "pending")
    summary = {"jobs": len(jobs), "ran": len(todo), "manifest": str(manifest.path)}
    bar = _Bar(manifest, cfg.progress)
    if todo:
        ray = import_ray()
        started = _connect(ray, cfg)
        try:
            _schedule(ray, cfg, root, todo, manifest, bar, callback)
        finally:
            bar.close()
            if started:
                ray.shutdown()
    else:
        bar.close()
    summary.update(done=manifest.count("done"), failed=manifest.count("failed"))
    summary["wall_s"] = round(time.time() - t0, 3)
    return summary


def _schedule(ray, cfg, root, todo, manifest: Manifest, bar: _Bar, callback) -> None:
    from ray.util.queue import Queue

    where = placement(ray, cfg)
    # restarted by Ray if its process dies (the memory monitor may pick it): reports are a
    # courtesy, but the bar and the attempt counts need them
    reporter = Queue(actor_options={"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1})
    task = ray.remote(run_job).options(
        num_cpus=where.num_cpus,
        num_gpus=where.num_gpus,
        max_retries=cfg.retries,
        retry_exceptions=False,  # a job's own errors are results, not crashes
    )
    limit = where.in_flight or len(todo)
    in_flight: dict[Any, str] = {}
    try:
        while todo or in_flight:
            while todo and len(in_flight) < limit:
                job = todo.popleft()
                ref = task.remote(
                    job, str(root), where.gpu, where.num_cpus, cfg.evaluate, reporter, callback
                )
                in_flight[ref] = job.name
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            running = set(in_flight.values())
            for event in _drain(reporter):
                name = event.get("name")
                if name not in running:
                    continue  # a late report of a job already finished
                if event["kind"] == "running":
                    bar.fractions[name] = 0.0
                    manifest.running(name, event)
                elif event["kind"] == "progress":
                    bar.fractions[name] = float(event.get("fraction", 0.0))
            for ref in ready:
                name = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as e:
                    result = {"status": "failed", "error": _ray_error(e, cfg.retries)}
                manifest.finished(name, result)
                rec = manifest.records[name]
                if rec["status"] == "done":
                    wall = f" in {rec['wall_s']:.0f} s" if rec["wall_s"] is not None else ""
                    bar.write(f"done {name}{wall}")
                else:
                    bar.write(f"failed {name}: {rec['error']}")
            bar.refresh()
    except BaseException:
        for ref in in_flight:  # on a cluster that outlives us, stop what we started
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        with contextlib.suppress(Exception):
            reporter.shutdown()


__all__ = [
    "Job",
    "ExtendStep",
    "Manifest",
    "import_ray",
    "parse_seeds",
    "read_spec",
    "run_batch",
    "run_job",
    "run_name",
]
