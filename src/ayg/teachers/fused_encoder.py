"""The VAE encoder's "fused" backward (``encoder_backward="fused"``): the same gradient as plain
autograd, from fewer kernels and fewer stored activations, with nothing recomputed.

A diffusers VAE encoder is a chain of ``GroupNorm -> SiLU -> Conv2d`` with frozen weights. Plain
autograd stores three tensors per pair for its backward (the norm's input, its output for the
SiLU, the SiLU's output for the convolution) and runs GroupNorm in two kernels, SiLU in a third.
Inside :func:`fused_encoder`:

* each ``GroupNorm`` followed by the block's SiLU is one op (:func:`group_norm_silu`) that stores
  only its input and the per-group mean (as a pivot and a shift) and 1/std, and recomputes the normalised value inside
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
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # module globals: Triton's interpreter patches the ``tl`` a kernel finds in its globals
    import triton
    import triton.language as tl
except ImportError:  # the PyTorch formulas run instead
    triton = tl = None

BLOCK = 2048  # the largest tile, in elements of one channel
PROGRAMS = 1024  # Triton programs a launch aims for (rows × splits): ~8 per SM on an H200


@functools.lru_cache(maxsize=1)
def _kernels():
    """The Triton kernels, built on first use (``TRITON_INTERPRET=1`` runs them on the CPU).

    Every kernel sees x as rows of ``CPG·HW`` contiguous elements, one row per (sample, group)
    of an NCHW tensor, and a row as ``CPG·TPC`` tiles of ``BLOCK`` elements, ``TPC`` tiles per
    channel, so that a tile has one channel's weight and bias. A launch is a grid (rows,
    splits): split ``s`` of a row covers its tiles ``[s·T, (s+1)·T)``. The statistics are
    sums of ``x - x[row, 0]`` and of its square (a shift by one of the row's values keeps the
    variance's float32 sums from cancelling); the backward kernels recompute the normalised
    value and the SiLU's derivative from x.
    """

    @triton.jit
    def stats(X, PIVOT, S1, S2, HW, CPG, TPC, T, S, BLOCK: tl.constexpr):
        row, split = tl.program_id(0), tl.program_id(1)
        base = row.to(tl.int64) * CPG * HW
        pivot = tl.load(PIVOT + row)
        lanes = tl.arange(0, BLOCK)
        acc1 = tl.zeros((BLOCK,), tl.float32)
        acc2 = tl.zeros((BLOCK,), tl.float32)
        for t in range(0, T):
            k = split * T + t
            hw = (k % TPC) * BLOCK + lanes
            mask = (hw < HW) & (k < CPG * TPC)
            x = tl.load(X + base + (k // TPC) * HW + hw, mask=mask, other=0.0).to(tl.float32)
            d = tl.where(mask, x - pivot, 0.0)
            acc1 += d
            acc2 += d * d
        tl.store(S1 + row * S + split, tl.sum(acc1, axis=0))
        tl.store(S2 + row * S + split, tl.sum(acc2, axis=0))

    @triton.jit
    def forward(X, Y, PIVOT, SHIFT, RSTD, W, B, HW, CPG, G, TPC, T, BLOCK: tl.constexpr):
        row, split = tl.program_id(0), tl.program_id(1)
        base = row.to(tl.int64) * CPG * HW
        pivot = tl.load(PIVOT + row)
        shift = tl.load(SHIFT + row)
        rstd = tl.load(RSTD + row)
        lanes = tl.arange(0, BLOCK)
        for t in range(0, T):
            k = split * T + t
            c = k // TPC
            if c < CPG:
                w = tl.load(W + (row % G) * CPG + c).to(tl.float32) * rstd
                b = tl.load(B + (row % G) * CPG + c).to(tl.float32)
                hw = (k % TPC) * BLOCK + lanes
                mask = hw < HW
                x = tl.load(X + base + c * HW + hw, mask=mask, other=0.0).to(tl.float32)
                z = ((x - pivot) - shift) * w + b
                y = z * tl.sigmoid(z)
                tl.store(Y + base + c * HW + hw, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def backward(X, DY, DX, PIVOT, SHIFT, RSTD, W, B, SG, SGX, MG, MGX, HW, CPG, G, TPC, T, S,
                 BLOCK: tl.constexpr, SUMS: tl.constexpr):  # fmt: skip
        # SUMS: write this split's sums of d loss/d xhat and of it times xhat; else dx
        row, split = tl.program_id(0), tl.program_id(1)
        base = row.to(tl.int64) * CPG * HW
        pivot = tl.load(PIVOT + row)
        shift = tl.load(SHIFT + row)
        rstd = tl.load(RSTD + row)
        lanes = tl.arange(0, BLOCK)
        acc_g = tl.zeros((BLOCK,), tl.float32)
        acc_gx = tl.zeros((BLOCK,), tl.float32)
        mg = 0.0
        mgx = 0.0
        if not SUMS:
            mg = tl.load(MG + row)
            mgx = tl.load(MGX + row)
        for t in range(0, T):
            k = split * T + t
            c = k // TPC
            if c < CPG:
                w = tl.load(W + (row % G) * CPG + c).to(tl.float32)
                b = tl.load(B + (row % G) * CPG + c).to(tl.float32)
                hw = (k % TPC) * BLOCK + lanes
                mask = hw < HW
                x = tl.load(X + base + c * HW + hw, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + base + c * HW + hw, mask=mask, other=0.0).to(tl.float32)
                xhat = ((x - pivot) - shift) * rstd
                z = xhat * w + b
                s = tl.sigmoid(z)
                gh = tl.where(mask, dy * s * (1.0 + z * (1.0 - s)) * w, 0.0)  # d loss / d xhat
                if SUMS:
                    acc_g += gh
                    acc_gx += gh * xhat
                else:
                    dx = rstd * (gh - mg - xhat * mgx)
                    tl.store(DX + base + c * HW + hw, dx.to(DX.dtype.element_ty), mask=mask)
        if SUMS:
            tl.store(SG + row * S + split, tl.sum(acc_g, axis=0))
            tl.store(SGX + row * S + split, tl.sum(acc_gx, axis=0))

    # Channels-last (NHWC) tensors: a tile is BLOCK_P pixels × all C channels, contiguous in
    # memory; per-channel sums are folded into per-group sums with a one-hot (group × channel)
    # mask, so any channels-per-group count works. Rows (n·G + g) and splits as above.

    @triton.jit
    def stats_cl(X, PIVOT, S1, S2, HW, C, G, CPG, T, S, BLOCK_P: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):  # fmt: skip
        n, split = tl.program_id(0), tl.program_id(1)
        base = n.to(tl.int64) * HW * C
        ch = tl.arange(0, BLOCK_C)
        cmask = ch < C
        grp = ch // CPG
        pivot = tl.load(PIVOT + n * G + grp, mask=cmask, other=0.0)
        px = tl.arange(0, BLOCK_P)
        acc1 = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        acc2 = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        for t in range(0, T):
            p = (split * T + t) * BLOCK_P + px
            mask = (p < HW)[:, None] & cmask[None, :]
            offs = base + p.to(tl.int64)[:, None] * C + ch[None, :]
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            d = tl.where(mask, x - pivot[None, :], 0.0)
            acc1 += d
            acc2 += d * d
        gi = tl.arange(0, BLOCK_G)
        onehot = grp[None, :] == gi[:, None]  # (BLOCK_G, BLOCK_C)
        g1 = tl.sum(tl.where(onehot, tl.sum(acc1, axis=0)[None, :], 0.0), axis=1)
        g2 = tl.sum(tl.where(onehot, tl.sum(acc2, axis=0)[None, :], 0.0), axis=1)
        tl.store(S1 + (n * G + gi) * S + split, g1, mask=gi < G)
        tl.store(S2 + (n * G + gi) * S + split, g2, mask=gi < G)

    @triton.jit
    def forward_cl(X, Y, PIVOT, SHIFT, RSTD, W, B, HW, C, G, CPG, T, BLOCK_P: tl.constexpr,
                   BLOCK_C: tl.constexpr):  # fmt: skip
        n, split = tl.program_id(0), tl.program_id(1)
        base = n.to(tl.int64) * HW * C
        ch = tl.arange(0, BLOCK_C)
        cmask = ch < C
        row = n * G + ch // CPG
        pivot = tl.load(PIVOT + row, mask=cmask, other=0.0)[None, :]
        shift = tl.load(SHIFT + row, mask=cmask, other=0.0)[None, :]
        rstd = tl.load(RSTD + row, mask=cmask, other=0.0)
        w = (tl.load(W + ch, mask=cmask, other=0.0).to(tl.float32) * rstd)[None, :]
        b = tl.load(B + ch, mask=cmask, other=0.0).to(tl.float32)[None, :]
        px = tl.arange(0, BLOCK_P)
        for t in range(0, T):
            p = (split * T + t) * BLOCK_P + px
            mask = (p < HW)[:, None] & cmask[None, :]
            offs = base + p.to(tl.int64)[:, None] * C + ch[None, :]
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            z = ((x - pivot) - shift) * w + b
            y = z * tl.sigmoid(z)
            tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def backward_cl(X, DY, DX, PIVOT, SHIFT, RSTD, W, B, SG, SGX, MG, MGX, HW, C, G, CPG, T, S,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr,
                    SUMS: tl.constexpr):  # fmt: skip
        n, split = tl.program_id(0), tl.program_id(1)
        base = n.to(tl.int64) * HW * C
        ch = tl.arange(0, BLOCK_C)
        cmask = ch < C
        grp = ch // CPG
        row = n * G + grp
        pivot = tl.load(PIVOT + row, mask=cmask, other=0.0)[None, :]
        shift = tl.load(SHIFT + row, mask=cmask, other=0.0)[None, :]
        rstd = tl.load(RSTD + row, mask=cmask, other=0.0)[None, :]
        w = tl.load(W + ch, mask=cmask, other=0.0).to(tl.float32)[None, :]
        b = tl.load(B + ch, mask=cmask, other=0.0).to(tl.float32)[None, :]
        mg = tl.zeros((1, BLOCK_C), tl.float32)
        mgx = tl.zeros((1, BLOCK_C), tl.float32)
        if not SUMS:
            mg = tl.load(MG + row, mask=cmask, other=0.0)[None, :]
            mgx = tl.load(MGX + row, mask=cmask, other=0.0)[None, :]
        acc_g = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        acc_gx = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        px = tl.arange(0, BLOCK_P)
        for t in range(0, T):
            p = (split * T + t) * BLOCK_P + px
            mask = (p < HW)[:, None] & cmask[None, :]
            offs = base + p.to(tl.int64)[:, None] * C + ch[None, :]
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            xhat = ((x - pivot) - shift) * rstd
            z = xhat * w + b
            s = tl.sigmoid(z)
            gh = tl.where(mask, dy * s * (1.0 + z * (1.0 - s)) * w, 0.0)  # d loss / d xhat
            if SUMS:
                acc_g += gh
                acc_gx += gh * xhat
            else:
                dx = rstd * (gh - mg - xhat * mgx)
                tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        if SUMS:
            gi = tl.arange(0, BLOCK_G)
            onehot = grp[None, :] == gi[:, None]  # (BLOCK_G, BLOCK_C)
            g1 = tl.sum(tl.where(onehot, tl.sum(acc_g, axis=0)[None, :], 0.0), axis=1)
            g2 = tl.sum(tl.where(onehot, tl.sum(acc_gx, axis=0)[None, :], 0.0), axis=1)
            tl.store(SG + (n * G + gi) * S + split, g1, mask=gi < G)
            tl.store(SGX + (n * G + gi) * S + split, g2, mask=gi < G)

    return stats, forward, backward, stats_cl, forward_cl, backward_cl


def _block(hw: int, cap: int) -> int:
    """Tile size: the largest power of two up to ``cap`` that divides H·W (no masked lanes),
    at least 128, or H·W rounded up to a power of two when smaller."""
    block = cap
    while block > 128 and hw % block:
        block //= 2
    return min(block, max(16, triton.next_power_of_2(hw)))


class _Launch:
    """Grid and sizes of one (N, C, *spatial) tensor's kernels."""

    def __init__(self, x: Tensor, groups: int, cap: int, programs: int) -> None:
        self.rows, self.length, self.hw, self.cpg = _shape(x, groups)
        self.block = _block(self.hw, cap)
        self.tpc = math.ceil(self.hw / self.block)
        tiles = self.cpg * self.tpc
        splits = max(1, min(tiles, math.ceil(programs / self.rows)))
        self.per = math.ceil(tiles / splits)  # tiles per split
        self.splits = math.ceil(tiles / self.per)
        self.grid = (self.rows, self.splits)
        self.warps = 8 if self.block >= 2048 else 4
        self.channels_last = False


class _LaunchCL:
    """Grid and sizes of one channels-last (N, C, H, W) tensor's kernels: tiles of
    ``block_p`` pixels × every channel, about ``cap`` elements."""

    def __init__(self, x: Tensor, groups: int, cap: int, programs: int) -> None:
        n, c = x.shape[:2]
        self.rows, self.length, self.hw, self.cpg = _shape(x, groups)
        self.c, self.groups = c, groups
        self.block_c = triton.next_power_of_2(c)
        self.block_g = triton.next_power_of_2(groups)
        self.block_p = min(max(1, cap // self.block_c), triton.next_power_of_2(self.hw))
        tiles = math.ceil(self.hw / self.block_p)
        splits = max(1, min(tiles, math.ceil(programs / n)))
        self.per = math.ceil(tiles / splits)  # tiles per split
        self.splits = math.ceil(tiles / self.per)
        self.grid = (n, self.splits)
        self.warps = 8 if self.block_p * self.block_c >= 2048 else 4
        self.channels_last = True


def _is_channels_last(x: Tensor) -> bool:
    """x (N, C, H, W) stored channels-last (NHWC), and not also plainly contiguous."""
    return (
        x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    )


def _launch(x: Tensor, groups: int, cap: int, programs: int) -> _Launch | _LaunchCL:
    cls = _LaunchCL if _is_channels_last(x) else _Launch
    return cls(x, groups, cap, programs)


def _use_triton(x: Tensor) -> bool:
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


def _stats_triton(x: Tensor, eps: float, launch: _Launch | _LaunchCL):
    length = launch.length
    pivot = (
        x[:, :: launch.cpg].flatten(2)[:, :, 0].float().reshape(-1).contiguous()
    )  # x[n, g·CPG, 0]
    s1, s2 = (torch.empty(launch.rows, launch.splits, device=x.device) for _ in range(2))
    if launch.channels_last:
        _kernels()[3][launch.grid](x, pivot, s1, s2, launch.hw, launch.c, launch.groups,
                                   launch.cpg, launch.per, launch.splits,
                                   BLOCK_P=launch.block_p, BLOCK_C=launch.block_c,
                                   BLOCK_G=launch.block_g, num_warps=launch.warps)  # fmt: skip
    else:
        _kernels()[0][launch.grid](x, pivot, s1, s2, launch.hw, launch.cpg, launch.tpc,
                                   launch.per, launch.splits, BLOCK=launch.block,
                                   num_warps=launch.warps)  # fmt: skip
    shift = s1.sum(1) / length
    var = (s2.sum(1) / length - shift * shift).clamp_min(0.0)
    return pivot, shift, torch.rsqrt(var + eps)  # the mean is pivot + shift


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
        triton_path = _use_triton(x)
        if not (triton_path and _is_channels_last(x)):
            x = x.contiguous()  # channels-last stays so on the Triton path
        if triton_path:
            launch = _launch(x, groups, block, programs)
            pivot, shift, rstd = _stats_triton(x, eps, launch)
            y = torch.empty_like(x)
            if launch.channels_last:
                _kernels()[4][launch.grid](x, y, pivot, shift, rstd, weight, bias, launch.hw,
                                           launch.c, groups, launch.cpg, launch.per,
                                           BLOCK_P=launch.block_p, BLOCK_C=launch.block_c,
                                           num_warps=launch.warps)  # fmt: skip
            else:
                _kernels()[1][launch.grid](x, y, pivot, shift, rstd, weight, bias, launch.hw,
                                           launch.cpg, groups, launch.tpc, launch.per,
                                           BLOCK=launch.block, num_warps=launch.warps)  # fmt: skip
        else:
            pivot, rstd = _stats_torch(x, groups, eps)
            shift = torch.zeros_like(pivot)
            _, _, z = _affine_torch(x, pivot, rstd, weight, bias, groups)
            y = F.silu(z).to(x.dtype)
        ctx.save_for_backward(x, weight, bias, pivot, shift, rstd)
        ctx.groups, ctx.block, ctx.programs, ctx.triton_path = groups, block, programs, triton_path
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, pivot, shift, rstd = ctx.saved_tensors
        groups = ctx.groups
        rows, length, _, _ = _shape(x, groups)
        if ctx.triton_path:
            launch = _launch(x, groups, ctx.block, ctx.programs)
            fmt = torch.channels_last if launch.channels_last else torch.contiguous_format
            dy = dy.contiguous(memory_format=fmt)
            sg, sgx = (torch.empty(launch.rows, launch.splits, device=x.device) for _ in range(2))
            dx = torch.empty_like(x)
            mg = mgx = sg  # read only by the second launch, which gets the means
            for sums in (True, False):
                if launch.channels_last:
                    _kernels()[5][launch.grid](x, dy, dx, pivot, shift, rstd, weight, bias, sg,
                                               sgx, mg, mgx, launch.hw, launch.c, groups,
                                               launch.cpg, launch.per, launch.splits,
                                               BLOCK_P=launch.block_p, BLOCK_C=launch.block_c,
                                               BLOCK_G=launch.block_g, SUMS=sums,
                                               num_warps=launch.warps)  # fmt: skip
                else:
                    _kernels()[2][launch.grid](x, dy, dx, pivot, shift, rstd, weight, bias, sg,
                                               sgx, mg, mgx, launch.hw, launch.cpg, groups,
                                               launch.tpc, launch.per, launch.splits,
                                               BLOCK=launch.block, SUMS=sums,
                                               num_warps=launch.warps)  # fmt: skip
                if sums:
                    mg, mgx = sg.sum(1) / length, sgx.sum(1) / length
        else:
            dy = dy.contiguous()
            xhat, w, z = _affine_torch(x, pivot + shift, rstd, weight, bias, groups)
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
        conv = ctx.conv  # zero padding only (frozen_conv2d)
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
    return [
        p for p in pairs if type(getattr(p[0], p[1])) is nn.GroupNorm and getattr(p[0], p[1]).affine
    ]


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
