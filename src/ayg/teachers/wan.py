"""The Wan 2.1 video teacher: a flow-matching text-to-video transformer on diffusers
(AYG sec. 3.2-3.4, C.3, C.8; the role of the video DM of E.1).

``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (Apache-2.0) is a ``WanTransformer3DModel`` (1.3B) on the
latents of ``AutoencoderKLWan``, conditioned on a UMT5-XXL text encoder. Seen through
:class:`ayg.distill.Teacher`, it slots in where the UNet3D teacher (``video.py``) does.

Score distillation on a flow-matching model
-------------------------------------------
Wan is trained on x_σ = (1 − σ)·x₀ + σ·ε (σ ∈ [0, 1], model timestep 1000·σ) to predict the
velocity v = ε − x₀. From a prediction v̂ the data estimate is x̂₀ = x_σ − σ·v̂, and the noise
estimate follows from x_σ = (1 − σ)·x̂₀ + σ·ε̂:

    ε̂ = (x_σ − (1 − σ)·x̂₀) / σ = (x_σ − (1 − σ)·x_σ + (1 − σ)·σ·v̂) / σ = x_σ + (1 − σ)·v̂,

exact and without a division by σ. The flow path is a variance-preserving path rescaled: with
r = √((1 − σ)² + σ²),

    x_σ / r = √ᾱ·x₀ + √(1 − ᾱ)·ε,   √ᾱ = (1 − σ)/r,   i.e.  ᾱ = (1 − σ)² / ((1 − σ)² + σ²).

So the teacher publishes that ᾱ as its ``alphas_cumprod`` table, ``distill_loss`` noises the
latents with it exactly as for an ε-teacher (z_t = √ᾱ z + √(1 − ᾱ) ε), and ``predict_noise``
multiplies z_t by r before the transformer sees it: x_σ = r·z_t holds the very ε that
``distill_loss`` drew, and the ε̂ returned estimates it. CSD (ε̂_v − ε̂_∅, eq. 4), SDS with
CFG (eq. 3), the negative-prompt term (eq. 22-23) and motion amplification (eq. 24) then apply
unchanged; w(t) = 1 − ᾱ is σ²/r².

Diffusion time. A fraction u of the config's t-range is the integer index i = round(u·T)
(``distill.to_timesteps``) into tables built at u_i = i/T with the scheduler's own map to σ,

    σ_i = s·u_i / (1 + (s − 1)·u_i),   s the scheduler's shift (3 for Wan 2.1 at 480p),

the map ``FlowMatchEulerDiscreteScheduler`` and ``UniPCMultistepScheduler`` (flow sigmas) apply
to their uniform grids; U(0.02, 0.98) thus covers σ ∈ [0.058, 0.993], denser at high noise as
Wan's sampler is.

Frames and the causal VAE
-------------------------
``AutoencoderKLWan`` encodes a clip of F = 4k + 1 frames into 1 + k latent frames (the first
frame alone, then groups of four, each latent frame seeing only the frames up to its own), 8× in
space, 16 channels normalised per channel by the VAE's ``latents_mean``/``latents_std``. Renders
are resized bilinearly to ``resolution`` (Wan 2.1 1.3B is trained at 480×832; C.8 does the same
for the 320×512 teachers) and the whole clip is encoded at once, so gradients reach every
rendered frame through the encoder. The frame axis of the latents is latent time: motion
amplification's mean over frames is over the 1 + k latent frames. ``grad_frames = k`` detaches
all but k random frames of each clip; the 3D encoder still runs on the whole clip, so unlike the
frame-wise encoders this does not cut the encoder's activation memory.

Encoder memory. The activations the encoder keeps for its backward are large: about 105 KiB per
pixel of a 17-frame clip in bf16 (measured on the real-size VAE, ``benchmarks/wan_configs.py``),
about 40 GiB per clip at 480×832 — four clips would not fit one 141 GB GPU. With
``checkpoint_encoder`` (the default) each clip is encoded under ``torch.utils.checkpoint``: only
its pixels are kept, and its encoder forward runs again during the backward, one clip at a time,
so the peak is one clip's activations for one more encoder forward per clip.

Text: UMT5 hidden states of the prompt padded to ``text_length`` (512) tokens, zero past the
prompt's end, as ``WanPipeline`` conditions the model; "" is the unconditional prompt. Wan has
no fps input: fps only sets the time span of the clip upstream (C.3).

The stage-2 defaults that depend on this teacher live here: ``FRAMES`` (17, the 4k + 1 next to
the paper's 16), ``RESOLUTION`` and ``NEGATIVE_PROMPT``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ayg.config import VIDEO_NEGATIVE_PROMPT
from ayg.distill import Conditioning
from ayg.teachers.hub import load_component
from ayg.teachers.stable_diffusion import (
    PromptCache,
    default_dtype,
    dtype_kwarg,
    freeze,
    resize_bilinear,
)

MODEL_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
FRAMES = 17
RESOLUTION = (480, 832)  # (H, W)
TEXT_LENGTH = 512  # WanPipeline's max_sequence_length
# The paper's motion words, then the words of Wan's own default negative prompt (in English as
# diffusers' WanPipeline example writes it) that describe still or degraded clips.
NEGATIVE_PROMPT = VIDEO_NEGATIVE_PROMPT + ", static, still picture, blurred details, low quality"


# ----------------------------------------------------------------------------------------------
# The flow-matching schedule seen as ᾱ


def flow_sigmas(shift: float, num_train_timesteps: int = 1000) -> Tensor:
    """(T,) float32 σ_i = s·u/(1 + (s−1)·u) at u = i/T, i = 0..T−1 (σ_0 = 0, σ < 1)."""
    if not shift > 0:
        raise ValueError(f"the flow shift must be > 0, got {shift}")
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    u = torch.arange(num_train_timesteps, dtype=torch.float64) / num_train_timesteps
    return (shift * u / (1.0 + (shift - 1.0) * u)).float()


def alphas_cumprod_from_sigmas(sigmas: Tensor) -> Tensor:
    """ᾱ = (1 − σ)² / ((1 − σ)² + σ²): the variance-preserving path x_σ / r lies on."""
    s = sigmas.double()
    return ((1.0 - s) ** 2 / ((1.0 - s) ** 2 + s**2)).float()


def vp_to_flow_scale(sigmas: Tensor) -> Tensor:
    """r = √((1 − σ)² + σ²): x_σ = r·(√ᾱ x₀ + √(1 − ᾱ) ε)."""
    return ((1.0 - sigmas) ** 2 + sigmas**2).sqrt()


def eps_from_velocity(velocity: Tensor, noisy: Tensor, sigmas: Tensor) -> Tensor:
    """ε̂ = x_σ + (1 − σ)·v̂ for v = ε − x₀ on x_σ = (1 − σ) x₀ + σ ε; ``sigmas`` broadcasts."""
    return noisy + (1.0 - sigmas) * velocity


def flow_schedule(scheduler_config: dict[str, Any]) -> tuple[float, int]:
    """(shift, num_train_timesteps) of a diffusers flow-matching scheduler config:
    ``FlowMatchEulerDiscreteScheduler`` (``shift``) or a multistep solver with flow sigmas
    (``UniPCMultistepScheduler``: ``use_flow_sigmas``, ``flow_shift``) as Wan ships."""
    name = scheduler_config.get("_class_name", "?")
    steps = int(scheduler_config.get("num_train_timesteps", 1000))
    if scheduler_config.get("use_dynamic_shifting"):
        raise ValueError(
            f"scheduler {name} shifts σ by resolution (use_dynamic_shifting); the Wan teacher "
            "takes a fixed shift"
        )
    if scheduler_config.get("use_flow_sigmas"):
        return float(scheduler_config.get("flow_shift", 1.0)), steps
    if name.startswith("FlowMatch"):
        return float(scheduler_config.get("shift", 1.0)), steps
    raise ValueError(
        f"scheduler {name} is not a flow-matching schedule; the Wan teacher takes "
        "FlowMatchEulerDiscreteScheduler or a scheduler with use_flow_sigmas"
    )


def check_clip(frames: int, resolution: Sequence[int], vae_config: Any, model_config: Any) -> int:
    """Raise a one-line ValueError unless the causal VAE and the transformer's patches take
    clips of ``frames`` at ``resolution`` (H, W); returns the VAE's temporal factor (4)."""
    temporal = int(_get(vae_config, "scale_factor_temporal", 4))
    spatial = int(_get(vae_config, "scale_factor_spatial", 8))
    patch = tuple(_get(model_config, "patch_size", (1, 2, 2)))  # (p_t, p_h, p_w)
    if frames < 1 or (frames - 1) % temporal != 0:
        raise ValueError(
            f"the Wan teacher takes {temporal}k + 1 frames (e.g. 17 or 33), got {frames}"
        )
    if ((frames - 1) // temporal + 1) % patch[0] != 0:
        raise ValueError(
            f"{frames} frames give latent frames not divisible by the patch size {patch[0]}"
        )
    multiple = (spatial * patch[1], spatial * patch[2])
    if len(resolution) != 2 or any(
        r <= 0 or r % m for r, m in zip(resolution, multiple, strict=True)
    ):
        raise ValueError(
            f"the Wan teacher's resolution must be positive multiples of {multiple} "
            f"(H, W), e.g. (480, 832); got {tuple(resolution)}"
        )
    return temporal


def _get(config: Any, key: str, default: Any) -> Any:
    """A field of a diffusers config object or of its dict (``load_config``)."""
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


# ----------------------------------------------------------------------------------------------
# Text


class UMT5PromptCache(PromptCache):
    """Prompt embeddings as ``WanPipeline`` computes them: UMT5 with the attention mask, padded
    to ``length`` tokens, the hidden states past the prompt's last token set to zero."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, length: int = TEXT_LENGTH):
        super().__init__(tokenizer, text_encoder)
        self.length = length

    def encode(self, prompts: list[str]) -> Tensor:
        enc_device = next(self.text_encoder.parameters()).device
        tokens = self.tokenizer(
            [" ".join(p.split()) for p in prompts],  # WanPipeline's whitespace clean-up
            padding="max_length",
            max_length=self.length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(enc_device)  # (P, L)
        mask = tokens.attention_mask.to(enc_device)  # (P, L)
        hidden = self.text_encoder(ids, mask).last_hidden_state  # (P, L, D)
        return hidden * mask[:, :, None].to(hidden.dtype)


# ----------------------------------------------------------------------------------------------
# The teacher


class WanTeacher:
    """Wan video teacher (F = 4k + 1) implementing ``ayg.distill.Teacher``."""

    kind = "video"

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        shift: float,
        num_train_timesteps: int = 1000,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype | None = None,
        resolution: tuple[int, int] = RESOLUTION,
        frames: int = FRAMES,
        sample_latents: bool = True,
        text_length: int = TEXT_LENGTH,
        negative_prompt: str = NEGATIVE_PROMPT,
        checkpoint_encoder: bool = True,
    ) -> None:
        temporal = check_clip(frames, resolution, vae.config, transformer.config)
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.vae_dtype = vae_dtype or self.dtype
        self.transformer = freeze(transformer, self.device, self.dtype)
        self.vae = freeze(vae, self.device, self.vae_dtype)
        self.text_encoder = freeze(text_encoder, self.device, self.dtype)
        self.tokenizer = tokenizer
        self.prompts = UMT5PromptCache(tokenizer, self.text_encoder, text_length)
        self.shift = float(shift)
        self._sigmas = flow_sigmas(self.shift, num_train_timesteps).to(self.device)  # (T,)
        self._alphas = alphas_cumprod_from_sigmas(self._sigmas)  # (T,)
        self.num_train_timesteps = num_train_timesteps
        self.resolution = tuple(resolution)
        self.frames = frames
        self.latent_frames = (frames - 1) // temporal + 1
        self.sample_latents = sample_latents
        self.negative_prompt = negative_prompt
        self.checkpoint_encoder = checkpoint_encoder
        z_dim = int(vae.config.z_dim)
        stats = dict(dtype=torch.float32, device=self.device)
        self._latent_mean = torch.tensor(vae.config.latents_mean, **stats).view(1, z_dim, 1, 1, 1)
        self._latent_std = torch.tensor(vae.config.latents_std, **stats).view(1, z_dim, 1, 1, 1)
        self.active = True

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_components(
        cls, transformer, vae, text_encoder, tokenizer, shift: float, **kwargs
    ) -> WanTeacher:
        """From already built modules (tests, benchmarks, custom checkpoints)."""
        return cls(transformer, vae, text_encoder, tokenizer, shift, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = MODEL_ID,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        variant: str | None = None,
        vae_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> WanTeacher:
        """Load a diffusers Wan text-to-video repository (``model_index.json``, ``transformer/``,
        ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; weights as safetensors only)
        from the Hugging Face cache or a local folder; raises ``TeacherNotAvailable`` when
        offline and the model is missing."""
        from diffusers import (
            AutoencoderKLWan,
            FlowMatchEulerDiscreteScheduler,
            WanTransformer3DModel,
        )
        from transformers import AutoTokenizer, UMT5EncoderModel

        dtype = dtype or default_dtype(device)
        vae_dtype = vae_dtype or dtype
        common = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision)
        weights = dict(common, variant=variant, use_safetensors=True)  # the repo ships no pickles
        # any scheduler class reads scheduler_config.json; flow_schedule checks what it says
        config = load_component(
            FlowMatchEulerDiscreteScheduler.load_config, model_id, "scheduler", **common
        )
        shift, steps = flow_schedule(config)
        # the clip and resize size are checked on the configs, before gigabytes of weights load
        check_clip(
            kwargs.get("frames", FRAMES),
            kwargs.get("resolution", RESOLUTION),
            load_component(AutoencoderKLWan.load_config, model_id, "vae", **common),
            load_component(WanTransformer3DModel.load_config, model_id, "transformer", **common),
        )
        tokenizer = load_component(AutoTokenizer.from_pretrained, model_id, "tokenizer", **common)
        text_encoder = load_component(
            UMT5EncoderModel.from_pretrained,
            model_id,
            "text_encoder",
            **dtype_kwarg(dtype),
            **weights,
        )
        vae = load_component(
            AutoencoderKLWan.from_pretrained, model_id, "vae", torch_dtype=vae_dtype, **weights
        )
        transformer = load_component(
            WanTransformer3DModel.from_pretrained,
            model_id,
            "transformer",
            torch_dtype=dtype,
            **weights,
        )
        return cls(
            transformer,
            vae,
            text_encoder,
            tokenizer,
            shift,
            num_train_timesteps=steps,
            device=device,
            dtype=dtype,
            vae_dtype=vae_dtype,
            **kwargs,
        )

    # -- protocol -------------------------------------------------------------------------------

    def alphas_cumprod(self) -> Tensor:
        """(T,) the ᾱ of the flow path rescaled to variance preserving (module docstring)."""
        return self._alphas

    def sigmas(self) -> Tensor:
        """(T,) σ of each integer timestep index."""
        return self._sigmas

    def embed(self, prompts: Sequence[str]) -> Tensor:
        """(P, L, D) UMT5 embeddings, cached per prompt."""
        self._ensure_active()
        return self.prompts(prompts, self.device)

    def encode(
        self,
        images: Tensor,
        grad_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """clips (B, F, 3, H, W) in [0, 1] -> latents (B, 1 + (F−1)/4, 16, H'/8, W'/8) float32
        at (H', W') = ``resolution``, the whole clip through the causal 3D encoder. With
        ``grad_frames = k < F`` only k random frames of each clip carry gradient."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        self._ensure_active()
        if images.ndim != 5 or images.shape[1] != self.frames or images.shape[2] != 3:
            raise ValueError(
                f"Wan teacher expects (B, {self.frames}, 3, H, W), got {tuple(images.shape)}"
            )
        b, f = images.shape[:2]
        images = images.to(self.device)
        if grad_frames is not None and grad_frames < f and torch.is_grad_enabled():
            if grad_frames < 1:
                raise ValueError(f"grad_frames must be >= 1, got {grad_frames}")
            order = torch.stack([torch.randperm(f, generator=generator) for _ in range(b)])
            live = torch.zeros(b, f, dtype=torch.bool)
            live.scatter_(1, order[:, :grad_frames], True)  # (B, F)
            live = live.to(self.device)[:, :, None, None, None]
            images = torch.where(live, images, images.detach())
        param = next(self.vae.parameters())
        x = resize_bilinear(images.flatten(0, 1), self.resolution)  # (B·F, 3, H', W')
        x = x.unflatten(0, (b, f)).transpose(1, 2)  # (B, 3, F, H', W')
        x = x.to(device=param.device, dtype=param.dtype) * 2.0 - 1.0
        recompute = self.checkpoint_encoder and x.requires_grad and torch.is_grad_enabled()
        moments = torch.cat(
            [
                checkpoint(self._moments, clip, use_reentrant=False)
                if recompute
                else self._moments(clip)
                for clip in x.split(1)
            ]
        )  # (B, 2·16, F', h, w)
        dist = DiagonalGaussianDistribution(moments)
        z = dist.mean  # (B, 16, F', h, w)
        if self.sample_latents:
            noise = torch.randn(z.shape, generator=generator).to(device=z.device, dtype=z.dtype)
            z = z + dist.std * noise
        z = (z.float() - self._latent_mean) / self._latent_std
        return z.transpose(1, 2)  # (B, F', 16, h, w)

    def _moments(self, clip: Tensor) -> Tensor:
        """clip (1, 3, F, H', W') in [-1, 1] -> the posterior's mean and log-variance stacked,
        (1, 2·16, F', h, w). The VAE resets its causal cache on every call, so a recomputation
        under checkpointing repeats the forward exactly."""
        return self.vae.encode(clip).latent_dist.parameters

    def predict_noise(
        self, noisy: Tensor, t: Tensor, emb: Tensor, cond: Conditioning | None = None
    ) -> Tensor:
        """noisy z_t (B', F', c, h, w) on the rescaled path, t (B',) long indices, emb
        (B', L, D) -> ε̂ (B', F', c, h, w) float32 from one transformer call. ``cond`` is unused
        (Wan takes no fps)."""
        self._ensure_active()
        if noisy.ndim != 5:
            raise ValueError(f"noisy must have shape (B, F, c, h, w), got {tuple(noisy.shape)}")
        b = noisy.shape[0]
        if t.shape != (b,) or emb.shape[0] != b:
            raise ValueError(
                f"t must be ({b},) and emb ({b}, L, D), got {tuple(t.shape)} and {tuple(emb.shape)}"
            )
        tt = t.to(self.device)
        sigma = self._sigmas[tt]  # (B',)
        s5 = sigma.view(-1, 1, 1, 1, 1)
        x = noisy.to(self.device).float() * vp_to_flow_scale(s5)  # x_σ (B', F', c, h, w)
        sample = x.transpose(1, 2).to(self.dtype)  # (B', c, F', h, w)
        ee = emb.to(device=self.device, dtype=self.dtype)
        velocity = self.transformer(
            hidden_states=sample,
            timestep=sigma * self.num_train_timesteps,
            encoder_hidden_states=ee,
            return_dict=False,
        )[0]
        velocity = velocity.transpose(1, 2).float()  # (B', F', c, h, w)
        return eps_from_velocity(velocity, x, s5)

    def offload(self) -> None:
        """Transformer and text encoder to the CPU while another teacher runs. The VAE stays:
        the graph of an ``encode`` whose loss has not been backpropagated yet holds its weights.
        The prompt cache stays too."""
        for m in (self.transformer, self.text_encoder):
            m.to("cpu")
        self.active = False

    def activate(self) -> None:
        for m in (self.transformer, self.vae, self.text_encoder):
            m.to(self.device)
        self.active = True

    def _ensure_active(self) -> None:
        if not self.active:
            self.activate()
