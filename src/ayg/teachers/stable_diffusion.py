"""The image teacher: Stable Diffusion 2.1 base on diffusers (AYG sec. 3.2, C.7-C.8).

The paper's image DM is the spatial backbone of its video model, an SD 2.1 fine-tuned at
320×512; the public stand-in is ``stabilityai/stable-diffusion-2-1-base``. Renderings are
resized bilinearly to 320×512 (C.8), mapped to [-1, 1], encoded by the VAE with gradients
flowing back to the pixels, and scaled by ``vae.config.scaling_factor``. ε-, v- and
x0-parameterised UNets are all turned into ε̂ (v -> ε̂ = √ᾱ v + √(1-ᾱ) z_t).

The pieces shared by every latent teacher built on the SD autoencoder and a CLIP text encoder
(:class:`LatentTeacher`, :class:`PromptCache`, :func:`encode_frames`, :func:`encode_sequences`,
:func:`eps_from_prediction`, :func:`load_latent_components`) live here; the video teacher imports
them. Two of these teachers whose VAE encoders are equal (:func:`same_vae_encoder`) can share
one encoder pass over the same frames (:meth:`LatentTeacher.encode_posterior`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ayg.distill import Conditioning, Posterior, check_sequences, host_to
from ayg.teachers.hub import load_component

DEFAULT_MODEL_ID = "stabilityai/stable-diffusion-2-1-base"
RESOLUTION = (320, 512)  # (H, W) of C.8


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


# ----------------------------------------------------------------------------------------------
# Shared pieces


class PromptCache:
    """Text embeddings computed once per prompt ("" is the unconditional prompt)."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.cache: dict[str, Tensor] = {}  # prompt -> (L, D)
        self.encoder_calls = 0  # how many batched text-encoder forwards ran (tests, logs)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], device: torch.device) -> Tensor:
        """(P, L, D) on ``device``, in the text encoder's dtype."""
        if isinstance(prompts, str):
            raise TypeError("embed takes a sequence of prompts, not one string")
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            hidden = self.encode(missing)  # (P', L, D)
            self.encoder_calls += 1
            for p, h in zip(missing, hidden, strict=True):
                self.cache[p] = h.to(device)  # kept where it is used: no copy on later calls
        return torch.stack([self.cache[p].to(device) for p in prompts])

    def encode(self, prompts: list[str]) -> Tensor:
        """(P, L, D) last hidden states of the CLIP text encoder, padded to the tokenizer's
        ``model_max_length``."""
        enc_device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(enc_device)  # (P, L)
        return self.text_encoder(ids)[0]

    def to(self, device: torch.device) -> None:
        self.cache = {p: h.to(device) for p, h in self.cache.items()}


def resize_bilinear(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, 3, H, W) -> (N, 3, *size) bilinear (C.8); no-op at the right size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


#: How the VAE encoder's backward gets its activations (``encoder_backward``), all with the
#: same gradient (the weights are frozen, so a convolution's backward needs its weight only):
#: "keep" stores every activation of every frame (plain autograd); "convs" stores the
#: convolution and attention outputs and recomputes the normalisations, activations and
#: additions from them in the backward (the elementwise forward work twice); "lean" stores those
#: only below the input's resolution and also recomputes the full-resolution convolutions;
#: "recompute" stores only the input and runs the whole encoder forward again in the backward;
#: "fused" recomputes nothing: GroupNorm and SiLU run as one op that stores only its input and
#: the frozen convolutions store nothing (:mod:`ayg.teachers.fused_encoder`).
#: Measured on the SD VAE at 320×512 in bf16 on an H200 (benchmarks/step.py, 64 frames, chunks
#: of 8): 0.93, 0.45, 0.27 and 0.12 GiB per frame, for 1.0×, 1.33×, 1.47× and 1.65× the time of
#: "keep", and "fused" 0.31 GiB per frame at 0.86× (docs/results/step.md). "convs", "lean" and
#: "recompute" run ``chunk`` frames per checkpointed call, so the backward holds one chunk's
#: recomputed activations, and a call of at most ``chunk`` frames (stage 1's 4 views) is one
#: chunk and stores everything; "fused" runs every call fused (storing stage 1's 4 views as
#: "keep" gave a slower stage-1 step on the H200: 93.6 against 81.9 ms).
ENCODER_BACKWARDS = ("keep", "convs", "lean", "recompute", "fused")


def check_encoder_backward(mode: str) -> str:
    if mode not in ENCODER_BACKWARDS:
        raise ValueError(
            f"encoder_backward must be one of {', '.join(ENCODER_BACKWARDS)}, got {mode!r}"
        )
    return mode


def _posterior(vae: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """x (N, 3, H, W) in [-1, 1] -> posterior mean and std (N, c, h, w)."""
    dist = vae.encode(x).latent_dist
    return dist.mean, dist.std


@functools.lru_cache(maxsize=1)
def _attention_ops() -> frozenset:
    aten = torch.ops.aten
    names = (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def _stored_outputs_context(full_width: int | None) -> Any:
    """Selective checkpointing that stores convolution outputs (those whose input is narrower
    than ``full_width`` when given) and fused attention outputs, and recomputes the rest."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    conv = torch.ops.aten.convolution.default

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        if op is conv and (full_width is None or args[0].shape[-1] < full_width):
            return CheckpointPolicy.MUST_SAVE
        if op in _attention_ops():
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def posterior_moments(
    vae: nn.Module, x: Tensor, backward: str = "keep", chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """x (N, 3, H, W) in [-1, 1] -> posterior (mean, std), each (N, c, h, w), with the
    encoder's activations kept for the backward as ``backward`` says (:data:`ENCODER_BACKWARDS`;
    torch.utils.checkpoint, non-reentrant: the backward recomputes one chunk at a time)."""
    check_encoder_backward(backward)
    if backward == "fused" and torch.is_grad_enabled() and x.requires_grad:
        from ayg.teachers.fused_encoder import fused_encoder

        with fused_encoder(vae):
            return _posterior(vae, x)
    one_chunk = chunk is not None and x.shape[0] <= chunk
    if backward == "keep" or one_chunk or not (torch.is_grad_enabled() and x.requires_grad):
        return _posterior(vae, x)
    from torch.utils.checkpoint import checkpoint

    context = {}
    if backward in ("convs", "lean"):
        width = x.shape[-1] if backward == "lean" else None
        context = dict(context_fn=functools.partial(_stored_outputs_context, width))
    parts = [
        checkpoint(_posterior, vae, piece, use_reentrant=False, **context)
        for piece in x.split(chunk or x.shape[0])
    ]
    return torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts])


def prefers_channels_last(module: nn.Module) -> bool:
    """Whether the first 4-D weight of ``module`` is stored channels-last (then its inputs go
    channels-last too, so cuDNN does not transpose them)."""
    for p in module.parameters():
        if p.ndim == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def frame_posterior(
    vae: nn.Module,
    images: Tensor,
    size: tuple[int, int],
    backward: str = "keep",
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """images (N, 3, H, W) in [0, 1] -> the posterior (mean, std), each (N, c, h, w), of the
    frames resized to ``size``: the encoder pass of :func:`encode_frames`, differentiable."""
    param = next(vae.parameters())
    x = resize_bilinear(images, size).to(device=param.device, dtype=param.dtype) * 2.0 - 1.0
    if prefers_channels_last(vae):
        x = x.contiguous(memory_format=torch.channels_last)
    return posterior_moments(vae, x, backward, chunk)


def posterior_latents(
    vae: nn.Module,
    mean: Tensor,
    std: Tensor,
    generator: torch.Generator | None = None,
    sample: bool = True,
) -> Tensor:
    """Scaled latents (N, c, h, w) float32 from a posterior (N, c, h, w): mean + std·noise
    (noise from ``generator``) when ``sample``, else the mean; then
    ``(z - shift_factor)·scaling_factor``."""
    z = mean
    if sample:
        noise = host_to(torch.randn(z.shape, generator=generator), z.device, z.dtype)
        z = z + std * noise
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z - shift
    return z.float() * vae.config.scaling_factor


def encode_frames(
    vae: nn.Module,
    images: Tensor,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    sample: bool = True,
    backward: str = "keep",
    chunk: int | None = None,
) -> Tensor:
    """images (N, 3, H, W) in [0, 1] -> scaled latents (N, c, h, w) float32, differentiable:
    :func:`frame_posterior`, then :func:`posterior_latents`. ``backward`` and ``chunk``: see
    :func:`posterior_moments` (the noise is drawn once, outside any recomputed part, so every
    mode gives the same latents and the same gradient)."""
    mean, std = frame_posterior(vae, images, size, backward, chunk)
    return posterior_latents(vae, mean, std, generator, sample)


def _encoder_tensors(vae: nn.Module) -> dict[str, Tensor]:
    """The tensors that map pixels to the posterior: the encoder's and its quant_conv's."""
    out = {}
    for name in ("encoder", "quant_conv"):
        module = getattr(vae, name, None)
        if module is not None:
            out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return out


def same_vae_encoder(a: nn.Module, b: nn.Module) -> bool:
    """Whether two autoencoders map frames to the same scaled latents: the same class, scale,
    shift and tiling, and encoder tensors (with the quant_conv) equal in value, dtype and
    device. One read of both encoders (~35 M parameters for SD's)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    for key in ("scaling_factor", "shift_factor"):
        if getattr(a.config, key, None) != getattr(b.config, key, None):
            return False
    if getattr(a, "use_tiling", False) != getattr(b, "use_tiling", False):
        return False
    ta, tb = _encoder_tensors(a), _encoder_tensors(b)
    if ta.keys() != tb.keys():
        return False
    return all(
        x.dtype == tb[k].dtype and x.device == tb[k].device and x.shape == tb[k].shape
        for k, x in ta.items()
    ) and all(torch.equal(x, tb[k]) for k, x in ta.items())


def encode_sequences(
    encode: Callable[[Tensor], Tensor],
    images: Tensor,
    grad_frames: int | None = None,
    generator: torch.Generator | None = None,
    chunk: int | None = None,
) -> Tensor:
    """images (B, F, 3, H, W) -> latents (B, F, c, h, w) through ``encode`` ((N, 3, H, W) ->
    (N, c, h, w)). With ``grad_frames = k < F`` only k random frames of each sequence are encoded
    with gradient, the others under no_grad (their latents are constants). ``chunk`` bounds the
    number of frames in one no_grad encoder call."""
    check_sequences(images)
    b, f = images.shape[:2]
    flat = images.reshape(b * f, *images.shape[2:])  # (B·F, 3, H, W)
    if grad_frames is None or grad_frames >= f or not torch.is_grad_enabled():
        return encode(flat).unflatten(0, (b, f))
    if grad_frames < 1:
        raise ValueError(f"grad_frames must be >= 1, got {grad_frames}")
    order = torch.stack([torch.randperm(f, generator=generator) for _ in range(b)])  # (B, F)
    base = torch.arange(b)[:, None] * f
    idx_grad = (base + order[:, :grad_frames]).reshape(-1).to(images.device)
    idx_const = (base + order[:, grad_frames:]).reshape(-1).to(images.device)
    with torch.no_grad():
        const = torch.cat([encode(c) for c in flat[idx_const].split(chunk or len(idx_const))])
    live = encode(flat[idx_grad])  # (B·k, c, h, w)
    out = torch.zeros((b * f, *live.shape[1:]), device=live.device, dtype=live.dtype)
    out = out.index_copy(0, idx_const.to(live.device), const.to(live.dtype))
    out = out.index_copy(0, idx_grad.to(live.device), live)
    return out.unflatten(0, (b, f))


def eps_from_prediction(
    pred: Tensor, noisy: Tensor, alphas_t: Tensor, prediction_type: str
) -> Tensor:
    """The UNet output as ε̂. ``alphas_t`` is ᾱ_t broadcastable to ``noisy``.

    z_t = √ᾱ x + √(1-ᾱ) ε;  v = √ᾱ ε - √(1-ᾱ) x  ->  ε = √ᾱ v + √(1-ᾱ) z_t.
    """
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v_prediction":
        return alphas_t.sqrt() * pred + (1.0 - alphas_t).sqrt() * noisy
    if prediction_type == "sample":
        return (noisy - alphas_t.sqrt() * pred) / (1.0 - alphas_t).sqrt()
    raise ValueError(
        f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}"
    )


def alphas_cumprod_from_scheduler(scheduler: Any) -> Tensor:
    """(T,) float32 ᾱ_t of a diffusers scheduler (built from its betas)."""
    return torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).clone()


def load_latent_components(
    model_id: str,
    unet_cls: Any,
    *,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """unet, vae, text_encoder, tokenizer, alphas_cumprod, prediction_type of a diffusers
    pipeline repository (SD, Zeroscope, ModelScope layouts), from the cache when offline."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    common = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision)
    weights = dict(common, variant=variant)
    scheduler = load_component(DDPMScheduler.from_pretrained, model_id, "scheduler", **common)
    tokenizer = load_component(CLIPTokenizer.from_pretrained, model_id, "tokenizer", **common)
    text_encoder = load_component(
        CLIPTextModel.from_pretrained, model_id, "text_encoder", **dtype_kwarg(dtype), **weights
    )
    vae = load_component(
        AutoencoderKL.from_pretrained, model_id, "vae", torch_dtype=vae_dtype, **weights
    )
    unet = load_component(unet_cls.from_pretrained, model_id, "unet", torch_dtype=dtype, **weights)
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        alphas_cumprod=alphas_cumprod_from_scheduler(scheduler),
        prediction_type=scheduler.config.prediction_type,
    )


def freeze(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Eval mode, no parameter gradients, on ``device`` in ``dtype`` (cast only when needed:
    diffusers warns on every dtype cast)."""
    module.eval()
    module.requires_grad_(False)
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module.to(dtype=dtype)
    return module.to(device)


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers >= 4.56 calls it ``dtype``, older versions ``torch_dtype``."""
    import transformers
    from packaging.version import Version

    name = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {name: dtype}


# ----------------------------------------------------------------------------------------------
# The teacher


class LatentTeacher:
    """What the SD-autoencoder teachers share (the image teacher and the UNet3D video teacher):
    a diffusers UNet (``unet_class``) + ``AutoencoderKL`` + CLIP text encoder, their loading,
    prompt cache, frame encoding and moving between devices. Subclasses set ``kind``, ``frames``
    and ``unet_class`` and implement ``predict_noise``."""

    kind: str
    frames: int
    unet_class: str  # the diffusers class of the repository's unet/ folder
    default_model_id: str

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        alphas_cumprod: Tensor,
        prediction_type: str = "epsilon",
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype | None = None,
        resolution: tuple[int, int] = RESOLUTION,
        sample_latents: bool = True,
        encode_chunk: int | None = 16,
        encoder_backward: str = "keep",
    ) -> None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}"
            )
        if alphas_cumprod.ndim != 1:
            raise ValueError(
                f"alphas_cumprod must have shape (T,), got {tuple(alphas_cumprod.shape)}"
            )
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.vae_dtype = vae_dtype or self.dtype
        self.unet = freeze(unet, self.device, self.dtype)
        self.vae = freeze(vae, self.device, self.vae_dtype)
        self.text_encoder = freeze(text_encoder, self.device, self.dtype)
        self.tokenizer = tokenizer
        self.prompts = PromptCache(tokenizer, self.text_encoder)
        self._alphas = alphas_cumprod.detach().float().to(self.device)
        self.prediction_type = prediction_type
        self.resolution = tuple(resolution)
        self.sample_latents = sample_latents
        self.encode_chunk = encode_chunk
        self.encoder_backward = check_encoder_backward(encoder_backward)
        self.text_encoder_released = False
        self.active = True

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_components(cls, unet, vae, text_encoder, tokenizer, alphas_cumprod, **kwargs):
        """From already built modules (tests, custom checkpoints)."""
        return cls(unet, vae, text_encoder, tokenizer, torch.as_tensor(alphas_cumprod), **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        variant: str | None = None,
        vae_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ):
        """Load a diffusers repository (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
        ``scheduler/``) from the Hugging Face cache or a local directory; raises
        ``TeacherNotAvailable`` when offline and the model is missing."""
        import diffusers

        dtype = dtype or default_dtype(device)
        parts = load_latent_components(
            model_id or cls.default_model_id,
            getattr(diffusers, cls.unet_class),
            dtype=dtype,
            vae_dtype=vae_dtype or dtype,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            revision=revision,
            variant=variant,
        )
        return cls(device=device, dtype=dtype, vae_dtype=vae_dtype, **parts, **kwargs)

    # -- protocol -------------------------------------------------------------------------------

    def alphas_cumprod(self) -> Tensor:
        return self._alphas

    def embed(self, prompts: Sequence[str]) -> Tensor:
        """(P, L, D) CLIP embeddings, cached per prompt."""
        self._ensure_active()
        return self.prompts(prompts, self.device)

    def _encode_clips(
        self, images: Tensor, grad_frames: int | None, generator: torch.Generator | None
    ) -> Tensor:
        """(B, F, 3, H, W) in [0, 1] -> (B, F, 4, H'/8, W'/8), each frame through the VAE."""

        def encode(x: Tensor) -> Tensor:
            return encode_frames(
                self.vae,
                x,
                self.resolution,
                generator,
                self.sample_latents,
                self.encoder_backward,
                self.encode_chunk,
            )

        return encode_sequences(encode, images, grad_frames, generator, self.encode_chunk)

    def encode_posterior(self, images: Tensor) -> Posterior:
        """(B, F, 3, H, W) in [0, 1] -> the posterior of every frame, mean and std each
        (B, F, c, h, w), differentiable: the encoder pass of ``encode`` (which is
        ``latents(encode_posterior(images), generator)`` when every frame keeps its gradient)."""
        self._ensure_active()
        check_sequences(images)
        b, f = images.shape[:2]
        flat = images.to(self.device).reshape(b * f, *images.shape[2:])
        mean, std = frame_posterior(
            self.vae, flat, self.resolution, self.encoder_backward, self.encode_chunk
        )
        return Posterior(mean.unflatten(0, (b, f)), std.unflatten(0, (b, f)))

    def latents(self, posterior: Posterior, generator: torch.Generator | None = None) -> Tensor:
        """Latents (B, F, c, h, w) float32 from a posterior of :meth:`encode_posterior`, with
        the same draws from ``generator`` as ``encode``."""
        b, f = posterior.mean.shape[:2]
        mean, std = posterior.mean.flatten(0, 1), posterior.std.flatten(0, 1)
        z = posterior_latents(self.vae, mean, std, generator, self.sample_latents)
        return z.unflatten(0, (b, f))

    def same_encoder(self, other: Any) -> bool:
        """Whether ``other`` turns frames into the same latents as this teacher, so that one
        :meth:`encode_posterior` serves both (stage 2's image teacher reads the video teacher's
        frames): a latent teacher with the same input size and posterior sampling whose VAE
        encoder equals this one's (:func:`same_vae_encoder`)."""
        return (
            isinstance(other, LatentTeacher)
            and tuple(other.resolution) == tuple(self.resolution)
            and other.sample_latents == self.sample_latents
            and same_vae_encoder(self.vae, other.vae)
        )

    def offload(self) -> None:
        """UNet and text encoder to the CPU while another teacher runs. The VAE (small) stays:
        the graph of an ``encode`` whose loss has not been backpropagated yet holds its weights,
        and moving them would break that backward. The prompt cache stays too."""
        for m in (self.unet, self.text_encoder):
            m.to("cpu")
        self.active = False

    def activate(self) -> None:
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not self.text_encoder or not self.text_encoder_released:
                m.to(self.device)
        self.active = True

    def release_text_encoder(self) -> None:
        """Text encoder to the CPU for good, once the prompts a run needs are cached: its
        weights (~0.7 GB for OpenCLIP-H in bf16) leave the GPU; a prompt not cached yet is still
        embedded, on the CPU."""
        self.text_encoder.to("cpu")
        self.text_encoder_released = True

    def _ensure_active(self) -> None:
        if not self.active:
            self.activate()


class StableDiffusionTeacher(LatentTeacher):
    """Image teacher (F = 1) implementing ``ayg.distill.Teacher`` on a diffusers
    ``UNet2DConditionModel`` + ``AutoencoderKL`` + CLIP text encoder."""

    kind = "image"
    frames = 1
    unet_class = "UNet2DConditionModel"
    default_model_id = DEFAULT_MODEL_ID

    def encode(
        self,
        images: Tensor,
        grad_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """images (B, F, 3, H, W) in [0, 1] -> latents (B, F, 4, H'/8, W'/8) at (H', W') =
        ``resolution``; frames are independent images."""
        self._ensure_active()
        return self._encode_clips(images.to(self.device), grad_frames, generator)

    def predict_noise(
        self, noisy: Tensor, t: Tensor, emb: Tensor, cond: Conditioning | None = None
    ) -> Tensor:
        """noisy (B', F, c, h, w), t (B',), emb (B', L, D) -> ε̂ (B', F, c, h, w) float32; the F
        frames are independent images sharing t and the prompt."""
        self._ensure_active()
        if noisy.ndim != 5:
            raise ValueError(f"noisy must have shape (B, F, c, h, w), got {tuple(noisy.shape)}")
        b, f = noisy.shape[:2]
        if t.shape != (b,) or emb.shape[0] != b:
            raise ValueError(
                f"t must be ({b},) and emb ({b}, L, D), got {tuple(t.shape)} and {tuple(emb.shape)}"
            )
        x = noisy.reshape(b * f, *noisy.shape[2:]).to(self.device)  # (B'·F, c, h, w)
        tt = t.to(self.device).repeat_interleave(f)
        ee = emb.to(device=self.device, dtype=self.dtype).repeat_interleave(f, dim=0)
        pred = self.unet(x.to(self.dtype), tt, encoder_hidden_states=ee).sample.float()
        a_t = self._alphas[tt].view(-1, 1, 1, 1)
        eps = eps_from_prediction(pred, x.float(), a_t, self.prediction_type)
        return eps.reshape(b, f, *eps.shape[1:])
