"""Tests of ayg.deformation: the C.2 field and the chains of sec. 3.4 / 4."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ayg.deformation import (
    DeformationConfig,
    DeformationField,
    Motion,
    Segment,
    positional_encoding,
    smoothstep,
    xi,
)
from ayg.regularizers import interpolation_loss

SMALL = DeformationConfig(hidden=32)


def randomised(cfg: DeformationConfig = SMALL, seed: int = 0, scale: float = 1.0):
    """A field with random weights everywhere, the last layer included."""
    torch.manual_seed(seed)
    f = DeformationField(cfg).double()
    last = f.mlp[-1]
    with torch.no_grad():
        last.weight.normal_(0.0, scale / math.sqrt(last.in_features))
        last.bias.normal_(0.0, 0.1 * scale)
    return f


def cloud(n: int = 40, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 0.8


def naive_field(f: DeformationField, means: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """C.2 written directly: encode the concatenated (x, y, z, τ), run the Sequential."""
    out = []
    for t in tau:
        v = torch.cat([means, t.expand(means.shape[0], 1)], dim=1)  # (N, 4)
        h = f.mlp(positional_encoding(v, f.cfg.frequencies))
        out.append(t**0.35 * torch.tanh(h / 0.5) * 0.5)
    return torch.stack(out)


# ---------------------------------------------------------------- field (C.2)


def test_encoding_has_32_features_and_matches_hand_computation():
    v = torch.tensor([[0.25, -0.1, 0.3, 0.7]], dtype=torch.float64)
    enc = positional_encoding(v, 4)
    assert enc.shape == (1, 32)
    expected = []
    for d in range(4):
        expected += [math.sin(2**k * math.pi * v[0, d].item()) for k in range(4)]
        expected += [math.cos(2**k * math.pi * v[0, d].item()) for k in range(4)]
    torch.testing.assert_close(enc[0], torch.tensor(expected, dtype=torch.float64))


def test_architecture_matches_c2():
    f = DeformationField()
    kinds = [type(m) for m in f.mlp]
    L, N, R = nn.Linear, nn.LayerNorm, nn.ReLU
    assert kinds == [L, R, L, N, R, L, R, L, N, R, L]
    linears = [m for m in f.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (32, 128),
        (128, 128),
        (128, 128),
        (128, 128),
        (128, 3),
    ]
    assert all(m.normalized_shape == (128,) for m in f.mlp if isinstance(m, nn.LayerNorm))
    assert torch.count_nonzero(linears[-1].weight) == 0
    assert torch.count_nonzero(linears[-1].bias) == 0
    cfg = DeformationConfig()
    assert (cfg.hidden, cfg.layers, cfg.frequencies, cfg.clamp, cfg.xi_power) == (
        128,
        5,
        4,
        0.5,
        0.35,
    )


def test_fresh_field_is_identity():
    f = DeformationField()
    means = torch.randn(50, 3)
    tau = torch.linspace(0, 1, 7)
    delta = f(means, tau)
    assert delta.shape == (7, 50, 3)
    assert torch.count_nonzero(delta) == 0
    torch.testing.assert_close(f.positions(means, tau), means.expand(7, -1, -1))


def test_random_field_is_zero_at_tau0_and_matches_naive():
    f = randomised()
    means = cloud()
    tau = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    delta = f(means, tau)
    assert torch.count_nonzero(delta[0]) == 0
    assert delta[1:].abs().max() > 1e-3
    torch.testing.assert_close(delta, naive_field(f, means, tau))
    torch.testing.assert_close(f.positions(means, tau), means + delta)


def test_output_stays_within_clamp_for_huge_weights():
    f = randomised(scale=1e4)
    with torch.no_grad():
        for m in f.mlp:
            if isinstance(m, nn.Linear):
                m.weight.mul_(100.0)
    delta = f(cloud() * 10, torch.linspace(0, 1, 5, dtype=torch.float64))
    assert torch.isfinite(delta).all()
    assert delta.abs().max() <= 0.5
    assert delta.abs().max() > 0.45  # the clamp is reached


def test_xi_and_smoothstep():
    tau = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(xi(tau), torch.tensor([0.0, 0.5**0.35, 1.0]))
    assert xi(torch.tensor([-0.1])).item() == 0.0
    torch.testing.assert_close(
        smoothstep(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, 0.5, 1.0])
    )


def test_field_shape_errors():
    f = DeformationField(SMALL)
    with pytest.raises(ValueError, match="means"):
        f(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="tau"):
        f(torch.zeros(4, 3), torch.zeros(3, 1))
    with pytest.raises(ValueError):
        DeformationConfig(layers=1)


# ---------------------------------------------------------------- Motion (sec. 3.4, 4)


def chain(kinds: list[str]) -> Motion:
    return Motion([Segment(randomised(seed=i), kind, f"p{i}") for i, kind in enumerate(kinds)])


def test_duration_and_starts():
    assert Motion([]).duration == 1.0
    assert chain(["base"]).duration == 1.0
    m = chain(["base", "extend", "loop"])
    assert m.duration == 2.0
    assert [m.start(k) for k in range(3)] == [0.0, 0.5, 1.0]


def test_static_motion_returns_means0():
    means0 = cloud()
    pos = Motion([]).positions(means0, torch.tensor([0.0, 0.3, 1.0]))
    torch.testing.assert_close(pos, means0.expand(3, -1, -1))


def test_one_segment_motion_equals_bare_field():
    m = chain(["base"])
    means0 = cloud()
    g = torch.linspace(0, 1, 9, dtype=torch.float64)
    torch.testing.assert_close(m.positions(means0, g), m.fields[0].positions(means0, g))
    pos, reg = m.positions_for_training(means0, g)
    torch.testing.assert_close(pos, m.fields[0].positions(means0, g))
    assert reg.item() == 0.0


def test_two_segments_match_hand_computation():
    m = chain(["base", "extend"])
    f0, f1 = m.fields
    x0 = cloud()
    half = torch.tensor([0.5], dtype=torch.float64)
    canon1 = x0 + f0(x0, half)[0]

    def at(t):
        return torch.tensor([t], dtype=torch.float64)

    expected = {
        0.25: x0 + f0(x0, at(0.25))[0],
        0.5: canon1,
        0.75: 0.5 * (x0 + f0(x0, at(0.75))[0]) + 0.5 * (canon1 + f1(canon1, at(0.25))[0]),
        0.9: 0.2 * (x0 + f0(x0, at(0.9))[0]) + 0.8 * (canon1 + f1(canon1, at(0.4))[0]),
        1.25: canon1 + f1(canon1, at(0.75))[0],
        1.5: canon1 + f1(canon1, at(1.0))[0],
    }
    g = torch.tensor(list(expected), dtype=torch.float64)
    got = m.positions(x0, g)
    torch.testing.assert_close(got, torch.stack(list(expected.values())))
    torch.testing.assert_close(m.canonicals(x0)[1], canon1)


def test_loop_matches_hand_computation_and_ends_on_first_pose():
    m = chain(["base", "loop"])
    f0, f1 = m.fields
    x0 = cloud()
    canon1 = m.canonicals(x0)[1]
    u = torch.tensor([0.7], dtype=torch.float64)
    s = 3 * 0.7**2 - 2 * 0.7**3
    expected = (1 - s) * canon1 + s * x0 + 0.3**0.35 * f1(canon1, u)[0]
    torch.testing.assert_close(
        m.positions(x0, torch.tensor([1.2], dtype=torch.float64))[0], expected
    )
    end = m.positions(x0, torch.tensor([m.duration, m.duration + 3.0], dtype=torch.float64))
    assert torch.equal(end[0], x0) and torch.equal(end[1], x0)
    pos, _ = m.positions_for_training(x0, torch.tensor([1.0], dtype=torch.float64))
    assert torch.equal(pos[0], x0)


def test_single_loop_segment_loops_the_static_cloud():
    m = chain(["loop"])
    x0 = cloud()
    pos = m.positions(x0, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert torch.equal(pos[0], x0) and torch.equal(pos[2], x0)
    assert (pos[1] - x0).abs().max() > 1e-3


@pytest.mark.parametrize("kinds", [["base", "extend", "extend"], ["base", "extend", "loop"]])
def test_chain_is_continuous_at_joints_and_starts_at_canon(kinds):
    m = chain(kinds)
    x0 = cloud()
    canons = m.canonicals(x0)
    eps = 1e-7
    for k in range(1, len(kinds)):
        s = m.start(k)
        for joint in (s, s + 0.5):
            g = torch.tensor([joint - eps, joint, joint + eps], dtype=torch.float64)
            p = m.positions(x0, g)
            assert (p[1] - p[0]).abs().max() < 1e-4, (k, joint)
            assert (p[2] - p[1]).abs().max() < 1e-4, (k, joint)
        torch.testing.assert_close(
            m.positions(x0, torch.tensor([s], dtype=torch.float64))[0], canons[k]
        )
        # Without blending the chain would jump at the end of the overlap: the test has teeth.
        u = torch.tensor([1.0], dtype=torch.float64)
        prev_end = canons[k - 1] + m.fields[k - 1](canons[k - 1], u)[0]
        cur = m.positions(x0, torch.tensor([s + 0.5], dtype=torch.float64))[0]
        assert (prev_end - cur).abs().max() > 1e-2


def test_positions_for_training_matches_positions_and_interp_reg():
    m = chain(["base", "extend", "extend"])
    x0 = cloud()
    tau = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.8, 1.0], dtype=torch.float64)
    pos, reg = m.positions_for_training(x0, tau)
    torch.testing.assert_close(pos, m.positions(x0, m.start(2) + tau))
    # the regulariser by hand: χ²‖raw_prev − raw_last‖² averaged over overlap frames
    canons = m.canonicals(x0)
    inside = tau[tau <= 0.5]
    raw_prev = canons[1] + m.fields[1](canons[1], inside + 0.5)
    raw_last = canons[2] + m.fields[2](canons[2], inside)
    chi = inside / 0.5
    blended = (1 - chi)[:, None, None] * raw_prev + chi[:, None, None] * raw_last
    torch.testing.assert_close(reg, interpolation_loss(raw_prev, blended))
    hand = ((chi**2)[:, None] * (raw_prev - raw_last).square().sum(-1)).mean()
    torch.testing.assert_close(reg, hand)
    assert reg > 0


def test_interp_reg_is_zero_at_overlap_start_and_outside():
    m = chain(["base", "extend"])
    x0 = cloud()
    for t in (0.0, 0.6, 1.0):
        _, reg = m.positions_for_training(x0, torch.tensor([t], dtype=torch.float64))
        assert reg.item() == 0.0, t
    _, reg = m.positions_for_training(x0, torch.tensor([0.3], dtype=torch.float64))
    assert reg.item() > 0.0


def test_frozen_earlier_fields_get_no_gradient():
    m = chain(["base", "extend", "loop"])
    x0 = cloud()
    pos, reg = m.positions_for_training(x0, torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64))
    (pos.square().sum() + reg).backward()
    for f in m.fields[:-1]:
        assert all(p.grad is None for p in f.parameters())
    grads = [p.grad for p in m.fields[-1].parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_validation_of_chains():
    f = DeformationField(SMALL)
    with pytest.raises(ValueError, match="loop must be the last"):
        Motion([Segment(f, "base"), Segment(f, "loop"), Segment(f, "extend")])
    with pytest.raises(ValueError, match="segment 0"):
        Motion([Segment(f, "extend")])
    with pytest.raises(ValueError, match="segment 1"):
        Motion([Segment(f, "base"), Segment(f, "base")])
    with pytest.raises(ValueError, match="kind"):
        Segment(f, "jump")
    m = Motion([Segment(f, "base"), Segment(f, "loop")])
    with pytest.raises(ValueError):
        m.append(Segment(f, "extend"))
    assert len(m) == 2
    m.segments.append(Segment(f, "extend"))  # a direct append is caught at evaluation
    with pytest.raises(ValueError, match="loop"):
        m.positions(torch.zeros(3, 3), torch.zeros(1))
    with pytest.raises(ValueError, match="at least one segment"):
        Motion([]).positions_for_training(torch.zeros(3, 3), torch.zeros(1))


def test_serialisation_round_trip():
    m = chain(["base", "extend", "loop"])
    for f in m.fields:
        f.float()
    tensors = m.to_tensors("objects.0.motion.")
    meta = json.loads(json.dumps(m.metadata()))
    assert [d["kind"] for d in meta] == ["base", "extend", "loop"]
    assert [d["prompt"] for d in meta] == ["p0", "p1", "p2"]
    assert all(k.startswith("objects.0.motion.") for k in tensors)
    tensors["unrelated"] = torch.zeros(1)
    safetensors = pytest.importorskip("safetensors.torch")
    tensors = safetensors.load(safetensors.save(tensors))
    back = Motion.from_tensors(tensors, meta, "objects.0.motion.")
    x0 = cloud().float()
    g = torch.linspace(0, m.duration, 11)
    assert torch.equal(back.positions(x0, g), m.positions(x0, g))
    assert back.metadata() == m.metadata()
    with pytest.raises(ValueError, match="no tensors"):
        Motion.from_tensors(tensors, meta, "wrong.")


def test_checkpointed_chunks_equal_the_plain_forward():
    """Above ``checkpoint_points`` the MLP runs in checkpointed chunks over the Gaussians:
    same displacements and same parameter gradients as one pass."""
    torch.manual_seed(0)
    field = DeformationField().double()  # float64: chunked sums must agree to rounding
    torch.nn.init.normal_(field.mlp[-1].weight, std=0.1)
    means = torch.randn(37, 3, dtype=torch.float64) * 0.3
    tau = torch.rand(5, dtype=torch.float64)

    def run(points: int):
        field.checkpoint_points = points
        field.zero_grad()
        out = field(means, tau)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), [p.grad.clone() for p in field.parameters()]

    plain, g_plain = run(1 << 20)
    chunked, g_chunked = run(40)  # 8 Gaussians per chunk at T = 5
    torch.testing.assert_close(chunked, plain)
    for a, b in zip(g_chunked, g_plain, strict=True):
        torch.testing.assert_close(a, b)
