"""The VAE encoder's "fused" backward (``encoder_backward="fused"``): the same gradient as plain
autograd, from fewer kernels and fewer stored activations, with nothing recomputed.

A diffusers VAE encoder is a chain of ``GroupNorm -> SiLU -> Conv2d`` with frozen weights. Plain
autograd stores three tensors per pair for its backward (the norm's input, its output for the
SiLU, the SiLU's output for the convolution) and runs GroupNorm in two kernels, SiLU in a third.
Inside :func:`fused_encoder`:

* each ``GroupNorm`` followed by the block's SiLU is one op (:func:`group_norm_silu`) that stores
  only its input and the per-group mean and 1/std, and recomputes the normalised value inside
  its backward kernels. On CUDA it runs as Triton kernels (two in the forward, two in the
  backward; written here because no library offers GroupNorm and SiLU as one differentiable op
  with frozen affine parameters), elsewhere as the same formulas in PyTorch ops;
* each frozen ``Conv2d`` stores nothing: the gradient of its input needs the weight only
  (:func:`frozen_conv2d`), where autograd's convolution also keeps the input for a weight
  gradient that is never asked for.

So a resnet block keeps its input and its first convolution's output, about a third of what
plain autograd keeps, and the step's 80 encoded frames fit in a 40 GiB step without the
recomputation of ``convs``, ``lean`` or ``recompute``. The normalised value is not rounded to
bf16 before the SiLU, so bf16 results differ from eager ones by bf16 rounding; in float32 they
agree to rounding error (``tests/teachers/test_fused_encoder.py``).

The modules are patched for the duration of the ``with`` block only (the class of each patched
module is swapped and restored), so the parameters, the state dict and the decoder never change.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # module globals: Triton's interpreter patches the ``tl`` a kernel finds in its globals
    import triton
    import triton.language as tl
except ImportError:  # the PyTorch formulas run instead
    triton = tl = None

BLOCK = 2048  # elements of a row per Triton tile
PROGRAMS = 1024  # Triton programs a launch aims for (rows × splits): ~8 per SM on an H200


@functools.lru_cache(maxsize=1)
def _kernels():
    """The Triton kernels, built on first use (``TRITON_INTERPRET=1`` runs them on the CPU).

    Every kernel sees x as rows of ``L`` contiguous elements, one row per (sample, group) of an
    NCHW tensor; element ``o`` of row ``r`` has channel ``(r % G)·CPG + o // HW``. A launch is a
    grid (rows, splits): split ``s`` of a row covers its tiles ``[s·T, (s+1)·T)``. The backward
    kernels recompute the normalised value and the SiLU's derivative from x.
    """

    @triton.jit
    def stats(X, N_OUT, MEAN_OUT, M2_OUT, L, T, S, BLOCK: tl.constexpr):
        # one split's (count, mean, M2) over its tiles, combined tile by tile (Chan et al.)
        row, split = tl.program_id(0), tl.program_id(1)
        base = X + row.to(tl.int64) * L
        lanes = tl.arange(0, BLOCK)
        n = 0.0
        mean = 0.0
        m2 = 0.0
        for t in range(0, T):
            offs = (split * T + t) * BLOCK + lanes
            mask = offs < L
            x = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
            n_t = tl.sum(mask.to(tl.float32), axis=0)
            mean_t = tl.sum(x, axis=0) / tl.maximum(n_t, 1.0)
            d = tl.where(mask, x - mean_t, 0.0)
            m2_t = tl.sum(d * d, axis=0)
            total = n + n_t
            delta = mean_t - mean
            frac = n_t / tl.maximum(total, 1.0)
            mean = mean + delta * frac
            m2 = m2 + m2_t + delta * delta * n * frac
            n = total
        out = row * S + split
        tl.store(N_OUT + out, n)
        tl.store(MEAN_OUT + out, mean)
        tl.store(M2_OUT + out, m2)

    @triton.jit
    def forward(X, Y, MEAN, RSTD, W, B, L, HW, CPG, G, T, BLOCK: tl.constexpr):
        row, split = tl.program_id(0), tl.program_id(1)
        base = row.to(tl.int64) * L
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        g = row % G
        lanes = tl.arange(0, BLOCK)
        for t in range(0, T):
            offs = (split * T + t) * BLOCK + lanes
            mask = offs < L
            x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
            c = g * CPG + offs // HW
            w = tl.load(W + c, mask=mask, other=0.0).to(tl.float32)
            z = (x - mean) * rstd * w + tl.load(B + c, mask=mask, other=0.0).to(tl.float32)
            y = z * tl.sigmoid(z)
            tl.store(Y + base + offs, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def backward_sums(X, DY, MEAN, RSTD, W, B, SG, SGX, L, HW, CPG, G, T, S,
                      BLOCK: tl.constexpr):  # fmt: skip
        row, split = tl.program_id(0), tl.program_id(1)
        base = row.to(tl.int64) * L
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        g = row % G
        lanes = tl.arange(0, BLOCK)
        acc_g = tl.zeros((BLOCK,), tl.float32)
        acc_gx = tl.zeros((BLOCK,), tl.float32)
        for t in range(0, T):
            offs = (split * T + t) * BLOCK + lanes
            mask = offs < L
            x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + base + offs, mask=mask, other=0.0).to(tl.float32)
            c = g * CPG + offs // HW
            w = tl.load(W + c, mask=mask, other=0.0).to(tl.float32)
            xhat = (x - mean) * rstd
            z = xhat * w + tl.load(B + c, mask=mask, other=0.0).to(tl.float32)
            s = tl.sigmoid(z)
            gh = dy * s * (1.0 + z * (1.0 - s)) * w  # d loss / d xhat
            acc_g += tl.where(mask, gh, 0.0)
            acc_gx += tl.where(mask, gh * xhat, 0.0)
        out = row * S + split
        tl.store(SG + out, tl.sum(acc_g, axis=0))
        tl.store(SGX + out, tl.sum(acc_gx, axis=0))

    @triton.jit
    def backward_dx(X, DY, DX, MEAN, RSTD, W, B, SG, SGX, L, HW, CPG, G, T,
                    BLOCK: tl.constexpr):  # fmt: skip
        row, split = tl.program_id(0), tl.program_id(1)
        base = row.to(tl.int64) * L
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        mg = tl.load(SG + row) / L
        mgx = tl.load(SGX + row) / L
        g = row % G
        lanes = tl.arange(0, BLOCK)
        for t in range(0, T):
            offs = (split * T + t) * BLOCK + lanes
            mask = offs < L
            x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + base + offs, mask=mask, other=0.0).to(tl.float32)
            c = g * CPG + offs // HW
            w = tl.load(W + c, mask=mask, other=0.0).to(tl.float32)
            xhat = (x - mean) * rstd
            z = xhat * w + tl.load(B + c, mask=mask, other=0.0).to(tl.float32)
            s = tl.sigmoid(z)
            gh = dy * s * (1.0 + z * (1.0 - s)) * w  # d loss / d xhat
            dx = rstd * (gh - mg - xhat * mgx)
            tl.store(DX + base + offs, dx.to(DX.dtype.element_ty), mask=mask)

    return stats, forward, backward_sums, backward_dx


def _grid(rows: int, length: int, block: int, programs: int) -> tuple[int, int]:
    """(splits per row, tiles per split) so that rows × splits ≈ ``programs``."""
    tiles = math.ceil(length / block)
    splits = max(1, min(tiles, math.ceil(programs / rows)))
    per = math.ceil(tiles / splits)
    return math.ceil(tiles / per), per


def _use_triton(x: Tensor) -> bool:
    import os

    if triton is None:
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _shape(x: Tensor, groups: int) -> tuple[int, int, int, int]:
    """(rows, row length, H·W, channels per group) of an (N, C, *spatial) tensor."""
    n, c = x.shape[:2]
    hw = x[0, 0].numel()
    return n * groups, (c // groups) * hw, hw, c // groups


def _acc(x: Tensor) -> torch.dtype:
    """The type the statistics and formulas are computed in: float32, or float64 for float64."""
    return torch.promote_types(x.dtype, torch.float32)


def _stats_torch(x: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
    rows, length, _, _ = _shape(x, groups)
    var, mean = torch.var_mean(x.reshape(rows, length).to(_acc(x)), dim=1, unbiased=False)
    return mean, torch.rsqrt(var + eps)


def _stats_triton(x: Tensor, groups: int, eps: float, block: int, programs: int):
    stats = _kernels()[0]
    rows, length, _, _ = _shape(x, groups)
    splits, per = _grid(rows, length, block, programs)
    n, mean, m2 = (torch.empty(rows, splits, device=x.device) for _ in range(3))
    stats[(rows, splits)](x, n, mean, m2, length, per, splits, BLOCK=block)
    total = n.sum(1, keepdim=True)  # = length
    mu = (n * mean).sum(1, keepdim=True) / total
    m2 = (m2 + n * (mean - mu) ** 2).sum(1)
    return mu.squeeze(1), torch.rsqrt(m2 / length + eps)


def _affine_torch(x, mean, rstd, weight, bias, groups):
    rows, length, _, _ = _shape(x, groups)
    acc = _acc(x)
    xhat = ((x.reshape(rows, length).to(acc) - mean[:, None]) * rstd[:, None]).view(x.shape)
    view = (1, -1) + (1,) * (x.ndim - 2)
    w, b = weight.to(acc).view(view), bias.to(acc).view(view)
    return xhat, w, xhat * w + b


class _GroupNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, block, programs):
        x = x.contiguous()
        triton_path = _use_triton(x)
        if triton_path:
            mean, rstd = _stats_triton(x, groups, eps, block, programs)
            y = torch.empty_like(x)
            rows, length, hw, cpg = _shape(x, groups)
            splits, per = _grid(rows, length, block, programs)
            _kernels()[1][(rows, splits)](
                x, y, mean, rstd, weight, bias, length, hw, cpg, groups, per, BLOCK=block
            )
        else:
            mean, rstd = _stats_torch(x, groups, eps)
            _, _, z = _affine_torch(x, mean, rstd, weight, bias, groups)
            y = F.silu(z).to(x.dtype)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.block, ctx.programs, ctx.triton_path = groups, block, programs, triton_path
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        groups = ctx.groups
        dy = dy.contiguous()
        rows, length, hw, cpg = _shape(x, groups)
        if ctx.triton_path:
            _, _, backward_sums, backward_dx = _kernels()
            splits, per = _grid(rows, length, ctx.block, ctx.programs)
            sg, sgx = (torch.empty(rows, splits, device=x.device) for _ in range(2))
            backward_sums[(rows, splits)](x, dy, mean, rstd, weight, bias, sg, sgx, length, hw,
                                          cpg, groups, per, splits, BLOCK=ctx.block)  # fmt: skip
            sg, sgx = sg.sum(1).contiguous(), sgx.sum(1).contiguous()
            dx = torch.empty_like(x)
            backward_dx[(rows, splits)](x, dy, dx, mean, rstd, weight, bias, sg, sgx, length, hw,
                                        cpg, groups, per, BLOCK=ctx.block)  # fmt: skip
        else:
            xhat, w, z = _affine_torch(x, mean, rstd, weight, bias, groups)
            s = torch.sigmoid(z)
            gh = (dy.to(z.dtype) * s * (1.0 + z * (1.0 - s)) * w).reshape(rows, length)
            xhat = xhat.reshape(rows, length)
            mg = gh.mean(1, keepdim=True)
            mgx = (gh * xhat).mean(1, keepdim=True)
            dx = (rstd[:, None] * (gh - mg - xhat * mgx)).view(x.shape).to(x.dtype)
        return dx, None, None, None, None, None, None


def group_norm_silu(
    x: Tensor,
    groups: int,
    weight: Tensor,
    bias: Tensor,
    eps: float = 1e-5,
    block: int = BLOCK,
    programs: int = PROGRAMS,
) -> Tensor:
    """``silu(group_norm(x, groups, weight, bias, eps))`` for x (N, C, *spatial), as one op
    that stores only x and the per-group statistics; the gradient flows to x only, so
    ``weight`` and ``bias`` must not require gradients (the plain ops run when they do)."""
    if weight.requires_grad or bias.requires_grad:
        return F.silu(F.group_norm(x, groups, weight, bias, eps))
    return _GroupNormSiLU.apply(x, weight, bias, groups, eps, block, programs)


class _FrozenConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, conv):
        ctx.conv, ctx.shape = conv, x.shape
        return conv._conv_forward(x, conv.weight, conv.bias)

    @staticmethod
    def backward(ctx, dy):
        conv = ctx.conv
        if conv.padding_mode != "zeros":
            raise NotImplementedError("frozen_conv2d: only zero padding")
        dx = torch.nn.grad.conv2d_input(
            ctx.shape, conv.weight, dy, conv.stride, conv.padding, conv.dilation, conv.groups
        )
        return dx, None


def frozen_conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` that stores nothing for its backward when ``conv``'s parameters are frozen
    (the input's gradient needs the weight only); the plain call otherwise."""
    frozen = not any(p.requires_grad for p in conv.parameters())
    if not (frozen and x.requires_grad and torch.is_grad_enabled()) or conv.padding_mode != "zeros":
        return conv._conv_forward(x, conv.weight, conv.bias)
    return _FrozenConv2d.apply(x, conv)


class FusedGroupNormSiLU(nn.GroupNorm):
    """A ``GroupNorm`` whose SiLU has been folded in (the block's SiLU is an identity then)."""

    def forward(self, x: Tensor) -> Tensor:
        return group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps)


class FrozenConv2d(nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return frozen_conv2d(self, x)


def _fusable_pairs(encoder: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, norm attribute, activation attribute) of each GroupNorm -> SiLU pair."""
    pairs = []
    for module in encoder.modules():
        # without a time embedding, a resnet block applies its SiLU right after each norm only
        if type(module).__name__ == "ResnetBlock2D" and getattr(module, "time_emb_proj", 1) is None:
            if type(module.nonlinearity) is nn.SiLU:
                pairs += [(module, "norm1", "nonlinearity"), (module, "norm2", "nonlinearity")]
    if type(getattr(encoder, "conv_norm_out", None)) is nn.GroupNorm:
        if type(getattr(encoder, "conv_act", None)) is nn.SiLU:
            pairs.append((encoder, "conv_norm_out", "conv_act"))
    return [p for p in pairs if type(getattr(p[0], p[1])) is nn.GroupNorm]


@contextlib.contextmanager
def fused_encoder(vae: nn.Module) -> Iterator[None]:
    """Run ``vae.encoder`` (and ``quant_conv``) with fused GroupNorm + SiLU ops and frozen
    convolutions inside the block; the modules are as before after it."""
    encoder = getattr(vae, "encoder", None)
    if encoder is None:
        yield
        return
    swapped: list[tuple[nn.Module, type]] = []
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent, norm, act in _fusable_pairs(encoder):
            module = getattr(parent, norm)
            swapped.append((module, type(module)))
            module.__class__ = FusedGroupNormSiLU
            if not isinstance(getattr(parent, act), nn.Identity):
                replaced.append((parent, act, getattr(parent, act)))
                setattr(parent, act, nn.Identity())
        convs = [m for m in encoder.modules() if type(m) is nn.Conv2d]
        quant = getattr(vae, "quant_conv", None)
        if type(quant) is nn.Conv2d:
            convs.append(quant)
        for module in convs:
            swapped.append((module, type(module)))
            module.__class__ = FrozenConv2d
        yield
    finally:
        for module, cls in swapped:
            module.__class__ = cls
        for parent, act, original in replaced:
            setattr(parent, act, original)


__all__ = [
    "FrozenConv2d",
    "FusedGroupNormSiLU",
    "frozen_conv2d",
    "fused_encoder",
    "group_norm_silu",
]
