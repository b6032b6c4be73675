"""Deformation fields and their chains (paper sec. 3.1, 3.4 "Extended Autoregressive
Generation", sec. 4 looping, appendix C.2).

A ``DeformationField`` is the MLP Δ_Φ(x, y, z, τ) of C.2: a sinusoidal encoding of
(x, y, z, τ) with 4 frequencies (sin and cos of 2^k·π·v, k = 0..3, 32 inputs), 5 linear layers
of width 128 with ReLU, LayerNorm before every second ReLU, a zero-initialised last layer, a
soft clamp tanh(x/0.5)·0.5 and the factor ξ(τ) = τ^0.35 so that Δ(·, 0) = 0.

A ``Motion`` chains such fields over a global time g (sec. 3.4): segment k starts at
s_k = 0.5·k, the middle frame of segment k−1, from the chain's positions there (its canonical
positions), and lasts 1. Over the overlap [s_k, s_k + 0.5] the positions blend linearly from
segment k−1 to segment k. A "loop" segment ends on the first pose, with its deformation
suppressed at both ends (sec. 4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

SEGMENT_KINDS = ("base", "extend", "loop")
SEGMENT_STRIDE = 0.5  # a new segment starts at the middle frame of the previous one (sec. 3.4)


@dataclass
class DeformationConfig:
    """Hyperparameters of the deformation MLP (C.2, table 4)."""

    hidden: int = 128
    layers: int = 5  # linear layers, including the input and the output layer
    frequencies: int = 4  # sinusoidal frequencies per input coordinate
    clamp: float = 0.5  # soft clamp: tanh(x / clamp) · clamp
    xi_power: float = 0.35  # ξ(τ) = τ^xi_power

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.layers < 2 or self.frequencies < 1:
            raise ValueError(
                f"need hidden >= 1, layers >= 2, frequencies >= 1, got "
                f"{self.hidden}, {self.layers}, {self.frequencies}"
            )
        if self.clamp <= 0 or self.xi_power <= 0:
            raise ValueError(f"clamp and xi_power must be > 0, got {self.clamp}, {self.xi_power}")

    @property
    def in_features(self) -> int:
        return 4 * 2 * self.frequencies

    @classmethod
    def from_dict(cls, d: dict) -> DeformationConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DeformationConfig fields: {sorted(unknown)}")
        return cls(**d)


def xi(tau: Tensor, power: float = 0.35) -> Tensor:
    """ξ(τ) = τ^power (sec. 3.1): 0 at τ = 0, 1 at τ = 1. Negative τ is treated as 0."""
    return tau.clamp(min=0.0) ** power


def smoothstep(u: Tensor) -> Tensor:
    """3u² − 2u³ on [0, 1]: 0 → 0, 1 → 1, flat at both ends."""
    u = u.clamp(0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def positional_encoding(v: Tensor, frequencies: int) -> Tensor:
    """Sinusoidal encoding (C.2, Vaswani et al.): (..., D) -> (..., D·2·frequencies).

    Coordinate-major layout: for each coordinate v_d the features are
    sin(2^0 π v_d), ..., sin(2^(F-1) π v_d), cos(2^0 π v_d), ..., cos(2^(F-1) π v_d).
    """
    scales = math.pi * 2.0 ** torch.arange(frequencies, dtype=v.dtype, device=v.device)  # (F,)
    arg = v[..., :, None] * scales  # (..., D, F)
    enc = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)  # (..., D, 2F)
    return enc.flatten(-2)


class DeformationField(nn.Module):
    """Δ_Φ(x, y, z, τ) of C.2. ``forward(means (N,3), tau (T,)) -> delta (T, N, 3)``.

    The MLP is ``self.mlp``: Linear, ReLU, Linear, LayerNorm, ReLU, Linear, ReLU, Linear,
    LayerNorm, ReLU, Linear (zero-initialised). A fresh field is the identity (Δ = 0).
    """

    #: T·N above which the MLP runs in checkpointed chunks when gradients are recorded.
    checkpoint_points: int = 1 << 20

    def __init__(self, cfg: DeformationConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DeformationConfig()
        c = self.cfg
        mods: list[nn.Module] = []
        width = c.in_features
        for i in range(c.layers - 1):
            mods.append(nn.Linear(width, c.hidden))
            if i % 2 == 1:  # LayerNorm before every second ReLU
                mods.append(nn.LayerNorm(c.hidden))
            mods.append(nn.ReLU())
            width = c.hidden
        last = nn.Linear(width, 3)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        mods.append(last)
        self.mlp = nn.Sequential(*mods)

    def raw(self, means: Tensor, tau: Tensor) -> Tensor:
        """The clamped MLP output before the factor ξ(τ): (N,3), (T,) -> (T, N, 3)."""
        _check_means(means)
        _check_tau(tau)
        f = self.cfg.frequencies
        first = self.mlp[0]
        n_xyz = 3 * 2 * f  # the encoding is coordinate-major: xyz features first, then τ
        enc_xyz = positional_encoding(means, f)  # (N, 24)
        enc_tau = positional_encoding(tau.to(means.dtype)[:, None], f)  # (T, 8)
        # First layer split over (xyz, τ) features so the xyz part is computed once for all T.
        h_xyz = nn.functional.linear(enc_xyz, first.weight[:, :n_xyz], first.bias)  # (N, H)
        h_tau = nn.functional.linear(enc_tau, first.weight[:, n_xyz:])  # (T, H)
        T, N = h_tau.shape[0], h_xyz.shape[0]
        if torch.is_grad_enabled() and T * N > self.checkpoint_points:
            # Checkpointed chunks over the Gaussians: backward memory then grows with the chunk,
            # not with T·N (150k Gaussians × 64 times in the fine-tuning of C.9).
            step = max(1, self.checkpoint_points // T)
            h = torch.cat(
                [
                    checkpoint(self._tail, h_xyz[i : i + step], h_tau, use_reentrant=False)
                    for i in range(0, N, step)
                ],
                dim=1,
            )
        else:
            h = self._tail(h_xyz, h_tau)  # (T, N, 3)
        return torch.tanh(h / self.cfg.clamp) * self.cfg.clamp

    def _tail(self, h_xyz: Tensor, h_tau: Tensor) -> Tensor:
        """Everything after the first linear layer: (n, H), (T, H) -> (T, n, 3)."""
        return self.mlp[1:](h_xyz[None] + h_tau[:, None])

    def forward(self, means: Tensor, tau: Tensor) -> Tensor:
        """Displacements ξ(τ)·Δ of every Gaussian at every time: (N,3), (T,) -> (T, N, 3)."""
        out = self.raw(means, tau)
        return xi(tau.to(out.dtype), self.cfg.xi_power)[:, None, None] * out

    def positions(self, means: Tensor, tau: Tensor) -> Tensor:
        """Moved centres means + Δ(means, τ): (N,3), (T,) -> (T, N, 3)."""
        return means[None] + self(means, tau)


def _check_means(means: Tensor) -> None:
    if means.ndim != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must have shape (N, 3), got {tuple(means.shape)}")


def _check_tau(tau: Tensor) -> None:
    if tau.ndim != 1:
        raise ValueError(f"tau must have shape (T,), got {tuple(tau.shape)}")


@dataclass
class Segment:
    """One deformation field of a chain. kind: "base" (the first segment), "extend" (a later
    one, sec. 3.4) or "loop" (the last segment, ends on the first pose, sec. 4; may also be the
    only segment: a loop of the static cloud)."""

    field: DeformationField
    kind: str = "base"
    prompt: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SEGMENT_KINDS:
            raise ValueError(f"segment kind must be one of {SEGMENT_KINDS}, got {self.kind!r}")


class Motion:
    """A chain of deformation fields over global time g ∈ [0, duration] (sec. 3.4).

    Segment k covers g ∈ [s_k, s_k + 1] with s_k = 0.5·k and local time u = g − s_k. Its raw
    positions are raw_k(g) = canon_k + Δ_k(canon_k, u) where canon_k are the chain's positions
    at s_k (canon_0 = means0); a loop segment uses
    raw(u) = lerp(canon, means0, smoothstep(u)) + ξ(1−u)·Δ(canon, u) (Δ already carries ξ(u)).
    On [s_k, s_k + 0.5] the chain is (1−χ)·raw_{k−1} + χ·raw_k with χ = (g − s_k)/0.5.
    With no segment at all the asset is static: positions = means0, duration 1.

    Not an ``nn.Module``: ``segments`` is a plain list (appending to it is allowed; the chain
    is validated whenever it is evaluated), and ``to`` / ``parameters`` go through it.
    """

    def __init__(self, segments: list[Segment] | None = None) -> None:
        self.segments: list[Segment] = list(segments or [])
        self.validate()

    def validate(self) -> None:
        """Raises ValueError unless: segment 0 is "base" or "loop", later ones "extend" or
        "loop", and a loop is the last segment."""
        last = len(self.segments) - 1
        for k, seg in enumerate(self.segments):
            if not isinstance(seg, Segment):
                raise ValueError(f"segment {k} must be a Segment, got {type(seg).__name__}")
            if (k == 0 and seg.kind == "extend") or (k > 0 and seg.kind == "base"):
                raise ValueError(
                    f"segment {k} has kind {seg.kind!r}: segment 0 is 'base' or 'loop', "
                    "later ones 'extend' or 'loop'"
                )
            if seg.kind == "loop" and k != last:
                raise ValueError(f"segment {k} is a loop: a loop must be the last segment")

    def __len__(self) -> int:
        return len(self.segments)

    @property
    def fields(self) -> list[DeformationField]:
        return [s.field for s in self.segments]

    @property
    def duration(self) -> float:
        return 1.0 + SEGMENT_STRIDE * max(len(self.segments) - 1, 0)

    def start(self, k: int) -> float:
        """s_k = 0.5·k, the global time at which segment k starts."""
        return SEGMENT_STRIDE * k

    segment_start = start  # alias used by stages.py

    def append(self, segment: Segment) -> Motion:
        """Appends ``segment`` in place (validated) and returns self."""
        self.segments.append(segment)
        try:
            self.validate()
        except ValueError:
            self.segments.pop()
            raise
        return self

    def extended(self, segment: Segment) -> Motion:
        """A new chain with ``segment`` appended (the fields are shared, not copied)."""
        return Motion([*self.segments, segment])

    def to(self, device: torch.device | str) -> Motion:
        """Moves every field to ``device`` (in place) and returns self."""
        for f in self.fields:
            f.to(device)
        return self

    def parameters(self) -> list[nn.Parameter]:
        return [p for f in self.fields for p in f.parameters()]

    # -- evaluation -------------------------------------------------------------------------

    def _raw(self, k: int, canon: Tensor, u: Tensor, means0: Tensor) -> Tensor:
        """raw_k at local times u: canon (N,3), u (T,) -> (T, N, 3)."""
        seg = self.segments[k]
        delta = seg.field(canon, u)  # (T, N, 3)
        if seg.kind != "loop":
            return canon[None] + delta
        w = smoothstep(u).to(canon.dtype)[:, None, None]  # (T, 1, 1)
        damp = xi(1.0 - u, seg.field.cfg.xi_power).to(canon.dtype)[:, None, None]
        return torch.lerp(canon[None], means0[None], w) + damp * delta

    def canonicals(self, means0: Tensor) -> list[Tensor]:
        """canon_k (N, 3) for every segment: the chain's positions at s_k.

        At s_k the previous overlap has ended (χ = 1), so canon_k = raw_{k−1}(s_k), i.e.
        segment k−1 at its local time 0.5.
        """
        _check_means(means0)
        self.validate()
        canons = [means0]
        half = torch.tensor([SEGMENT_STRIDE], dtype=means0.dtype, device=means0.device)
        for k in range(len(self.segments) - 1):
            canons.append(self._raw(k, canons[k], half, means0)[0])
        return canons

    def _weights(self, k: int, g: Tensor) -> Tensor:
        """Blend weight of segment k at global times g (T,): a trapezoid over [s_k, s_k + 1]."""
        s = self.start(k)
        rise = ((g - s) / SEGMENT_STRIDE).clamp(0.0, 1.0) if k > 0 else torch.ones_like(g)
        if k < len(self.segments) - 1:
            fall = 1.0 - ((g - s - SEGMENT_STRIDE) / SEGMENT_STRIDE).clamp(0.0, 1.0)
        else:
            fall = torch.ones_like(g)
        return torch.where(g >= s, rise * fall, torch.zeros_like(g))

    def positions(self, means0: Tensor, g: Tensor) -> Tensor:
        """Positions of the Gaussians at global times g: means0 (N,3), g (T,) -> (T, N, 3).

        g is clamped to [0, duration]. Each field is run once, on the times where it counts.
        """
        _check_means(means0)
        _check_tau(g)
        g = g.to(means0.dtype).clamp(0.0, self.duration)
        if not self.segments:
            return means0[None].repeat(g.shape[0], 1, 1)
        canons = self.canonicals(means0)
        out = means0.new_zeros(g.shape[0], *means0.shape)  # (T, N, 3)
        for k in range(len(self.segments)):
            w = self._weights(k, g)  # (T,)
            idx = torch.nonzero(w > 0).flatten()
            if idx.numel() == 0:
                continue
            raw = self._raw(k, canons[k], g[idx] - self.start(k), means0)  # (T_k, N, 3)
            out = out.index_add(0, idx, w[idx, None, None] * raw)
        return out

    def positions_for_training(self, means0: Tensor, tau_local: Tensor) -> tuple[Tensor, Tensor]:
        """Positions while optimising the LAST segment (earlier fields frozen, sec. 3.4).

        means0 (N,3), tau_local (T,) local times of the last segment (g = s_last + tau_local).
        Returns positions (T, N, 3), equal to ``positions(means0, s_last + tau_local)``, and
        the interpolation regulariser ‖raw_{k−1} − blended‖² averaged over the Gaussians and
        the frames inside the overlap tau_local ≤ 0.5 (0 outside it or for one segment).
        Earlier fields run under no_grad: they get no gradient.
        """
        _check_means(means0)
        _check_tau(tau_local)
        if not self.segments:
            raise ValueError("positions_for_training needs at least one segment to optimise")
        k = len(self.segments) - 1
        tau_local = tau_local.to(means0.dtype).clamp(0.0, 1.0)
        with torch.no_grad():
            canons = self.canonicals(means0)
        raw_k = self._raw(k, canons[k], tau_local, means0)  # (T, N, 3)
        zero = means0.new_zeros(())
        if k == 0:
            return raw_k, zero
        idx = torch.nonzero(tau_local <= SEGMENT_STRIDE).flatten()
        if idx.numel() == 0:
            return raw_k, zero
        u = tau_local[idx]
        with torch.no_grad():
            raw_prev = self._raw(k - 1, canons[k - 1], u + SEGMENT_STRIDE, means0)  # (T_o, N, 3)
        chi = (u / SEGMENT_STRIDE)[:, None, None]
        blended = torch.lerp(raw_prev, raw_k[idx], chi)  # (T_o, N, 3)
        positions = raw_k.index_copy(0, idx, blended)
        # = regularizers.interpolation_loss; written out since deformation imports only torch
        reg = (raw_prev - blended).square().sum(-1).mean()
        return positions, reg

    # -- serialisation ----------------------------------------------------------------------

    def to_tensors(self, prefix: str = "motion.") -> dict[str, Tensor]:
        """Flat {f"{prefix}{k}.{param}": tensor} of every field, for safetensors."""
        out: dict[str, Tensor] = {}
        for k, seg in enumerate(self.segments):
            for name, t in seg.field.state_dict().items():
                out[f"{prefix}{k}.{name}"] = t.detach().contiguous()
        return out

    def metadata(self) -> list[dict]:
        """JSON-able description of the segments: kind, prompt, config."""
        return [
            {"kind": s.kind, "prompt": s.prompt, "config": asdict(s.field.cfg)}
            for s in self.segments
        ]

    @classmethod
    def from_tensors(
        cls,
        tensors: dict[str, Tensor],
        metadata: list[dict],
        prefix: str = "motion.",
        device: torch.device | str | None = None,
    ) -> Motion:
        """Inverse of ``to_tensors`` / ``metadata``. Keys not under ``prefix`` are ignored."""
        segments = []
        for k, meta in enumerate(metadata):
            missing = {"kind", "config"} - set(meta)
            if missing:
                raise ValueError(f"motion metadata of segment {k} lacks {sorted(missing)}")
            field = DeformationField(DeformationConfig.from_dict(dict(meta["config"])))
            head = f"{prefix}{k}."
            state = {key[len(head) :]: t for key, t in tensors.items() if key.startswith(head)}
            if not state:
                raise ValueError(f"no tensors under {head!r} for motion segment {k}")
            field.load_state_dict(state, strict=True)
            if device is not None:
                field.to(device)
            segments.append(Segment(field, meta["kind"], meta.get("prompt", "")))
        return cls(segments)
