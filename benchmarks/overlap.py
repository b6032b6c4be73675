"""What overlapping the two teachers of a step on two CUDA streams would save (the lever "run the
image teacher beside the video teacher" of a distillation step, AYG sec. 3.2).

Each stage's step runs two teachers one after the other: MVDream and SD in stage 1, the video
teacher and SD in stage 2. Their work is independent until the two gradients meet at the
rendered frames, so it could run on two streams at once. This script times each pair of
teacher calls as ``benchmarks/step.py`` builds them (real-size random-weight teachers in bf16,
the paper runtime's encoders and CUDA graphs, the UNets uncompiled) one after the other on one
stream, then issued together on two streams, and prints the time saved: what overlap can win at
most in the whole step, where the host issues the same work. Nothing is changed in the product by
this script; it measures whether the change would pay.

    PYTHONPATH=src python benchmarks/overlap.py [--reps 5] [--json overlap.json]
    PYTHONPATH=src python benchmarks/overlap.py --tiny   # tiny models on the CPU: a check
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # step.py, next to this script

import step  # noqa: E402

from ayg.config import preset  # noqa: E402
from ayg.distill import Conditioning  # noqa: E402
from ayg.io_utils import write_json  # noqa: E402
from ayg.stages import stage2_defaults  # noqa: E402
from ayg.teachers import runtime_of  # noqa: E402


def on_streams(parts: list[Callable[[], object]], streams: list | None) -> Callable[[], None]:
    """One call that runs ``parts`` in order (``streams`` None) or each on its own stream, every
    stream starting after the current stream's work and the current stream waiting for all."""

    def run() -> None:
        if streams is None:
            for fn in parts:
                fn()
            return
        here = torch.cuda.current_stream()
        for fn, s in zip(parts, streams, strict=True):
            s.wait_stream(here)
            with torch.cuda.stream(s):
                fn()
        for s in streams:
            here.wait_stream(s)

    return run


def pairs(args, device, dtype) -> dict[str, list[tuple[str, Callable[[], object]]]]:
    """Each stage's two teachers' calls (encoder fwd+bwd, UNet no-grad), as step.py times them."""
    s1, s2 = step.stage_configs(args.tiny)
    sd = step.build_sd(device, dtype, args.tiny)
    mv = step.build_mvdream(device, dtype, args.tiny)
    vid = step.build_zeroscope(device, dtype, args.tiny)
    s2 = stage2_defaults(s2, vid)  # clips of the teacher's length, as run_stage2 does
    runtime = dataclasses.replace(runtime_of(preset("paper").teachers), compile="none")
    step.configure([sd, mv, vid], runtime)

    views = step.stage1_camera_draw(s1, device)
    img1 = torch.rand(s1.batch, s1.views, 3, s1.height, s1.width, device=device)
    fps, _, _ = step.stage2_draws(s2, device)
    B, F, H, W = s2.batch, s2.frames, s2.height, s2.width
    frames = torch.rand(B, F, 3, H, W, device=device)
    k = s2.image_frames
    out = {}
    for stage, (a, b) in {
        "stage 1": (
            step.teacher_components("MVDream", mv, img1, 3, Conditioning(cameras=views)),
            step.teacher_components(
                "image (SD)", sd, img1.reshape(s1.batch * s1.views, 1, 3, s1.height, s1.width), 3
            ),
        ),
        "stage 2": (
            step.teacher_components("video", vid, frames, 3, Conditioning(fps=fps)),
            step.teacher_components("image (SD)", sd, frames[:, :k].reshape(B * k, 1, 3, H, W), 2),
        ),
    }.items():
        (enc_a, unet_a), (enc_b, unet_b) = a.items(), b.items()
        out[stage] = [("UNets", unet_a, unet_b), ("encoders", enc_a, enc_b)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="tiny random models on the CPU")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be at least 1, got {args.reps}")
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    clock = step.Clock(device)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()] if cuda else None
    report: dict = {**step.run_header(cuda), "reps": args.reps, "rows": []}
    print(f"{'stage':8s} {'calls':9s} {'A ms':>8s} {'B ms':>8s} {'A then B':>9s} "
          f"{'A beside B':>11s} {'saved ms':>9s}")  # fmt: skip
    for stage, rows in pairs(args, device, dtype).items():
        for what, (name_a, (fn_a, _)), (name_b, (fn_b, _)) in rows:
            step.free_memory()
            ms = {}
            for label, fn in (
                ("a", fn_a),
                ("b", fn_b),
                ("sequential", on_streams([fn_a, fn_b], None)),
                ("overlapped", on_streams([fn_a, fn_b], streams)),
            ):
                ms[label] = clock.median_ms(fn, args.reps, warmup=2)
            saved = ms["sequential"] - ms["overlapped"]
            row = dict(stage=stage, calls=what, a=name_a, b=name_b, saved_ms=saved, **{
                f"{k}_ms": v for k, v in ms.items()})  # fmt: skip
            report["rows"].append(row)
            print(f"{stage:8s} {what:9s} {ms['a']:8.1f} {ms['b']:8.1f} {ms['sequential']:9.1f} "
                  f"{ms['overlapped']:11.1f} {saved:9.1f}", flush=True)  # fmt: skip
            if args.json is not None:
                write_json(args.json, report)
    print(f"# {report['device']}, torch {report['torch']}, commit {report['commit']}")
    if args.json is not None:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
