"""Time and peak memory of the stage-2 regularisers at the paper's fine-tuning scale (C.4, C.9):
rigidity loss forward + backward at 150,000 Gaussians × 16 times × 40 neighbours, and
knn_indices on 150,000 points.

    python benchmarks/regularizers.py [--device cpu|cuda] [--n 150000] [--t 16] [--k 40]

Each case runs in its own process so that its peak memory is its own: on CUDA
torch.cuda.max_memory_allocated, on the CPU the peak resident set size (ru_maxrss) above the
process's resident size just before the case. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from ayg.regularizers import knn_indices, rigidity_loss

MiB = 2**20


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: str, device: torch.device, n: int, t: int, k: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    if case == "rigidity":
        # random neighbour indices: the gather pattern is worse than real kNN's, never better
        delta = (0.05 * torch.randn(t, n, 3, generator=g)).to(device).requires_grad_(True)
        knn = torch.randint(0, n, (n, k), generator=g).to(device)

        def step():
            loss = rigidity_loss(delta, knn)
            loss.backward()
            delta.grad = None

        inputs = delta.numel() * 4 + knn.numel() * 8
    elif case == "knn":
        points = (torch.rand(n, 3, generator=g) - 0.5).to(device)

        def step():
            knn_indices(points, k=k)

        inputs = points.numel() * 4
        reps = 1
    else:
        raise ValueError(f"unknown case {case!r}")

    step()  # warm-up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_now()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss()
    return {
        "case": case,
        "device": str(device),
        "seconds": min(times),
        "peak_mib": peak / MiB,
        "peak_above_start_mib": (peak - base) / MiB,
        "inputs_mib": inputs / MiB,
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=150_000)
    p.add_argument("--t", type=int, default=16)
    p.add_argument("--k", type=int, default=40)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--case", choices=["rigidity", "knn"], help="run one case in this process")
    a = p.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case, torch.device(a.device), a.n, a.t, a.k, a.reps)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    for case in ("rigidity", "knn"):
        cmd = [sys.executable, __file__, "--case", case, "--device", a.device]
        cmd += ["--n", str(a.n), "--t", str(a.t), "--k", str(a.k), "--reps", str(a.reps)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        what = (
            f"rigidity fwd+bwd  N={a.n:,} T={a.t} k={a.k}"
            if case == "rigidity"
            else f"knn_indices       N={a.n:,} k={a.k}"
        )
        print(
            f"{what}: {r['seconds']:.2f} s, {r['memory']} {r['peak_mib']:.0f} MiB "
            f"({r['peak_above_start_mib']:.0f} MiB above the start; inputs {r['inputs_mib']:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
