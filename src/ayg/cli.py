"""The ``ayg`` command line: argument parsing only; the work is in pipeline, export, scene,
viewer and evaluate. Every error a user can cause ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ayg.config import PRESETS, BatchConfig


def _config(args: argparse.Namespace):
    from ayg.config import apply_overrides, preset

    cfg = preset(args.preset)
    overrides = list(args.set or [])
    if getattr(args, "steps_3d", None) is not None:
        overrides.append(f"stage1.steps={args.steps_3d}")
    if getattr(args, "steps_4d", None) is not None:
        overrides.append(f"stage2.steps={args.steps_4d}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device is not None:
        overrides.append(f'device="{args.device}"')
    for name in ("steps_3d", "steps_4d"):
        v = getattr(args, name, None)
        if v is not None and v <= 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be a positive number of steps, got {v}"
            )
    cfg = apply_overrides(cfg, overrides)
    return cfg


def _add_run_options(p: argparse.ArgumentParser, steps: bool = True) -> None:
    p.add_argument(
        "--preset", default="paper", help=f"one of {', '.join(PRESETS)} (default: paper)"
    )
    p.add_argument("--out", required=True, help="output directory")
    if steps:
        p.add_argument(
            "--steps-3d", type=int, default=None, help="stage-1 steps (overrides the preset)"
        )
    p.add_argument(
        "--steps-4d", type=int, default=None, help="stage-2 steps (overrides the preset)"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set stage2.omega_ma=12 (repeatable)",
    )


def cmd_generate(args) -> int:
    from ayg.pipeline import generate

    cfg = _config(args)
    generate(args.prompt, args.out, cfg, resume=args.resume, progress=not args.no_progress)
    out = Path(args.out)
    preview = f" and {out / 'preview.mp4'}" if cfg.output.preview else ""
    print(f"wrote {out / 'asset.ayg'}{preview}")
    return 0


def cmd_animate(args) -> int:
    from ayg.pipeline import animate

    cfg = _config(args)
    animate(args.ply, args.prompt, args.out, cfg, resume=args.resume, progress=not args.no_progress)
    print(f"wrote {Path(args.out) / 'asset.ayg'}")
    return 0


def cmd_extend(args) -> int:
    from ayg.pipeline import extend

    cfg = _config(args)
    extend(
        args.asset,
        args.prompt,
        args.out,
        cfg,
        loop=args.loop,
        resume=args.resume,
        progress=not args.no_progress,
    )
    print(f"wrote {Path(args.out) / 'asset.ayg'}")
    return 0


def cmd_compose(args) -> int:
    from ayg.scene import compose

    asset = compose(args.spec)
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out '{out}' is a directory; give a file name ending in .ayg")
    asset.save(out)
    print(f"wrote {out} ({len(asset.objects)} objects, {asset.num_gaussians} Gaussians)")
    return 0


def _times(asset, args, n: int) -> list[float]:
    if args.time is not None:
        return [args.time]
    d = asset.duration
    return [d * i / max(n - 1, 1) for i in range(n)]


def cmd_render(args) -> int:
    import torch

    from ayg.cameras import look_at_cameras
    from ayg.export import export_video, save_png
    from ayg.pipeline import load_cloud_or_asset, resolve_device

    if args.width <= 0 or args.height <= 0:
        raise ValueError(f"--width and --height must be positive, got {args.width}x{args.height}")
    if args.time is not None and args.time < 0:
        raise ValueError(f"--time must be >= 0, got {args.time}")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".mp4"):
        raise ValueError(
            f"--out must end in .png (an image) or .mp4 (an orbit video), got '{out.name}'"
        )
    asset = load_cloud_or_asset(args.path)
    device = resolve_device(args.device or "auto")
    bg = torch.ones(3) if args.background == "white" else torch.zeros(3)
    if out.suffix.lower() == ".mp4":
        export_video(
            asset,
            out,
            frames=args.frames,
            fps=args.fps,
            elevation=args.elevation,
            distance=args.distance,
            fov=args.fov,
            width=args.width,
            height=args.height,
            background=bg,
            time=args.time,
            device=device,
            backend=args.backend,
        )
    else:
        cams = look_at_cameras(
            args.elevation, args.azimuth, args.distance, args.fov, args.width, args.height, device
        )
        t = torch.tensor([args.time if args.time is not None else 0.0], device=device)
        with torch.no_grad():
            img = (
                asset.to(device)
                .render(cams, t, background=bg.to(device), backend=args.backend)
                .rgb[0]
            )
        save_png(img, out)
    print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    import numpy as np

    from ayg.cameras import look_at_cameras, orbit_cameras
    from ayg.export import export_ply_frames, export_tracks, export_video
    from ayg.pipeline import load_cloud_or_asset

    asset = load_cloud_or_asset(args.asset)
    if args.frames <= 0:
        raise ValueError(f"--frames must be > 0, got {args.frames}")
    times = (
        [float(t) for t in args.times.split(",")]
        if args.times
        else list(np.linspace(0.0, asset.duration, args.frames))
    )
    out = Path(args.out)
    if args.format == "ply-frames":
        paths = export_ply_frames(asset, out, times)
        print(f"wrote {len(paths)} PLY frames to {out}")
    elif args.format == "tracks":
        if args.cameras:
            spec = json.loads(Path(args.cameras).read_text())
            cams = look_at_cameras(
                [c.get("elevation", 15.0) for c in spec],
                [c.get("azimuth", 0.0) for c in spec],
                [c.get("distance", 3.0) for c in spec],
                [c.get("fov", 40.0) for c in spec],
                args.width,
                args.height,
            )
        elif args.views > 0:
            cams = orbit_cameras(args.views, width=args.width, height=args.height)
        else:
            cams = None
        export_tracks(asset, out, times, cameras=cams)
        print(f"wrote {out}")
    elif args.format == "video":
        export_video(
            asset, out, frames=args.frames, fps=args.fps, width=args.width, height=args.height
        )
        print(f"wrote {out}")
    return 0


def cmd_view(args) -> int:
    from ayg.pipeline import load_cloud_or_asset
    from ayg.viewer import view

    view(load_cloud_or_asset(args.asset), host=args.host, port=args.port)
    return 0


def cmd_eval(args) -> int:
    from ayg.evaluate import evaluate_paths

    results = evaluate_paths(args.assets, prompts=args.prompt, seed=args.seed or 0)
    for path, res in zip(args.assets, results, strict=False):
        if args.json:
            print(json.dumps({"asset": str(path), **res}, sort_keys=True))
        else:
            print(path)
            for k, v in res.items():
                if not isinstance(v, (dict, list)):
                    print(f"  {k}: {v}")
    return 0


def cmd_batch(args) -> int:
    """``ayg batch``: the jobs of a spec on Ray (``ayg.batch``). Exit 0 when every job is done,
    1 when some failed (each failure is in the manifest), 2 for bad input."""
    from ayg.batch import import_ray, parse_seeds, read_spec, run_batch
    from ayg.config import validate_batch

    import_ray()  # without Ray: one line saying how to install it
    bcfg = BatchConfig(
        workers=args.workers,
        gpus_per_job=args.gpus_per_job,
        cpus_per_job=args.cpus_per_job,
        ray_address=args.ray_address,
        retries=args.retries,
        evaluate=args.eval,
        progress=not args.no_progress,
    )
    validate_batch(bcfg)
    jobs = read_spec(args.spec, args.preset, parse_seeds(args.seeds), args.set or [])
    try:
        summary = run_batch(jobs, args.out, bcfg)
    except KeyboardInterrupt:
        print("ayg: interrupted; run the same command again to resume the batch", file=sys.stderr)
        return 130
    print(
        f"batch: {summary['done']} done, {summary['failed']} failed of {summary['jobs']} jobs "
        f"({summary['ran']} run now); manifest {summary['manifest']}"
    )
    return 0 if summary["failed"] == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ayg", description="Align Your Gaussians: text to animated 3D Gaussians"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("generate", help="text → 4D asset (stage 1 then stage 2)")
    p.add_argument("prompt")
    _add_run_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("animate", help="stage 2 only, on a static Inria-format PLY")
    p.add_argument("ply")
    p.add_argument("prompt")
    _add_run_options(p, steps=False)
    p.set_defaults(func=cmd_animate)

    p = sub.add_parser("extend", help="extend an asset's motion (optionally new prompt, --loop)")
    p.add_argument("asset")
    p.add_argument("prompt", nargs="?", default=None)
    p.add_argument("--loop", action="store_true", help="end on the first pose")
    _add_run_options(p, steps=False)
    p.set_defaults(func=cmd_extend)

    p = sub.add_parser("compose", help="place several assets into one scene asset")
    p.add_argument(
        "spec",
        help='JSON: {"objects": [{"asset": ..., "scale", "rotation", "translation", "time_offset"}]}',
    )
    p.add_argument("--out", required=True, help="scene .ayg file")
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser("render", help="an image (.png) or an orbit video (.mp4) of an asset or PLY")
    p.add_argument("path")
    p.add_argument("--elevation", type=float, default=15.0)
    p.add_argument("--azimuth", type=float, default=0.0)
    p.add_argument("--distance", type=float, default=3.0)
    p.add_argument("--fov", type=float, default=40.0)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument(
        "--time", type=float, default=None, help="global time (default 0; a video runs over time)"
    )
    p.add_argument("--background", choices=("white", "black"), default="white")
    p.add_argument("--frames", type=int, default=48, help="video frames")
    p.add_argument("--fps", type=int, default=12, help="video frame rate")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "gsplat"))
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("export", help="per-frame PLYs, tracks (.npz) or a video")
    p.add_argument("asset")
    p.add_argument("--format", required=True, choices=("ply-frames", "tracks", "video"))
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=16, help="number of evenly spaced times")
    p.add_argument(
        "--times", default=None, help="comma-separated global times (overrides --frames)"
    )
    p.add_argument(
        "--views", type=int, default=4, help="tracks: orbit cameras to project into (0: none)"
    )
    p.add_argument(
        "--cameras", default=None, help="tracks: JSON list of {elevation, azimuth, distance, fov}"
    )
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--fps", type=int, default=12)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("view", help="interactive viewer with a time slider (viser)")
    p.add_argument("asset")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("eval", help="metrics of DESIGN §8 for one or more assets")
    p.add_argument("assets", nargs="+")
    p.add_argument(
        "--prompt", action="append", default=None, help="prompt per asset (default: from the asset)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per asset")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "batch", help="many prompts x seeds on Ray: every local GPU, or a Ray cluster"
    )
    p.add_argument(
        "spec", help='text file (one prompt a line) or JSON lines ({"prompt", "seed", ...})'
    )
    p.add_argument("--out", required=True, help="batch directory: one run directory per job")
    p.add_argument(
        "--preset", default="paper", help=f"one of {', '.join(PRESETS)} (default: paper)"
    )
    p.add_argument(
        "--seeds", default=None, help="seeds of lines without one, e.g. 0,1,2 or 0-3 (default: 0)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field for every job (repeatable)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run CPU jobs, N at a time (default: one job per GPU)",
    )
    p.add_argument(
        "--gpus-per-job",
        type=float,
        default=None,
        metavar="G",
        help="GPU share of a job, e.g. 0.5 for two jobs per GPU (default: 1)",
    )
    p.add_argument(
        "--cpus-per-job",
        type=int,
        default=None,
        metavar="C",
        help="CPU cores of a job (default: 1 for GPU jobs, the cores split over --workers)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="an existing Ray cluster, HOST:PORT or auto (default: start Ray here)",
    )
    p.add_argument(
        "--retries",
        type=int,
        metavar="R",
        default=BatchConfig.retries,
        help=f"reruns of a job whose worker died (default: {BatchConfig.retries})",
    )
    p.add_argument("--eval", action="store_true", help="ayg eval metrics of every asset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    # library deprecation chatter (huggingface_hub, diffusers) is not the user's business
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ayg: interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    except (
        ValueError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        ImportError,
    ) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"ayg: error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # teacher-not-available and other library errors with a message
        if type(e).__name__ in ("TeacherNotAvailable",):
            print(f"ayg: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
