"""Regularisers of the 4D stage: the JSD-based distribution regulariser (paper sec. 3.4,
appendix C.5, eq. 7), rigidity (C.4, eq. 5, after Luiten et al.) with its nearest neighbours,
and the interpolation regulariser of autoregressive extension (sec. 3.4).

The rigidity loss at the paper's fine-tuning scale (150,000 Gaussians × 16 times × 40
neighbours) would need (T, N, k, 3) differences, ~1.2 GB per copy; it is computed in chunks
of Gaussians with a closed-form backward, so memory stays at a few times the size of delta.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _diag_gaussian_kl(mu_p: Tensor, var_p: Tensor, mu_q: Tensor, var_q: Tensor) -> Tensor:
    """KL(N(mu_p, diag var_p) || N(mu_q, diag var_q)), summed over the last dim."""
    return 0.5 * (
        var_p / var_q + (mu_q - mu_p).square() / var_q - 1.0 + torch.log(var_q / var_p)
    ).sum(-1)


def jsd_regularizer(means0: Tensor, means_t: Tensor, eps: float = 1e-8) -> Tensor:
    """L_JSD-Reg of eq. 7 (C.5), averaged over the T times.

    means0 (N, 3) centres at τ = 0; means_t (T, N, 3) centres at T times. The centres at each
    time are summarised by their mean ν and diagonal (population) covariance Γ (+eps); the
    mixture of eq. 6 is replaced by N((ν_0+ν_τ)/2, (Γ_0+Γ_τ)/2) and
    L = ½ KL(N_0 ‖ N_m) + ½ KL(N_τ ‖ N_m). Returns a scalar.
    """
    if means0.ndim != 2 or means0.shape[-1] != 3:
        raise ValueError(f"means0 must have shape (N, 3), got {tuple(means0.shape)}")
    if means_t.ndim != 3 or means_t.shape[1:] != means0.shape:
        raise ValueError(
            f"means_t must have shape (T, {means0.shape[0]}, 3), got {tuple(means_t.shape)}"
        )
    nu0 = means0.mean(0)  # (3,)
    var0 = means0.var(0, unbiased=False) + eps  # (3,)
    nu_t = means_t.mean(1)  # (T, 3)
    var_t = means_t.var(1, unbiased=False) + eps  # (T, 3)
    nu_m = 0.5 * (nu0 + nu_t)  # (T, 3)
    var_m = 0.5 * (var0 + var_t)
    kl0 = _diag_gaussian_kl(nu0.expand_as(nu_t), var0.expand_as(var_t), nu_m, var_m)  # (T,)
    klt = _diag_gaussian_kl(nu_t, var_t, nu_m, var_m)  # (T,)
    return (0.5 * kl0 + 0.5 * klt).mean()


@torch.no_grad()
def knn_indices(points: Tensor, k: int = 40, chunk: int = 2048) -> Tensor:
    """Indices of the k nearest other points of every point (C.4): (N, 3) -> (N, k) long.

    Nearest first; a point is never its own neighbour. Computed ``chunk`` query rows at a time
    against all points into one reused (chunk, N) buffer (1.2 GB at N = 150,000 in float32).
    """
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    # Rank by ‖p‖² − 2 q·p (the row constant ‖q‖² does not change the order); centring first
    # keeps the cancellation in that expression small for clouds away from the origin.
    x = points - points.mean(0)  # (N, 3)
    sq = x.square().sum(1)[None]  # (1, N)
    buf = x.new_empty(min(chunk, n), n)  # reused: a fresh 1 GB per chunk costs page faults
    out = torch.empty(n, k, dtype=torch.long, device=points.device)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        d = torch.addmm(sq, x[a:b], x.T, alpha=-2.0, out=buf[: b - a])  # (c, N)
        rows = torch.arange(b - a, device=points.device)
        d[rows, rows + a] = float("inf")  # exclude self
        out[a:b] = torch.topk(d, k, dim=1, largest=False, sorted=True).indices
    return out


class _ChunkedRigidity(torch.autograd.Function):
    """scale · Σ_{t,n,i} ‖δ[t,n] − δ[t,knn[n,i]]‖² with a closed-form chunked backward.

    Works on δ laid out as (N, T·3) so that gathering a neighbour reads one contiguous row.
    """

    @staticmethod
    def forward(ctx, delta: Tensor, knn: Tensor, scale: float, chunk: int) -> Tensor:
        t, n, _ = delta.shape
        rows = delta.detach().permute(1, 0, 2).reshape(n, t * 3)  # (N, T·3), a copy
        acc = torch.float64 if delta.dtype == torch.float64 else torch.float32
        total = delta.new_zeros((), dtype=acc)
        for a in range(0, n, chunk):
            nn_idx = knn[a : a + chunk]  # (c, k)
            diff = rows[a : a + chunk, None, :] - rows[nn_idx]  # (c, k, T·3)
            total = total + diff.square().sum(dtype=acc)
        ctx.save_for_backward(rows, knn)
        ctx.scale, ctx.chunk, ctx.t = scale, chunk, t
        return (total * scale).to(delta.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        rows, knn = ctx.saved_tensors
        n, t3 = rows.shape
        grad = torch.zeros_like(rows)  # (N, T·3)
        for a in range(0, n, ctx.chunk):
            nn_idx = knn[a : a + ctx.chunk]  # (c, k)
            diff = rows[a : a + ctx.chunk, None, :] - rows[nn_idx]  # (c, k, T·3)
            # d/dδ[n] of ‖δ[n] − δ[m]‖² is +2·diff, d/dδ[m] is −2·diff (the 2 is applied below)
            grad[a : a + ctx.chunk] += diff.sum(1)
            grad.index_add_(0, nn_idx.reshape(-1), diff.reshape(-1, t3), alpha=-1.0)
        # the upstream gradient stays a device tensor: reading it would wait for the GPU
        grad = grad.mul_(grad_out.to(grad.dtype) * (2.0 * ctx.scale))
        grad = grad.view(n, ctx.t, 3).permute(1, 0, 2).contiguous()  # (T, N, 3)
        return grad, None, None, None


def rigidity_loss(delta: Tensor, knn: Tensor, chunk: int = 4096, validate: bool = True) -> Tensor:
    """L_Rigidity of eq. 5 (C.4): (1/k) Σ_i ‖Δ − Δ_NN_i‖², averaged over Gaussians and times.

    delta (T, N, 3) displacements; knn (N, k) neighbour indices from ``knn_indices`` on the
    stage-1 cloud. Works ``chunk`` Gaussians at a time in forward and backward.
    ``validate=False`` skips the range check of ``knn`` (it reads the indices on the host, a
    GPU sync): for a training loop that built ``knn`` itself.
    """
    if delta.ndim != 3 or delta.shape[-1] != 3:
        raise ValueError(f"delta must have shape (T, N, 3), got {tuple(delta.shape)}")
    if knn.ndim != 2 or knn.shape[0] != delta.shape[1]:
        raise ValueError(f"knn must have shape ({delta.shape[1]}, k), got {tuple(knn.shape)}")
    if knn.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"knn must hold integer indices, got {knn.dtype}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    t, n, _ = delta.shape
    k = knn.shape[1]
    if t == 0 or n == 0 or k == 0:
        return delta.new_zeros(())
    knn = knn.to(device=delta.device, dtype=torch.long)
    if validate and (int(knn.min()) < 0 or int(knn.max()) >= n):
        raise ValueError(f"knn indices must lie in [0, {n - 1}]")
    return _ChunkedRigidity.apply(delta, knn, 1.0 / (t * n * k), chunk)


def interpolation_loss(raw_prev: Tensor, blended: Tensor) -> Tensor:
    """L_Interpol-Reg of sec. 3.4: ‖raw_prev − blended‖² summed over xyz, averaged over the
    remaining dims. raw_prev, blended (..., 3) positions (or displacements) of the previous
    segment and of the blended chain inside the overlap; 0 when empty."""
    if raw_prev.shape != blended.shape or raw_prev.shape[-1:] != (3,):
        raise ValueError(
            f"raw_prev and blended must have one shape (..., 3), got "
            f"{tuple(raw_prev.shape)} and {tuple(blended.shape)}"
        )
    if raw_prev.numel() == 0:
        return blended.new_zeros(())
    return (raw_prev - blended).square().sum(-1).mean()
