"""Forward and forward+backward time of ayg.render.rasterize, per backend.

    python benchmarks/render.py --device cpu  [--threads 2]
    python benchmarks/render.py --device cuda [--backends torch,gsplat]

Cases: on CUDA, the stage-2 render (sec. 3.3, C.6, C.8): 50,000 Gaussians × 64 views of
160×256 (4 clips × 16 frames of dynamic cameras), with per-camera means (4D) and with shared
means (3D); on the CPU, the toy scale: 2,000 Gaussians at 64×64, 1 view and 4 views. The scene
is an object of radius 0.5 at the origin: isotropic Gaussians with scales log-uniform in
[0.005, 0.03], opacities uniform in [0.05, 0.95], degree-2 SH. Each figure is the median over
--reps runs after warm-up. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ayg.cameras import Stage2CameraSampler, orbit_cameras
from ayg.render import gsplat_available, rasterize


def make_scene(
    n: int, views: int, width: int, height: int, per_camera: bool, device, seed: int = 0
):
    g = torch.Generator().manual_seed(seed)
    r = 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3)
    d = torch.randn(n, 3, generator=g)
    means = r * d / d.norm(dim=-1, keepdim=True)  # uniform in the ball of radius 0.5
    log_s = torch.empty(n, 1).uniform_(
        torch.log(torch.tensor(0.005)).item(), torch.log(torch.tensor(0.03)).item(), generator=g
    )
    scales = log_s.exp().expand(n, 3).clone()
    opacity = torch.empty(n).uniform_(0.05, 0.95, generator=g)
    sh = 0.3 * torch.randn(n, 9, 3, generator=g)
    if width == height:
        cams = orbit_cameras(
            views, elevation=15.0, distance=2.5, fov=40.0, width=width, height=height
        )
    else:
        sampler = Stage2CameraSampler(frames=16, width=width, height=height)
        cams = sampler.sample(max(1, views // 16), generator=g)
    if per_camera:  # 4D: each camera sees the object at another time (a small deformation)
        t = torch.linspace(0, 1, len(cams))[:, None, None]
        means = means[None] + 0.05 * t * torch.sin(
            4 * means[None] + torch.randn(1, n, 3, generator=g)
        )
    leaves = [x.to(device).requires_grad_() for x in (means, scales, opacity, sh)]
    return leaves, cams.to(device)


def time_case(n, views, width, height, per_camera, backend, device, reps) -> tuple[float, float]:
    (means, scales, opacity, sh), cams = make_scene(n, views, width, height, per_camera, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def render():
        return rasterize(means, scales, None, opacity, sh, cams, sh_degree=2, backend=backend)

    fwd, both = [], []
    for i in range(reps + 2):  # two warm-up runs
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            render()
        sync()
        t1 = time.perf_counter()
        out = render()
        (out.rgb.mean() + 0.01 * out.depth.mean()).backward()
        sync()
        t2 = time.perf_counter()
        for x in (means, scales, opacity, sh):
            x.grad = None
        if i >= 2:
            fwd.append(t1 - t0)
            both.append(t2 - t1)
    return 1e3 * statistics.median(fwd), 1e3 * statistics.median(both)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", default=None, help="comma-separated; default: all usable here")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU cases)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
        cases = [(2000, 1, 64, 64, False), (2000, 4, 64, 64, False), (2000, 4, 64, 64, True)]
        backends = ["torch"]
    else:
        cases = [(50000, 64, 256, 160, True), (50000, 64, 256, 160, False)]
        backends = ["gsplat", "torch"] if gsplat_available() else ["torch"]
    if args.backends:
        backends = args.backends.split(",")
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), torch {torch.__version__}"
    )
    print(
        f"{'backend':8s} {'N':>7s} {'views':>5s} {'W×H':>8s} {'means':>10s} {'fwd ms':>9s} {'fwd+bwd ms':>11s}"
    )
    for n, views, w, h, per_camera in cases:
        for backend in backends:
            fwd, both = time_case(n, views, w, h, per_camera, backend, device, args.reps)
            kind = "per-camera" if per_camera else "shared"
            print(
                f"{backend:8s} {n:7d} {views:5d} {f'{w}×{h}':>8s} {kind:>10s} {fwd:9.1f} {both:11.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
