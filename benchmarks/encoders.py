"""The VAE encoders of one distillation step, forward + backward, stored NCHW or channels-last
(``teachers.encoder_channels_last``), under the paper runtime's ``encoder_backward``.

cuDNN's bf16 convolutions on Hopper work in NHWC: an NCHW encoder pays a layout conversion of
every convolution's input, output and gradient. With the VAE stored channels-last the fused
GroupNorm + SiLU kernels (``ayg.teachers.fused_encoder``) read and write NHWC too, so nothing is
converted. This script times each encoder call of a step at the paper's sizes (real-size random
weights, bf16: the video teacher's 4 clips × 16 frames at 320×512, SD's 16 frames of stage 2,
and stage 1's 4 views through MVDream at 256×256 and SD at 320×512) both ways, alternating,
and prints the medians and the peak memory above the weights.

    PYTHONPATH=src python benchmarks/encoders.py [--reps 5] [--json encoders.json]
    PYTHONPATH=src python benchmarks/encoders.py --tiny   # tiny models on the CPU: a check
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # step.py, next to this script

import step  # noqa: E402

from ayg.config import preset  # noqa: E402
from ayg.io_utils import write_json  # noqa: E402
from ayg.stages import stage2_defaults  # noqa: E402
from ayg.teachers import runtime_of  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="NCHW / NHWC alternations")
    ap.add_argument("--tiny", action="store_true", help="tiny random models on the CPU")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.reps < 1 or args.rounds < 1:
        ap.error("--reps and --rounds must be at least 1")
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    clock = step.Clock(device)
    s1, s2 = step.stage_configs(args.tiny)
    sd = step.build_sd(device, dtype, args.tiny)
    mv = step.build_mvdream(device, dtype, args.tiny)
    vid = step.build_zeroscope(device, dtype, args.tiny)
    s2 = stage2_defaults(s2, vid)
    paper = dataclasses.replace(runtime_of(preset("paper").teachers), compile="none")
    B, F, H, W = s2.batch, s2.frames, s2.height, s2.width
    frames = torch.rand(B, F, 3, H, W, device=device)
    views = torch.rand(s1.batch, s1.views, 3, s1.height, s1.width, device=device)
    n1, k = s1.batch * s1.views, s2.image_frames
    calls = {
        "stage 2: video": (vid, frames),
        "stage 2: SD": (sd, frames[:, :k].reshape(B * k, 1, 3, H, W)),
        "stage 1: MVDream": (mv, views),
        "stage 1: SD": (sd, views.reshape(n1, 1, 3, s1.height, s1.width)),
    }
    report: dict = {**step.run_header(cuda), "encoder_backward": paper.encoder_backward, "rows": []}
    print(f"# encoder_backward={paper.encoder_backward}, {report['device']}")
    print(f"{'encoder':18s} {'frames':>6s} {'NCHW ms':>8s} {'NHWC ms':>8s} {'NCHW GiB':>9s} "
          f"{'NHWC GiB':>9s}")  # fmt: skip
    for name, (teacher, images) in calls.items():
        ms: dict[bool, list[float]] = {False: [], True: []}
        gib: dict[bool, float] = {}
        for _ in range(args.rounds):
            for nhwc in (False, True):
                step.configure([teacher], dataclasses.replace(paper, encoder_channels_last=nhwc))
                (fn, _), _ = step.teacher_components(name, teacher, images, 2).values()
                step.free_memory()
                base = torch.cuda.memory_allocated() if cuda else 0
                clock.reset_peak()
                ms[nhwc].append(clock.median_ms(fn, args.reps, warmup=2))
                gib[nhwc] = (clock.peak_gib() * step.GIB - base) / step.GIB
        nchw, nhwc = min(ms[False]), min(ms[True])
        frames_in = images.shape[0] * images.shape[1]
        report["rows"].append(
            dict(
                encoder=name,
                frames=frames_in,
                nchw_ms=nchw,
                nhwc_ms=nhwc,
                nchw_runs=ms[False],
                nhwc_runs=ms[True],
                nchw_gib=gib[False],
                nhwc_gib=gib[True],
            )  # fmt: skip
        )
        print(f"{name:18s} {frames_in:6d} {nchw:8.1f} {nhwc:8.1f} {gib[False]:9.2f} "
              f"{gib[True]:9.2f}", flush=True)  # fmt: skip
        if args.json is not None:
            write_json(args.json, report)
    step.configure([sd, mv, vid], paper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
