"""encoder_backward="fused" (ayg.teachers.fused_encoder): the fused GroupNorm + SiLU op and the
frozen convolution give plain autograd's values and gradients, store less, recompute nothing,
and leave the VAE as it was. The Triton kernels run on the CPU under Triton's interpreter
(TRITON_INTERPRET=1), against the PyTorch formulas and against F.group_norm + F.silu."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ayg.teachers import fused_encoder as fe
from ayg.teachers.fused_encoder import frozen_conv2d, fused_encoder, group_norm_silu


def reference(x, groups, w, b, eps=1e-5):
    return F.silu(F.group_norm(x, groups, w.to(x.dtype), b.to(x.dtype), eps))


def grads(fn, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    (y * dy).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("shape,groups", [((3, 8, 5, 7), 4), ((2, 6, 3, 4, 5), 3)])
def test_group_norm_silu_is_group_norm_then_silu(shape, groups):
    """float64, PyTorch formulas: values and input gradient as autograd's, and the gradient
    passes torch.autograd.gradcheck (finite differences)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1.5  # a mean far from 0
    c = shape[1]
    w = torch.randn(c, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    ref = grads(lambda t: reference(t, groups, w, b), x, dy)
    got = grads(lambda t: group_norm_silu(t, groups, w, b), x, dy)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-9, atol=1e-11)
    small = x[:1, :, :2].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: group_norm_silu(t, groups, w, b), (small,))


def test_trainable_affine_parameters_take_the_plain_ops():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    group_norm_silu(x, 2, w, b).sum().backward()
    assert w.grad is not None and b.grad is not None  # the plain ops carry their gradients


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture
def interpret():
    """The Triton kernels run under Triton's CPU interpreter, which must be switched on before
    Triton is imported: these tests run in the child process that the next test starts."""
    pytest.importorskip("triton")
    if not INTERPRETED:
        pytest.skip("runs in a child process with TRITON_INTERPRET=1")


def test_kernels_pass_under_the_interpreter():
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("this is the child process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
           "triton_kernels or channels_last_encoder"]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "12 passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize(
    "shape,groups,block,programs,layout",
    [
        ((2, 8, 9, 13), 4, 32, 4, ""),  # 2 channels of 117 per row: 8 tiles of 32, one split
        ((2, 8, 9, 13), 4, 32, 24, ""),  # 3 splits of 3 tiles, the last one tile short
        ((2, 8, 9, 13), 4, 32, 64, ""),  # one tile per split
        ((1, 4, 6, 6), 2, 1024, 1, ""),  # one tile per row, mostly masked
        ((3, 6, 2, 5, 7), 3, 16, 5, ""),  # (N, C, T, H, W)
        ((2, 8, 9, 13), 4, 32, 4, "cl"),  # channels-last: tiles of 4 pixels × 8 channels
        ((2, 8, 9, 13), 4, 16, 24, "cl"),  # 2-pixel tiles, 12 splits, the last tile short
        ((3, 12, 5, 6), 4, 64, 5, "cl"),  # 12 channels in a 16-lane tile: masked channels
        ((1, 6, 3, 3), 2, 8, 2, "cl"),  # 3 channels per group, one sample
    ],
)
def test_triton_kernels_match_the_formulas(interpret, shape, groups, block, programs, layout):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen) * 2 - 3
    x[-1] = x[-1] * 0.01 + 300.0  # a mean far above the spread: the sums must not cancel
    c = shape[1]
    w, b = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    dy = torch.randn(shape, generator=gen)
    if layout:  # NHWC in, NHWC out, the gradient too
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
        assert fe._is_channels_last(x)
    assert fe._use_triton(x)
    got = grads(lambda t: group_norm_silu(t, groups, w, b, 1e-6, block, programs), x, dy)
    ref = grads(lambda t: reference(t, groups, w, b, 1e-6), x.double(), dy.double())
    torch.testing.assert_close(got[0], ref[0].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1].float(), rtol=1e-4, atol=1e-5)
    for t in got:
        assert fe._is_channels_last(t) == bool(layout)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_triton_kernels_in_bf16_are_within_bf16_rounding(interpret, memory_format):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 16, 16, generator=gen).bfloat16()
    w, b = torch.randn(8, generator=gen).bfloat16(), torch.randn(8, generator=gen).bfloat16()
    dy = torch.randn(x.shape, generator=gen).bfloat16()
    x, dy = (t.contiguous(memory_format=memory_format) for t in (x, dy))
    got = grads(lambda t: group_norm_silu(t, 4, w, b, 1e-6, 64, 8), x, dy)
    ref = grads(lambda t: reference(t, 4, w, b, 1e-6), x.double(), dy.double())
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == torch.bfloat16
        err = (g.double() - r).abs().max() / r.abs().max()
        assert err < 2**-7  # bf16 keeps 8 significant bits


@pytest.mark.parametrize(
    "kw", [dict(), dict(stride=2, padding=1), dict(padding=(0, 2), dilation=2), dict(groups=2)]
)
def test_frozen_conv2d_gives_the_input_gradient_and_stores_nothing(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, **kw).requires_grad_(False)
    x = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    conv.double()
    dy = torch.randn_like(conv(x))
    ref = grads(conv, x, dy)
    nbytes, _ = saved_bytes(lambda: frozen_conv2d(conv, x.clone().requires_grad_(True)))
    assert nbytes == 0 and saved_bytes(lambda: conv(x.clone().requires_grad_(True)))[0] > 0
    got = grads(lambda t: frozen_conv2d(conv, t), x, dy)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-12)


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_fused_encoder_stores_less_and_restores_the_vae():
    pytest.importorskip("diffusers")
    from test_teachers_sd_video import tiny_vae

    from ayg.teachers.stable_diffusion import posterior_moments

    torch.manual_seed(0)
    vae = tiny_vae().eval().requires_grad_(False)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    classes = {name: type(m) for name, m in vae.named_modules()}
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    calls = [0]
    vae.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    out = {}
    for mode in ("keep", "fused"):
        xi = x.clone().requires_grad_(True)
        nbytes, (mean, std) = saved_bytes(lambda m=mode, xi=xi: posterior_moments(vae, xi, m, 1))
        (mean.sum() + std.sum()).backward()
        out[mode] = nbytes, mean.detach(), xi.grad
    assert calls[0] == 2  # one encoder pass each: "fused" recomputes nothing
    torch.testing.assert_close(out["fused"][1], out["keep"][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["fused"][2], out["keep"][2], rtol=1e-4, atol=1e-6)
    assert out["fused"][0] < 0.5 * out["keep"][0]
    assert {name: type(m) for name, m in vae.named_modules()} == classes
    after = vae.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    with fused_encoder(vae):  # inside, each resnet's SiLU is folded into its norms
        kinds = {type(m).__name__ for m in vae.encoder.modules()}
        assert {"FusedGroupNormSiLU", "FrozenConv2d", "Identity"} <= kinds
        assert "SiLU" not in kinds and "Conv2d" not in kinds
    assert type(vae.encoder.down_blocks[0].resnets[0].nonlinearity) is nn.SiLU


def test_a_channels_last_encoder_runs_nhwc_through_the_kernels(interpret):
    """A VAE stored channels-last (``teachers.encoder_channels_last``) with the fused encoder:
    the Triton kernels read and write NHWC (no layout conversion around the convolutions) and
    the posterior and the frames' gradient are plain autograd's on the NCHW VAE."""
    pytest.importorskip("diffusers")
    from test_teachers_sd_video import tiny_vae

    from ayg.teachers.runtime import set_memory_format
    from ayg.teachers.stable_diffusion import posterior_moments

    torch.manual_seed(0)
    vae = tiny_vae().eval().requires_grad_(False).double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    g = torch.randn(2, 8, 8, 8, dtype=torch.float64)

    def run(mode, channels_last):
        set_memory_format(vae, channels_last)
        xi = x.clone()
        if channels_last:
            xi = xi.contiguous(memory_format=torch.channels_last)
        xi.requires_grad_(True)
        mean, std = posterior_moments(vae, xi, mode)
        (torch.cat([mean, std], 1) * g).sum().backward()
        return mean.detach(), std.detach(), xi.grad

    layouts = []
    original = fe._GroupNormSiLU.forward

    def spy(ctx, x, *args):
        layouts.append(fe._is_channels_last(x))
        return original(ctx, x, *args)

    ref = run("keep", False)
    fe._GroupNormSiLU.forward = staticmethod(spy)
    try:
        got = run("fused", True)
    finally:
        fe._GroupNormSiLU.forward = staticmethod(original)
        set_memory_format(vae, False)
    assert layouts and all(layouts)  # every fused norm saw an NHWC tensor
    for a, b in zip(got, ref, strict=True):  # the kernels compute in float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
