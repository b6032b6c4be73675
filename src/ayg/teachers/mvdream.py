"""The multiview teacher: MVDream ``sd-v2.1-base-4view`` on diffusers (AYG sec. 3.2, C.7-C.8).

MVDream (Shi et al., 2023, https://github.com/bytedance/MVDream) is Stable Diffusion 2.1 base
fine-tuned on renders of Objaverse to denoise 4 views of one object at once. Its UNet differs
from SD's in two places, both rebuilt here on a plain diffusers ``UNet2DConditionModel``:

* 3D self-attention: the first attention of every transformer block (``attn1``) attends over
  the tokens of all views of a sample, (B·V, L, C) -> (B, V·L, C) -> attention -> (B·V, L, C)
  (:class:`MultiViewAttnProcessor`; switchable for tests and ablations). Cross-attention to the
  text and everything else stays per view.
* a camera embedding added to the timestep embedding: the 4×4 camera-to-world matrix flattened
  to 16 numbers -> Linear(16, D) - SiLU - Linear(D, D). diffusers' ``class_embed_type=
  "projection"`` with ``projection_class_embeddings_input_dim=16`` builds exactly that MLP as
  ``class_embedding`` and adds it to the timestep embedding, so MVDream's ``camera_embed.0/.2``
  load into ``class_embedding.linear_1/_2`` unchanged.

AYG uses MVDream only in the 3D stage (sec. 3.2, eq. 22, table 3), on the 256×256 renders of
C.8, with its negative prompt (D.3); the timestep schedule is in ``ayg.distill``.

Camera convention (:func:`mvdream_cameras`). MVDream conditions on c2w in a z-up ("Blender")
world with OpenGL camera axes (x right, y up, z backwards), the camera position scaled to unit
length (``camera_utils.normalize_camera``). Our ``Cameras`` (docs/ARCHITECTURE.md, Conventions) live in the same z-up
world but use OpenCV axes (x right, y down, z forward), so the conversion flips the camera's y
and z columns and normalises the position; the world is not touched. In MVDream's angles
(``camera_utils.get_camera``, azimuth measured from -y towards +x), our camera at (elevation e,
azimuth a) is MVDream's (e, a + 90°): our front view (azimuth 0, on +x) is MVDream's azimuth 90,
the default first view of its ``t2i.py``. This is also the matrix threestudio's MVDream guidance
feeds (its c2w is z-up with OpenGL axes).

Checkpoints. (1) The official file ``MVDream/MVDream:sd-v2.1-base-4view.pt`` (ldm key layout:
``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.model.*`` = OpenCLIP
ViT-H/14 text tower) is converted on load (:func:`convert_ldm_unet`, :func:`convert_ldm_vae`,
:func:`convert_open_clip_text`), its shapes read off the tensors; every tensor must land, or
loading fails. Like SD 2.x, MVDream conditions on OpenCLIP's penultimate layer followed by
``ln_final``: the CLIPTextModel built here has one layer fewer than OpenCLIP, so its
``last_hidden_state`` is that output. The tokenizer is SD 2.1's (the same BPE; pads with id 0
like ``open_clip.tokenize``). (2) diffusers ports (a directory or Hub repo with ``unet/ vae/
text_encoder/ tokenizer/``): the UNet either in MVDream's own layout with an ldm-style config
(ashawkey/mvdream-sd2.1-diffusers) or as a diffusers UNet with the camera MLP in ``unet``
(``class_embedding``) or in ``camera_proj/``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ayg.teachers.hub import (
    TeacherNotAvailable,
    fetch_hint,
    hub_file,
    load_component,
    safe_torch_load,
)
from ayg.teachers.stable_diffusion import LatentTeacher, default_dtype

if TYPE_CHECKING:
    from ayg.cameras import Cameras
    from ayg.distill import Conditioning

DEFAULT_MODEL_ID = "MVDream/MVDream"
DEFAULT_FILENAME = "sd-v2.1-base-4view.pt"
DEFAULT_TOKENIZER_ID = "stabilityai/stable-diffusion-2-1-base"  # subfolder "tokenizer"
VIEWS = 4

# ----------------------------------------------------------------------------------------------
# Architecture


@dataclass(frozen=True)
class MVDreamArch:
    """Shapes of MVDream's model; the defaults are ``configs/sd-v2-base.yaml`` (SD 2.1 base UNet
    + ``camera_dim`` 16, the SD VAE, OpenCLIP ViT-H/14 text tower). Tests shrink them."""

    # UNet (ldm MultiViewUNetModel parameters)
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    camera_dim: int = 16
    latent_channels: int = 4
    norm_num_groups: int = 32  # ldm's GroupNorm32, UNet and VAE
    # VAE (first_stage_config.ddconfig)
    vae_ch: int = 128
    vae_ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    vae_num_res_blocks: int = 2
    scale_factor: float = 0.18215
    image_size: int = 256  # C.8: MVDream's encoder takes 256×256 renders
    # OpenCLIP text tower (layer "penultimate": text_layers - 1 layers are built)
    text_width: int = 1024
    text_layers: int = 24
    text_heads: int = 16
    text_vocab: int = 49408
    text_context: int = 77
    # noise schedule (ldm "linear" = diffusers "scaled_linear")
    linear_start: float = 0.00085
    linear_end: float = 0.012
    timesteps: int = 1000

    def has_attention(self, level: int) -> bool:
        return 2**level in self.attention_resolutions

    def unet_config(self) -> dict[str, Any]:
        """``UNet2DConditionModel`` kwargs equivalent to MVDream's UNet."""
        levels = range(len(self.channel_mult))
        channels = [self.model_channels * m for m in self.channel_mult]
        for c in channels:
            if c % self.num_head_channels:
                raise ValueError(
                    f"channels {c} not divisible by num_head_channels {self.num_head_channels}"
                )
        return dict(
            sample_size=self.image_size // 2 ** (len(self.vae_ch_mult) - 1),
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            flip_sin_to_cos=True,  # ldm timestep_embedding: [cos, sin]
            freq_shift=0,
            down_block_types=[
                "CrossAttnDownBlock2D" if self.has_attention(lv) else "DownBlock2D" for lv in levels
            ],
            up_block_types=[
                "CrossAttnUpBlock2D" if self.has_attention(lv) else "UpBlock2D"
                for lv in reversed(levels)
            ],
            block_out_channels=channels,
            layers_per_block=self.num_res_blocks,
            transformer_layers_per_block=self.transformer_depth,
            # diffusers' historical name: this is the number of heads per level
            attention_head_dim=[c // self.num_head_channels for c in channels],
            cross_attention_dim=self.context_dim,
            use_linear_projection=True,
            norm_num_groups=self.norm_num_groups,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=self.camera_dim,
        )

    def vae_config(self) -> dict[str, Any]:
        n = len(self.vae_ch_mult)
        return dict(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * n,
            up_block_types=["UpDecoderBlock2D"] * n,
            block_out_channels=[self.vae_ch * m for m in self.vae_ch_mult],
            layers_per_block=self.vae_num_res_blocks,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=self.image_size,
            scaling_factor=self.scale_factor,
        )

    def text_config(self) -> Any:
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=self.text_vocab,
            hidden_size=self.text_width,
            intermediate_size=4 * self.text_width,
            num_hidden_layers=self.text_layers - 1,  # penultimate layer (+ final LayerNorm)
            num_attention_heads=self.text_heads,
            max_position_embeddings=self.text_context,
            hidden_act="gelu",  # OpenCLIP ViT-H uses exact GELU, not quick_gelu
            layer_norm_eps=1e-5,
            projection_dim=self.text_width,
            bos_token_id=self.text_vocab - 2,
            eos_token_id=self.text_vocab - 1,
            pad_token_id=0,
        )

    @classmethod
    def from_ldm_unet_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> MVDreamArch:
        """From an ldm-style UNet config (MVDream's yaml ``unet_config.params``, or the
        ``unet/config.json`` of ports that keep MVDream's module layout)."""
        fields = dict(
            model_channels=int(cfg["model_channels"]),
            channel_mult=tuple(int(m) for m in cfg["channel_mult"]),
            num_res_blocks=int(cfg["num_res_blocks"]),
            attention_resolutions=tuple(int(r) for r in cfg["attention_resolutions"]),
            num_head_channels=int(cfg.get("num_head_channels", 64)),
            transformer_depth=int(cfg.get("transformer_depth", 1)),
            context_dim=int(cfg["context_dim"]),
            camera_dim=int(cfg.get("camera_dim") or 16),
            latent_channels=int(cfg.get("in_channels", 4)),
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_checkpoint_shapes(cls, state: Mapping[str, Tensor], **overrides: Any) -> MVDreamArch:
        """The shapes of an official (ldm-layout) checkpoint, read off its tensors: the UNet's
        width, levels, residual blocks per level, attention levels, transformer depth, text and
        camera widths; the VAE's widths and blocks; the text tower's width, depth, vocabulary
        and context. What weights do not store keeps MVDream's value: 64 channels per attention
        head (UNet and OpenCLIP), GroupNorm32, the VAE scale, 256×256 images, the schedule."""
        u, f, c = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."

        def shape(key: str) -> tuple[int, ...]:
            if key not in state:
                raise ValueError(
                    f"not an MVDream checkpoint in the official ldm layout: no tensor {key!r}"
                )
            return tuple(state[key].shape)

        model_channels, latent_channels = shape(u + "input_blocks.0.0.weight")[:2]
        # input blocks: residual blocks (with a transformer on attention levels) until a
        # downsampler closes the level; the last level has none
        mult: list[int] = []
        attention_levels: list[int] = []
        blocks = [0]
        i = 1
        while True:
            if f"{u}input_blocks.{i}.0.op.weight" in state:
                blocks.append(0)
                i += 1
                continue
            out = f"{u}input_blocks.{i}.0.out_layers.3.weight"
            if out not in state:
                break
            level = len(blocks) - 1
            if blocks[-1] == 0:
                mult.append(shape(out)[0] // model_channels)
                if f"{u}input_blocks.{i}.1.proj_in.weight" in state:
                    attention_levels.append(level)
            blocks[-1] += 1
            i += 1
        if not mult or len(set(blocks)) != 1:
            raise ValueError(
                f"MVDream checkpoint: residual blocks per UNet level {blocks} are not all equal"
            )
        mid = f"{u}middle_block.1.transformer_blocks."
        depth = 0
        while f"{mid}{depth}.attn1.to_q.weight" in state:
            depth += 1
        vae_ch = shape(f + "encoder.conv_in.weight")[0]
        vae_mult = []
        while f"{f}encoder.down.{len(vae_mult)}.block.0.conv1.weight" in state:
            key = f"{f}encoder.down.{len(vae_mult)}.block.0.conv1.weight"
            vae_mult.append(shape(key)[0] // vae_ch)
        vae_blocks = 0
        while f"{f}encoder.down.0.block.{vae_blocks}.conv1.weight" in state:
            vae_blocks += 1
        text_vocab, text_width = shape(c + "token_embedding.weight")
        text_layers = 0
        while f"{c}transformer.resblocks.{text_layers}.ln_1.weight" in state:
            text_layers += 1
        fields = dict(
            model_channels=model_channels,
            channel_mult=tuple(mult),
            num_res_blocks=blocks[0],
            attention_resolutions=tuple(sorted((2**lv for lv in attention_levels), reverse=True)),
            transformer_depth=depth,
            context_dim=shape(mid + "0.attn2.to_k.weight")[1],
            camera_dim=shape(u + "camera_embed.0.weight")[1],
            latent_channels=latent_channels,
            vae_ch=vae_ch,
            vae_ch_mult=tuple(vae_mult),
            vae_num_res_blocks=vae_blocks,
            text_width=text_width,
            text_layers=text_layers,
            text_heads=max(text_width // 64, 1),
            text_vocab=text_vocab,
            text_context=shape(c + "positional_embedding")[0],
        )
        fields.update(overrides)
        return cls(**fields)

    def alphas_cumprod(self) -> Tensor:
        """(T,) float32 ᾱ_t of MVDream's schedule (betas linear in √β, computed in float64)."""
        betas = (
            torch.linspace(
                math.sqrt(self.linear_start),
                math.sqrt(self.linear_end),
                self.timesteps,
                dtype=torch.float64,
            )
            ** 2
        )
        return torch.cumprod(1.0 - betas, dim=0).float()


# ----------------------------------------------------------------------------------------------
# Cameras


def mvdream_cameras(cameras: Cameras) -> Tensor:
    """(C, 16) MVDream camera conditioning of our cameras (see the module docstring).

    c2w (z-up world, OpenCV axes right/down/forward) -> (z-up world, OpenGL axes right/up/back):
    negate the y and z columns; then the position is scaled onto the unit sphere, as
    MVDream's ``normalize_camera`` does, and the row-major 4×4 matrix is flattened.
    """
    c2w = cameras.c2w.clone().float()  # (C, 4, 4)
    c2w[:, :3, 1:3] = -c2w[:, :3, 1:3]
    pos = c2w[:, :3, 3]
    c2w[:, :3, 3] = pos / (pos.norm(dim=-1, keepdim=True) + 1e-8)
    return c2w.reshape(-1, 16)


# ----------------------------------------------------------------------------------------------
# Multiview self-attention


class MultiViewAttnProcessor:
    """diffusers attention processor for ``attn1``: self-attention over the tokens of all
    ``num_views`` views of a sample (MVDream's ``BasicTransformerBlock3D``). Rows of the batch
    are sample-major (b0v0, b0v1, ..., b1v0, ...). With ``enabled = False`` or one view it is
    plain per-view self-attention (SD's)."""

    def __init__(self, num_views: int = VIEWS, enabled: bool = True) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.num_views = num_views
        self.enabled = enabled
        self._inner = AttnProcessor2_0()

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        v = self.num_views if self.enabled else 1
        if v == 1:
            return self._inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if (
            encoder_hidden_states is not None
            or attention_mask is not None
            or hidden_states.ndim != 3
        ):
            raise ValueError(
                "multiview attention is self-attention on (B·V, L, C) tokens without a mask"
            )
        bv, n, c = hidden_states.shape  # (B·V, L, C)
        if bv % v:
            raise ValueError(f"batch {bv} is not a multiple of the {v} views")
        # The reshape is exact because attn1 has no residual / group norm of its own (the
        # transformer block adds the residual outside).
        joint = hidden_states.reshape(bv // v, v * n, c)  # (B, V·L, C)
        out = self._inner(attn, joint, None, None, temb)  # (B, V·L, C)
        return out.reshape(bv, n, c)


def install_multiview_attention(unet: nn.Module, num_views: int = VIEWS) -> MultiViewAttnProcessor:
    """Replace the ``attn1`` processor of every transformer block of a diffusers UNet by one
    shared :class:`MultiViewAttnProcessor` (returned, to switch it on and off)."""
    proc = MultiViewAttnProcessor(num_views)
    procs = dict(unet.attn_processors)
    n = 0
    for name in procs:
        if name.endswith("attn1.processor"):
            procs[name] = proc
            n += 1
    if n == 0:
        raise ValueError("the UNet has no self-attention (attn1) layers to make multiview")
    unet.set_attn_processor(procs)
    return proc


# ----------------------------------------------------------------------------------------------
# ldm -> diffusers key conversion

_UNET_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

# ldm module path -> (diffusers module path, renames inside that module or None)
_Table = dict[str, tuple[str, dict[str, str] | None]]


def unet_key_table(arch: MVDreamArch) -> _Table:
    """Module-level map of MVDream's UNet (``openaimodel.MultiViewUNetModel``) to diffusers'
    ``UNet2DConditionModel``. Transformer internals (norm, proj_in, transformer_blocks.*.attn1/
    attn2/ff/norm1-3, proj_out) carry the same names in both."""
    t: _Table = {
        "time_embed.0": ("time_embedding.linear_1", None),
        "time_embed.2": ("time_embedding.linear_2", None),
        "camera_embed.0": ("class_embedding.linear_1", None),
        "camera_embed.2": ("class_embedding.linear_2", None),
        "input_blocks.0.0": ("conv_in", None),
        "middle_block.0": ("mid_block.resnets.0", _UNET_RESNET),
        "middle_block.1": ("mid_block.attentions.0", None),
        "middle_block.2": ("mid_block.resnets.1", _UNET_RESNET),
        "out.0": ("conv_norm_out", None),
        "out.2": ("conv_out", None),
    }
    n_levels, n_res = len(arch.channel_mult), arch.num_res_blocks
    i = 1
    for level in range(n_levels):
        for j in range(n_res):
            t[f"input_blocks.{i}.0"] = (f"down_blocks.{level}.resnets.{j}", _UNET_RESNET)
            if arch.has_attention(level):
                t[f"input_blocks.{i}.1"] = (f"down_blocks.{level}.attentions.{j}", None)
            i += 1
        if level != n_levels - 1:
            t[f"input_blocks.{i}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", None)
            i += 1
    i = 0
    for up, level in enumerate(reversed(range(n_levels))):
        for j in range(n_res + 1):
            t[f"output_blocks.{i}.0"] = (f"up_blocks.{up}.resnets.{j}", _UNET_RESNET)
            k = 1
            if arch.has_attention(level):
                t[f"output_blocks.{i}.1"] = (f"up_blocks.{up}.attentions.{j}", None)
                k = 2
            if level != 0 and j == n_res:
                t[f"output_blocks.{i}.{k}.conv"] = (f"up_blocks.{up}.upsamplers.0.conv", None)
            i += 1
    return t


def vae_key_table(arch: MVDreamArch) -> _Table:
    """Module-level map of ldm's ``AutoencoderKL`` (Encoder/Decoder) to diffusers'. ldm numbers
    the decoder's ``up`` levels from the lowest resolution upwards, diffusers the other way."""
    t: _Table = {"quant_conv": ("quant_conv", None), "post_quant_conv": ("post_quant_conv", None)}
    for side in ("encoder", "decoder"):
        t[f"{side}.conv_in"] = (f"{side}.conv_in", None)
        t[f"{side}.conv_out"] = (f"{side}.conv_out", None)
        t[f"{side}.norm_out"] = (f"{side}.conv_norm_out", None)
        t[f"{side}.mid.block_1"] = (f"{side}.mid_block.resnets.0", _VAE_RESNET)
        t[f"{side}.mid.block_2"] = (f"{side}.mid_block.resnets.1", _VAE_RESNET)
        t[f"{side}.mid.attn_1"] = (f"{side}.mid_block.attentions.0", _VAE_ATTN)
    n = len(arch.vae_ch_mult)
    for i in range(n):
        for j in range(arch.vae_num_res_blocks):
            t[f"encoder.down.{i}.block.{j}"] = (f"encoder.down_blocks.{i}.resnets.{j}", _VAE_RESNET)
        if i != n - 1:
            t[f"encoder.down.{i}.downsample.conv"] = (
                f"encoder.down_blocks.{i}.downsamplers.0.conv",
                None,
            )
        up = n - 1 - i
        for j in range(arch.vae_num_res_blocks + 1):
            t[f"decoder.up.{i}.block.{j}"] = (f"decoder.up_blocks.{up}.resnets.{j}", _VAE_RESNET)
        if i != 0:
            t[f"decoder.up.{i}.upsample.conv"] = (f"decoder.up_blocks.{up}.upsamplers.0.conv", None)
    return t


def _rename(
    state: Mapping[str, Tensor], prefix: str, table: _Table, what: str
) -> dict[str, Tensor]:
    """Every ``prefix``-key of ``state`` renamed through ``table`` (longest module path wins).
    A key that no entry covers is an error: nothing of the checkpoint is silently dropped."""
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    depth = max(k.count(".") + 1 for k in table)
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split(".")
        for n in range(min(depth, len(parts) - 1), 0, -1):
            hit = table.get(".".join(parts[:n]))
            if hit is not None:
                break
        else:
            unmapped.append(key)
            continue
        target, inner = hit
        rest = parts[n:]
        if inner:
            for m in (2, 1):
                sub = inner.get(".".join(rest[:m]))
                if sub is not None and len(rest) > m:
                    rest = sub.split(".") + rest[m:]
                    break
        out[f"{target}.{'.'.join(rest)}"] = value
    if unmapped:
        raise KeyError(
            f"{len(unmapped)} {what} tensors have no diffusers counterpart, e.g. {unmapped[:3]}"
        )
    if not out:
        raise KeyError(f"the checkpoint has no {what} tensors under {prefix!r}")
    return out


def convert_ldm_unet(
    state: Mapping[str, Tensor], arch: MVDreamArch, prefix: str = "model.diffusion_model."
) -> dict[str, Tensor]:
    """MVDream's UNet tensors (ldm names under ``prefix``) -> ``UNet2DConditionModel`` names
    (camera MLP -> ``class_embedding``)."""
    return _rename(state, prefix, unet_key_table(arch), "UNet")


def convert_ldm_vae(
    state: Mapping[str, Tensor], arch: MVDreamArch, prefix: str = "first_stage_model."
) -> dict[str, Tensor]:
    """ldm autoencoder tensors -> diffusers ``AutoencoderKL``; the mid attention's 1×1 convs
    become linear weights."""
    out = _rename(state, prefix, vae_key_table(arch), "VAE")
    for key, value in out.items():
        if ".attentions." in key and key.endswith("weight") and value.ndim == 4:
            out[key] = value[:, :, 0, 0]
    return out


# OpenCLIP keys that MVDream's penultimate-layer text conditioning never reads
_OPEN_CLIP_UNUSED = ("text_projection", "logit_scale", "attn_mask")


def convert_open_clip_text(
    state: Mapping[str, Tensor], arch: MVDreamArch, prefix: str = "cond_stage_model.model."
) -> dict[str, Tensor]:
    """OpenCLIP text tower -> transformers ``CLIPTextModel`` (no ``text_model.`` prefix; see
    :func:`_fit_prefix`). The fused ``attn.in_proj_*`` rows are [q; k; v]. The last resblock
    is left out: MVDream (like SD 2.x) reads the penultimate layer."""
    d = arch.text_width
    last = arch.text_layers - 1
    top = {
        "token_embedding.weight": "embeddings.token_embedding.weight",
        "positional_embedding": "embeddings.position_embedding.weight",
        "ln_final.weight": "final_layer_norm.weight",
        "ln_final.bias": "final_layer_norm.bias",
    }
    block = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in top:
            out[top[name]] = value
            continue
        if name in _OPEN_CLIP_UNUSED or name.startswith("visual."):
            continue
        parts = name.split(".")
        if parts[:2] != ["transformer", "resblocks"] or len(parts) < 5:
            unmapped.append(key)
            continue
        layer, rest = int(parts[2]), ".".join(parts[3:])
        if layer == last:
            continue
        if layer > last:
            raise KeyError(
                f"text tower has a resblock {layer} but the arch says {arch.text_layers} layers"
            )
        base = f"encoder.layers.{layer}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]  # weight | bias
            for j, qkv in enumerate(("q", "k", "v")):
                out[f"{base}self_attn.{qkv}_proj.{kind}"] = value[j * d : (j + 1) * d]
            continue
        module, leaf = rest.rsplit(".", 1)
        if module not in block:
            unmapped.append(key)
            continue
        out[f"{base}{block[module]}.{leaf}"] = value
    if unmapped:
        raise KeyError(
            f"{len(unmapped)} text-encoder tensors have no counterpart, e.g. {unmapped[:3]}"
        )
    if not out:
        raise KeyError(f"the checkpoint has no OpenCLIP text tensors under {prefix!r}")
    return out


def _fit_prefix(state: dict[str, Tensor], module: nn.Module) -> dict[str, Tensor]:
    """Add ``text_model.`` when the installed transformers nests the text transformer there."""
    if any(k.startswith("text_model.") for k in module.state_dict()):
        return {f"text_model.{k}": v for k, v in state.items()}
    return state


def _build_loaded(factory: Any, state: Mapping[str, Tensor]) -> nn.Module:
    """``factory()`` with ``state`` loaded strictly (every weight present, none left over).
    Built on the meta device so that a real-size model is not randomly initialised first."""
    with torch.device("meta"):
        module = factory()
    module.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        module = factory()  # a non-persistent buffer stayed on meta: build it normally
        module.load_state_dict(state, strict=True)
    return module


def _alphas_from_state(state: Mapping[str, Tensor], arch: MVDreamArch) -> Tensor:
    """ᾱ_t stored in the checkpoint (ldm registers it as a buffer), else the arch's schedule."""
    stored = state.get("alphas_cumprod")
    if stored is not None and stored.ndim == 1:
        return stored.detach().float().clone()
    return arch.alphas_cumprod()


# ----------------------------------------------------------------------------------------------
# A tokenizer for random-weight teachers


class ByteTokenizer:
    """Stand-in for the CLIP tokenizer of random-weight teachers (tests, benchmarks): UTF-8
    bytes between start/end ids, padded with 0 to ``model_max_length``. Same call signature as
    a transformers tokenizer as far as :class:`PromptCache` uses it."""

    def __init__(self, vocab_size: int, model_max_length: int = 77) -> None:
        if vocab_size < 4 or model_max_length < 2:
            raise ValueError("ByteTokenizer needs vocab_size >= 4 and model_max_length >= 2")
        self.vocab_size = vocab_size
        self.model_max_length = model_max_length
        self.bos, self.eos = vocab_size - 2, vocab_size - 1

    def __call__(self, prompts: Sequence[str], max_length: int | None = None, **_: Any) -> Any:
        n = max_length or self.model_max_length
        ids = torch.zeros(len(prompts), n, dtype=torch.long)
        for row, p in enumerate(prompts):
            body = [1 + b % (self.vocab_size - 3) for b in p.encode("utf-8")][: n - 2]
            toks = [self.bos, *body, self.eos]
            ids[row, : len(toks)] = torch.tensor(toks)

        return SimpleNamespace(input_ids=ids)


# ----------------------------------------------------------------------------------------------
# The teacher


class MVDreamTeacher(LatentTeacher):
    """Multiview teacher (F = V = 4) implementing ``ayg.distill.Teacher``.

    ``unet`` is a diffusers ``UNet2DConditionModel`` (camera MLP as ``class_embedding``) whose
    ``attn1`` processors are multiview; ``cross_view`` switches them between 3D and per-view
    attention. Loading, the prompt cache, the frame encoding and moving between devices are
    ``LatentTeacher``'s (the same SD autoencoder and OpenCLIP text tower); the renders are
    encoded at ``image_size``² (C.8: 256).
    """

    kind = "multiview"
    frames = VIEWS

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        alphas_cumprod: Tensor,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype | None = None,
        image_size: int = 256,
        sample_latents: bool = True,
        cross_view: bool = True,
        encoder_backward: str = "keep",
        encode_chunk: int | None = None,
    ) -> None:
        if getattr(unet.config, "class_embed_type", None) != "projection":
            raise ValueError(
                "the MVDream UNet needs class_embed_type='projection' (the camera MLP)"
            )
        super().__init__(
            unet,
            vae,
            text_encoder,
            tokenizer,
            alphas_cumprod,
            device=device,
            dtype=dtype,
            vae_dtype=vae_dtype,
            resolution=(image_size, image_size),
            sample_latents=sample_latents,
            encode_chunk=encode_chunk,
            encoder_backward=encoder_backward,
        )
        self.image_size = image_size
        self.mv_attention = install_multiview_attention(self.unet)
        self.mv_attention.enabled = cross_view

    @property
    def cross_view(self) -> bool:
        """Whether self-attention spans the views (MVDream) or stays per view (SD)."""
        return self.mv_attention.enabled

    @cross_view.setter
    def cross_view(self, on: bool) -> None:
        self.mv_attention.enabled = bool(on)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        arch: MVDreamArch | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        tokenizer: Any = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> MVDreamTeacher:
        """Random weights of the given shapes (benchmarks with the real-size default, tests with
        tiny ones). Without a tokenizer a :class:`ByteTokenizer` stands in."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        arch = arch or MVDreamArch()
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)  # module init draws from the global RNGs: keep that local
            unet = UNet2DConditionModel(**arch.unet_config())
            vae = AutoencoderKL(**arch.vae_config())
            text_encoder = CLIPTextModel(arch.text_config())
        tokenizer = tokenizer or ByteTokenizer(arch.text_vocab, arch.text_context)
        kwargs.setdefault("image_size", arch.image_size)
        return cls(
            unet, vae, text_encoder, tokenizer, arch.alphas_cumprod(), device, dtype, **kwargs
        )

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Tensor],
        arch: MVDreamArch | None = None,
        tokenizer: Any = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> MVDreamTeacher:
        """From a state dict in the official ldm layout (see the module docstring); without
        ``arch``, the shapes are read off the tensors (:meth:`MVDreamArch.from_checkpoint_shapes`).
        Without a tokenizer, SD 2.1's is loaded from the Hugging Face cache."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        arch = arch or MVDreamArch.from_checkpoint_shapes(state)
        unet = _build_loaded(
            lambda: UNet2DConditionModel(**arch.unet_config()), convert_ldm_unet(state, arch)
        )
        vae = _build_loaded(
            lambda: AutoencoderKL(**arch.vae_config()), convert_ldm_vae(state, arch)
        )
        text = convert_open_clip_text(state, arch)
        text_encoder = CLIPTextModel(arch.text_config())
        text_encoder.load_state_dict(_fit_prefix(text, text_encoder), strict=True)
        tokenizer = tokenizer or sd_tokenizer()
        kwargs.setdefault("image_size", arch.image_size)
        return cls(
            unet,
            vae,
            text_encoder,
            tokenizer,
            _alphas_from_state(state, arch),
            device,
            dtype,
            **kwargs,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        arch: MVDreamArch | None = None,
        tokenizer: Any = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> MVDreamTeacher:
        """From an official checkpoint file (``.pt``/``.ckpt`` loaded with ``weights_only=True``,
        or ``.safetensors``)."""
        state = safe_torch_load(path)
        return cls.from_state_dict(state, arch, tokenizer, device, dtype, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = DEFAULT_MODEL_ID,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        filename: str = DEFAULT_FILENAME,
        tokenizer_id: str = DEFAULT_TOKENIZER_ID,
        arch: MVDreamArch | None = None,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> MVDreamTeacher:
        """The official checkpoint ``model_id:filename`` (a Hub id, a local directory or the
        file itself) with SD 2.1's tokenizer, or a diffusers-format port (a directory or Hub
        repo with ``unet/config.json``). ``revision`` pins ``model_id`` (not the tokenizer's
        repository). Offline and missing -> ``TeacherNotAvailable``."""
        dtype = dtype or default_dtype(device)
        hub = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision)
        local = Path(model_id)
        if local.is_file():
            ckpt = local
        elif local.is_dir() and (local / "unet" / "config.json").is_file():
            return cls.from_diffusers(model_id, device, dtype, tokenizer=tokenizer, **hub, **kwargs)
        else:
            try:
                ckpt = hub_file(model_id, filename, **hub)
            except TeacherNotAvailable as missing:
                if local.is_dir():
                    raise
                try:  # a diffusers-format port on the Hub?
                    hub_file(model_id, "unet/config.json", **hub)
                except TeacherNotAvailable:
                    raise TeacherNotAvailable(
                        f"MVDream checkpoint {model_id!r} ({filename}) is not available in the "
                        "Hugging Face cache; fetch it once while online with "
                        f"`hf download {model_id} {filename}` (and the tokenizer: "
                        f"`hf download {tokenizer_id} --include 'tokenizer/*'`)"
                    ) from missing
                return cls.from_diffusers(
                    model_id, device, dtype, tokenizer=tokenizer, **hub, **kwargs
                )
        tokenizer = tokenizer or sd_tokenizer(
            tokenizer_id, local_files_only=local_files_only, cache_dir=cache_dir
        )
        return cls.from_checkpoint(ckpt, arch, tokenizer, device, dtype, **kwargs)

    @classmethod
    def from_diffusers(
        cls,
        model_id: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        tokenizer: Any = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> MVDreamTeacher:
        """A diffusers-format port: ``unet/`` (MVDream layout with an ldm-style config, or a
        diffusers UNet with the camera MLP as ``class_embedding`` or in ``camera_proj/``),
        ``vae/``, ``text_encoder/`` (SD 2-style: its last hidden state is the conditioning),
        ``tokenizer/`` and optionally ``scheduler/``."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        hub = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision)
        unet_cfg = json.loads(hub_file(model_id, "unet/config.json", **hub).read_text())
        unet_state = _load_weights(model_id, "unet", hub)
        if "model_channels" in unet_cfg:  # MVDream's own module layout
            arch = MVDreamArch.from_ldm_unet_config(unet_cfg)
            config = arch.unet_config()
            state = convert_ldm_unet(unet_state, arch, prefix="")
        else:
            config = {k: v for k, v in unet_cfg.items() if not k.startswith("_")}
            state = dict(unet_state)
            if config.get("class_embed_type") != "projection":
                camera = _load_weights(model_id, "camera_proj", hub)  # linear_1 / linear_2
                config["class_embed_type"] = "projection"
                config["projection_class_embeddings_input_dim"] = int(
                    camera["linear_1.weight"].shape[1]
                )
                state.update({f"class_embedding.{k}": v for k, v in camera.items()})
        unet = _build_loaded(lambda: UNet2DConditionModel.from_config(config), state)
        vae = load_component(AutoencoderKL.from_pretrained, model_id, "vae", **hub)
        text_encoder = load_component(
            CLIPTextModel.from_pretrained, model_id, "text_encoder", **hub
        )
        if tokenizer is None:
            tokenizer = load_component(CLIPTokenizer.from_pretrained, model_id, "tokenizer", **hub)
        alphas = MVDreamArch().alphas_cumprod()
        try:
            sched = json.loads(
                hub_file(model_id, "scheduler/scheduler_config.json", **hub).read_text()
            )
            alphas = MVDreamArch(
                linear_start=sched.get("beta_start", 0.00085),
                linear_end=sched.get("beta_end", 0.012),
                timesteps=sched.get("num_train_timesteps", 1000),
            ).alphas_cumprod()
        except TeacherNotAvailable:
            pass
        kwargs.setdefault("image_size", MVDreamArch.image_size)  # 256: MVDream's resolution (C.8)
        return cls(unet, vae, text_encoder, tokenizer, alphas, device, dtype, **kwargs)

    # -- protocol -------------------------------------------------------------------------------

    def encode(
        self,
        images: Tensor,
        grad_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """images (B, V, 3, H, W) in [0, 1] -> latents (B, V, 4, S/8, S/8) float32 at S =
        ``image_size`` (256, C.8; other sizes are resized bilinearly), differentiable."""
        self._ensure_active()
        return self._encode_clips(images.to(self.device), grad_frames, generator)

    def predict_noise(
        self, noisy: Tensor, t: Tensor, emb: Tensor, cond: Conditioning | None = None
    ) -> Tensor:
        """noisy (B', V, c, h, w), t (B',), emb (B', L, D), ``cond.cameras`` B'·V cameras
        (sample-major) -> ε̂ (B', V, c, h, w) float32. The V views of a sample share t and text
        and attend to each other."""
        self._ensure_active()
        if noisy.ndim != 5:
            raise ValueError(f"noisy must have shape (B, V, c, h, w), got {tuple(noisy.shape)}")
        b, v = noisy.shape[:2]
        if t.shape != (b,) or emb.ndim != 3 or emb.shape[0] != b:
            raise ValueError(
                f"t must be ({b},) and emb ({b}, L, D), got {tuple(t.shape)} and {tuple(emb.shape)}"
            )
        if cond is None or cond.cameras is None:
            raise ValueError(
                "the multiview teacher needs cameras: predict_noise(..., Conditioning(cameras=...))"
            )
        if len(cond.cameras) != b * v:
            raise ValueError(
                f"expected {b}·{v} = {b * v} cameras (sample-major), got {len(cond.cameras)}"
            )
        dev = dict(device=self.device, dtype=self.dtype)
        x = noisy.reshape(b * v, *noisy.shape[2:]).to(**dev)  # (B'·V, c, h, w)
        tt = t.to(self.device).repeat_interleave(v)  # (B'·V,)
        ctx = emb.to(**dev).repeat_interleave(v, dim=0)  # (B'·V, L, D)
        cam = mvdream_cameras(cond.cameras).to(**dev)  # (B'·V, 16)
        self.mv_attention.num_views = v
        eps = self.unet(x, tt, encoder_hidden_states=ctx, class_labels=cam).sample.float()
        return eps.reshape(b, v, *eps.shape[1:])

    def offload(self) -> None:
        """All weights to the CPU, the VAE too (the prompt cache stays). Teachers are offloaded
        once, right after loading (``teachers.offload_idle``), before any backward through
        their encoder can be pending."""
        for m in (self.unet, self.vae, self.text_encoder):
            m.to("cpu")
        self.active = False


def sd_tokenizer(model_id: str = DEFAULT_TOKENIZER_ID, **hub: Any) -> Any:
    """SD 2.1's CLIP tokenizer (OpenCLIP's BPE vocabulary, 77 tokens, padded with id 0).
    Its config is looked up first: offline, transformers returns an empty tokenizer for a model
    that is not in the cache instead of failing."""
    from transformers import CLIPTokenizer

    hub_file(model_id, "tokenizer/tokenizer_config.json", **hub)  # TeacherNotAvailable if missing
    return load_component(CLIPTokenizer.from_pretrained, model_id, "tokenizer", **hub)


def _load_weights(model_id: str, subfolder: str, hub: Mapping[str, Any]) -> dict[str, Tensor]:
    """The state dict of one diffusers component folder (safetensors preferred, fp16 variants
    accepted, ``.bin`` loaded with ``weights_only=True``)."""
    names = (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin",
    )
    for name in names:
        try:
            path = hub_file(model_id, f"{subfolder}/{name}", **hub)
        except TeacherNotAvailable:
            continue
        return safe_torch_load(path)
    raise TeacherNotAvailable(
        f"teacher model {model_id!r} has no weights in {subfolder}/ in the Hugging Face cache; "
        + fetch_hint(model_id)
    )
