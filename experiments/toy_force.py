"""The teachers' force along a known motion: does stage 2's objective pull a static toy cloud
towards the motion its prompt names, and how hard compared with its noise and the regularisers?

The stage-1 cloud is moved by the toy world's *analytic* motion at amplitude s (s = 1: the true
motion of ``tools.toyworld.scene``; a spin by s·60°, a bend of the top by s·0.25), rendered with
stage 2's samplers (cameras, fps, backgrounds) and scored by stage 2's terms (video and image
teacher, rigidity, JSD) exactly as ``ayg.stages.run_stage2`` does. For each term the force is
−dL/ds, averaged over ``--samples`` draws (cameras, fps, diffusion time, noise): positive means
that term pushes towards more of the motion. A motion a teacher cannot drive shows a mean force
small against its standard error or against the regularisers' pull.

    python -m experiments.toy_force --asset runs/red-ball/stage1.ayg --prompt "a red ball spinning"
    python -m experiments.toy_force --asset A.ayg --prompt "a red cube swaying" --motion bend:0:2 \
        --set 'stage2.t_range=[0.02,0.25]' --samples 150 --amplitudes 0.5 --json

``--split-negative`` also reports the video force's two parts of eq. 23: ``vid.cls`` from the
classifier direction ε(v) − ε(∅) and ``vid.neg`` from negative prompting ω_neg (ε(∅) − ε(v_neg)),
on the same diffusion times and noise. The force is linear in ω_neg, so one run gives it at any
weight ω': vid.cls + (ω'/ω_neg)·vid.neg.

``--motion``: "true" (the prompt's own motion), "spinning", or "bend:AXIS:CYCLES" (the top moves
along AXIS, 0 = x or 1 = y, CYCLES periods per unit τ; the toy's sway is bend:1:1, its nod
bend:0:2).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import torch
from torch import Tensor


def parse_motion(spec: str, prompt: str) -> tuple[str, int, float]:
    """("spin", 0, 0) or ("bend", axis, cycles) from --motion and the prompt."""
    from ayg.toyworld.vocab import parse_prompt
    from tools.toyworld import scene

    if spec == "true":
        motion = parse_prompt(prompt).motion
        if motion is None:
            raise ValueError(f"prompt {prompt!r} names no motion; give --motion")
        if motion == "spinning":
            return ("spin", 0, 0.0)
        return ("bend", scene.BEND_AXIS[motion], scene.BEND_CYCLES[motion])
    if spec == "spinning":
        return ("spin", 0, 0.0)
    parts = spec.split(":")
    if len(parts) == 3 and parts[0] == "bend" and parts[1] in ("0", "1"):
        try:
            return ("bend", int(parts[1]), float(parts[2]))
        except ValueError:
            pass
    raise ValueError(
        f"--motion must be true, spinning or bend:AXIS:CYCLES (AXIS 0 or 1), got {spec!r}"
    )


def motion_positions(
    means: Tensor, tau: Tensor, motion: tuple[str, int, float], s: Tensor
) -> Tensor:
    """The analytic motion at amplitude s applied to rest positions: (N, 3), (T,) -> (T, N, 3)."""
    from tools.toyworld import scene

    kind, axis, cycles = motion
    points = means.expand(tau.shape[0], *means.shape)  # (T, N, 3)
    if kind == "spin":
        return scene.rotate_z(points, (s * scene.spin_angle(tau))[:, None])
    return scene.bend(points, (s * scene.bend_wave(tau, cycles))[:, None], axis)


@dataclass
class Draw:
    """One stage-2 sample: fps (B,), tau (B, F), cameras, backgrounds, the image teacher's frame
    indices and the seed the teachers' diffusion times and noise are drawn from."""

    fps: Tensor
    tau: Tensor
    cameras: object
    background: Tensor
    image_frames: Tensor
    noise_seed: int


class ForceProbe:
    """Stage 2's terms on a cloud moved by an analytic motion of amplitude s."""

    def __init__(
        self, cloud, prompt: str, cfg, teachers: dict, motion: tuple[str, int, float],
        split_negative: bool = False,
    ):  # fmt: skip
        import dataclasses

        from ayg.regularizers import knn_indices
        from ayg.stages import stage2_defaults, stage2_samplers, stage2_terms

        cfg = stage2_defaults(cfg, teachers["video"])  # the clip length is the video teacher's
        self.cloud, self.prompt, self.cfg = cloud, prompt, cfg
        self.teachers, self.motion = teachers, motion
        self.device = cloud.means.device
        self.means0 = cloud.means.detach()
        self.knn = knn_indices(self.means0, k=min(cfg.knn, max(cloud.num - 1, 1)))
        self.quats = cloud.rotations if cloud.quats is not None else None
        self.vid_term, self.im_term = stage2_terms(cfg)
        # the video term without negative prompting: its classifier part δ_cls alone (eq. 23)
        self.cls_term = dataclasses.replace(self.vid_term, negative_weight=0.0)
        self.split_negative = split_negative and self.vid_term.uses_negative
        self.fps_sampler, self.cam_sampler = stage2_samplers(cfg)

    def draw(self, generator: torch.Generator) -> Draw:
        from ayg.stages import _random_backgrounds, image_frame_indices

        B, F, dev = self.cfg.batch, self.cfg.frames, self.device
        fps, tau = self.fps_sampler.sample(B, generator, dev)
        cams = self.cam_sampler.sample(B, generator, dev)
        bg = _random_backgrounds(B, generator, dev).repeat_interleave(F, 0)
        idx = image_frame_indices(B, F, self.cfg.image_frames, generator).to(dev)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        return Draw(fps, tau, cams, bg, idx, seed)

    def positions(self, d: Draw, s: Tensor) -> Tensor:
        return motion_positions(self.means0, d.tau.reshape(-1), self.motion, s)

    def frames(self, d: Draw, s: Tensor) -> Tensor:
        from ayg.render import rasterize

        c, cfg = self.cloud, self.cfg
        out = rasterize(
            self.positions(d, s), c.scales, self.quats, c.opacity, c.sh, d.cameras,
            background=d.background, sh_degree=c.sh_degree,
        )  # fmt: skip
        return out.rgb.view(cfg.batch, cfg.frames, 3, cfg.height, cfg.width)

    def teacher_losses(self, d: Draw, frames: Tensor) -> dict[str, Tensor]:
        from ayg.distill import Conditioning, distill_loss

        B, F, _, H, W = frames.shape
        g = torch.Generator().manual_seed(d.noise_seed)
        vid, _ = distill_loss(
            self.teachers["video"], self.vid_term, frames, self.prompt, 0, g,
            cond=Conditioning(fps=d.fps),
        )  # fmt: skip
        out = {"vid": vid}
        if self.split_negative:
            # the same t and noise (a generator in the same state), no negative branch; the video
            # force is linear in ω_neg, so vid = vid.cls + vid.neg and at another weight ω'
            # the force is vid.cls + (ω'/ω_neg)·vid.neg
            cls, _ = distill_loss(
                self.teachers["video"], self.cls_term, frames, self.prompt, 0,
                torch.Generator().manual_seed(d.noise_seed), cond=Conditioning(fps=d.fps),
            )  # fmt: skip
            out["vid.cls"], out["vid.neg"] = cls, vid - cls
        if self.cfg.use_image:
            idx = d.image_frames[:, :, None, None, None].expand(-1, -1, 3, H, W)
            picked = torch.gather(frames, 1, idx)  # (B, k, 3, H, W), as run_stage2 passes it
            out["im"], _ = distill_loss(
                self.teachers["image"], self.im_term, picked, self.prompt, 0, g
            )
        return out

    def regulariser_losses(self, d: Draw, s: Tensor) -> dict[str, Tensor]:
        from ayg.regularizers import jsd_regularizer, rigidity_loss

        pos = self.positions(d, s)
        return {
            "rig": self.cfg.lambda_rigidity * rigidity_loss(pos - self.means0[None], self.knn),
            "jsd": self.cfg.lambda_jsd * jsd_regularizer(self.means0, pos),
        }

    def force(self, d: Draw, s: float) -> dict[str, float]:
        """−dL/ds of every term at amplitude s for one draw."""
        st = torch.tensor(float(s), device=self.device, requires_grad=True)
        losses = {**self.teacher_losses(d, self.frames(d, st)), **self.regulariser_losses(d, st)}
        out = {}
        for name, loss in losses.items():
            (grad,) = torch.autograd.grad(loss, st, retain_graph=True, allow_unused=True)
            out[name] = 0.0 if grad is None else -float(grad)
        return out


def measure(probe: ForceProbe, amplitudes: list[float], samples: int, seed: int) -> dict:
    """{amplitude: {term: (mean, standard error)}} over the same draws for every amplitude."""
    result = {}
    for s in amplitudes:
        g = torch.Generator().manual_seed(seed)
        per = [probe.force(probe.draw(g), s) for _ in range(samples)]
        row = {}
        for name in per[0]:
            v = torch.tensor([p[name] for p in per], dtype=torch.float64)
            sem = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            row[name] = (float(v.mean()), sem)
        # "vid.cls" / "vid.neg" are parts of "vid", not further terms
        row["total"] = (sum(m for n, (m, _) in row.items() if "." not in n), float("nan"))
        result[s] = row
    return result


def numbers(ap: argparse.ArgumentParser, flag: str, text: str, example: str) -> list[float]:
    """A comma list of numbers from ``flag``, or one usage line (exit 2)."""
    try:
        return [float(a) for a in text.split(",")]
    except ValueError:
        ap.error(f"{flag} takes numbers like {example}, got {text!r}")


def load_asset(ap: argparse.ArgumentParser, path: str):
    """The asset at ``path``, or one usage line (exit 2)."""
    from ayg.asset import Asset

    try:
        return Asset.load(path)
    except ValueError as e:  # AssetError is a ValueError
        ap.error(str(e).strip().splitlines()[0])


def stage1_cloud(ap: argparse.ArgumentParser, path: str, device: str = "cpu"):
    """The first object's Gaussian cloud of the asset at ``path``, or one usage line (exit 2)."""
    return load_asset(ap, path).objects[0].cloud.to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--asset", required=True, help="a stage-1 .ayg (e.g. RUN/stage1.ayg)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--motion", default="true")
    ap.add_argument("--amplitudes", default="0,0.5,1")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], help="config overrides")
    ap.add_argument(
        "--split-negative",
        action="store_true",
        help="also split the video force into its classifier part (vid.cls) and its "
        "negative-prompt part (vid.neg = ω_neg·(ε(∅) − ε(v_neg)) of eq. 23)",
    )
    ap.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = ap.parse_args()
    from ayg.config import apply_overrides, preset
    from ayg.teachers.toy import load_toy_teachers

    if args.samples < 1:
        ap.error(f"--samples must be >= 1, got {args.samples}")
    amps = numbers(ap, "--amplitudes", args.amplitudes, "0,0.5,1")
    try:  # bad overrides or motions: one line, not a traceback
        cfg = apply_overrides(preset("toy"), args.set).stage2
        motion = parse_motion(args.motion, args.prompt)
    except ValueError as e:
        ap.error(str(e).strip().splitlines()[0])
    cloud = stage1_cloud(ap, args.asset, args.device)
    probe = ForceProbe(
        cloud, args.prompt, cfg, load_toy_teachers(args.device), motion, args.split_negative
    )
    res = measure(probe, amps, args.samples, args.seed)
    if args.json:
        print(
            json.dumps(
                {
                    "prompt": args.prompt,
                    "motion": args.motion,
                    "set": args.set,
                    "samples": args.samples,
                    "force": {str(k): v for k, v in res.items()},
                }
            )
        )
        return
    print(f"{args.prompt!r}, motion {args.motion}, {args.samples} samples: -dL/ds (mean ± s.e.)")
    for s, row in res.items():
        cells = "  ".join(
            f"{n} {m:8.2f}" + ("" if math.isnan(e) else f" ± {e:6.2f}") for n, (m, e) in row.items()
        )
        print(f"  s = {s:4.2f}: {cells}")


if __name__ == "__main__":
    main()
