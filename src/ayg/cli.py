"""The ``ayg`` command line: argument parsing only; the work is in pipeline, export, scene,
viewer and evaluate. Every error a user can cause ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import sys
import warnings
from pathlib import Path

from ayg import __version__
from ayg.config import MAX_RENDER_SIDE, PRESETS, BatchConfig

MAX_FRAMES = 10_000  # frames of one video or export
MAX_VIEWS = 64  # cameras of one tracks export
# a video's frames are rendered and held in memory before encoding: frames × width × height at
# most this (4 bytes per channel while rendered: about 6 GB)
MAX_VIDEO_PIXELS = 2**29

# file-system errors a user causes (a missing input, a read-only or full disk, a path under a
# regular file ...): one line naming the path. Any other OSError is a bug and keeps its traceback.
USER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOENT", "EEXIST", "ENOTDIR", "EISDIR", "EACCES", "EPERM", "EROFS", "ENOSPC",
        "EDQUOT", "ENAMETOOLONG", "EFBIG", "ELOOP", "EMLINK", "ETXTBSY", "EBUSY",
    )
    if hasattr(errno, name)
)  # fmt: skip
# library exceptions whose message is already one line for the user (matched by name: their
# modules are imported only by the commands that need them)
USER_ERROR_TYPES = ("TeacherNotAvailable", "ViewerError")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(2, f"ayg: error: {message} (see '{self.prog} --help')\n")


def _config(args: argparse.Namespace):
    """The resolved config of a command: preset, then the flags and ``--set`` overrides in the
    order given, validated as a whole (one rule for ``--steps-3d 0`` and ``--set
    stage1.steps=0``)."""
    from ayg.config import apply_overrides, preset, validate

    cfg = preset(args.preset)
    overrides = list(args.set or [])
    if getattr(args, "steps_3d", None) is not None:
        overrides.append(f"stage1.steps={args.steps_3d}")
    if getattr(args, "steps_4d", None) is not None:
        overrides.append(f"stage2.steps={args.steps_4d}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"seed={args.seed}")
    if getattr(args, "device", None) is not None:
        overrides.append(f"device={json.dumps(args.device)}")
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def _out_file(path: str, flag: str = "--out") -> Path:
    """An output file path that can be written: not a directory, no regular file among its
    parents (checked before any work, so that a render is not thrown away at the end)."""
    out = Path(path)
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{flag} '{out}': '{blocker}' is a file, not a directory")
    if out.is_dir():
        raise ValueError(f"{flag} '{out}' is a directory; give a file name")
    return out


def _out_dir(path: str, flag: str = "--out") -> Path:
    out = Path(path)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{flag} '{out}': '{blocker}' is a file, not a directory")
    return out


def _check_int(value: int, flag: str, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{flag} must be an integer from {low} to {high}, got {value}")


def _check_float(value: float, flag: str, low: float | None = None, high: float | None = None):
    """A finite number in the open interval (low, high) where given."""
    ok = math.isfinite(value) and (low is None or value > low) and (high is None or value < high)
    if not ok:
        bounds = (
            f" in ({low:g}, {high:g})"
            if low is not None and high is not None
            else f" > {low:g}"
            if low is not None
            else ""
        )
        raise ValueError(f"{flag} must be a finite number{bounds}, got {value}")


def _check_size(args) -> None:
    _check_int(args.width, "--width", 1, MAX_RENDER_SIDE)
    _check_int(args.height, "--height", 1, MAX_RENDER_SIDE)


def _check_video(args) -> None:
    _check_size(args)
    _check_int(args.frames, "--frames", 1, MAX_FRAMES)
    _check_int(args.fps, "--fps", 1, 240)
    if args.width % 2 or args.height % 2:
        raise ValueError(
            f"an mp4 needs an even --width and --height, got {args.width}x{args.height}"
        )
    pixels = args.frames * args.width * args.height
    if pixels > MAX_VIDEO_PIXELS:
        raise ValueError(
            f"{args.frames} frames of {args.width}x{args.height} are {pixels:,} pixels; a video "
            f"holds at most {MAX_VIDEO_PIXELS:,} (lower --frames, --width or --height)"
        )


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
        help="override any config field, e.g. --set stage2.omega_ma=12 (repeatable); "
        "'ayg config --preset NAME' prints every field",
    )


def _finished_note(args) -> bool:
    from ayg.pipeline import is_finished

    return bool(args.resume) and is_finished(args.out)


def _report(args, done_before: bool, preview: bool = False) -> None:
    out = Path(args.out)
    if done_before:
        print(f"'{out}' is a finished run; nothing to resume ({out / 'asset.ayg'})")
    else:
        print(f"wrote {out / 'asset.ayg'}" + (f" and {out / 'preview.mp4'}" if preview else ""))


def cmd_generate(args) -> int:
    from ayg.pipeline import generate

    cfg = _config(args)
    done_before = _finished_note(args)
    generate(args.prompt, args.out, cfg, resume=args.resume, progress=not args.no_progress)
    _report(args, done_before, preview=cfg.output.preview)
    return 0


def cmd_animate(args) -> int:
    from ayg.pipeline import animate

    cfg = _config(args)
    done_before = _finished_note(args)
    animate(args.ply, args.prompt, args.out, cfg, resume=args.resume, progress=not args.no_progress)
    _report(args, done_before)
    return 0


def cmd_extend(args) -> int:
    from ayg.pipeline import extend

    cfg = _config(args)
    done_before = _finished_note(args)
    extend(
        args.asset,
        args.prompt,
        args.out,
        cfg,
        loop=args.loop,
        resume=args.resume,
        progress=not args.no_progress,
    )
    _report(args, done_before)
    return 0


def cmd_config(args) -> int:
    print(_config(args).to_json())
    return 0


def cmd_compose(args) -> int:
    from ayg.scene import compose

    out = _out_file(args.out)
    asset = compose(args.spec)
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

    out = _out_file(args.out)
    if out.suffix.lower() not in (".png", ".mp4"):
        raise ValueError(
            f"--out must end in .png (an image) or .mp4 (an orbit video), got '{out.name}'"
        )
    if out.suffix.lower() == ".mp4":
        _check_video(args)
    else:
        _check_size(args)
    _check_float(args.elevation, "--elevation", -90.0001, 90.0001)
    _check_float(args.azimuth, "--azimuth")
    _check_float(args.distance, "--distance", 0.0)
    _check_float(args.fov, "--fov", 0.0, 180.0)
    if args.time is not None and not (math.isfinite(args.time) and args.time >= 0):
        raise ValueError(f"--time must be a finite number >= 0, got {args.time}")
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


def _parse_times(text: str) -> list[float]:
    try:
        times = [float(t) for t in text.split(",")]
    except ValueError:
        times = []
    if not times or not all(math.isfinite(t) and t >= 0 for t in times):
        raise ValueError(
            f"--times must be comma-separated numbers >= 0, e.g. 0,0.5,1, got {text!r}"
        )
    if len(times) > MAX_FRAMES:
        raise ValueError(f"--times gives {len(times)} times; at most {MAX_FRAMES}")
    return times


CAMERA_KEYS = {"elevation": 15.0, "azimuth": 0.0, "distance": 3.0, "fov": 40.0}


def _read_cameras(path: str) -> list[dict[str, float]]:
    """The ``--cameras`` file: a JSON list of {elevation, azimuth, distance, fov} objects
    (degrees; missing keys take the defaults)."""
    where = f"--cameras {path}"
    try:
        spec = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not a JSON text file") from None
    example = '[{"elevation": 15, "azimuth": 0, "distance": 3, "fov": 40}, ...]'
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"{where}: must be a non-empty JSON list of cameras, e.g. {example}")
    if len(spec) > MAX_VIEWS:
        raise ValueError(f"{where}: {len(spec)} cameras; at most {MAX_VIEWS}")
    cams = []
    for i, c in enumerate(spec):
        if not isinstance(c, dict):
            raise ValueError(f"{where}: camera [{i}] must be a JSON object, e.g. {example}")
        unknown = sorted(set(c) - set(CAMERA_KEYS))
        if unknown:
            raise ValueError(
                f"{where}: camera [{i}] has unknown keys {unknown}; allowed: {list(CAMERA_KEYS)}"
            )
        cam = {**CAMERA_KEYS, **c}
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in cam.values()
        ):
            raise ValueError(f"{where}: camera [{i}] values must be finite numbers, got {c}")
        if cam["distance"] <= 0 or not 0 < cam["fov"] < 180:
            raise ValueError(
                f"{where}: camera [{i}] needs distance > 0 and fov in (0, 180), got {c}"
            )
        cams.append(cam)
    return cams


def cmd_export(args) -> int:
    import numpy as np

    from ayg.cameras import look_at_cameras, orbit_cameras
    from ayg.export import FRAME_FORMATS, export_frames, export_tracks, export_video
    from ayg.pipeline import load_cloud_or_asset

    folder = args.format in FRAME_FORMATS or args.format == "web"
    out = _out_dir(args.out) if folder else _out_file(args.out)
    if args.format == "video":
        _check_video(args)
    else:
        _check_size(args)
        _check_int(args.frames, "--frames", 1, MAX_FRAMES)
    _check_int(args.views, "--views", 0, MAX_VIEWS)
    times = _parse_times(args.times) if args.times else None
    spec = _read_cameras(args.cameras) if args.format == "tracks" and args.cameras else None
    asset = load_cloud_or_asset(args.asset)
    if times is None:
        times = list(np.linspace(0.0, asset.duration, args.frames))
    if args.format in FRAME_FORMATS:
        m = export_frames(asset, out, times, args.format, up=args.up, fps=args.fps)
        print(
            f"wrote {len(m['files'])} {args.format} frames and {out / 'frames.json'} "
            f"(up: {args.up}; {m['bytes'] / 1e6:.2f} MB, {m['bytes_per_second'] / 1e6:.2f} MB per "
            f"second at {args.fps:g} fps)"
        )
    elif args.format == "web":
        from ayg.webplayer import export_web

        w = export_web(asset, out, fps=args.fps, seconds=args.seconds)
        print(
            f"wrote {w['path']} ({w['bytes'] / 1e6:.2f} MB: player {w['player_bytes'] / 1e6:.2f} MB, "
            f"animation {w['animation_bytes'] / 1e3:.0f} kB = {w['bytes_per_second'] / 1e3:.0f} kB "
            f"per second, {w['frames']} frames at {args.fps:g} fps); open it in a browser, no server needed"
        )
    elif args.format == "tracks":
        if spec is not None:
            cams = look_at_cameras(
                [c["elevation"] for c in spec],
                [c["azimuth"] for c in spec],
                [c["distance"] for c in spec],
                [c["fov"] for c in spec],
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


VIEWER_INSTALL = 'pip install "ayg[viewer]"'


def cmd_view(args) -> int:
    try:
        import viser  # noqa: F401 - the optional viewer package, checked before any work
    except ImportError:
        raise ValueError(f"ayg view needs viser: {VIEWER_INSTALL}") from None
    from ayg.pipeline import load_cloud_or_asset
    from ayg.viewer import check_address, view

    check_address(args.host, args.port)  # before loading: a bad address fails at once
    view(load_cloud_or_asset(args.asset), host=args.host, port=args.port, mode=args.mode)
    return 0


def cmd_eval_clip(args) -> int:
    import torch

    from ayg.pipeline import load_cloud_or_asset, resolve_device
    from ayg.rprecision import ClipRetriever, r_precision, read_prompt_set

    if args.prompts is None:
        raise ValueError("--clip needs --prompts FILE: the prompt set to retrieve among")
    prompt_set = read_prompt_set(args.prompts)
    device = resolve_device(args.device or "auto")
    assets = [load_cloud_or_asset(p).to(device) for p in args.assets]
    if args.prompt is not None:
        if len(args.prompt) not in (1, len(assets)):
            raise ValueError(f"give one --prompt per asset ({len(assets)}) or none")
        prompts = list(args.prompt) * (len(assets) if len(args.prompt) == 1 else 1)
    else:
        prompts = []
        for path, a in zip(args.assets, assets, strict=True):
            if not a.prompts:
                raise ValueError(f"'{path}' records no prompt; give it with --prompt")
            prompts.append(a.prompts[0])
    retriever = ClipRetriever.from_pretrained(args.clip, device=device)
    res = r_precision(
        assets, prompts, prompt_set, retriever, torch.Generator().manual_seed(args.seed or 0)
    )
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return 0
    for path, row in zip(args.assets, res["assets"], strict=True):
        print(path)
        print(f"  prompt: {row['prompt']}")
        print(f"  retrieved (4D): {row['retrieved_4d']}  (3D, τ = 0: {row['retrieved_tau0']})")
        print(
            f"  view accuracy: {row['view_accuracy_4d']:.2f}  (3D: {row['view_accuracy_tau0']:.2f})"
        )
    n = len(res["assets"])
    print(
        f"R-Precision among {res['prompt_set_size']} prompts, {n} asset(s): "
        f"{100 * res['r_precision']:.1f} % (4D), {100 * res['r_precision_tau0']:.1f} % (3D, τ = 0)"
    )
    return 0


def cmd_eval(args) -> int:
    from ayg.evaluate import evaluate_paths

    if args.clip is not None:
        return cmd_eval_clip(args)
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
    parser = _Parser(
        prog="ayg",
        description="Align Your Gaussians: text to animated 3D Gaussians",
        epilog="Every config field (--set KEY=VALUE): ayg config --preset NAME.",
    )
    parser.add_argument("--version", action="version", version=f"ayg {__version__}")
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

    p = sub.add_parser(
        "config",
        help="print a preset's resolved config (with --set applied): every field --set takes",
    )
    p.add_argument(
        "--preset", default="paper", help=f"one of {', '.join(PRESETS)} (default: paper)"
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)"
    )
    p.set_defaults(func=cmd_config)

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

    p = sub.add_parser(
        "export",
        help="frame sequences (PLY, .splat, compressed PLY, SPZ), a web player, tracks or a video",
    )
    p.add_argument("asset")
    p.add_argument(
        "--format",
        required=True,
        choices=("ply-frames", "splat", "ply-compressed", "spz", "web", "tracks", "video"),
        help="ply-frames|splat|ply-compressed|spz: one file per time and frames.json in --out; "
        "web: --out/index.html, a player that opens offline; tracks: an .npz; video: an .mp4",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--up",
        choices=("y", "z"),
        default="y",
        help="frame sequences: y (default) turns the asset so that up is -y in the files, as "
        "3DGS captures are and as SuperSplat and the antimatter15 viewer show upright; z keeps "
        "ayg's z-up world",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="web: playback length of the animation (default: the run's preview length)",
    )
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
    p.add_argument("--fps", type=int, default=12, help="video, web and frame sequences")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("view", help="interactive viewer with a time slider (viser)")
    p.add_argument("asset")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only). The viewer has no "
        "authentication: --host 0.0.0.0 lets anyone on the network watch and drive it",
    )
    p.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port (default 8080; the next free one if taken, and the one bound is printed)",
    )
    p.add_argument(
        "--mode",
        choices=("splats", "server"),
        default="splats",
        help="splats (default): the browser draws the Gaussians (degree-0 colour); server: "
        "ayg renders every view with the full SH colour, as ayg render does",
    )
    p.set_defaults(func=cmd_view)

    p = sub.add_parser(
        "eval",
        help="appearance / motion accuracy, motion amount, drift and view consistency of assets",
    )
    p.add_argument("assets", nargs="+")
    p.add_argument(
        "--prompt", action="append", default=None, help="prompt per asset (default: from the asset)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per asset")
    p.add_argument(
        "--clip",
        metavar="MODEL_ID",
        default=None,
        help="CLIP R-Precision (F.1) with this CLIP model (Hugging Face id or folder)",
    )
    p.add_argument(
        "--prompts", metavar="FILE", default=None, help="--clip: the prompt set, one a line"
    )
    p.add_argument("--device", default=None, help="--clip: auto, cpu, cuda or cuda:N")
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


def _os_message(e: OSError) -> str:
    from ayg.io_utils import WriteError

    if isinstance(e, WriteError) or not e.filename:
        return str(e)
    names = f"'{e.filename}'" + (f" -> '{e.filename2}'" if e.filename2 else "")
    return f"{names}: {e.strerror}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
    except (ValueError, ImportError) as e:
        print(f"ayg: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        from ayg.io_utils import WriteError

        # a missing file is always the user's (library code raises it with its own message)
        if not isinstance(e, (WriteError, FileNotFoundError)) and e.errno not in USER_ERRNOS:
            raise
        print(f"ayg: error: {_one_line(_os_message(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # teacher-not-available and other library errors with a message
        if type(e).__name__ in USER_ERROR_TYPES:
            print(f"ayg: error: {_one_line(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
