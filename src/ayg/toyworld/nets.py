"""The toy world's networks: three small pixel-space diffusion UNets (image F=1, 4-view
multiview F=4 with camera input, 16-frame video F=16 with fps input) and the two evaluation
classifiers (appearance: colour and shape of one view; motion: the motion of a 16-frame clip).

The teachers stand in for the paper's latent DMs (sec. 3.2, C.7) in a world small enough for a
CPU: the "latents" are the pixels themselves, mapped to [-1, 1]. They follow the real models'
structure at a toy scale:

* text: three learned token slots (colour, shape, motion, each with a null id) give a
  ``(3, D)`` embedding per prompt; the UNet sees it through a FiLM vector added to the time
  embedding and through a cross-attention at the bottleneck. Classifier-free guidance comes from
  token dropout during training (unconditional = all three slots null).
* multiview (MVDream-like): a camera embedding of each view is added to that view's time
  embedding, and the bottleneck self-attention spans the tokens of all 4 views.
* video (VideoLDM-like, E.1): an fps embedding is added to the time embedding, a zero-initialised
  1D temporal convolution follows every spatial block and a temporal attention (with frame
  position embeddings) follows the bottleneck's spatial attention.
* ε-prediction with the DDPM linear β schedule (1e-4 → 0.02, 1000 steps), ``alphas_cumprod``.

Everything here is plain torch and device-agnostic; configs are dataclasses stored as JSON in the
safetensors metadata of the shipped weights (see ``save_net`` / ``load_net``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ayg.toyworld.vocab import NULL_TOKENS, VOCAB_SIZES

FORMAT = "ayg-toy-net-v1"

# --------------------------------------------------------------------------------------------
# configs


@dataclass
class TokenConfig:
    """Sizes of the three token slots; each table holds the real ids and one null id."""

    colours: int = VOCAB_SIZES[0]
    shapes: int = VOCAB_SIZES[1]
    motions: int = VOCAB_SIZES[2]
    null_colour: int = NULL_TOKENS[0]
    null_shape: int = NULL_TOKENS[1]
    null_motion: int = NULL_TOKENS[2]
    dim: int = 64  # D of the (3, D) prompt embedding

    @property
    def null_ids(self) -> tuple[int, int, int]:
        return (self.null_colour, self.null_shape, self.null_motion)


@dataclass
class UNetConfig:
    """A toy diffusion UNet. ``kind`` picks the cross-frame layers: "image" (none),
    "multiview" (camera embedding + cross-view attention), "video" (fps embedding + temporal
    conv / attention)."""

    kind: str = "image"
    frames: int = 1
    height: int = 32
    width: int = 32
    channels: tuple[int, ...] = (32, 64, 96)
    emb_dim: int = 128
    heads: int = 4
    groups: int = 8
    tokens: TokenConfig = field(default_factory=TokenConfig)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    timesteps: int = 1000
    camera_features: int = 8
    # video: levels (0 = full resolution) whose down and up blocks also get a temporal
    # attention over the frames at every pixel (the bottleneck always has one)
    temporal_attention_levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.temporal_attention_levels = tuple(self.temporal_attention_levels)
        if isinstance(self.tokens, dict):
            self.tokens = TokenConfig(**self.tokens)
        self.channels = tuple(self.channels)
        if self.kind not in ("image", "multiview", "video"):
            raise ValueError(f"kind must be image, multiview or video, got '{self.kind}'")
        down = 2 ** (len(self.channels) - 1)
        if self.height % down or self.width % down:
            raise ValueError(f"{self.height}x{self.width} must be divisible by {down}")


@dataclass
class AppearanceConfig:
    """One view → colour and shape logits."""

    height: int = 32
    width: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    colours: int = 4
    shapes: int = 4

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)


@dataclass
class MotionConfig:
    """A clip of ``frames`` frames + its fps → motion logits."""

    frames: int = 16
    height: int = 32
    width: int = 52
    channels: tuple[int, ...] = (32, 64, 96)
    motions: int = 4

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)


def default_config(name: str) -> UNetConfig | AppearanceConfig | MotionConfig:
    """The shipped architectures: "image", "multiview", "video", "appearance", "motion"."""
    if name == "image":
        return UNetConfig(kind="image", frames=1, height=32, width=32, channels=(32, 64, 128))
    if name == "multiview":
        return UNetConfig(kind="multiview", frames=4, height=32, width=32, channels=(32, 64, 128))
    if name == "video":
        # 24×40 ≈ the 160×256 aspect of stage 2 (C.6, C.8). (40×64 with temporal attention at
        # levels 1 and 2 was tried and measured worse: docs/RESULTS.md, "Teacher checks".)
        return UNetConfig(kind="video", frames=16, height=24, width=40, channels=(32, 64, 96))
    if name == "appearance":
        return AppearanceConfig()
    if name == "motion":
        return MotionConfig()
    raise ValueError(
        f"unknown toy net {name!r}; allowed: image, multiview, video, appearance, motion"
    )


# --------------------------------------------------------------------------------------------
# shared helpers


def sinusoidal(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """(N,) float → (N, dim) sinusoidal embedding (the DDPM timestep embedding)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half
    )
    args = x.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def linear_alphas_cumprod(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """(T,) float32 ᾱ_t of the DDPM linear β schedule (computed in float64)."""
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).float()


def resize(images: Tensor, height: int, width: int, antialias: bool = False) -> Tensor:
    """(N, C, h, w) → (N, C, height, width), bilinear, differentiable; identity if same size."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(
        images, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias
    )


def camera_features(c2w: Tensor, fov: Tensor, views: int) -> Tensor:
    """Per-view camera features for the multiview UNet.

    c2w (N, 4, 4), fov (N,) degrees, N = B·views sample-major → (B, views, 8): cos/sin of the
    elevation, cos/sin of the absolute azimuth, cos/sin of the azimuth relative to the sample's
    first view, the apparent object scale d·tan(fov/2) (s of C.6) and log d.
    """
    pos = c2w[:, :3, 3].float()  # (N, 3)
    dist = pos.norm(dim=-1).clamp_min(1e-6)
    elev = torch.asin((pos[:, 2] / dist).clamp(-1.0, 1.0))
    azim = torch.atan2(pos[:, 1], pos[:, 0])
    rel = (azim.view(-1, views) - azim.view(-1, views)[:, :1]).reshape(-1)
    scale = dist * torch.tan(torch.deg2rad(fov.float().to(pos.device)) / 2.0)
    feats = torch.stack(
        [
            torch.cos(elev),
            torch.sin(elev),
            torch.cos(azim),
            torch.sin(azim),
            torch.cos(rel),
            torch.sin(rel),
            scale,
            torch.log(dist),
        ],
        dim=-1,
    )
    return feats.view(-1, views, 8)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


# --------------------------------------------------------------------------------------------
# UNet blocks


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the conditioning vector as scale/shift after the second norm."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        # x (N, C, H, W), cond (N, E)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(cond))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class TokenAttention(nn.Module):
    """Pre-LayerNorm multi-head attention on token groups (G, L, C), zero-initialised output,
    residual. ``context`` (G, S, C) makes it a cross-attention."""

    def __init__(self, channels: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim or channels, 2 * channels)
        self.out = _zero(nn.Linear(channels, channels))

    def forward(self, tokens: Tensor, context: Tensor | None = None) -> Tensor:
        g, n, c = tokens.shape
        h = self.norm(tokens)
        q = self.q(h)
        k, v = self.kv(h if context is None else context).chunk(2, dim=-1)
        split = lambda x: x.view(g, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        o = F.scaled_dot_product_attention(split(q), split(k), split(v))  # (G, heads, L, c/heads)
        return tokens + self.out(o.transpose(1, 2).reshape(g, n, c))


def _to_tokens(x: Tensor, frames: int, mode: str) -> Tensor:
    # x (B·F, C, H, W) → token groups
    n, c, h, w = x.shape
    b = n // frames
    t = x.view(b, frames, c, h * w)
    if mode == "spatial":  # (B·F, HW, C)
        return t.permute(0, 1, 3, 2).reshape(n, h * w, c)
    if mode == "joint":  # all views together: (B, F·HW, C)
        return t.permute(0, 1, 3, 2).reshape(b, frames * h * w, c)
    if mode == "temporal":  # per pixel over frames: (B·HW, F, C)
        return t.permute(0, 3, 1, 2).reshape(b * h * w, frames, c)
    raise ValueError(mode)


def _from_tokens(t: Tensor, frames: int, mode: str, shape: torch.Size) -> Tensor:
    n, c, h, w = shape
    b = n // frames
    if mode in ("spatial", "joint"):
        return t.view(b, frames, h * w, c).permute(0, 1, 3, 2).reshape(n, c, h, w)
    return t.view(b, h * w, frames, c).permute(0, 2, 3, 1).reshape(n, c, h, w)


class TemporalConv(nn.Module):
    """Residual 1D convolution over frames at every pixel (zero-initialised)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.conv = _zero(nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor, frames: int) -> Tensor:
        n, c, h, w = x.shape
        b = n // frames
        t = F.silu(self.norm(x)).view(b, frames, c, h * w).permute(0, 3, 2, 1)  # (B, HW, C, F)
        t = self.conv(t.reshape(b * h * w, c, frames))
        return x + t.view(b, h * w, c, frames).permute(0, 3, 2, 1).reshape(n, c, h, w)


class TemporalAttention(nn.Module):
    """Residual attention over the frames at every pixel, with learned frame positions
    (zero-initialised output: a new one leaves the net's function unchanged)."""

    def __init__(self, channels: int, frames: int, heads: int) -> None:
        super().__init__()
        self.attn = TokenAttention(channels, heads)
        self.frame_pos = nn.Parameter(torch.zeros(frames, channels))

    def forward(self, x: Tensor, frames: int) -> Tensor:
        t = _to_tokens(x, frames, "temporal") + self.frame_pos
        return _from_tokens(self.attn(t), frames, "temporal", x.shape)


class MidBlock(nn.Module):
    """Bottleneck: ResBlock, self-attention (per view, or across views for "multiview"),
    temporal attention ("video"), cross-attention to the 3 text tokens, ResBlock."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        c, e = cfg.channels[-1], cfg.emb_dim
        self.frames = cfg.frames
        self.mode = "joint" if cfg.kind == "multiview" else "spatial"
        self.res1 = ResBlock(c, c, e, cfg.groups)
        self.attn = TokenAttention(c, cfg.heads)
        self.temporal = TokenAttention(c, cfg.heads) if cfg.kind == "video" else None
        self.frame_pos = nn.Parameter(torch.zeros(cfg.frames, c)) if self.temporal else None
        self.cross = TokenAttention(c, cfg.heads, context_dim=cfg.tokens.dim)
        self.res2 = ResBlock(c, c, e, cfg.groups)

    def forward(self, x: Tensor, cond: Tensor, text: Tensor) -> Tensor:
        # x (B·F, C, h, w), cond (B·F, E), text (B·F, 3, D)
        x = self.res1(x, cond)
        x = _from_tokens(
            self.attn(_to_tokens(x, self.frames, self.mode)), self.frames, self.mode, x.shape
        )
        if self.temporal is not None:
            t = _to_tokens(x, self.frames, "temporal") + self.frame_pos
            x = _from_tokens(self.temporal(t), self.frames, "temporal", x.shape)
        t = self.cross(_to_tokens(x, 1, "spatial"), context=text)
        x = _from_tokens(t, 1, "spatial", x.shape)
        return self.res2(x, cond)


def _temporal(layer: nn.Module, h: Tensor, frames: int) -> Tensor:
    if isinstance(layer, nn.ModuleDict):
        return layer["attn"](layer["conv"](h, frames), frames)
    return layer(h, frames)


class ToyUNet(nn.Module):
    """ε-prediction UNet on (B, F, 3, H, W) pixels in [-1, 1]."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        tc, ch, e = cfg.tokens, cfg.channels, cfg.emb_dim
        self.colour_emb = nn.Embedding(tc.colours, tc.dim)
        self.shape_emb = nn.Embedding(tc.shapes, tc.dim)
        self.motion_emb = nn.Embedding(tc.motions, tc.dim)
        self.slot_emb = nn.Parameter(0.02 * torch.randn(3, tc.dim))
        self.time_mlp = _mlp(ch[0], e)
        self.text_mlp = _mlp(3 * tc.dim, e)
        self.camera_mlp = _mlp(cfg.camera_features, e) if cfg.kind == "multiview" else None
        self.fps_mlp = _mlp(ch[0], e) if cfg.kind == "video" else None
        self.register_buffer(
            "alphas_cumprod",
            linear_alphas_cumprod(cfg.timesteps, cfg.beta_start, cfg.beta_end),
            persistent=False,
        )

        video = cfg.kind == "video"
        levels = cfg.temporal_attention_levels if video else ()

        def temporal(i: int, c: int) -> nn.Module:
            if i not in levels:
                return TemporalConv(c, cfg.groups) if video else nn.Identity()
            return nn.ModuleDict(
                {
                    "conv": TemporalConv(c, cfg.groups),
                    "attn": TemporalAttention(c, cfg.frames, cfg.heads),
                }
            )

        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.down_tconv = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = ch[0]
        for i, c in enumerate(ch):
            self.down.append(ResBlock(c_prev, c, e, cfg.groups))
            self.down_tconv.append(temporal(i, c))
            if i < len(ch) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            c_prev = c
        self.mid = MidBlock(cfg)
        self.up = nn.ModuleList()
        self.up_tconv = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(ch))):
            self.up.append(ResBlock(c_prev + ch[i], ch[i], e, cfg.groups))
            self.up_tconv.append(temporal(i, ch[i]))
            c_prev = ch[i]
            if i > 0:
                self.upsample.append(nn.Conv2d(ch[i], ch[i - 1], 3, padding=1))
                c_prev = ch[i - 1]
        self.norm_out = nn.GroupNorm(min(cfg.groups, ch[0]), ch[0])
        self.conv_out = _zero(nn.Conv2d(ch[0], 3, 3, padding=1))

    # -- text ---------------------------------------------------------------------------------
    def embed_tokens(self, ids: Tensor) -> Tensor:
        """ids (P, 3) long (colour, shape, motion) → (P, 3, D) prompt embeddings."""
        ids = ids.to(self.slot_emb.device)
        toks = torch.stack(
            [self.colour_emb(ids[:, 0]), self.shape_emb(ids[:, 1]), self.motion_emb(ids[:, 2])],
            dim=1,
        )
        return toks + self.slot_emb

    def null_ids(self, n: int = 1) -> Tensor:
        return torch.tensor([self.cfg.tokens.null_ids] * n, dtype=torch.long)

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        t: Tensor,
        text: Tensor,
        cameras: Tensor | None = None,
        fps: Tensor | None = None,
    ) -> Tensor:
        """x (B, F, 3, H, W), t (B,) long, text (B, 3, D), cameras (B, F, 8) features
        (multiview), fps (B,) (video) → ε (B, F, 3, H, W)."""
        cfg = self.cfg
        b, f = x.shape[:2]
        if f != cfg.frames:
            raise ValueError(f"{cfg.kind} UNet expects {cfg.frames} frames, got {f}")
        cond = self.time_mlp(sinusoidal(t, cfg.channels[0])) + self.text_mlp(
            text.flatten(1)
        )  # (B, E)
        if self.fps_mlp is not None:
            if fps is None:
                raise ValueError("the video UNet needs fps (B,)")
            cond = cond + self.fps_mlp(sinusoidal(fps.float() * 100.0, cfg.channels[0]))
        cond = cond[:, None].expand(b, f, -1)  # (B, F, E)
        if self.camera_mlp is not None:
            if cameras is None:
                raise ValueError("the multiview UNet needs camera features (B, F, 8)")
            cond = cond + self.camera_mlp(cameras.float())
        cond = cond.reshape(b * f, -1)
        text_f = text[:, None].expand(b, f, *text.shape[1:]).reshape(b * f, *text.shape[1:])

        h = self.conv_in(x.reshape(b * f, *x.shape[2:]))  # (B·F, C0, H, W)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, cond)
            h = _temporal(self.down_tconv[i], h, f) if cfg.kind == "video" else h
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, cond, text_f)
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
            h = _temporal(self.up_tconv[j], h, f) if cfg.kind == "video" else h
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.view(b, f, *out.shape[1:])


# --------------------------------------------------------------------------------------------
# classifiers


class _ConvStack(nn.Module):
    """conv-GN-SiLU stages, each halving the resolution: (N, 3, H, W) → (N, C_last, H/2^k, W/2^k)."""

    def __init__(self, c_in: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, stride=2, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
            ]
            c_in = c
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AppearanceNet(nn.Module):
    """One view in [0, 1] (N, 3, H, W) at the configured size → (colour (N, 4), shape (N, 4))."""

    def __init__(self, cfg: AppearanceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = _ConvStack(3, cfg.channels)
        self.head = nn.Sequential(
            nn.Linear(cfg.channels[-1], 128), nn.SiLU(), nn.Linear(128, cfg.colours + cfg.shapes)
        )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(images * 2.0 - 1.0).mean(dim=(2, 3))  # (N, C)
        logits = self.head(h)
        return logits[:, : self.cfg.colours], logits[:, self.cfg.colours :]


class MotionNet(nn.Module):
    """A clip (N, F, 3, H, W) in [0, 1] + fps (N,) → motion logits (N, 4).

    Each frame and its difference to the next frame go through a shared 2D conv stack; 3D
    convolutions over (frames, y, x), conditioned on fps by scale/shift, then mean pooling."""

    def __init__(self, cfg: MotionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frame = _ConvStack(6, cfg.channels[:-1])
        c, c3 = cfg.channels[-2], cfg.channels[-1]
        self.fps = _mlp(32, 2 * c3)
        self.conv3d_1 = nn.Conv3d(c, c3, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, c3)
        self.conv3d_2 = nn.Conv3d(c3, c3, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, c3)
        self.head = nn.Sequential(nn.Linear(c3, 128), nn.SiLU(), nn.Linear(128, cfg.motions))

    def forward(self, frames: Tensor, fps: Tensor) -> Tensor:
        n, f = frames.shape[:2]
        x = frames * 2.0 - 1.0
        diff = torch.cat([x[:, 1:] - x[:, :-1], torch.zeros_like(x[:, :1])], dim=1)
        h = self.frame(torch.cat([x, diff], dim=2).flatten(0, 1))  # (N·F, C, h, w)
        h = h.view(n, f, *h.shape[1:]).transpose(1, 2)  # (N, C, F, h, w)
        scale, shift = self.fps(sinusoidal(fps.float() * 100.0, 32)).chunk(2, dim=-1)
        h = F.silu(self.norm1(self.conv3d_1(h)))
        h = h * (1.0 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]
        h = F.silu(self.norm2(self.conv3d_2(h)))
        return self.head(h.mean(dim=(2, 3, 4)))


# --------------------------------------------------------------------------------------------
# sampling (the teachers' sanity check; distillation never samples)


@torch.no_grad()
def ddim_sample(
    net: ToyUNet,
    text: Tensor,
    null_text: Tensor,
    guidance: float = 4.0,
    steps: int = 50,
    cameras: Tensor | None = None,
    fps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Deterministic DDIM (η = 0) with classifier-free guidance.

    text (B, 3, D), null_text (B, 3, D) → samples (B, F, 3, H, W) in [0, 1]."""
    cfg = net.cfg
    device = text.device
    b = text.shape[0]
    x = torch.randn(b, cfg.frames, 3, cfg.height, cfg.width, generator=generator).to(device)
    abar = net.alphas_cumprod.to(device)
    ts = torch.linspace(cfg.timesteps - 1, 0, steps).round().long().tolist()
    both = lambda z: None if z is None else torch.cat([z, z])  # noqa: E731
    for i, t in enumerate(ts):
        tt = torch.full((2 * b,), t, dtype=torch.long, device=device)
        eps_c, eps_u = (
            net(torch.cat([x, x]), tt, torch.cat([text, null_text]), both(cameras), both(fps))
            .float()
            .chunk(2)
        )
        eps = eps_u + guidance * (eps_c - eps_u)
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=device)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1.0, 1.0)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# checksum (the shipped weights must reproduce a stored output)


def reference_output(net: nn.Module) -> Tensor:
    """The net's float32 output on fixed pseudo-random inputs (seed 1234), computed on a CPU
    copy of the net."""
    g = torch.Generator().manual_seed(1234)
    net = copy.deepcopy(net).float().cpu().eval()
    with torch.no_grad():
        if isinstance(net, ToyUNet):
            c = net.cfg
            x = torch.randn(2, c.frames, 3, c.height, c.width, generator=g)
            text = net.embed_tokens(torch.tensor([[0, 1, 2], list(c.tokens.null_ids)]))
            cams = (
                torch.randn(2, c.frames, c.camera_features, generator=g)
                if c.kind == "multiview"
                else None
            )
            fps = torch.tensor([4.0, 8.0]) if c.kind == "video" else None
            return net(x, torch.tensor([100, 700]), text, cams, fps)
        if isinstance(net, AppearanceNet):
            return torch.cat(
                net(torch.rand(2, 3, net.cfg.height, net.cfg.width, generator=g)), dim=1
            )
        if isinstance(net, MotionNet):
            c = net.cfg
            return net(
                torch.rand(2, c.frames, 3, c.height, c.width, generator=g), torch.tensor([4.0, 8.0])
            )
    raise TypeError(f"no reference input for {type(net).__name__}")


def checksum(net: nn.Module) -> dict:
    """Summary of ``reference_output``: sum, sum of |·| and the first 8 values."""
    out = reference_output(net).double()
    return {
        "sum": float(out.sum()),
        "abs_sum": float(out.abs().sum()),
        "head": out.flatten()[:8].tolist(),
    }


# --------------------------------------------------------------------------------------------
# safetensors I/O (no pickle: the config is JSON in the metadata)

NET_CLASSES = {
    "unet": (ToyUNet, UNetConfig),
    "appearance": (AppearanceNet, AppearanceConfig),
    "motion": (MotionNet, MotionConfig),
}


def build_net(arch: str, config: dict) -> nn.Module:
    cls, cfg_cls = NET_CLASSES[arch]
    return cls(cfg_cls(**config))


def save_net(net: nn.Module, path: str | Path, arch: str, extra: dict | None = None) -> None:
    """Writes the weights (float32) with {format, arch, config, extra...} as metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {"format": FORMAT, "arch": arch, "config": json.dumps(asdict(net.cfg))}
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    save_file(tensors, str(path), metadata=meta)


def load_net(path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Reads a net written by ``save_net``; returns (net in eval mode, metadata dict)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a toy-world net (format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    net = build_net(meta["arch"], json.loads(meta["config"]))
    net.load_state_dict(tensors)
    return net.to(device).eval().requires_grad_(False), meta
